"""``emostream worker --processes N``'s supervisor (streams/processes.py) on real child processes."""

from __future__ import annotations

import io
import sys
import time

from streams.processes import BACKOFF_S, Supervisor, child_env, next_backoff

SLEEPER = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
    "print('up', flush=True); time.sleep(60)"
)


def run_until(sup: Supervisor, done: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sup.step(time.monotonic()) or (callable(done) and done()):
            return
        time.sleep(0.05)
    raise AssertionError("supervisor did not get there in time")


def test_each_child_gets_its_own_metrics_port() -> None:
    assert [child_env({"A": "1"}, 9108, i)["EMOSTREAM_METRICS__PORT"] for i in range(3)] == ["9108", "9109", "9110"]
    assert child_env({}, 0, 2)["EMOSTREAM_METRICS__PORT"] == "0"  # any free port stays any free port
    assert child_env({"A": "1"}, 9108, 1)["A"] == "1"


def test_the_restart_backoff_doubles_up_to_its_cap() -> None:
    delays = [BACKOFF_S[0]]
    for _ in range(8):
        delays.append(next_backoff(delays[-1]))
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0] and max(delays) == BACKOFF_S[1]


def test_sigterm_reaches_every_child_and_the_parent_exits_zero() -> None:
    out = io.StringIO()
    sup = Supervisor(2, [sys.executable, "-c", SLEEPER], {}, 0, out)
    for c in sup.children:
        sup.start(c)
    run_until(sup, lambda: out.getvalue().count("up") == 2)
    assert sorted(line.split()[0] for line in out.getvalue().splitlines()) == ["[0]", "[1]"]  # prefixed lines
    sup.stop()
    run_until(sup, None)
    assert all(c.proc is None for c in sup.children) and sup.exit_code == 0


def test_a_crashed_child_is_started_again_and_a_config_error_stops_all() -> None:
    crash = "import sys; sys.exit(1)"
    sup = Supervisor(1, [sys.executable, "-c", crash], {}, 0, io.StringIO())
    sup.start(sup.children[0])
    child = sup.children[0]
    run_until(sup, lambda: child.restarts >= 2, timeout=30)  # 1 s, then 2 s of backoff
    assert child.backoff == 2.0
    sup.stop()
    run_until(sup, None)

    sup = Supervisor(2, [sys.executable, "-c", "import sys; sys.exit(2)"], {}, 0, io.StringIO())
    for c in sup.children:
        sup.start(c)
    run_until(sup, None)
    assert sup.exit_code == 2 and all(c.restarts == 0 for c in sup.children)
