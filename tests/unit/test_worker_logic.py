"""The worker's logic with fakes for transport, engine and Redis (the real ones are in
tests/integration). Checks the join -> batch -> publish -> ack order and dead letters."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.interface import EMOTIONS, EngineBatch, EngineInfo, EngineOutput, FeatureSpec
from streams.context import CallState, ContextItem, PreviousStart
from streams.metrics import Metrics
from streams.pipeline import Processor
from streams.schemas import AudioPart, CallControl, DeadLetter, EmotionEvent, TextPart, VideoPart
from streams.settings import Settings
from streams.worker import (
    NOTHING_READ_GRACE_S,
    QUIET_SWEEP_S,
    RECOVERED_GRACE_S,
    UNANSWERED_S,
    Lease,
    PartitionEnd,
    Worker,
)


class FakeEngine:
    info = EngineInfo(name="fake", version="0", features=FeatureSpec({"text": 4, "audio": 3}), max_window=4)

    def __init__(self) -> None:
        self.batches: list[EngineBatch] = []

    def predict(self, batch: EngineBatch) -> EngineOutput:
        self.batches.append(batch)
        b = batch.size
        logits = np.zeros((b, len(EMOTIONS)), dtype=np.float32)
        logits[:, 4] = 1.0
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        weights = batch.present[:, -1, :] / np.maximum(batch.present[:, -1, :].sum(1, keepdims=True), 1)
        return EngineOutput(logits, probs, np.full((b,), 0.5, np.float32), weights)


class FakeFeaturizer:
    def text(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4), np.float32)

    def audio(self, waves: list[np.ndarray]) -> np.ndarray:
        return np.ones((len(waves), 3), np.float32)


class FakeStore:
    window = 8

    def __init__(self) -> None:
        self.data: dict[str, list[ContextItem]] = {}
        self.released: list[str] = []
        self.declarations: dict[str, list[str]] = {}
        self.trimmed: dict[str, set[str]] = {}  # ids appended but no longer in the window
        self.joined: dict[str, dict[str, str]] = {}
        self.closed: dict[str, int] = {}  # released -> its 'ended' offset, until a later 'started' uses the id
        self.forgot: list[str] = []  # ids used again: what their previous call labelled was forgotten
        self.generation: dict[str, str] = {}  # ids used again: the offset of the 'started' that did
        self.starts: dict[str, tuple[int, str]] = {}  # call -> the offset and 'at' of its last 'started'
        self.active: dict[int, dict[str, float]] = {}  # partition -> call -> when it last labelled something

    async def fetch(self, calls: list[str]) -> dict[str, list[ContextItem]]:
        return {c: list(self.data.get(c, [])) for c in calls}

    def forget_cached(self) -> None:
        self.forgotten = getattr(self, "forgotten", 0) + 1

    async def append(self, items: dict[str, list[ContextItem]]) -> None:
        for c, new in items.items():
            self.data.setdefault(c, []).extend(new)

    async def touch(self, calls: dict[str, tuple[int, float]]) -> None:
        for c, (p, at) in calls.items():
            scores = self.active.setdefault(p, {})
            scores[c] = max(at, scores.get(c, at))

    async def quiet(self, partition: int, since: float, limit: int = 100) -> list[tuple[str, float]]:
        scores = self.active.get(partition, {})
        return sorted(((c, at) for c, at in scores.items() if at <= since), key=lambda x: x[1])[:limit]

    async def forget_quiet(self, partition: int, since: float) -> int:
        scores = self.active.get(partition, {})
        gone = [c for c, at in scores.items() if at <= since]
        for c in gone:
            del scores[c]
        return len(gone)

    async def untrack(self, partition: int, calls: list[str]) -> None:
        for c in calls:
            self.active.get(partition, {}).pop(c, None)

    async def closed_before(self, calls: list[str]) -> set[str]:
        return {c for c in calls if c in self.closed}

    async def release(
        self, calls: list[str], ended: dict[str, int] | None = None, partitions: dict[str, int] | None = None
    ) -> None:
        for c, p in (partitions or {}).items():
            self.active.get(p, {}).pop(c, None)
        self.released += calls
        self.closed.update({c: (ended or {}).get(c, -1) for c in calls})
        for c in calls:
            self.data.pop(c, None)
            self.declarations.pop(c, None)

    async def record_joins(self, joins: dict[str, dict[str, str]]) -> None:
        for call, mapping in joins.items():
            self.joined.setdefault(call, {}).update(mapping)

    async def state(self, calls: list[str], asking: Any = None) -> dict[str, CallState]:
        windows = await self.fetch(calls)  # tests replace fetch to fail or to race
        return {
            c: CallState(
                window=windows[c],
                labelled={i.utterance_id for i in self.data.get(c, [])} | self.trimmed.get(c, set()),
                joins=dict(self.joined.get(c, {})),
                generation=self.generation.get(c, ""),
            )
            for c in calls
        }

    async def generations(self, calls: list[str]) -> dict[str, str]:
        return {c: self.generation.get(c, "") for c in calls}

    async def previous_start(self, call: str) -> PreviousStart:
        labelled = {i.utterance_id for i in self.data.get(call, [])} | self.trimmed.get(call, set())
        previous, identity = self.starts.get(call, (None, ""))
        return PreviousStart(previous, identity, self.closed.get(call), len(labelled))

    async def started(self, call: str, modalities: list[str], offset: int, identity: str = "") -> bool:
        closed, (previous, sent) = self.closed.get(call), self.starts.get(call, (None, ""))
        if (closed is not None and offset <= closed) or (previous is not None and offset <= previous):
            return False  # read again after a crash
        if previous is not None and identity and sent == identity:
            return False  # the same message again
        if modalities:
            self.declarations[call] = modalities
        self.starts[call] = (offset, identity)
        if closed is None and previous is None:
            return False
        self.closed.pop(call, None)
        self.data.pop(call, None)
        self.joined.pop(call, None)
        self.trimmed.pop(call, None)
        self.forgot.append(call)
        self.generation[call] = str(offset)
        return True

    async def declared(self, call: str) -> list[str] | None:
        return self.declarations.get(call)


class Handle:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def ack(self) -> None:
        self.log.append(f"ack {self.name}")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(**join: Any) -> tuple[Worker, list[tuple[str, bytes]], list[str], FakeStore, FakeEngine]:
    settings = Settings(join={"wait_s": 0.2, **join}, engine={"max_batch": 8, "max_wait_s": 0.0})
    sent: list[tuple[str, bytes]] = []
    log: list[str] = []

    async def send(topic: str, key: bytes | None, value: bytes, event_key: str | None) -> Any:
        sent.append((topic, value))
        log.append(f"send {topic}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    store, engine = FakeStore(), FakeEngine()
    worker = Worker(
        settings,
        Processor(engine, FakeFeaturizer(), store),
        Metrics(),
        send,  # type: ignore[arg-type]
        clock=Clock(),
    )
    return worker, sent, log, store, engine


def text(call: str, utt: str, seq: int, speaker: str = "A", words: str = "hello") -> bytes:
    return TextPart(call_id=call, utterance_id=utt, seq=seq, speaker=speaker, text=words).to_bytes()


def audio(call: str, utt: str, seq: int) -> bytes:
    return AudioPart(call_id=call, utterance_id=utt, seq=seq, encoding="features", features=[0.1, 0.2, 0.3]).to_bytes()


def events(sent: list[tuple[str, bytes]], topic: str = "emostream.emotion.events") -> list[EmotionEvent]:
    return [EmotionEvent.model_validate_json(v) for t, v in sent if t == topic]


def test_joined_utterance_is_published_before_its_parts_are_acked() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make()
        t = w.settings.kafka.topics
        await w.on_message(t.audio, 0, 0, b"c", audio("c", "u0", 0), Handle(log, "a0"))
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"))
        await w.pump()
        (ev,) = events(sent)
        assert ev.call_id == "c" and ev.label == "joy" and ev.modalities_present == ["text", "audio"]
        assert ev.weights == {"text": 0.5, "audio": 0.5, "video": 0.0}
        assert log.index("send emostream.emotion.events") < log.index("ack a0")
        assert [i.utterance_id for i in store.data["c"]] == ["u0"]

    asyncio.run(scenario())


def test_parts_that_disagree_on_seq_and_speaker_are_labelled_counted_and_logged(caplog: Any) -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make()
        t = w.settings.kafka.topics
        part = AudioPart(
            call_id="c", utterance_id="u0", seq=7, speaker="customer", encoding="features", features=[0.1] * 3
        )
        await w.on_message(t.audio, 0, 0, b"c", part.to_bytes(), Handle(log, "a0"))
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0, speaker="agent"), Handle(log, "t0"))
        await w.pump()
        (ev,) = events(sent)  # one event from both parts: nothing dead-lettered, nothing lost
        assert (ev.seq, ev.speaker, ev.modalities_present) == (0, "agent", ["text", "audio"])
        assert {"ack a0", "ack t0"} <= set(log) and not [v for tp, v in sent if tp == t.deadletter]
        got = _metrics(w)
        assert 'emostream_inconsistent_parts_total{field="seq"} 1.0' in got
        assert 'emostream_inconsistent_parts_total{field="speaker"} 1.0' in got
        assert "this text part says seq 0 speaker 'agent', but its audio part seq 7 speaker 'customer'" in caplog.text

    caplog.set_level(logging.WARNING, logger="emostream.worker")
    asyncio.run(scenario())


def test_joins_expire_while_batches_keep_coming() -> None:
    """Under a steady load the pump never runs out of batches: an utterance whose audio never
    comes must still go out after wait_s, not once the load stops (found in the bench: the gauges
    stood still for minutes at full load)."""

    async def scenario() -> None:
        w, sent, log, store, engine = make()
        clock: Any = w.clock
        send = w.send

        async def slow_send(*args: Any) -> Any:
            clock.now += 0.05  # 8 events a batch: 0.4 s
            return await send(*args)

        w.send = slow_send
        t = w.settings.kafka.topics
        await w.on_message(t.text, 0, 0, b"x", text("x", "u0", 0), Handle(log, "x0"))  # its audio never comes
        for k in range(24):  # three full batches
            await w.on_message(t.audio, 0, k, b"c%d" % k, audio(f"c{k}", "u0", 0), Handle(log, f"a{k}"))
            await w.on_message(t.text, 0, k + 1, b"c%d" % k, text(f"c{k}", "u0", 0), Handle(log, f"t{k}"))
        await w.pump()
        assert len(events(sent)) == 25 and [e.modalities_present for e in events(sent) if e.call_id == "x"] == [
            ["text"]
        ]
        assert w.metrics.open_utterances._value.get() == 0  # the gauges follow too

    asyncio.run(scenario())


def test_context_window_grows_within_a_batch_and_across_batches() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        for i in range(3):
            await w.on_message(t.text, 0, i, b"c", text("c", f"u{i}", i, "AB"[i % 2]), Handle(log, f"t{i}"))
        await w.pump()
        await w.on_message(t.text, 0, 3, b"c", text("c", "u3", 3, "B"), Handle(log, "t3"))
        await w.pump()
        assert [e.context_size for e in events(sent)] == [1, 2, 3, 4]
        last = engine.batches[-1]
        assert last.speakers.tolist() == [[0, 1, 0, 1]] and last.valid.tolist() == [[1, 1, 1, 1]]

    asyncio.run(scenario())


class Shedding(Handle):
    """A handle that says when the worker lets go of its record's bytes (streams.app._Handle.shed)."""

    def shed(self) -> None:
        self.log.append(f"shed {self.name}")


def test_a_part_waiting_for_its_utterance_holds_only_its_ack_not_its_record() -> None:
    """A part's ack waits for its utterance's event (up to join.max_hold_s): its record's bytes (audio
    up to limits.max_message_bytes, an oversized one past it) are let go once it is joined or
    dead-lettered, not held with the ack; join.max_held_audio_s counts only the decoded voices. Before,
    a dead-lettered part's record (the case of an oversized one) was held, uncounted, until its
    utterance went."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=30.0)
        t = w.settings.kafka.topics
        big = b'{"schema_version": 1, "kind": "audio", "call_id": "c", "utterance_id": "u0", "seq": 0, "x": "'
        big += b"a" * w.settings.limits.max_message_bytes + b'"}'
        await w.on_message(t.audio, 1, 7, b"c", big, Shedding(log, "big"))
        assert [DeadLetter.model_validate_json(v).reason for tp, v in sent if tp == t.deadletter] == ["oversized"]
        assert "shed big" in log and "ack big" not in log  # its utterance waits for it no longer, its ack with it
        await w.on_message(t.audio, 1, 8, b"c", audio("c", "u1", 1), Shedding(log, "a1"))
        assert "shed a1" in log and "ack a1" not in log  # joined: its payload waits for the text
        await w.on_message(t.text, 1, 9, b"c", text("c", "u0", 0), Shedding(log, "t0"))
        await w.on_message(t.text, 1, 10, b"c", text("c", "u1", 1), Shedding(log, "t1"))
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0", "u1"]
        assert list(events(sent)[0].ignored) == ["audio"] and events(sent)[1].modalities_present == ["text", "audio"]
        assert {"ack big", "ack a1", "ack t0", "ack t1"} <= set(log)
        assert log.index("shed big") < log.index("ack big") and log.index("shed a1") < log.index("ack a1")

    asyncio.run(scenario())


def test_bad_messages_go_to_dead_letters_and_valid_ones_still_get_events() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        bad_audio = AudioPart(
            call_id="c", utterance_id="u1", seq=1, encoding="flac", data=base64.b64encode(b"not flac at all").decode()
        ).to_bytes()
        wrong_size = TextPart(call_id="c", utterance_id="u2", seq=2, embedding=[1.0, 2.0]).to_bytes()
        await w.on_message(t.text, 1, 5, b"c", b"{oops", Handle(log, "bad1"))
        await w.on_message(t.text, 1, 6, b"c", text("c", "u0", 0), Handle(log, "good"))
        await w.on_message(t.audio, 1, 7, b"c", bad_audio, Handle(log, "bad2"))
        await w.on_message(t.text, 1, 8, b"c", wrong_size, Handle(log, "bad3"))
        await w.pump()
        dead = [DeadLetter.model_validate_json(v) for tp, v in sent if tp == t.deadletter]
        assert [(d.reason, d.offset) for d in dead] == [
            ("malformed_json", 5),
            ("undecodable_audio", 7),
            ("wrong_embedding_size", 8),
        ]
        assert base64.b64decode(dead[0].payload) == b"{oops" and dead[0].source_topic == t.text
        assert [e.utterance_id for e in events(sent)] == ["u0"]
        assert {"ack bad1", "ack good"} <= set(log)
        clock: Any = w.clock
        clock.now += 1.0  # u1 and u2 (their only parts dead-lettered) waited in vain: their parts are acked as they go
        await w.pump()
        assert {"ack bad2", "ack bad3"} <= set(log) and [e.utterance_id for e in events(sent)] == ["u0"]

    asyncio.run(scenario())


def test_a_dead_lettered_part_is_acked_with_its_utterance_so_a_replay_meets_it_again() -> None:
    """Audio that does not decode is dead-lettered at once, but its ack waits for its utterance's
    event: acked at once, a crash before that event left the replay without it, waiting the whole
    join wait for an audio part that was never read again and labelling without saying why."""

    def bad(utt: str, seq: int) -> bytes:
        return AudioPart(
            call_id="c", utterance_id=utt, seq=seq, encoding="flac", data=base64.b64encode(b"not flac").decode()
        ).to_bytes()

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=30.0)
        t = w.settings.kafka.topics
        await w.on_message(t.audio, 1, 7, b"c", bad("u0", 0), Handle(log, "bad0"))
        assert [DeadLetter.model_validate_json(v).reason for tp, v in sent if tp == t.deadletter] == [
            "undecodable_audio"
        ]
        assert "ack bad0" not in log  # dead-lettered, not yet acked: its utterance has no event yet
        # a crash here: a new worker reads both parts again, and labels at once, saying why
        w, sent, log, store, engine = make(wait_s=30.0)
        await w.on_message(t.audio, 1, 7, b"c", bad("u0", 0), Handle(log, "bad0"))
        await w.on_message(t.text, 1, 8, b"c", text("c", "u0", 0), Handle(log, "t0"))
        await w.pump()
        (ev,) = events(sent)
        assert ev.modalities_present == ["text"] and list(ev.ignored) == ["audio"]
        assert ev.ignored["audio"].startswith("dead-lettered: undecodable_audio ("), ev.ignored  # and its detail
        assert log.index("send emostream.emotion.events") < log.index("ack bad0")
        assert "ack t0" in log
        # an utterance whose only part was dead-lettered gives no event, and its part is acked once it goes
        await w.on_message(t.audio, 1, 9, b"c", bad("u1", 1), Handle(log, "bad1"))
        assert "ack bad1" not in log
        clock: Any = w.clock
        clock.now += 31.0
        await w.pump()
        assert "ack bad1" in log and len(events(sent)) == 1
        # a dead-lettered part of an utterance already labelled is acked at once
        await w.on_message(t.audio, 1, 10, b"c", bad("u0", 0), Handle(log, "bad0 again"))
        assert "ack bad0 again" in log

    asyncio.run(scenario())


def test_a_part_of_a_modality_the_model_does_not_use_is_said_to_be_ignored() -> None:
    """Found by a newcomer: video sent to the shipped model (no video input) came back in
    modalities_present with nothing in `ignored`, as if it had been used."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "video"))
        t = w.settings.kafka.topics
        video = VideoPart(call_id="c", utterance_id="u0", seq=0, features=[0.5] * 8).to_bytes()
        await w.on_message(t.video, 0, 0, b"c", video, Handle(log, "v0"))
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"))
        await w.pump()
        (ev,) = events(sent)
        assert ev.ignored == {"video": "this model uses no video"} and ev.weights["video"] == 0.0
        assert "ack v0" in log
        # not counted with audio without speech: a text-only model would set off the no-speech alert
        assert 'emostream_ignored_parts_total{modality="video"} 0.0' in _metrics(w)

    asyncio.run(scenario())


def test_a_part_acked_without_an_event_says_why_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """Found by a newcomer: feeding a file twice gave no event, no dead letter and no log line
    (only a counter moved); nor did a part that came after its utterance was labelled."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"))
        t = w.settings.kafka.topics
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"))
        await w.on_message(t.audio, 0, 0, b"c", audio("c", "u0", 0), Handle(log, "a0"))
        await w.pump()
        await w.on_message(t.text, 0, 1, b"c", text("c", "u0", 0), Handle(log, "t0 again"))
        await w.on_message(t.text, 0, 2, b"c", text("c", "u1", 1), Handle(log, "t1"))
        w.clock.now += 1.0  # type: ignore[attr-defined]
        await w.pump()  # u1 goes without audio
        await w.on_message(t.audio, 0, 3, b"c", audio("c", "u1", 1), Handle(log, "a1"))
        assert len(events(sent)) == 2 and {"ack t0 again", "ack a1"} <= set(log)

    with caplog.at_level(logging.INFO, logger="emostream.worker"):
        asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("c/u0: its text part came again") and "send it under new" in m for m in said), said
    assert any(m.startswith("c/u1: its audio part came too late (after the utterance was labelled") for m in said), said


def test_call_end_waits_for_parts_still_in_flight_then_flushes_and_releases_context() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=5.0)
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"))
        end = CallControl(call_id="c", event="ended").to_bytes()
        await w.on_message(t.control, 0, 0, b"c", end, Handle(log, "end"))
        await w.pump()
        assert events(sent) == [] and store.released == []  # the audio may still be on its way
        clock.now += 1.0
        await w.on_message(t.audio, 0, 0, b"c", audio("c", "u0", 0), Handle(log, "a0"))
        await w.on_message(t.text, 0, 1, b"c", text("c", "u1", 1), Handle(log, "t1"))  # behind 'ended' too
        await w.pump()
        assert [e.modalities_present for e in events(sent)] == [["text", "audio"]]
        clock.now += 4.0
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0", "u1"]
        assert events(sent)[1].modalities_present == ["text"]
        assert store.released == ["c"] and "c" not in store.data and log[-1] == "ack end"

    asyncio.run(scenario())


def started(at: float, call: str = "c") -> bytes:
    """A text call's 'started', stamped ``at`` by its producer (its identity for a resend)."""
    return CallControl(call_id=call, event="started", modalities=["text"], at=at).to_bytes()


