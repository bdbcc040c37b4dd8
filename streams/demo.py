"""``emostream demo``: the whole service on this machine, start to finish.

Starts a local Kafka broker and Redis server (deploy/local) unless the settings point at ones
that answer, creates this run's topics, starts a worker process on the configured model (the
shipped default unless told otherwise), replays sample calls (the project's own dialogues with
espeak-ng speech, or ``--data`` MELD/RAVDESS files the user has), prints every emotion event as it
arrives, then a summary, and stops everything it started. Ctrl-C stops it cleanly at any time.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from streams.settings import REPO_ROOT, Settings, load_settings

DEMO_CALLS = REPO_ROOT / "demo" / "calls.jsonl"


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="MELD CSV (e.g. .../meld/dev_sent_emo.csv) or a JSONL file of our format")
    p.add_argument("--audio-dir", help="RAVDESS folder: give MELD utterances real speech of their emotion")
    p.add_argument("--calls", type=int, default=4, help="how many calls to replay (default 4)")
    p.add_argument("--speed", type=float, default=4.0, help="replay speed, x real time (default 4)")
    p.add_argument("--no-audio", action="store_true", help="text only")
    p.add_argument("--timeout", type=float, default=300.0, help="give up waiting for events after this many s")


def _listening(hostport: str) -> bool:
    host, _, port = hostport.strip().rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=1).close()
        return True
    except (OSError, ValueError):
        return False


def _local_port(hostport: str) -> int | None:
    host, _, port = hostport.strip().rpartition(":")
    return int(port) if host in ("127.0.0.1", "localhost") and port.isdigit() else None


class Services:
    """Local Kafka/Redis started for this demo (and only those are stopped afterwards)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started: list[tuple[str, dict[str, str]]] = []

    def up(self) -> None:
        brokers = self.settings.kafka.brokers.split(",")[0]
        redis_hostport = self.settings.redis.url.get_secret_value().split("//")[-1].split("/")[0].split("@")[-1]
        for script, hostport, var in (("kafka.sh", brokers, "KAFKA_PORT"), ("redis.sh", redis_hostport, "REDIS_PORT")):
            if _listening(hostport):
                print(f"demo: using the {script[:-3]} at {hostport}", file=sys.stderr)
                continue
            port = _local_port(hostport)
            if port is None:
                raise SystemExit(f"demo: {hostport} does not answer and is not local: start it or fix the settings")
            env = {**os.environ, var: str(port)}
            subprocess.run([str(REPO_ROOT / "deploy" / "local" / script), "up"], check=True, env=env)
            self.started.append((script, env))

    def down(self) -> None:
        for script, env in reversed(self.started):
            subprocess.run([str(REPO_ROOT / "deploy" / "local" / script), "down"], check=False, env=env)
        self.started.clear()


def _dialogues(ns: argparse.Namespace, workdir: Path) -> list[Any]:
    from streams.dialogues import attach_ravdess, read_jsonl, read_meld_csv, synthesize_audio

    if ns.data and ns.data.endswith(".csv"):
        dialogues = read_meld_csv(ns.data, limit_dialogues=ns.calls)
        if ns.audio_dir and not ns.no_audio:
            dialogues = attach_ravdess(dialogues, ns.audio_dir, seed=0)
        return dialogues
    dialogues = read_jsonl(ns.data or DEMO_CALLS)[: ns.calls]
    if not ns.no_audio and not any(u.audio for d in dialogues for u in d.utterances):
        print("demo: speaking the calls with espeak-ng ...", file=sys.stderr)
        dialogues = synthesize_audio(dialogues, workdir / "audio")
    return dialogues


