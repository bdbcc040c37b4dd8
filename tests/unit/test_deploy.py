"""The deployment files agree with the code: compose env -> Settings, dashboard/alert metric names
-> the metrics the worker exports, and Prometheus' own promtool accepts the config and rules."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streams.metrics import Metrics
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def exported_metric_names() -> set[str]:
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {f.name + s for f in Metrics().registry.collect() for s in suffixes[f.type]}


@pytest.mark.parametrize(("service", "runtime"), [("worker", "auto"), ("worker-gpu", "torch-cuda")])
def test_compose_worker_environment_is_valid_settings(
    monkeypatch: pytest.MonkeyPatch, service: str, runtime: str
) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert {"kafka", "redis", "worker", "worker-gpu", "ui", "feeder", "prometheus", "grafana"} <= set(
        compose["services"]
    )
    for key, value in compose["services"][service]["environment"].items():
        monkeypatch.setenv(key, re.sub(r"\$\{REDIS_PASSWORD:\?[^}]*\}", "pw", str(value)))
    settings = Settings()
    assert settings.kafka.brokers == "kafka:9092" and settings.metrics.port == 9108
    assert settings.redis.url.get_secret_value() == "redis://:pw@redis:6379/0"
    assert settings.engine.runtime == runtime


def test_the_compose_gpu_worker_gets_a_gpu_and_the_cuda_image() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]  # not started by a plain `docker compose up`
    # one GPU by id: a `count` reservation gives every replica the same first GPU
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}
    ]
    assert gpu["deploy"]["replicas"] == 1
    assert "/whl/cu" in gpu["build"]["args"]["TORCH_INDEX"]
    assert gpu["image"] != compose["services"]["worker"]["image"]  # the two variants never share a tag
    cpu_index = re.search(r"ARG TORCH_INDEX=(\S+)", (DEPLOY / "docker" / "Dockerfile").read_text())
    assert cpu_index and cpu_index.group(1).endswith("/whl/cpu")
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "emostream-worker"]
    assert job["dns_sd_configs"][0]["names"] == ["worker", "worker-gpu"]  # both variants are scraped


def test_each_compose_worker_replica_is_a_static_member_under_its_container_name() -> None:
    """Its container's host name: unique per replica, kept when a crashed one restarts (streams/membership.py).
    The command is run as the container's shell would, with `env` in the worker's place."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for service in ("worker", "worker-gpu"):
        shell, flag, script = compose["services"][service]["command"]
        assert script.endswith("exec emostream worker")
        script = script.replace("$$", "$").replace("exec emostream worker", "exec env")  # compose's escape
        out = subprocess.run([shell, flag, script], capture_output=True, text=True, check=True).stdout
        (line,) = [x for x in out.splitlines() if x.startswith("EMOSTREAM_KAFKA__INSTANCE_ID=")]
        name = line.split("=", 1)[1]
        assert name == subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
        assert Settings(kafka={"instance_id": name}).kafka.instance_id == name


def test_compose_file_follows_the_compose_specification_and_pins_every_image() -> None:
    import json

    import jsonschema

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)  # its $schema: draft-07
    validator.validate(compose)
    with pytest.raises(jsonschema.ValidationError):  # the schema does catch a typo
        validator.validate({"services": {"w": {"imagee": "x"}}})
    ours = {name for name, s in compose["services"].items() if "build" in s or s["image"].startswith("emostream:")}
    assert ours == {"worker", "worker-gpu", "ui", "feeder"}
    pinned = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*$")  # a full version, never latest or a major alone
    for name, service in compose["services"].items():
        if name not in ours:
            assert pinned.match(service["image"]), f"{name}: image {service['image']} is not pinned to a version"
    base = [
        line.split()[1]
        for line in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines()
        if line.startswith("FROM ")
    ]
    assert base and all(pinned.match(b) for b in base), base