async def spoken_call(w: Worker, log: list[str], names: tuple[str, str] = ("s0", "c1"), words: str = "hello") -> None:
    """Call c began ('started' at offset 0, stamped 99, record time 100) and said u0 (offset 0,
    record time 100.5), labelled; no 'ended'. ``names``: the two messages' handles."""
    t = w.settings.kafka.topics
    await w.on_message(t.control, 0, 0, b"c", started(99.0), Handle(log, names[0]), timestamp=100.0)
    await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0, words=words), Handle(log, names[1]), timestamp=100.5)
    await w.pump()


async def ended_call(w: Worker, log: list[str], first: str = "t0") -> bytes:
    """Call c's utterance u0 (text, sent at 100) and its 'ended' (sent at 101), at offsets 0 and 1 of
    partition 0; returns the 'ended' message."""
    t = w.settings.kafka.topics
    await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, first), timestamp=100.0)
    end = CallControl(call_id="c", event="ended").to_bytes()
    await w.on_message(t.control, 0, 1, b"c", end, Handle(log, "end"), timestamp=101.0)
    return end


async def closed_call(w: Worker, log: list[str], first: str = "t0") -> None:
    """:func:`ended_call`, its close done (``join.wait_s`` of 1 s past), and the control partition's
    end offset at 9: read only to the 'ended', it is behind any later record time."""
    w.highwater = lambda topic, partition: PartitionEnd(9, 0.1) if topic == w.settings.kafka.topics.control else None
    await ended_call(w, log, first)
    w.clock.now += 1.5  # type: ignore[attr-defined]
    await w.pump()


def test_a_part_sent_after_its_call_ended_is_dead_lettered_one_sent_in_time_is_labelled() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await ended_call(w, log)
        clock.now += 1.5
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0"] and store.released == ["c"]
        # sent in time, read after the close (a backlog): labelled, as before
        await w.on_message(t.text, 0, 2, b"c", text("c", "u1", 1), Handle(log, "backlog"), timestamp=101.5)
        clock.now += 1.5
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0", "u1"]
        other = CallControl(call_id="d", event="started").to_bytes()  # the control topic read on, past it
        await w.on_message(t.control, 0, 4, b"d", other, Handle(log, "d"), timestamp=240.0)
        await w.on_message(t.text, 0, 3, b"c", text("c", "u2", 2), Handle(log, "late"), timestamp=170.0)
        clock.now += 1.5
        await w.pump()
        dead = [DeadLetter.model_validate_json(v) for tp, v in sent if tp == t.deadletter]
        assert [(d.reason, d.offset, d.utterance_id) for d in dead] == [("after_call_ended", 3, "u2")]
        assert "was sent 69.0 s after, past join.end_wait_s 1 s and 60 s of clock skew" in dead[0].detail
        assert [e.utterance_id for e in events(sent)] == ["u0", "u1"]  # no event for it
        assert "ack late" in log
        assert 'emostream_deadletters_total{reason="after_call_ended"} 1.0' in _metrics(w)

    asyncio.run(scenario())


def test_a_call_id_used_again_while_its_previous_call_closes_waits_for_that_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        end = await ended_call(w, log)
        await w.pump()
        # the id used again before the previous call closed: the new call's messages are held...
        again = CallControl(call_id="c", event="started", modalities=["text"]).to_bytes()
        await w.on_message(t.control, 0, 2, b"c", again, Handle(log, "started2"), timestamp=101.5)
        await w.on_message(t.text, 0, 3, b"c", text("c", "u0", 0, words="again"), Handle(log, "new0"), timestamp=102)
        # ...but a part the previous call sent before its end joins it
        await w.on_message(t.text, 0, 4, b"c", text("c", "u1", 1), Handle(log, "t1"), timestamp=100.8)
        await w.on_message(t.control, 0, 5, b"c", end, Handle(log, "end2"), timestamp=103.0)
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0", "u1"] and store.released == []
        assert "started2" not in " ".join(log) and "ack new0" not in log
        assert "c" not in store.declarations  # declared once the previous call's close freed its own
        clock.now += 1.5
        await w.pump()  # the previous call closes, then the new one starts afresh, its context empty
        got = events(sent)
        assert [(e.utterance_id, e.context_size) for e in got] == [("u0", 1), ("u1", 2), ("u0", 1)]
        assert store.released == ["c"] and store.forgot == ["c"]
        # the new call's ids are its own (its 'started' at offset 2): a consumer deduplicating on
        # event_id keeps both u0s; its events still name the call by its id
        assert got[0].event_id.startswith("c:u0:r0:") and got[2].event_id.startswith("c~g2:u0:r0:")
        assert got[2].call_id == "c" and w.processor.instance("c") == "c~g2"
        assert store.declarations == {"c": ["text"]}
        assert not [v for tp, v in sent if tp == t.deadletter]  # not a conflict with the old u0
        assert {"ack started2", "ack new0"} <= set(log) and "ack end2" not in log
        clock.now += 1.5
        await w.pump()
        assert store.released == ["c", "c"] and log[-1] == "ack end2" and not w.held
        assert "call c started again before its previous call's close was done" in caplog.text
        assert "'started' once when the call begins" not in caplog.text  # used again once: no warning

    caplog.set_level(logging.INFO, logger="emostream.worker")
    asyncio.run(scenario())


def test_a_producer_that_starts_and_ends_the_call_around_every_utterance_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each 'started' of the id begins a new call that waits for the close of the one before: the
    messages waiting are a gauge, the producer's mistake a warning (once a minute), and every
    utterance is still labelled once the closes are done."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        end = CallControl(call_id="c", event="ended").to_bytes()
        waiting = []
        for i in range(30):  # two utterances a second, each closed after join.end_wait_s (1 s)
            at = 100.0 + i / 2
            await w.on_message(t.control, 0, 2 * i, b"c", started(at), Handle(log, f"s{i}"), timestamp=at)
            await w.on_message(t.text, 0, i, b"c", text("c", "u0", 0, words=f"w{i}"), Handle(log, f"t{i}"), at + 0.1)
            await w.on_message(t.control, 0, 2 * i + 1, b"c", end, Handle(log, f"e{i}"), timestamp=at + 0.2)
            clock.now += 0.5
            await w.pump()
            await w.tick()
            waiting.append(w.metrics.held_for_close._value.get())
        assert max(waiting) >= 20 and len(events(sent)) < 20  # behind: each utterance waits for the closes before
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(said) == 1 and said[0].startswith("call c: started again 3 times before its earlier calls'")
        assert "'started' once when the call begins and 'ended' once when it ends" in said[0]
        for _ in range(100):
            clock.now += 0.5
            await w.pump()
            await w.tick()
        assert [e.context_size for e in events(sent)] == [1] * 30 and not w.held
        assert "emostream_held_for_close_messages 0.0" in _metrics(w)

    caplog.set_level(logging.INFO, logger="emostream.worker")
    asyncio.run(scenario())


def test_a_call_started_again_without_its_ended_is_ended_first_then_the_new_one_begins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A platform lost a call's 'ended' and starts the id again, under the same utterance ids: the
    old call is ended as if its 'ended' came just before the new 'started' (a part it sent before
    that still joins it), then the new call runs under ids of its own; no part is a conflict."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await spoken_call(w, log, ("started1", "old0"))
        start = started(99.0)
        # the same 'started' again (a producer's retry: its own 'at'), after the call spoke: it ends nothing
        await w.on_message(t.control, 0, 1, b"c", start, Handle(log, "started1b"), timestamp=100.6)
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0"] and "c" not in w.ending and "ack started1b" in log
        assert store.starts == {"c": (0, "99.0")} and store.generation == {}
        await w.on_message(t.control, 0, 7, b"c", started(109.0), Handle(log, "started2"), timestamp=110.0)
        assert "ack started2" not in log and w.ending["c"][0].offset == 6  # held: the old call ends first
        await w.on_message(t.text, 0, 1, b"c", text("c", "u0", 0, words="again"), Handle(log, "new0"), timestamp=111)
        await w.on_message(t.text, 0, 2, b"c", text("c", "u1", 1), Handle(log, "old1"), timestamp=109.0)
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0", "u1"] and store.released == []
        clock.now += 1.5
        await w.pump()  # the old call closes (its 'ended' stood in for at offset 6), then the new one starts
        got = events(sent)
        assert [(e.utterance_id, e.context_size) for e in got] == [("u0", 1), ("u1", 2), ("u0", 1)]
        assert got[2].event_id.startswith("c~g7:u0:r0:") and store.closed == {} and store.generation == {"c": "7"}
        assert store.released == ["c"] and {"ack started2", "ack new0", "ack old1"} <= set(log)
        assert not [v for tp, v in sent if tp == t.deadletter]
        assert "emostream_calls_without_end_total 1.0" in _metrics(w)
        assert "call c: a 'started' (offset 7) came before its 'ended': the call was ended" in caplog.text

    caplog.set_level(logging.INFO, logger="emostream.worker")
    asyncio.run(scenario())


def test_a_new_started_read_before_the_previous_calls_parts_leaves_them_to_that_call() -> None:
    """The control topic read ahead of the parts (a reviewer's case): the previous call had no part
    read yet when the new 'started' came. Its parts sent before that 'started' are still its own; the
    new call's, under the same utterance ids, are the new call's, not conflicts."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        for offset, at in ((0, 99.0), (4, 109.0)):
            await w.on_message(
                t.control, 0, offset, b"c", started(at), Handle(log, f"started{offset}"), timestamp=at + 1
            )
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0, words="old"), Handle(log, "old0"), timestamp=100.5)
        await w.on_message(t.text, 0, 1, b"c", text("c", "u0", 0, words="new"), Handle(log, "new0"), timestamp=111.0)
        await w.pump()
        clock.now += 1.5
        await w.pump()
        got = events(sent)
        assert [(e.utterance_id, e.event_id.split(":")[0]) for e in got] == [("u0", "c"), ("u0", "c~g4")], got
        assert not [v for tp, v in sent if tp == t.deadletter] and {"ack old0", "ack new0", "ack started4"} <= set(log)
        assert "emostream_calls_without_end_total 1.0" in _metrics(w)  # open here (nothing in Redis yet)

    asyncio.run(scenario())


def test_two_calls_started_while_an_unended_one_closes_are_each_ended_in_turn() -> None:
    """A reviewer's case: call 1 spoke; call 2's 'started' stood in for call 1's end; call 2's part,
    call 3's 'started' and call 3's part came while call 1 closed. Call 2 is ended at call 3's
    'started' as call 1 was (before, call 2's part was labelled under call 3's ids, and call 3's
    dead-lettered as a conflict)."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await spoken_call(w, log, words="one")
        await w.on_message(t.control, 0, 7, b"c", started(109.0), Handle(log, "s7"), timestamp=110.0)
        await w.on_message(t.text, 0, 1, b"c", text("c", "u0", 0, words="two"), Handle(log, "c2"), timestamp=111.0)
        await w.on_message(t.control, 0, 8, b"c", started(119.0), Handle(log, "s8"), timestamp=120.0)
        await w.on_message(t.text, 0, 2, b"c", text("c", "u0", 0, words="three"), Handle(log, "c3"), timestamp=121.0)
        await w.pump()
        for _ in range(3):  # call 1 closes, call 2 begins; call 2 closes, call 3 begins
            clock.now += 1.5
            await w.pump()
        got = [(e.utterance_id, e.event_id.split(":")[0]) for e in events(sent)]
        assert got == [("u0", "c"), ("u0", "c~g7"), ("u0", "c~g8")], got
        assert not [v for tp, v in sent if tp == t.deadletter] and store.released == ["c", "c"]
        assert {"ack c1", "ack c2", "ack c3", "ack s7", "ack s8"} <= set(log) and not w.held
        assert "emostream_calls_without_end_total 2.0" in _metrics(w)

    asyncio.run(scenario())


def test_a_call_forgotten_idle_and_started_again_is_counted_once_and_its_ids_are_forgotten() -> None:
    """Found on the real broker: a call without 'ended', forgotten after redis.ttl_s (counted then),
    was counted again when its id started again; the new call's u0 is not a redelivery of the old."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await spoken_call(w, log, ("s0", "t0"))
        clock.now += w.settings.redis.ttl_s + 5
        await w.pump()  # forgotten idle: counted
        store.data.clear()  # its state expired in Redis too
        assert "emostream_calls_without_end_total 1.0" in _metrics(w)
        await w.on_message(t.control, 0, 5, b"c", started(5000.0), Handle(log, "s5"), timestamp=5001.0)
        await w.on_message(t.text, 0, 1, b"c", text("c", "u0", 0), Handle(log, "t1"), timestamp=5002.0)
        clock.now += 1.5
        await w.pump()
        clock.now += 1.5
        await w.pump()
        assert [e.event_id.split(":")[0] for e in events(sent)] == ["c", "c~g5"]
        assert "emostream_calls_without_end_total 1.0" in _metrics(w)  # not again

    asyncio.run(scenario())


def quiet_worker(idle_end_s: float = 60.0) -> tuple[Worker, list[tuple[str, bytes]], list[str], FakeStore, Any]:
    """A worker that ends calls quiet for ``idle_end_s``, its wall clock the test's clock."""
    w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",), idle_end_s=idle_end_s)
    w.wall = w.clock
    return w, sent, log, store, w.clock


async def later(w: Worker, clock: Any, seconds: float, step: float = 5.0) -> None:
    """``seconds`` pass, the pump running every ``step`` (as its loop does, more often)."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(end, clock.now + step)
        await w.pump()


def test_a_call_gone_quiet_without_its_ended_is_ended_as_if_it_had_come(caplog: Any) -> None:
    """A platform that lost a call's 'ended': before, nothing closed it (no summary, its alerts open
    until its state expired). Quiet for join.idle_end_s, it is ended as if its 'ended' had come, at
    the control partition's last offset; counted and logged once; a part of it read later reopens
    it (labelled, not refused)."""

    async def scenario() -> None:
        w, sent, log, store, clock = quiet_worker(60.0)
        t = w.settings.kafka.topics
        await spoken_call(w, log)
        assert store.active == {0: {"c": 100.5}}  # when its last part was sent
        await later(w, clock, 55)
        assert store.released == [] and w.joiner.knows("c")  # not yet
        with caplog.at_level(logging.WARNING, logger="emostream.worker"):
            await later(w, clock, 15)
        assert store.released == ["c"] and store.closed == {"c": 0}  # its 'started''s offset, the last read
        assert store.active == {0: {}}
        assert "emostream_calls_without_end_total 1.0" in _metrics(w)
        assert "call c: no part for 60 s (join.idle_end_s) and no 'ended': ended as if" in caplog.text
        await later(w, clock, 120)
        assert "emostream_calls_without_end_total 1.0" in _metrics(w)  # once
        n = len(events(sent))
        with caplog.at_level(logging.WARNING, logger="emostream.worker"):
            await w.on_message(t.text, 0, 1, b"c", text("c", "u1", 1), Handle(log, "t1"), timestamp=300.0)
        await later(w, clock, 2, step=0.5)
        assert [e.utterance_id for e in events(sent)[n:]] == ["u1"] and "ack t1" in log
        assert "was read after the call was ended for sending no part for join.idle_end_s" in caplog.text
        assert not [v for tp, v in sent if tp == t.deadletter]
        await later(
            w, clock, 120
        )  # the reopened call quiet again: left to its TTL, as a call reopened after its 'ended'
        assert store.released == ["c"] and store.active == {0: {}}
        assert "emostream_calls_without_end_total 1.0" in _metrics(w)

    asyncio.run(scenario())


def test_a_quiet_call_is_not_ended_while_its_partition_is_read_behind_nor_while_it_has_a_part_waiting() -> None:
    """A backlog on any input topic of the partition may hold the call's next parts: no end while it
    is read behind (a worker back after an outage longer than join.idle_end_s); nor while a part of
    it, read lately, waits for its join."""

    async def scenario() -> None:
        w, sent, log, store, clock = quiet_worker(60.0)
        t = w.settings.kafka.topics
        both = CallControl(call_id="c", event="started", modalities=["text", "audio"], at=99.0).to_bytes()
        await w.on_message(t.control, 0, 0, b"c", both, Handle(log, "s0"), timestamp=100.0)
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=100.5)
        await w.on_message(t.audio, 0, 0, b"c", audio("c", "u0", 0), Handle(log, "a0"), timestamp=100.5)
        await w.pump()
        assert len(events(sent)) == 1
        w.highwater = lambda topic, partition: PartitionEnd(9 if topic == t.text else 1, 0.1)  # text: 8 to read
        await later(w, clock, 100)
        assert store.released == [] and "c" not in w.ending
        w.highwater = lambda topic, partition: PartitionEnd(2 if topic == t.text else 1, 0.1)  # read to the end
        store.active[0]["c"] = clock.now - 100  # its last batch long ago, but a part read just now waits for audio
        await w.on_message(t.text, 0, 1, b"c", text("c", "u1", 1), Handle(log, "t1"), timestamp=300.0)
        await w._end_quiet()
        assert "c" not in w.ending and w.joiner.open_utterances == 1
        await later(w, clock, 70)
        assert store.released == ["c"]  # u1 labelled without its audio, then quiet for 60 s
        assert "emostream_calls_without_end_total 1.0" in _metrics(w)


def test_under_a_steady_load_a_quiet_call_is_ended_on_time_and_a_backlog_still_holds_it() -> None:
    """A newcomer's 150 calls talking once a second: the partitions were never read to their end,
    so a call that lost its 'ended' was ended late, or never (its alerts open). A call is quiet for
    join.idle_end_s before the record time its partition is read through: on time under a steady
    load (a few messages in flight), not while a backlog of older records is read."""

    async def scenario(lag_s: float, ahead_s: float = 0.0) -> tuple[list[str], float]:
        w, sent, log, store, clock = quiet_worker(60.0)
        t = w.settings.kafka.topics

        def end(topic: str, partition: int) -> PartitionEnd:  # three records always in flight on the text topic
            seen = w.read.get((topic, partition))
            return PartitionEnd((seen[1] + 1 if seen else 0) + (3 if topic == t.text else 0), 0.1)

        w.highwater = end
        await spoken_call(w, log)
        n = 1
        while clock.now < 260:
            clock.now += 2.0
            part = text("d", f"u{n}", n, words="still here")  # the busy call, read lag_s after it was sent
            ts = clock.now - lag_s + (ahead_s if n == 5 else 0.0)  # (one record from a clock ahead_s ahead)
            await w.on_message(t.text, 0, n, b"d", part, Handle(log, f"d{n}"), timestamp=ts)
            await w.pump()
            n += 1
            if store.released:
                return store.released, clock.now
        return store.released, clock.now

    for lag in (1.0, 30.0):  # the lag counted once: the call's last part's record time against the read's
        released, at = asyncio.run(scenario(lag_s=lag))
        assert released == ["c"] and 100.5 + 60 + lag <= at <= 100.5 + 60 + lag + 2 * QUIET_SWEEP_S, at
    released, at = asyncio.run(scenario(lag_s=160.0))  # a backlog: what is read was sent 160 s ago
    assert released == []
    released, at = asyncio.run(scenario(lag_s=160.0, ahead_s=300.0))  # one record stamped 5 minutes ahead
    assert released == []  # (the largest record time read would hold it for good: the latest one's counts)


def test_a_quiet_call_is_ended_once_a_partitions_end_has_not_moved_for_max_stall_s() -> None:
    """An end offset that counts records that never come (a transactional producer's commit
    markers) must not stop the ends for good: a topic whose position has not grown for
    join.max_stall_s counts as read to its end, as it does for the join's waits."""

    async def scenario() -> None:
        w, sent, log, store, clock = quiet_worker(60.0)
        await spoken_call(w, log)
        w.highwater = lambda topic, partition: PartitionEnd(2, 0.1, committed=1)  # one past every last record
        await later(w, clock, w.settings.join.max_stall_s - 10)
        assert store.released == []
        await later(w, clock, 20)
        assert store.released == ["c"]

    asyncio.run(scenario())

    asyncio.run(scenario())


