"""The supervisor page's board (streams/ui/board.py) and its HTTP endpoints, without Kafka."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from streams.schemas import AlertEvent, CallReport, Evidence, SpeakerTrajectory, event_id
from streams.ui.board import Board
from tests.unit.test_subscribe import make_event


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def alert(call: str, rule: str, state: str = "raised", severity: str = "critical", n: int = 1) -> AlertEvent:
    ev = [Evidence(utterance_id="u1", seq=1, speaker="customer", role="customer", label="anger", sentiment=-0.8)]
    return AlertEvent(
        event_id=f"{call}:{rule}:{n}:{state}", alert_id=f"{call}:{rule}:{n}", call_id=call, rule=rule,
        severity=severity, message=f"{rule} message", state=state, reason="recovered" if state == "cleared" else None,
        evidence=[] if state == "cleared" else ev, produced_at=1.0,
    )  # fmt: skip


def report(call: str, final: bool = False, turns: int = 2) -> CallReport:
    who = SpeakerTrajectory(speaker="customer", role="customer", turns=1, talk_share=0.5, recent={"anger": 0.8},
                            negative_share=1.0, sentiment=-0.8, sentiment_trend=0.0)  # fmt: skip
    return CallReport(event_id=f"{call}:report:{turns}:{final}", call_id=call, final=final, turns=turns,
                      speakers=[who], open_alerts=[], alerts_raised=[], produced_at=1.0)  # fmt: skip


def test_calls_with_open_alerts_come_first_and_an_alert_clears() -> None:
    clock = Clock()
    board = Board(clock=clock)
    for call, seq, speaker, label in [("a", 0, "agent", "neutral"), ("b", 0, "agent", "joy"),
                                      ("b", 1, "customer", "anger")]:  # fmt: skip
        clock.now += 1
        assert board.add("emotion", make_event(call_id=call, utterance_id=f"u{seq}", seq=seq, speaker=speaker,
                                               label=label).to_bytes())  # fmt: skip
    assert [c["call_id"] for c in board.snapshot()["calls"]] == ["b", "a"]  # the most recent first
    clock.now += 1
    assert board.add("emotion", make_event(call_id="a", utterance_id="u1", seq=1, label="joy").to_bytes())
    assert [c["call_id"] for c in board.snapshot()["calls"]] == ["a", "b"]
    board.add("alert", alert("b", "customer-anger-rising").to_bytes())
    board.add("alert", alert("b", "customer-negative-streak", severity="warning").to_bytes())
    snap = board.snapshot()
    assert [c["call_id"] for c in snap["calls"]] == ["b", "a"]  # an open alert outranks recency
    b = snap["calls"][0]
    assert [a["rule"] for a in b["alerts"]] == ["customer-anger-rising", "customer-negative-streak"]  # critical first
    assert b["turns"] == 2 and [s["speaker"] for s in b["speakers"]] == ["agent", "customer"]
    assert b["speakers"][1]["timeline"] == [{"seq": 1, "label": "anger", "sentiment": 0.62, "read": True}]
    board.add("alert", alert("b", "customer-anger-rising", state="cleared").to_bytes())
    assert [a["rule"] for a in board.snapshot()["calls"][0]["alerts"]] == ["customer-negative-streak"]
    assert [h["state"] for h in board.detail("b")["history"]] == ["raised", "raised", "cleared"]  # type: ignore[index]


def test_duplicates_revisions_invalid_records_and_versions() -> None:
    board = Board()
    e0 = make_event(call_id="c", utterance_id="u0", seq=0, label="joy")
    assert board.add("emotion", e0.to_bytes()) and not board.add("emotion", e0.to_bytes())  # same event_id
    v = board.version
    board.add("emotion", make_event(call_id="c", utterance_id="u0", seq=0, revision=1, label="anger").to_bytes())
    detail = board.detail("c")
    assert detail is not None and [(u["label"], u["revision"]) for u in detail["utterances"]] == [("anger", 1)]
    assert detail["utterances"][0]["weights"] == {"text": 0.71, "audio": 0.29}
    board.add("emotion", make_event(call_id="c", utterance_id="u0", seq=0, revision=0, label="joy",
                                    event_id="late-r0").to_bytes())  # fmt: skip
    assert board.detail("c")["utterances"][0]["label"] == "anger"  # type: ignore[index]  # an older revision
    assert not board.add("emotion", b"{not json") and board.invalid == 1
    change = board.since(v)
    assert [c["call_id"] for c in change["calls"]] == ["c"] and change["removed"] == []
    assert board.since(board.version)["calls"] == [] and board.detail("nobody") is None


def test_ended_calls_go_after_keep_ended_s_and_the_board_is_bounded() -> None:
    clock = Clock()
    board = Board(max_calls=3, max_utterances=2, keep_ended_s=60, clock=clock)
    for i in range(3):
        board.add("emotion", make_event(call_id="long", utterance_id=f"u{i}", seq=i).to_bytes())
    assert [u["seq"] for u in board.detail("long")["utterances"]] == [1, 2]  # type: ignore[index]
    board.add("report", report("done", final=True).to_bytes())
    v = board.version
    snap = board.snapshot()["calls"]
    assert [(c["call_id"], c["ended"]) for c in snap] == [("long", False), ("done", True)]  # ended calls last
    assert [c["ended_by"] for c in snap] == [None, None]
    other = Board(clock=clock)
    other.add("report", report("quiet", final=True).model_copy(update={"ended_by": "idle"}).to_bytes())
    assert other.snapshot()["calls"][0]["ended_by"] == "idle"  # the page says it went quiet
    for c in ("x", "y"):  # a fourth call: the ended one goes first
        clock.now += 1
        board.add("emotion", make_event(call_id=c).to_bytes())
    assert {c["call_id"] for c in board.snapshot()["calls"]} == {"long", "x", "y"}
    assert "done" in board.since(v)["removed"]
    board.add("report", report("x", final=True).to_bytes())
    clock.now += 61
    board.expire()
    assert {c["call_id"] for c in board.snapshot()["calls"]} == {"long", "y"}


def test_the_server_sends_a_snapshot_then_only_what_changed() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from streams.ui.server import make_app

    async def scenario() -> None:
        board = Board()
        board.add("emotion", make_event(call_id="a").to_bytes())
        client = TestClient(TestServer(make_app(board, push_s=0.05)))
        await client.start_server()
        try:
            page = await client.get("/")
            assert page.status == 200 and "emostream" in await page.text()
            assert (await client.get("/static/app.js")).status == 200
            assert [c["call_id"] for c in (await (await client.get("/api/calls")).json())["calls"]] == ["a"]
            assert (await client.get("/api/calls/nobody")).status == 404
            assert (await (await client.get("/healthz")).json())["ok"] is True
            resp = await client.get("/events")
            first = await _sse(resp)
            assert first[0] == "snapshot" and [c["call_id"] for c in first[1]["calls"]] == ["a"]
            assert await _sse(resp) == ("feed", {"error": None})  # always said first: a page may hold an old error
            board.add("alert", alert("b", "customer-anger-rising").to_bytes())
            kind, data = await _sse(resp)
            assert kind == "update" and [c["call_id"] for c in data["calls"]] == ["b"]
            assert data["calls"][0]["alerts"][0]["severity"] == "critical"
        finally:
            started = time.monotonic()
            await client.close()  # with the event stream still open: shutdown ends it at once
            assert time.monotonic() - started < 5

    asyncio.run(scenario())


async def _sse(resp: Any) -> tuple[str, Any]:
    """The next event (not a keep-alive) of a server-sent event stream."""
    kind, data = "", ""
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and kind:
            return kind, json.loads(data)


def test_change_marks_stay_bounded_and_a_client_too_far_behind_gets_the_whole_board() -> None:
    clock = Clock()
    board = Board(max_calls=3, clock=clock)
    v0 = board.version
    for i in range(50):
        clock.now += 1
        board.add("emotion", make_event(call_id=f"c{i}").to_bytes())
    assert len(board.calls) == 3 and len(board.changed) == 3 and len(board.removals) <= 12
    stale = board.since(v0)  # removals it never saw were forgotten: it gets everything, to replace what it has
    assert stale["reset"] and {c["call_id"] for c in stale["calls"]} == {"c47", "c48", "c49"}
    v = board.version
    board.add("emotion", make_event(call_id="c50").to_bytes())
    recent = board.since(v)
    assert not recent["reset"] and recent["removed"] == ["c47"] and [c["call_id"] for c in recent["calls"]] == ["c50"]


def test_an_utterance_keeps_what_was_not_used_and_what_is_suspect_through_its_revision() -> None:
    board = Board()
    why = "wrong G.711 law? the voice sounds distorted as by the other G.711 law: p=0.97"
    e0 = make_event(call_id="c", utterance_id="u0", seq=0, ignored={"video": "no face"}, suspect={"audio": why})
    board.add("emotion", e0.to_bytes())
    board.add(
        "emotion", make_event(call_id="c", utterance_id="u0", seq=0, revision=1, suspect={"audio": why}).to_bytes()
    )
    row = board.detail("c")["utterances"][0]  # type: ignore[index]
    assert row["revision"] == 1 and row["ignored"] == {"video": "no face"} and row["suspect"] == {"audio": why}, row


def test_a_new_provisional_event_of_a_reused_utterance_id_does_not_inherit_what_was_not_used() -> None:
    board = Board()
    board.add(
        "emotion", make_event(call_id="c", utterance_id="u0", seq=0, ignored={"audio": "no speech: 0.0 s"}).to_bytes()
    )
    again = make_event(call_id="c", utterance_id="u0", seq=0, event_id="c~g1:u0:0")  # the id's next call
    board.add("emotion", again.to_bytes())
    assert board.detail("c")["utterances"][0]["ignored"] == {}  # type: ignore[index]
    newer = json.loads(make_event(call_id="c", utterance_id="u1", seq=1, event_id="c~g1:u1:0").to_bytes())
    assert board.add("emotion", json.dumps({**newer, "later_field": 1}).encode()) and board.invalid == 0


def test_an_utterance_with_nothing_read_is_marked_so() -> None:
    """Every part ignored: the page shows 'nothing read', not the prior's near-uniform label."""
    board = Board()
    blank = make_event(call_id="c", utterance_id="u0", seq=0, modalities_present=["text"], ignored={"text": "no words"})
    board.add("emotion", blank.to_bytes())
    board.add("emotion", make_event(call_id="c", utterance_id="u1", seq=1).to_bytes())
    rows = board.detail("c")["utterances"]  # type: ignore[index]
    assert [r["read"] for r in rows] == [False, True], rows
    assert [u["read"] for u in board.snapshot()["calls"][0]["speakers"][0]["timeline"]] == [False, True]
    assert board.snapshot()["calls"][0]["turns"] == 1  # as the call's report counts: the blank line is no turn
    assert board.snapshot()["calls"][0]["unread"] == 1  # and the page says so


