"""engines/features/acknowledge.py: a feeling named as the listener's is made neutral, the
speaker's own is left as written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.features.acknowledge import acknowledged, acknowledged_form

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: written by a helper without sight of the code, then used to extend its patterns (the dev set)
DEV_LINES = FIXTURES / "call-center-lines.jsonl"
#: written by another helper without sight of the code or of the dev set, after the patterns were fixed
HELD_OUT_LINES = FIXTURES / "call-center-lines-heldout.jsonl"


def lines(path: Path, kind: str) -> list[str]:
    return [r["text"] for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.parametrize(
    ("text", "read_as"),
    [
        ("I understand your frustration.", "I understand your feelings."),
        ("I completely understand why you're upset.", "I completely understand why you're feeling this way."),
        ("I know you're angry, and rightly.", "I know you're feeling this way, and rightly."),
        ("You sound really fed up.", "You sound like you feel this way."),
        ("I know you must feel frustrated.", "I know you must feel this way."),
        ("i understand youre angry", "i understand youre feeling this way"),
        ("I'd be angry too.", "I'd feel the same too."),
        ("That would make anyone feel frustrated.", "That would make anyone feel the same."),
        ("I would be just as irritated as you are.", "I would feel the same."),
        ("That must be so annoying.", "That must be difficult."),
        ("I understand how frustrating this is.", "I understand how difficult this is."),
        ("I can hear how worried you are.", "I can hear how you feel."),
        ("It has been a very irritating experience for you.", "It has been a difficult experience for you."),
    ],
)  # fmt: skip
def test_a_feeling_named_as_the_listeners_is_made_neutral(text: str, read_as: str) -> None:
    assert acknowledged_form(text) == read_as


@pytest.mark.parametrize(
    "text",
    [
        "You're making me angry!",  # the speaker's own feeling
        "This is so frustrating!",
        "I'm so upset.",
        "You're annoying.",  # the listener's conduct, the speaker's complaint
        "Your company frustrates me.",
        "Are you mad at me?",  # a question, often asked in anger (MELD: anger, fear)
        "I would be happy to help.",  # not a negative feeling
        "Thank you for calling, how can I help you today?",
        "Estoy muy enfadado contigo.",  # another language matches nothing
        "",
    ],
)
def test_the_speakers_own_feeling_and_other_lines_are_left_as_written(text: str) -> None:
    assert acknowledged_form(text) == text


def test_modes() -> None:
    texts = ["I understand your frustration.", "No."]
    assert acknowledged(texts, "off") == texts
    assert acknowledged(texts) == ["I understand your feelings.", "No."]
    with pytest.raises(ValueError, match="acknowledgements 'loud': one of neutral, off"):
        acknowledged(texts, "loud")


@pytest.mark.parametrize("path", [DEV_LINES, HELD_OUT_LINES], ids=["dev", "held-out"])
def test_no_customers_own_feeling_and_no_plain_agent_line_is_rewritten(path: Path) -> None:
    for kind in ("customer-own", "polite"):
        changed = [t for t in lines(path, kind) if acknowledged_form(t) != t]
        assert changed == [], (kind, changed)


def test_most_empathy_statements_of_the_dev_lines_are_found() -> None:
    empathy = lines(DEV_LINES, "empathy")
    found = sum(acknowledged_form(t) != t for t in empathy)
    assert found >= 0.6 * len(empathy), found  # 39 of 60 when the patterns were fixed


def test_the_featurizer_encodes_what_the_setting_says() -> None:
    from streams.runtime import ModelFeaturizer

    class Text:
        seen: list[str] = []

        def encode(self, texts: list[str]) -> Any:
            Text.seen = list(texts)
            return np.zeros((len(texts), 4), np.float32)

    class Extractors:
        text = Text()

    ModelFeaturizer(Extractors()).text(["I understand your frustration."])
    assert Text.seen == ["I understand your feelings."]
    ModelFeaturizer(Extractors(), acknowledgements="off").text(["I understand your frustration."])
    assert Text.seen == ["I understand your frustration."]


def test_evaluate_reads_a_dataset_as_the_stream_does() -> None:
    from engines.datasets.base import Dialogue, Utterance, as_acknowledged

    d = Dialogue(
        "d", [Utterance("I know you're upset.", "A", 0, 0), Utterance(None, "B", 0, 0), Utterance("Hi.", "A", 0, 0)]
    )
    out, changed = as_acknowledged([d], "neutral")
    assert changed == 1 and [u.text for u in out[0].utterances] == ["I know you're feeling this way.", None, "Hi."]
    assert as_acknowledged([d], "off") == ([d], 0)
