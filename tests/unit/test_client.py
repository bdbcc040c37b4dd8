"""The client package without Kafka: what the Publisher sends where, and what the Subscriber's
Tracker keeps (duplicates dropped, revisions related, stale ones marked, invalid ones counted)."""

from __future__ import annotations

import asyncio
import base64
from collections import namedtuple
from typing import Any

import pytest
from pydantic import ValidationError

from client import AsyncPublisher, AsyncSubscriber, Publisher, Subscriber, Tracker
from streams.schemas import AudioPart, CallControl, DeadLetter, TextPart, VideoPart
from streams.settings import Settings
from tests.unit.test_subscribe import make_event

SETTINGS = Settings()
TOPICS = SETTINGS.kafka.topics
Record = namedtuple("Record", "topic value")


class Future:
    def __init__(self) -> None:
        self.errbacks: list[Any] = []

    def add_errback(self, fn: Any) -> None:
        self.errbacks.append(fn)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.futures: list[Future] = []
        self.flushed = 0
        self.closed = False

    def send(self, topic: str, key: bytes, value: bytes) -> Future:
        self.sent.append((topic, key, value))
        self.futures.append(Future())
        return self.futures[-1]

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.closed = True


def test_the_publisher_sends_each_message_to_its_topic_keyed_by_call() -> None:
    producer = FakeProducer()
    with Publisher(SETTINGS, producer) as pub:
        pub.start_call("c1", ["text", "audio", "video"])
        pub.text("c1", "u0", 0, "customer", "hello", start_s=0.0, end_s=1.2)
        pub.audio("c1", "u0", 0, "customer", b"\xff\x7f" * 80, "pcm_mulaw", 8000)
        pub.audio_features("c1", "u1", 1, "agent", [0.1, 0.2])
        pub.video("c1", "u1", 1, "agent", [0.3])
        pub.end_call("c1")
    assert [(t, k) for t, k, _ in producer.sent] == [
        (TOPICS.control, b"c1"), (TOPICS.text, b"c1"), (TOPICS.audio, b"c1"), (TOPICS.audio, b"c1"),
        (TOPICS.video, b"c1"), (TOPICS.control, b"c1"),
    ]  # fmt: skip
    values = [v for _, _, v in producer.sent]
    assert CallControl.model_validate_json(values[0]).modalities == ["text", "audio", "video"]
    text = TextPart.model_validate_json(values[1])
    assert (text.text, text.speaker, text.end_s) == ("hello", "customer", 1.2)
    audio = AudioPart.model_validate_json(values[2])
    assert audio.encoding == "pcm_mulaw" and base64.b64decode(audio.data or "") == b"\xff\x7f" * 80
    assert AudioPart.model_validate_json(values[3]).vector().tolist() == pytest.approx([0.1, 0.2])  # float32
    assert VideoPart.model_validate_json(values[4]).vector().tolist() == pytest.approx([0.3])
    assert CallControl.model_validate_json(values[5]).event == "ended"
    assert producer.flushed >= 1 and not producer.closed  # not its producer: not closed
    assert pub.stats.messages[TOPICS.audio] == 2 and pub.stats.bytes_sent == sum(len(v) for v in values)
    producer.futures[1].errbacks[0](RuntimeError("NotEnoughReplicas"))  # the broker refused one
    assert pub.stats.failed == 1 and pub.stats.errors == ["NotEnoughReplicas"]


def test_the_publisher_refuses_an_invalid_part_before_it_leaves() -> None:
    producer = FakeProducer()
    pub = Publisher(SETTINGS, producer)
    with pytest.raises(ValidationError):
        pub.text("c1", "u0", -1, "customer", "hello")  # seq must be >= 0
    with pytest.raises(ValidationError):
        pub.audio_features("c1", "u0", 0, "customer", [float("nan")])
    assert producer.sent == []


def test_a_message_just_under_the_limit_that_kafka_python_refuses_is_a_value_error() -> None:
    """kafka-python counts the key and the record batch's overhead against max_request_size: a value
    a few bytes under limits.max_message_bytes passed the publisher's check and then came out of
    `emostream feed` as a traceback (found in review)."""
    from kafka.errors import MessageSizeTooLargeError

    class Refusing(FakeProducer):
        def send(self, topic: str, key: bytes, value: bytes) -> Future:
            raise MessageSizeTooLargeError("The message is 1048600 bytes when serialized")

    pub = Publisher(SETTINGS, Refusing())
    with pytest.raises(ValueError, match=r"with its key and Kafka's record overhead, over limits.max_message_bytes"):
        pub.text("c1", "u0", 0, "customer", "hello")


def test_the_tracker_drops_duplicates_and_relates_revisions() -> None:
    tracker = Tracker(TOPICS)
    r0, r1 = make_event(revision=0, label="neutral"), make_event(revision=1, label="anger")
    first = tracker.accept(TOPICS.emotions, r0.to_bytes())
    assert first is not None and first.record == r0 and first.previous is None and not first.stale
    assert tracker.accept(TOPICS.emotions, r0.to_bytes()) is None  # a replay: same event_id
    revised = tracker.accept(TOPICS.emotions, r1.to_bytes())
    assert revised is not None and revised.previous == r0 and not revised.stale
    assert tracker.latest("call-7", "u3") == r1
    late = make_event(revision=0, label="joy", event_id="other-id")  # an older revision read after a newer one
    got = tracker.accept(TOPICS.emotions, late.to_bytes())
    assert got is not None and got.stale and got.previous == r1
    assert tracker.latest("call-7", "u3") == r1  # the newest stays
    assert tracker.duplicates == 1


