"""Settings handed to a child process as EMOSTREAM_* variables come back whole (streams/settings.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings, load_settings, settings_env


def unlike_the_defaults() -> Settings:
    """Every section changed somewhere: a secret with quotes, a list, a nested table, floats, bools."""
    return load_settings(
        None,
        kafka={
            "brokers": "b1:9093,b2:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "emo",
            "sasl_password": 'p@"ss w=rd',
            "ssl_cafile": "/etc/ca.pem",
            "fetch_max_wait_s": 0.2,
            "topics": {"text": "t.text", "partitions": 8},
        },
        redis={"url": "rediss://:secret@r:6380/3", "window": 7, "tls_ca_file": "/etc/rca.pem"},
        join={"default_modalities": ["text"], "wait_s": 0.75},
        engine={"runtime": "onnxruntime", "max_batch": 64, "cpu_threads": 1, "revision_model": "revised"},
        limits={"max_message_bytes": 4 * 2**20},
        analytics={"enabled": False},
        metrics={"port": 19108},
        log_level="DEBUG",
    )


@pytest.mark.parametrize("settings", [Settings(), unlike_the_defaults()], ids=["defaults", "changed"])
def test_settings_env_gives_the_same_settings_back(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("EMOSTREAM_"):
            monkeypatch.delenv(key)
    env = settings_env(settings)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings
    assert load_settings(None) == settings


def test_secrets_travel_in_clear_and_lists_as_json() -> None:
    env = settings_env(unlike_the_defaults())
    assert env["EMOSTREAM_KAFKA__SASL_PASSWORD"] == 'p@"ss w=rd'  # the child needs it, not "**********"
    assert env["EMOSTREAM_JOIN__DEFAULT_MODALITIES"] == '["text"]'
    assert env["EMOSTREAM_ENGINE__RUNTIME"] == "onnxruntime"  # the harness once forgot this one


def test_a_scenarios_settings_ignore_the_shells_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every setting reaches a harness worker, so one set in the developer's shell must not."""
    from chaos.harness import env_for, settings_for

    class Services:
        brokers = "127.0.0.1:1"
        redis_url = "redis://127.0.0.1:2/0"

    monkeypatch.setenv("EMOSTREAM_ENGINE__CPU_THREADS", "16")
    monkeypatch.setenv("EMOSTREAM_LOG_LEVEL", "DEBUG")
    settings = settings_for(Services(), "u1")
    assert type(settings) is Settings and settings.engine.cpu_threads is None and settings.log_level == "INFO"
    assert settings.kafka.group_id == "gu1" and settings.engine.max_batch == 16  # the scenario's own
    env = env_for(settings)
    assert "EMOSTREAM_ENGINE__CPU_THREADS" not in env and env["EMOSTREAM_LOG_LEVEL"] == "INFO"


