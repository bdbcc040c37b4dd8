"""What the supervisor page shows, built from the output topics: every call seen lately with its
speakers' emotion timelines, its open alerts, and (for the drill-down) its utterances. No Kafka
here: :meth:`Board.add` takes one record; the server feeds it from a consumer thread.

Records are validated (an invalid one is counted and skipped) and deduplicated by ``event_id``;
an utterance keeps its latest revision. A call id used again for a new call (after a ``started``)
shows the new call only: its records name a higher generation (:func:`generation_of`), and the
previous call's, read late, are left out; an ended call the board let go does not come back when
its records are read again (a board that replays the topics at its start), but a record of its id
produced more than ``keep_silent_s`` after its end (the workers' ``redis.ttl_s``: they have forgotten
the old call by then) is a new call (an id used again without a ``started``) and is shown; one
produced within it is the old call's, reopened by a part read late. An utterance first
labelled after the call's final summary (a part sent after its ``ended`` reopened it) is counted
apart, by production times, in whatever order the topics are read.

The board is bounded: at most ``max_calls`` calls and ``max_held`` utterances in all (the least
recently updated ended call goes first, then the least recently updated one without an open alert,
then any: about 5.3 KB an utterance, so some 320 MB at the default 60,000, about 400 MB resident
in all), at most ``max_utterances`` utterances per call, and an ended call is dropped
``keep_ended_s`` after its end.
A call that never sent its end is dropped once none of its utterances was labelled for
``keep_silent_s`` (by the events' own times, so a board that replays the topics at its start drops
it too): the worker's context store has forgotten it by then (``redis.ttl_s``), so its open alerts
can no longer clear. Each summary says when its call was last heard of (``heard_at``), and the page
shows a call quiet for a while as such rather than as live.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from streams.analytics import says_something
from streams.schemas import AlertEvent, CallReport, EmotionEvent, read_published

SEVERITY = {"critical": 0, "warning": 1, "info": 2}
TIMELINE = 40  # utterances per speaker timeline in the list


@dataclass
class CallView:
    call_id: str
    updated_at: float
    ended_at: float | None = None
    heard_at: float = 0.0  # the latest production time of its emotion events (the worker's clock)
    report: CallReport | None = None
    #: utterance id -> when its first event was produced: one produced after the call's final summary
    #: (a part sent after its 'ended' reopened it, README: Calls that end) is no turn of the summary
    first_at: dict[str, float] = field(default_factory=dict)
    generation: int = -1  # the call instance's (see generation_of): a call id used again has a higher one
    alerts: dict[str, AlertEvent] = field(default_factory=dict)  # open, by alert id
    history: list[AlertEvent] = field(default_factory=list)  # the latest alert changes
    utterances: OrderedDict[str, EmotionEvent] = field(default_factory=OrderedDict)


class Board:
    def __init__(
        self,
        max_calls: int = 2000,
        max_utterances: int = 300,
        max_held: int = 60_000,
        keep_ended_s: float = 600.0,
        keep_silent_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_calls = max_calls
        self.max_utterances = max_utterances
        self.max_held = max_held
        self.held = 0  # utterances on the board, all calls
        self.keep_ended_s = keep_ended_s
        self.keep_silent_s = keep_silent_s
        self.clock = clock
        self.lock = threading.Lock()
        self.calls: OrderedDict[str, CallView] = OrderedDict()  # least recently updated first
        self.version = 0
        self.changed: dict[str, int] = {}  # call on the board -> version of its last change
        self.removals: OrderedDict[str, int] = OrderedDict()  # call removed -> version of its removal
        self.floor = 0  # removals up to this version are forgotten: a client older than it reloads
        self.invalid = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: ended calls let go -> their generation and end: records of it read later do not bring it back (bounded)
        self._gone: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._since: tuple[int, int, dict[str, Any]] | None = None  # the last since(): clients in step share it

    # -- input ---------------------------------------------------------------------------------

    def add(self, kind: str, value: bytes | None) -> bool:
        """One record of the emotions ('emotion'), alerts ('alert') or calls ('report') topic; True
        if the board changed."""
        models: dict[str, type[EmotionEvent | AlertEvent | CallReport]] = {
            "emotion": EmotionEvent, "alert": AlertEvent, "report": CallReport,
        }  # fmt: skip
        model = models[kind]
        try:
            msg: Any = read_published(model, value or b"")
        except ValidationError:
            self.invalid += 1
            return False
        with self.lock:
            if msg.event_id in self._seen:
                return False
            self._seen[msg.event_id] = None
            while len(self._seen) > 50 * self.max_calls:
                self._seen.popitem(last=False)
            now = self.clock()
            generation = generation_of(msg.call_id, msg.event_id)
            call = self.calls.get(msg.call_id)
            gone = self._gone.get(msg.call_id)
            if (
                call is None
                and gone is not None
                and (
                    generation < gone[0] or (generation == gone[0] and msg.produced_at <= gone[1] + self.keep_silent_s)
                )
            ):
                return False  # of a call this board let go after its end (read again at a replay, or just after it)
            if call is not None and generation < call.generation:
                return False  # of the previous call under this id, read late (the topics interleave at a replay)
            if isinstance(msg, CallReport) and call is not None and call.report is not None:
                if generation == call.generation and msg.produced_at < call.report.produced_at:
                    return False  # an older report of the call, read late
            if call is None or generation > call.generation:  # new, or its id used again: a view afresh
                if call is not None:
                    self.held -= len(call.utterances)
                call = self.calls[msg.call_id] = CallView(msg.call_id, now, heard_at=msg.produced_at)
                call.generation = generation
                self._gone.pop(msg.call_id, None)
            call.updated_at = now
            self.calls.move_to_end(msg.call_id)
            if isinstance(msg, EmotionEvent):
                call.heard_at = max(call.heard_at, msg.produced_at)
                old = call.utterances.get(msg.utterance_id)
                if old is None:
                    call.first_at[msg.utterance_id] = msg.produced_at
                    self.held += 1
                if old is None or old.revision <= msg.revision:
                    if old is not None and msg.revision > old.revision and old.ignored and not msg.ignored:
                        # a revision does not repeat what its provisional event did not use
                        msg = msg.model_copy(update={"ignored": old.ignored})
                    call.utterances[msg.utterance_id] = msg
                while len(call.utterances) > self.max_utterances:
                    call.first_at.pop(call.utterances.popitem(last=False)[0], None)
                    self.held -= 1
            elif isinstance(msg, AlertEvent):
                if msg.state == "cleared":
                    call.alerts.pop(msg.alert_id, None)
                else:
                    call.alerts[msg.alert_id] = msg
                call.history = [*call.history, msg][-20:]
            else:
                call.report = msg
                if msg.final:
                    call.ended_at = msg.produced_at  # its end, not when this board read it (a replay)
            self._touch(msg.call_id)
            if len(self.calls) > self.max_calls or self.held > self.max_held:
                self._trim(now)
            return True

    def _touch(self, call_id: str) -> None:
        self.version += 1
        self.changed[call_id] = self.version
        self.removals.pop(call_id, None)

    def _trim(self, now: float) -> None:
        gone = [
            c
            for c, v in self.calls.items()
            if (
                now - v.ended_at > self.keep_ended_s
                if v.ended_at is not None
                else now - v.heard_at > self.keep_silent_s
            )
        ]
        held = self.held - sum(len(self.calls[c].utterances) for c in gone)
        while len(self.calls) - len(gone) > self.max_calls or (
            held > self.max_held and len(gone) < len(self.calls) - 1
        ):
            ended = next((c for c, v in self.calls.items() if v.ended_at is not None and c not in gone), None)
            calm = next((c for c, v in self.calls.items() if not v.alerts and c not in gone), None)  # (live)
            gone.append(ended or calm or next(c for c in self.calls if c not in gone))
            held -= len(self.calls[gone[-1]].utterances)
        for c in gone:
            view = self.calls.pop(c)
            self.held -= len(view.utterances)
            if view.ended_at is not None:  # what it publishes later (a late part reopened it) stays off the page
                self._gone[c] = (view.generation, view.ended_at)
                while len(self._gone) > 4 * self.max_calls:
                    self._gone.popitem(last=False)
            self.version += 1
            self.changed.pop(c, None)
            self.removals[c] = self.version
        while len(self.removals) > 4 * self.max_calls:
            _, self.floor = self.removals.popitem(last=False)

    # -- output --------------------------------------------------------------------------------

    def expire(self) -> None:
        """Drop ended calls past ``keep_ended_s`` and silent ones past ``keep_silent_s`` (the server
        calls it a few times a second)."""
        with self.lock:
            self._trim(self.clock())

    def snapshot(self) -> dict[str, Any]:
        """Every call's summary, in the page's order, with the board's version."""
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        calls = [self._summary(c) for c in self.calls.values()]
        return {
            "version": self.version, "now": self.clock(), "calls": sorted(calls, key=_order), "removed": [],
            "reset": True,
        }  # fmt: skip

    def since(self, version: int) -> dict[str, Any]:
        """The summaries of the calls changed after ``version``, and the ids of those removed; the
        whole board (``reset``) for a client so far behind that removals it missed are forgotten."""
        with self.lock:
            if version < self.floor:
                return self._snapshot()
            if self._since is not None and self._since[:2] == (version, self.version):
                return self._since[2]  # another page's client asked the same a moment ago
            calls = [self._summary(self.calls[c]) for c, v in self.changed.items() if v > version]
            removed = [c for c, v in self.removals.items() if v > version]
            change = {"version": self.version, "now": self.clock(), "calls": calls, "removed": removed, "reset": False}
            self._since = (version, self.version, change)
            return change

    def detail(self, call_id: str) -> dict[str, Any] | None:
        with self.lock:
            call = self.calls.get(call_id)
            if call is None:
                return None
            out = self._summary(call)
            out["utterances"] = [
                {
                    "utterance_id": e.utterance_id, "seq": e.seq, "speaker": e.speaker, "label": e.label,
                    "read": says_something(e),  # False: every part ignored, the label is the model's prior
                    "confidence": round(e.confidence, 3), "sentiment": round(e.sentiment, 3), "revision": e.revision,
                    "weights": {m: round(w, 3) for m, w in e.weights.items() if m in e.modalities_present},
                    "ignored": dict(e.ignored),
                    "suspect": dict(e.suspect or {}),
                }
                for e in sorted(call.utterances.values(), key=lambda e: e.seq)
            ]  # fmt: skip
            out["history"] = [_alert(a) for a in call.history]
            return out

    def _summary(self, call: CallView) -> dict[str, Any]:
        utts = sorted(call.utterances.values(), key=lambda e: e.seq)
        final = call.report.produced_at if call.report is not None and call.report.final else None
        after_end = [e for e in utts if final is not None and call.first_at[e.utterance_id] > final]
        counted = [e for e in utts if final is None or call.first_at[e.utterance_id] <= final]
        speakers: dict[str, dict[str, Any]] = {}
        for e in utts:
            s = speakers.setdefault(e.speaker, {"speaker": e.speaker, "role": None, "timeline": []})
            s["timeline"].append(
                {"seq": e.seq, "label": e.label, "sentiment": round(e.sentiment, 2), "read": says_something(e)}
            )
        for t in call.report.speakers if call.report else []:
            s = speakers.setdefault(t.speaker, {"speaker": t.speaker, "timeline": []})
            s.update(role=t.role, sentiment=t.sentiment, trend=t.sentiment_trend, negative_share=t.negative_share,
                     hostile_share=t.hostile_share, talk_share=t.talk_share)  # fmt: skip
        for s in speakers.values():
            s["timeline"] = s["timeline"][-TIMELINE:]
        alerts = sorted(call.alerts.values(), key=lambda a: (SEVERITY[a.severity], a.produced_at))
        return {
            "call_id": call.call_id,
            "ended": call.ended_at is not None,
            # what ended it (its 'ended', a 'started' of its id, or no part for join.idle_end_s)
            "ended_by": call.report.ended_by if call.report is not None and call.report.final else None,
            "updated_at": call.updated_at,
            "heard_at": call.heard_at,
            "turns": sum(says_something(e) for e in counted),  # as the call's report counts them: an utterance read
            "unread": sum(not says_something(e) for e in counted),  # every part ignored (another language, ...)
            "after_end": len(after_end),
            "speakers": sorted(speakers.values(), key=lambda s: (s.get("role") != "customer", s["speaker"])),
            "alerts": [_alert(a) for a in alerts],
            "raised": list(call.report.alerts_raised) if call.report else [],
        }


