"""EmoryNLP (multi-party TV dialogue, Friends scenes):
``<data_dir>/emorynlp/emorynlp_{split}_final.csv``.

Columns Utterance, Speaker (a Python list literal, e.g. ``['Rachel Green']``), Emotion, Scene_ID,
Utterance_ID, Season, Episode, ... A dialogue is one scene (Season, Episode, Scene_ID). Splits here:
``train`` and ``dev``; the test file is not distributed with the data and raises
:class:`DatasetError`.

Labels (logits order, COSMIC's): joyful, mad, peaceful, neutral, sad, powerful, scared. EmoryNLP
has no sentiment annotation; the sentiment target follows Willcox's feeling wheel, on which the
labels sit (:data:`SENTIMENT`): joyful, peaceful, powerful -> +1; mad, sad, scared -> -1;
neutral -> 0.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

from engines.datasets.base import Dialogue, Utterance
from engines.errors import DatasetError
from engines.features.text import normalise_text

LABELS: tuple[str, ...] = ("joyful", "mad", "peaceful", "neutral", "sad", "powerful", "scared")
SENTIMENT: dict[str, int] = {
    "joyful": 1, "peaceful": 1, "powerful": 1, "neutral": 0, "mad": -1, "sad": -1, "scared": -1,
}  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "dev", "test")
COLUMNS = ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")


def _speaker(raw: str) -> str:
    """``"['Rachel Green']" -> "Rachel Green"``; several speakers joined with `` & ``."""
    raw = raw.strip()
    if raw.startswith("["):
        try:
            names = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            names = None
        if isinstance(names, list):
            return " & ".join(str(n).strip() for n in names) or "unknown"
    return raw or "unknown"


def load_emorynlp(data_dir: str | Path, split: str) -> list[Dialogue]:
    """EmoryNLP scenes of ``split`` by (season, episode, scene), utterances by Utterance_ID."""
    if split not in SPLITS:
        raise DatasetError(f"EmoryNLP has no split {split!r}; known splits: {SPLITS}")
    path = Path(data_dir) / "emorynlp" / f"emorynlp_{split}_final.csv"
    if not path.is_file():
        raise DatasetError(f"EmoryNLP split {split!r} not found: expected {path}")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing columns {missing}")
        rows = list(reader)
    by_scene: dict[tuple[int, int, int], list[tuple[int, Utterance]]] = {}
    for row in rows:
        name = row["Emotion"].strip().lower()
        if name not in SENTIMENT:
            raise DatasetError(f"{path}: unknown emotion {row['Emotion']!r}")
        utt = Utterance(
            text=normalise_text(row["Utterance"]),
            speaker=_speaker(row["Speaker"]),
            emotion=LABELS.index(name),
            sentiment=SENTIMENT[name],
        )
        key = (int(row["Season"]), int(row["Episode"]), int(row["Scene_ID"]))
        by_scene.setdefault(key, []).append((int(row["Utterance_ID"]), utt))
    return [
        Dialogue(f"emorynlp-{split}-s{s:02d}e{e:02d}c{c:02d}", [u for _, u in sorted(t, key=lambda x: x[0])], LABELS)
        for (s, e, c), t in sorted(by_scene.items())
    ]