@pytest.mark.parametrize(
    "text", ["kafka = 3\n", "redis = 'localhost'\n", "[join]\nwait_s = 1\n[[engine]]\nmax_batch = 2\n"]
)
def test_a_settings_file_section_that_is_no_table_is_refused_even_with_a_variable_of_it_set(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to be replaced silently by the variables' table when one EMOSTREAM_<SECTION>__* was set."""
    from streams.errors import ConfigError

    path = tmp_path / "emostream.toml"
    path.write_text(text)
    for env in (
        {},
        {"EMOSTREAM_KAFKA__BROKERS": "x:1", "EMOSTREAM_REDIS__URL": "redis://x:1", "EMOSTREAM_ENGINE__MAX_BATCH": "4"},
    ):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        with pytest.raises(ConfigError, match="not a table of"):
            load_settings(path)
    path.write_text("[kafka]\nbrokers = 'a:1'\n")
    assert load_settings(path).kafka.brokers == "x:1"  # a table: the variable still wins over the file


def test_settings_that_would_fail_later_or_silently_are_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.errors import ConfigError

    # a modality no part can have: every utterance of a call without 'started' waited join.wait_s for it
    monkeypatch.setenv("EMOSTREAM_JOIN__DEFAULT_MODALITIES", '["text", "smell"]')
    with pytest.raises(ConfigError, match="'smell' is no modality; choose from text, audio, video"):
        load_settings()
    monkeypatch.setenv("EMOSTREAM_JOIN__DEFAULT_MODALITIES", '["audio", "text", "audio"]')
    assert load_settings().join.default_modalities == ("audio", "text")
    monkeypatch.delenv("EMOSTREAM_JOIN__DEFAULT_MODALITIES")
    # a Redis URL of another scheme failed only at the first Redis call; its password is not echoed
    monkeypatch.setenv("EMOSTREAM_REDIS__URL", "http://user:s3cret@host:6379/0")
    with pytest.raises(ConfigError, match="starts redis://, rediss:// .TLS. or unix://") as info:
        load_settings()
    assert "s3cret" not in str(info.value)
    monkeypatch.setenv("EMOSTREAM_REDIS__URL", "emostream:s3cret@redis:6379/0")  # no scheme: none of it echoed
    with pytest.raises(ConfigError, match="has no scheme") as info:
        load_settings()
    assert "s3cret" not in str(info.value)
    with pytest.raises(Exception, match="has no scheme") as raised:  # built in code, not from the environment
        Settings(redis={"url": "emostream:s3cret@redis:6379/0"})
    assert "s3cret" not in str(raised.value)
    monkeypatch.setenv("EMOSTREAM_JOIN__DEFAULT_MODALITIES", "[]")  # was the join's assertion at start
    with pytest.raises(ConfigError, match="default_modalities"):
        load_settings()
    monkeypatch.delenv("EMOSTREAM_JOIN__DEFAULT_MODALITIES")
    for ok in ("redis://h:6379/0", "rediss://u:p@h:6380/1", "unix:///run/redis.sock", "REDIS://h:6379/0"):
        monkeypatch.setenv("EMOSTREAM_REDIS__URL", ok)
        assert load_settings().redis.url.get_secret_value() == ok


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        # each passed, then failed once the worker ran: a traceback, or a hang (an integrator's trial)
        ("EMOSTREAM_KAFKA__BROKERS", "", "kafka.brokers: .*no broker"),  # IndexError: Cannot choose from an empty...
        ("EMOSTREAM_KAFKA__BROKERS", " , ", "kafka.brokers: .*no broker"),
        ("EMOSTREAM_KAFKA__BROKERS", "http://kafka:9092", "'http://kafka:9092' is no broker address"),  # "does not
        ("EMOSTREAM_KAFKA__BROKERS", '["kafka:9092"]', "is no broker address"),  # resolve" after startup_timeout_s
        ("EMOSTREAM_KAFKA__BROKERS", "kafka:", "'kafka:' is no broker address: host:port"),
        ("EMOSTREAM_KAFKA__BROKERS", "a:1,kafka:99999", "'kafka:99999' is no broker address"),
        ("EMOSTREAM_KAFKA__GROUP_ID", "", "kafka.group_id: .*'' is no consumer group id"),  # App requires an id!
        ("EMOSTREAM_KAFKA__GROUP_ID", "my group", "'my group' is no consumer group id"),  # InvalidTopicError
        ("EMOSTREAM_ENGINE__FUTURE", "13", "engine.future 13 must be at most redis.window 12"),  # AssertionError
        ("EMOSTREAM_REDIS__TTL_S", "inf", "redis.ttl_s: Input should be a finite number"),  # OverflowError
        ("EMOSTREAM_KAFKA__STARTUP_TIMEOUT_S", "inf", "finite number"),  # OverflowError, in the client too
        ("EMOSTREAM_REDIS__SOCKET_TIMEOUT_S", "inf", "finite number"),  # OverflowError in redis-py
        ("EMOSTREAM_JOIN__WAIT_S", "inf", "join.wait_s: Input should be a finite number"),  # never labelled: a hang
        ("EMOSTREAM_JOIN__WAIT_S", "nan", "join.wait_s: Input should be a finite number"),  # was "greater than 0"
        ("EMOSTREAM_REDIS__URL", "redis://127.0.0.1:6379/abc", "database is a number .*not 'abc'"),  # db 0, silently
    ],
)
def test_a_setting_that_would_crash_or_hang_the_running_worker_is_refused_at_start(
    name: str, value: str, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.errors import ConfigError

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=said):
        load_settings()


def test_a_key_no_section_has_is_said_with_the_one_meant_or_the_sections_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.errors import ConfigError

    for name, said in (
        (
            "EMOSTREAM_KAFKA__TOPICS__EMOTION",
            "kafka.topics.emotion: Extra inputs are not permitted (did you mean emotions?)",
        ),
        ("EMOSTREAM_JOIN__WAIT", "join.wait: Extra inputs are not permitted (did you mean wait_s?)"),
        ("EMOSTREAM_JOIN__ZZZ", "join.zzz: Extra inputs are not permitted (its section's keys: default_modalities, "),
    ):
        monkeypatch.setenv(name, "1")
        with pytest.raises(ConfigError) as raised:
            load_settings()
        assert said in str(raised.value)
        monkeypatch.delenv(name)


def test_settings_that_look_unusual_but_are_valid_pass_the_settings_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for brokers in ("a:1, b:2", "[::1]:9092", "kafka.kafka.svc:9092", "kafka", "kafka-0.kafka,kafka-1.kafka", "::1"):
        monkeypatch.setenv("EMOSTREAM_KAFKA__BROKERS", brokers)
        assert load_settings().kafka.brokers == brokers
    monkeypatch.setenv("EMOSTREAM_ENGINE__FUTURE", "12")
    assert load_settings().engine.future == 12  # (at most the window; a model's own is checked at load)
    monkeypatch.setenv("EMOSTREAM_ENGINE__REVISION_MODEL", "")  # an env file's empty line: unset, not the folder '.'
    assert load_settings().revision_model_dir() is None
    for url in ("redis://h:6379", "redis://h:6379/", "redis://h:6379/15", "unix:///run/r.sock?db=2"):
        monkeypatch.setenv("EMOSTREAM_REDIS__URL", url)
        assert load_settings().redis.url.get_secret_value() == url
    for suffix, text in ((".TOML", "[join]\nwait_s = 1.5\n"), (".conf", "[join]\nwait_s = 1.5\n"),
                         (".conf", '{"join": {"wait_s": 1.5}}'), (".json", '{"join": {"wait_s": 1.5}}')):  # fmt: skip
        path = tmp_path / f"settings{suffix}"
        path.write_text(text)
        assert load_settings(path).join.wait_s == 1.5, (suffix, text)  # .TOML and .conf were read as JSON


