"""The shipped default on agents' empathy statements (engines/features/acknowledge.py): with the
stream's default ``engine.acknowledgements = "agents"`` (these are agents' lines) far fewer of them reach the
``agent-hostile-reply`` rule's bar (anger or disgust at 0.6 or more, after an angry customer),
while the hostile agent lines reach it as often as before. The lines are the two hand-written
fixtures of tests/fixtures (README: 'Agents' empathy statements')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from engines.features.acknowledge import acknowledged  # noqa: E402

pytestmark = pytest.mark.engine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: the customer's turns before each agent line (the rule asks for an upset customer first)
BEFORE = [
    ("agent", "Thank you for calling, how can I help you today?"),
    ("customer", "I was charged twice again this month and nobody fixed it last time."),
    ("agent", "Let me check that for you."),
    ("customer", "This is outrageous! I am furious, you people keep stealing my money!"),
]
REPLY_LABELS, REPLY_MIN = ("anger", "disgust"), 0.6  # streams/escalation.toml's agent-hostile-reply


def read_after_anger(lines: list[str], mode: str) -> tuple[list[str], list[float]]:
    """The default's label and its probability for each of the agent ``lines``, each said after
    :data:`BEFORE`."""
    from engines.registry import load_engine, load_extractors
    from engines.windows import UtteranceFeatures, pack_windows

    engine, ex = load_engine("default"), load_extractors("default")
    assert ex.text is not None
    context = ex.text.encode(acknowledged([t for _, t in BEFORE], mode, [s for s, _ in BEFORE]))
    said = ex.text.encode(acknowledged(lines, mode, ["agent"] * len(lines)))
    before = [UtteranceFeatures(s, {"text": v}) for (s, _), v in zip(BEFORE, context, strict=True)]
    windows = [[*before, UtteranceFeatures("agent", {"text": v})] for v in said]
    probs = engine.predict(pack_windows(windows, engine.info.features)).probs
    best = probs.argmax(1)
    return [engine.info.labels[b] for b in best], [float(p[b]) for b, p in zip(best, probs, strict=True)]


def reply_rule_hits(lines: list[str], mode: str) -> int:
    """How many of the agent ``lines``, each said after :data:`BEFORE`, the default labels anger or
    disgust with a probability of at least 0.6 (the shipped ``reply`` rule's bar)."""
    labels, confidence = read_after_anger(lines, mode)
    return sum(label in REPLY_LABELS and p >= REPLY_MIN for label, p in zip(labels, confidence, strict=True))


def kind(path: Path, name: str) -> list[str]:
    return [r["text"] for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == name]


@pytest.mark.parametrize(
    ("fixture", "most"),
    [
        # 14 -> 4 of 60 (the dev set: the patterns were extended on it); 5 since apologies are
        # acknowledgements ("I'm so sorry, it must be really frightening ...": sadness 0.87, now anger 0.70)
        ("call-center-lines.jsonl", 0.4),
        # 15 -> 6 of 60 written after the patterns were fixed (5 since; 7 with the apologies: "oh no thats
        # so annoying im sorry", "I'm really sorry you've been left feeling so angry ...")
        ("call-center-lines-heldout.jsonl", 0.5),
    ],
)
def test_far_fewer_empathy_statements_reach_the_reply_rule(fixture: str, most: float) -> None:
    empathy = kind(FIXTURES / fixture, "empathy")
    before, after = reply_rule_hits(empathy, "off"), reply_rule_hits(empathy, "agents")
    assert before >= 5, before  # the rule's false alarm, without the rewrite
    assert after <= most * before, (before, after)


@pytest.mark.parametrize("fixture", ["call-center-lines.jsonl", "call-center-lines-heldout.jsonl"])
def test_hostile_agents_reach_it_as_often_as_before(fixture: str) -> None:
    hostile = kind(FIXTURES / fixture, "hostile")
    before, after = reply_rule_hits(hostile, "off"), reply_rule_hits(hostile, "agents")
    assert before >= 5 and after >= 0.8 * before, (before, after)  # 11 -> 11 of 30 (dev), 14 -> 12 (held out)


@pytest.mark.parametrize("fixture", ["call-center-lines.jsonl", "call-center-lines-heldout.jsonl"])
def test_a_call_reports_hostile_share_tells_empathy_from_snapping_where_its_negative_share_does_not(
    fixture: str,
) -> None:
    """An agent's sympathy reads as sadness: the call report's ``negative_share`` counts it and its
    ``hostile_share`` does not (streams/analytics.py). Measured on 1.6.0: empathy 33 and 43 of 60
    lines negative, hostile replies 16 and 20 of 30; hostile at 0.5 or more 5 and 7 of 60 against 13
    and 14 of 30."""
    from streams.analytics import HOSTILE_EMOTIONS, HOSTILE_MIN_CONFIDENCE, NEGATIVE_EMOTIONS

    def shares(name: str) -> tuple[float, float]:
        labels, confidence = read_after_anger(kind(FIXTURES / fixture, name), "agents")
        negative = sum(label in NEGATIVE_EMOTIONS for label in labels) / len(labels)
        said = zip(labels, confidence, strict=True)
        return negative, sum(x in HOSTILE_EMOTIONS and p >= HOSTILE_MIN_CONFIDENCE for x, p in said) / len(labels)

    (empathy_negative, empathy_hostile), (snapping_negative, snapping_hostile) = shares("empathy"), shares("hostile")
    assert empathy_negative >= snapping_negative - 0.1, (empathy_negative, snapping_negative)  # the problem
    assert empathy_hostile <= 0.4 * snapping_hostile, (empathy_hostile, snapping_hostile)  # what hostile_share adds


#: agents' apologies, hostile agent lines and other agent lines with "sorry" (README: 'Agents'
#: apologies'): the patterns were extended on the first; the second was written at the same time and
#: read after they were fixed; the third was written after
APOLOGIES = ["call-center-apologies.jsonl", "call-center-apologies-heldout.jsonl", "call-center-apologies-blind.jsonl"]


@pytest.mark.parametrize("fixture", APOLOGIES)
def test_agents_apologies_are_no_longer_read_as_sadness(fixture: str) -> None:
    apologies = kind(FIXTURES / fixture, "apology")
    before, after = (sum(x == "sadness" for x in read_after_anger(apologies, m)[0]) for m in ("off", "agents"))
    assert before >= 25 and after <= 0.15 * before, (before, after)  # 36 -> 0, 36 -> 2, 34 -> 3 of 60


@pytest.mark.parametrize("fixture", APOLOGIES)
def test_apologies_seldom_reach_the_reply_rule_and_hostile_lines_with_sorry_reach_it_as_often(fixture: str) -> None:
    """The cost: with its "sorry" read as an acknowledgement, a refusal ("im sorry but i cant override
    that policy") may read as anger (0 of 60 before; 1, 2 and 0 of 60 after); the hostile lines that
    say sorry reach the rule more often (1 -> 3, 1 -> 3, 2 -> 3 of 20: "sorry" had read them as sadness)."""
    apologies, hostile = kind(FIXTURES / fixture, "apology"), kind(FIXTURES / fixture, "hostile")
    assert reply_rule_hits(apologies, "agents") <= 2
    assert reply_rule_hits(hostile, "agents") >= max(1, reply_rule_hits(hostile, "off"))


@pytest.mark.parametrize("fixture", APOLOGIES)
def test_agent_lines_that_make_no_apology_read_no_more_negative(fixture: str) -> None:
    other = kind(FIXTURES / fixture, "other")
    negative = {"anger", "disgust", "fear", "sadness"}
    before, after = (sum(x in negative for x in read_after_anger(other, m)[0]) for m in ("off", "agents"))
    assert after <= before, (before, after)  # 5 -> 5, 10 -> 10, 10 -> 10 of 20
