from __future__ import annotations

import io
from collections import namedtuple
from typing import Any

import pytest

from streams.schemas import DeadLetter, EmotionEvent, ModelRef, Timings, event_id
from streams.settings import Settings
from tools.subscribe import EventPrinter, format_alert, format_deadletter, format_event, format_report, subscribe

SETTINGS = Settings()
TOPICS = SETTINGS.kafka.topics
Record = namedtuple("Record", "topic value")


def make_event(**kw: Any) -> EmotionEvent:
    base: dict[str, Any] = dict(
        call_id="call-7", utterance_id="u3", seq=3, revision=0, speaker="Alice", label="joy", confidence=0.81,
        probabilities={"joy": 0.81, "neutral": 0.19}, sentiment=0.62, sentiment_label="positive",
        weights={"text": 0.71, "audio": 0.29, "video": 0.0}, modalities_present=["text", "audio"],
        model=ModelRef(name="m", version="1", runtime="onnxruntime"), context_size=4,
        timings=Timings(join_s=0.01, queue_s=0.01, engine_s=0.05, end_to_end_s=0.12), produced_at=1.0,
    )  # fmt: skip
    base.update(kw)
    base.setdefault("event_id", event_id(base["call_id"], base["utterance_id"], base["revision"]))
    return EmotionEvent(**base)


def test_format_event_first_revision() -> None:
    line = format_event(make_event())
    assert line == "[call-7 #3 Alice] joy 0.81  sent +0.62  text .71  audio .29  (t+a, ctx 4, 120 ms)"


def test_format_event_says_which_part_was_not_used() -> None:
    e = make_event(weights={"text": 1.0, "audio": 0.0, "video": 0.0}, ignored={"audio": "no speech: 0.00 s of speech"})
    assert format_event(e) == (
        "[call-7 #3 Alice] joy 0.81  sent +0.62  text 1.00  audio .00  (t+a, ctx 4, audio not used: no speech, 120 ms)"
    )


def test_format_event_says_a_loud_clip_without_speech_may_be_at_another_rate() -> None:
    why = "no speech: 0.02 s of speech, less than 0.15 s (the clip is sound at -20 dBFS, not silence: ...)"
    e = make_event(weights={"text": 1.0, "audio": 0.0, "video": 0.0}, ignored={"audio": why})
    assert "audio not used: no speech in a loud clip (music, noise, or a wrong sample_rate?), 120 ms)" in format_event(
        e
    )


def test_format_event_names_a_dead_lettered_parts_reason_not_its_detail() -> None:
    why = "dead-lettered: invalid_value (encoding: Input should be 'pcm_s16le', 'flac' or 'wav')"
    e = make_event(weights={"text": 1.0, "audio": 0.0, "video": 0.0}, ignored={"audio": why})
    assert format_event(e).endswith("(t+a, ctx 4, audio not used: dead-lettered: invalid_value, 120 ms)")


def test_format_event_of_an_utterance_with_nothing_read_shows_no_label() -> None:
    """Every part ignored (a blank transcript, a dropped foreign one): the label is the model's
    prior, near uniform; printed, its 'surprise 0.15' read as a label to a newcomer."""
    e = make_event(label="surprise", confidence=0.15, weights={"text": 0.0, "audio": 0.0, "video": 0.0},
                   modalities_present=["text"], ignored={"text": "no words: the transcript is empty"})  # fmt: skip
    assert format_event(e) == "[call-7 #3 Alice] - nothing read  text .00  (t, ctx 4, text not used: no words, 120 ms)"


def test_format_event_says_which_part_was_used_though_suspect() -> None:
    e = make_event(suspect={"audio": "wrong sample rate? the voice sounds an octave high: p(misdeclared)=0.99"})
    assert format_event(e) == (
        "[call-7 #3 Alice] joy 0.81  sent +0.62  text .71  audio .29  "
        "(t+a, ctx 4, audio used but suspect: wrong sample rate? the voice sounds an octave high, 120 ms)"
    )
    # a newcomer read "used but suspect" beside "audio .00": the model had not leaned on it
    e = make_event(suspect={"audio": "wrong sample rate? ..."}, weights={"text": 1.0, "audio": 0.001, "video": 0.0})
    assert "text 1.00  audio .00  (t+a, ctx 4, audio suspect, weighed .00: wrong sample rate? ..., " in format_event(e)


