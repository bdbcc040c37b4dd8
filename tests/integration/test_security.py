"""A secured stack, on a real broker and Redis started by the project's scripts: Kafka with
SASL_SSL + SCRAM-SHA-512 and an SSL listener that requires a client certificate, Redis over TLS
with an ACL user; certificates made by deploy/local/certs.sh. A worker with the right credentials
works end to end; one without them is refused and says so; plaintext clients get nothing."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from client.publisher import make_producer
from streams.errors import ServiceUnavailable
from streams.kafka import ensure_topics
from streams.schemas import TextPart
from streams.settings import TOPIC_KEYS, Settings
from tests.integration.harness import REPO, Collector, WorkerProcess, env_for, free_port

pytestmark = pytest.mark.integration

KAFKA_PORT, KAFKA_SSL_PORT, REDIS_PORT = 29192, 29194, 26390


@dataclass(frozen=True)
class Secure:
    tls: Path
    user: str
    kafka_password: str
    redis_password: str


def _script(name: str, action: str, env: dict[str, str]) -> None:
    subprocess.run([str(REPO / "deploy" / "local" / name), action], check=True, env={**os.environ, **env})


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("secure")
    s = Secure(root / "tls", "emostream", secrets.token_urlsafe(12), secrets.token_urlsafe(12))
    env = {
        "EMOSTREAM_RUN_DIR": str(root / "run"),
        "KAFKA_PORT": str(KAFKA_PORT),
        "KAFKA_SSL_PORT": str(KAFKA_SSL_PORT),
        "KAFKA_SECURITY": "sasl_ssl",
        "KAFKA_SCRAM_USER": s.user,
        "KAFKA_SCRAM_PASSWORD": s.kafka_password,
        "KAFKA_TLS_DIR": str(s.tls),
        "REDIS_PORT": str(REDIS_PORT),
        "REDIS_TLS_DIR": str(s.tls),
        "REDIS_USER": s.user,
        "REDIS_PASSWORD": s.redis_password,
    }
    _script("kafka.sh", "up", env)
    _script("redis.sh", "up", env)
    try:
        yield s
    finally:
        _script("kafka.sh", "down", env)
        _script("redis.sh", "down", env)


def _settings(s: Secure, unique: str, kafka_password: str | None = None, **kafka: Any) -> Settings:
    topics = {k: f"s{unique}.{k}" for k in TOPIC_KEYS}
    return Settings(
        kafka={
            "brokers": f"127.0.0.1:{KAFKA_PORT}",
            "security_protocol": "SASL_SSL",
            "ssl_cafile": str(s.tls / "ca.pem"),
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": s.user,
            "sasl_password": kafka_password or s.kafka_password,
            "group_id": f"g{unique}",
            "topics": topics,
            "startup_timeout_s": 20,
            "request_timeout_s": 5,
            **kafka,
        },
        redis={
            "url": f"rediss://{s.user}:{s.redis_password}@127.0.0.1:{REDIS_PORT}/0",
            "tls_ca_file": str(s.tls / "ca.pem"),
            "key_prefix": f"ctx{unique}:",
        },
        join={"wait_s": 1.0, "default_modalities": ("text",)},
        engine={"max_batch": 16, "max_wait_s": 0.05},
        metrics={"port": free_port()},
    )


def test_a_worker_with_credentials_works_end_to_end_over_sasl_ssl_and_redis_tls(  # type: ignore[no-untyped-def]
    secure, unique, tmp_path
) -> None:
    settings = _settings(secure, unique)
    worker = WorkerProcess(settings, tmp_path).start()
    collector = None
    producer = make_producer(settings)
    try:
        worker.wait_ready()
        collector = Collector(settings)
        t = settings.kafka.topics
        for i in range(4):
            part = TextPart(call_id="secure-call", utterance_id=f"u{i}", seq=i, text=f"thank you so much, {i}")
            producer.send(t.text, key=b"secure-call", value=part.to_bytes())
        producer.flush()
        ok = collector.poll_until(lambda c: len({e.utterance_id for _, e in c.events}) >= 4, 90)
        assert ok, worker.tail()
        assert {e.call_id for _, e in collector.events} == {"secure-call"}
        assert max(e.context_size for _, e in collector.events) == 4  # the windows live in the TLS Redis
    finally:
        producer.close()
        if collector is not None:
            collector.close()
        worker.stop()


@pytest.mark.parametrize(
    "what, change, message",
    [
        # refused at every try: a short start-up timeout says so as well as the 20 s of the others
        ("wrong SCRAM password", {"kafka_password": "not-the-password", "startup_timeout_s": 8}, "gave up after 8 s"),
        (
            "plaintext client",
            {"security_protocol": "PLAINTEXT", "sasl_mechanism": None, "ssl_cafile": None, "startup_timeout_s": 8},
            "gave up",
        ),
    ],
)
def test_a_worker_without_credentials_is_refused_and_says_so(  # type: ignore[no-untyped-def]
    secure, unique, what: str, change: dict[str, Any], message: str
) -> None:
    settings = _settings(secure, unique, **change)
    env = env_for(settings)
    if settings.kafka.security_protocol == "PLAINTEXT":
        for name in ("SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD", "SSL_CAFILE"):
            env.pop(f"EMOSTREAM_KAFKA__{name}", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"], cwd=REPO, env=env, capture_output=True, timeout=180
    )
    err = done.stderr.decode()
    assert done.returncode == 2, f"{what}: {err[-2000:]}"
    assert message in err and "check kafka.security_protocol" in err, err[-2000:]
    assert time.monotonic() - started < 120
    assert ("\n" + err).count("\nerror: ") == 1 and "Traceback" not in err


def test_redis_refuses_a_wrong_password_at_start(secure, unique) -> None:  # type: ignore[no-untyped-def]
    from streams.context import wait_for_redis
    from streams.errors import ConfigError

    settings = _settings(secure, unique)
    wait_for_redis(settings.redis, 10)
    url = SecretStr(f"rediss://{secure.user}:nope@127.0.0.1:{REDIS_PORT}/0")
    with pytest.raises(ConfigError, match="Redis refused the worker"):
        wait_for_redis(settings.redis.model_copy(update={"url": url}), 10)


def test_mutual_tls_listener_needs_a_client_certificate(secure, unique) -> None:  # type: ignore[no-untyped-def]
    tls = {"brokers": f"127.0.0.1:{KAFKA_SSL_PORT}", "security_protocol": "SSL", "sasl_mechanism": None}
    with_cert = _settings(
        secure, unique, **tls, ssl_certfile=str(secure.tls / "client.pem"), ssl_keyfile=str(secure.tls / "client.key")
    )
    created = ensure_topics(with_cert)
    assert with_cert.kafka.topics.text in created
    producer = make_producer(with_cert)
    part = TextPart(call_id="c", utterance_id="u", seq=0, text="hi")
    topic, value = with_cert.kafka.topics.text, part.to_bytes()
    assert producer.send(topic, key=b"c", value=value).get(timeout=30).offset == 0
    producer.close()
    without = _settings(secure, unique, **tls)
    with pytest.raises(ServiceUnavailable, match="Unable to bootstrap"):
        ensure_topics(without)
