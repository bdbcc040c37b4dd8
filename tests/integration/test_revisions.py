"""Revised events on the real broker and Redis: a worker run with
``EMOSTREAM_ENGINE__REVISION_MODEL=revised`` (the shipped causal default labels the provisional
events, the shipped ``models/revised``, trained with 2 future utterances, the revisions) is fed
MELD dev dialogues. Every utterance gets one provisional event at once and one revised event once
k later utterances of its call, or the call's end, have arrived, labelled by the revision model."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.publisher import make_producer
from engines import artifact
from streams.context import ContextItem
from streams.kafka import ensure_topics
from streams.pipeline import build_batch
from streams.schemas import CallControl, EmotionEvent, TextPart, event_id
from streams.settings import Settings
from tests.integration.harness import REPO, Collector, WorkerProcess, env_for, settings_for
from tools.dialogues import Dialogue, read_meld_csv
from tools.feed import part_message

pytestmark = pytest.mark.integration

K = int(artifact.read_json(artifact.MODELS_DIR / "revised", artifact.CONFIG)["future"])  # 2
Key = tuple[str, str]


class RevisingWorker(WorkerProcess):
    """`emostream worker` with the revision model of its settings, set as a user sets it."""

    def start(self) -> RevisingWorker:
        env = env_for(self.settings)
        assert self.settings.engine.revision_model is not None
        env["EMOSTREAM_ENGINE__REVISION_MODEL"] = self.settings.engine.revision_model
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return self


@pytest.fixture(scope="module")
def revising(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, RevisingWorker]]:
    """One worker with revisions on for this module (its start is most of the time), own topics."""
    plain = settings_for(services, uuid.uuid4().hex[:10], default_modalities=("text",))
    settings = plain.model_copy(update={"engine": plain.engine.model_copy(update={"revision_model": "revised"})})
    ensure_topics(settings)
    wait_for_topics(settings)
    worker = RevisingWorker(settings, tmp_path_factory.mktemp("revisions")).start()
    try:
        worker.wait_ready()
        yield settings, worker
    finally:
        worker.stop()


def wait_for_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Until the broker's metadata lists every topic: a worker that joins before that (a fresh
    broker on a busy machine) is given no partitions and never sees its input."""
    from kafka import KafkaConsumer

    t = settings.kafka.topics
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.brokers, group_id=None)
    deadline = time.monotonic() + timeout
    try:
        for topic in (*t.inputs(), t.emotions, t.deadletter):
            while len(consumer.partitions_for_topic(topic) or ()) < t.partitions:
                assert time.monotonic() < deadline, f"topic {topic} not in the broker's metadata"
                time.sleep(0.2)
    finally:
        consumer.close()


def meld_dev(shared: Path, ids: list[int]) -> list[Dialogue]:
    return read_meld_csv(shared / "meld" / "dev_sent_emo.csv", dialogue_ids=ids)


def by_revision(collector: Collector, calls: set[str]) -> tuple[dict[Key, list[EmotionEvent]], ...]:
    """(provisional events, revised events) per (call, utterance) of ``calls``, in arrival order."""
    out: tuple[dict[Key, list[EmotionEvent]], dict[Key, list[EmotionEvent]]] = (defaultdict(list), defaultdict(list))
    for _, ev in collector.events:
        if ev.call_id in calls:
            assert ev.revision in (0, 1), ev
            out[ev.revision][(ev.call_id, ev.utterance_id)].append(ev)
    return out


def check_one_of_each(collector: Collector, dialogues: list[Dialogue]) -> dict[Key, tuple[EmotionEvent, EmotionEvent]]:
    """Exactly one provisional and one revised event per utterance, deterministic distinct ids,
    keyed by call id; returns (provisional, revised) per utterance."""
    want = {(u.call_id, u.utterance_id) for d in dialogues for u in d.utterances}
    provisional, revised = by_revision(collector, {d.call_id for d in dialogues})
    assert set(provisional) == want and set(revised) == want
    assert all(len(v) == 1 for v in provisional.values()), "one provisional event per utterance"
    assert all(len(v) == 1 for v in revised.values()), "one revised event per utterance"
    for key, ev in [(k, e) for _, e in collector.events for k in [(e.call_id, e.utterance_id)] if k in want]:
        assert ev.event_id == event_id(*key, ev.revision)
    ids = [ev.event_id for v in (*provisional.values(), *revised.values()) for ev in v]
    assert len(set(ids)) == 2 * len(want)
    assert all(k == ev.call_id.encode() for k, ev in collector.events if ev.call_id in {c for c, _ in want})
    return {k: (provisional[k][0], revised[k][0]) for k in want}


