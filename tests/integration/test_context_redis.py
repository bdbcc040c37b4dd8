"""The context window against the real Redis server started by deploy/local/redis.sh."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis.asyncio as aioredis

from streams.context import ContextItem, ContextStore, PreviousStart

pytestmark = pytest.mark.integration


def item(i: int, speaker: str = "A") -> ContextItem:
    return ContextItem(f"u{i}", i, speaker, {"text": np.full(4, i, dtype=np.float32)})


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_window_is_bounded_ordered_deduplicated_and_released(services, unique) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        store = ContextStore(client, f"test:{unique}:", window=3, ttl_s=60)
        await store.append({"c1": [item(0), item(1)], "c2": [item(0, "B")]})
        await store.append({"c1": [item(1), item(2), item(3)]})  # u1 again: a replay, skipped
        got = await store.fetch(["c1", "c2", "nobody"])
        assert [i.utterance_id for i in got["c1"]] == ["u1", "u2", "u3"]
        assert got["c2"][0].speaker == "B" and got["nobody"] == []
        np.testing.assert_array_equal(got["c1"][2].features["text"], np.full(4, 3, dtype=np.float32))
        ttl = await client.pttl(store.key("c1"))
        assert 0 < ttl <= 60_000
        await store.release(["c1"])
        assert (await store.fetch(["c1"]))["c1"] == []
        await client.aclose()

    run(scenario())


def test_ttl_slides_and_expires_idle_calls(services, unique) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        store = ContextStore(client, f"test:{unique}:", window=5, ttl_s=0.4)
        await store.append({"c": [item(0)]})
        for _ in range(3):  # reads keep it alive past its first TTL
            await asyncio.sleep(0.2)
            assert len((await store.fetch(["c"]))["c"]) == 1
        await asyncio.sleep(0.6)
        assert (await store.fetch(["c"]))["c"] == []
        await client.aclose()

    run(scenario())


def test_a_calls_declaration_is_shared_through_redis_and_released_with_it(services, unique) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        store = ContextStore(client, f"test:{unique}:", window=3, ttl_s=60)
        other = ContextStore(aioredis.from_url(services.redis_url), f"test:{unique}:", window=3, ttl_s=60)
        assert await other.declared("c") is None
        assert not await store.started("c", ["text", "video"], offset=0)  # no previous call of that id
        assert await other.declared("c") == ["text", "video"]  # another worker sees it
        assert 0 < await client.pttl(store.declaration_key("c")) <= 60_000
        await store.append({"c": [item(0)]})
        await store.release(["c"])
        assert await other.declared("c") is None and (await other.fetch(["c"]))["c"] == []
        await other.client.aclose()
        await client.aclose()

    run(scenario())


def test_a_call_id_started_again_is_a_new_call_even_after_its_state_expired(services, unique) -> None:  # type: ignore[no-untyped-def]
    """Its last 'started' is kept for ``started_ttl_s``, past the call's state: a call id used again
    the next day (its close mark expired with the TTL) used to get its previous call's ids."""

    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        store = ContextStore(client, f"test:{unique}:", window=3, ttl_s=0.3, started_ttl_s=60)
        assert await store.previous_start("c") == PreviousStart(None, "", None, 0)
        assert not await store.started("c", ["text"], offset=10)  # the first call under the id
        await store.append({"c": [item(0)]})
        assert await store.previous_start("c") == PreviousStart(10, "", None, 1)  # started, spoke, not closed
        assert not await store.started("c", ["text"], offset=10)  # read again after a crash: nothing
        assert await store.closed_before(["c", "d"]) == set()
        await store.release(["c"], {"c": 12})
        assert await store.closed_before(["c", "d"]) == {"c"}  # (a part after its 'ended' reopens it: no quiet end)
        await asyncio.sleep(0.5)  # the call's state, its close mark included, expired
        assert await store.previous_start("c") == PreviousStart(10, "", 12, 0)  # its started mark says it ended
        assert not await client.exists(store.closed_key("c"))
        assert await store.started("c", ["text"], offset=40)  # a new call: ids of its own
        assert (await store.generations(["c"]))["c"] == "40"
        assert not await store.started("c", ["text"], offset=40)  # read again: nothing
        assert not await store.started("c", ["text"], offset=10)  # the first call's, read again: nothing
        assert (await store.generations(["c"]))["c"] == "40"
        assert await store.started("c", ["text"], offset=45, identity="45.5")  # a later one: a new call again
        assert not await store.started("c", ["text"], offset=46, identity="45.5")  # the same message sent twice
        assert await store.previous_start("c") == PreviousStart(45, "45.5", None, 0)
        assert 50_000 < await client.pttl(store.started_key("c")) <= 60_000
        # a call that never sent 'ended', closed by the worker as if it came just before the next
        # 'started' (Worker._ends_unended): the close mark is that offset
        assert await store.previous_start("c") == PreviousStart(45, "45.5", None, 0)  # not ended
        await store.release(["c"], {"c": 69})
        assert 50_000 < await client.pttl(store.started_key("c")) <= 60_000  # the end written in, its TTL kept
        assert await store.started("c", None, offset=70) and (await store.generations(["c"]))["c"] == "70"
        await client.aclose()

    run(scenario())


