"""MELD text (multi-party TV dialogue): ``<data_dir>/meld/{split}_sent_emo.csv``.

Splits here: ``train`` and ``dev`` (the official test split is not distributed with the data).
Utterance text goes through :func:`engines.features.text.normalise_text`, which repairs MELD's
mojibake (``\\x92`` for an apostrophe and friends).
"""

from __future__ import annotations

import csv
from pathlib import Path

from engines.datasets.base import SENTIMENTS, Dialogue, Utterance, emotion_index
from engines.errors import DatasetError
from engines.features.text import normalise_text

SPLITS: tuple[str, ...] = ("train", "dev", "test")
COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")


def meld_path(data_dir: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise DatasetError(f"MELD has no split {split!r}; known splits: {SPLITS}")
    return Path(data_dir) / "meld" / f"{split}_sent_emo.csv"


def load_meld(data_dir: str | Path, split: str) -> list[Dialogue]:
    """MELD dialogues of ``split`` in dialogue and utterance order."""
    path = meld_path(data_dir, split)
    if not path.is_file():
        raise DatasetError(
            f"MELD split {split!r} not found: expected {path} "
            f"(get MELD from https://github.com/declare-lab/MELD and point --data-dir at its parent)"
        )
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing columns {missing}")
        rows = list(reader)
    by_dialogue: dict[int, list[tuple[int, Utterance]]] = {}
    for row in rows:
        try:
            emotion = emotion_index(row["Emotion"].strip().lower())
            sentiment = SENTIMENTS[row["Sentiment"].strip().lower()]
        except (ValueError, KeyError) as exc:
            raise DatasetError(f"{path}: bad label in row {row.get('Sr No.')}: {exc}") from exc
        utt = Utterance(
            text=normalise_text(row["Utterance"]),
            speaker=normalise_text(row["Speaker"]),
            emotion=emotion,
            sentiment=sentiment,
        )
        by_dialogue.setdefault(int(row["Dialogue_ID"]), []).append((int(row["Utterance_ID"]), utt))
    return [
        Dialogue(id=f"meld-{split}-{did}", utterances=[u for _, u in sorted(turns, key=lambda t: t[0])])
        for did, turns in sorted(by_dialogue.items())
    ]
