"""Replay dialogues into the input topics, as a call center's front end would.

:func:`feed` sends, per call, a ``started`` :class:`~streams.schemas.CallControl` naming the
modalities it will send, then each utterance's parts to the text/audio/video topics, then
``ended``; keys are call ids, so a call's parts stay in one partition. In real-time mode utterances
go out when they end in the conversation (divided by ``speed``) and calls overlap, up to
``concurrency`` lines at a time, a new call every ``stagger_s`` seconds; otherwise everything goes
out as fast as possible in the same order. The schedule is plain functions (:func:`send_offsets`,
:func:`call_starts`, :func:`plan`) so it is tested without Kafka; the messages go out through
:class:`client.Publisher`.
"""

from __future__ import annotations

import base64
import heapq
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from client.publisher import Publisher, input_topic, refused
from engines.features.codecs import transcode
from engines.modalities import MODALITIES
from streams.schemas import AudioPart, Part, TextPart, VideoPart, encode_f32
from streams.settings import Settings, TopicSettings
from tools.dialogues import Dialogue, Utterance

log = logging.getLogger(__name__)


@dataclass
class FeedReport:
    calls: int = 0
    utterances: int = 0
    messages: dict[str, int] = field(default_factory=dict)  # topic -> messages sent
    bytes_sent: int = 0
    failed: int = 0  # messages the broker did not acknowledge
    errors: list[str] = field(default_factory=list)  # the first few delivery errors
    duration_s: float = 0.0

    def summary(self) -> str:
        total = sum(self.messages.values())
        text = (
            f"fed {self.calls} calls, {self.utterances} utterances: {total} messages, "
            f"{self.bytes_sent / 1e6:.2f} MB in {self.duration_s:.1f} s"
        )
        return text + (f"; {self.failed} FAILED ({'; '.join(self.errors[:3])})" if self.failed else "")


@dataclass(frozen=True)
class Step:
    at: float  # seconds after the replay starts (wall clock: conversation time / speed)
    call_id: str
    kind: Literal["started", "utterance", "ended"]
    utterance: Utterance | None = None


def send_offsets(utterances: Sequence[Utterance], default_gap_s: float = 1.5, max_gap_s: float = 10.0) -> list[float]:
    """When each utterance is complete, in seconds from its call's start.

    An utterance is sent at its ``end_s`` (else its ``start_s`` plus ``default_gap_s``, else
    ``default_gap_s`` after the previous one); times never go backwards and a silence longer than
    ``max_gap_s`` (a scene cut in TV data) is shortened to it.
    """
    out: list[float] = []
    prev = 0.0
    for u in utterances:
        if u.end_s is not None:
            t = u.end_s
        elif u.start_s is not None:
            t = u.start_s + default_gap_s
        else:
            t = prev + default_gap_s
        t = min(max(t, prev), prev + max_gap_s)
        out.append(t)
        prev = t
    return out


def call_starts(durations: Sequence[float], concurrency: int | None, stagger_s: float) -> list[float]:
    """Start time of each call: one arrives every ``stagger_s`` s and waits for a free line."""
    lines: list[float] = [0.0] * (concurrency or len(durations) or 1)
    starts = []
    for i, duration in enumerate(durations):
        start = max(i * stagger_s, heapq.heappop(lines))
        heapq.heappush(lines, start + duration)
        starts.append(start)
    return starts


def plan(
    dialogues: Sequence[Dialogue],
    realtime: bool,
    speed: float = 1.0,
    concurrency: int | None = 4,
    stagger_s: float = 2.0,
    hangup_s: float = 1.0,
) -> list[Step]:
    """Every call's steps in send order. Without ``realtime`` all times are 0 (same order)."""
    if speed <= 0:
        raise ValueError("speed must be > 0")
    offsets = [send_offsets(d.utterances) for d in dialogues]
    durations = [(o[-1] if o else 0.0) + hangup_s for o in offsets]
    starts = call_starts(durations, concurrency, stagger_s)
    steps: list[tuple[float, int, Step]] = []
    for d, start, offs, duration in zip(dialogues, starts, offsets, durations, strict=True):
        steps.append((start, len(steps), Step(start, d.call_id, "started")))
        for u, off in zip(d.utterances, offs, strict=True):
            steps.append((start + off, len(steps), Step(start + off, d.call_id, "utterance", u)))
        steps.append((start + duration, len(steps), Step(start + duration, d.call_id, "ended")))
    steps.sort(key=lambda s: (s[0], s[1]))
    return [Step(s.at / speed if realtime else 0.0, s.call_id, s.kind, s.utterance) for _, _, s in steps]


