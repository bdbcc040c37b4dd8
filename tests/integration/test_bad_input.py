"""Every kind of bad input, between valid messages, on the real broker: each lands in the
dead-letter topic with its reason and source offset; every valid utterance still gets its event."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from kafka import KafkaProducer

from streams.kafka import ensure_topics
from streams.schemas import AudioPart, CallControl, TextPart, encode_f32
from streams.settings import Settings
from tests.integration.harness import Collector, WorkerProcess, settings_for
from tools.dialogues import read_meld_csv
from tools.feed import part_message

pytestmark = pytest.mark.integration


def _text(**kw: object) -> bytes:
    base: dict[str, object] = {"schema_version": 1, "call_id": "bad", "utterance_id": "x", "seq": 0, "text": "hi"}
    base.update(kw)
    return json.dumps(base).encode()


def test_bad_input_goes_to_dead_letters_and_valid_input_is_not_lost(services, unique, shared_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(services, unique, default_modalities=("text",))
    t = settings.kafka.topics
    ensure_topics(settings)
    bad: list[tuple[str, bytes, str]] = [
        (t.text, b"{this is not json", "malformed_json"),
        (t.text, _text(schema_version=99), "unknown_schema_version"),
        (t.text, b'{"schema_version": 1, "call_id": "bad", "text": "no ids"}', "missing_field"),
        (t.text, _text(seq="seven"), "wrong_type"),
        (t.text, _text(seq="7"), "wrong_type"),  # a number as a string: the schema says integer
        (t.text, _text(start_s=2.0, end_s=1.0), "invalid_value"),  # ends before it starts
        (t.text, _text()[:-1] + b', "text": "again"}', "malformed_json"),  # a key named twice
        (
            t.text,
            TextPart(call_id="bad", utterance_id="e", seq=0, embedding=[0.1] * 7).to_bytes(),
            "wrong_embedding_size",
        ),
        (
            t.text,
            b'{"schema_version":1,"call_id":"bad","utterance_id":"n","seq":0,"embedding":[NaN,1.0]}',
            "non_finite",
        ),
        (t.text, _text(text=None, embedding=[1e39] * 384), "invalid_value"),
        # finite but far beyond any feature: 1e38 overflowed the engine's norms to NaN (MAX_ABS_FEATURE)
        (t.text, _text(text=None, embedding=[1e38] * 384), "invalid_value"),
        (t.text, _text(text=None, embedding_f32=encode_f32([0.5] * 383 + [-3e7])), "invalid_value"),
        # packed float32 (read from its bytes, streams.schemas._large_f32): a NaN and an Inf
        (t.text, _text(text=None, embedding_f32=encode_f32([0.5] * 383 + [float("nan")])), "non_finite"),
        (t.text, _text(text=None, embedding_f32=encode_f32([float("-inf")] + [0.5] * 383)), "non_finite"),
        (
            t.audio,
            AudioPart(
                call_id="bad",
                utterance_id="a",
                seq=0,
                encoding="flac",
                data=base64.b64encode(b"RIFF....garbage" * 50).decode(),
            ).to_bytes(),
            "undecodable_audio",
        ),
        (
            t.audio,
            AudioPart(
                call_id="bad", utterance_id="b", seq=0, encoding="pcm_s16le", data=base64.b64encode(b"\x01").decode()
            ).to_bytes(),
            "undecodable_audio",
        ),
        (t.text, _text(text="x" * (settings.limits.max_message_bytes + 10)), "oversized"),
    ]
    dialogues = read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv", dialogue_ids=[20, 21])
    good = [(u, m) for d in dialogues for u in d.utterances for m in ("text",)]
    worker = WorkerProcess(settings, tmp_path).start()
    collector = Collector(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers, max_request_size=16 * 1024 * 1024)
    try:
        worker.wait_ready()
        sent_offsets: dict[str, tuple[str, int]] = {}
        for i in range(max(len(good), len(bad))):  # interleaved
            if i < len(good):
                utt, modality = good[i]
                topic, value = part_message(utt, modality, t)  # type: ignore[misc]
                producer.send(topic, key=utt.call_id.encode(), value=value)
            if i < len(bad):
                btopic, bvalue, reason = bad[i]
                meta = producer.send(btopic, key=b"bad", value=bvalue).get(timeout=30)
                sent_offsets[f"{i}"] = (reason, meta.offset)
        producer.flush()
        want = {(u.call_id, u.utterance_id) for u, _ in good}
        ok = collector.poll_until(
            lambda c: {(e.call_id, e.utterance_id) for _, e in c.events} >= want and len(c.dead) >= len(bad), 90
        )
        assert ok, (sorted(d.reason for d in collector.dead), worker.tail())
        assert sorted(d.reason for d in collector.dead) == sorted(r for _, _, r in bad)
        for letter in collector.dead:
            assert letter.detail and letter.source_topic in (t.text, t.audio) and letter.offset >= 0
            assert letter.key == "bad"
        assert worker.proc is not None and worker.proc.poll() is None, "the worker survived"
        metrics = worker.metrics()
        assert 'emostream_deadletters_total{reason="malformed_json"} 2.0' in metrics  # one a key named twice
        # a call id used again, once its previous call closed, under the same utterance ids: a new
        # call (before, its parts were 'conflicting_part' or a replay of the old call's, no event)
        for n, words in enumerate(("Thanks, that is all.", "I am still waiting and I am furious!"), 1):
            for topic, message in (
                (t.control, CallControl(call_id="line-7", event="started", modalities=["text"])),
                (t.text, TextPart(call_id="line-7", utterance_id="u0", seq=0, speaker="C", text=words)),
                (t.control, CallControl(call_id="line-7", event="ended")),
            ):
                producer.send(topic, key=b"line-7", value=message.to_bytes()).get(timeout=30)

            def closed(c: Collector, n: int = n) -> bool:  # its event, and its final report
                calls = (
                    sum(e.call_id == "line-7" for _, e in c.events),
                    sum(r.call_id == "line-7" and r.final for r in c.reports),
                )
                return min(calls) >= n

            ended = collector.poll_until(closed, 60)
            assert ended, worker.tail()
        again = [e for _, e in collector.events if e.call_id == "line-7"]
        assert [(e.utterance_id, e.context_size) for e in again] == [("u0", 1), ("u0", 1)], again
        # each call's ids are its own: a consumer deduplicating on event_id keeps both calls' messages
        finals = [r for r in collector.reports if r.call_id == "line-7" and r.final]
        assert len({e.event_id for e in again}) == 2 and len({r.event_id for r in finals}) == 2, (again, finals)
        assert again[1].event_id.startswith("line-7~g") and finals[1].event_id.startswith("line-7~g")
        assert sorted(d.reason for d in collector.dead) == sorted(r for _, _, r in bad)  # none for line-7
        # words the English text model cannot read are not used (engine.language_check = drop), and the
        # event, the metric and the log say so; a short line in Latin letters is not judged, one in
        # another script is
        lines = {
            "es": "Estoy muy enfadado, me han cobrado dos veces este mes.",
            "zh": "我非常生气，你们这个月扣了我两次钱，怎么回事？",
            "short": "Sí, claro.",
            "short-zh": "我很生气！",
        }
        for n, words in enumerate(lines.values()):
            part = TextPart(call_id="foreign", utterance_id=f"f{n}", seq=n, speaker="C", text=words)
            producer.send(t.text, key=b"foreign", value=part.to_bytes()).get(timeout=30)
        got = collector.poll_until(lambda c: sum(e.call_id == "foreign" for _, e in c.events) >= len(lines), 60)
        assert got, worker.tail()
        foreign = {e.utterance_id: e for _, e in collector.events if e.call_id == "foreign"}
        for n, code in enumerate(("es", "zh")):
            why = foreign[f"f{n}"].ignored.get("text", "")
            assert why.startswith("other language? ") and f"({code})" in why, foreign[f"f{n}"]
            assert foreign[f"f{n}"].weights.get("text", 0.0) == 0.0
        assert foreign["f2"].ignored == {} and foreign["f2"].weights["text"] > 0.99, foreign["f2"]
        assert "written in Han script" in foreign["f3"].ignored.get("text", ""), foreign["f3"]
        counted = 'emostream_other_language_texts_total{used="false"} 3.0'  # the Spanish and the Chinese lines
        deadline = time.monotonic() + 20  # counted once the batch is committed, after its events are out
        while counted not in (metrics := worker.metrics()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert counted in metrics, metrics
        log = worker.tail(1 << 20)  # once a call
        assert "call foreign: transcript of utterance f0 not used: other language?" in log, log[-3000:]
        assert log.count("call foreign: transcript") == 1, log[-3000:]
    finally:
        producer.close()
        collector.close()
        worker.stop()


def test_a_dead_lettered_audio_part_does_not_hold_up_its_text(services, unique, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An utterance whose audio does not decode is dead-lettered for it and labelled from its text
    at once, saying why (``ignored``), not after the join's whole wait (12 s here). Two parts that
    disagree on their utterance's seq and speaker are joined, and the worker says so."""
    settings = settings_for(services, unique, default_modalities=("text", "audio"), wait_s=12.0)
    t = settings.kafka.topics
    ensure_topics(settings)
    garbage = base64.b64encode(b"RIFF....garbage" * 50).decode()
    worker = WorkerProcess(settings, tmp_path).start()
    collector = Collector(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers)
    try:
        worker.wait_ready()
        for i in range(3):
            audio = AudioPart(call_id="mixed", utterance_id=f"m{i}", seq=i, encoding="flac", data=garbage)
            text = TextPart(call_id="mixed", utterance_id=f"m{i}", seq=i, text="I want my money back, now.")
            first, second = (audio, text) if i % 2 else (text, audio)
            for part, topic in (
                (first, t.text if first is text else t.audio),
                (second, t.audio if first is text else t.text),
            ):
                producer.send(topic, key=b"mixed", value=part.to_bytes())
            producer.flush()
        # and audio against its schema (an encoding the worker does not know) whose ids parse: it is
        # dead-lettered naming its utterance, which does not wait for it either
        mp3 = {"schema_version": 1, "kind": "audio", "call_id": "mixed", "utterance_id": "m3", "seq": 3,
               "encoding": "mp3", "data": "SUQzAwAAAAAA"}  # fmt: skip
        producer.send(t.audio, key=b"mixed", value=json.dumps(mp3).encode())
        producer.send(t.text, key=b"mixed", value=TextPart(call_id="mixed", utterance_id="m3", seq=3,
                                                           text="I want my money back, now.").to_bytes())  # fmt: skip
        producer.flush()
        # and a text-only call whose transcript is blank: an event that says so, not a confident label
        producer.send(
            t.control, key=b"blank", value=CallControl(call_id="blank", event="started", modalities=["text"]).to_bytes()
        )
        producer.send(
            t.text, key=b"blank", value=TextPart(call_id="blank", utterance_id="b0", seq=0, text=" \t").to_bytes()
        )
        # symbols the text model does not read are no words either; a rant longer than it reads is used, and said
        for i, words in ((1, "\U0001f984\U0001f984 \u2605"), (2, "The bill is wrong again. " * 40 + "I am furious!")):
            part = TextPart(call_id="blank", utterance_id=f"b{i}", seq=i, text=words)
            producer.send(t.text, key=b"blank", value=part.to_bytes())
        # and two parts of one utterance that disagree on its seq and speaker: joined, the transcript's word counts
        audio = AudioPart(call_id="odd", utterance_id="d0", seq=5, speaker="customer", encoding="features",
                          features=[0.1] * 768)  # fmt: skip
        producer.send(t.audio, key=b"odd", value=audio.to_bytes())
        producer.flush()
        text = TextPart(call_id="odd", utterance_id="d0", seq=0, speaker="agent", text="Let me check that for you.")
        producer.send(t.text, key=b"odd", value=text.to_bytes())
        producer.flush()
        assert collector.poll_until(lambda c: len(c.events) >= 8 and len(c.dead) >= 4, 60), worker.tail()
        assert sorted(e.utterance_id for _, e in collector.events) == ["b0", "b1", "b2", "d0", "m0", "m1", "m2", "m3"]
        for _, e in collector.events:
            if e.call_id == "odd":
                assert (e.seq, e.speaker, e.modalities_present) == (0, "agent", ["text", "audio"]), e
                continue
            if e.utterance_id == "b2":
                assert e.ignored == {} and e.suspect["text"].startswith("long transcript: the text model reads"), e
                continue
            if e.call_id == "blank":
                assert e.modalities_present == ["text"] and e.ignored["text"].startswith("no words"), e
                assert e.weights["text"] == 0.0, e.weights  # arrived, not used
                continue
            assert e.modalities_present == ["text"]
            reason = "invalid_value (encoding:" if e.utterance_id == "m3" else "undecodable_audio ("
            assert list(e.ignored) == ["audio"] and e.ignored["audio"].startswith(f"dead-lettered: {reason}"), e.ignored
            detail = next(d.detail for d in collector.dead if d.utterance_id == e.utterance_id)
            assert detail[:100] in e.ignored["audio"], (detail, e.ignored)  # the event says why, as the dead letter
        assert sorted((d.reason, d.utterance_id) for d in collector.dead) == [
            ("invalid_value", "m3"),
            *[("undecodable_audio", f"m{i}") for i in range(3)],
        ]
        waits = worker.metrics()
        # every utterance joined without waiting out the 12 s: the join wait histogram's 10 s bucket holds all 8
        assert 'emostream_join_wait_seconds_bucket{le="10.0"} 8.0' in waits, [
            line for line in waits.splitlines() if line.startswith("emostream_join_wait")
        ]
        assert 'emostream_inconsistent_parts_total{field="seq"} 1.0' in waits
        # the long transcript is counted as such, and not as mis-declared audio (it once was); counted once
        # its batch is committed, after its events are out
        deadline = time.monotonic() + 20
        while "emostream_long_transcripts_total 1.0" not in waits and time.monotonic() < deadline:
            time.sleep(0.2)
            waits = worker.metrics()
        assert "emostream_long_transcripts_total 1.0" in waits
        assert not [line for line in waits.splitlines() if line.startswith("emostream_misdeclared_audio_total{")
                    and not line.endswith(" 0.0")]  # fmt: skip
        assert "call blank: transcript of utterance b2 used all the same: long transcript:" in worker.tail(10**6)
        assert 'emostream_inconsistent_parts_total{field="speaker"} 1.0' in waits
        # whichever of the two topics the worker read first (a CI run read the text first: the order
        # of parts on two topics is not kept): both parts named, and the transcript's word counts
        log = worker.tail(10**6)
        said = [
            "this text part says seq 0 speaker 'agent', but its audio part seq 5 speaker 'customer'",
            "this audio part says seq 5 speaker 'customer', but its text part seq 0 speaker 'agent'",
        ]
        assert any(s in log for s in said) and "joined all the same, as seq 0 speaker 'agent'" in log, log[-3000:]
    finally:
        producer.close()
        collector.close()
        worker.stop()


