"""``emostream worker --processes N``: N worker processes of one consumer group on one machine.

One worker process keeps about one core busy (the encoders and the engine hold the GIL between
their native calls), so a many-core machine runs several; they share the input partitions as any
members of the group do (more processes than partitions idle). This parent only supervises:

- each child is ``emostream worker`` with the same settings and its metrics on ``metrics.port + i``
  (``0`` stays "any free port"), given as an explicit override so no config file can undo it; its
  output goes to the parent's, each line prefixed ``[i]``;
- SIGTERM, SIGINT or SIGHUP is passed to every child as SIGTERM (each finishes its batch and gives
  its partitions back); a child still running :data:`STOP_GRACE_S` later is killed; the parent
  exits 0, or the code below;
- each child is a static member of the group under an id it keeps across restarts
  (``HOST-PID-RANDOM-i`` of this supervisor, or ``kafka.instance_id``-i): one started again after a
  crash takes its partitions back without a rebalance, so the others read on
  (:mod:`streams.membership`); once all have stopped, the members of those that did not stop
  cleanly (killed just before the stop, or after the grace) are removed from the group;
- a child that dies unexpectedly is started again after a backoff (1 s, doubling to a third of
  ``kafka.session_timeout_s``, 10 s by default, so that it is back before its static member is
  given up; reset once a child has run for 60 s). A child that exits with code 2 at its first start (a
  configuration error such as its metrics port taken, or Kafka and Redis unreachable past
  ``kafka.startup_timeout_s``, as a single worker exits) stops them all and the parent exits 2; a
  child started again after a crash that exits 2 (an outage the others ride out) is started again
  like any crash; :data:`MAX_QUICK_FAILURES` exits in a row of one child, each within 60 s of its
  start, stop them all with exit code 1 when every other child fails at its start too (a model that
  does not load fails every one); while another does not, the failing one is started again, with an
  ERROR line a time (a child the OOM killer takes again and again does not take the others down);
- every :data:`HEALTH_EVERY_S` each running child's ``/healthz`` is asked (all at once); a child
  whose event loop it says is stuck, or that stops answering after it once answered "ok", for
  :data:`STUCK_KILL_S` of looks in a row is killed and started again as after a crash, as an
  orchestrator's liveness probe would (a child still loading its model, or whose port is not known,
  is left alone);
- a parent killed with SIGKILL cannot pass anything on, so each child has asked Linux for a
  SIGTERM when its parent dies (:func:`die_with_parent`) and stops as on the parent's SIGTERM
  (elsewhere the children run on until stopped).

On Kubernetes run one process per pod instead (``deploy/kubernetes``): the orchestrator then
restarts and scales each one. ``--processes 1`` (the default) is a plain worker, no supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from streams.membership import child_instance_id, supervisor_base

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger("emostream.processes")

CONFIG_ERROR = 2
GAVE_UP = 1
BACKOFF_S = (1.0, 30.0)  # first and largest restart delay
STABLE_S = 60.0  # a child that ran this long resets the backoff and the quick-failure count
MAX_QUICK_FAILURES = 5
STOP_GRACE_S = 90.0  # the workers' own SIGTERM grace is 60 s (batch, flush, partitions back)
HEALTH_EVERY_S = 10.0  # how often each child's /healthz is asked
STUCK_KILL_S = 30.0  # a child whose /healthz says its event loop is stuck this long more is killed (and restarted)


def child_port(port: int, index: int) -> int:
    """Child ``index``'s metrics port: ``port + index``, or 0 (any free port) when ``port`` is 0."""
    return port + index if port else 0


def next_backoff(current: float, most: float | None = None) -> float:
    """The next restart delay: doubled, from ``BACKOFF_S[0]`` up to ``most`` (``BACKOFF_S[1]`` unless given)."""
    return min(BACKOFF_S[1] if most is None else most, max(BACKOFF_S[0], current * 2))


def backoff_cap(session_timeout_s: float) -> float:
    """The largest restart delay for a group whose sessions time out after ``session_timeout_s``: a
    third of it (10 s by default), so that a child started again is back, its start included, before
    the broker gives its static member up, and takes its partitions back without a rebalance."""
    return max(BACKOFF_S[0], min(BACKOFF_S[1], session_timeout_s / 3))