def test_the_tracker_filters_calls_counts_invalid_records_and_ignores_other_topics() -> None:
    tracker = Tracker(TOPICS, call_ids=["call-7"])
    assert tracker.accept(TOPICS.emotions, make_event(call_id="call-8").to_bytes()) is None
    assert tracker.accept(TOPICS.emotions, b"{not json") is None
    assert tracker.accept(TOPICS.emotions, b'{"call_id": "call-7"}') is None
    assert tracker.invalid == 2 and tracker.errors[0].startswith(TOPICS.emotions)
    assert tracker.accept("someone.elses.topic", make_event().to_bytes()) is None
    letter = DeadLetter(reason="bad_json", detail="x", source_topic=TOPICS.text, partition=0, offset=3, key="call-7",
                        payload="")  # fmt: skip
    got = tracker.accept(TOPICS.deadletter, letter.to_bytes())
    assert got is not None and got.kind == "deadletters" and got.call_id == "call-7"


def test_one_call_id_or_kind_given_as_a_string_is_that_name_and_bad_arguments_are_refused() -> None:
    """Found by a newcomer: call_ids="H-reuse" was read as its characters, and nothing came."""
    assert Tracker(TOPICS, call_ids="call-7").call_ids == {"call-7"}
    with pytest.raises(ValueError, match="memory"):
        Tracker(TOPICS, memory=-1)
    with pytest.raises(TypeError, match="call_ids must be names"):
        Tracker(TOPICS, call_ids=[7])  # type: ignore[list-item]
    assert Subscriber(SETTINGS, kinds="deadletters", consumer=FakeConsumer([])).kinds == ["deadletters"]
    with pytest.raises(TypeError, match="from_beginning"):
        Subscriber(SETTINGS, from_beginning="no", consumer=FakeConsumer([]))  # type: ignore[arg-type]


def test_tracker_memory_is_bounded() -> None:
    tracker = Tracker(TOPICS, memory=3)
    for i in range(10):
        assert tracker.accept(TOPICS.emotions, make_event(utterance_id=f"u{i}", seq=i).to_bytes()) is not None
    assert len(tracker._seen) == 3 and len(tracker._latest) == 3
    assert tracker.latest("call-7", "u0") is None and tracker.latest("call-7", "u9") is not None


class FakeConsumer:
    def __init__(self, batches: list[list[Record]]) -> None:
        self.batches = batches
        self.closed = False

    def poll(self, timeout_ms: int) -> dict[str, list[Record]]:
        return {"tp": self.batches.pop(0)} if self.batches else {}

    def close(self) -> None:
        self.closed = True


def test_the_subscriber_yields_typed_records_and_skips_stale_ones_unless_asked() -> None:
    r0, r1 = make_event(revision=0), make_event(revision=1)
    stale = make_event(revision=0, event_id="replayed-differently")
    batches = [[Record(TOPICS.emotions, r0.to_bytes()), Record(TOPICS.emotions, r1.to_bytes())],
               [Record(TOPICS.emotions, r1.to_bytes()), Record(TOPICS.emotions, stale.to_bytes())]]  # fmt: skip
    with Subscriber(SETTINGS, consumer=FakeConsumer([list(b) for b in batches])) as sub:
        assert [g.record.revision for g in sub.poll()] == [0, 1]
        assert sub.poll() == []  # the duplicate dropped, the stale one skipped
    keep = Subscriber(SETTINGS, consumer=FakeConsumer([list(b) for b in batches]), keep_stale=True)
    got = keep.poll() + keep.poll()
    assert [(g.record.revision, g.stale) for g in got] == [(0, False), (1, False), (0, True)]
    with pytest.raises(ValueError, match="kinds must be"):
        Subscriber(SETTINGS, kinds=("emotions",), consumer=FakeConsumer([]))  # type: ignore[arg-type]


def test_the_async_client_does_the_same() -> None:
    async def scenario() -> tuple[list[Any], FakeProducer]:
        producer = FakeProducer()
        async with AsyncPublisher(SETTINGS, producer) as pub:
            await pub.start_call("c1", ["text"])
            await pub.text("c1", "u0", 0, "customer", "hi")
            await pub.end_call("c1")
        consumer = FakeConsumer([[Record(TOPICS.emotions, make_event().to_bytes())]])
        got = []
        async with AsyncSubscriber(SETTINGS, consumer=consumer) as sub:
            async for g in sub:
                got.append(g)
                break
        assert consumer.closed is False  # not its consumer
        return got, producer

    got, producer = asyncio.run(scenario())
    assert [t for t, _, _ in producer.sent] == [TOPICS.control, TOPICS.text, TOPICS.control]
    assert [g.record.utterance_id for g in got] == ["u3"]


def test_a_consumer_reads_an_event_with_a_field_a_newer_worker_added_and_still_refuses_a_wrong_one() -> None:
    import json

    from streams.schemas import EmotionEvent, read_published

    obj = json.loads(make_event().to_bytes())
    newer = json.dumps({**obj, "later_field": {"audio": "x"}}).encode()
    tracker = Tracker(TOPICS)
    got = tracker.accept(TOPICS.emotions, newer)
    assert got is not None and got.record == make_event() and tracker.invalid == 0
    assert read_published(EmotionEvent, newer) == make_event()
    for bad in (
        {**obj, "later_field": 1, "confidence": "high"},  # an unknown field beside a wrong one
        {**obj, "timings": {**obj["timings"], "later": 1.0}},  # unknown inside a known object: refused
    ):
        with pytest.raises(ValidationError):
            read_published(EmotionEvent, json.dumps(bad).encode())
        assert Tracker(TOPICS).accept(TOPICS.emotions, json.dumps(bad).encode()) is None
