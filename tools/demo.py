"""``emostream demo``: the whole service on this machine, start to finish.

Starts a local Kafka broker and Redis server (deploy/local) unless the settings point at ones
that answer, creates this run's topics, starts a worker process on the configured model (the
shipped default unless told otherwise) with revised events on (the shipped ``models/revised``
unless the settings name another revision model; ``--no-revisions`` turns them off), replays sample
calls (the project's own dialogues with espeak-ng speech, or ``--data`` MELD/RAVDESS files the user
has), prints every emotion event as it arrives (revisions as ``↻ r1`` lines), waits until every
utterance has its provisional event and, with revisions, its revised one (the last k utterances of
a call are revised when the feed sends the call's ``ended``), prints a summary, and stops
everything it started. Ctrl-C stops it cleanly at any time.
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

from engines.modalities import MODALITIES
from streams.settings import REPO_ROOT, TOPIC_KEYS, Settings, load_settings

DEMO_CALLS = REPO_ROOT / "demo" / "calls.jsonl"
DEMO_LOG_NAME = "demo-worker.log"  # kept after the demo (the rest of its files are not)


def demo_log() -> Path:
    """Where the demo's worker logs: the local services' run folder (``EMOSTREAM_RUN_DIR``, .run/
    in the repository by default, as deploy/local's scripts use it)."""
    return Path(os.environ.get("EMOSTREAM_RUN_DIR") or REPO_ROOT / ".run").resolve() / DEMO_LOG_NAME


_SHOW_CHANGES = 12  # changed labels listed in the summary


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="MELD CSV (e.g. .../meld/dev_sent_emo.csv) or a JSONL file of our format")
    p.add_argument("--audio-dir", help="RAVDESS folder: give MELD utterances real speech of their emotion")
    p.add_argument("--calls", type=int, default=4, help="how many calls to replay (default 4)")
    p.add_argument("--speed", type=float, default=4.0, help="replay speed, x real time (default 4)")
    p.add_argument("--no-audio", action="store_true", help="text only")
    p.add_argument("--timeout", type=float, default=300.0, help="give up waiting for events after this many s")
    p.add_argument(
        "--no-revisions",
        action="store_true",
        help="provisional events only (default: also revised events, by the shipped 'revised' model unless "
        "engine.revision_model names another)",
    )


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
    from tools.dialogues import attach_ravdess, read_jsonl, read_meld_csv, synthesize_audio

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
    from streams.kafka import ensure_topics
    from tools.feed import feed

    run_id = uuid.uuid4().hex[:6]
    base = load_settings(ns.config)
    topics = {k: f"emostream.demo.{run_id}.{k}" for k in TOPIC_KEYS}
    revision_model = None if ns.no_revisions else (base.engine.revision_model or "revised")
    settings = load_settings(
        ns.config,
        kafka={**base.kafka.model_dump(), "topics": topics, "group_id": f"emostream-demo-{run_id}"},
        redis={
            **base.redis.model_dump(),
            "url": base.redis.url.get_secret_value(),
            "key_prefix": f"emostream:demo:{run_id}:",
        },
        engine={
            **base.engine.model_dump(),
            "revision_model": revision_model,
            "future": 0 if ns.no_revisions else base.engine.future,
        },
    )
    future = revision_future(settings)
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
            log_path = demo_log()
            worker = _start_worker(settings, log_path, workdir)
            print(
                f"demo: {len(dialogues)} calls (--calls N), {n_utts} utterances; worker log {_shown(log_path)}",
                file=sys.stderr,
            )
            if future:
                print(
                    f"demo: revised events on: each utterance is labelled again by "
                    f"{_shown(settings.revision_model_dir())} once {future} later utterances of its call (or the "
                    "call's end) arrived (--no-revisions: off)",
                    file=sys.stderr,
                )
            _wait_ready(worker, log_path)
            summary = Summary(dialogues, settings, future)
            watcher = threading.Thread(target=summary.watch, args=(stop, ns.timeout), daemon=True)
            watcher.start()
            report = feed(dialogues, settings, realtime=True, speed=ns.speed)
            print(f"demo: {report.summary()}; waiting for the {summary.waiting_for()}", file=sys.stderr)
            watcher.join(ns.timeout)
            if any(u.audio for d in dialogues for u in d.utterances):
                summary.text_alone = text_alone_agreement(dialogues, settings)
            print(summary.render(), file=sys.stderr)
            if summary.complete():
                print(f"demo: done, every utterance got its {summary.waiting_for()}", file=sys.stderr)
                return 0
            print(f"demo: gave up after {ns.timeout:.0f} s (--timeout): {summary.missing()}", file=sys.stderr)
            return 1
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