def generation_of(call_id: str, event_id: str) -> int:
    """The generation of the call instance a record's ``event_id`` names (-1 for a call id's first
    call): events, alerts and reports name theirs first, ``<call>`` or ``<call>~g<offset of its
    'started'>`` (:func:`streams.schemas.call_instance`), and a call id used again has a higher one."""
    rest = event_id[len(call_id) :] if event_id.startswith(call_id) else ""
    if not rest.startswith("~g"):
        return -1
    digits = rest[2:].split(":", 1)[0]
    return int(digits) if digits.isdigit() else -1


def _alert(a: AlertEvent) -> dict[str, Any]:
    return {
        "alert_id": a.alert_id, "rule": a.rule, "severity": a.severity, "message": a.message, "state": a.state,
        "reason": a.reason, "at": a.produced_at,
        "evidence": [{"seq": e.seq, "speaker": e.speaker, "label": e.label} for e in a.evidence],
        "measured": a.measured,
    }  # fmt: skip


def _order(summary: dict[str, Any]) -> tuple[Any, ...]:
    """Open alerts first (most severe first), then calls going on, then ended; recent first."""
    worst = min((SEVERITY[a["severity"]] for a in summary["alerts"]), default=len(SEVERITY))
    return (summary["ended"], worst, -summary["updated_at"])
