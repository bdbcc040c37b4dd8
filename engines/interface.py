"""The one interface between the stream and every engine, whatever its runtime.

A batch holds B dialogue windows of W utterances each (W = the longest window in the batch;
shorter windows are padded (the stream pads on the left) and masked by ``valid``). Each window
ends with, or contains, the *target* utterance whose emotion is wanted: ``target[b]`` is its index
in window b. Utterances after the target in the same window are future context (revised events);
causal windows end at the target.

Modalities are always those of :data:`MODALITIES` (:mod:`engines.modalities`), in that order; a
modality that never arrived has zeros in its feature slot and ``present[..., m] == 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from engines.modalities import MODALITIES, FeatureSpec

__all__ = [
    "EMOTIONS",
    "MODALITIES",
    "WINDOW_INPUTS",
    "Engine",
    "EngineBatch",
    "EngineInfo",
    "EngineOutput",
    "FeatureSpec",
]

#: MELD's seven emotions, the label set of the shipped models (index order is the logits order).
EMOTIONS: tuple[str, ...] = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")


@dataclass(frozen=True)
class EngineBatch:
    """Input of :meth:`Engine.predict`. Shapes in comments; all arrays are numpy."""

    features: Mapping[str, np.ndarray]  # modality -> (B, W, D) float32, every one of MODALITIES (D may be 0)
    present: np.ndarray  # (B, W, M) float32, 1 where that modality of that utterance arrived
    speakers: np.ndarray  # (B, W) int64, speaker index within the window (0 = first speaker seen)
    valid: np.ndarray  # (B, W) float32, 1 for real utterances, 0 for padding
    target: np.ndarray  # (B,) int64, index of the utterance to label in each window

    def __post_init__(self) -> None:
        b, w = self.valid.shape
        assert tuple(self.features) == MODALITIES, tuple(self.features)
        for m, a in self.features.items():
            assert a.ndim == 3 and a.shape[:2] == (b, w), (m, a.shape)
        assert self.present.shape == (b, w, len(MODALITIES)), self.present.shape
        assert self.speakers.shape == (b, w), self.speakers.shape
        assert self.target.shape == (b,), self.target.shape

    @property
    def size(self) -> int:
        return int(self.valid.shape[0])

    def inputs(self) -> dict[str, np.ndarray]:
        """Every array by its graph-input name (:mod:`engines.spec`): the modalities', then
        ``present``, ``speakers``, ``valid`` and ``target``."""
        return {**self.features, **{k: getattr(self, k) for k in WINDOW_INPUTS}}

    def map(self, f: Callable[[np.ndarray], np.ndarray]) -> EngineBatch:
        """The batch with ``f`` applied to every array (each with the windows on its first axis)."""
        return EngineBatch({m: f(a) for m, a in self.features.items()}, *(f(getattr(self, k)) for k in WINDOW_INPUTS))


#: The batch's arrays after the modalities' features, in graph-input order.
WINDOW_INPUTS: tuple[str, ...] = ("present", "speakers", "valid", "target")


@dataclass(frozen=True)
class EngineOutput:
    """Output of :meth:`Engine.predict`, one row per window of the batch."""

    logits: np.ndarray  # (B, C) float32
    probs: np.ndarray  # (B, C) float32, softmax of logits
    sentiment: np.ndarray  # (B,) float32 in [-1, 1]
    weights: np.ndarray  # (B, M) float32, each modality's share of the decision (sum 1 over present ones)


@dataclass(frozen=True)
class EngineInfo:
    """What the stream reports about the engine in every event."""

    name: str
    version: str
    labels: tuple[str, ...] = EMOTIONS
    features: FeatureSpec = field(default_factory=FeatureSpec)
    max_window: int = 12
    runtime: str = "onnxruntime"
    future: int = 0  # later utterances the model was trained to use (0: causal)


@runtime_checkable
class Engine(Protocol):
    """Anything that labels a batch of dialogue windows."""

    info: EngineInfo

    def predict(self, batch: EngineBatch) -> EngineOutput: ...