def test_a_call_that_never_ends_says_when_it_was_last_heard_and_goes_once_silent_for_keep_silent_s() -> None:
    clock = Clock()
    board = Board(keep_ended_s=60, keep_silent_s=3600, clock=clock)
    board.add("emotion", make_event(call_id="hung-up", produced_at=990.0).to_bytes())
    board.add("alert", alert("hung-up", "escalation").to_bytes())  # an alert is no word of the call's
    board.add("emotion", make_event(call_id="talking", produced_at=1000.0).to_bytes())
    snap = board.snapshot()
    assert snap["now"] == 1000.0
    assert {c["call_id"]: c["heard_at"] for c in snap["calls"]} == {"hung-up": 990.0, "talking": 1000.0}
    clock.now = 990.0 + 3600  # an hour after hung-up's last utterance, 10 s before talking's: not yet
    board.add("emotion", make_event(call_id="talking", utterance_id="u2", seq=2, produced_at=4500.0).to_bytes())
    board.expire()
    assert {c["call_id"] for c in board.snapshot()["calls"]} == {"hung-up", "talking"}
    v = board.version
    clock.now += 1
    board.expire()  # silent past keep_silent_s, its alert still open: the worker's store has forgotten it
    assert [c["call_id"] for c in board.snapshot()["calls"]] == ["talking"]
    assert board.since(v)["removed"] == ["hung-up"] and board.since(v)["now"] == clock.now
    # a board that starts later and replays the topics drops it too: the events' times count, not their reading
    late = Board(keep_silent_s=3600, clock=clock)
    late.add("emotion", make_event(call_id="hung-up", produced_at=990.0).to_bytes())
    late.expire()
    assert late.snapshot()["calls"] == []