def revision_future(settings: Settings) -> int:
    """k of the revised events the worker will make with these settings (0: none), as
    :func:`streams.runtime.load_revision_model` decides it, without loading the model."""
    from engines import artifact

    path = settings.revision_model_dir()
    if settings.engine.future or path is None:
        return settings.engine.future
    try:
        return int(artifact.read_json(path, artifact.CONFIG).get("future", 0))
    except Exception as exc:  # the worker will say what is wrong with it
        print(f"demo: cannot read the revision model {path}: {exc}", file=sys.stderr)
        return 0


def write_settings(settings: Settings, path: Path) -> Path:
    """``settings`` as a settings file that ``--config`` reads back to the same object (secrets
    included, so the file is private to this user)."""
    import json

    import pydantic

    def plain(x: Any) -> Any:
        if isinstance(x, pydantic.SecretStr):
            return x.get_secret_value()
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(plain(settings.model_dump(mode="python")), default=str))
    return path


def _start_worker(settings: Settings, log_path: Path, workdir: Path) -> subprocess.Popen[bytes]:
    """The demo's worker, on exactly the demo's settings: the user's (``--config``, ``EMOSTREAM_*``)
    with the demo's topics, consumer group and Redis prefix over them, handed over as a settings
    file rather than rebuilt from a few variables (which dropped the rest of the user's)."""
    config = write_settings(settings, workdir / "worker-settings.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSTREAM_")}  # all in the file
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the worker
    command = [sys.executable, "-m", "streams.cli", "--config", str(config), "worker"]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def _wait_ready(worker: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"demo: the worker exited:\n{log.read_text(errors='replace')[-3000:]}")
        if b"worker ready" in log.read_bytes():
            return
        time.sleep(0.5)
    raise SystemExit(f"demo: the worker was not ready in {timeout:.0f} s (log: {log})")


def text_alone_agreement(dialogues: list[Any], settings: Settings) -> tuple[float, int]:
    """How often the stream's model, given each utterance's text and its call's earlier text only
    (causal windows, as the stream builds them), agrees with the script's labels: the yardstick
    for the labels made with the audio."""
    from engines.features.acknowledge import acknowledged
    from engines.registry import load_engine, load_extractors
    from engines.windows import UtteranceFeatures, pack_windows
    from streams.rules import load_rules

    try:  # the summary, not a progress bar of the text encoder's weights
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    engine = load_engine(settings.model_dir(), runtime=settings.engine.runtime)
    extractors = load_extractors(settings.model_dir(), runtime=settings.engine.runtime)
    agent = load_rules(settings.analytics.rules).is_agent  # as the stream: its [roles] say who is an agent
    right = scored = 0
    if extractors.text is None:  # an audio-only model has no text-alone figure
        return float("nan"), 0
    for d in dialogues:
        utts = [u for u in d.utterances if u.text]
        if not utts:
            continue
        read = acknowledged(
            [str(u.text) for u in utts], settings.engine.acknowledgements, [u.speaker for u in utts], agent
        )
        vectors = extractors.text.encode(read)
        items = [UtteranceFeatures(u.speaker, {"text": v}) for u, v in zip(utts, vectors, strict=True)]
        width = engine.info.max_window
        windows = [items[max(0, i + 1 - width) : i + 1] for i in range(len(items))]
        out = engine.predict(pack_windows(windows, engine.info.features))
        for u, best in zip(utts, out.probs.argmax(1), strict=True):
            if u.label:
                scored += 1
                right += engine.info.labels[int(best)] == u.label
    return (right / scored if scored else float("nan")), scored


