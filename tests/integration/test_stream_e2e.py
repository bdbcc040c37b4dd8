"""The whole stream on the real broker, real Redis and the shipped engine: MELD dev dialogues in
(text, plus real RAVDESS speech on some calls), emotion events out."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaProducer

from streams.kafka import ensure_topics
from streams.schemas import CallControl
from streams.worker import NOTHING_READ_GRACE_S
from tests.integration.calls import ANGRY_PART, EMPATHETIC, ESCALATING, PLEASANT, SNAPPING, scripted
from tests.integration.harness import Collector, WorkerProcess, settings_for
from tools.dialogues import Dialogue, attach_ravdess, read_meld_csv
from tools.feed import feed, part_message

pytestmark = pytest.mark.integration


def meld_dev(shared: Path, ids: list[int]) -> list[Dialogue]:
    return read_meld_csv(shared / "meld" / "dev_sent_emo.csv", dialogue_ids=ids)


def expected_keys(dialogues: list[Dialogue]) -> set[tuple[str, str]]:
    return {(u.call_id, u.utterance_id) for d in dialogues for u in d.utterances}


def by_utterance(collector: Collector) -> dict[tuple[str, str], list[Any]]:
    out: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for key, ev in collector.events:
        out[(ev.call_id, ev.utterance_id)].append((key, ev))
    return out


def test_meld_dialogues_stream_to_one_ordered_event_per_utterance(services, unique, shared_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(services, unique)
    ensure_topics(settings)
    with_audio = attach_ravdess(meld_dev(shared_data, [0, 1, 2]), shared_data / "ravdess", seed=7, actors=range(17, 21))
    missing_audio = attach_ravdess(meld_dev(shared_data, [3]), shared_data / "ravdess", seed=7, actors=range(17, 21))
    late_audio = attach_ravdess(meld_dev(shared_data, [4]), shared_data / "ravdess", seed=7, actors=range(17, 21))
    text_only = meld_dev(shared_data, [5, 6])
    everything = with_audio + missing_audio + late_audio + text_only
    worker = WorkerProcess(settings, tmp_path).start()
    collector = Collector(settings)
    try:
        worker.wait_ready()
        feed(with_audio + text_only, settings, realtime=False, progress=False)
        # audio expected (the default) but never sent, and no control messages: waits wait_s, then text only
        feed(missing_audio, settings, realtime=False, progress=False, modalities=("text",), send_control=False)
        # audio declared, but it arrives after the join gave up on it. Fed once the worker has caught up:
        # a worker still behind on the audio topic rightly waits for the part (join.max_stall_s), and on a
        # slow machine (2 AVX2 cores, 2026-12-05) it was still behind and joined it
        before = expected_keys(with_audio + text_only + missing_audio)
        assert collector.poll_until(lambda c: {k for k in by_utterance(c)} >= before, timeout=120), worker.tail()
        feed(late_audio, settings, realtime=False, progress=False, audio_delay_s=3.0)
        want = expected_keys(everything)
        assert collector.poll_until(lambda c: {k for k in by_utterance(c)} >= want, timeout=120), worker.tail()
        collector.poll_until(lambda c: False, timeout=2.0)  # anything extra would show up now
        events = by_utterance(collector)
        assert set(events) == want
        assert all(len(v) == 1 for v in events.values()), "exactly one provisional event per utterance"
        for (call_id, _), [(key, ev)] in events.items():
            assert key == call_id.encode() and ev.revision == 0
            assert ev.event_id.startswith(f"{call_id}:{ev.utterance_id}:r0:")
            assert abs(sum(ev.probabilities.values()) - 1) < 1e-3 and ev.label in ev.probabilities
        # order per call: the topic's order of a call's events follows seq
        seqs: dict[str, list[int]] = defaultdict(list)
        for _, ev in collector.events:
            seqs[ev.call_id].append(ev.seq)
        assert all(s == sorted(s) for s in seqs.values()), seqs
        present = {(ev.call_id, ev.utterance_id): ev for [(_, ev)] in events.values()}
        voiced = []
        for d in with_audio:
            for u in d.utterances:
                ev = present[(u.call_id, u.utterance_id)]
                assert ev.modalities_present == (["text", "audio"] if u.audio else ["text"])
                if u.audio:
                    assert abs(ev.weights["audio"] + ev.weights["text"] - 1) < 1e-3 and not ev.ignored, ev
                    voiced.append(ev.weights["audio"])
        # Shapley shares: a voice arguing against the label carries none of it, but voices do carry labels
        assert voiced and sum(w > 0 for w in voiced) >= len(voiced) / 2, voiced
        for d in missing_audio + late_audio + text_only:
            for u in d.utterances:
                ev = present[(u.call_id, u.utterance_id)]
                assert ev.modalities_present == ["text"] and ev.weights["audio"] == 0.0
        assert any(ev.context_size > 1 for ev in present.values())
        assert all(
            ev.timings.join_s >= 1.4
            for d in missing_audio
            for u in d.utterances
            for ev in [present[(u.call_id, u.utterance_id)]]
        )
        metrics = worker.metrics()
        late = [line for line in metrics.splitlines() if line.startswith("emostream_late_parts_total ")]
        assert late and float(late[0].split()[1]) >= 1
        missing = [
            line
            for line in metrics.splitlines()
            if line.startswith('emostream_missing_modality_total{modality="audio"} ')
        ]
        assert missing and float(missing[0].split()[1]) >= 1
        # call-ended released the Redis windows of the calls that sent it; the others keep theirs
        r = redis.Redis.from_url(services.redis_url)
        for d in with_audio + text_only + late_audio:
            assert not r.exists(f"{settings.redis.key_prefix}{d.call_id}")
        assert r.exists(f"{settings.redis.key_prefix}{missing_audio[0].call_id}")
    finally:
        collector.close()
        worker.stop()


def test_context_store_is_used_by_the_worker(services, unique, shared_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two feeds of one call, the worker restarted in between: the second half still sees the first
    half's utterances as context, because the window lives in Redis, not in the worker."""
    settings = settings_for(services, unique, default_modalities=("text",))
    ensure_topics(settings)
    (dialogue,) = meld_dev(shared_data, [10])
    first = Dialogue(dialogue.call_id, dialogue.utterances[:4], dialogue.source)
    second = Dialogue(dialogue.call_id, dialogue.utterances[4:8], dialogue.source)
    collector = Collector(settings)
    try:
        for part in (first, second):
            worker = WorkerProcess(settings, tmp_path).start()
            worker.wait_ready()
            feed([part], settings, realtime=False, progress=False, send_control=False)
            n = len(first.utterances) + (len(second.utterances) if part is second else 0)
            assert collector.poll_until(lambda c, n=n: len(by_utterance(c)) >= n, timeout=60), worker.tail()
            worker.stop()
        sizes = {ev.seq: ev.context_size for _, ev in collector.events}
        assert sizes[4] == 5 and sizes[7] == 8
    finally:
        collector.close()


