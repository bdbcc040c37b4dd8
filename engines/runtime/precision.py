"""``autocast(device, dtype)``: the one way the torch parts (engine, text and audio encoders) run in
reduced precision; ``dtype=None`` is plain fp32 (a no-op context)."""

from __future__ import annotations

import contextlib
from typing import Any


def autocast(device: str, dtype: str | None) -> Any:
    """``torch.autocast`` for ``device`` ("cpu", "cuda", "cuda:1") in ``dtype`` ("bfloat16"), or nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=getattr(torch, dtype))
