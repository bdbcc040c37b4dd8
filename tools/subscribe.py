"""Watch the emotion events (and optionally dead letters) as they come out of the service.

:func:`subscribe` reads ``settings.kafka.topics.emotions`` with a group-less consumer (it never
joins or commits for the workers' group), validates every record as an
:class:`~streams.schemas.EmotionEvent`, drops duplicates (same ``event_id``) and prints one line
per event::

    [call-7 #3 Ann] neutral 0.55  sent +0.10  text .71  audio .29  (t+a, ctx 4, 120 ms)
    ↻ r1 [call-7 #3 Ann] joy 0.81 (was neutral 0.55)  sent +0.62 (was +0.10)  text .71  audio .29  (t+a, ctx 4+2, 95 ms)
    ↻ r1 [call-7 #4 Bob] neutral 0.70 (kept, was 0.64)  sent +0.05  text .80  audio .20  (t+a, ctx 5+2, 90 ms)

The first line of an utterance is its provisional event (revision 0, past context only). A
revision (``revision > 0``, made once future context arrived: ``ctx 4+2`` is the utterance and 3
before it, plus 2 after it) starts with ``↻ r<n>`` and says what it changed since the line it revises: the
old label (``was neutral``) or ``kept``, and the old sentiment when it moved. ``fmt='json'``
prints one JSON object per line instead. With ``alerts``, the alerts topic's changes and each
call's final report are printed too::

    ⚠ raised critical [call-7] customer-anger-rising: The customer's anger is rising  (#2 customer anger -0.50, ...)
    ✓ cleared [call-7] customer-anger-rising (call ended)
    ■ call ended [call-7] 9 turns: agent (agent) 4 turns, recent: sent +0.02 (trend +0.00), negative 0%
      (hostile 0%); ...; alerts: ...
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from client.subscriber import Kind, Received, TopicReader, Tracker, make_consumer
from engines.features.language import OTHER_LANGUAGE
from streams.analytics import says_something
from streams.schemas import AlertEvent, CallReport, DeadLetter, EmotionEvent
from streams.settings import Settings

Format = Literal["pretty", "json"]
_SHORT = {"text": "t", "audio": "a", "video": "v"}


def _frac(x: float) -> str:
    """0.71 -> '.71', 1.0 -> '1.00'."""
    text = f"{x:.2f}"
    return text[1:] if text.startswith("0.") else text


def format_event(event: EmotionEvent, previous: EmotionEvent | None = None) -> str:
    """One readable line for ``event``; ``previous`` is the line it revises, if it was seen."""
    head = f"[{event.call_id} #{event.seq} {event.speaker}]"
    label = f"{event.label} {event.confidence:.2f}"
    sentiment = f"sent {event.sentiment:+.2f}"
    if event.revision > 0:
        head = f"↻ r{event.revision} {head}"
        if previous is not None and previous.label != event.label:
            label += f" (was {previous.label} {previous.confidence:.2f})"
        elif previous is not None:
            label += f" (kept, was {previous.confidence:.2f})"
        if previous is not None and f"{previous.sentiment:+.2f}" != f"{event.sentiment:+.2f}":  # as printed
            sentiment += f" (was {previous.sentiment:+.2f})"
    present = set(event.modalities_present)
    weights = "  ".join(
        f"{m} {_frac(w)}" for m, w in sorted(event.weights.items(), key=lambda kv: _order(kv[0]))
        if m in present or w > 0
    )  # fmt: skip
    modalities = "+".join(_SHORT.get(m, m) for m in sorted(present, key=_order)) or "-"
    past = event.context_size - event.future_context  # the utterance and those before it
    revised = event.revision > 0 or event.future_context > 0  # a revision says its future, even none (call ended)
    context = f"ctx {past}+{event.future_context}" if revised else f"ctx {event.context_size}"
    if event.context_reset:
        context += " after a context reset"
    for m, why in sorted(event.ignored.items()):  # the kind of reason; a dead-lettered part's reason too
        short = why.split(" (")[0] if why.startswith("dead-lettered: ") else why.split(":")[0]
        if "dBFS, not silence" in why:  # (streams.pipeline: no voice heard in a loud clip)
            short += " in a loud clip (music, noise, or a wrong sample_rate?)"
        context += f", {m} not used: {short}"
    for m, why in sorted((event.suspect or {}).items()):  # (a part the label did not lean on was hardly used)
        used = "used but suspect" if event.weights.get(m, 0.0) >= 0.005 else "suspect, weighed .00"
        context += f", {m} {used}: {why.split(':')[0]}"
    latency = f"{event.timings.end_to_end_s * 1000:.0f} ms"
    if not says_something(event):  # every part ignored: the label is the model's prior, no reading of the speaker
        label, sentiment = "- nothing read", ""
    parts = [f"{head} {label}", sentiment, weights, f"({modalities}, {context}, {latency})"]
    return "  ".join(p for p in parts if p)


def _order(modality: str) -> int:
    return list(_SHORT).index(modality) if modality in _SHORT else len(_SHORT)


def format_alert(alert: AlertEvent) -> str:
    """One readable line for an alert change."""
    head = f"[{alert.call_id}] {alert.rule}"
    if alert.state == "cleared":
        return f"✓ cleared {head} ({alert.reason})"
    turns = ", ".join(f"#{e.seq} {e.speaker} {e.label} {e.sentiment:+.2f}" for e in alert.evidence)
    measured = f"; {alert.measured}" if alert.measured else ""  # what the rule read on them
    return f"⚠ {alert.state} {alert.severity} {head}: {alert.message}  ({turns}{measured})"


def unread_kind(event: EmotionEvent) -> str:
    """Why nothing of an utterance was read, in a few words: "other language (Spanish)", "no words",
    "no words, no speech", "dead-lettered"."""
    kinds = set()
    for why in event.ignored.values():
        if why.startswith(OTHER_LANGUAGE):
            found = re.search(r"read as ([^(,:]+?) \(|written in (.+?) script", why)
            kinds.add(f"other language ({(found.group(1) or found.group(2) + ' script') if found else '?'})")
        elif why.startswith("dead-lettered: "):
            kinds.add("dead-lettered")
        else:
            kinds.add(why.split(":")[0])
    return ", ".join(sorted(kinds)) or "every part ignored"


def format_report(report: CallReport, unread: Mapping[str, int] | None = None) -> str:
    """One readable line for a call's final report (its summary); ``unread``: why its utterances
    with nothing read were not read (:func:`unread_kind` -> how many), where their events were seen.
    A speaker's figures are of their recent turns (``analytics.recent_turns``), and say so: beside
    the whole call's turn count a supervisor read them as the call's (a supervisor's trial)."""
    who = "; ".join(
        f"{s.speaker} ({s.role}) {s.turns} turn{'' if s.turns == 1 else 's'}, recent: sent {s.sentiment:+.2f} "
        f"(trend {s.sentiment_trend:+.2f}), negative {s.negative_share:.0%} (hostile {s.hostile_share:.0%})"
        for s in report.speakers
    )
    alerts = ", ".join(report.alerts_raised) or "none"
    turns = f"{report.turns} turn{'' if report.turns == 1 else 's'}"
    if report.unread:  # utterances with every part ignored: no turn, no speaker of the summary
        why = ", ".join(f"{k} {n}" for k, n in sorted((unread or {}).items(), key=lambda kv: (-kv[1], kv[0])))
        turns += f" ({report.unread} more not read: {why or 'every part ignored'})"
    how = {"idle": " (quiet, no 'ended')", "started": " (started again, no 'ended')"}.get(report.ended_by or "", "")
    return f"■ call ended{how} [{report.call_id}] {turns}: {who or 'nobody read'}; alerts: {alerts}"


def format_deadletter(letter: DeadLetter) -> str:
    """One readable line for a dead letter (its key and detail quote what a producer sent: shortened)."""
    where = f"{letter.source_topic}[{letter.partition}]@{letter.offset}"
    who = _short(letter.key or "-", 80)
    if letter.call_id is not None:  # it parsed: whose part (or control message) it was
        who = " ".join(_short(x, 80) for x in (letter.call_id, letter.utterance_id) if x is not None)
    return f"✗ dead letter [{who}] {letter.reason}: {_short(letter.detail, 500)}  ({where})"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


_UNPRINTABLE = {c: f"\\x{c:02x}" for c in [*range(32), *range(127, 160)]}
_UNPRINTABLE_JSON = {c: f"\\u{c:04x}" for c in range(127, 160)}


def printable(line: str) -> str:
    """``line`` with control characters escaped (\\x1b for ESC, \\x0a for a newline): a record's
    text must not move the cursor, clear the screen or start a line of its own on a terminal."""
    return line.translate(_UNPRINTABLE)


#: how long ``subscribe`` holds an alert back for the events it cites (seconds)
HOLD_S = 2.0
#: with ``from_beginning``, at most this many records already on the topics are put in time order
BACKLOG_MAX = 100_000
#: ... and read for at most this long (a partition that does not answer does not hold the rest back)
BACKLOG_WAIT_S = 15.0


class _Backlog:
    """The records that were on the topics when ``subscribe --from-beginning`` started, to be
    printed in the order they were published: the consumer returns them partition by partition
    (every event, then every dead letter), not in time order."""

    def __init__(self, consumer: Any, now: float) -> None:
        self.until = now + BACKLOG_WAIT_S
        parts = list(consumer.assignment())
        self.ends = {tp: end for tp, end in consumer.end_offsets(parts).items() if end > consumer.position(tp)}
        self.records: list[Any] = []

    def complete(self, consumer: Any, now: float) -> bool:
        """Whether every partition was read to where it ended at the start (or the backlog is full,
        or its time is up)."""
        if len(self.records) >= BACKLOG_MAX or now >= self.until:
            return True
        return all(consumer.position(tp) >= end for tp, end in self.ends.items())

    def in_order(self) -> list[Any]:
        """By record time across partitions, each partition's records in offset order (two workers'
        clocks may disagree after a rebalance: a call's own records keep the order they were written)."""
        import heapq

        by_partition: dict[tuple[str, int], list[Any]] = {}
        for r in self.records:
            by_partition.setdefault((r.topic, r.partition), []).append(r)
        return list(heapq.merge(*by_partition.values(), key=lambda r: r.timestamp))


@dataclass
class _Held:
    since: float
    line: str
    waiting: set[str]  # the utterance ids of the call whose events it waits for


class EventPrinter:
    """Prints what a :class:`client.Tracker` accepts (validated, filtered, deduplicated, each
    revision with the line it revises); no Kafka in here. Records of topics other than the
    dead-letter, alerts and calls ones are read as emotion events.

    ``hold_s``: alerts and call reports travel on topics of their own, so one can be read before
    the events it cites. With ``hold_s`` > 0 an alert whose evidence names an utterance whose event
    has not been printed waits until it has (or ``hold_s`` seconds, :meth:`tick`), and the alerts
    and reports of its call after it wait behind it, in their order; :meth:`flush` prints what
    still waits."""

    def __init__(
        self,
        out: TextIO,
        fmt: Format = "pretty",
        call_ids: Iterable[str] | None = None,
        deadletter_topic: str | None = None,
        err: TextIO = sys.stderr,
        memory: int = 100_000,
        alerts_topic: str | None = None,
        calls_topic: str | None = None,
        hold_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        limit: int | None = None,
        events: bool = True,
    ) -> None:
        """``events``: print emotion events (False: only the dead letters, alerts and reports asked for)."""
        if fmt not in ("pretty", "json"):
            raise ValueError(f"fmt must be 'pretty' or 'json', not {fmt!r}")
        self.out, self.err, self.fmt = out, err, fmt
        kinds: dict[str, Kind] = {}
        for topic, kind in ((deadletter_topic, "deadletters"), (alerts_topic, "alerts"), (calls_topic, "reports")):
            if topic is not None:
                kinds[topic] = kind  # type: ignore[assignment]
        self.tracker = Tracker(kinds, call_ids, memory, default="events")
        self.received: Received | None = None  # the record the last handle() accepted (parsed once, for callers)
        self.count = 0  # lines printed
        self.hold_s, self.clock = hold_s, clock
        self.events = events
        self.limit = limit  # held lines are not printed past this many lines in all
        self._held: dict[str, deque[_Held]] = {}  # per call, in arrival order
        #: per call, why its utterances with nothing read were not read (for its summary; the last 10,000 calls)
        self._unread: OrderedDict[str, Counter[str]] = OrderedDict()

    @property
    def invalid(self) -> int:
        return self.tracker.invalid

    @property
    def duplicates(self) -> int:
        return self.tracker.duplicates

    def handle(self, topic: str, value: bytes | None) -> bool:
        """Print the record if it is wanted; True if a line was printed."""
        invalid = self.tracker.invalid
        got = self.received = self.tracker.accept(topic, value)
        if self.tracker.invalid > invalid and self.tracker.invalid <= 5:
            print(f"subscribe: skipped an invalid record on {self.tracker.errors[-1]}", file=self.err)
        if got is None:
            return False
        record = got.record
        if isinstance(record, CallReport) and not record.final:
            return False  # the running reports are for dashboards
        if isinstance(record, EmotionEvent) and not self.events:
            return False
        if isinstance(record, EmotionEvent) and record.revision == 0 and not says_something(record):
            self._unread.setdefault(record.call_id, Counter())[unread_kind(record)] += 1
            self._unread.move_to_end(record.call_id)
            if len(self._unread) > 10_000:
                self._unread.popitem(last=False)
        if self.fmt == "json":
            line = record.to_bytes().decode()  # as published: fields without a value left out
        elif isinstance(record, EmotionEvent):
            line = format_event(record, got.previous)
        elif isinstance(record, AlertEvent):
            line = format_alert(record)
        elif isinstance(record, CallReport):
            line = format_report(record, self._unread.pop(record.call_id, None))
        else:
            line = format_deadletter(record)
        if isinstance(record, (AlertEvent, CallReport)) and self.hold_s > 0:
            cited = {e.utterance_id for e in record.evidence} if isinstance(record, AlertEvent) else set()
            # an event accepted is printed at once: the tracker's memory of it says it was
            waiting = {u for u in cited if self.tracker.latest(record.call_id, u) is None}
            if waiting or record.call_id in self._held:
                self._held.setdefault(record.call_id, deque()).append(_Held(self.clock(), line, waiting))
                return False
        self._write(line)
        if isinstance(record, EmotionEvent):
            held = self._held.get(record.call_id)
            for h in held or ():
                h.waiting.discard(record.utterance_id)
            if held:
                self._release(record.call_id)
        return True

    def tick(self) -> None:
        """Print the held lines whose events have come or whose ``hold_s`` has passed."""
        for call_id in list(self._held):
            self._release(call_id)

    def flush(self) -> None:
        """Print every held line."""
        for call_id in list(self._held):
            self._release(call_id, everything=True)

    def _release(self, call_id: str, everything: bool = False) -> None:
        held = self._held[call_id]
        now = self.clock()
        while held and (everything or not held[0].waiting or now - held[0].since >= self.hold_s):
            if self.limit is not None and self.count >= self.limit:
                return
            self._write(held.popleft().line)
        if not held:
            del self._held[call_id]

    def _write(self, line: str) -> None:
        # JSON escapes C0 itself, and \x.. is not JSON: DEL and C1 (inside its strings) as \u00..
        line = printable(line) if self.fmt == "pretty" else line.translate(_UNPRINTABLE_JSON)
        try:
            self.out.write(line + "\n")
        except UnicodeEncodeError:  # a terminal that cannot show ↻ or ✗
            encoding = getattr(self.out, "encoding", None) or "ascii"
            self.out.write(line.encode(encoding, "replace").decode(encoding) + "\n")
        self.out.flush()
        self.count += 1


def subscribe(
    settings: Settings,
    call_ids: Iterable[str] | None = None,
    fmt: Format = "pretty",
    from_beginning: bool = False,
    max_events: int | None = None,
    timeout_s: float | None = None,
    out: TextIO = sys.stdout,
    deadletters: bool = False,
    *,
    alerts: bool = False,
    events: bool = True,
    consumer: Any = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Print emotion events until ``max_events`` lines or ``timeout_s`` seconds in all (None: no
    limit; Ctrl-C stops it); returns the number of lines printed. ``events`` False: only the dead
    letters and alerts asked for (one of them must be)."""
    topics = settings.kafka.topics
    if not (events or deadletters or alerts):
        raise ValueError("nothing to print: events off, and neither dead letters nor alerts asked for")
    names = ([topics.emotions] if events else []) + ([topics.deadletter] if deadletters else [])
    names += [topics.alerts, topics.calls] if alerts else []
    printer = EventPrinter(
        out,
        fmt,
        call_ids,
        topics.deadletter if deadletters else None,
        alerts_topic=topics.alerts if alerts else None,
        calls_topic=topics.calls if alerts else None,
        hold_s=HOLD_S if events else 0.0,  # (an alert waits for the events it cites only where they are printed)
        clock=clock,
        limit=max_events,
        events=events,
    )
    deadline = None if timeout_s is None else clock() + timeout_s
    own = consumer is None
    if own:
        consumer = make_consumer(
            settings, names, from_beginning, timeout_s, say=lambda line: print(f"subscribe: {line}", file=sys.stderr)
        )
        start = "the beginning" if from_beginning else "now"
        wanted = sorted(printer.tracker.call_ids) if printer.tracker.call_ids is not None else None
        calls = "" if wanted is None else f", calls {', '.join(repr(c) for c in wanted)} only"
        print(f"subscribe: {', '.join(names)} from {start} at {settings.kafka.brokers}{calls}", file=sys.stderr)
    backlog = _Backlog(consumer, clock()) if from_beginning else None
    reader = TopicReader(consumer, names)

    def show(records: Iterable[Any]) -> None:
        for record in records:
            if max_events is not None and printer.count >= max_events:
                return
            printer.handle(record.topic, record.value)

    try:
        while max_events is None or printer.count < max_events:
            left = None if deadline is None else deadline - clock()
            if left is not None and left <= 0:
                break
            poll_ms = 500 if left is None else max(1, min(500, int(left * 1000)))
            batches, notes = reader.poll(poll_ms)
            for note in notes:
                print(f"subscribe: {note}", file=sys.stderr)
            for records in batches.values():
                if backlog is not None:
                    backlog.records += records
                else:
                    show(records)
            if backlog is not None and backlog.complete(consumer, clock()):
                show(backlog.in_order())
                backlog = None
            printer.tick()
        if backlog is not None:  # the time ran out before the backlog was read
            show(backlog.in_order())
        printer.flush()  # alerts still waiting for events that did not come in time
    finally:
        if own:
            consumer.close()
    return printer.count