def test_state_reads_window_labelled_ids_and_joins_in_one_round_trip(services, unique) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        store = ContextStore(client, f"test:{unique}:", window=2, ttl_s=60)
        await store.append({"c": [item(0), item(1), item(2)]})  # u0 trimmed from the window, still labelled
        await store.record_joins({"c": {"u2": "text+audio", "u3": "text"}})
        await store.started("c", ["text", "audio"], offset=0, identity="5.0")
        await client.pexpire(store.declaration_key("c"), 5_000)
        got = await store.state(["c", "nobody"])
        assert [i.utterance_id for i in got["c"].window] == ["u1", "u2"]
        assert got["c"].labelled == {"u0", "u1", "u2"}
        assert got["c"].joins == {"u2": "text+audio", "u3": "text"}
        assert got["nobody"].window == [] and got["nobody"].labelled == set() and got["nobody"].joins == {}
        assert await client.pttl(store.declaration_key("c")) > 5_000  # read refreshes the call's TTL
        # a batch asks only about its own utterances: a long call's sets are not read whole
        asked = await store.state(["c", "nobody", "quiet"], {"c": ["u0", "u3", "u9"], "nobody": ["u1"]})
        assert [i.utterance_id for i in asked["c"].window] == ["u1", "u2"]
        assert asked["c"].labelled == {"u0"} and asked["c"].joins == {"u3": "text"}
        assert asked["nobody"].labelled == set() and asked["nobody"].joins == {}
        assert asked["quiet"] == got["nobody"]  # nothing asked: the window only
        # the same 'started' again (a producer's retry: its own time) forgets nothing
        assert not await store.started("c", [], offset=1, identity="5.0")
        assert (await store.state(["c"]))["c"].labelled == {"u0", "u1", "u2"}
        # the call closed ('ended' at offset 7 of its control partition)
        await store.release(["c"], {"c": 7})
        assert (await store.state(["c"]))["c"].labelled == {"u0", "u1", "u2"}  # kept for replays until its TTL
        assert 0 < await client.pttl(store.closed_key("c")) <= 60_000
        assert not await store.started("c", ["video"], offset=3)  # its own 'started' read again (a crash): kept,
        assert await store.declared("c") is None  # and its declaration not brought back
        assert (await store.state(["c"]))["c"].labelled == {"u0", "u1", "u2"}
        await store.append({"c": [item(5)]})  # a part sent in time and read late reopened it
        # its id used again for a new call: what the old one left is forgotten
        assert got["c"].generation == "" and await store.generations(["c"]) == {"c": ""}  # its first call
        assert await store.started("c", ["text"], offset=9, identity="9.5") and await store.declared("c") == ["text"]
        again = await store.state(["c"])
        assert again["c"].labelled == set() and again["c"].joins == {} and again["c"].window == []
        # the new call's generation, the offset of its 'started': its messages' ids are its own
        assert again["c"].generation == "9" and await store.generations(["c", "nobody"]) == {"c": "9", "nobody": ""}
        assert not await store.started("c", ["text"], offset=12, identity="9.5")  # once (the same, sent again)
        assert (await store.state(["c"]))["c"].generation == "9"  # a 'started' read again changes nothing
        await store.release(["c"], {"c": 14})
        assert 0 < await client.pttl(store.generation_key("c")) <= 60_000  # kept with the labelled ids
        assert await store.started("c", [], offset=15)  # and a third call under the id
        assert (await store.state(["c"]))["c"].generation == "15"
        await client.aclose()

    run(scenario())


