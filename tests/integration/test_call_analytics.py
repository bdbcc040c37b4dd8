"""Call-level analytics (streams/analytics.py) on the real Redis server: alerts raised, updated and
cleared, revised events replacing provisional ones, replays and restarts changing nothing, and a
summary when the call ends. The worker's publishing of it on the real broker is in test_stream_e2e."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from streams.analytics import CallAnalytics
from streams.rules import load_rules
from streams.schemas import AlertEvent, CallReport, EmotionEvent, ModelRef, Timings

pytestmark = pytest.mark.integration
LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")


def event(call: str, seq: int, speaker: str, label: str, p: float, revision: int = 0) -> EmotionEvent:
    probs = {k: (p if k == label else (1 - p) / (len(LABELS) - 1)) for k in LABELS}
    s = -p if label in ("anger", "disgust", "fear", "sadness") else (p if label == "joy" else 0.0)
    return EmotionEvent(
        event_id=f"{call}:u{seq}:r{revision}:x",
        call_id=call,
        utterance_id=f"u{seq}",
        seq=seq,
        revision=revision,
        speaker=speaker,
        label=label,
        confidence=p,
        probabilities=probs,
        sentiment=s,
        sentiment_label="negative" if s < -0.1 else ("positive" if s > 0.1 else "neutral"),
        weights={"text": 1.0, "audio": 0.0, "video": 0.0},
        modalities_present=["text"],
        model=ModelRef(name="m", version="1", runtime="onnxruntime"),
        context_size=1,
        timings=Timings(join_s=0, queue_s=0, engine_s=0, end_to_end_s=0),
        produced_at=0.0,
    )


async def step(a: CallAnalytics, events: list[EmotionEvent]) -> list:  # type: ignore[type-arg]
    """What the worker does: observe, publish (here: return), then commit."""
    update = await a.observe(events)
    await a.commit(update)
    return update.out


def alerts(out: list) -> list[AlertEvent]:  # type: ignore[type-arg]
    return [o.message for o in out if isinstance(o.message, AlertEvent)]


def reports(out: list) -> list[CallReport]:  # type: ignore[type-arg]
    return [o.message for o in out if isinstance(o.message, CallReport)]


def test_an_escalating_call_raises_updates_clears_and_summarises(services, unique) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        prefix = f"test:{unique}:"
        make = lambda: CallAnalytics(client, prefix, ttl_s=60, book=load_rules(), recent_turns=3)  # noqa: E731
        a = make()
        calm = [event("c", 0, "agent", "neutral", 0.9), event("c", 1, "customer", "neutral", 0.7)]
        out = await step(a, calm)
        assert alerts(out) == [] and reports(out)[0].turns == 2 and reports(out)[0].open_alerts == []
        angry = [event("c", 2, "customer", "anger", 0.5), event("c", 3, "agent", "neutral", 0.8),
                 event("c", 4, "customer", "anger", 0.7), event("c", 5, "customer", "anger", 0.9)]  # fmt: skip
        out = await step(a, angry)
        # judged turn by turn: each rule is raised at the turn it first holds, then updated as it goes on
        raised = {x.rule: x for x in alerts(out) if x.state == "raised"}
        latest = {x.rule: x for x in alerts(out)}
        assert set(raised) == {"customer-anger-rising", "customer-negative-streak", "customer-sentiment-low"}
        assert {x.state for x in alerts(out)} <= {"raised", "updated"}
        rising = raised["customer-anger-rising"]
        assert rising.state == "raised" and rising.severity == "critical"
        assert [e.utterance_id for e in latest["customer-anger-rising"].evidence] == ["u2", "u4", "u5"]
        assert rising.alert_id == latest["customer-anger-rising"].alert_id == "c:customer-anger-rising:1"
        report = reports(out)[0]
        assert report.open_alerts == sorted(x.alert_id for x in raised.values())
        customer = next(s for s in report.speakers if s.role == "customer")
        assert customer.turns == 4 and customer.talk_share == pytest.approx(4 / 6, abs=1e-3)
        assert customer.recent["anger"] == pytest.approx((0.5 + 0.7 + 0.9) / 3, abs=1e-3)

        # a replay of the same events (a worker restarted before acking them) changes nothing
        b = make()  # a new worker: the state is in Redis
        assert alerts(await step(b, angry)) == []

        # a revised event replaces its provisional one: u5 is calmer, the rise is broken; the shipped
        # rule waits for three new customer turns without a rise before it clears (clear_after = 3),
        # and a revision is no new turn
        out = await step(b, [event("c", 5, "customer", "anger", 0.6, revision=1)])
        assert "customer-anger-rising" not in {x.rule for x in alerts(out)}
        assert rising.alert_id in reports(out)[0].open_alerts
        assert reports(out)[0].turns == 6  # replaced, not counted twice
        assert alerts(await step(b, [event("c", 5, "customer", "anger", 0.9, revision=0)])) == []  # an older revision

        # the streak goes on: its evidence moves, the same alert is updated; no rise (one turn), and a sad
        # turn is a step toward clearing the rising alert (a disgusted one, still at its height, is not)
        out = await step(b, [event("c", 6, "customer", "sadness", 0.8)])
        updated = {x.rule: x for x in alerts(out)}
        assert updated["customer-negative-streak"].state == "updated"
        assert updated["customer-negative-streak"].alert_id == raised["customer-negative-streak"].alert_id
        assert [e.utterance_id for e in updated["customer-negative-streak"].evidence] == ["u4", "u5", "u6"]
        assert "customer-anger-rising" not in updated and rising.alert_id in reports(out)[0].open_alerts

        # an unsure sad turn breaks the streak, which waits for four turns without it (clear_after 4:
        # one calmer turn between angry ones is one alert); no rise (two turns)
        out = await step(b, [event("c", 7, "customer", "sadness", 0.3)])
        assert [x for x in alerts(out) if x.state == "cleared"] == []

        # another worker (the counts are in Redis): the third customer turn without a rise clears it
        b = make()
        out = await step(b, [event("c", 8, "customer", "fear", 0.6)])
        cleared = {x.rule: x for x in alerts(out) if x.state == "cleared"}
        assert set(cleared) == {"customer-anger-rising"} and cleared["customer-anger-rising"].reason == "recovered"
        assert cleared["customer-anger-rising"].alert_id == rising.alert_id
        open_now = {raised[r].alert_id for r in ("customer-negative-streak", "customer-sentiment-low")}
        assert set(reports(out)[0].open_alerts) == open_now  # the streak's two misses of four; still below -0.5

        # the call ends: what is open clears, the summary is final, the state is forgotten; its final
        # revision moves the streak's evidence, but no running report comes before the summary
        out = (await b.end("c", [event("c", 8, "customer", "anger", 0.8, revision=1)])).out
        ends = [x for x in alerts(out) if x.state == "cleared"]
        assert ends and all(x.reason == "call ended" for x in ends)
        (summary,) = reports(out)
        assert summary.final and summary.turns == 9 and summary.open_alerts == [] and summary.ended_by == "ended"
        assert set(summary.alerts_raised) == set(raised)
        assert len({x.event_id for x in alerts(out)}) == len(alerts(out))
        await b.forget("c")
        assert not await client.keys(f"{prefix}*")
        assert (await b.end("c")).out == []  # an 'ended' replayed after the summary went out: nothing again
        await client.aclose()

    asyncio.run(scenario())


def test_a_call_ended_without_its_ended_says_how_in_its_summary_and_its_alerts_clear_reasons(services, unique) -> None:  # type: ignore[no-untyped-def]
    """join.idle_end_s and a 'started' before any 'ended' end a call too: the summary's ended_by and
    the cleared alerts' reason say which (a newcomer could not tell a call started again from one
    that sent its 'ended')."""

    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        a = CallAnalytics(client, f"test:{unique}:", ttl_s=60, book=load_rules())
        for call, ended_by, reason in [("i", "idle", "call idle"), ("s", "started", "call started again")]:
            angry = [event(call, k, "customer", "anger", 0.5 + 0.2 * k) for k in range(3)]
            assert any(x.state == "raised" for x in alerts(await step(a, angry)))
            out = (await a.end(call, ended_by=ended_by)).out
            assert alerts(out) and {x.reason for x in alerts(out)} == {reason}
            assert [(r.final, r.ended_by) for r in reports(out)] == [(True, ended_by)]
        await client.aclose()

    asyncio.run(scenario())


def test_calls_are_kept_apart_and_bounded(services, unique) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        a = CallAnalytics(client, f"test:{unique}:", ttl_s=60, book=load_rules(), max_turns=10)
        out = await step(a, [event("x", i, "customer", "anger", 0.9) for i in range(3)]
                              + [event("y", i, "customer", "joy", 0.9) for i in range(12)])  # fmt: skip
        assert {x.call_id for x in alerts(out)} == {"x"}
        by_call = {r.call_id: r for r in reports(out)}
        assert by_call["y"].turns == 10 and by_call["x"].turns == 3  # y's oldest dropped
        assert 0 < await client.pttl(f"test:{unique}:turns#x") <= 60_000
        await client.aclose()

    asyncio.run(scenario())


def test_a_failed_publish_sends_the_same_messages_again_and_a_re_raised_alert_is_a_new_one(services, unique) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        a = CallAnalytics(client, f"test:{unique}:", ttl_s=60, book=load_rules(), max_turns=12)
        angry = [event("c", i, "customer", "anger", 0.5 + 0.1 * i) for i in range(3)]
        first = await a.observe(angry)  # published... and the publish failed: no commit, the batch is retried
        again = await a.observe(angry)
        assert [o.event_id for o in first.out] == [o.event_id for o in again.out] and alerts(first.out)
        await a.commit(again)
        rising = next(x for x in alerts(again.out) if x.rule == "customer-anger-rising")
        # a revision changes the evidence's label: the alert is updated, with the revised turn
        out = await step(a, [event("c", 2, "customer", "anger", 0.75, revision=1)])
        assert not [x for x in alerts(out) if x.rule == "customer-anger-rising"]  # the same label: no news
        out = await step(a, [event("c", 2, "customer", "disgust", 0.8, revision=2)])
        updated = next(x for x in alerts(out) if x.rule == "customer-anger-rising")
        assert updated.state == "updated" and updated.evidence[-1].label == "disgust"
        cleared = await step(a, [event("c", 3, "customer", "joy", 0.9), event("c", 4, "customer", "joy", 0.9),
                                 event("c", 5, "customer", "joy", 0.9)])  # fmt: skip
        assert {x.rule for x in alerts(cleared) if x.state == "cleared"} >= {"customer-anger-rising"}
        out = await step(a, [event("c", 6 + i, "customer", "anger", 0.6 + 0.1 * i) for i in range(3)])
        again_rising = next(x for x in alerts(out) if x.rule == "customer-anger-rising")
        assert again_rising.state == "raised" and again_rising.alert_id == "c:customer-anger-rising:2"
        assert again_rising.alert_id != rising.alert_id
        # past max_turns, every report is still a new event_id
        ids = []
        for i in range(9, 20):
            ids += [r.event_id for r in reports(await step(a, [event("c", i, "customer", "neutral", 0.9)]))]
        assert len(ids) == len(set(ids)) == 11
        await client.aclose()

    asyncio.run(scenario())


def test_a_worker_reads_a_call_back_only_when_another_stored_it_or_it_expired(services, unique) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        prefix = f"test:{unique}:"
        a = CallAnalytics(client, prefix, ttl_s=60, book=load_rules())
        b = CallAnalytics(client, prefix, ttl_s=60, book=load_rules())  # another worker of the group
        await step(a, [event("m", 0, "customer", "neutral", 0.9)])
        await step(a, [event("m", 1, "customer", "neutral", 0.9)])
        assert a.reads == 1  # the first batch of the call: one read (nothing there yet)
        assert reports(await step(a, [event("m", 2, "customer", "neutral", 0.9)]))[0].turns == 3
        assert a.reads == 1  # its own stores: nothing read back
        # the call moves to b (a rebalance), which adds two turns, and back to a
        assert reports(await step(b, [event("m", 3, "customer", "anger", 0.9)]))[0].turns == 4
        assert reports(await step(b, [event("m", 4, "customer", "anger", 0.9)]))[0].turns == 5
        out = await step(a, [event("m", 5, "customer", "anger", 0.95)])
        assert a.reads == 2 and reports(out)[0].turns == 6  # b's turns are there
        assert "u3" in {e.utterance_id for x in alerts(out) for e in x.evidence}  # judged on b's turns too
        # the state expired (or was lost): a starts the call afresh instead of using its memory
        await client.delete(*a._keys("m"))
        assert reports(await step(a, [event("m", 6, "customer", "joy", 0.9)]))[0].turns == 1
        # a failed publish (no commit) leaves a's memory as stored: the retry publishes the same
        first = await a.observe([event("m", 7, "customer", "joy", 0.9)])
        again = await a.observe([event("m", 7, "customer", "joy", 0.9)])
        assert [o.event_id for o in first.out] == [o.event_id for o in again.out]
        assert reports(again.out)[0].turns == 2
        await a.forget("m")
        assert "m" not in a.cache and not await client.exists(*a._keys("m"))
        # the memory is bounded by the turns it holds, least recently stored calls out first
        small = CallAnalytics(client, prefix, ttl_s=60, book=load_rules(), max_cached_turns=5)
        for call in ("p", "q", "r"):
            await step(small, [event(call, i, "customer", "neutral", 0.9) for i in range(2)])
        assert list(small.cache) == ["q", "r"] and small.cached_turns == 4
        await step(small, [event("q", 2, "customer", "neutral", 0.9)])  # q: 3 turns, r: 2
        assert list(small.cache) == ["r", "q"] and small.cached_turns == 5
        await client.aclose()

    asyncio.run(scenario())


def test_a_call_stored_by_the_previous_version_carries_its_alerts_over(services, unique) -> None:  # type: ignore[no-untyped-def]
    """Before acall#, a call's open alerts and rule counts were hashes of their own: a call open
    across the upgrade keeps them (its alert is cleared under its id, its count goes on), and the
    old keys go with the first store."""

    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        prefix = f"test:{unique}:"
        old = {"alert_id": "v:customer-anger-rising:1", "evidence": ["u0@anger", "u1@anger", "u2@anger"]}
        await client.hset(f"{prefix}alerts#v", mapping={"customer-anger-rising": json.dumps(old)})
        await client.hset(f"{prefix}raised#v", mapping={"customer-anger-rising": 1})
        await client.set(f"{prefix}aver#v", "0123456789abcdef")
        a = CallAnalytics(client, prefix, ttl_s=60, book=load_rules())
        out = await step(a, [event("v", 3 + i, "customer", "joy", 0.9) for i in range(3)])
        cleared = [x for x in alerts(out) if x.state == "cleared"]  # after three calm turns (clear_after = 3)
        assert [x.alert_id for x in cleared] == ["v:customer-anger-rising:1"]
        assert not await client.exists(f"{prefix}alerts#v", f"{prefix}raised#v", f"{prefix}aver#v")
        again = await step(a, [event("v", 6 + i, "customer", "anger", 0.6 + 0.1 * i) for i in range(3)])
        assert "v:customer-anger-rising:2" in {x.alert_id for x in alerts(again)}  # the count went on
        await client.aclose()

    asyncio.run(scenario())


def test_a_batch_of_thousands_of_turns_is_stored_and_trimmed_in_one_script(services, unique) -> None:  # type: ignore[no-untyped-def]
    """The store script writes and deletes turns in chunks (Lua's unpack() overflows past some
    thousands of values): a batch of 4,500 turns (9,000 values) is written whole, then trimmed to max_turns."""

    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        prefix = f"test:{unique}:"
        a = CallAnalytics(client, prefix, ttl_s=60, book=load_rules(), max_turns=5000)
        await step(a, [event("long", i, "customer", "neutral", 0.9) for i in range(4500)])
        turns_key, meta_key = a._keys("long")
        assert await client.hlen(turns_key) == 4500 and 0 < await client.pttl(turns_key) <= 60_000
        assert json.loads(await client.get(meta_key))["token"] == a.cache["long"][0]
        b = CallAnalytics(client, prefix, ttl_s=60, book=load_rules(), max_turns=100)  # read back, then trimmed
        out = await step(b, [event("long", 4500, "customer", "neutral", 0.9)])
        assert reports(out)[0].turns == 100 and await client.hlen(turns_key) == 100
        assert b.reads == 1
        await client.aclose()

    asyncio.run(scenario())


def test_an_escalation_and_its_recovery_inside_one_batch_still_raise_and_clear(services, unique) -> None:  # type: ignore[no-untyped-def]
    """A busy worker labels a burst of a call's turns in one batch: the rules are judged turn by turn,
    so the escalation is raised and cleared, not missed because the batch ends after the recovery
    (the client test once passed only by a borderline sentiment at the batch's end)."""

    async def run() -> list:  # type: ignore[type-arg]
        client = aioredis.from_url(services.redis_url)
        try:
            a = CallAnalytics(client, f"ca{unique}:", ttl_s=60, book=load_rules())
            burst = [event("burst", 0, "customer", "neutral", 0.8)]
            burst += [event("burst", i, "customer", "anger", 0.9) for i in (1, 2, 3)]
            burst += [event("burst", i, "customer", "neutral", 0.9) for i in (4, 5, 6, 7)]
            return await step(a, burst)
        finally:
            await client.aclose()

    got = alerts(asyncio.run(run()))
    states = {(a.rule, a.state) for a in got}
    assert ("customer-negative-streak", "raised") in states and ("customer-negative-streak", "cleared") in states, got
