"""Prometheus metrics of one worker (one process, one ``/metrics`` endpoint).

Names follow Prometheus conventions: base units, ``_total`` for counters. Each worker owns its
registry, so several workers (tests) can live in one process. The registry also carries the
client's standard ``process_*`` metrics of the worker's process (resident memory, CPU seconds,
start time, open files): the memory and cores a dashboard shows, and how ``emostream bench`` tells
that a worker process restarted.

The same HTTP server answers the probes of an orchestrator (Kubernetes, compose healthchecks).
It comes up before the worker waits for Kafka and Redis and loads its model (``/readyz`` says
"starting" meanwhile: give the probes a startup probe or an initial delay). ``/healthz`` is 200
while the worker's event loop goes round (its partition watch beats every quarter second, and
stops beating while a batch has been in the engine for ``ENGINE_STUCK_S``): 503 after ``LIVE_S``
without a beat, restart it.
``/readyz`` is 200 once the worker consumes, and while it stays alive. A Kafka or Redis outage
fails neither: the worker rides it out (issue 11), a restart would not help.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from engines.features.format_check import MISTAKES
from engines.interface import MODALITIES
from streams import heap
from streams.errors import REASONS

# no `<counter>_created` timestamp series beside every counter and histogram: a quarter of the
# endpoint's lines, which Prometheus' text format does not need and a reader wades through
disable_created_metrics()

#: the ``stage`` label values of ``emostream_service_errors_total`` (streams/worker.py)
SERVICE_STAGES = ("redis", "publish", "analytics", "close", "deadletter")
LIVE_S = 30.0  # /healthz: the event loop's heartbeat may be this old at most
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_RECORD_TO_EVENT = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)  # a backlog waits minutes


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.beat_at: float | None = None  # the worker's event loop last went round (None: starting)
        self.ready = False  # the worker consumes
        self.port: int | None = None  # where /metrics is served, once it is
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.messages_in = Counter("emostream_messages_in_total", "Input messages read", ["topic"], registry=r)
        self.utterances = Counter(
            "emostream_utterances_processed_total", "Utterances labelled", ["modalities"], registry=r
        )
        self.events_out = Counter("emostream_events_out_total", "Emotion events produced", ["revision"], registry=r)
        self.deadletters = Counter(
            "emostream_deadletters_total", "Messages sent to the dead-letter topic", ["reason"], registry=r
        )
        self.missing = Counter(
            "emostream_missing_modality_total",
            "Utterances processed without an expected modality",
            ["modality"],
            registry=r,
        )
        self.late_parts = Counter(
            "emostream_late_parts_total",
            "Parts that arrived after their utterance was labelled, or past its wait and sent after it (record time)",
            registry=r,
        )
        self.inconsistent_parts = Counter(
            "emostream_inconsistent_parts_total",
            "Parts that disagree with another part of their utterance on its seq or speaker: joined all the "
            "same, the first of text, audio, video to say decides (a producer's mistake: the log says which)",
            ["field"],
            registry=r,
        )
        self.seq_behind = Counter(
            "emostream_seq_behind_total",
            "Utterances whose seq is below every one of their call's context window: a seq that started again (a "
            "transfer) or jumped ahead; labelled without the call's context (a producer's mistake: the log says which)",
            registry=r,
        )
        self.ignored_parts = Counter(
            "emostream_ignored_parts_total",
            "Parts that arrived but were not used (audio without speech: silence, line noise, hold music; "
            "a transcript with no words; not counted here: audio whose format sounds mis-declared and transcripts in "
            "another language, which have counters of their own)",
            ["modality"],
            registry=r,
        )
        self.shed_audio = Counter(
            "emostream_shed_audio_total",
            "Audio parts not encoded because their utterance was sent more than engine.shed_audio_after_s before "
            "the worker came to it (under overload, or reading a backlog): the other parts decided its label",
            registry=r,
        )
        self.long_transcripts = Counter(
            "emostream_long_transcripts_total",
            "Transcripts longer than the text model reads (its first 128 tokens for the shipped models): used, the "
            "rest not read; the event's 'suspect' says so (send each utterance as a message of its own)",
            registry=r,
        )
        self.other_language_texts = Counter(
            "emostream_other_language_texts_total",
            "Transcripts that read as another language than the model's text encoder learnt "
            "(engines/features/language.py), by whether their words were used (engine.language_check: drop = false, "
            "warn = true); the language each read as is in the event's 'ignored' or 'suspect' and the worker's log",
            ["used"],
            registry=r,
        )
        self.misdeclared_audio = Counter(
            "emostream_misdeclared_audio_total",
            "Audio parts whose voice sounds mis-declared by their producer (engines/features/format_check.py): "
            "sample_rate (8 kHz samples sent as 16 kHz, or the reverse), g711_law (A-law sent as mu-law, or the "
            "reverse); used all the same unless engine.format_check = drop",
            ["mistake"],
            registry=r,
        )
        self.duplicate_parts = Counter("emostream_duplicate_parts_total", "Parts received twice", registry=r)
        self.emotions = Counter(
            "emostream_emotions_total",
            "Provisional emotion events by label (the calls' emotion mix); 'unread': every part of the utterance "
            "ignored (no words, no speech, another language), its label only the model's prior",
            ["label"],
            registry=r,
        )  # fmt: skip
        self.lag = Gauge(
            "emostream_consumer_lag",
            "Messages of an input partition this worker has not read yet (its end offset minus its read position)",
            ["topic", "partition"],
            registry=r,
        )
        self.alerts = Counter(
            "emostream_alerts_total",
            "Escalation alert changes published (streams/rules.py), by rule, severity and state",
            ["rule", "severity", "state"],
            registry=r,
        )
        self.batch_size = Histogram(
            "emostream_batch_size",
            "Utterances per engine batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.batch_limit = Gauge(
            "emostream_batch_limit",
            "Work units the next engine batch may take (an utterance 1, plus 1 a second of audio): what the "
            "encoders and engine lately computed in engine.batch_budget_s (streams/batching.py)",
            registry=r,
        )
        self.engine_latency = Histogram(
            "emostream_engine_latency_seconds", "Encoders + engine time per batch", buckets=_LATENCY, registry=r
        )
        self.batch_stage = Histogram(
            "emostream_batch_stage_seconds",
            "Wall time of one batch per stage: read (windows from Redis), compute (encoders + engine, in a "
            "thread), record, publish (events to Kafka, acknowledged), analytics, commit (windows to Redis)",
            ["stage"],
            buckets=_LATENCY,
            registry=r,
        )
        self.end_to_end = Histogram(
            "emostream_end_to_end_latency_seconds",
            "Last part of an utterance in -> its event produced",
            buckets=_LATENCY,
            registry=r,
        )
        self.record_to_event = Histogram(
            "emostream_record_to_event_seconds",
            "Record time of an utterance's first part (the producer's send) -> its event produced: with the time "
            "it waited on the broker (a worker down, a backlog) and the join",
            buckets=_RECORD_TO_EVENT,
            registry=r,
        )
        self.join_wait = Histogram(
            "emostream_join_wait_seconds", "First part -> utterance ready", buckets=_LATENCY, registry=r
        )
        self.open_calls = Gauge("emostream_open_calls", "Calls with join state in this worker", registry=r)
        self.calls_without_end = Counter(
            "emostream_calls_without_end_total",
            "Calls that said something and had no 'ended': ended after join.idle_end_s without a part or at a new "
            "'started' of their id, or forgotten after redis.ttl_s where none ended them (a producer sending no end)",
            registry=r,
        )
        self.open_alerts = Gauge(
            "emostream_open_alerts",
            "Open escalation alerts of the calls this worker stored within redis.ttl_s, by severity (sum the workers)",
            ["severity"],
            registry=r,
        )
        self.open_utterances = Gauge("emostream_open_utterances", "Utterances waiting for parts", registry=r)
        self.closing_calls = Gauge(
            "emostream_closing_calls",
            "Calls whose 'ended' came, waiting for their close (join.end_wait_s, parts read behind, the close's Redis "
            "calls); at join.max_open_calls the worker stops reading",
            registry=r,
        )
        self.held_for_close = Gauge(
            "emostream_held_for_close_messages",
            "Messages held back by their call id: of a call started again, waiting for its earlier call's close "
            "(join.end_wait_s; growing: a producer sends 'started' around every utterance), or sent after a call "
            "ended, waiting for the control topic to be read as far",
            registry=r,
        )
        self.held_audio = Gauge(
            "emostream_held_audio_seconds", "Seconds of decoded audio held by utterances waiting for parts", registry=r
        )
        self.errors = Counter("emostream_batch_errors_total", "Batches that failed and were retried", registry=r)
        self.stage_errors = Counter(
            "emostream_service_errors_total",
            "Failures of a service call that is retried with backoff (redis, publish, close, deadletter)",
            ["stage"],
            registry=r,
        )
        self.member_lost = Counter(
            "emostream_group_member_lost_total",
            "Heartbeats the consumer group's coordinator answered 'unknown member' (this worker then joins again): "
            "a session that timed out, or another worker under the same kafka.instance_id",
            registry=r,
        )
        self.clipped_audio = Counter(
            "emostream_clipped_audio_total",
            "Audio parts used with their voice clipped at full scale (the event's suspect says so)",
            registry=r,
        )
        self.quiet_audio = Counter(
            "emostream_quiet_audio_total",
            "Audio parts used whose speaker's voice, heard as sent (engine.audio_level as-sent), sits under -50 dBFS "
            "over 3 or more utterances: a line quieter than the model's training speakers, which moves the voice's "
            "labels (the event's suspect says so; README 'Line levels')",
            registry=r,
        )
        self.processing_failed = Counter(
            "emostream_processing_failed_total",
            "Utterances split out of their batch because the encoders, engine or event build failed on them",
            registry=r,
        )
        self.finished_ids = Gauge(
            "emostream_finished_ids", "Labelled utterance ids remembered to recognise late parts", registry=r
        )
        self.queued = Gauge("emostream_queued_utterances", "Joined utterances waiting for the engine", registry=r)
        self.misrouted = Counter(
            "emostream_misrouted_messages_total",
            "Input messages on another partition than their call's messages before them (producers partitioning "
            "by call id differently)",
            ["topic"],
            registry=r,
        )
        self.oldest_unacked = Gauge(
            "emostream_oldest_unacked_seconds",
            "Age of the oldest input message this worker read and has not acked (the group's commits wait for it)",
            registry=r,
        )
        self.held_utterances = Counter(
            "emostream_held_utterances_total",
            "Utterances that waited past join.wait_s for a part of a topic read behind (a backlog)",
            registry=r,
        )
        self.evicted_calls = Counter(
            "emostream_evicted_calls_total", "Idle calls forgotten because join.max_open_calls was reached", registry=r
        )
        self.replays = Counter(
            "emostream_replays_skipped_total",
            "Replayed utterances (after a crash or rebalance) whose events were already out: acked, not relabelled",
            registry=r,
        )
        self.revoked_dropped = Counter(
            "emostream_revoked_utterances_total",
            "Half-joined or queued utterances left unacked to the next owner when their partition was revoked",
            registry=r,
        )
        r.register(heap.PauseCollector())  # emostream_gc_pause_seconds{generation}, once heap.watch() runs
        self.unreachable = Gauge(
            "emostream_unreachable_partitions",
            "Input partitions whose leader this worker cannot reach or that answer no fetch (a broker away)",
            registry=r,
        )
        self.ready_gauge = Gauge(
            "emostream_ready",
            "1 while the worker consumes (/readyz 200), 0 while it starts or stops, or its event loop is stuck",
            registry=r,
        )
        # read at each scrape, on the HTTP thread: a loop stuck for LIVE_S says 0, as /readyz does (an operator's
        # trial: a stalled worker's half of the partitions went unread while every gauge it sets stood still,
        # emostream_ready at 1, and no alert fired)
        self.ready_gauge.set_function(lambda: 1.0 if self.probe("/readyz")[0] == 200 else 0.0)
        self.model_info = Gauge(
            "emostream_model_info",
            "1 for the model this worker runs: its name, version and runtime (engine.runtime resolved)",
            ["name", "version", "runtime"],
            registry=r,
        )
        self.limits = Gauge(
            "emostream_limit",
            "Configured caps (open_utterances, held_audio_seconds, open_calls, finished_ids)",
            ["what"],
            registry=r,
        )
        # Every label value the alert rules take a rate of is exported at 0 from the start: a series
        # that first appears already at 1500 (a burst within one scrape) has no increase to rate()
        # and the alert never fires
        for reason in REASONS:
            self.deadletters.labels(reason)
        for modality in MODALITIES:
            self.missing.labels(modality)
            self.ignored_parts.labels(modality)
        for mistake in MISTAKES:
            self.misdeclared_audio.labels(mistake)
        for used in ("true", "false"):
            self.other_language_texts.labels(used)
        for name in ("seq", "speaker"):
            self.inconsistent_parts.labels(name)
        for size in range(len(MODALITIES) + 1):  # the parts an utterance was labelled with, as the worker names them
            for parts in itertools.combinations(MODALITIES, size):
                self.utterances.labels("+".join(parts) or "none")
        for stage in SERVICE_STAGES:
            self.stage_errors.labels(stage)

    def model(self, name: str, version: str, runtime: str) -> None:
        """Label the model this worker runs (``emostream_model_info``; one series per worker)."""
        self.model_info.clear()
        self.model_info.labels(name, version, runtime).set(1)

    def beat(self) -> None:
        """The event loop went round (called by the worker's partition watch)."""
        self.beat_at = self.clock()

    def probe(self, path: str) -> tuple[int, str]:
        """(HTTP status, body) of ``/healthz`` or ``/readyz`` (see the module doc)."""
        stale = self.beat_at is not None and self.clock() - self.beat_at > LIVE_S
        why = f"event loop stuck for {self.clock() - (self.beat_at or 0.0):.0f} s" if stale else ""
        if path == "/healthz":
            return (503, why) if stale else (200, "starting" if self.beat_at is None else "ok")
        if not self.ready:
            return 503, "starting: loading the model or reaching Kafka and Redis"
        return (503, why) if stale else (200, "ready")

    def serve(self, host: str, port: int) -> int:
        """Start ``/metrics``, ``/healthz`` and ``/readyz`` in a daemon thread; returns the bound port."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path in ("/healthz", "/readyz"):
                status, body = self.probe(path)
                start_response(f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
                               [("Content-Type", "text/plain; charset=utf-8")])  # fmt: skip
                return [body.encode() + b"\n"]
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]

        class Server(ThreadingWSGIServer):
            address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]  # '::' binds IPv6

        server = make_server(host, port, app, Server, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, daemon=True, name="metrics-http").start()
        self.port = int(server.server_port)
        return self.port


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Probes every few seconds: not worth a log line each."""
