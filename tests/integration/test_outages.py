"""Outages on real services the project's scripts start (a broker and a Redis of this test's own,
so the rest of the suite keeps its services): Redis killed with -9 and back after seconds, the
broker stopped and started again. The worker stays up, reports the outage in its metrics, and
every utterance gets its event once the service is back."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.kafka import ensure_topics
from tests.integration.harness import REPO, Collector, WorkerProcess, settings_for
from tools.dialogues import read_meld_csv
from tools.feed import feed

pytestmark = pytest.mark.integration

KAFKA_PORT, REDIS_PORT = 29292, 26490


@dataclass(frozen=True)
class Own:
    brokers: str
    redis_url: str
    env: dict[str, str]
    run: Path

    def script(self, name: str, action: str) -> None:
        subprocess.run([str(REPO / "deploy" / "local" / name), action], check=True, env={**os.environ, **self.env})

    def kill9_redis(self) -> None:
        pid = int((self.run / f"redis-{REDIS_PORT}" / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        for _ in range(40):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    run = tmp_path_factory.mktemp("outage")
    env = {"EMOSTREAM_RUN_DIR": str(run), "KAFKA_PORT": str(KAFKA_PORT), "REDIS_PORT": str(REDIS_PORT)}
    o = Own(f"127.0.0.1:{KAFKA_PORT}", f"redis://127.0.0.1:{REDIS_PORT}/0", env, run)
    o.script("kafka.sh", "up")
    o.script("redis.sh", "up")
    try:
        yield o
    finally:
        o.script("kafka.sh", "down")
        o.script("redis.sh", "down")


def _feed_in_background(dialogues, settings) -> threading.Thread:  # type: ignore[no-untyped-def]
    feeder = threading.Thread(
        target=feed,
        args=(dialogues, settings),
        daemon=True,
        kwargs={"realtime": True, "speed": 2.0, "progress": False, "concurrency": 6, "stagger_s": 0.5},
    )
    feeder.start()
    return feeder


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name) and " " in line)


def test_redis_killed_mid_stream_and_back_loses_no_utterance(own, unique, shared_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(own, unique, default_modalities=("text",))
    ensure_topics(settings)
    dialogues = read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv", dialogue_ids=range(90, 100))
    want = {(u.call_id, u.utterance_id) for d in dialogues for u in d.utterances}
    worker = WorkerProcess(settings, tmp_path).start()
    collector = Collector(settings)
    try:
        worker.wait_ready()
        feeder = _feed_in_background(dialogues, settings)
        assert collector.poll_until(lambda c: len(c.events) >= 5, 60), worker.tail()
        own.kill9_redis()
        down_at = time.monotonic()
        collector.poll_until(lambda c: False, 8)  # Redis is down for 8 s while calls go on
        during = len(collector.events)
        own.script("redis.sh", "up")
        feeder.join(180)
        got = lambda c: {(e.call_id, e.utterance_id) for _, e in c.events}  # noqa: E731
        assert collector.poll_until(lambda c: got(c) >= want, 120), f"{len(want - got(collector))} missing"
        recovered = time.monotonic() - down_at
        assert worker.proc is not None and worker.proc.poll() is None, "the worker survived"
        metrics = worker.metrics()
        assert _metric(metrics, 'emostream_service_errors_total{stage="redis"}') > 0, "the outage was not reported"
        log = worker.tail(200_000)
        assert "Redis" in log or "redis" in log
        assert "go through again after" in log or "Redis works again" in log, "the recovery was not said"
        print(f"{len(want)} utterances, {during} events before Redis came back, all in {recovered:.0f} s")
    finally:
        collector.close()
        worker.stop()


def test_broker_stopped_and_restarted_loses_no_utterance(own, unique, shared_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(own, unique, default_modalities=("text",))
    ensure_topics(settings)
    first = read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv", dialogue_ids=range(100, 104))
    second = read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv", dialogue_ids=range(104, 108))
    want = {(u.call_id, u.utterance_id) for d in first + second for u in d.utterances}
    worker = WorkerProcess(settings, tmp_path).start()
    collector = None
    try:
        worker.wait_ready()
        feed(first, settings, realtime=False, progress=False)  # in the topics; the worker is labelling them
        own.script("kafka.sh", "down")
        time.sleep(10)
        own.script("kafka.sh", "up")
        feed(second, settings, realtime=False, progress=False)
        collector = Collector(settings)
        got = lambda c: {(e.call_id, e.utterance_id) for _, e in c.events}  # noqa: E731
        assert collector.poll_until(lambda c: got(c) >= want, 150), (
            f"{len(want - got(collector))} missing\n{worker.tail()}"
        )
        assert worker.proc is not None and worker.proc.poll() is None, "the worker survived"
    finally:
        if collector is not None:
            collector.close()
        worker.stop()
