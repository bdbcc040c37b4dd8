"""IEMOCAP transcripts (dyadic acted dialogue): ``<data_dir>/iemocap-text/iemocap_text.csv``.

Columns Dialogue_ID, Utterance_ID, Speaker (M/F), Utterance, Emotion, Split (``train`` or
``valid``). Splits here: ``train`` and ``dev`` (= the CSV's ``valid``); ``test`` (Session 5) is
not distributed with the data and raises :class:`DatasetError`.

Labels (logits order, DialogueRNN/COGMEN's index order): happy, sad, neutral, angry, excited,
frustrated. IEMOCAP has no sentiment annotation; the sentiment target is derived from the emotion
(:data:`SENTIMENT`): happy, excited -> +1; sad, angry, frustrated -> -1; neutral -> 0.
"""

from __future__ import annotations

import csv
from pathlib import Path

from engines.datasets.base import Dialogue, Utterance
from engines.errors import DatasetError
from engines.features.text import normalise_text

LABELS: tuple[str, ...] = ("happy", "sad", "neutral", "angry", "excited", "frustrated")
SENTIMENT: dict[str, int] = {"happy": 1, "excited": 1, "neutral": 0, "sad": -1, "angry": -1, "frustrated": -1}
SPLITS: dict[str, str] = {"train": "train", "dev": "valid", "test": "test"}  # ours -> the CSV's Split
COLUMNS = ("Dialogue_ID", "Utterance_ID", "Speaker", "Utterance", "Emotion", "Split")


def load_iemocap_text(data_dir: str | Path, split: str) -> list[Dialogue]:
    """IEMOCAP dialogues of ``split`` in file order, utterances by Utterance_ID."""
    if split not in SPLITS:
        raise DatasetError(f"IEMOCAP has no split {split!r}; known splits: {tuple(SPLITS)}")
    path = Path(data_dir) / "iemocap-text" / "iemocap_text.csv"
    if not path.is_file():
        raise DatasetError(f"IEMOCAP text not found: expected {path}")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing columns {missing}")
        rows = [r for r in reader if r["Split"].strip() == SPLITS[split]]
    if not rows:
        raise DatasetError(
            f"IEMOCAP split {split!r} not found: {path} has no rows with Split={SPLITS[split]!r} "
            "(the test split, Session 5, is not distributed here)"
        )
    by_dialogue: dict[str, list[tuple[int, Utterance]]] = {}
    for row in rows:
        name = row["Emotion"].strip().lower()
        if name not in SENTIMENT:
            raise DatasetError(f"{path}: unknown emotion {row['Emotion']!r} in {row['Dialogue_ID']}")
        utt = Utterance(
            text=normalise_text(row["Utterance"]),
            speaker=row["Speaker"].strip(),
            emotion=LABELS.index(name),
            sentiment=SENTIMENT[name],
        )
        by_dialogue.setdefault(row["Dialogue_ID"].strip(), []).append((int(row["Utterance_ID"]), utt))
    return [
        Dialogue(f"iemocap-{did}", [u for _, u in sorted(turns, key=lambda t: t[0])], labels=LABELS)
        for did, turns in by_dialogue.items()
    ]
