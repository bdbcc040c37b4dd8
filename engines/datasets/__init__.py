"""Dataset loaders returning dialogues (:class:`engines.datasets.base.Dialogue`).

``load_dataset(name, data_dir, split, seed)`` with ``name`` one of :data:`DATASETS`:

- ``meld`` (text), ``ravdess`` (audio, one clip per dialogue), ``meld-ravdess`` (composite: MELD
  text with a same-emotion RAVDESS clip per utterance): MELD's seven labels;
- ``iemocap-text`` (IEMOCAP transcripts, 6 labels) and ``emorynlp`` (EmoryNLP, 7 labels), with
  their own label names and a sentiment derived from the emotion (see their modules);
- ``iemocap-pickle`` and ``meld-pickle``: the field's feature pickles, whose vectors are the
  features (``engines.datasets.pickles``).

``dataset_labels(name)`` gives a dataset's label names in logits order: training sizes its
classifier and ``labels.json`` by it, evaluation checks an artifact's labels against it.
A split whose files are absent raises :class:`engines.errors.DatasetError`.
"""

from __future__ import annotations

from pathlib import Path

from engines.datasets.base import Dialogue, Utterance, label_set
from engines.errors import DatasetError
from engines.interface import EMOTIONS

DATASETS: tuple[str, ...] = (
    "meld", "ravdess", "meld-ravdess", "iemocap-text", "emorynlp", "iemocap-pickle", "meld-pickle",
)  # fmt: skip

__all__ = ["DATASETS", "Dialogue", "Utterance", "dataset_labels", "label_set", "load_dataset"]


def dataset_labels(name: str) -> tuple[str, ...]:
    """Label names of dataset ``name`` in logits order (``Utterance.emotion`` indexes them)."""
    if name in ("meld", "ravdess", "meld-ravdess", "meld-pickle"):
        return EMOTIONS
    if name in ("iemocap-text", "iemocap-pickle"):
        from engines.datasets.iemocap import LABELS

        return LABELS
    if name == "emorynlp":
        from engines.datasets.emorynlp import LABELS as EMORY

        return EMORY
    raise DatasetError(f"unknown dataset {name!r}; known: {DATASETS}")


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
    if name == "iemocap-text":
        from engines.datasets.iemocap import load_iemocap_text

        return load_iemocap_text(data_dir, split)
    if name == "emorynlp":
        from engines.datasets.emorynlp import load_emorynlp

        return load_emorynlp(data_dir, split)
    if name in ("iemocap-pickle", "meld-pickle"):
        from engines.datasets.pickles import load_feature_pickle

        return load_feature_pickle(name, data_dir, split)
    raise DatasetError(f"unknown dataset {name!r}; known: {DATASETS}")