def test_revised_once_k_later_utterances_of_the_call_or_its_end_arrived(revising, shared_data) -> None:  # type: ignore[no-untyped-def]
    """Two calls fed one utterance at a time, interleaved; a short one (fewer than k+1 utterances)
    ends in the middle of the other. After each step, exactly the utterances that have k later
    utterances of their own call (or whose call ended) have their revision, and nothing else."""
    settings, worker = revising
    topics = settings.kafka.topics
    short_call, long_call = meld_dev(shared_data, [0, 2])  # 2 and 6 utterances (in id order)
    assert len(short_call.utterances) <= K < len(long_call.utterances) - K
    steps: list[tuple[Dialogue, int | None]] = []  # (call, utterance index) or (call, None): its end
    for n in range(len(long_call.utterances)):
        steps.append((long_call, n))
        if n < len(short_call.utterances):
            steps.append((short_call, n))
        if n == len(short_call.utterances) - 1:
            steps.append((short_call, None))
    steps.append((long_call, None))
    calls = {long_call.call_id, short_call.call_id}
    fed: dict[str, int] = {c: 0 for c in calls}
    ended: set[str] = set()
    producer = make_producer(settings)
    collector = Collector(settings)

    def send(topic: str, call_id: str, value: bytes) -> None:
        producer.send(topic, key=call_id.encode(), value=value).get(timeout=10)

    def provisional_of(key: Key) -> Any:
        return lambda c: key in by_revision(c, calls)[0]

    def revised_at_least(want: set[Key]) -> Any:
        return lambda c: set(by_revision(c, calls)[1]) >= want

    def expected_revised() -> set[Key]:
        d = {long_call.call_id: long_call, short_call.call_id: short_call}
        n_revised = {c: (len(d[c].utterances) if c in ended else max(0, n - K)) for c, n in fed.items()}
        return {(c, u.utterance_id) for c, n in n_revised.items() for u in d[c].utterances[:n]}

    try:
        for d in (long_call, short_call):
            send(
                topics.control,
                d.call_id,
                CallControl(call_id=d.call_id, event="started", modalities=["text"]).to_bytes(),
            )
        for d, i in steps:
            if i is None:
                send(topics.control, d.call_id, CallControl(call_id=d.call_id, event="ended").to_bytes())
                ended.add(d.call_id)
            else:
                u = d.utterances[i]
                message = part_message(u, "text", topics)
                assert message is not None
                send(message[0], d.call_id, message[1])
                fed[d.call_id] += 1
                key = (d.call_id, u.utterance_id)
                assert collector.poll_until(provisional_of(key), 30), worker.tail()
            want = expected_revised()
            assert collector.poll_until(revised_at_least(want), 30), worker.tail()
            collector.poll_until(lambda c: False, 0.4)  # an early revision would show up now
            assert set(by_revision(collector, calls)[1]) == want, f"after {d.call_id} step {i}"
        pairs = check_one_of_each(collector, [long_call, short_call])
    finally:
        collector.close()
        producer.close()
    # on the topic, a revision comes after the provisional event of the k-th later utterance of its
    # call (it was computed with it) and, at the call's end, after the call's last provisional event
    for d in (long_call, short_call):
        order = [(ev.revision, ev.seq) for _, ev in collector.events if ev.call_id == d.call_id]
        n = len(d.utterances)
        for u in d.utterances:
            trigger = min(u.seq + K, n - 1)
            assert order.index((1, u.seq)) > order.index((0, trigger)), (u.seq, order)
            provisional, revised = pairs[(d.call_id, u.utterance_id)]
            assert revised.future_context == min(K, n - 1 - u.seq) and provisional.future_context == 0
            assert revised.context_size == u.seq + 1 + revised.future_context
            assert provisional.context_size == u.seq + 1
    default = artifact.read_json(artifact.DEFAULT_DIR, artifact.CONFIG)
    for provisional, revised in pairs.values():
        assert provisional.model.name == default["name"] and provisional.model.version == default["version"]
        assert revised.model != provisional.model and revised.model.name == f"{default['name']}-future{K}"