def test_an_escalating_call_raises_alerts_that_clear_when_it_ends(services, unique, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The analytics stage on the real broker and the shipped model: a customer who gets angrier
    raises an alert on the alerts topic with the turns it rests on; the call's end clears it and
    publishes a final report; a pleasant call raises nothing. A worker restart mid-call keeps the
    call's turns (Redis): the summary counts every utterance once."""
    settings = settings_for(services, unique, default_modalities=("text",))
    ensure_topics(settings)
    lines = ESCALATING[:ANGRY_PART]
    run = unique[:6]
    angry, happy = scripted(f"angry-{run}", lines, 2.0), scripted(f"happy-{run}", PLEASANT, 2.0)
    collector = Collector(settings)
    worker = WorkerProcess(settings, tmp_path).start()
    try:
        worker.wait_ready()
        first = Dialogue(angry.call_id, angry.utterances[:4])
        feed([first], settings, realtime=False, progress=False, send_control=False)
        assert collector.poll_until(lambda c: len(c.events) >= 4, timeout=60), worker.tail()
        worker.stop()
        worker = WorkerProcess(settings, tmp_path).start()  # restarted mid-call
        worker.wait_ready()
        rest = Dialogue(angry.call_id, angry.utterances[4:])
        feed([rest], settings, realtime=False, progress=False, send_control=False)
        assert collector.poll_until(
            lambda c: any(a.call_id == angry.call_id and a.state == "raised" for a in c.alerts), timeout=90
        ), worker.tail()
        # while the call goes on its alerts are open: the gauge counts them (not raised minus cleared,
        # which lost the restarted worker's raises)
        assert _poll(lambda: open_alerts(worker) >= 1), worker.metrics()
        feed([happy], settings, realtime=False, progress=False)
        KafkaProducer(bootstrap_servers=settings.kafka.brokers).send(
            settings.kafka.topics.control, key=angry.call_id.encode(),
            value=CallControl(call_id=angry.call_id, event="ended").to_bytes(),
        ).get(timeout=30)  # fmt: skip
        assert collector.poll_until(
            lambda c: {r.call_id for r in c.reports if r.final} >= {angry.call_id, happy.call_id}, timeout=90
        ), worker.tail()
        collector.poll_until(lambda c: False, timeout=2.0)
        mine = [a for a in collector.alerts if a.call_id == angry.call_id]
        assert [a for a in collector.alerts if a.call_id == happy.call_id] == []
        raised = [a for a in mine if a.state == "raised"]
        assert raised, [(e.speaker, e.label) for _, e in collector.events]
        for a in raised:
            assert a.evidence
            assert {e.role for e in a.evidence} <= {"customer", "agent"}
            assert any(x.alert_id == a.alert_id and x.state == "cleared" for x in mine), mine  # cleared by the end
        summary = next(r for r in collector.reports if r.final and r.call_id == angry.call_id)
        assert summary.turns == len(lines) and summary.open_alerts == []
        assert set(summary.alerts_raised) == {a.rule for a in raised}
        assert abs(sum(s.talk_share for s in summary.speakers) - 1) < 1e-3
        customer = next(s for s in summary.speakers if s.speaker == "customer")
        assert customer.sentiment < 0 and customer.negative_share > 0.5
        assert 'emostream_alerts_total{rule="' in worker.metrics()
        assert _poll(lambda: open_alerts(worker) == 0), worker.metrics()  # cleared by the end
    finally:
        collector.close()
        worker.stop()


def test_an_agents_empathy_is_no_hostile_reply_and_snapping_back_is(services, unique, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The shipped model and rules on the real broker: an agent who answers an angry customer with
    "I understand your frustration." raises no agent-hostile-reply alert (the words are read with
    engine.acknowledgements = "agents", the default), one who snaps back does; the empathy lines'
    events are not anger, and the call summary's hostile share is the snapping agent's only."""
    settings = settings_for(services, unique, default_modalities=("text",))
    ensure_topics(settings)
    run = unique[:6]
    # speakers named as telephony platforms name them (they were dead-lettered once): their roles by the globs
    named = [("Agent Smith" if who == "agent" else "+15551234567", line) for who, line in EMPATHETIC]
    kind, snap = scripted(f"kind-{run}", named, 2.0), scripted(f"snap-{run}", SNAPPING, 2.0)
    collector = Collector(settings)
    worker = WorkerProcess(settings, tmp_path).start()
    try:
        worker.wait_ready()
        feed([kind, snap], settings, realtime=False, progress=False)
        assert collector.poll_until(
            lambda c: {r.call_id for r in c.reports if r.final} >= {kind.call_id, snap.call_id}, timeout=90
        ), worker.tail()
        labels = {(e.call_id, e.seq): (e.label, e.confidence) for _, e in collector.events}
        raised = {(a.call_id, a.rule) for a in collector.alerts if a.state == "raised"}
        assert (snap.call_id, "agent-hostile-reply") in raised, labels
        assert (kind.call_id, "agent-hostile-reply") not in raised, labels
        assert labels[(kind.call_id, 3)][0] != "anger" and labels[(kind.call_id, 5)][0] != "anger", labels
        assert (kind.call_id, "customer-negative-streak") in raised or (kind.call_id, "customer-anger-rising") in raised
        (summary,) = [r for r in collector.reports if r.final and r.call_id == kind.call_id]
        assert {(s.speaker, s.role) for s in summary.speakers} == {
            ("Agent Smith", "agent"),
            ("+15551234567", "customer"),
        }
        agents = {r.call_id: s for r in collector.reports if r.final for s in r.speakers if s.role == "agent"}
        assert agents[kind.call_id].hostile_share < agents[snap.call_id].hostile_share, (
            agents
        )  # the summary's hostile %
    finally:
        collector.close()
        worker.stop()


def test_a_part_sent_after_the_call_ended_is_labelled_but_adds_nothing_after_its_summary(
    services, unique, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A part sent a few seconds after its call's 'ended' (within join.wait_s and a minute) reopens
    the call: it gets its event, the worker logs why, and the call's analytics, whose final summary
    is out, add no report after it (a newcomer's supervisor page showed a 1-turn report after the
    3-turn summary)."""
    from streams.schemas import TextPart

    settings = settings_for(services, unique, default_modalities=("text",))
    ensure_topics(settings)
    call = scripted(f"late-{unique[:6]}", PLEASANT[:2], 1.0)
    collector = Collector(settings)
    worker = WorkerProcess(settings, tmp_path).start()
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers)
    try:
        worker.wait_ready()
        feed([call], settings, realtime=False, progress=False)
        assert collector.poll_until(lambda c: any(r.final for r in c.reports if r.call_id == call.call_id), 60)
        late = TextPart(call_id=call.call_id, utterance_id="u9", seq=9, speaker="customer", text="Oh, and thanks!")
        producer.send(settings.kafka.topics.text, key=call.call_id.encode(), value=late.to_bytes())
        producer.flush()
        assert collector.poll_until(lambda c: any(e.utterance_id == "u9" for _, e in c.events), 30), worker.tail()
        collector.poll_until(lambda c: False, timeout=4.0)  # a report would follow its batch's events
        reports = [r for r in collector.reports if r.call_id == call.call_id]
        assert reports[-1].final and reports[-1].turns == 2, [(r.final, r.turns) for r in reports]
        assert "reopens the call" in worker.tail(10**6)
    finally:
        producer.close()
        collector.close()
        worker.stop()


def test_a_call_that_goes_quiet_without_its_ended_is_summarised_and_its_alerts_clear(
    services, unique, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A platform that lost a call's 'ended': before, its alert stayed open and no summary came. With
    join.idle_end_s 6 s, the escalating call's alerts clear (reason 'call idle') and its final report
    says ended_by 'idle', counting every turn; a call that keeps talking meanwhile is not ended."""
    settings = settings_for(services, unique, default_modalities=("text",), idle_end_s=6.0)
    ensure_topics(settings)
    run = unique[:6]
    angry = scripted(f"quiet-{run}", ESCALATING[:ANGRY_PART], 2.0)
    chatty = scripted(f"chatty-{run}", PLEASANT * 10, 2.0)
    collector = Collector(settings)
    worker = WorkerProcess(settings, tmp_path).start()
    try:
        worker.wait_ready()
        feed([angry], settings, realtime=False, progress=False, send_control=False)  # no 'started', no 'ended'
        assert collector.poll_until(
            lambda c: any(a.call_id == angry.call_id and a.state == "raised" for a in c.alerts), timeout=60
        ), worker.tail()
        for line in chatty.utterances:  # one line every 2 s, never quiet for 6 s, until the quiet call is ended
            feed([Dialogue(chatty.call_id, (line,))], settings, realtime=False, progress=False, send_control=False)
            if collector.poll_until(lambda c: any(r.final and r.call_id == angry.call_id for r in c.reports), 2.0):
                break
        assert any(r.final and r.call_id == angry.call_id for r in collector.reports), worker.tail()
        summary = next(r for r in collector.reports if r.final and r.call_id == angry.call_id)
        assert summary.ended_by == "idle" and summary.turns == ANGRY_PART and summary.open_alerts == []
        mine = [a for a in collector.alerts if a.call_id == angry.call_id]
        for a in (a for a in mine if a.state == "raised"):
            assert any(x.alert_id == a.alert_id and x.state == "cleared" and x.reason == "call idle" for x in mine)
        assert not any(r.final for r in collector.reports if r.call_id == chatty.call_id)  # talking all along
        # logged and counted once the close is done, just after its summary is out
        assert _poll(lambda: "no part for 6 s (join.idle_end_s) and no 'ended'" in worker.tail(10**6)), worker.tail()
        assert _poll(lambda: "emostream_calls_without_end_total 1.0" in worker.metrics()), worker.metrics()
        assert _poll(lambda: open_alerts(worker) == 0), worker.metrics()
    finally:
        collector.close()
        worker.stop()


def test_audio_sent_long_before_the_worker_comes_to_it_is_not_encoded(services, unique, shared_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """engine.shed_audio_after_s (5 s here): a backlog (a call's first utterances sent before the
    worker started, more than 5 s before it came to them) is labelled from the words, said in the
    event, counted and logged. Once the worker has read its partitions to their end, the same call's
    utterances keep their voice: those sent now, and those whose record times say two minutes ago (a
    producer clock running behind: the worker's own reading tells they were sent since)."""
    base = settings_for(services, unique)
    settings = base.model_copy(update={"engine": base.engine.model_copy(update={"shed_audio_after_s": 5.0})})
    ensure_topics(settings)
    [dialogue] = attach_ravdess(meld_dev(shared_data, [1]), shared_data / "ravdess", seed=7, actors=range(17, 21))
    voiced = [u for u in dialogue.utterances if u.audio is not None][:6]
    assert len(voiced) == 6
    backlog, skewed, on_time = voiced[:2], voiced[2:4], voiced[4:]
    collector = Collector(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers, max_request_size=4 * 1024 * 1024)
    worker = WorkerProcess(settings, tmp_path)

    def send(utts: list[Any], behind_s: float = 0.0) -> None:
        for u in utts:
            for modality in ("text", "audio"):
                message = part_message(u, modality, settings.kafka.topics)
                assert message is not None
                ts = int((time.time() - behind_s) * 1000)
                producer.send(message[0], key=u.call_id.encode(), value=message[1], timestamp_ms=ts)
        producer.flush()

    try:
        send(backlog)  # before the worker starts, and more than 5 s before it comes to them
        sent_at = time.time()
        time.sleep(6.0)
        worker.start().wait_ready()
        assert collector.poll_until(lambda c: len(by_utterance_id(c)) >= 2, timeout=120), worker.tail()
        time.sleep(1.0)  # the backlog read: the worker sees its partitions read to their end (Worker.watch)
        send(skewed, behind_s=120.0)
        send(on_time)
        assert collector.poll_until(lambda c: len(by_utterance_id(c)) >= len(voiced), timeout=120), worker.tail()
        events = by_utterance_id(collector)
        for u in backlog:
            ev = events[u.utterance_id]
            assert ev.modalities_present == ["text", "audio"] and ev.weights["audio"] == 0.0, ev
            why = ev.ignored["audio"]
            assert why.startswith("worker behind: ") and "more than engine.shed_audio_after_s after" in why, why
        for u in skewed + on_time:
            ev = events[u.utterance_id]
            assert ev.modalities_present == ["text", "audio"] and ev.ignored == {}, ev
        # counted once the batch's events are out
        assert _poll(lambda: "emostream_shed_audio_total 2.0" in worker.metrics()), worker.metrics()
        assert 'emostream_ignored_parts_total{modality="audio"} 0.0' in worker.metrics()  # not audio without speech
        logged = re.search(
            r"the worker is behind: the audio of 1 utterance not encoded.*sent (\d+) s ago by the producer's clock",
            worker.tail(10**6),
        )
        # the age, in the log only: since the backlog was sent (however long the worker took to start)
        assert logged and 6 <= int(logged.group(1)) <= time.time() - sent_at + 2, worker.tail()
    finally:
        producer.close()
        collector.close()
        worker.stop()


def test_a_call_that_sends_no_audio_waits_less_for_it_after_two_utterances(  # type: ignore[no-untyped-def]
    services, unique, shared_data, tmp_path
) -> None:
    """No 'started', the default text + audio expected, only words sent: the first two utterances wait
    join.wait_s (1.5 s here) for audio, the next ones 0.5 s; an audio clip sent right after its transcript
    is still joined, and the call's first audio part makes them wait join.wait_s again."""
    from tools.feed import part_message

    settings = settings_for(services, unique)
    assert settings.join.default_modalities == ("text", "audio") and settings.join.wait_s == 1.5
    ensure_topics(settings)
    (dialogue,) = attach_ravdess(meld_dev(shared_data, [8]), shared_data / "ravdess", seed=7, actors=range(17, 21))
    utts = [u for u in dialogue.utterances if u.audio][:5]
    assert len(utts) == 5
    worker = WorkerProcess(settings, tmp_path).start()
    collector = Collector(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers, max_request_size=16 * 1024 * 1024)
    try:
        worker.wait_ready()
        # the worker got its partitions at its start: past this grace, an audio partition nothing was
        # read from is not behind (the grace once started at a partition's first message: 5 s, not 1.5)
        time.sleep(NOTHING_READ_GRACE_S)
        joined: list[Any] = []
        for k, u in enumerate(utts):  # each sent once the one before has its event
            for modality in ("text", "audio") if k == 3 else ("text",):  # as a speech-to-text pipeline sends them
                topic, value = part_message(u, modality, settings.kafka.topics)  # type: ignore[misc]
                producer.send(topic, key=u.call_id.encode(), value=value).get(timeout=30)
            assert collector.poll_until(lambda c, u=u: u.utterance_id in by_utterance_id(c), 60), worker.tail()
            joined.append(by_utterance_id(collector)[u.utterance_id])
        waits = [round(ev.timings.join_s, 2) for ev in joined]
        assert [ev.modalities_present for ev in joined] == [["text"]] * 3 + [["text", "audio"]] + [["text"]], waits
        assert 1.4 <= waits[0] < 2.5 and 1.4 <= waits[1] < 2.5, waits  # the default: wait for the voice
        assert waits[2] < 1.1, waits  # a call that has sent none: waited for 0.5 s
        assert waits[4] >= 1.4, waits  # it sent a voice: waited for again
        log = worker.tail(10**7)
        assert f"call {dialogue.call_id} has sent no audio part in 2 utterances" in log, worker.tail()
        assert f"call {dialogue.call_id}: its first audio part came" in log
        missing = 'emostream_missing_modality_total{modality="audio"} 4.0'
        assert missing in worker.metrics().splitlines(), worker.metrics()  # all four still counted
    finally:
        producer.close()
        collector.close()
        worker.stop()


def open_alerts(worker: WorkerProcess) -> float:
    """The worker's emostream_open_alerts, summed over severities."""
    lines = [line for line in worker.metrics().splitlines() if line.startswith("emostream_open_alerts{")]
    assert len(lines) == 3, lines  # info, warning, critical, from the start
    return sum(float(line.split()[-1]) for line in lines)


def _poll(check: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def by_utterance_id(collector: Collector) -> dict[str, Any]:
    return {ev.utterance_id: ev for _, ev in collector.events}
