"""Turn a parsed input part into the payload the join keeps, checking it against the model.

Pure functions: a part either becomes a payload or raises :class:`InvalidMessage` with its
dead-letter reason (wrong embedding size, undecodable or oversized audio, text too long).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.errors import AudioDecodeError, AudioTooLong
from engines.features.codecs import decode_noted, to_model_rate
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
    encoding: str | None = None  # a wave's, as its part declared it (None: not known)


#: a voice is clipped when at least this share of its samples lie on flat tops at full scale: runs
#: of :data:`RUN` or more equal samples within 95 % of the encoding's full scale, as the samples were
#: sent (before resampling). Measured (2026-12-07, whole RAVDESS clips with their leading silence,
#: /tmp scripts): none of the 1,200 as recorded, nor of 40 normalised to a peak of 0.99, as 16 and
#: 8 kHz PCM, mu-law and FLAC; of those 40 clipped by 12 dB (x4) on an 8 kHz line, all 40 as PCM,
#: mu-law and A-law (9-11 of 40 by 6 dB); a beep or DTMF tone at 0 dBFS has no flat tops. Every
#: encoding is looked at as decoded at its own rate (engines.features.codecs.decode_as_sent)
CLIPPED_SHARE = 0.005
CLIPPED = "clipped: "  # how the note begins
RUN = 3
#: full scale of each encoding as decoded (G.711's largest codes are below 16-bit PCM's)
FULL_SCALE = {"pcm_mulaw": 32124 / 32768, "pcm_alaw": 32256 / 32768}


def clipped(samples: np.ndarray, encoding: str) -> str | None:
    """A note for samples (at the rate they were sent, in [-1, 1]) whose voice is clipped: flat
    tops at the encoding's full scale; None else."""
    x = np.asarray(samples)
    if x.size < RUN:
        return None
    rail = 0.95 * FULL_SCALE.get(encoding, 1.0)
    high = np.abs(x) >= rail
    if np.count_nonzero(high) < CLIPPED_SHARE * x.size:  # (the common case: one pass)
        return None
    # a loud sample equal to the loud sample before continues its run; any other loud one starts one
    continues = np.concatenate(([False], (x[1:] == x[:-1]) & high[1:] & high[:-1]))
    starts = high & ~continues
    run_of = np.cumsum(starts)[high] - 1  # each loud sample's run
    lengths = np.bincount(run_of)
    on_top = int(lengths[lengths >= RUN].sum())
    share = on_top / x.size
    if share < CLIPPED_SHARE:
        return None
    return (
        f"{CLIPPED}{share:.0%} of its samples on flat tops at full scale (a gain set too high, or a voice too loud "
        "for the line): its tone is distorted"
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
            sent, rate, mixed = decode_noted(raw, part.encoding, part.sample_rate, max_seconds=limits.max_audio_s)
        except AudioTooLong as exc:
            raise InvalidMessage("oversized", str(exc)) from exc
        except AudioDecodeError as exc:
            raise InvalidMessage("undecodable_audio", str(exc)) from exc
        notes = [n for n in (clipped(sent, part.encoding), mixed) if n is not None]
        return Payload("wave", to_model_rate(sent, rate), "; ".join(notes) or None, part.encoding)
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
