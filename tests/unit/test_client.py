"""The client package without Kafka: what the Publisher sends where, and what the Subscriber's
Tracker keeps (duplicates dropped, revisions related, stale ones marked, invalid ones counted)."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from client import AsyncPublisher, AsyncSubscriber, Publisher, Subscriber, Tracker
from streams.schemas import AudioPart, CallControl, DeadLetter, TextPart, VideoPart
from streams.settings import Settings
from tests.unit.test_subscribe import make_event

SETTINGS = Settings()
TOPICS = SETTINGS.kafka.topics
Record = namedtuple("Record", "topic value partition offset", defaults=(0, 0))


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

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def test_the_publisher_sends_each_message_to_its_topic_keyed_by_call() -> None:
    producer = FakeProducer()
    with Publisher(SETTINGS, producer) as pub:
        pub.start_call("c1", ["text", "audio", "video"])
        pub.text("c1", "u0", 0, "customer", "hello", start_s=0.0, end_s=1.2)
        pub.audio("c1", "u0", 0, "customer", b"\xff\x7f" * 800, "pcm_mulaw", 8000)
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
    assert audio.encoding == "pcm_mulaw" and base64.b64decode(audio.data or "") == b"\xff\x7f" * 800
    assert AudioPart.model_validate_json(values[3]).vector().tolist() == pytest.approx([0.1, 0.2])  # float32
    assert VideoPart.model_validate_json(values[4]).vector().tolist() == pytest.approx([0.3])
    assert CallControl.model_validate_json(values[5]).event == "ended"
    assert producer.flushed >= 1 and not producer.closed  # not its producer: not closed
    assert pub.stats.messages[TOPICS.audio] == 2 and pub.stats.bytes_sent == sum(len(v) for v in values)
    producer.futures[1].errbacks[0](RuntimeError("NotEnoughReplicas"))  # the broker refused one
    assert pub.stats.failed == 1 and pub.stats.errors == [f"{TOPICS.text} c1/u0 text: NotEnoughReplicas"]


class FailingFlush(FakeProducer):
    """The broker refuses every message, as kafka-python reports it: each future's errback, at the
    flush that waited for it."""

    def flush(self, timeout: float | None = None) -> None:
        super().flush(timeout)
        for future in self.futures:
            for errback in future.errbacks:
                errback(RuntimeError("KafkaTimeoutError: Expiring 1 record(s)"))
            future.errbacks = []


def test_a_message_the_broker_did_not_take_is_raised_not_only_counted() -> None:
    """Found in review: with the broker away, the README's `with Publisher(...)` block waited out
    kafka-python's delivery timeout and ended normally, every message lost and only counted."""
    from client.publisher import DeliveryFailed

    with pytest.raises(DeliveryFailed) as caught, Publisher(SETTINGS, FailingFlush()) as pub:
        pub.start_call("c1", ["text"])
        pub.text("c1", "u0", 0, "customer", "hello")
    assert caught.value.failed == 2 and caught.value.errors == [
        f"{TOPICS.control} c1 started: KafkaTimeoutError: Expiring 1 record(s)",  # which to send again
        f"{TOPICS.text} c1/u0 text: KafkaTimeoutError: Expiring 1 record(s)",
    ]
    pub = Publisher(SETTINGS, FailingFlush())
    pub.text("c1", "u1", 1, "customer", "again")
    with pytest.raises(DeliveryFailed, match=r"1 message\(s\) not delivered"):
        pub.flush()
    pub.flush()  # each failure is raised once
    pub.text("c1", "u2", 2, "customer", "and again")
    pub.flush(check=False)  # counted only, as `emostream feed` wants it (its report says so)
    assert pub.stats.failed == 2
    with pytest.raises(ZeroDivisionError), Publisher(SETTINGS, FailingFlush()) as pub:  # the caller's own error
        pub.text("c1", "u0", 0, "customer", "hello")  # is not replaced by the failed delivery
        1 / 0  # noqa: B018


