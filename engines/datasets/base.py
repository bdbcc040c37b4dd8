"""Dialogue records shared by every dataset loader."""

from __future__ import annotations

from dataclasses import dataclass, field

from engines.interface import EMOTIONS

SENTIMENTS: dict[str, int] = {"negative": -1, "neutral": 0, "positive": 1}


@dataclass(frozen=True)
class Utterance:
    """One turn. ``emotion`` indexes :data:`engines.interface.EMOTIONS`."""

    text: str | None
    speaker: str
    emotion: int
    sentiment: int  # -1, 0 or 1
    audio: str | None = None  # path of a 16 kHz audio file, when the utterance has speech

    def __post_init__(self) -> None:
        assert 0 <= self.emotion < len(EMOTIONS), self.emotion
        assert self.sentiment in (-1, 0, 1), self.sentiment


@dataclass(frozen=True)
class Dialogue:
    id: str
    utterances: list[Utterance] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.utterances)


def emotion_index(name: str) -> int:
    return EMOTIONS.index(name)


def count_utterances(dialogues: list[Dialogue]) -> int:
    return sum(len(d) for d in dialogues)
