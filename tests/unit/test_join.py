from __future__ import annotations

import numpy as np

from streams import join
from streams.join import CLOCK_SKEW_S, UNSENT_WAIT_S, Joiner


def ids(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [u.utterance_id for u in result.ready]


def test_utterance_is_ready_when_all_expected_modalities_arrived_in_any_order() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    assert ids(j.add("c", "u0", 0, "A", "audio", "a0", "h1", now=0.0)) == []
    r = j.add("c", "u0", 0, "A", "text", "t0", "h2", now=0.1)
    assert ids(r) == ["u0"]
    utt = r.ready[0]
    assert utt.modalities == ("text", "audio") and not utt.timed_out
    assert utt.handles == ["h1", "h2"]


def test_missing_modality_times_out_and_is_processed_with_what_it_has() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    assert ids(j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0)) == []
    assert ids(j.expire(now=1.9)) == []
    assert j.next_deadline() == 2.0
    r = j.expire(now=2.0)
    assert ids(r) == ["u0"] and r.ready[0].timed_out and r.ready[0].modalities == ("text",)


def test_call_started_sets_expected_modalities() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    j.call_started("c", ["text"], now=0.0)
    assert ids(j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0)) == ["u0"]
    # a late 'started' re-checks what is pending
    j.add("d", "u0", 0, "A", "text", "t0", "h", now=0.0)
    assert ids(j.call_started("d", ["text"], now=0.1)) == ["u0"]


def test_later_utterance_waits_for_earlier_one_of_the_same_call() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0)
    j.add("c", "u1", 1, "B", "text", "t1", "h", now=0.1)
    assert ids(j.add("c", "u1", 1, "B", "audio", "a1", "h", now=0.2)) == []  # u0 still incomplete
    assert ids(j.add("c", "u0", 0, "A", "audio", "a0", "h", now=0.3)) == ["u0", "u1"]
    # other calls are not held back
    j.add("c", "u2", 2, "A", "text", "t2", "h", now=0.4)
    assert ids(j.add("x", "v0", 0, "A", "text", "t", "h", now=0.5)) == []
    assert ids(j.add("x", "v0", 0, "A", "audio", "a", "h", now=0.5)) == ["v0"]


def test_late_part_after_release_is_acked_without_new_event() -> None:
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    j.add("c", "u0", 0, "A", "text", "t0", "h1", now=0.0)
    assert ids(j.expire(now=1.0)) == ["u0"]
    r = j.add("c", "u0", 0, "A", "audio", "a0", "h2", now=1.5)
    assert r.ready == [] and r.ack_now == ["h2"] and r.late_parts == 1


def test_duplicate_part_keeps_first_and_is_acked_at_once() -> None:
    """The first copy acks with the utterance (it holds the commit back); a copy is acked at once,
    not held with the utterance with its record (a producer retrying while the utterance waits)."""
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    j.add("c", "u0", 0, "A", "text", "first", "h1", now=0.0)
    dup = j.add("c", "u0", 0, "A", "text", "first", "h2", now=0.1)
    assert dup.duplicate_parts == 1 and dup.inconsistent == [] and dup.ack_now == ["h2"]
    odd = j.add("c", "u0", 2, "A", "text", "first", "h2b", now=0.1)  # the same content under another seq
    assert odd.duplicate_parts == 1 and odd.inconsistent == ["seq"] and "seq 2 speaker 'A'" in str(odd.inconsistency)
    r = j.add("c", "u0", 0, "A", "audio", "a", "h3", now=0.2)
    assert r.ready[0].parts["text"] == "first" and r.ready[0].handles == ["h1", "h3"]


def test_a_different_part_under_the_same_ids_is_a_conflict_not_a_duplicate() -> None:
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    j.add("c", "u0", 0, "A", "text", "first", "h1", now=0.0)
    r = j.add("c", "u0", 0, "A", "text", "second", "h2", now=0.1)
    assert r.conflict is not None and "already has a different text part" in r.conflict
    assert r.duplicate_parts == 0 and r.ack_now == [] and r.ready == []  # the caller dead-letters it
    r = j.add("c", "u0", 0, "A", "audio", "a", "h3", now=0.2)
    assert r.ready[0].parts["text"] == "first" and r.ready[0].handles == ["h1", "h3"]  # the first one counts
    # once labelled: the same part again is a redelivery, a different one a conflict, a new
    # modality a late part
    again = j.add("c", "u0", 0, "A", "text", "first", "h4", now=0.3)
    assert again.duplicate_parts == 1 and again.ack_now == ["h4"] and again.conflict is None
    assert again.inconsistent == [] and again.inconsistency is None
    # the same content under another seq or speaker is no redelivery: counted and said, as for parts
    # that disagree before their utterance is labelled (a newcomer's was logged as 'the same content')
    odd = j.add("c", "u0", 3, "B", "text", "first", "h4b", now=0.3)
    assert odd.duplicate_parts == 1 and odd.ack_now == ["h4b"] and odd.inconsistent == ["seq", "speaker"]
    assert odd.inconsistency is not None and "seq 3 speaker 'B'" in odd.inconsistency
    assert j.add("c", "u0", 0, "unknown", "text", "first", "h4c", now=0.3).inconsistent == []  # no speaker named
    other = j.add("c", "u0", 0, "A", "audio", "b", "h5", now=0.4)
    assert other.conflict is not None and "was labelled from a different audio part" in other.conflict
    assert other.ack_now == [] and other.late_parts == 0
    late = j.add("c", "u0", 0, "A", "video", "v", "h6", now=0.5)
    assert late.late_parts == 1 and late.ack_now == ["h6"] and late.conflict is None


def test_parts_that_disagree_on_seq_or_speaker_are_joined_and_the_first_modality_decides_in_any_order() -> None:
    for audio_first in (False, True):
        j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
        parts = [("text", 3, "agent"), ("audio", 4, "customer")]
        order = parts[::-1] if audio_first else parts
        results = [j.add("c", "u3", seq, who, m, m, f"h-{m}", now=0.1 * i) for i, (m, seq, who) in enumerate(order)]
        assert results[0].inconsistent == [] and results[0].inconsistency is None
        last = results[1]
        assert last.inconsistent == ["seq", "speaker"], last.inconsistent
        assert last.inconsistency is not None and "differ on seq and speaker" in last.inconsistency
        (utt,) = last.ready  # both parts joined: nothing lost
        assert (utt.seq, utt.speaker, utt.modalities) == (3, "agent", ("text", "audio"))  # the transcript's
    # a speaker one part does not know is no disagreement, and the part that knows it names the speaker
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    j.add("c", "u0", 0, "unknown", "text", "t", "h1", now=0.0)
    r = j.add("c", "u0", 0, "customer", "audio", "a", "h2", now=0.1)
    assert r.inconsistent == [] and r.ready[0].speaker == "customer"
    # a dead-lettered part's seq and speaker count only until a usable part says, in either order
    for rejected_first in (True, False):
        j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
        steps = [
            lambda j=j: j.reject("c", "u0", 3, "customer", "text", "dead-lettered: x", now=0.0),
            lambda j=j: j.add("c", "u0", 7, "agent", "audio", "a", "h1", now=0.1),
        ]
        results = [step() for step in (steps if rejected_first else steps[::-1])]
        (utt,) = [u for r in results for u in r.ready]
        assert (utt.seq, utt.speaker, utt.modalities) == (7, "agent", ("audio",))
        assert all(r.inconsistent == [] for r in results)
    # a replay keeps the parts it was labelled from: their word decides, as it did the first time
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    j.add("c", "u1", 4, "customer", "audio", "a", "h1", now=0.0)
    (utt,) = j.add("c", "u1", 2, "agent", "text", "t", "h2", now=0.1).ready
    assert (utt.seq, utt.speaker) == (2, "agent")
    utt.parts = {"audio": utt.parts["audio"]}  # labelled from its audio alone the first time
    utt.keep(tuple(utt.parts))
    assert (utt.seq, utt.speaker) == (4, "customer")
    # the release order follows the settled seq: u1's transcript says 0, so it no longer waits behind
    # u0 (seq 1), as its audio part's seq 5 would have had it
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    j.add("c", "u1", 5, "A", "audio", "a1", "h1", now=0.0)
    j.add("c", "u0", 1, "A", "text", "t0", "h2", now=0.0)
    assert ids(j.add("c", "u1", 0, "A", "text", "t1", "h3", now=0.0)) == ["u1"]
    assert ids(j.add("c", "u0", 1, "A", "audio", "a0", "h4", now=0.1)) == ["u0"]


