"""The client package against the real broker, Redis and a real worker: a call published with
:class:`client.Publisher` comes back through :class:`client.AsyncSubscriber` as typed events, the
escalation alert and the call's final report; a second subscriber from the beginning sees each
event once although the records are read twice (the duplicates of at-least-once delivery)."""

from __future__ import annotations

import asyncio
import time

import pytest

from client import AlertEvent, AsyncSubscriber, CallReport, EmotionEvent, Publisher, Received, Subscriber
from streams.kafka import ensure_topics
from tests.integration.calls import ESCALATING
from tests.integration.harness import WorkerProcess, settings_for

pytestmark = pytest.mark.integration


def test_a_call_published_with_the_client_comes_back_typed(services, unique, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(services, unique, default_modalities=("text",))
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path).start()
    try:
        worker.wait_ready()

        async def scenario() -> list[Received]:
            got: list[Received] = []
            # from now: started before the call is published, it must see all of it
            async with AsyncSubscriber(settings, ("events", "alerts", "reports"), ["call-c"], wait_s=30) as sub:
                with Publisher(settings) as pub:
                    pub.start_call("call-c", ["text"])
                    for i, (speaker, line) in enumerate(ESCALATING):
                        pub.text("call-c", f"u{i}", i, speaker, line, start_s=2.0 * i)
                    pub.end_call("call-c")
                    pub.flush(30)
                    assert pub.stats.failed == 0 and sum(pub.stats.messages.values()) == len(ESCALATING) + 2
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    got += await sub.poll(0.5)
                    if any(isinstance(g.record, CallReport) and g.record.final for g in got):
                        break
            return got

        got = asyncio.run(scenario())
    finally:
        worker.stop()
    assert all(g.call_id == "call-c" for g in got)
    events = [g for g in got if isinstance(g.record, EmotionEvent)]
    assert {g.record.utterance_id for g in events} == {f"u{i}" for i in range(len(ESCALATING))}, worker.tail()
    for g in events:  # a revision comes with the event it replaces
        assert (g.previous is None) == (g.record.revision == 0), g
    alerts = [g.record for g in got if isinstance(g.record, AlertEvent)]
    assert any(a.state == "raised" for a in alerts), alerts
    (final,) = [g.record for g in got if isinstance(g.record, CallReport) and g.record.final]
    assert final.turns == len(ESCALATING) and final.alerts_raised

    # a second subscriber reads everything again from the beginning, twice over: each once
    with Subscriber(settings, ("events",), from_beginning=True, wait_s=30) as again:
        seen: list[Received] = []
        deadline = time.monotonic() + 30
        while len(seen) < len(events) and time.monotonic() < deadline:
            seen += again.poll(0.5)
        again.consumer.seek_to_beginning()  # the same records once more, as after a consumer restart
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            seen += again.poll(0.5)
        assert sorted(g.record.event_id for g in seen) == sorted(g.record.event_id for g in events)
        assert again.tracker.duplicates == len(events)
        last = max(events, key=lambda g: g.record.revision).record
        assert again.latest("call-c", last.utterance_id) == last


def test_subscribe_from_the_beginning_prints_what_was_on_the_topics_in_time_order(services, unique) -> None:  # type: ignore[no-untyped-def]
    """`emostream subscribe --deadletters --from-beginning` read a newcomer's backlog partition by
    partition: every event, then every dead letter, whatever their times. It prints the records
    that were on the topics when it started in the order they were published."""
    import io

    from kafka import KafkaProducer

    from streams.schemas import DeadLetter
    from tests.unit.test_subscribe import make_event
    from tools.subscribe import subscribe

    settings = settings_for(services, unique)
    ensure_topics(settings)
    t = settings.kafka.topics
    letter = DeadLetter(reason="malformed_json", detail="x", source_topic=t.text, partition=0, offset=0, key="k",
                        payload="")  # fmt: skip
    at = int(time.time() * 1000) - 60_000
    records = [(t.deadletter, letter.to_bytes(), at + 100)]
    records += [(t.emotions, make_event(call_id="k", utterance_id=f"u{i}", seq=i).to_bytes(), at + 50 + 100 * i)
                for i in range(3)]  # fmt: skip
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers)
    for topic, value, ts in records:
        producer.send(topic, key=b"k", value=value, timestamp_ms=ts).get(timeout=30)
    producer.close()
    out = io.StringIO()
    assert subscribe(settings, from_beginning=True, deadletters=True, max_events=4, timeout_s=30, out=out) == 4
    lines = [line.split("]")[0] for line in out.getvalue().splitlines()]
    assert lines == ["[k #0 Alice", "✗ dead letter [k", "[k #1 Alice", "[k #2 Alice"], lines