def test_compose_commands_and_environments_are_what_emostream_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.cli import build_parser

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name in ("ui", "feeder"):
        service = compose["services"][name]
        assert service["command"][0] == "emostream"
        ns = build_parser().parse_args(service["command"][1:])  # exits (SystemExit) on an unknown flag
        assert ns.func is not None
        for key, value in service["environment"].items():
            monkeypatch.setenv(key, str(value))
        Settings()  # raises on an unknown or invalid EMOSTREAM_ variable
    feeder = compose["services"]["feeder"]["command"]
    assert (REPO / feeder[2]).exists(), "the feeder's file ships in the image (Dockerfile: COPY demo demo)"


def test_compose_publishes_only_on_loopback_and_has_no_default_passwords() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")  # required, no default
    assert "--requirepass" in compose["services"]["redis"]["command"]
    assert "admin/admin" not in text


def test_worker_image_runs_as_a_non_root_user_with_a_home_it_can_write() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    lines = text.splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # the worker writes its ONNX export (and TensorRT plans) under ~/.cache at first start: the
    # image once had a user without a home, so that write would have failed
    useradd = re.search(r"useradd ([^&]*?)emostream\n", text.replace("\\\n", ""))
    assert useradd and "--create-home" in useradd.group(1) and "--home-dir /home/emostream" in useradd.group(1)
    assert image_env()["HOME"] == "/home/emostream"
    assert (
        "NVIDIA_VISIBLE_DEVICES" not in image_env()
    )  # set by the toolkit where a GPU is asked for, never by the image


def test_dashboard_and_alerts_only_use_exported_metrics() -> None:
    exported = exported_metric_names()
    texts = [
        (DEPLOY / "grafana" / "dashboards" / "emostream.json").read_text(),
        (DEPLOY / "prometheus" / "rules.yml").read_text(),
    ]
    used = {m for t in texts for m in re.findall(r"\b(?:emostream|process)_[a-z_]+", t)}
    assert used, "no metrics referenced"
    missing = used - exported
    assert not missing, f"dashboards/alerts use metrics the worker does not export: {sorted(missing)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make setup installs it)")
