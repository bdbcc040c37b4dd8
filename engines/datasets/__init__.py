"""Dataset loaders returning dialogues (:class:`engines.datasets.base.Dialogue`).

``load_dataset(name, data_dir, split, seed)`` with ``name`` one of :data:`DATASETS`:
``meld`` (text), ``ravdess`` (audio, one clip per dialogue), ``meld-ravdess`` (composite: MELD
text with a same-emotion RAVDESS clip per utterance).
"""

from __future__ import annotations

from pathlib import Path

from engines.datasets.base import Dialogue, Utterance
from engines.errors import DatasetError

DATASETS: tuple[str, ...] = ("meld", "ravdess", "meld-ravdess")

__all__ = ["DATASETS", "Dialogue", "Utterance", "load_dataset"]


def load_dataset(name: str, data_dir: str | Path, split: str, seed: int = 0) -> list[Dialogue]:
    if name == "meld":
        from engines.datasets.meld import load_meld

        return load_meld(data_dir, split)
    if name == "ravdess":
        from engines.datasets.ravdess import load_ravdess

        return load_ravdess(data_dir, split)
    if name == "meld-ravdess":
        from engines.datasets.composite import load_meld_ravdess

        return load_meld_ravdess(data_dir, split, seed=seed)
    raise DatasetError(f"unknown dataset {name!r}; known: {DATASETS}")
