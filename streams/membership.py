"""Static membership of the workers' consumer group (Kafka's ``group.instance.id``, KIP-345).

A dynamic member that dies (``kill -9``, an OOM kill) stays in the group until its session times
out; the member started in its place joins at once, and the rebalance that starts waits for the
dead one: every member of the group stops reading until then (measured with ``--processes 2``: the
surviving child read nothing for about 24 s). A static member is known by its instance id: one
started again under the same id within ``kafka.session_timeout_s`` is handed its partitions back
with no rebalance, so only its own partitions wait, for as long as its start takes.

A static member that stops does not leave the group (aiokafka sends no LeaveGroup for one), so its
partitions would wait for the session timeout. :func:`leave_on_stop` makes a worker that stops
cleanly (SIGTERM) leave with LeaveGroup v3, which names the member by its instance id: the others
take its partitions at once, as a dynamic member's. aiokafka leaves the same way when its consumer
is not polled for ``max.poll.interval`` (a stuck event loop): a static member then leaves too,
where Java's would stay.

The restart has to fit in the session: the supervisor caps its restart delay at a third of
``kafka.session_timeout_s`` (:func:`streams.processes.backoff_cap`); a child back later than the
timeout joins as any new member, with a rebalance.

    child_instance_id(base, i)  the id of a supervisor's child ``i``: ``base-i``
    supervisor_base(id)         the configured ``kafka.instance_id``, or ``HOST-PID`` of the supervisor
    leave_on_stop()             install the static leave in aiokafka's group coordinator (idempotent)
    release(settings, ids)      remove members by instance id (the supervisor, once its children stopped)
    watch_membership(...)       count the heartbeats the broker answers "unknown member" (a shared id)
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger("emostream.membership")

_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")


def supervisor_base(configured: str | None) -> str:
    """The prefix of a supervisor's children's instance ids: ``kafka.instance_id`` if set, else
    this host's name, the supervisor's pid and a random part (containers sharing the host's name
    and network, each supervisor pid 1, would otherwise share ids). Drawn once: a child restarted
    by the same supervisor keeps its id; another supervisor, or this one started again, has others.

    Two running workers must never share an id: aiokafka's heartbeats and commits carry none, so
    each in turn finds itself unknown, joins again and displaces the other, both read the same
    partitions, and their commits fail."""
    if configured:
        return configured
    host = _NOT_ALLOWED.sub("-", socket.gethostname()).strip("-.")[:120] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def child_instance_id(base: str, index: int) -> str:
    return f"{base}-{index}"


class MemberLost(logging.Filter):
    """Counts the times the group's coordinator answered this worker UNKNOWN_MEMBER_ID, on a
    heartbeat (aiokafka's warning "local member_id was not recognized") or a commit (its error
    "OffsetCommit failed ... UnknownMemberIdError", one a partition), after which it joins again:
    a session that timed out (a worker stalled past ``kafka.session_timeout_s``), or, for a static
    member, another running worker under the same ``kafka.instance_id``: the two displace each
    other every few seconds, both read the same partitions (duplicate events: an operator's trial
    had 181 of 423 utterances labelled twice) and their commits fail, with nothing else to show for
    it (the lag 0). Answers within ``SAME_S`` of the one counted are one (a commit's partitions,
    the heartbeat beside it); each counted calls ``on_lost`` (``emostream_group_member_lost_total``,
    alert EmostreamMemberLost) and, for a static member, ``times`` of them within ``window_s`` are
    one ERROR naming the id (a stall gives one or two)."""

    MESSAGE = "local member_id was not recognized"
    COMMIT = ("OffsetCommit failed", "UnknownMemberIdError")
    SAME_S = 1.0

    def __init__(
        self,
        group: str,
        instance_id: str | None,
        on_lost: Callable[[], None] | None = None,
        times: int = 5,
        window_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__()
        self.group, self.instance_id, self.on_lost, self.level = group, instance_id, on_lost, level
        self.times, self.window_s, self.clock = times, window_s, clock
        self.recent: deque[float] = deque()
        self.said = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.MESSAGE in message or all(m in message for m in self.COMMIT):
            self.lost()
        return record.levelno >= self.level  # the worker's log level (see watch_membership)

    def lost(self) -> None:
        now = self.clock()
        if self.recent and now - self.recent[-1] < self.SAME_S:
            return
        if self.on_lost is not None:
            self.on_lost()
        self.recent.append(now)
        while self.recent and self.recent[0] < now - self.window_s:
            self.recent.popleft()
        if self.instance_id and len(self.recent) >= self.times and now - self.said >= self.window_s:
            self.said = now
            log.error(
                "consumer group %s: the broker did not know this worker's member %d times in %.0f s: another "
                "running worker most likely has the same kafka.instance_id %r (the two displace each other and "
                "both read the same partitions: duplicate events, failed commits); give each worker its own",
                self.group, len(self.recent), self.window_s, self.instance_id,
            )  # fmt: skip


def watch_membership(
    group: str, instance_id: str | None, on_lost: Callable[[], None], level: int = logging.INFO
) -> MemberLost:
    """Install a :class:`MemberLost` on aiokafka's group coordinator logger, ahead of its other
    filters (one that drops repeats would hide them), in place of one installed before. Its warning
    reaches the filter whatever the log level (at ERROR the logger would drop it first): the
    logger lets WARNING through and the filter drops what is below ``level``, the worker's."""
    import aiokafka.consumer.group_coordinator  # noqa: F401 - its logger exists once imported

    logger = logging.getLogger("aiokafka.consumer.group_coordinator")
    for old in [f for f in logger.filters if isinstance(f, MemberLost)]:
        logger.removeFilter(old)
    watch = MemberLost(group, instance_id, on_lost, level=level)
    logger.filters.insert(0, watch)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    return watch