def test_format_event_negative_sentiment_all_modalities_and_future_context() -> None:
    e = make_event(
        label="anger", confidence=1.0, sentiment=-0.5, sentiment_label="negative", future_context=2,
        weights={"video": 0.2, "text": 0.5, "audio": 0.3}, modalities_present=["video", "text", "audio"],
    )  # fmt: skip
    assert format_event(e) == (
        "[call-7 #3 Alice] anger 1.00  sent -0.50  text .50  audio .30  video .20  (t+a+v, ctx 2+2, 120 ms)"
    )


def test_revision_shows_what_changed() -> None:
    first = make_event(label="neutral", confidence=0.55, sentiment=0.10)
    revised = make_event(revision=1, future_context=2)
    line = format_event(revised, previous=first)
    assert line == (
        "↻ r1 [call-7 #3 Alice] joy 0.81 (was neutral 0.55)  sent +0.62 (was +0.10)  text .71  audio .29"
        "  (t+a, ctx 2+2, 120 ms)"
    )
    kept = format_event(make_event(revision=2), previous=make_event(revision=1, confidence=0.66))
    assert kept.startswith("↻ r2 [call-7 #3 Alice] joy 0.81 (kept, was 0.66)  sent +0.62  ")
    # found by a newcomer: "sent -0.09 (was -0.09)" for -0.094 against -0.085
    same = format_event(make_event(revision=1, sentiment=-0.094), previous=make_event(sentiment=-0.085))
    assert "sent -0.09  " in same and "(was -0.09)" not in same
    unseen = format_event(revised)  # the line it revises was not seen (subscribed later)
    assert unseen.startswith("↻ r1 [call-7 #3 Alice] joy 0.81  sent +0.62")


def test_provisional_and_revised_lines_are_told_apart() -> None:
    """A provisional line never carries the revision mark; a revised one always does, changed or not,
    and says how much of its context came after the utterance."""
    provisional = format_event(make_event(label="sadness"))
    assert not provisional.startswith("↻") and "(was" not in provisional and "ctx 4," in provisional
    for previous in (make_event(label="neutral"), make_event(label="joy"), None):
        line = format_event(make_event(revision=1, future_context=1, context_size=3), previous=previous)
        assert line.startswith("↻ r1 [call-7 #3 Alice] joy 0.81") and "ctx 2+1," in line
    changed = format_event(make_event(revision=1, label="sadness"), previous=make_event(label="neutral"))
    assert changed.startswith("↻ r1 [call-7 #3 Alice] sadness 0.81 (was neutral 0.81)")
    last = format_event(make_event(revision=1, context_size=8, future_context=0))  # revised at the call's end
    assert "(t+a, ctx 8+0, 120 ms)" in last


def test_format_deadletter() -> None:
    letter = DeadLetter(reason="malformed_json", detail="Expecting value", source_topic="in.text", partition=2,
                        offset=41, key="call-7", payload="")  # fmt: skip
    assert format_deadletter(letter) == "✗ dead letter [call-7] malformed_json: Expecting value  (in.text[2]@41)"
    parsed = DeadLetter(reason="undecodable_audio", detail="not FLAC", source_topic="in.audio", partition=3, offset=5,
                        key="call-7", call_id="call-7", utterance_id="u4", payload="")  # fmt: skip
    # found by a newcomer: which utterance lost its audio took decoding the payload by its offset
    assert format_deadletter(parsed) == "✗ dead letter [call-7 u4] undecodable_audio: not FLAC  (in.audio[3]@5)"