def test_topics_must_be_kafka_names_each_its_own_and_the_log_level_a_level(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.errors import ConfigError

    # the worker reading its own events as transcripts, or audio parts read as text
    for key, name in (("EMOTIONS", "emostream.utterance.text"), ("AUDIO", "emostream.utterance.text")):
        monkeypatch.setenv(f"EMOSTREAM_KAFKA__TOPICS__{key}", name)
        with pytest.raises(ConfigError, match=f"topics.{key.lower()} and topics.text are both"):
            load_settings()
        monkeypatch.delenv(f"EMOSTREAM_KAFKA__TOPICS__{key}")
    for bad in ("calls today", "ü", "", "x" * 250, ".."):  # failed only at the broker, after the wait for it
        monkeypatch.setenv("EMOSTREAM_KAFKA__TOPICS__CALLS", bad)
        with pytest.raises(ConfigError, match="is no Kafka topic name"):
            load_settings()
    monkeypatch.setenv("EMOSTREAM_KAFKA__TOPICS__CALLS", "acme-eu_1.call.reports")
    assert load_settings().kafka.topics.calls == "acme-eu_1.call.reports"
    monkeypatch.setenv("EMOSTREAM_LOG_LEVEL", "LOUD")  # was a traceback from logging at start
    with pytest.raises(ConfigError, match="'LOUD' is no log level"):
        load_settings()
    for given, level in (("debug", "DEBUG"), ("WARN", "WARNING"), ("fatal", "CRITICAL"), ("Error", "ERROR")):
        monkeypatch.setenv("EMOSTREAM_LOG_LEVEL", given)  # logging's own aliases, as before
        assert load_settings().log_level == level


def test_a_variable_set_to_the_default_still_wins_over_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compose file and the Kubernetes manifest set EMOSTREAM_METRICS__PORT=9108 (the default): a
    mounted settings file's other port used to win over it, moving the port the probes and Prometheus
    look at."""
    path = tmp_path / "emostream.toml"
    path.write_text('log_level = "DEBUG"\n[metrics]\nport = 9200\n[kafka]\ncreate_topics = false\n')
    monkeypatch.setenv("EMOSTREAM_LOG_LEVEL", "INFO")
    monkeypatch.setenv("EMOSTREAM_METRICS__PORT", "9108")
    monkeypatch.setenv("EMOSTREAM_KAFKA__CREATE_TOPICS", "true")
    s = load_settings(path)
    assert (s.log_level, s.metrics.port, s.kafka.create_topics) == ("INFO", 9108, True)
    monkeypatch.delenv("EMOSTREAM_METRICS__PORT")
    assert load_settings(path).metrics.port == 9200  # what no variable sets comes from the file


def test_a_redis_url_that_does_not_parse_is_refused_without_quoting_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A password with a bare '/' (openssl rand -base64 gives them) made redis-py raise at start with
    "Port could not be cast to integer value as 'Tr0ub4dor'": a traceback in the pod's log, with a
    piece of the password in it, at every restart."""
    from streams.errors import ConfigError

    monkeypatch.setenv("EMOSTREAM_REDIS__URL", "rediss://emostream:Tr0ub4dor/3#xyz@redis.example:6380/0")
    with pytest.raises(ConfigError, match="percent-encode") as caught:
        load_settings(None)
    assert "Tr0ub4dor" not in str(caught.value) and "xyz" not in str(caught.value)
    monkeypatch.setenv("EMOSTREAM_REDIS__URL", "rediss://emostream:Tr0ub4dor%2F3%23xyz@redis.example:6380/0")
    assert load_settings(None).redis.url.get_secret_value().endswith("@redis.example:6380/0")


def test_a_trajectorys_recent_turns_are_within_the_turns_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.errors import ConfigError

    monkeypatch.setenv("EMOSTREAM_ANALYTICS__MAX_TURNS", "10")
    monkeypatch.setenv("EMOSTREAM_ANALYTICS__RECENT_TURNS", "11")
    with pytest.raises(ConfigError, match="recent_turns 11 is more than max_turns 10, the turns kept"):
        load_settings()
    monkeypatch.setenv("EMOSTREAM_ANALYTICS__RECENT_TURNS", "10")
    assert load_settings().analytics.recent_turns == 10
