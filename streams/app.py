"""Building and running the Faust application around :class:`streams.worker.Worker`.

Before Faust starts, :func:`run_worker` makes sure the topics exist and are co-partitioned
(:func:`streams.kafka.wait_for_topics`): a worker subscribed to topics that do not exist yet would
get no partition until its next metadata refresh, minutes later. Settings that cannot work end the
command with a one-line message and exit code 2, not a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams import heap
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.worker import PartitionEnd

log = logging.getLogger("emostream.app")


def create_app(settings: Settings, worker_factory: Any) -> Any:
    """A Faust app with one agent over all input topics and a timer; ``worker_factory()`` is
    called once, on start-up, to build the :class:`~streams.worker.Worker` (model, Redis)."""
    import faust

    from streams.kafka import faust_options, fetch_max_wait_ms

    topics = settings.kafka.topics
    datadir = Path(tempfile.gettempdir()) / "emostream-faust" / settings.kafka.group_id  # no tables: scratch only
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.kafka.group_id,
        **faust_options(settings),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        topic_partitions=topics.partitions,
        topic_replication_factor=topics.replication,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.kafka.session_timeout_s,
        broker_heartbeat_interval=settings.kafka.session_timeout_s / 10,
        broker_rebalance_timeout=settings.kafka.session_timeout_s,
        stream_wait_empty=False,  # revoked partitions are let go unacked (Worker.revoke), not waited for
        datadir=str(datadir),
        consumer_group_instance_id=settings.kafka.instance_id,
    )
    if settings.kafka.instance_id:
        from streams.membership import leave_on_stop

        leave_on_stop()
        log.info("consumer group %s: static member %s", settings.kafka.group_id, settings.kafka.instance_id)
    _idempotent_producer(app)
    _prompt_fetches(app, fetch_max_wait_ms(settings))
    source = app.topic(
        *topics.inputs(),
        value_type=bytes,
        key_type=bytes,
        value_serializer="raw",
        key_serializer="raw",
        partitions=topics.partitions,
    )
    state: dict[str, Any] = {}
    ready = asyncio.Event()
    assigned_early: set[int] = set()  # input partitions assigned before the worker was made

    async def send(topic: str, key: bytes | None, value: bytes, event_key: str | None) -> Any:
        headers = [("event_id", event_key.encode())] if event_key else None
        return await app.producer.send(topic, key, value, None, None, headers)

    @app.task
    async def _start() -> None:
        worker = state["worker"] = await asyncio.to_thread(worker_factory, send)
        worker.highwater = lambda topic, partition: _highwater(app, topic, partition)
        log.info("%d objects of the loaded worker frozen out of garbage collection", heap.settle())
        heap.watch()
        worker.assigned(assigned_early)
        ready.set()
        log.info("worker ready")
        await worker.run()  # the pump: batches through the engine, one at a time

    @app.agent(source, concurrency=1)
    async def ingest(stream: Any) -> None:
        await ready.wait()
        worker = state["worker"]
        async for event in stream.noack().events():
            msg = event.message
            try:
                await worker.on_message(
                    msg.topic, msg.partition, msg.offset, event.key, event.value, _Handle(event), msg.timestamp
                )
            except Exception:  # on_message dead-letters what it cannot use, and acks in place on a bug: the last guard
                log.exception("message %s[%d]@%d failed; acked to keep the stream going", msg.topic, msg.partition,
                              msg.offset)  # fmt: skip
                event.ack()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        mine = {tp.partition for tp in assigned if tp.topic in topics.inputs()}
        if ready.is_set():
            state["worker"].assigned(mine)
        else:
            assigned_early.update(mine)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        assigned_early.difference_update(tp.partition for tp in revoked)
        if ready.is_set():
            await state["worker"].revoke({tp.partition for tp in revoked if tp.topic in topics.inputs()})

    return app


class _Handle:
    """What the worker acks a Faust event through. ``shed()``: the worker is done with the record's
    bytes and only its ack is left: a part joined or dead-lettered, whose ack waits for its
    utterance's event, or one acked behind an earlier message's (``streams.worker.Lease``, acks in
    offset order), for up to ``join.max_hold_s``: the bytes (audio, up to a megabyte) are let go
    meanwhile, not kept with every message waiting."""

    __slots__ = ("event",)

    def __init__(self, event: Any) -> None:
        self.event = event

    def ack(self) -> None:
        self.event.ack()

    def shed(self) -> None:
        self.event.value = None
        self.event.message.value = None


def _idempotent_producer(app: Any) -> None:
    """Give this app's Faust producer ``enable_idempotence`` (Faust sets it only with exactly-once
    transactions): measured with ``python -m chaos.producer``, a partition leader killed under
    load costs the plain producer duplicated and reordered records, the idempotent one none."""
    from faust.transport.drivers.aiokafka import Producer

    class IdempotentProducer(Producer):  # type: ignore[misc]
        def _settings_extra(self) -> Any:
            return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    app.transport.Producer = IdempotentProducer  # per app: the transport makes the producer from it


def _prompt_fetches(app: Any, wait_ms: int) -> None:
    """Give this app's consumer a fetch wait of ``wait_ms`` instead of Faust's fixed 1.5 s.

    The consumer (aiokafka) leaves a partition out of its next fetch while that partition's records
    wait to be handed to the worker, and the broker holds a fetch for partitions with nothing new
    until the wait is over. So a partition whose records arrive just after a fetch went out was read
    only when that fetch came back. Measured under `emostream bench` at features flat out: parts
    reached a worker 1.4 s (median) after they were produced, while a consumer beside it with a
    10 ms wait read them in 26 ms, and the worker idled meanwhile; with 50 ms, the worker's p99
    fell from 2.2-2.4 s to 1.2-1.4 s (README, Performance)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer

    class PromptThread(AIOKafkaConsumerThread):  # type: ignore[misc]
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = wait_ms  # read by its Fetcher, made in start()
            return consumer

    class PromptConsumer(Consumer):  # type: ignore[misc]
        def _new_consumer_thread(self) -> Any:
            return PromptThread(self, loop=self.loop, beacon=self.beacon)

    app.transport.Consumer = PromptConsumer  # per app, as the producer above


