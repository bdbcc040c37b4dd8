"""``emostream worker --processes N``'s supervisor (streams/processes.py) on real child processes."""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.membership import supervisor_base
from streams.processes import (
    BACKOFF_S,
    MAX_QUICK_FAILURES,
    Supervisor,
    backoff_cap,
    child_env,
    child_port,
    healthz,
    next_backoff,
    worker_command,
)
from streams.settings import Settings

SLEEPER = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
    "print('up', flush=True); time.sleep(60)"
)


def python(code: str) -> Callable[[int], list[str]]:
    return lambda index: [sys.executable, "-c", code]


def run_until(sup: Supervisor, done: Callable[[], bool] | None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sup.step(time.monotonic()) or (done is not None and done()):
            return
        time.sleep(0.05)
    raise AssertionError("supervisor did not get there in time")


def test_each_child_gets_its_own_metrics_port_on_its_command_line() -> None:
    assert [child_port(9108, i) for i in range(3)] == [9108, 9109, 9110]
    assert child_port(0, 2) == 0  # any free port stays any free port
    cmd = worker_command("my.toml", 9105, "host-7")(2)
    # an override: no file undoes it; the supervisor's pid, whose death stops the child; and the child's
    # static membership, the same each time it is started
    assert cmd[-9:] == [
        "--config", "my.toml", "worker", "--metrics-port", "9107", "--parent-pid", str(os.getpid()),
        "--instance-id", "host-7-2",
    ]  # fmt: skip
    assert worker_command(None, 9105, "host-7")(2)[-1] == "host-7-2"


def test_a_supervisors_children_are_static_members_under_its_own_ids() -> None:
    assert supervisor_base("edge-a") == "edge-a"  # the configured kafka.instance_id
    mine = supervisor_base(None)
    assert f"-{os.getpid()}-" in mine  # a second supervisor on this host has other ids, and even one
    assert supervisor_base(None) != mine  # in another container with this host name and pid
    Settings(kafka={"instance_id": mine + "-0"})  # and the ids pass the setting's own check
    with pytest.raises(ValidationError, match="instance_id"):
        Settings(kafka={"instance_id": "has space"})


def test_the_restart_backoff_doubles_up_to_its_cap() -> None:
    delays = [BACKOFF_S[0]]
    for _ in range(8):
        delays.append(next_backoff(delays[-1]))
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0] and max(delays) == BACKOFF_S[1]
    # under the group's session timeout: a child is back before its static member is given up
    assert backoff_cap(30.0) == 10.0 and backoff_cap(6.0) == 2.0 and backoff_cap(90.0) == 30.0
    assert max(next_backoff(d, backoff_cap(30.0)) for d in delays) == 10.0


def test_a_stop_reaches_every_child_even_one_started_after_it() -> None:
    out = io.BytesIO()
    sup = Supervisor(2, python(SLEEPER), dict(os.environ), out)
    sup.start(sup.children[0])  # the start loop, interrupted by a signal after its first child
    sup.stop()  # the handler only sets the flag
    sup.start(sup.children[1])  # refused: the parent is stopping
    assert sup.children[1].proc is None
    run_until(sup, None)  # step() passes SIGTERM on to the child that runs
    assert all(c.proc is None for c in sup.children) and sup.exit_code == 0

    sup = Supervisor(2, python(SLEEPER), dict(os.environ), out)
    for c in sup.children:
        sup.start(c)
    run_until(sup, lambda: out.getvalue().count(b"] up") == 2)
    assert sorted(out.getvalue().split()) == [b"[0]", b"[1]", b"up", b"up"]  # each line prefixed with its child
    sup.stop()
    run_until(sup, None)
    assert sup.exit_code == 0


def test_a_crashed_child_is_started_again_and_a_config_error_stops_all() -> None:
    sup = Supervisor(1, python("import sys; sys.exit(1)"), dict(os.environ), io.BytesIO())
    sup.start(sup.children[0])
    child = sup.children[0]
    run_until(sup, lambda: child.restarts >= 2, timeout=30)  # 1 s, then 2 s of backoff
    assert child.backoff == 2.0
    sup.stop()
    run_until(sup, None)
    assert sup.exit_code == 0

    sup = Supervisor(2, python("import sys; sys.exit(2)"), dict(os.environ), io.BytesIO())
    for c in sup.children:
        sup.start(c)
    run_until(sup, None)
    assert sup.exit_code == 2 and all(c.restarts == 0 for c in sup.children)


