"""The worker's HTTP endpoint: /metrics for Prometheus, /healthz and /readyz for an orchestrator."""

from __future__ import annotations

import urllib.error
import urllib.request

from streams.metrics import LIVE_S, Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_probes_follow_the_start_the_event_loop_and_a_stuck_loop() -> None:
    clock = Clock()
    m = Metrics(clock)
    port = m.serve("127.0.0.1", 0)
    assert _get(port, "/healthz") == (200, "starting\n")  # the model loads: alive, not ready
    status, body = _get(port, "/readyz")
    assert status == 503 and body.startswith("starting")
    m.beat()
    m.ready = True
    assert _get(port, "/healthz") == (200, "ok\n")
    assert _get(port, "/readyz") == (200, "ready\n")
    assert "\nemostream_ready 1.0\n" in _get(port, "/metrics")[1]
    clock.now += LIVE_S + 1  # the loop has not gone round since: restart it
    assert _get(port, "/healthz")[0] == 503
    status, body = _get(port, "/readyz")
    assert status == 503 and "stuck" in body
    # and Prometheus sees it (EmostreamWorkerDown): the gauge stood at 1 while every other stood still
    assert "\nemostream_ready 0.0\n" in _get(port, "/metrics")[1]
    m.beat()
    assert _get(port, "/healthz")[0] == 200
    status, body = _get(port, "/metrics")
    assert status == 200 and "emostream_messages_in_total" in body and "\nemostream_ready 1.0\n" in body


def test_the_model_and_its_runtime_are_a_metric_with_one_series() -> None:
    from prometheus_client import generate_latest

    m = Metrics(Clock())
    m.model("emostream-unimse", "1.2.0", "onnxruntime")
    m.model("emostream-unimse", "1.2.0", "torch-cuda")  # relabelled: the old series goes
    text = generate_latest(m.registry).decode()
    lines = [x for x in text.splitlines() if x.startswith("emostream_model_info{")]
    assert lines == ['emostream_model_info{name="emostream-unimse",runtime="torch-cuda",version="1.2.0"} 1.0']


def test_the_series_the_alert_rules_rate_exist_at_zero_before_the_first_increment() -> None:
    """A labelled counter first seen already at 1500 (a burst inside one scrape) has no increase
    for rate() to see: EmostreamDeadLetters stayed silent in CI. Each is exported at 0 from the start."""
    import re

    from prometheus_client import generate_latest

    from streams.errors import REASONS
    from tests.integration.harness import REPO

    exposed = generate_latest(Metrics().registry).decode()
    for reason in REASONS:
        assert f'emostream_deadletters_total{{reason="{reason}"}} 0.0' in exposed, reason
    rules = (REPO / "deploy" / "prometheus" / "rules.yml").read_text()
    counters = set(re.findall(r"(?:rate|increase)\((emostream_\w+_total)", rules))
    assert "emostream_deadletters_total" in counters
    for name in counters:
        assert re.search(rf"^{name}(\{{[^}}]*\}})? 0\.0$", exposed, re.M), name
    for name, labels in re.findall(r"(emostream_\w+_total)\{([^}]*)\}", rules):  # the very series a rule selects
        if "=~" not in labels:
            assert f"{name}{{{labels}}} 0.0" in exposed, (name, labels)
    for parts in ("text", "audio", "text+audio", "text+audio+video", "none"):  # AudioWithoutSpeech's denominator
        assert f'emostream_utterances_processed_total{{modalities="{parts}"}} 0.0' in exposed, parts
    for stage in ("redis", "publish", "analytics", "close", "deadletter"):  # every stage the worker counts
        assert f'emostream_service_errors_total{{stage="{stage}"}} 0.0' in exposed, stage
    # no <name>_created timestamp beside each series: a quarter of the endpoint's lines, saying nothing
    assert "_created" not in exposed


def test_a_worker_whose_metrics_port_is_taken_stops_with_one_line_before_joining_its_group() -> None:
    """Found by a newcomer: a second worker on one machine joined the group, loaded the model, then
    crashed with a traceback on the port, costing the first worker two rebalances."""
    import pytest

    from streams.app import serve_metrics
    from streams.errors import ConfigError
    from streams.settings import Settings

    first = serve_metrics(Settings(metrics={"port": 0}))
    assert first.port and _get(first.port, "/readyz")[0] == 503  # served from the start: "starting"
    with pytest.raises(ConfigError, match=f"metrics.port {first.port} on 127.0.0.1 is in use"):
        serve_metrics(Settings(metrics={"port": first.port}))