def test_a_subscriber_behind_the_retention_reads_on_from_the_oldest_record_and_says_what_it_lost(  # type: ignore[no-untyped-def]
    services, unique
) -> None:
    """A subscriber whose position the broker no longer had (the records expired under the topic's
    retention while it was behind) was reset by kafka-python to the end, and said nothing: every
    record between was skipped unseen. It now reads on from the oldest record there and says how many
    were lost; so does `emostream subscribe`."""
    import io

    from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

    from tests.unit.test_subscribe import make_event
    from tools.subscribe import subscribe

    settings = settings_for(services, unique)
    ensure_topics(settings)
    topic = settings.kafka.topics.emotions
    tp = TopicPartition(topic, 0)

    def publish(first: int, n: int) -> None:
        producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers)
        for i in range(first, first + n):
            value = make_event(call_id="k", utterance_id=f"u{i}", seq=i).to_bytes()
            producer.send(topic, key=b"k", value=value, partition=0).get(timeout=30)
        producer.close()

    def expire(before: int) -> None:  # as retention would: the log starts at `before` from now on
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka.brokers)
        try:
            admin.delete_records({tp: before})
        finally:
            admin.close()

    with Subscriber(settings, ("events",), wait_s=30) as sub:  # from now: the end, offset 0
        publish(0, 10)
        expire(6)  # u0..u5 gone before this reader got to them
        got: list[Received] = []
        deadline = time.monotonic() + 30
        while len(got) < 4 and time.monotonic() < deadline:
            got += sub.poll(0.5)
        assert [g.record.utterance_id for g in got] == ["u6", "u7", "u8", "u9"], got
        assert len(sub.skipped) == 1 and "6 records expired before they were read" in sub.skipped[0], sub.skipped

    out, err = io.StringIO(), io.StringIO()
    from contextlib import redirect_stderr

    from tools.subscribe import make_consumer  # the same consumer `subscribe` makes, behind in the same way

    consumer = make_consumer(settings, [topic], False, 30)  # at the end, offset 10
    try:
        publish(10, 3)
        expire(12)
        with redirect_stderr(err):
            assert subscribe(settings, max_events=1, timeout_s=30, out=out, consumer=consumer) == 1
    finally:
        consumer.close()
    assert out.getvalue().startswith("[k #12 "), out.getvalue()
    assert "2 records expired before they were read" in err.getvalue(), err.getvalue()


