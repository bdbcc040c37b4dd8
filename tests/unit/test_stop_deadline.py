"""A worker's stop is bounded (streams/app.py arm_stop_deadline): Faust ignores a second SIGTERM or
SIGINT once its stop has begun, so a stop that hangs would keep the process until a SIGKILL."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time

from streams.app import _worker_class, arm_stop_deadline


def test_a_stop_that_has_not_ended_the_process_by_its_deadline_ends_it() -> None:
    hung = "import time; from streams.app import arm_stop_deadline; arm_stop_deadline(0.3); time.sleep(60)"
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", hung], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and time.monotonic() - t0 < 20
    assert "the stop did not finish in 0 s: exiting now" in done.stderr


def test_a_stop_that_ends_in_time_is_not_cut_short() -> None:
    timer = arm_stop_deadline(30.0)
    assert timer.daemon  # the process ends when its stop does, the timer with it
    timer.cancel()


def test_the_first_stop_signal_arms_it_in_faust_s_worker() -> None:
    import faust
    from mode.worker import Worker

    worker = _worker_class()
    assert issubclass(worker, faust.Worker) and "_schedule_shutdown" in vars(worker)
    # what the override relies on: mode schedules the stop once, remembering when in _signal_stop_time
    assert "self._signal_stop_time" in inspect.getsource(Worker._schedule_shutdown)


def test_faust_s_spinner_writes_nothing_into_the_log_at_a_terminal() -> None:
    import io
    import logging

    import faust

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    app = faust.App("spinner-test", broker="kafka://127.0.0.1:1")
    worker = _worker_class()(app, loglevel="warning", console_port=0, stdout=out, stderr=out)
    root = logging.getLogger("spinner-test")
    root.addHandler(logging.StreamHandler(out))
    try:
        worker.on_setup_root_logger(root, logging.WARNING)
        root.warning("a line an operator reads")
        worker._on_startup_end_spinner()
    finally:
        root.handlers.clear()
    assert out.getvalue() == "a line an operator reads\n"  # no sprites, no backspaces, no " 😊"
