"""``emostream worker --processes N``: N worker processes of one consumer group on one machine.

One worker process keeps about one core busy (the encoders and the engine hold the GIL between
their native calls), so a many-core machine runs several; they share the input partitions as any
members of the group do (more processes than partitions idle). This parent only supervises:

- each child is ``emostream worker`` with the same settings, its metrics on ``metrics.port + i``
  (``0`` stays "any free port"), its output on the parent's (lines prefixed by the process index);
- SIGTERM or SIGINT is passed to every child, which finishes its batch and gives its partitions
  back; the parent exits 0 once all have exited;
- a child that dies unexpectedly is started again after a backoff (1 s, doubling to 30 s, reset
  after a child ran for 60 s); one that exits with code 2 (a configuration error, or Kafka and
  Redis unreachable past ``kafka.startup_timeout_s``: every child would fail the same way, and a
  single worker exits 2 then too) stops them all and the parent exits 2;
- the children run in their own sessions (a terminal's Ctrl-C reaches the parent, which stops
  them in order): stop the parent with SIGTERM or SIGINT, since SIGKILL leaves them running.

On Kubernetes run one process per pod instead (``deploy/kubernetes``): the orchestrator then
restarts and scales each one.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

log = logging.getLogger("emostream.processes")

CONFIG_ERROR = 2
BACKOFF_S = (1.0, 30.0)  # first and largest restart delay
STABLE_S = 60.0  # a child that ran this long resets the backoff


def child_env(env: dict[str, str], port: int, index: int) -> dict[str, str]:
    """The environment of child ``index``: the parent's, its metrics on ``port + index``."""
    out = dict(env)
    out["EMOSTREAM_METRICS__PORT"] = str(port + index if port else 0)
    return out


def next_backoff(current: float) -> float:
    return min(BACKOFF_S[1], max(BACKOFF_S[0], current * 2))


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0  # the delay before the next restart
    due: float = 0.0  # when to start again after a crash (0: running or not due)
    restarts: int = 0
    pump: threading.Thread | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, n: int, command: Sequence[str], env: dict[str, str], port: int, out: IO[str] | None = None):
        if n < 1:
            raise ValueError(f"--processes must be at least 1, got {n}")
        self.children = [Child(i) for i in range(n)]
        self.command = list(command)
        self.env = env
        self.port = port
        self.out = out or sys.stdout
        self.stopping = False
        self.exit_code = 0
        self._lock = threading.Lock()

    def _pump(self, child: Child, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                self.out.write(f"[{child.index}] {raw.decode(errors='replace')}")
                self.out.flush()

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            self.command,
            env=child_env(self.env, self.port, child.index),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches the parent only; it passes SIGTERM on
        )
        child.started, child.due = time.monotonic(), 0.0
        assert child.proc.stdout is not None
        child.pump = threading.Thread(target=self._pump, args=(child, child.proc.stdout), daemon=True)
        child.pump.start()
        log.info("process %d started (pid %d)", child.index, child.proc.pid)

    def stop(self, *_: Any) -> None:
        """Pass SIGTERM to every running child; the loop ends once all have exited."""
        self.stopping = True
        for c in self.children:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)

    def step(self, now: float) -> bool:
        """One look at the children: reap, restart what is due; False once all are done."""
        running = False
        for c in self.children:
            if c.proc is not None:
                code = c.proc.poll()
                if code is None:
                    running = True
                    continue
                if c.pump is not None:
                    c.pump.join(5)
                c.proc = None
                if self.stopping:
                    continue
                if code == CONFIG_ERROR:
                    log.error("process %d exited with a configuration error: stopping every process", c.index)
                    self.exit_code = CONFIG_ERROR
                    self.stop()
                    continue
                c.backoff = BACKOFF_S[0] if now - c.started >= STABLE_S else next_backoff(c.backoff)
                c.due = now + c.backoff
                log.warning("process %d exited with code %s: starting it again in %.0f s", c.index, code, c.backoff)
            if not self.stopping and c.proc is None:
                running = True
                if now >= c.due:
                    c.restarts += 1
                    self.start(c)
        return running

    def run(self, poll_s: float = 0.5) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        for c in self.children:
            self.start(c)
        while self.step(time.monotonic()):
            time.sleep(poll_s)
        return self.exit_code


def run_processes(n: int, config: str | None, port: int) -> int:
    """``emostream worker --processes n``: supervise ``n`` single-process workers."""
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    command = [sys.executable, "-m", "streams.cli", *(["--config", config] if config else []), "worker"]
    log.info(
        "supervising %d worker processes (metrics on %s)", n, f"ports {port}-{port + n - 1}" if port else "any port"
    )
    return Supervisor(n, command, dict(os.environ), port).run()