def test_a_flush_and_a_close_never_wait_for_ever_on_a_stuck_producer() -> None:
    """An operator's trial: after a 4-minute broker outage kafka-python's idempotent producer lost its
    producer id, and the batches it held neither went nor expired: feed waited in flush() (no
    timeout) for ever, its Ctrl-C handler's close() flushed again, and only kill -9 stopped it."""
    from kafka.errors import KafkaTimeoutError

    from client.publisher import CLOSE_S, FLUSH_BOUND_S
    from streams.errors import ServiceUnavailable

    class Sender:
        forced = False

        def force_close(self) -> None:  # kafka-python's: stop without sending, fail the batches held
            self.forced = True

        def join(self, timeout: float | None = None) -> None:
            pass

    class Stuck(FakeProducer):
        """kafka-python 3.0's producer with a batch that neither goes nor expires: its flush raises at
        its timeout, and so does its close(), which flushes first, until its sender is forced."""

        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float | None] = []
            self._sender = Sender()

        def flush(self, timeout: float | None = None) -> None:
            self.waits.append(timeout)
            if not self._sender.forced:
                raise KafkaTimeoutError("Timeout waiting for future")  # (at the timeout)

        def close(self, timeout: float | None = None) -> None:
            self.flush(timeout)
            super().close()

    stuck = Stuck()
    pub = Publisher(SETTINGS, stuck)
    pub._own = True  # as if it had made its producer
    pub.text("c1", "u0", 0, "customer", "hello")
    with pytest.raises(ServiceUnavailable, match="within 150 s .past the producer's own delivery timeout"):
        pub.flush()
    with pytest.raises(ServiceUnavailable, match="within 10 s"):  # no second long wait; no raw KafkaTimeoutError
        pub.close(check=False)
    assert stuck.waits == [FLUSH_BOUND_S, CLOSE_S, 0.0, 0.0] and stuck._sender.forced and stuck.closed
    # an error under way (feed's Ctrl-C) is not replaced by the close's
    stuck = Stuck()
    pub = Publisher(SETTINGS, stuck)
    pub._own = True
    with pytest.raises(KeyboardInterrupt), pub:
        pub.text("c1", "u0", 0, "customer", "hello")
        raise KeyboardInterrupt
    assert stuck.waits == [FLUSH_BOUND_S, 0.0, 0.0] and stuck.closed


def test_a_producer_that_came_back_after_a_flush_ran_out_is_closed_as_any_other() -> None:
    """A review: once a flush had timed out, close() skipped its flush and forced the producer shut for
    good, a later healthy close aborting what it held and raising nothing."""
    from kafka.errors import KafkaTimeoutError

    from client.publisher import CLOSE_S, FLUSH_BOUND_S, DeliveryFailed
    from streams.errors import ServiceUnavailable

    class Back(FakeProducer):
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float | None] = []
            self.down = True

        def flush(self, timeout: float | None = None) -> None:
            self.waits.append(timeout)
            if self.down:
                raise KafkaTimeoutError("Timeout waiting for future")

        def close(self, timeout: float | None = None) -> None:
            self.waits.append(timeout)
            super().close()

    back = Back()
    pub = Publisher(SETTINGS, back)
    pub._own = True
    pub.text("c1", "u0", 0, "customer", "hello")
    with pytest.raises(ServiceUnavailable):
        pub.flush()
    back.down = False
    pub.flush()  # the broker is back: everything went
    pub.text("c1", "u1", 1, "customer", "again")
    back.futures[-1].errbacks[0](RuntimeError("NotEnoughReplicas"))  # one the broker refused meanwhile
    with pytest.raises(DeliveryFailed, match="c1/u1 text: NotEnoughReplicas"):  # said by close(), as before
        pub.close()
    assert back.waits == [FLUSH_BOUND_S, FLUSH_BOUND_S, FLUSH_BOUND_S, CLOSE_S] and back.closed


