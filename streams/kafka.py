"""One place that turns ``settings.kafka`` into every Kafka client's connection options, and
makes sure the topics the worker needs exist and can be joined.

    kafka_python_options(settings)   kwargs for kafka-python's KafkaProducer, KafkaConsumer and
                                     KafkaAdminClient (feed, subscribe, demo, chaos tools, tests)
    faust_options(settings)          kwargs for ``faust.App``: broker URLs and ``broker_credentials``
    ssl_context(settings)            the ``ssl.SSLContext`` the Faust worker uses (CA, client cert)
    ensure_topics(settings)          create missing topics; refuse input topics that are not
                                     co-partitioned (:class:`~streams.errors.TopologyError`)

Security protocols: PLAINTEXT, SSL (server CA, optional client certificate for mutual TLS),
SASL_PLAINTEXT and SASL_SSL with PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512. A setting that cannot
work (SASL without a mechanism or password, a client key without its certificate) raises
:class:`~streams.errors.ConfigError` before any connection is tried.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from typing import Any

from streams.errors import ConfigError, ServiceUnavailable, TopologyError
from streams.settings import KafkaSettings, Settings

log = logging.getLogger("emostream.kafka")

_TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS (another client created it first)
#: CreateTopics errors no retry mends: TOPIC_/CLUSTER_AUTHORIZATION_FAILED, INVALID_PARTITIONS,
#: INVALID_CONFIG, POLICY_VIOLATION
_NEVER_CREATED = frozenset({29, 31, 37, 40, 44})


def _check(k: KafkaSettings) -> None:
    sasl = k.security_protocol.startswith("SASL")
    if sasl and not (k.sasl_mechanism and k.sasl_username and k.sasl_password):
        raise ConfigError(
            f"kafka.security_protocol {k.security_protocol} needs kafka.sasl_mechanism, sasl_username and sasl_password"
        )
    if not sasl and k.sasl_mechanism:
        raise ConfigError(f"kafka.sasl_mechanism is set but kafka.security_protocol is {k.security_protocol}")
    if bool(k.ssl_certfile) != bool(k.ssl_keyfile):
        raise ConfigError("kafka.ssl_certfile and kafka.ssl_keyfile go together (mutual TLS)")
    uses_tls = k.security_protocol in ("SSL", "SASL_SSL")
    if not uses_tls and (k.ssl_cafile or k.ssl_certfile):
        raise ConfigError(f"kafka.ssl_* files are set but kafka.security_protocol is {k.security_protocol}")
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):  # else "[Errno 2] No such file" for every try, unnamed
        path = getattr(k, name)
        if path and not os.access(path, os.R_OK):
            why = "does not exist" if not os.path.exists(path) else "cannot be read by this user"
            raise ConfigError(f"kafka.{name} {path} {why}")


def brokers(settings: Settings) -> list[str]:
    return [b.strip() for b in settings.kafka.brokers.split(",") if b.strip()]


def fetch_max_wait_ms(settings: Settings) -> int:
    """``kafka.fetch_max_wait_s`` as the clients take it (whole milliseconds, at least 1)."""
    return max(1, round(settings.kafka.fetch_max_wait_s * 1000))


def _sasl_options(k: KafkaSettings) -> dict[str, Any]:
    """The SASL options kafka-python and aiokafka share (none without a mechanism)."""
    if not k.sasl_mechanism:
        return {}
    return {
        "sasl_mechanism": k.sasl_mechanism,
        "sasl_plain_username": k.sasl_username,
        "sasl_plain_password": k.sasl_password.get_secret_value() if k.sasl_password else None,
    }


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    """Connection options for kafka-python clients: the first connection is waited for
    ``kafka.startup_timeout_s`` (the client's own default is 30 s)."""
    k = settings.kafka
    _check(k)
    options: dict[str, Any] = {
        "bootstrap_servers": brokers(settings),
        "security_protocol": k.security_protocol,
        "bootstrap_timeout_ms": max(1, int(k.startup_timeout_s * 1000)),
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        options.update(
            ssl_check_hostname=k.ssl_check_hostname,
            ssl_cafile=k.ssl_cafile,
            ssl_certfile=k.ssl_certfile,
            ssl_keyfile=k.ssl_keyfile,
            ssl_password=k.ssl_key_password.get_secret_value() if k.ssl_key_password else None,
        )
    options.update(_sasl_options(k))
    return options


def unreachable(settings: Settings, exc: Exception) -> ServiceUnavailable:
    """A kafka-python client that could not be made, as one line: a broker that did not answer
    within ``kafka.startup_timeout_s`` says so rather than the client's "Unable to bootstrap"."""
    from kafka.errors import KafkaTimeoutError

    if isinstance(exc, KafkaTimeoutError):
        return ServiceUnavailable(
            f"no Kafka broker answered at {settings.kafka.brokers} within {settings.kafka.startup_timeout_s:g} s "
            "(kafka.startup_timeout_s): is it running, and are kafka.brokers, kafka.security_protocol, the TLS "
            "files and the SASL credentials right? (a refused login looks the same from here)"
        )
    return ServiceUnavailable(f"Kafka at {settings.kafka.brokers}: {exc}")


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Connection options for aiokafka clients (the bench's passthrough reference)."""
    k = settings.kafka
    _check(k)
    options: dict[str, Any] = {"bootstrap_servers": brokers(settings), "security_protocol": k.security_protocol}
    ctx = ssl_context(settings)
    if ctx is not None:
        options["ssl_context"] = ctx
    options.update(_sasl_options(k))
    return options


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (None for the plaintext protocols)."""
    k = settings.kafka
    _check(k)
    if k.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=k.ssl_cafile)
        if k.ssl_certfile:
            password = k.ssl_key_password.get_secret_value() if k.ssl_key_password else None
            ctx.load_cert_chain(k.ssl_certfile, k.ssl_keyfile, password=password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"Kafka TLS files: {exc}") from exc
    ctx.check_hostname = k.ssl_check_hostname
    return ctx


def faust_options(settings: Settings) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for ``faust.App`` (its consumer and producer alike)."""
    import faust

    k = settings.kafka
    _check(k)
    options: dict[str, Any] = {"broker": [f"kafka://{b}" for b in brokers(settings)]}
    ctx = ssl_context(settings)
    if k.sasl_mechanism:
        options["broker_credentials"] = faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value() if k.sasl_password else None,
            ssl_context=ctx,
            mechanism=k.sasl_mechanism,
        )
    elif ctx is not None:
        options["broker_credentials"] = faust.SSLCredentials(ctx)
    return options


def ensure_topics(settings: Settings, admin: Any = None, create: bool = True) -> list[str]:
    """Create the input and output topics that are missing (``settings.kafka.topics.partitions``
    partitions, ``replication`` replicas); returns the names created.

    The input topics are joined by call id, so they must all have the same partition count: if
    they do not, :class:`TopologyError` says which differ. An existing topic whose count differs
    from the settings but matches the other inputs is only logged.
    """
    from kafka.errors import KafkaError

    t = settings.kafka.topics
    inputs = list(t.inputs())
    names = [*inputs, t.emotions, t.deadletter, t.alerts, t.calls]
    timeout_ms = int(settings.kafka.request_timeout_s * 1000)
    own = admin is None
    missing: list[str] = []
    try:
        if own:
            from kafka import KafkaAdminClient

            options = kafka_python_options(settings)
            # one try's wait for a first answer: short, wait_for_topics tries again (and says so)
            first = min(10_000, timeout_ms, options["bootstrap_timeout_ms"])
            admin = KafkaAdminClient(**(options | {"request_timeout_ms": timeout_ms, "bootstrap_timeout_ms": first}))
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing and not create:
            raise TopologyError(f"topics missing at {settings.kafka.brokers}: {', '.join(missing)}")
        if missing:
            spec: dict[str, dict[str, Any]] = {
                n: {"num_partitions": t.partitions, "replication_factor": t.replication} for n in missing
            }
            if t.deadletter in spec and t.deadletter_retention_s:  # copies of personal data: not forever
                spec[t.deadletter]["configs"] = {"retention.ms": str(round(t.deadletter_retention_s * 1000))}
            result = admin.create_topics(spec, timeout_ms=timeout_ms, raise_errors=False)
            for topic in result.get("topics", []):
                code = topic.get("error_code", 0)
                if code in _NEVER_CREATED:  # retrying cannot help: said at once, a setting or the broker's rights
                    raise ConfigError(_not_created(topic, t.partitions, t.replication))
                if code not in (0, _TOPIC_EXISTS):  # (38, replication: brokers of a cluster still joining)
                    raise ServiceUnavailable(_not_created(topic, t.partitions, t.replication))
            log.info("created topics %s (%d partitions, replication %d)", missing, t.partitions, t.replication)
        counts = partition_counts(admin, inputs)
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka admin at {settings.kafka.brokers}: {exc}") from exc
    finally:
        if own and admin is not None:
            admin.close()
    check_copartitioned(counts, t.partitions)
    return missing


def partition_counts(admin: Any, topics: list[str], wait_s: float = 30.0) -> dict[str, int]:
    """Topic -> partition count, once the broker reports every partition of each with a leader
    (a topic just created takes a moment)."""
    deadline = time.monotonic() + wait_s
    while True:
        counts: dict[str, int] = {}
        ready = True
        for meta in admin.describe_topics(topics):
            name = meta.get("topic") or meta.get("name")
            parts = meta.get("partitions") or []
            counts[str(name)] = len(parts)
            ready = ready and bool(parts) and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in parts)
        if ready and set(counts) >= set(topics):
            return counts
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"topics {topics} have no leader after {wait_s:.0f} s: {counts}")
        time.sleep(0.2)