def test_a_code_2_after_a_restart_does_not_stop_the_others(tmp_path: Path) -> None:
    """Restarted after a crash, a child that cannot reach Kafka or Redis past startup_timeout_s exits
    2: that used to stop every sibling riding out the same outage."""
    marker = tmp_path / "crashed"
    crash_then_2 = (
        f"import pathlib, sys; m = pathlib.Path({str(marker)!r}); sys.exit(2 if m.exists() else m.touch() or 1)"
    )
    sup = Supervisor(
        2, lambda i: python(crash_then_2)(i) if i == 0 else python(SLEEPER)(i), dict(os.environ), io.BytesIO()
    )
    for c in sup.children:
        sup.start(c)
    first, other = sup.children
    run_until(sup, lambda: first.restarts >= 1 and first.proc is None and marker.exists(), timeout=30)
    assert not sup.stopping and other.proc is not None and other.proc.poll() is None
    assert first.backoff == 2.0  # its second exit (code 2) backs off like a crash
    sup.stop()
    run_until(sup, None)
    assert sup.exit_code == 0


def test_children_that_keep_failing_at_once_make_the_parent_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.processes.BACKOFF_S", (0.0, 0.0))
    sup = Supervisor(1, python("import sys; sys.exit(1)"), dict(os.environ), io.BytesIO())
    sup.start(sup.children[0])
    run_until(sup, None, timeout=30)
    assert sup.exit_code == 1 and sup.children[0].restarts == MAX_QUICK_FAILURES - 1


def test_one_child_failing_again_and_again_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An OOM-killed child, say: the streak is its own, and a steady sibling keeps the supervisor going."""
    monkeypatch.setattr("streams.processes.BACKOFF_S", (0.0, 0.0))
    sup = Supervisor(
        2, lambda i: python("import sys; sys.exit(1)")(i) if i == 0 else python(SLEEPER)(i), dict(os.environ),
        io.BytesIO(),
    )  # fmt: skip
    for c in sup.children:
        sup.start(c)
    failing, steady = sup.children
    with caplog.at_level(logging.ERROR, "emostream.processes"):
        run_until(sup, lambda: failing.restarts >= 2 * MAX_QUICK_FAILURES, timeout=60)
    assert not sup.stopping and sup.exit_code == 0 and steady.restarts == 0
    assert "process 1 is not failing, so it is started again" in caplog.text
    sup.stop()
    run_until(sup, None)
    assert [c.left for c in sup.children] == [False, True]  # the sleeper stopped cleanly on SIGTERM


def test_a_sibling_killed_once_early_that_runs_steadily_since_is_not_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's trial: the healthy child OOM-killed once 18 s after its start, then steady for
    minutes, still counted as failing, and the other child's fifth quick exit stopped everything."""
    monkeypatch.setattr("streams.processes.BACKOFF_S", (0.0, 0.0))
    monkeypatch.setattr("streams.processes.STABLE_S", 1.0)
    sup = Supervisor(
        2, lambda i: python("import sys; sys.exit(1)")(i) if i == 0 else python(SLEEPER)(i), dict(os.environ),
        io.BytesIO(),
    )  # fmt: skip
    failing, steady = sup.children
    steady.quick_failures = 1  # its one early kill
    sup.start(steady)
    time.sleep(1.2)  # running since for longer than STABLE_S
    sup.start(failing)
    run_until(sup, lambda: failing.restarts >= 2 * MAX_QUICK_FAILURES, timeout=60)
    assert not sup.stopping and sup.exit_code == 0
    sup.stop()
    run_until(sup, None)


def test_every_child_failing_at_its_start_makes_the_parent_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.processes.BACKOFF_S", (0.0, 0.0))
    sup = Supervisor(2, python("import sys; sys.exit(1)"), dict(os.environ), io.BytesIO())
    for c in sup.children:
        sup.start(c)
    run_until(sup, None, timeout=30)
    assert sup.exit_code == 1 and max(c.quick_failures for c in sup.children) == MAX_QUICK_FAILURES


def test_a_broken_stdout_does_not_stop_the_pipe_from_draining() -> None:
    class Broken(io.BytesIO):
        def write(self, b: object) -> int:
            raise BrokenPipeError

    flood = "import sys; [print('x' * 1000) for _ in range(300)]; sys.exit(0)"  # 300 KB: over a pipe's buffer
    sup = Supervisor(1, python(flood), dict(os.environ), Broken())
    sup.start(sup.children[0])
    proc = sup.children[0].proc
    assert proc is not None and proc.wait(20) == 0  # it did not block on a full pipe
    sup.stop()
    run_until(sup, None)


