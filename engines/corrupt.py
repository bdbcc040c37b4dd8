"""Contradicting inputs: give a fraction of utterances the input of *another* emotion.

``emostream evaluate --corrupt audio=0.5`` and ``emostream train --corrupt-train RATE`` use it to
test (and teach) that a relevance model down-weights a modality that contradicts the others.

- ``audio``: the utterance's clip is swapped for a RAVDESS clip of another emotion, by the same
  actor (on the composite, the actor who voices that speaker) when the actor has one, else by any
  actor of the pool. The pool is the clips of the same split (dev actors on dev), so no voice
  crosses splits. Needs RAVDESS audio (datasets ``meld-ravdess``, ``ravdess``).
- ``text``: the utterance's text is swapped for the text of an utterance of another emotion drawn
  from the same dialogues (the same split).

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
#: datasets whose utterances carry RAVDESS clips, and the RAVDESS split each split draws from
AUDIO_DATASETS: dict[str, dict[str, str]] = {
    "meld-ravdess": {split: ravdess for split, (_, ravdess) in SPLIT_MAP.items()},
    "ravdess": {split: split for split in ACTORS},
}


@dataclass(frozen=True)
class CorruptSpec:
    modality: str
    fraction: float


@dataclass(frozen=True)
class Corrupted:
    """Dialogues with some inputs swapped; flat per-utterance arrays follow dialogue order."""

    dialogues: list[Dialogue]
    mask: np.ndarray  # (N,) bool, True where the utterance got another emotion's input
    donor_emotion: np.ndarray  # (N,) int64, the emotion of the swapped-in input (-1 where clean)

    @property
    def n_corrupted(self) -> int:
        return int(self.mask.sum())


def parse_corrupt(spec: str) -> CorruptSpec:
    """``"audio=0.5"`` -> ``CorruptSpec("audio", 0.5)``; a bad spec raises ``DatasetError``."""
    name, sep, raw = spec.partition("=")
    name = name.strip().lower()
    if not sep or not name or not raw.strip():
        raise DatasetError(f"--corrupt expects MODALITY=FRACTION (e.g. audio=0.5), got {spec!r}")
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
    return CorruptSpec(name, fraction)


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
    dialogues: list[Dialogue], spec: CorruptSpec, seed: int, clips: list[Clip] | None = None
) -> Corrupted:
    """Swap ``spec.modality`` of ``round(spec.fraction * eligible)`` utterances (see module doc)."""
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
    if spec.modality == "audio":
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
