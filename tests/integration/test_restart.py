"""kill -9 a worker in the middle of a stream, start another: no utterance is left without an
event; duplicates are allowed but carry identical keys."""

from __future__ import annotations

import threading
import time

import pytest

from streams.dialogues import read_meld_csv
from streams.feed import feed
from streams.kafka import ensure_topics
from tests.integration.harness import Collector, WorkerProcess, settings_for

pytestmark = pytest.mark.integration


def test_worker_killed_mid_stream_resumes_from_committed_offsets(services, unique, shared_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(services, unique, default_modalities=("text",))
    ensure_topics(settings)
    dialogues = read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv", dialogue_ids=range(30, 38))
    want = {(u.call_id, u.utterance_id) for d in dialogues for u in d.utterances}
    collector = Collector(settings)
    first = WorkerProcess(settings, tmp_path, "first").start()
    try:
        first.wait_ready()
        feeder = threading.Thread(
            target=feed,
            args=(dialogues, settings),
            daemon=True,
            kwargs={"realtime": True, "speed": 8.0, "progress": False, "concurrency": 8, "stagger_s": 0.2},
        )
        feeder.start()
        assert collector.poll_until(lambda c: len(c.events) >= 10, timeout=60), first.tail()
        first.kill9()
        seen_before = len(collector.events)
        assert seen_before < len(want), "the kill came too late to test anything"
        time.sleep(1.0)
        second = WorkerProcess(settings, tmp_path, "second").start()
        try:
            second.wait_ready()
            feeder.join(120)
            ok = collector.poll_until(lambda c: {(e.call_id, e.utterance_id) for _, e in c.events} >= want, 120)
            assert ok, second.tail()
        finally:
            second.stop()
        ids: dict[tuple[str, str], set[str]] = {}
        for _, ev in collector.events:
            ids.setdefault((ev.call_id, ev.utterance_id), set()).add(ev.event_id)
        assert set(ids) == want
        assert all(len(v) == 1 for v in ids.values()), "a duplicate must carry the same key"
    finally:
        collector.close()
        first.stop()