def test_each_process_gets_its_share_of_the_cores_unless_threads_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.runtime import threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)  # whatever quota the test machine has
    env = {"PATH": "/bin"}
    shared = {"EMOSTREAM_SHARED_BY_PROCESSES": "4"}  # auto's memory share (engines/runtime/select.py)
    assert child_env(4, None, env) == {"PATH": "/bin", "EMOSTREAM_ENGINE__CPU_THREADS": "4", **shared}
    assert child_env(32, None, env)["EMOSTREAM_ENGINE__CPU_THREADS"] == "1"  # never none
    # engine.cpu_threads set: the children read it from the same settings
    assert child_env(4, 2, env) == {**env, **shared}
    assert child_env(1, None, env) == env


def test_a_child_knows_how_many_processes_share_the_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.processes import PROCESSES_ENV, shared_by

    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    assert shared_by() == 1
    monkeypatch.setenv(PROCESSES_ENV, "3")
    assert shared_by() == 3
    monkeypatch.setenv(PROCESSES_ENV, "x")
    assert shared_by() == 1


def test_the_worker_caps_malloc_arenas_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.runtime.threads import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the operator's own setting stands
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas(8) is (sys.platform == "linux")  # glibc took it (8 arenas: harmless in the test process)


def _cgroup(tmp_path: Path, files: dict[str, str], own: str = "") -> tuple[str, str]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::/{own}\n")
    return str(root), str(proc)