def test_waveforms_are_told_apart_by_content_not_identity() -> None:
    wave = np.sin(np.arange(16_000, dtype=np.float32) / 7.0)
    j = Joiner(wait_s=1.0, default_modalities=("audio",))
    assert ids(j.add("c", "u0", 0, "A", "audio", wave, "h1", now=0.0)) == ["u0"]
    assert j.add("c", "u0", 0, "A", "audio", wave.copy(), "h2", now=0.1).duplicate_parts == 1
    louder = wave * 1.5
    assert j.add("c", "u0", 0, "A", "audio", louder, "h3", now=0.2).conflict is not None


def test_call_end_closes_the_call_after_the_join_wait_releasing_pending_in_order() -> None:
    j = Joiner(wait_s=5.0, default_modalities=("text", "audio"))
    j.add("c", "u1", 1, "B", "text", "t1", "h", now=0.0)
    j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0)
    r = j.call_ended("c", now=0.5)
    assert ids(r) == [] and r.ended_calls == []  # parts may still be behind the 'ended'
    assert j.next_deadline() == 5.0
    j.add("c", "u0", 0, "A", "audio", "a0", "h", now=1.0)  # completes u0
    r = j.expire(now=5.5)
    assert ids(r) == ["u1"] and r.ended_calls == ["c"]
    assert j.open_calls == 0 and j.open_utterances == 0


def test_a_calls_close_waits_end_wait_s_for_a_last_transcript_that_lags_the_hang_up() -> None:
    """A speech-to-text engine that finalises the last transcript seconds after the hang-up (a
    newcomer's part 5 s after 'ended' reopened the call, labelled without its context): with
    join.end_wait_s 8 the close waits for it; parts past it and the clock skew are refused as before."""
    j = Joiner(wait_s=2.0, default_modalities=("text",), read_to=lambda kind, p: 1e9, end_wait_s=8.0)
    j.add("c", "u0", 0, "A", "text", "t0", "h0", now=0.0, partition=0, ts=100.0)
    assert j.call_ended("c", now=1.0, partition=0, ts=101.0).ended_calls == []
    assert j.expire(now=3.5).ended_calls == []  # past wait_s: still open
    r = j.add("c", "u1", 1, "A", "text", "t1", "h1", now=6.0, partition=0, ts=106.0)  # 5 s after the end
    assert ids(r) == ["u1"] and r.reopened is None and j.knows("c")
    assert j.expire(now=9.5).ended_calls == ["c"]
    r = j.add("c", "u2", 2, "A", "text", "t2", "h2", now=10.0, partition=0, ts=170.0)  # 69 s after: past 8 + 60
    assert r.after_end is not None and "join.end_wait_s 8 s" in r.after_end
    default = Joiner(wait_s=2.0, default_modalities=("text",))
    default.call_ended("c", now=1.0)
    assert default.end_wait_s == 2.0 and default.expire(now=3.5).ended_calls == ["c"]
    # shorter than wait_s: utterances still waiting for a part when the call ends are not cut short
    assert Joiner(wait_s=2.0, default_modalities=("text",), end_wait_s=0.0).end_wait_s == 2.0


def test_a_part_sent_after_its_calls_end_is_refused_one_sent_in_time_is_joined_however_late_it_is_read() -> None:
    control = {"to": 300.0}  # the control topic read up to this record time
    j = Joiner(
        wait_s=5.0, default_modalities=("text",), read_to=lambda kind, p: control["to"] if kind == "control" else None
    )
    j.add("c", "u0", 0, "A", "text", "t0", "h0", now=0.0, partition=0, ts=100.0)
    j.call_ended("c", now=1.0, partition=0, ts=101.0)
    # while the call closes, a part sent past the end's wait and a minute of clock skew is refused already
    assert j.add("c", "u8", 8, "A", "text", "t8", "h8", now=1.5, partition=0, ts=166.5).after_end is not None
    assert j.expire(now=6.5).ended_calls == ["c"] and j.has_ended("c") and not j.knows("c")
    r = j.add("c", "u1", 1, "A", "text", "t1", "h1", now=7.0, partition=0, ts=170.0)
    assert r.after_end is not None and "was sent 69.0 s after" in r.after_end and "'u1'" in r.after_end
    assert ids(r) == [] and r.ack_now == [] and not j.knows("c") and j.open_utterances == 0
    assert j.reject("c", "u2", 2, "A", "audio", "bad", now=7.0, partition=0, ts=170.0, handle="h2").ack_now == ["h2"]
    assert not j.knows("c")
    r = j.add("c", "u0", 0, "A", "text", "t0", "h0", now=7.0, partition=0, ts=100.0)  # a redelivery stays one
    assert r.duplicate_parts == 1 and r.after_end is None
    control["to"] = 229.0  # not read a minute past the part: a 'started' reusing the id may be on its way
    assert j.add("c", "u3", 3, "A", "text", "t3", "h3", now=7.0, partition=0, ts=170.0).after_end is None
    control["to"] = 300.0
    # sent in time (a backlog read late), or without record times: joined, reopening the call, as before
    for k, ts in ((4, 103.0), (5, None), (7, 160.0)):
        r = j.add("c", f"u{k}", k, "A", "text", f"t{k}", f"h{k}", now=8.0, partition=0, ts=ts)
        assert r.after_end is None and j.knows("c")
    assert j.add("c", "u6", 6, "A", "text", "t6", "h6", now=8.0, partition=0, ts=170.0).after_end is not None
    assert Joiner(wait_s=5.0, default_modalities=("text",))._after_end("c", 0, 170.0) is None  # nothing read: never


def test_a_call_id_used_again_after_its_close_starts_afresh_with_started() -> None:
    j = Joiner(wait_s=5.0, default_modalities=("text",), read_to=lambda kind, p: 1e9)
    j.add("c", "u0", 0, "A", "text", "t0", "h0", now=0.0, partition=3, ts=100.0)
    j.call_ended("c", now=1.0, partition=3, ts=101.0)
    assert j.expire(now=6.5).ended_calls == ["c"] and j.has_ended("c")
    j.call_started("c", None, now=7.0, partition=3)
    assert not j.has_ended("c")
    r = j.add("c", "v0", 0, "A", "text", "x0", "g0", now=7.0, partition=3, ts=300.0)
    assert r.after_end is None and ids(r) == ["v0"]
    assert not r.ready[0].after_close  # a new call under the id: its analytics start afresh
    r = j.add("c", "u0", 1, "A", "text", "x1", "g1", now=7.0, partition=3, ts=301.0)  # its ids may be used again
    assert r.conflict is None and ids(r) == ["u0"] and j.finished_ids == 2
    j.call_ended("c", now=8.0, partition=3, ts=310.0)
    assert j.expire(now=13.5).ended_calls == ["c"] and j.has_ended("c")
    j.forget({3})  # a revoked partition's closed calls are its next owner's to judge
    assert not j.has_ended("c")


