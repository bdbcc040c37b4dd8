"""RAVDESS emotional speech (16 kHz FLAC): ``<data_dir>/ravdess/labels.csv`` plus clips.

Splits by actor: ``train`` actors 1-16, ``dev`` 17-20, ``test`` 21-24 (not distributed here).
For choices that must hold for voices never heard, ``train-fold{k}`` / ``dev-fold{k}`` (k < 5)
cross-validate over the 20 distributed actors, four held out per fold: fold k holds out actors
4k+1..4k+4, so fold 4 is ``train`` / ``dev``. Nested, ``train-nest{k}`` / ``dev-nest{k}`` train
on 12 actors and stop early on fold k + 1's (mod 5), so fold k's four (``dev-fold{k}``) test a
model that no choice of which was made on them.
RAVDESS's eight emotions map onto MELD's seven (calm and neutral both to neutral). Each clip is
returned as a one-utterance dialogue without text (both sentences are neutral by design).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from engines.datasets.base import Dialogue, Utterance, emotion_index
from engines.errors import DatasetError

ACTORS: dict[str, tuple[int, ...]] = {
    "train": tuple(range(1, 17)),
    "dev": tuple(range(17, 21)),
    "test": tuple(range(21, 25)),
}
FOLDS = 5  #: actor folds over actors 1-20 (four each)
for _k in range(FOLDS):
    _held = tuple(range(4 * _k + 1, 4 * _k + 5))
    ACTORS[f"train-fold{_k}"] = tuple(a for a in range(1, 21) if a not in _held)
    ACTORS[f"dev-fold{_k}"] = _held
    # nested: fold k's actors are the test, the next fold's stop training early, the other 12 train
    _stop = tuple(range(4 * ((_k + 1) % FOLDS) + 1, 4 * ((_k + 1) % FOLDS) + 5))
    ACTORS[f"train-nest{_k}"] = tuple(a for a in range(1, 21) if a not in _held and a not in _stop)
    ACTORS[f"dev-nest{_k}"] = _stop


#: the datasets whose audio is RAVDESS's, so whose splits have actor folds
RAVDESS_BASED: tuple[str, ...] = ("ravdess", "meld-ravdess")


def fold_split(split: str, fold: int | None, dataset: str = "ravdess", nested: bool = False) -> str:
    """``train``/``dev`` of actor fold ``fold`` of ``dataset`` (None: the plain split). ``nested``:
    the split of a nested fold, whose training never hears fold ``fold``'s actors at all (they are
    its test, ``dev-fold{k}``): ``train-nest{k}`` (12 actors) and ``dev-nest{k}`` (fold k + 1's four,
    for early stopping)."""
    if fold is None:
        if nested:
            raise DatasetError("--nested needs --fold K (the fold whose actors are held out as the test)")
        return split
    if dataset not in RAVDESS_BASED:
        raise DatasetError(f"--fold needs a RAVDESS-based dataset ({', '.join(RAVDESS_BASED)}), not {dataset}")
    if split not in ("train", "dev") or not 0 <= fold < FOLDS:
        raise DatasetError(f"actor folds have train and dev splits and folds 0-{FOLDS - 1}; got {split!r}, {fold}")
    return f"{split}-{'nest' if nested else 'fold'}{fold}"


EMOTION_MAP: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "joy",
    "sad": "sadness",
    "angry": "anger",
    "fearful": "fear",
    "disgust": "disgust",
    "surprised": "surprise",
}
# Sentiment of an audio-only clip, from its emotion (surprise is ambiguous: neutral).
EMOTION_SENTIMENT: dict[str, int] = {
    "neutral": 0, "surprise": 0, "fear": -1, "sadness": -1, "joy": 1, "disgust": -1, "anger": -1,
}  # fmt: skip


@dataclass(frozen=True)
class Clip:
    path: str
    actor: int
    emotion: int  # index in EMOTIONS (after mapping)
    sentiment: int


def load_ravdess_clips(data_dir: str | Path, split: str) -> list[Clip]:
    """Clips of the actors of ``split``, sorted by path."""
    if split not in ACTORS:
        raise DatasetError(f"RAVDESS has no split {split!r}; known splits: {tuple(ACTORS)}")
    root = Path(data_dir) / "ravdess"
    labels = root / "labels.csv"
    if not labels.is_file():
        raise DatasetError(f"RAVDESS labels not found: expected {labels}")
    actors = set(ACTORS[split])
    clips: list[Clip] = []
    with labels.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            actor = int(row["actor"])
            if actor not in actors:
                continue
            name = EMOTION_MAP.get(row["emotion"].strip().lower())
            if name is None:
                raise DatasetError(f"{labels}: unknown emotion {row['emotion']!r}")
            clips.append(Clip(str(root / row["path"]), actor, emotion_index(name), EMOTION_SENTIMENT[name]))
    if not clips:
        raise DatasetError(f"RAVDESS split {split!r} (actors {min(actors)}-{max(actors)}) has no clips under {root}")
    missing = [c.path for c in clips if not Path(c.path).is_file()]
    if missing:
        raise DatasetError(f"RAVDESS split {split!r}: {len(missing)} clip files missing, e.g. {missing[0]}")
    return sorted(clips, key=lambda c: c.path)


def load_ravdess(data_dir: str | Path, split: str) -> list[Dialogue]:
    """Each clip as a one-utterance, audio-only dialogue (speaker = actor)."""
    return [
        Dialogue(
            id=f"ravdess-{Path(c.path).stem}",
            utterances=[Utterance(None, f"actor{c.actor:02d}", c.emotion, c.sentiment, c.path)],
        )
        for c in load_ravdess_clips(data_dir, split)
    ]