def test_a_flush_that_runs_out_of_time_and_a_failed_flush_in_close_still_close_the_producer() -> None:
    from kafka.errors import KafkaTimeoutError

    from client.publisher import DeliveryFailed
    from streams.errors import ServiceUnavailable

    class Slow(FakeProducer):
        def flush(self, timeout: float | None = None) -> None:
            raise KafkaTimeoutError("Timeout waiting for future")

    with pytest.raises(ServiceUnavailable, match="did not acknowledge what was sent within 0.5 s"):
        Publisher(SETTINGS, Slow()).flush(0.5)
    made = FailingFlush()
    pub = Publisher(SETTINGS, made)
    pub._own = True  # as if it had made its producer
    pub.text("c1", "u0", 0, "customer", "hello")
    with pytest.raises(DeliveryFailed):
        pub.close()
    assert made.closed


def _file(seconds: float, fmt: str, rate: int = 8000) -> bytes:
    """A WAV or FLAC file of a 300 Hz tone."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    tone = 0.3 * np.sin(2 * np.pi * 300 * np.arange(round(seconds * rate)) / rate)
    sf.write(buf, tone, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("send", "why"),
    [
        (lambda p: p.audio("c", "u0", 0, "A", b"\xff" * 800, "pcm_mulaw", 16000), "pcm_mulaw is G.711 at 8000 Hz"),
        # a telephone trial: files the client passed and the workers dead-lettered
        (lambda p: p.audio("c", "u0", 0, "A", _file(2.0, "WAV")[:16000], "wav"), "truncated wav payload"),
        (lambda p: p.audio("c", "u0", 0, "A", b"\xff\x7f" * 8000, "wav"), "no RIFF/WAVE header: raw samples"),
        (lambda p: p.audio("c", "u0", 0, "A", _file(0.05, "WAV"), "wav"), "audio too short: 0.0500 s"),
        (lambda p: p.audio("c", "u0", 0, "A", _file(0.05, "FLAC"), "flac"), "audio too short: 0.0500 s"),
        (lambda p: p.audio("c", "u0", 0, "A", _file(61.0, "FLAC"), "flac"), "audio of 61.0 s is over limits.max"),
        (lambda p: p.audio("c", "u0", 0, "A", b"\x01\x00" * 800, "pcm_s16le", 12345), "sample_rate 12345 Hz"),
        (lambda p: p.audio("c", "u0", 0, "A", b"", "pcm_s16le", 16000), "the audio 'data' is empty"),
        # an integrator's trial: 'data' of 1 or 2 bytes (4 base64 characters) passed as not empty
        (lambda p: p.audio("c", "u0", 0, "A", b"\x00\x01", "pcm_mulaw", 8000), "audio of 0.0003 s is too short"),
        (lambda p: p.audio("c", "u0", 0, "A", b"\xff" * 799, "pcm_alaw"), "audio of 0.0999 s is too short"),
        (lambda p: p.audio("c", "u0", 0, "A", b"\x01" * 3201, "pcm_s16le"), "odd 3201 bytes"),
        (lambda p: p.audio("c", "u0", 0, "A", b"\xff" * 8000 * 61, "pcm_mulaw"), "over limits.max_audio_s .60 s."),
        (lambda p: p.text("c", "u0", 0, "A", "x" * 5001), "over limits.max_text_chars"),
    ],
)
def test_the_publisher_refuses_what_the_workers_would_dead_letter(send: Any, why: str) -> None:
    """Found in review: pydantic took these, the JSON Schema (or the text limit) refuses them, and
    the worker dead-lettered them; the publisher promised a ValueError instead. Each is checked to
    be refused by the worker too, so the two cannot drift apart unseen."""
    from streams.errors import InvalidMessage
    from streams.schemas import parse_input
    from streams.validate import to_payload

    producer = FakeProducer()
    with pytest.raises(ValueError, match=why):
        send(Publisher(SETTINGS, producer))
    assert producer.sent == []
    sent = FakeProducer()  # the same message, sent as bytes, as another client would
    unchecked = Publisher(SETTINGS, sent)
    unchecked.send = lambda m: unchecked.send_raw(unchecked.topic_of(m), m.call_id, m.to_bytes())  # type: ignore[method-assign]
    send(unchecked)
    ((topic, _, value),) = sent.sent
    with pytest.raises(InvalidMessage):
        part = parse_input("audio" if topic == TOPICS.audio else "text", value, 1 << 22)
        to_payload(part, {"text": 384, "audio": 768, "video": 0}, SETTINGS.limits)


def test_the_publisher_takes_raw_audio_of_the_workers_bounds_and_refuses_audio_that_is_no_bytes() -> None:
    producer = FakeProducer()
    pub = Publisher(SETTINGS, producer)
    pub.audio("c", "u0", 0, "A", b"\xff" * 800, "pcm_mulaw")  # 0.1 s
    pub.audio("c", "u1", 1, "A", b"\x01\x00" * 1102, "pcm_s16le", 11025)  # int(0.1 * 11025) samples
    pub.audio("c", "u2", 2, "A", b"\xff" * 8000 * 60, "pcm_alaw")  # 60 s
    pub.audio("c", "u3", 3, "A", np.ones(800, dtype="<i2"), "pcm_s16le", 8000)  # a buffer, as base64 takes it
    pub.audio("c", "u4", 4, "A", _file(0.1, "WAV"), "wav")
    pub.audio("c", "u5", 5, "A", _file(0.1, "FLAC", 16000), "flac")
    assert len(producer.sent) == 6
    assert base64.b64decode(AudioPart.model_validate_json(producer.sent[3][2]).data or "") == b"\x01\x00" * 800
    with pytest.raises(TypeError, match="data must be the audio's bytes .or a buffer., not str"):  # (base64's bare one)
        pub.audio("c", "u3", 3, "A", "RIFF....", "wav")  # type: ignore[arg-type]


def test_a_started_that_names_no_modality_is_refused() -> None:
    """The worker takes it, warns, and waits join.wait_s for the default's audio (an operator's
    trial): a client's start_call("c", []) is a mistake said where it is made."""
    producer = FakeProducer()
    with pytest.raises(ValueError, match=r"a 'started' with modalities \[\] .the workers then expect"):
        Publisher(SETTINGS, producer).start_call("c", [])
    assert producer.sent == []
    Publisher(SETTINGS, producer).start_call("c")  # none given: join.default_modalities, as documented
    assert CallControl.model_validate_json(producer.sent[0][2]).modalities is None