def test_a_subscriber_reads_the_partitions_added_to_its_topic_after_it_started(services, unique) -> None:  # type: ignore[no-untyped-def]
    """A subscriber (and `subscribe`, and the supervisor page) is assigned the partitions its topics
    had when it started: after an operator added partitions to scale a topic out, the calls keyed
    to the new ones were never read. They are now assigned from their first record."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewPartitions

    from tests.unit.test_subscribe import make_event

    settings = settings_for(services, unique)
    ensure_topics(settings)
    topic = settings.kafka.topics.emotions
    before = settings.kafka.topics.partitions
    with Subscriber(settings, ("events",), wait_s=30) as sub:
        sub.reader.every_s = 0.5
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka.brokers)
        try:
            admin.create_partitions({topic: NewPartitions(total_count=before + 1)})
        finally:
            admin.close()
        producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers)
        value = make_event(call_id="k", utterance_id="u9", seq=9).to_bytes()
        producer.send(topic, key=b"k", value=value, partition=before).get(timeout=30)
        producer.close()
        got: list[Received] = []
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            sub.consumer._cluster.request_update()  # (kafka-python's own refresh comes within 5 minutes)
            got += sub.poll(0.5)
        assert [g.record.utterance_id for g in got] == ["u9"], sub.consumer.assignment()


def test_a_subscriber_waiting_for_its_topic_reads_it_from_its_first_record(services, unique) -> None:  # type: ignore[no-untyped-def]
    """A subscriber started before the worker made its topics (`subscribe` before the first
    `worker`): once the topic appeared it began at its end, and what was published between its
    creation and that look was never seen (an integrator's trial: 15 of 20 records read). A topic
    that did not exist when the subscriber started holds only what came after: all of it is read."""
    import threading

    from kafka import KafkaProducer

    from streams.kafka import ensure_topics as make_topics
    from tests.unit.test_subscribe import make_event

    settings = settings_for(services, unique)
    made: list[Subscriber] = []
    waiting = threading.Thread(target=lambda: made.append(Subscriber(settings, ("events",), wait_s=60)))
    waiting.start()
    time.sleep(2.0)  # it waits for the topic
    assert not made
    make_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers)
    for i in range(20):  # at once: the subscriber looks again within a second
        value = make_event(call_id=f"k{i}", utterance_id=f"u{i}", seq=i).to_bytes()
        producer.send(settings.kafka.topics.emotions, key=f"k{i}".encode(), value=value)
    producer.flush()
    producer.close()
    waiting.join(60)
    (sub,) = made
    got = _read(sub, 20)
    assert sorted(int(g.record.utterance_id[1:]) for g in got) == list(range(20))


def test_a_subscriber_waiting_for_one_topic_reads_what_came_meanwhile_on_another(services, unique) -> None:  # type: ignore[no-untyped-def]
    """`subscribe --alerts` with the events topic there and the alerts topic not yet: the events
    published while it waited were lost (the topics there were sought to their end after the wait:
    a review)."""
    import threading

    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    from streams.kafka import ensure_topics as make_topics
    from tests.unit.test_subscribe import make_event

    settings = settings_for(services, unique)
    topics = settings.kafka.topics
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.brokers)
    try:
        admin.create_topics([NewTopic(topics.emotions, topics.partitions, 1)])
    finally:
        admin.close()
    from kafka import KafkaConsumer

    look = KafkaConsumer(bootstrap_servers=settings.kafka.brokers)
    deadline = time.monotonic() + 30
    while not look.partitions_for_topic(topics.emotions) and time.monotonic() < deadline:  # there, to any client
        time.sleep(0.2)
    look.close()
    made: list[Subscriber] = []
    waiting = threading.Thread(target=lambda: made.append(Subscriber(settings, ("events", "alerts"), wait_s=60)))
    waiting.start()
    time.sleep(3.0)  # it has looked at the events topic and waits for the alerts one
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers)
    for i in range(5):
        value = make_event(call_id=f"k{i}", utterance_id=f"u{i}", seq=i).to_bytes()
        producer.send(topics.emotions, key=f"k{i}".encode(), value=value)
    producer.flush()
    producer.close()
    assert not made
    make_topics(settings)
    waiting.join(60)
    (sub,) = made
    got = _read(sub, 5)
    assert sorted(g.record.utterance_id for g in got) == [f"u{i}" for i in range(5)]


def _read(sub: Subscriber, n: int, within_s: float = 30.0) -> list[Received]:
    """What ``sub`` reads until it has ``n`` records or ``within_s`` has passed; then closes it."""
    with sub:
        got: list[Received] = []
        deadline = time.monotonic() + within_s
        while len(got) < n and time.monotonic() < deadline:
            got += sub.poll(0.5)
    return got