def test_while_a_call_closes_a_part_sent_before_its_end_or_of_an_utterance_pending_is_its_own() -> None:
    j = Joiner(wait_s=5.0, default_modalities=("text", "audio"))
    j.add("c", "u0", 0, "A", "text", "t0", "h0", now=0.0, partition=0, ts=100.0)
    j.call_ended("c", now=1.0, partition=0, ts=101.0)
    assert j.of_previous_call("c", "u0", "audio", None) and j.of_previous_call("c", "u1", "text", 100.9)
    assert not j.of_previous_call("c", "u1", "text", 101.5) and not j.of_previous_call("c", "u1", "text", None)
    assert j.of_previous_call("c", "u0", "audio", 103.0)  # the part its pending utterance lacks, a little late
    assert not j.of_previous_call("c", "u0", "text", 103.0)  # one it has: the new call's, same utterance id
    assert not j.of_previous_call("c", "u0", "audio", 101.0 + 5.0 + CLOCK_SKEW_S + 1)
    assert j.expire(now=6.5).ended_calls == ["c"]
    assert j.of_previous_call("c", "u1", "text", 100.9) and not j.of_previous_call("c", "u1", "text", 101.5)
    assert not j.of_previous_call("d", "u0", "text", 1.0)


def test_a_closed_call_reopened_by_a_part_sent_in_time_expects_what_it_declared() -> None:
    j = Joiner(wait_s=5.0, default_modalities=("text", "audio"))
    j.call_started("c", ["text"], now=0.0, partition=0)
    j.call_ended("c", now=1.0, partition=0, ts=101.0)
    assert j.expire(now=6.5).ended_calls == ["c"]
    r = j.add("c", "u0", 0, "A", "text", "t0", "h0", now=7.0, partition=0, ts=100.5)  # read after the close
    assert ids(r) == ["u0"]  # not held for the default audio it never declared
    assert r.reopened is not None and "sent before the call's 'ended' and read after the call had closed" in r.reopened
    assert r.ready[0].after_close  # labelled, but no turn of the call's analytics: its summary is out
    assert j.add("c", "u1", 1, "A", "text", "t1", "h1", now=7.0, partition=0, ts=100.6).reopened is None  # open now
    j.call_ended("c", now=8.0, partition=0, ts=102.0)
    j.expire(now=13.5)
    j.call_ended("c", now=14.5, partition=0, ts=109.0)
    j.expire(now=20.0)
    bad = j.reject("c", "u9", 9, "A", "audio", "dead-lettered: invalid_value", now=20.5, partition=0, ts=110.0)
    assert bad.reopened is not None and "its audio part of utterance u9" in bad.reopened  # a dead letter reopens too
    j.call_ended("c", now=21.0, partition=0, ts=102.0)
    j.expire(now=27.0)
    late = j.add("c", "u2", 2, "A", "text", "t2", "h2", now=28.0, partition=0, ts=108.0)  # within the minute
    assert (
        late.after_end is None and late.reopened is not None and "sent 6.0 s after the call's 'ended'" in late.reopened
    )


def test_a_call_reopened_by_a_late_part_is_no_open_call_once_that_part_is_labelled() -> None:
    """A newcomer saw 2 open calls after every call had ended: a call reopened by a part read after
    its close stayed open here until idle_s (an hour). Once it has nothing pending and has sent
    nothing for end_wait_s it is let go, still closed: what it labelled stays known, a later part
    reopens it again, and a 'started' of a new call under the id keeps the ids read before it."""
    j = Joiner(wait_s=1.0, default_modalities=("text",), end_wait_s=3.0)
    j.add("c", "u0", 0, "A", "text", "t0", "h0", now=0.0, partition=0, ts=100.0)
    j.call_ended("c", now=1.0, partition=0, ts=101.0)
    assert j.expire(now=4.5).ended_calls == ["c"] and j.open_calls == 0
    r = j.add("c", "u1", 1, "A", "text", "t1", "h1", now=5.0, partition=0, ts=100.5)  # read after the close
    assert ids(r) == ["u1"] and r.reopened is not None and j.open_calls == 1
    j.expire(now=7.9)
    assert j.open_calls == 1  # within end_wait_s of its part
    j.expire(now=8.1)
    assert j.open_calls == 0 and j.has_ended("c") and j.labelled("c", "u1")
    assert j.add("c", "u1", 1, "A", "text", "t1", "h1", now=9.0, partition=0).duplicate_parts == 1  # a redelivery
    again = j.add("c", "u2", 2, "A", "text", "t2", "h2", now=9.5, partition=0, ts=110.0)  # the next call's?
    assert ids(again) == ["u2"] and again.reopened is not None and j.open_calls == 1  # reopened again
    j.call_started("c", None, now=10.0, partition=0, closed_before=True)  # a new call under the id
    j.expire(now=20.0)
    assert j.open_calls == 1 and j.labelled("c", "u2") and not j.labelled("c", "u0")  # open: the new call


def test_labelled_ids_are_bounded_per_call_too() -> None:
    j = Joiner(wait_s=0.0, default_modalities=("text",), max_finished=3)
    for i in range(5):
        j.add("c" if i % 2 else "d", f"u{i}", i, "A", "text", f"t{i}", f"h{i}", now=float(i))
    assert j.finished_ids == 3 and j._done_of == {"c": {"u3"}, "d": {"u2", "u4"}}  # the oldest went
    j.forget({-1})
    assert j.finished_ids == 0 and j._done_of == {}


def test_a_call_id_used_again_forgets_only_what_its_previous_call_labelled() -> None:
    j = Joiner(wait_s=5.0, default_modalities=("text",))
    j.add("c", "u0", 0, "A", "text", "t0", "h0", now=0.0, partition=0, ts=100.0)
    j.call_ended("c", now=1.0, partition=0, ts=101.0)
    assert j.expire(now=6.5).ended_calls == ["c"]
    # the new call's first part, read before its 'started' (after the close): it reopens the call
    assert ids(j.add("c", "v0", 0, "A", "text", "x0", "g0", now=7.0, partition=0, ts=110.0)) == ["v0"]
    j.call_started("c", None, now=7.5, partition=0, closed_before=True)
    assert not j.labelled("c", "u0") and j.labelled("c", "v0")  # v0 again is a redelivery, not a second event
    assert j.add("c", "v0", 0, "A", "text", "x0", "g1", now=8.0, partition=0, ts=110.0).duplicate_parts == 1


def test_the_previous_calls_labelled_ids_are_known_past_the_closed_calls_bound_a_second_close_and_a_reopen() -> None:
    j = Joiner(wait_s=1.0, default_modalities=("text",), max_calls=1)
    j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0, partition=0, ts=100.0)
    j.call_ended("c", now=0.1, partition=0, ts=101.0)
    j.expire(now=2.0)
    j.add("c", "u1", 1, "A", "text", "t1", "h", now=2.5, partition=0, ts=100.5)  # sent in time, read late: reopens
    j.call_ended("c", now=2.6, partition=0, ts=101.0)  # its 'ended' read again: closed twice
    j.expire(now=4.0)
    j.call_ended("d", now=4.0, partition=0, ts=102.0)
    j.expire(now=6.0)  # another call closed: c leaves the closed calls remembered (max_calls 1)
    assert not j.has_ended("c") and j.labelled("c", "u0") and j.labelled("c", "u1")
    j.call_started("c", None, now=7.0, partition=0, closed_before=True)  # what Redis says
    assert not j.labelled("c", "u0") and not j.labelled("c", "u1")


def test_the_closed_calls_remembered_are_bounded() -> None:
    j = Joiner(wait_s=0.0, default_modalities=("text",), max_calls=3)
    for i in range(5):
        j.call_ended(f"c{i}", now=float(i))
        j.expire(now=float(i))
    assert [c for c in (f"c{i}" for i in range(5)) if j.has_ended(c)] == ["c2", "c3", "c4"]


