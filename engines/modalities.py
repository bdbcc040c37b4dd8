"""The one registry of modalities: their names, order and feature sizes.

Everything that handles text, audio and video alike (the stream's join, the engine batch, the
windows, the graph's inputs, the networks' projectors, the artifacts' feature spec) loops over
:data:`MODALITIES` and keys its data by these names; code that treats one modality on its own (the
text encoder, the audio extractor and its speech gate, each part's wire format) names it. Adding a
modality means adding a :class:`Modality` here, the code that makes its vector, its part in
``streams/schemas.py`` (the ``Modality`` literal, which a test keeps equal to :data:`MODALITIES`)
and ``streams/validate.py``, and its size in ``engines/models/config.PerModality``; the batch,
the graph and the networks follow from the feature size an artifact records for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np


@dataclass(frozen=True)
class Modality:
    """One modality of an utterance."""

    name: str
    vector: str  # what makes its per-utterance vector (in the worker, or upstream of the stream)
    augmentation: str  # what training does to it so that served input looks like what it was trained on


REGISTRY: tuple[Modality, ...] = (
    Modality(
        "text",
        "the artifact's sentence encoder on the transcript (engines/features/text.py), or a vector sent with it",
        "input noise and masking of the vector (the engine config's input_noise, input_mask)",
    ),
    Modality(
        "audio",
        "the artifact's audio extractor on the decoded, 16 kHz clip (engines/features/audio.py), "
        "behind the speech gate; or a vector sent with it",
        "the telephone channel (engines/features/channel.py: band-limit, G.711, loss, noise, gain), "
        "contradicting clips (--corrupt-audio) and input noise and masking",
    ),
    Modality(
        "video",
        "a vector sent with the part (no extractor ships: face features are computed upstream)",
        "input noise and masking of the vector",
    ),
)

#: The modalities' names in the order every batch, graph input and ``present`` column uses.
MODALITIES: tuple[str, ...] = tuple(m.name for m in REGISTRY)


def index(name: str) -> int:
    """The position of modality ``name`` in :data:`MODALITIES` (ValueError for an unknown one)."""
    try:
        return MODALITIES.index(name)
    except ValueError:
        raise ValueError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}") from None


def dim_key(name: str) -> str:
    """The key of modality ``name``'s feature size in an artifact's ``features.json`` spec and in
    an engine config (``text_dim``, ...)."""
    return f"{name}_dim"


@dataclass(frozen=True, init=False)
class FeatureSpec:
    """Per-utterance feature sizes an engine was trained on, one per modality (0: not used).

    ``FeatureSpec({"text": 384, "audio": 1280})``; a modality left out has size 0. With no
    argument: a 384-wide text vector alone (the MiniLM sentence encoder's size).
    """

    sizes: tuple[int, ...]  # in MODALITIES order

    def __init__(self, dims: Mapping[str, int] | None = None) -> None:
        dims = {"text": 384} if dims is None else dims
        for name, d in dims.items():
            index(name)
            if not isinstance(d, int | np.integer) or isinstance(d, bool) or d < 0:
                raise ValueError(f"the feature size of {name} is {d!r}; expected a whole number, 0 or more")
        object.__setattr__(self, "sizes", tuple(int(dims.get(m, 0)) for m in MODALITIES))

    def __repr__(self) -> str:
        return f"FeatureSpec({self.dims()})"

    def dim(self, name: str) -> int:
        return self.sizes[index(name)]

    def dims(self) -> dict[str, int]:
        """Every modality's size, 0 for those not used, in :data:`MODALITIES` order."""
        return dict(zip(MODALITIES, self.sizes, strict=True))

    def used(self) -> tuple[str, ...]:
        """The modalities with a feature vector (size above 0), in order."""
        return tuple(m for m, d in zip(MODALITIES, self.sizes, strict=True) if d > 0)

    def to_dict(self) -> dict[str, int]:
        """As ``features.json`` keeps it: ``{"text_dim": 384, "audio_dim": 1280, "video_dim": 0}``."""
        return {dim_key(m): d for m, d in zip(MODALITIES, self.sizes, strict=True)}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> FeatureSpec:
        """The inverse of :meth:`to_dict`; a key that names no modality is refused (ValueError)."""
        by_key = {dim_key(m): m for m in MODALITIES}
        unknown = sorted(k for k in d if k not in by_key)
        if unknown:
            raise ValueError(f"unknown feature sizes {unknown}; known: {sorted(by_key)}")
        return cls({by_key[k]: cast(int, v) for k, v in d.items()})  # checked there