def test_a_quiet_call_is_ended_by_a_worker_that_never_saw_it() -> None:
    """The calls' last activity lives in Redis by partition: after a restart (or a rebalance) the
    partition's owner ends the quiet calls it never read a part of."""

    async def scenario() -> None:
        w, sent, log, store, clock = quiet_worker(60.0)
        await spoken_call(w, log)
        w2 = Worker(w.settings, Processor(FakeEngine(), FakeFeaturizer(), store), Metrics(), w.send, clock=clock)
        w2.wall = clock
        # restarted after an outage: the group committed offset 2 of 4 on every topic, and the agent has
        # not handed the worker those two messages yet (busy): a backlog that may hold the call's parts
        w2.highwater = lambda topic, partition: PartitionEnd(4, 0.1, committed=2)
        w2.assigned({0})
        await later(w2, clock, 70)
        assert store.released == []
        w2.highwater = lambda topic, partition: PartitionEnd(4, 0.1, committed=4)  # read (by a worker before)
        await later(w2, clock, 10)
        assert store.released == ["c"] and store.closed == {"c": 3}  # its control partition's last offset committed
        assert "emostream_calls_without_end_total 1.0" in _metrics(w2)
        w3 = Worker(w.settings, Processor(FakeEngine(), FakeFeaturizer(), store), Metrics(), w.send, clock=clock)
        w3.wall = clock
        w3.assigned({1})  # another partition: not its call
        store.active[0] = {"d": clock.now - 100}
        store.active[1] = {"e": clock.now - w.settings.redis.ttl_s - 1}  # its state expired: the join counted it
        await later(w3, clock, 70)
        assert store.released == ["c"] and store.active[1] == {}
        assert "emostream_calls_without_end_total 0.0" in _metrics(w3)

    asyncio.run(scenario())


@pytest.mark.parametrize("order", ["sweep first", "started first"])
def test_a_new_calls_started_read_while_a_quiet_call_is_ended_begins_a_new_call(order: str) -> None:
    """A review's race: the consumer fetched a new call's 'started' while the sweep looked in Redis.
    The close mark must not cover that 'started' (it would be taken for a replay: the new call under
    the old call's ids), and a 'started' whose handling waits for Redis must not meet a second,
    idle, stand-in for its call: whichever comes first, one end, and the new call runs as c~g1."""

    async def scenario() -> None:
        w, sent, log, store, clock = quiet_worker(60.0)
        t = w.settings.kafka.topics
        w.highwater = lambda topic, p: PartitionEnd(1, 0.1, committed=1)
        await spoken_call(w, log)
        await later(w, clock, 55)
        ends = {t.control: 1}
        w.highwater = lambda topic, p: PartitionEnd(ends.get(topic, 1), 0.1, committed=1)
        real_quiet, real_previous = store.quiet, store.previous_start
        gate = asyncio.Event()

        async def quiet(partition: int, since: float, limit: int = 100) -> list[tuple[str, float]]:
            if order == "sweep first":  # fetched meanwhile, not handled yet: the new call's 'started' at offset 1
                ends[t.control] = 2  # (the other order: the end offset the consumer last heard is older)
            return await real_quiet(partition, since, limit)

        async def previous_start(call: str) -> PreviousStart:
            got = await real_previous(call)
            await gate.wait()
            return got

        store.quiet, store.previous_start = quiet, previous_start  # type: ignore[method-assign]
        clock.now += 10
        new = started(200.0)
        if order == "sweep first":
            gate.set()
            await w._end_quiet()
            await w.on_message(t.control, 0, 1, b"c", new, Handle(log, "s1"), timestamp=165.0)
        else:  # on_message waits on Redis for the call's previous start while the sweep runs
            task = asyncio.create_task(w.on_message(t.control, 0, 1, b"c", new, Handle(log, "s1"), timestamp=165.0))
            await asyncio.sleep(0)
            await w._end_quiet()
            gate.set()
            await task
        assert len(w.ending["c"]) == 1
        await later(w, clock, 3, step=0.5)
        assert store.closed.get("c", 0) < 1 and store.generation == {"c": "1"}
        await w.on_message(t.text, 0, 1, b"c", text("c", "u0", 0, words="new call"), Handle(log, "n0"), timestamp=166.0)
        await later(w, clock, 2, step=0.5)
        assert [e.event_id.split(":")[0] for e in events(sent)] == ["c", "c~g1"]
        assert "emostream_calls_without_end_total 1.0" in _metrics(w)

    asyncio.run(scenario())


def test_join_idle_end_s_must_be_less_than_the_redis_ttl_and_defaults_to_half_of_it() -> None:
    from streams.errors import ConfigError
    from streams.settings import load_settings

    assert load_settings().idle_end_s() == 1800.0 and load_settings(redis={"ttl_s": 20}).idle_end_s() == 10.0
    assert load_settings(join={"idle_end_s": 0}).idle_end_s() == 0.0
    with pytest.raises(ConfigError, match="join.idle_end_s 3600 must be less than redis.ttl_s 3600"):
        load_settings(join={"idle_end_s": 3600})


def test_calls_started_in_turn_keep_their_parts_whatever_order_the_topics_are_read_in() -> None:
    """A third reviewer's cases, while call 1 (spoke, no 'ended') closes: (a) the control topic read
    ahead: call 2's and call 3's 'started's, then their parts; (b) call 2 sends its 'ended' before
    call 3 starts. Each part joins its own call, no conflict; only call 1 went without an 'ended'."""

    async def scenario(order: str) -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await spoken_call(w, log, words="one")
        s2 = (t.control, 7, started(109.0), "s7", 110.0)
        s3 = (t.control, 9, started(119.0), "s9", 120.0)
        c2 = (t.text, 1, text("c", "u0", 0, words="two"), "c2", 111.0)
        e2 = (t.control, 8, CallControl(call_id="c", event="ended", at=112.0).to_bytes(), "e8", 112.0)
        c3 = (t.text, 2, text("c", "u0", 0, words="three"), "c3", 121.0)
        messages = [s2, s3, c2, c3] if order == "control first" else [s2, c2, e2, s3, c3]
        for topic, offset, value, name, ts in messages:
            await w.on_message(topic, 0, offset, b"c", value, Handle(log, name), timestamp=ts)
        await w.pump()
        for _ in range(4):
            clock.now += 1.5
            await w.pump()
        got = [(e.utterance_id, e.event_id.split(":")[0]) for e in events(sent)]
        assert got == [("u0", "c"), ("u0", "c~g7"), ("u0", "c~g9")], (order, got)
        assert not [v for tp, v in sent if tp == t.deadletter] and not w.held, order
        want = 2.0 if order == "control first" else 1.0  # call 2 ended by its own 'ended' in (b)
        assert f"emostream_calls_without_end_total {want}" in _metrics(w), order

    asyncio.run(scenario("control first"))
    asyncio.run(scenario("an ended between"))


def test_a_new_calls_own_ended_stamped_before_its_started_still_ends_it() -> None:
    """Two producers' clocks: a call on a new id whose 'ended' is stamped 0.5 s before its 'started'
    is closed by it (only an 'ended' from before a call id was used again is an earlier call's)."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await w.on_message(t.control, 0, 0, b"c", started(99.0), Handle(log, "s0"), timestamp=100.0)
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=100.2)
        end = CallControl(call_id="c", event="ended", at=99.5).to_bytes()
        await w.on_message(t.control, 0, 1, b"c", end, Handle(log, "e1"), timestamp=99.5)
        clock.now += 1.5
        await w.pump()
        assert store.released == ["c"] and "ack e1" in log

    asyncio.run(scenario())


def test_an_earlier_calls_ended_read_after_the_next_call_began_closes_nothing() -> None:
    """A reviewer's case: the old call's 'ended', sent before the new call's 'started' (by record
    times) but read after it (another producer), was applied as the new call's end."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        for offset, at in ((0, 99.0), (7, 109.0)):
            await w.on_message(t.control, 0, offset, b"c", started(at), Handle(log, f"s{offset}"), timestamp=at + 1)
            await w.on_message(t.text, 0, offset, b"c", text("c", "u0", 0), Handle(log, f"t{offset}"), timestamp=at + 2)
            await w.pump()
            clock.now += 1.5
            await w.pump()
        assert [e.event_id.split(":")[0] for e in events(sent)] == ["c", "c~g7"] and store.released == ["c"]
        end = CallControl(call_id="c", event="ended", at=108.0).to_bytes()
        await w.on_message(t.control, 0, 8, b"c", end, Handle(log, "late-end"), timestamp=108.0)
        clock.now += 1.5
        await w.pump()
        assert store.released == ["c"] and "ack late-end" in log  # the new call stays open

    asyncio.run(scenario())


def test_while_a_call_id_used_again_waits_record_times_tell_the_calls_apart() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text", "audio"))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await ended_call(w, log, "old0")
        again = CallControl(call_id="c", event="started", modalities=["text"]).to_bytes()
        await w.on_message(t.control, 0, 2, b"c", again, Handle(log, "started2"), timestamp=101.5)
        # the old u0 still waits for its audio: the new call's u0, sent after the end, is not joined to it
        await w.on_message(t.text, 0, 3, b"c", text("c", "u0", 0, words="again"), Handle(log, "new0"), timestamp=102)
        await w.pump()
        assert events(sent) == [] and not [v for tp, v in sent if tp == t.deadletter]
        clock.now += NOTHING_READ_GRACE_S + 1  # its audio partition never read: behind only briefly
        await w.tick()  # the old call is closed in the join; its close (window, summary) not yet done
        assert list(w.closing) == ["c"]
        # a part the old call sent in time, of an utterance it never had: it would reopen it under the new call
        await w.on_message(t.text, 0, 4, b"c", text("c", "u9", 9), Handle(log, "old9"), timestamp=100.9)
        # refused as late at once; its ack goes out after the new u0's, read before it on the text partition
        assert "ack old9" not in log and "emostream_late_parts_total 1.0" in _metrics(w)
        await w.pump()
        got = [(e.utterance_id, e.modalities_present, e.context_size) for e in events(sent)]
        assert got == [("u0", ["text"], 1), ("u0", ["text"], 1)]  # the old u0 timed out; the new one, fresh
        assert store.released == ["c"] and not w.held and {"ack new0", "ack started2"} <= set(log)
        assert log.index("ack new0") < log.index("ack old9"), log

    asyncio.run(scenario())


def test_a_call_id_used_again_whose_parts_are_read_before_its_started_is_a_new_call() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await ended_call(w, log, "old0")
        # the old call's last transcript, sent after its end (speech recognition lags): still the old call's
        await w.on_message(t.text, 0, 2, b"c", text("c", "u1", 1), Handle(log, "old1"), timestamp=101.3)
        # the new call's first part, read before its 'started' (another topic), under the same ids as the old u0
        await w.on_message(t.text, 0, 3, b"c", text("c", "u0", 0, words="again"), Handle(log, "new0"), timestamp=102)
        again = CallControl(call_id="c", event="started").to_bytes()
        await w.on_message(t.control, 0, 4, b"c", again, Handle(log, "started2"), timestamp=101.5)
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0", "u1"] and list(w.held) == ["c"]
        clock.now += 1.5
        await w.pump()
        got = [(e.utterance_id, e.context_size) for e in events(sent)]
        assert got == [("u0", 1), ("u1", 2), ("u0", 1)] and not [v for tp, v in sent if tp == t.deadletter]
        assert "ack new0" in log and not w.held

    asyncio.run(scenario())


def test_after_its_previous_call_closed_a_call_id_used_again_whose_part_comes_before_its_started_waits_for_it() -> None:
    """The previous call closed and released here; the new call's u0, under the previous call's
    ids, is read before its 'started' (the control partition behind): held, then joined after
    the 'started' as the new call's (before: a conflicting_part dead letter). The same part sent
    again with no 'started' before it is let go once the control partition is read past it: a
    redelivery, acked without an event."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        control_end = {"offset": 2}
        w.highwater = lambda topic, partition: PartitionEnd(control_end["offset"], 0.1) if topic == t.control else None
        await ended_call(w, log, "old0")
        clock.now += 1.5
        await w.pump()
        assert store.released == ["c"] and [e.utterance_id for e in events(sent)] == ["u0"]
        control_end["offset"] = 3  # the new call's 'started' is on the control partition, not read yet
        clock.now += 5.0
        await w.on_message(t.text, 0, 2, b"c", text("c", "u0", 0, words="again"), Handle(log, "new0"), timestamp=200)
        await w.on_message(t.text, 0, 3, b"c", text("c", "u1", 1), Handle(log, "new1"), timestamp=201)
        await w.pump()
        assert list(w.held) == ["c"] and set(w.awaiting_start) == {"c"} and len(w.held["c"]) == 2
        assert [e.utterance_id for e in events(sent)] == ["u0"] and "ack new0" not in log
        again = CallControl(call_id="c", event="started", modalities=["text"]).to_bytes()
        await w.on_message(t.control, 0, 2, b"c", again, Handle(log, "started2"), timestamp=199.5)
        clock.now += 1.5
        await w.pump()
        got = events(sent)
        assert [(e.utterance_id, e.context_size) for e in got] == [("u0", 1), ("u0", 1), ("u1", 2)], got
        assert not [v for tp, v in sent if tp == t.deadletter] and not w.held and not w.awaiting_start
        assert got[1].event_id.startswith("c~g2:u0:") and {"ack new0", "ack new1"} <= set(log)
        # the new call ends and closes; its u1 sent again later, with no 'started' before it
        end = CallControl(call_id="c", event="ended").to_bytes()
        await w.on_message(t.control, 0, 3, b"c", end, Handle(log, "end2"), timestamp=202.0)
        clock.now += 1.5
        await w.pump()
        assert store.released == ["c", "c"]
        control_end["offset"] = 5
        clock.now += 5.0
        await w.on_message(t.text, 0, 4, b"c", text("c", "u1", 1), Handle(log, "again1"), timestamp=300)
        await w.pump()
        assert set(w.awaiting_start) == {"c"} and "ack again1" not in log  # the control partition is behind it
        later = CallControl(call_id="other", event="started").to_bytes()  # read past it: no 'started' of c
        await w.on_message(t.control, 0, 4, b"other", later, Handle(log, "other"), timestamp=301)
        await w.pump()
        assert not w.awaiting_start and not w.held and "ack again1" in log
        assert len(events(sent)) == 3 and not [v for tp, v in sent if tp == t.deadletter]  # a redelivery

    asyncio.run(scenario())


def test_parts_waiting_for_a_started_join_as_if_the_control_topic_were_read_first_and_an_ended_lets_them_go() -> None:
    """Held for a 'started' (the previous call closed here, the control partition behind them):
    the closed call's late transcript and the new call's first part, both read before the new
    'started', end up as when the 'started' is read first: both the new call's, same ids. An
    'ended' read instead of a 'started' joins the held parts as they are, first."""

    async def run(control_first: bool) -> tuple[list[tuple[str, int, str]], list[str], Worker]:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await closed_call(w, log, "old0")  # 'ended' sent at 101
        assert store.released == ["c"]
        again = CallControl(call_id="c", event="started").to_bytes()
        if control_first:
            await w.on_message(t.control, 0, 2, b"c", again, Handle(log, "started2"), timestamp=150.0)
        # the old call's last transcript (sent at 101.4, after its end) and the new call's u0
        await w.on_message(t.text, 0, 2, b"c", text("c", "u1", 1), Handle(log, "old1"), timestamp=101.4)
        await w.on_message(t.text, 0, 3, b"c", text("c", "u0", 0, words="again"), Handle(log, "new0"), timestamp=151)
        if not control_first:
            assert len(w.held["c"]) == 2 and set(w.awaiting_start) == {"c"}
            await w.on_message(t.control, 0, 2, b"c", again, Handle(log, "started2"), timestamp=150.0)
        clock.now += 1.5
        await w.pump()
        assert not w.held and not w.awaiting_start and not [v for tp, v in sent if tp == t.deadletter]
        assert {"ack old1", "ack new0", "ack started2"} <= set(log)
        return [(e.utterance_id, e.context_size, e.event_id) for e in events(sent)], log, w

    async def scenario() -> None:
        held, _, w = await run(control_first=False)
        direct, _, _ = await run(control_first=True)
        assert held == direct and [x[2][:5] for x in held] == ["c:u0:", "c~g2:", "c~g2:"], held
        # a second call, d: closed, then a part sent after its end waits; its 'ended' is read, not a 'started'
        t = w.settings.kafka.topics
        clock: Any = w.clock
        log: list[str] = []
        await w.on_message(t.text, 0, 4, b"d", text("d", "v0", 0), Handle(log, "d0"), timestamp=300)
        end_d = CallControl(call_id="d", event="ended").to_bytes()
        await w.on_message(t.control, 0, 3, b"d", end_d, Handle(log, "end d"), timestamp=301)
        clock.now += 1.5
        await w.pump()
        await w.on_message(t.text, 0, 5, b"d", text("d", "v1", 1), Handle(log, "d1"), timestamp=302)
        assert set(w.awaiting_start) == {"d"}
        await w.on_message(t.control, 0, 4, b"d", end_d, Handle(log, "end d again"), timestamp=303)
        assert not w.awaiting_start and "d" not in w.held  # joined as it is, before that 'ended'
        clock.now += 1.5
        await w.pump()
        assert {"ack d0", "ack d1", "ack end d again"} <= set(log)

    asyncio.run(scenario())


def test_parts_waiting_for_a_started_that_never_comes_are_let_go_after_max_hold_s() -> None:
    """The control partition stays behind (a stuck backlog that still advances): the backstop."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",), max_hold_s=30.0)
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await closed_call(w, log)
        await w.on_message(t.text, 0, 2, b"c", text("c", "u1", 1), Handle(log, "u1"), timestamp=200)
        for _ in range(5):  # the control partition advances, still behind the part's time
            clock.now += 5.0
            w._mark_read(t.control, 0, w.read[(t.control, 0)][1] + 1, 150.0)
            await w.pump()
        assert set(w.awaiting_start) == {"c"} and "ack u1" not in log
        clock.now += 10.0
        w._mark_read(t.control, 0, w.read[(t.control, 0)][1] + 1, 150.0)
        await w.pump()  # 35 s held, past max_hold_s: joined as it would have been (reopening the call)
        assert not w.awaiting_start and not w.held
        clock.now += 1.5
        await w.pump()
        assert "ack u1" in log and [e.utterance_id for e in events(sent)] == ["u0", "u1"]

    asyncio.run(scenario())
    # held parts are not counted by the backpressure: a tenth of max_open_utterances of them are let go

    async def crowded() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",), max_open_utterances=20)
        t = w.settings.kafka.topics
        await closed_call(w, log)
        await w.on_message(t.text, 0, 2, b"c", text("c", "u1", 1), Handle(log, "u1"), timestamp=200)
        await w.pump()
        assert set(w.awaiting_start) == {"c"}  # one held: not crowded
        await w.on_message(t.text, 0, 3, b"c", text("c", "u2", 2), Handle(log, "u2"), timestamp=201)
        await w.pump()
        assert not w.awaiting_start and not w.held  # two: let go

    asyncio.run(crowded())


