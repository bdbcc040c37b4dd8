"""``emostream worker --processes 2`` on the real broker and Redis: two members of the one group
share the partitions, every utterance gets its event, a child killed with SIGKILL is started again
and the group carries on, and SIGTERM stops the parent and both children."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request

import pytest

from streams.kafka import ensure_topics
from streams.settings import Settings
from tests.integration.harness import Collector, WorkerProcess, children, free_port, settings_for
from tools.dialogues import read_meld_csv
from tools.feed import feed

pytestmark = pytest.mark.integration


def _counter(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(name + "{") or x.startswith(name + " "))


def test_two_processes_share_the_partitions_survive_a_kill_and_stop_on_sigterm(  # type: ignore[no-untyped-def]
    services, unique, shared_data, tmp_path
) -> None:
    base = settings_for(services, unique, default_modalities=("text",))
    settings = base.model_copy(update={"metrics": base.metrics.model_copy(update={"port": free_port(2)})})
    ensure_topics(settings)
    port = settings.metrics.port
    dialogues = [d for d in read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv", dialogue_ids=range(0, 40))][:16]
    want = {(u.call_id, u.utterance_id) for d in dialogues for u in d.utterances}
    collector = Collector(settings)
    worker = WorkerProcess(settings, tmp_path, "supervisor", args=("--processes", "2")).start()
    ready = lambda: worker.log_path.read_bytes().count(b"worker ready")  # noqa: E731
    kids: list[int] = []
    try:
        worker.wait_ready()  # the first child's port answers and a child logged "worker ready"
        assert worker.proc is not None
        collector.poll_until(lambda c: ready() >= 2, 120)
        assert ready() >= 2, worker.tail()
        kids = children(worker.proc.pid)
        assert len(kids) == 2, kids
        feeder = threading.Thread(
            target=feed, args=(dialogues, settings), daemon=True,
            kwargs={"realtime": False, "progress": False, "modalities": ("text",)},
        )  # fmt: skip
        feeder.start()
        feeder.join(120)
        got = lambda c: {(e.call_id, e.utterance_id) for _, e in c.events}  # noqa: E731
        assert collector.poll_until(lambda c: got(c) >= want, 120), f"{len(want - got(collector))} missing"
        shares = [_counter(port + i, "emostream_utterances_processed_total") for i in range(2)]
        assert all(s > 0 for s in shares), shares  # both members of the group labelled calls

        killed = _instance_index(kids[0])
        os.kill(kids[0], signal.SIGKILL)  # a child dies: the supervisor starts another
        restarted = lambda c: b"was killed by signal 9 (SIGKILL" in worker.log_path.read_bytes()  # noqa: E731
        assert collector.poll_until(restarted, 30), worker.tail()
        assert collector.poll_until(lambda c: ready() >= 3, 180), worker.tail()
        kids = children(worker.proc.pid)
        assert len(kids) == 2
        more = [d for d in read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv", dialogue_ids=range(40, 80))][:8]
        feed(more, settings, realtime=False, progress=False, modalities=("text",))
        want |= {(u.call_id, u.utterance_id) for d in more for u in d.utterances}
        assert collector.poll_until(lambda c: got(c) >= want, 120), f"{len(want - got(collector))} missing"
        # the child started again was the same static member: the group did not rebalance, so the other
        # child kept its partitions throughout (a dynamic member's start waited for the dead one's session
        # to time out, and meanwhile the whole group read nothing)
        log_after = worker.log_path.read_bytes().split(b"was killed by signal 9", 1)[1].decode(errors="replace")
        survivor = f"[{1 - killed}] "
        assert not [x for x in log_after.splitlines() if x.startswith(survivor) and "revoked" in x], worker.tail()

        # a child dies just before the stop: it cannot leave, so the supervisor removes it once every
        # child has stopped (a supervisor started again, with new ids, waited 30 s for it)
        dead, alive = kids
        alive_index = _instance_index(alive)
        os.kill(dead, signal.SIGKILL)
        time.sleep(0.3)
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(120) == 0, worker.tail()
        assert not [pid for pid in kids if os.path.exists(f"/proc/{pid}")], "a child outlived the parent"
        # the other left by itself (LeaveGroup v3 by its instance id: aiokafka sends none for a static
        # member), and the broker holds neither: without both, it kept them until their sessions timed out
        stopped = worker.log_path.read_text(errors="replace").split("stopping: SIGTERM", 1)[1]
        left = [x for x in stopped.splitlines() if x.startswith(f"[{alive_index}] ") and "left consumer group" in x]
        assert left and "as static member" in left[0], worker.tail()
        assert f"removed from consumer group {settings.kafka.group_id} the members that had not left: " in stopped
        assert _members(settings) == [], worker.tail()
    finally:
        collector.close()
        worker.stop()
        for pid in kids:  # on a failure above, no child is left to load the CI machine
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _instance_index(pid: int) -> int:
    with open(f"/proc/{pid}/cmdline") as f:
        argv = f.read().split("\0")
    return int(argv[argv.index("--instance-id") + 1].rsplit("-", 1)[1])


def _members(settings: Settings) -> list[str]:
    from kafka import KafkaAdminClient

    from streams.kafka import kafka_python_options

    admin = KafkaAdminClient(**kafka_python_options(settings))
    try:
        group = admin.describe_groups([settings.kafka.group_id])[settings.kafka.group_id]
    finally:
        admin.close()
    return [m.get("group_instance_id") or m["member_id"] for m in group["members"]]


def test_the_children_stop_when_the_supervisor_is_killed(  # type: ignore[no-untyped-def]
    services, unique, tmp_path
) -> None:
    """SIGKILL gives the supervisor no chance to pass a stop on: each child asked Linux for a
    SIGTERM when its parent dies, so no orphaned worker keeps consuming."""
    base = settings_for(services, unique, default_modalities=("text",))
    settings = base.model_copy(update={"metrics": base.metrics.model_copy(update={"port": free_port(2)})})
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path, "killed-supervisor", args=("--processes", "2")).start()
    ready = lambda: worker.log_path.read_bytes().count(b"worker ready")  # noqa: E731
    kids: list[int] = []
    try:
        worker.wait_ready()
        assert worker.proc is not None
        deadline = time.monotonic() + 120
        while ready() < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        kids = children(worker.proc.pid)
        assert len(kids) == 2, (kids, worker.tail())
        worker.proc.kill()
        worker.proc.wait(10)
        deadline = time.monotonic() + 60
        while [pid for pid in kids if _alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [pid for pid in kids if _alive(pid)], "a child outlived its killed supervisor"
    finally:
        worker.stop()
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan is reaped by init, but not necessarily at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