def check_copartitioned(counts: dict[str, int], configured: int) -> None:
    """Raise :class:`TopologyError` unless every input topic has the same partition count."""
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{n}: {c}" for n, c in sorted(counts.items()))
        raise TopologyError(
            "the input topics are not co-partitioned (the join needs one partition count for all, "
            f"keyed by call id): {listing}. Recreate them with kafka.topics.partitions={configured}, "
            "or add partitions until they match (existing calls move partition when you do)."
        )
    for name, count in counts.items():
        if count != configured:
            log.warning("topic %s has %d partitions, settings say %d (kept)", name, count, configured)


class UnreachableBroker(logging.Filter):
    """Drops kafka-python's lines about a broker address where nothing listens (connection refused)
    or whose host does not resolve (four lines a try, some twenty a second at first) and notes
    which, so that the start-up's own line says it once a try; every other line (a TLS or SASL
    failure, a timeout) passes."""

    WHY = {"ECONNREFUSED": "refused", "DNS Resolution failure": "dns", "DNS lookup failed": "dns"}
    NOISE = ("not ready; waiting", "Unable to bootstrap")

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        why = [w for mark, w in self.WHY.items() if mark in message]
        self.seen.update(why)
        return not why and not any(mark in message for mark in self.NOISE)


#: the kafka-python loggers that report each try to reach a broker
_CONNECTION_LOGGERS = ("kafka.net.manager", "kafka.net.connection", "kafka.net.inet")  # kafka-python 3


