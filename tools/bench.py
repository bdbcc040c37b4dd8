"""``emostream bench``: the whole pipeline against the real local Kafka and Redis, with two
references measured in the same run (the engine and encoder figures per runtime are
``python -m engines.bench runtimes``).

Subjects, each on topics of its own (same partitions, same messages):

- ``worker``: ``emostream worker`` as a user runs it (``--processes N`` for the scale rows).
- ``passthrough``: a bare consume-and-produce loop with the worker's Kafka client (aiokafka):
  every part is parsed, the parts of an utterance are counted, and one small record goes out
  when the last arrives. No model, no Redis: the ceiling of this machine's broker and client.
- ``naive``: what a user writes first: one message at a time, PyTorch eager (the ``torch``
  runtime), batch size 1, a Redis round trip per utterance for its context window.

Workloads: ``text`` (MELD dev transcripts), ``audio`` (the same texts plus a RAVDESS FLAC clip
of the utterance's emotion, decoded and encoded in the worker) and ``features`` (the caller sends
the sentence embedding and the audio feature vector). Each level offers utterances of ``calls``
concurrent calls, round-robin, at a fixed rate for ``duration`` seconds, then waits for the
stragglers; ``max`` keeps a bounded backlog in flight (closed loop) for as long, so the subject
runs flat out. Latency is end to end: from the load tool's send of an utterance's last part to
the broker timestamp of its first event. Peak RSS is the largest resident set of one worker
process while it ran (the supervisor's children each count alone).

The load tool runs on the same machine and takes CPU from the subject; the figures are what one
machine does with both, which is how the ratios are read. Not part of ``make test`` (minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("emostream.bench")

WORKLOADS = ("text", "audio", "features")
SUBJECTS = ("worker", "passthrough", "naive")
PLACE_CALL, PLACE_UTT, PLACE_SEQ = b'"CALLXXXX"', b'"UTTXXXX"', b'"seq":987654321'
MAX_BACKLOG_S = 1.0  # at `max`, about this many seconds of the subject's work are kept in flight


@dataclass
class Workload:
    """Pre-rendered parts: ``templates[k]`` is utterance k's (modality, JSON) parts with
    placeholder call, utterance and seq (rendering JSON per send would cap the load)."""

    name: str
    modalities: tuple[str, ...]
    templates: list[list[tuple[str, bytes]]]

    def render(self, k: int, prefix: str, calls: int) -> tuple[str, str, list[tuple[str, bytes]]]:
        call, seq = f"{prefix}-{k % calls}", k // calls
        utt = f"u{seq}"
        out = []
        for modality, value in self.templates[k % len(self.templates)]:
            value = value.replace(PLACE_CALL, f'"{call}"'.encode(), 1).replace(PLACE_UTT, f'"{utt}"'.encode(), 1)
            out.append((modality, value.replace(PLACE_SEQ, f'"seq":{seq}'.encode(), 1)))
        return call, utt, out


def build_workload(name: str, data_dir: Path, model_dir: Path, n: int = 256, seed: int = 0) -> Workload:
    """``n`` utterances of MELD dev (with RAVDESS clips for ``audio``; random vectors of the
    model's sizes for ``features``)."""
    from engines import artifact
    from streams.schemas import encode_f32
    from tools.dialogues import Utterance, attach_ravdess, read_meld_csv
    from tools.feed import part_of

    dialogues = read_meld_csv(data_dir / "meld" / "dev_sent_emo.csv")
    if name == "audio":
        dialogues = attach_ravdess(dialogues, data_dir / "ravdess", seed=seed)
    utts = [u for d in dialogues for u in d.utterances if u.text and (name != "audio" or u.audio is not None)][:n]
    rng = np.random.default_rng(seed)
    spec = artifact.feature_spec(model_dir)
    templates = []
    for i, u in enumerate(utts):  # two speakers a call, as on a phone line (MELD scenes have many)
        u = Utterance(call_id="CALLXXXX", utterance_id="UTTXXXX", seq=987654321, speaker="AB"[i % 2], text=u.text,
                      audio=u.audio, audio_encoding=u.audio_encoding, start_s=0.0, end_s=u.end_s)  # fmt: skip
        parts: list[tuple[str, bytes]] = []
        if name == "features":
            emb = rng.normal(0, 1, spec.dim("text")).astype(np.float32)
            text = part_of(u, "text")
            assert text is not None
            body = text.model_copy(update={"text": None, "embedding_f32": encode_f32(emb / np.linalg.norm(emb))})
            parts.append(("text", body.to_bytes()))
            feats = tuple(float(x) for x in rng.normal(0, 0.5, spec.dim("audio")))
            audio = part_of(replace(u, audio=None, audio_features=feats), "audio")
            assert audio is not None
            parts.append(("audio", audio.to_bytes()))
        else:
            for m in ("text", "audio") if name == "audio" else ("text",):
                part = part_of(u, m)
                assert part is not None
                parts.append((m, part.to_bytes()))
        for _, value in parts:
            assert value.count(PLACE_CALL) == value.count(PLACE_UTT) == value.count(PLACE_SEQ) == 1, value[:200]
        templates.append(parts)
    if not templates:
        raise SystemExit(f"no utterances for workload {name!r} under {data_dir}")
    modalities = ("text",) if name == "text" else ("text", "audio")
    return Workload(name, modalities, templates)


@dataclass
class Level:
    """One subject at one offered load."""

    workload: str
    subject: str
    processes: int
    offered: str  # utterances/s, or "max"
    sent: int = 0
    completed: int = 0
    duration_s: float = 0.0
    sent_per_s: float = 0.0
    sustained: float = 0.0  # completions per second over the window
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    peak_rss_mib: float = 0.0
    unfinished: int = 0  # sent but no event by the end of the wait
    inside: dict[str, float] = field(default_factory=dict)  # the worker's own metrics, cumulative
    prefix: str = ""  # the level's call ids start with it

    def row(self) -> str:
        return (
            f"| {self.workload} | {self.subject}{'' if self.processes == 1 else f' x{self.processes}'} | "
            f"{self.offered} | {self.sustained:.0f} | {self.p50_ms:.0f} | {self.p99_ms:.0f} | "
            f"{self.peak_rss_mib:.0f} | {self.unfinished} |"
        )


HEADER = (
    "| workload | subject | offered utt/s | sustained utt/s | p50 ms | p99 ms | peak RSS MiB | unfinished |\n"
    "|---|---|---|---|---|---|---|---|"
)


class Results:
    """The subject's output topic read from the start: first event per utterance, broker time."""

    def __init__(self, settings: Any) -> None:
        from kafka import KafkaConsumer

        from streams.kafka import kafka_python_options

        self.consumer = KafkaConsumer(
            settings.kafka.topics.emotions,
            **kafka_python_options(settings),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=20,
        )
        self.first: dict[tuple[str, str], float] = {}
        self.counts: dict[str, int] = {}  # call-id prefix (a level's) -> utterances with an event
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                polled = self.consumer.poll(timeout_ms=100)
            except Exception as exc:  # a client error while the broker settles (kafka-python): poll again
                log.warning("results consumer: %s: %s; polling again", type(exc).__name__, exc)
                time.sleep(0.2)
                continue
            for records in polled.values():
                with self.lock:
                    for r in records:
                        try:
                            obj = json.loads(r.value)
                            key = (str(obj["call_id"]), str(obj["utterance_id"]))
                        except (ValueError, KeyError, TypeError):
                            log.warning("results consumer: not an event at offset %d: %r", r.offset, r.value[:100])
                            continue
                        if key not in self.first:
                            self.first[key] = r.timestamp / 1000.0
                            prefix = key[0].rsplit("-", 1)[0]
                            self.counts[prefix] = self.counts.get(prefix, 0) + 1

    def count(self, prefix: str) -> int:
        with self.lock:
            return self.counts.get(prefix, 0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.consumer.close()


class Sampler:
    """Peak resident memory of a process and its descendants (largest single process)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from chaos.harness import rss

        while not self.stop.is_set():
            now = max((rss(p) for p in tree(self.pid)), default=0)
            with self.lock:
                self.peak = max(self.peak, now)
            self.stop.wait(0.25)

    def take(self) -> float:
        """Peak MiB since the last take."""
        with self.lock:
            peak, self.peak = self.peak, 0
        return peak / 2**20

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)


_SUMS = (
    "emostream_batch_size_count",
    "emostream_batch_size_sum",
    "emostream_engine_latency_seconds_count",
    "emostream_engine_latency_seconds_sum",
    "emostream_join_wait_seconds_count",
    "emostream_join_wait_seconds_sum",
    "emostream_end_to_end_latency_seconds_count",
    "emostream_end_to_end_latency_seconds_sum",
    "process_cpu_seconds_total",
    "emostream_shed_audio_total",
)


def _totals(metrics: str) -> dict[str, float]:
    """The counters :func:`inside` reads from a /metrics page (each stage's seconds as ``stage:NAME``)."""
    from chaos.harness import metric_sum

    out = {name: metric_sum(metrics, name) for name in _SUMS}
    out["process_start_time_seconds"] = metric_sum(metrics, "process_start_time_seconds")
    for line in metrics.splitlines():  # emostream_batch_stage_seconds_sum{stage="publish"} 1.23
        if line.startswith("emostream_batch_stage_seconds_sum{"):
            stage = line.split('stage="', 1)[1].split('"', 1)[0]
            out[f"stage:{stage}"] = float(line.rsplit(" ", 1)[1])
    return out


def worker_pages(proc: Any, processes: int) -> list[str | None]:
    """Each worker child's /metrics page (each serves its own, on the metrics port + its index);
    None for a child that cannot be read (restarting), named in the log."""
    import http.client

    from streams.processes import child_port

    base = proc.settings.metrics.port
    pages: list[str | None] = []
    for i in range(processes):
        try:
            pages.append(proc.metrics(child_port(base, i)))
        except (OSError, http.client.HTTPException) as exc:
            print(f"worker child {i}'s /metrics could not be read ({exc}): its figures are left out", flush=True)
            pages.append(None)
    return pages


def worker_cores(figures: dict[str, float], elapsed_s: float) -> float | None:
    """The cores the worker processes kept busy over a level of ``elapsed_s`` seconds, from
    :func:`inside`'s figures; None where a process restarted within it (its CPU time counts its
    start and model loading, not the level's work)."""
    if figures.get("reset"):
        return None
    return round(figures["worker_cpu_s"] / max(elapsed_s, 1e-9), 2)


def inside(metrics: str | Sequence[str | None], before: str | Sequence[str | None] | None = None) -> dict[str, float]:
    """Where the worker's time went, from its /metrics: batches, their mean size, the mean
    milliseconds a batch spends in each stage and in the encoders and the engine, the mean join wait.
    ``before``: the page at the level's start, so that the figures are the level's own, not
    averages over the worker's life (its warm-up and earlier levels); if the counters went back
    or its ``process_start_time_seconds`` changed (the process restarted in between, even one that
    passed its old counts again), the figures are the new process's and ``reset`` is 1.
    ``worker_cpu_s``: the CPU seconds the worker processes used (the caller divides by the level's
    duration for the cores they kept busy, :func:`worker_cores`; a restarted process's include its
    start, loading the models, so there is no such figure for a level with ``reset``).
    With ``--processes N``, each child's page at the end and at the start (:func:`worker_pages`):
    the difference is taken child by child (a restart too), then summed; a child that could not be
    read at either end is left out and counted in ``children_unread``."""
    afters = [metrics] if isinstance(metrics, str) else list(metrics)
    if before is None:
        befores: list[str | None] = [""] * len(afters)  # no start: since each process began
    else:
        befores = [before] if isinstance(before, str) else list(before)
    assert len(befores) == len(afters), (len(befores), len(afters))
    diff: dict[str, float] = {}
    reset = False
    unread = 0
    for after_page, before_page in zip(afters, befores, strict=True):
        if after_page is None or before_page is None:
            unread += 1
            continue
        now = _totals(after_page)
        then = _totals(before_page) if before_page else {}
        started = then.get("process_start_time_seconds", 0.0)
        restarted = bool(started and now["process_start_time_seconds"] and now["process_start_time_seconds"] != started)
        if restarted or now["emostream_batch_size_count"] < then.get("emostream_batch_size_count", 0.0):
            reset, then = True, {}  # this process restarted within the level: its figures since
        for key, value in now.items():
            if key != "process_start_time_seconds":
                diff[key] = diff.get(key, 0.0) + value - then.get(key, 0.0)

    def total(name: str) -> float:
        return diff.get(name, 0.0)

    batches = total("emostream_batch_size_count")
    engine = total("emostream_engine_latency_seconds_count")
    joins = total("emostream_join_wait_seconds_count")
    stages = {
        f"{key.split(':', 1)[1]}_ms_per_batch": round(1000 * total(key) / max(batches, 1), 1)
        for key in diff
        if key.startswith("stage:")
    }
    return {
        **stages,
        "batches": batches,
        **({"reset": 1.0} if reset else {}),
        **({"children_unread": float(unread)} if unread else {}),
        "mean_batch": round(total("emostream_batch_size_sum") / max(batches, 1), 1),
        "shed_audio": total("emostream_shed_audio_total"),  # utterances labelled without their voice, behind
        "worker_cpu_s": round(total("process_cpu_seconds_total"), 2),
        "engine_ms_per_batch": round(1000 * total("emostream_engine_latency_seconds_sum") / max(engine, 1), 1),
        "join_wait_ms": round(1000 * total("emostream_join_wait_seconds_sum") / max(joins, 1), 1),
        "e2e_ms_mean": round(
            1000
            * total("emostream_end_to_end_latency_seconds_sum")
            / max(total("emostream_end_to_end_latency_seconds_count"), 1),
            1,
        ),  # fmt: skip
    }


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


class RecentRate:
    """Completions per second over about the last ``window_s`` seconds (the flat-out level sizes its
    backlog from it: the average since the level began carried its slow first seconds along)."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.window_s = window_s
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def update(self, now: float, done: int) -> float:
        if not self.samples or now - self.samples[-1][0] >= 0.1:
            self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        then, before = self.samples[0]
        return (done - before) / max(now - then, 1e-3)


def measure(
    workload: Workload, settings: Any, results: Results, sampler: Sampler | None, offered: float | None,
    duration: float, calls: int, drain_s: float, subject: str, processes: int, producer: Any,
) -> Level:  # fmt: skip
    """Offer ``workload`` at ``offered`` utterances/s (None: flat out, a bounded backlog) for
    ``duration`` seconds; wait up to ``drain_s`` for the last events."""
    topics = {m: getattr(settings.kafka.topics, m) for m in workload.modalities}
    prefix = f"b{uuid.uuid4().hex[:8]}"
    sent_at: dict[tuple[str, str], float] = {}
    backlog = 200
    recent = RecentRate()
    t0 = time.time()
    k = 0
    if sampler is not None:
        sampler.take()
    while (now := time.time()) - t0 < duration:
        if offered is not None:
            due = int(offered * (now - t0)) + 1
        else:  # flat out: keep about MAX_BACKLOG_S of the measured completion rate in flight
            done = results.count(prefix)
            rate = recent.update(now, done)
            backlog = max(50, int(rate * MAX_BACKLOG_S)) if now - t0 > 2 else 200
            due = done + backlog
        if k >= due:
            time.sleep(0.002)
            continue
        for _ in range(min(due - k, 50)):
            call, utt, parts = workload.render(k, prefix, calls)
            for modality, value in parts:
                producer.send(topics[modality], key=call.encode(), value=value)
            sent_at[(call, utt)] = time.time()
            k += 1
    send_end = time.time()
    producer.flush()
    deadline = time.time() + drain_s
    while results.count(prefix) < k and time.time() < deadline:
        time.sleep(0.05)
    with results.lock:
        got = {key: t for key, t in results.first.items() if key[0].startswith(prefix + "-")}
    lat = np.array([(got[key] - s) * 1000.0 for key, s in sent_at.items() if key in got])
    level = Level(
        workload.name, subject, processes, "max" if offered is None else f"{offered:g}", sent=k, prefix=prefix
    )
    level.completed = len(got)
    level.unfinished = k - len(got)
    level.duration_s = round(send_end - t0, 2)
    level.sent_per_s = round(k / (send_end - t0), 1)
    if got:
        if offered is None:  # completions inside the sending window, after the first 2 s
            inside = [t for t in got.values() if t0 + 2 <= t <= send_end]
            level.sustained = round(len(inside) / max(send_end - t0 - 2, 1e-3), 1)
        else:
            level.sustained = round(len(got) / max(max(got.values()) - t0, 1e-3), 1)
        level.p50_ms, level.p90_ms, level.p99_ms = (round(float(x), 1) for x in np.percentile(lat, [50, 90, 99]))
    if sampler is not None:
        level.peak_rss_mib = round(sampler.take(), 1)
    return level


def settle(results: Results, level: Level, timeout: float) -> None:
    """Until the level's stragglers are through (untimed; the level's figures are final)."""
    deadline = time.time() + timeout
    while results.count(level.prefix) < level.sent and time.time() < deadline:
        time.sleep(0.5)
    left = level.sent - results.count(level.prefix)
    if left:
        print(f"  ({left} utterances of that level still not through after {timeout:.0f} s more)", flush=True)


def warm_up(workload: Workload, settings: Any, results: Results, producer: Any, calls: int, n: int = 64) -> None:
    """Until ``n`` utterances have come through: the consumer group has its partitions and the
    first batches have paid for their allocations before anything is timed."""
    topics = {m: getattr(settings.kafka.topics, m) for m in workload.modalities}
    prefix = f"w{uuid.uuid4().hex[:8]}"
    for k in range(n):
        call, _, parts = workload.render(k, prefix, calls)
        for modality, value in parts:
            producer.send(topics[modality], key=call.encode(), value=value)
    producer.flush()
    deadline = time.time() + 180
    while results.count(prefix) < n:
        if time.time() > deadline:
            raise RuntimeError(f"warm-up: {results.count(prefix)} of {n} utterances came through in 180 s")
        time.sleep(0.1)


# --------------------------------------------------------------------------- the two references


def passthrough_main(parts: int) -> int:
    """The ceiling: aiokafka consumer -> parse -> count an utterance's parts -> one record out."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.kafka import aiokafka_options, fetch_max_wait_ms
    from streams.settings import load_settings

    settings = load_settings(None)
    t = settings.kafka.topics
    connection = aiokafka_options(settings)  # the broker and its security, as the worker's

    async def run() -> None:
        consumer = AIOKafkaConsumer(
            t.text, t.audio, **connection, group_id=settings.kafka.group_id,
            auto_offset_reset="earliest", enable_auto_commit=True, max_partition_fetch_bytes=8 * 2**20,
            fetch_max_wait_ms=fetch_max_wait_ms(settings),  # as the worker's consumer
        )  # fmt: skip
        producer = AIOKafkaProducer(**connection, acks="all", linger_ms=5)
        await consumer.start()
        await producer.start()
        print("passthrough ready", flush=True)
        seen: dict[tuple[str, str], int] = {}
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=2000)
                for records in batches.values():
                    for r in records:
                        obj = json.loads(r.value)
                        key = (obj["call_id"], obj["utterance_id"])
                        seen[key] = seen.get(key, 0) + 1
                        if seen[key] == parts:
                            del seen[key]
                            out = json.dumps({"call_id": key[0], "utterance_id": key[1]}).encode()
                            await producer.send(t.emotions, out, key=r.key)
        finally:
            await producer.stop()
            await consumer.stop()

    asyncio.run(run())
    return 0


def naive_main(parts: int) -> int:
    """What a user writes first: one message at a time, PyTorch eager at batch 1, a Redis round
    trip per utterance for its window, one event out."""
    from kafka import KafkaConsumer, KafkaProducer

    from streams.context import ContextItem
    from streams.kafka import kafka_python_options
    from streams.pipeline import build_batch, sentiment_label
    from streams.runtime import load_model
    from streams.schemas import TextPart, parse_input
    from streams.settings import load_settings
    from streams.validate import to_payload

    settings = load_settings(None, engine={"runtime": "torch"})
    engine, featurizer = load_model(settings)
    featurizer.warm_up()
    import redis

    db = redis.Redis.from_url(settings.redis.url.get_secret_value())
    t = settings.kafka.topics
    consumer = KafkaConsumer(
        t.text, t.audio, **kafka_python_options(settings), group_id=settings.kafka.group_id,
        auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 2**20,
    )  # fmt: skip
    producer = KafkaProducer(**kafka_python_options(settings), acks="all")
    dims = engine.info.features.dims()
    window = engine.info.max_window
    pending: dict[tuple[str, str], dict[str, Any]] = {}
    print("naive ready", flush=True)
    for r in consumer:
        part = parse_input("text" if r.topic == t.text else "audio", r.value, settings.limits.max_message_bytes)
        assert not hasattr(part, "event")
        payload = to_payload(part, dims, settings.limits)  # type: ignore[arg-type]
        key = (part.call_id, part.utterance_id)
        got = pending.setdefault(key, {})
        got["text" if isinstance(part, TextPart) else "audio"] = (payload, part)
        if len(got) < parts:
            continue
        del pending[key]
        feats: dict[str, np.ndarray] = {}
        for modality, (payload, _) in got.items():
            if payload.kind == "text":
                feats[modality] = featurizer.text([payload.value])[0]
            elif payload.kind == "wave":
                feats[modality] = featurizer.audio([payload.value])[0]
            else:
                feats[modality] = payload.value
        first = got["text"][1]
        item = ContextItem(first.utterance_id, first.seq, first.speaker, feats)
        rkey = f"{settings.redis.key_prefix}naive:{first.call_id}"
        pipe = db.pipeline()
        pipe.rpush(rkey, item.to_json())
        pipe.ltrim(rkey, -window, -1)
        pipe.lrange(rkey, 0, -1)
        items = [ContextItem.from_json(x) for x in pipe.execute()[-1]]
        out = engine.predict(build_batch([items], engine.info.features))
        probs = out.probs[0]
        event = {
            "call_id": first.call_id,
            "utterance_id": first.utterance_id,
            "label": engine.info.labels[int(np.argmax(probs))],
            "probs": [round(float(p), 4) for p in probs],
            "sentiment": sentiment_label(float(out.sentiment[0])),
        }
        producer.send(t.emotions, json.dumps(event).encode(), key=first.call_id.encode())
    return 0


class Reference:
    """A reference subject in its own process (``python -m tools.bench passthrough|naive``)."""

    def __init__(self, kind: str, settings: Any, parts: int, log_path: Path) -> None:
        import subprocess

        from chaos.harness import REPO, env_for

        self.log_path = log_path
        with open(log_path, "wb") as log_file:  # a fresh log: an earlier run's "ready" must not count
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tools.bench", kind, "--parts", str(parts)],
                cwd=REPO, env=env_for(settings), stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while b"ready" not in log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{kind} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except Exception:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------- the run


@dataclass
class Plan:
    workloads: tuple[str, ...] = ("text", "audio", "features")
    loads: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {"text": (50, 100), "audio": (20, 50), "features": (100, 300)}
    )
    duration_s: float = 15.0
    drain_s: float = 20.0
    calls: int = 100
    references: tuple[str, ...] = ("passthrough", "naive")
    processes: tuple[int, ...] = (1, 2)
    naive_duration_s: float = 10.0
    settle_s: float = 300.0  # after an overloaded level, wait this long at most for its backlog
    runtime: str = "auto"  # the worker's engine.runtime (the references keep their own)
    #: the worker's engine.shed_audio_after_s: 0 (encode all audio) measures what the encoders sustain;
    #: the worker ships with 30, which holds an overloaded worker's latency near it by labelling from the words
    shed_audio_after_s: float = 0.0


