"""The Faust worker: one agent over the co-partitioned input topics, kept thin.

    input topics (text, audio, video, control; key = call id)
        -> parse + validate (bad input -> dead-letter topic, with reason and source offset)
        -> Joiner (hand-built join; Faust has no stream joins)
        -> micro-batch (max_wait_s, max_batch, batch_budget_s: streams/batching.py) -> Processor (features,
           Redis window, engine)
        -> emotion events topic -> call analytics (alerts and call reports topics, its state in Redis)
        -> Redis window append -> ack the source messages

The agent parses and validates outside the lock (audio is decoded in a thread, never on the event
loop), then joins and queues under it (quick). :meth:`Worker.pump`, run in a loop by one task,
takes due batches off the queue and runs them through the engine *outside* the lock, one batch at a
time, so parts keep being joined while the engine works and a call's batches stay in order. A
queue of ``4 * max_batch`` utterances or four batches' worth of work units (audio counted by its
seconds), or ``join.max_open_utterances`` utterances or ``join.max_held_audio_s`` seconds of
decoded audio waiting for parts, makes the agent wait (backpressure to Kafka: lag grows, memory
does not).

Failures are of two kinds. A message or utterance that cannot be processed is dead-lettered and
acked, never retried: parse and validation errors per message; an utterance on which the encoders,
the engine or the event build fail is found by splitting its batch (:class:`Processor` does that)
and dead-lettered with reason ``processing_failed``, while the rest of the batch gets its events.
A service that fails (Redis, the Kafka producer) fails the whole batch, which is retried with
backoff until it goes through: nothing is dropped. Exceptions never escape :meth:`on_message`.

Delivery is at least once: the agent runs with ``concurrency=1`` on a ``noack`` stream and acks a
message only once everything it fed is published (Faust commits offsets up to the first gap), so
a restarted worker resumes from committed offsets and re-labels what was in flight under the same
deterministic event keys.

Partitions revoked (a rebalance) are let go, not finished: :meth:`Worker.revoke` drops their
half-joined and queued utterances without acking them and forgets which of their utterances were
labelled, and nothing of theirs is published or acked after that. The partition's next owner
(maybe this worker again) replays them from the committed offset with all their parts, so an
utterance never gets two different events under one ``event_id`` because a rebalance cut its join.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engines.features.format_check import mistake_of
from streams.analytics import CallAnalytics, Outgoing, says_something
from streams.batching import BatchSizer, units
from streams.errors import InvalidMessage, one_line
from streams.join import Joiner, JoinResult, Utterance
from streams.metrics import Metrics
from streams.pipeline import (
    BEHIND,
    LONG_TRANSCRIPT,
    MISDECLARED,
    NOT_AN_INPUT,
    OTHER_LANGUAGE,
    QUIET,
    BatchOutcome,
    Processor,
    sent_ago,
)
from streams.schemas import AlertEvent, AudioPart, CallControl, DeadLetter, Part, SourceRef, parse_input
from streams.settings import LimitSettings, Settings
from streams.validate import CLIPPED, to_payload

log = logging.getLogger("emostream.worker")
_MAX_KEY_CHARS = 256
NOTHING_READ_GRACE_S = 5.0  # see Worker.behind
UNANSWERED_S = 5.0  # see Worker.behind: > 3x the consumer's fetch wait (1.5 s), a caught-up partition's longest quiet
#: see Worker.behind: after an input partition was seen unreachable, partitions stay behind this
#: long: the producers' buffered writes reach the new or restarted leader only once they reconnect
#: (kafka-python backs off up to 30 s by default; the Java client 1 s)
RECOVERED_GRACE_S = 15.0
ENGINE_STUCK_S = 120.0  # a batch this long in the encoders and engine is wedged (they take well under a second)
WATCH_S = 0.5  # see Worker.watch: how often the input partitions' leaders are looked at
TICK_S = 0.1  # see Worker.pump: how often joins are expired and the gauges set while batches keep coming
UNREAD = (
    "unread"  # emostream_emotions_total's label for an utterance with every part ignored (its label is the prior's)
)
ROUTES_KEPT = 100_000  # calls whose last message's partition is remembered (Worker._check_route)
CRASH_START_S = 30.0  # a worker's start and the rebalance after a crash, past kafka.session_timeout_s
QUIET_SWEEP_S = 5.0  # see Worker._end_quiet: how often calls gone quiet are looked for (join.idle_end_s)
RESTARTS_SAID = (
    3  # 'started's of one call id waiting for its earlier uses' closes that are warned of (Worker._say_restarts)
)
CLOSES_BEFORE_A_BATCH = 8  # closes that may go before a batch that is due (Worker._close_first)
QUIET_PAGE = 1000  # the quietest calls looked at per partition and sweep (100: more than 20 a second went quiet
# on a partition of the largest call centers, without 'ended', and the rest waited beyond their state's TTL)


DEAD_LETTERED = "dead-lettered: "  # an utterance's ignored[modality] for a part that went to the dead letters
DETAIL_IN_EVENT = 160  # characters of a dead letter's detail that the event's ``ignored`` repeats


def dead_lettered(rejected: InvalidMessage) -> str:
    """The event's ``ignored`` reason for a part that went to the dead letters: its reason and the
    start of its detail ("dead-lettered: invalid_value (encoding: Input should be 'pcm_s16le', ...)"),
    so that whoever reads the event learns why without the dead-letter topic."""
    detail = (
        rejected.detail if len(rejected.detail) <= DETAIL_IN_EVENT else rejected.detail[: DETAIL_IN_EVENT - 3] + "..."
    )
    return f"{DEAD_LETTERED}{rejected.reason} ({detail})" if detail else f"{DEAD_LETTERED}{rejected.reason}"


def _silent(end: PartitionEnd, read_offset: int | None) -> bool:
    """Whether a partition's leader is unreachable, or has not answered a fetch for ``UNANSWERED_S``
    although this worker has read all it was given (with records still buffered the consumer does
    not fetch that partition, so its answers stop without the broker being silent)."""
    caught_up = read_offset is not None and read_offset + 1 >= end.offset
    return not end.reachable or (caught_up and end.age_s >= UNANSWERED_S)


def _read_to(end: PartitionEnd, read_offset: int | None) -> bool:
    """Whether a partition is read up to ``end`` (Worker.fresh): by this worker, or, where it has read
    nothing yet, by the group before (its committed offset just there: one past the end is a log cut
    back, which the consumer reads again from its start)."""
    if read_offset is not None:
        return read_offset + 1 >= end.offset
    return (end.committed or 0) == end.offset


def _partitions(tps: set[tuple[str, int]]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps))


@dataclass(frozen=True)
class PartitionEnd:
    """A partition's end offset as the consumer last saw it, and how long ago the broker said so."""

    offset: int
    age_s: float
    reachable: bool = True  # its leader is known and this consumer is connected to it
    committed: int | None = None  # the group's committed offset there (the next to read), where known
    answered: bool = True  # age_s is known (else 0.0: the consumer's private record of it was not there)


@dataclass
class Lease:
    """This worker's hold on one input partition; it ends when the partition is revoked.

    It passes the acks of the partition's messages on to the transport in offset order, each topic's
    apart. The worker acks out of order all the time (a `started` at once while an `ended` before it
    waits for its call's close; a part at once while an earlier utterance's waits for its audio),
    and Faust's commit skips an unacked message at the head of the acked ones (faust-streaming
    0.15.3, ``Consumer._new_offset``: a gap of one offset after the committed one, or any gap on a
    partition never committed to, is committed over): a crash then lost the message, its call's end
    or its utterance's text. Held back here, an ack goes out once every message read before it on
    its topic-partition has been acked."""

    valid: bool = True
    #: per topic, the offsets read and not yet passed on, in the order read: [handle, acked, read at]
    pending: dict[str, dict[int, list[Any]]] = dataclasses.field(default_factory=dict)

    def expect(self, topic: str, offset: int, handle: Any, now: float = 0.0) -> None:
        """A message read (at ``now``): its ack, and every one after it, waits for it."""
        self.pending.setdefault(topic, {})[offset] = [handle, False, now]

    def oldest(self) -> tuple[str, int, float] | None:
        """(topic, offset, read at) of the message read longest ago whose ack is not out yet: the
        group's commits there stop before it."""
        heads = [(waiting[first][2], topic, first) for topic, waiting in self.pending.items()
                 if waiting and not waiting[(first := next(iter(waiting)))][1]]  # fmt: skip
        if not heads:
            return None
        at, topic, offset = min(heads)
        return topic, offset, at

    def ack(self, topic: str, offset: int, handle: Any) -> None:
        if not self.valid:
            return
        waiting = self.pending.get(topic)
        entry = None if waiting is None else waiting.get(offset)
        if entry is None or entry[0] is not handle:  # not one read in order here (nothing to hold it behind)
            handle.ack()
            return
        entry[1] = True
        assert waiting is not None
        if next(iter(waiting)) != offset:  # it waits behind an earlier message: it needs only its ack from here
            _shed(handle)  # (the record's bytes: audio waiting up to join.max_hold_s)
        while waiting:
            first = next(iter(waiting))
            held, acked, _ = waiting[first]
            if not acked:
                break
            del waiting[first]
            held.ack()


@dataclass(frozen=True)
class Receipt:
    """One input message the worker holds: where it came from, and the transport's handle to ack.

    Acking a message of a partition this worker lost does nothing: its next owner replays it."""

    topic: str
    partition: int
    offset: int
    handle: Any
    lease: Lease
    rejected: bool = False  # dead-lettered on its own (held with its utterance, not one of its used parts)

    def ack(self) -> None:
        self.lease.ack(self.topic, self.offset, self.handle)  # in offset order (Lease); nothing once revoked

    @property
    def source(self) -> SourceRef:
        return SourceRef(topic=self.topic, partition=self.partition, offset=self.offset)


def _shed(handle: Any) -> None:
    """Let go of a record's bytes whose message is parsed and used (joined, or dead-lettered), where
    only its ack is left: a part's ack waits for its utterance's event (up to ``join.max_hold_s``),
    and its raw record (audio up to ``limits.max_message_bytes``; an oversized one past it) is not
    counted in ``join.max_held_audio_s``, which counts the decoded voices held."""
    getattr(handle, "shed", lambda: None)()


def _identity(msg: CallControl, timestamp: float | None) -> str:
    """What tells a control message sent again (a producer's retry) from a new one: its ``at`` as
    its producer gave it, else its record time (a retried batch keeps it), else ''."""
    if "at" in msg.model_fields_set:
        return repr(msg.at)
    return f"t{timestamp!r}" if timestamp is not None else ""


@dataclass(frozen=True)
class _NoAck:
    """The handle of an 'ended' the worker stands in for: nothing to ack. ``spoke``: the call had
    utterances, here or in Redis (not one that said nothing, nor one whose state expired, which the
    join counted when it forgot it). ``why``: "started" (a 'started' of its id came first,
    :meth:`Worker._ends_unended`) or "idle" (no part for ``join.idle_end_s``, :meth:`Worker._end_quiet`)."""

    spoke: bool
    why: str = "started"

    def ack(self) -> None:
        pass


