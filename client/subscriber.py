"""Read what emostream publishes, as typed objects, without the duplicates.

Kinds of record and their topics (``kafka.topics``): ``events`` (:class:`EmotionEvent`, one per
utterance and revision), ``alerts`` (:class:`AlertEvent`: an escalation alert raised, updated or
cleared), ``reports`` (:class:`CallReport`: a call's running and final summary), ``deadletters``
(:class:`DeadLetter`: an input the workers could not use, and why).

Delivery is at least once: after a worker restart or a rebalance the same record can come again,
under the same ``event_id`` (a dead letter: the same source topic, partition and offset);
:class:`Tracker` drops it. An utterance's provisional event (revision 0) is later replaced by its
revision (``revision`` 1, labelled with the utterances after it too): each :class:`Received` event
carries ``previous``, the revision it replaces if that was seen, and ``stale`` is set on a revision
older than one already seen (the subscriber skips those unless ``keep_stale``).
:meth:`Tracker.latest` gives an utterance's newest revision. A call id used again after its call
ended is another call (its events' ids name it ``<call>~g<generation>``): its events neither
replace nor are replaced by the earlier call's.

:class:`Subscriber` reads without a consumer group (it never commits and never joins the
workers' group): every subscriber sees every record, from now or from the beginning.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from streams.errors import ServiceUnavailable
from streams.schemas import AlertEvent, CallReport, DeadLetter, EmotionEvent, read_published
from streams.settings import Settings, TopicSettings

log = logging.getLogger("emostream.client")
Kind = Literal["events", "alerts", "reports", "deadletters"]
Record = EmotionEvent | AlertEvent | CallReport | DeadLetter
KINDS: tuple[Kind, ...] = ("events", "alerts", "reports", "deadletters")
_MODELS: dict[Kind, type[BaseModel]] = {
    "events": EmotionEvent, "alerts": AlertEvent, "reports": CallReport, "deadletters": DeadLetter,
}  # fmt: skip


def topic_of(topics: TopicSettings, kind: Kind) -> str:
    return {"events": topics.emotions, "alerts": topics.alerts, "reports": topics.calls,
            "deadletters": topics.deadletter}[kind]  # fmt: skip


@dataclass(frozen=True)
class Received:
    kind: Kind
    record: Record
    previous: EmotionEvent | None = None  # an event's revision that this one replaces, if seen
    stale: bool = False  # an event older than a revision already seen

    @property
    def call_id(self) -> str | None:
        if isinstance(self.record, DeadLetter):  # its call when it parsed, else its Kafka key
            return self.record.call_id or self.record.key
        return self.record.call_id


def _names(values: Iterable[str], what: str) -> list[str]:
    """``values`` as a list of names; one name given as a string is that name, not its characters."""
    if isinstance(values, str):
        return [values]
    out = list(values)
    if not all(isinstance(v, str) for v in out):
        raise TypeError(f"{what} must be names (strings), not {out!r}")
    return out


def call_instance_of(event: EmotionEvent) -> str:
    """The call an event belongs to as its ``event_id`` names it: its ``call_id``, or for a call id
    used again ``<call>~g<generation>`` (:func:`streams.schemas.event_id`; ids may hold ':')."""
    tail = re.compile(rf":{re.escape(event.utterance_id)}:r{event.revision}:[0-9a-f]{{16}}$")
    found = tail.search(event.event_id)
    return event.event_id[: found.start()] if found and found.start() > 0 else event.call_id


class Tracker:
    """Parses, filters by call, deduplicates and relates revisions; no Kafka in here.
    ``memory`` bounds the event ids and the utterances' latest events remembered (oldest forgotten
    first): each remembered event holds about 5 KB, so the default of 100,000 can reach some 500
    MB; a dashboard that needs only recent calls does with less (a redelivery comes within the
    workers' commit interval, a revision a few utterances after its event)."""

    def __init__(
        self,
        topics: TopicSettings | Mapping[str, Kind],
        call_ids: Iterable[str] | None = None,
        memory: int = 100_000,
        default: Kind | None = None,
    ) -> None:
        """``topics``: the settings' topic names, or a topic -> kind mapping; ``default``: the kind
        of any other topic (None: records of other topics are not ours)."""
        self.kinds = dict(topics) if isinstance(topics, Mapping) else {topic_of(topics, k): k for k in KINDS}
        self.default = default
        self.call_ids = None if call_ids is None else set(_names(call_ids, "call_ids"))
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
            raise ValueError(f"memory must be a count of 1 or more, not {memory!r}")
        self.memory = memory
        self.invalid = 0  # records that failed their schema (skipped)
        self.duplicates = 0
        self.errors: list[str] = []  # the first few schema errors, with their topic
        self.last_error = ""  # the latest one's (without its topic)
        self._seen: OrderedDict[str, None] = OrderedDict()  # event ids, and dead letters' sources
        self._latest: OrderedDict[tuple[str, str], EmotionEvent] = OrderedDict()  # (call instance, utterance)
        self._instance: OrderedDict[str, str] = OrderedDict()  # call id -> its newest instance seen

    def accept(self, topic: str, value: bytes | None) -> Received | None:
        """The record as a :class:`Received`, or None: not one of ours, another call's, invalid
        (counted in :attr:`invalid`) or a duplicate (counted in :attr:`duplicates`)."""
        kind = self.kinds.get(topic, self.default)
        if kind is None:
            return None
        try:
            record: Any = read_published(_MODELS[kind], value or b"")
        except ValidationError as exc:
            self.invalid += 1
            self.last_error = exc.errors()[0]["msg"]
            if len(self.errors) < 5:
                self.errors.append(f"{topic}: {self.last_error}")
            return None
        got = Received(kind, record)
        if self.call_ids is not None and got.call_id not in self.call_ids:
            return None
        if isinstance(record, DeadLetter):  # no event id: a fact about one input message, named by its source
            if record.partition < 0 or record.offset < 0:  # no single source (a failed utterance's): each its own
                return got
            seen = f"\x1f{record.source_topic}\x1f{record.partition}\x1f{record.offset}"
        else:
            seen = record.event_id
        if seen in self._seen:
            self.duplicates += 1
            return None
        self._remember(self._seen, seen, None)
        if not isinstance(record, EmotionEvent):
            return got
        instance = call_instance_of(record)
        key = (instance, record.utterance_id)
        previous = self._latest.get(key)
        if previous is not None and previous.revision > record.revision:
            return Received(kind, record, previous, stale=True)
        self._remember(self._latest, key, record)
        self._remember(self._instance, record.call_id, instance)  # (the most recently heard stay)
        return Received(kind, record, previous)

    def latest(self, call_id: str, utterance_id: str) -> EmotionEvent | None:
        """The newest revision seen of an utterance's event; of the newest call under ``call_id``
        if the id was used again (``call_id`` may also name one: ``<call>~g<generation>``)."""
        return self._latest.get((self._instance.get(call_id, call_id), utterance_id))

    def _remember(self, store: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        store[key] = value
        store.move_to_end(key)
        if len(store) > self.memory:
            store.popitem(last=False)


def poll_through(consumer: Any, timeout_ms: int) -> tuple[dict[Any, list[Any]], list[str]]:
    """``consumer.poll``, and for each partition whose position is no longer on the broker, the
    position moved to its oldest record, with a note saying what was lost: records that expired under
    the topic's retention while this reader was behind, or a topic recreated shorter than where it
    read. (A consumer that reset by itself, kafka-python's ``auto_offset_reset``, jumped to the end
    and said nothing: every record between was skipped unseen.) :func:`make_consumer`'s consumers
    raise for this, so the caller gets the notes."""
    from kafka.errors import LogTruncationError, OffsetOutOfRangeError

    try:
        return consumer.poll(timeout_ms=timeout_ms), []
    except OffsetOutOfRangeError as exc:
        lost = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    except LogTruncationError as exc:  # (KIP-320: kafka-python raises it where no reset policy is set)
        return {}, _truncated(consumer, exc.divergent_offsets or {})
    notes = []
    parts = list(lost) or list(consumer.assignment())
    begins, ends = consumer.beginning_offsets(parts), consumer.end_offsets(parts)
    for tp in parts:
        at, begin, end = lost.get(tp, -1), begins.get(tp, 0), ends.get(tp, 0)
        if 0 <= at < begin:
            notes.append(f"{tp.topic}[{tp.partition}]: {begin - at} records expired before they were read (the "
                         f"topic's retention; this reader was behind): reading on from offset {begin}")  # fmt: skip
        else:
            notes.append(f"{tp.topic}[{tp.partition}]: offset {at} is past the end ({end}): the topic was "
                         f"recreated? reading it from its oldest record, offset {begin}")  # fmt: skip
        consumer.seek(tp, begin)
    return {}, notes


def _truncated(consumer: Any, divergent: Mapping[Any, Any]) -> list[str]:
    """A broker's log rolled back past this reader's position (an unclean leader election): read on
    from where it diverged, as a consumer with a reset policy does, or from the oldest record where
    the broker does not say."""
    notes = []
    for tp, at in divergent.items():
        if at is not None:
            consumer.seek(tp, at.offset)
            notes.append(f"{tp.topic}[{tp.partition}]: the log was truncated (an unclean leader election): records "
                         f"read past offset {at.offset} were rolled back; reading on from there")  # fmt: skip
        else:
            consumer.seek_to_beginning(tp)
            notes.append(f"{tp.topic}[{tp.partition}]: the log was truncated (an unclean leader election) at an "
                         "offset the broker does not give: reading it from its oldest record")  # fmt: skip
    return notes


class TopicReader:
    """Polls a :func:`make_consumer` consumer through :func:`poll_through`, and every ``every_s``
    assigns the partitions added to its topics since (an operator adding partitions to scale a
    topic out) from their first record: a consumer assigned partitions by hand reads those it was
    given and no other, so a share of the calls went unread for good. kafka-python learns of new
    partitions with its metadata, refreshed every 5 minutes (``metadata_max_age_ms``); nothing
    in them is lost meanwhile."""

    def __init__(
        self, consumer: Any, topics: Iterable[str], every_s: float = 10.0, clock: Any = time.monotonic
    ) -> None:
        self.consumer, self.topics, self.every_s, self.clock = consumer, list(topics), every_s, clock
        self._next = clock() + every_s
        #: records lost unread, a note per partition and time (:func:`poll_through`)
        self.lost: list[str] = []

    def poll(self, timeout_ms: int) -> tuple[dict[Any, list[Any]], list[str]]:
        """(records by partition, notes on what was lost or added)."""
        notes = self._added() if self.clock() >= self._next else []
        batches, lost = poll_through(self.consumer, timeout_ms)
        self.lost += lost
        return batches, notes + lost

    def _added(self) -> list[str]:
        from kafka import TopicPartition
        from kafka.errors import IllegalStateError

        self._next = self.clock() + self.every_s
        have = set(self.consumer.assignment())
        new = [TopicPartition(topic, p) for topic in self.topics
               for p in sorted(self.consumer.partitions_for_topic(topic) or ())
               if TopicPartition(topic, p) not in have]  # fmt: skip
        if not new:
            return []
        try:
            self.consumer.assign(sorted(have | set(new)))  # (the partitions had keep their positions)
        except IllegalStateError:  # a consumer of the caller's that subscribed to a group: its group assigns
            self.every_s = float("inf")
            return []
        self.consumer.seek_to_beginning(*new)
        return [f"{tp.topic}[{tp.partition}]: a partition added since this reader started: reading it from its "
                "first record" for tp in new]  # fmt: skip


#: how far before its start a subscriber reads a topic that came while it waited (the producers'
#: clocks may be behind its own)
LATE_TOPIC_SKEW_MS = 60_000


def make_consumer(
    settings: Settings,
    topics: list[str],
    from_beginning: bool,
    wait_s: float | None,
    say: Callable[[str], None] | None = None,
) -> Any:
    """A consumer assigned every partition of ``topics`` (no group), starting at the end or
    beginning; waits ``wait_s`` (None: for ever) for topics that do not exist yet, saying so with
    ``say`` (a warning logged unless given), once and every minute more."""
    say = say if say is not None else log.warning
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from streams.kafka import kafka_python_options, unreachable

    try:
        consumer = KafkaConsumer(
            **kafka_python_options(settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",  # positions are set below; one the broker no longer has raises (poll_through)
        )
    except KafkaError as exc:
        raise unreachable(settings, exc) from exc
    deadline = None if wait_s is None else time.monotonic() + wait_s
    since_ms = int(time.time() * 1000) - LATE_TOPIC_SKEW_MS  # for topics waited for (see below)
    partitions: list[Any] = []
    ends: dict[Any, int] = {}  # where the topics there at the first look ended then
    late: list[Any] = []  # of topics that came while this waited
    for topic in topics:
        noted, said_at, since = False, 0.0, time.monotonic()
        while not (found := consumer.partitions_for_topic(topic)):
            now = time.monotonic()
            if deadline is not None and now > deadline:
                consumer.close()
                raise ServiceUnavailable(
                    f"topic {topic} does not exist at {settings.kafka.brokers} after {wait_s:g} s (the workers "
                    "make their topics at their start: is one running, under these kafka.topics?)"
                )
            if not noted or now - said_at >= 60:
                waited = f" (for {now - since:.0f} s now)" if noted else ""
                say(f"waiting for topic {topic} to exist (its name as the workers' kafka.topics say?) ...{waited}")
                noted, said_at = True, now
            time.sleep(1.0)
        got = [TopicPartition(topic, p) for p in sorted(found)]
        partitions += got
        if noted:
            late += got
        elif not from_beginning:  # now, not after waiting for another topic: what came meanwhile is read
            ends.update(consumer.end_offsets(got))
    consumer.assign(partitions)
    if from_beginning:  # resolved now, not at the first poll: what is published from here on is read
        consumer.seek_to_beginning(*partitions)
    else:
        for tp, offset in ends.items():
            consumer.seek(tp, offset)
        # a topic that came while this waited (the worker makes its topics at its start): from its first
        # record sent since this started, not its end (what was published between its creation and the
        # look was lost: an integrator's trial). By record time, less a margin for clocks apart, not
        # offset 0: a topic whose metadata a failed fetch left out for a while is not replayed whole.
        # A partition with no such record yet starts at its end as it was before that question, not as it
        # is when the position is resolved (later: the records written meanwhile were skipped, in CI).
        if late:
            before = consumer.end_offsets(late)
            try:
                times = consumer.offsets_for_times({tp: since_ms for tp in late})
            except KafkaError as exc:  # (a leader not elected yet: what was there before counts)
                log.info("subscriber: no record times for %s (%s): reading on from their ends", late, exc)
                times = {}
            for tp in late:
                at = times.get(tp)
                consumer.seek(tp, before[tp] if at is None else at.offset)
    for tp in partitions:
        consumer.position(tp)
    return consumer


class Subscriber:
    """Typed records of ``kinds`` (all calls, or ``call_ids``), from now or ``from_beginning``.

    Iterate it (for ever, or until :meth:`close`), or :meth:`poll` for what came within a time.
    ``consumer`` replaces the Kafka consumer made from ``settings`` (then not closed here);
    ``wait_s`` bounds the wait for topics that do not exist yet (the workers make them at their
    start; by default ``kafka.startup_timeout_s``, then :class:`ServiceUnavailable`; None: for ever),
    logged as a warning."""

    def __init__(
        self,
        settings: Settings,
        kinds: Iterable[Kind] = ("events",),
        call_ids: Iterable[str] | None = None,
        from_beginning: bool = False,
        *,
        keep_stale: bool = False,
        wait_s: float | None | Literal["startup_timeout"] = "startup_timeout",
        consumer: Any = None,
        memory: int = 100_000,
    ) -> None:
        if not isinstance(from_beginning, bool):
            raise TypeError(f"from_beginning must be True or False, not {from_beginning!r}")
        wanted = set(_names(kinds, "kinds"))
        self.kinds = [k for k in KINDS if k in wanted]
        unknown = wanted - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be some of {KINDS}, not {sorted(unknown) or 'none'}")
        self.topics = [topic_of(settings.kafka.topics, k) for k in self.kinds]
        self.tracker = Tracker(settings.kafka.topics, call_ids, memory)
        self.keep_stale = keep_stale
        self.closed = False
        self._own = consumer is None
        if wait_s == "startup_timeout":
            wait_s = settings.kafka.startup_timeout_s
        self.consumer = make_consumer(settings, self.topics, from_beginning, wait_s) if consumer is None else consumer
        self.reader = TopicReader(self.consumer, self.topics)

    def poll(self, timeout_s: float = 0.5) -> list[Received]:
        """What arrived within ``timeout_s`` (maybe nothing), in partition order."""
        out: list[Received] = []
        batches, notes = self.reader.poll(max(1, int(timeout_s * 1000)))
        for note in notes:
            log.warning("subscriber: %s", note)
        for records in batches.values():
            for record in records:
                invalid = self.tracker.invalid
                got = self.tracker.accept(record.topic, record.value)
                if self.tracker.invalid > invalid and (self.tracker.invalid <= 5 or self.tracker.invalid % 1000 == 0):
                    log.warning("subscriber: skipped a record that is no %s of this version on %s[%d]@%d: %s [%d so "
                                "far; the first five and every 1000th are logged; Subscriber.tracker.invalid counts "
                                "them]", self.tracker.kinds.get(record.topic, "record"), record.topic,
                                record.partition, record.offset, self.tracker.last_error,
                                self.tracker.invalid)  # fmt: skip
                if got is not None and (self.keep_stale or not got.stale):
                    out.append(got)
        return out

    def __iter__(self) -> Iterator[Received]:
        """Every record from here on, until :meth:`close`."""
        while not self.closed:
            yield from self.poll()

    def latest(self, call_id: str, utterance_id: str) -> EmotionEvent | None:
        return self.tracker.latest(call_id, utterance_id)

    @property
    def skipped(self) -> list[str]:
        """Records lost unread, a note per partition and time (each also logged)."""
        return self.reader.lost

    def close(self) -> None:
        if not self.closed and self._own:
            self.consumer.close()
        self.closed = True

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscriber:
    """:class:`Subscriber` for asyncio code: ``async for got in sub``. Connecting and polling run in
    a thread; a poll whose await is cancelled (a timeout around it) still finishes there, and its
    records come with the next :meth:`poll`, so none is lost. Topics that do not exist yet are
    waited for ``wait_s`` (default ``kafka.startup_timeout_s``: a thread cannot be cancelled)."""

    def __init__(self, settings: Settings, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("wait_s", settings.kafka.startup_timeout_s)
        self._settings, self._args, self._kwargs = settings, args, kwargs
        self._sync: Subscriber | None = None
        self._polling: asyncio.Future[list[Received]] | None = None
        self._closing = False  # close() began: no poll starts after it
        self._one = asyncio.Lock()  # one caller at a time takes a poll's records (two tasks got the same ones)

    async def start(self) -> AsyncSubscriber:
        """Connect (and wait for the topics) off the event loop."""
        if self._sync is None:
            self._sync = await asyncio.to_thread(Subscriber, self._settings, *self._args, **self._kwargs)
            if self._closing:  # close() came while it connected: it found nothing to close
                await asyncio.to_thread(self._sync.close)
        return self

    async def poll(self, timeout_s: float = 0.5) -> list[Received]:
        """As :meth:`Subscriber.poll`; nothing once :meth:`close` has begun. A poll that raised
        (the broker away) raises here once; the next call polls again. Tasks that poll at once take
        turns: each record goes to one of them."""
        await self.start()
        async with self._one:
            return await self._poll(timeout_s)

    async def _poll(self, timeout_s: float) -> list[Received]:
        sync = self._sync
        assert sync is not None
        if self._polling is None:
            if self._closing:
                return []
            self._polling = asyncio.ensure_future(asyncio.to_thread(sync.poll, timeout_s))
        polling = self._polling
        try:
            got = await asyncio.shield(polling)
        except asyncio.CancelledError:
            raise  # the poll goes on, its records kept for the next call
        except BaseException:
            if self._polling is polling:  # its error is raised once: the next call polls again
                self._polling = None
            raise
        if self._polling is polling:
            self._polling = None
        return got

    def latest(self, call_id: str, utterance_id: str) -> EmotionEvent | None:
        return None if self._sync is None else self._sync.latest(call_id, utterance_id)

    async def __aiter__(self) -> AsyncIterator[Received]:
        while not self._closing and (self._sync is None or not self._sync.closed):
            for got in await self.poll():
                yield got

    async def close(self) -> None:
        self._closing = True  # (an `async for` under way starts no poll from here on)
        if self._polling is not None:  # the consumer is not thread-safe: let the poll end first
            await asyncio.gather(self._polling, return_exceptions=True)
            self._polling = None
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)

    async def __aenter__(self) -> AsyncSubscriber:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
