"""``TorchEngine``: an artifact's PyTorch weights run eagerly: the fp32 reference on the CPU (parity,
training) and the ``torch-cuda`` runtime (bf16 autocast on a CUDA GPU, batches padded to
power-of-two sizes so the GPU sees a few shapes: see :mod:`engines.runtime.select`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines import artifact
from engines.interface import MODALITIES, EngineBatch, EngineInfo, EngineOutput
from engines.runtime.precision import autocast
from engines.runtime.threads import apply_to_torch


def torch_inputs(batch: EngineBatch, dims: dict[str, int], device: str = "cpu") -> dict[str, Any]:
    """EngineBatch -> keyword tensors for a model's ``forward`` (:mod:`engines.models`)."""
    import torch

    def f32(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    def i64(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

    return {
        "features": {m: (f32(a) if dims[m] > 0 else None) for m, a in batch.features.items()},
        "present": f32(batch.present),
        "speakers": i64(batch.speakers),
        "valid": f32(batch.valid),
        "target": i64(batch.target),
    }


def bucket(n: int, largest: int = 1024) -> int:
    """The power of two at or above ``n`` (``n`` itself past ``largest``)."""
    b = 1
    while b < n and b < largest:
        b *= 2
    return max(b, n)


def pad_batch(batch: EngineBatch, size: int) -> EngineBatch:
    """``batch`` with its last window repeated up to ``size`` windows (their outputs are dropped)."""
    extra = size - batch.size
    if extra <= 0:
        return batch

    def pad(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.repeat(a[-1:], extra, axis=0)], axis=0)

    return batch.map(pad)


class TorchEngine:
    """Implements :class:`engines.interface.Engine` with the PyTorch model (CPU or CUDA).

    ``autocast="bfloat16"`` runs the forward pass under ``torch.autocast`` (matmuls in bf16,
    weights kept fp32); ``buckets`` pads each batch to :func:`bucket` windows; ``runtime`` is the
    name the engine's events and metrics carry.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        net: Any = None,
        device: str = "cpu",
        labels: Any = None,
        autocast: str | None = None,
        buckets: bool = False,
        runtime: str = "torch",
    ) -> None:
        if net is None:
            assert model_dir is not None, "give model_dir or net"
            self.model_dir = artifact.resolve_model_dir(model_dir)
            net = artifact.load_torch_model(self.model_dir)
            self.info = artifact.engine_info(self.model_dir, runtime=runtime)
        else:
            c = net.cfg
            self.info = EngineInfo(
                type(net).__module__.rsplit(".", 1)[-1],
                "dev",
                labels=tuple(labels) if labels else tuple(f"class{i}" for i in range(c.n_classes)),
                features=c.features,
                max_window=c.max_window,
                runtime=runtime,
            )
        self.net = net.to(device).eval()
        apply_to_torch()
        self.device = device
        self.autocast = autocast
        self.buckets = buckets

    def predict(self, batch: EngineBatch) -> EngineOutput:
        import torch

        n = batch.size
        if n == 0:
            c = len(self.info.labels)
            z = np.zeros((0, c), dtype=np.float32)
            return EngineOutput(z, z.copy(), np.zeros((0,), np.float32), np.zeros((0, len(MODALITIES)), np.float32))
        if self.buckets:
            batch = pad_batch(batch, bucket(n))
        with torch.inference_mode(), autocast(self.device, self.autocast):
            out = self.net(**torch_inputs(batch, self.info.features.dims(), self.device))
        logits = out["logits"][:n].float()
        probs = torch.softmax(logits, dim=-1)
        return EngineOutput(
            logits=logits.cpu().numpy(),
            probs=probs.cpu().numpy(),
            sentiment=out["sentiment"][:n].float().cpu().numpy(),
            weights=out["weights"][:n].float().cpu().numpy(),
        )