def test_idle_calls_are_forgotten() -> None:
    j = Joiner(wait_s=1.0, default_modalities=("text",), idle_s=10.0)
    j.add("c", "u0", 0, "A", "text", "t", "h", now=0.0)
    assert j.open_calls == 1
    j.add("d", "v0", 0, "A", "text", "t", "h", now=0.0)
    j.call_ended("d", now=0.5)
    assert j.expire(now=5.0).idle_calls == []
    assert j.open_calls == 1  # d closed after its end: not idle
    assert j.expire(now=11.0).idle_calls == ["c"]  # no part, no 'ended' for idle_s: the worker says so
    assert j.open_calls == 0
    j.add("d", "v1", 1, "A", "text", "t", "h", now=12.0)  # a part read after d's close reopens it
    assert j.open_calls == 1 and j.expire(now=30.0).idle_calls == []  # d sent its 'ended': not counted
    busy = Joiner(wait_s=1.0, default_modalities=("text",), idle_s=10.0, max_finished=3)
    busy.add("c", "u0", 0, "A", "text", "t", "h", now=0.0)
    for i in range(5):  # other calls' utterances since: c's labelled id is no longer remembered
        busy.add(f"o{i}", "u0", 0, "A", "text", "t", "h", now=1.0)
    assert busy.expire(now=10.5).idle_calls == ["c"]  # it said something all the same
    j.call_started("s", ["text"], now=31.0)  # a 'started' alone
    j.reject("r", "w0", 0, "A", "text", "dead-lettered: invalid_value", now=31.0)  # every part dead-lettered
    assert j.open_calls == 2 and j.expire(now=42.0).idle_calls == [] and j.open_calls == 0  # said nothing: not counted


def test_forget_drops_a_revoked_partitions_calls_and_labelled_ids() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    j.add("c", "u0", 0, "A", "text", "t", "h", now=0.0, partition=1)
    j.add("d", "v0", 0, "A", "text", "t", "h", now=0.0, partition=2)
    assert ids(j.add("c", "u0", 0, "A", "audio", "a", "h", now=0.1, partition=1)) == ["u0"]
    j.add("c", "u1", 1, "A", "text", "t", "h", now=0.2, partition=1)
    assert j.forget({1}) == 1  # u1 was half-joined
    assert j.open_utterances == 1 and not j.knows("c") and j.knows("d")
    # the next owner's replay of u0 is joined afresh, not taken for a late part
    r = j.add("c", "u0", 0, "A", "text", "t", "h", now=1.0, partition=1)
    assert r.late_parts == 0 and ids(j.add("c", "u0", 0, "A", "audio", "a", "h", now=1.1, partition=1)) == ["u0"]
    assert ids(j.expire(now=5.0)) == ["v0"]


def test_calls_past_the_cap_forget_the_least_recently_active_idle_one() -> None:
    j = Joiner(wait_s=1.0, default_modalities=("text",), max_calls=3)
    for i, call in enumerate("abc"):
        j.call_started(call, ["text"], now=float(i))
    j.add("b", "u", 0, "A", "text", "t", "h", now=3.0)  # b active again, its utterance released
    j.call_started("d", ["text"], now=4.0)
    assert j.open_calls == 3 and not j.knows("a") and j.knows("b") and j.evicted_calls == 1


def test_a_busy_call_is_never_evicted_for_room() -> None:
    j = Joiner(wait_s=10.0, default_modalities=("text", "audio"), max_calls=2)
    j.add("a", "u", 0, "A", "text", "t", "h", now=0.0)  # waits for audio
    j.add("b", "u", 0, "A", "text", "t", "h", now=0.0)
    j.add("c", "u", 0, "A", "text", "t", "h", now=0.0)
    assert j.open_calls == 3 and j.open_utterances == 3  # over the cap rather than losing a part


def test_finished_ids_are_bounded_and_a_remembered_one_makes_a_late_part() -> None:
    j = Joiner(wait_s=1.0, default_modalities=("text",), max_finished=3)
    for i in range(5):
        j.add("c", f"u{i}", i, "A", "text", "t", "h", now=0.0)
    assert j.finished_ids == 3
    assert j.add("c", "u4", 4, "A", "audio", "a", "h", now=0.5).late_parts == 1
    assert ids(j.add("c", "u0", 0, "A", "text", "t", "h", now=0.5)) == ["u0"]  # forgotten: joined again


def test_expire_touches_only_what_is_due() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    for i in range(2000):
        j.add(f"c{i}", "u", 0, "A", "text", "t", "h", now=float(i) / 1000)
    assert len(j._heap) == 2000
    assert len(j.expire(now=2.0005).ready) == 1 and len(j._heap) == 1999  # one popped, the rest untouched
    assert len(j.expire(now=10.0).ready) == 1999 and j.open_utterances == 0


class Reader:
    """What the worker has read of each (modality, partition): record time up to which it has
    read, and whether messages remain (a backlog)."""

    def __init__(self) -> None:
        self.read_to: dict[tuple[str, int], float] = {}
        self.backlog: set[tuple[str, int]] = set()

    def behind(self, modality: str, partition: int, until: float) -> bool:
        return (modality, partition) in self.backlog and self.read_to.get((modality, partition), -1.0) < until


def test_a_part_on_a_topic_read_behind_is_waited_for_past_wait_s() -> None:
    """After an outage the text of u0 (sent at 100.0) is read at once; its audio, sent with it,
    sits behind megabytes of other audio: the join waits for it instead of labelling text alone."""
    reader = Reader()
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"), behind=reader.behind)
    reader.backlog.add(("audio", 0))
    reader.read_to[("audio", 0)] = 90.0
    j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0, partition=0, ts=100.0)
    assert ids(j.expire(now=2.0)) == [] and ids(j.expire(now=20.0)) == []  # still behind: held
    assert j.held_utterances == 1 and j.next_deadline() is not None and j.next_deadline() <= 20.25
    reader.read_to[("audio", 0)] = 101.0  # the reader is near, not yet past 100 + wait_s
    r = j.add("c", "u0", 0, "A", "audio", "a0", "h2", now=25.0, partition=0, ts=100.1)
    assert ids(r) == ["u0"] and r.ready[0].modalities == ("text", "audio") and not r.ready[0].timed_out


def test_an_utterance_past_its_wait_takes_no_part_sent_after_it() -> None:
    """u0 (text, audio and video expected) is held for audio and video read behind; a video part
    sent 3 s after its text is late (as it would have been without the hold) but does not end the
    wait for the audio, which was sent in time. u1, queued behind u0 and past its own wait, refuses
    audio sent 10 s late too; a re-sent part is a duplicate, not late."""
    reader = Reader()
    j = Joiner(wait_s=1.5, default_modalities=("text", "audio", "video"), behind=reader.behind)
    reader.backlog |= {("audio", 0), ("video", 0)}
    j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0, partition=0, ts=100.0)
    j.add("c", "u1", 1, "A", "text", "t1", "h", now=0.0, partition=0, ts=100.0)
    assert ids(j.expire(now=2.0)) == []  # held
    reader.read_to[("video", 0)] = 103.0  # the worker marks a topic read before it joins the part
    r = j.add("c", "u0", 0, "A", "video", "v0", "late video", now=2.5, partition=0, ts=103.0)
    assert ids(r) == [] and r.late_parts == 1 and r.ack_now == ["late video"]  # still held for audio
    r = j.add("c", "u1", 1, "A", "audio", "a1", "late audio", now=2.6, partition=0, ts=110.0)
    assert ids(r) == [] and r.late_parts == 1
    assert j.add("c", "u1", 1, "A", "text", "t1", "again", now=2.7, partition=0, ts=111.0).duplicate_parts == 1
    reader.read_to[("audio", 0)] = 100.2
    r = j.add("c", "u0", 0, "A", "audio", "a0", "on time", now=3.0, partition=0, ts=100.2)
    assert ids(r) == ["u0"] and r.ready[0].modalities == ("text", "audio") and r.ready[0].timed_out
    reader.backlog.clear()
    r = j.expire(now=3.5)
    assert ids(r) == ["u1"] and r.ready[0].modalities == ("text",)
    r = j.add("c", "u2", 2, "A", "text", "t2", "h", now=4.0, partition=0, ts=100.0)
    r = j.add("c", "u2", 2, "A", "audio", "a2", "h", now=4.1, partition=0, ts=104.0)
    assert r.late_parts == 0 and r.duplicate_parts == 0  # within its wait (wall clock): joined, whatever the times


