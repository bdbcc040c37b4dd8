"""Model artifact directories: what training writes and what the service loads.

config.json          engine name, version, model config, training arguments
weights.safetensors  PyTorch weights (normalisation statistics included as buffers)
labels.json          class names in logits order
features.json        feature spec, text encoder and audio extractor configuration, and the
                     normaliser statistics fit on the training set
spec.json            the engine I/O spec (engines.spec) the graph was exported with
metrics.json         dev figures at the end of training
model.onnx           the exported graph (run by engines.runtime.onnx.OnnxEngine)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engines.errors import ArtifactError
from engines.interface import EngineInfo, FeatureSpec

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
LABELS = "labels.json"
FEATURES = "features.json"
SPEC = "spec.json"
METRICS = "metrics.json"
ONNX = "model.onnx"

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_DIR = MODELS_DIR / "default"
SHIPPED: tuple[str, ...] = ("default", "revised")  # names of the artifacts under models/


def resolve_model_dir(model_dir: str | Path) -> Path:
    """``"default"`` / ``"revised"`` -> the shipped ``models/<name>``; otherwise the path, which must exist."""
    path = MODELS_DIR / str(model_dir) if str(model_dir) in SHIPPED else Path(model_dir)
    if not (path / CONFIG).is_file():
        raise ArtifactError(f"not a model artifact (no {CONFIG}): {path}")
    return path


def read_json(model_dir: Path, name: str) -> Any:
    path = model_dir / name
    if not path.is_file():
        raise ArtifactError(f"artifact {model_dir} lacks {name}")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def write_json(model_dir: Path, name: str, obj: Any) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    with (model_dir / name).open("w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def feature_spec(model_dir: Path) -> FeatureSpec:
    spec = read_json(model_dir, FEATURES).get("spec")
    if not isinstance(spec, dict):
        raise ArtifactError(f"{model_dir / FEATURES} has no 'spec'")
    return FeatureSpec(**spec)


def engine_info(model_dir: Path, runtime: str) -> EngineInfo:
    cfg = read_json(model_dir, CONFIG)
    labels = tuple(read_json(model_dir, LABELS))
    if not labels or not all(isinstance(x, str) for x in labels):
        raise ArtifactError(f"{model_dir / LABELS}: expected a list of class names")
    return EngineInfo(
        name=str(cfg.get("name", cfg.get("engine", "unknown"))),
        version=str(cfg.get("version", "0")),
        labels=labels,
        features=feature_spec(model_dir),
        max_window=int(cfg.get("max_window", cfg.get("model", {}).get("max_window", 12))),
        runtime=runtime,
        future=int(cfg.get("future", 0)),
    )


def load_torch_model(model_dir: str | Path) -> Any:
    """The PyTorch model of an artifact (any engine of :mod:`engines.models`), in eval mode."""
    from safetensors.torch import load_file

    from engines.models import build_model

    path = resolve_model_dir(model_dir)
    cfg = read_json(path, CONFIG)
    net = build_model(str(cfg.get("engine")), cfg["model"])
    if not (path / WEIGHTS).is_file():
        raise ArtifactError(f"artifact {path} lacks {WEIGHTS}")
    state = load_file(str(path / WEIGHTS))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{path}: weights do not match config (missing {missing}, unexpected {unexpected})")
    return net.eval()