def test_what_a_producer_sent_cannot_drive_the_terminal_and_long_keys_are_cut() -> None:
    """Found by a newcomer: a call id with escape codes, dead-lettered, cleared the screen of
    everyone who watched `emostream subscribe --deadletters`; a newline forged a line."""
    key = "\x1b[2J\x1b[31mFAKE\x1b]0;title\x07\x9b\x7f" + "x" * 198
    letter = DeadLetter(reason="wrong_type", detail="bad\n■ call ended [call-7]", source_topic="in.text",
                        partition=0, offset=1, key=key, payload="")  # fmt: skip
    out = io.StringIO()
    printer = EventPrinter(out, deadletter_topic=TOPICS.deadletter)
    assert printer.handle(TOPICS.deadletter, letter.to_bytes())
    line = out.getvalue()
    assert line.count("\n") == 1 and "\x1b" not in line and "\x07" not in line
    assert "[\\x1b[2J\\x1b[31mFAKE" in line and "bad\\x0a■ call ended" in line
    assert "… (223 characters)]" in line
    out = io.StringIO()  # JSON escapes them its own way, DEL and C1 too, and stays JSON
    EventPrinter(out, fmt="json", deadletter_topic=TOPICS.deadletter).handle(TOPICS.deadletter, letter.to_bytes())
    assert "\x1b" not in out.getvalue() and DeadLetter.model_validate_json(out.getvalue()) == letter


