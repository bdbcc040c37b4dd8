"""Batches grow under load within engine.max_batch and engine.batch_budget_s (streams/batching.py)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import pytest

from streams.batching import FIRST_UNITS, BatchSizer, units
from streams.join import Utterance
from streams.metrics import Metrics
from streams.pipeline import Processor
from streams.settings import Settings
from streams.validate import Payload
from streams.worker import Worker


def utt(audio_s: float = 0.0, k: int = 0) -> Utterance:
    parts: dict[str, Any] = {"text": Payload("text", "hello")}
    if audio_s:
        parts["audio"] = Payload("wave", np.zeros(int(audio_s * 16_000), np.float32))
    return Utterance("c", f"u{k}", k, "A", 0.0, parts=parts)


def test_an_utterance_costs_one_unit_and_one_a_second_of_audio() -> None:
    assert units(utt()) == 1.0
    assert units(utt(3.5)) == pytest.approx(4.5)
    vector = Utterance("c", "u", 0, "A", 0.0, parts={"audio": Payload("vector", np.zeros(768, np.float32))})
    assert units(vector) == 1.0  # features supplied by the caller: nothing to encode


def test_the_batch_follows_the_compute_time_per_unit() -> None:
    s = BatchSizer(max_batch=256, budget_s=0.5)
    texts = [utt(k=k) for k in range(400)]
    assert s.take(texts) == FIRST_UNITS  # nothing measured yet
    s.observe(32, 32 * 0.002)  # texts: 2 ms each
    assert s.take(texts) == 250 and s.full(texts, 400.0)
    assert not s.full(texts[:100], 100.0)
    for _ in range(40):
        s.observe(200, 200 * 0.0005)  # faster still: max_batch holds
    assert s.take(texts) == 256
    voices = [utt(3.0, k) for k in range(400)]  # 4 units each
    assert s.take(voices) == 249  # at 0.5 ms a unit, about 1000 units: 249 utterances of 4
    for _ in range(40):
        s.observe(120, 120 * 0.003)  # 3 ms a unit
    assert s.take(voices) == 41  # 166 units: 41 utterances of 4
    assert s.take(texts) == 166
    long = [utt(60.0, k) for k in range(10)]  # a minute of audio each: 61 units
    assert s.take(long) == 2
    s.observe(0, 5.0)  # nothing computed: nothing learned
    s.observe(3, float("nan"))
    assert s.take(texts) == 166
    for _ in range(60):
        s.observe(1, 2.0)  # slower than the budget: one at a time, never none
    assert s.take(texts) == 1 and s.take(long) == 1 and s.take([]) == 0


def test_the_average_moves_gradually() -> None:
    s = BatchSizer(max_batch=1024, budget_s=1.0)
    s.observe(10, 0.01)  # 1 ms a unit
    s.observe(10, 0.1)  # one slow batch (10 ms a unit) does not make the next one tiny
    assert s.per_unit_s == pytest.approx(0.8 * 0.001 + 0.2 * 0.01)
    assert s.allowance() == pytest.approx(1.0 / (0.8 * 0.001 + 0.2 * 0.01))


@pytest.mark.parametrize(("max_batch", "budget"), [(0, 0.5), (8, 0.0), (8, math.inf), (8, math.nan)])
def test_bad_settings_are_refused(max_batch: int, budget: float) -> None:
    with pytest.raises(ValueError):
        BatchSizer(max_batch, budget)


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_the_settings_refuse_a_budget_or_speech_floor_that_is_not_a_number(value: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Settings(engine={"batch_budget_s": value})
    if value != "-1":
        with pytest.raises(ValidationError):
            Settings(engine={"min_speech_s": value})


def worker(budget: float, engine: Any, metrics: Metrics) -> tuple[Worker, Any]:
    from tests.unit.test_worker_logic import Clock, FakeFeaturizer, FakeStore

    settings = Settings(
        join={"default_modalities": ["text"]},
        engine={"max_batch": 64, "max_wait_s": 1.0, "batch_budget_s": budget},  # the clock stands still
    )

    async def send(topic: str, key: bytes | None, value: bytes, event_key: str | None) -> Any:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    store = FakeStore()
    w = Worker(settings, Processor(engine, FakeFeaturizer(), store), metrics, send, clock=Clock())  # type: ignore[arg-type]
    return w, store


def test_the_worker_sizes_its_batches_by_the_budget() -> None:
    """A queue of 120 joined utterances on an engine that takes 2 ms each, with a budget of 20 ms:
    the first batch takes the first-batch size, the next ones about ten, and the gauge says so."""
    from tests.unit.test_worker_logic import FakeEngine, Handle, text

    class SlowEngine(FakeEngine):
        def predict(self, batch: Any) -> Any:
            time.sleep(0.002 * batch.size)
            return super().predict(batch)

    async def scenario() -> None:
        engine, metrics = SlowEngine(), Metrics()
        w, _ = worker(0.02, engine, metrics)
        assert metrics.batch_limit._value.get() == FIRST_UNITS
        log: list[str] = []
        t = w.settings.kafka.topics
        for k in range(120):
            await w.on_message(t.text, 0, k, b"c%d" % (k % 40), text(f"c{k % 40}", f"u{k}", k // 40), Handle(log, "x"))
        assert len(w.queue) == 120 and w.queued_units == 120
        await w.pump()  # every batch that is due: as long as the queue holds what the next may take
        assert len(w.queue) <= 10 and w.queued_units == len(w.queue)
        while w.queue:
            await w._step(force=True)
        sizes = [b.size for b in engine.batches]
        assert sum(sizes) == 120 and sizes[0] == FIRST_UNITS, sizes
        assert max(sizes[1:]) <= 10, sizes  # 20 ms of compute at 2 ms (or more) an utterance
        assert metrics.batch_limit._value.get() <= 10

    asyncio.run(scenario())


def test_replays_teach_the_sizer_nothing() -> None:
    """Utterances whose events are already out are acked without computing: a batch of them takes
    no time, and must not make the next batch of real work huge (after a restart, the first
    batches are replays)."""
    from tests.unit.test_worker_logic import FakeEngine, Handle, text

    async def scenario() -> None:
        w, store = worker(0.02, FakeEngine(), Metrics())
        log: list[str] = []
        t = w.settings.kafka.topics
        for k in range(20):
            await w.on_message(t.text, 0, k, b"c", text("c", f"u{k}", k), Handle(log, "x"))
        await w.pump()
        while w.queue:
            await w._step(force=True)
        metrics = Metrics()
        fresh, _ = worker(0.02, FakeEngine(), metrics)  # the replacement after a crash, on the same Redis
        fresh.processor.store = store
        fresh.sizer.per_unit_s = 0.004  # as if measured: 5 units a batch
        for k in range(20):  # replayed from an uncommitted offset: every event is out already
            await fresh.on_message(t.text, 0, k, b"c", text("c", f"u{k}", k), Handle(log, "y"))
        await fresh.pump()
        while fresh.queue:
            await fresh._step(force=True)
        assert metrics.replays._value.get() == 20
        assert fresh.sizer.per_unit_s == 0.004  # unchanged: the replays took no compute to speak of

    asyncio.run(scenario())