def test_a_started_sent_again_is_the_same_message_and_one_modality_is_one_name() -> None:
    """Found in review: `at` is how the worker tells a `started` sent again from a new call under
    the id, and start_call had no way to send the same one twice."""
    producer = FakeProducer()
    pub = Publisher(SETTINGS, producer)
    pub.start_call("c1", ["text"], at=1_700_000_000.5)
    pub.start_call("c1", ["text"], at=1_700_000_000.5)
    pub.start_call("c2", "text")
    pub.end_call("c1", at=1_700_000_060.0)
    first, again, one, end = [v for _, _, v in producer.sent]
    assert first == again and CallControl.model_validate_json(first).at == 1_700_000_000.5
    assert CallControl.model_validate_json(one).modalities == ["text"]
    assert CallControl.model_validate_json(end).at == 1_700_000_060.0


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


def test_a_call_id_used_again_is_another_call_for_the_tracker() -> None:
    """Found in review: events were related on (call_id, utterance_id), so the new call's
    provisional events were taken for stale revisions of the old call's and dropped, and its
    revisions named the old call's events as the ones they replace."""
    from streams.schemas import event_id

    old_r1 = make_event(revision=1, label="joy")
    new_r0 = make_event(revision=0, label="anger", event_id=event_id("call-7", "u3", 0, "42"))
    new_r1 = make_event(revision=1, label="sadness", event_id=event_id("call-7", "u3", 1, "42"))
    tracker = Tracker(TOPICS)
    assert tracker.accept(TOPICS.emotions, old_r1.to_bytes()) is not None
    got = tracker.accept(TOPICS.emotions, new_r0.to_bytes())
    assert got is not None and not got.stale and got.previous is None
    got = tracker.accept(TOPICS.emotions, new_r1.to_bytes())
    assert got is not None and not got.stale and got.previous == new_r0
    assert tracker.latest("call-7", "u3") == new_r1 and tracker.latest("call-7~g42", "u3") == new_r1
    old_u5 = make_event(utterance_id="u5", seq=5, revision=1)  # the old call's, read late
    tracker.accept(TOPICS.emotions, old_u5.to_bytes())
    new_u6 = make_event(utterance_id="u6", seq=6, event_id=event_id("call-7", "u6", 0, "42"))
    tracker.accept(TOPICS.emotions, new_u6.to_bytes())
    assert tracker.latest("call-7", "u5") is None  # the new call has no u5 (found in review: it gave the old one's)
    ids = make_event(call_id="a:b", utterance_id="c:d", revision=1)  # ids may hold ':'
    from client.subscriber import call_instance_of

    assert call_instance_of(ids) == "a:b"
    assert call_instance_of(make_event(event_id=event_id("a:b", "c:d", 0, "7"), call_id="a:b", utterance_id="c:d")) == (
        "a:b~g7"
    )


