"""Static membership (streams/membership.py): the LeaveGroup v3 request on the wire, and the
patched leave of aiokafka's group coordinator on each of its paths, against a fake coordinator
(the real broker: tests/integration/test_processes.py)."""

from __future__ import annotations

import asyncio
import logging
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator

from streams import membership
from streams.membership import MemberLost, _static_leave, leave_on_stop, watch_membership


def _string(s: str) -> bytes:
    return struct.pack(">h", len(s)) + s.encode()


def test_the_leave_is_kafkas_leavegroup_v3_naming_the_member_and_its_instance() -> None:
    request = _static_leave("emostream-worker", [("host-1-0-9fc4", "host-1-0")])
    wire = request.prepare({13: (0, 5)})  # a broker that knows v0-v5 (Kafka 3.9): v3, the only one defined
    assert (wire.API_KEY, wire.API_VERSION) == (13, 3)
    assert wire.encode() == (
        _string("emostream-worker") + struct.pack(">i", 1) + _string("host-1-0-9fc4") + _string("host-1-0")
    )
    with pytest.raises(NotImplementedError):  # a broker before 2.4 (v0-v2 only): no request at all
        request.prepare({13: (0, 2)})
    response = wire.RESPONSE_TYPE.decode(
        struct.pack(">ih", 0, 0) + struct.pack(">i", 1) + _string("host-1-0-9fc4") + struct.pack(">h", -1)
        + struct.pack(">h", 82)
    )  # fmt: skip
    assert response.error_code == 0 and response.members == [("host-1-0-9fc4", None, 82)]


class _Coordinator(SimpleNamespace):
    """What the patched method reads of aiokafka's GroupCoordinator."""

    def __init__(self, instance: str | None, reply: Any) -> None:
        super().__init__(group_id="g", member_id="m-1", generation=3, _group_instance_id=instance)
        self.reply, self.sent, self.reset = reply, [], 0

    async def _send_req(self, request: Any) -> Any:
        self.sent.append(request)
        if isinstance(self.reply, BaseException):
            raise self.reply
        if self.reply == "hang":
            await asyncio.sleep(3600)
        return self.reply

    def reset_generation(self) -> None:
        self.reset += 1


def _leave(coordinator: _Coordinator) -> None:
    leave_on_stop()
    asyncio.run(GroupCoordinator._maybe_leave_group(coordinator))


def _reply(error: int = 0, member_error: int = 0) -> Any:
    return SimpleNamespace(error_code=error, members=[("m-1", "i-0", member_error)])


def test_a_static_member_leaves_by_its_instance_id_and_forgets_its_generation(caplog: pytest.LogCaptureFixture) -> None:
    c = _Coordinator("i-0", _reply())
    with caplog.at_level(logging.INFO, "emostream.membership"):
        _leave(c)
    (request,) = c.sent
    assert request.prepare({13: (0, 5)}).members == [("m-1", "i-0")]
    assert c.reset == 1 and "left consumer group g as static member i-0" in caplog.text


def test_a_static_member_the_broker_no_longer_knows_says_so(caplog: pytest.LogCaptureFixture) -> None:
    for error in (25, 82):  # UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID: another worker took the id
        c = _Coordinator("i-0", _reply(member_error=error))
        with caplog.at_level(logging.WARNING, "emostream.membership"):
            _leave(c)
        assert c.reset == 1
    assert caplog.text.count("another worker holds that instance id") == 2
    assert "after the session timeout" not in caplog.text


