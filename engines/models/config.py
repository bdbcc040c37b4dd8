"""What every engine's ``Config`` dataclass shares (see :mod:`engines.models`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from engines.interface import MODALITIES


class ModelConfig:
    """Methods of an engine Config; the dataclass declares ``text_dim, audio_dim, video_dim,
    input_noise, input_mask`` and the rest. Subclasses extend ``__post_init__`` with super()."""

    text_dim: int
    audio_dim: int
    video_dim: int
    input_noise: tuple[float, ...]
    input_mask: tuple[float, ...]

    def __post_init__(self) -> None:
        self.input_noise = tuple(float(v) for v in self.input_noise)  # JSON gives lists
        self.input_mask = tuple(float(v) for v in self.input_mask)
        assert len(self.input_noise) == len(self.input_mask) == len(MODALITIES)
        d_model, n_heads = getattr(self, "d_model", None), getattr(self, "n_heads", None)
        if isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0 and d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be a multiple of n_heads {n_heads} (--d-model, --heads)")

    def dims(self) -> tuple[int, int, int]:
        return (self.text_dim, self.audio_dim, self.video_dim)

    def active(self) -> list[int]:
        """Indices (into MODALITIES) of the modalities this model has inputs for."""
        return [i for i, d in enumerate(self.dims()) if d > 0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]