def test_utterances_labelled_after_a_calls_summary_are_shown_apart() -> None:
    board = Board()
    for i in range(3):
        board.add("emotion", make_event(call_id="c", utterance_id=f"u{i}", seq=i, produced_at=10.0 + i).to_bytes())
    board.add("report", report("c", final=True, turns=3).model_copy(update={"produced_at": 13.0}).to_bytes())
    # the call's last event read after its summary (another topic): produced before it, one of its turns
    board.add("emotion", make_event(call_id="c", utterance_id="u3", seq=3, produced_at=12.5).to_bytes())
    # a part sent after its 'ended' reopened it: labelled, no turn of the summary
    board.add("emotion", make_event(call_id="c", utterance_id="u9", seq=9, produced_at=20.0).to_bytes())
    (c,) = board.snapshot()["calls"]
    assert (c["turns"], c["after_end"], c["ended"]) == (4, 1, True)


def _final(call: str, at: float, final: bool = True, name: str = "") -> bytes:
    r = report(call, final=final, turns=3).model_copy(update={"produced_at": at, "event_id": f"{call}:{at}:{name}"})
    return r.to_bytes()


def test_what_came_after_a_calls_end_is_told_by_production_times_in_any_read_order() -> None:
    events = [make_event(call_id="c", utterance_id=f"u{i}", seq=i, produced_at=10.0 + i) for i in range(3)]
    late = make_event(call_id="c", utterance_id="u9", seq=9, produced_at=20.0)  # reopened the call after its end
    for order in (["e0", "e1", "e2", "final", "late"], ["e0", "e1", "e2", "late", "final"], ["final", "late", "e2"]):
        board = Board()
        records = {"final": ("report", _final("c", 13.0)), "late": ("emotion", late.to_bytes())}
        records.update({f"e{i}": ("emotion", e.to_bytes()) for i, e in enumerate(events)})
        for name in order:
            board.add(*records[name])
        (c,) = board.snapshot()["calls"]
        assert (c["after_end"], c["ended"]) == (1, True), order
        assert c["turns"] == len([n for n in order if n.startswith("e")]), order


