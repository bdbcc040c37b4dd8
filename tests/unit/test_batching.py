"""Batches grow under load within engine.max_batch and engine.batch_budget_s (streams/batching.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from streams.batching import FIRST_BATCHES, BatchSizer
from streams.metrics import Metrics
from streams.pipeline import Processor
from streams.settings import Settings
from streams.worker import Worker


def test_the_limit_follows_the_compute_time_per_utterance() -> None:
    s = BatchSizer(max_batch=256, budget_s=0.5)
    assert s.limit() == FIRST_BATCHES  # nothing measured yet
    s.observe(32, 32 * 0.002)  # texts: 2 ms each
    assert s.limit() == 250
    for _ in range(40):
        s.observe(200, 200 * 0.0005)  # faster still: the cap holds
    assert s.limit() == 256
    for _ in range(40):
        s.observe(30, 30 * 0.014)  # voices: 14 ms each
    assert 34 <= s.limit() <= 36
    s.observe(0, 5.0)  # an empty batch teaches nothing
    s.observe(3, float("nan"))
    assert 34 <= s.limit() <= 36
    for _ in range(40):
        s.observe(1, 2.0)  # slower than the budget: one at a time, never none
    assert s.limit() == 1
    assert BatchSizer(max_batch=8, budget_s=0.5).limit() == 8


def test_the_average_moves_gradually() -> None:
    s = BatchSizer(max_batch=1024, budget_s=1.0)
    s.observe(10, 0.01)  # 1 ms each
    s.observe(10, 0.1)  # one slow batch (10 ms each) does not make the next one tiny
    assert s.per_utterance_s == pytest.approx(0.8 * 0.001 + 0.2 * 0.01)
    assert s.limit() == int(1.0 / (0.8 * 0.001 + 0.2 * 0.01))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        BatchSizer(0, 0.5)
    with pytest.raises(ValueError):
        BatchSizer(8, 0.0)


def test_the_worker_sizes_its_batches_by_the_budget() -> None:
    """A queue of 120 joined utterances on an engine that takes 2 ms each, with a budget of 20 ms:
    the first batch takes the first-batch size, the next ones about ten, and the gauge says so."""
    from tests.unit.test_worker_logic import Clock, FakeEngine, FakeFeaturizer, FakeStore, Handle, text

    class SlowEngine(FakeEngine):
        def predict(self, batch: Any) -> Any:
            time.sleep(0.002 * batch.size)
            return super().predict(batch)

    async def scenario() -> None:
        settings = Settings(
            join={"default_modalities": ["text"]},
            engine={"max_batch": 64, "max_wait_s": 1.0, "batch_budget_s": 0.02},  # the clock stands still
        )
        sent: list[Any] = []

        async def send(topic: str, key: bytes | None, value: bytes, event_key: str | None) -> Any:
            sent.append(topic)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

        engine = SlowEngine()
        metrics = Metrics()
        w = Worker(settings, Processor(engine, FakeFeaturizer(), FakeStore()), metrics, send, clock=Clock())  # type: ignore[arg-type]
        log: list[str] = []
        t = settings.kafka.topics
        for k in range(120):
            await w.on_message(t.text, 0, k, b"c%d" % (k % 40), text(f"c{k % 40}", f"u{k}", k // 40), Handle(log, "x"))
        assert len(w.queue) == 120
        await w.pump()  # every batch that is due: as long as the queue holds what the next may take
        assert len(w.queue) <= 10
        while w.queue:
            await w._step(force=True)
        sizes = [b.size for b in engine.batches]
        assert sum(sizes) == 120 and sizes[0] == FIRST_BATCHES, sizes
        assert max(sizes[1:]) <= 10, sizes  # 20 ms of compute at 2 ms (or more) an utterance
        assert metrics.batch_limit._value.get() <= 10

    asyncio.run(scenario())