def test_a_window_read_again_is_decoded_once_and_cannot_be_changed(services, unique) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        store = ContextStore(client, f"test:{unique}:", window=3, ttl_s=60, max_decoded=4)
        await store.append({"c": [item(0), item(1)]})
        first = (await store.state(["c"]))["c"].window
        again = (await store.state(["c"]))["c"].window
        assert [a is b for a, b in zip(first, again, strict=True)] == [True, True] and len(store._decoded) == 2
        with pytest.raises(ValueError):
            again[0].features["text"][0] = 9.0  # shared with the next batch's read
        await store.append({"c": [item(2), item(3)]})  # the window moves on: u0 drops out
        moved = (await store.fetch(["c"]))["c"]
        assert [i.utterance_id for i in moved] == ["u1", "u2", "u3"] and moved[0] is first[1]
        np.testing.assert_array_equal(moved[2].features["text"], np.full(4, 3, dtype=np.float32))
        await store.append({"d": [item(5), item(6), item(7)]})
        await store.fetch(["d"])
        assert len(store._decoded) == 4  # bounded
        await client.aclose()

    run(scenario())


def test_appends_load_their_script_again_after_redis_forgot_it(services, unique) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        store = ContextStore(client, f"test:{unique}:", window=3, ttl_s=60)
        await store.append({"c": [item(0)]})
        await client.script_flush()  # as a restarted Redis: EVALSHA answers NOSCRIPT
        await store.append({"c": [item(1)], "d": [item(2)]})
        got = await store.fetch(["c", "d"])
        assert [i.utterance_id for i in got["c"]] == ["u0", "u1"] and [i.utterance_id for i in got["d"]] == ["u2"]
        await client.script_flush()  # the batch's read is a script too
        state = await store.state(["c", "d"], {"c": ["u1", "u7"]})
        assert state["c"].labelled == {"u1"} and [i.utterance_id for i in state["d"].window] == ["u2"]
        await client.aclose()

    run(scenario())


def test_the_append_script_reads_ids_of_every_allowed_character_and_of_items_it_cannot_parse_fast(
    services, unique
) -> None:  # type: ignore[no-untyped-def]
    """The script takes an item's id from the front of its JSON (not decoding the whole item);
    an item written another way (an older format) still counts by its decoded id."""

    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        store = ContextStore(client, f"test:{unique}:", window=5, ttl_s=60)
        odd = ContextItem("Az09._:@/-x", 0, "A", {"text": np.zeros(4, dtype=np.float32)})
        await client.rpush(store.key("c"), '{"q": 1, "u": "other", "s": "A", "f": {}}')  # id not first
        await store.append({"c": [odd, item(2)]})
        await store.append({"c": [odd, ContextItem("other", 1, "A", {}), item(2), item(3)]})  # all but u3 seen
        got = await store.fetch(["c"])
        assert [i.utterance_id for i in got["c"]] == ["other", "Az09._:@/-x", "u2", "u3"]
        await client.aclose()

    run(scenario())


