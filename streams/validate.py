"""Turn a parsed input part into the payload the join keeps, checking it against the model.

Pure functions: a part either becomes a payload or raises :class:`InvalidMessage` with its
dead-letter reason (wrong embedding size, undecodable or oversized audio, text too long).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.errors import AudioDecodeError, AudioTooLong
from engines.features.codecs import decode_audio
from streams.errors import InvalidMessage
from streams.schemas import AudioPart, Part, TextPart, VideoPart
from streams.settings import LimitSettings


@dataclass(frozen=True)
class Payload:
    """What the join keeps of one part: raw text, a waveform, or a ready feature vector; ``note``:
    what the decoding noticed about a waveform that is used all the same (clipping), for the
    event's ``suspect``."""

    kind: str  # 'text' (str), 'wave' (float32 16 kHz), 'vector' (float32 features)
    value: str | np.ndarray
    note: str | None = None


#: a waveform with at least this share of its samples at (95 % of) its encoding's full scale is
#: clipped. Measured (2026-12-07, 40 RAVDESS clips, each normalised to a peak of 0.99, whole
#: clips with their leading silence): at most 0.02 % so; clipped by 12 dB (x4) at least 1.7 % as
#: 16 and 8 kHz PCM, mu-law and FLAC (median 4-5 %), by 24 dB 11 % or more
CLIPPED_SHARE = 0.005
CLIPPED = "clipped: "  # how the note begins
#: full scale of each encoding as decoded (G.711's largest codes are below 16-bit PCM's)
FULL_SCALE = {"pcm_mulaw": 32124 / 32768, "pcm_alaw": 32256 / 32768}


def clipped(wave: np.ndarray, encoding: str) -> str | None:
    """A note for a waveform whose voice is clipped at its encoding's full scale, else None."""
    if not wave.size:
        return None
    rail = 0.95 * FULL_SCALE.get(encoding, 1.0)
    share = np.count_nonzero(np.abs(wave) >= rail) / wave.size
    if share < CLIPPED_SHARE:
        return None
    return (
        f"{CLIPPED}{share:.0%} of its samples at full scale (a gain set too high, or a voice too loud for "
        "the line): its tone is distorted"
    )


def to_payload(part: Part, dims: dict[str, int], limits: LimitSettings) -> Payload:
    if isinstance(part, TextPart):
        if part.text is not None:
            if len(part.text) > limits.max_text_chars:
                raise InvalidMessage("oversized", f"text of {len(part.text)} chars > {limits.max_text_chars}")
            return Payload("text", part.text)
        return Payload("vector", _vector(part.vector(), dims["text"], "text embedding"))
    if isinstance(part, AudioPart):
        if part.encoding == "features":
            return Payload("vector", _vector(part.vector(), dims["audio"], "audio features"))
        raw = part.audio_bytes()
        try:  # the length is checked from the header before anything is decoded
            wave = decode_audio(raw, part.encoding, part.sample_rate, max_seconds=limits.max_audio_s)
        except AudioTooLong as exc:
            raise InvalidMessage("oversized", str(exc)) from exc
        except AudioDecodeError as exc:
            raise InvalidMessage("undecodable_audio", str(exc)) from exc
        return Payload("wave", wave, clipped(wave, part.encoding))
    assert isinstance(part, VideoPart), type(part)
    if dims["video"] == 0:
        return Payload("vector", np.zeros(0, dtype=np.float32))  # the model ignores video
    return Payload("vector", _vector(part.vector(), dims["video"], "video features"))


def _vector(values: list[float] | np.ndarray, dim: int, what: str) -> np.ndarray:
    if dim == 0:
        return np.zeros(0, dtype=np.float32)
    if len(values) != dim:
        raise InvalidMessage("wrong_embedding_size", f"{what} has {len(values)} values, the model takes {dim}")
    if isinstance(values, np.ndarray) and values.dtype == np.float32:
        return values  # a *_f32 vector: checked finite when its message was parsed (schemas.f32_vector)
    vec = np.asarray(values, dtype=np.float32)
    if not np.isfinite(vec).all():  # finite doubles can overflow float32
        raise InvalidMessage("non_finite", f"{what} overflows float32")
    return vec
