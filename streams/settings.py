"""One frozen settings object, built once at the entry point and passed down.

Environment variables use the prefix ``EMOSTREAM_`` and ``__`` between sections, e.g.
``EMOSTREAM_KAFKA__BROKERS=127.0.0.1:9092`` or ``EMOSTREAM_ENGINE__MAX_BATCH=64``. A TOML/JSON
file can be given with ``--config``; environment variables win over it. No other module reads
``os.environ`` for settings (a ``--processes N`` supervisor tells its children how many share the
machine in one variable of its own: ``streams.processes.PROCESSES_ENV``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import tomllib
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from engines.features.speech import MIN_SPEECH_S
from streams.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    # (no float setting means anything at infinity: an infinite join.wait_s held every utterance for ever,
    # an infinite TTL or timeout failed as an OverflowError once the worker ran)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


#: every topic emostream reads or writes (TopicSettings fields)
TOPIC_KEYS = ("text", "audio", "video", "control", "emotions", "deadletter", "alerts", "calls")
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
#: the names logging takes (WARN and FATAL are its aliases)
_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARNING", "WARN": "WARNING", "ERROR": "ERROR",
           "CRITICAL": "CRITICAL", "FATAL": "CRITICAL", "NOTSET": "NOTSET"}  # fmt: skip


class TopicSettings(_Section):
    text: str = "emostream.utterance.text"
    audio: str = "emostream.utterance.audio"
    video: str = "emostream.utterance.video"
    control: str = "emostream.call.control"
    emotions: str = "emostream.emotion.events"
    deadletter: str = "emostream.deadletter"
    alerts: str = "emostream.call.alerts"
    calls: str = "emostream.call.reports"
    partitions: int = Field(4, ge=1, description="partitions of every input topic (co-partitioned)")
    replication: int = Field(1, ge=1)
    deadletter_retention_s: float = Field(
        604_800.0,
        ge=0,
        description="how long the dead-letter topic keeps its records, set when the worker creates it (7 days; "
        "0: the broker's default): they copy part of each bad message, transcripts and audio included",
    )

    @model_validator(mode="after")
    def _names(self) -> TopicSettings:
        names = {key: getattr(self, key) for key in TOPIC_KEYS}
        for key, name in names.items():  # Kafka's own rule; a bad name failed only at the broker
            if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
                raise ValueError(f"topics.{key} {name!r} is no Kafka topic name: 1-249 of a-z A-Z 0-9 . _ -")
        seen: dict[str, str] = {}
        for key, name in names.items():  # one topic for two purposes: parts read as the wrong kind, or
            if name in seen:  # the worker reading its own output
                raise ValueError(f"topics.{key} and topics.{seen[name]} are both {name!r}: every topic is its own")
            seen[name] = key
        return self

    def inputs(self) -> dict[str, str]:
        """Input topic name -> what it carries (a modality or 'control')."""
        return {self.text: "text", self.audio: "audio", self.video: "video", self.control: "control"}


#: a broker as the clients take it: host[:port], [IPv6][:port], or a bare IPv6 address (port 9092)
_BROKER = re.compile(
    r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*"
)
INSTANCE_ID_MAX = 200  # characters of kafka.instance_id (Kafka allows 249; --processes N adds "-i")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]+")


class KafkaSettings(_Section):
    """How every Kafka client of emostream connects (``streams.kafka`` turns this into each
    client library's options): PLAINTEXT, SSL (CA, optional client certificate) or SASL_SSL."""

    brokers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str | None = Field(None, description="PEM file of the CA that signed the brokers' certificates")
    ssl_certfile: str | None = Field(None, description="PEM client certificate (mutual TLS)")
    ssl_keyfile: str | None = Field(None, description="PEM private key of the client certificate")
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    request_timeout_s: float = Field(30.0, gt=0, description="admin and metadata requests, and reaching a broker")
    startup_timeout_s: float = Field(
        120.0, gt=0, description="how long the worker waits for Kafka and Redis at start, and the clients for a broker"
    )
    create_topics: bool = Field(True, description="the worker creates missing topics at start")
    session_timeout_s: float = Field(
        30.0, ge=6, le=90, description="a worker silent this long (crashed) loses its partitions to the others"
    )
    fetch_max_wait_s: float = Field(
        0.05,
        ge=0.001,
        le=1.5,
        description="the longest the broker holds the worker's fetch for partitions with nothing new; a partition "
        "left out of a fetch in flight (its records not yet handed to the worker) waits for it, so this bounds "
        "how late a part may be read (Faust's own 1.5 s held parts up to that long under bursty load)",
    )
    group_id: str = "emostream-worker"
    instance_id: str | None = Field(
        None,
        description="static membership of the consumer group (Kafka's group.instance.id): a worker started "
        "again under the same id within session_timeout_s takes its partitions back without a rebalance, so "
        "the group's other members never stop reading; a SIGTERM still gives them back at once. One per "
        "running worker: two under one id displace each other in turn and read the same partitions twice; "
        "--processes N gives child i 'ID-i' (unset: 'HOST-PID-RANDOM-i', drawn by the supervisor)",
    )
    topics: TopicSettings = TopicSettings()

    @field_validator("brokers")
    @classmethod
    def _brokers(cls, v: str) -> str:
        listed = [b.strip() for b in v.split(",") if b.strip()]
        if not listed:
            raise ValueError("no broker: host:port, or several separated by commas")
        # what every client takes (a host alone: port 9092); a bad one was retried for startup_timeout_s,
        # then said as "does not resolve"
        for b in listed:
            found = _BROKER.fullmatch(b)
            port = found.group("port") if found else None
            if found is None or (port is not None and not 0 < int(port) <= 65535):
                shown = b if len(b) <= 60 else b[:60] + "..."
                raise ValueError(f"{shown!r} is no broker address: host:port (a port 1-65535; a host alone is port "
                                 "9092; no scheme), several separated by commas")  # fmt: skip
        return v

    @field_validator("group_id")
    @classmethod
    def _group_id(cls, v: str) -> str:
        # Faust names topics of its own after it ('GROUP-__assignor-__leader'): Kafka's rule for topic names
        if not _INSTANCE_ID.fullmatch(v) or len(v) > INSTANCE_ID_MAX or v in (".", ".."):
            shown = v if len(v) <= 40 else v[:40] + "..."
            raise ValueError(f"{shown!r} is no consumer group id here: 1-{INSTANCE_ID_MAX} of a-z A-Z 0-9 . _ - "
                             "(the worker's group names topics of its own)")  # fmt: skip
        return v

    @field_validator("instance_id", mode="before")
    @classmethod
    def _instance_id(cls, v: Any) -> Any:
        if v == "":  # EMOSTREAM_KAFKA__INSTANCE_ID= in an env file: unset
            return None
        if isinstance(v, str) and (
            not _INSTANCE_ID.fullmatch(v) or len(v) > INSTANCE_ID_MAX or v in (".", "..")
        ):  # Kafka's rule for a group instance id, as for a topic name, with room for --processes N's "-i"
            shown = v if len(v) <= 40 else v[:40] + "..."
            raise ValueError(f"{shown!r} ({len(v)} characters) is no group instance id: 1-{INSTANCE_ID_MAX} of "
                             "a-z A-Z 0-9 . _ -, not '.' or '..'")  # fmt: skip
        return v


class RedisSettings(_Section):
    """``url`` may carry an ACL user and password (``rediss://user:password@host:port/0`` for TLS)."""

    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    tls_ca_file: str | None = Field(None, description="PEM CA that signed the server's certificate (rediss://)")
    tls_cert_file: str | None = Field(None, description="PEM client certificate, when the server asks for one")
    tls_key_file: str | None = None
    socket_timeout_s: float = Field(5.0, gt=0, description="a Redis call that takes longer fails and is retried")
    key_prefix: str = "emostream:ctx:"
    window: int = Field(12, ge=1, description="utterances kept per call (context window)")
    ttl_s: float = Field(3600.0, gt=0, description="sliding TTL of an idle call's window")
    started_ttl_s: float = Field(
        172800.0,
        gt=0,
        description="how long a call id's last 'started' offset is kept (one small key a call): a later 'started' "
        "under the id within it is a new call, with ids of its own, even after the first call's state expired",
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: SecretStr) -> SecretStr:
        found = _SCHEME.match(url.get_secret_value())
        scheme = found.group(1).lower() if found else None
        if scheme not in ("redis", "rediss", "unix"):  # the rest of the URL (a password) stays out of the message
            raise ValueError(
                "a Redis URL starts redis://, rediss:// (TLS) or unix://, "
                + (f"not {scheme[:20]}://" if scheme else "and this one has no scheme")
            )
        try:  # as redis-py reads it: a password with a bare / # or ? ends the host early, "port" its next part
            parts = urlsplit(url.get_secret_value())
            _ = parts.port
        except ValueError:
            raise ValueError(
                "a Redis URL that does not parse: percent-encode / # ? @ and : in its user name and password "
                "(urllib.parse.quote(password, safe=''))"
            ) from None  # the exception's own message quotes a piece of the password
        db = unquote(parts.path.strip("/"))  # (as redis-py reads it: /%31 is database 1)
        if (
            scheme != "unix" and db and not (db.isascii() and db.isdigit())
        ):  # redis-py drops a database it cannot read: 0, silently
            shown = db if len(db) <= 20 else db[:20] + "..."
            raise ValueError(f"a Redis URL's database is a number (redis://host:port/0), not {shown!r}")
        return url


class JoinSettings(_Section):
    wait_s: float = Field(2.0, ge=0, description="max wait for missing modalities after an utterance's first part")
    default_modalities: tuple[str, ...] = Field(
        ("text", "audio"),
        min_length=1,
        description="what a call without a 'started' message is waited for (see learn_after)",
    )

    @field_validator("default_modalities")
    @classmethod
    def _modalities(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from engines.modalities import MODALITIES

        unknown = [n for n in names if n not in MODALITIES]
        if unknown:  # an utterance would wait join.wait_s for a part that never comes
            raise ValueError(f"{', '.join(map(repr, unknown))} is no modality; choose from {', '.join(MODALITIES)}")
        return tuple(dict.fromkeys(names))

    end_wait_s: float | None = Field(
        None,
        ge=0,
        description="how long a call's close waits after its 'ended' for parts still coming (a speech-to-text "
        "engine that finalises the last transcript after the hang-up); parts sent within it and 60 s of clock "
        "skew after the 'ended' are the call's, later ones are refused (after_call_ended); at least wait_s; "
        "unset: wait_s",
    )
    idle_end_s: float | None = Field(
        None,
        ge=0,
        description="a call that has had no part for this long, and no 'ended', is ended as if its 'ended' had "
        "come (its final revisions and summary go out, its open alerts clear; a part of it after that reopens it "
        "without its earlier context); less than redis.ttl_s, whose expiry would take the call's state first; "
        "unset: half of redis.ttl_s; 0: never",
    )
    learn_after: int = Field(
        2,
        ge=0,
        description="a call that did not declare its modalities and has sent no part of an expected one in this "
        "many utterances: its next utterances wait 0.5 s for that modality once their other parts are in, not "
        "wait_s, until its first part comes; so does a speaker whose utterances went without a modality they never "
        "sent while another speaker of the call sent it (one leg recorded), in a declared call too (0: always wait_s)",
    )
    max_open_utterances: int = Field(
        100_000,
        ge=1,
        description="utterances waiting for parts; at the cap the worker stops reading until some are due",
    )
    max_held_audio_s: float = Field(
        3600.0,
        ge=1,
        description="seconds of decoded audio the utterances waiting for parts may hold (64 KB a second: 3600 is "
        "about 230 MB); at the cap the worker stops reading until some are due, and from 0.8 of it no utterance "
        "is held past wait_s for a part read behind (a text partition whose leader is gone while audio flows)",
    )
    max_stall_s: float = Field(
        120.0,
        ge=0,
        description="while the topic of a missing part is read behind the utterance's record time (a backlog), "
        "wait for that part past wait_s for as long as that topic's partition is read further; give up once it "
        "has not advanced for this long",
    )
    max_hold_s: float = Field(
        900.0,
        ge=0,
        description="a backstop: however the reading goes (a part whose record time is far ahead, skewed clocks), "
        "no utterance waits longer than this past wait_s",
    )
    max_open_calls: int = Field(
        50_000,
        ge=1,
        description="calls with join state; at the cap the least recently active idle call is forgotten; also calls "
        "waiting for their close after their 'ended': at that many the worker stops reading until some have closed",
    )
    max_finished_ids: int = Field(
        200_000,
        ge=1,
        description="labelled (call, utterance) ids remembered to recognise late, redelivered and conflicting parts",
    )


class EngineSettings(_Section):
    model: str = "default"  # 'default' = the shipped model in models/default, or a path
    # the Redis scripts unpack() a batch's ids: Lua caps that near 8000
    max_batch: int = Field(256, ge=1, le=1024, description="utterances an engine batch takes at most")
    max_wait_s: float = Field(
        0.05, ge=0, description="a batch goes to the engine when its oldest utterance has waited this long"
    )
    batch_budget_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="compute time one batch may take: under load, batches grow to what the encoders and the "
        "engine have lately done in this time (streams/batching.py), and at most max_batch",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of this process's ONNX Runtime, OpenVINO and torch pools "
        "(engines/runtime/threads.py); None: every core for one process, cores // N for each of "
        "`emostream worker --processes N` (under a cgroup CPU quota, its cores rounded up)",
    )
    future: int = Field(
        0,
        ge=0,
        description="k future utterances for revised events (0: none, or the revision model's own k when it is set)",
    )
    runtime: Literal[
        "auto", "onnxruntime", "openvino", "onnxruntime-bf16", "onnxruntime-int8", "torch", "torch-cuda", "tensorrt"
    ] = Field(
        "auto",
        description="runs the engine and both encoders (engines/runtime/select.py): auto = tensorrt where it "
        "imports and a CUDA GPU is present, else torch-cuda with a GPU, else openvino where OpenVINO computes "
        "bf16 (AMX, AVX-512 BF16) with 1.5 GiB a worker process (Whisper and MiniLM in bf16 by OpenVINO, without "
        "torch; onnxruntime-bf16 on AMX with 2.5 GiB where openvino does not import), else onnxruntime (CPU); "
        "onnxruntime-bf16 = the same in bf16 by torch; onnxruntime-int8 = the text encoder's weights in int8 on "
        "the CPU; torch = fp32 PyTorch on the CPU; a GPU runtime named explicitly "
        "fails at start without a GPU",
    )
    min_speech_s: float = Field(
        MIN_SPEECH_S,
        ge=0,
        allow_inf_nan=False,
        description="audio with less speech than this (seconds, by Silero VAD) is not used: silence, line noise and "
        "hold music get weight 0 and the event says so in 'ignored' (0: use all audio)",
    )
    shed_audio_after_s: float = Field(
        90.0,
        ge=0,
        allow_inf_nan=False,
        description="an utterance sent (its first part's record time, but no earlier than the worker last read "
        "that part's partition to its end: a producer clock running behind does not count) more than this many "
        "seconds before the worker encodes it has its audio not encoded where it has words to read (a voice that "
        "is all there is is kept): a worker behind, under more load than "
        "its cores encode or reading a backlog after an outage, labels it from the words (several times faster "
        "than with the voice on a CPU) and catches up, where it would fall further behind; the event's 'ignored' "
        "says so and emostream_shed_audio_total counts it (0: always encode the audio, however late); keep it above "
        "what a crash costs, kafka.session_timeout_s and a worker's start (30 s shed the voice of every utterance "
        "in flight at a kill -9)",
    )
    audio_level: Literal["model", "as-sent", "speaker"] = Field(
        "model",
        description="the level a voice is heard at (engines/features/level.py): model = the level the model learnt "
        "its voices at (train --audio-level; as-sent for the shipped models); as-sent = as the line brought it (a "
        "model that learnt studio clips, where loudness goes with the feeling, moves its labels with a line's gain: "
        "README 'Line levels'); speaker = relative to its speaker's own level so far in the call (the median of the "
        "speaker's utterances with speech, this one included, set at the training clips' median), whatever the "
        "line's gain: the first utterance of a speaker is heard at that median, and a worker that restarts or takes "
        "a call over starts its speakers afresh",
    )
    format_check: Literal["warn", "drop", "off"] = Field(
        "warn",
        description="audio with speech whose voice sounds mis-declared (a wrong sample rate: 8 kHz samples sent as "
        "16 kHz, or the reverse; or the wrong G.711 law: A-law sent as mu-law, or the reverse; "
        "engines/features/format_check.py): "
        "warn = used all the same (the voice gate weighs it), counted in emostream_misdeclared_audio_total and logged "
        "once a call; drop = also not used, and the event's 'ignored' says why; off = not checked",
    )
    language_check: Literal["drop", "warn", "off"] = Field(
        "drop",
        description="a transcript whose distinct words hold at least 15 letters and that reads as another language "
        "than the one the model's text encoder learnt (English for MiniLM; engines/features/language.py, "
        "py3langid): drop = its words are "
        "not used (the label comes from the voice, or the model's prior alone) and the event's 'ignored' says why; "
        "warn = used all the same and the event's 'suspect' says why; both count it in "
        "emostream_other_language_texts_total and log it once a call; off = not checked",
    )
    acknowledgements: Literal["agents", "all", "off"] = Field(
        "agents",
        description="a feeling a transcript names as the listener's ('I understand your frustration', 'I'd be angry "
        "too': an agent's empathy statement) is the speaker's own to the text model, which learnt from sitcom "
        "dialogue; agents = in the transcripts of the speakers the escalation rules' [roles] call agents, such "
        "phrases are made neutral before the words are encoded ('your feelings', 'you're feeling this way'; "
        "engines/features/acknowledge.py), and an apology ('I'm so sorry for the wait', read as sadness) is read as "
        "an acknowledgement ('I acknowledge the wait'); all = in every speaker's; off = the words as written",
    )
    revision_model: str | None = Field(
        None,
        description="artifact trained with --future k that labels revised events ('revised' = the shipped one); "
        "unset: the main model labels them too",
    )

    @field_validator("revision_model", mode="before")
    @classmethod
    def _unset_if_empty(cls, v: Any) -> Any:
        return None if v == "" else v  # EMOSTREAM_ENGINE__REVISION_MODEL= in an env file: unset, not the folder '.'


class LimitSettings(_Section):
    max_message_bytes: int = Field(1024 * 1024, ge=1024, description="Kafka's default message.max.bytes")
    max_text_chars: int = Field(5000, ge=1)
    max_audio_s: float = Field(60.0, gt=0)
    deadletter_payload: Literal["full", "truncated", "none"] = Field(
        "truncated",
        description="how much of a bad message the dead-letter record copies (transcripts and audio are personal data)",
    )
    deadletter_payload_bytes: int = Field(4096, ge=0, description="what 'truncated' keeps")


class AnalyticsSettings(_Section):
    enabled: bool = Field(True, description="call trajectories and escalation alerts (streams/analytics.py)")
    rules: str | None = Field(None, description="rules file (TOML, grammar in streams/rules.py); None: the default")
    recent_turns: int = Field(5, ge=1, le=100, description="a speaker's turns the trajectory's 'recent' covers")
    max_turns: int = Field(500, ge=10, description="turns kept per call (older ones drop out of the summary)")

    @model_validator(mode="after")
    def _recent_within_kept(self) -> AnalyticsSettings:
        if self.recent_turns > self.max_turns:  # 'recent' would cover turns no longer kept
            raise ValueError(
                f"recent_turns {self.recent_turns} is more than max_turns {self.max_turns}, the turns kept"
            )
        return self


class MetricsSettings(_Section):
    port: int = Field(9108, ge=0, le=65535, description="Prometheus /metrics port (0: pick a free one)")
    host: str = "127.0.0.1"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EMOSTREAM_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,  # a Redis URL or a SASL password in a value that does not validate
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    join: JoinSettings = JoinSettings()
    engine: EngineSettings = EngineSettings()
    limits: LimitSettings = LimitSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    metrics: MetricsSettings = MetricsSettings()
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)")

    @field_validator("log_level")
    @classmethod
    def _level(cls, level: str) -> str:
        if level.upper() not in _LEVELS:
            raise ValueError(f"{level[:20]!r} is no log level: DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return _LEVELS[level.upper()]

    @model_validator(mode="after")
    def _future(self) -> Settings:
        k, window = self.engine.future, self.redis.window
        if k > window:  # (a model's own window may be smaller still: said when it is loaded)
            raise ValueError(
                f"engine.future {k} must be at most redis.window {window}: a revised event reads its utterance "
                "with the k after it, within the call's window"
            )
        return self

    @model_validator(mode="after")
    def _idle_end(self) -> Settings:
        idle = self.join.idle_end_s
        if idle and idle >= self.redis.ttl_s:  # the call's window and analytics would expire before its end
            raise ValueError(
                f"join.idle_end_s {idle:g} must be less than redis.ttl_s {self.redis.ttl_s:g}: the call's state "
                "expires from Redis after redis.ttl_s without a part, so its summary would be empty (0: never)"
            )
        return self

    def idle_end_s(self) -> float:
        """How long a call goes without a part before it is ended as if its 'ended' had come (0: never)."""
        return self.redis.ttl_s / 2 if self.join.idle_end_s is None else self.join.idle_end_s

    def model_dir(self) -> Path:
        return _model_path(self.engine.model)

    def revision_model_dir(self) -> Path | None:
        if self.engine.revision_model is None:
            return None
        return _model_path(self.engine.revision_model, beside=self.model_dir().parent)

    def models_root(self) -> Path:
        """Where the shipped artifacts are (``default``, ``revised``, ``format-check``): beside the
        checkout's packages, or else beside ``engine.model`` (an image installs the packages into
        site-packages and its models under /app/models, and points ``engine.model`` there)."""
        shipped = REPO_ROOT / "models"
        return shipped if shipped.is_dir() else self.model_dir().parent


def _model_path(name: str, beside: Path | None = None) -> Path:
    """'default' / 'revised': the shipped artifacts under models/ (or, where the packages are installed
    without them, ``beside``: the main model's folder); anything else is a path."""
    if name in ("default", "revised"):
        shipped = REPO_ROOT / "models" / name
        return beside / name if beside is not None and not shipped.is_dir() else shipped
    return Path(name).expanduser().resolve()


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from (lowest to highest): defaults, ``config_file``, environment, ``overrides``."""
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            text = path.read_text().removeprefix("\ufeff")  # (a BOM an editor wrote)
            as_json = path.suffix.lower() == ".json" or (path.suffix.lower() != ".toml" and text.lstrip()[:1] == "{")
            data = json.loads(text) if as_json else tomllib.loads(text)  # (.toml, .TOML, .conf: TOML)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"settings file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"settings file {path}: the top level is {type(data).__name__}, not a table")
        for name, value in data.items():  # a section that is no table would be replaced by any variable of it
            annotation = Settings.model_fields[name].annotation if name in Settings.model_fields else None
            if isinstance(annotation, type) and issubclass(annotation, BaseModel) and not isinstance(value, dict):
                raise ConfigError(
                    f"settings file {path}: {name} is a {type(value).__name__}, not a table of {name} settings"
                )
    unknown = unknown_variables(os.environ)
    if unknown:
        raise ConfigError(unknown)
    try:
        env = Settings()  # environment + defaults
        # what the environment set, even to a default, over the file (exclude_unset: a variable equal to the default
        # still wins over a file that says otherwise)
        merged = _deep_merge(data, env.model_dump(exclude_unset=True))
        merged = _deep_merge(merged, overrides)
        return Settings(**merged)
    except SettingsError as exc:  # an EMOSTREAM_* variable that does not parse (JSON for a list, say)
        raise ConfigError(
            f"bad settings (EMOSTREAM_* variables): {exc} (a list or a table is written as JSON, e.g. "
            """EMOSTREAM_JOIN__DEFAULT_MODALITIES='["text","audio"]')"""
        ) from exc
    except ValidationError as exc:
        where = f"settings file {config_file} or EMOSTREAM_* variables" if config_file else "EMOSTREAM_* variables"
        if overrides:
            where += " or the command line"
        raise ConfigError(f"bad settings ({where}): {_summary(exc)}") from exc


#: EMOSTREAM_* variables that are no setting: the local scripts' folders, the datasets and the
#: tests' own, and what a --processes N supervisor tells its children (streams.processes.PROCESSES_ENV)
NOT_SETTINGS = frozenset(
    {"EMOSTREAM_RUN_DIR", "EMOSTREAM_CACHE", "EMOSTREAM_DATA_DIR", "EMOSTREAM_SCREENSHOTS", "EMOSTREAM_KEEP_SERVICES"}
    | {"EMOSTREAM_SHARED_BY_PROCESSES"}
)


#: what Kubernetes puts in every pod for a Service named emostream-* in its namespace (the shipped
#: emostream-ui one among them), and Docker for a link aliased emostream: never settings
_SERVICE_LINK = re.compile(
    r"^EMOSTREAM_[A-Z0-9_]*?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_[A-Z]+)?)?)$"
)


def unknown_variables(environ: Mapping[str, str]) -> str | None:
    """What is wrong with ``EMOSTREAM_*`` variables that name no setting section or field (None:
    nothing). pydantic-settings refuses an unknown key inside a section but ignores an unknown
    section, so ``EMOSTREAM_KAFKA_BROKERS`` (one underscore) would leave the default broker in use."""
    fields = set(Settings.model_fields)
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings reads them case-insensitively
        if not upper.startswith("EMOSTREAM_") or upper in NOT_SETTINGS or _SERVICE_LINK.match(upper):
            continue
        head = upper[len("EMOSTREAM_") :].lower().split("__")[0]
        if head in fields:
            continue
        section = next((f for f in sorted(fields, key=len, reverse=True) if head.startswith(f + "_")), None)
        hint = (
            f": sections are joined to their keys by two underscores, EMOSTREAM_{section.upper()}__"
            f"{head[len(section) + 1 :].upper()}"
            if section
            else f"; known: {', '.join(sorted(f.upper() for f in fields))}"
        )
        return f"unknown setting {name}{hint}"
    return None


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``EMOSTREAM_*`` variables that give them back (``Settings()`` in a
    process with only these): every field, secrets in clear, lists and tables as JSON. For the
    tools that start a worker or another process on given settings (the chaos harness, the bench)."""
    from pydantic_core import to_jsonable_python

    out: dict[str, str] = {}

    def walk(model: BaseModel, prefix: str) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            key = f"{prefix}{name.upper()}"
            if isinstance(value, BaseModel):
                walk(value, key + "__")
            elif value is None:
                continue  # every optional setting defaults to None: absent is the same
            elif isinstance(value, SecretStr):
                out[key] = value.get_secret_value()
            elif isinstance(value, str):
                out[key] = value
            else:
                out[key] = json.dumps(to_jsonable_python(value))

    walk(settings, "EMOSTREAM_")
    return out


def _summary(exc: ValidationError) -> str:
    return "; ".join(  # (a check of several sections has no location: its message names them)
        f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}{_known(e['loc']) if e['type'] == 'extra_forbidden' else ''}"
        if e["loc"]
        else e["msg"].removeprefix("Value error, ")
        for e in exc.errors()[:5]
    )


def _known(loc: tuple[Any, ...]) -> str:
    """For a key no section has (``kafka.topics.emotion``): the one meant, or the section's keys."""
    import difflib

    model: Any = Settings
    for name in loc[:-1]:
        field = model.model_fields.get(name) if isinstance(name, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        model = field.annotation
    keys = sorted(model.model_fields)
    meant = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    return f" (did you mean {meant[0]}?)" if meant else f" (its section's keys: {', '.join(keys)})"


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
