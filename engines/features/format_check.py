"""Was the audio's format declared wrongly? A probe on the audio vector the model already has.

Two mistakes of a producer give bytes that decode without error and a voice that is not the
speaker's:

- **the sample rate**: ``pcm_s16le`` declared at 16 kHz for a telephone line's 8 kHz samples (or
  16 kHz samples sent as 8 kHz): the voice plays twice as fast and an octave high (or twice as slow
  and an octave low). Raw PCM and G.711 carry no rate of their own.
- **the G.711 law**: A-law bytes sent as ``pcm_mulaw`` (or mu-law as ``pcm_alaw``; Europe's
  networks use A-law, North America's mu-law): every sample is mapped through the wrong curve, and
  the voice comes out distorted.

The voice model reads an emotion from either with full confidence. The voice itself tells: a pitch
an octave away and formants stretched by two are far outside what speech does, fast or slow, and
the wrong law's distortion is unlike a telephone line's. :class:`FormatCheck` is a multinomial
logistic regression on the clip's audio vector (the extractor's own output, so it costs a dot
product) with the classes of :data:`CLASSES`. Audio with speech (the check runs only where the
speech gate let a clip through: it was never taught what noise is) that it judges mis-declared
with probability at least :data:`THRESHOLD` is counted and logged once a call with the mistake it
sounds like, and used all the same (``engine.format_check = "warn"``: the voice gate weighs it, and
on the composite the fused label is better with it than with the words alone), or not used
(``"drop"``: like audio without speech, the label is the words', and the event's ``ignored`` says
why).

It is trained by ``python -m engines.features.format_check train`` on RAVDESS actors 1-16 (clean
and through the telephone channel) and on espeak-ng speech of MELD train transcripts at 100-400
words a minute and many pitches, so that fast or high speech at the right rate is not taken for a
wrong rate; it is checked on RAVDESS actors 17-20 and on espeak voices it never heard (the
figures are in ``models/format-check/README.md`` and the README). One probe per audio extractor
(``models/format-check/<extractor id>.npz``); an extractor without one is not checked.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.features.codecs import G711_RATE, SAMPLE_RATE, decode_audio, encode_audio, resample

#: audio judged mis-declared with at least this probability is counted and said (and with
#: engine.format_check = "drop" not used)
THRESHOLD = 0.9
#: clips shorter than this (as decoded, seconds) are not judged: a filler's "uh", "oh", "hmm" or
#: "thanks" at the right rate was called mis-declared with p 0.96-0.997 (a newcomer's mu-law "uh";
#: 5 of 144 espeak-ng words and short lines, sent right as 8 kHz mu-law, all shorter than 0.7 s; none
#: of those of 0.75 s or more, and every mistake made on those caught: :func:`short_clips`). A
#: producer's format mistake lasts the call: its longer utterances tell
MIN_CLIP_S = 1.0
#: the classes, in the probe's order: the format was right, or which mistake was made
CLASSES = ("ok", "8k-as-16k", "16k-as-8k", "alaw-as-mulaw", "mulaw-as-alaw")
# which of the two laws: named right for 61-88 % of held-out clips, so not said
_EITHER_LAW = (
    "the voice sounds distorted as by the other G.711 law",
    "A-law bytes sent as pcm_mulaw or mu-law as pcm_alaw",
)
#: what each mistake sounds like, for the event's ``ignored``
#: (before the colon: what the voice sounds like; after it: what was likely sent)
MEANING = {
    "8k-as-16k": ("the voice sounds an octave high", "twice as fast: audio at half the declared rate or less, "
                  "8 kHz sent as 16 kHz say"),
    "16k-as-8k": ("the voice sounds an octave low", "twice as slow: audio at twice the declared rate or more, "
                  "16 kHz sent as 8 kHz say"),
    "alaw-as-mulaw": _EITHER_LAW,
    "mulaw-as-alaw": _EITHER_LAW,
}  # fmt: skip
#: how the event's ``ignored["audio"]`` begins for audio this check did not use, by mistake
WRONG_RATE = "wrong sample rate? "
WRONG_LAW = "wrong G.711 law? "
PREFIXES = (WRONG_RATE, WRONG_LAW)
#: the metric's label of each (``emostream_misdeclared_audio_total{mistake=...}``)
MISTAKES = ("sample_rate", "g711_law")


def mistake_of(why: str) -> str:
    """The :data:`MISTAKES` label of a verdict."""
    return MISTAKES[1] if why.startswith(WRONG_LAW) else MISTAKES[0]


ADVICE = {
    WRONG_RATE: "check the rate the producer declares (G.711 is 8 kHz: resample before encoding)",
    WRONG_LAW: "check the encoding the producer declares (pcm_alaw or pcm_mulaw)",
}
PROBE_DIR = Path(__file__).resolve().parents[2] / "models" / "format-check"


def _prefix(kind: str) -> str:
    return WRONG_RATE if kind in ("8k-as-16k", "16k-as-8k") else WRONG_LAW


@dataclass(frozen=True)
class Misdeclared:
    """A "channel" (nothing random in it) for ``emostream evaluate --channel``: a clean 16 kHz clip
    as the worker decodes it after a producer declared the wrong format. ``8k-as-16k``: the line's
    8 kHz samples read as 16 kHz; ``16k-as-8k``: 16 kHz samples read as 8 kHz (then resampled to
    16); ``alaw-as-mulaw``: the clip as 8 kHz A-law, decoded as mu-law; ``mulaw-as-alaw``: the
    reverse."""

    name: str

    @property
    def id(self) -> str:
        return f"misdeclared-v1-{self.name}"

    def __call__(self, wave: np.ndarray, key: str = "") -> np.ndarray:
        if self.name == "8k-as-16k":
            return resample(wave, SAMPLE_RATE, G711_RATE).astype(np.float32)
        if self.name == "16k-as-8k":
            return resample(wave, G711_RATE, SAMPLE_RATE).astype(np.float32)
        if self.name in ("alaw-as-mulaw", "mulaw-as-alaw"):
            sent, read = ("pcm_alaw", "pcm_mulaw") if self.name == "alaw-as-mulaw" else ("pcm_mulaw", "pcm_alaw")
            return decode_audio(encode_audio(wave, SAMPLE_RATE, sent), read)
        raise ValueError(f"unknown mistake {self.name!r}; choose from {CLASSES[1:]}")


@dataclass(frozen=True)
class FormatCheck:
    """``probs(vectors)``: (N, len(CLASSES)) probabilities of :data:`CLASSES`; ``verdicts(vectors)``:
    per vector None (the format looks right) or which mistake it sounds like, and why."""

    extractor_id: str
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (len(CLASSES), D)
    intercept: np.ndarray  # (len(CLASSES),)
    threshold: float = THRESHOLD

    def probs(self, vectors: np.ndarray) -> np.ndarray:
        x = (np.atleast_2d(np.asarray(vectors, dtype=np.float64)) - self.mean) / self.scale
        z = x @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def verdicts(self, vectors: np.ndarray) -> list[str | None]:
        p = self.probs(vectors)
        out: list[str | None] = []
        for row in p:
            wrong = 1.0 - float(row[0])
            if not wrong >= self.threshold:  # a NaN vector is not judged here
                out.append(None)
                continue
            kind = CLASSES[1 + int(np.argmax(row[1:]))]
            sounds, likely = MEANING[kind]
            prefix = _prefix(kind)
            out.append(f"{prefix}{sounds}: p(misdeclared)={wrong:.3f}, {likely}; {ADVICE[prefix]}")
        return out

    def save(self, path: str | Path, report: dict[str, Any] | None = None) -> None:
        np.savez(
            path,
            extractor_id=np.array(self.extractor_id),
            mean=self.mean.astype(np.float32),
            scale=self.scale.astype(np.float32),
            coef=self.coef.astype(np.float32),
            intercept=self.intercept.astype(np.float32),
            report=np.array(json.dumps(report or {})),
        )


def probe_path(extractor_id: str, root: str | Path = PROBE_DIR) -> Path:
    return Path(root) / f"{extractor_id}.npz"


def load_format_check(
    extractor_id: str, root: str | Path = PROBE_DIR, threshold: float = THRESHOLD
) -> FormatCheck | None:
    """The probe trained on ``extractor_id``'s vectors, or None where there is none; ValueError
    for a file that is not one (unreadable, or another extractor's)."""
    path = probe_path(extractor_id, root)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            found = {k: z[k] for k in z.files if k in ("extractor_id", "mean", "scale", "coef", "intercept")}
    except Exception as exc:  # a file cut short or not numpy's: zipfile, pickle, OS errors
        raise ValueError(f"{path}: not a format check ({type(exc).__name__}: {exc})") from exc
    missing = {"extractor_id", "mean", "scale", "coef", "intercept"} - set(found)
    if missing:
        raise ValueError(f"{path}: not a format check (no {', '.join(sorted(missing))})")
    if str(found["extractor_id"]) != extractor_id:
        raise ValueError(f"{path}: the check of {found['extractor_id']}, not of {extractor_id}")
    arrays = [np.asarray(found[k], dtype=np.float64) for k in ("mean", "scale", "coef", "intercept")]
    mean, scale, coef, intercept = arrays
    d = mean.shape[0] if mean.ndim == 1 else -1
    if d < 1 or scale.shape != (d,) or coef.shape != (len(CLASSES), d) or intercept.shape != (len(CLASSES),):
        raise ValueError(
            f"{path}: not a format check of {len(CLASSES)} classes (mean {mean.shape}, coef {coef.shape}, "
            f"intercept {intercept.shape})"
        )
    return FormatCheck(extractor_id, mean, scale, coef, intercept, threshold)


# -- training -------------------------------------------------------------------------------------

ESPEAK_VOICES = (
    "en-us+m1", "en-us+m2", "en-gb+m3", "en-us+m4", "en+f1", "en-us+f2", "en-gb+f3", "en+f4",  # train
    "en-us+m5", "en+m6", "en-us+f5", "en-gb+m7",  # held out
)  # fmt: skip
HELD_OUT_VOICES = 4


def _variants(wave: np.ndarray) -> list[np.ndarray]:
    """The clip as sent right, then as each mistake decodes it (in :data:`CLASSES` order)."""
    return [wave, *(Misdeclared(name)(wave) for name in CLASSES[1:])]


def _ravdess(data_dir: str, split: str, extractor: Any, channel: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from engines.datasets.ravdess import load_ravdess_clips
    from engines.features.audio import read_audio_file

    clips = load_ravdess_clips(data_dir, split)
    xs, ys, lines = [], [], []
    for i in range(0, len(clips), 16):
        waves: list[np.ndarray] = []
        for c in clips[i : i + 16]:
            clean = read_audio_file(c.path)
            for line, base in ((0, clean), (1, channel(clean, c.path))):
                waves += _variants(base)
                ys += list(range(len(CLASSES)))
                lines += [line] * len(CLASSES)
        xs.append(extractor.extract(waves))
    return np.concatenate(xs), np.array(ys), np.array(lines)


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``text`` spoken by espeak-ng at ``speed`` words a minute, as 16 kHz float32 samples.

    The text goes on stdin, never on the command line, where a transcript that starts with ``-``
    would be read as an option.
    """
    import soundfile as sf

    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdin", "--stdout"]
    wav = subprocess.run(cmd, input=text.encode(), capture_output=True, check=True).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return np.asarray(resample(data, rate, SAMPLE_RATE), dtype=np.float32)


def _espeak(data_dir: str, n: int, extractor: Any, channel: Any, seed: int) -> tuple[np.ndarray, ...]:
    """espeak-ng speech of MELD train transcripts, voice by voice, at random speeds and pitches;
    every voice's every second round through the telephone channel."""
    import csv
    import random

    with open(Path(data_dir) / "meld" / "train_sent_emo.csv", encoding="utf-8", newline="") as f:
        rows = [r["Utterance"] for r in csv.DictReader(f) if len(r["Utterance"].split()) >= 2]
    texts = random.Random(seed).sample(rows, n)
    rng = np.random.default_rng(seed)
    xs, ys, lines, voices, speeds = [], [], [], [], []
    waves: list[np.ndarray] = []
    for i, text in enumerate(texts):
        v, speed, pitch = i % len(ESPEAK_VOICES), int(rng.integers(100, 400)), int(rng.integers(15, 85))
        clean = speak(text, ESPEAK_VOICES[v], speed, pitch)
        line = (i // len(ESPEAK_VOICES)) % 2  # each voice both clean and on the line
        waves += _variants(channel(clean, f"espeak-{i}") if line else clean)
        ys += list(range(len(CLASSES)))
        lines += [line] * len(CLASSES)
        voices += [v] * len(CLASSES)
        speeds += [speed] * len(CLASSES)
        if len(waves) >= 96:
            xs.append(extractor.extract(waves))
            waves = []
    if waves:
        xs.append(extractor.extract(waves))
    return np.concatenate(xs), np.array(ys), np.array(lines), np.array(voices), np.array(speeds)


def fit(x: np.ndarray, y: np.ndarray, extractor_id: str, c: float = 0.01, seed: int = 0) -> FormatCheck:
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=5000, random_state=seed).fit((x - mean) / scale, y)
    return FormatCheck(extractor_id, mean, scale, model.coef_.astype(np.float64), model.intercept_.astype(np.float64))


def score(check: FormatCheck, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """At :data:`THRESHOLD`: the share of right-rate clips flagged (false alarms) and of
    mis-declared ones caught, and the share of each class named right."""
    flagged = np.array([v is not None for v in check.verdicts(x)])
    pred = check.probs(x).argmax(axis=1)
    return {
        "vectors": int(len(y)),  # each clip at its rate and as both mistakes decode it
        "false_alarms": round(float(flagged[y == 0].mean()), 4),
        "caught": round(float(flagged[y > 0].mean()), 4),
        "named_right": {CLASSES[k]: round(float((pred[y == k] == k).mean()), 4) for k in range(len(CLASSES))},
    }


#: (actual rate, declared rate) pairs the training report tries besides the two it learned
OTHER_RATES = (
    (48000, 16000), (44100, 16000), (32000, 16000), (22050, 16000), (12000, 16000),
    (16000, 48000), (16000, 44100), (16000, 32000), (16000, 22050), (16000, 12000), (11025, 8000),
)  # fmt: skip


def _other_rates(data_dir: str, extractor: Any, check: FormatCheck) -> dict[str, float]:
    """The share of 30 RAVDESS dev clips flagged when samples at one rate are declared as another
    (a clip at ``actual`` read as ``declared``, then resampled to 16 kHz as the worker does)."""
    from engines.datasets.ravdess import load_ravdess_clips
    from engines.features.audio import read_audio_file

    clips = load_ravdess_clips(data_dir, "dev")
    waves = [read_audio_file(c.path) for c in clips[:: max(1, len(clips) // 30)][:30]]
    out = {}
    for actual, declared in OTHER_RATES:
        sent = [resample(resample(w, SAMPLE_RATE, actual), declared, SAMPLE_RATE).astype(np.float32) for w in waves]
        flagged = [v is not None for v in check.verdicts(extractor.extract(sent))]
        out[f"{actual} Hz sent as {declared} Hz"] = round(float(np.mean(flagged)), 4)
    return out


def train(data_dir: str, out_root: str | Path = PROBE_DIR, espeak: int = 960, seed: int = 0) -> dict[str, Any]:
    from engines.features.channel import TelephoneChannel
    from engines.registry import load_extractors

    audio = load_extractors("default", runtime="onnxruntime").audio  # fp32: the same vectors on any CPU
    assert audio is not None, "the default model has no audio extractor"
    channel = TelephoneChannel(seed=seed + 7)
    xr, yr, _ = _ravdess(data_dir, "train", audio, channel)
    xd, yd, ld = _ravdess(data_dir, "dev", audio, channel)
    xe, ye, le, ve, se = _espeak(data_dir, espeak, audio, channel, seed)
    seen = ve < len(ESPEAK_VOICES) - HELD_OUT_VOICES
    check = fit(np.concatenate([xr, xe[seen]]), np.concatenate([yr, ye[seen]]), audio.id, seed=seed)
    right = (ye == 0) & ~seen
    report = {
        "extractor": audio.id,
        "threshold": THRESHOLD,
        "train": {"ravdess_actors": "1-16", "ravdess_clips": int(len(yr)), "espeak_clips": int(seen.sum())},
        "ravdess_dev_actors_17_20": score(check, xd, yd),
        "ravdess_dev_telephone": score(check, xd[ld == 1], yd[ld == 1]),
        "espeak_held_out_voices": score(check, xe[~seen], ye[~seen]),
        "espeak_held_out_false_alarms_by_speed": {
            f"{lo}-{lo + 99} wpm": round(
                float(np.mean([v is not None for v in check.verdicts(xe[right & (se // 100 * 100 == lo)])])), 4
            )
            for lo in (100, 200, 300)
        },
        "ravdess_dev_other_rates": _other_rates(data_dir, audio, check),
        "command": "python -m engines.features.format_check train "
        f"--data-dir {data_dir} --espeak {espeak} --seed {seed}",
    }
    out = Path(out_root)
    out.mkdir(parents=True, exist_ok=True)
    check.save(probe_path(audio.id, out), report)
    return report


#: words and short lines a caller says, for :func:`short_clips`
SHORT_LINES = (
    "uh", "um", "hmm", "yes", "no", "okay", "right", "sure", "thanks", "hello", "uh huh", "yeah", "I see",
    "mm-hmm", "oh", "what", "sorry", "fine", "great", "alright", "Can you hear me", "I want a refund now",
    "Thank you so much for your help today", "This is the third time I am calling about my bill",
)  # fmt: skip


def short_clips(seed: int = 3, limits: Sequence[float] = (0.0, 0.5, 0.75, MIN_CLIP_S, 1.5)) -> dict[str, Any]:
    """False alarms and catches by clip length (why :data:`MIN_CLIP_S`): :data:`SHORT_LINES` spoken
    by every second espeak-ng voice, sent right as 8 kHz mu-law (false alarms) and as each mistake
    (catches), judged by the default extractor's probe."""
    from engines.registry import load_extractors

    audio = load_extractors("default", runtime="onnxruntime").audio
    assert audio is not None, "the default model has no audio extractor"
    check = load_format_check(audio.id)
    assert check is not None, f"no format-check probe for {audio.id}"
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, float, float, list[float]]] = []  # words, seconds, p wrong when right, p when wrong
    for words in SHORT_LINES:
        for v in range(0, len(ESPEAK_VOICES), 2):
            clean = speak(words, ESPEAK_VOICES[v], int(rng.integers(120, 300)), int(rng.integers(20, 80)))
            right = decode_audio(encode_audio(clean, SAMPLE_RATE, "pcm_mulaw"), "pcm_mulaw")
            p = 1.0 - check.probs(audio.extract([right, *_variants(clean)[1:]]))[:, 0]
            rows.append((words, len(right) / SAMPLE_RATE, float(p[0]), [float(x) for x in p[1:]]))
    report: dict[str, Any] = {"command": f"python -m engines.features.format_check short --seed {seed}"}
    for limit in limits:
        kept = [r for r in rows if r[1] >= limit]
        caught = [x >= THRESHOLD for r in kept for x in r[3]]
        report[f"clips of {limit:g} s or more"] = {
            "right clips": len(kept),
            "false alarms": sum(r[2] >= THRESHOLD for r in kept),
            "mistakes caught": f"{sum(caught)} of {len(caught)}",
        }
    report["false alarms"] = [f"{w!r} {s:.2f} s p={p:.3f}" for w, s, p, _ in rows if p >= THRESHOLD]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engines.features.format_check", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fit the default audio extractor's probe and print its held-out figures")
    t.add_argument("--data-dir", default="../shared/data", help="folder holding ravdess/ (read-only)")
    t.add_argument("--out", default=str(PROBE_DIR), help="where the probe's files are written")
    t.add_argument("--espeak", type=int, default=960, help="espeak-ng utterances (a third of the voices held out)")
    t.add_argument("--seed", type=int, default=0, help="the voices held out and the clips drawn")
    h = sub.add_parser("short", help="false alarms and catches by clip length (espeak-ng; why MIN_CLIP_S)")
    h.add_argument("--seed", type=int, default=3, help="the voices' speeds and pitches")
    ns = parser.parse_args(argv)
    report = short_clips(ns.seed) if ns.cmd == "short" else train(ns.data_dir, ns.out, ns.espeak, ns.seed)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
