"""A real Prometheus (the Debian package `make setup` installs), started by deploy/local/prometheus.sh
as `make services-up` starts it, scrapes a real worker, and the shipped alert rules
(deploy/prometheus/rules.yml) fire on a provoked condition: a burst of malformed messages raises
EmostreamDeadLetters. The rules' `for:` durations are set to 0 so the
test does not wait minutes; their expressions are the shipped ones."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from client.publisher import make_producer
from streams.kafka import ensure_topics
from tests.integration.harness import REPO, WorkerProcess, free_port, settings_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (make setup installs it)"),
]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:  # Prometheus not listening yet
            last = exc
        time.sleep(1.0)
    raise AssertionError(f"{what} within {timeout:.0f} s (last: {last})")


def test_prometheus_scrapes_a_worker_and_the_dead_letter_alert_fires(services, unique, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(services, unique, default_modalities=("text",))
    ensure_topics(settings)
    rules = re.sub(r"\bfor: \d+[smh]\b", "for: 0s", (REPO / "deploy" / "prometheus" / "rules.yml").read_text())
    (tmp_path / "rules.yml").write_text(rules)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    own = {k: v for k, v in os.environ.items() if k != "METRICS_TARGETS"}  # (a shell's own would be scraped)
    env = {  # the local stack's Prometheus (make services-up), on this test's worker and ports
        **own, "EMOSTREAM_RUN_DIR": str(tmp_path), "PROMETHEUS_PORT": str(port),
        "PROMETHEUS_RULES": str(tmp_path / "rules.yml"), "PROMETHEUS_INTERVAL": "1s",
        "METRICS_PORT": str(settings.metrics.port), "WORKERS": "1",
    }  # fmt: skip
    script = str(REPO / "deploy" / "local" / "prometheus.sh")
    worker = WorkerProcess(settings, tmp_path).start()
    try:
        up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        assert f"scraping 127.0.0.1:{settings.metrics.port}" in up.stderr, up.stderr
        worker.wait_ready()

        def query(q: str) -> list[Any]:
            return list(_get(f"{api}/api/v1/query?query={urllib.parse.quote(q)}")["data"]["result"])

        _until(lambda: query('up{job="emostream-worker"} == 1'), 60, "Prometheus scraping the worker")
        # with every `for:` at 0 s, the first evaluation (no worker scraped yet) fires the workers-down alerts
        _until(
            lambda: not [a for a in _get(f"{api}/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"],
            30,
            "no alert firing on a healthy worker",
        )
        producer = make_producer(settings)
        for i in range(1500):  # well over the rule's one dead letter a second, averaged over its 5 minutes
            producer.send(settings.kafka.topics.text, key=b"call-x", value=b"{not json %d" % i)
        producer.flush()
        producer.close()

        def firing() -> list[Any]:
            alerts = _get(f"{api}/api/v1/alerts")["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "EmostreamDeadLetters" and a["state"] == "firing"]

        (alert,) = _until(firing, 120, "EmostreamDeadLetters firing")
        assert alert["labels"]["severity"] == "warning" and "dead letter" in alert["annotations"]["summary"]
        # the alert fires within seconds, while the worker is still dead-lettering: every one is counted
        _until(lambda: query('sum(emostream_deadletters_total{reason="malformed_json"}) == 1500'), 90,
               "all 1500 dead letters counted")  # fmt: skip
        others = [a["labels"]["alertname"] for a in _get(f"{api}/api/v1/alerts")["data"]["alerts"]]
        assert others == ["EmostreamDeadLetters"], others  # nothing else fires on a healthy worker
        # the worker says which runtime `auto` chose (onnxruntime on a machine without a GPU)
        from engines.runtime.select import resolve_runtime

        chosen = resolve_runtime("auto").name
        assert query(f'emostream_model_info{{name="emostream-unimse",runtime="{chosen}"}} == 1')
        # garbage collections are timed; the loaded model was frozen out of them, so none takes the
        # quarter second a full collection over it took (python -m streams.heap's figures in the README)
        assert query("sum(emostream_gc_pause_seconds_count) > 0")
        frozen = re.search(rb"(\d+) objects of the loaded worker frozen", worker.log_path.read_bytes())
        assert frozen and int(frozen.group(1)) > 100_000, frozen  # the model's half a million
        assert not query(
            'emostream_gc_pause_seconds_count - ignoring(le) emostream_gc_pause_seconds_bucket{le="0.1"} > 0'
        )
    finally:
        down = subprocess.run([script, "down"], env=env, capture_output=True, text=True, timeout=60)
        worker.stop()
    assert down.returncode == 0 and f"stopped on {port}" in down.stdout, down
    assert subprocess.run([script, "status"], env=env, capture_output=True).returncode == 1  # (gone)