def test_an_earlier_calls_ended_read_again_after_a_restart_does_not_close_the_call_now_under_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        end = await ended_call(w, log)  # u0 at offset 0, 'ended' at 1
        clock.now += 1.5
        await w.pump()
        again = CallControl(call_id="c", event="started", modalities=["text"]).to_bytes()
        await w.on_message(t.control, 0, 2, b"c", again, Handle(log, "started2"), timestamp=150.0)
        await w.on_message(t.text, 0, 3, b"c", text("c", "u0", 0, words="again"), Handle(log, "new0"), timestamp=151)
        clock.now += 1.5
        await w.pump()
        assert store.generation == {"c": "2"} and [i.seq for i in store.data["c"]] == [0]
        # a restart before the 'ended' at offset 1 was committed: the next worker reads it again, and
        # what came after it on the control partition, the new call's 'started'
        w2 = Worker(w.settings, Processor(engine, FakeFeaturizer(), store), Metrics(), w.send, clock=clock)
        await w2.on_message(t.control, 0, 1, b"c", end, Handle(log, "end again"), timestamp=101.0)
        assert "ack end again" in log and "is an earlier call's, read again after a restart" in caplog.text
        assert not w2.ending and not w2.closing  # not applied: the new call's joins are not ended
        await w2.on_message(t.control, 0, 2, b"c", again, Handle(log, "started again"), timestamp=150.0)
        clock.now += NOTHING_READ_GRACE_S + 1.5
        await w2.pump()
        assert store.released == ["c"] and [i.seq for i in store.data["c"]] == [0]  # the new call goes on
        assert store.generation == {"c": "2"} and "ack started again" in log
        await w2.on_message(t.text, 0, 4, b"c", text("c", "u1", 1), Handle(log, "new1"), timestamp=152)
        clock.now += 1.5
        await w2.pump()
        got = events(sent)
        assert [(e.utterance_id, e.context_size) for e in got][-1] == ("u1", 2) and got[-1].event_id.startswith("c~g2:")

    caplog.set_level(logging.INFO, logger="emostream.worker")
    asyncio.run(scenario())


class FailingOnce:
    """Wraps a Joiner method to raise the first time."""

    def __init__(self, method: Any) -> None:
        self.method, self.failed = method, False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug")
        return self.method(*args, **kwargs)


def test_held_messages_of_a_call_id_used_again_survive_a_failure_and_a_revoke_drops_them() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        end = CallControl(call_id="c", event="ended").to_bytes()
        again = CallControl(call_id="c", event="started").to_bytes()
        await w.on_message(t.control, 0, 0, b"c", end, Handle(log, "end"), timestamp=101.0)
        await w.on_message(t.control, 0, 1, b"c", again, Handle(log, "started2"), timestamp=101.5)
        await w.on_message(t.text, 0, 2, b"c", text("c", "u0", 0), Handle(log, "new0"), timestamp=102)
        await w.on_message(t.text, 0, 3, b"c", text("c", "u1", 1), Handle(log, "new1"), timestamp=102.5)
        w.joiner.add = FailingOnce(w.joiner.add)  # type: ignore[method-assign]
        clock.now += 1.5
        await w.pump()  # u0's join fails: logged and acked; u1 still joined, and the call's later parts too
        assert "ack new0" in log and [e.utterance_id for e in events(sent)] == ["u1"] and not w.held
        await w.on_message(t.text, 0, 4, b"c", text("c", "u2", 2), Handle(log, "new2"), timestamp=103)
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u1", "u2"]
        # a revoke while messages are held drops them unacked (the partition's next owner reads them)
        await w.on_message(t.control, 1, 0, b"d", CallControl(call_id="d", event="ended").to_bytes(), Handle(log, "d"))
        await w.on_message(t.control, 1, 1, b"d", again.replace(b'"c"', b'"d"'), Handle(log, "d2"))
        assert list(w.held) == ["d"]
        await w.revoke({1})
        assert not w.held and "ack d2" not in log

    asyncio.run(scenario())


def test_a_passing_engine_fault_costs_no_utterance() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        calls = {"n": 0}
        real = engine.predict

        def flaky(batch: EngineBatch) -> EngineOutput:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("engine hiccup")
            return real(batch)

        engine.predict = flaky  # type: ignore[method-assign]
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"))
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0"] and "ack t0" in log
        assert not [v for tp, v in sent if tp == t.deadletter]

    asyncio.run(scenario())


def _fetch_fails_once(store: FakeStore, exc: Exception) -> None:
    """The store's first window read raises ``exc``; the rest work."""
    real, calls = store.fetch, {"n": 0}

    async def fails_once(calls_: list[str]) -> dict[str, list[ContextItem]]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc
        return await real(calls_)

    store.fetch = fails_once  # type: ignore[method-assign]


def test_a_redis_failure_is_retried_with_backoff_not_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="emostream.worker")

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        _fetch_fails_once(store, ConnectionError("redis down"))
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"))
        await w.pump()
        assert events(sent) == [] and "ack t0" not in log
        await w.pump()
        assert events(sent) == []  # backing off
        w.retry_at = 0.0
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0"] and "ack t0" in log
        assert not [v for tp, v in sent if tp == t.deadletter]
        assert 'emostream_service_errors_total{stage="redis"} 1.0' in _metrics(w)
        said = [r.getMessage() for r in caplog.records if r.name == "emostream.worker"]
        assert [m for m in said if "go through again" in m] == [
            next(m for m in said if m.startswith("batches go through again after"))
        ], said  # the recovery said once, for the batches
        assert w.failing_since == {}
        # Redis away is said in one line a try, not a 30-line traceback (a bug still gets its traceback)
        (failed,) = [r for r in caplog.records if "failed (ConnectionError: redis down); retrying" in r.getMessage()]
        assert failed.exc_info is None and failed.levelno == logging.WARNING

    asyncio.run(scenario())


def test_a_bug_in_a_batch_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        _fetch_fails_once(store, KeyError("window"))
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"))
        with caplog.at_level(logging.WARNING, logger="emostream.worker"):
            await w.pump()
        (failed,) = [r for r in caplog.records if "failed; retrying" in r.getMessage()]
        assert failed.exc_info is not None and failed.levelno == logging.ERROR

    asyncio.run(scenario())


class PoisonFeaturizer(FakeFeaturizer):
    """Raises on one text, as the tokenizer did on a lone surrogate before validation caught it."""

    def text(self, texts: list[str]) -> np.ndarray:
        if "poison" in texts:
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        return super().text(texts)


def test_an_utterance_the_encoder_fails_on_is_dead_lettered_and_its_batch_still_gets_events() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        w.processor.featurizer = PoisonFeaturizer()
        t = w.settings.kafka.topics
        for i in range(7):
            value = TextPart(call_id="c", utterance_id=f"u{i}", seq=i, text="poison" if i == 3 else "hi").to_bytes()
            await w.on_message(t.text, 2, 10 + i, b"c", value, Handle(log, f"t{i}"))
            await w.on_message(t.text, 1, 20 + i, b"d", text("d", f"v{i}", i), Handle(log, f"d{i}"))
        await w.pump()
        got = sorted((e.call_id, e.utterance_id) for e in events(sent))
        assert got == sorted([("c", f"u{i}") for i in range(7) if i != 3] + [("d", f"v{i}") for i in range(7)])
        (dead,) = [DeadLetter.model_validate_json(v) for tp, v in sent if tp == t.deadletter]
        assert dead.reason == "processing_failed" and "TypeError" in dead.detail
        assert (dead.call_id, dead.utterance_id, dead.partition, dead.offset) == ("c", "u3", 2, 13)
        assert [(p.topic, p.offset) for p in dead.parts] == [(t.text, 13)]
        assert all(f"ack t{i}" in log and f"ack d{i}" in log for i in range(7))
        # the utterances after the poison one still saw the context before it (u4's window: u0-u2, u4)
        u4 = next(e for e in events(sent) if e.utterance_id == "u4")
        assert u4.context_size == 4 and [i.utterance_id for i in store.data["c"]] == [
            "u0",
            "u1",
            "u2",
            "u4",
            "u5",
            "u6",
        ]
        assert "emostream_processing_failed_total 1.0" in _metrics(w)

    asyncio.run(scenario())


def test_a_processing_failed_record_lists_the_parts_used_not_one_dead_lettered_before() -> None:
    """An utterance whose audio was dead-lettered on its own (held with it until it goes) and whose
    text the encoder then fails on: its processing_failed record names the text, the part it used."""

    async def scenario() -> None:
        w, sent, log, store, engine = make()
        w.processor.featurizer = PoisonFeaturizer()
        t = w.settings.kafka.topics
        bad = AudioPart(
            call_id="c", utterance_id="u0", seq=0, encoding="flac", data=base64.b64encode(b"not flac").decode()
        )
        await w.on_message(t.audio, 2, 40, b"c", bad.to_bytes(), Handle(log, "a0"))
        poison = TextPart(call_id="c", utterance_id="u0", seq=0, text="poison").to_bytes()
        await w.on_message(t.text, 2, 41, b"c", poison, Handle(log, "t0"))
        await w.pump()
        dead = [DeadLetter.model_validate_json(v) for tp, v in sent if tp == t.deadletter]
        assert [d.reason for d in dead] == ["undecodable_audio", "processing_failed"]
        assert [(p.topic, p.offset) for p in dead[1].parts] == [(t.text, 41)]
        assert {"ack a0", "ack t0"} <= set(log)

    asyncio.run(scenario())


def test_a_dead_letter_the_broker_refuses_is_retried_without_its_payload() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        real, tries = w.send, {"n": 0}

        async def refuse_first(topic: str, key: bytes | None, value: bytes, event_key: str | None) -> Any:
            if topic == t.deadletter:
                tries["n"] += 1
                if tries["n"] == 1:
                    raise RuntimeError("MessageSizeTooLargeError")
            return await real(topic, key, value, event_key)

        w.send = refuse_first
        await w.on_message(t.text, 0, 3, b"k" * 5000, b"{not json", Handle(log, "bad"))
        (dead,) = [DeadLetter.model_validate_json(v) for tp, v in sent if tp == t.deadletter]
        assert tries["n"] == 2 and dead.payload == "" and dead.payload_truncated and dead.payload_bytes == 9
        assert dead.key is not None and len(dead.key) == 256 and "ack bad" in log

    asyncio.run(scenario())


def test_dead_letter_payload_policy() -> None:
    from streams.settings import LimitSettings
    from streams.worker import payload_copy

    raw = b"caller said: my card number is 4111" * 10
    assert payload_copy(raw, LimitSettings(deadletter_payload="none")) == ("", True)
    cut, truncated = payload_copy(raw, LimitSettings(deadletter_payload="truncated", deadletter_payload_bytes=12))
    assert base64.b64decode(cut) == raw[:12] and truncated
    whole, truncated = payload_copy(raw, LimitSettings(deadletter_payload="full"))
    assert base64.b64decode(whole) == raw and not truncated
    big = b"x" * (2 * 1024 * 1024)
    kept, truncated = payload_copy(big, LimitSettings(deadletter_payload="full"))
    assert truncated and len(kept) < 1024 * 1024  # still a record the broker accepts


def _metrics(w: Worker) -> str:
    from prometheus_client import generate_latest

    return generate_latest(w.metrics.registry).decode()


def test_event_json_is_schema_valid() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        await w.on_message(w.settings.kafka.topics.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"))
        await w.pump()
        obj = json.loads(sent[0][1])
        assert obj["schema_version"] == 1 and obj["event_id"].startswith("c:u0:r0:")

    asyncio.run(scenario())


def test_revised_events_once_k_later_utterances_or_the_end_arrived() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",), wait_s=1.0)
        w.processor.future = 2
        clock: Any = w.clock
        t = w.settings.kafka.topics
        for i in range(5):
            await w.on_message(t.text, 0, i, b"c", text("c", f"u{i}", i, "AB"[i % 2]), Handle(log, f"t{i}"))
            await w.pump()
        revs = [(e.utterance_id, e.future_context, e.context_size) for e in events(sent) if e.revision == 1]
        assert revs == [("u0", 2, 3), ("u1", 2, 4), ("u2", 2, 4)]  # the window holds at most 4
        # the engine labelled the right utterance: the revision of u1 targets index 1 of its window
        rev_batch = engine.batches[3]
        assert rev_batch.size == 2 and rev_batch.target.tolist()[1] == rev_batch.valid.shape[1] - 3
        await w.on_message(
            t.control, 0, 9, b"c", CallControl(call_id="c", event="ended").to_bytes(), Handle(log, "end")
        )
        clock.now += 2.0
        await w.pump()
        revs = [(e.utterance_id, e.future_context) for e in events(sent) if e.revision == 1]
        assert revs == [("u0", 2), ("u1", 2), ("u2", 2), ("u3", 1), ("u4", 0)]
        ids = [e.event_id for e in events(sent)]
        assert len(ids) == len(set(ids)) == 10
        assert log[-1] == "ack end" and store.released == ["c"]

    asyncio.run(scenario())


def test_a_revision_model_labels_the_revisions() -> None:
    """With a revision engine (trained with future context) the provisional events come from the
    main engine and the revisions from the revision engine, each batch holding only its rows."""

    class RevisionEngine(FakeEngine):
        info = EngineInfo(
            name="fake-revised", version="1", features=FeatureSpec({"text": 4, "audio": 3}), max_window=4, future=1
        )

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",), wait_s=1.0)
        revised = RevisionEngine()
        w.processor = Processor(engine, FakeFeaturizer(), store, future=1, revision_engine=revised)
        t = w.settings.kafka.topics
        for i in range(3):
            await w.on_message(t.text, 0, i, b"c", text("c", f"u{i}", i, "AB"[i % 2]), Handle(log, f"t{i}"))
            await w.pump()
        got = [(e.utterance_id, e.revision, e.model.name) for e in events(sent)]
        assert got == [
            ("u0", 0, "fake"), ("u1", 0, "fake"), ("u0", 1, "fake-revised"),
            ("u2", 0, "fake"), ("u1", 1, "fake-revised"),
        ]  # fmt: skip
        assert len(engine.batches) == 3 and len(revised.batches) == 2
        assert [b.target.tolist() for b in revised.batches] == [[0], [1]]  # u1's window: u0 u1 u2

    asyncio.run(scenario())


def test_revision_model_settings(tmp_path: Any) -> None:
    import pytest

    from engines.registry import load_engine
    from streams.errors import ConfigError
    from streams.runtime import load_revision_model

    main = load_engine("default")
    assert load_revision_model(Settings(), main) == (None, 0)
    with pytest.raises(ConfigError, match="trained causal"):
        load_revision_model(Settings(engine={"revision_model": "default"}), main)
    engine, k = load_revision_model(Settings(engine={"revision_model": "default", "future": 2}), main)
    assert k == 2 and engine.info.labels == main.info.labels
    with pytest.raises(ConfigError, match="cannot load revision model"):
        load_revision_model(Settings(engine={"revision_model": str(tmp_path)}), main)


def test_revision_model_must_share_the_features(tmp_path: Any) -> None:
    import shutil

    import pytest

    from engines import artifact
    from engines.registry import load_engine
    from streams.errors import ConfigError
    from streams.runtime import load_revision_model

    main = load_engine("default")
    other = tmp_path / "other"
    shutil.copytree(artifact.DEFAULT_DIR, other)
    engine, _ = load_revision_model(Settings(engine={"revision_model": str(other), "future": 1}), main)
    assert engine.info.features == main.info.features
    meta = artifact.read_json(other, artifact.FEATURES)
    for key, value in [("model_id", "some-other-encoder"), ("sha256", "0" * 64)]:  # another encoder, other tuned layers
        changed = {**meta, "text": {**meta["text"], key: value}}
        artifact.write_json(other, artifact.FEATURES, changed)
        artifact.seal(other)
        with pytest.raises(ConfigError, match="same features"):
            load_revision_model(Settings(engine={"revision_model": str(other), "future": 1}), main)


def test_revision_model_ref_names_the_revision_model_even_when_artifacts_share_a_name() -> None:
    """A revision model trained before ``--future k`` named it ``-future<k>`` shares the main
    model's name and version: the revised events must still say that another model labelled them."""

    class SameNameRevision(FakeEngine):
        info = EngineInfo(
            name="fake", version="0", features=FeatureSpec({"text": 4, "audio": 3}), max_window=4, future=2
        )

    engine, store = FakeEngine(), FakeStore()
    processor = Processor(engine, FakeFeaturizer(), store, future=2, revision_engine=SameNameRevision())
    assert processor.model_ref.name == "fake"
    assert processor.revision_model_ref.name == "fake-future2"
    assert processor.revision_model_ref.version == "0"
    alone = Processor(engine, FakeFeaturizer(), store, future=2)  # the main model labels its revisions too
    assert alone.revision_model_ref == alone.model_ref


def test_an_utterance_released_late_still_gets_exactly_one_revision() -> None:
    """u2's only part arrives after u3 was labelled (the join does not wait for an utterance it has
    not heard of): u1 is revised when u2 completes its two later utterances, u2 itself once it has
    two later ones, and nothing is revised twice or left out."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",), wait_s=1.0)
        w.processor.future = 2
        clock: Any = w.clock
        t = w.settings.kafka.topics
        revised: list[list[tuple[str, int]]] = []
        for i in (0, 1, 3, 2, 4):
            await w.on_message(t.text, 0, i, b"c", text("c", f"u{i}", i, "AB"[i % 2]), Handle(log, f"t{i}"))
            await w.pump()
            revised.append([(e.utterance_id, e.future_context) for e in events(sent) if e.revision == 1])
        assert revised == [
            [],
            [],
            [("u0", 2)],  # u1, u3 came after u0 (u2 not yet)
            [("u0", 2), ("u1", 2)],  # the late u2 completes u1's two later ones (u2, u3)
            [("u0", 2), ("u1", 2), ("u2", 2)],  # u4: u2 has u3, u4
        ]
        await w.on_message(
            t.control, 0, 9, b"c", CallControl(call_id="c", event="ended").to_bytes(), Handle(log, "end")
        )
        clock.now += 2.0
        await w.pump()
        revs = sorted((e.utterance_id, e.future_context) for e in events(sent) if e.revision == 1)
        assert revs == [("u0", 2), ("u1", 2), ("u2", 2), ("u3", 1), ("u4", 0)]
        late = next(e for e in events(sent) if e.revision == 1 and e.utterance_id == "u1")
        assert late.context_size == 4  # u0, u1 and its two later ones, in seq order

    asyncio.run(scenario())


def test_feature_key_reads_a_missing_text_kind_as_minilm() -> None:
    from streams.runtime import _feature_key

    old = {"spec": {"text_dim": 384}, "text": {"model_id": "m", "dim": 384}, "audio": {"id": "a"}}
    explicit = {**old, "text": {**old["text"], "kind": "minilm"}}
    assert _feature_key(old) == _feature_key(explicit)
    assert _feature_key(old) != _feature_key({**old, "text": {**old["text"], "kind": "e5-multilingual"}})


def test_the_stream_loads_only_sealed_artifacts(tmp_path: Any) -> None:
    """A model file changed after training (or an artifact without checksums) is refused at start."""
    import shutil

    import pytest

    from engines import artifact
    from streams.errors import ConfigError
    from streams.runtime import load_model

    model = tmp_path / "model"
    shutil.copytree(artifact.DEFAULT_DIR, model)
    artifact.verify(model)  # the shipped artifact is sealed
    onnx = model / artifact.ONNX
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    with pytest.raises(ConfigError, match="model.onnx does not match its SHA-256"):
        load_model(Settings(engine={"model": str(model)}))
    (model / artifact.CHECKSUMS).unlink()
    with pytest.raises(ConfigError, match="no checksums.json"):
        load_model(Settings(engine={"model": str(model)}))
    (model / "extra.safetensors").write_bytes(b"x")
    artifact.seal(model)
    (model / "extra.safetensors").write_bytes(b"y")
    with pytest.raises(ConfigError, match="extra.safetensors does not match"):
        load_model(Settings(engine={"model": str(model)}))


def test_graphs_missing_from_the_export_cache_are_exported_by_a_child_or_else_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A worker on onnxruntime asks `worker --prepare` in a child for the graphs its cache lacks
    (tests/engine/test_whisper_onnx.py runs it for real); a child that fails is logged, and the
    worker goes on and exports them itself."""
    import types

    from streams import runtime

    class Graph:
        def __init__(self, there: bool) -> None:
            self.there = there

        def exported(self) -> bool:
            return self.there

    x = types.SimpleNamespace(text=Graph(True), audio=Graph(False))
    assert runtime.ModelFeaturizer(x).unexported() == ["audio"]
    assert runtime.ModelFeaturizer(types.SimpleNamespace(text=object(), audio=None)).unexported() == []
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the child: a command that fails
    with caplog.at_level("INFO", logger="emostream.runtime"):
        assert runtime.export_graphs(Settings(), "onnxruntime", ["audio"]) is False
    assert "exporting them in a child process" in caplog.text and "the export process failed (exit 1)" in caplog.text
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(hang))  # a child that hangs is stopped
    assert runtime.export_graphs(Settings(), "onnxruntime", ["audio"], timeout=0.5) is False
    assert "did not finish within 0 s and was stopped" in caplog.text
    # a child that succeeds but leaves a graph missing (a read-only cache) is not taken at its word
    import engines.registry

    monkeypatch.setattr(engines.registry, "load_extractors", lambda *a, **k: x)
    monkeypatch.setattr(runtime, "export_graphs", lambda *a, **k: True)
    caplog.clear()
    with caplog.at_level("INFO", logger="emostream.runtime"):
        assert runtime.prepare_graphs(Settings(engine={"runtime": "onnxruntime"})) == ["audio"]
    assert "left the audio graph(s) missing" in caplog.text
    assert runtime.prepare_graphs(Settings(engine={"runtime": "onnxruntime-bf16"})) == []  # holds torch anyway


