"""Model artifact directories: what training writes and what the service loads.

config.json          engine name, version, model config, training arguments
weights.safetensors  PyTorch weights (normalisation statistics included as buffers)
labels.json          class names in logits order
features.json        feature spec, text encoder and audio extractor configuration, and the
                     normaliser statistics fit on the training set
spec.json            the engine I/O spec (engines.spec) the graph was exported with
metrics.json         dev figures at the end of training
model.onnx           the exported graph (run by engines.runtime.onnx.OnnxEngine)
text_network.safetensors  (optional, gated models) the weights of a words-only network that stands in
                     wherever the target's voice is absent (config.json's ``text_network``; engines/trust.py)
checksums.json       SHA-256 of every file above that is loaded (and of text_encoder.safetensors):
                     written last by training (:func:`seal`); the stream refuses an artifact whose
                     files do not match it (:func:`verify`). ``python -m engines.artifact seal DIR``
                     seals an artifact you edited by hand and trust; ``... export DIR`` writes
                     its model.onnx again from its weights (after a change to how a model
                     computes, not what), refusing a graph whose outputs differ from the old one's.

Weights are only ever read from safetensors and ONNX files (no pickles).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
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
CHECKSUMS = "checksums.json"
TEXT_NETWORK = "text_network.safetensors"
SEALED: tuple[str, ...] = (CONFIG, WEIGHTS, LABELS, FEATURES, SPEC, ONNX)  # and every *.safetensors

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_DIR = MODELS_DIR / "default"
SHIPPED: tuple[str, ...] = ("default", "revised")  # names of the artifacts under models/


def resolve_model_dir(model_dir: str | Path) -> Path:
    """``"default"`` / ``"revised"`` -> the shipped ``models/<name>``; otherwise the path, which must exist."""
    path = MODELS_DIR / str(model_dir) if str(model_dir) in SHIPPED else Path(model_dir)
    if not (path / CONFIG).is_file():
        import difflib

        close = difflib.get_close_matches(str(model_dir), SHIPPED, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; the shipped ones: {', '.join(SHIPPED)}"
        raise ArtifactError(f"not a model artifact (no {CONFIG}): {path}{hint}")
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


#: the levels a model can have learnt its voices at (engines/features/level.py; engine.audio_level)
AUDIO_LEVELS = ("as-sent", "speaker")


def audio_level(model_dir: str | Path) -> str:
    """The level the model learnt its voices at (``train --audio-level``): "as-sent" (every model
    trained before the option) or "speaker"."""
    level = (read_json(resolve_model_dir(model_dir), CONFIG).get("train") or {}).get("audio_level", "as-sent")
    if level not in AUDIO_LEVELS:
        raise ArtifactError(f"artifact {model_dir}: train.audio_level {level!r} is none of {AUDIO_LEVELS}")
    return str(level)


def feature_spec(model_dir: Path) -> FeatureSpec:
    spec = read_json(model_dir, FEATURES).get("spec")
    if not isinstance(spec, dict):
        raise ArtifactError(f"{model_dir / FEATURES} has no 'spec'")
    try:
        return FeatureSpec.from_dict(spec)
    except ValueError as exc:
        raise ArtifactError(f"{model_dir / FEATURES}: {exc}") from exc


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


def load_torch_model(model_dir: str | Path, trusted: bool = True) -> Any:
    """The PyTorch model of an artifact (any engine of :mod:`engines.models`), in eval mode; with
    ``trusted=False``, its network without the voice gate of ``engines.trust`` around it."""
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
    if trusted and cfg.get("trust") is not None:  # the voice gate and Shapley weights around it (engines/trust.py)
        from engines.trust import TRUST_WEIGHTS, TrustConfig, load_trust, wrap

        if not (path / TRUST_WEIGHTS).is_file():
            raise ArtifactError(f"artifact {path} has a trust config but lacks {TRUST_WEIGHTS}")
        tensors = load_trust(path)
        text_net = load_text_network(path, cfg)
        try:
            return wrap(net.eval(), tensors, TrustConfig(**cfg["trust"]), text_net=text_net)
        except ValueError as exc:  # a words network that cannot stand in for this one
            raise ArtifactError(f"artifact {path}: {exc}") from None
    return net.eval()


def load_text_network(path: Path, cfg: dict[str, Any]) -> Any:
    """The words-only network recorded in ``cfg["text_network"]`` (weights in
    :data:`TEXT_NETWORK`), in eval mode; None when the artifact has none."""
    from safetensors.torch import load_file

    from engines.models import build_model

    record = cfg.get("text_network")
    if record is None:
        return None
    if not (path / TEXT_NETWORK).is_file():
        raise ArtifactError(f"artifact {path} names a text network but lacks {TEXT_NETWORK}")
    if record.get("sha256") not in (None, file_sha256(path / TEXT_NETWORK)):
        raise ArtifactError(f"artifact {path}: {TEXT_NETWORK} is not the one config.json's text_network records")
    net = build_model(str(record.get("engine")), record["model"])
    missing, unexpected = net.load_state_dict(load_file(str(path / TEXT_NETWORK)), strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"{path}: {TEXT_NETWORK} does not match its config (missing {missing}, unexpected {unexpected})"
        )
    return net.eval()


def take_text_network(
    source: str | Path, labels: Sequence[str], text: dict[str, Any] | None, max_window: int, future: int
) -> tuple[Any, dict[str, Any]]:
    """Check that the sealed artifact ``source`` is a words-only network that can stand in for the
    one being trained (the same labels, text features, window and causality); return (its network,
    the record for config.json). Nothing is written: the caller copies ``source/weights.safetensors``
    as :data:`TEXT_NETWORK` with the rest of the artifact."""
    from safetensors.torch import load_file

    from engines.models import build_model

    src = verify(source)
    cfg, spec = read_json(src, CONFIG), read_json(src, FEATURES)
    if feature_spec(src).used() != ("text",):
        raise ArtifactError(f"--text-network {source}: a words-only artifact is needed; it reads {spec['spec']}")
    if tuple(read_json(src, LABELS)) != tuple(labels):
        raise ArtifactError(f"--text-network {source}: its labels {read_json(src, LABELS)} are not {list(labels)}")
    if spec.get("text") != text:
        raise ArtifactError(
            f"--text-network {source}: its text features ({spec.get('text')}) are not this model's ({text}): "
            "train it with the same --text-encoder and --text-weights"
        )
    window = int(cfg.get("max_window", cfg["model"].get("max_window", 0)))
    if (window, int(cfg.get("future", 0))) != (max_window, future):
        raise ArtifactError(
            f"--text-network {source}: window {window} / future {cfg.get('future', 0)}, "
            f"this model's {max_window} / {future}"
        )
    net = build_model(str(cfg.get("engine")), cfg["model"])
    missing, unexpected = net.load_state_dict(load_file(str(src / WEIGHTS)), strict=False)
    if missing or unexpected:
        raise ArtifactError(f"--text-network {source}: weights do not match its config")
    metrics = read_json(src, METRICS) if (src / METRICS).is_file() else {}
    record = {
        "engine": cfg.get("engine"),
        "model": cfg["model"],
        "from": str(source),
        "sha256": file_sha256(src / WEIGHTS),
        "recipe": cfg.get("recipe"),
        "dev_weighted_f1": metrics.get("text", {}).get("weighted_f1"),
        "best_epoch": metrics.get("best_epoch"),
    }
    return net.eval(), record


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sealed_files(model_dir: Path) -> list[str]:
    names = {n for n in SEALED if (model_dir / n).is_file()}
    names |= {p.name for p in model_dir.glob("*.safetensors")}
    return sorted(names)


def seal(model_dir: str | Path) -> dict[str, str]:
    """Record the SHA-256 of the artifact's files in ``checksums.json``; returns them."""
    path = Path(model_dir)
    sums = {name: file_sha256(path / name) for name in _sealed_files(path)}
    write_json(path, CHECKSUMS, {"sha256": sums})
    return sums