def test_promtool_accepts_rules_and_config(tmp_path: Path) -> None:
    rules = subprocess.run(
        ["promtool", "check", "rules", str(DEPLOY / "prometheus" / "rules.yml")], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = (
        (DEPLOY / "prometheus" / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/rules.yml", str(DEPLOY / "prometheus" / "rules.yml"))
    )
    (tmp_path / "prometheus.yml").write_text(config)
    checked = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make setup installs it)")
def test_the_alerts_fire_when_the_workers_are_gone_and_not_on_a_blip_of_redis(tmp_path: Path) -> None:
    """promtool's rule tests, on made-up series. Every alert used to read a
    series the workers export, so with every worker dead none could fire; and the critical batch
    alert fired on any Redis or Kafka call retried, a one-second restart included."""
    w1, w2 = '{job="emostream-worker", instance="w1:9108"}', '{job="emostream-worker", instance="w2:9108"}'
    summaries = {
        r["alert"]: r["annotations"]["summary"]
        for g in yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }

    def alerts(name: str, at: str, *labels: dict[str, str]) -> dict[str, object]:
        def summary(lab: dict[str, str]) -> str:  # the rule's template filled in
            return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: lab[m.group(1)], summaries[name])

        expected = [{"exp_labels": dict(lab), "exp_annotations": {"summary": summary(lab)}} for lab in labels]
        return {"alertname": name, "eval_time": at, "exp_alerts": expected}

    down = {"job": "emostream-worker", "instance": "w1:9108", "severity": "warning"}
    tests = [
        {  # one of two workers gone (its scrapes fail: up 0, its series stale), then both
            "interval": "1m",
            "input_series": [
                {"series": f"up{w1}", "values": "1 1 0x20"},
                {"series": f"emostream_ready{w1}", "values": "1 1 stale"},
                {"series": f"up{w2}", "values": "1x6 0x20"},
                {"series": f"emostream_ready{w2}", "values": "1x6 stale"},
            ],
            "alert_rule_test": [
                alerts("EmostreamWorkerDown", "3m"),
                alerts("EmostreamWorkerDown", "6m", down),
                alerts("EmostreamWorkersDown", "6m"),
                alerts("EmostreamWorkersDown", "11m", {"severity": "critical"}),
            ],
        },
        {  # no worker scraped at all (a deployment scaled to 0, a job renamed), and one stuck starting
            "interval": "1m",
            "input_series": [
                {"series": 'up{job="prometheus"}', "values": "1x10"},
                {"series": f"up{w1}", "values": "1x10"},
                {"series": f"emostream_ready{w1}", "values": "0x10"},
            ],
            "alert_rule_test": [
                alerts("EmostreamWorkersDown", "5m", {"severity": "critical"}),
                alerts("EmostreamWorkerDown", "5m", down),
            ],
        },
        {  # the broker away for a minute, then for five
            "interval": "15s",
            "input_series": [{"series": f"emostream_unreachable_partitions{w1}", "values": "0x4 4x4 0x8 4x20"}],
            "alert_rule_test": [
                alerts("EmostreamKafkaUnreachable", "2m"),
                alerts("EmostreamKafkaUnreachable", "5m"),
                alerts("EmostreamKafkaUnreachable", "7m", {"severity": "warning"}),
            ],
        },
        {  # one session timed out (a stall), later two workers under one instance id for 8 minutes
            "interval": "15s",
            "input_series": [{"series": f"emostream_group_member_lost_total{w1}", "values": "0x8 1x40 1+2x32"}],
            "alert_rule_test": [
                alerts("EmostreamMemberLost", "10m"),
                alerts("EmostreamMemberLost", "13m"),
                alerts("EmostreamMemberLost", "17m", down),
            ],
        },
        {  # Redis restarted (its retries seen by two scrapes 5 s apart); then the broker gone 10 minutes
            "interval": "5s",
            "input_series": [
                {"series": 'emostream_service_errors_total{stage="redis"}', "values": "0 2 5x250"},
                {"series": 'emostream_service_errors_total{stage="publish"}', "values": "0x120 0+1x130"},
                {"series": "emostream_processing_failed_total", "values": "0x120 1x130"},
            ],
            "alert_rule_test": [
                *(alerts("EmostreamServiceErrors", at) for at in (*(f"{m}m" for m in range(1, 11)), "5m5s", "2m5s")),
                alerts("EmostreamServiceErrors", "18m", {"stage": "publish", "severity": "warning"}),
                alerts("EmostreamProcessingFailed", "9m"),
                alerts("EmostreamProcessingFailed", "11m", {"severity": "critical"}),
            ],
        },
    ]
    rules = tmp_path / "rules.yml"
    rules.write_text((DEPLOY / "prometheus" / "rules.yml").read_text())
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "5s", "tests": tests}))
    checked = subprocess.run(["promtool", "test", "rules", str(spec)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make setup installs it)")
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel's PromQL, as a recording rule promtool checks (a typo shows as an empty panel)."""
    import json

    board = json.loads((DEPLOY / "grafana" / "dashboards" / "emostream.json").read_text())
    rules = [
        {"record": f"panel_{p['id']}_{t['refId']}", "expr": t["expr"]} for p in board["panels"] for t in p["targets"]
    ]
    assert len(rules) >= len(board["panels"])
    (tmp_path / "panels.yml").write_text(json.dumps({"groups": [{"name": "panels", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(tmp_path / "panels.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])  # Grafana needs distinct ids


def test_the_worker_image_holds_every_package_the_command_imports() -> None:
    """The image had no chaos/ while `emostream` registers `chaos` at start: every command, the
    worker's too, would have failed to import. Every package pyproject installs is copied in."""
    import tomllib

    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {line.split()[1] for line in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")}  # fmt: skip
    assert {p.rstrip("*") for p in packages} <= copied, copied


def image_env() -> dict[str, str]:
    """The worker image's ENV (deploy/docker/Dockerfile), which a container's environment overrides."""
    env: dict[str, str] = {}
    for line in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            env.update(kv.split("=", 1) for kv in line.split()[1:])
    return env


def assert_model_in_image(env: dict[str, str]) -> None:
    """'default' resolves beside the installed package (site-packages), where the image has no
    models: the image points EMOSTREAM_ENGINE__MODEL at its copy, and nothing may undo that."""
    model = {**image_env(), **env}["EMOSTREAM_ENGINE__MODEL"]
    assert model.startswith("/app/models/"), f"EMOSTREAM_ENGINE__MODEL={model}: not a model the image holds"
    assert (REPO / "models" / model.removeprefix("/app/models/")).is_dir()


def test_compose_workers_load_the_model_the_image_holds() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for service in ("worker", "worker-gpu"):
        assert_model_in_image({k: str(v) for k, v in compose["services"][service]["environment"].items()})
    with pytest.raises(AssertionError):
        assert_model_in_image({"EMOSTREAM_ENGINE__MODEL": "default"})  # what compose said before


def test_the_image_exports_the_encoders_graphs_as_its_user() -> None:
    """Built into the CPU image as the worker's user, so its starts find them in its home's cache."""
    import shlex

    from streams.cli import build_parser

    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", "")
    lines = text.splitlines()
    last_user = max(i for i, line in enumerate(lines) if line.startswith("USER "))
    (prepare,) = [line for line in lines[last_user:] if line.startswith("RUN ") and "--prepare" in line]
    assert '"${TORCH_INDEX##*/}" = "cpu"' in prepare  # the CPU image only: the GPU one runs torch
    command = re.search(r"EMOSTREAM_ENGINE__RUNTIME=onnxruntime emostream ([^&;]*)", prepare)
    assert command, prepare
    ns = build_parser().parse_args(shlex.split(command.group(1)))
    assert ns.command == "worker" and ns.prepare


def test_an_install_without_the_checkout_finds_the_shipped_artifacts_beside_its_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The image installs the packages into site-packages and the models under /app/models: the
    format check (models/format-check) and revision_model "revised" were looked for beside the
    packages, so the check was off without a word and "revised" stopped the worker (a review)."""
    import streams.settings as settings_module
    from streams.settings import Settings

    monkeypatch.setattr(settings_module, "REPO_ROOT", tmp_path / "site-packages")
    app = tmp_path / "app" / "models"
    s = Settings(engine={"model": str(app / "default"), "revision_model": "revised"})
    assert s.models_root() == app and s.revision_model_dir() == app / "revised"
    shipped = Settings()  # a checkout: the models beside the packages
    monkeypatch.setattr(settings_module, "REPO_ROOT", REPO)
    assert shipped.models_root() == REPO / "models" and (shipped.models_root() / "format-check").is_dir()
    assert Settings(engine={"revision_model": "revised"}).revision_model_dir() == REPO / "models" / "revised"
    # the image's layout: its models where EMOSTREAM_ENGINE__MODEL points, format-check beside it
    assert image_env()["EMOSTREAM_ENGINE__MODEL"] == "/app/models/default"
    assert "COPY models models" in (DEPLOY / "docker" / "Dockerfile").read_text()


def test_the_build_context_leaves_out_the_local_state_but_not_what_the_image_copies() -> None:
    """Without a .dockerignore, `docker build .` sent the 7 GB virtualenv, the local broker's data
    and git to the engine (a review)."""
    ignored = [
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".venv", ".run", ".git"} <= set(ignored)
    copied = re.findall(r"^COPY (\S+)", (DEPLOY / "docker" / "Dockerfile").read_text(), flags=re.M)
    assert "models" in copied and "streams" in copied
    for source in copied:
        for pattern in ignored:
            assert not fnmatch.fnmatch(source, pattern.removeprefix("**/")), (source, pattern)
