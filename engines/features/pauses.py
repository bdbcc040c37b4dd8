"""Long silences cut short before a voice is encoded.

The audio encoders pool a clip's frames (Whisper: mean and std over every frame), so a clip that is
mostly silence is read as mostly silence: a recorder or diarizer that pads its segments (seconds of
line before the first word, after the last, a pause between two sentences) pulled the shipped
default's voice towards "disgust" (RAVDESS clips through a mu-law line, 10 s of silence after each:
42 of 48 labelled disgust, against 6 with none), and the format check heard nearly every padded
clip as mis-declared, an octave low (a telephone trial, 2026-12-07). The models learnt from RAVDESS
clips, about 1 s of room before the speech and after it (medians by the rule below: 1.0 s and
0.9 s; at most 1.1 s and 1.4 s), pauses inside under 1 s. :func:`shorten_silences` keeps at most
:data:`EDGE_KEEP_S` of silence at each end and :data:`GAP_KEEP_S` of a pause inside (half each
side).

Measured with ``emostream evaluate --model default --data-dir ../shared/data --split dev --json``
(``--silences keep``: the clips whole, as before; ``--channel pauses``: every clip padded with 2-8 s
of line before and after the speech and a 2-4 s pause inside, the line's idle noise 20-50 dB under
the voice throughout; misdeclared: the clips the format check judged mis-declared; 2026-12-07):

==========================================  =======================  =======================
accuracy / weighted F1                      whole                    shortened
==========================================  =======================  =======================
``--dataset ravdess`` (the voice alone)     0.758 / 0.754            0.758 / 0.753
the same, ``--channel pauses``              0.200 / 0.144 (240 of    0.571 / 0.542 (18
                                            240 misdeclared)         misdeclared)
``--dataset meld-ravdess``                  0.842 / 0.835            0.842 / 0.835
the same, ``--channel telephone``           0.803 / 0.791            0.805 / 0.794
the same, ``--channel pauses``              0.603 / 0.594 (213 of    0.756 / 0.748 (16
                                            1,109 misdeclared)       misdeclared)
==========================================  =======================  =======================

Kept at each end: 1.2 s. At 1.0 s the padded clips did a little better (0.763 / 0.756 on the
composite) and the clean composite fell to 0.831, under the voice gate's bound on what it may cost
clean (0.8345, ``tests/engine``): the models read about a second of room at each end as part of a
voice, and cutting RAVDESS' own 1.0-1.4 s cost them. Without the noise floor's rule (below), padded
clips scored 0.479 / 0.468 (96 misdeclared) and 0.716 / 0.708 (86), at 1.0 s: a line's noise 20-30
dB under the voice was not cut (a telephone trial: speech at -26 dBFS over noise at -50, padded
10 s, drifted to disgust with a false format warning). What is left of the padded clips' loss is
mostly the noise under the speech, which no cut removes.

Others tried, with the clip's loudest 100 ms as its loud level and silence 30 dB under it, the noise
40-55 dB under (kept at each end, inside: RAVDESS accuracy clean, padded): 1.5 s, 1.2 s (no clean
clip cut): 0.758, 0.550; 1.5, 0.5: 0.758, 0.604; 1.0, 0.5: 0.758, 0.650; 1.0, 0.3: 0.758, 0.658;
0.75, 0.3: 0.733, 0.650; 0.5, 0.3: 0.692, 0.713. At 1.5 s, 1.2 s the padded clips scored 0.600
without the idle noise, 0.658 without the pause inside and 0.613 without the padding at the ends.
That loud level took a 200 ms beep (a recording notice) at -3 dBFS for the clip's, and a voice at
-40 dBFS after it for silence (a review); the clip's 25th loudest frame (0.5 s of it) is not a
beep's or a click's, and 25 dB under it is silence.

Silence is told by level, not by the speech detector: a 20 ms frame more than :data:`QUIET_DB`
below the clip's loud level (:data:`LOUD_FRAMES`), or, where the clip's noise floor (its 10th
percentile frame, digital silence left out) is :data:`FLOOR_SNR_DB` or more under that level and
steady (its 25th percentile frame within :data:`FLOOR_SPREAD_DB` of it), within
:data:`FLOOR_MARGIN_DB` of the floor. Digital silence and a line's idle noise are cut; noise within
15 dB of the voice is left whole (noise that loud is not silence to cut), and so is speech without
a pause, whose quietest syllables spread over many dB (without the steadiness test 0.4-0.8 s of such
speech was cut: a review). Not told apart: a voice that trails off 15 dB or more for over 1.2 s,
as steady as a line's noise, keeps 1.2 s of its tail. Cheap (about 0.3 ms for a 4 s clip), so the
stream runs it on every clip it encodes, after the speech gate; ``emostream evaluate`` reads its
clips through it too (:class:`engines.prepare.AudioTable`), training does not (the shipped models
learnt whole clips, and their recipes reproduce them).
"""