def test_the_wait_ends_once_the_topic_is_read_past_the_utterance_or_has_no_backlog() -> None:
    reader = Reader()
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"), behind=reader.behind)
    reader.backlog |= {("audio", 0), ("audio", 1)}
    j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0, partition=0, ts=100.0)
    j.add("d", "v0", 0, "A", "text", "t0", "h", now=0.0, partition=1, ts=100.0)
    assert ids(j.expire(now=5.0)) == []
    reader.read_to[("audio", 0)] = 102.5  # read past 100 + 2 s: u0's audio would have come
    reader.backlog.discard(("audio", 1))  # caught up: v0's audio is not coming
    r = j.expire(now=5.3)
    assert sorted(ids(r)) == ["u0", "v0"] and all(u.timed_out for u in r.ready)


def test_a_held_utterance_waits_while_the_predicate_says_behind_and_without_record_times_not_at_all() -> None:
    reader = Reader()
    reader.backlog.add(("audio", 0))
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"), behind=reader.behind)
    j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0, partition=0, ts=100.0)
    j.add("c", "u1", 1, "A", "text", "t1", "h", now=0.0, partition=0)  # no record time: the wall clock
    assert ids(j.expire(now=500.0)) == []  # u1 is held back behind u0 (seq order), however long
    reader.backlog.clear()  # the predicate gives up (the worker's: the partition stopped advancing)
    assert ids(j.expire(now=500.3)) == ["u0", "u1"]  # looked at again every 0.25 s


def test_a_backstop_ends_any_hold() -> None:
    reader = Reader()
    reader.backlog.add(("audio", 0))
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"), behind=reader.behind, max_hold_s=600.0)
    j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0, partition=0, ts=1e12)  # a clock far ahead
    assert ids(j.expire(now=599.0)) == []
    assert ids(j.expire(now=600.3)) == ["u0"]


def test_a_calls_end_waits_for_its_parts_on_topics_read_behind() -> None:
    reader = Reader()
    reader.backlog.add(("text", 0))
    j = Joiner(wait_s=2.0, default_modalities=("text",), behind=reader.behind)
    j.call_ended("c", now=0.0, partition=0, ts=200.0)  # 'ended' read before the call's last text
    assert j.expire(now=5.0).ended_calls == []
    r = j.add("c", "u9", 9, "A", "text", "t9", "h", now=6.0, partition=0, ts=199.0)
    assert ids(r) == ["u9"]
    reader.read_to[("text", 0)] = 203.0
    assert j.expire(now=6.5).ended_calls == ["c"]


def test_a_later_utterance_held_after_an_earlier_one_left_is_looked_at_again() -> None:
    """u0 and u1 both wait for audio read behind; u0's audio comes and releases it; u1, whose own
    deadline passed while u0 held it back, is held with a re-check of its own, not forgotten."""
    reader = Reader()
    reader.backlog.add(("audio", 0))
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"), behind=reader.behind)
    j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0, partition=0, ts=100.0)
    j.add("c", "u1", 1, "A", "text", "t1", "h", now=0.0, partition=0, ts=100.5)
    assert ids(j.expire(now=2.0)) == []
    assert ids(j.add("c", "u0", 0, "A", "audio", "a0", "h", now=3.0, partition=0, ts=100.1)) == ["u0"]
    assert j.next_deadline() is not None  # u1 has a re-check
    reader.backlog.clear()  # caught up: u1's audio is not coming
    assert ids(j.expire(now=3.5)) == ["u1"] and j.open_utterances == 0


def test_holding_with_wait_s_zero_does_not_spin() -> None:
    reader = Reader()
    reader.backlog.add(("audio", 0))
    j = Joiner(wait_s=0.0, default_modalities=("text", "audio"), behind=reader.behind)
    j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0, partition=0, ts=100.0)
    j.call_ended("c", now=0.0, partition=0, ts=100.0)
    assert ids(j.expire(now=1.0)) == []  # returns: re-checks are due later, never 'now'
    reader.backlog.clear()
    r = j.expire(now=1.3)
    assert ids(r) == ["u0"] and r.ended_calls == ["c"]


def test_a_dead_lettered_part_is_not_waited_for() -> None:
    """Audio that did not decode (dead-lettered with its ids known): the text goes at once, saying
    why it has no audio, instead of after the whole wait (3.8 s in a newcomer's try)."""
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    assert ids(j.reject("c", "u0", 0, "A", "audio", "dead-lettered: undecodable_audio", now=0.0)) == []
    r = j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.1)
    assert ids(r) == ["u0"] and r.ready[0].modalities == ("text",) and not r.ready[0].timed_out
    assert r.ready[0].ignored == {"audio": "dead-lettered: undecodable_audio"}
    # the other order; and a good copy sent after a bad one counts
    j.add("c", "u1", 1, "A", "text", "t1", "h", now=1.0)
    assert ids(j.reject("c", "u1", 1, "A", "audio", "dead-lettered: x", now=1.1)) == ["u1"]
    j.reject("c", "u2", 2, "A", "audio", "dead-lettered: x", now=2.0)
    r = j.add("c", "u2", 2, "A", "audio", "a2", "h", now=2.1)
    assert ids(r) == [] and r.ready == []  # a good audio replaced the bad one: the text is waited for again
    r = j.add("c", "u2", 2, "A", "text", "t2", "h", now=2.2)
    assert ids(r) == ["u2"] and r.ready[0].modalities == ("text", "audio") and r.ready[0].ignored == {}


def test_an_utterance_whose_only_part_was_dead_lettered_gives_no_event_and_does_not_block_its_call() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("audio",))
    assert ids(j.reject("c", "u0", 0, "A", "audio", "dead-lettered: x", now=0.0)) == []
    assert ids(j.add("c", "u1", 1, "A", "audio", "a1", "h", now=0.1)) == ["u1"]  # u0 gave nothing, held nothing
    assert j.open_utterances == 0
    # nothing was labelled: a usable copy sent after opens it again (it was acked as late, and lost)
    again = j.add("c", "u0", 0, "A", "audio", "a0", "h0", now=0.2)
    assert ids(again) == ["u0"] and again.ready[0].ignored == {} and again.late_parts == 0


def test_a_call_that_ends_gives_no_event_for_an_utterance_whose_only_part_was_dead_lettered() -> None:
    """The call's end is often read before a bulky audio topic catches up (found in review)."""
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    j.call_ended("c", now=0.0)
    assert j.reject("c", "u0", 0, "A", "audio", "dead-lettered: x", now=0.1, handle="h0").ack_now == []
    j.add("c", "u1", 1, "A", "text", "t1", "h", now=0.2)
    assert ids(j.reject("c", "u1", 1, "A", "audio", "dead-lettered: x", now=0.2)) == []  # complete, behind u0
    r = j.expire(now=2.05)
    assert r.ended_calls == ["c"] and ids(r) == ["u1"] and not r.ready[0].timed_out  # u0: nothing to label
    assert r.ack_now == ["h0"]  # the dead-lettered part is acked as its utterance goes without an event
    assert j.open_utterances == 0


def test_a_modality_the_model_does_not_take_is_never_waited_for() -> None:
    """Found by a newcomer: a call declaring video to the shipped model (no video input) waited the
    whole join wait on every utterance; so did a text-only model for the default audio."""
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"), inputs=("text",))
    assert ids(j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0)) == ["u0"]  # not held for audio
    late = j.add("c", "u0", 0, "A", "audio", "a0", "h2", now=0.1)
    assert late.ready == [] and late.ack_now == ["h2"]  # came after: late, as any part would be
    v = Joiner(wait_s=2.0, default_modalities=("text", "audio"), inputs=("text", "audio"))
    v.call_started("d", ["text", "video"], now=0.0)
    r = v.add("d", "u0", 0, "A", "video", "v0", "h", now=0.0)  # joined while its utterance waits
    assert ids(r) == []
    r = v.add("d", "u0", 0, "A", "text", "t0", "h", now=0.1)
    assert ids(r) == ["u0"] and r.ready[0].modalities == ("text", "video")  # not held for more video