def test_a_cgroup_cpu_quota_is_read_in_cores(tmp_path: Path) -> None:
    from engines.runtime.threads import cgroup_cpu_limit

    assert cgroup_cpu_limit(*_cgroup(tmp_path / "a", {"cpu.max": "max 100000\n"})) is None
    assert cgroup_cpu_limit(*_cgroup(tmp_path / "b", {"cpu.max": "250000 100000\n"})) == 2.5
    # the process's own group (a pod's container), tighter than the root's
    own = {"cpu.max": "800000 100000\n", "kubepods/pod1/cpu.max": "150000 100000\n"}
    assert cgroup_cpu_limit(*_cgroup(tmp_path / "c", own, own="kubepods/pod1")) == 1.5
    v1 = {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert cgroup_cpu_limit(*_cgroup(tmp_path / "d", v1)) == 2.0
    unlimited_v1 = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert cgroup_cpu_limit(*_cgroup(tmp_path / "e", unlimited_v1)) is None
    assert cgroup_cpu_limit(str(tmp_path / "nothing"), str(tmp_path / "nothing")) is None


def test_under_a_cpu_quota_the_runtimes_get_its_cores_not_the_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.runtime import threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    assert threads.available_cores(limit=1.5) == 2
    assert threads.default_cpu_threads(limit=1.5) == 2  # a 1.5-CPU pod on a 64-core node
    assert threads.default_cpu_threads(limit=64.0) is None  # no quota below the cores: the runtimes' default
    assert threads.default_cpu_threads(limit=0.2) == 1
    assert threads.share_of_cores(2, limit=4.0) == 2
    assert threads.share_of_cores(4, limit=None) >= 1


def test_metrics_ports_past_65535_are_refused_before_any_process_starts() -> None:
    """port + N - 1 past 65535 made each child's bind raise OverflowError (no OSError): a traceback,
    five restarts, exit 1."""
    from types import SimpleNamespace

    from streams.commands import cmd_worker
    from streams.errors import ConfigError

    ns = SimpleNamespace(config=None, metrics_port=65534, parent_pid=None, instance_id=None, prepare=False, processes=3)
    with pytest.raises(ConfigError, match="at most 65535"):
        cmd_worker(ns)
    with pytest.raises(ConfigError, match="less than or equal to 65535"):
        cmd_worker(SimpleNamespace(**{**vars(ns), "metrics_port": 70000, "processes": 1}))


def _caught(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_a_starting_worker_as_pid_1_stops_on_sigterm(tmp_path: Path) -> None:
    """In a container without an init the worker is PID 1, and the kernel drops a signal PID 1 has no
    handler for: a SIGTERM while it waited for Kafka (here a port nothing listens on) was ignored,
    so `docker stop` waited its grace period for a SIGKILL. As PID 1 of a PID namespace of its own."""
    import signal
    import subprocess

    probe = subprocess.run(["unshare", "-rpf", "--kill-child", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user and PID namespaces here: {probe.stderr.decode().strip()}")
    env = {
        **os.environ,
        "EMOSTREAM_KAFKA__BROKERS": "127.0.0.1:1",
        "EMOSTREAM_KAFKA__STARTUP_TIMEOUT_S": "120",
        "EMOSTREAM_METRICS__PORT": "0",
    }
    outer = subprocess.Popen(
        ["unshare", "-rpf", "--kill-child", sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children")
        deadline = time.monotonic() + 60
        worker = 0
        while time.monotonic() < deadline and outer.poll() is None:
            kids = children.read_text().split()
            worker = int(kids[0]) if kids else 0
            if worker and _caught(worker) & (1 << (signal.SIGTERM - 1)):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the worker never caught SIGTERM while it started")
        time.sleep(1.0)  # into the wait for the broker
        os.kill(worker, signal.SIGTERM)
        assert outer.wait(20) == 128 + signal.SIGTERM
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait(10)


def test_a_child_whose_event_loop_is_stuck_is_killed_and_started_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's trial: a child's event loop stalled 90 s (/healthz 503 "event loop stuck"), its
    partitions unread; the supervisor saw a running process and left it. Now it asks each child's
    /healthz and kills one stuck for STUCK_KILL_S of looks in a row, or silent after it once said
    "ok"; a look that says "ok" (or "starting", or nothing of a child that never said "ok") resets
    it. (Here every step looks, and 1 s of stuck looks kills.)"""
    import streams.processes as processes

    monkeypatch.setattr(processes, "HEALTH_EVERY_S", 0.0)
    monkeypatch.setattr(processes, "STUCK_KILL_S", 1.0)
    said: dict[int, tuple[str, str]] = {0: ("starting", "starting"), 1: ("starting", "starting")}
    sup = Supervisor(2, python(SLEEPER), dict(os.environ), io.BytesIO(), health=said.__getitem__)
    for c in sup.children:
        sup.start(c)
    first, other = sup.children
    pid = first.proc.pid if first.proc else None

    def steps(state: tuple[str, str], n: int, pause: float = 0.7) -> None:
        said[0] = state
        for _ in range(n):
            sup.step(time.monotonic())
            time.sleep(pause)
        assert first.proc is not None and first.proc.pid == pid and first.proc.poll() is None  # not killed

    steps(("silent", "timed out"), 3)  # loading its model, never said "ok": left alone
    stuck = ("stuck", "event loop stuck for 31 s")
    steps(stuck, 2)
    steps(("ok", "ok"), 1)  # it went round again: the count starts over
    steps(stuck, 1)
    steps(("silent", "timed out"), 1)  # and now it does not answer at all, after its "ok": still counting
    with caplog.at_level(logging.WARNING, logger="emostream.processes"):
        sup.step(time.monotonic())  # 1.4 s of stuck or silent looks in a row
        said[0] = ("starting", "starting")
        run_until(sup, lambda: first.restarts == 1 and first.proc is not None)  # started again, as after a crash
    assert "process 0: its /healthz has not answered for 1 s: killing it, to start it again" in caplog.text
    assert "process 0 was killed for its stuck event loop (its /healthz): starting it again" in caplog.text
    assert first.proc is not None and first.proc.pid != pid
    assert other.proc is not None and other.proc.poll() is None and other.restarts == 0
    sup.stop()
    run_until(sup, None)


def test_the_supervisor_reads_a_childs_healthz(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from streams.metrics import LIVE_S, Metrics

    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    m = Metrics(clock)
    port = m.serve("127.0.0.1", 0)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # (a proxy the environment names is not asked)
    look = healthz("0.0.0.0", port)  # (a worker listening on every address is asked on loopback)
    assert look(0) == ("starting", "starting")
    m.beat()
    assert look(0) == ("ok", "ok")
    clock.now += LIVE_S + 1
    assert look(0) == ("stuck", "event loop stuck for 31 s")
    assert healthz("127.0.0.1", 0)(3)[0] == "unknown"  # metrics port 0: any free port, not known here
    mute = socket.socket()  # a child that takes the connection and says nothing
    mute.bind(("127.0.0.1", 0))
    mute.listen()
    assert healthz("127.0.0.1", mute.getsockname()[1], timeout_s=0.5)(0)[0] == "silent"
    mute.close()
    assert healthz("127.0.0.1", port + 1, timeout_s=0.5)(0)[0] == "unknown"  # refused (port+0 is child 0's)