def test_a_reused_call_id_shows_only_the_new_call_whatever_was_read_first() -> None:
    old = [make_event(call_id="c", utterance_id=f"u{i}", seq=i, revision=1, produced_at=10.0 + i) for i in range(3)]
    new_u0 = make_event(call_id="c", utterance_id="u0", seq=0, produced_at=30.0, event_id=event_id("c", "u0", 0, "57"))
    assert new_u0.event_id.startswith("c~g57:")
    records = {f"old{i}": ("emotion", e.to_bytes()) for i, e in enumerate(old)}
    new_report = report("c", final=False, turns=1).model_copy(
        update={"produced_at": 31.0, "event_id": "c~g57:report:1:x"}
    )
    records.update({
        "final": ("report", _final("c", 13.0)), "new": ("emotion", new_u0.to_bytes()),
        "report": ("report", new_report.to_bytes()), "old_alert": ("alert", alert("c", "streak").to_bytes()),
    })  # fmt: skip
    for order in (
        ["old0", "old1", "old2", "old_alert", "final", "new", "report"],  # live order
        ["final", "report", "old0", "old1", "old2", "new", "old_alert"],  # the reports read first (a replay)
        ["new", "old0", "old1", "report", "old2", "final", "old_alert"],  # the emotions read first
    ):
        board = Board()
        for name in order:
            board.add(*records[name])
        (c,) = board.snapshot()["calls"]
        assert (c["turns"], c["after_end"], c["ended"], c["alerts"]) == (1, 0, False, []), order
        assert [u["utterance_id"] for u in board.detail("c")["utterances"]] == ["u0"], order  # type: ignore[index]