def test_a_revoked_partition_is_let_go_unacked_and_its_replay_gets_one_complete_event() -> None:
    """A rebalance cuts a join (text in, audio not yet): the worker drops it unacked instead of
    labelling it with what it has, and when the partition's parts are replayed (here, to the same
    worker) the utterance gets a single event with both parts."""

    async def scenario() -> None:
        w, sent, log, store, engine = make()
        t = w.settings.kafka.topics
        await w.on_message(t.text, 3, 10, b"c", text("c", "u0", 0), Handle(log, "t0"))
        await w.on_message(t.text, 1, 5, b"d", text("d", "v0", 0), Handle(log, "d0"))
        await w.revoke({3})
        assert store.forgotten == 1  # the windows held in memory: read afresh after a rebalance
        clock: Any = w.clock
        clock.now += 5.0  # well past wait_s: nothing of partition 3 is released
        await w.pump()
        assert [e.call_id for e in events(sent)] == ["d"] and events(sent)[0].modalities_present == ["text"]
        assert "ack t0" not in log and "ack d0" in log
        assert "emostream_revoked_utterances_total 1.0" in _metrics(w)
        await w.on_message(t.text, 3, 10, b"c", text("c", "u0", 0), Handle(log, "t0 again"))
        await w.on_message(t.audio, 3, 4, b"c", audio("c", "u0", 0), Handle(log, "a0"))
        await w.pump()
        (ev,) = [e for e in events(sent) if e.call_id == "c"]
        assert ev.modalities_present == ["text", "audio"] and {"ack t0 again", "ack a0"} <= set(log)

    asyncio.run(scenario())


def test_a_revoke_waits_for_the_batch_in_flight_and_nothing_of_it_is_published_after() -> None:
    """The rebalance lands while a batch is in the engine: the revoke waits for that batch (it is
    published and acked whole), and a message of the revoked partition read afterwards is left alone."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        real = store.fetch
        revoking: list[asyncio.Task[None]] = []

        async def revoked_meanwhile(calls: list[str]) -> dict[str, list[ContextItem]]:
            revoking.append(asyncio.create_task(w.revoke({2})))
            await asyncio.sleep(0.01)
            assert not revoking[0].done(), "the revoke must wait for the batch"
            return await real(calls)

        store.fetch = revoked_meanwhile  # type: ignore[method-assign]
        await w.on_message(t.text, 2, 7, b"c", text("c", "u0", 0), Handle(log, "t0"))
        await w.on_message(t.text, 0, 7, b"d", text("d", "v0", 0), Handle(log, "d0"))
        await w.pump()
        await revoking[0]
        assert sorted(e.call_id for e in events(sent)) == ["c", "d"] and {"ack t0", "ack d0"} <= set(log)
        store.fetch = real  # type: ignore[method-assign]
        # the partition's next owner (here this worker again) replays u0: its event is out, so no second one
        await w.on_message(t.text, 2, 7, b"c", text("c", "u0", 0), Handle(log, "t0 replayed"))
        await w.pump()
        assert len(events(sent)) == 2 and "ack t0 replayed" in log

    asyncio.run(scenario())


def test_a_calls_declaration_reaches_the_worker_that_owns_it_next() -> None:
    """'started' said text only; after a rebalance another worker gets the call's parts: it reads
    the declaration from the store and labels the text at once instead of waiting for audio."""

    async def scenario() -> None:
        w1, sent1, log, store, engine = make(wait_s=5.0)
        t = w1.settings.kafka.topics
        started = CallControl(call_id="c", event="started", modalities=["text"]).to_bytes()
        await w1.on_message(t.control, 0, 0, b"c", started, Handle(log, "start"))
        assert store.declarations == {"c": ["text"]} and "ack start" in log
        w2, sent2, _, _, _ = make(wait_s=5.0)
        w2.processor.store = store  # the same Redis
        await w2.on_message(t.text, 0, 1, b"c", text("c", "u0", 0), Handle(log, "t0"))
        await w2.pump()
        (ev,) = events(sent2)
        assert ev.modalities_present == ["text"] and ev.timings.join_s == 0.0

    asyncio.run(scenario())


def test_an_event_says_its_context_was_reset_when_redis_lost_the_window() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        for i in range(3):
            await w.on_message(t.text, 0, i, b"c", text("c", f"u{i}", i), Handle(log, f"t{i}"))
            await w.pump()
        store.data["c"] = store.data["c"][:1]  # Redis restarted and lost the last writes (or all: TTL)
        await w.on_message(t.text, 0, 3, b"c", text("c", "u3", 3), Handle(log, "t3"))
        await w.pump()
        await w.on_message(t.text, 0, 4, b"c", text("c", "u4", 4), Handle(log, "t4"))
        await w.pump()
        got = [(e.utterance_id, e.context_size, e.context_reset) for e in events(sent)]
        assert got == [("u0", 1, False), ("u1", 2, False), ("u2", 3, False), ("u3", 2, True), ("u4", 3, False)]
        from tools.subscribe import format_event

        assert "ctx 2 after a context reset" in format_event(events(sent)[3])

    asyncio.run(scenario())


def test_a_call_that_moved_away_and_back_is_no_context_reset() -> None:
    """Found in review: what this worker wrote of a call was kept through a rebalance, so when the
    call came back after another worker had closed it and its id was used again (a window from seq
    0), every event said context_reset until the new call's seq passed the old one's."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        for i in range(3):
            await w.on_message(t.text, 0, i, b"c", text("c", f"u{i}", 10 + i), Handle(log, f"t{i}"))
            await w.pump()
        await w.revoke({0})  # the call goes to another worker, which closes it; the id's next call starts
        store.data["c"] = []
        w.assigned({0})
        await w.on_message(t.text, 0, 3, b"c", text("c", "n0", 0), Handle(log, "n0"))
        await w.pump()
        (new,) = [e for e in events(sent) if e.utterance_id == "n0"]
        assert not new.context_reset

    asyncio.run(scenario())


def test_a_replayed_utterance_whose_event_is_out_is_acked_without_a_second_event() -> None:
    """After a crash, a worker replays from the committed offset: utterances whose events were
    published (and appended) before are acked, not relabelled against a window that moved on."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        for i in range(6):
            await w.on_message(t.text, 0, i, b"c", text("c", f"u{i}", i), Handle(log, f"t{i}"))
            await w.pump()
        store.trimmed["c"] = {"u0", "u1"}  # the window kept only the newest
        store.data["c"] = store.data["c"][2:]
        fresh, sent2, log2, _, _ = make(default_modalities=("text",))  # the replacement worker
        fresh.processor.store = store
        for i in range(1, 7):  # replay from u1 (uncommitted), then the new u6
            await fresh.on_message(t.text, 0, i, b"c", text("c", f"u{i}", i), Handle(log2, f"t{i}"))
            await fresh.pump()
        assert [e.utterance_id for e in events(sent2)] == ["u6"]
        assert all(f"ack t{i}" in log2 for i in range(1, 7))
        assert "emostream_replays_skipped_total 5.0" in _metrics(fresh)

    asyncio.run(scenario())


def test_a_part_keyed_by_something_else_than_its_call_is_dead_lettered() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        await w.on_message(t.text, 0, 1, b"other", text("c", "u0", 0), Handle(log, "wrong"))
        await w.on_message(t.text, 0, 2, None, text("c", "u1", 1), Handle(log, "none"))
        await w.pump()
        dead = [DeadLetter.model_validate_json(v) for tp, v in sent if tp == t.deadletter]
        assert [d.reason for d in dead] == ["wrong_key", "wrong_key"] and events(sent) == []
        assert {"ack wrong", "ack none"} <= set(log)

    asyncio.run(scenario())


def test_a_different_part_under_a_labelled_utterances_ids_is_dead_lettered_and_a_resend_is_not() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        other = TextPart(call_id="c", utterance_id="u0", seq=0, speaker="A", text="something else").to_bytes()
        await w.on_message(t.text, 0, 1, b"c", text("c", "u0", 0), Handle(log, "first"))
        await w.pump()
        await w.on_message(t.text, 0, 2, b"c", text("c", "u0", 0), Handle(log, "resent"))
        await w.on_message(t.text, 0, 3, b"c", other, Handle(log, "other"))
        await w.pump()
        dead = [DeadLetter.model_validate_json(v) for tp, v in sent if tp == t.deadletter]
        assert [(d.reason, d.offset, d.utterance_id) for d in dead] == [("conflicting_part", 3, "u0")]
        assert "was labelled from a different text part" in dead[0].detail
        assert [e.utterance_id for e in events(sent)] == ["u0"]
        assert {"ack first", "ack resent", "ack other"} <= set(log)
        assert 'emostream_deadletters_total{reason="conflicting_part"} 1.0' in _metrics(w)

    asyncio.run(scenario())


def test_a_replay_joins_the_same_parts_as_the_first_labelling() -> None:
    """u0's audio lagged past wait_s: it was labelled on its text, published, and the worker was
    killed before the window append. The replay finds text and audio in Kafka but labels it with
    the text alone, as recorded before publishing: the event_id keeps one content."""

    async def scenario() -> None:
        w, sent, log, store, engine = make()
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"))
        clock.now += 1.0  # past wait_s 0.2
        real_append = store.append

        async def killed(items: dict[str, list[ContextItem]]) -> None:
            raise ConnectionError("kill -9 before the append")

        store.append = killed  # type: ignore[method-assign]
        await w.pump()
        (first,) = events(sent)
        assert first.modalities_present == ["text"] and store.joined == {"c": {"u0": "text"}}
        store.append = real_append  # type: ignore[method-assign]
        fresh, sent2, log2, _, _ = make()  # the replacement replays both parts
        fresh.processor.store = store
        await fresh.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log2, "t0"))
        await fresh.on_message(t.audio, 0, 1, b"c", audio("c", "u0", 0), Handle(log2, "a0"))
        await fresh.pump()
        (again,) = events(sent2)
        assert again.event_id == first.event_id and again.modalities_present == ["text"]
        assert {"ack t0", "ack a0"} <= set(log2)

    asyncio.run(scenario())


def pcm(call: str, utt: str, seq: int) -> bytes:
    """A tenth of a second of 16 kHz PCM: a waveform the worker decodes and would encode."""
    data = base64.b64encode(np.full(1600, 300, np.int16).tobytes()).decode()
    return AudioPart(
        call_id=call, utterance_id=utt, seq=seq, encoding="pcm_s16le", sample_rate=16000, data=data
    ).to_bytes()


@pytest.mark.parametrize("first_behind", [True, False])
def test_a_replay_encodes_the_voice_or_not_as_the_first_labelling_did(first_behind: bool) -> None:
    """engine.shed_audio_after_s 30: u0 was labelled 100 s after it was sent (its voice not
    encoded), or 1 s after (encoded), published, and the worker killed before the window append.
    Its replay, 1 s or 100 s after, does what the first labelling did, as recorded before
    publishing: the event_id keeps one content."""

    async def scenario() -> None:
        t = make()[0].settings.kafka.topics
        firsts: list[EmotionEvent] = []
        store = FakeStore()
        for run, late in enumerate((first_behind, not first_behind)):
            w, sent, log, _, _ = make(default_modalities=("text", "audio"))
            w.processor.store = store
            w.processor.shed_audio_after_s = 30.0
            w.processor.wall = lambda late=late: 1000.0 + (100.0 if late else 1.0)  # type: ignore[misc]
            await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=1000.0)
            await w.on_message(t.audio, 0, 0, b"c", pcm("c", "u0", 0), Handle(log, "a0"), timestamp=1000.0)
            real_append = store.append
            if run == 0:

                async def killed(items: dict[str, list[ContextItem]]) -> None:
                    raise ConnectionError("kill -9 before the append")

                store.append = killed  # type: ignore[method-assign]
            observed: list[float] = []
            w.sizer.observe = lambda units, seconds, seen=observed: seen.append(units)  # type: ignore[method-assign,misc]
            await w.pump()
            store.append = real_append  # type: ignore[method-assign]
            (event,) = events(sent)
            firsts.append(event)
            assert event.modalities_present == ["text", "audio"]
            assert event.ignored.get("audio", "").startswith("worker behind: ") is first_behind, event.ignored
            assert store.joined == {"c": {"u0": "text+audio+behind" if first_behind else "text+audio"}}
            if run == 1:  # the first run's batch failed at its append: counted when it goes through
                assert w.metrics.shed_audio._value.get() == (1 if first_behind else 0)
                # the sizer counts a shed voice's units as take() and the queue do (one cost for both)
                assert observed == [pytest.approx(1.1)], observed
        first, again = firsts
        assert again.event_id == first.event_id and again.ignored == first.ignored
        assert again.probabilities == first.probabilities and again.weights == first.weights

    asyncio.run(scenario())


def test_a_producer_clock_running_behind_does_not_shed_the_voice_while_the_worker_keeps_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """engine.shed_audio_after_s 30, every record time 100 s behind the worker's clock. u0 is read
    right after the worker read its partitions to their end (0.2 s before, by the broker's answer):
    it was sent since, so its voice is used. u1 is read from a backlog 60 s after the partitions
    were last read to their end: its voice is not encoded, and the log gives the worker's age."""

    async def scenario() -> None:
        w, sent, log, _, _ = make(default_modalities=("text", "audio"))
        t = w.settings.kafka.topics
        w.processor.shed_audio_after_s = 30.0
        wall = [10_000.0]
        w.wall = w.processor.wall = lambda: wall[0]  # type: ignore[method-assign]
        ends = {t.text: 0, t.audio: 0}
        w.highwater = lambda topic, partition: PartitionEnd(ends.get(topic, 0), 0.2)

        def watch() -> None:
            w.watched_at = float("-inf")
            w.watch(w.clock())

        watch()  # empty, so read to their end: what comes next was sent after 9999.8
        assert w.fresh[(t.text, 0)] == w.fresh[(t.audio, 0)] == pytest.approx(9999.8)
        ends.update({t.text: 1, t.audio: 1})
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=9_900.0)
        await w.on_message(t.audio, 0, 0, b"c", pcm("c", "u0", 0), Handle(log, "a0"), timestamp=9_900.0)
        await w.pump()
        (u0,) = events(sent)
        assert u0.modalities_present == ["text", "audio"] and u0.ignored == {}, u0.ignored
        wall[0] += 60.0
        ends.update({t.text: 50, t.audio: 50})  # a backlog: 48 records more on each
        watch()
        assert w.fresh[(t.text, 0)] == pytest.approx(9999.8)  # not read to its end since
        await w.on_message(t.text, 0, 1, b"c", text("c", "u1", 1), Handle(log, "t1"), timestamp=9_930.0)
        await w.on_message(t.audio, 0, 1, b"c", pcm("c", "u1", 1), Handle(log, "a1"), timestamp=9_930.0)
        with caplog.at_level(logging.WARNING, logger="streams.worker"):
            await w.pump()
        u1 = events(sent)[-1]
        assert u1.utterance_id == "u1" and u1.ignored["audio"].startswith("worker behind: "), u1.ignored
        assert "sent 60 s ago by this worker's reading" in caplog.text, caplog.text

    asyncio.run(scenario())


def test_an_utterance_keeps_the_read_end_of_its_first_part_however_that_part_came_and_a_revoke_forgets_it() -> None:
    """Utterance.fresh_at is the partition's read end before its first part was read: also where that
    part is dead-lettered (the join's reject path), not moved by its later parts; a revoked
    partition's ends are forgotten (its next owner's reading says)."""

    async def scenario() -> None:
        w, _, log, _, _ = make(default_modalities=("text", "audio"))
        t = w.settings.kafka.topics
        w.fresh[(t.audio, 0)], w.fresh[(t.text, 0)] = 900.0, 950.0
        bad = AudioPart(call_id="c", utterance_id="u0", seq=0, encoding="pcm_s16le", sample_rate=16000, data="AAA")
        await w.on_message(t.audio, 0, 0, b"c", bad.to_bytes(), Handle(log, "a0"), timestamp=1000.0)
        w.fresh[(t.text, 0)] = 990.0
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=1000.0)
        utt = w.joiner._calls["c"].pending.get("u0")
        if utt is None:  # (released already: its audio dead-lettered, its text in)
            utt = w.queue[0]
        assert utt.ignored["audio"].startswith("dead-lettered: ") and utt.fresh_at == 900.0
        await w.revoke({0})
        assert w.fresh == {}

    asyncio.run(scenario())