def test_revised_probabilities_come_from_the_revision_model(revising, shared_data) -> None:  # type: ignore[no-untyped-def]
    """Several calls fed at once (one longer than the Redis window), their transcripts sent as
    MiniLM sentence embeddings (as a front end with its own encoder does), so the worker's features
    are known exactly: each revised event's probabilities are the revision model's on the window
    the event describes, run offline here, not the causal default's; each provisional event's are
    the default's on its past window."""
    from engines.registry import load_engine, load_extractors

    settings, worker = revising
    topics = settings.kafka.topics
    dialogues = meld_dev(shared_data, [9, 12, 3, 13])  # 8, 5, 3 and 22 utterances
    text = load_extractors("default").text
    assert text is not None
    vectors = {  # (n, 384) per call; the feature cache makes this quick after the first run
        d.call_id: np.asarray(text.encode_cached([str(u.text) for u in d.utterances]), dtype=np.float32)
        for d in dialogues
    }
    collector = Collector(settings)
    producer = make_producer(settings)
    calls = {d.call_id for d in dialogues}
    n_utts = sum(len(d.utterances) for d in dialogues)
    sent: list[Any] = []
    try:
        for d in dialogues:
            started = CallControl(call_id=d.call_id, event="started", modalities=["text"])
            messages: list[tuple[str, CallControl | TextPart]] = [(topics.control, started)]
            for u, v in zip(d.utterances, vectors[d.call_id], strict=True):
                part = TextPart(call_id=d.call_id, utterance_id=u.utterance_id, seq=u.seq, speaker=u.speaker,
                                embedding=v.tolist())  # fmt: skip
                messages.append((topics.text, part))
            messages.append((topics.control, CallControl(call_id=d.call_id, event="ended")))
            for topic, message in messages:
                sent.append(producer.send(topic, key=d.call_id.encode(), value=message.to_bytes()))
        producer.flush()
        for future in sent:
            future.get(timeout=30)  # raises if the broker did not take it
        done = collector.poll_until(lambda c: sum(len(v) for v in by_revision(c, calls)[1].values()) >= n_utts, 60)
        got = [len(by_revision(collector, calls)[r]) for r in (0, 1)]
        assert done, f"{n_utts} utterances, {got[0]} with a provisional, {got[1]} with a revised event\n{worker.tail()}"
        collector.poll_until(lambda c: False, 1.5)  # duplicates or extra revisions would show up now
        pairs = check_one_of_each(collector, dialogues)
    finally:
        collector.close()
        producer.close()

    main, revision = load_engine("default"), load_engine("revised")
    max_window = min(main.info.max_window, revision.info.max_window, settings.redis.window + 1)
    rows: dict[str, list[tuple[list[ContextItem], int, EmotionEvent]]] = {"r0": [], "r1": []}
    for d in dialogues:
        items = [
            ContextItem(u.utterance_id, u.seq, u.speaker, {"text": v})
            for u, v in zip(d.utterances, vectors[d.call_id], strict=True)
        ]
        for j, u in enumerate(d.utterances):
            provisional, revised = pairs[(d.call_id, u.utterance_id)]
            future = min(K, len(items) - 1 - j)
            # utterances before it in its window: as many as fit, from what the worker had; at the
            # call's end (fewer than k later ones) that is the call's Redis window alone
            first = max(0, len(items) - settings.redis.window) if future < K else 0
            past = min(j - first, max_window - 1 - future)
            assert (revised.future_context, revised.context_size) == (future, past + 1 + future), u.seq
            rows["r1"].append((items[j - past : j + future + 1], past, revised))
            causal = min(j, max_window - 1)
            assert provisional.context_size == causal + 1, u.seq
            rows["r0"].append((items[j - causal : j + 1], causal, provisional))

    def offline(engine: Any, batch_rows: list[tuple[list[ContextItem], int, EmotionEvent]]) -> np.ndarray:
        windows, targets = [w for w, _, _ in batch_rows], [t for _, t, _ in batch_rows]
        return np.asarray(engine.predict(build_batch(windows, engine.info.features, targets)).probs)  # (N, C)

    labels = list(main.info.labels)
    streamed = {r: np.array([[ev.probabilities[lab] for lab in labels] for _, _, ev in rows[r]]) for r in rows}
    by_revision_model = offline(revision, rows["r1"])
    by_default_model = offline(main, rows["r1"])  # the causal default on the same windows
    assert np.abs(streamed["r1"] - by_revision_model).max() < 1e-4
    assert np.abs(streamed["r0"] - offline(main, rows["r0"])).max() < 1e-4
    assert np.abs(streamed["r1"] - by_default_model).max(axis=1).mean() > 0.02, "revisions look like the default's"
    assert np.abs(streamed["r1"] - streamed["r0"]).max() > 0.05, "no revision changed anything"