def run_bench(plan: Plan, data_dir: Path, run_dir: Path, kafka_port: int, redis_port: int) -> list[Level]:
    """The plan on a broker and Redis of its own, started here and stopped after."""
    from chaos.harness import LocalServices

    run_dir = run_dir.resolve()  # the scripts run elsewhere
    run_dir.mkdir(parents=True, exist_ok=True)
    services = LocalServices(run_dir, kafka_port=kafka_port, redis_port=redis_port)
    try:
        services.up()
        return run_plan(plan, data_dir, run_dir, services)
    finally:
        services.down()


def run_plan(plan: Plan, data_dir: Path, run_dir: Path, services: Any) -> list[Level]:
    """Every subject of the plan on ``services`` (``brokers``, ``redis_url``), each on topics of its own."""
    from chaos.harness import WorkerProcess, free_port, settings_for
    from client.publisher import make_producer
    from streams.kafka import ensure_topics
    from streams.settings import EngineSettings, Settings

    levels: list[Level] = []
    model_dir = Settings().model_dir()
    shipped = EngineSettings()  # the harness's settings batch by 16 for its tests; the bench runs what ships
    shipped_batching = {"max_batch": shipped.max_batch, "batch_budget_s": shipped.batch_budget_s}
    print(HEADER, flush=True)
    for name in plan.workloads:
        workload = build_workload(name, data_dir, model_dir)
        parts = len(workload.modalities)
        print(f"{name}: {len(workload.templates)} utterances, parts {'+'.join(workload.modalities)}", flush=True)
        subjects: list[tuple[str, int]] = [("worker", p) for p in plan.processes]
        subjects += [(r, 1) for r in plan.references]
        for subject, processes in subjects:
            unique = uuid.uuid4().hex[:8]
            settings = settings_for(services, unique)
            settings = settings.model_copy(
                update={
                    "join": settings.join.model_copy(update={"default_modalities": workload.modalities}),
                    "engine": settings.engine.model_copy(
                        update={
                            **shipped_batching,
                            "max_wait_s": 0.05,
                            "runtime": plan.runtime,
                            "shed_audio_after_s": plan.shed_audio_after_s,
                        }
                    ),
                    "limits": settings.limits.model_copy(update={"max_message_bytes": 4 * 2**20}),
                    "metrics": settings.metrics.model_copy(update={"port": free_port()}),
                }
            )
            ensure_topics(settings)
            log_path = run_dir / f"{name}-{subject}-{processes}.log"
            with contextlib.ExitStack() as stack:  # whatever fails, every process and thread started is stopped
                if subject == "worker":
                    log_path.unlink(missing_ok=True)  # WorkerProcess appends: an earlier run's "ready" must not count
                    args = ("--processes", str(processes))
                    proc: Any = WorkerProcess(settings, run_dir, log_path.stem, args)
                    stack.callback(proc.stop)
                    proc.start().wait_ready(300)
                    pid = proc.proc.pid
                else:
                    proc = Reference(subject, settings, parts, log_path)
                    stack.callback(proc.stop)
                    pid = proc.pid
                results = Results(settings)
                stack.callback(results.close)
                sampler = Sampler(pid)
                stack.callback(sampler.close)
                producer = make_producer(settings)
                stack.callback(producer.close)
                warm_up(workload, settings, results, producer, plan.calls)
                loads: Sequence[float | None]
                if subject == "worker" and processes == 1:
                    loads = [*plan.loads.get(name, ()), None]
                else:
                    loads = [None]
                for offered in loads:
                    duration = plan.naive_duration_s if subject == "naive" else plan.duration_s
                    before = worker_pages(proc, processes) if subject == "worker" else None
                    started = time.monotonic()
                    level = measure(workload, settings, results, sampler, offered, duration, plan.calls,
                                    plan.drain_s, subject, processes, producer)  # fmt: skip
                    if subject == "worker":
                        level.inside = inside(worker_pages(proc, processes), before)
                        # the cores the worker kept busy between the two reads of its pages
                        elapsed = max(time.monotonic() - started, 1e-9)
                        cores = worker_cores(level.inside, elapsed)
                        if cores is not None:  # none after a restart within the level
                            level.inside["worker_cores"] = cores
                    print(level.row(), flush=True)
                    if level.inside.get("shed_audio"):
                        shed, after = level.inside["shed_audio"], plan.shed_audio_after_s
                        print(f"  (the audio of {shed:.0f} utterances not encoded: came to over {after:g} s late)")
                    levels.append(level)
                    if level.unfinished:  # an overload's backlog must not count against the next level
                        settle(results, level, plan.settle_s)
    return levels