def test_a_partition_counts_as_read_to_its_end_by_this_workers_reads_or_else_the_groups_commit() -> None:
    """Worker.fresh (engine.shed_audio_after_s): what this worker read decides once it has read
    anything (a committed offset ahead of it, a log cut back after an unclean election, does not);
    before, the group's committed offset just at the end; an end whose fetch time is not known, or a
    silent one, is not noted."""
    w = make()[0]
    t = w.settings.kafka.topics
    w.wall = lambda: 500.0  # type: ignore[method-assign]

    def noted(end: PartitionEnd, read: int | None = None) -> float | None:
        w.fresh.clear()
        w.read = {} if read is None else {(t.text, 0): (0.0, read, w.clock())}
        w.highwater = lambda topic, partition: end if (topic, partition) == (t.text, 0) else None
        w.watched_at = float("-inf")
        w.watch(w.clock())
        return w.fresh.get((t.text, 0))

    assert noted(PartitionEnd(5, 0.5), read=4) == 499.5  # read through offset 4 of 5
    assert noted(PartitionEnd(6, 0.5), read=4) is None  # one more to read
    assert noted(PartitionEnd(6, 0.5, committed=9), read=4) is None  # the group's commit ahead: the reads decide
    assert noted(PartitionEnd(6, 0.5, committed=6)) == 499.5  # nothing read since a restart: all was before
    assert noted(PartitionEnd(6, 0.5, committed=4)) is None  # a backlog
    assert noted(PartitionEnd(6, 0.5, committed=9)) is None  # a log cut back: read again from its start
    assert noted(PartitionEnd(0, 0.5)) == 499.5  # empty
    assert noted(PartitionEnd(5, 0.0, answered=False), read=4) is None  # when the broker said so: not known
    assert noted(PartitionEnd(5, 0.5, reachable=False), read=4) is None  # its leader gone
    assert noted(PartitionEnd(5, UNANSWERED_S + 1), read=4) is None  # no answer for long


def test_a_backlog_of_audio_holds_the_join_until_the_audio_is_read() -> None:
    """The worker reads u0's text (sent at t=1000) while its audio topic still has 50 unread
    messages: past wait_s it waits; once it reads the audio, u0 is labelled with both."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"))
        clock = Clock()
        w.clock = clock
        t = w.settings.kafka.topics
        w.highwater = lambda topic, partition: PartitionEnd(50 if topic == t.audio else 1, 0.5)
        await w.on_message(t.audio, 0, 0, b"c", audio("c", "older", 0), Handle(log, "a-old"), timestamp=990.0)
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 1), Handle(log, "t0"), timestamp=1000.0)
        assert w.behind("audio", 0, 1000.2)
        clock.now += 5.0  # far past wait_s
        assert not w.behind("text", 0, 1000.2)  # read to its end and not flowing: nothing more to wait for
        await w.tick()
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["older"]  # u0 held, not labelled on text alone
        assert w.metrics.held_utterances._value.get() == 1  # a counter: once, however many ticks
        await w.tick()
        assert w.metrics.held_utterances._value.get() == 1
        await w.on_message(t.audio, 0, 1, b"c", audio("c", "u0", 1), Handle(log, "a0"), timestamp=1000.1)
        await w.tick()
        await w.pump()
        got = {e.utterance_id: e for e in events(sent)}
        assert got["u0"].modalities_present == ["text", "audio"]
        w.highwater = lambda topic, partition: None  # end offsets unknown: the wall clock alone decides
        assert not w.behind("audio", 0, 5000.0)

    asyncio.run(scenario())


def test_a_caught_up_audio_partition_whose_broker_stopped_answering_holds_the_join() -> None:
    """A cluster's audio partition leader is killed: the worker has read that partition to its last
    known end, but the broker has not answered a fetch since, so new audio may sit past that end
    (on the new leader). u0's text holds past wait_s until the partition answers again; with a
    fresh answer and nothing past the end, a later u1 is labelled on its text alone."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"), max_stall_s=60.0)
        clock = Clock()
        w.clock = clock
        t = w.settings.kafka.topics
        audio_end = PartitionEnd(1, 0.5)
        w.highwater = lambda topic, partition: audio_end if topic == t.audio else PartitionEnd(9, 0.5)
        await w.on_message(t.audio, 0, 0, b"c", audio("c", "older", 0), Handle(log, "a-old"), timestamp=990.0)
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 1), Handle(log, "t0"), timestamp=1000.0)
        clock.now += w.settings.join.wait_s  # not flowing any more
        assert not w.behind("audio", 0, 1000.2)  # caught up and answered lately: nothing more to wait for
        audio_end = PartitionEnd(1, 0.5, reachable=False)  # the leader killed: its connection is gone at once
        assert w.behind("audio", 0, 1000.2)
        audio_end = PartitionEnd(1, UNANSWERED_S + 1.0)  # or no fetch answered for long
        assert w.behind("audio", 0, 1000.2)
        clock.now += 5.0
        await w.tick()
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["older"]  # u0 held
        audio_end = PartitionEnd(1, 0.2)  # the new leader answers, before the producer's retried write lands
        assert w.behind("audio", 0, 1000.2)  # back for under RECOVERED_GRACE_S: still behind
        audio_end = PartitionEnd(2, 0.2)  # one more audio record
        await w.on_message(t.audio, 0, 1, b"c", audio("c", "u0", 1), Handle(log, "a0"), timestamp=1000.1)
        await w.tick()
        await w.pump()
        assert {e.utterance_id: e.modalities_present for e in events(sent)}["u0"] == ["text", "audio"]
        await w.on_message(t.text, 0, 1, b"c", text("c", "u1", 2), Handle(log, "t1"), timestamp=1010.0)
        clock.now += RECOVERED_GRACE_S + 1.0  # past wait_s, and past the grace after the leader came back
        await w.tick()
        await w.pump()
        assert {e.utterance_id: e.modalities_present for e in events(sent)}["u1"] == ["text"]
        audio_end = PartitionEnd(2, 1000.0)  # silent for longer than join.max_stall_s: the stall rule ends holds
        clock.now += 61.0
        assert not w.behind("audio", 0, 1012.0)

    asyncio.run(scenario())


def test_a_leader_lost_while_nothing_waits_still_holds_the_joins_after_it_is_back() -> None:
    """The CI's cluster scenario at 48% with audio: while the killed broker was down no text got
    through either, so no join asked whether audio was behind; when the text came back, the audio
    partition answered again from its new leader, caught up to an end that the feed's retried writes
    had not reached. The worker watches its partitions' leaders on every tick, so the join holds."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"), max_stall_s=60.0)
        clock = Clock()
        w.clock = clock
        t = w.settings.kafka.topics
        ends = {t.audio: PartitionEnd(1, 0.2), t.text: PartitionEnd(1, 0.2)}
        w.highwater = lambda topic, partition: ends.get(topic) if partition == 0 else None
        await w.on_message(t.audio, 0, 0, b"c", audio("c", "u0", 0), Handle(log, "a0"), timestamp=990.0)
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=990.1)
        await w.tick()
        await w.pump()
        assert w.disturbed_at == float("-inf")  # all reachable: nothing noted
        ends[t.audio] = PartitionEnd(1, 0.2, reachable=False)  # the audio leader killed; nothing waits
        clock.now += 1.0
        await w.tick()
        ends[t.audio] = PartitionEnd(1, 0.2)  # the new leader answers; the feed's write not there yet
        clock.now += 8.0
        await w.on_message(t.text, 0, 1, b"c", text("c", "u1", 1), Handle(log, "t1"), timestamp=1000.0)
        await w.on_message(t.text, 1, 0, b"d", text("d", "v0", 0), Handle(log, "d0"), timestamp=1000.0)
        clock.now += 3.0  # past wait_s
        await w.tick()
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0"]  # u1 held; so is v0 (partition 1 not read yet)
        await w.on_message(t.audio, 0, 1, b"c", audio("c", "u1", 1), Handle(log, "a1"), timestamp=1000.05)
        await w.tick()
        await w.pump()
        assert {e.utterance_id: e.modalities_present for e in events(sent)}["u1"] == ["text", "audio"]
        clock.now += RECOVERED_GRACE_S  # the grace is over: v0 goes on its text
        await w.tick()
        await w.pump()
        assert {e.utterance_id: e.modalities_present for e in events(sent)}["v0"] == ["text"]

    asyncio.run(scenario())


def test_a_partition_never_read_is_behind_only_briefly_and_nothing_is_behind_near_the_cap() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"), max_open_utterances=2)
        clock = Clock()
        w.clock = clock
        t = w.settings.kafka.topics
        w.highwater = lambda topic, partition: PartitionEnd(500, 0.5)  # older, committed messages: nothing new to read
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=1000.0)
        assert w.behind("audio", 0, 1002.0)  # nothing read yet: a backlog may still show
        clock.now += 6.0
        assert not w.behind("audio", 0, 1002.0)  # none showed: not behind
        w.assigned_at.clear()
        assert w.behind("audio", 1, 1002.0)
        await w.on_message(t.text, 1, 0, b"d", text("d", "v0", 0), Handle(log, "d0"), timestamp=1000.0)
        assert w.joiner.open_utterances == 2 and not w.behind("audio", 1, 1002.0)  # at the cap: no holding

    asyncio.run(scenario())


def test_a_hold_lasts_while_the_audio_partition_is_read_further_and_ends_when_it_stalls() -> None:
    """Overload: u0's text (t=1000) is read minutes before its audio, because the audio topic's
    backlog is read slowly, but it is read: the hold outlasts join.max_stall_s. Once the audio
    partition stops advancing for join.max_stall_s (its end offset counts records that never come),
    the hold ends and u0 is labelled on its text."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"), max_stall_s=30.0)
        clock = Clock()
        w.clock = clock
        t = w.settings.kafka.topics
        w.highwater = lambda topic, partition: PartitionEnd(10_000 if topic == t.audio else 1, 0.5)
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=1000.0)
        for i in range(20):  # 200 s of a slowly read audio backlog, older than u0
            await w.on_message(t.audio, 0, i, b"o", audio("o", f"x{i}", i), Handle(log, f"a{i}"), timestamp=900.0 + i)
            clock.now += 10.0
            await w.tick()
            await w.pump()
        assert "u0" not in [e.utterance_id for e in events(sent)] and w.behind("audio", 0, 1002.0)
        clock.now += 19.0  # 29 s since the last audio read
        assert w.behind("audio", 0, 1002.0)
        clock.now += 2.0  # the audio partition has not advanced for 30 s
        assert not w.behind("audio", 0, 1002.0)
        await w.tick()
        await w.pump()
        (u0,) = [e for e in events(sent) if e.utterance_id == "u0"]
        assert u0.modalities_present == ["text"]

    asyncio.run(scenario())


def test_the_partition_end_reads_the_fetch_age_and_survives_its_private_path_failing() -> None:
    import time as _time
    from types import SimpleNamespace

    from streams.app import _highwater

    def app(polled_ms: object, leader: int | None = 1, connected: bool = True) -> object:
        def last_poll_timestamp(tp: object) -> object:
            if isinstance(polled_ms, Exception):
                raise polled_ms
            return polled_ms

        conn = SimpleNamespace(connected=lambda: connected)
        cluster = SimpleNamespace(leader_for_partition=lambda tp: leader)
        client = SimpleNamespace(cluster=cluster, _conns={(1, 0): conn})
        inner = SimpleNamespace(last_poll_timestamp=last_poll_timestamp, _client=client)
        thread = SimpleNamespace(_ensure_consumer=lambda: inner)
        return SimpleNamespace(consumer=SimpleNamespace(highwater=lambda tp: 10, _thread=thread))

    end = _highwater(app(_time.time() * 1000 - 7000), "t", 0)
    assert end is not None and end.offset == 10 and 6.5 < end.age_s < 8 and end.answered
    assert _highwater(app(AttributeError("no such consumer")), "t", 0) == PartitionEnd(10, 0.0, answered=False)
    assert _highwater(app(None), "t", 0) == PartitionEnd(
        10, 0.0, answered=False
    )  # nothing fetched yet: the offsets rule alone
    assert _highwater(app(None, connected=False), "t", 0) == PartitionEnd(10, 0.0, reachable=False, answered=False)
    assert _highwater(app(None, leader=-1), "t", 0) == PartitionEnd(
        10, 0.0, reachable=False, answered=False
    )  # no leader now
    assert _highwater(app(None, leader=2), "t", 0) == PartitionEnd(
        10, 0.0, reachable=False, answered=False
    )  # not connected to it


def test_the_worker_reports_its_consumer_lag_and_the_emotions_it_labels() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        clock = Clock()
        w.clock = clock
        t = w.settings.kafka.topics
        w.highwater = lambda topic, partition: PartitionEnd(10, 0.2) if (topic, partition) == (t.text, 0) else None
        await w.on_message(t.text, 0, 3, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=1000.0)
        clock.now += 1.0
        await w.pump()
        sample = w.metrics.registry.get_sample_value
        assert sample("emostream_consumer_lag", {"topic": t.text, "partition": "0"}) == 6  # offsets 4..9 unread
        label = events(sent)[0].label
        assert sample("emostream_emotions_total", {"label": label}) == 1
        await w.on_message(t.text, 0, 4, b"c", text("c", "u1", 1, words="   "), Handle(log, "t1"), timestamp=1001.0)
        clock.now += 1.0
        await w.pump()
        (blank,) = [e for e in events(sent) if e.utterance_id == "u1"]
        assert blank.ignored and sample("emostream_emotions_total", {"label": "unread"}) == 1  # not its prior's label
        assert sample("emostream_emotions_total", {"label": blank.label}) == (blank.label == label)
        await w.revoke({0})
        assert sample("emostream_consumer_lag", {"topic": t.text, "partition": "0"}) is None  # not ours any more

    asyncio.run(scenario())


def test_the_partition_watch_goes_on_while_the_pump_waits_on_a_publish() -> None:
    """At 7be09c1 the CI's cluster scenario labelled utterances without their audio: the pump was
    stuck publishing to a partition whose leader was down, so nothing looked at the leaders."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        w.highwater = lambda topic, partition: PartitionEnd(1, 0.2, reachable=False) if topic == t.audio else None
        stuck = asyncio.Event()

        async def pump() -> None:  # a publish that does not come back
            await stuck.wait()

        w.pump = pump  # type: ignore[method-assign]
        runner = asyncio.create_task(w.run())
        await asyncio.sleep(0.1)
        assert w.disturbed_at > float("-inf")  # seen, although the pump never got to a tick
        runner.cancel()

    asyncio.run(scenario())


def test_a_partition_whose_broker_stops_answering_is_a_disturbance_and_the_log_says_why_parts_went_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A leader still connected but silent past UNANSWERED_S (a broker hung, or killed and not yet
    noticed) disturbs like an unreachable one; the watch logs the change both ways, and an utterance
    released without its audio is logged with how far that audio partition was read."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"), max_stall_s=60.0)
        clock = Clock()
        w.clock = clock
        t = w.settings.kafka.topics
        ends = {t.audio: PartitionEnd(1, 0.2), t.text: PartitionEnd(1, 0.2)}
        w.highwater = lambda topic, partition: ends.get(topic) if partition == 0 else None
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=1000.0)
        await w.on_message(t.audio, 0, 0, b"c", audio("c", "x", 0), Handle(log, "a0"), timestamp=999.0)
        await w.tick()
        assert w.disturbed_at == float("-inf")
        ends[t.audio] = PartitionEnd(1, UNANSWERED_S + 0.5)  # connected, but no fetch answered
        clock.now += 1.0
        await w.tick()
        assert w.disturbed_at == clock.now
        assert "emostream_unreachable_partitions 1.0" in _metrics(w)  # the metrics see it, not only the log
        ends[t.audio] = PartitionEnd(1, 0.2)
        clock.now += 1.0
        await w.tick()
        assert "emostream_unreachable_partitions 0.0" in _metrics(w)
        clock.now += RECOVERED_GRACE_S + 3.0
        await w.tick()
        await w.pump()
        assert {e.utterance_id: e.modalities_present for e in events(sent)}["u0"] == ["text"]

    with caplog.at_level(logging.INFO, logger="emostream.worker"):
        asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records]
    assert any("leader is unreachable or not answering" in m and "[0]" in m for m in said), said
    assert any("answers again" in m for m in said), said
    gone = [m for m in said if "goes without audio" in m]
    assert (
        gone
        and gone[0].startswith("c/u0 ")
        and "last disturbance" in gone[0]
        and "through offset 0, whose next offset is 1 (read to its end)" in gone[0]
        and "the call is expected to send text+audio: a call says what it sends in its 'started'" in gone[0]
    )


def test_a_batch_wedged_in_the_engine_stops_the_heartbeat() -> None:
    """/healthz follows the heartbeat: an engine call that never returns must make it fail, while a
    worker merely waiting on Kafka or Redis (its loop going round) stays alive."""
    import time

    from streams.worker import ENGINE_STUCK_S, WATCH_S

    async def scenario() -> None:
        w, sent, log, store, engine = make()
        task = asyncio.create_task(w.watching())
        await asyncio.sleep(0.05)
        assert w.metrics.beat_at is not None
        w.metrics.beat_at = None
        w.processor.computing_since = time.monotonic() - ENGINE_STUCK_S - 1
        await asyncio.sleep(WATCH_S * 1.5)
        assert w.metrics.beat_at is None
        w.processor.computing_since = time.monotonic()  # a batch in the engine now: fine
        await asyncio.sleep(WATCH_S * 1.5)
        assert w.metrics.beat_at is not None
        task.cancel()

    asyncio.run(scenario())


def test_a_flowing_partition_behind_in_record_time_holds_the_join() -> None:
    """The CI's cluster scenario, before any fault: one audio partition read to its end, but only up
    to 1.5-2 s before the text (its replicas slow to acknowledge), and read further every moment.
    Its utterances wait for their audio; once that partition stops flowing, they go without."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"))
        clock = Clock()
        w.clock = clock
        t = w.settings.kafka.topics
        wait = w.settings.join.wait_s
        w.highwater = lambda topic, partition: PartitionEnd(1, 0.1)  # always read to the end
        await w.on_message(t.audio, 0, 0, b"d", audio("d", "x0", 0), Handle(log, "ax"), timestamp=999.0)
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=1000.0)
        for k in range(3):  # past wait_s, other calls' audio keeps coming, still before u0's time
            clock.now += wait * 0.6
            await w.on_message(t.audio, 0, k + 1, b"d", audio("d", f"x{k + 1}", k + 1), Handle(log, f"ax{k}"),
                               timestamp=999.2 + 0.2 * k)  # fmt: skip
            await w.tick()
            await w.pump()
        assert "u0" not in {e.utterance_id for e in events(sent)}  # held, not labelled on text alone
        await w.on_message(t.audio, 0, 9, b"c", audio("c", "u0", 0), Handle(log, "a0"), timestamp=1000.1)
        await w.tick()
        await w.pump()
        assert {e.utterance_id: e.modalities_present for e in events(sent)}["u0"] == ["text", "audio"]
        await w.on_message(t.text, 0, 1, b"c", text("c", "u1", 1), Handle(log, "t1"), timestamp=1001.0)
        clock.now += wait + 0.5  # u1's audio never comes and the audio partition stopped flowing
        await w.tick()
        await w.pump()
        assert {e.utterance_id: e.modalities_present for e in events(sent)}["u1"] == ["text"]

    asyncio.run(scenario())