def _why(code: int, stuck: bool = False) -> str:
    if code == -signal.SIGKILL and stuck:
        return "was killed for its stuck event loop (its /healthz)"
    if code == -signal.SIGKILL:  # nobody sends it to a worker but an operator or the kernel
        return "was killed by signal 9 (SIGKILL: the kernel's OOM killer if nobody sent it, see `dmesg`)"
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0  # the delay before the next restart
    due: float = 0.0  # when to start again after a crash
    restarts: int = 0
    quick_failures: int = 0  # exits in a row, each within STABLE_S of its start
    left: bool = False  # its last exit was a clean stop (code 0 after SIGTERM): it left the group itself
    term_sent: bool = False
    pump: threading.Thread | None = field(default=None, repr=False)
    stuck_since: float | None = None  # when its /healthz first said its event loop is stuck (of the looks in a row)
    answered: bool = False  # its /healthz has said "ok" since it started: a look it no longer answers counts
    killed_stuck: bool = False  # the supervisor killed it for that (said at its restart)


class Supervisor:
    def __init__(
        self,
        n: int,
        command: Callable[[int], Sequence[str]],
        env: dict[str, str],
        out: IO[bytes] | None = None,
        max_backoff: float = BACKOFF_S[1],
        health: Callable[[int], tuple[str, str]] | None = None,
    ) -> None:
        """``health``: (state, what it said) of child i's /healthz, state one of "ok", "starting",
        "stuck", "silent" (no answer in time) or "unknown" (:func:`healthz`); None: no child is asked."""
        if n < 1:
            raise ValueError(f"--processes must be at least 1, got {n}")
        self.children = [Child(i) for i in range(n)]
        self.command = command
        self.env = {**env, "PYTHONUNBUFFERED": "1"}  # children's prints reach the pipe as they happen
        self.out = out if out is not None else sys.stdout.buffer
        self.stopping = False
        self.said_stop = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.max_backoff = max_backoff
        self.health = health
        self.health_at = 0.0  # the next look at the children's /healthz
        self._looks: Any = None  # the thread pool that asks them all at once
        self._lock = threading.Lock()

    def _pump(self, child: Child, stream: IO[bytes]) -> None:
        """Copy a child's output, prefixed; never stop reading (a child blocked on a full pipe stalls)."""
        prefix = b"[%d] " % child.index
        broken = False
        for raw in iter(stream.readline, b""):
            if broken:
                continue
            try:
                with self._lock:
                    self.out.write(prefix + raw)
                    self.out.flush()
            except Exception:  # noqa: BLE001 - a closed or broken stdout: keep draining the pipe
                broken = True

    def start(self, child: Child) -> None:
        if self.stopping:
            return
        child.proc = subprocess.Popen(
            list(self.command(child.index)),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        child.started, child.term_sent, child.killed_stuck = time.monotonic(), False, False
        child.stuck_since, child.answered = None, False
        assert child.proc.stdout is not None
        child.pump = threading.Thread(target=self._pump, args=(child, child.proc.stdout), daemon=True)
        child.pump.start()
        log.info("process %d started (pid %d)", child.index, child.proc.pid)

    def stop(self, *_: Any) -> None:
        """Ask every child to stop (the signal handler: it only sets a flag; :meth:`step` signals)."""
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + STOP_GRACE_S

    def _give_up(self, code: int, why: str) -> None:
        log.error("%s: stopping every process", why)
        self.exit_code = code
        self.stop()

    def _watch(self, now: float) -> None:
        """Every ``HEALTH_EVERY_S``, ask each running child's /healthz (all at once, each bounded by
        its timeout); kill one whose event loop has been stuck, or that has not answered since it once
        answered "ok", for ``STUCK_KILL_S`` of looks in a row (it is then started again as after a
        crash). A stuck worker reads nothing while its process runs: nothing else restarted it, where
        an orchestrator's liveness probe would (an operator's trial: a child stalled 90 s, its
        partitions unread, and the supervisor saw a running process)."""
        if self.health is None or self.stopping or now < self.health_at:
            return
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in self.children:
            if c not in running:
                c.stuck_since, c.answered = None, False
        if not running:
            self.health_at = now + HEALTH_EVERY_S
            return
        if self._looks is None:
            from concurrent.futures import ThreadPoolExecutor

            self._looks = ThreadPoolExecutor(max_workers=min(16, len(self.children)), thread_name_prefix="healthz")
        health = self.health

        def ask(index: int) -> tuple[str, str]:
            try:
                return health(index)
            except Exception as exc:  # noqa: BLE001 - a look that fails says nothing
                return "unknown", str(exc)

        began = time.monotonic()
        said = list(self._looks.map(ask, [c.index for c in running]))
        now += time.monotonic() - began  # (the next round counts from this one's end)
        self.health_at = now + HEALTH_EVERY_S
        for c, (state, why) in zip(running, said, strict=True):
            if self.stopping or c.proc is None or c.proc.poll() is not None:
                continue  # a stop asked meanwhile, or it exited
            c.answered = c.answered or state == "ok"
            if not (state == "stuck" or (state == "silent" and c.answered)):
                c.stuck_since = None
                continue
            c.stuck_since = now if c.stuck_since is None else c.stuck_since
            if now - c.stuck_since >= STUCK_KILL_S:
                log.error("process %d: its /healthz has %s for %.0f s: killing it, to start it again", c.index,
                          f"said '{why}'" if state == "stuck" else "not answered", now - c.stuck_since)  # fmt: skip
                c.proc.kill()
                c.stuck_since, c.killed_stuck = None, True

    def step(self, now: float) -> bool:
        """One look at the children: reap, pass on a stop, restart what is due; False once all are done."""
        self._watch(now)
        running = False
        if self.stopping and not self.said_stop:  # said here, not in the signal handler (a lock held there)
            self.said_stop = True
            alive = sum(c.proc is not None and c.proc.poll() is None for c in self.children)
            log.info("stopping: SIGTERM to %d running processes (each finishes its batch and gives its partitions "
                     "back; killed after %.0f s)", alive, STOP_GRACE_S)  # fmt: skip
        for c in self.children:
            proc = c.proc
            if proc is not None:
                code = proc.poll()
                if code is None:
                    running = True
                    if self.stopping and not c.term_sent:
                        proc.send_signal(signal.SIGTERM)
                        c.term_sent = True
                    elif self.stopping and now >= self.stop_deadline:
                        log.warning("process %d still runs %.0f s after SIGTERM: killing it", c.index, STOP_GRACE_S)
                        proc.kill()
                    continue
                if c.pump is not None:
                    c.pump.join(1)
                c.proc = None
                c.left = c.term_sent and code == 0  # stopped cleanly: it left the group itself
                if self.stopping:
                    if not c.left:
                        log.warning("process %d %s during the stop", c.index, _why(code))
                    continue
                ran = now - c.started
                if code == CONFIG_ERROR and c.restarts == 0:  # at its first start: the settings, for all
                    self._give_up(CONFIG_ERROR, f"process {c.index} exited with code 2 (configuration or services)")
                    continue
                # restarted after a crash, code 2 is Kafka or Redis out past kafka.startup_timeout_s (or
                # a GPU gone): the others ride the outage out, this one is started again like any crash
                c.quick_failures = c.quick_failures + 1 if ran < STABLE_S else 0
                c.backoff = BACKOFF_S[0] if ran >= STABLE_S else next_backoff(c.backoff, self.max_backoff)
                c.due = now + c.backoff
                if c.quick_failures >= MAX_QUICK_FAILURES:
                    streak = f"process {c.index} {_why(code)}: exit {c.quick_failures} in a row within " \
                             f"{STABLE_S:.0f} s of its start"  # fmt: skip
                    # the others failing at their starts too: the model, the settings or the machine
                    working = [o.index for o in self.children if o is not c and not self._failing(o, now)]
                    if not working:
                        self._give_up(GAVE_UP, f"{streak}, and every other process fails at its start too")
                        continue
                    others = ", ".join(map(str, working))
                    log.error("%s; process %s %s not failing, so it is started again in %.0f s", streak, others,
                              "is" if len(working) == 1 else "are", c.backoff)  # fmt: skip
                else:
                    log.warning("process %d %s: starting it again in %.0f s", c.index, _why(code, c.killed_stuck),
                                c.backoff)  # fmt: skip
            if not self.stopping:
                running = True
                if now >= c.due:
                    c.restarts += 1
                    self.start(c)
        return running

    @staticmethod
    def _failing(child: Child, now: float) -> bool:
        """In a streak of quick exits and not out of it: down now, or up for less than ``STABLE_S``
        (a child killed once early that has run steadily since is not failing)."""
        if child.quick_failures == 0:
            return False
        running = child.proc is not None and child.proc.poll() is None
        return not (running and now - child.started >= STABLE_S)

    def run(self, poll_s: float = 0.5) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.stop)
        try:
            for c in self.children:
                self.start(c)
            while self.step(time.monotonic()):
                time.sleep(poll_s)
            log.info("every process stopped: exit code %d", self.exit_code)
        finally:
            if self._looks is not None:
                self._looks.shutdown(wait=False)
            for c in self.children:  # an exception above: no child outlives the parent
                if c.proc is not None and c.proc.poll() is None:
                    c.proc.kill()
                    c.proc.wait(10)
        return self.exit_code