from __future__ import annotations

import hashlib

import numpy as np

from engines.features.codecs import SAMPLE_RATE

FRAME = SAMPLE_RATE // 50  # 20 ms
QUIET_DB = 25.0  # a frame this far below the clip's loud level is silence
LOUD_FRAMES = 25  # the clip's loud level: its 25th loudest frame's (0.5 s: not a click's, nor a beep's)
#: a line's noise floor (the clip's 10th percentile frame level), where it is this far under the loud
#: level, is silence up to FLOOR_MARGIN_DB above it: idle noise 20-30 dB under a voice is not the voice
FLOOR_SNR_DB = 15.0
FLOOR_MARGIN_DB = 6.0
FLOOR_SPREAD_DB = 3.0  # ... and only a floor that is steady: its 10th and 25th percentile frames this close
DIGITAL_SILENCE_DB = -100.0  # frames under this are digital silence, left out of the floor
EDGE_KEEP_S = 1.2  # silence kept before the first sound and after the last
GAP_KEEP_S = 0.3  # of a longer pause between two sounds, this much is kept (half each side)
#: names the rule in feature caches (:class:`engines.prepare.AudioTable`): another number, another rule
RULE = (
    "silences-"
    + hashlib.sha256(
        repr(
            (
                FRAME,
                QUIET_DB,
                LOUD_FRAMES,
                FLOOR_SNR_DB,
                FLOOR_MARGIN_DB,
                FLOOR_SPREAD_DB,
                DIGITAL_SILENCE_DB,
                EDGE_KEEP_S,
                GAP_KEEP_S,
            )
        ).encode()
    ).hexdigest()[:12]
)


def quiet_frames(wave: np.ndarray) -> np.ndarray:
    """(frames,) bool: which whole 20 ms frames of ``wave`` are silence (see the module)."""
    n = wave.size // FRAME
    if n == 0:
        return np.zeros((0,), dtype=bool)
    frames = np.asarray(wave[: n * FRAME], dtype=np.float32).reshape(n, FRAME)
    level = 10.0 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)
    k = min(LOUD_FRAMES, n)
    loud = float(np.partition(level, n - k)[n - k])
    threshold = loud - QUIET_DB
    sound = level[level > DIGITAL_SILENCE_DB]  # (exact zeros, a recorder's padding, are no line's noise)
    if sound.size >= LOUD_FRAMES:
        floor, above = (float(x) for x in np.percentile(sound, (10, 25)))
        # a floor of noise: a quarter of the sounding frames within FLOOR_SPREAD_DB of its level (a line's
        # idle noise is steady; the quietest syllables of speech without a pause spread over many dB, and
        # a rule without this cut 0.4-0.8 s of such speech: a review)
        if loud - floor >= FLOOR_SNR_DB and above - floor <= FLOOR_SPREAD_DB:
            threshold = max(threshold, min(floor + FLOOR_MARGIN_DB, loud - FLOOR_SNR_DB + 3.0))
    return level < threshold


def shorten_silences(wave: np.ndarray) -> np.ndarray:
    """``wave`` (16 kHz mono) with its long silences cut short: at most :data:`EDGE_KEEP_S` before
    the first sound and after the last, at most :data:`GAP_KEEP_S` of each pause between. The same
    array when nothing is cut."""
    quiet = quiet_frames(wave)
    n = quiet.size
    edge, gap = round(EDGE_KEEP_S * SAMPLE_RATE / FRAME), round(GAP_KEEP_S * SAMPLE_RATE / FRAME)
    if n <= gap or quiet.all():
        return wave
    bounds = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    keep = np.ones(n, dtype=bool)
    for start, end in zip(bounds[::2], bounds[1::2], strict=True):  # runs of silent frames [start, end)
        if start == 0:
            keep[: max(0, end - edge)] = False
        elif end == n:
            keep[start + edge :] = False
        elif end - start > gap:
            keep[start + gap // 2 : end - (gap - gap // 2)] = False
    if keep.all():
        return wave
    samples = np.repeat(keep, FRAME)
    tail = wave.size - n * FRAME  # the samples after the last whole frame go with it
    return wave[np.concatenate([samples, np.full(tail, keep[-1])])]