_installed = False
LEAVE_TIMEOUT_S = 5.0
_UNKNOWN_MEMBER, _FENCED_INSTANCE = 25, 82  # Kafka's error codes UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID


def leave_on_stop() -> None:
    """Make aiokafka's group coordinator, closing as a static member, leave the group with
    LeaveGroup v3 (broker 2.4 or later) instead of staying a member until its session times out.
    A dynamic member leaves as before. Installed once per process; a failed leave is one WARNING
    (the partitions then move after the session timeout, as they would have)."""
    global _installed
    if _installed:
        return
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    dynamic_leave = GroupCoordinator._maybe_leave_group

    async def _maybe_leave_group(self: Any) -> None:
        instance = self._group_instance_id
        if instance is None or self.generation <= 0:
            await dynamic_leave(self)
            return
        try:  # bounded: the client's request timeout (Faust's 90 s) would outlast the stop's grace
            request = _static_leave(self.group_id, [(self.member_id, instance)])
            response = await asyncio.wait_for(self._send_req(request), LEAVE_TIMEOUT_S)
            errors = [response.error_code] + [m[2] for m in response.members]
            gone = set(errors) - {0}
            if gone and gone <= {_UNKNOWN_MEMBER, _FENCED_INSTANCE} and not response.error_code:
                log.warning(
                    "consumer group %s no longer knew this worker as %s: another worker holds that instance id "
                    "(or the session had timed out); nothing to leave",
                    self.group_id, instance,
                )  # fmt: skip
                self.reset_generation()
                return
            if any(errors):
                raise RuntimeError(f"error codes {errors}")
        except Exception as exc:  # the broker gone, too old for v3, or no answer: the session timeout frees them
            log.warning(
                "leaving consumer group %s as %s failed (%s): its partitions move after the session timeout",
                self.group_id, instance, exc,
            )  # fmt: skip
        else:
            log.info("left consumer group %s as static member %s: its partitions move now", self.group_id, instance)
        self.reset_generation()

    GroupCoordinator._maybe_leave_group = _maybe_leave_group
    _installed = True


def release(settings: Settings, instance_ids: list[str], timeout_s: float = 2 * LEAVE_TIMEOUT_S) -> None:
    """Remove static members from the workers' group by instance id alone, as Kafka's admin
    ``removeMembersFromConsumerGroup`` does (LeaveGroup v3, no member id): the supervisor's
    children once every one has stopped, so that one that died just before the stop (or while the
    supervisor gave up) holds no partition until its session times out, and a supervisor started
    again, with new ids, does not wait for it. Members gone already are answered UNKNOWN_MEMBER_ID,
    which is what a clean stop leaves. One INFO line, or one WARNING if the broker cannot be asked."""
    from streams.kafka import aiokafka_options

    group = settings.kafka.group_id

    async def leave() -> list[str]:
        from aiokafka.client import AIOKafkaClient, CoordinationType

        client = AIOKafkaClient(**aiokafka_options(settings), request_timeout_ms=int(timeout_s * 1000))
        try:
            await client.bootstrap()
            node = await client.coordinator_lookup(CoordinationType.GROUP, group)
            response = await client.send(node, _static_leave(group, [("", i) for i in instance_ids]))
        finally:
            await client.close()
        if response.error_code:
            raise RuntimeError(f"error code {response.error_code}")
        return [str(instance) for _, instance, error in response.members if not error]

    try:
        removed = asyncio.run(asyncio.wait_for(leave(), timeout_s))
    except Exception as exc:  # the broker away: the session timeout frees them
        log.warning("could not remove the stopped processes from consumer group %s (%s): a member that "
                    "did not leave by itself keeps its partitions until its session times out", group, exc)  # fmt: skip
        return
    if removed:
        log.info("removed from consumer group %s the members that had not left: %s", group, ", ".join(removed))
    else:
        log.info("every process had left consumer group %s", group)


def _static_leave(group: str, members: list[tuple[str, str]]) -> Any:
    """A LeaveGroup v3 request for members named by their member ids ('' for any) and instance ids
    (aiokafka 0.14 defines only v0 and v1, which have no instance id)."""
    from aiokafka.protocol.api import Request, RequestStruct, Response
    from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

    class LeaveGroupResponse_v3(Response):  # noqa: N801 - Kafka's name
        API_KEY = 13
        API_VERSION = 3
        SCHEMA = Schema(
            ("throttle_time_ms", Int32),
            ("error_code", Int16),
            (
                "members",
                Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")), ("error_code", Int16)),
            ),
        )

    class LeaveGroupRequest_v3(RequestStruct):  # noqa: N801
        API_KEY = 13
        API_VERSION = 3
        RESPONSE_TYPE = LeaveGroupResponse_v3
        SCHEMA = Schema(
            ("group_id", String("utf-8")),
            ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
        )

    class StaticLeave(Request[LeaveGroupRequest_v3]):
        API_KEY = 13

        def build(self, request_struct_class: type[LeaveGroupRequest_v3]) -> LeaveGroupRequest_v3:
            return request_struct_class(group, members)

    return StaticLeave()
