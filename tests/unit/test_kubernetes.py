"""deploy/kubernetes renders with Kustomize, validates against the Kubernetes schemas
(kubernetes-validate) and the vendored KEDA and Prometheus Operator CRDs, and agrees with the code:
settings the model accepts, replicas capped at partitions, probes the worker serves."""

from __future__ import annotations

import copy
import subprocess
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml

from streams.metrics import Metrics
from streams.settings import Settings
from tests.unit.test_deploy import assert_model_in_image

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
SCHEMAS = REPO / "deploy" / "schemas"
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes these files must work on
CRDS = {  # apiVersion group -> the vendored CRD files (deploy/schemas/README.md)
    "keda.sh": SCHEMAS / "keda.sh_scaledobjects.yaml",
    "monitoring.coreos.com": SCHEMAS / "monitoring.coreos.com_servicemonitors.yaml",
}
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [str(K8S / "kustomize.sh"), "build", str(K8S / "overlays" / overlay)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def strict(schema: Any) -> Any:
    """A CRD's schema with unknown fields rejected (the API server's strict field validation),
    except where the CRD keeps them (``x-kubernetes-preserve-unknown-fields``)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    group, version = api_version.split("/")
    crd = yaml.safe_load(CRDS[group].read_text())
    assert crd["spec"]["names"]["kind"] == kind, f"no CRD for {kind} vendored"
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(strict(entry["schema"]["openAPIV3Schema"]))


def validate(doc: dict[str, Any]) -> None:
    group = doc["apiVersion"].split("/")[0]
    if group in CRDS:
        crd_validator(doc["apiVersion"], doc["kind"]).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def by_kind(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def config_of(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("emostream-settings")]
    return dict(config["data"])


def settings_of(docs: tuple[dict[str, Any], ...], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in config_of(docs).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EMOSTREAM_REDIS__URL", "rediss://emostream:pw@redis:6380/0")  # the Secret's, documented
    return Settings()  # raises on an unknown or invalid EMOSTREAM_ variable


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject",
            "ServiceMonitor"} <= kinds, kinds  # fmt: skip
    for doc in docs:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "emostream", doc["metadata"]


def test_the_validators_do_catch_mistakes() -> None:
    docs = render("cpu")
    scaled = copy.deepcopy(by_kind(docs, "ScaledObject", "emostream-worker"))
    scaled["spec"]["maxReplicaCount"] = "twelve"
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    scaled = copy.deepcopy(by_kind(docs, "ScaledObject", "emostream-worker"))
    scaled["spec"]["triggerz"] = scaled["spec"].pop("triggers")
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    monitor = copy.deepcopy(by_kind(docs, "ServiceMonitor", "emostream-worker"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)
    worker = copy.deepcopy(by_kind(docs, "Deployment", "emostream-worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(worker)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployment_agrees_with_the_code(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(overlay)
    settings = settings_of(docs, monkeypatch)
    worker = by_kind(docs, "Deployment", "emostream-worker")
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["emostream", "worker"]
    # a static member of the group under its pod's name: unique, and kept when the container restarts
    (instance,) = [e for e in container["env"] if e["name"] == "EMOSTREAM_KAFKA__INSTANCE_ID"]
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics.port and settings.metrics.host == "0.0.0.0"
    assert "replicas" not in worker["spec"]  # KEDA's HPA owns it
    assert_model_in_image(config_of(docs))
    port = Metrics().serve("127.0.0.1", 0)  # the probes' paths, asked of a real endpoint: 200, or 503 while starting
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert container[probe]["httpGet"]["port"] == "metrics", probe
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
        assert body.startswith("starting"), (probe, path, body[:80])  # a probe's answer, not the metrics page
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # an outage must not restart it
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "limits" in container["resources"] and "requests" in container["resources"]
    refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in container["envFrom"]}
    generated = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    assert refs - generated == {"emostream-secrets"}  # the one object the operator creates (no default passwords)

    scaled = by_kind(docs, "ScaledObject", "emostream-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "emostream-worker"
    assert scaled["spec"]["maxReplicaCount"] == settings.kafka.topics.partitions  # more would idle
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == settings.kafka.group_id
    assert trigger["metadata"]["bootstrapServers"] == settings.kafka.brokers
    pdb = by_kind(docs, "PodDisruptionBudget", "emostream-worker")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()
    monitor = by_kind(docs, "ServiceMonitor", "emostream-worker")
    service = by_kind(docs, "Service", "emostream-worker-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {p["name"] for p in service["spec"]["ports"]} >= {monitor["spec"]["endpoints"][0]["port"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"

    from streams.cli import build_parser

    ui = by_kind(docs, "Deployment", "emostream-ui")["spec"]["template"]["spec"]["containers"][0]
    # the page reads Kafka, never Redis: no secret of the Secret but Kafka's reaches it
    assert not any("secretRef" in r for r in ui["envFrom"])
    from_secret = [
        e["valueFrom"]["secretKeyRef"] for e in ui.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert from_secret and all(k["key"].startswith("EMOSTREAM_KAFKA__") and k["optional"] for k in from_secret)
    assert build_parser().parse_args(ui["args"][1:]).func is not None  # flags emostream ui accepts
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    variant = {"cpu": "", "gpu": "-gpu"}[overlay]  # an overlay this test does not know fails here
    assert container["image"].rsplit(":", 1)[1] == version + variant, f"{container['image']}: not {version}{variant}"
    assert ui["image"].rsplit(":", 1)[1] == version, f"{ui['image']}: the page runs on the CPU image"
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (settings.engine.runtime, gpus) == {"cpu": ("auto", None), "gpu": ("torch-cuda", 1)}[overlay]


def test_the_gpu_overlay_puts_one_gpu_worker_on_a_gpu_node(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render("gpu")
    settings = settings_of(docs, monkeypatch)
    worker = by_kind(docs, "Deployment", "emostream-worker")["spec"]["template"]["spec"]
    (container,) = worker["containers"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]  # an extended resource: limits alone
    assert settings.engine.max_batch == 256 and settings.engine.runtime == "torch-cuda"
    cpu = by_kind(render("cpu"), "ScaledObject", "emostream-worker")["spec"]["triggers"][0]["metadata"]
    gpu = by_kind(docs, "ScaledObject", "emostream-worker")["spec"]["triggers"][0]["metadata"]
    assert int(gpu["lagThreshold"]) > int(cpu["lagThreshold"])
    ui = by_kind(docs, "Deployment", "emostream-ui")["spec"]["template"]["spec"]
    assert "tolerations" not in ui and "nvidia.com/gpu" not in str(ui)