class Summary:
    """Prints events as they arrive (one line each) and summarises them at the end: provisional
    events (revision 0) and, when ``future`` > 0, the revised ones (revision 1, made once ``future``
    later utterances or the call's end arrived) of every utterance."""

    def __init__(self, dialogues: list[Any], settings: Settings, future: int = 0) -> None:
        self.labels = {(u.call_id, u.utterance_id): u.label for d in dialogues for u in d.utterances}
        self.settings = settings
        self.future = future
        self.revisions = future > 0
        self.events: dict[tuple[str, str], Any] = {}  # provisional events
        self.revised: dict[tuple[str, str], Any] = {}  # revision 1
        self.dead = 0
        self.alerts: dict[str, tuple[str, str]] = {}  # alert id -> (call, rule), of the alerts raised
        self.calls = {c for c, _ in self.labels}
        self.reports = settings.analytics.enabled  # whether each call's final report is waited for
        self.ended: set[str] = set()  # calls whose final report arrived (its alerts cleared before it)
        self.text_alone: tuple[float, int] | None = None  # the same model's agreement on the text alone

    def complete(self) -> bool:
        return (
            set(self.events) >= set(self.labels)
            and (not self.revisions or set(self.revised) >= set(self.labels))
            and (not self.reports or self.ended >= self.calls)
        )

    def waiting_for(self) -> str:
        events = "provisional and revised events" if self.revisions else "events"
        return f"{events} and each call's final report" if self.reports else events

    def missing(self) -> str:
        no_event = len(set(self.labels) - set(self.events))
        text = f"{no_event} utterances without their provisional event"
        if self.revisions:
            text += f", {len(set(self.labels) - set(self.revised))} without their revised event"
        if self.reports:
            text += f", {len(self.calls - self.ended)} calls without their final report"
        return text

    def add(self, event: Any) -> None:
        key = (event.call_id, event.utterance_id)
        if event.revision == 0:
            self.events[key] = event
        elif event.revision == 1:
            self.revised[key] = event

    def watch(self, stop: threading.Event, timeout: float) -> None:
        from client.subscriber import make_consumer
        from streams.schemas import AlertEvent, CallReport, EmotionEvent
        from tools.subscribe import HOLD_S, EventPrinter

        t = self.settings.kafka.topics
        printer = EventPrinter(
            sys.stdout, "pretty", {c for c, _ in self.labels}, t.deadletter, alerts_topic=t.alerts, calls_topic=t.calls,
            hold_s=HOLD_S,  # an alert read before the events it cites is printed after them
        )  # fmt: skip
        consumer = make_consumer(self.settings, [t.emotions, t.deadletter, t.alerts, t.calls], True, timeout)
        deadline = time.monotonic() + timeout
        drained = False  # once complete, one more poll that finds nothing: an alert's clearing and its call's
        # final report travel on different topics, in no order between them
        try:
            while not stop.is_set() and not drained and time.monotonic() < deadline:
                done = self.complete()
                polled = consumer.poll(timeout_ms=300)
                drained = done and not any(polled.values())
                for records in polled.values():
                    for r in records:
                        printer.handle(r.topic, r.value)
                        if r.topic == t.deadletter:
                            self.dead += 1
                            continue
                        record = None if printer.received is None else printer.received.record  # parsed once
                        if isinstance(record, AlertEvent) and record.state == "raised":
                            self.alerts[record.alert_id] = (record.call_id, record.rule)
                        elif isinstance(record, CallReport) and record.final:
                            self.ended.add(record.call_id)
                        elif isinstance(record, EmotionEvent):
                            self.add(record)
                printer.tick()
                sys.stdout.flush()
            printer.flush()
        finally:
            consumer.close()

    def _agreement(self, events: list[Any]) -> tuple[float, int]:
        scored = [(e.label, g) for e in events if (g := self.labels.get((e.call_id, e.utterance_id)))]
        return (sum(p == g for p, g in scored) / len(scored) if scored else float("nan")), len(scored)

    def render(self) -> str:
        evs = list(self.events.values())
        if not evs and not self.revised:
            return "demo: no emotion events arrived"
        n = len(self.labels)
        head = f"demo summary: {len(evs)}/{n} utterances got their provisional event"
        if self.revisions:
            head += f", {len(self.revised)}/{n} their revised event"
        lines = ["", f"{head}, {self.dead} dead letters"]
        calls = {c for c, _ in self.alerts.values()}
        rules = [r for _, r in self.alerts.values()]
        counts = ", ".join(f"{r} {rules.count(r)}" for r in sorted(set(rules)))
        total = len({c for c, _ in self.labels})
        lines.append(
            f"  escalation alerts raised: {len(self.alerts)} on {len(calls)} of {total} calls"
            + (f" ({counts})" if counts else "")
        )
        if evs:
            lat = sorted(e.timings.end_to_end_s for e in evs)
            acc, scored = self._agreement(evs)
            mean = {m: sum(e.weights[m] for e in evs) / len(evs) for m in MODALITIES}
            lines += [
                f"  end-to-end latency (provisional): p50 {lat[len(lat) // 2] * 1000:.0f} ms, p95 "
                f"{_pct(lat, 0.95) * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms",
                f"  agreement with the script's labels: {acc:.0%} of {scored} (a sanity check, not a benchmark)"
                + (
                    f"; the same model on the text alone: {self.text_alone[0]:.0%}"
                    if self.text_alone and self.text_alone[1]
                    else ""
                ),
                "  mean modality weights: " + ", ".join(f"{m} {w:.2f}" for m, w in mean.items()),
                *_voices(evs, "provisional"),
                f"  model: {evs[0].model.name} {evs[0].model.version} ({evs[0].model.runtime})",
            ]
        if self.revisions and self.revised:
            lines += self._render_revisions()
        return "\n".join(lines)

    def _render_revisions(self) -> list[str]:
        revs = list(self.revised.values())
        pairs = [(self.events[k], r) for k, r in self.revised.items() if k in self.events]
        changed = [(p, r) for p, r in pairs if p.label != r.label]
        acc, scored = self._agreement(revs)
        at_end = sum(r.future_context < self.future for r in revs)
        lag = sorted(max(0.0, r.produced_at - p.produced_at) for p, r in pairs)
        lines = [
            f"  revisions: {len(changed)} of {len(pairs)} labels changed from provisional to revised; "
            f"agreement with the script's labels {acc:.0%} of {scored} revised",
            f"    {len(revs) - at_end} revised once {self.future} later utterances arrived, "
            f"{at_end} at their call's end with fewer",
        ]
        if lag:
            lines.append(
                f"    revised events came p50 {lag[len(lag) // 2]:.1f} s, max {lag[-1]:.1f} s after the provisional"
            )
        lines += _voices(revs, "revised", "    ")
        shown = sorted(changed, key=lambda pr: (pr[1].call_id, pr[1].seq))
        for p, r in shown[:_SHOW_CHANGES]:
            truth = self.labels.get((r.call_id, r.utterance_id))
            lines.append(
                f"    ↻ [{r.call_id} #{r.seq}] {p.label} {p.confidence:.2f} -> {r.label} {r.confidence:.2f}"
                + (f"  (script: {truth})" if truth else "")
            )
        if len(shown) > _SHOW_CHANGES:
            lines.append(f"    ... and {len(shown) - _SHOW_CHANGES} more (the ↻ lines above)")
        r0 = revs[0].model
        lines.append(f"  revision model: {r0.name} {r0.version} ({r0.runtime})")
        return lines


def _shown(path: Path | None) -> str:
    """models/revised rather than its absolute path."""
    if path is None:
        return "-"
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


#: an audio weight below this: the voice gate turned the voice away (it carried none of the label)
WEIGHED = 0.05


def _voices(events: list[Any], which: str, indent: str = "  ") -> list[str]:
    """How many of the events with a voice used it: a newcomer seeing 'audio .00' on most lines
    should know it is the voice gate's doing, not a broken audio path."""
    voiced = [e for e in events if "audio" in e.modalities_present and "audio" not in e.ignored]
    if not voiced:
        return []
    weighed = sum(e.weights.get("audio", 0.0) >= WEIGHED for e in voiced)
    return [
        f"{indent}voices ({which}): {weighed} of {len(voiced)} utterances with speech used their voice (audio weight "
        f"{WEIGHED} or more); the voice gate turned the others away (README: 'Trusting a voice')"
    ]


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]
