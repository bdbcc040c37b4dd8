"""``TorchEngine``: an artifact's PyTorch weights run eagerly (reference for parity and training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines import artifact
from engines.interface import MODALITIES, EngineBatch, EngineInfo, EngineOutput


def torch_inputs(batch: EngineBatch, dims: dict[str, int], device: str = "cpu") -> dict[str, Any]:
    """EngineBatch -> keyword tensors for a model's ``forward`` (:mod:`engines.models`)."""
    import torch

    def f32(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    def i64(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

    kw: dict[str, Any] = {m: (f32(getattr(batch, m)) if dims[m] > 0 else None) for m in MODALITIES}
    kw.update(
        present=f32(batch.present), speakers=i64(batch.speakers), valid=f32(batch.valid), target=i64(batch.target)
    )
    return kw


class TorchEngine:
    """Implements :class:`engines.interface.Engine` with the PyTorch model (CPU or CUDA)."""

    def __init__(
        self, model_dir: str | Path | None = None, net: Any = None, device: str = "cpu", labels: Any = None
    ) -> None:
        if net is None:
            assert model_dir is not None, "give model_dir or net"
            self.model_dir = artifact.resolve_model_dir(model_dir)
            net = artifact.load_torch_model(self.model_dir)
            self.info = artifact.engine_info(self.model_dir, runtime="torch")
        else:
            from engines.interface import FeatureSpec

            c = net.cfg
            self.info = EngineInfo(
                type(net).__module__.rsplit(".", 1)[-1],
                "dev",
                labels=tuple(labels) if labels else tuple(f"class{i}" for i in range(c.n_classes)),
                features=FeatureSpec(c.text_dim, c.audio_dim, c.video_dim),
                max_window=c.max_window,
                runtime="torch",
            )
        self.net = net.to(device).eval()
        self.device = device

    def predict(self, batch: EngineBatch) -> EngineOutput:
        import torch

        with torch.inference_mode():
            out = self.net(**torch_inputs(batch, self.info.features.dims(), self.device))
            logits = out["logits"].float()
            probs = torch.softmax(logits, dim=-1)
        return EngineOutput(
            logits=logits.cpu().numpy(),
            probs=probs.cpu().numpy(),
            sentiment=out["sentiment"].float().cpu().numpy(),
            weights=out["weights"].float().cpu().numpy(),
        )