def test_a_call_that_declares_only_what_the_model_does_not_take_waits_for_the_default() -> None:
    """Found by a newcomer: a call that declared only video to the shipped model went with its
    first part, its audio (sent a second later) dropped as late without a word in the event."""
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"), inputs=("text", "audio"))
    j.call_started("c", ["video"], now=0.0)
    assert ids(j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0)) == []
    r = j.add("c", "u0", 0, "A", "audio", "a0", "h2", now=1.0)
    assert ids(r) == ["u0"] and r.ready[0].modalities == ("text", "audio")


def test_a_model_that_takes_none_of_the_default_modalities_waits_for_none() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("audio",), inputs=("text",))
    assert ids(j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.0)) == ["u0"]  # not held for audio


def test_a_call_that_sends_no_audio_waits_less_for_it_after_two_utterances_and_waits_again_once_it_does() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    assert j.learn_after == 2 and j.unsent_wait_s == UNSENT_WAIT_S == 0.5
    for k, t in enumerate((0.0, 3.0)):  # the first two wait join.wait_s for audio
        assert ids(j.add("c", f"u{k}", k, "A", "text", "t", "h", now=t)) == []
        assert ids(j.expire(now=t + 1.9)) == []
        r = j.expire(now=t + 2.0)
        assert ids(r) == [f"u{k}"] and r.ready[0].timed_out
    assert len(r.learned) == 1 and "has sent no audio part in 2 utterances" in r.learned[0], r.learned
    assert ids(j.add("c", "u2", 2, "A", "text", "t", "h", now=6.0)) == []  # the third waits 0.5 s
    assert j.next_deadline() == 6.5
    r = j.expire(now=6.5)
    assert ids(r) == ["u2"] and r.ready[0].expected == ("text", "audio") and r.ready[0].not_waited == ("audio",)
    assert r.ready[0].timed_out  # still counted as missing its audio (an outage of that input shows)
    # audio sent just after its transcript is still joined
    j.add("c", "u3", 3, "A", "text", "t", "h", now=7.0)
    r = j.add("c", "u3", 3, "A", "audio", "a", "h", now=7.3)
    assert ids(r) == ["u3"] and r.ready[0].modalities == ("text", "audio") and not r.ready[0].timed_out
    assert r.unlearned == ["call c: its first audio part came: its utterances wait join.wait_s 2 s for audio again"]
    # another call is not affected
    assert ids(j.add("d", "v0", 0, "A", "text", "t", "h", now=8.0)) == []
    assert ids(j.expire(now=9.0)) == []
    assert ids(j.add("c", "u4", 4, "A", "text", "t", "h", now=8.0)) == []
    assert ids(j.expire(now=10.0)) == ["v0", "u4"]  # d's first, due at 10.0 too


def test_a_late_or_dead_lettered_audio_part_also_ends_the_short_wait() -> None:
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    for k in range(3):
        j.add("c", f"u{k}", k, "A", "text", "t", "h", now=2.0 * k)
        j.expire(now=2.0 * k + 1.0)
    r = j.add("c", "u2", 2, "A", "audio", "a", "h", now=6.0)  # late: acked, no event, but audio is sent
    assert r.late_parts == 1 and r.unlearned
    assert ids(j.add("c", "u3", 3, "A", "text", "t", "h", now=6.5)) == []
    assert ids(j.expire(now=7.0)) == []  # waits the whole join.wait_s again
    j.expire(now=7.5)
    j.add("c", "u4", 4, "A", "text", "t", "h", now=8.0)
    r = j.expire(now=9.0)  # it has sent audio: it waits for it from now on, however many go without
    assert ids(r) == ["u4"] and not r.learned
    assert ids(j.add("c", "u5", 5, "A", "text", "t", "h", now=10.0)) == [] and ids(j.expire(now=10.6)) == []
    for k in range(2):  # another call: two without audio, then a bad audio part
        j.add("d", f"v{k}", k, "A", "text", "t", "h", now=20.0 + 2.0 * k)
        j.expire(now=21.0 + 2.0 * k)
    r = j.reject("d", "v2", 2, "A", "audio", "does not decode", now=24.0)
    assert r.unlearned and ids(r) == []  # a bad audio part: the call sends audio, wait for the next ones
    assert ids(j.add("d", "v2", 2, "A", "text", "t", "h", now=24.1)) == ["v2"]  # its own audio came, dead-lettered
    assert ids(j.add("d", "v3", 3, "A", "text", "t", "h", now=24.2)) == [] and ids(j.expire(now=24.8)) == []


def test_a_call_that_declared_its_modalities_or_sent_audio_never_waits_less() -> None:
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    j.call_started("c", ["text", "audio"], now=0.0)
    j.add("d", "v0", 0, "A", "text", "t", "h", now=0.0)
    j.add("d", "v0", 0, "A", "audio", "a", "h", now=0.1)  # d has sent audio once
    for k in range(4):
        t = 1.0 + 2.0 * k
        j.add("c", f"u{k}", k, "A", "text", "t", "h", now=t)
        j.add("d", f"v{k + 1}", k + 1, "A", "text", "t", "h", now=t)
        assert ids(j.expire(now=t + 0.9)) == []
        r = j.expire(now=t + 1.0)
        assert sorted(ids(r)) == [f"u{k}", f"v{k + 1}"] and not r.learned
    # a call that started without modalities learns as one without 'started'
    j.call_started("e", None, now=10.0)
    for k in range(3):
        j.add("e", f"w{k}", k, "A", "text", "t", "h", now=10.0 + 2 * k)
        j.expire(now=11.0 + 2 * k)
    j.add("e", "w3", 3, "A", "text", "t", "h", now=20.0)
    assert ids(j.expire(now=20.5)) == ["w3"]
    # learn_after=0: never
    k0 = Joiner(wait_s=1.0, default_modalities=("text", "audio"), learn_after=0)
    for k in range(4):
        k0.add("f", f"x{k}", k, "A", "text", "t", "h", now=2.0 * k)
        assert ids(k0.expire(now=2.0 * k + 0.9)) == [] and ids(k0.expire(now=2.0 * k + 1.0)) == [f"x{k}"]


def test_what_a_call_declared_and_sent_holds_through_a_close_and_a_reopen() -> None:
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    j.add("c", "u0", 0, "A", "text", "t", "h", now=0.0)
    j.add("c", "u0", 0, "A", "audio", "a", "h", now=0.1)  # it sends audio
    j.call_ended("c", now=0.2, ts=0.2)
    assert j.expire(now=1.2).ended_calls == ["c"]
    for k in range(1, 4):  # reopened by parts sent in time (no record times: joined): still a call with audio
        j.add("c", f"u{k}", k, "A", "text", "t", "h", now=2.0 * k)
        r = j.expire(now=2.0 * k + 1.0)
        assert ids(r) == [f"u{k}"] and not r.learned


def test_a_short_wait_holds_while_the_audio_topic_is_read_behind() -> None:
    behind = {"audio": True}
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"), behind=lambda m, p, t: behind.get(m, False))
    for k in range(2):
        behind["audio"] = False
        j.add("c", f"u{k}", k, "A", "text", "t", "h", now=2.0 * k, ts=2.0 * k)
        j.expire(now=2.0 * k + 1.0)
    behind["audio"] = True  # a backlog on the audio topic: wait as any utterance would
    j.add("c", "u2", 2, "A", "text", "t", "h", now=4.0, ts=4.0)
    assert ids(j.expire(now=4.5)) == [] and ids(j.expire(now=6.0)) == []
    r = j.add("c", "u2", 2, "A", "audio", "a", "h", now=6.1, ts=4.1)
    assert ids(r) == ["u2"] and r.ready[0].modalities == ("text", "audio")


