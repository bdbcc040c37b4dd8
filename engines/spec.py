"""The I/O contract of an exported engine graph: names, dtypes, shapes, dynamic axes, opset.

Export, the ONNX Runtime loader and the parity tests all read it from here (Triton-style model
config). Inputs are the non-empty modality features in :data:`engines.interface.MODALITIES`
order, then ``present``, ``speakers``, ``valid``, ``target``; outputs mirror
:class:`engines.interface.EngineOutput`. A modality of size 0 has no graph input at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engines.interface import EMOTIONS, MODALITIES, FeatureSpec

OPSET = 17
BATCH = "batch"
WINDOW = "window"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32" or "int64"
    shape: tuple[str | int, ...]  # str = dynamic axis name

    def dynamic_axes(self) -> dict[int, str]:
        return {i: s for i, s in enumerate(self.shape) if isinstance(s, str)}


@dataclass(frozen=True)
class EngineSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = OPSET

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes() for t in (*self.inputs, *self.outputs) if t.dynamic_axes()}

    def to_dict(self) -> dict[str, Any]:
        def one(t: TensorSpec) -> dict[str, Any]:
            return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}

        return {"opset": self.opset, "inputs": [one(t) for t in self.inputs], "outputs": [one(t) for t in self.outputs]}


def engine_spec(features: FeatureSpec, n_classes: int = len(EMOTIONS), opset: int = OPSET) -> EngineSpec:
    """The spec of an engine trained on ``features``."""
    dims = features.dims()
    inputs = [TensorSpec(m, "float32", (BATCH, WINDOW, dims[m])) for m in MODALITIES if dims[m] > 0]
    inputs += [
        TensorSpec("present", "float32", (BATCH, WINDOW, len(MODALITIES))),
        TensorSpec("speakers", "int64", (BATCH, WINDOW)),
        TensorSpec("valid", "float32", (BATCH, WINDOW)),
        TensorSpec("target", "int64", (BATCH,)),
    ]
    outputs = (
        TensorSpec("logits", "float32", (BATCH, n_classes)),
        TensorSpec("probs", "float32", (BATCH, n_classes)),
        TensorSpec("sentiment", "float32", (BATCH,)),
        TensorSpec("weights", "float32", (BATCH, len(MODALITIES))),
    )
    return EngineSpec(tuple(inputs), outputs, opset)
