"""Contradicting inputs: give a fraction of utterances the input of *another* emotion.

``emostream evaluate --corrupt audio=0.5`` and ``emostream train --corrupt-train RATE`` use it to
test (and teach) that a relevance model down-weights a modality that contradicts the others.

- ``audio``: the utterance's clip is swapped for a RAVDESS clip of another emotion, by the same
  actor (on the composite, the actor who voices that speaker) when the actor has one, else by any
  actor of the pool. The pool is the clips of the same split (dev actors on dev), so no voice
  crosses splits. Needs RAVDESS audio (datasets ``meld-ravdess``, ``ravdess``).
- ``text``: the utterance's text is swapped for the text of an utterance of another emotion drawn
  from the same dialogues (the same split).
- ``audio:noise`` and ``audio:silence`` (``--corrupt audio:noise=1.0``): the clip is replaced by one
  with no voice in it (:func:`probe_clips`: 2.5-4.5 s of white noise, low-passed "pink" noise or
  50 Hz hum with hiss at -35..-15 dBFS; or near-silence at -80..-60 dBFS, 16-bit), a pool of 24
  per kind and seed written once under the feature cache. They test that a model gives a line with
  no voice no weight.

Which utterances and which donors are chosen is deterministic given ``seed``: exactly
``round(fraction * eligible)`` of the utterances that carry the modality are corrupted.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engines.datasets.base import Dialogue
from engines.datasets.composite import SPLIT_MAP
from engines.datasets.ravdess import ACTORS, Clip
from engines.errors import DatasetError
from engines.interface import EMOTIONS, MODALITIES

CORRUPTIBLE: tuple[str, ...] = ("text", "audio")
#: what replaces a corrupted input: another emotion's (swap), or, for audio, a clip without a voice
KINDS: dict[str, tuple[str, ...]] = {"text": ("swap",), "audio": ("swap", "noise", "silence")}
PROBE_CLIPS = 24
#: datasets whose utterances carry RAVDESS clips, and the RAVDESS split each split draws from
AUDIO_DATASETS: dict[str, dict[str, str]] = {
    "meld-ravdess": {split: ravdess for split, (_, ravdess) in SPLIT_MAP.items()},
    "ravdess": {split: split for split in ACTORS},
}


@dataclass(frozen=True)
class CorruptSpec:
    modality: str
    fraction: float
    kind: str = "swap"

    def __str__(self) -> str:
        return f"{self.modality}{'' if self.kind == 'swap' else ':' + self.kind}={self.fraction:g}"


@dataclass(frozen=True)
class Corrupted:
    """Dialogues with some inputs swapped; flat per-utterance arrays follow dialogue order."""

    dialogues: list[Dialogue]
    mask: np.ndarray  # (N,) bool, True where the utterance got another input
    donor_emotion: np.ndarray  # (N,) int64, the emotion of the swapped-in input (-1 where clean, or no voice)

    @property
    def n_corrupted(self) -> int:
        return int(self.mask.sum())


def parse_corrupt(spec: str) -> CorruptSpec:
    """``"audio=0.5"`` -> ``CorruptSpec("audio", 0.5)``, ``"audio:noise=1"`` -> ``CorruptSpec("audio",
    1.0, "noise")``; a bad spec raises ``DatasetError``."""
    head, sep, raw = spec.partition("=")
    name, _, kind = head.strip().lower().partition(":")
    kind = kind.strip() or "swap"
    if not sep or not name or not raw.strip():
        raise DatasetError(f"--corrupt expects MODALITY[:KIND]=FRACTION (e.g. audio=0.5, audio:noise=1), got {spec!r}")
    if name not in MODALITIES:
        raise DatasetError(f"--corrupt: unknown modality {name!r}; known: {MODALITIES}")
    if name not in CORRUPTIBLE:
        raise DatasetError(f"--corrupt: {name} cannot be corrupted (no dataset carries raw {name}); use {CORRUPTIBLE}")
    try:
        fraction = float(raw)
    except ValueError:
        raise DatasetError(f"--corrupt: fraction must be a number in [0, 1], got {raw!r}") from None
    if not 0.0 <= fraction <= 1.0:
        raise DatasetError(f"--corrupt: fraction must be in [0, 1], got {fraction}")
    if kind not in KINDS[name]:
        raise DatasetError(f"--corrupt: {name} has no kind {kind!r}; known: {KINDS[name]}")
    return CorruptSpec(name, fraction, kind)


def probe_clips(kind: str, seed: int, out_dir: str | Path, n: int = PROBE_CLIPS) -> list[str]:
    """``n`` seeded 16 kHz WAV clips without a voice (``kind`` noise or silence), written once
    into ``out_dir``; their paths."""
    import soundfile as sf

    rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        m = int(16000 * rng.uniform(2.5, 4.5))
        if kind == "silence":
            x = rng.standard_normal(m) * 10 ** (rng.uniform(-80, -60) / 20)
        else:
            x = rng.standard_normal(m)
            if i % 3 == 1:  # pink-ish: integrated white noise, its slow drift removed
                x = np.cumsum(x)
                x = x - np.convolve(x, np.ones(400) / 400, mode="same")
            elif i % 3 == 2:  # mains hum with hiss
                x = np.sin(2 * np.pi * 50 * np.arange(m) / 16000) + 0.3 * x
            x = x / (np.sqrt(np.mean(x**2)) + 1e-9) * 10 ** (rng.uniform(-35, -15) / 20)
        path = folder / f"{kind}-{seed}-{i}.wav"
        if not path.is_file():
            tmp = path.with_suffix(".tmp.wav")
            sf.write(str(tmp), np.clip(x, -1, 1).astype(np.float32), 16000, subtype="PCM_16")
            tmp.replace(path)
        paths.append(str(path))
    return paths


def audio_pool(dataset: str, data_dir: str | Path, split: str) -> list[Clip]:
    """The RAVDESS clips that donate contradicting audio for ``dataset``'s ``split``."""
    from engines.datasets.ravdess import load_ravdess_clips

    if dataset not in AUDIO_DATASETS:
        raise DatasetError(
            f"--corrupt audio needs a dataset with audio ({', '.join(AUDIO_DATASETS)}); {dataset!r} has none"
        )
    splits = AUDIO_DATASETS[dataset]
    if split not in splits:
        raise DatasetError(f"{dataset} has no split {split!r}; known: {tuple(splits)}")
    return load_ravdess_clips(data_dir, splits[split])