class CountingFeaturizer(FakeFeaturizer):
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def text(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([[len(t), 1, 0, 0] for t in texts], np.float32)


def test_the_next_batch_is_encoded_while_this_one_computes_and_publishes_and_each_text_once() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        counting = CountingFeaturizer()
        w.processor.featurizer = counting
        prefetch, predict = w.processor.prefetch, engine.predict

        def spy(utts: list[Any]) -> None:
            log.append(f"prefetch {len(utts)}")
            prefetch(utts)

        def computing(batch: EngineBatch) -> EngineOutput:
            log.append(f"engine {batch.size}")
            return predict(batch)

        w.processor.prefetch = spy  # type: ignore[method-assign]
        engine.predict = computing  # type: ignore[method-assign]
        t = w.settings.kafka.topics
        for i in range(20):
            part = TextPart(call_id=f"c{i}", utterance_id="u0", seq=0, text="x" * (i + 1)).to_bytes()
            await w.on_message(t.text, 0, i, f"c{i}".encode(), part, Handle(log, f"t{i}"))
        await w.pump()
        assert [len(c) for c in counting.calls] == [8, 8, 4]  # batch 1, then batches 2 and 3 ahead of time
        assert sorted(x for c in counting.calls for x in c) == sorted("x" * (i + 1) for i in range(20))
        assert len(events(sent)) == 20 and len(engine.batches) == 3
        # batch 2's encoding starts before batch 1's engine runs, batch 3's before batch 2's
        assert log.index("prefetch 8") < log.index("engine 8") < log.index("send emostream.emotion.events")
        assert log.index("prefetch 4") < [i for i, x in enumerate(log) if x == "engine 8"][1]
        # each utterance's own features reached the engine
        assert sorted(float(b.features["text"][j, -1, 0]) for b in engine.batches for j in range(b.size)) == list(
            range(1, 21)
        )

    asyncio.run(scenario())


def test_prefetched_features_of_other_parts_are_not_used() -> None:
    async def scenario() -> None:
        from streams.join import Utterance
        from streams.validate import Payload

        counting = CountingFeaturizer()
        store, engine = FakeStore(), FakeEngine()
        p = Processor(engine, counting, store)
        utt = Utterance("c", "u0", 0, "A", first_at=0.0, parts={"text": Payload("text", "old words")})
        p.prefetch([utt])
        await asyncio.sleep(0.05)
        utt.parts = {"text": Payload("text", "new words, longer")}  # e.g. a replay restored other parts
        out = await p.run([utt])
        assert counting.calls == [["old words"], ["new words, longer"]]
        assert float(engine.batches[-1].features["text"][0, -1, 0]) == len("new words, longer")
        assert len(out.events) == 1

    asyncio.run(scenario())


def test_features_encoded_ahead_are_bounded_and_forgotten_on_a_rebalance() -> None:
    async def scenario() -> None:
        from streams.join import Utterance
        from streams.validate import Payload

        counting = CountingFeaturizer()
        p = Processor(FakeEngine(), counting, FakeStore())
        p.max_ready = 3
        utts = [
            Utterance("c", f"u{i}", i, "A", first_at=0.0, parts={"text": Payload("text", f"w{i}")}) for i in range(5)
        ]
        p.prefetch(utts)
        assert await p._prefetched([]) == {}  # waits for the encoding; nothing of it asked for yet
        assert counting.calls == [[f"w{i}" for i in range(5)]]
        assert list(p._ready) == [("c", "u2"), ("c", "u3"), ("c", "u4")]  # the oldest dropped
        p.prefetch(utts[2:4])  # already encoded: nothing runs
        out = await p.run(utts[2:4])
        assert len(counting.calls) == 1 and len(out.events) == 2
        assert list(p._ready) == [("c", "u4")]  # what a batch used is no longer held
        out = await p.run(utts[:2])  # dropped: encoded with their batch
        assert counting.calls[1:] == [["w0", "w1"]] and len(out.events) == 2
        p.forget_cached()
        assert not p._ready

    asyncio.run(scenario())


def test_an_encoder_first_called_from_two_threads_loads_its_model_once() -> None:
    """The next batch's encoding runs beside a batch's own: two first calls must not both load."""
    import threading
    import time
    from types import SimpleNamespace

    from streams.runtime import ModelFeaturizer

    class LazyText:
        def __init__(self) -> None:
            self.model: object | None = None
            self.loads = 0

        def encode(self, texts: list[str]) -> np.ndarray:
            if self.model is None:  # the check-then-load of every lazy encoder
                time.sleep(0.2)
                self.loads += 1
                self.model = object()
            return np.zeros((len(texts), 4), dtype=np.float32)

    text = LazyText()
    featurizer = ModelFeaturizer(SimpleNamespace(text=text, audio=None))
    threads = [threading.Thread(target=featurizer.text, args=(["hi"],)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert text.loads == 1
    assert featurizer.text(["a", "b"]).shape == (2, 4)


def test_utterances_of_vectors_alone_are_not_encoded_ahead() -> None:
    """Vectors need no encoder: prefetching them starts no thread (a thread hop per batch for
    nothing, and its GIL hand-offs with the event loop); their batch reads them as before."""

    async def scenario() -> None:
        import numpy as np

        from streams.join import Utterance
        from streams.validate import Payload

        engine = FakeEngine()
        p = Processor(engine, CountingFeaturizer(), FakeStore())
        vec = np.arange(4, dtype=np.float32)
        utts = [Utterance("c", f"u{i}", i, "A", 0.0, parts={"text": Payload("vector", vec + i)}) for i in range(3)]
        p.prefetch(utts)
        assert p._prefetch is None
        mixed = [*utts, Utterance("c", "u3", 3, "A", first_at=0.0, parts={"text": Payload("text", "words")})]
        p.prefetch(mixed)
        assert p._prefetch is not None
        await p._prefetched([])
        assert list(p._ready) == [("c", "u3")]  # the one with raw text alone
        out = await p.run(utts)
        assert len(out.events) == 3 and engine.batches[-1].features["text"].shape[0] == 3

    asyncio.run(scenario())


class SuspectingFeaturizer(FakeFeaturizer):
    """Every clip has speech, and its format check calls every audio vector (ones) '8k-as-16k'."""

    format_action = "warn"

    def __init__(self) -> None:
        from engines.features.format_check import FormatCheck

        self.format_check: object = FormatCheck(
            "fake", np.zeros(3), np.ones(3), np.array([[-9.0, 0, 0], [9.0, 0, 0], [0, 0, 0]]), np.zeros(3)
        )

    def speech(self, waves: list[np.ndarray], enough: float | None = None) -> np.ndarray:
        return np.ones(len(waves), np.float32)


def test_a_format_suspicion_comes_with_features_encoded_ahead_and_a_stale_one_is_forgotten() -> None:
    """``suspect`` travels with prefetched features as ``ignored`` does; an utterance encoded again
    (a batch split and retried) is judged afresh, not left with an earlier attempt's notes."""

    async def scenario() -> None:
        from engines.features.format_check import WRONG_RATE
        from streams.join import Utterance
        from streams.validate import Payload

        p = Processor(FakeEngine(), SuspectingFeaturizer(), FakeStore(), min_speech_s=0.15)
        parts = {"text": Payload("text", "hi"), "audio": Payload("wave", np.zeros(16_000, np.float32))}
        utt = Utterance("c", "u0", 0, "A", first_at=0.0, parts=dict(parts))
        p.prefetch([utt])
        assert await p._prefetched([]) == {}  # waits for the encoding ahead
        assert p._ready[("c", "u0")].suspect["audio"].startswith(WRONG_RATE)
        assert utt.suspect == {}  # the queued utterance is not marked by the encoding ahead
        out = await p.run([utt])
        assert utt.suspect["audio"].startswith(WRONG_RATE) and len(out.events) == 1
        assert out.events[0][0].ignored == {}  # warn: used, and the event says it is suspect
        assert (out.events[0][0].suspect or {})["audio"].startswith(WRONG_RATE), out.events[0][0]
        again = Utterance("c", "u1", 1, "A", first_at=0.0, parts=dict(parts))
        again.suspect["audio"] = "wrong sample rate? stale"
        again.ignored["audio"] = "no speech: stale"
        p.featurizer.format_check = None  # type: ignore[attr-defined]
        await p.run([again])
        assert again.suspect == {} and again.ignored == {}, (again.suspect, again.ignored)

    asyncio.run(scenario())


class _StoredStore(FakeStore):
    """FakeStore keeping each item as Redis does: its JSON form."""

    async def append(self, items: dict[str, list[ContextItem]]) -> None:
        await super().append({c: [ContextItem.from_json(i.to_json()) for i in new] for c, new in items.items()})


def test_a_suspect_part_is_said_by_the_event_and_by_its_revision_read_back_from_the_store() -> None:
    async def scenario() -> None:
        from engines.features.format_check import WRONG_RATE
        from streams.join import Utterance
        from streams.validate import Payload

        store = _StoredStore()
        p = Processor(FakeEngine(), SuspectingFeaturizer(), store, min_speech_s=0.15, future=1)
        parts = {"text": Payload("text", "hi"), "audio": Payload("wave", np.zeros(16_000, np.float32))}
        first = await p.run([Utterance("c", "u0", 0, "A", first_at=0.0, parts=dict(parts))])
        assert [e.revision for e, _ in first.events] == [0]
        assert (first.events[0][0].suspect or {})["audio"].startswith(WRONG_RATE)
        await p.commit(first)
        assert store.data["c"][0].suspect["audio"].startswith(WRONG_RATE)  # through its JSON form
        p.featurizer.format_check = None  # type: ignore[attr-defined]
        second = await p.run([Utterance("c", "u1", 1, "A", first_at=0.0, parts=dict(parts))])
        by_id = {(e.utterance_id, e.revision): e for e, _ in second.events}
        assert set(by_id) == {("u1", 0), ("u0", 1)}, set(by_id)
        assert (by_id[("u0", 1)].suspect or {})["audio"].startswith(WRONG_RATE), by_id[("u0", 1)]
        assert by_id[("u1", 0)].suspect is None and b"suspect" not in by_id[("u1", 0)].to_bytes()
        await p.commit(second)
        assert store.data["c"][1].suspect == {}

    asyncio.run(scenario())


def test_a_revision_says_which_parts_came_and_which_were_not_used_as_its_provisional_event_did() -> None:
    """A newcomer's blank transcript: r0 said ``ignored={'text': 'no words ...'}`` and
    ``modalities_present=['text']``, its revision ``ignored={}`` and ``[]``; a consumer that keeps the
    highest revision (as the README says) lost the why."""

    async def scenario() -> None:
        from streams.join import Utterance
        from streams.validate import Payload

        store = _StoredStore()
        p = Processor(FakeEngine(), FakeFeaturizer(), store, future=1)
        blank = Utterance("c", "u0", 0, "A", first_at=0.0, parts={"text": Payload("text", "   ")})
        blank.ignored["audio"] = "dead-lettered: undecodable_audio (x)"
        first = await p.run([blank])
        ((r0, _),) = first.events
        assert set(r0.ignored) == {"text", "audio"} and r0.ignored["text"].startswith("no words"), r0.ignored
        assert r0.modalities_present == ["text"]
        await p.commit(first)
        second = await p.run([Utterance("c", "u1", 1, "A", first_at=0.0, parts={"text": Payload("text", "hi")})])
        r1 = next(e for e, _ in second.events if e.revision == 1)
        assert (r1.utterance_id, r1.ignored, r1.modalities_present) == ("u0", r0.ignored, ["text"]), r1
        u1 = next(e for e, _ in second.events if e.revision == 0)
        assert u1.ignored == {} and u1.modalities_present == ["text"]
        await p.commit(second)
        assert '"i"' not in store.data["c"][1].to_json() and '"p"' not in store.data["c"][1].to_json()

    asyncio.run(scenario())


def test_a_context_item_without_suspicion_is_stored_as_before() -> None:
    item = ContextItem("u0", 3, "A", {"text": np.ones(4, np.float32)})
    assert '"x"' not in item.to_json()
    marked = ContextItem("u0", 3, "A", {"text": np.ones(4, np.float32)}, {"audio": "wrong G.711 law? x"})
    back = ContextItem.from_json(marked.to_json())
    assert back.suspect == {"audio": "wrong G.711 law? x"} and np.array_equal(back.features["text"], np.ones(4))
    assert ContextItem.from_json(item.to_json()).suspect == {}


def test_the_time_an_utterance_waited_on_the_broker_is_measured_from_its_record_time() -> None:
    """A newcomer's utterances, sent while the worker was down, showed 134 ms end to end: that
    figure starts at the worker. emostream_record_to_event_seconds starts at the first part's record
    time (the producer's send), so a backlog shows; a producer's clock ahead of the worker's gives 0."""
    import time

    async def scenario() -> Worker:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=time.time() - 50.0)
        await w.on_message(t.text, 0, 1, b"c", text("c", "u1", 1), Handle(log, "t1"), timestamp=time.time() + 9.0)
        await w.pump()
        assert len(events(sent)) == 2
        return w

    w = asyncio.run(scenario())
    count = w.metrics.registry.get_sample_value("emostream_record_to_event_seconds_count")
    total = w.metrics.registry.get_sample_value("emostream_record_to_event_seconds_sum")
    assert count == 2 and 50.0 <= total < 60.0, (count, total)  # the 50 s on the broker; the other one 0


def test_the_grace_of_a_partition_nothing_is_read_from_starts_when_it_is_assigned() -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text", "audio"))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        w.assigned({0, 1})
        clock.now += NOTHING_READ_GRACE_S + 1  # a text-only platform: nothing ever on the audio topic
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=clock.now)
        assert not w.behind("audio", 0, clock.now + 1.0)  # its first utterance waits join.wait_s, not the grace
        w.assigned({2})  # a partition got just now: a backlog may still show
        assert w.behind("audio", 2, clock.now + 1.0)
        w.assigned({0})  # assigned again while read from (a rebalance that kept it): its time stays
        assert not w.behind("audio", 0, clock.now + 1.0)
        w.assigned({1})  # assigned again with nothing read from it: its grace starts again
        assert w.behind("audio", 1, clock.now + 1.0)

    asyncio.run(scenario())


def test_a_call_forgotten_without_an_end_is_counted_and_logged(caplog: Any) -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        clock: Any = w.clock
        t = w.settings.kafka.topics
        await w.on_message(t.text, 0, 0, b"quiet", text("quiet", "u0", 0), Handle(log, "t0"), timestamp=clock.now)
        await w.pump()
        clock.now += w.settings.redis.ttl_s + 1
        await w.tick()
        assert "emostream_calls_without_end_total 1.0" in _metrics(w)
        assert "call quiet: no part for 3600 s (redis.ttl_s) and no 'ended'" in caplog.text

    caplog.set_level(logging.WARNING, logger="emostream.worker")
    asyncio.run(scenario())


def test_acks_reach_the_transport_in_offset_order_per_topic_partition() -> None:
    """Found in review: Faust (0.15.3) commits over one unacked message at the head of the acked ones,
    and over any on a partition never committed to; the worker acked a `started` at once while the
    `ended` before it waited for its call's close, so a crash then lost the call's end. Acks now
    reach the transport in offset order."""
    from streams.worker import Lease

    log: list[str] = []
    lease = Lease()
    handles = {(topic, n): Handle(log, f"{topic}{n}") for topic in ("c", "t") for n in range(3)}
    for (topic, n), h in handles.items():
        lease.expect(topic, n, h)
    lease.ack("c", 1, handles["c", 1])
    lease.ack("t", 0, handles["t", 0])  # another topic's order is its own
    assert log == ["ack t0"]
    lease.ack("c", 0, handles["c", 0])
    assert log == ["ack t0", "ack c0", "ack c1"]
    lease.ack("c", 1, handles["c", 1])  # twice: nothing more
    lease.ack("c", 2, Handle(log, "stand-in"))  # a handle not read there (the worker's stand-ins) goes at once
    assert log[-1] == "ack stand-in" and "ack c2" not in log
    lease.valid = False  # revoked: nothing more reaches the transport
    lease.ack("c", 2, handles["c", 2])
    assert "ack c2" not in log

    class Shedding(Handle):  # (streams.app._Handle: a record's bytes let go while its ack waits)
        def shed(self) -> None:
            self.log.append(f"shed {self.name}")

    log.clear()
    lease = Lease()
    first, second = Shedding(log, "a0"), Shedding(log, "a1")
    lease.expect("a", 0, first)
    lease.expect("a", 1, second)
    lease.ack("a", 1, second)
    lease.ack("a", 0, first)
    assert log == ["shed a1", "ack a0", "ack a1"], log  # the head is not shed: it goes at once

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text", "audio"))
        t = w.settings.kafka.topics
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=100.0)
        await w.on_message(t.text, 0, 1, b"c", b"{not json", Handle(log, "bad1"), timestamp=100.1)
        assert [v for tp, v in sent if tp == t.deadletter]  # dead-lettered at once ...
        assert "ack bad1" not in log  # ... its ack behind u0's text, which waits for its audio
        w.clock.now += NOTHING_READ_GRACE_S + 1  # type: ignore[attr-defined]  # (its audio partition never read)
        await w.tick()
        await w.pump()
        assert log.index("ack t0") < log.index("ack bad1"), log
        # a message whose handling raised (a bug) is acked in its place too, through its own lease
        await w.on_message(t.text, 0, 5, b"c", text("c", "u1", 1), Handle(log, "u1"), timestamp=102)
        assert "ack u1" not in log
        real = w._on_message

        async def failing(*args: Any) -> None:
            await real(*args)
            raise RuntimeError("a bug after the message was read")

        w._on_message = failing  # type: ignore[method-assign]
        await w.on_message(t.text, 0, 6, b"c", b"{not json", Handle(log, "raised6"), timestamp=102.1)
        assert "ack raised6" not in log  # behind u1, still waiting
        w._on_message = real  # type: ignore[method-assign]
        w.clock.now += 1.5  # type: ignore[attr-defined]
        await w.pump()
        assert log.index("ack u1") < log.index("ack raised6"), log

        # one in flight across a revoke and a new assignment: nothing reaches the transport for it
        async def revoked_meanwhile(*args: Any) -> None:
            await real(*args)
            await w.revoke({0})
            w.assigned({0})
            raise RuntimeError("a bug after the message was read")

        w._on_message = revoked_meanwhile  # type: ignore[method-assign]
        await w.on_message(t.text, 0, 7, b"c", text("c", "u2", 2), Handle(log, "old7"), timestamp=102.2)
        assert "ack old7" not in log  # its next owner (this worker again) reads it again

    asyncio.run(scenario())