def healthz(host: str, port: int, timeout_s: float = 1.0) -> Callable[[int], tuple[str, str]]:
    """A :class:`Supervisor`'s ``health``: child i's /healthz (``host``, ``port + i``) as (state, what it
    said): "ok"; "starting" (loading its model: not killed for being slow); "stuck" (503, its event
    loop); "silent" (no answer within ``timeout_s``: a child wedged in native code holding the
    interpreter can answer nothing); "unknown" (refused, another answer, or metrics port 0). Asked
    without any proxy the environment names (``http_proxy`` sent the looks to the proxy)."""
    import urllib.error
    import urllib.request

    where = "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host  # noqa: S104
    where = f"[{where}]" if ":" in where and not where.startswith("[") else where
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def look(index: int) -> tuple[str, str]:
        at = child_port(port, index)
        if not at:
            return "unknown", "metrics port not known"
        try:
            with opener.open(f"http://{where}:{at}/healthz", timeout=timeout_s) as answer:
                said = answer.read(200).decode("utf-8", "replace").strip()
                return ("starting" if said == "starting" else "ok"), said
        except urllib.error.HTTPError as exc:
            said = exc.read(200).decode("utf-8", "replace").strip()
            return ("stuck" if exc.code == 503 and "stuck" in said else "unknown"), said
        except TimeoutError as exc:
            return "silent", str(exc)
        except urllib.error.URLError as exc:
            timed_out = isinstance(exc.reason, TimeoutError)
            return ("silent" if timed_out else "unknown"), str(exc.reason)
        except OSError as exc:
            return "unknown", str(exc)

    return look