@dataclass(frozen=True)
class Held:
    """A parsed input message on its way to the join (held while its call id's previous call closes)."""

    msg: Any  # a Part or a CallControl
    payload: Any
    receipt: Receipt
    key: bytes | None
    value: bytes | None
    timestamp: float | None
    rejected: InvalidMessage | None = None  # a part dead-lettered on its own: its utterance waits for it no longer
    fresh_at: float | None = None  # Worker.fresh of its partition before it was read (Utterance.fresh_at)


class Worker:
    """The worker's logic, independent of how messages arrive; ``send`` publishes one record
    and returns an awaitable that resolves once the broker has it."""

    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        metrics: Metrics,
        send: Any,
        clock: Callable[[], float] = time.monotonic,
        analytics: CallAnalytics | None = None,
    ) -> None:
        self.settings = settings
        self.analytics = analytics  # call trajectories and escalation alerts, after the events
        self.clock = clock
        self.processor = processor
        self.metrics = metrics
        self.send = send
        self.kinds = settings.kafka.topics.inputs()
        j = settings.join
        self.joiner = Joiner(
            j.wait_s,
            j.default_modalities,
            idle_s=settings.redis.ttl_s,
            max_calls=j.max_open_calls,
            max_finished=j.max_finished_ids,
            behind=self.behind,
            read_to=lambda kind, p: self.read.get((self.topic_of.get(kind, ""), p), (None,))[0],
            max_hold_s=j.wait_s + j.max_hold_s,
            inputs=tuple(m for m, dim in processor.dims.items() if dim > 0),
            learn_after=j.learn_after,
            end_wait_s=j.end_wait_s,
        )
        self.topic_of = {m: t for t, m in self.kinds.items()}  # modality -> its input topic
        #: (topic, partition) -> (max record time read, max offset read, when that offset last grew)
        self.read: dict[tuple[str, int], tuple[float, int, float]] = {}
        #: (topic, partition) -> the record time of the highest offset read (one record stamped far ahead
        #: moves it until the next one, where it would move the maximum for good: Worker.read_through)
        self.read_latest: dict[tuple[str, int], float] = {}
        #: (topic, partition) -> the wall time of the latest end offset the broker gave that this worker
        #: had read the partition up to (Worker.watch): what it reads next was sent after that
        self.fresh: dict[tuple[str, int], float] = {}
        #: partition -> when this worker got it (assigned, or else when it first read from it)
        self.assigned_at: dict[int, float] = {}
        self.disturbed_at = float("-inf")  # when an input partition was last seen without its leader (Worker.watch)
        self.watched_at = float("-inf")
        self.unreachable: set[tuple[str, int]] = set()  # input partitions the last watch found without their leader
        self.missing_logged = 0  # utterances logged as released without an expected part
        self.noted: dict[str, int] = {}  # parts acked without an event (late, sent again) -> how many so far
        #: (topic, partition) -> the partition's end offset as the consumer last saw it (None: unknown)
        self.highwater: Callable[[str, int], PartitionEnd | None] = lambda topic, partition: None
        self.queue: list[Utterance] = []
        self.sizer = BatchSizer(settings.engine.max_batch, settings.engine.batch_budget_s)
        self.queued_units = 0.0  # the queue's work units (streams/batching.py), kept as it changes
        metrics.batch_limit.set(self.sizer.allowance())
        self.ending: dict[str, list[Any]] = {}  # call id -> its 'ended' messages, acked once it is closed
        #: calls whose utterances are all released, to free their windows, in turn -> when each joined (Worker._step)
        self.closing: dict[str, float] = {}
        self.closes_in_turn = 0  # closes since the last batch (Worker._close_first)
        self.held: dict[str, list[Held]] = {}  # call id used again -> its messages, until its previous close
        self.letting_go: set[str] = set()  # call ids whose held messages are being joined (Worker._let_go)
        # call ids closed here whose held parts wait for a 'started' not read yet (Worker._held_back)
        self.awaiting_start: dict[str, float] = {}  # -> when the first was held (clock)
        self.starting: set[str] = set()  # awaiting calls whose 'started' (or 'ended') is being applied
        self._format_warned: set[str] = set()  # calls whose audio format was said to be wrong (logged once a call)
        self._language_warned: set[str] = set()  # calls whose transcripts were said to be in another language
        self._long_warned: set[str] = set()  # calls whose transcripts were said to be longer than the model reads
        self._quiet_warned: set[str] = set()  # calls whose voices were said to be quieter than the model learnt
        self._restarts_said: OrderedDict[str, float] = OrderedDict()  # call ids said to be started again -> when
        self._shed = 0  # utterances whose audio was not encoded (the worker behind) since the last log line
        self._shed_logged_at: float | None = None  # monotonic time of that line
        self.lock = asyncio.Lock()  # joiner and queue state (held briefly)
        self.busy = asyncio.Lock()  # one batch or call close in flight
        self.retry_at = 0.0
        self.backoff = 0.5
        self.counted: dict[str, int] = {}  # the joiner's counts already added to their metrics
        self.failing_since: dict[str, float] = {}  # "batches", "closing calls": first failure since one went through
        self.leases: dict[int, Lease] = {}  # input partition -> this worker's current hold on it
        self._said_unacked: dict[tuple[str, int], tuple[str, int, int]] = {}  # (Worker._say_if_unacked)
        self._routes: OrderedDict[str, tuple[str, int]] = OrderedDict()  # call -> its last message's topic, partition
        self.idle_end_s = settings.idle_end_s()  # a call quiet this long is ended (Worker._end_quiet); 0: never
        shed, session = settings.engine.shed_audio_after_s, settings.kafka.session_timeout_s
        if 0 < shed < session + CRASH_START_S:
            log.warning("engine.shed_audio_after_s %g s is within what a crash costs (kafka.session_timeout_s %g s "
                        "before its partitions move, and a worker's start): after a kill -9 every utterance in "
                        "flight would be labelled without its voice; %g s or more keeps it", shed, session,
                        session + CRASH_START_S)  # fmt: skip
        self.wall: Callable[[], float] = time.time  # now, against record times (Worker.read_through)
        self.swept_at = float("-inf")  # when calls gone quiet were last looked for (clock)
        self.reading_key: bytes | None = None  # the key of the message on_message handles now (one at a time)
        metrics.limits.labels("open_utterances").set(j.max_open_utterances)
        metrics.limits.labels("held_audio_seconds").set(j.max_held_audio_s)
        metrics.limits.labels("open_calls").set(j.max_open_calls)
        metrics.limits.labels("finished_ids").set(j.max_finished_ids)

    async def on_message(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        handle: Any,
        timestamp: float | None = None,
    ) -> None:
        """One input message (``timestamp``: its record time, s); ``handle.ack()`` is called once its
        effects are published. Never raises (but for cancellation): a message it cannot use is
        dead-lettered and acked."""
        self.metrics.messages_in.labels(topic).inc()
        self.reading_key = key  # its call is not ended as quiet meanwhile (Worker._end_quiet)
        lease = self.leases.setdefault(partition, Lease())  # (this message's: a revoke meanwhile ends it)
        try:
            await self._on_message(topic, partition, offset, key, value, handle, timestamp, lease)
        except Exception:  # a bug: the message is acked in its place (the acks after it would wait for it for ever)
            log.exception("message %s[%d]@%d failed; acked to keep the stream going", topic, partition, offset)
            lease.ack(topic, offset, handle)
        finally:
            self.reading_key = None

    async def _on_message(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        handle: Any,
        timestamp: float | None,
        lease: Lease,
    ) -> None:
        self.assigned_at.setdefault(partition, self.clock())
        lease.expect(topic, offset, handle, self.clock())
        receipt = Receipt(topic, partition, offset, handle, lease)
        await self._backpressure()
        fresh_at = self.fresh.get((topic, partition))  # (before it is marked read: it was sent after this)
        msg: Any = None
        try:
            msg = parse_input(self.kinds.get(topic, "?"), value, self.settings.limits.max_message_bytes)
            if key != msg.call_id.encode():  # the join and the rebalance guarantees need key = call id
                raise InvalidMessage("wrong_key", f"key {_key_text(key)!r} is not the call id {msg.call_id!r}")
            payload = None
            if not isinstance(msg, CallControl):
                if isinstance(msg, AudioPart) and msg.encoding != "features":  # decoding takes time: off the loop
                    payload = await asyncio.to_thread(to_payload, msg, self.processor.dims, self.settings.limits)
                else:
                    payload = to_payload(msg, self.processor.dims, self.settings.limits)
        except InvalidMessage as exc:
            msg = msg if msg is not None else exc.part  # content against its schema, ids that parse: its ids
            joinable = isinstance(msg, Part) and key == msg.call_id.encode()  # its utterance waits for it no longer
            # a part's own ack waits for its utterance (Joiner.reject): a replay after a crash meets it again
            await self._reject(exc, receipt, key, value, msg, ack=not joinable)
            self._mark_read(topic, partition, offset, timestamp)
            if joinable:
                _shed(handle)  # dead-lettered: only its ack is left, held with its utterance
                item = Held(msg, None, receipt, key, None, timestamp, exc, fresh_at)
                if not self._held_back(item):
                    await self._join(item)
            return
        except Exception as exc:  # a parser or validator bug must not stop the stream
            log.exception("parsing %s[%d]@%d failed", topic, partition, offset)
            await self._reject(InvalidMessage("processing_failed", _describe(exc)), receipt, key, value, msg)
            self._mark_read(topic, partition, offset, timestamp)
            return
        self._check_route(topic, partition, msg.call_id)
        item = Held(msg, payload, receipt, key, value, timestamp, fresh_at=fresh_at)
        if isinstance(msg, CallControl) and msg.event == "started" and await self._ends_unended(item):
            self._mark_read(topic, partition, offset, timestamp)
            return
        if self._held_back(item):
            self._mark_read(topic, partition, offset, timestamp)
            return
        if isinstance(msg, CallControl) and msg.call_id in self.awaiting_start:
            await self._control_of_awaiting(item)
            return
        await self._join(item)

    async def _ends_unended(self, item: Held) -> bool:
        """A 'started' of a call id whose previous call began (a 'started' before this one, kept
        ``redis.started_ttl_s``) and never ended (a platform that lost its 'ended'): that call is
        ended here, as if its 'ended' had come just before this 'started' (at the previous offset,
        at this one's record time: its parts sent before it are still its own, and the close waits
        for them while their topics are read behind), its final revisions and summary published and
        its alerts cleared; this 'started', and the new call's messages after it, wait for that
        close and then begin a new call, with ids of its own (:meth:`_held_back`). Before, the new
        call joined the old one, and its utterances under the old ids were dead-lettered as
        conflicting parts. The same 'started' sent again (its own ``at``, or else its record time)
        is no new call. True when the 'started' was taken so (held, or left to the partition's next
        owner)."""
        receipt, call_id = item.receipt, item.msg.call_id
        if call_id in self.ending or call_id in self.held or call_id in self.awaiting_start:
            return False  # closing already, or a call id used again: as before
        previous_start = self.processor.store.previous_start
        before = await self._retry(lambda: previous_start(call_id), "reading a call's start")
        if before.offset is None or before.closed is not None or receipt.offset <= before.offset:
            return False  # no 'started' before it, a call that closed (as before), or this one read again
        if before.identity and before.identity == _identity(item.msg, item.timestamp):
            return False  # the same message again: a producer's retry, not a new call
        # a call this worker has not seen (its partition came from another): what it declared holds
        # for its last parts, read after this (Redis keeps the old call's until its close)
        declared = await self._declaration(item.msg)
        async with self.lock:
            if not receipt.lease.valid:
                return True  # its partition was revoked meanwhile: the next owner reads it again
            self._declare(call_id, declared, receipt.partition)
            self._stand_in_end(item, spoke=before.labelled > 0 or self.joiner.spoke(call_id))
            held = self._held_back(item)
        assert held, "a call ending here holds its next 'started'"
        return True

    def _stand_in_end(self, item: Held, spoke: bool) -> None:
        """End ``item``'s call as if its 'ended' had come just before ``item`` (a 'started'): see
        :meth:`_ends_unended`. Under ``self.lock``."""
        receipt = item.receipt
        unended = Receipt(receipt.topic, receipt.partition, receipt.offset - 1, _NoAck(spoke), receipt.lease)
        self.ending.setdefault(item.msg.call_id, []).append(unended)
        self._absorb(self.joiner.call_ended(item.msg.call_id, self.clock(), receipt.partition, item.timestamp))

    async def _control_of_awaiting(self, item: Held) -> None:
        """A 'started' or 'ended' of a call whose parts wait for a 'started' (:meth:`_held_back`).
        'started': applied, then the held parts join after it, the new call's, as they would had
        the control topic been read first (a part sent after the closed call's end, read after the
        'started', is the new call's). 'ended': no new call began; the held parts join as they are,
        then it."""
        msg, call_id = item.msg, item.msg.call_id
        self.starting.add(call_id)  # the pump leaves the held parts alone meanwhile
        try:
            if msg.event == "started":
                await self._join(item)
                self.awaiting_start.pop(call_id, None)
                await self._let_go(call_id)
            else:
                self.awaiting_start.pop(call_id, None)
                await self._let_go(call_id)
                await self._join(item)
        finally:
            self.starting.discard(call_id)

    async def _let_go_unstarted(self) -> None:
        """Join, as they are, the parts held for a 'started' (:meth:`_held_back`) once their call's
        control partition is no longer behind any of them (no 'started' came before them), or once
        the first has waited ``join.max_hold_s``, or when held parts reach a tenth of
        ``join.max_open_utterances`` (held parts are not counted by the backpressure)."""
        now = self.clock()
        held_parts = sum(len(self.held.get(c, ())) for c in self.awaiting_start)
        crowded = held_parts >= 0.1 * self.settings.join.max_open_utterances
        for call_id, since in list(self.awaiting_start.items()):
            if call_id not in self.awaiting_start or call_id in self.letting_go or call_id in self.starting:
                continue  # let go, or being let go, meanwhile
            held = self.held.get(call_id, [])
            waiting = any(self.behind("control", h.receipt.partition, h.timestamp or 0.0) for h in held)
            if waiting and not crowded and now - since < self.settings.join.max_hold_s:
                continue
            self.awaiting_start.pop(call_id, None)
            await self._let_go(call_id)

    def _held_back(self, item: Held) -> bool:
        """Hold a message of a call id used again before its previous call's close was done (the
        'started', then the new call's messages; or one of its parts read before its 'started' that
        would meet a part the previous call has: :meth:`Joiner.sent_after_end`), to be joined after
        that close (:meth:`_let_go`), 'started' first: the close frees the call's window and
        declaration, and would take the new call's with it.
        A part of the previous call (:meth:`Joiner.of_previous_call`) is joined at once while that
        call is open here, else (closed: it would reopen it under the new call) acked as late.
        Once that close is done, a part sent after the call's 'ended' (by record times), read while
        the call's control partition is behind its record time (a 'started' of the id's next call
        may be there, unread), is held too, with the call's later parts sent after that end, until
        a 'started' is read (then joined after it, the new call's) or the control partition is read
        past them (:meth:`_let_go_unstarted`: joined as they are: the closed call's late part, or a
        redelivery, a conflict, a part after its call ended): as if the control topic had been read
        first, whichever topic is, as far as :meth:`behind` can tell.
        True when the message was held or acked here."""
        msg, call_id = item.msg, item.msg.call_id
        held = self.held.get(call_id)
        if held is not None and call_id in self.letting_go:
            held.append(item)  # after those being joined now
            return True
        if call_id not in self.ending and (held is None or call_id in self.awaiting_start):
            if not isinstance(msg, Part):
                return False  # a 'started' is joined at once, then what waited for it (on_message)
            if held is not None and call_id in self.awaiting_start:
                if not self.joiner.sent_after_its_end(call_id, item.timestamp):
                    return False  # the previous call's, as the join tells
            elif not (
                self.joiner.sent_after_its_end(call_id, item.timestamp)
                and self.behind("control", item.receipt.partition, item.timestamp or 0.0)
            ):
                return False
            if held is None:
                log.info("call %s: a part sent after the call ended, read before the control topic reached "
                         "its time: held until a 'started' or the control topic is read past it", call_id)  # fmt: skip
            self.awaiting_start.setdefault(call_id, self.clock())
            self.held.setdefault(call_id, []).append(item)
            return True
        starts = isinstance(msg, CallControl) and msg.event == "started"
        restarted = any(_starts(h) for h in held or ())  # a 'started' read: the new call's messages wait
        if not (starts or restarted):
            # before any 'started', only a part that meets one the previous call has, sent after its end
            if not (isinstance(msg, Part) and self.joiner.sent_after_end(call_id, msg.utterance_id, msg.kind,
                                                                        item.timestamp)):  # fmt: skip
                return False
        elif isinstance(msg, Part) and self.joiner.of_previous_call(
            call_id, msg.utterance_id, msg.kind, item.timestamp
        ):
            if self.joiner.knows(call_id) or self.joiner.labelled(call_id, msg.utterance_id):
                return False  # joined (or a late part or a redelivery, as the join tells)
            item.receipt.ack()
            self.metrics.late_parts.inc()
            self._note_unused(msg, "late")
            return True
        if starts and not restarted:
            log.info("call %s started again before its previous call's close was done: its messages wait for "
                     "that close", call_id)  # fmt: skip
        queued = self.held.setdefault(call_id, [])
        queued.append(item)
        if starts and self.clock() - self._restarts_said.get(call_id, float("-inf")) >= 60:  # (not counted in a flood)
            self._say_restarts(call_id, sum(map(_starts, queued)), len(queued))
        return True

    def _say_restarts(self, call_id: str, starts: int, held: int) -> None:
        """Warn (once a minute a call id) when a call id is started again while more than one of its
        earlier calls still wait for their close: a producer that sends 'started' (and 'ended')
        around every utterance makes each utterance a call of its own, without context, each
        waiting for the close of the one before (``join.end_wait_s``); sent faster than that, its
        messages pile up here without bound (``emostream_held_for_close_messages``)."""
        now = self.clock()
        if starts < RESTARTS_SAID or now - self._restarts_said.get(call_id, float("-inf")) < 60:
            return
        said = self._restarts_said
        while said and now - next(iter(said.values())) >= 60:  # (oldest first: each warning is kept a minute)
            said.popitem(last=False)
        said.pop(call_id, None)
        said[call_id] = now
        log.warning("call %s: started again %d times before its earlier calls' closes were done (each waits "
                    "join.end_wait_s, %.1f s, after its 'ended'); %d of its messages wait. Each 'started' begins a "
                    "new call, without the context before it: send 'started' once when the call begins and "
                    "'ended' once when it ends, not around every utterance", call_id, starts,
                    self.joiner.end_wait_s, held)  # fmt: skip

    async def _let_go(self, call_id: str) -> None:
        """Join the messages held for ``call_id`` (:meth:`_held_back`), its previous call now closed,
        in the order they came (and any that come meanwhile). One that fails is logged and acked, as
        the agent's last guard does: the others, and the call's later messages, go on."""
        held = self.held.get(call_id)
        if held is None or call_id in self.letting_go:
            return  # nothing held, or being joined already (what comes meanwhile joins that loop)
        starts = [i for i, h in enumerate(held) if _starts(h)]
        if starts:  # a new call's parts may have been read before its 'started': that goes first
            held.insert(0, held.pop(starts[0]))
        self.letting_go.add(call_id)
        began: Held | None = None  # the 'started' joined here
        kept = False  # what is left stays held, for after the close of the call begun here
        try:
            while held:
                item = held.pop(0)
                if _starts(item) and began is not None:  # another call under the id, after the one just begun
                    identity = _identity(item.msg, item.timestamp)
                    if call_id in self.ending:  # that one ended already: this waits for its close, as it would
                        held.insert(0, item)
                        kept = True
                        break
                    if not identity or identity != _identity(began.msg, began.timestamp):  # (not a resend)
                        held.insert(0, item)
                        kept = True
                        await self._end_begun(call_id, item, held)
                        break
                if _starts(item):
                    began = item
                await self._join_held(call_id, item)
        finally:
            self.letting_go.discard(call_id)
            if self.held.get(call_id) is held and not kept:
                del self.held[call_id]

    async def _join_held(self, call_id: str, item: Held) -> None:
        try:
            await self._join(item)
        except Exception:
            log.exception("joining a held message of call %s failed; acked to keep the stream going", call_id)
            item.receipt.ack()

    async def _end_begun(self, call_id: str, item: Held, held: list[Held]) -> None:
        """In :meth:`_let_go`: ``item``, a 'started', came before the call just begun ended: that call
        ends first, as at its own first 'started' (:meth:`_ends_unended`); the held parts it sent by
        ``item``'s record time are its own and join it now, the rest (``item`` first) stays held."""
        async with self.lock:
            if not item.receipt.lease.valid:
                return  # revoked meanwhile: its next owner reads it all again
            self._stand_in_end(item, spoke=self.joiner.spoke(call_id))
        for h in list(held[1:]):
            if isinstance(h.msg, Part) and self.joiner.of_previous_call(call_id, h.msg.utterance_id, h.msg.kind,
                                                                        h.timestamp):  # fmt: skip
                held.remove(h)
                await self._join_held(call_id, h)

    async def _join(self, item: Held) -> None:
        """Join a parsed message (a part, or a part dead-lettered on its own), or apply a call control."""
        msg, receipt, partition, timestamp = item.msg, item.receipt, item.receipt.partition, item.timestamp
        if not receipt.lease.valid:
            return  # its partition was revoked (while it was held): the next owner reads it again
        if isinstance(msg, CallControl):
            again = False  # whether the id's previous call closed (then used again)
            if msg.event == "started":
                modalities: list[str] = list(msg.modalities or [])
                started = self.processor.started
                again = await self._retry(
                    lambda: started(msg.call_id, modalities, receipt.offset, _identity(msg, timestamp)),
                    "storing a call's start",
                )
            else:
                # an earlier call's 'ended': applied, it would end the call now under the id (its
                # joins, window and summary); acked, nothing closed
                earlier = self.joiner.began_after(msg.call_id, timestamp)
                if earlier:
                    log.warning("call %s: 'ended' at offset %d was sent by the end of the call before the one now "
                                "open under the id (record times): that call's, read late or sent again; acked, "
                                "nothing closed", msg.call_id, receipt.offset)  # fmt: skip
                else:
                    superseded = self.processor.superseded
                    earlier = await self._retry(lambda: superseded(msg.call_id, receipt.offset), "reading a call's end")
                    if earlier:  # read again after a crash once the id's next call had started
                        log.warning("call %s: 'ended' at offset %d is an earlier call's, read again after a restart "
                                    "(the call now under the id started at offset %s): acked, nothing closed",
                                    msg.call_id, receipt.offset, self.processor.generation(msg.call_id))  # fmt: skip
                if earlier:
                    async with self.lock:
                        if receipt.lease.valid:
                            self._mark_read(receipt.topic, partition, receipt.offset, timestamp)
                            receipt.ack()
                    return
            # an 'ended' of a call this worker has not seen (its partition came from another worker,
            # or a restart), read before the call's last parts: what the call declared still holds
            # for them (they waited for the default's audio, 5 s after a kill -9, found by a newcomer)
            declared = await self._declaration(msg) if msg.event == "ended" else None
            async with self.lock:
                if receipt.lease.valid:
                    self._mark_read(receipt.topic, partition, receipt.offset, timestamp)
                    self._declare(msg.call_id, declared, partition)
                    self._control(msg, receipt, self.clock(), timestamp, again)
            return
        declared = await self._declaration(msg)
        if item.rejected is not None:
            async with self.lock:
                if receipt.lease.valid:  # else left unacked: the partition's next owner reads it again
                    self._declare(msg.call_id, declared, partition)  # as for a usable part, below
                    why = dead_lettered(item.rejected)
                    self._absorb(self.joiner.reject(
                        msg.call_id, msg.utterance_id, msg.seq, msg.speaker, msg.kind, why, self.clock(),
                        partition, timestamp, dataclasses.replace(receipt, rejected=True), item.fresh_at,
                    ))  # fmt: skip
            return
        key, value = item.key, item.value
        async with self.lock:
            if not receipt.lease.valid:
                return  # its partition was revoked meanwhile: the next owner reads it again
            now = self.clock()
            self._mark_read(receipt.topic, partition, receipt.offset, timestamp)  # joined from now on
            self._declare(msg.call_id, declared, partition)  # declared to another worker, or forgotten
            result = self.joiner.add(
                msg.call_id, msg.utterance_id, msg.seq, msg.speaker, msg.kind, item.payload, receipt, now, partition,
                timestamp, item.fresh_at,
            )  # fmt: skip
            self._absorb(result)
        if (result.late_parts or result.duplicate_parts) and not result.inconsistent:  # (that one is said below)
            self._note_unused(msg, "late" if result.late_parts else "again")
        if result.conflict is not None and receipt.lease.valid:  # a second, different part under the same ids
            await self._reject(InvalidMessage("conflicting_part", result.conflict), receipt, key, value, msg)
        if result.after_end is not None and receipt.lease.valid:  # its call was closed: it is not reopened
            await self._reject(InvalidMessage("after_call_ended", result.after_end), receipt, key, value, msg)
        _shed(receipt.handle)  # joined (its payload is what the utterance keeps), or dead-lettered: its ack is left

    def _check_route(self, topic: str, partition: int, call_id: str) -> None:
        """Count and log a call's message that came on another partition than the call's messages
        before it: the producers of the input topics partition by call id differently (found by a
        newcomer: control sent with kafka-python, which hashes keys with murmur2 as Kafka's Java
        client does, parts with a librdkafka client, which hashes with CRC32 by default). One
        worker joins them all the same; with several, a call's parts reach different workers and
        its join splits."""
        seen = self._routes.get(call_id)
        self._routes[call_id] = (topic, partition)
        self._routes.move_to_end(call_id)
        if len(self._routes) > ROUTES_KEPT:
            self._routes.popitem(last=False)
        if seen is None or seen[1] == partition:
            return
        self.metrics.misrouted.labels(topic).inc()
        if (n := self._sampled("misrouted")) is None:
            return
        from kafka.partitioner.default import murmur2

        kafkas = (murmur2(call_id.encode()) & 0x7FFFFFFF) % self.settings.kafka.topics.partitions

        def which(t: str, p: int) -> str:
            return f"{t}[{p}]" + (" (where Kafka's default partitioner puts it)" if p == kafkas else "")

        log.warning("call %s: a message on %s after one on %s: the producers of the input topics partition by call "
                    "id differently (or partitions were added to the topics, which moves the calls under way), so "
                    "with several workers a call's messages reach different ones and its join splits; give every "
                    "producer Kafka's default partitioner (murmur2 of the key: Kafka's Java client and kafka-python "
                    "use it; librdkafka's clients, confluent-kafka, Go and .NET, need partitioner=murmur2_random) "
                    "[%d so far, emostream_misrouted_messages_total]",
                    call_id, which(topic, partition), which(*seen), n)  # fmt: skip

    def _sampled(self, kind: str) -> int | None:
        """Count one more of ``kind`` (a log line about it): the count, for the first ten and then
        every 1000th, which are logged; None for the others (the metrics count them all)."""
        n = self.noted[kind] = self.noted.get(kind, 0) + 1
        return n if n <= 10 or not n % 1000 else None

    def _note_unused(self, msg: Any, why: str) -> None:
        """Log a part acked without an event (the first ten of each kind, then every 1000th; the
        metrics count them all): a newcomer who feeds a file twice sees why nothing comes back."""
        n = self._sampled(why)
        if n is None:
            return
        if why == "late":
            log.info("%s/%s: its %s part came too late (after the utterance was labelled without it, or sent "
                     "more than join.wait_s %.1f s after its first part): acked, no new event [%d so far, "
                     "emostream_late_parts_total]", msg.call_id, msg.utterance_id, msg.kind,
                     self.settings.join.wait_s, n)  # fmt: skip
        else:
            log.info("%s/%s: its %s part came again with the content it was joined with (a redelivery, or the "
                     "same part sent twice): acked without a second event; to label a call again, send it under new "
                     "call or utterance ids [%d so far, emostream_duplicate_parts_total]",
                     msg.call_id, msg.utterance_id, msg.kind, n)  # fmt: skip

    def _note_inconsistent(self, why: str) -> None:
        """Log parts of one utterance that disagree on its seq or speaker (the first ten, then every
        1000th; emostream_inconsistent_parts_total counts them all)."""
        n = self._sampled("inconsistent")
        if n is not None:
            log.warning("%s [%d so far, emostream_inconsistent_parts_total]", why, n)

    def _declare(self, call_id: str, declared: list[str] | None, partition: int) -> None:
        """Apply a call's stored declaration (:meth:`_declaration`) to a call this worker has not
        seen, before its message joins; not to one it knows meanwhile. Under ``self.lock``."""
        if declared and self.joiner.needs_declaration(call_id):
            self._absorb(self.joiner.call_started(call_id, declared, self.clock(), partition))

    async def _declaration(self, msg: Part | CallControl) -> list[str] | None:
        """A part's call's declared modalities, read for a call this worker has not seen (its 'started'
        stored them); a Redis failure is retried with backoff (the agent waits: nothing is dropped)."""
        store = self.processor.store
        if not self.joiner.needs_declaration(msg.call_id):
            return None
        result: list[str] | None = await self._retry(
            lambda: store.declared(msg.call_id), "reading the modalities a call declared"
        )
        return result

    async def _retry(self, call: Callable[[], Any], what: str, max_backoff: float = 5.0) -> Any:
        """``call()``, retried with backoff while Redis fails; the first success after a failure says so."""
        delay, since = 0.25, None
        while True:
            try:
                result = await call()
            except Exception as exc:
                since = time.monotonic() if since is None else since
                log.warning("Redis failed %s (%s); retrying in %.2f s", what, _describe(exc), delay)
                self.metrics.stage_errors.labels("redis").inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_backoff)
                continue
            if since is not None:
                log.info("Redis works again: %s succeeded after %.1f s of failures", what, time.monotonic() - since)
            return result

    async def _backpressure(self) -> None:
        """Wait while the engine is behind, too many utterances wait for their parts, or too many
        calls wait for their close (``join.max_open_calls``: a flood of 'ended', each close a few
        Redis round trips, read faster than they close, grew them without bound: a review)."""
        max_queue = 4 * self.settings.engine.max_batch
        cap = self.settings.join.max_open_utterances
        audio_cap = self.settings.join.max_held_audio_s
        while (
            len(self.queue) >= max_queue
            or self.queued_units >= 4 * self.sizer.allowance()
            or self.joiner.open_utterances >= cap
            or self.joiner.held_audio_s >= audio_cap
            or len(self.ending) >= self.settings.join.max_open_calls
        ):
            await asyncio.sleep(0.005)

    def watch(self, now: float) -> None:
        """Every ``WATCH_S``: note whether any input partition is without a reachable leader (a
        broker killed, leadership moving). Looked at all the time, not only when a join asks
        (:meth:`behind`): while the cluster is down, often no utterance waits at all (no part gets
        through), and when the text comes back first, its audio's partition may already answer again,
        caught up to an end offset that the producers' retried writes have not reached yet.

        Also note, in :attr:`fresh`, when each input partition was last read to its end: the wall
        time of the fetch response that gave that end offset. A message read after it became readable
        after it, so an utterance whose first part it is has waited at most that long for this worker
        (:attr:`Utterance.fresh_at`, engine.shed_audio_after_s). A partition that is never read quite
        to its end (a transactional producer's commit markers count in its end offset) leaves the
        record times to say."""
        if now - self.watched_at < WATCH_S:
            return
        self.watched_at = now
        wall = self.wall()
        unreachable = set()
        for topic in self.topic_of.values():
            for partition in range(self.settings.kafka.topics.partitions):
                end = self.highwater(topic, partition)
                if end is None:
                    continue
                seen = self.read.get((topic, partition))
                if _silent(end, None if seen is None else seen[1]):
                    self.disturbed_at = now
                    unreachable.add((topic, partition))
                elif end.answered and _read_to(end, None if seen is None else seen[1]):
                    answered = wall - end.age_s  # when the broker gave this end
                    self.fresh[(topic, partition)] = max(self.fresh.get((topic, partition), answered), answered)
                if seen is not None:  # the gauge: the consumer lag of the partitions this worker reads
                    self.metrics.lag.labels(topic, str(partition)).set(max(0, end.offset - seen[1] - 1))
        self.metrics.unreachable.set(len(unreachable))
        if unreachable != self.unreachable:
            if unreachable:
                log.warning(
                    "input partitions whose leader is unreachable or not answering: %s; utterances missing a "
                    "part wait for it until %.0f s after they all answer again",
                    _partitions(unreachable), RECOVERED_GRACE_S,
                )  # fmt: skip
            else:
                log.info("every input partition's leader answers again")
            self.unreachable = unreachable

    async def tick(self) -> None:
        """Expire joins and update gauges (quick, under the lock)."""
        self.watch(self.clock())
        async with self.lock:
            self._absorb(self.joiner.expire(self.clock()))
            self.metrics.open_calls.set(self.joiner.open_calls)
            if self.analytics is not None:
                for severity, n in self.analytics.open_alerts().items():
                    self.metrics.open_alerts.labels(severity).set(n)
            self.metrics.open_utterances.set(self.joiner.open_utterances)
            self.metrics.closing_calls.set(len(self.ending))
            self.metrics.held_for_close.set(sum(map(len, self.held.values())))
            self.metrics.held_audio.set(self.joiner.held_audio_s)
            self.metrics.finished_ids.set(self.joiner.finished_ids)
            self.metrics.queued.set(len(self.queue))
            self._say_if_unacked(self.clock())
            for name in ("evicted_calls", "held_utterances"):  # the joiner's running counts, as counters
                now, seen = getattr(self.joiner, name), self.counted.get(name, 0)
                if now > seen:
                    getattr(self.metrics, name).inc(now - seen)
                    self.counted[name] = now

    def _say_if_unacked(self, now: float) -> None:
        """The age of the oldest input message read and not acked (the gauge), and a warning once a
        message has been held longer than any wait should hold it (``join.max_hold_s`` and a minute):
        the group's commits on its partition stop before it, so a restart reads everything after it
        again. None should be; the warning names it for a bug report."""
        oldest = 0.0
        for partition, lease in self.leases.items():
            head = lease.oldest()
            if head is None:
                continue
            topic, offset, at = head
            oldest = max(oldest, now - at)
            if now - at > self.settings.join.max_hold_s + 60 and (topic, partition, offset) != self._said_unacked.get(
                (topic, partition)
            ):
                self._said_unacked[(topic, partition)] = (topic, partition, offset)
                log.warning("%s[%d]@%d read %.0f s ago and not acked: the group's commits there wait for it "
                            "(join.max_hold_s %.0f s), and a restart reads again from it",
                            topic, partition, offset, now - at, self.settings.join.max_hold_s)  # fmt: skip
        self.metrics.oldest_unacked.set(oldest)

    async def pump(self) -> None:
        """Expire joins, then process every batch that is due and close ended calls, expiring joins
        again every ``TICK_S`` meanwhile (under a steady load the queue never empties: before, an
        utterance waiting for a part that never came waited for the load to stop); every
        ``QUIET_SWEEP_S``, end the calls gone quiet (:meth:`_end_quiet`)."""
        await self.tick()
        if self.idle_end_s and self.clock() - self.swept_at >= QUIET_SWEEP_S:
            await self._end_quiet()
        if self.awaiting_start:
            await self._let_go_unstarted()
        ticked = self.clock()
        while await self._step():
            if self.clock() - ticked >= TICK_S:
                await self.tick()
                if self.awaiting_start:  # a steady load keeps this loop going
                    await self._let_go_unstarted()
                ticked = self.clock()

    def read_through(self, partition: int) -> float:
        """The time (as the record times tell it) up to which every input topic of ``partition`` is
        read, so that a call of it whose last part was sent before and whose next was not sent by then
        has sent nothing for that long: now (the wall clock) for a topic read to its end (past what
        this worker has read and past the group's committed offset: a topic nothing was read from
        since a restart may still hold a backlog that waits for the agent), else the record time of
        the latest record read there (under a steady load the topics are never read to their end:
        before, no call was ended then; the latest, not the largest: one record stamped far ahead
        would lift the largest for good, and the calls whose next parts wait in a backlog be ended).
        -inf: not known (within ``NOTHING_READ_GRACE_S`` of getting the partition, while a leader is
        unreachable or within ``RECOVERED_GRACE_S`` after one was, see :meth:`behind`; a backlog not
        read from yet). A topic whose position has not grown for ``join.max_stall_s``
        counts as read to its end (as in :meth:`behind`: an end offset that counts records that never
        come, such as a transactional producer's commit markers)."""
        now = self.clock()
        if partition not in self.assigned_at or now - self.assigned_at[partition] < NOTHING_READ_GRACE_S:
            return float("-inf")
        if now - self.disturbed_at < RECOVERED_GRACE_S:
            return float("-inf")
        through = self.wall()
        for topic in self.topic_of.values():
            end = self.highwater(topic, partition)
            if end is None:
                continue  # the end not known: no sign of a backlog
            if not end.reachable:
                return float("-inf")
            seen = self.read.get((topic, partition))
            position = max(seen[1] + 1 if seen is not None else 0, end.committed or 0)
            still = now - (seen[2] if seen is not None else self.assigned_at[partition])
            if position >= end.offset or still >= self.settings.join.max_stall_s:
                continue
            if seen is None:
                return float("-inf")
            through = min(through, self.read_latest.get((topic, partition), seen[0]))
        return through

    async def _end_quiet(self) -> None:
        """End the calls of this worker's partitions that sent no part for ``join.idle_end_s`` and
        got no 'ended' (a platform that lost it, a recorder that crashed) as if their 'ended' had
        come: their final revisions and summary go out (``ended_by: idle``) and their open alerts
        clear (before, nothing did: the supervisor saw the call's alert open until its state expired).
        Each batch stores when its calls last sent a part (a record time) in Redis by partition
        (:meth:`ContextStore.touch`), so a worker that restarted or took the partition over ends them
        too. A call counts as quiet once its partition is read through ``join.idle_end_s`` past that
        (:meth:`read_through`), not once the clock is: a backlog may hold its next parts. A part of
        a call after this reopens it, labelled without its earlier context, as a part read after a
        call closed does (README: Calls that end)."""
        now = self.wall()
        self.swept_at = self.clock()
        found: dict[int, list[tuple[str, float]]] = {}
        try:
            for partition in sorted(self.assigned_at):
                # (a call quiet for redis.ttl_s: its state expired, and the join forgot it then)
                await self.processor.store.forget_quiet(partition, now - self.settings.redis.ttl_s)
                through = self.read_through(partition)
                if through > float("-inf"):
                    quiet = await self.processor.store.quiet(partition, through - self.idle_end_s, QUIET_PAGE)
                    if quiet:
                        found[partition] = quiet
            # (closed before and reopened by a part after their 'ended': this worker may not remember)
            closed_before = await self.processor.store.closed_before([c for q in found.values() for c, _ in q])
        except Exception as exc:  # Redis down: the batches say so and retry; this looks again later
            log.warning("looking for calls gone quiet failed (%s); looking again in %.0f s", _describe(exc),
                        QUIET_SWEEP_S)  # fmt: skip
            self.metrics.stage_errors.labels("redis").inc()
            return
        closed_here: dict[int, list[str]] = {}
        async with self.lock:
            for partition, quiet in found.items():
                if partition not in self.assigned_at:
                    continue  # revoked meanwhile: its next owner looks
                cutoff = self.read_through(partition) - self.idle_end_s  # (again: messages came meanwhile)
                for call_id, last in quiet:
                    if last > cutoff:
                        continue
                    if call_id in self.ending or call_id in self.held or call_id in self.awaiting_start:
                        continue  # ending already, or its messages wait for an earlier close
                    if call_id in self.letting_go or call_id in self.starting:
                        continue  # its held messages are being joined
                    if self.reading_key == call_id.encode():
                        continue  # a message of it is being read (a 'started' waiting for Redis, say)
                    if self.joiner.has_ended(call_id) or call_id in closed_before:  # closed (here, or by a
                        # worker before a restart or a rebalance) and reopened by a part read late: as before,
                        # left to its TTL (it had its 'ended': no stand-in end, no "no 'ended'" warning)
                        closed_here.setdefault(partition, []).append(call_id)
                        continue
                    if self.joiner.active(call_id, self.clock(), self.idle_end_s):
                        continue  # a part read lately, not labelled yet (waiting, queued, or its batch not stored)
                    self._stand_in_quiet_end(call_id, partition)
        for partition, call_ids in closed_here.items():
            with contextlib.suppress(Exception):  # looked at again at the next sweep
                await self.processor.store.untrack(partition, call_ids)

    def _stand_in_quiet_end(self, call_id: str, partition: int) -> None:
        """End a call gone quiet (:meth:`_end_quiet`) as if its 'ended' had come now, at the last
        offset of its control partition that this worker has handled or the group committed (a
        'started' using the id again comes after it: one fetched but not handled yet is no replay).
        Under ``self.lock``."""
        control = self.settings.kafka.topics.control
        offset = self.read.get((control, partition), (0.0, -1, 0.0))[1]
        end = self.highwater(control, partition)
        if end is not None and end.committed is not None:
            offset = max(offset, end.committed - 1)
        lease = self.leases.setdefault(partition, Lease())
        self.ending.setdefault(call_id, []).append(Receipt(control, partition, offset, _NoAck(True, "idle"), lease))
        # no record time: a part of it sent later is joined (reopening the call), never refused as after its end
        self._absorb(self.joiner.call_ended(call_id, self.clock(), partition, None, quiet=True))

    async def watching(self) -> None:
        """:meth:`watch` in a task of its own: the pump may wait for seconds on a publish to a
        partition whose leader is gone (the CI's cluster scenario at 7be09c1: the outage went
        unnoticed while the pump was stuck, and the held joins went out without their audio)."""
        while True:
            since = self.processor.computing_since
            if since is None or time.monotonic() - since < ENGINE_STUCK_S:
                self.metrics.beat()  # a batch wedged in the engine stops the heartbeat: /healthz fails
            try:
                self.watch(self.clock())
            except Exception:  # a private path of the consumer failing must not end the watch
                log.exception("watching the input partitions failed")
            await asyncio.sleep(WATCH_S / 2)

    async def run(self, interval: float = 0.01) -> None:
        """The pump loop (one task per worker), with :meth:`watching` beside it."""
        watcher = asyncio.create_task(self.watching())
        self.metrics.ready = True
        try:
            await self._pump_loop(interval)
        finally:
            self.metrics.ready = False
            watcher.cancel()

    async def _pump_loop(self, interval: float) -> None:
        while True:
            try:
                await self.pump()
            except Exception:  # never let the loop die; the failing batch stays queued
                log.exception("pump failed")
            await asyncio.sleep(interval)

    def _mark_read(self, topic: str, partition: int, offset: int, timestamp: float | None) -> None:
        """A message is done with (joined, controlling or dead-lettered): the partition is read past it.
        (Its time read to is the largest record time read there: one record of a producer whose
        clock is far ahead lifts it for good, and a backlog behind that record is then not waited
        for. Not moving it for records stamped ahead of this worker's clock was tried, 2026-12-07,
        and undone: a producer whose clock ran ahead by more than the margin then held every
        utterance missing a part for join.max_hold_s, and its call's close with it.)"""
        if timestamp is not None:
            ts, last, advanced_at = self.read.get((topic, partition), (float("-inf"), -1, float("-inf")))
            if offset > last:
                last, advanced_at = offset, self.clock()
                self.read_latest[(topic, partition)] = timestamp
            self.read[(topic, partition)] = (max(ts, timestamp), last, advanced_at)

    def behind(self, modality: str, partition: int, until: float) -> bool:
        """Whether ``modality``'s input partition has been read only up to before record time
        ``until`` and still has messages to read (a backlog: its part may be among them).

        A partition nothing has been read from since this worker got it counts as behind only for
        ``NOTHING_READ_GRACE_S`` (the consumer fetches every partition it has, so a backlog shows
        within that; past it, its messages are older ones, already committed). A partition whose
        read offset has not grown for ``join.max_stall_s`` is not behind either (stuck, or its end
        offset counts records that never come): however long a backlog takes to read (overload),
        the hold lasts while it is being read. A partition whose broker has not answered a fetch
        for ``UNANSWERED_S``, or whose leader is unknown or not connected (killed, leadership
        moving), is behind: its end offset is stale and its part may be past it (the stall rule
        bounds this too). After any input partition was seen so (here or by :meth:`watch`), every
        partition not read past ``until`` is behind for ``RECOVERED_GRACE_S``: the producers'
        retried writes reach the new or restarted leader after this consumer does, and a rebalance
        the outage caused leaves partitions not read yet. A partition read to its end but only up to
        before ``until``, and read further within the last ``wait_s``, is behind too: it is flowing,
        and its part is most likely in flight, produced but not yet readable (the CI's cluster
        scenario before any fault: a replica set slow to acknowledge kept one audio partition 1.5-2 s
        behind the text, and its utterances went without their audio). A partition that stops
        flowing ends this within ``wait_s``; producers' clocks skewed by S hold an utterance whose
        part never comes up to S longer. Near the open-utterance cap, or that of calls ending, nothing is
        behind: holding more would stop the reading (backpressure) that could bring the parts."""
        topic = self.topic_of.get(modality)
        j = self.settings.join
        if (
            topic is None
            or self.joiner.open_utterances >= 0.8 * j.max_open_utterances
            or len(self.ending) >= 0.8 * j.max_open_calls
        ):
            return False
        if self.joiner.held_audio_s >= 0.8 * j.max_held_audio_s:  # the voices held would stop the reading too
            return False
        now = self.clock()
        disturbed = now - self.disturbed_at < RECOVERED_GRACE_S
        seen = self.read.get((topic, partition))
        if seen is None:
            return disturbed or now - self.assigned_at.get(partition, now) < NOTHING_READ_GRACE_S
        ts, offset, advanced_at = seen
        if ts >= until or now - advanced_at >= self.settings.join.max_stall_s:
            return False
        end = self.highwater(topic, partition)
        if end is not None and _silent(end, offset):
            self.disturbed_at = now
            return True
        if disturbed:
            return True
        if end is not None and now - advanced_at < self.settings.join.wait_s:
            return True  # still flowing, not yet up to this utterance's time: its part is most likely in flight
        return end is not None and offset + 1 < end.offset

    def reading(self, modality: str, utt: Utterance) -> tuple[str, bool]:
        """Why nothing held ``utt`` for its ``modality`` part, for a log line: how far that part's
        partition is read, against the record time up to which the part would have counted; and
        whether it is read to its end (the part was not sent, or not in time)."""
        topic = self.topic_of.get(modality)
        if topic is None:
            return f"no input topic for {modality}", False
        now = self.clock()
        ts, offset, advanced_at = self.read.get((topic, utt.partition), (float("-inf"), -1, float("-inf")))
        end = self.highwater(topic, utt.partition)
        where = f"{topic}[{utt.partition}]"
        caught_up = False
        if offset < 0:
            said = f"nothing read from {where} yet"
        else:
            upto = f"read through offset {offset}" + ("" if end is None else f", whose next offset is {end.offset}")
            if end is not None and offset + 1 >= end.offset:
                upto, caught_up = upto + " (read to its end)", True
            until = (utt.first_ts or 0.0) + self.settings.join.wait_s
            lag = until - ts  # > 0: the newest record read is older than the last moment the part counted
            when = f"{lag:.1f} s older" if lag >= 0 else f"{-lag:.1f} s newer"
            said = (f"{where} {upto}, its newest record read {when} than this utterance's first part + wait_s, "
                    f"last advanced {now - advanced_at:.1f} s ago")  # fmt: skip
        if end is not None:
            said += f"; its end offset answered {end.age_s:.1f} s ago" + (
                "" if end.reachable else ", leader unreachable"
            )
        if self.disturbed_at > float("-inf"):
            said += f"; last disturbance {now - self.disturbed_at:.1f} s ago"
        return said + (": the part was not sent, or not within the wait" if caught_up else ""), caught_up

    def assigned(self, partitions: set[int]) -> None:
        """The consumer got ``partitions`` (input partitions): from now on, one that nothing is read
        from counts as behind only for ``NOTHING_READ_GRACE_S`` (see :meth:`behind`). Before, that grace
        started at the partition's first message: the first utterance of a call on a partition whose
        audio topic nobody writes to (a text-only platform) waited the grace, 5 s, not ``join.wait_s``."""
        now = self.clock()
        if self.analytics is not None:  # the open-alerts gauge keeps the calls that stay here
            self.analytics.keep_open(partitions)
        read = {p for _, p in self.read}
        for p in partitions:
            if p in read:
                self.assigned_at.setdefault(p, now)
            else:  # nothing read from it yet: its grace starts now (a time left from before is not this assignment's)
                self.assigned_at[p] = now

    async def revoke(self, partitions: set[int]) -> None:
        """Let go of ``partitions`` (see the module doc): drop their pending work unacked. Waits for
        the batch in the engine, if any (seconds), so nothing of theirs is published afterwards."""
        async with self.busy, self.lock:
            for p in partitions:
                lease = self.leases.pop(p, None)
                if lease is not None:
                    lease.valid = False
            queued = [u for u in self.queue if u.partition in partitions]
            self.queue = [u for u in self.queue if u.partition not in partitions]
            self._count_queue()
            pending = self.joiner.forget(partitions, queued)
            for topic, partition in [tp for tp in self.read if tp[1] in partitions]:
                with contextlib.suppress(KeyError):  # no longer this worker's lag to report
                    self.metrics.lag.remove(topic, str(partition))
            self.read = {tp: v for tp, v in self.read.items() if tp[1] not in partitions}
            self.read_latest = {tp: v for tp, v in self.read_latest.items() if tp[1] not in partitions}
            self.fresh = {tp: v for tp, v in self.fresh.items() if tp[1] not in partitions}
            self.assigned_at = {p: t for p, t in self.assigned_at.items() if p not in partitions}
            gone = {c for c, receipts in self.ending.items() if any(r.partition in partitions for r in receipts)}
            self.closing = {c: t for c, t in self.closing.items() if c not in gone}
            for call_id in gone:
                del self.ending[call_id]
            self.held = {c: h for c, h in self.held.items() if not h or h[0].receipt.partition not in partitions}
            self.awaiting_start = {c: t for c, t in self.awaiting_start.items() if c in self.held}
            # the calls this worker held may be another's now and come back changed: read them afresh
            self.processor.forget_cached()
            if self.analytics is not None:
                self.analytics.forget_cached()
        self.metrics.revoked_dropped.inc(pending + len(queued))
        log.info(
            "partitions %s revoked: %d half-joined and %d queued utterances left to their next owner",
            sorted(partitions), pending, len(queued),
        )  # fmt: skip

    async def _step(self, force: bool = False) -> bool:
        """One unit of work: a due batch, or else one closed call. False when nothing was due."""
        async with self.lock:
            now = self.clock()
            if now < self.retry_at:
                return False
            batch: list[Utterance] = []
            if self.queue:
                oldest = min(u.ready_at or now for u in self.queue)
                if (
                    force
                    or self.sizer.full(self.queue, self.queued_units)
                    or now - oldest >= self.settings.engine.max_wait_s
                    or any(u.call_id in self.closing for u in self.queue)
                ) and not self._close_first(oldest):
                    batch = self._next_batch()
                    self.queue = self.queue[len(batch) :]
                    self._count_queue()
            call_id = None if batch or not self.closing else next(iter(self.closing))
        async with self.busy:  # a revoke waits for this unit of work, so it never publishes after one
            if batch:
                self.closes_in_turn = 0
                return await self._process(batch)
            if call_id is None:
                return False
            self.closes_in_turn += 1
            closed = await self._close(call_id)
            if not closed and call_id in self.closing:  # tried again after the others (one that always fails
                self.closing[call_id] = self.closing.pop(call_id)  # held them all up)
        if call_id in self.held and call_id not in self.ending:  # the id used again meanwhile: the new call
            await self._let_go(call_id)  # outside ``busy``: its Redis retries must not hold up a revoke
        return closed

    def _close_first(self, oldest: float) -> bool:
        """Whether the first call waiting to close goes before a batch: it has no utterance in the
        queue and has waited longer than the queue's oldest. (Under a steady load a batch was always
        due, and closes waited for the load to stop: the calls' summaries late, their 'ended's
        unacked, the control partition's commits stopped before them.) At most
        :data:`CLOSES_BEFORE_A_BATCH` in a row: an operator's trial sent 2000 'ended's of calls never
        started, and a talking call's utterances waited for all their closes (2.7 s)."""
        if not self.closing or "closing calls" in self.failing_since:  # (one failing again and again: the
            return False  # batches go on, as before; the closes are tried when none is due)
        if self.closes_in_turn >= CLOSES_BEFORE_A_BATCH:
            return False
        first, since = next(iter(self.closing.items()))
        return since < oldest and all(u.call_id != first for u in self.queue)

    def _control(
        self, msg: CallControl, receipt: Receipt, now: float, timestamp: float | None = None, again: bool = False
    ) -> None:
        """A call's 'started' (``again``: its id's previous call closed) or 'ended'."""
        if msg.event == "started":
            modalities: list[str] = list(msg.modalities or [])
            if (
                msg.modalities is not None  # (an empty list too: it declares nothing)
                and not set(modalities) & set(self.joiner.inputs)
                and self._sampled("declared-none") is not None
            ):
                declared = "+".join(modalities) if modalities else "no modality ([])"
                log.warning("call %s declared %s, none of which this model takes (it takes %s): its utterances "
                            "wait for the default, join.default_modalities %s", msg.call_id, declared,
                            "+".join(self.joiner.inputs), "+".join(self.joiner.default) or "none")  # fmt: skip
            self._absorb(
                self.joiner.call_started(
                    msg.call_id, modalities, now, receipt.partition, closed_before=again, ts=timestamp
                )
            )
            receipt.ack()
            return
        self.ending.setdefault(msg.call_id, []).append(receipt)
        self._absorb(self.joiner.call_ended(msg.call_id, now, receipt.partition, timestamp))

    async def _close(self, call_id: str) -> bool:
        """All of a closed call's utterances are labelled: final revisions, free its window, ack 'ended'."""
        receipts = list(self.ending.get(call_id, []))
        if not receipts or not all(r.lease.valid for r in receipts):
            async with self.lock:  # revoked: its next owner closes it
                self.closing.pop(call_id, None)
            return True
        stood_in = [r.handle for r in receipts if isinstance(r.handle, _NoAck)]
        # what ended it: its 'ended' (one came, maybe while a stand-in waited), its id's next 'started', or quiet
        ended_by = "ended" if len(stood_in) < len(receipts) else stood_in[0].why
        try:
            final = await self.processor.close(call_id)
            await self._publish(final)
            if self.analytics is not None:  # the summary, and the call's open alerts cleared
                end = await self.analytics.end(call_id, [e for e, _ in final.events], ended_by=ended_by)
                await self._send_all(end.out)
                # forgotten before the release: after a crash in between, the call is closed again
                # (a stood-in 'ended' has no message to replay; its 'started' finds no close mark)
                await self.analytics.forget(call_id)
            await self.processor.release(
                [call_id], {call_id: max(r.offset for r in receipts)}, {call_id: receipts[0].partition}
            )
        except Exception:
            self._failed(f"closing call {call_id}", "close", "closing calls")
            return False
        self._recovered("closing calls")
        spoke = any(h.spoke for h in stood_in) or self.joiner.said_something(call_id)
        if ended_by == "idle" and spoke:  # no part for join.idle_end_s, and no 'ended'
            self.metrics.calls_without_end.inc()
            if (n := self._sampled("quiet")) is not None:
                log.warning("call %s: no part for %.0f s (join.idle_end_s) and no 'ended': ended as if its 'ended' "
                            "had come (its final revisions, its summary with ended_by idle, its alerts cleared); a "
                            "part of it read later reopens it, labelled without its earlier context; a call's end "
                            "comes as 'ended' on %s (README, Calls that end) [%d so far]", call_id, self.idle_end_s,
                            self.settings.kafka.topics.control, n)  # fmt: skip
        elif stood_in and stood_in[0].why == "started" and spoke:  # ended at its id's next 'started'
            self.metrics.calls_without_end.inc()
            if (n := self._sampled("unended")) is not None:
                log.warning("call %s: a 'started' (offset %d) came before its 'ended': the call was ended as if its "
                            "'ended' had come just before (its summary is out), and the new call starts after it "
                            "with ids of its own; a call's end comes as 'ended' on %s (README, Calls that end) "
                            "[%d so far]", call_id, max(r.offset for r in receipts) + 1,
                            self.settings.kafka.topics.control, n)  # fmt: skip
        for event, _ in final.events:
            self.metrics.events_out.labels(str(event.revision)).inc()
        async with self.lock:
            for receipt in self.ending.pop(call_id, []):
                receipt.ack()
            self.closing.pop(call_id, None)
        return True

    def _count_queue(self) -> None:
        self.queued_units = sum(units(u) for u in self.queue)

    def _absorb(self, result: JoinResult) -> None:
        for receipt in result.ack_now:
            receipt.ack()
        if result.late_parts:
            self.metrics.late_parts.inc(result.late_parts)
        if result.duplicate_parts:
            self.metrics.duplicate_parts.inc(result.duplicate_parts)
        for name in result.inconsistent:
            self.metrics.inconsistent_parts.labels(name).inc()
        if result.inconsistency is not None:
            self._note_inconsistent(result.inconsistency)
        if result.reopened is not None and (n := self._sampled("reopened")) is not None:
            log.warning("%s [%d so far]", result.reopened, n)
        for call_id in result.idle_calls:
            self.metrics.calls_without_end.inc()
            if (n := self._sampled("idle")) is not None:
                log.warning("call %s: no part for %.0f s (redis.ttl_s) and no 'ended': the worker forgets it; its "
                            "window and analytics expire from Redis with it, and its open alerts, if any, stay open (a "
                            "call's end comes as 'ended' on %s: README, Calls that end) [%d so far]", call_id,
                            self.settings.redis.ttl_s, self.settings.kafka.topics.control, n)  # fmt: skip
        for kind, lines in (("learned", result.learned), ("unlearned", result.unlearned)):
            for line in lines:
                if (n := self._sampled(kind)) is not None:
                    log.info("%s [%d so far]", line, n)
        for utt in result.ready:
            self.metrics.join_wait.observe((utt.ready_at or utt.first_at) - utt.first_at)
            missing = [m for m in utt.expected if not utt.has(m)]  # never came (a dead-lettered one did)
            for m in missing:
                self.metrics.missing.labels(m).inc()
            waited = [m for m in missing if m not in utt.not_waited]  # not those of a call that sends none
            if waited and (self.missing_logged < 20 or self.missing_logged % 100 == 0):
                said, not_sent = self.reading(missing[0], utt)
                if not_sent and self.missing_logged < 3 and self.joiner.declared(utt.call_id):
                    said += f" (the call's 'started' declared {'+'.join(utt.expected)}: a part of each is waited for)"
                elif not_sent and self.missing_logged < 3:  # the first few: what to do about it
                    said += (f" (the call is expected to send {'+'.join(utt.expected)}: a call says what it sends in "
                             "its 'started' control message (\"modalities\": [\"text\"], say); calls that send "
                             "none get join.default_modalities)")  # fmt: skip
                log.info("%s/%s goes without %s after %.1f s: %s", utt.call_id, utt.utterance_id, "+".join(missing),
                         (utt.ready_at or utt.first_at) - utt.first_at, said)  # fmt: skip
            self.missing_logged += bool(waited)
        self.queue.extend(result.ready)
        self.queued_units += sum(units(u) for u in result.ready)
        for call_id in result.ended_calls:
            self.closing.setdefault(call_id, self.clock())

    def _recovered(self, kind: str) -> None:
        """Says once that work of ``kind`` goes through again after failures (:meth:`_failed`):
        Redis or the broker back."""
        since = self.failing_since.pop(kind, None)
        if since is not None:
            log.info("%s go through again after %.1f s of failures", kind, self.clock() - since)

    def _failed(self, what: str, stage: str, kind: str = "batches") -> None:
        self.failing_since.setdefault(kind, self.clock())
        exc = sys.exc_info()[1]
        if exc is not None and _outage(exc):  # Redis or the broker away: one line a try, not a traceback
            log.warning("%s failed (%s); retrying in %.1f s", what, _describe(exc), self.backoff)
        else:
            log.exception("%s failed; retrying in %.1f s", what, self.backoff)
        self.metrics.errors.inc()
        self.metrics.stage_errors.labels(stage).inc()
        self.retry_at = self.clock() + self.backoff
        self.backoff = min(self.backoff * 2, 5.0)  # a service back up is used within seconds

    async def _process(self, batch: list[Utterance]) -> bool:
        stage = "redis"
        laps: dict[str, float] = {}
        mark = time.monotonic()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            laps[name] = now - mark
            mark = now

        try:
            # splits out utterances that fail to compute; the next batch's encoding starts beside it
            outcome = await self.processor.run(batch, ahead=self._next_batch)
            lap("compute")
            laps["read"] = outcome.read_s
            laps["compute"] = max(0.0, laps["compute"] - outcome.read_s)
            outcome = outcome.only(self._owned)  # a revoked partition's utterances: left to its next owner
            if len(batch) > outcome.replayed:  # replays are acked, not computed: their time says nothing
                # audio not encoded (the worker behind) counts as the units it holds, as take() and the
                # queue count it: while the worker sheds, the sizer learns what such a unit costs and its
                # batches take the budget; when it stops, the first batches overrun until it learns again
                computed = sum(units(u) for u in batch) * (len(batch) - outcome.replayed) / len(batch)
                self.sizer.observe(computed, laps["compute"])
                self.metrics.batch_limit.set(self.sizer.allowance())
            # and, if that one has finished, what arrived since: encoded while this publishes
            self.processor.prefetch(self._next_batch())
            await self.processor.record(outcome)  # the parts each utterance was labelled with, for replays
            lap("record")
            stage = "publish"
            await self._publish(outcome)
            lap("publish")
            if self.analytics is not None:  # published, then stored: a failure in between publishes it all again
                stage = "analytics"
                # not an utterance of a call reopened after its summary went out: that call's analytics ended
                update = await self.analytics.observe(
                    [e for e, u in outcome.events if u is None or not u.after_close],
                    {u.call_id: u.partition for _, u in outcome.events if u is not None},
                )
                await self._send_all(update.out)
                await self.analytics.commit(update)
                lap("analytics")
            stage = "redis"
            await self.processor.commit(outcome)
            if self.idle_end_s:  # when the calls last sent a part, by partition, for Worker._end_quiet
                sent_at: dict[str, tuple[int, float]] = {}
                for u in batch:
                    if self._owned(u):  # the record time of its first part (else now)
                        at = u.first_ts if u.first_ts is not None else self.wall()
                        sent_at[u.call_id] = (u.partition, max(at, sent_at.get(u.call_id, (0, at))[1]))
                await self._touch(sent_at)
            lap("commit")
            stage = "deadletter"
            for utt, why in outcome.failed:
                self.metrics.processing_failed.inc()
                await self._dead_letter_utterance(utt, why)
        except Exception:
            self._failed(f"batch of {len(batch)} utterances ({stage})", stage)
            async with self.lock:
                self.queue = [u for u in batch if self._owned(u)] + self.queue  # revoked ones: the next owner's
                self._count_queue()
            return False
        self.backoff = 0.5
        self._recovered("batches")
        for name, seconds in laps.items():
            self.metrics.batch_stage.labels(name).observe(seconds)
        self.metrics.replays.inc(outcome.replayed)
        for call_id, utterance_id, seq, top in outcome.seq_behind:
            self.metrics.seq_behind.inc()
            if (n := self._sampled("seq-behind")) is not None:
                log.warning("call %s: utterance %s has seq %d, below every utterance of the call's context window "
                            "(its highest: seq %d), so it is labelled without the call's context: a call's seq "
                            "numbers its utterances in order from its start (a transfer keeps counting; the window "
                            "keeps the highest seqs, and the call's analytics order its turns by seq) [%d so far, "
                            "emostream_seq_behind_total]", call_id, utterance_id, seq, top, n)  # fmt: skip
        self.metrics.batch_size.observe(len(batch))
        self.metrics.engine_latency.observe(outcome.engine_s)
        sent = {(u.call_id, u.utterance_id): u.first_ts for u in batch}  # record times (the producer's clock)
        for event, _ in outcome.events:
            self.metrics.events_out.labels(str(event.revision)).inc()
            if event.revision == 0:
                self.metrics.end_to_end.observe(event.timings.end_to_end_s)
                self.metrics.emotions.labels(event.label if says_something(event) else UNREAD).inc()
                ts = sent.get((event.call_id, event.utterance_id))
                if ts is not None:  # (a producer's clock ahead of the worker's: 0)
                    self.metrics.record_to_event.observe(max(0.0, event.produced_at - ts))
        async with self.lock:
            for utt in batch:
                self.metrics.utterances.labels("+".join(utt.modalities) or "none").inc()
                for modality, why in utt.ignored.items():
                    # dead-lettered ones are counted as dead letters; a model's non-inputs are no sign of bad
                    # audio; mis-declared audio and audio the worker had no time for are counted apart
                    if not why.startswith((DEAD_LETTERED, NOT_AN_INPUT, BEHIND, *MISDECLARED, OTHER_LANGUAGE)):
                        self.metrics.ignored_parts.labels(modality).inc()
                    if why.startswith(BEHIND):
                        self.metrics.shed_audio.inc()
                        self._note_shed(utt)
                    if why.startswith(MISDECLARED):
                        self._misdeclared(utt, why, used=False)
                    elif why.startswith(OTHER_LANGUAGE):
                        self._other_language(utt, why, used=False)
                for why in utt.suspect.values():  # (a transcript's notes are joined by "; ")
                    if why.startswith(OTHER_LANGUAGE):
                        self._other_language(utt, why, used=True)
                    elif why.startswith(MISDECLARED):
                        self._misdeclared(utt, why, used=True)
                    if CLIPPED in why:
                        self.metrics.clipped_audio.inc()
                    if QUIET in why:
                        self.metrics.quiet_audio.inc()
                        self._once_a_call(self._quiet_warned, utt, "audio", why[why.index(QUIET) :], True)
                    if LONG_TRANSCRIPT in why:
                        self.metrics.long_transcripts.inc()
                        self._once_a_call(self._long_warned, utt, "transcript", why, True)
                for receipt in utt.handles:
                    receipt.ack()
        return True

    async def _touch(self, calls: dict[str, tuple[int, float]]) -> None:
        """Store when the calls last sent a part (:meth:`ContextStore.touch`); a failure loses no
        event (the batch is out): those calls are watched again from their next batch."""
        try:
            await self.processor.store.touch(calls)
        except Exception as exc:
            self.metrics.stage_errors.labels("redis").inc()
            log.warning("storing when %d calls last spoke failed (%s): they are watched for going quiet (join."
                        "idle_end_s) again from their next batch", len(calls), _describe(exc))  # fmt: skip

    def _misdeclared(self, utt: Utterance, why: str, used: bool) -> None:
        """Count audio whose format sounds mis-declared, and say so once a call (a producer's
        setting, not one utterance's fault)."""
        self.metrics.misdeclared_audio.labels(mistake_of(why)).inc()
        self._once_a_call(self._format_warned, utt, "audio", why, used)

    def _other_language(self, utt: Utterance, why: str, used: bool) -> None:
        """Count a transcript in another language than the model reads, and say so once a call."""
        self.metrics.other_language_texts.labels("true" if used else "false").inc()
        self._once_a_call(self._language_warned, utt, "transcript", f"{why} (engine.language_check)", used)

    def _note_shed(self, utt: Utterance) -> None:
        """Log, at most once a minute, that audio goes unencoded while the worker catches up (the
        count since the line before; emostream_shed_audio_total has every one)."""
        self._shed += 1
        now = time.monotonic()
        if self._shed_logged_at is not None and now - self._shed_logged_at < 60:
            return
        now_wall, age = self.wall(), ""
        ago = sent_ago(utt, now_wall)
        if ago is not None:  # the clock that said so (Utterance.fresh_at: the worker's reading)
            producer = utt.first_ts is not None and now_wall - utt.first_ts <= ago
            age = f", sent {ago:.0f} s ago by " + ("the producer's clock" if producer else "this worker's reading")
        log.warning(
            "the worker is behind: the audio of %d utterance%s not encoded%s, the words decide (the last: call %s "
            "utterance %s%s; engine.shed_audio_after_s %g s); emostream_shed_audio_total counts them, and the "
            "next such line, a minute on at the earliest, those from here",
            self._shed,
            "" if self._shed == 1 else "s",
            "" if self._shed_logged_at is None else " since the last such line",
            utt.call_id,
            utt.utterance_id,
            age,
            self.processor.shed_audio_after_s,
        )
        self._shed, self._shed_logged_at = 0, now

    @staticmethod
    def _once_a_call(warned: set[str], utt: Utterance, part: str, why: str, used: bool) -> None:
        """Log a call's suspect part the first time ``warned`` (at most 10,000 calls) meets the call."""
        if utt.call_id in warned:
            return
        if len(warned) >= 10_000:
            warned.clear()
        warned.add(utt.call_id)
        log.warning("call %s: %s of utterance %s %s: %s", utt.call_id, part, utt.utterance_id,
                    "used all the same" if used else "not used", why)  # fmt: skip

    def _next_batch(self) -> list[Utterance]:
        """The utterances the next batch takes from the queue, as the sizer allows now."""
        return self.queue[: self.sizer.take(self.queue)]

    @staticmethod
    def _owned(utt: Utterance) -> bool:
        """Whether this worker still holds the partition the utterance was read from."""
        return all(r.lease.valid for r in utt.handles if isinstance(r, Receipt))

    async def _publish(self, outcome: BatchOutcome) -> None:
        topic = self.settings.kafka.topics.emotions
        pending = [await self.send(topic, ev.call_id.encode(), ev.to_bytes(), ev.event_id) for ev, _ in outcome.events]
        await asyncio.gather(*pending)

    async def _send_all(self, out: list[Outgoing]) -> None:
        """Publish the analytics stage's alerts and call reports (each keyed by its call)."""
        topics = self.settings.kafka.topics
        pending = [await self.send(getattr(topics, o.topic), o.key, o.value, o.event_id) for o in out]
        await asyncio.gather(*pending)
        for o in out:
            if isinstance(o.message, AlertEvent):
                self.metrics.alerts.labels(o.message.rule, o.message.severity, o.message.state).inc()

    # -- dead letters ---------------------------------------------------------------------------
    async def _reject(
        self,
        exc: InvalidMessage,
        receipt: Receipt,
        key: bytes | None,
        value: bytes | None,
        msg: Any = None,
        ack: bool = True,
    ) -> None:
        """Dead-letter one input message and ack it unless ``ack`` is False (naming its call and
        utterance if it parsed)."""
        raw = value or b""
        payload, truncated = payload_copy(raw, self.settings.limits)
        record = DeadLetter(  # named by what parsed: the message, else its ids that are valid on their own
            call_id=getattr(msg, "call_id", None) or exc.call_id,
            utterance_id=getattr(msg, "utterance_id", None) or exc.utterance_id,
            reason=exc.reason,
            detail=exc.detail,
            source_topic=receipt.topic,
            partition=receipt.partition,
            offset=receipt.offset,
            key=_key_text(key),
            payload=payload,
            payload_truncated=truncated,
            payload_bytes=len(raw),
        )
        n = self._sampled(f"deadletter:{exc.reason}")  # a producer sending garbage must not fill the disk
        if n is not None:
            log.warning(
                "dead letter %s from %s[%d]@%d%s: %s [%d of this reason so far; the first ten and every 1000th "
                "are logged, emostream_deadletters_total counts them all]",
                exc.reason,
                receipt.topic,
                receipt.partition,
                receipt.offset,
                "" if record.call_id is None else f" ({record.call_id}/{record.utterance_id or '-'})",
                exc.detail,
                n,
            )
        await self._send_dead_letter(record, key)
        if ack:
            receipt.ack()

    async def _dead_letter_utterance(self, utt: Utterance, why: str) -> None:
        """An utterance the encoders or the engine failed on (its parts are acked with the batch)."""
        sources = [r.source for r in utt.handles if isinstance(r, Receipt) and not r.rejected]  # the parts it used
        first = sources[0] if sources else SourceRef(topic="", partition=-1, offset=-1)
        record = DeadLetter(
            reason="processing_failed",
            detail=one_line(why),
            source_topic=first.topic,
            partition=first.partition,
            offset=first.offset,
            key=utt.call_id,
            call_id=utt.call_id,
            utterance_id=utt.utterance_id,
            parts=sources,
        )
        log.warning(
            "dead letter processing_failed: call %s utterance %s (%s[%d]@%d): %s",
            utt.call_id, utt.utterance_id, first.topic, first.partition, first.offset, why,
        )  # fmt: skip
        await self._send_dead_letter(record, utt.call_id.encode())

    async def _send_dead_letter(self, record: DeadLetter, key: bytes | None, max_backoff: float = 30.0) -> None:
        """Send until the broker has it: a dead letter is never dropped. After a failure the copy
        of the payload is left out (a broker that refuses the record's size refuses it every time)."""
        topic = self.settings.kafka.topics.deadletter
        delay = 0.5
        while True:
            try:
                fut = await self.send(topic, key[:1024] if key else key, record.to_bytes(), None)
                await fut
                break
            except Exception as exc:
                log.warning("dead letter to %s failed (%s); retrying in %.1f s", topic, _describe(exc), delay)
                self.metrics.stage_errors.labels("deadletter").inc()
                if record.payload:
                    record = record.model_copy(update={"payload": "", "payload_truncated": True})
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_backoff)
        self.metrics.deadletters.labels(record.reason).inc()


