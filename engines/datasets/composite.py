"""``meld-ravdess``: MELD dialogues where every utterance also gets real emotional speech.

No public corpus has text and audio of the same conversation under a free licence, so this
composite pairs each MELD utterance with a RAVDESS clip of the *same* emotion, spoken by one
RAVDESS actor per MELD speaker (per dialogue). Assignment is deterministic given ``seed``.
Actors come from the split MELD's split maps to (train -> actors 1-16, dev -> 17-20), so dev
voices are never heard in training. Within a dialogue a speaker's clips of one emotion are drawn
without replacement (reused only once all are used), so a window rarely holds the same clip twice
(an identical clip would give away that two utterances share an emotion). Report figures on it
as a composite.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from engines.datasets.base import Dialogue, Utterance
from engines.datasets.meld import load_meld
from engines.datasets.ravdess import FOLDS, Clip, load_ravdess_clips
from engines.errors import DatasetError

#: composite split -> (MELD split, RAVDESS split); the actor folds (and nested folds) keep MELD's train and dev
SPLIT_MAP: dict[str, tuple[str, str]] = {
    "train": ("train", "train"),
    "dev": ("dev", "dev"),
    "test": ("test", "test"),
    **{
        f"{s}-{kind}{k}": (s, f"{s}-{kind}{k}")
        for k in range(FOLDS)
        for s in ("train", "dev")
        for kind in ("fold", "nest")
    },
}


def load_meld_ravdess(data_dir: str | Path, split: str, seed: int = 0) -> list[Dialogue]:
    """MELD ``split`` with a RAVDESS clip path on every utterance."""
    if split not in SPLIT_MAP:
        raise DatasetError(f"meld-ravdess has no split {split!r}; known: {tuple(SPLIT_MAP)}")
    meld_split, ravdess_split = SPLIT_MAP[split]
    dialogues = load_meld(data_dir, meld_split)
    clips = load_ravdess_clips(data_dir, ravdess_split)
    return assign_clips(dialogues, clips, seed)


def assign_clips(dialogues: list[Dialogue], clips: list[Clip], seed: int) -> list[Dialogue]:
    """Give each utterance a clip of its emotion by its speaker's actor (deterministic)."""
    actors = sorted({c.actor for c in clips})
    by_actor_emotion: dict[tuple[int, int], list[str]] = {}
    for c in clips:
        by_actor_emotion.setdefault((c.actor, c.emotion), []).append(c.path)
    out: list[Dialogue] = []
    for d in dialogues:
        rng = np.random.default_rng([seed, zlib.crc32(d.id.encode())])
        order = [actors[i] for i in rng.permutation(len(actors))]
        speaker_actor: dict[str, int] = {}
        left: dict[tuple[int, int], list[str]] = {}  # clips not yet used in this dialogue
        utts: list[Utterance] = []
        for u in d.utterances:
            if u.speaker not in speaker_actor:
                speaker_actor[u.speaker] = order[len(speaker_actor) % len(order)]
            key = (speaker_actor[u.speaker], u.emotion)
            if not left.get(key):
                pool = by_actor_emotion.get(key)
                if not pool:
                    raise DatasetError(f"actor {key[0]} has no clip of emotion {u.emotion}")
                left[key] = [pool[i] for i in rng.permutation(len(pool))]
            path = left[key].pop()
            utts.append(Utterance(u.text, u.speaker, u.emotion, u.sentiment, path))
        out.append(Dialogue(d.id, utts))
    return out