def _highwater(app: Any, topic: str, partition: int) -> PartitionEnd | None:
    """The end offset of a partition as the consumer last saw it, how long ago a fetch response
    said so (aiokafka's ``last_poll_timestamp``, wall-clock ms), and whether its leader is known
    and connected (a killed leader's partition is not: the fetch age alone would tell only
    ``UNANSWERED_S`` later, after utterances past ``wait_s`` went without their part); None if
    the end is unknown."""
    from faust.types import TP

    from streams.worker import PartitionEnd  # noqa: F811  (the runtime import; the module loads lazily)

    tp = TP(topic, partition)
    try:
        end = app.consumer.highwater(tp)
    except Exception:  # not assigned (any more), or the consumer is not started
        return None
    if end is None:
        return None
    polled_ms, reachable, committed = None, True, None
    with contextlib.suppress(Exception):  # faust's own record of the group's commits (private)
        found = app.consumer._committed_offset.get(tp)
        committed = int(found) if found is not None else None
    try:  # faust's consumer thread holds the aiokafka consumer; private paths, so they may fail
        consumer = app.consumer._thread._ensure_consumer()
        polled_ms = consumer.last_poll_timestamp(tp)
        client = consumer._client
        leader = client.cluster.leader_for_partition(tp)  # None: unknown, -1: no leader now
        conn = client._conns.get((leader, 0))  # aiokafka's ConnectionGroup.DEFAULT, which fetches use
        reachable = leader is not None and leader >= 0 and conn is not None and bool(conn.connected())
    except Exception:
        pass
    age = 0.0 if polled_ms is None else max(0.0, time.time() - polled_ms / 1000.0)
    return PartitionEnd(int(end), age, reachable, committed, answered=polled_ms is not None)


def quiet_kafka_python(level: str) -> None:
    """kafka-python (the start-up checks' client) logs some twenty INFO lines of its connections at
    every start: warnings and errors only, unless the worker's own level is DEBUG."""
    if logging.getLevelName(level) != logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)


def serve_metrics(settings: Settings) -> Any:
    """A :class:`~streams.metrics.Metrics` serving ``/metrics`` and the probes (``/readyz`` says
    "starting" until the worker consumes); :class:`ConfigError` if its port is taken."""
    import errno

    from streams.errors import ConfigError
    from streams.metrics import Metrics

    metrics = Metrics()
    host, port = settings.metrics.host, settings.metrics.port
    try:
        metrics.serve(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"metrics.port {port} on {host} is in use (another worker or program on this machine?): set "
                "EMOSTREAM_METRICS__PORT to a free port, or 0 for any (`--processes N` uses the port and the N - 1 "
                "after it)"
            ) from exc
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    return metrics


