"""The field's standard feature pickles (DialogueRNN, COGMEN, MMGCN) as datasets.

``iemocap-pickle``: ``<data_dir>/IEMOCAP_features.pkl`` (or ``IEMOCAP_features_raw.pkl``), a
9-tuple ``(video_ids, speakers, labels, text, audio, visual, sentences, train_ids, test_ids)``.
Labels 0-5 = happy, sad, neutral, angry, excited, frustrated (DialogueRNN's order); speakers are
``'M'``/``'F'`` per utterance.

``meld-pickle``: ``<data_dir>/MELD_features_raw*.pkl`` (first by name), either DialogueRNN's 9-tuple
``(ids, speakers, labels, text, audio, sentences, train_ids, test_ids, sentiment_labels)`` (no video)
or MMGCN's 10-tuple ``(ids, speakers, labels, text, audio, visual, sentences, train_ids, test_ids,
_)``. Labels 0-6 = MELD's seven in :data:`engines.interface.EMOTIONS` order; speakers are one-hot
vectors (speaker = the hot index).

Every dict is keyed by dialogue id and holds one entry per utterance. The pickle's text, audio and
visual vectors become the utterances' precomputed features (``Dialogue.features``), so the feature
sizes come from the pickle (:func:`precomputed_spec`). The sentiment target is derived from the
emotion (positive / negative / neutral emotions, as for the CSV datasets), not read from the pickle.

Splits: ``train`` = the pickle's train ids minus a fixed 10 % held out as ``dev`` (chosen by a
seeded permutation of the sorted ids, independent of ``--seed``, so train and dev never overlap);
``test`` = the pickle's test ids. Only load pickles you trust: unpickling runs code.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.datasets.base import Dialogue, Utterance
from engines.datasets.iemocap import LABELS as IEMOCAP_LABELS
from engines.datasets.iemocap import SENTIMENT as IEMOCAP_SENTIMENT
from engines.datasets.ravdess import EMOTION_SENTIMENT
from engines.errors import DatasetError
from engines.interface import EMOTIONS, FeatureSpec

SPLITS: tuple[str, ...] = ("train", "dev", "test")
DEV_FRACTION = 0.1
DEV_SEED = 0
FILES: dict[str, tuple[str, ...]] = {
    "iemocap-pickle": ("IEMOCAP_features.pkl", "IEMOCAP_features_raw.pkl"),
    "meld-pickle": ("MELD_features_raw*.pkl",),
}
LABELS: dict[str, tuple[str, ...]] = {"iemocap-pickle": IEMOCAP_LABELS, "meld-pickle": EMOTIONS}
SENTIMENT: dict[str, dict[str, int]] = {"iemocap-pickle": IEMOCAP_SENTIMENT, "meld-pickle": EMOTION_SENTIMENT}


def pickle_path(name: str, data_dir: str | Path) -> Path:
    root = Path(data_dir)
    for pattern in FILES[name]:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
    raise DatasetError(f"{name}: no {' or '.join(FILES[name])} in {root} (point --data-dir at the pickle's folder)")


def _unpack(obj: Any, path: Path) -> dict[str, Any]:
    """Name the tuple's parts; tells MELD's video-less 9-tuple from the 9/10-tuples with video."""
    if not isinstance(obj, tuple | list) or len(obj) not in (9, 10):
        raise DatasetError(f"{path}: expected a 9- or 10-tuple of dicts, got {type(obj).__name__}")
    ids, speakers, labels, text, audio = obj[:5]
    first = next(iter(obj[5].values()), None) if isinstance(obj[5], dict) else None
    has_visual = first is not None and not (len(first) > 0 and isinstance(first[0], str))
    if has_visual:
        visual, sentences, train, test = obj[5:9]
    else:
        visual, (sentences, train, test) = None, obj[5:8]
    parts = {
        "ids": ids, "speakers": speakers, "labels": labels, "text": text, "audio": audio,
        "visual": visual, "sentences": sentences, "train": list(train), "test": list(test),
    }  # fmt: skip
    for k in ("speakers", "labels", "text", "audio", "sentences"):
        if not isinstance(parts[k], dict):
            raise DatasetError(f"{path}: part {k!r} is not a dict keyed by dialogue id")
    return parts


def split_ids(train: Sequence[Any], test: Sequence[Any], split: str) -> list[Any]:
    """Dialogue ids of ``split`` (dev carved from train, see the module docstring)."""
    if split == "test":
        return list(test)
    ids = sorted(train, key=str)
    order = np.random.default_rng(DEV_SEED).permutation(len(ids))
    n_dev = max(1, round(DEV_FRACTION * len(ids))) if len(ids) > 1 else 0
    dev = {str(ids[i]) for i in order[:n_dev]}
    return [v for v in ids if (str(v) in dev) == (split == "dev")]


def _speaker(raw: Any) -> str:
    if isinstance(raw, str | bytes):
        return raw.decode() if isinstance(raw, bytes) else raw
    vec = np.asarray(raw)
    return f"speaker{int(vec.argmax())}" if vec.ndim == 1 and vec.size > 1 else f"speaker{int(vec)}"


def load_feature_pickle(name: str, data_dir: str | Path, split: str) -> list[Dialogue]:
    """Dialogues of ``split`` with the pickle's vectors as precomputed text/audio/video features."""
    if name not in FILES:
        raise DatasetError(f"unknown feature pickle dataset {name!r}; known: {tuple(FILES)}")
    if split not in SPLITS:
        raise DatasetError(f"{name} has no split {split!r}; known splits: {SPLITS}")
    path = pickle_path(name, data_dir)
    with path.open("rb") as f:
        try:
            parts = _unpack(pickle.load(f, encoding="latin1"), path)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise DatasetError(f"{path}: not a readable feature pickle: {exc}") from exc
    labels, sentiment = LABELS[name], SENTIMENT[name]
    out: list[Dialogue] = []
    for vid in split_ids(parts["train"], parts["test"], split):
        n = len(parts["labels"][vid])
        feats = {"text": parts["text"], "audio": parts["audio"], "video": parts["visual"]}
        arrays = {m: np.asarray(src[vid], dtype=np.float32).reshape(n, -1) for m, src in feats.items() if src}
        utts = []
        for i in range(n):
            y = int(parts["labels"][vid][i])
            if not 0 <= y < len(labels):
                raise DatasetError(f"{path}: dialogue {vid} has label {y} outside {labels}")
            utts.append(
                Utterance(
                    text=str(parts["sentences"][vid][i]),
                    speaker=_speaker(parts["speakers"][vid][i]),
                    emotion=y,
                    sentiment=sentiment[labels[y]],
                )
            )
        out.append(Dialogue(f"{name}-{vid}", utts, labels=labels, features=arrays))
    return out


def precomputed_spec(dialogues: Sequence[Dialogue]) -> FeatureSpec | None:
    """Feature sizes of dialogues that carry precomputed vectors (``None`` if they carry none)."""
    with_feats = [d for d in dialogues if d.features]
    if not with_feats:
        return None
    dims = {m: int(a.shape[1]) for m, a in (with_feats[0].features or {}).items()}
    return FeatureSpec(dims)