def verify(model_dir: str | Path) -> Path:
    """Raise :class:`ArtifactError` unless every file the service loads is listed in
    ``checksums.json`` with its SHA-256; returns the resolved directory."""
    path = resolve_model_dir(model_dir)
    if not (path / CHECKSUMS).is_file():
        raise ArtifactError(
            f"artifact {path} has no {CHECKSUMS}: the stream loads only sealed artifacts "
            f"(training writes it; `python -m engines.artifact seal {path}` seals one you trust)"
        )
    recorded = read_json(path, CHECKSUMS).get("sha256", {})
    for name in _sealed_files(path):
        if name not in recorded:
            raise ArtifactError(f"artifact {path}: {name} is not in {CHECKSUMS}")
        if file_sha256(path / name) != recorded[name]:
            raise ArtifactError(
                f"artifact {path}: {name} does not match its SHA-256 in {CHECKSUMS} (changed or corrupt)"
            )
    for name in recorded:
        if not (path / name).is_file():
            raise ArtifactError(f"artifact {path} lacks {name}, listed in {CHECKSUMS}")
    return path


def reexport(model_dir: str | Path, tolerance: float = 1e-4, changed: Sequence[str] = ()) -> dict[str, float]:
    """Export a sealed artifact's PyTorch model to its ``model.onnx`` again (after a change to how
    a model computes, not to what: the weights are untouched), check the new graph against the old
    one on a batch of random windows, then seal. ``changed`` names outputs meant to differ (a new
    definition of the weights, say): the others must still match. Returns the largest difference
    per output."""
    import shutil
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from engines.export import example_inputs, export_onnx

    path = verify(model_dir)
    spec = feature_spec(path)
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / ONNX
        onnx_spec = export_onnx(load_torch_model(path), spec, new)
        if onnx_spec.to_dict() != read_json(path, SPEC):
            raise ArtifactError(f"{path}: the export's graph spec differs from {SPEC}; retrain instead")
        feeds = example_inputs(onnx_spec, batch=64, window=12, seed=7)
        rng = np.random.default_rng(7)  # targets anywhere in each window (a revision model's are not last)
        first = (feeds["valid"] == 0).sum(1)
        feeds["target"] = np.array([rng.integers(f, feeds["valid"].shape[1]) for f in first], dtype=np.int64)
        old_out = ort.InferenceSession(str(path / ONNX)).run(None, feeds)
        new_out = ort.InferenceSession(str(new)).run(None, feeds)
        diff = {n: float(np.abs(a - b).max()) for n, a, b in zip(onnx_spec.output_names, old_out, new_out, strict=True)}
        unknown = set(changed) - set(diff)
        if unknown:
            raise ArtifactError(f"{path}: no output {sorted(unknown)}; the graph's are {sorted(diff)}")
        if not all(np.isfinite(out).all() for out in new_out):
            raise ArtifactError(f"{path}: the new graph gives non-finite outputs; not replaced")
        kept = [d for n, d in diff.items() if n not in changed]
        if any(not np.isfinite(d) or d > tolerance for d in kept):
            raise ArtifactError(f"{path}: the new graph computes something else ({diff}); not replaced")
        staged = path / f".{ONNX}.new"  # beside it, then renamed: a worker starting meanwhile reads either graph whole
        shutil.copyfile(new, staged)
        os.replace(staged, path / ONNX)
    seal(path)
    return diff


def main(argv: list[str] | None = None) -> int:
    """``python -m engines.artifact seal|verify|export DIR`` (``export DIR --changed OUTPUT,...``:
    those outputs are meant to differ from the old graph's)."""
    args = sys.argv[1:] if argv is None else argv
    changed: list[str] = []
    if len(args) == 4 and args[0] == "export" and args[2] == "--changed":
        changed, args = args[3].split(","), args[:2]
    if len(args) != 2 or args[0] not in ("seal", "verify", "export"):
        print("usage: python -m engines.artifact seal|verify|export MODEL_DIR [--changed OUTPUT,...]", file=sys.stderr)
        return 2
    try:
        if args[0] == "seal":
            print(json.dumps(seal(args[1]), indent=2))
        elif args[0] == "export":
            print(json.dumps({"max_abs_difference": reexport(args[1], changed=changed)}))
        else:
            print(f"{verify(args[1])}: every file matches {CHECKSUMS}")
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