def stop_on_sigterm() -> None:
    """SIGTERM stops a starting worker (exit 143) as SIGINT does. Its default action is to end the
    process, except for PID 1, the worker's place in a container without an init: the kernel drops
    it there, so ``docker stop`` or a pod's deletion during the waits for Kafka and Redis (up to
    ``kafka.startup_timeout_s`` each) or the model's load waited out the grace period for a SIGKILL.
    Faust's worker installs its own handler once it runs."""
    import signal

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


STOP_DEADLINE_S = 45.0  # under compose's stop_grace_period and the pod's terminationGracePeriodSeconds (60 s)


def arm_stop_deadline(deadline_s: float = STOP_DEADLINE_S) -> threading.Timer:
    """After a stop signal: end the process ``deadline_s`` later if the stop has not ended it by then.
    Faust ignores a second SIGTERM or SIGINT once its stop has begun, and a stop that hung (seen
    once, two workers under one kafka.instance_id: the coordinator's join never ended) left the
    worker running, its metrics port held, until someone sent SIGKILL. What its batch had not
    committed is read again by the partitions' next owner."""

    def give_up() -> None:
        log.error("the stop did not finish in %.0f s: exiting now (what was not committed is read again)", deadline_s)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(deadline_s, give_up)
    timer.daemon = True
    timer.start()
    return timer


def _worker_class() -> Any:
    """Faust's worker, with :func:`arm_stop_deadline` armed at the first stop signal, and without
    Faust's start-up spinner (at log level WARNING or above at a terminal it wrote a sprite and a
    backspace for every log record, into the lines an operator reads)."""
    import faust

    class Worker(faust.Worker):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.spinner = None  # Faust then logs "Ready" at start instead

        def _schedule_shutdown(self, signal: Any) -> None:
            if not self._signal_stop_time:
                arm_stop_deadline()
            super()._schedule_shutdown(signal)

    return Worker


def run_worker(settings: Settings) -> int:
    """``emostream worker``: load the model, connect Redis, serve /metrics, consume until stopped."""

    from streams.context import wait_for_redis
    from streams.errors import EmostreamError
    from streams.kafka import quiet_coordinator_wait, quiet_kafka_repeats, wait_for_topics
    from streams.rules import load_rules
    from streams.runtime import build_worker, prepare_graphs

    stop_on_sigterm()  # until Faust's worker takes the signal over
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    quiet_kafka_python(settings.log_level)
    quiet_coordinator_wait()
    quiet_kafka_repeats()  # after it: a coordinator wait it turns to INFO is not counted
    from engines.artifact import resolve_model_dir
    from engines.errors import ArtifactError

    for key, name in (
        ("engine.model", settings.engine.model),
        ("engine.revision_model", settings.engine.revision_model),
    ):
        try:  # a path mistyped is said now, not after the wait for Kafka and Redis
            if name is not None:
                resolve_model_dir(Path(name).expanduser())
        except ArtifactError as exc:
            print(f"error: {key}: {exc}", file=sys.stderr)
            return 2
    from engines.runtime.select import RuntimeUnavailable, resolve_runtime
    from streams.processes import shared_by

    try:  # a GPU runtime on a machine without one: said now, not after joining the group (a rebalance for the others)
        resolve_runtime(settings.engine.runtime, processes=shared_by())
    except RuntimeUnavailable as exc:
        print(f"error: engine.runtime: {exc}", file=sys.stderr)
        return 2
    try:
        if settings.analytics.enabled:
            load_rules(settings.analytics.rules)  # a bad rules file stops the start with its error, before Kafka
        metrics = serve_metrics(settings)  # before joining the group: a port in use stops this worker alone
        from streams.membership import watch_membership

        level = logging.getLevelName(settings.log_level)
        watch_membership(settings.kafka.group_id, settings.kafka.instance_id, metrics.member_lost.inc, level)
        wait_for_topics(settings)  # (streams.kafka.ensure_topics logs the topics it created)
        wait_for_redis(settings.redis, settings.kafka.startup_timeout_s)
        prepare_graphs(settings)  # before Faust starts: a stop meanwhile ends the export child too
        app = create_app(settings, lambda send: build_worker(settings, send, metrics))
    except EmostreamError as exc:
        print(f"error: {exc}", file=sys.stderr)  # (as the other commands say it: streams/cli.py)
        return 2
    _worker_class()(app, loglevel=settings.log_level.lower(), console_port=0).execute_from_commandline()
    return 0