def test_a_window_held_in_memory_is_what_redis_holds_whoever_appends(services, unique) -> None:  # type: ignore[no-untyped-def]
    """Two workers (stores) append to the same calls at random, with replays and trimming; every
    state() read equals what Redis holds, and a store reads a window back only when it has to."""
    import random

    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        prefix = f"test:{unique}:"
        a = ContextStore(client, prefix, window=4, ttl_s=60)
        b = ContextStore(aioredis.from_url(services.redis_url), prefix, window=4, ttl_s=60)
        rng = random.Random(7)
        seqs = {"c": 0, "d": 0}
        late: dict[str, list[ContextItem]] = {"c": [], "d": []}  # utterances held back, appended later
        for _ in range(80):
            store = a if rng.random() < 0.8 else b
            calls = rng.sample(["c", "d"], rng.randint(1, 2))
            await store.state(calls, {c: [] for c in calls})
            new: dict[str, list[ContextItem]] = {}
            for c in calls:
                n = rng.randint(1, 3)
                new[c] = [item(seqs[c] + k) for k in range(n)]
                if seqs[c] and rng.random() < 0.3:  # a replay of the last one appended: skipped
                    new[c].insert(0, item(seqs[c] - 1))
                if len(new[c]) > 1 and rng.random() < 0.2:  # one read late: it comes in a later batch
                    late[c].append(new[c].pop(rng.randrange(len(new[c]) - 1)))
                elif late[c] and rng.random() < 0.5:
                    new[c].append(late[c].pop(0))
                seqs[c] += n
            await store.append(new)
            truth = await a.fetch(["c", "d"])
            for s in (a, b):
                got = await s.state(["c", "d"], {"c": [], "d": []})
                assert {c: [i.utterance_id for i in v.window] for c, v in got.items()} == {
                    c: [i.utterance_id for i in v] for c, v in truth.items()
                }
        assert 0 < a.window_reads < 80  # read back after b's appends, not before every batch
        # alone, a store appending and reading does not read its windows back
        before = a.window_reads
        for k in range(5):
            await a.state(["c"], {"c": []})
            await a.append({"c": [item(1000 + k)]})
        assert a.window_reads == before
        # the window lost in Redis (expired, data loss): read back, empty
        await client.delete(a.key("c"), a.token_key("c"))
        assert (await a.state(["c"], {"c": []}))["c"].window == [] and a.window_reads == before + 1
        # another worker appends between this one's read and its append (a rebalance race): the
        # append tells, and the window is read back rather than held as this worker would have it
        await a.state(["d"], {"d": []})
        await b.state(["d"], {"d": []})
        await b.append({"d": [item(2000)]})
        await a.append({"d": [item(2001)]})
        assert [i.utterance_id for i in (await a.state(["d"], {"d": []}))["d"].window][-2:] == ["u2000", "u2001"]
        before = a.window_reads - 1
        # a rebalance: everything held is forgotten and read again
        a.forget_cached()
        assert [i.utterance_id for i in (await a.state(["d"], {"d": []}))["d"].window] == [
            i.utterance_id for i in (await a.fetch(["d"]))["d"]
        ] and a.window_reads == before + 2
        # a window an older version wrote (no token): read every time (an old worker may still append
        # to it) until this worker's append gives it a token; held from then on
        await client.rpush(a.key("e"), item(0).to_json())
        assert [i.utterance_id for i in (await a.state(["e"], {"e": []}))["e"].window] == ["u0"]
        await client.rpush(a.key("e"), item(1).to_json())  # an old worker's append
        assert [i.utterance_id for i in (await a.state(["e"], {"e": []}))["e"].window] == ["u0", "u1"]
        await a.append({"e": [item(2)]})
        for _ in range(2):
            assert [i.utterance_id for i in (await a.state(["e"], {"e": []}))["e"].window] == ["u0", "u1", "u2"]
        assert a.window_reads == before + 5
        await a.release(["e"])
        assert not await client.exists(a.token_key("e")) and (await a.state(["e"], {"e": []}))["e"].window == []
        await b.client.aclose()
        await client.aclose()

    run(scenario())