def test_a_call_that_learnt_to_wait_less_still_does_when_a_late_part_reopens_it() -> None:
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    for k in range(2):
        j.add("c", f"u{k}", k, "A", "text", "t", "h", now=2.0 * k)
        j.expire(now=2.0 * k + 1.0)
    j.call_ended("c", now=4.0)
    assert j.expire(now=5.0).ended_calls == ["c"]
    j.add("c", "u2", 2, "A", "text", "t", "h", now=6.0)  # no record times: joined, reopening the call
    assert ids(j.expire(now=6.5)) == ["u2"]


def test_a_speaker_who_never_sends_audio_while_the_other_does_is_learnt_apart() -> None:
    """Found by a newcomer: a call that declared text and audio, the customer's leg recorded and
    not the agent's: every agent utterance waited join.wait_s (2 s) for audio and held the
    customer's complete utterances behind it. Now, after learn_after of them, the agent's wait
    UNSENT_WAIT_S (longer while the audio topic is read behind, as any wait)."""
    behind = {"audio": False}
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"), behind=lambda m, p, t: behind.get(m, False))
    j.call_started("c", ["text", "audio"], now=0.0)
    t = 0.0
    for k in range(2):  # the customer with audio, the agent without: the agent's wait in full
        j.add("c", f"c{k}", 2 * k, "customer", "text", "t", "h", now=t, ts=t)
        assert ids(j.add("c", f"c{k}", 2 * k, "customer", "audio", "a", "h", now=t + 0.1, ts=t + 0.1)) == [f"c{k}"]
        j.add("c", f"a{k}", 2 * k + 1, "agent", "text", "t", "h", now=t + 1, ts=t + 1)
        assert ids(j.expire(now=t + 2.9)) == []
        r = j.expire(now=t + 3.0)
        assert ids(r) == [f"a{k}"] and r.ready[0].not_waited == ()
        t += 4.0
    assert len(r.learned) == 1 and "speaker 'agent' has sent no audio part in 2 utterances" in r.learned[0]
    j.add("c", "a2", 5, "agent", "text", "t", "h", now=t, ts=t)
    assert ids(j.expire(now=t + 0.4)) == []
    r = j.expire(now=t + 0.5)
    assert ids(r) == ["a2"] and r.ready[0].not_waited == ("audio",) and r.ready[0].expected == ("text", "audio")
    behind["audio"] = True  # a backlog on the audio topic: the agent's next line waits for it as any would
    j.add("c", "a3", 6, "agent", "text", "t", "h", now=t + 1, ts=t + 1)
    assert ids(j.expire(now=t + 1.5)) == [] and ids(j.expire(now=t + 4.0)) == []
    r = j.add("c", "a3", 6, "agent", "audio", "a", "h", now=t + 4.1, ts=t + 1.1)  # sent in time, read late: joined
    assert ids(r) == ["a3"] and r.ready[0].modalities == ("text", "audio")
    assert r.unlearned and "a audio part of speaker 'agent' came" in r.unlearned[0]  # and it waits again
    behind["audio"] = False
    t += 6.0
    j.add("c", "a5", 8, "agent", "text", "t", "h", now=t, ts=t)
    assert ids(j.expire(now=t + 1.9)) == [] and ids(j.expire(now=t + 2.0)) == ["a5"]


def test_a_part_that_names_no_speaker_is_its_utterances_speakers() -> None:
    """Found in review: audio parts that name no speaker ("unknown", the schema's default) were
    never credited to the agent, who was learnt as sending no audio and then lost each clip that
    came more than 0.5 s after its transcript."""
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    j.call_started("c", ["text", "audio"], now=0.0)
    t = 0.0
    for k in range(4):  # both send audio, as "unknown"; the agent's two first lines have none
        j.add("c", f"c{k}", 2 * k, "customer", "text", "t", "h", now=t)
        j.add("c", f"c{k}", 2 * k, "unknown", "audio", "a", "h", now=t + 0.1)
        j.add("c", f"a{k}", 2 * k + 1, "agent", "text", "t", "h", now=t + 1)
        if k >= 2:  # its clip 0.8 s after its words
            r = j.add("c", f"a{k}", 2 * k + 1, "unknown", "audio", "a", "h", now=t + 1.8)
            assert ids(r) == [f"a{k}"] and r.ready[0].modalities == ("text", "audio") and not r.late_parts
        else:
            r = j.expire(now=t + 3.0)
            assert ids(r) == [f"a{k}"] and bool(r.learned) == (k == 1)  # learnt apart after these two...
        t += 4.0
    # its audio read first, naming nobody, is its own once its words name the agent
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    j.call_started("c", ["text", "audio"], now=0.0)
    for k in (10, 12):  # learnt apart
        j.add("c", f"c{k}", k, "customer", "text", "t", "h", now=t)
        j.add("c", f"c{k}", k, "customer", "audio", "a", "h", now=t + 0.1)
        j.add("c", f"a{k}", k + 1, "agent", "text", "t", "h", now=t + 1)
        r = j.expire(now=t + 3.0)
        t += 4.0
    assert r.learned
    j.add("c", "a14", 14, "unknown", "audio", "a", "h", now=t)
    r = j.add("c", "a14", 14, "agent", "text", "t", "h", now=t + 0.1)
    assert ids(r) == ["a14"] and r.unlearned
    j.add("c", "a15", 15, "agent", "text", "t", "h", now=t + 1)
    r = j.add("c", "a15", 15, "unknown", "audio", "a", "h", now=t + 1.8)  # waited for again: joined
    assert ids(r) == ["a15"] and r.ready[0].modalities == ("text", "audio")


def test_a_call_id_used_again_learns_its_speakers_afresh() -> None:
    """Found in review: a new call under an id (a 'started' after the old call closed) kept what the
    old call's speakers had been learnt not to send."""
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    j.call_started("c", ["text", "audio"], now=0.0)
    j.add("c", "c0", 0, "customer", "text", "t", "h", now=0.0)
    j.add("c", "c0", 0, "customer", "audio", "a", "h", now=0.1)
    for k in range(2):
        j.add("c", f"a{k}", k + 1, "agent", "text", "t", "h", now=2.0 * k + 1)
        r = j.expire(now=2.0 * k + 2.0)
    assert r.learned
    j.call_ended("c", now=5.0)
    assert j.expire(now=6.0).ended_calls == ["c"]
    j.add("c", "a8", 8, "agent", "text", "t", "h", now=7.0)  # read late: reopens it, as it was (learnt)
    assert ids(j.expire(now=7.5)) == ["a8"]
    j.call_started("c", ["text", "audio"], now=10.0, ts=10.0)  # then a new call under the id
    j.add("c", "n0", 0, "agent", "text", "t", "h", now=10.1)
    assert ids(j.expire(now=10.7)) == []  # waits join.wait_s, not 0.5 s
    assert ids(j.add("c", "n0", 0, "agent", "audio", "a", "h", now=10.9)) == ["n0"]


def test_a_speaker_is_not_learnt_apart_where_nobody_in_the_call_sent_the_modality() -> None:
    """A declared call whose audio never comes from anyone waits for it as declared (call-level
    learning is for calls that did not say what they send)."""
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"))
    j.call_started("c", ("text", "audio"), now=0.0)
    for k in range(4):
        j.add("c", f"u{k}", k, "agent", "text", "t", "h", now=2.0 * k)
        assert ids(j.expire(now=2.0 * k + 0.9)) == []
        r = j.expire(now=2.0 * k + 1.0)
        assert ids(r) == [f"u{k}"] and not r.learned


