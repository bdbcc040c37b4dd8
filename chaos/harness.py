"""Real processes for fault scenarios and integration tests: the local services on ports of their
own, a worker process (`emostream worker`), and a consumer of the emotion and dead-letter topics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from streams.schemas import AlertEvent, CallReport, DeadLetter, EmotionEvent
from streams.settings import TOPIC_KEYS, Settings, settings_env

REPO = Path(__file__).resolve().parents[1]


def free_port(consecutive: int = 1) -> int:
    """A free port, the first of ``consecutive`` free ones (``worker --processes N``'s metrics)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            for p in range(port + 1, port + consecutive):
                socket.create_server(("127.0.0.1", p)).close()
            return port
        except OSError:
            continue
    raise AssertionError(f"no {consecutive} consecutive free ports")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a supervisor's workers)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


class _ArgumentsOnly(Settings):
    """Settings from the arguments and the defaults alone, whatever EMOSTREAM_* this shell has."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_for(services: Any, unique: str, session_timeout_s: float = 10.0, **join: Any) -> Settings:
    """Settings for one scenario or test: its own topics, group and Redis keys; a crashed worker's
    partitions move on after ``session_timeout_s``. The caller's EMOSTREAM_* variables do not
    count: every setting reaches the worker (:func:`env_for`), so a shell's own would change it."""
    topics: dict[str, Any] = {k: f"t{unique}.{k}" for k in TOPIC_KEYS}
    topics["replication"] = getattr(services, "replication", 1)
    fixed = _ArgumentsOnly(
        kafka={
            "brokers": services.brokers,
            "group_id": f"g{unique}",
            "topics": topics,
            "session_timeout_s": session_timeout_s,
        },
        redis={"url": services.redis_url, "key_prefix": f"ctx{unique}:", "window": 8},
        join={"wait_s": 1.5, **join},
        # audio is encoded however late: a test's or scenario's backlog (a slow machine, a fault) would
        # otherwise change its labels; test_stream_e2e turns shedding on to test it
        engine={"max_batch": 16, "max_wait_s": 0.05, "shed_audio_after_s": 0},
        metrics={"port": free_port()},
        limits={"max_message_bytes": 512 * 1024},
    )
    return Settings(**fixed.model_dump())  # every field given: the environment has nothing left to set


def env_for(settings: Settings) -> dict[str, str]:
    """The same settings as EMOSTREAM_* variables, as a user would pass them to `emostream worker`:
    every setting (:func:`streams.settings.settings_env`), none of this process's own EMOSTREAM_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSTREAM_")}
    env.update(settings_env(settings))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_with_parent() -> None:
    """``preexec_fn``: the child is sent SIGTERM when the process that started it dies. A test run
    killed by a signal runs no fixture's cleanup, and its workers went on reading and computing,
    one of them at most of a core for the 19 minutes of the next CI run (Linux:
    ``PR_SET_PDEATHSIG``; elsewhere nothing is set up)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG


class WorkerProcess:
    """`emostream worker` in its own process, logging to a file; stopped with the process that
    started it if that one dies first (:func:`stop_with_parent`)."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "worker", args: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.log_path = log_dir / f"{name}.log"
        self.args = args  # after `emostream worker`, e.g. ("--processes", "2")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", *self.args],
            cwd=REPO,
            env=env_for(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=stop_with_parent,  # noqa: PLW1509 - a prctl only, no locks taken
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            if b"worker ready" in self.log_path.read_bytes() and self.metrics_up():
                return
            time.sleep(0.5)
        raise AssertionError(f"worker not ready in {timeout} s\n{self.tail()}")

    def metrics_up(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.settings.metrics.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def metrics(self, port: int | None = None) -> str:
        """The /metrics page on ``port`` (default: the settings' port, the first child's with ``--processes N``)."""
        import urllib.request

        port = self.settings.metrics.port if port is None else port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def rss_bytes(self) -> int:
        """Resident memory of the worker process (0 once it is gone)."""
        return 0 if self.proc is None else rss(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace") if self.log_path.exists() else ""


class Collector:
    """Reads the emotion and dead-letter topics from the beginning."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer

        from streams.kafka import kafka_python_options

        t = settings.kafka.topics
        self.topics = t
        self.consumer = KafkaConsumer(
            t.emotions,
            t.deadletter,
            t.alerts,
            t.calls,
            **kafka_python_options(settings),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=500,
        )
        self.events: list[tuple[bytes | None, EmotionEvent]] = []
        self.dead: list[DeadLetter] = []
        self.alerts: list[AlertEvent] = []
        self.reports: list[CallReport] = []

    def poll_until(self, done: Callable[[Collector], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=500).values():
                for r in records:
                    if r.topic == self.topics.emotions:
                        self.events.append((r.key, EmotionEvent.model_validate_json(r.value)))
                    elif r.topic == self.topics.alerts:
                        self.alerts.append(AlertEvent.model_validate_json(r.value))
                    elif r.topic == self.topics.calls:
                        self.reports.append(CallReport.model_validate_json(r.value))
                    else:
                        self.dead.append(DeadLetter.model_validate_json(r.value))
            if done(self):
                return True
        return done(self)

    def close(self) -> None:
        self.consumer.close()


@dataclass(frozen=True)
class LocalServices:
    """A Kafka broker (or a KRaft cluster of ``kafka_nodes``) and a Redis server started by
    deploy/local/*.sh on the given ports, with their data under ``run_dir``; they can be stopped,
    killed and started again mid-scenario. Node ``i`` of a cluster listens on kafka_port + 10 (i - 1)."""

    run_dir: Path
    kafka_port: int = 29492
    redis_port: int = 26690
    kafka_nodes: int = 1

    def node_port(self, node: int) -> int:
        return self.kafka_port + 10 * (node - 1)

    @property
    def brokers(self) -> str:
        return ",".join(f"127.0.0.1:{self.node_port(i)}" for i in range(1, self.kafka_nodes + 1))

    @property
    def replication(self) -> int:
        return 3 if self.kafka_nodes >= 3 else 1

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "EMOSTREAM_RUN_DIR": str(self.run_dir),
            "KAFKA_PORT": str(self.kafka_port),
            "KAFKA_NODES": str(self.kafka_nodes),
            "REDIS_PORT": str(self.redis_port),
        }

    def script(self, name: str, *args: str, **env: str) -> None:
        subprocess.run([str(REPO / "deploy" / "local" / name), *args], check=True, env={**self._env(), **env})

    def up(self) -> LocalServices:
        self.script("kafka.sh", "up")
        self.script("redis.sh", "up")
        return self

    def down(self) -> None:
        self.script("kafka.sh", "down")
        self.script("redis.sh", "down")

    def kill9_redis(self) -> None:
        pid = int((self.run_dir / f"redis-{self.redis_port}" / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)

    def stop_kafka(self) -> None:
        self.script("kafka.sh", "down")

    def start_kafka(self) -> None:
        self.script("kafka.sh", "up")

    def start_redis(self) -> None:
        self.script("redis.sh", "up")

    def kill9_kafka_node(self, node: int) -> None:
        pid = int((self.run_dir / f"kafka-{self.node_port(node)}" / "pid").read_text())
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)

    def start_kafka_node(self, node: int) -> None:
        self.script("kafka.sh", "up", KAFKA_NODE=str(node))

    def leader_of(self, topics: list[str]) -> int:
        """The broker that leads most partitions of ``topics``."""
        from collections import Counter

        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.brokers)
        try:
            leaders = Counter(p["leader_id"] for t in admin.describe_topics(topics) for p in t["partitions"])
        finally:
            admin.close()
        return int(leaders.most_common(1)[0][0])


def rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (0 once it is gone, or without /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of metric ``name`` (all label sets) in a Prometheus text page."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))  # fmt: skip


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until ``pid`` has exited. A zombie counts as gone: the scripts' daemons are orphans, and
    where the machine's init does not reap them (some CI containers) ``kill(pid, 0)`` goes on
    succeeding, which made a scenario wait the whole timeout and date its fault 10 s late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running {timeout:.0f} s after kill -9")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # state is the field after the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (not Linux): kill(pid, 0) said it lives
    except (OSError, IndexError):
        return True
