"""The one place that builds Kafka connection options, and the topic check at start-up."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streams.errors import ConfigError, TopologyError
from streams.kafka import aiokafka_options, ensure_topics, faust_options, kafka_python_options, ssl_context
from streams.settings import Settings


class FakeAdmin:
    def __init__(self, existing: dict[str, int]) -> None:
        self.existing = dict(existing)
        self.created: dict[str, Any] = {}

    def list_topics(self) -> list[str]:
        return list(self.existing)

    def create_topics(self, spec: dict[str, Any], timeout_ms: int, raise_errors: bool) -> dict[str, Any]:
        self.created.update(spec)
        self.existing.update({n: s["num_partitions"] for n, s in spec.items()})
        return {"topics": [{"name": n, "error_code": 0} for n in spec]}

    def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [
            {"topic": n, "partitions": [{"partition_index": 0, "leader_id": 1, "error_code": 0}] * self.existing[n]}
            for n in names
        ]


def _settings(**kafka: Any) -> Settings:
    return Settings.model_validate({"kafka": kafka})


def test_ensure_topics_creates_only_missing_ones(caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(topics={"partitions": 6, "replication": 1})
    t = settings.kafka.topics
    admin = FakeAdmin({t.emotions: 2})
    created = ensure_topics(settings, admin=admin)
    assert created == [t.text, t.audio, t.video, t.control, t.deadletter, t.alerts, t.calls]
    assert admin.created[t.audio] == {"num_partitions": 6, "replication_factor": 1}
    # the dead letters copy part of each bad message (transcripts, audio): kept a week, not the broker's default
    assert admin.created[t.deadletter]["configs"] == {"retention.ms": "604800000"}
    assert "configs" not in admin.created[t.calls]
    assert json.dumps(admin.created)  # plain dict spec, not deprecated NewTopic objects


def test_input_topics_with_other_counts_than_settings_but_equal_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(topics={"partitions": 6})
    t = settings.kafka.topics
    admin = FakeAdmin({name: 3 for name in t.inputs()})
    ensure_topics(settings, admin=admin)
    assert "has 3 partitions, settings say 6" in caplog.text


def test_not_copartitioned_input_topics_are_refused_with_a_clear_message() -> None:
    settings = _settings(topics={"partitions": 4})
    t = settings.kafka.topics
    admin = FakeAdmin({t.text: 4, t.audio: 8})
    with pytest.raises(TopologyError, match=r"not co-partitioned.*emostream.utterance.audio: 8"):
        ensure_topics(settings, admin=admin)


def test_missing_topics_are_refused_when_creation_is_off() -> None:
    settings = _settings(create_topics=False)
    with pytest.raises(TopologyError, match="topics missing"):
        ensure_topics(settings, admin=FakeAdmin({}), create=False)


def test_plaintext_options() -> None:
    opts = kafka_python_options(_settings(brokers="a:1, b:2"))
    assert opts == {
        "bootstrap_servers": ["a:1", "b:2"],
        "security_protocol": "PLAINTEXT",
        "bootstrap_timeout_ms": 120_000,
    }
    # the first connection is waited for as long as the settings say (the client's own default is 30 s)
    assert kafka_python_options(_settings(brokers="a:1", startup_timeout_s=2.5))["bootstrap_timeout_ms"] == 2500
    assert faust_options(_settings(brokers="a:1,b:2")) == {"broker": ["kafka://a:1", "kafka://b:2"]}
    assert aiokafka_options(_settings(brokers="a:1")) == {
        "bootstrap_servers": ["a:1"],
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_scram_reaches_every_client(tmp_path: Path) -> None:
    ca = _self_signed(tmp_path)
    settings = _settings(
        security_protocol="SASL_SSL",
        ssl_cafile=str(ca),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="emostream",
        sasl_password="s3cret",
    )
    opts = kafka_python_options(settings)
    assert opts["security_protocol"] == "SASL_SSL" and opts["ssl_cafile"] == str(ca)
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("emostream", "s3cret")
    creds = faust_options(settings)["broker_credentials"]
    assert type(creds).__name__ == "SASLCredentials"
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.protocol.value == "SASL_SSL"
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    aio = aiokafka_options(settings)  # the bench's passthrough reference
    assert aio["security_protocol"] == "SASL_SSL" and isinstance(aio["ssl_context"], ssl.SSLContext)
    assert (aio["sasl_mechanism"], aio["sasl_plain_username"], aio["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "emostream",
        "s3cret",
    )
    assert "s3cret" not in repr(settings)  # secrets stay secret in logs


def test_ssl_with_client_certificate(tmp_path: Path) -> None:
    ca = _self_signed(tmp_path)
    settings = _settings(
        security_protocol="SSL", ssl_cafile=str(ca), ssl_certfile=str(ca), ssl_keyfile=str(tmp_path / "key.pem")
    )
    ctx = ssl_context(settings)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    assert type(faust_options(settings)["broker_credentials"]).__name__ == "SSLCredentials"
    assert kafka_python_options(settings)["ssl_certfile"] == str(ca)


@pytest.mark.parametrize(
    "kafka, message",
    [
        ({"security_protocol": "SASL_SSL"}, "needs kafka.sasl_mechanism"),
        ({"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"}, "security_protocol is PLAINTEXT"),
        ({"security_protocol": "SSL", "ssl_certfile": "c.pem"}, "go together"),
        ({"ssl_cafile": "ca.pem"}, "ssl_\\* files are set"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile /nonexistent/ca.pem does not"),
    ],
)
def test_settings_that_cannot_work_fail_before_connecting(kafka: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        faust_options(_settings(**kafka))
    with pytest.raises(ConfigError, match=message):  # the clients (feed, subscribe, the library), the same
        kafka_python_options(_settings(**kafka))


def test_a_tls_file_missing_is_named_at_start_not_retried_unnamed(tmp_path: Path) -> None:
    """An integrator's trial: the worker logged "Connection failed: [Errno 2] No such file or
    directory" for the whole startup_timeout_s, then "Unable to bootstrap"; the client "no Kafka
    broker answered"."""
    ca = _self_signed(tmp_path)
    for name in ("ssl_certfile", "ssl_keyfile"):
        files = {"ssl_certfile": str(ca), "ssl_keyfile": str(tmp_path / "key.pem"), name: str(tmp_path / "gone.pem")}
        with pytest.raises(ConfigError, match=f"kafka.{name} {tmp_path / 'gone.pem'} does not exist"):
            kafka_python_options(_settings(security_protocol="SSL", ssl_cafile=str(ca), **files))
    from streams.context import wait_for_redis
    from streams.settings import RedisSettings

    redis = RedisSettings(url="rediss://127.0.0.1:1/0", tls_ca_file=str(tmp_path / "gone.pem"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=f"redis.tls_ca_file {tmp_path / 'gone.pem'} does not exist"):
        wait_for_redis(redis, timeout_s=1.0)


def _self_signed(tmp_path: Path) -> Path:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert


def test_the_workers_producer_is_idempotent() -> None:
    """A leader change under load makes a plain producer's retries write duplicates out of order
    (python -m chaos.producer); the worker's events go through an idempotent one."""
    from streams.app import create_app

    app = create_app(Settings(), lambda send: None)
    producer = app.transport.create_producer()
    assert producer._settings_extra() == {"acks": "all", "enable_idempotence": True}


def test_the_workers_consumer_fetches_with_the_configured_wait() -> None:
    """Faust builds its aiokafka consumer with a fixed 1.5 s fetch wait, which held parts that long
    under a bursty load (see streams.app._prompt_fetches); the worker's consumer uses
    ``kafka.fetch_max_wait_s`` instead. The real aiokafka consumer, built (not started: no broker)."""
    import asyncio

    from streams.app import create_app

    assert Settings().kafka.fetch_max_wait_s == 0.05
    # one app only: building a second app's consumer in one process trips CPython 3.11.7's AST check
    app = create_app(Settings(kafka={"fetch_max_wait_s": 0.2}), lambda send: None)

    async def build() -> int:
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        return int(consumer._fetch_max_wait_ms)  # what AIOKafkaConsumer.start() gives its Fetcher

    assert asyncio.run(build()) == 200


@pytest.mark.parametrize(
    ("brokers", "said"),
    [
        ("127.0.0.1:9", "nothing listens at 127.0.0.1:9 (connection refused)"),
        ("nosuchhost.invalid:9092", "does not resolve"),
    ],
)
def test_an_unreachable_broker_is_said_once_a_try_not_line_by_line(
    brokers: str, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A newcomer who starts a worker before Kafka saw kafka-python's four lines a try, some twenty
    a second at first; the start-up says what is wrong, once a try, and what to check."""
    import logging

    from streams.errors import ServiceUnavailable
    from streams.kafka import wait_for_topics

    settings = Settings.model_validate({"kafka": {"brokers": brokers, "request_timeout_s": 1.0}})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ServiceUnavailable, match="is the broker running") as info:
        wait_for_topics(settings, timeout_s=3.0)
    assert said in str(info.value)
    tries = [r for r in caplog.records if r.name == "emostream.kafka"]
    assert tries and all(said in r.getMessage() for r in tries)
    noise = [r.getMessage() for r in caplog.records if r.name.startswith("kafka.") and r.levelno >= logging.WARNING]
    assert not [m for m in noise if "ECONNREFUSED" in m or "DNS" in m or "not ready" in m], noise
    assert not logging.getLogger("kafka.net.manager").filters  # removed once started or given up


@pytest.fixture
def coordinator_log() -> Any:
    """(aiokafka's coordinator logger with a :class:`CoordinatorWait` alone on it, its clock) for a
    test; the filters a worker started earlier in this process installed, and the level, restored."""
    import aiokafka.consumer.group_coordinator as gc

    from streams.kafka import CoordinatorWait

    now = [100.0]
    wait = CoordinatorWait(patience_s=30.0, clock=lambda: now[0])
    installed, level = list(gc.log.filters), gc.log.level
    for f in installed:
        gc.log.removeFilter(f)
    gc.log.addFilter(wait)
    try:
        yield gc.log, now
    finally:
        gc.log.setLevel(level)
        gc.log.removeFilter(wait)
        for f in installed:
            gc.log.addFilter(f)


def _coordinator_tries(log: Any, now: list[float], n: int) -> None:
    """``n`` failed coordinator lookups as aiokafka logs them, a retry backoff (0.1 s) apart."""
    import aiokafka.errors as errors

    for _ in range(n):
        log.error("Group Coordinator Request failed: %s", errors.GroupCoordinatorNotAvailableError())
        now[0] += 0.1


def test_a_missing_group_coordinator_is_said_once_then_as_a_warning_with_what_to_check(
    caplog: pytest.LogCaptureFixture, coordinator_log: Any
) -> None:
    """aiokafka logs an ERROR ten times a second while the broker names no coordinator for the
    group: once at every fresh broker's first group (the demo's log had one), and forever where the
    broker cannot create __consumer_offsets. The worker's filter says the first as INFO, then a
    WARNING every patience_s with the cause to check, and lets other errors through."""
    import inspect
    import logging

    import aiokafka.consumer.group_coordinator as gc
    import aiokafka.errors as errors

    from streams.kafka import COORDINATOR_LOGGER

    # the filter reads aiokafka's own lines: an upgrade that rewords them must fail here
    source = inspect.getsource(gc)
    assert (
        '"Group Coordinator Request failed: %s", err' in source and '"Discovered coordinator %s for group %s"' in source
    )
    assert gc.log.name == COORDINATOR_LOGGER

    log, now = coordinator_log
    caplog.set_level(logging.INFO, logger=COORDINATOR_LOGGER)
    _coordinator_tries(log, now, 3)  # three tries within a moment: one INFO line
    log.info("Discovered coordinator %s for group %s", 1, "g")
    first = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in first] == ["INFO", "INFO"], first
    assert "no coordinator" in first[0][1] and "__consumer_offsets" in first[0][1]
    assert first[1][1] == "Discovered coordinator 1 for group g"  # no "after" without a warning

    caplog.clear()
    _coordinator_tries(log, now, 700)  # 70 s of tries, ten a second
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in said] == ["INFO", "WARNING", "WARNING"], said
    from mode.utils.logging import ExtensionFormatter  # the worker's (Faust's) formatter

    assert all("for 30 s" in ExtensionFormatter().format(r) for r in caplog.records[1:2])
    assert "for 30 s" in said[1][1] and "for 60 s" in said[2][1]
    assert "offsets.topic.replication.factor" in said[1][1]
    log.info("Discovered coordinator %s for group %s", 2, "g")
    assert caplog.records[-1].getMessage() == "Discovered coordinator 2 for group g, after 70 s"

    caplog.clear()
    log.error("Group Coordinator Request failed: %s", errors.GroupAuthorizationFailedError())
    log.error("Group Coordinator Request failed: %s", errors.KafkaConnectionError("lost"))
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR"]
    assert "GroupAuthorizationFailedError" in caplog.records[0].getMessage()


def test_the_coordinator_filter_at_warning_level_starts_a_new_wait_after_a_gap(
    caplog: pytest.LogCaptureFixture, coordinator_log: Any
) -> None:
    """At log level WARNING the "Discovered coordinator" INFO never reaches the filter: a wait an
    hour later must not be said as one of 3600 s, and the rewritten INFO line is not printed."""
    import logging

    log, now = coordinator_log
    log.setLevel(logging.WARNING)
    caplog.set_level(logging.DEBUG)  # the handler takes everything: only the logger's level filters
    _coordinator_tries(log, now, 5)  # a moment's wait, then found (unseen at this level)
    assert [r for r in caplog.records if r.name == log.name] == []
    now[0] += 3600.0
    _coordinator_tries(log, now, 350)  # an hour later: 35 s without a coordinator
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == log.name]
    assert [lvl for lvl, _ in said] == ["WARNING"] and "for 30 s" in said[0][1], said


def test_the_coordinator_filter_is_installed_once() -> None:
    import logging

    from streams.kafka import COORDINATOR_LOGGER, CoordinatorWait, quiet_coordinator_wait

    logger = logging.getLogger(COORDINATOR_LOGGER)
    try:
        assert quiet_coordinator_wait() is quiet_coordinator_wait()
        assert sum(isinstance(f, CoordinatorWait) for f in logger.filters) == 1
    finally:
        for f in list(logger.filters):
            if isinstance(f, CoordinatorWait):
                logger.removeFilter(f)


def test_aiokafka_errors_repeated_during_an_outage_are_printed_once_per_half_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 30 s broker outage wrote 5,286 ERROR lines (155 a second), burying the worker's own line."""
    import logging

    from streams.kafka import Repeats, quiet_kafka_repeats

    now = [0.0]
    shared = quiet_kafka_repeats()
    assert quiet_kafka_repeats() is shared  # once
    for name in ("aiokafka", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator"):
        assert shared in logging.getLogger(name).filters
    f = Repeats(30.0, clock=lambda: now[0])
    logger = logging.getLogger("aiokafka.test-repeats")
    logger.addFilter(f)
    try:
        with caplog.at_level(logging.INFO, logger="aiokafka.test-repeats"):
            for i in range(150):
                now[0] = i * 0.2  # 30 s of tries
                logger.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
                logger.error("Unable to update metadata from %s", [1])
                logger.info("Connecting %s", i)  # information passes
            logger.error("Unable connect to node with id %s: %s", 2, "Connect call failed")  # another broker: said
            now[0] = 31.0
            logger.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [
            "Unable connect to node with id 1: Connect call failed",
            "Unable to update metadata from [1]",
            "Unable connect to node with id 2: Connect call failed",
            "Unable connect to node with id 1: Connect call failed [and 149 more like it in the 31 s before, not "
            "printed]",
        ]
        assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 150
    finally:
        logger.removeFilter(f)
        for name in list(logging.root.manager.loggerDict):  # the other tests see aiokafka's loggers as they were
            if name.startswith("aiokafka"):
                logging.getLogger(name).removeFilter(shared)


def test_a_topic_the_broker_will_not_create_is_said_in_words_naming_the_setting() -> None:
    """An integrator's trial: kafka.topics.replication 3 on one broker was retried for the whole
    start-up timeout, then printed as the CreateTopics response's dict of codes."""
    from streams.errors import ServiceUnavailable

    class OneBroker(FakeAdmin):
        def create_topics(self, spec: dict[str, Any], timeout_ms: int, raise_errors: bool) -> dict[str, Any]:
            return {"topics": [{"name": n, "error_code": 38, "error_message": "Replication factor: 3 larger than "
                                "available brokers: 1."} for n in spec]}  # fmt: skip

    settings = _settings(topics={"replication": 3})
    with pytest.raises(ServiceUnavailable) as raised:  # (retried: a cluster's brokers may still be joining)
        ensure_topics(settings, admin=OneBroker({}))
    said = str(raised.value)
    assert said.startswith(f"cannot create topic {settings.kafka.topics.text}: INVALID_REPLICATION_FACTOR (Replication")
    assert said.endswith("; kafka.topics.replication is 3: at most the brokers in the cluster") and "{" not in said

    class NotAllowed(FakeAdmin):
        def create_topics(self, spec: dict[str, Any], timeout_ms: int, raise_errors: bool) -> dict[str, Any]:
            return {"topics": [{"name": n, "error_code": 29, "error_message": None} for n in spec]}

    with pytest.raises(ConfigError, match="TOPIC_AUTHORIZATION_FAILED .*give the worker's user the right to create"):
        ensure_topics(settings, admin=NotAllowed({}))  # not retried for the start-up timeout: said at once