@pytest.mark.parametrize(
    "reply", [_reply(error=25), _reply(member_error=15), ConnectionError("gone"), NotImplementedError("v0-v2"), "hang"]
)
def test_a_failed_or_stuck_leave_is_one_warning_and_the_stop_goes_on(
    reply: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(membership, "LEAVE_TIMEOUT_S", 0.05)  # a coordinator that never answers
    c = _Coordinator("i-0", reply)
    with caplog.at_level(logging.WARNING, "emostream.membership"):
        _leave(c)
    assert c.reset == 1
    assert "its partitions move after the session timeout" in caplog.text


def test_a_dynamic_member_and_one_never_joined_leave_as_aiokafka_has_them() -> None:
    dynamic = _Coordinator(None, SimpleNamespace(error_code=0))
    _leave(dynamic)
    (request,) = dynamic.sent
    assert type(request).__name__ == "LeaveGroupRequest"  # aiokafka's own v0/v1, by member id
    never = _Coordinator("i-0", _reply())
    never.generation = -1  # it never joined: nothing to leave
    _leave(never)
    assert never.sent == [] and never.reset == 1


def test_the_broker_not_knowing_a_static_member_again_and_again_is_named_as_a_shared_instance_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import inspect

    # the warning watched for is aiokafka's own, on a heartbeat answered UNKNOWN_MEMBER_ID
    assert MemberLost.MESSAGE in inspect.getsource(GroupCoordinator)
    now = [0.0]
    counted: list[int] = []
    logger = logging.getLogger("test.coordinator")
    watch = MemberLost("g", "edge-1", lambda: counted.append(1), clock=lambda: now[0])
    logger.addFilter(watch)
    try:
        with caplog.at_level(logging.ERROR, "emostream.membership"):
            for t in (0.0, 150.0, 300.0):  # a stalled session now and then: counted, not an id clash
                now[0] = t
                logger.warning("Heartbeat failed: local member_id was not recognized; resetting and re-joining group")
            assert len(counted) == 3 and not caplog.records
            for t in (500.0, 502.0, 505.0, 507.0):  # every few seconds: another worker under the same id
                now[0] = t
                logger.warning("Heartbeat failed: local member_id was not recognized; resetting and re-joining group")
                for p in range(4):  # its commit, a line a partition, beside the heartbeat: the same answer
                    now[0] = t + 0.1 * p
                    logger.error(
                        "OffsetCommit failed for group g due to group error ([Error 25] UnknownMemberIdError: g), "
                        "will rejoin"
                    )
            logger.warning("Heartbeat failed for group g because it is rebalancing")  # not counted
            said = lambda: [r for r in caplog.records if r.name == "emostream.membership"]  # noqa: E731
            assert len(counted) == 7 and not said()  # four in two minutes: not yet
            now[0] = 511.5  # a commit alone, as at log level ERROR where only commits fail visibly
            logger.error("OffsetCommit failed for group g due to group error ([Error 25] UnknownMemberIdError: g)")
        assert len(counted) == 8
        (error,) = said()  # once per window, not once per heartbeat
        assert "same kafka.instance_id 'edge-1'" in error.getMessage()
    finally:
        logger.removeFilter(watch)
    dynamic = MemberLost("g", None, lambda: counted.append(1), clock=lambda: now[0])
    for t in range(8):  # a dynamic member has no id to share: counted only
        now[0] = 600.0 + 2 * t
        dynamic.lost()
    assert len(counted) == 16 and len(said()) == 1


@pytest.mark.parametrize("level", ["INFO", "ERROR"])
def test_aiokafkas_own_warning_is_counted_through_every_filter_at_any_log_level(level: str) -> None:
    """On the coordinator's real logger, behind the worker's filter that drops repeats: at ERROR the
    logger itself dropped the warning before any filter saw it."""
    from aiokafka.consumer import group_coordinator

    from streams.kafka import quiet_kafka_repeats

    logger = logging.getLogger("aiokafka.consumer.group_coordinator")
    kept = (logger.level, list(logger.filters), logging.getLogger().level)
    counted: list[int] = []
    try:
        logging.getLogger().setLevel(level)
        logger.setLevel(logging.NOTSET)
        quiet_kafka_repeats()  # installed before it, as in run_worker
        watch_membership("g", "edge-1", lambda: counted.append(1), logging.getLevelName(level))
        watch_membership("g", "edge-1", lambda: counted.append(1), logging.getLevelName(level))  # replaces, not adds
        clock = [0.0]
        logger.filters[0].clock = lambda: clock[0]  # type: ignore[attr-defined]
        for t in range(4):  # within 30 s: the repeats filter prints one
            clock[0] = 2.0 * t
            group_coordinator.log.warning(
                "Heartbeat failed: local member_id was not recognized; resetting and re-joining group"
            )
        assert len(counted) == 4
    finally:
        logger.setLevel(kept[0])
        logger.filters[:] = kept[1]
        logging.getLogger().setLevel(kept[2])


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (SimpleNamespace(error_code=0, members=[("", "h-0", 0), ("", "h-1", 25)]), "had not left: h-0"),
        (SimpleNamespace(error_code=0, members=[("", "h-0", 25)]), "every process had left"),
        (SimpleNamespace(error_code=15, members=[]), "could not remove the stopped processes"),
        ("hang", "could not remove the stopped processes"),
    ],
)
def test_the_supervisor_removes_by_instance_id_what_did_not_leave(
    reply: Any, said: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import aiokafka.client

    from streams.membership import release
    from streams.settings import Settings

    sent: list[Any] = []

    class Client:
        def __init__(self, **options: Any) -> None:
            assert options["bootstrap_servers"] == ["127.0.0.1:9092"] and options["request_timeout_ms"] == 200
            self.closed = False

        async def bootstrap(self) -> None:
            pass

        async def coordinator_lookup(self, kind: Any, group: str) -> int:
            assert group == "emostream-worker"
            return 1

        async def send(self, node: int, request: Any) -> Any:
            sent.append(request.prepare({13: (0, 5)}))
            if reply == "hang":
                await asyncio.sleep(3600)
            return reply

        async def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(aiokafka.client, "AIOKafkaClient", Client)
    with caplog.at_level(logging.INFO, "emostream.membership"):
        release(Settings(), ["h-0", "h-1"], timeout_s=0.2)
    assert said in caplog.text
    assert sent[0].members == [("", "h-0"), ("", "h-1")]  # by instance id alone, as Kafka's admin does
