"""Export any engine model (:mod:`engines.models`) to ONNX following :mod:`engines.spec`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from engines.errors import ArtifactError
from engines.interface import MODALITIES, FeatureSpec
from engines.spec import EngineSpec, engine_spec

FORBIDDEN_OPS = frozenset({"ScatterND", "ScatterElements", "Scatter", "Loop", "If"})


def example_inputs(spec: EngineSpec, batch: int = 2, window: int = 3, seed: int = 0) -> dict[str, Any]:
    """Random numpy inputs matching ``spec`` (valid masks, targets inside the window)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for t in spec.inputs:
        if t.name in MODALITIES:
            out[t.name] = rng.standard_normal((batch, window, int(t.shape[2]))).astype(np.float32)
    out["present"] = (rng.random((batch, window, len(MODALITIES))) > 0.3).astype(np.float32)
    for m, name in enumerate(MODALITIES):
        if name not in out:  # a modality the model has no features of is never present (as the stream packs)
            out["present"][..., m] = 0.0
    out["speakers"] = rng.integers(0, 3, size=(batch, window)).astype(np.int64)
    valid = np.ones((batch, window), dtype=np.float32)
    for i in range(batch):
        valid[i, : int(rng.integers(0, window))] = 0.0  # left padding
    out["valid"] = valid
    out["target"] = np.full((batch,), window - 1, dtype=np.int64)
    return out


def example_batch(spec: EngineSpec, batch: int = 2, window: int = 3, seed: int = 0) -> Any:
    """:func:`example_inputs` as an :class:`~engines.interface.EngineBatch` (a modality the spec
    lacks gets features of size 0)."""
    import numpy as np

    from engines.interface import EngineBatch

    x = example_inputs(spec, batch, window, seed)
    empty = np.zeros((batch, window, 0), np.float32)
    feats = {m: x.get(m, empty) for m in MODALITIES}
    return EngineBatch(feats, x["present"], x["speakers"], x["valid"], x["target"])


def _wrapper(net: Any) -> Any:
    """The exported graph: the spec's named inputs in, (logits, probs, sentiment, weights) out."""
    import torch
    from torch import nn

    from engines.models import forward_kwargs

    class ExportWrapper(nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, *inputs: Any) -> tuple[Any, Any, Any, Any]:
            names = [MODALITIES[m] for m in self.net.active] + ["present", "speakers", "valid", "target"]
            out = self.net(**forward_kwargs(dict(zip(names, inputs, strict=True))))
            logits = out["logits"]
            return logits, torch.softmax(logits, dim=-1), out["sentiment"], out["weights"]

    return ExportWrapper(net)


def export_onnx(net: Any, features: FeatureSpec, path: str | Path) -> EngineSpec:
    """Write ``net`` (eval mode) to ``path`` as ONNX with dynamic batch and window axes."""
    import onnx
    import torch

    spec = engine_spec(features, n_classes=net.cfg.n_classes)
    wrapper = _wrapper(net.eval()).eval()
    args = tuple(torch.from_numpy(v) for v in example_inputs(spec).values())
    names = list(example_inputs(spec).keys())
    assert names == spec.input_names, (names, spec.input_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=spec.opset,
            dynamo=False,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    bad = sorted({n.op_type for n in model.graph.node} & FORBIDDEN_OPS)
    if bad:
        raise ArtifactError(f"exported graph uses ops {bad}; keep the model dense")
    return spec
