"""``OnnxEngine``: an artifact's ``model.onnx`` run by ONNX Runtime (CPU by default)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines import artifact
from engines.errors import ArtifactError
from engines.interface import MODALITIES, EngineBatch, EngineInfo, EngineOutput
from engines.runtime.threads import cpu_threads
from engines.spec import EngineSpec, engine_spec


class OnnxEngine:
    """Implements :class:`engines.interface.Engine` for an artifact directory."""

    def __init__(
        self,
        model_dir: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        runtime: str = "onnxruntime",
    ) -> None:
        import onnxruntime as ort

        self.model_dir = artifact.resolve_model_dir(model_dir)
        self.info: EngineInfo = artifact.engine_info(self.model_dir, runtime=runtime)  # the name events carry
        self.spec: EngineSpec = engine_spec(self.info.features, n_classes=len(self.info.labels))
        path = self.model_dir / artifact.ONNX
        if not path.is_file():
            raise ArtifactError(f"artifact {self.model_dir} lacks {artifact.ONNX}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = intra_op_threads if intra_op_threads is not None else cpu_threads()
        if threads is not None:
            opts.intra_op_num_threads = threads
        self.session: Any = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
        got = [i.name for i in self.session.get_inputs()]
        if got != self.spec.input_names:
            raise ArtifactError(f"{path}: graph inputs {got} differ from spec {self.spec.input_names}")

    def feeds(self, batch: EngineBatch) -> dict[str, np.ndarray]:
        """The graph inputs for ``batch`` (dtypes and feature sizes checked against the spec)."""
        dims = self.info.features.dims()
        feeds: dict[str, np.ndarray] = {}
        arrays = batch.inputs()
        for t in self.spec.inputs:
            arr = np.ascontiguousarray(arrays[t.name], dtype=t.dtype)
            if t.name in MODALITIES and arr.shape[2] != dims[t.name]:
                raise ValueError(f"{t.name} features have size {arr.shape[2]}, engine expects {dims[t.name]}")
            feeds[t.name] = arr
        return feeds

    def predict(self, batch: EngineBatch) -> EngineOutput:
        n_c = len(self.info.labels)
        if batch.size == 0:
            z = np.zeros((0, n_c), dtype=np.float32)
            return EngineOutput(z, z.copy(), np.zeros((0,), np.float32), np.zeros((0, len(MODALITIES)), np.float32))
        logits, probs, sentiment, weights = self.session.run(self.spec.output_names, self.feeds(batch))
        return EngineOutput(
            logits=logits.astype(np.float32, copy=False),
            probs=probs.astype(np.float32, copy=False),
            sentiment=sentiment.astype(np.float32, copy=False),
            weights=weights.astype(np.float32, copy=False),
        )