def test_a_transcript_slower_than_the_wait_after_its_bad_audio_is_labelled(services, unique, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An operator's trial: an utterance's audio dead-lettered, its transcript 3 s later (a speech-to-text
    slower than join.wait_s). The utterance, released with nothing usable, was taken as labelled: the
    transcript was acked as a late part, and the utterance gave no event at all."""
    settings = settings_for(services, unique, default_modalities=("text", "audio"), wait_s=1.0)
    t = settings.kafka.topics
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path).start()
    collector = Collector(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers)
    try:
        worker.wait_ready()
        odd = base64.b64encode(b"\x00\x01\x02").decode()  # three bytes of pcm_s16le
        audio = AudioPart(call_id="slow", utterance_id="s0", seq=0, encoding="pcm_s16le", data=odd)
        producer.send(t.audio, key=b"slow", value=audio.to_bytes())
        producer.flush()
        assert collector.poll_until(lambda c: len(c.dead) >= 1, 60), worker.tail()
        time.sleep(3.0)  # past the wait: the utterance went, with nothing to label
        text = TextPart(call_id="slow", utterance_id="s0", seq=0, text="Why is my bill so high?")
        producer.send(t.text, key=b"slow", value=text.to_bytes())
        producer.flush()
        assert collector.poll_until(lambda c: len(c.events) >= 1, 30), worker.tail()
        ((_, event),) = collector.events
        assert event.modalities_present == ["text"], event
        assert event.ignored["audio"].startswith("dead-lettered: undecodable_audio ("), event.ignored
        assert "came too late" not in worker.tail(10**6)
    finally:
        producer.close()
        collector.close()
        worker.stop()


@dataclass
class _Crash:
    """A first worker to kill -9 once the group has committed what it acked, a second to take over,
    a collector of the output topics and a producer, on settings of their own (``join.wait_s`` 30 s,
    text and audio expected)."""

    settings: Settings
    first: WorkerProcess
    second: WorkerProcess
    collector: Collector
    producer: KafkaProducer

    def crash(self) -> None:
        time.sleep(3.0)  # past Faust's 1 s commit interval: an acked message's offset would be committed by now
        self.first.kill9()
        self.second.start().wait_ready()


@contextmanager
def _crash(services: Any, unique: str, tmp_path: Any) -> Iterator[_Crash]:
    settings = settings_for(services, unique, session_timeout_s=6.0, default_modalities=("text", "audio"), wait_s=30.0)
    ensure_topics(settings)
    first = WorkerProcess(settings, tmp_path, name="first").start()
    run = _Crash(settings, first, WorkerProcess(settings, tmp_path, name="second"), Collector(settings),
                 KafkaProducer(bootstrap_servers=settings.kafka.brokers))  # fmt: skip
    try:
        first.wait_ready()
        yield run
    finally:
        run.producer.close()
        run.collector.close()
        first.stop()
        run.second.stop()


def test_a_dead_lettered_part_is_read_again_after_a_crash(services, unique, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A worker dead-letters an utterance's audio and is killed (kill -9) before the utterance's
    text arrives. The part is acked only with its utterance's event, so the next worker reads it
    again: it labels the utterance as soon as the text is in, saying why it has no audio, instead
    of waiting out the join's whole wait (30 s here) for audio that was never read again and
    labelling it without a word (which it did while the part was acked at once)."""
    garbage = base64.b64encode(b"RIFF....garbage" * 50).decode()
    with _crash(services, unique, tmp_path) as run:
        t, producer, collector = run.settings.kafka.topics, run.producer, run.collector
        audio = AudioPart(call_id="crash", utterance_id="c0", seq=0, encoding="flac", data=garbage)
        producer.send(t.audio, key=b"crash", value=audio.to_bytes())
        producer.flush()
        assert collector.poll_until(lambda c: len(c.dead) >= 1, 60), run.first.tail()
        run.crash()
        text = TextPart(call_id="crash", utterance_id="c0", seq=0, text="I want my money back, now.")
        producer.send(t.text, key=b"crash", value=text.to_bytes())
        producer.flush()
        assert collector.poll_until(lambda c: len(c.events) >= 1, 25), run.second.tail()  # under the 30 s wait
        ((_, event),) = collector.events
        assert event.modalities_present == ["text"]
        assert event.ignored["audio"].startswith("dead-lettered: undecodable_audio ("), event.ignored
        # dead letters are at least once: the replay dead-lettered the part again
        assert [(d.reason, d.utterance_id) for d in collector.dead] == [("undecodable_audio", "c0")] * 2


def test_a_call_started_again_without_its_ended_is_ended_first_and_the_new_one_has_ids_of_its_own(  # type: ignore[no-untyped-def]
    services, unique, tmp_path
) -> None:
    """A platform that lost a call's 'ended' and starts the id again (a newcomer's run, 2026-12-06):
    the new call's utterances under the old ids were dead-lettered as conflicting parts and the old
    call never had a summary. Now the old call is ended at the new 'started' (final summary, its ids),
    and the new one runs under ids of its own."""
    settings = settings_for(services, unique, default_modalities=("text",))
    t = settings.kafka.topics
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path).start()
    collector = Collector(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers)

    def send(topic: str, message: CallControl | TextPart) -> int:
        return int(producer.send(topic, key=b"line-9", value=message.to_bytes()).get(timeout=30).offset)

    def line(u: str, seq: int, words: str) -> TextPart:
        return TextPart(call_id="line-9", utterance_id=u, seq=seq, speaker="C", text=words)

    try:
        worker.wait_ready()
        send(t.control, CallControl(call_id="line-9", event="started", modalities=["text"]))
        send(t.text, line("u0", 0, "Hello, I have a question about my bill."))
        send(t.text, line("u1", 1, "Thanks, that answers it."))
        first = collector.poll_until(lambda c: sum(e.call_id == "line-9" for _, e in c.events) >= 2, 60)
        assert first, worker.tail()
        # no 'ended': the same id starts again, under the same utterance ids
        again = send(t.control, CallControl(call_id="line-9", event="started", modalities=["text"]))
        send(t.text, line("u0", 0, "You charged me twice and nobody calls me back!"))
        send(t.text, line("u1", 1, "This is the third time I am calling about it."))
        send(t.control, CallControl(call_id="line-9", event="ended"))
        both = collector.poll_until(lambda c: sum(r.call_id == "line-9" and r.final for r in c.reports) >= 2, 60)
        assert both, worker.tail()
        finals = [r for r in collector.reports if r.call_id == "line-9" and r.final]
        assert [r.event_id for r in finals] == ["line-9:report:final", f"line-9~g{again}:report:final"], finals
        assert [r.turns for r in finals] == [2, 2], finals
        new = {e.utterance_id: e for _, e in collector.events if e.event_id.startswith(f"line-9~g{again}:")}
        assert set(new) == {"u0", "u1"} and all(e.revision == 0 or e.context_size <= 2 for e in new.values()), new
        assert not [d for d in collector.dead if d.call_id == "line-9"], collector.dead
        log = worker.tail(1 << 20)
        assert f"call line-9: a 'started' (offset {again}) came before its 'ended'" in log, log[-3000:]
        assert "emostream_calls_without_end_total 1.0" in worker.metrics()
    finally:
        producer.close()
        collector.close()
        worker.stop()


