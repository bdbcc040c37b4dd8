"""openSMILE eGeMAPS v02 functionals (88-d per utterance): an optional audio extractor.

Optional (``pip install 'emostream[opensmile]'``) and never the default: openSMILE is under
audEERING's research licence, free for non-commercial use only. The 88 values are the extended
Geneva Minimalistic Acoustic Parameter Set (pitch, jitter, shimmer, loudness, HNR, formants,
spectral slope and balance, MFCC 1-4, voiced/unvoiced segment statistics), computed by the
``opensmile`` package on the CPU, one utterance at a time.

:class:`EgemapsExtractor` offers the API of :class:`engines.features.audio.AudioFeatureExtractor`
(``dim``, ``id``, ``to_dict()``, ``extract(waves)``), so :class:`engines.prepare.AudioTable`, the
artifact's ``features.json`` and :func:`engines.registry.load_extractors` work with it unchanged.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engines.errors import FeatureError
from engines.features.audio import SAMPLE_RATE, AudioFeatureExtractor, extractor_id

EGEMAPS_DIM = 88
INSTALL_HINT = "pip install 'emostream[opensmile]'"


def import_opensmile() -> Any:
    """The ``opensmile`` module, or :class:`FeatureError` saying which extra to install."""
    try:
        import opensmile
    except ImportError as exc:
        raise FeatureError(
            f"audio extractor 'egemaps' needs the package opensmile (non-commercial licence): {INSTALL_HINT}"
        ) from exc
    return opensmile


@dataclass(frozen=True)
class EgemapsConfig:
    sample_rate: int = SAMPLE_RATE
    feature_set: str = "eGeMAPSv02"
    feature_level: str = "Functionals"
    version: int = 1


class EgemapsExtractor(AudioFeatureExtractor):
    """``extract(waves) -> (N, 88) float32`` eGeMAPS v02 functionals of 16 kHz mono waveforms.

    A subclass of :class:`AudioFeatureExtractor` only so that code typed for it accepts this one:
    it shares the interface, not the computation (``config`` is not set; settings are in
    ``settings``). Utterances openSMILE finds too short to measure (under about 0.1 s) get zeros,
    as the torch functionals do for what they cannot measure. ``device`` is accepted for the
    common signature; openSMILE runs on CPU.
    """

    def __init__(self, config: EgemapsConfig | None = None, device: str = "cpu") -> None:
        self.settings = config or EgemapsConfig()
        s = self.settings
        if (s.feature_set, s.feature_level, s.sample_rate) != ("eGeMAPSv02", "Functionals", SAMPLE_RATE):
            raise FeatureError(f"only eGeMAPSv02 functionals at {SAMPLE_RATE} Hz are supported, not {s}")
        self.device = device
        self.dim = EGEMAPS_DIM
        self._smile: Any = None
        import_opensmile()  # fail at construction, not at the first utterance

    @property
    def id(self) -> str:
        """Stable id of this extractor and its configuration (cache namespace, artifact check)."""
        return extractor_id("opensmile-egemaps", self.settings.version, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"name": "egemaps", "kind": "egemaps", "dim": self.dim, **asdict(self.settings)}

    def _load(self) -> Any:
        if self._smile is None:
            opensmile = import_opensmile()
            smile = opensmile.Smile(
                feature_set=opensmile.FeatureSet[self.settings.feature_set],
                feature_level=opensmile.FeatureLevel[self.settings.feature_level],
            )
            if smile.num_features != self.dim:
                raise FeatureError(
                    f"openSMILE {self.settings.feature_set} gives {smile.num_features} values, not {self.dim}"
                )
            self._smile = smile
        return self._smile

    def extract(self, waves: list[np.ndarray]) -> np.ndarray:
        """Feature vectors (N, 88) float32 for float32 mono 16 kHz waveforms."""
        assert isinstance(waves, list), type(waves)
        out = np.zeros((len(waves), self.dim), dtype=np.float32)
        if not waves:
            return out
        smile = self._load()
        for i, w in enumerate(waves):
            assert w.ndim == 1, w.shape
            # openSMILE scales by 32768 into int16: keep +1.0 from wrapping round to -32768.
            x = np.clip(np.asarray(w, dtype=np.float32), -1.0, 32767.0 / 32768.0)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Segment too short", category=UserWarning)
                row = smile.process_signal(x, self.settings.sample_rate).to_numpy()  # (1, 88)
            out[i] = row.reshape(self.dim)
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