def part_of(u: Utterance, modality: str, audio_as: tuple[str, int | None] | None = None) -> Part | None:
    """One modality of an utterance as its message, or None if it lacks that modality.
    ``audio_as``: (encoding, sample rate or None) to send audio bytes in, e.g. ('pcm_mulaw', 8000)
    for a telephone line; by default as they are."""
    common: dict[str, Any] = dict(
        call_id=u.call_id, utterance_id=u.utterance_id, seq=u.seq, speaker=u.speaker, start_s=u.start_s, end_s=u.end_s
    )
    if modality == "text" and u.text is not None:
        return TextPart(text=u.text, **common)
    if modality == "audio" and u.audio is not None:
        audio, encoding, rate = u.audio, str(u.audio_encoding or "flac"), u.audio_rate
        if audio_as is not None:
            audio, rate = transcode(audio, encoding, *audio_as, rate=rate)
            encoding = audio_as[0]
        data = base64.b64encode(audio).decode()
        return AudioPart(encoding=encoding, sample_rate=rate, data=data, **common)  # type: ignore[arg-type]
    if modality == "audio" and u.audio_features is not None:
        return AudioPart(encoding="features", features_f32=encode_f32(u.audio_features), **common)
    if modality == "video" and u.video_features is not None:
        return VideoPart(features_f32=encode_f32(u.video_features), **common)
    return None


#: bytes a Kafka record batch adds to one message beside its key (kafka-python counts them against
#: max_request_size; about 70 for a batch of one, with room to spare)
RECORD_OVERHEAD = 256


def _send(publisher: Publisher, part: Part) -> None:
    """One part; a message the broker would refuse names its utterance."""
    try:
        publisher.send(part)
    except ValueError as exc:
        raise ValueError(f"{part.call_id}/{part.utterance_id}: {exc}") from exc


def part_message(
    u: Utterance, modality: str, topics: TopicSettings, audio_as: tuple[str, int | None] | None = None
) -> tuple[str, bytes] | None:
    """(topic, JSON value) of :func:`part_of` (for tests and tools that send bytes themselves)."""
    part = part_of(u, modality, audio_as)
    if part is None:
        return None
    return input_topic(topics, part), part.to_bytes()