def corrupt_dialogues(
    dialogues: list[Dialogue],
    spec: CorruptSpec,
    seed: int,
    clips: list[Clip] | None = None,
    probe_dir: str | Path | None = None,
) -> Corrupted:
    """Swap ``spec.modality`` of ``round(spec.fraction * eligible)`` utterances (see module doc);
    ``probe_dir`` holds the clips of the ``noise``/``silence`` kinds."""
    utts = [u for d in dialogues for u in d.utterances]
    n = len(utts)
    has = [(u.audio if spec.modality == "audio" else u.text) is not None for u in utts]
    eligible = np.flatnonzero(has)
    if spec.fraction > 0 and eligible.size == 0:
        raise DatasetError(f"--corrupt {spec.modality}: no utterance of these dialogues has {spec.modality}")
    if any(d.features for d in dialogues):
        raise DatasetError("--corrupt needs raw text or audio; feature-pickle datasets carry fixed vectors")
    rng = np.random.default_rng([seed, zlib.crc32(spec.modality.encode())])
    k = int(round(spec.fraction * eligible.size))
    chosen = np.sort(rng.choice(eligible, size=k, replace=False)) if k else np.zeros((0,), np.int64)
    donors: dict[int, tuple[str, int]] = {}  # flat index -> (new text or clip path, its emotion)
    if spec.kind in ("noise", "silence"):
        from engines.features.cache import DEFAULT_ROOT

        probes = probe_clips(spec.kind, seed, probe_dir or DEFAULT_ROOT / "probes")
        for i in chosen.tolist():
            donors[i] = (probes[int(rng.integers(len(probes)))], -1)
    elif spec.modality == "audio":
        if clips is None or not clips:
            raise DatasetError("--corrupt audio needs a pool of RAVDESS clips")
        if any(d.labels != EMOTIONS for d in dialogues):
            raise DatasetError("--corrupt audio needs dialogues labelled with MELD's emotions (RAVDESS's mapping)")
        actor_of = {c.path: c.actor for c in clips}
        pool = sorted(clips, key=lambda c: c.path)
        by_actor: dict[int, list[Clip]] = {}
        for c in pool:
            by_actor.setdefault(c.actor, []).append(c)
        for i in chosen.tolist():
            y = utts[i].emotion
            own = by_actor.get(actor_of.get(str(utts[i].audio), -1), [])
            cands = [c for c in own if c.emotion != y] or [c for c in pool if c.emotion != y]
            if not cands:
                raise DatasetError(f"no clip of an emotion other than {EMOTIONS[y]} to swap in")
            c = cands[int(rng.integers(len(cands)))]
            donors[i] = (c.path, c.emotion)
    else:
        by_emotion: dict[int, list[int]] = {}
        for j, u in enumerate(utts):
            if u.text is not None:
                by_emotion.setdefault(u.emotion, []).append(j)
        for i in chosen.tolist():
            y = utts[i].emotion
            others = [j for e, js in sorted(by_emotion.items()) if e != y for j in js]
            if not others:
                raise DatasetError("--corrupt text: every utterance has the same emotion; nothing contradicts it")
            j = others[int(rng.integers(len(others)))]
            donors[i] = (str(utts[j].text), utts[j].emotion)
    out: list[Dialogue] = []
    flat = 0
    for d in dialogues:
        new = []
        for u in d.utterances:
            if flat in donors:
                value = donors[flat][0]
                u = replace(u, audio=value) if spec.modality == "audio" else replace(u, text=value)
            new.append(u)
            flat += 1
        out.append(replace(d, utterances=new))
    mask = np.zeros((n,), dtype=bool)
    mask[chosen] = True
    donor_emotion = np.full((n,), -1, dtype=np.int64)
    for i, (_, e) in donors.items():
        donor_emotion[i] = e
    return Corrupted(out, mask, donor_emotion)