def test_printer_filters_deduplicates_and_links_revisions() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = EventPrinter(out, call_ids=["call-7"], err=err)
    r0 = make_event(label="neutral", confidence=0.55)
    records = [
        r0.to_bytes(),
        make_event(call_id="call-8").to_bytes(),  # another call: filtered out
        r0.to_bytes(),  # redelivered: printed once
        b'{"kind": "emotion"}',  # invalid: skipped with a note
        make_event(revision=1).to_bytes(),
    ]
    printed = [printer.handle(TOPICS.emotions, value) for value in records]
    assert printed == [True, False, False, False, True]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[call-7 #3 Alice] neutral 0.55")
    assert lines[1].startswith("↻ r1 [call-7 #3 Alice] joy 0.81 (was neutral 0.55)")
    assert (printer.count, printer.duplicates, printer.invalid) == (2, 1, 1)
    assert "skipped an invalid record" in err.getvalue()


def test_printer_links_each_revision_to_its_own_utterance_across_interleaved_calls() -> None:
    """As on the topic: provisional events of later utterances (and of other calls) come between an
    utterance's provisional event and its revision; each revision compares with its own utterance."""
    out = io.StringIO()
    printer = EventPrinter(out)
    stream = [
        make_event(utterance_id="u0", seq=0, label="neutral", confidence=0.60),
        make_event(call_id="call-8", utterance_id="u0", seq=0, label="anger", confidence=0.70),
        make_event(utterance_id="u1", seq=1, label="joy", confidence=0.50),
        make_event(utterance_id="u2", seq=2, label="neutral", confidence=0.40),
        make_event(utterance_id="u0", seq=0, revision=1, label="sadness", confidence=0.65),  # u2 came: u0 revised
        make_event(call_id="call-8", utterance_id="u0", seq=0, revision=1, label="anger", confidence=0.90),
        make_event(utterance_id="u0", seq=0, revision=1, label="sadness", confidence=0.65),  # redelivered
        make_event(utterance_id="u1", seq=1, revision=1, label="joy", confidence=0.55),  # the call ended
    ]
    for event in stream:
        printer.handle(TOPICS.emotions, event.to_bytes())
    lines = out.getvalue().splitlines()
    assert [line.split("  sent")[0] for line in lines] == [
        "[call-7 #0 Alice] neutral 0.60",
        "[call-8 #0 Alice] anger 0.70",
        "[call-7 #1 Alice] joy 0.50",
        "[call-7 #2 Alice] neutral 0.40",
        "↻ r1 [call-7 #0 Alice] sadness 0.65 (was neutral 0.60)",
        "↻ r1 [call-8 #0 Alice] anger 0.90 (kept, was 0.70)",
        "↻ r1 [call-7 #1 Alice] joy 0.55 (kept, was 0.50)",
    ]
    assert printer.duplicates == 1


def test_printer_json_lines_round_trip() -> None:
    out = io.StringIO()
    event = make_event()
    EventPrinter(out, fmt="json").handle(TOPICS.emotions, event.to_bytes())
    assert EmotionEvent.model_validate_json(out.getvalue().strip()) == event
    assert "suspect" not in out.getvalue()  # as published: a field without a value is left out, not null


def test_printer_survives_a_terminal_without_unicode() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    EventPrinter(out).handle(TOPICS.emotions, make_event(revision=1).to_bytes())
    assert raw.getvalue().startswith(b"? r1 [call-7")


class FakeConsumer:
    def __init__(self, batches: list[list[Record]]) -> None:
        self.batches = batches
        self.polls = 0

    def poll(self, timeout_ms: int) -> dict[str, list[Record]]:
        self.polls += 1
        return {"tp": self.batches.pop(0)} if self.batches else {}


def test_subscribe_stops_at_max_events_and_reads_dead_letters() -> None:
    letter = DeadLetter(reason="oversized", detail="big", source_topic="t", partition=0, offset=1, key="call-7",
                        payload="")  # fmt: skip
    batches = [
        [Record(TOPICS.emotions, make_event(utterance_id=f"u{i}", seq=i).to_bytes()) for i in range(2)],
        [Record(TOPICS.deadletter, letter.to_bytes())],
        [Record(TOPICS.emotions, make_event(utterance_id=f"u{i}", seq=i).to_bytes()) for i in range(2, 6)],
    ]
    out = io.StringIO()
    n = subscribe(SETTINGS, max_events=4, out=out, deadletters=True, consumer=FakeConsumer(batches))
    assert n == 4
    lines = out.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == [
        "[call-7 #0 Alice",
        "[call-7 #1 Alice",
        "✗ dead letter [call-7",
        "[call-7 #2 Alice",
    ]


def test_subscribe_stops_at_timeout() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 0.4
        return now[0]

    consumer = FakeConsumer([])
    assert subscribe(SETTINGS, timeout_s=2.0, out=io.StringIO(), consumer=consumer, clock=clock) == 0
    assert 1 <= consumer.polls <= 5


def test_bad_format_is_refused() -> None:
    with pytest.raises(ValueError, match="fmt must be"):
        EventPrinter(io.StringIO(), fmt="yaml")  # type: ignore[arg-type]


def test_demo_summary_waits_for_revisions_and_counts_changed_labels() -> None:
    """`emostream demo` with revisions: not done until every utterance has its revised event too
    (the last ones come at the call's end); the summary says how many labels the revisions changed."""
    from types import SimpleNamespace

    from tools.demo import Summary

    utts = [SimpleNamespace(call_id="call-7", utterance_id=f"u{i}", label="joy") for i in range(3)]
    summary = Summary([SimpleNamespace(utterances=utts)], SETTINGS, future=2)
    for i, label in enumerate(["neutral", "joy", "anger"]):
        summary.add(make_event(utterance_id=f"u{i}", seq=i, label=label, produced_at=10.0 + i))
    assert not summary.complete() and "3 without their revised event" in summary.missing()
    summary.add(make_event(utterance_id="u0", seq=0, revision=1, future_context=2, produced_at=12.0))  # u2 came
    assert not summary.complete()
    for i in (1, 2):  # the call ended: u1 and u2 are revised with the future they have
        summary.add(make_event(utterance_id=f"u{i}", seq=i, revision=1, future_context=2 - i, produced_at=15.0))
    # and its final report, whose alerts cleared before it, is waited for too (the demo stopped before it)
    assert not summary.complete() and summary.missing().endswith("1 calls without their final report")
    summary.ended.add("call-7")
    assert summary.complete()
    text = summary.render()
    assert "3/3 utterances got their provisional event, 3/3 their revised event" in text
    assert "revisions: 2 of 3 labels changed from provisional to revised" in text
    assert "1 revised once 2 later utterances arrived, 2 at their call's end with fewer" in text
    assert "↻ [call-7 #0] neutral 0.81 -> joy 0.81  (script: joy)" in text
    assert "↻ [call-7 #2] anger 0.81 -> joy 0.81  (script: joy)" in text
    assert "agreement with the script's labels 100% of 3 revised" in text
    # make_event's voice weighs .29: every utterance with speech used it, provisional and revised
    assert "  voices (provisional): 3 of 3 utterances with speech used their voice (audio weight 0.05 or more)" in text
    assert "    voices (revised): 3 of 3 utterances with speech" in text
    assert "escalation alerts raised: 0 on 0 of 1 calls\n" in text
    summary.alerts = {"a1": ("call-7", "customer-anger-rising"), "a2": ("call-7", "customer-negative-streak")}
    assert "escalation alerts raised: 2 on 1 of 1 calls (customer-anger-rising 1, customer-negative-streak 1)" in (
        summary.render()
    )
    turned = Summary([SimpleNamespace(utterances=utts)], SETTINGS)  # the gate turned two voices away
    for i, (audio, ignored) in enumerate([(0.0, {}), (0.2, {}), (0.0, {"audio": "no speech: 0.00 s"})]):
        weights = {"text": 1.0 - audio, "audio": audio, "video": 0.0}
        turned.add(make_event(utterance_id=f"u{i}", seq=i, weights=weights, ignored=ignored))
    assert "voices (provisional): 1 of 2 utterances with speech" in turned.render()  # no speech: not counted
    text_only = Summary([SimpleNamespace(utterances=utts)], SETTINGS)
    for i in range(3):
        text_only.add(make_event(utterance_id=f"u{i}", seq=i, modalities_present=["text"]))
    assert "voices" not in text_only.render()
    plain = Summary([SimpleNamespace(utterances=utts)], SETTINGS)  # --no-revisions: provisional events suffice
    for i in range(3):
        plain.add(make_event(utterance_id=f"u{i}", seq=i))
    plain.ended.add("call-7")
    assert plain.complete() and "revised" not in plain.render()
    quiet = Summary(
        [SimpleNamespace(utterances=utts)], Settings(analytics={"enabled": False})
    )  # no reports to wait for
    for i in range(3):
        quiet.add(make_event(utterance_id=f"u{i}", seq=i))
    assert quiet.complete() and quiet.waiting_for() == "events"


def test_printer_shows_alert_changes_and_final_call_reports_once() -> None:
    from streams.schemas import AlertEvent, CallReport, Evidence, SpeakerTrajectory

    ev = Evidence(utterance_id="u2", seq=2, speaker="customer", role="customer", label="anger", sentiment=-0.7)
    raised = AlertEvent(
        event_id="a:raised:u2", alert_id="a", call_id="call-7", rule="customer-anger-rising", severity="critical",
        message="The customer's anger is rising", state="raised", evidence=[ev], produced_at=1.0,
    )  # fmt: skip
    cleared = raised.model_copy(update={"event_id": "a:cleared:u2", "state": "cleared", "reason": "call ended",
                                        "evidence": []})  # fmt: skip
    who = SpeakerTrajectory(speaker="customer", role="customer", turns=3, talk_share=0.5, recent={"anger": 0.7},
                            negative_share=1.0, hostile_share=0.6667, sentiment=-0.7, sentiment_trend=-0.4)  # fmt: skip
    running = CallReport(event_id="r:1", call_id="call-7", turns=6, speakers=[who], open_alerts=["a"],
                         alerts_raised=["customer-anger-rising"], produced_at=1.0)  # fmt: skip
    final = running.model_copy(update={"event_id": "r:1:final", "final": True, "open_alerts": []})
    out = io.StringIO()
    printer = EventPrinter(out, alerts_topic=TOPICS.alerts, calls_topic=TOPICS.calls)
    for topic, msg in [(TOPICS.alerts, raised), (TOPICS.alerts, raised), (TOPICS.calls, running),
                       (TOPICS.alerts, cleared), (TOPICS.calls, final)]:  # fmt: skip
        printer.handle(topic, msg.to_bytes())
    lines = out.getvalue().splitlines()
    assert lines == [
        "⚠ raised critical [call-7] customer-anger-rising: The customer's anger is rising  (#2 customer anger -0.70)",
        "✓ cleared [call-7] customer-anger-rising (call ended)",
        "■ call ended [call-7] 6 turns: customer (customer) 3 turns, recent: sent -0.70 (trend -0.40),"
        " negative 100% (hostile 67%); alerts: customer-anger-rising",
    ]
    assert EventPrinter(io.StringIO()).handle(TOPICS.alerts, raised.to_bytes()) is False  # not asked for: invalid event
    measured = raised.model_copy(update={"measured": "anger+disgust 0.21 -> 0.35 -> 0.62"})
    assert format_alert(measured).endswith("(#2 customer anger -0.70; anger+disgust 0.21 -> 0.35 -> 0.62)")
    spanish = final.model_copy(update={"turns": 1, "unread": 6})  # a newcomer's call: 6 of 7 lines in Spanish
    assert format_report(spanish).startswith("■ call ended [call-7] 1 turn (6 more not read: every part ignored): ")
    assert format_report(final.model_copy(update={"turns": 0, "unread": 2, "speakers": []})) == (
        "■ call ended [call-7] 0 turns (2 more not read: every part ignored): nobody read;"
        " alerts: customer-anger-rising"
    )
    unread = {"other language (Spanish)": 5, "no words": 1}  # what the events said (EventPrinter counts them)
    assert format_report(spanish, unread).startswith(
        "■ call ended [call-7] 1 turn (6 more not read: other language (Spanish) 5, no words 1): "
    )
    quiet = final.model_copy(update={"ended_by": "idle"})  # join.idle_end_s: no part, no 'ended'
    assert format_report(quiet).startswith("■ call ended (quiet, no 'ended') [call-7] 6 turns: ")
    assert format_report(final.model_copy(update={"ended_by": "ended"})).startswith("■ call ended [call-7] 6 turns: ")


def test_an_alert_read_before_the_events_it_cites_is_printed_after_them() -> None:
    """Alerts travel on a topic of their own: a newcomer saw an alert cite '#5 customer anger'
    before the line of #5. It waits for its events (up to hold_s), and what of its call comes
    after it waits behind it; a late event's alert prints once hold_s has passed."""
    from streams.schemas import AlertEvent, Evidence

    def alert(call: str, state: str, cites: list[str]) -> AlertEvent:
        ev = [Evidence(utterance_id=u, seq=int(u[1:]), speaker="c", role="customer", label="anger", sentiment=-0.7)
              for u in cites]  # fmt: skip
        return AlertEvent(event_id=f"{call}:{state}", alert_id=f"{call}:a", call_id=call, rule="r", severity="warning",
                          message="m", state=state, evidence=ev, produced_at=1.0,
                          reason="call ended" if state == "cleared" else None)  # fmt: skip

    now = [0.0]
    out = io.StringIO()
    printer = EventPrinter(out, alerts_topic=TOPICS.alerts, hold_s=2.0, clock=lambda: now[0])
    feed = [
        (TOPICS.emotions, make_event(call_id="k", utterance_id="u1", seq=1)),
        (TOPICS.alerts, alert("k", "raised", ["u1", "u2"])),  # u2's event not read yet
        (TOPICS.alerts, alert("k", "cleared", [])),  # cites nothing, but comes after the raise
        (TOPICS.alerts, alert("other", "raised", ["u4"])),  # another call: not held behind k's
        (TOPICS.emotions, make_event(call_id="other", utterance_id="u4", seq=4)),
        (TOPICS.emotions, make_event(call_id="k", utterance_id="u2", seq=2)),
        (TOPICS.alerts, alert("late", "raised", ["u9"])),  # its event never comes
    ]
    for topic, msg in feed:
        printer.handle(topic, msg.to_bytes())
    printer.tick()
    order = [line.split("]")[0].split("[")[-1] + (" " + line.split()[1] if line[0] in "⚠✓" else "")
             for line in out.getvalue().splitlines()]  # fmt: skip
    assert order == ["k #1 Alice", "other #4 Alice", "other raised", "k #2 Alice", "k raised", "k cleared"], order
    now[0] = 2.5
    printer.tick()
    assert out.getvalue().splitlines()[-1].startswith("⚠ raised warning [late] r"), out.getvalue()
    assert printer.count == 7
    assert printer.handle(TOPICS.alerts, alert("k", "updated", ["u1", "u2"]).to_bytes())  # its events are out: at once

    limited = EventPrinter(io.StringIO(), alerts_topic=TOPICS.alerts, hold_s=2.0, limit=1)
    limited.handle(TOPICS.alerts, alert("k", "raised", ["u1"]).to_bytes())
    limited.handle(TOPICS.alerts, alert("k", "cleared", []).to_bytes())
    limited.flush()
    assert limited.count == 1  # no more lines than asked for


def test_subscribe_and_the_publisher_give_up_on_a_dead_broker_within_the_startup_timeout() -> None:
    """kafka.startup_timeout_s bounds the clients' first connection (kafka-python waits 30 s by
    default); the error is one line that names the setting. Port 1 on localhost: refused at once."""
    import time

    from client.publisher import make_producer
    from client.subscriber import make_consumer
    from streams.errors import ServiceUnavailable

    settings = Settings.model_validate({"kafka": {"brokers": "127.0.0.1:1", "startup_timeout_s": 1.0}})
    for make in (lambda: make_consumer(settings, ["emotions"], False, 5.0), lambda: make_producer(settings)):
        start = time.monotonic()
        with pytest.raises(ServiceUnavailable, match=r"no Kafka broker answered at 127.0.0.1:1 within 1 s"):
            make()
        assert time.monotonic() - start < 10.0


def test_a_calls_summary_says_why_its_unread_utterances_were_not_read() -> None:
    """Found by a newcomer: a Spanish-speaking customer's call ended '3 more not read: every part
    ignored', and only the event lines, long scrolled past, said it was another language."""
    from streams.schemas import CallReport
    from tools.subscribe import unread_kind

    spanish = "other language? the words read as Spanish (es), English at p 1e-05: the model reads English"
    chinese = "other language? the words are written in Han script: the model reads English"
    blank = "no words: the transcript is empty, or only spaces"
    silent = "no speech: 0.00 s of speech, less than 0.15 s"

    def unread(i: int, **ignored: str) -> EmotionEvent:
        return make_event(utterance_id=f"u{i}", seq=i, modalities_present=sorted(ignored), ignored=ignored,
                          weights={"text": 0.0, "audio": 0.0, "video": 0.0})  # fmt: skip

    assert unread_kind(unread(0, text=spanish)) == "other language (Spanish)"
    assert unread_kind(unread(0, text=chinese)) == "other language (Han script)"
    assert unread_kind(unread(0, text=blank, audio=silent)) == "no speech, no words"
    assert unread_kind(unread(0, audio="dead-lettered: undecodable_audio (x)")) == "dead-lettered"
    out = io.StringIO()
    printer = EventPrinter(out, calls_topic=TOPICS.calls)
    for i, why in enumerate([spanish, spanish, blank]):
        printer.handle(TOPICS.emotions, unread(i, text=why).to_bytes())
    printer.handle(TOPICS.emotions, unread(0, text=spanish).model_copy(
        update={"revision": 1, "event_id": "c:u0:r1:x"}).to_bytes())  # a revision is the same utterance  # fmt: skip
    report = CallReport(event_id="call-7:report:final", call_id="call-7", final=True, turns=0, unread=3,
                        speakers=[], open_alerts=[], alerts_raised=[], produced_at=2.0)  # fmt: skip
    printer.handle(TOPICS.calls, report.to_bytes())
    assert out.getvalue().splitlines()[-1] == (
        "■ call ended [call-7] 0 turns (3 more not read: other language (Spanish) 2, no words 1): nobody read;"
        " alerts: none"
    )


def test_subscribe_can_print_dead_letters_alone() -> None:
    """Found by a newcomer: 46 dead letters to triage came mixed with every event; --no-events
    prints only what else was asked for."""
    letter = DeadLetter(reason="oversized", detail="big", source_topic="t", partition=0, offset=1, key="call-7",
                        payload="")  # fmt: skip
    batches = [
        [Record(TOPICS.emotions, make_event(utterance_id=f"u{i}", seq=i).to_bytes()) for i in range(2)],
        [Record(TOPICS.deadletter, letter.to_bytes())],
    ]
    out = io.StringIO()
    n = subscribe(SETTINGS, timeout_s=1.0, out=out, deadletters=True, events=False, consumer=FakeConsumer(batches))
    assert n == 1 and out.getvalue().startswith("✗ dead letter [call-7]")
    with pytest.raises(ValueError, match="nothing to print"):
        subscribe(SETTINGS, events=False, consumer=FakeConsumer([]))
    from streams.cli import main

    assert main(["subscribe", "--no-events"]) == 2  # said, not a traceback