def test_a_message_held_unacked_past_any_wait_shows_in_the_gauge_and_the_log(caplog: Any) -> None:
    """With acks in offset order, one message never acked would hold its partition's commits for
    good: the gauge gives the oldest unacked message's age, and the log names one held past
    ``join.max_hold_s`` and a minute."""
    import logging

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=1.0, default_modalities=("text",))
        t = w.settings.kafka.topics
        w.leases.setdefault(0, Lease()).expect(t.text, 3, Handle(log, "lost3"), w.clock())
        w.clock.now += 100  # type: ignore[attr-defined]
        await w.tick()
        assert "emostream_oldest_unacked_seconds 100.0" in _metrics(w)
        with caplog.at_level(logging.WARNING, logger="emostream.worker"):
            w.clock.now += w.settings.join.max_hold_s  # type: ignore[attr-defined]
            await w.tick()
            await w.tick()
        said = [r.getMessage() for r in caplog.records if "not acked" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith(f"{t.text}[0]@3 read 1000 s ago and not acked"), said

    asyncio.run(scenario())


def test_a_call_ended_under_a_steady_load_closes_in_its_turn_not_when_the_load_stops() -> None:
    """Found in review: a close ran only when no batch was due, and under a steady load one always
    is: an ended call's final revisions, summary and 'ended' ack waited for the load to stop. A call
    waiting to close now goes before a batch whose utterances are younger."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=0.2, default_modalities=("text",))
        t = w.settings.kafka.topics
        w.settings = w.settings.model_copy(update={"engine": w.settings.engine.model_copy(update={"max_wait_s": 0.05})})
        await w.on_message(t.text, 0, 0, b"A", text("A", "u0", 0), Handle(log, "A.t0"), timestamp=100.0)
        end = CallControl(call_id="A", event="ended").to_bytes()
        await w.on_message(t.control, 0, 0, b"A", end, Handle(log, "A.end"), timestamp=100.1)
        for n in range(1, 21):  # an utterance of another call arrives while each batch computes: one is always due
            await w.on_message(t.text, 0, n, b"B", text("B", f"u{n}", n), Handle(log, f"B.t{n}"), timestamp=100.0 + n)
            w.clock.now += 0.06  # type: ignore[attr-defined]
            await w.tick()
            await w._step()
        assert store.released == ["A"] and "ack A.end" in log and not w.closing
        assert len([e for e in events(sent) if e.call_id == "B"]) >= 15  # the batches went on

    asyncio.run(scenario())


def test_a_flood_of_closes_does_not_hold_up_a_talking_call_s_batch() -> None:
    """An operator's trial: 2000 'ended's of calls never started, then a talking call's utterance
    waited for every one of their closes (2.7 s). At most CLOSES_BEFORE_A_BATCH go before it."""
    from streams.worker import CLOSES_BEFORE_A_BATCH

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=0.2, default_modalities=("text",))
        t = w.settings.kafka.topics
        w.settings = w.settings.model_copy(update={"engine": w.settings.engine.model_copy(update={"max_wait_s": 0.05})})
        for i in range(50):
            end = CallControl(call_id=f"x{i}", event="ended").to_bytes()
            await w.on_message(t.control, 0, i, f"x{i}".encode(), end, Handle(log, f"e{i}"), timestamp=100.0)
        for _ in range(40):  # past the grace of partitions not read yet
            w.clock.now += 0.5  # type: ignore[attr-defined]
            await w.tick()
        assert len(w.closing) == 50
        await w.on_message(t.text, 0, 0, b"B", text("B", "u0", 0), Handle(log, "B.t0"), timestamp=101.0)
        w.clock.now += 0.3  # type: ignore[attr-defined]
        await w.tick()
        while not events(sent):
            assert await w._step()
        assert len(store.released) <= CLOSES_BEFORE_A_BATCH

    asyncio.run(scenario())


def test_a_call_reopened_after_its_ended_is_not_ended_as_quiet_by_a_worker_that_did_not_see_it_close(
    caplog: Any,
) -> None:
    """Found by a newcomer: a call's last transcript came 5 s after its 'ended' and reopened it; the
    worker that closed it knew it had ended, but after a restart the next one ended it as quiet,
    logged "no 'ended'" and counted it in emostream_calls_without_end_total (7 in a session, 2 of
    them true). The call's close mark in Redis tells any worker."""

    async def scenario() -> None:
        w, sent, log, store, clock = quiet_worker(60.0)
        t = w.settings.kafka.topics
        await spoken_call(w, log)
        end = CallControl(call_id="c", event="ended").to_bytes()
        await w.on_message(t.control, 0, 1, b"c", end, Handle(log, "end"), timestamp=101.0)
        await later(w, clock, 2, step=0.5)
        assert store.released == ["c"]
        await w.on_message(t.text, 0, 1, b"c", text("c", "u1", 1), Handle(log, "late"), timestamp=106.0)
        await later(w, clock, 2, step=0.5)
        assert [e.utterance_id for e in events(sent)][-1] == "u1" and store.active[0] == {"c": 106.0}
        # a restart: a worker without the first one's memory, on the same Redis
        w2, sent2, log2, _, clock2 = quiet_worker(60.0)
        w2.processor.store = store  # type: ignore[assignment]
        clock2.now = clock.now
        w2.assigned({0})
        with caplog.at_level(logging.WARNING, logger="emostream.worker"):
            await later(w2, clock2, 200)
        assert "no 'ended'" not in caplog.text and "emostream_calls_without_end_total 0.0" in _metrics(w2)
        assert store.active[0] == {}  # left to its TTL, as the first worker would have
        assert not [v for tp, v in sent2 if tp == t.calls]  # no second summary

    asyncio.run(scenario())


def test_the_worker_warns_when_shed_audio_after_s_is_within_what_a_crash_costs(caplog: Any) -> None:
    """Found by a newcomer: with the old default of 30 s (the session timeout), a kill -9 made every
    utterance in flight come to the next worker more than 30 s after it was sent: their voices were
    not encoded (33 of 64 events changed, an angry turn read as neutral, no streak alert)."""
    import logging

    w, *_ = make()
    assert w.settings.engine.shed_audio_after_s >= w.settings.kafka.session_timeout_s + 30
    with caplog.at_level(logging.WARNING, logger="emostream.worker"):
        Worker(w.settings, w.processor, Metrics(), w.send)
        assert "within what a crash costs" not in caplog.text
        low = w.settings.model_copy(update={"engine": w.settings.engine.model_copy(update={"shed_audio_after_s": 30})})
        Worker(low, w.processor, Metrics(), w.send)
    assert "engine.shed_audio_after_s 30 s is within what a crash costs" in caplog.text


def test_a_call_whose_messages_come_on_two_partitions_is_counted_and_named(caplog: Any) -> None:
    """Found by a newcomer: control messages sent with kafka-python (murmur2 of the key, as Kafka's
    Java client) and parts with a librdkafka client (CRC32 by default) put one call on two
    partitions, and nothing said so: with several workers its join would split."""
    import logging

    from kafka.partitioner.default import murmur2

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=0.2, default_modalities=("text",))
        t = w.settings.kafka.topics
        right = (murmur2(b"L-crc1") & 0x7FFFFFFF) % t.partitions
        wrong = (right + 1) % t.partitions
        start = CallControl(call_id="L-crc1", event="started").to_bytes()
        await w.on_message(t.control, right, 0, b"L-crc1", start, Handle(log, "s"), timestamp=100.0)
        await w.on_message(t.text, right, 0, b"L-crc1", text("L-crc1", "u0", 0), Handle(log, "t0"), timestamp=100.1)
        assert "emostream_misrouted_messages_total{" not in _metrics(w)
        with caplog.at_level(logging.WARNING, logger="emostream.worker"):
            await w.on_message(t.text, wrong, 0, b"L-crc1", text("L-crc1", "u1", 1), Handle(log, "t1"), timestamp=100.2)
        assert f'emostream_misrouted_messages_total{{topic="{t.text}"}} 1.0' in _metrics(w)
        assert (
            f"call L-crc1: a message on {t.text}[{wrong}] after one on {t.text}[{right}] (where Kafka's" in caplog.text
        )
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0", "u1"]  # one worker joins them all the same

    asyncio.run(scenario())


def test_an_utterance_going_without_a_declared_modality_says_the_call_declared_it(caplog: Any) -> None:
    """A newcomer's call declared text+audio in its 'started'; the log line for an utterance that went
    without its audio told them to declare what the call sends, as if it had not."""
    import logging

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=0.2, default_modalities=("text",))
        t = w.settings.kafka.topics
        w.highwater = lambda topic, partition: PartitionEnd(1, 0.1)  # each read to its end
        await w.on_message(t.audio, 0, 0, b"x", audio("x", "a0", 0), Handle(log, "x"), timestamp=99.0)
        start = CallControl(call_id="c", event="started", modalities=["text", "audio"]).to_bytes()
        await w.on_message(t.control, 0, 0, b"c", start, Handle(log, "s"), timestamp=100.0)
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=100.1)
        with caplog.at_level(logging.INFO, logger="emostream.worker"):
            w.clock.now += 1  # type: ignore[attr-defined]
            await w.pump()
        (line,) = [r.getMessage() for r in caplog.records if "goes without audio" in r.getMessage()]
        assert "the call's 'started' declared text+audio" in line and "modalities [" not in line, line

    asyncio.run(scenario())


def test_a_close_that_fails_every_time_does_not_stop_the_batches() -> None:
    """Found in review of the close-in-its-turn change: a call whose close raised every time went
    before every batch, so no batch ran again, the queue filled and backpressure stopped the
    reading. While closes fail the batches go first, as before."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(wait_s=0.2, default_modalities=("text",))
        t = w.settings.kafka.topics
        w.settings = w.settings.model_copy(update={"engine": w.settings.engine.model_copy(update={"max_wait_s": 0.05})})
        real = w.processor.close

        async def close(call_id: str) -> Any:
            if call_id == "A":
                raise ValueError("a close that fails every time")
            return await real(call_id)

        w.processor.close = close  # type: ignore[method-assign]
        await w.on_message(t.text, 0, 0, b"A", text("A", "u0", 0), Handle(log, "A.t0"), timestamp=100.0)
        end = CallControl(call_id="A", event="ended").to_bytes()
        await w.on_message(t.control, 0, 0, b"A", end, Handle(log, "A.end"), timestamp=100.1)
        for n in range(1, 100):
            assert len(w.queue) < 4 * w.settings.engine.max_batch, f"stalled at message {n}"
            await w.on_message(t.text, 0, n, f"B{n}".encode(), text(f"B{n}", "u", n), Handle(log, f"B{n}"),
                               timestamp=100.0 + n)  # fmt: skip
            w.clock.now += 0.1  # type: ignore[attr-defined]
            await w.pump()
        assert len([e for e in events(sent) if e.call_id != "A"]) >= 95
        # nor the other calls' closes: it is tried again after them
        for n in range(1, 4):
            end = CallControl(call_id=f"B{n}", event="ended").to_bytes()
            await w.on_message(t.control, 0, n, f"B{n}".encode(), end, Handle(log, f"B{n}.end"), timestamp=200.0)
        for _ in range(20):
            w.clock.now += 1.0  # type: ignore[attr-defined]
            w.retry_at = 0.0
            await w.pump()
        assert {"B1", "B2", "B3"} <= set(store.released) and list(w.closing) == ["A"]

    asyncio.run(scenario())


def test_the_faust_handle_lets_a_records_bytes_go_while_its_ack_waits() -> None:
    """With acks in offset order a message done with waits behind an earlier one for up to
    join.max_hold_s: its Faust event would keep the record's bytes (audio, up to a megabyte) alive
    with every message read behind it."""
    from faust.events import Event
    from faust.types.tuples import Message

    from streams.app import _Handle

    message = Message("emostream.utterance.audio", 0, 5, 0.0, 0, None, b"c", b"v" * 100_000, None)
    event = Event(app=None, key=b"c", value=message.value, headers=None, message=message)  # type: ignore[arg-type]
    _Handle(event).shed()
    assert event.value is None and message.value is None and message.offset == 5


class PoisonEngine(FakeEngine):
    """Fails on any window whose utterance to label has the text vector the featurizer gives 'poison'."""

    def predict(self, batch: EngineBatch) -> EngineOutput:
        label = batch.features["text"][np.arange(batch.size), batch.target, 0]
        if (label == 99).any():
            raise ValueError("engine failed")
        return super().predict(batch)


class PoisonCountingFeaturizer(CountingFeaturizer):
    def text(self, texts: list[str]) -> np.ndarray:
        out = super().text(texts)
        out[[t == "poison" for t in texts], 0] = 99
        return out


def test_a_batch_split_around_an_engine_failure_encodes_each_utterance_once_but_the_last_try() -> None:
    """The halves of a failed batch and the lone retry used to encode their utterances again (a
    poison utterance in a batch of 256 with audio: about twice the encoders' work); what the
    failed attempt encoded is used."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        w.processor.engine = PoisonEngine()
        counting = PoisonCountingFeaturizer()
        w.processor.featurizer = counting
        t = w.settings.kafka.topics
        for i in range(8):
            words = "poison" if i == 5 else f"line {i}"
            await w.on_message(t.text, 0, i, b"c", text("c", f"u{i}", i, words=words), Handle(log, f"t{i}"))
        await w.pump()
        assert sorted(e.utterance_id for e in events(sent)) == [f"u{i}" for i in range(8) if i != 5]
        (dead,) = [DeadLetter.model_validate_json(v) for tp, v in sent if tp == t.deadletter]
        assert dead.reason == "processing_failed" and dead.utterance_id == "u5"
        encoded = [x for call in counting.calls for x in call]
        # each once; the one that fails, alone, once more afresh (a passing fault may be the encoder's)
        assert sorted(encoded) == sorted(["poison", "poison", *(f"line {i}" for i in range(8) if i != 5)]), encoded

    asyncio.run(scenario())


def test_voices_waiting_for_their_words_are_held_only_up_to_a_cap() -> None:
    """A text partition whose leader is gone while the audio flows held every voice for up to
    join.max_hold_s (a few GB a minute of calls); join.max_held_audio_s bounds the decoded audio
    waiting: from 0.8 of it nothing is held past wait_s, at it the reading stops."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"), max_held_audio_s=1.0)
        t = w.settings.kafka.topics
        w.highwater = lambda topic, partition: PartitionEnd(500, 0.5)
        for i in range(7):  # 0.1 s each
            await w.on_message(
                t.audio, 0, i, f"c{i}".encode(), pcm(f"c{i}", "u0", 0), Handle(log, f"a{i}"), timestamp=1e3
            )
        assert abs(w.joiner.held_audio_s - 0.7) < 1e-9
        assert w.behind("text", 0, 1002.0)  # nothing read there yet: a backlog may still show
        await w.on_message(t.audio, 0, 7, b"c7", pcm("c7", "u0", 0), Handle(log, "a7"), timestamp=1000.0)
        assert not w.behind("text", 0, 1002.0)  # 0.8 of the cap: no holding
        for i in (8, 9):
            await w.on_message(
                t.audio, 0, i, f"c{i}".encode(), pcm(f"c{i}", "u0", 0), Handle(log, f"a{i}"), timestamp=1e3
            )
        with pytest.raises(asyncio.TimeoutError):  # at the cap the agent waits (Kafka's lag grows, memory does not)
            await asyncio.wait_for(w._backpressure(), 0.2)
        w.clock.now += 10.0  # past wait_s and the grace of a partition not read yet: the voices go without words
        await w.tick()
        await w.pump()
        assert w.joiner.held_audio_s == 0.0 and len(events(sent)) == 10
        await asyncio.wait_for(w._backpressure(), 0.2)

    asyncio.run(scenario())


def test_a_flood_of_ended_waits_for_the_closes_at_the_cap_of_open_calls() -> None:
    """Each close costs a few Redis round trips and an 'ended' is read faster: a flood of them (calls
    never started) grew the calls waiting for their close without bound. At join.max_open_calls the
    reading waits, and near it no close waits for topics read behind."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(max_open_calls=10)
        t = w.settings.kafka.topics
        w.highwater = lambda topic, partition: PartitionEnd(500, 0.5)  # a backlog everywhere
        for i in range(10):
            end = CallControl(call_id=f"x{i}", event="ended").to_bytes()
            await w.on_message(t.control, 0, i, f"x{i}".encode(), end, Handle(log, f"e{i}"), timestamp=1e3)
        assert len(w.ending) == 10 and not w.behind("text", 0, 1e3 + 5)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(w._backpressure(), 0.2)
        await w.tick()
        assert "emostream_closing_calls 10.0" in _metrics(w)  # what an operator sees of the flood
        w.clock.now += 5.0
        for _ in range(12):
            await w.pump()
        assert not w.ending and sorted(store.released) == sorted(f"x{i}" for i in range(10))
        await asyncio.wait_for(w._backpressure(), 0.2)
        await w.tick()
        assert "emostream_closing_calls 0.0" in _metrics(w)

    asyncio.run(scenario())


def test_a_flood_of_bad_messages_logs_the_first_ten_of_each_reason(caplog: pytest.LogCaptureFixture) -> None:
    """One line per dead letter: a hostile producer's 20,000 malformed messages a second wrote some
    250 GB of log a day. Every one is still dead-lettered and counted."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        with caplog.at_level(logging.WARNING, logger="emostream.worker"):
            for i in range(1200):
                await w.on_message(t.text, 0, i, b"c", b"not json", Handle(log, f"x{i}"))
            for i in range(30):
                await w.on_message(t.text, 0, 2000 + i, b"c", b"[1]", Handle(log, f"y{i}"))
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dead letter")]
        assert len([m for m in lines if m.startswith("dead letter malformed_json")]) == 11  # ten, then the 1000th
        assert len([m for m in lines if m.startswith("dead letter wrong_type")]) == 10
        assert "[1000 of this reason so far" in lines[10]
        assert len([v for tp, v in sent if tp == t.deadletter]) == 1230
        assert 'emostream_deadletters_total{reason="malformed_json"} 1200.0' in _metrics(w)

    asyncio.run(scenario())


@pytest.mark.parametrize("control", ["ended", "started again"])
def test_a_calls_end_read_before_its_last_parts_by_its_next_owner_keeps_what_it_declared(control: str) -> None:
    """After a kill -9, the partition's next owner read a text-only call's 'ended' (control topic)
    before its last transcripts (text topic), or a 'started' of the id's next call that ends it
    (its 'ended' lost): that made the call with the default modalities, the stored declaration was
    never read, and each transcript waited 5 s for audio never sent."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"))
        t = w.settings.kafka.topics
        await w.on_message(t.control, 0, 0, b"c", started(1000.0), Handle(log, "s0"), timestamp=1000.0)
        await w.on_message(t.text, 0, 0, b"c", text("c", "u0", 0), Handle(log, "t0"), timestamp=1000.5)
        await w.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0"]
        # the partition's next owner (the same store): the control message first, then the last transcript
        w2 = Worker(w.settings, Processor(FakeEngine(), FakeFeaturizer(), store), Metrics(), w.send, clock=w.clock)
        w2.highwater = lambda topic, partition: PartitionEnd(500, 0.5)  # nothing read from the audio topic yet
        w2.assigned({0})
        first = CallControl(call_id="c", event="ended").to_bytes() if control == "ended" else started(2000.0)
        await w2.on_message(t.control, 0, 1, b"c", first, Handle(log, "e0"), timestamp=1002.0)
        await w2.on_message(t.text, 0, 1, b"c", text("c", "u1", 1), Handle(log, "t1"), timestamp=1001.0)
        await w2.pump()
        assert [e.utterance_id for e in events(sent)] == ["u0", "u1"]  # at once: the call sends no audio

    asyncio.run(scenario())


def test_a_call_whose_seq_starts_again_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text",))
        t = w.settings.kafka.topics
        for i, seq in enumerate([*range(7), 8, 7, 9, 10, 11, 12, 13, 0]):  # out of order by one; then from 0 again
            await w.on_message(t.text, 0, i, b"c", text("c", f"u{i}", seq), Handle(log, f"t{i}"), timestamp=100.0 + i)
            await w.pump()
        assert len(events(sent)) == 15
        assert "emostream_seq_behind_total 1.0" in _metrics(w)

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    said = "call c: utterance u14 has seq 0, below every utterance of the call's context window (its highest: seq 13)"
    assert said in caplog.text and caplog.text.count("emostream_seq_behind_total") == 1


def test_a_call_that_declares_an_empty_list_of_modalities_is_told_it_waits_for_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator's trial: "modalities": [] waited 2 s for audio, with nothing said."""

    async def scenario() -> None:
        w, sent, log, store, engine = make(default_modalities=("text", "audio"))
        none = CallControl(call_id="c", event="started", modalities=[]).to_bytes()
        await w.on_message(w.settings.kafka.topics.control, 0, 0, b"c", none, Handle(log, "s"), timestamp=100.0)

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert "call c declared no modality ([]), none of which this model takes" in caplog.text
    assert "wait for the default, join.default_modalities text+audio" in caplog.text