def worker_command(config: str | None, port: int, instance_base: str) -> Callable[[int], list[str]]:
    """Child ``i``'s command line: ``emostream [--config FILE] worker --metrics-port PORT+i --parent-pid PID
    --instance-id BASE-i``: a child started again is the same static member of the group
    (:mod:`streams.membership`), so the other children go on reading meanwhile."""

    def command(index: int) -> list[str]:
        cfg = ["--config", config] if config else []
        port_i = str(child_port(port, index))
        return [
            sys.executable,
            "-m",
            "streams.cli",
            *cfg,
            "worker",
            "--metrics-port",
            port_i,
            "--parent-pid",
            str(os.getpid()),
            "--instance-id",
            child_instance_id(instance_base, index),
        ]

    return command


def die_with_parent(parent: int) -> None:
    """In a supervised child: be sent SIGTERM (a graceful stop) when the supervisor dies, even of
    SIGKILL, which gives it no chance to stop its children (Linux: ``PR_SET_PDEATHSIG``); exit at
    once if it is already gone. Elsewhere nothing is set up (a child there outlives a killed parent)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
        log.warning("could not ask to be stopped with the supervisor: errno %d", ctypes.get_errno())
        return
    if os.getppid() != parent:  # it died before the request was in place
        log.error("the supervisor (pid %d) is gone: not starting", parent)
        raise SystemExit(0)


#: how many worker processes share this machine (or container), for ``auto``'s memory budget
PROCESSES_ENV = "EMOSTREAM_SHARED_BY_PROCESSES"


def child_env(n: int, cpu_threads: int | None, env: dict[str, str]) -> dict[str, str]:
    """The children's environment: unless ``engine.cpu_threads`` is set, each of the ``n``
    processes gets its share of the cores for its model runtimes (engines/runtime/threads.py);
    and each knows that ``n`` share the memory (``auto`` weighs it: engines/runtime/select.py)."""
    from engines.runtime.threads import share_of_cores

    if n <= 1:
        return dict(env)
    if cpu_threads is not None:
        return {**env, PROCESSES_ENV: str(n)}
    return {**env, PROCESSES_ENV: str(n), "EMOSTREAM_ENGINE__CPU_THREADS": str(share_of_cores(n))}


def shared_by() -> int:
    """How many worker processes share this machine's memory (1 unless a supervisor said)."""
    try:
        return max(1, int(os.environ.get(PROCESSES_ENV, "1")))
    except ValueError:
        return 1


def run_processes(n: int, config: str | None, settings: Settings) -> int:
    """``emostream worker --processes n``: supervise ``n`` single-process workers; once they have
    stopped, remove from the group any of their static members that did not leave by itself."""
    from streams.membership import release

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    port, cpu_threads = settings.metrics.port, settings.engine.cpu_threads
    ports = f"ports {port}-{port + n - 1}" if port else "any free ports"
    env = child_env(n, cpu_threads, dict(os.environ))
    threads = env.get("EMOSTREAM_ENGINE__CPU_THREADS", "as configured" if cpu_threads else "every core")
    base = supervisor_base(settings.kafka.instance_id)
    log.info(
        "supervising %d worker processes (metrics on %s; model runtime threads each: %s; static members %s-0..%d)",
        n, ports, threads, base, n - 1,
    )  # fmt: skip
    cap = backoff_cap(settings.kafka.session_timeout_s)
    health = healthz(settings.metrics.host, port)
    supervisor = Supervisor(n, worker_command(config, port, base), env, max_backoff=cap, health=health)
    code = supervisor.run()
    stayed = [child_instance_id(base, c.index) for c in supervisor.children if not c.left]
    if stayed and code != CONFIG_ERROR:  # (a child that stopped at its settings never joined)
        release(settings, stayed)
    return code
