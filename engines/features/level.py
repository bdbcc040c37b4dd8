"""A voice's level relative to its speaker's own: what a line's gain does not change.

The models learnt their voices from studio clips (RAVDESS) recorded at one microphone gain per
actor, where loudness goes with the feeling: neutral and calm clips sit about 20 dB under angry
ones. So the absolute level became a cue, and a line's gain moves labels: a call heard 20 dB
quieter than the studio, or at the telephone's nominal level (ITU-T P.56: -26 dBov of active
speech, about 12 dB above the studio's median), reads as other feelings (``emostream evaluate
--channel level``, README "Line levels").

With ``engine.audio_level = "speaker"`` the worker sets each utterance's level relative to its
speaker's own level so far in the call (:class:`SpeakerLevels`): the median of the levels of the
speaker's utterances with speech, this one included, is put at :data:`REF_DB`, and the utterance
keeps its distance from it (a shout stays a shout, whatever the line's gain). The first utterance
of a speaker has only itself to go by and is set at :data:`REF_DB`.

The level of a waveform is the 95th percentile of its 20 ms frames' RMS (dBFS): the loud part of
its speech, blind to the silence around it. The gain is rounded to whole dB (evaluation caches a
clip's features per gain) and held so that no sample exceeds :data:`PEAK` (a limiter's gain, not
clipping).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from engines.features.codecs import SAMPLE_RATE

VERSION = 1
FRAME = SAMPLE_RATE // 50  # 20 ms
#: where a speaker's median level is put: the median level of the training clips (RAVDESS actors
#: 1-16, p95 of 20 ms frames: -32.0 dBFS; neutral -41.7, angry -23.2)
REF_DB = -32.0
MAX_GAIN_DB = 40  # a near-silent line is not lifted without bound
PEAK = 0.99
SILENT_DB = -90.0  # a waveform this quiet has no level to speak of (digital silence)
#: the levels of a speaker's latest utterances that make its baseline
KEEP = 50


def speech_level(wave: np.ndarray) -> float | None:
    """The level of ``wave`` (float mono at 16 kHz) in dBFS: its 20 ms frames' RMS at the 95th
    percentile; None when it is shorter than a frame or digitally silent."""
    x = np.asarray(wave, dtype=np.float64)
    n = x.size // FRAME
    if n < 1:
        return None
    rms = np.sqrt(np.mean(np.square(x[: n * FRAME].reshape(n, FRAME)), axis=1))
    p95 = float(np.percentile(rms, 95))
    if p95 <= 0:
        return None
    level = round(20 * np.log10(p95), 2)  # to 0.01 dB: evaluation caches it in float32, the stream does not
    return level if level > SILENT_DB else None


def gain_for(baseline_db: float) -> int:
    """The gain (whole dB) that puts a speaker whose median level is ``baseline_db`` at :data:`REF_DB`."""
    return int(np.clip(round(REF_DB - baseline_db), -MAX_GAIN_DB, MAX_GAIN_DB))


def apply_gain(wave: np.ndarray, gain_db: float) -> np.ndarray:
    """``wave`` times ``gain_db``, held so that its peak stays at or under :data:`PEAK` (float32)."""
    x = np.asarray(wave, dtype=np.float32)
    if gain_db == 0:
        return x
    g = 10 ** (gain_db / 20)
    peak = float(np.max(np.abs(x), initial=0.0)) * g
    if peak > PEAK:
        g *= PEAK / peak
    return (x * np.float32(g)).astype(np.float32)


def causal_gains(levels: list[tuple[str, float | None]]) -> list[int]:
    """Per utterance of one dialogue in order, (speaker, level or None for no speech) -> its gain:
    each speaker's median level so far, this utterance included, put at :data:`REF_DB` (0 where there
    is no level). The same as :class:`SpeakerLevels` gives in the stream."""
    seen: dict[str, list[float]] = {}
    gains = []
    for speaker, level in levels:
        if level is None:
            gains.append(0)
            continue
        mine = seen.setdefault(speaker, [])
        mine.append(level)
        gains.append(gain_for(float(np.median(mine[-KEEP:]))))
    return gains


class SpeakerLevels:
    """Each call's speakers' levels by their utterances' ``seq``, for ``engine.audio_level = "speaker"``:
    the baseline of an utterance is the median of its speaker's levels at or before its ``seq`` (the
    last :data:`KEEP` of them) recorded so far, so an utterance encoded again (a replay, a retried
    batch) gets what it got the first time unless an earlier one of its speaker came in between (as
    :func:`causal_gains` over the dialogue in order would then say). One encoded before an earlier
    one of its speaker was recorded misses that one's level: the worker does not encode ahead when
    the levels are applied (``Processor.prefetch``). A call is forgotten at its end
    (:meth:`forget`), or the oldest one when more than ``max_calls`` are held (a worker that
    restarts or takes a call over from another starts its speakers afresh; a call that moved away
    ages out). A call holds at most :data:`KEEP` levels a speaker (a few KB)."""

    def __init__(self, max_calls: int = 20_000, apply: bool = True) -> None:
        self.max_calls = max_calls
        self.apply = apply  # False: the levels are only watched (a line far quieter than the model's clips)
        self._lock = threading.Lock()  # the worker encodes ahead on a thread while a batch encodes its own
        # call -> speaker -> seq -> level
        self._calls: OrderedDict[str, dict[str, dict[int, float]]] = OrderedDict()

    def gain(self, call_id: str, speaker: str, seq: int, level: float | None) -> int:
        """The gain for the utterance ``seq`` of ``speaker`` in ``call_id`` whose level is ``level``
        (None, no level: 0 dB, and not counted)."""
        median, _ = self.baseline(call_id, speaker, seq, level)
        return 0 if median is None else gain_for(median)

    def baseline(self, call_id: str, speaker: str, seq: int, level: float | None) -> tuple[float | None, int]:
        """(the speaker's median level at or before ``seq``, this one included, and how many levels it
        is of); (None, 0) for no level, not counted."""
        if level is None:
            return None, 0
        with self._lock:
            return self._baseline(call_id, speaker, seq, level)

    def _baseline(self, call_id: str, speaker: str, seq: int, level: float) -> tuple[float, int]:
        speakers = self._calls.get(call_id)
        if speakers is None:
            speakers = self._calls[call_id] = {}
            while len(self._calls) > self.max_calls:
                self._calls.popitem(last=False)
        else:
            self._calls.move_to_end(call_id)
        mine = speakers.setdefault(speaker, {})
        mine.setdefault(seq, level)
        if len(mine) > KEEP:
            del mine[min(mine)]
        upto = sorted(s for s in mine if s <= seq)[-KEEP:]
        return float(np.median([mine[s] for s in upto])), len(upto)

    def forget(self, call_id: str) -> None:
        with self._lock:
            self._calls.pop(call_id, None)

    def __len__(self) -> int:
        return len(self._calls)
