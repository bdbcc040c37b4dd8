"""Publish a call's control messages and its utterances' parts to emostream's input topics.

Every message is keyed by its call id (a call's parts stay on one partition, where one worker
joins them) and validated by its schema before it leaves (:mod:`streams.schemas`: a wrong field
raises ``pydantic.ValidationError`` here rather than becoming a dead letter there; so do the
schema's rules that pydantic does not check, the audio's sample rate and a transcript longer than
``limits.max_text_chars``, as a ``ValueError``: :func:`refused`). The producer is idempotent with
``acks=all``: a retry after a lost acknowledgement never writes a part twice. Sends are
asynchronous; :meth:`Publisher.flush` waits for the broker's acknowledgements and raises
:class:`DeliveryFailed` for the messages the broker did not take since the last flush (``close``
and the ``with`` block's end flush too), and :attr:`Publisher.stats` counts what was sent and what
failed (the first few errors, each with its topic and message: call/utterance and kind, or call and event).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engines.features.codecs import G711, MIN_SECONDS, declared_rate, header_problem, sample_width
from streams.errors import EmostreamError, InvalidMessage, ServiceUnavailable
from streams.kafka import kafka_python_options, unreachable
from streams.schemas import AUDIO_RATES, AudioPart, CallControl, Part, TextPart, VideoPart, encode_f32
from streams.settings import LimitSettings, Settings, TopicSettings

log = logging.getLogger("emostream.client")

Message = Part | CallControl


def input_topic(topics: TopicSettings, message: Message) -> str:
    """The input topic a part or control message goes to."""
    return topics.control if isinstance(message, CallControl) else getattr(topics, message.kind)  # type: ignore[no-any-return]


def refused(message: Message, limits: LimitSettings) -> str | None:
    """Why the workers would dead-letter ``message`` though pydantic took it (the JSON Schema's
    rules on audio, ``limits.max_text_chars``), or None. The audio itself is not decoded here: a
    header that lies about its rate, raw samples of another encoding than named, or a FLAC cut
    short, still reach the workers' dead letters (``undecodable_audio``); a WAV or FLAC file's
    header is read (:func:`engines.features.codecs.header_problem`: another format than named, a
    WAV cut short, fewer frames than 0.1 s)."""
    if isinstance(message, CallControl) and message.event == "started" and message.modalities == []:
        return ("a 'started' with modalities [] (the workers then expect join.default_modalities): name what the "
                "call sends, or leave modalities out")  # fmt: skip
    if isinstance(message, TextPart) and message.text is not None and len(message.text) > limits.max_text_chars:
        return f"a transcript of {len(message.text)} characters is over limits.max_text_chars ({limits.max_text_chars})"
    if not isinstance(message, AudioPart) or message.encoding == "features":
        return None
    rate, encoding = message.sample_rate, message.encoding
    if encoding in G711 and rate not in (None, 8000):
        return f"{encoding} is G.711 at 8000 Hz, not {rate} Hz"
    if rate is not None and rate not in AUDIO_RATES:
        return f"sample_rate {rate} Hz is not one of {', '.join(map(str, AUDIO_RATES))}"
    data = message.data or ""
    size = len(data) * 3 // 4 - (len(data) - len(data.rstrip("=")))  # the bytes it decodes to (padded base64)
    if size <= 0:
        return "the audio 'data' is empty"
    if encoding not in ("pcm_s16le", *G711):  # a file: what its header shows (the rest, the workers find)
        try:
            return header_problem(message.audio_bytes(), encoding, limits.max_audio_s)
        except InvalidMessage as exc:  # (not base64)
            return exc.detail
    width = sample_width(encoding)
    if size % width:
        return f"{encoding} audio of an odd {size} bytes (2 bytes a sample)"
    hz = declared_rate(encoding, rate)  # (its rate checked above: the workers' rule, not raised here)
    seconds = size / width / hz
    if size // width < int(MIN_SECONDS * hz):  # (as the workers count it)
        return f"audio of {seconds:.4f} s is too short: at least {MIN_SECONDS} s"
    if seconds > limits.max_audio_s:
        return f"audio of {seconds:.1f} s is over limits.max_audio_s ({limits.max_audio_s:g} s)"
    return None


class DeliveryFailed(EmostreamError):
    """Messages the broker did not take (after the producer's own retries): ``failed`` of them,
    ``errors`` the first few (topic, the message, ``c1/u0 text`` or ``c1 started``, and the error).
    Each is lost unless sent again."""

    def __init__(self, failed: int, errors: list[str]) -> None:
        self.failed, self.errors = failed, errors
        super().__init__(f"{failed} message(s) not delivered: {'; '.join(errors)}")


@dataclass
class PublishStats:
    messages: dict[str, int] = field(default_factory=dict)  # topic -> messages sent
    bytes_sent: int = 0
    failed: int = 0  # messages the broker did not acknowledge
    errors: list[str] = field(default_factory=list)  # the first few delivery errors ("topic c1/u0 text: error")


def make_producer(settings: Settings) -> Any:
    """The kafka-python producer every publisher uses (connection options from :mod:`streams.kafka`)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(
            **kafka_python_options(settings),
            acks="all",
            enable_idempotence=True,  # a retry after a lost response does not write twice (chaos.producer)
            linger_ms=5,
            max_request_size=settings.limits.max_message_bytes,
            max_block_ms=15_000,
            reconnect_backoff_max_ms=1_000,  # a broker back from a restart gets the buffered parts within 1 s, not 30
        )
    except KafkaError as exc:
        raise unreachable(settings, exc) from exc


#: the longest a flush with no timeout of its own waits: kafka-python's delivery timeout (120 s), then
#: a margin. Past it, a batch not acknowledged and not failed is stuck: a batch that expired in flight
#: leaves kafka-python 3.0's idempotent producer without a producer id, and the batches behind it then
#: neither go nor expire (an operator's trial: feed waited in flush for ever after a 4-minute broker
#: outage, and Ctrl-C and SIGTERM could not stop it)
FLUSH_BOUND_S = 150.0
#: the longest close waits for the producer's own close after that flush
CLOSE_S = 10.0


class Publisher:
    """Sends parts and call control; ``producer`` replaces the one made from ``settings`` (it is
    then not closed by :meth:`close`)."""

    def __init__(self, settings: Settings, producer: Any = None) -> None:
        self.settings = settings
        self._stuck = False  # a flush ran past the producer's own delivery timeout (flush)
        self.topics = settings.kafka.topics
        self._own = producer is None
        self.producer = make_producer(settings) if producer is None else producer
        self.stats = PublishStats()
        self._lock = threading.Lock()  # stats change on callers' threads and the producer's sender thread
        self._reported = 0  # stats.failed already raised by flush (DeliveryFailed)
        self._unreported: list[str] = []  # the first few errors not raised yet

    # -- the messages -------------------------------------------------------------------------
    def start_call(self, call_id: str, modalities: Iterable[str] | None = None, at: float | None = None) -> Any:
        """A call begins; ``modalities`` are the parts its utterances will carry (the worker waits
        for those, and no others); None: the worker's ``join.default_modalities``. ``at``: when
        (epoch seconds; None: now). Sending a ``started`` again (a retry after
        :class:`DeliveryFailed`) needs the same ``at``: a ``started`` with another one is a new
        call under the same id, which ends this one."""
        listed = None if modalities is None else [modalities] if isinstance(modalities, str) else list(modalities)
        when = {} if at is None else {"at": at}
        return self.send(CallControl(call_id=call_id, event="started", modalities=listed, **when))  # type: ignore[arg-type]

    def end_call(self, call_id: str, at: float | None = None) -> Any:
        """The call is over: its last utterances are labelled with what came, its context is freed."""
        when = {} if at is None else {"at": at}
        return self.send(CallControl(call_id=call_id, event="ended", **when))  # type: ignore[arg-type]

    def text(self, call_id: str, utterance_id: str, seq: int, speaker: str, text: str, **times: float | None) -> Any:
        """An utterance's transcript (``start_s``/``end_s`` in seconds from the call's start, optional)."""
        return self.send(TextPart(call_id=call_id, utterance_id=utterance_id, seq=seq, speaker=speaker, text=text,
                                  **times))  # type: ignore[arg-type]  # fmt: skip

    def text_embedding(
        self, call_id: str, utterance_id: str, seq: int, speaker: str, embedding: Sequence[float], **times: float | None
    ) -> Any:
        """An utterance's transcript as a sentence embedding from the model's own text encoder
        (sent as ``embedding_f32``: base64 of little-endian float32)."""
        return self.send(TextPart(call_id=call_id, utterance_id=utterance_id, seq=seq, speaker=speaker,
                                  embedding_f32=encode_f32(embedding), **times))  # type: ignore[arg-type]  # fmt: skip

    def audio(
        self,
        call_id: str,
        utterance_id: str,
        seq: int,
        speaker: str,
        data: bytes,
        encoding: str,
        sample_rate: int | None = None,
        **times: float | None,
    ) -> Any:
        """An utterance's speech: ``data`` in ``encoding`` (``pcm_mulaw``/``pcm_alaw`` at 8 kHz for a
        telephone line, ``pcm_s16le`` at ``sample_rate``, ``flac``, ``wav``)."""
        try:  # bytes, or any buffer (a numpy array of int16 samples); base64 of a str raised a bare TypeError
            memoryview(data)
        except TypeError:
            raise TypeError(f"data must be the audio's bytes (or a buffer), not {type(data).__name__}") from None
        part = AudioPart(call_id=call_id, utterance_id=utterance_id, seq=seq, speaker=speaker,
                         encoding=encoding, sample_rate=sample_rate, data=base64.b64encode(data).decode(),
                         **times)  # type: ignore[arg-type]  # fmt: skip
        return self.send(part)

    def audio_features(
        self, call_id: str, utterance_id: str, seq: int, speaker: str, features: Sequence[float], **times: float | None
    ) -> Any:
        """An utterance's audio as a vector from the model's own audio extractor."""
        return self.send(AudioPart(call_id=call_id, utterance_id=utterance_id, seq=seq, speaker=speaker,
                                   encoding="features", features_f32=encode_f32(features), **times))  # type: ignore[arg-type]  # fmt: skip

    def video(
        self, call_id: str, utterance_id: str, seq: int, speaker: str, features: Sequence[float], **times: float | None
    ) -> Any:
        """An utterance's visual features (from the caller's face pipeline)."""
        return self.send(VideoPart(call_id=call_id, utterance_id=utterance_id, seq=seq, speaker=speaker,
                                   features_f32=encode_f32(features), **times))  # type: ignore[arg-type]  # fmt: skip

    def send(self, message: Message) -> Any:
        """Any part or control message, to its topic; returns the producer's future. A message the
        workers would refuse though its schema's pydantic model took it (:func:`refused`) raises
        ``ValueError`` and is not sent."""
        why = refused(message, self.settings.limits)
        if why is not None:
            raise ValueError(f"{message.call_id}: not sent, the workers would dead-letter it: {why}")
        what = f"{message.call_id} {message.event}" if isinstance(message, CallControl) else (
            f"{message.call_id}/{message.utterance_id} {message.kind}"
        )  # fmt: skip
        return self.send_raw(self.topic_of(message), message.call_id, message.to_bytes(), what)

    def send_raw(self, topic: str, call_id: str, value: bytes, what: str | None = None) -> Any:
        """Bytes already encoded (a replay, or a test's malformed message), keyed by ``call_id``.

        Raises ``ValueError`` for a message over ``limits.max_message_bytes`` (the broker and the
        workers refuse it: retrying cannot help; send long audio as several utterances or as
        features), :class:`~streams.errors.ServiceUnavailable` when the broker cannot be reached in
        time (retry later), and kafka-python's other errors as they are. ``what``: the message as
        :class:`DeliveryFailed` names it if the broker does not take it (default: its call id)."""
        from kafka.errors import RetriableError

        limit = self.settings.limits.max_message_bytes
        if len(value) > limit:
            raise ValueError(f"a {len(value)}-byte message to {topic} is over limits.max_message_bytes ({limit})")
        from kafka.errors import MessageSizeTooLargeError

        try:
            future = self.producer.send(topic, key=call_id.encode(), value=value)
        except MessageSizeTooLargeError as exc:  # under the limit, but not with its key and the record's overhead
            raise ValueError(
                f"a {len(value)}-byte message to {topic} is, with its key and Kafka's record overhead, over "
                f"limits.max_message_bytes ({limit})"
            ) from exc
        except RetriableError as exc:  # timeouts, connections: the broker may come back
            raise ServiceUnavailable(f"cannot send to {topic} at {self.settings.kafka.brokers}: {exc}") from exc
        if hasattr(future, "add_errback"):
            future.add_errback(functools.partial(self._failed, topic, what or call_id))
        with self._lock:
            self.stats.messages[topic] = self.stats.messages.get(topic, 0) + 1
            self.stats.bytes_sent += len(value)
        return future

    def topic_of(self, message: Message) -> str:
        return input_topic(self.topics, message)

    # -- delivery -----------------------------------------------------------------------------
    def flush(self, timeout_s: float | None = None, check: bool = True) -> None:
        """Wait until the broker has acknowledged (or refused) everything sent. ``check``: raise
        :class:`DeliveryFailed` if messages failed since the last flush that raised (each is lost
        unless sent again); else they are only counted in :attr:`stats`. A flush that runs out of
        ``timeout_s`` (None: :data:`FLUSH_BOUND_S`) raises :class:`~streams.errors.ServiceUnavailable`:
        what the broker has not acknowledged by then may be lost."""
        from kafka.errors import KafkaTimeoutError

        bound = FLUSH_BOUND_S if timeout_s is None else timeout_s
        try:
            self.producer.flush(timeout=bound)
        except KafkaTimeoutError as exc:
            past = bound >= FLUSH_BOUND_S
            self._stuck = self._stuck or past  # past the delivery timeout: close() waits only CLOSE_S more
            raise ServiceUnavailable(
                f"the broker at {self.settings.kafka.brokers} did not acknowledge what was sent within {bound:g} s"
                + (
                    " (past the producer's own delivery timeout: what it holds is lost unless sent again)"
                    if past
                    else ""
                )
            ) from exc
        self._stuck = False  # everything went (the broker back): the producer is not stuck
        if check:
            self._check()

    def _check(self) -> None:
        """Raise :class:`DeliveryFailed` for the messages that failed since the last time it was raised."""
        with self._lock:
            failed, errors = self.stats.failed - self._reported, self._unreported
            self._reported, self._unreported = self.stats.failed, []
        if failed:
            raise DeliveryFailed(failed, errors)

    def close(self, check: bool = True) -> None:
        """Flush, and close the producer if this publisher made it (also when the flush raised);
        ``check``: then raise :class:`DeliveryFailed` for what failed, the batches a stuck producer's
        close gave up on included. After a flush that waited past the delivery timeout, the flush
        here waits only ``CLOSE_S``."""
        try:
            self.flush(timeout_s=CLOSE_S if self._stuck else None, check=False)
        finally:
            if self._own:
                self._close_producer()
        if check:
            self._check()

    def _close_producer(self) -> None:
        """Close the producer within ``CLOSE_S``: kafka-python's close() flushes first, and raises at its
        timeout without closing anything when a batch is stuck; its sender is then told to stop without
        sending (the batches it holds fail, counted in :attr:`stats`), so nothing is left running and
        no error of the close replaces one under way."""
        from kafka.errors import KafkaTimeoutError

        try:
            self.producer.close(timeout=0.0 if self._stuck else CLOSE_S)
            return
        except KafkaTimeoutError:
            pass
        sender = getattr(self.producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(CLOSE_S)
        try:
            self.producer.close(timeout=0.0)
        except KafkaTimeoutError:
            log.warning("the Kafka producer did not close: its batches are left unsent")

    def _failed(self, topic: str, what: str, exc: BaseException) -> None:  # on kafka-python's sender thread
        said = f"{topic} {what}: {exc}"
        with self._lock:
            self.stats.failed += 1
            if len(self.stats.errors) < 5:
                self.stats.errors.append(said)
            if len(self._unreported) < 5:
                self._unreported.append(said)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # an exception under way (the caller's, a Ctrl-C) is not replaced by the close's own
            self.close(check=False)
        except Exception as closing:  # noqa: BLE001
            log.warning("closing the publisher after %s: %s", getattr(exc_type, "__name__", exc_type), closing)


class AsyncPublisher:
    """:class:`Publisher` for asyncio code: connecting and each call run in a thread (kafka-python
    blocks while it connects, waits for metadata or buffer space), so the event loop never does.
    ``async with AsyncPublisher(settings) as pub`` (or ``await pub.start()``)."""

    def __init__(self, settings: Settings, producer: Any = None) -> None:
        self._settings, self._producer = settings, producer
        self._publisher: Publisher | None = None

    async def start(self) -> AsyncPublisher:
        if self._publisher is None:
            self._publisher = await asyncio.to_thread(Publisher, self._settings, self._producer)
        return self

    @property
    def _sync(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("AsyncPublisher not started: use 'async with' or 'await pub.start()'")
        return self._publisher

    @property
    def stats(self) -> PublishStats:
        return self._sync.stats

    async def start_call(self, call_id: str, modalities: Iterable[str] | None = None, at: float | None = None) -> Any:
        return await asyncio.to_thread(self._sync.start_call, call_id, modalities, at)

    async def end_call(self, call_id: str, at: float | None = None) -> Any:
        return await asyncio.to_thread(self._sync.end_call, call_id, at)

    async def text(
        self, call_id: str, utterance_id: str, seq: int, speaker: str, text: str, **times: float | None
    ) -> Any:
        return await asyncio.to_thread(self._sync.text, call_id, utterance_id, seq, speaker, text, **times)

    async def audio(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`Publisher.audio`."""
        return await asyncio.to_thread(self._sync.audio, *args, **kwargs)

    async def text_embedding(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`Publisher.text_embedding`."""
        return await asyncio.to_thread(self._sync.text_embedding, *args, **kwargs)

    async def audio_features(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`Publisher.audio_features`."""
        return await asyncio.to_thread(self._sync.audio_features, *args, **kwargs)

    async def video(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`Publisher.video`."""
        return await asyncio.to_thread(self._sync.video, *args, **kwargs)

    async def send(self, message: Message) -> Any:
        return await asyncio.to_thread(self._sync.send, message)

    async def flush(self, timeout_s: float | None = None, check: bool = True) -> None:
        await asyncio.to_thread(self._sync.flush, timeout_s, check)

    async def close(self, check: bool = True) -> None:
        if self._publisher is not None:
            await asyncio.to_thread(self._publisher.close, check)

    async def __aenter__(self) -> AsyncPublisher:
        return await self.start()

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        await self.close(check=exc_type is None)
