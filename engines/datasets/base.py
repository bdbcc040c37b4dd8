"""Dialogue records shared by every dataset loader.

Each dialogue names its label set (``Dialogue.labels``, in logits order); ``Utterance.emotion``
indexes it. MELD-derived datasets use :data:`engines.interface.EMOTIONS`; others their own names
(``engines.datasets.dataset_labels``). A dialogue may carry precomputed per-utterance feature
vectors (``Dialogue.features``: modality -> (len, D) float32), as the field's feature pickles do;
:func:`engines.prepare.prepare` then uses them instead of running the extractors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from engines.interface import EMOTIONS

SENTIMENTS: dict[str, int] = {"negative": -1, "neutral": 0, "positive": 1}


@dataclass(frozen=True)
class Utterance:
    """One turn. ``emotion`` indexes the label set of its dialogue (``Dialogue.labels``)."""

    text: str | None
    speaker: str
    emotion: int
    sentiment: int  # -1, 0 or 1
    audio: str | None = None  # path of a 16 kHz audio file, when the utterance has speech

    def __post_init__(self) -> None:
        assert self.emotion >= 0, self.emotion
        assert self.sentiment in (-1, 0, 1), self.sentiment


@dataclass(frozen=True)
class Dialogue:
    id: str
    utterances: list[Utterance] = field(default_factory=list)
    labels: tuple[str, ...] = EMOTIONS  # the names ``Utterance.emotion`` indexes
    features: Mapping[str, np.ndarray] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        assert all(u.emotion < len(self.labels) for u in self.utterances), (self.id, self.labels)
        for m, arr in (self.features or {}).items():
            assert arr.ndim == 2 and arr.shape[0] == len(self.utterances), (self.id, m, arr.shape)

    def __len__(self) -> int:
        return len(self.utterances)


def emotion_index(name: str, labels: tuple[str, ...] = EMOTIONS) -> int:
    return labels.index(name)


def count_utterances(dialogues: list[Dialogue]) -> int:
    return sum(len(d) for d in dialogues)


def label_set(dialogues: list[Dialogue]) -> tuple[str, ...]:
    """The one label set of ``dialogues`` (EMOTIONS for none); mixed label sets are a bug."""
    sets = {d.labels for d in dialogues}
    assert len(sets) <= 1, f"dialogues mix label sets: {sets}"
    return next(iter(sets)) if sets else EMOTIONS


def as_transcribed(dialogues: list[Dialogue], form: str) -> list[Dialogue]:
    """The dialogues with each transcript in ``form`` ("as-written": unchanged; "asr": as a
    speech-to-text engine without punctuation writes it, :func:`engines.features.text.asr_form`;
    a transcript that leaves nothing keeps its written form, as a line of "..." still says something)."""
    from engines.features.text import TRANSCRIPTS

    if form not in TRANSCRIPTS:
        raise ValueError(f"transcripts {form!r}: one of {', '.join(TRANSCRIPTS)}")
    if form == "as-written":
        return dialogues
    return [replace(d, utterances=[replace(u, text=_asr_text(u.text)) for u in d.utterances]) for d in dialogues]


def as_acknowledged(dialogues: list[Dialogue], mode: str) -> tuple[list[Dialogue], int]:
    """The dialogues as the stream reads them with ``engine.acknowledgements = mode``
    (:mod:`engines.features.acknowledge`; "agents": the speakers its ``AGENT_GLOBS`` match), and
    how many transcripts that changed."""
    from engines.features.acknowledge import acknowledged

    out, changed = [], 0
    for d in dialogues:
        texts = [u.text or "" for u in d.utterances]
        new = acknowledged(texts, mode, [u.speaker for u in d.utterances])
        changed += sum(a != b for a, b in zip(texts, new, strict=True))
        utts = [replace(u, text=t) if u.text else u for u, t in zip(d.utterances, new, strict=True)]
        out.append(replace(d, utterances=utts))
    return out, changed


def _asr_text(text: str | None) -> str | None:
    from engines.features.text import asr_form

    return (asr_form(text) or text) if text else text