def _not_created(topic: dict[str, Any], partitions: int, replication: int) -> str:
    """Why the broker did not create ``topic`` (a CreateTopics response entry), in words: the entry
    itself was printed, a dict of codes."""
    from kafka.errors import for_code

    code = int(topic.get("error_code", -1))
    said = topic.get("error_message") or for_code(code).description
    why = f"cannot create topic {topic.get('name')}: {for_code(code).message} ({said})"
    if code == 38:  # INVALID_REPLICATION_FACTOR: more replicas than brokers (or brokers still joining)
        why += f"; kafka.topics.replication is {replication}: at most the brokers in the cluster"
    elif code == 37:  # INVALID_PARTITIONS
        why += f"; kafka.topics.partitions is {partitions}"
    elif code in (29, 31):  # TOPIC_/CLUSTER_AUTHORIZATION_FAILED
        why += "; give the worker's user the right to create topics, or create them (README: Security)"
    return why


def wait_for_topics(settings: Settings, timeout_s: float | None = None) -> list[str]:
    """:func:`ensure_topics` at start-up, retried with backoff while the broker cannot be reached
    (``kafka.startup_timeout_s``). Connections refused are said once a try, not line by line. A
    broker that refuses the credentials looks the same from here: the client's log lines above the
    final error say which it was."""
    timeout_s = settings.kafka.startup_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    quiet = UnreachableBroker()
    loggers = [logging.getLogger(name) for name in _CONNECTION_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    brokers = settings.kafka.brokers
    try:
        while True:
            quiet.seen.clear()
            try:
                return ensure_topics(settings, create=settings.kafka.create_topics)
            except ServiceUnavailable as exc:
                why = str(exc)
                if "dns" in quiet.seen:
                    why = f"the host of kafka.brokers {brokers} does not resolve (DNS lookup failed)"
                elif "refused" in quiet.seen:
                    why = f"nothing listens at {brokers} (connection refused)"
                if time.monotonic() + delay > deadline:
                    hint = (
                        "is the broker running, and kafka.brokers (EMOSTREAM_KAFKA__BROKERS) its address? "
                        "`make demo` starts a local one"
                        if quiet.seen
                        else "the broker answered; kafka.topics.replication must not exceed its brokers"
                        if "cannot create topic" in why
                        else "if the broker is up, check kafka.security_protocol, the TLS files, the SASL credentials"
                    )
                    raise ServiceUnavailable(f"Kafka: {why} (gave up after {timeout_s:.0f} s; {hint})") from exc
                log.warning("Kafka not ready: %s; retrying in %.1f s", why, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


class CoordinatorWait(logging.Filter):
    """aiokafka logs "Group Coordinator Request failed" as an ERROR at every try (ten a second)
    while the broker names no coordinator for the worker's consumer group. A fresh broker does that
    once, for a moment, at its first consumer group (it creates ``__consumer_offsets`` then): one
    INFO line says so. A broker that cannot create or load that topic does it forever (its
    ``offsets.topic.replication.factor``, Kafka's default 3, above the brokers alive; a leaderless
    partition): a WARNING every ``patience_s`` says how long and what to check, and the tries in
    between are not printed. Any other error (an authorization failure, a lost connection) passes
    as the ERROR it is; the coordinator found again starts over, and says so after a warning."""

    FAILED = "Group Coordinator Request failed"
    FOUND = "Discovered coordinator"
    #: Kafka's error codes of a coordinator that is not there yet: COORDINATOR_LOAD_IN_PROGRESS,
    #: COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR (any other error passes as aiokafka logs it)
    WAITING = (14, 15, 16)

    def __init__(self, patience_s: float = 30.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.patience_s = patience_s
        self.clock = clock
        self.since: float | None = None  # the first failed try of this wait
        self.said = 0.0  # when this wait was last printed
        self.tried = 0.0  # the last failed try (aiokafka retries every 0.1 s: a long gap is a new wait)
        self.warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if text.startswith(self.FOUND):
            if self.warned and self.since is not None:
                _rewrite(record, logging.INFO, f"{record.getMessage()}, after {self.clock() - self.since:.0f} s")
            self.since, self.warned = None, False
            return True
        if not text.startswith(self.FAILED):
            return True
        err = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if getattr(err, "errno", None) not in self.WAITING:
            return True
        now = self.clock()
        # a new wait: the first, or tries resumed after a gap (the INFO line of the coordinator found
        # in between does not reach this filter when the worker logs warnings only)
        new, self.tried = self.since is None or now - self.tried > self.patience_s, now
        if new:
            self.since, self.said, self.warned = now, now, False
            _rewrite(
                record,
                logging.INFO,
                f"Kafka names no coordinator for this worker's consumer group yet ({type(err).__name__}): waiting "
                "(a fresh broker creates __consumer_offsets at its first group)",
            )
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)  # rewritten below the logger's level
        if now - self.said < self.patience_s:
            return False
        self.said, self.warned = now, True
        _rewrite(
            record,
            logging.WARNING,
            f"Kafka has named no coordinator for this worker's consumer group for {now - self.since:.0f} s "
            f"({type(err).__name__}); nothing is consumed until it does. The broker cannot create or load "
            "__consumer_offsets: its offsets.topic.replication.factor (Kafka's default 3) must not exceed the "
            "brokers alive (1 on a single broker), and each of that topic's partitions needs a leader",
        )
        return True


def _rewrite(record: logging.LogRecord, level: int, message: str) -> None:
    record.levelno, record.levelname = level, logging.getLevelName(level)
    record.msg, record.args = message, ()  # a tuple: Faust's formatter wraps anything else in one and formats again


#: aiokafka's logger of the consumer group's coordinator lookups (the worker's client)
COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"


def quiet_coordinator_wait(patience_s: float = 30.0) -> CoordinatorWait:
    """Installs :class:`CoordinatorWait` on aiokafka's coordinator logger (once) and returns it."""
    logger = logging.getLogger(COORDINATOR_LOGGER)
    for f in logger.filters:
        if isinstance(f, CoordinatorWait):
            return f
    f = CoordinatorWait(patience_s)
    logger.addFilter(f)
    return f


class Repeats(logging.Filter):
    """aiokafka logs every failed try of every connection while a broker is away: a 30 s outage
    wrote 5,305 lines, 5,286 of them ERROR, some 155 a second ("Unable connect to node with id 1",
    "Unable to update metadata", "Failed fetch messages", "Group Coordinator Request failed"), and
    the worker's own line about it was lost among them. A warning or error that a logger printed
    the same (its message and exception type) within ``every_s`` is not printed again; the next one
    printed says how many were not."""

    MAX_KEYS = 1000  # distinct messages remembered at most (then forgotten together)

    def __init__(self, every_s: float = 30.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self.said: dict[tuple[str, str], float] = {}  # (logger, message) -> when last printed
        self.unsaid: dict[tuple[str, str], int] = {}  # how many not printed since

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        # the message as printed (a second node, topic or partition failing is its own line) and the
        # exception's type (one traceback does not stand for another's)
        kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key, now = (record.name, f"{record.getMessage()}|{kind}"), self.clock()
        last = self.said.get(key)
        if last is not None and now - last < self.every_s:
            self.unsaid[key] = self.unsaid.get(key, 0) + 1
            return False
        if len(self.said) >= self.MAX_KEYS:
            self.said.clear()
            self.unsaid.clear()
        self.said[key] = now
        n = self.unsaid.pop(key, 0)
        if n and last is not None:
            _rewrite(record, record.levelno, f"{record.getMessage()} [and {n} more like it in the {now - last:.0f} s "
                                             "before, not printed]")  # fmt: skip
        return True


def quiet_kafka_repeats(every_s: float = 30.0) -> Repeats:
    """Installs one :class:`Repeats` on every aiokafka logger (once; those its modules made at import)."""
    import aiokafka  # noqa: F401 - its modules' loggers exist once imported
    import aiokafka.consumer.fetcher  # noqa: F401
    import aiokafka.consumer.group_coordinator  # noqa: F401
    import aiokafka.producer.sender  # noqa: F401

    names = sorted(n for n in logging.root.manager.loggerDict if n == "aiokafka" or n.startswith("aiokafka."))
    installed = (f for name in names for f in logging.getLogger(name).filters if isinstance(f, Repeats))
    shared = next(installed, None) or Repeats(every_s)
    for name in names:
        logger = logging.getLogger(name)
        if shared not in logger.filters:
            logger.addFilter(shared)
    return shared