def payload_copy(raw: bytes, limits: LimitSettings) -> tuple[str, bool]:
    """The base64 copy of a bad message a dead letter carries, and whether it was cut.

    ``full`` still stays under the broker's message size (the record must be accepted)."""
    if limits.deadletter_payload == "none":
        return "", bool(raw)
    keep = limits.deadletter_payload_bytes
    if limits.deadletter_payload == "full":
        keep = max(0, (limits.max_message_bytes - 8192) * 3 // 4)
    return base64.b64encode(raw[:keep]).decode(), len(raw) > keep


def _starts(item: Held) -> bool:
    return isinstance(item.msg, CallControl) and item.msg.event == "started"


def _key_text(key: bytes | None) -> str | None:
    return key.decode("utf-8", "replace")[:_MAX_KEY_CHARS] if key else None


def _outage(exc: BaseException) -> bool:
    """Whether ``exc`` is a service away or slow (Redis, the broker), not a bug: said in one line."""
    import socket

    from aiokafka.errors import KafkaError as AioKafkaError
    from faust.exceptions import NotReady  # the producer stopping under a batch, at a SIGTERM
    from kafka.errors import KafkaError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    outages = (ConnectionError, TimeoutError, socket.gaierror, RedisConnectionError, RedisTimeoutError, AioKafkaError,
               KafkaError, NotReady)  # fmt: skip
    return isinstance(exc, outages)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
