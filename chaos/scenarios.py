"""The fault scenarios. Each takes the services, a :class:`Size` and a scratch folder, runs real
worker processes against a stream of calls, and returns a :class:`~chaos.verdict.Verdict`.

The calls are synthetic: the shipped demo dialogues' lines (demo/calls.jsonl) cycled into as many
calls and utterances as the size asks, each utterance with its text and an audio feature vector,
so a scenario needs no dataset. Recovery is the longest time, over the faults of a run, from a
fault to the next event produced; the note adds the longest pause between two consecutive events
(a rebalance stops every partition of the group for that long: aiokafka's protocol is eager).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from chaos.harness import (
    REPO,
    Collector,
    LocalServices,
    WorkerProcess,
    children,
    free_port,
    metric_sum,
    settings_for,
)
from chaos.verdict import Verdict, judge
from client.publisher import make_producer
from streams.kafka import wait_for_topics
from tools.dialogues import Dialogue, Utterance, read_jsonl
from tools.feed import feed, part_message


@dataclass(frozen=True)
class Size:
    calls: int
    per_call: int
    faults: int  # kills, restarts, ...
    fuzz: int  # fuzzed messages (fuzz scenario)
    speed: float  # real-time speed-up of the feed
    kafka_outage_s: float  # the broker stopped (scenario broker), a cluster node down (cluster)
    redis_outage_s: float
    overload_s: float  # three times capacity for this long (scenario overload)

    @property
    def utterances(self) -> int:
        return self.calls * self.per_call


SHORT = Size(calls=12, per_call=20, faults=2, fuzz=600, speed=4.0, kafka_outage_s=8.0, redis_outage_s=4.0,
             overload_s=10.0)  # fmt: skip
FULL = Size(calls=50, per_call=100, faults=10, fuzz=100_000, speed=4.0, kafka_outage_s=60.0, redis_outage_s=20.0,
            overload_s=60.0)  # fmt: skip


def make_calls(size: Size, audio_dim: int = 768, seed: int = 0) -> list[Dialogue]:
    lines = [u for d in read_jsonl(REPO / "demo" / "calls.jsonl") for u in d.utterances if u.text]
    rng = np.random.default_rng(seed)
    run = uuid.uuid4().hex[:6]
    calls = []
    for c in range(size.calls):
        utts = []
        for i in range(size.per_call):
            line = lines[(c * 7 + i) % len(lines)]
            utts.append(
                Utterance(
                    call_id=f"chaos-{run}-{c}",
                    utterance_id=f"u{i}",
                    seq=i,
                    speaker=line.speaker,
                    text=line.text,
                    audio_features=tuple(float(x) for x in rng.normal(0, 0.5, audio_dim)),
                    start_s=i * 1.6,
                    end_s=i * 1.6 + 1.2,
                )
            )
        calls.append(Dialogue(call_id=f"chaos-{run}-{c}", utterances=tuple(utts)))
    return calls


class Run:
    """One scenario's stream: settings, calls, the feed thread, the collector, the workers."""

    def __init__(
        self, services: LocalServices, size: Size, workdir: Path, session_timeout_s: float = 10.0, **join: Any
    ) -> None:
        self.unique = uuid.uuid4().hex[:10]
        self.settings = settings_for(
            services, self.unique, session_timeout_s=session_timeout_s, default_modalities=("text", "audio"), **join
        )
        wait_for_topics(self.settings, timeout_s=60)  # a cluster just up may not know its controller yet
        self.calls = make_calls(size)
        self.want = {(u.call_id, u.utterance_id) for d in self.calls for u in d.utterances}
        self.size = size
        self.workdir = workdir
        self.collector = Collector(self.settings)
        self.workers: list[WorkerProcess] = []
        self.faults: list[float] = []  # wall-clock times of the faults
        self.failures: list[str] = []  # a scenario's own checks that failed
        self.details = ""  # what explains a failure (the workers' log lines)
        self.feeder: threading.Thread | None = None

    def worker(self, name: str, processes: int = 1) -> WorkerProcess:
        settings = self.settings.model_copy(
            update={"metrics": self.settings.metrics.model_copy(update={"port": free_port(processes)})}
        )
        args = ("--processes", str(processes)) if processes > 1 else ()
        w = WorkerProcess(settings, self.workdir, name, args=args).start()
        self.workers.append(w)
        return w

    def start_feed(self, slower: float = 1.0) -> None:
        self.feeder = threading.Thread(
            target=feed,
            args=(self.calls, self.settings),
            daemon=True,
            kwargs={
                "realtime": True, "speed": self.size.speed / slower, "progress": False, "concurrency": self.size.calls,
                "stagger_s": 0.3, "audio_delay_s": 0.3, "modalities": ("text", "audio"),
            },
        )  # fmt: skip
        self.feeder.start()

    def events_at_least(self, n: int, timeout: float) -> bool:
        return self.collector.poll_until(lambda c: len(c.events) >= n, timeout)

    def fault(self) -> None:
        self.faults.append(time.time())

    def finish(self, name: str, timeout: float, note: str = "", quiet_s: float = 8.0) -> Verdict:
        """Wait for the feed and for an event of every utterance, then until nothing new has come for
        ``quiet_s`` (replays after a fault come late: they are what may conflict)."""
        if self.feeder is not None:
            self.feeder.join(timeout)
        self.collector.poll_until(lambda c: {(e.call_id, e.utterance_id) for _, e in c.events} >= self.want, timeout)
        seen = -1
        while len(self.collector.events) != seen:
            seen = len(self.collector.events)
            self.collector.poll_until(lambda c: False, quiet_s)
        events = [e for _, e in self.collector.events]
        produced = sorted(e.produced_at for e in events)
        gaps = [next((p for p in produced if p > f), None) for f in self.faults]
        if any(g is None for g in gaps):
            return judge(name, self.want, events, None, note + "; no event after a fault")
        recovery = max((g - f for g, f in zip(gaps, self.faults, strict=True) if g is not None), default=None)
        pause = max((b - a for a, b in zip(produced, produced[1:], strict=False)), default=0.0)
        first: dict[
            tuple[str, str], Any
        ] = {}  # every utterance sent has text and audio: how many were labelled on both
        for e in events:
            if e.revision == 0 and (e.call_id, e.utterance_id) in self.want:
                first.setdefault((e.call_id, e.utterance_id), e)
        both = sum(1 for e in first.values() if "audio" in e.modalities_present) / max(1, len(first))
        note = f"{note}; longest pause between events {pause:.1f} s; labelled with their audio {both:.0%}"
        if both < 1.0 and self.faults:  # when, relative to the first fault, those without audio were labelled
            late = sorted(e.produced_at - self.faults[0] for e in first.values() if "audio" not in e.modalities_present)
            note += f" (without: labelled {late[0]:+.1f} s to {late[-1]:+.1f} s from the first fault)"
        if both < MIN_WITH_AUDIO:  # a backlog must not cost the utterances their audio
            self.failures.append(f"only {both:.0%} of utterances labelled with their audio")
            self.details = "the workers said:\n" + self.worker_lines(
                ("goes without", "leader is unreachable", "answers again", "revoked")
            )
        verdict = judge(name, self.want, events, recovery, note)
        verdict.failures, verdict.details = self.failures, self.details
        return verdict

    def worker_lines(self, marks: tuple[str, ...], most: int = 12) -> str:
        """The first lines of the workers' logs that contain any of ``marks`` (why a check failed)."""
        lines = [
            f"{w.log_path.stem}: {line}"
            for w in self.workers
            if w.log_path.exists()
            for line in w.log_path.read_text(errors="replace").splitlines()
            if any(m in line for m in marks)
        ]
        return "\n".join(lines[:most] + ([f"... {len(lines) - most} more"] if len(lines) > most else []))

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.collector.close()


