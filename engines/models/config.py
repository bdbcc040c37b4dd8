"""What every engine's ``Config`` dataclass shares (see :mod:`engines.models`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from engines.modalities import MODALITIES, FeatureSpec, dim_key


@dataclass
class PerModality:
    """What every engine Config holds per modality, first: the feature sizes, as its ``config.json``
    keeps them (:func:`engines.modalities.dim_key`; read them through :attr:`ModelConfig.features`),
    and the training-only noise and feature masking of each modality's vector, in MODALITIES order."""

    text_dim: int = 384
    audio_dim: int = 0
    video_dim: int = 0
    input_noise: tuple[float, ...] = (0.0,) * len(MODALITIES)  # std of Gaussian noise on the normalised vector
    input_mask: tuple[float, ...] = (0.0,) * len(MODALITIES)  # share of its features zeroed


class ModelConfig(PerModality):
    """Methods of an engine Config (a dataclass deriving from this, with the engine's own
    hyper-parameters). Subclasses extend ``__post_init__`` with super()."""

    def __post_init__(self) -> None:
        self.input_noise = tuple(float(v) for v in self.input_noise)  # JSON gives lists
        self.input_mask = tuple(float(v) for v in self.input_mask)
        assert len(self.input_noise) == len(self.input_mask) == len(MODALITIES)
        assert all(hasattr(self, dim_key(m)) for m in MODALITIES), "PerModality lacks a modality"
        d_model, n_heads = getattr(self, "d_model", None), getattr(self, "n_heads", None)
        if isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0 and d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be a multiple of n_heads {n_heads} (--d-model, --heads)")

    @property
    def features(self) -> FeatureSpec:
        """The feature sizes, keyed by modality."""
        return FeatureSpec({m: getattr(self, dim_key(m)) for m in MODALITIES})

    def active(self) -> list[int]:
        """Indices (into MODALITIES) of the modalities this model has inputs for."""
        return [i for i, d in enumerate(self.features.sizes) if d > 0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]
