"""Random forward inputs for the engine model unit tests (text and audio present, no video)."""

from __future__ import annotations

from typing import Any

import torch

DT, DA = 12, 10  # text and audio feature sizes of the small test models


def make_inputs(b: int = 4, w: int = 6, seed: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    present = torch.ones(b, w, 3)
    present[..., 2] = 0.0
    return {
        "text": torch.randn(b, w, DT, generator=g),
        "audio": torch.randn(b, w, DA, generator=g),
        "video": None,
        "present": present,
        "speakers": torch.randint(0, 3, (b, w), generator=g),
        "valid": torch.ones(b, w),
        "target": torch.full((b,), w - 1, dtype=torch.long),
    }