def test_an_ended_call_let_go_does_not_come_back_when_its_records_are_read_later() -> None:
    clock = Clock()
    board = Board(keep_ended_s=600, clock=clock)
    board.add("report", _final("c", clock.now - 1800))  # a board that starts and replays: the summary first
    board.expire()
    assert board.snapshot()["calls"] == []
    for i in range(3):  # then the call's events, read from the other topic
        board.add(
            "emotion", make_event(call_id="c", utterance_id=f"u{i}", seq=i, produced_at=clock.now - 1810 + i).to_bytes()
        )
    board.add("emotion", make_event(call_id="c", utterance_id="u9", seq=9, produced_at=clock.now - 60).to_bytes())
    assert board.snapshot()["calls"] == []  # no quiet ghost of it, nor of a late part after its end
    new = make_event(call_id="c", utterance_id="u0", seq=0, produced_at=clock.now, event_id=event_id("c", "u0", 0, "9"))
    board.add("emotion", new.to_bytes())  # its id used again: the new call is shown
    assert [c["call_id"] for c in board.snapshot()["calls"]] == ["c"]


def test_the_generation_of_a_record_comes_from_its_id() -> None:
    from streams.ui.board import generation_of

    assert generation_of("c", "c:u0:r0:ab") == -1 and generation_of("c", "c~g12:report:final") == 12
    assert generation_of("a:b", "a:b~g3:rule:1:raised:u1") == 3 and generation_of("c", "other") == -1


def test_a_call_id_used_again_without_a_new_generation_shows_once_its_old_call_is_long_over() -> None:
    """Found in review: an id the board let go stayed off the page for good when its next call
    named no new generation (used again without a `started`, or after the workers forgot the old
    call): 8,000 ended calls are remembered, days of a small center."""
    clock = Clock()
    board = Board(keep_ended_s=600, keep_silent_s=3600, clock=clock)
    board.add("report", _final("c", clock.now - 4000))
    board.expire()
    assert board.snapshot()["calls"] == []
    late = make_event(call_id="c", utterance_id="u9", seq=9, produced_at=clock.now - 4000 + 3599)
    board.add("emotion", late.to_bytes())  # within keep_silent_s of its end: the old call's, reopened by a backlog
    assert board.snapshot()["calls"] == []
    again = make_event(call_id="c", utterance_id="u0", seq=0, produced_at=clock.now - 4000 + 3601)
    board.add("emotion", again.to_bytes())
    assert [(c["call_id"], c["ended"], c["turns"]) for c in board.snapshot()["calls"]] == [("c", False, 1)]


def test_the_board_holds_at_most_max_held_utterances_in_all() -> None:
    """Found in review: 2,000 calls x 300 utterances at about 5.5 KB each is 3 GB, six times the
    Kubernetes pod's 512 MiB: the least recently updated calls go once the board holds max_held."""
    clock = Clock()
    board = Board(max_calls=100, max_utterances=10, max_held=25, clock=clock)
    for c in range(6):
        clock.now += 1
        for i in range(8):
            board.add("emotion", make_event(call_id=f"c{c}", utterance_id=f"u{i}", seq=i).to_bytes())
    assert board.held == sum(len(v.utterances) for v in board.calls.values()) <= 25
    assert list(board.calls) == ["c3", "c4", "c5"]  # the oldest went whole
    board.add("report", report("c3", final=True).to_bytes())  # an ended call goes before a live one
    for i in range(8):
        board.add("emotion", make_event(call_id="c6", utterance_id=f"u{i}", seq=i).to_bytes())
    assert list(board.calls) == ["c4", "c5", "c6"] and board.held == 24
    big = Board(max_held=5, clock=clock)  # one call larger than the whole budget stays (its newest utterances)
    for i in range(8):
        big.add("emotion", make_event(call_id="one", utterance_id=f"u{i}", seq=i).to_bytes())
    assert list(big.calls) == ["one"]


def test_pages_in_step_share_one_computed_change() -> None:
    board = Board()
    v = board.version
    board.add("emotion", make_event(call_id="a").to_bytes())
    first, second = board.since(v), board.since(v)
    assert first is second and [c["call_id"] for c in first["calls"]] == ["a"]
    board.add("emotion", make_event(call_id="b").to_bytes())
    assert [c["call_id"] for c in board.since(v)["calls"]] == ["a", "b"]