def test_the_decoded_audio_waiting_for_parts_is_counted_until_its_utterance_goes() -> None:
    """join.max_held_audio_s: the backpressure counts the voices held, not only the utterances."""
    from streams.validate import Payload

    def wave(seconds: float) -> Payload:
        return Payload("wave", np.zeros(int(seconds * 16000), np.float32))

    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    j.add("c", "u0", 0, "A", "audio", wave(3.0), "h", now=0.0)
    j.add("c", "u1", 1, "A", "audio", wave(2.0), "h", now=0.0)
    j.add("d", "v0", 0, "A", "audio", wave(4.0), "h", now=0.0, partition=1)
    j.add("e", "w0", 0, "A", "audio", wave(1.0), "h", now=0.0, partition=2)
    j.add("e", "w1", 1, "A", "text", "hello", "h", now=0.0, partition=2)  # text holds nothing counted
    assert j.held_audio_s == 10.0
    assert ids(j.add("c", "u0", 0, "A", "text", "t0", "h", now=0.5)) == ["u0"]  # released
    assert j.held_audio_s == 7.0
    j.forget({1})  # a revoke drops what it held
    assert j.held_audio_s == 3.0
    j.call_ended("e", now=0.6)
    j.expire(now=10.0)  # u1 times out; e closes
    assert j.held_audio_s == 0.0 and j.open_utterances == 0


def test_calls_that_labelled_nothing_leave_nothing_behind_once_closed_or_idle() -> None:
    """Every 'ended' of a call never started, and every 'started' alone gone idle, left an empty
    entry in the closed calls' labelled ids for the life of the process (a review)."""
    j = Joiner(wait_s=2.0, default_modalities=("text",), idle_s=10.0)
    for i in range(500):
        j.call_ended(f"never-{i}", now=0.0)
        j.call_started(f"quiet-{i}", ["text"], now=0.0)
    j.add("c", "u1", 0, "a", "text", "hi", "h", now=0.0)
    j.call_ended("c", now=0.0)
    assert len(j.expire(now=100.0).ended_calls) == 501
    assert list(j._closed_ids) == ["c"]  # the one call that labelled something


def test_an_ended_sent_again_while_the_close_waits_does_not_put_the_close_off() -> None:
    """A producer retrying 'ended' every second kept its call from ever closing (a review)."""
    j = Joiner(wait_s=2.0, default_modalities=("text",))
    j.add("c", "u1", 0, "a", "text", "hi", "h", now=0.0)
    closed_at = None
    for i in range(10):  # every half second, from 0 to 4.5 s
        t = i / 2
        j.call_ended("c", now=t, ts=100.0 + t)
        if j.expire(now=t + 0.25).ended_calls and closed_at is None:
            closed_at, ended_ts = t + 0.25, j._ended["c"].ended_ts
    assert closed_at == 2.25 and ended_ts == 100.0  # end_wait_s after the first, with its record time


def test_an_ended_after_the_quiet_stand_in_gives_the_call_its_end_time() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("text",))
    j.add("c", "u1", 0, "a", "text", "hi", "h", now=0.0)
    j.call_ended("c", now=0.0, quiet=True)
    j.call_ended("c", now=1.0, ts=50.0)
    assert j.expire(now=2.5).ended_calls == ["c"]
    assert j._ended["c"].ended_ts == 50.0 and not j._ended["c"].quiet_end


def test_a_call_numbered_backwards_does_not_keep_its_utterances_waiting_without_end(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each utterance of a producer that numbers a call backwards, missing its audio, held back every
    later-numbered one: none was released while new ones came (a review); past the per-call cap, the
    due ones go out of seq order."""
    monkeypatch.setattr(join, "MAX_PENDING_PER_CALL", 20)
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    released = 0
    for i in range(200):  # one every 0.5 s, seq 1000, 999, ...
        released += len(j.add("c", f"u{i}", 1000 - i, "a", "text", f"t{i}", "h", now=i / 2).ready)
        released += len(j.expire(now=i / 2).ready)
    assert j.open_utterances <= 21 and released >= 170


def test_a_call_naming_a_new_speaker_in_every_utterance_keeps_a_bounded_few() -> None:
    """Speakers are learnt apart (one leg recorded) up to MAX_SPEAKERS_PER_CALL; a producer naming
    each utterance's speaker afresh made each released utterance cost a pass over all of them."""
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"), learn_after=1)
    j.add("c", "a0", 0, "agent", "text", "hi", "h", now=0.0)
    j.add("c", "a0", 0, "agent", "audio", "a", "h", now=0.0)
    for i in range(1, 2001):
        j.add("c", f"u{i}", i, f"speaker-{i}", "text", f"t{i}", "h", now=float(i))
        j.expire(now=float(i) + 1.5)
    call = j._calls["c"]
    assert len(call.heard_by) == join.MAX_SPEAKERS_PER_CALL and len(call.skip_by) < join.MAX_SPEAKERS_PER_CALL
    assert call.skips("speaker-5") == ("audio",) and call.skips("speaker-1999") == ()  # learnt; past the cap: not


def test_a_transcript_slower_than_the_wait_after_its_dead_lettered_audio_is_labelled() -> None:
    """An operator's trial: audio dead-lettered, its transcript 3 s later. The utterance, released with
    nothing usable, was marked labelled: the transcript was acked as late and no event ever came."""
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    r = j.reject("c", "u0", 0, "A", "audio", "dead-lettered: undecodable_audio", now=0.0, handle="bad")
    r.extend(j.expire(now=2.5))
    assert r.ready == [] and r.ack_now == ["bad"]
    late = j.add("c", "u0", 0, "A", "text", "hello", "t", now=3.0)
    assert late.late_parts == 0 and [u.utterance_id for u in late.ready] == ["u0"]  # not waiting for audio again
    assert late.ready[0].ignored == {"audio": "dead-lettered: undecodable_audio"}
    # the bad part sent again is acked at once, as for any utterance done with
    j.reject("c", "u1", 1, "A", "audio", "dead-lettered: undecodable_audio", now=4.0, handle="bad2", ts=4.0)
    assert j.expire(now=6.5).ack_now == ["bad2"]
    assert j.reject("c", "u1", 1, "A", "audio", "dead-lettered: x", now=7.0, handle="bad3").ack_now == ["bad3"]
    # a part of the id's next call, sent after the 'ended' and read before its 'started', waits for it,
    # as for a labelled utterance (it is not taken into the call that is closing)
    j.call_ended("c", now=8.0, ts=8.0)
    assert j.sent_after_end("c", "u1", "text", 9.0)
    j.expire(now=20.0)
    j.call_started("c", ["text", "audio"], now=21.0)  # the id used again: the next call's u1 starts afresh
    assert j.add("c", "u1", 0, "A", "text", "again", "t2", now=21.0).ready == []  # waits for its audio


def test_an_utterance_set_aside_is_forgotten_with_its_partition() -> None:
    j = Joiner(wait_s=2.0, default_modalities=("text", "audio"))
    j.reject("c", "u0", 0, "A", "audio", "dead-lettered: undecodable_audio", now=0.0, partition=3, handle="bad")
    j.expire(now=2.5)
    j.forget({3})
    assert not j._aside and ("c", "u0") not in j._done
    assert j.add("c", "u0", 0, "A", "text", "hello", "t", now=3.0, partition=3).ready == []  # waits for its audio


def test_a_part_reaching_an_utterance_held_with_nothing_usable_is_not_late() -> None:
    """The worker holds an utterance past its wait while a topic is read behind: a transcript sent 3 s
    after its dead-lettered audio was 'sent late' and acked, though nothing had been labelled."""
    j = Joiner(wait_s=1.0, default_modalities=("text", "audio"), behind=lambda m, p, t: m == "text")
    j.reject("c", "u0", 0, "A", "audio", "dead-lettered: undecodable_audio", now=0.0, ts=100.0, handle="bad")
    assert j.expire(now=3.0).ready == []  # held: the text topic is read behind
    r = j.add("c", "u0", 0, "A", "text", "hello", "t", now=3.0, ts=103.0)
    assert r.late_parts == 0 and [u.utterance_id for u in r.ready] == ["u0"]
    assert r.ready[0].ignored == {"audio": "dead-lettered: undecodable_audio"}
