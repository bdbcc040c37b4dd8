"""What came out of a scenario, judged: pure functions over the events read back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from streams.schemas import EmotionEvent


def content(e: EmotionEvent) -> tuple[object, ...]:
    """What must not differ between two events with one ``event_id`` (timings may)."""
    return (e.label, tuple(e.modalities_present), e.context_size, e.seq, e.context_reset)


def conflicts(events: Iterable[EmotionEvent], tolerance: float = 1e-3) -> list[str]:
    """``event_id``s that carry two different contents. A replay of the same input may differ in
    the last digits of its probabilities (a batch of another size): ``tolerance`` allows that."""
    first: dict[str, EmotionEvent] = {}
    found: dict[str, str] = {}  # one entry per event_id, however many copies differ
    for e in events:
        seen = first.setdefault(e.event_id, e)
        if e.event_id not in found and (
            content(seen) != content(e)
            or any(abs(seen.probabilities.get(k, -1.0) - p) > tolerance for k, p in e.probabilities.items())
        ):
            found[e.event_id] = f"{e.event_id}: {content(seen)} vs {content(e)}"
    return list(found.values())


@dataclass
class Verdict:
    scenario: str
    utterances: int
    events: int
    lost: int
    conflicting: int
    duplicates: int
    recovery_s: float | None
    note: str = ""
    examples: list[str] = field(default_factory=list)  # a few conflicting event ids, for the log
    failures: list[str] = field(default_factory=list)  # a scenario's own checks that failed (memory, ...)
    details: str = ""  # what explains a failure, printed below the table

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.conflicting == 0 and not self.failures

    def row(self) -> str:
        rec = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        return (
            f"| {self.scenario} | {self.utterances} | {self.events} | {self.lost} | {self.conflicting} | "
            f"{self.duplicates} | {rec} | {'; '.join([self.note, *('FAILED: ' + f for f in self.failures)])} |"
        )


HEADER = (
    "| scenario | utterances in | events out | lost | conflicting | duplicates | recovery (s) | note |\n"
    "|---|---|---|---|---|---|---|---|"
)


def judge(
    scenario: str,
    want: set[tuple[str, str]],
    events: list[EmotionEvent],
    recovery_s: float | None,
    note: str = "",
) -> Verdict:
    """Provisional events (revision 0) of the utterances sent: lost, conflicting, duplicates
    (events of other calls, such as fuzzed ones, are not counted)."""
    provisional = [e for e in events if e.revision == 0 and (e.call_id, e.utterance_id) in want]
    got = {(e.call_id, e.utterance_id) for e in provisional}
    found = conflicts(provisional)
    return Verdict(
        scenario=scenario,
        utterances=len(want),
        events=len(provisional),
        lost=len(want - got),
        conflicting=len(found),
        duplicates=len(provisional) - len(got),
        recovery_s=recovery_s,
        note=note,
        examples=found[:3],
    )


def table(verdicts: Iterable[Verdict]) -> str:
    return "\n".join([HEADER, *(v.row() for v in verdicts)])