def test_a_report_with_a_nan_inside_is_refused_not_passed_to_the_page() -> None:
    """Found in review: the nested models took NaN, json.dumps wrote a bare NaN, and every page's
    JSON.parse failed on every snapshot while its status still said live."""
    board = Board()
    bad = json.loads(report("c").to_bytes())
    bad["speakers"][0]["sentiment"] = float("nan")
    board.add("report", json.dumps(bad).encode())
    assert board.invalid == 1 and board.snapshot()["calls"] == []


def test_the_server_answers_loopback_names_only_sets_a_csp_and_says_when_it_cannot_read() -> None:
    """Found in review: bound to 127.0.0.1 it answered any Host (a page on another site could read
    it by DNS rebinding), sent no CSP, took any number of event streams, and said "live" while its
    consumer could not read."""
    import threading

    from aiohttp.test_utils import TestClient, TestServer

    from streams.ui import server
    from streams.ui.server import make_app

    class Feed:
        def __init__(self) -> None:
            self.ready, self.error = threading.Event(), "KafkaConnectionError: broker away"
            self.thread = threading.Thread(target=lambda: None)

    async def scenario() -> None:
        feed = Feed()
        allowed = server._hosts(None, "127.0.0.1")  # bound to loopback: its names
        client = TestClient(TestServer(make_app(Board(), feed, push_s=0.05, allowed_hosts=allowed)))  # type: ignore[arg-type]
        await client.start_server()
        try:
            refused = await client.get("/", headers={"Host": "evil.example:8080"})
            assert refused.status == 421 and "script-src 'self'" in refused.headers["Content-Security-Policy"]
            assert (await client.get("/healthz", headers={"Host": "10.0.0.7:8080"})).status == 503  # probes: any host
            for host in ("localhost:8080", "127.0.0.1:8080", "[::1]:8080", "127.0.0.2"):
                page = await client.get("/", headers={"Host": host})
                assert page.status == 200, host
                assert "script-src 'self'" in page.headers["Content-Security-Policy"]
            resp = await client.get("/events")
            assert (await _sse(resp))[0] == "snapshot"
            # a page whose machine vanishes lets its slot go after GONE_AFTER_S, not the kernel's 15 minutes
            import socket

            (conn,) = [h.transport for h in client.server.runner.server.connections]  # type: ignore[union-attr]
            gone_ms = conn.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert gone_ms == server.GONE_AFTER_S * 1000
            assert await _sse(resp) == ("feed", {"error": "KafkaConnectionError: broker away"})
            feed.error = None
            feed.ready.set()
            feed.thread = threading.current_thread()  # alive
            assert await _sse(resp) == ("feed", {"error": None})
            old = server.MAX_CLIENTS
            server.MAX_CLIENTS = 1
            try:
                assert (await client.get("/events")).status == 503  # one page follows already
            finally:
                server.MAX_CLIENTS = old
        finally:
            await client.close()

    asyncio.run(scenario())
    assert make_app(Board()) is not None


def test_the_feed_resumes_where_it_was_after_a_failure() -> None:
    """Found in review: after a Kafka error the feed read again from since_s ago, and a raise that
    had left the board's dedup memory came back over its clear."""
    from streams.settings import Settings
    from streams.ui.server import Feed

    class Consumer:
        def __init__(self) -> None:
            self.seeks: dict[str, int] = {}

        def assignment(self) -> set[str]:
            return {"t-0", "t-1"}

        def seek(self, tp: str, offset: int) -> None:
            self.seeks[tp] = offset

        def offsets_for_times(self, wanted: dict[str, int]) -> dict[str, Any]:
            return {tp: type("Found", (), {"offset": 100})() for tp in wanted}

        def seek_to_end(self, tp: str) -> None:
            self.seeks[tp] = -1

    feed = Feed(Settings(), Board(), since_s=3600)
    first = Consumer()
    feed._seek(first)
    assert first.seeks == {"t-0": 100, "t-1": 100}
    feed.positions["t-0"] = 517  # read up to there before the failure
    again = Consumer()
    feed._seek(again)
    assert again.seeks == {"t-0": 517, "t-1": 100}