def test_a_part_waiting_for_its_utterance_is_read_again_after_a_crash_though_messages_after_it_were_acked(  # type: ignore[no-untyped-def]
    services, unique, tmp_path
) -> None:
    """Found in review: Faust (0.15.3) commits over one unacked message at the head of the acked
    ones. An utterance's text waited for its audio; a malformed message after it on the partition
    was dead-lettered and acked at once; the group's commit went past the text, and a worker killed
    then lost it: the next worker labelled the utterance from its audio alone, after the join's whole
    wait. Acks now go in offset order, so the text is read again and joined with its audio."""
    with _crash(services, unique, tmp_path) as run:
        t, producer, collector = run.settings.kafka.topics, run.producer, run.collector
        text = TextPart(call_id="held", utterance_id="h0", seq=0, text="I want my money back, now.")
        at = producer.send(t.text, key=b"held", value=text.to_bytes()).get(timeout=30)
        bad = producer.send(t.text, key=b"held", value=b"{not json").get(timeout=30)
        assert (bad.partition, bad.offset) == (at.partition, at.offset + 1)
        assert collector.poll_until(lambda c: len(c.dead) >= 1, 60), run.first.tail()
        run.crash()  # (the acked dead letter's offset would be committed past the text)
        audio = AudioPart(call_id="held", utterance_id="h0", seq=0, encoding="features", features=[0.1] * 768)
        producer.send(t.audio, key=b"held", value=audio.to_bytes())
        producer.flush()
        assert collector.poll_until(lambda c: len(c.events) >= 1, 25), run.second.tail()  # under the 30 s wait
        ((_, event),) = collector.events[:1]
        assert event.modalities_present == ["text", "audio"], event