def test_the_calls_watched_for_going_quiet_are_kept_by_partition_and_left_at_release(services, unique) -> None:  # type: ignore[no-untyped-def]
    """join.idle_end_s: each batch stores when its calls last labelled something, by input partition;
    a worker asks a partition for the calls quiet since a time, the quietest first; a release (the
    call closed) or an untrack leaves the set, and the set expires with the TTL."""

    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        store = ContextStore(client, f"test:{unique}:", window=3, ttl_s=60)
        await store.touch({"a": (0, 1000.0), "b": (0, 1000.0), "c": (1, 1000.0)})
        await store.touch({"b": (0, 1010.0), "a": (0, 990.0)})  # b spoke again; an older part of a's read late
        await store.touch({"d": (0, 995.5)})
        assert await store.quiet(0, 1005.0) == [("d", 995.5), ("a", 1000.0)]
        assert [c for c, _ in await store.quiet(0, 1010.0)] == ["d", "a", "b"]
        assert await store.quiet(0, 1010.0, limit=1) == [("d", 995.5)] and await store.quiet(1, 1000.0) == [
            ("c", 1000.0)
        ]
        assert await store.quiet(2, 1e12) == []
        await store.release(["a"], {"a": 4}, {"a": 0})
        await store.untrack(0, ["d"])
        await store.touch({f"gone-{i}": (3, 900.0 + i) for i in range(250)} | {"kept": (3, 2000.0)})
        assert await store.forget_quiet(3, 1500.0) == 250  # however many, at once
        assert await store.quiet(3, 1e12) == [("kept", 2000.0)]
        assert await store.quiet(0, 1e12) == [("b", 1010.0)] and await store.quiet(1, 1e12) == [("c", 1000.0)]
        assert 0 < await client.pttl(store.active_key(0)) <= 60_000
        await client.aclose()

    run(scenario())


def test_a_late_utterance_does_not_push_the_newest_out_of_the_window(services, unique) -> None:  # type: ignore[no-untyped-def]
    """Found in review: the window was trimmed by arrival, so an utterance read late (its text
    behind the later ones in a backlog) pushed the newest context out, and a run of them left only
    old ones (and a false context_reset). It keeps the call's latest utterances by seq."""

    async def scenario() -> None:
        client = aioredis.from_url(services.redis_url)
        store = ContextStore(client, f"test:{unique}:", window=3, ttl_s=60)
        await store.append({"c": [item(39), item(40), item(50)]})
        await store.append({"c": [item(10)]})  # late: older than the whole window, so not kept
        assert sorted(i.seq for i in (await store.fetch(["c"]))["c"]) == [39, 40, 50]
        await store.append({"c": [item(45)]})  # late, but newer than 39
        assert sorted(i.seq for i in (await store.fetch(["c"]))["c"]) == [40, 45, 50]
        held = (await store.state(["c"], {"c": []}))["c"].window  # the copy held in memory agrees
        assert [i.seq for i in held] == [i.seq for i in (await store.fetch(["c"]))["c"]]
        await store.append({"c": [item(60), item(61), item(5)]})
        assert sorted(i.seq for i in (await store.fetch(["c"]))["c"]) == [50, 60, 61]
        await store.append({"c": [item(100), item(99)]})  # 100 after 99 by its digits, not its text
        assert sorted(i.seq for i in (await store.fetch(["c"]))["c"]) == [61, 99, 100]
        huge = 2**62  # seqs past 2^53, which a Lua number does not hold exactly (epoch nanoseconds, say)
        one = ContextStore(client, f"test:{unique}:huge:", window=1, ttl_s=60)
        await one.append({"c": [ContextItem("a", huge + 100, "A", {"text": np.zeros(4, np.float32)})]})
        await one.append({"c": [ContextItem("b", huge + 1, "A", {"text": np.zeros(4, np.float32)})]})
        assert [i.seq for i in (await one.fetch(["c"]))["c"]] == [huge + 100]
        await client.aclose()

    run(scenario())