def test_allowed_hosts_behind_a_published_port_or_a_proxy() -> None:
    """Found in review: the guard was on only when bound to loopback, so compose and Kubernetes (bound
    to 0.0.0.0, reached on localhost) answered any Host; --allowed-hosts names them."""
    from streams.ui.server import _allowed, _hosts

    assert _hosts(None, "0.0.0.0") is None and _hosts("*", "127.0.0.1") is None
    names = _hosts("localhost,127.0.0.1,::1", "0.0.0.0")
    assert names == ("localhost", "127.0.0.1", "::1")
    for host in ("localhost:8080", "LOCALHOST", "127.0.0.1:8080", "[::1]:8080", "127.0.0.2", ""):
        assert _allowed(host, names), host
    for host in ("evil.example", "evil.example:8080", "0.0.0.0:8080", "10.0.0.7"):
        assert not _allowed(host, names), host
    proxy = _hosts("emostream.example.com", "0.0.0.0")
    assert proxy is not None and _allowed("emostream.example.com:443", proxy) and not _allowed("localhost", proxy)


def test_the_feed_says_when_no_broker_is_connected() -> None:
    """Found in review: kafka-python's poll returns nothing, and raises nothing, while the brokers
    are away, so /healthz said ok and the page said live through a Kafka outage."""
    from streams.settings import Settings
    from streams.ui.server import LOST_AFTER_S, Feed

    class Cluster:
        def brokers(self) -> list[Any]:
            return [type("B", (), {"node_id": 1})()]  # (kafka-python 3 names it node_id)

    class Client:
        def __init__(self) -> None:
            self.cluster, self.up = Cluster(), True

        def connected(self, node: int) -> bool:
            return self.up

    consumer = type("Consumer", (), {})()
    consumer._client = Client()
    feed = Feed(Settings(), Board(), since_s=60)
    feed.watch(consumer, 0.0)
    assert feed.ready.is_set() and feed.error is None
    consumer._client.up = False
    feed.watch(consumer, 1.0)
    assert feed.ready.is_set() and feed.error is None  # a moment: not yet
    feed.watch(consumer, 1.0 + LOST_AFTER_S)
    assert not feed.ready.is_set() and feed.error is not None and "no broker" in feed.error
    consumer._client.up = True
    feed.watch(consumer, 30.0)
    assert feed.ready.is_set() and feed.error is None
    feed.watch(type("Other", (), {})(), 31.0)  # private paths gone (another kafka-python): no false alarm
    assert feed.ready.is_set()


def test_a_live_call_with_an_open_alert_is_the_last_the_board_lets_go() -> None:
    """Found in review: at max_held the least recently updated live call went whole, its open alert
    with it, and came back without it."""
    clock = Clock()
    board = Board(max_calls=100, max_utterances=10, max_held=10, clock=clock)
    board.add("alert", alert("hot", "customer-anger-rising").to_bytes())
    for i in range(4):
        board.add("emotion", make_event(call_id="hot", utterance_id=f"u{i}", seq=i).to_bytes())
    for c in ("a", "b"):
        clock.now += 1
        for i in range(4):
            board.add("emotion", make_event(call_id=c, utterance_id=f"u{i}", seq=i).to_bytes())
    assert "hot" in board.calls and board.calls["hot"].alerts and "a" not in board.calls


def test_healthz_says_what_the_page_says_when_the_reader_stopped() -> None:
    """Its reader thread gone after it had read (no error of its own): /healthz said 'starting'."""
    import threading

    from aiohttp.test_utils import TestClient, TestServer

    from streams.ui import server
    from streams.ui.server import make_app

    class Feed:
        def __init__(self) -> None:
            self.ready, self.error = threading.Event(), None
            self.ready.set()
            self.thread = threading.Thread(target=lambda: None)  # never started: not alive

    async def scenario() -> None:
        allowed = server._hosts(None, "127.0.0.1")
        client = TestClient(TestServer(make_app(Board(), Feed(), push_s=0.05, allowed_hosts=allowed)))  # type: ignore[arg-type]
        await client.start_server()
        try:
            health = await client.get("/healthz")
            assert health.status == 503 and (await health.json())["error"] == "the reader stopped"
        finally:
            await client.close()

    asyncio.run(scenario())