def ratios(levels: Sequence[Level]) -> list[str]:
    """The worker at max against each reference at max, per workload, and the scale rows."""
    out = []
    at_max = {(lv.workload, lv.subject, lv.processes): lv for lv in levels if lv.offered == "max"}
    for name in WORKLOADS:
        w = at_max.get((name, "worker", 1))
        if w is None:
            continue
        for ref in ("passthrough", "naive"):
            r = at_max.get((name, ref, 1))
            if r is not None and r.sustained > 0:
                times = w.sustained / r.sustained
                out.append(f"{name}: worker / {ref} = {times:.2f} ({w.sustained:.0f} / {r.sustained:.0f} utt/s)")
        for (n, s, p), lv in sorted(at_max.items()):
            if n == name and s == "worker" and p > 1 and w.sustained > 0:
                out.append(f"{name}: {p} worker processes / 1 = {lv.sustained / w.sustained:.2f}")
    return out


def plot(levels: Sequence[Level], path: Path) -> Path:
    """p50 and p99 against the offered load, one panel per workload, one line per subject."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [w for w in WORKLOADS if any(lv.workload == w for lv in levels)]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), constrained_layout=True, squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for subject in SUBJECTS:
            mine = [lv for lv in levels if (lv.workload, lv.subject, lv.processes) == (name, subject, 1)]
            pts = sorted((lv.sent_per_s, lv.p50_ms, lv.p99_ms) for lv in mine if lv.completed)
            if not pts:
                continue
            x = [p[0] for p in pts]
            (line,) = ax.plot(x, [p[1] for p in pts], marker="o", label=f"{subject} p50")
            ax.plot(x, [p[2] for p in pts], marker="^", linestyle="--", color=line.get_color(), label=f"{subject} p99")
        ax.set_title(name)
        ax.set_xlabel("offered utterances/s (flat out: what the closed loop sent)")
        ax.set_ylabel("end-to-end latency, ms")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cmd_bench(ns: Any) -> int:
    if ns.what == "engine":
        from engines.bench import main as engine_bench

        return engine_bench(["runtimes", "--data-dir", ns.data_dir, "--n", "512"])
    if ns.what == "analytics":
        from tools.bench_analytics import cmd

        return cmd(ns)
    loads: dict[str, tuple[float, ...]] = dict(Plan().loads)
    for spec in ns.load or []:
        name, _, values = spec.partition("=")
        loads[name] = tuple(float(v) for v in values.split(",") if v)
    plan = Plan(
        workloads=tuple(ns.workloads.split(",")),
        loads=loads,
        duration_s=ns.duration,
        drain_s=ns.drain,
        calls=ns.calls,
        references=tuple(r for r in ns.references.split(",") if r),
        processes=tuple(int(p) for p in ns.processes.split(",")),
        naive_duration_s=ns.naive_duration,
        runtime=ns.runtime,
        shed_audio_after_s=ns.shed_audio_after,
    )
    for name in plan.workloads:
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}: {', '.join(WORKLOADS)}")
    cores = os.cpu_count() or 1
    if max(plan.processes) > cores:
        print(f"note: {max(plan.processes)} processes on {cores} cores", file=sys.stderr)
    started = time.time()
    levels = run_bench(plan, Path(ns.data_dir), Path(ns.run_dir), ns.kafka_port, ns.redis_port)
    print()
    print(HEADER)
    for lv in levels:
        print(lv.row())
    print()
    for line in ratios(levels):
        print(line)
    report = {
        "machine": {"cores": cores, "python": sys.version.split()[0]},
        "plan": asdict(plan),
        "levels": [asdict(lv) for lv in levels],
        "ratios": ratios(levels),
        "wall_s": round(time.time() - started, 1),
    }
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {ns.json}")
    if ns.plot:
        print(f"wrote {plot(levels, Path(ns.plot))}")
    return 0


def add_bench_args(p: Any) -> None:
    p.add_argument(
        "what",
        nargs="?",
        default="pipeline",
        choices=["pipeline", "engine", "analytics"],
        help="pipeline (default): Kafka + Redis + worker and references; engine: the encoders and the engine on "
        "every runtime this machine has (python -m engines.bench runtimes); analytics: the call analytics stage "
        "alone on a Redis of its own, by call length (--turns, --calls, --batch, --burst, --batches)",
    )
    p.add_argument("--workloads", default="text,audio,features", help="comma-separated: text, audio, features")
    p.add_argument("--load", action="append", metavar="WORKLOAD=R1,R2",
                   help="fixed offered loads in utterances/s (besides max), e.g. text=100,300")  # fmt: skip
    p.add_argument("--duration", type=float, default=15.0, help="seconds per level")
    p.add_argument("--naive-duration", type=float, default=10.0, help="seconds for the naive worker's level")
    p.add_argument("--drain", type=float, default=20.0, help="seconds to wait for the last events of a level")
    p.add_argument("--calls", type=int, default=100, help="concurrent calls the utterances are spread over")
    p.add_argument("--references", default="passthrough,naive", help="'' for none")
    p.add_argument("--processes", default="1,2", help="worker processes to run flat out, e.g. 1,2,4")
    p.add_argument("--runtime", default="auto", help="the worker's engine.runtime (auto, onnxruntime, ...)")
    p.add_argument(
        "--shed-audio-after",
        type=float,
        default=0.0,
        metavar="S",
        help="the worker's engine.shed_audio_after_s (default 0: all audio encoded, what the encoders sustain; "
        "the worker ships with 30)",
    )
    p.add_argument(
        "--data-dir",
        default=os.environ.get("EMOSTREAM_DATA_DIR", "../shared/data"),
        help="folder holding meld/ and ravdess/ (read-only)",
    )
    p.add_argument("--run-dir", default="runs/bench", help="where the services' data, logs and results go")
    p.add_argument("--kafka-port", type=int, default=29592, help="the bench's own broker (not the demo's 9092)")
    p.add_argument("--redis-port", type=int, default=26790, help="the bench's own Redis (not the demo's 6379)")
    p.add_argument("--turns", default="10,100,400", help="(analytics) turns every call has, comma-separated")
    p.add_argument("--batch", type=int, default=20, help="(analytics) events per batch")
    p.add_argument(
        "--burst", type=int, default=1, help="(analytics) turns of each call in a batch, judged one after another"
    )
    p.add_argument("--batches", type=int, default=100, help="(analytics) timed batches per call length")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--plot", help="write latency percentiles against load to this PNG")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m tools.bench")
    p.add_argument("kind", choices=["passthrough", "naive"], help="which reference worker to run")
    p.add_argument("--parts", type=int, required=True, help="parts to consume before it exits")
    ns = p.parse_args(argv)
    return passthrough_main(ns.parts) if ns.kind == "passthrough" else naive_main(ns.parts)


if __name__ == "__main__":
    sys.exit(main())
