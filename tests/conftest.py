"""Shared fixtures. Integration tests get the real Kafka broker and Redis server that the
project's own scripts (deploy/local/*.sh) start, on test ports, once per session."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hypothesis  # noqa: F401
import pytest

# ^ imported here, not first at the session's end by its plugin's summary: CPython 3.11.7's parser
# raises "AST constructor recursion depth mismatch" on a module compiled after a test has built
# Faust's aiokafka consumer (tests/unit/test_kafka.py run alone), and pytest compiles the plugin's
# modules as it imports them

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EMOSTREAM_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
KAFKA_PORT = 19092
REDIS_PORT = 16379


@dataclass(frozen=True)
class Services:
    brokers: str
    redis_url: str


def _script(name: str, action: str, env: dict[str, str]) -> None:
    subprocess.run([str(REPO / "deploy" / "local" / name), action], check=True, env={**os.environ, **env})


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    env = {"KAFKA_PORT": str(KAFKA_PORT), "REDIS_PORT": str(REDIS_PORT)}
    _script("kafka.sh", "up", env)
    _script("redis.sh", "up", env)
    _wait_for_kafka(f"127.0.0.1:{KAFKA_PORT}")
    yield Services(brokers=f"127.0.0.1:{KAFKA_PORT}", redis_url=f"redis://127.0.0.1:{REDIS_PORT}/0")
    if os.environ.get("EMOSTREAM_KEEP_SERVICES") != "1":
        _script("kafka.sh", "down", env)
        _script("redis.sh", "down", env)


def _wait_for_kafka(brokers: str, timeout: float = 60.0) -> None:
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=brokers, request_timeout_ms=5000)
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # broker still starting
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"Kafka at {brokers} not ready: {last}")


@pytest.fixture
def unique() -> str:
    """A random suffix for topic, group and key names, so tests never share state."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (../shared/data beside the repo, or EMOSTREAM_DATA_DIR). CI always has
    them, so there a missing folder is a failure, not a skip."""
    if not (SHARED_DATA / "meld").is_dir():
        message = f"shared datasets not found at {SHARED_DATA} (set EMOSTREAM_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA
