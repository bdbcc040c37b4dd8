"""The Faust worker: one agent over the co-partitioned input topics, kept thin.

    input topics (text, audio, video, control; key = call id)
        -> parse + validate (bad input -> dead-letter topic, with reason and source offset)
        -> Joiner (hand-built join; Faust has no stream joins)
        -> micro-batch (max_batch / max_wait) -> Processor (features, Redis window, engine)
        -> emotion events topic -> Redis window append -> ack the source messages

The agent only parses, joins and queues (quick, under a lock); :meth:`Worker.pump`, run in a loop
by one task, takes due batches off the queue and runs them through the engine *outside* the lock,
one batch at a time, so parts keep being joined while the engine works and a call's batches stay
in order. A queue longer than ``4 * max_batch`` makes the agent wait (backpressure to Kafka).

Delivery is at least once: the agent runs with ``concurrency=1`` on a ``noack`` stream and acks a
message only once everything it fed is published (Faust commits offsets up to the first gap), so
a restarted worker resumes from committed offsets and re-labels what was in flight under the same
deterministic event keys. A failing batch is retried with backoff, never dropped.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from typing import Any

from streams.errors import InvalidMessage
from streams.join import Joiner, JoinResult, Utterance
from streams.metrics import Metrics
from streams.pipeline import BatchOutcome, Processor
from streams.schemas import CallControl, DeadLetter, parse_input
from streams.settings import Settings
from streams.validate import to_payload

log = logging.getLogger("emostream.worker")
_MAX_DLQ_PAYLOAD = 64 * 1024


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
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.processor = processor
        self.metrics = metrics
        self.send = send
        self.kinds = settings.kafka.topics.inputs()
        self.joiner = Joiner(settings.join.wait_s, settings.join.default_modalities, idle_s=settings.redis.ttl_s)
        self.queue: list[Utterance] = []
        self.ending: dict[str, list[Any]] = {}  # call id -> its 'ended' messages, acked once it is closed
        self.closing: list[str] = []  # calls whose utterances are all released: free their window
        self.lock = asyncio.Lock()
        self.retry_at = 0.0
        self.backoff = 0.5

    async def on_message(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, handle: Any
    ) -> None:
        """One input message; ``handle.ack()`` is called once its effects are published."""
        self.metrics.messages_in.labels(topic).inc()
        while len(self.queue) >= 4 * self.settings.engine.max_batch:
            await asyncio.sleep(0.005)  # backpressure: the engine is behind
        async with self.lock:
            now = self.clock()
            try:
                msg = parse_input(self.kinds.get(topic, "?"), value, self.settings.limits.max_message_bytes)
                if isinstance(msg, CallControl):
                    self._control(msg, handle, now)
                    return
                payload = to_payload(msg, self.processor.dims, self.settings.limits)
            except InvalidMessage as exc:
                await self._dead_letter(exc, topic, partition, offset, key, value)
                handle.ack()
                return
            result = self.joiner.add(
                msg.call_id, msg.utterance_id, msg.seq, msg.speaker, msg.kind, payload, handle, now
            )
            self._absorb(result)

    async def tick(self) -> None:
        """Expire joins and update gauges (quick, under the lock)."""
        async with self.lock:
            self._absorb(self.joiner.expire(self.clock()))
            self.metrics.open_calls.set(self.joiner.open_calls)
            self.metrics.open_utterances.set(self.joiner.open_utterances)

    async def pump(self) -> None:
        """Expire joins, then process every batch that is due and close ended calls."""
        await self.tick()
        while await self._step():
            pass

    async def run(self, interval: float = 0.01) -> None:
        """The pump loop (one task per worker)."""
        while True:
            try:
                await self.pump()
            except Exception:  # never let the loop die; the failing batch stays queued
                log.exception("pump failed")
            await asyncio.sleep(interval)

    async def drain(self) -> None:
        """Label everything still joined or queued (shutdown, partitions revoked)."""
        async with self.lock:
            self._absorb(self.joiner.drain(self.clock()))
        while self.queue:
            self.retry_at = 0.0
            if not await self._step(force=True):
                break

    async def _step(self, force: bool = False) -> bool:
        """One unit of work: a due batch, or else one closed call. False when nothing was due."""
        async with self.lock:
            now = self.clock()
            if now < self.retry_at:
                return False
            batch: list[Utterance] = []
            if self.queue:
                oldest = min(u.ready_at or now for u in self.queue)
                closing = set(self.closing)
                if (
                    force
                    or len(self.queue) >= self.settings.engine.max_batch
                    or now - oldest >= self.settings.engine.max_wait_s
                    or any(u.call_id in closing for u in self.queue)
                ):
                    batch = self.queue[: self.settings.engine.max_batch]
                    self.queue = self.queue[len(batch) :]
            call_id = None if batch or not self.closing else self.closing[0]
        if batch:
            return await self._process(batch)
        if call_id is not None:
            return await self._close(call_id)
        return False

    def _control(self, msg: CallControl, handle: Any, now: float) -> None:
        if msg.event == "started":
            self._absorb(self.joiner.call_started(msg.call_id, list(msg.modalities or []), now))
            handle.ack()
            return
        self.ending.setdefault(msg.call_id, []).append(handle)
        self._absorb(self.joiner.call_ended(msg.call_id, now))

    async def _close(self, call_id: str) -> bool:
        """All of a closed call's utterances are labelled: final revisions, free its window, ack 'ended'."""
        try:
            final = await self.processor.close(call_id)
            await self._publish(final)
            await self.processor.store.release([call_id])
        except Exception:
            self._failed(f"closing call {call_id}")
            return False
        for event, _ in final.events:
            self.metrics.events_out.labels(str(event.revision)).inc()
        async with self.lock:
            for handle in self.ending.pop(call_id, []):
                handle.ack()
            self.closing.remove(call_id)
        return True

    def _absorb(self, result: JoinResult) -> None:
        for handle in result.ack_now:
            handle.ack()
        if result.late_parts:
            self.metrics.late_parts.inc(result.late_parts)
        if result.duplicate_parts:
            self.metrics.duplicate_parts.inc(result.duplicate_parts)
        for utt in result.ready:
            self.metrics.join_wait.observe((utt.ready_at or utt.first_at) - utt.first_at)
            for m in utt.expected:
                if m not in utt.parts:
                    self.metrics.missing.labels(m).inc()
        self.queue.extend(result.ready)
        self.closing.extend(result.ended_calls)

    def _failed(self, what: str) -> None:
        log.exception("%s failed; retrying in %.1f s", what, self.backoff)
        self.metrics.errors.inc()
        self.retry_at = self.clock() + self.backoff
        self.backoff = min(self.backoff * 2, 30.0)

    async def _process(self, batch: list[Utterance]) -> bool:
        try:
            outcome = await self.processor.run(batch)
            await self._publish(outcome)
            await self.processor.commit(outcome)
        except Exception:
            self._failed(f"batch of {len(batch)} utterances")
            async with self.lock:
                self.queue = batch + self.queue
            return False
        self.backoff = 0.5
        self.metrics.batch_size.observe(len(batch))
        self.metrics.engine_latency.observe(outcome.engine_s)
        for event, _ in outcome.events:
            self.metrics.events_out.labels(str(event.revision)).inc()
            if event.revision == 0:
                self.metrics.end_to_end.observe(event.timings.end_to_end_s)
        async with self.lock:
            for utt in batch:
                self.metrics.utterances.labels("+".join(utt.modalities) or "none").inc()
                for handle in utt.handles:
                    handle.ack()
        return True

    async def _publish(self, outcome: BatchOutcome) -> None:
        topic = self.settings.kafka.topics.emotions
        pending = [await self.send(topic, ev.call_id.encode(), ev.to_bytes(), ev.event_id) for ev, _ in outcome.events]
        await asyncio.gather(*pending)

    async def _dead_letter(
        self, exc: InvalidMessage, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        raw = value or b""
        record = DeadLetter(
            reason=exc.reason,
            detail=exc.detail,
            source_topic=topic,
            partition=partition,
            offset=offset,
            key=key.decode("utf-8", "replace") if key else None,
            payload=base64.b64encode(raw[:_MAX_DLQ_PAYLOAD]).decode(),
            payload_truncated=len(raw) > _MAX_DLQ_PAYLOAD,
        )
        log.warning("dead letter %s from %s[%d]@%d: %s", exc.reason, topic, partition, offset, exc.detail)
        self.metrics.deadletters.labels(exc.reason).inc()
        fut = await self.send(self.settings.kafka.topics.deadletter, key, record.to_bytes(), None)
        await fut