def _scenario(
    fn: Callable[[Run], str], name: str, services: LocalServices, size: Size, workdir: Path, **run_options: Any
) -> Verdict:
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(services, size, workdir, **run_options)
    try:
        note = fn(run)
        return run.finish(name, timeout=300 + 6 * size.utterances / 10, note=note)
    finally:
        run.close()


def kill9(services: LocalServices, size: Size, workdir: Path) -> Verdict:
    """A worker killed with -9 ``size.faults`` times at random moments, a new one started each time."""

    def body(run: Run) -> str:
        rnd = random.Random(1)
        w = run.worker("w0")
        w.wait_ready()
        run.start_feed()
        per = max(1, size.utterances // (size.faults + 1))
        for k in range(size.faults):
            run.events_at_least(int(per * (k + 0.5 + rnd.random() * 0.5)), 300)
            w.kill9()
            run.fault()
            w = run.worker(f"w{k + 1}")
            w.wait_ready()
        return f"{size.faults} kills"

    return _scenario(body, "worker kill -9", services, size, workdir)


def kill9_child(services: LocalServices, size: Size, workdir: Path) -> Verdict:
    """``worker --processes 2``: a child killed with -9 up to ``size.faults`` times at random moments
    while the calls talk (those the feed outlasts are not made). Its supervisor starts it again
    under the same static member id within the session timeout (the default 30 s here: the restart
    must fit in it): no rebalance, the other child reads on, so the longest pause between events
    stays short (a dynamic member's restart stopped the whole group until the dead one's session
    timed out). Fails if a child gives up partitions after the first kill."""

    def body(run: Run) -> str:
        rnd = random.Random(2)
        sup = run.worker("supervisor", processes=2)
        ready = lambda: sup.log_path.read_bytes().count(b"worker ready")  # noqa: E731
        sup.wait_ready()
        run.collector.poll_until(lambda c: ready() >= 2, 120)
        run.start_feed(slower=6.0)  # the calls talk for six times as long, past the last kill
        per = max(1, size.utterances // (size.faults + 1))
        kills = 0
        for k in range(size.faults):
            run.events_at_least(int(per * (k + 0.5 + rnd.random() * 0.5)), 300)
            if run.feeder is None or not run.feeder.is_alive():
                break
            assert sup.proc is not None
            os.kill(rnd.choice(children(sup.proc.pid)), signal.SIGKILL)
            run.fault()
            kills += 1
            started = k + 3  # "worker ready" lines: 2 at first, one more a restart

            def back(c: Collector, started: int = started) -> bool:
                return ready() >= started

            if not run.collector.poll_until(back, 180):
                run.failures.append(f"the child killed at fault {k + 1} did not start again")
                break
        after = sup.log_path.read_bytes().partition(b"was killed by signal 9")[2].decode(errors="replace")
        if moved := [x for x in after.splitlines() if re.search(r"partitions \[\d[^]]*\] revoked:", x)]:
            run.failures.append(f"a child started again set off {len(moved)} revocations (a rebalance)")
            run.details = "\n".join(moved[:6])
        skipped = f" ({size.faults - kills} not made: the feed was over)" if kills < size.faults else ""
        return f"{kills} kills of one of 2 children{skipped}"

    return _scenario(body, "child kill -9", services, size, workdir, session_timeout_s=30.0)


def scale(services: LocalServices, size: Size, workdir: Path) -> Verdict:
    """1 -> 2 -> 1 workers mid-stream (two rebalances)."""

    def body(run: Run) -> str:
        first = run.worker("first")
        first.wait_ready()
        run.start_feed(slower=4.0)  # the stream lasts past the second rebalance
        run.events_at_least(size.utterances // 5, 300)
        second = run.worker("second")
        run.fault()
        second.wait_ready()
        run.events_at_least(size.utterances // 2, 300)
        second.stop()
        run.fault()
        return "1 -> 2 -> 1 workers"

    return _scenario(body, "scale out and back", services, size, workdir)


def broker_stop(services: LocalServices, size: Size, workdir: Path) -> Verdict:
    """The broker stopped for ``size.kafka_outage_s`` with half the calls in the topics, then the other half."""

    def body(run: Run) -> str:
        w = run.worker("w0")
        w.wait_ready()
        feed(run.calls[: size.calls // 2], run.settings, realtime=False, progress=False)
        run.events_at_least(5, 120)
        services.stop_kafka()
        run.fault()
        time.sleep(size.kafka_outage_s)
        services.start_kafka()
        feed(run.calls[size.calls // 2 :], run.settings, realtime=False, progress=False)
        assert w.proc is not None and w.proc.poll() is None, "the worker died with the broker"
        return f"broker down {size.kafka_outage_s:.0f} s"

    return _scenario(body, "broker stopped", services, size, workdir)


def redis_kill(services: LocalServices, size: Size, workdir: Path) -> Verdict:
    """Redis killed with -9 mid-stream, started again (append-only file) after ``size.redis_outage_s``."""

    def body(run: Run) -> str:
        w = run.worker("w0")
        w.wait_ready()
        run.start_feed()
        run.events_at_least(size.utterances // 4, 300)
        run.fault()
        services.kill9_redis()
        time.sleep(size.redis_outage_s)
        services.start_redis()
        assert w.proc is not None and w.proc.poll() is None, "the worker died with Redis"
        return f"Redis down {size.redis_outage_s:.0f} s"

    return _scenario(body, "Redis kill -9", services, size, workdir)


def fuzz(services: LocalServices, size: Size, workdir: Path) -> Verdict:
    """``size.fuzz`` hostile messages interleaved with the valid calls."""

    def body(run: Run) -> str:
        w = run.worker("w0")
        w.wait_ready()
        run.start_feed()
        producer = make_producer(run.settings)
        t = run.settings.kafka.topics
        topics = [t.text, t.audio, t.video, t.control]
        rnd = random.Random(7)
        sent = 0

        def send(value: bytes, call_id: str | None = None) -> None:
            nonlocal sent  # the key is the message's call id where it has one (else: dead-lettered as wrong_key)
            producer.send(rnd.choice(topics), key=(call_id or f"fuzz-{sent % 97}").encode(), value=value)
            sent += 1
            if sent % 200 == 0:
                producer.flush()
                time.sleep(0.05)

        crafted = size.fuzz // 2
        for i in range(crafted):
            send(hostile(rnd, i))
        drawn = drawn_messages(size.fuzz - crafted, send)
        producer.flush()
        producer.close()
        assert w.proc is not None and w.proc.poll() is None, "the worker died of a fuzzed message"
        return f"{sent} fuzzed messages ({crafted} crafted, {drawn} drawn by hypothesis)"

    return _scenario(body, "fuzzed messages", services, size, workdir)


CLUSTER_PORT = 29592  # nodes on 29592, 29602, 29612 (controllers on each + 1)


def cluster_leader(services: LocalServices, size: Size, workdir: Path) -> Verdict:
    """A three-broker KRaft cluster (replication 3, min.insync.replicas 2) of its own, beside the
    given Redis: the broker leading most input partitions killed with -9 mid-stream, started again
    after ``size.kafka_outage_s``."""
    redis_port = urlparse(services.redis_url).port or 6379  # LocalServices, or the test suite's services
    cluster = LocalServices(workdir / "cluster", kafka_port=CLUSTER_PORT, redis_port=redis_port, kafka_nodes=3)
    cluster.start_kafka()

    def body(run: Run) -> str:
        w = run.worker("w0")
        w.wait_ready()
        run.start_feed()
        run.events_at_least(size.utterances // 4, 300)
        leader = cluster.leader_of(list(run.settings.kafka.topics.inputs()))
        run.fault()  # the kill is immediate; waiting for the process to be gone is not part of it
        cluster.kill9_kafka_node(leader)
        time.sleep(size.kafka_outage_s)
        cluster.start_kafka_node(leader)
        assert w.proc is not None and w.proc.poll() is None, "the worker died with the leader"
        return f"3 brokers: leader (node {leader}) kill -9, back after {size.kafka_outage_s:.0f} s"

    try:
        return _scenario(body, "cluster leader kill -9", cluster, size, workdir)
    finally:
        cluster.script("kafka.sh", "down", "--wipe")


def overload(services: LocalServices, size: Size, workdir: Path) -> Verdict:
    """Three times the worker's capacity for ``size.overload_s``, then half its capacity for as
    long, then nothing until the lag has drained; the worker's memory (RSS) and lag are sampled
    every second into ``overload.csv`` in ``workdir``.

    Capacity is measured first, on this machine: a burst of utterances sent at once, divided by
    the time until all are processed. Memory must stay flat: its peak from the overload's start
    until the lag has drained may exceed its level at that start by at most ``MEMORY_SLACK``, and
    the load must really reach (nearly) three times the capacity.
    """

    def body(run: Run) -> str:
        w = run.worker("w0")
        w.wait_ready()
        run.want = set()  # only what the load sends
        load = _Load(run, size.calls)
        burst = max(100, size.calls * 10)
        started = time.monotonic()
        load.send(burst)
        load.producer.flush()
        while load.processed(w) < burst and time.monotonic() - started < 300:
            time.sleep(0.2)
        capacity = burst / (time.monotonic() - started)
        samples: list[tuple[float, int, int, float]] = []  # seconds since the overload began, rss, sent, processed
        t0 = time.monotonic()
        stop = threading.Event()

        def sample() -> None:  # every second, whatever the sender is doing
            while not stop.is_set():
                samples.append((time.monotonic() - t0, w.rss_bytes(), load.sent, load.processed(w)))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        run.fault()
        rss_at_start = w.rss_bytes()
        sampler.start()
        offered = []
        for rate in (3 * capacity, capacity / 2):
            begin, base = time.monotonic(), load.sent
            while (now := time.monotonic()) - begin < size.overload_s:
                load.send(min(base + int(rate * (now - begin)) - load.sent, 50))
                if load.sent >= base + rate * (now - begin) - 1:
                    time.sleep(0.02)
            offered.append((load.sent - base) / (time.monotonic() - begin))
        load.producer.flush()
        load.producer.close()
        while load.processed(w) < load.sent and time.monotonic() - t0 < 900:  # the lag drains
            time.sleep(1.0)
        stop.set()
        sampler.join()
        with open(workdir / "overload.csv", "w") as f:
            f.write("t_s,rss_mib,sent,processed,lag\n")
            f.writelines(f"{t:.1f},{r / 2**20:.1f},{n},{q:.0f},{n - q:.0f}\n" for t, r, n, q in samples)
        peak = max(r for _, r, _, _ in samples)
        lag = max(n - q for _, _, n, q in samples)
        if peak - rss_at_start > MEMORY_SLACK * rss_at_start:
            run.failures.append(f"memory grew {(peak - rss_at_start) / 2**20:.0f} MiB")
        if offered[0] < 2.8 * capacity:
            run.failures.append(f"the load reached only {offered[0] / capacity:.1f}x capacity")
        return (
            f"capacity {capacity:.0f} utt/s; {offered[0]:.0f} utt/s ({offered[0] / capacity:.1f}x) for "
            f"{size.overload_s:.0f} s, then {offered[1]:.0f} utt/s: RSS {rss_at_start / 2**20:.0f} MiB at the start, "
            f"peak {peak / 2**20:.0f} MiB; lag peak {lag:.0f} utt, drained {samples[-1][0]:.0f} s after the start"
        )

    return _scenario(body, "3x capacity", services, size, workdir)


class _Load:
    """Utterances of ``calls`` calls (text + audio features), round-robin, each call in seq order,
    sent from pre-rendered messages: rendering 768 numbers per part would cap the load below what
    the scenario asks for on a small machine."""

    def __init__(self, run: Run, calls: int) -> None:
        self.run = run
        self.calls = calls
        self.producer = make_producer(run.settings)
        self.sent = 0
        self.prefix = f"load-{uuid.uuid4().hex[:6]}"
        topics = run.settings.kafka.topics
        lines = [u for d in read_jsonl(REPO / "demo" / "calls.jsonl") for u in d.utterances if u.text]
        rng = np.random.default_rng(0)
        self.templates: list[list[tuple[str, bytes]]] = []
        for k in range(64):
            line = lines[k % len(lines)]
            u = Utterance(call_id="CALLXXXX", utterance_id="UTTXXXX", seq=987654321, speaker=line.speaker,
                          text=line.text, audio_features=tuple(float(x) for x in rng.normal(0, 0.5, 768)),
                          start_s=0.0, end_s=1.2)  # fmt: skip
            parts = []
            for m in ("text", "audio"):
                message = part_message(u, m, topics)
                assert message is not None and message[1].count(b'"seq":987654321') == 1
                parts.append(message)
            self.templates.append(parts)

    def send(self, n: int) -> None:
        for _ in range(max(0, n)):
            k = self.sent
            call, utt = f"{self.prefix}-{k % self.calls}", f"u{k // self.calls}"
            for topic, value in self.templates[k % len(self.templates)]:
                value = value.replace(b'"CALLXXXX"', f'"{call}"'.encode()).replace(b'"UTTXXXX"', f'"{utt}"'.encode())
                value = value.replace(b'"seq":987654321', f'"seq":{k // self.calls}'.encode())
                self.producer.send(topic, key=call.encode(), value=value)
            self.run.want.add((call, utt))
            self.sent += 1

    @staticmethod
    def processed(w: WorkerProcess) -> float:
        return metric_sum(w.metrics(), "emostream_utterances_processed_total")


MIN_WITH_AUDIO = 0.95  # every scenario's utterances carry text and audio: this share at least is labelled on both
MEMORY_SLACK = 0.15  # the overload scenario's bound on memory growth, relative to the RSS at its start


SCENARIOS: dict[str, Callable[[LocalServices, Size, Path], Verdict]] = {
    "kill9": kill9,
    "child": kill9_child,
    "scale": scale,
    "broker": broker_stop,
    "cluster": cluster_leader,
    "redis": redis_kill,
    "overload": overload,
    "fuzz": fuzz,
}


def drawn_messages(n: int, send: Callable[[bytes, str], None]) -> int:
    """Property-based fuzzing: ``n`` messages drawn by hypothesis (a fixed seed), each passed to
    ``send``: arbitrary bytes, arbitrary JSON, and JSON objects over the input schemas' field
    names with arbitrary values (nested JSON, any Unicode, huge and non-finite numbers). The call
    id is always a ``fuzz-*`` one, so no draw is a part of a chaos call; ``send`` gets it too, for
    the message key (objects keyed otherwise would stop at the key check, before decoding and the
    join). Returns how many were sent."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(10**60), max_value=10**60)
        | st.floats()
        | st.text(max_size=40)
        | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
    )
    values = st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )  # fmt: skip
    fields = st.sampled_from(["schema_version", "utterance_id", "seq", "text", "embedding", "speaker", "kind",
                              "sent_at", "encoding", "sample_rate", "data", "features", "event",
                              "modalities", "embedding_f32", "features_f32"])  # fmt: skip
    objects = st.dictionaries(fields, values, max_size=8).map(lambda d: {"schema_version": 1, **d})
    messages = st.one_of(st.binary(max_size=400), values, objects, objects)
    count = 0

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(messages)
    def draw(value: Any) -> None:
        nonlocal count
        if count < n:
            call_id = f"fuzz-{count % 97}"
            if isinstance(value, dict):  # any object, also one drawn by `values` (hypothesis may draw the
                # key "call_id" there: it mixes string constants of the loaded modules into its text)
                value = {**value, "call_id": call_id}
            if not isinstance(value, bytes):
                value = json.dumps(value, allow_nan=True).encode()
            send(value, call_id)
            count += 1

    draw()
    return count


def hostile(rnd: random.Random, i: int) -> bytes:
    """One fuzzed message: random bytes, deep JSON, huge numbers, odd Unicode, wrong types and
    sizes, NaN/Inf, forged versions, audio bombs, noise and silence. Never a valid utterance of a
    chaos call (the call ids are ``fuzz-*``)."""
    base: dict[str, Any] = {"schema_version": 1, "call_id": f"fuzz-{i % 97}", "utterance_id": f"f{i}", "seq": i}
    kind = i % 12
    if kind == 0:
        return rnd.randbytes(rnd.randint(0, 300))
    if kind == 1:
        depth = rnd.randint(500, 3000)
        return b"[" * depth + b"]" * depth
    if kind == 2:
        return (
            json.dumps({**base, "text": "x"}).replace(f'"seq": {i}', '"seq": ' + "9" * rnd.randint(20, 5000)).encode()
        )
    if kind == 3:
        odd = rnd.choice(["\ud800", "\udfff", "\u202e", "\x00", "\ufeff", "\U0001f600" * 50, "\u0301" * 300])
        return json.dumps({**base, "text": f"hello {odd} there"}).encode()
    if kind == 4:
        return json.dumps(
            {**base, rnd.choice(["seq", "text", "call_id", "speaker"]): rnd.choice([[], {}, 1.5, None, True])}
        ).encode()
    if kind == 5:
        return json.dumps({**base, "embedding": [rnd.random()] * rnd.choice([0, 1, 383, 385, 5000])}).encode()
    if kind == 6:
        return (json.dumps({**base, "text": None})[:-1] + ', "embedding": [NaN, Infinity, -Infinity]}').encode()
    if kind == 7:
        return json.dumps({**base, "schema_version": rnd.choice([0, 2, 99, "1", None]), "text": "x"}).encode()
    if kind == 8:
        import io

        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, np.zeros(16000 * rnd.choice([61, 300, 600]), dtype=np.int16), 16000, format="FLAC")
        data = base64.b64encode(buf.getvalue()).decode()
        return json.dumps({**base, "kind": "audio", "encoding": "flac", "data": data}).encode()
    if kind == 9:
        audio = rnd.choice(
            [np.zeros(16000, np.int16), (np.random.default_rng(i).normal(0, 8000, 16000)).astype(np.int16)]
        )
        data = base64.b64encode(audio.tobytes()).decode()  # valid silence or noise: labelled, must not crash
        return json.dumps({**base, "kind": "audio", "encoding": "pcm_s16le", "data": data}).encode()
    if kind == 10:
        return json.dumps(
            {**base, "kind": "audio", "encoding": "pcm_s16le", "data": "!!" + "A" * rnd.randint(0, 50)}
        ).encode()
    return json.dumps(
        {**base, "kind": "call", "event": rnd.choice(["started", "exploded"]), "modalities": ["smell"]}
    ).encode()


def run_scenarios(names: list[str], size: Size, workdir: Path, services: LocalServices | None = None) -> list[Verdict]:
    """Run ``names`` in order on one set of services (started here unless given)."""
    own = services is None
    services = services or LocalServices(workdir / "services").up()
    try:
        return [SCENARIOS[name](services, size, workdir / name) for name in names]
    finally:
        if own:
            services.down()