def test_a_dead_letter_delivered_twice_is_passed_on_once() -> None:
    tracker = Tracker(TOPICS)
    letter = DeadLetter(reason="bad_json", detail="x", source_topic=TOPICS.text, partition=0, offset=3, key="c",
                        payload="")  # fmt: skip
    other = letter.model_copy(update={"offset": 4})
    assert tracker.accept(TOPICS.deadletter, letter.to_bytes()) is not None
    assert tracker.accept(TOPICS.deadletter, letter.to_bytes()) is None
    assert tracker.accept(TOPICS.deadletter, other.to_bytes()) is not None
    assert tracker.duplicates == 1
    nowhere = letter.model_copy(update={"source_topic": "", "partition": -1, "offset": -1})  # a failed utterance's
    assert tracker.accept(TOPICS.deadletter, nowhere.to_bytes()) is not None
    assert tracker.accept(TOPICS.deadletter, nowhere.model_copy(update={"key": "d"}).to_bytes()) is not None


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


def test_the_subscriber_says_when_it_skips_records_that_are_not_what_its_topic_carries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscriber pointed at the wrong topic (its settings' topics not the workers') counted every
    record as invalid and said nothing: a `for got in sub` loop saw nothing, for ever (an
    integrator's trial). The first five and every 1000th are logged."""
    report = b'{"schema_version": 1, "kind": "report", "call_id": "c"}'
    batches = [[Record(TOPICS.emotions, report, 2, i) for i in range(999)], [Record(TOPICS.emotions, b"{", 2, 999)]]
    sub = Subscriber(SETTINGS, consumer=FakeConsumer(batches))
    with caplog.at_level(logging.WARNING, logger="emostream.client"):
        assert sub.poll() == [] and sub.poll() == []
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 6 and sub.tracker.invalid == 1000
    assert said[0].startswith(
        f"subscriber: skipped a record that is no events of this version on {TOPICS.emotions}[2]@0: "
    )
    assert "@999: Invalid JSON" in said[5] and "[1000 so far" in said[5]  # its own error, not the fifth's


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


@pytest.mark.timeout(60)  # a loop that polls on after close() spins without yielding
def test_the_async_subscriber_polls_again_after_an_error_and_polls_no_more_once_closed() -> None:
    """Found in review: one failed poll was kept and raised by every later poll, none of which polled
    again; and close() let an `async for` under way start a poll while the consumer closed."""

    class Flaky(FakeConsumer):
        def __init__(self, batches: list[list[Record]]) -> None:
            super().__init__(batches)
            self.polls, self.after_close = 0, 0

        def poll(self, timeout_ms: int) -> dict[str, list[Record]]:
            self.polls += 1
            self.after_close += self.closed
            if self.polls == 1:
                raise ConnectionError("transient")
            return super().poll(timeout_ms)

    async def scenario() -> tuple[list[str], Flaky]:
        consumer = Flaky([[Record(TOPICS.emotions, make_event().to_bytes())]])
        sub = await AsyncSubscriber(SETTINGS, consumer=consumer).start()
        with pytest.raises(ConnectionError):
            await sub.poll(0.01)
        got = [g.record.utterance_id for g in await sub.poll(0.01)]
        seen: list[int] = []

        async def read() -> None:
            async for _ in sub:
                pass
            seen.append(consumer.polls)

        reading = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        await sub.close()
        consumer.closed = True  # (the sync subscriber does not close a consumer it was given)
        await asyncio.wait_for(reading, 5)
        assert seen == [consumer.polls]  # the loop ended without another poll
        return got, consumer

    got, consumer = asyncio.run(scenario())
    assert got == ["u3"] and consumer.polls >= 3 and consumer.after_close == 0


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


def test_an_async_subscriber_closed_while_it_connects_closes_what_it_made() -> None:
    """Found in review: close() during start() found nothing to close, and the consumer made then
    was never closed."""
    import threading

    made: list[Any] = []
    release = threading.Event()

    class Slow(Subscriber):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            release.wait(5)
            super().__init__(*args, **kwargs)
            made.append(self)

    async def scenario() -> None:
        import client.subscriber as module

        sub = AsyncSubscriber(SETTINGS, consumer=FakeConsumer([]))
        real, module.Subscriber = module.Subscriber, Slow  # type: ignore[misc]
        try:
            starting = asyncio.ensure_future(sub.start())
            await asyncio.sleep(0.05)
            await sub.close()
            release.set()
            await starting
        finally:
            module.Subscriber = real  # type: ignore[misc]

    asyncio.run(scenario())
    assert len(made) == 1 and made[0].closed


def test_poll_through_reads_a_recreated_topic_from_its_oldest_record_and_says_so() -> None:
    """The supervisor page's feed resumes from the positions it had read: a topic recreated shorter
    than them raised on every poll (the feed's consumer resets nothing by itself); now its position
    moves to the oldest record there, with a note."""
    from kafka import TopicPartition
    from kafka.errors import OffsetOutOfRangeError

    from client.subscriber import poll_through

    tp = TopicPartition("emostream.emotions", 0)

    class Consumer:
        seeks: list[tuple[TopicPartition, int]] = []

        def poll(self, timeout_ms: int) -> dict:  # type: ignore[type-arg]
            if not self.seeks:
                raise OffsetOutOfRangeError({tp: 50})
            return {tp: ["r"]}

        def assignment(self) -> set[TopicPartition]:
            return {tp}

        def beginning_offsets(self, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
            return {p: 0 for p in parts}

        def end_offsets(self, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
            return {p: 10 for p in parts}

        def seek(self, part: TopicPartition, offset: int) -> None:
            self.seeks.append((part, offset))

    c = Consumer()
    batches, notes = poll_through(c, 100)
    assert batches == {} and c.seeks == [(tp, 0)]
    assert notes == ["emostream.emotions[0]: offset 50 is past the end (10): the topic was recreated? reading it "
                     "from its oldest record, offset 0"], notes  # fmt: skip
    assert poll_through(c, 100) == ({tp: ["r"]}, [])


def test_two_tasks_polling_one_async_subscriber_each_get_their_own_records() -> None:
    """Found in review: two tasks polling at once awaited the same poll, so both got its records (and
    the next batch went to neither until they polled again)."""
    import time

    class Slow(FakeConsumer):
        def poll(self, timeout_ms: int) -> dict[str, list[Record]]:
            time.sleep(0.05)
            return super().poll(timeout_ms)

    events = [make_event(utterance_id=f"u{i}", seq=i, event_id=f"e{i}") for i in range(2)]

    async def scenario() -> list[list[str]]:
        sub = await AsyncSubscriber(
            SETTINGS, consumer=Slow([[Record(TOPICS.emotions, e.to_bytes())] for e in events])
        ).start()
        got = await asyncio.gather(sub.poll(0.01), sub.poll(0.01))
        await sub.close()
        return [[g.record.utterance_id for g in one] for one in got]

    assert sorted(asyncio.run(scenario())) == [["u0"], ["u1"]]


def test_poll_through_reads_on_after_a_truncated_log_and_a_group_consumer_is_left_to_its_group() -> None:
    """Found in review: without a reset policy kafka-python raises LogTruncationError (an unclean
    leader election rolled the log back), which `subscribe` did not catch; and TopicReader assigned
    new partitions to a caller's consumer that a group assigns, which raises every time."""
    from kafka import TopicPartition
    from kafka.errors import IllegalStateError, LogTruncationError
    from kafka.structs import OffsetAndMetadata

    from client.subscriber import TopicReader, poll_through

    a, b = TopicPartition("t", 0), TopicPartition("t", 1)

    class Consumer:
        def __init__(self) -> None:
            self.seeks: list[tuple[TopicPartition, int | str]] = []
            self.polls = 0

        def poll(self, timeout_ms: int) -> dict:  # type: ignore[type-arg]
            self.polls += 1
            if self.polls == 1:
                raise LogTruncationError({a: OffsetAndMetadata(7, "", 3), b: None})
            return {}

        def seek(self, tp: TopicPartition, offset: int) -> None:
            self.seeks.append((tp, offset))

        def seek_to_beginning(self, *tps: TopicPartition) -> None:
            self.seeks += [(tp, "beginning") for tp in tps]

        def assignment(self) -> set[TopicPartition]:
            return {a}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0, 1}

        def assign(self, parts: list[TopicPartition]) -> None:
            raise IllegalStateError("subscribed to a group")

    c = Consumer()
    batches, notes = poll_through(c, 10)
    assert batches == {} and c.seeks == [(a, 7), (b, "beginning")], c.seeks
    assert "t[0]: the log was truncated" in notes[0] and "reading on from there" in notes[0], notes
    now = [0.0]
    reader = TopicReader(c, ["t"], every_s=1.0, clock=lambda: now[0])
    now[0] = 2.0
    assert reader.poll(10) == ({}, []) and reader.every_s == float("inf")  # its group assigns: not watched


class _NoTopics:
    """A KafkaConsumer whose broker has none of the topics asked for."""

    closed = False

    def __init__(self, **_: Any) -> None:
        pass

    def partitions_for_topic(self, topic: str) -> None:
        return None

    def close(self) -> None:
        _NoTopics.closed = True


def test_a_subscriber_waits_for_missing_topics_as_long_as_a_worker_start_takes_logged_not_printed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A library does not print, and does not wait for ever unless asked: by default the wait is
    kafka.startup_timeout_s, then an error that says what to look at."""
    import kafka

    from streams.errors import ServiceUnavailable

    clock = [0.0]
    monkeypatch.setattr(kafka, "KafkaConsumer", _NoTopics)
    monkeypatch.setattr("client.subscriber.time.monotonic", lambda: clock[0])

    def sleep(s: float) -> None:
        assert clock[0] < 1000, "still waiting after 1000 s"
        clock[0] += s

    monkeypatch.setattr("client.subscriber.time.sleep", sleep)
    settings = Settings(kafka={"startup_timeout_s": 150})
    with caplog.at_level(logging.WARNING, logger="emostream.client"), pytest.raises(ServiceUnavailable) as err:
        Subscriber(settings, ("events",))
    assert 150 <= clock[0] <= 152 and _NoTopics.closed
    assert "topic emostream.emotion.events does not exist at 127.0.0.1:9092 after 150 s" in str(err.value)
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == (
        "waiting for topic emostream.emotion.events to exist (its name as the workers' kafka.topics say?) ..."
    )
    assert said[1:] == [f"{said[0]} (for {s} s now)" for s in (60, 120)]  # and every minute after
    assert capsys.readouterr().err == ""