def feed(
    dialogues: Sequence[Dialogue],
    settings: Settings,
    realtime: bool,
    speed: float = 1.0,
    modalities: Iterable[str] = MODALITIES,
    progress: bool = True,
    audio_delay_s: float = 0.0,
    send_control: bool = True,
    *,
    audio_as: tuple[str, int | None] | None = None,
    concurrency: int | None = 4,
    stagger_s: float = 2.0,
    producer: Any = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> FeedReport:
    """Send ``dialogues`` to the input topics and flush; see the module docstring.

    ``audio_delay_s`` sends each audio part that many wall-clock seconds after its text (a slow
    audio pipeline; not divided by ``speed``); a call's ``ended`` waits for its delayed audio.
    ``producer`` replaces the KafkaProducer made from ``settings`` (it is then not closed).
    ``audio_as`` sends audio bytes in another encoding and rate (see :func:`part_message`).
    """
    wanted = [m for m in MODALITIES if m in set(modalities)]
    unknown = set(modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; choose from {MODALITIES}")
    limit, max_bytes = settings.limits.max_text_chars, settings.limits.max_message_bytes
    for d in dialogues:  # the worker would dead-letter them, the broker refuse them: say so before anything is sent
        for u in d.utterances:
            if "text" in wanted and u.text is not None and len(u.text) > limit:
                raise ValueError(
                    f"{_where(d, u)}: {u.call_id}/{u.utterance_id}: text of {len(u.text)} characters, "
                    f"over limits.max_text_chars ({limit})"
                )
            for m in wanted:
                if m == "audio" and audio_as is not None:
                    continue  # transcoded audio is measured as it is sent
                part = part_of(u, m)
                why = None if part is None else refused(part, settings.limits)  # (the publisher would raise it)
                if why is not None:
                    raise ValueError(f"{_where(d, u)}: {u.call_id}/{u.utterance_id}: its {m} part: {why}")
                size = 0 if part is None else len(part.to_bytes())
                if size + len(u.call_id.encode()) + RECORD_OVERHEAD > max_bytes:
                    raise ValueError(
                        f"{_where(d, u)}: {u.call_id}/{u.utterance_id}: its {m} part is a {size}-byte "
                        f"message, over limits.max_message_bytes ({max_bytes}) with its key and Kafka's record "
                        "overhead: send long audio as several utterances"
                    )
    publisher = Publisher(settings, producer)
    report = FeedReport(calls=len(dialogues))
    declared = {d.call_id: [m for m in d.modalities() if m in wanted] for d in dialogues}

    from tqdm import tqdm

    total = sum(len(d.utterances) for d in dialogues)
    bar = tqdm(total=total, unit="utt", desc="feed", file=sys.stderr, disable=not (progress and sys.stderr.isatty()))
    queue: list[tuple[float, int, Step, str]] = [(s.at, i, s, "") for i, s in enumerate(plan(
        dialogues, realtime, speed, concurrency, stagger_s))]  # fmt: skip
    counter = len(queue)
    pending: dict[str, float] = {}  # call id -> when its last delayed audio part goes out
    active: set[str] = set()
    t0 = clock()
    under_way = True  # an error leaves the loop (until its end says otherwise)
    try:
        while queue:
            at, _, step, modality = heapq.heappop(queue)
            if step.kind == "ended" and pending.get(step.call_id, -1.0) > at:
                heapq.heappush(queue, (pending[step.call_id], counter, step, ""))
                counter += 1
                continue
            wait = at - (clock() - t0)
            if wait > 0:
                sleep(wait)
            if step.kind == "started":
                if send_control:
                    publisher.start_call(step.call_id, declared[step.call_id] or None)  # (none of those sent: no part)
                active.add(step.call_id)  # (once its `started` is out)
            elif step.kind == "ended":
                if send_control:
                    publisher.end_call(step.call_id)
                active.discard(step.call_id)  # (once its `ended` is out)
            elif modality:  # a delayed audio part
                assert step.utterance is not None
                part = part_of(step.utterance, modality, audio_as)
                if part is not None:
                    _send(publisher, part)
            else:
                assert step.utterance is not None
                messages = []  # all built before any is sent: parts of one utterance leave together
                for m in wanted:
                    if m == "audio" and audio_delay_s > 0 and "audio" in step.utterance.modalities():
                        due = clock() - t0 + audio_delay_s
                        heapq.heappush(queue, (due, counter, step, m))
                        counter += 1
                        pending[step.call_id] = due
                        continue
                    messages.append(part_of(step.utterance, m, audio_as))
                for message in messages:
                    if message is not None:
                        _send(publisher, message)
                report.utterances += 1
                bar.set_postfix(calls=len(active), refresh=False)
                bar.update(1)
        publisher.flush(check=False)  # what failed is in the report (stats), and the exit status
        under_way = False
    except (KeyboardInterrupt, ValueError):  # stopped (Ctrl-C, SIGTERM) or a part refused: the calls under way
        if send_control:  # are ended, not left open (not after a broker failure: those would wait in vain)
            for call_id in sorted(active):
                try:
                    publisher.end_call(call_id)
                except Exception:  # noqa: BLE001 - the broker itself may be what failed; the first error is raised
                    break
        raise
    finally:
        bar.close()
        try:
            publisher.close(check=False)  # flushes; closes the producer only if it made it
        except Exception:
            if not under_way:  # else the error under way (a Ctrl-C, say) goes on, not replaced by the close's
                raise
    stats = publisher.stats
    report.messages, report.bytes_sent, report.failed, report.errors = (
        stats.messages,
        stats.bytes_sent,
        stats.failed,
        stats.errors,
    )
    report.duration_s = clock() - t0
    return report


def _where(d: Dialogue, u: Utterance) -> str:
    """The file and line an utterance came from ("calls.jsonl:14"), or its call's source."""
    return f"{d.source}:{u.line}" if d.source and u.line is not None else (d.source or d.call_id)