def run_demo(ns: argparse.Namespace) -> int:
    from streams.feed import ensure_topics, feed

    run_id = uuid.uuid4().hex[:6]
    base = load_settings(ns.config)
    topics = {
        k: f"emostream.demo.{run_id}.{k}" for k in ("text", "audio", "video", "control", "emotions", "deadletter")
    }
    settings = load_settings(
        ns.config,
        kafka={**base.kafka.model_dump(), "topics": topics, "group_id": f"emostream-demo-{run_id}"},
        redis={
            **base.redis.model_dump(),
            "url": base.redis.url.get_secret_value(),
            "key_prefix": f"emostream:demo:{run_id}:",
        },
    )
    services = Services(settings)
    worker: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with tempfile.TemporaryDirectory(prefix="emostream-demo-") as tmp:
        workdir = Path(tmp)
        try:
            services.up()
            dialogues = _dialogues(ns, workdir)
            n_utts = sum(len(d.utterances) for d in dialogues)
            ensure_topics(settings)
            worker = _start_worker(settings, workdir)
            print(
                f"demo: {len(dialogues)} calls, {n_utts} utterances; worker log {workdir / 'worker.log'}",
                file=sys.stderr,
            )
            _wait_ready(worker, workdir / "worker.log")
            summary = Summary(dialogues, settings)
            watcher = threading.Thread(target=summary.watch, args=(stop, ns.timeout), daemon=True)
            watcher.start()
            report = feed(dialogues, settings, realtime=True, speed=ns.speed)
            print(f"demo: {report.summary()}", file=sys.stderr)
            watcher.join(ns.timeout)
            print(summary.render(), file=sys.stderr)
            return 0 if summary.complete() else 1
        except KeyboardInterrupt:
            print("\ndemo: interrupted, stopping", file=sys.stderr)
            return 130
        finally:
            # cleanup must finish even if Ctrl-C is pressed again meanwhile
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            print("demo: stopping what it started ...", file=sys.stderr)
            stop.set()
            if worker is not None and worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(15)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(5)
            services.down()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


def _start_worker(settings: Settings, workdir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSTREAM_")}
    flat = {
        "KAFKA__BROKERS": settings.kafka.brokers,
        "KAFKA__GROUP_ID": settings.kafka.group_id,
        "REDIS__URL": settings.redis.url.get_secret_value(),
        "REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "ENGINE__MODEL": settings.engine.model,
        "METRICS__PORT": str(settings.metrics.port),
        **{f"KAFKA__TOPICS__{k.upper()}": v for k, v in settings.kafka.topics.model_dump().items()},
    }
    env.update({f"EMOSTREAM_{k}": str(v) for k, v in flat.items()})
    log = open(workdir / "worker.log", "wb")  # noqa: SIM115 - lives as long as the worker
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT
    )


def _wait_ready(worker: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"demo: the worker exited:\n{log.read_text(errors='replace')[-3000:]}")
        if b"worker ready" in log.read_bytes():
            return
        time.sleep(0.5)
    raise SystemExit(f"demo: the worker was not ready in {timeout:.0f} s (log: {log})")


class Summary:
    """Prints events as they arrive (one line each) and summarises them at the end."""

    def __init__(self, dialogues: list[Any], settings: Settings) -> None:
        self.labels = {(u.call_id, u.utterance_id): u.label for d in dialogues for u in d.utterances}
        self.settings = settings
        self.events: dict[tuple[str, str], Any] = {}
        self.dead = 0

    def complete(self) -> bool:
        return set(self.events) >= set(self.labels)

    def watch(self, stop: threading.Event, timeout: float) -> None:
        from streams.schemas import EmotionEvent
        from streams.subscribe import EventPrinter, make_consumer

        t = self.settings.kafka.topics
        printer = EventPrinter(sys.stdout, "pretty", {c for c, _ in self.labels}, t.deadletter)
        consumer = make_consumer(self.settings, [t.emotions, t.deadletter], True, timeout)
        deadline = time.monotonic() + timeout
        try:
            while not stop.is_set() and not self.complete() and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=300).values():
                    for r in records:
                        printer.handle(r.topic, r.value)
                        if r.topic == t.deadletter:
                            self.dead += 1
                            continue
                        ev = EmotionEvent.model_validate_json(r.value)
                        self.events[(ev.call_id, ev.utterance_id)] = ev
                sys.stdout.flush()
        finally:
            consumer.close()

    def render(self) -> str:
        evs = list(self.events.values())
        if not evs:
            return "demo: no emotion events arrived"
        lat = sorted(e.timings.end_to_end_s for e in evs)
        labelled = [(e.label, self.labels.get((e.call_id, e.utterance_id))) for e in evs]
        scored = [(p, g) for p, g in labelled if g]
        acc = sum(p == g for p, g in scored) / len(scored) if scored else float("nan")
        mean = {m: sum(e.weights[m] for e in evs) / len(evs) for m in ("text", "audio", "video")}
        lines = [
            "",
            f"demo summary: {len(evs)}/{len(self.labels)} utterances labelled, {self.dead} dead letters",
            f"  end-to-end latency: p50 {lat[len(lat) // 2] * 1000:.0f} ms, p95 "
            f"{lat[min(len(lat) - 1, int(len(lat) * 0.95))] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms",
            f"  agreement with the script's labels: {acc:.0%} of {len(scored)} (a sanity check, not a benchmark)",
            "  mean modality weights: " + ", ".join(f"{m} {w:.2f}" for m, w in mean.items()),
            f"  model: {evs[0].model.name} {evs[0].model.version} ({evs[0].model.runtime})",
        ]
        return "\n".join(lines)
