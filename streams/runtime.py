"""Wiring: settings -> engine, featurizer, Redis context store, metrics -> :class:`Worker`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from engines.features.acknowledge import acknowledged, is_agent
from streams import heap
from streams.analytics import CallAnalytics
from streams.context import ContextStore, connect
from streams.errors import ConfigError
from streams.metrics import Metrics
from streams.pipeline import LONG_TRANSCRIPT, Processor
from streams.rules import DEFAULT_RULES, load_rules
from streams.settings import Settings
from streams.worker import Worker

log = logging.getLogger("emostream.runtime")
T = TypeVar("T")


class ModelFeaturizer:
    """The feature extractors that belong to a model artifact (see ``engines.registry``)."""

    def __init__(
        self,
        extractors: Any,
        format_check: Any = None,
        format_action: str = "warn",
        language_check: Any = None,
        language_action: str = "drop",
        acknowledgements: str = "agents",
        agent: Callable[[str], bool] = is_agent,
    ) -> None:
        self._x = extractors
        #: whose transcripts have a feeling they name as the listener's made neutral, and their apologies
        #: read as acknowledgements, before they are encoded ("I understand your frustration", "I'm so
        #: sorry for the wait": engines/features/acknowledge.py): "agents" (the speakers ``agent`` says
        #: are), "all" or "off"
        self.acknowledgements = acknowledgements
        self._agent = agent
        self._unread_failed = False
        #: whether the text encoder reads emoji and other symbols (streams.pipeline.has_words)
        self.reads_emoji = bool(getattr(extractors.text, "reads_emoji", False))
        #: the language check of the transcripts (engines/features/language.py), or None
        self.language_check = language_check
        self.language_action = language_action  # "drop": the words are not used; "warn": used all the same
        self._speech: Any = None
        #: the format check of the audio extractor's vectors (engines/features/format_check.py), or None
        self.format_check = format_check
        self.format_action = format_action  # "warn": use the audio all the same; "drop": do not
        # two threads may encode at once (a batch's own utterances beside the next batch's, see
        # Processor.run): the extractors load their models on first use, so each one's first
        # call runs alone, and the second caller finds the model loaded instead of loading another
        self._loading = threading.Lock()
        self._loaded: set[str] = set()

    def _first(self, name: str, call: Callable[[], T]) -> T:
        if name in self._loaded:
            return call()
        with self._loading:
            out = call()
            self._loaded.add(name)
            return out

    def acknowledge(self, texts: list[str], speakers: list[str]) -> list[str]:
        """The transcripts as the text encoder is to read them (``acknowledgements``)."""
        return acknowledged(texts, self.acknowledgements, speakers, self._agent)

    def unread(self, texts: list[str]) -> list[str | None]:
        """Per transcript, what says that the text encoder reads only its first tokens (None: it
        reads all of it)."""
        encoder = self._x.text
        try:
            cut = encoder.truncated(texts)
        except Exception as exc:  # noqa: BLE001 - a note, never a reason to fail the batch
            if not self._unread_failed:
                log.warning("could not count the transcripts' tokens (%s): long ones are not noted", exc)
                self._unread_failed = True
            return [None] * len(texts)
        limit = encoder.config.max_seq_length
        note = (
            f"{LONG_TRANSCRIPT}the text model reads its first {limit} tokens (about {limit * 3 // 4} words), "
            "not the rest: send each utterance as a message of its own"
        )
        return [note if c else None for c in cut]

    def text(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._first("text", lambda: self._x.text.encode(texts)), dtype=np.float32)  # (N, Dt)

    def audio(self, waves: list[np.ndarray]) -> np.ndarray:
        return np.asarray(self._first("audio", lambda: self._x.audio.extract(waves)), dtype=np.float32)  # (N, Da)

    def speech(self, waves: list[np.ndarray], enough: float | None = None) -> np.ndarray:
        return self._first("speech", lambda: self._detector().seconds(waves, enough))  # (N,)

    def _detector(self) -> Any:
        if self._speech is None:
            from engines.features.speech import detector_for

            self._speech = detector_for(self._x.audio)  # OpenVINO beside OpenVINO's Whisper
        return self._speech

    def unexported(self) -> list[str]:
        """The encoders whose ONNX graphs the export cache lacks: their first use exports them,
        which loads torch (those that run no graph, or whose graph is there, are not listed)."""
        encoders = (("text", self._x.text), ("audio", self._x.audio))
        return [name for name, x in encoders if x is not None and hasattr(x, "exported") and not x.exported()]

    def warm_up(self) -> None:
        """Load the encoders now rather than on the first utterance."""
        if self._x.text is not None:
            self._x.text.encode(["warm up"])
        if self._x.audio is not None:
            self._x.audio.extract([np.zeros(16000, dtype=np.float32)])
            self.speech([np.zeros(16000, dtype=np.float32)])
            from engines.features.codecs import warm_up

            warm_up()  # the resampler's import, not on a telephone call's first part


def load_model(settings: Settings) -> tuple[Any, ModelFeaturizer]:
    """(engine, featurizer) of the settings' model on its runtime (:func:`prepare_graphs` first,
    on a torch-free runtime, keeps this process free of torch on an empty export cache)."""
    from engines import artifact
    from engines.errors import EngineError
    from engines.registry import load_engine, load_extractors
    from engines.runtime.select import RuntimeUnavailable, resolve_runtime
    from engines.runtime.threads import default_cpu_threads, set_cpu_threads
    from streams.processes import shared_by

    threads = settings.engine.cpu_threads
    if threads is None and (threads := default_cpu_threads()) is not None:
        log.info("under a cgroup CPU quota: the model runtimes use %d threads each (its cores, rounded up)", threads)
    set_cpu_threads(threads)
    model_dir = settings.model_dir()
    try:
        runtime = resolve_runtime(settings.engine.runtime, processes=shared_by())
    except RuntimeUnavailable as exc:
        raise ConfigError(f"engine.runtime: {exc}") from exc
    log.info("runtime %s on %s (%s)", runtime.name, runtime.device, runtime.why)
    if runtime.gpu and heap.keep():
        log.info("a GPU runtime: freed memory is kept for the next batches, not trimmed (streams/heap.py)")
    try:
        artifact.verify(model_dir)
        engine = load_engine(model_dir, runtime=runtime)
        extractors = load_extractors(model_dir, runtime=runtime)
    except (EngineError, OSError, ImportError) as exc:  # OSError: a missing file, an unwritable cache, a CUDA library
        raise ConfigError(f"cannot load model from {model_dir} on runtime {runtime.name}: {exc}") from exc
    format_check = None
    if extractors.audio is not None and settings.engine.format_check != "off":
        from engines.features.format_check import load_format_check

        try:
            format_check = load_format_check(extractors.audio.id, settings.models_root() / "format-check")
        except ValueError as exc:
            raise ConfigError(f"engine.format_check: {exc} (engine.format_check = 'off' runs without it)") from exc
        probes = settings.models_root() / "format-check"
        if format_check is None and not probes.is_dir():
            log.warning("no format checks at %s (an install without the shipped models/format-check): a "
                        "mis-declared rate or G.711 law is not noticed", probes)  # fmt: skip
        elif format_check is None:
            log.info("no format check for the audio extractor %s: a mis-declared rate or G.711 law is not noticed",
                     extractors.audio.id)  # fmt: skip
    language_check = None
    if extractors.text is not None and settings.engine.language_check != "off":
        from engines.features.language import check_for

        language_check = check_for(extractors.text)
        if language_check is None:
            log.info("the text encoder reads many languages: transcripts are not checked for their language")
    book = load_rules(settings.analytics.rules)  # its [roles] say who is an agent (a bad file: ConfigError)
    return engine, ModelFeaturizer(
        extractors,
        format_check,
        settings.engine.format_check,
        language_check,
        settings.engine.language_check,
        acknowledgements=settings.engine.acknowledgements,
        agent=book.is_agent,
    )


EXPORT_TIMEOUT_S = 900.0  # an export takes one to two minutes on two cores
#: encoder runtimes that run exported graphs and need no torch once the export cache holds them
TORCH_FREE = ("onnxruntime", "openvino")


def prepare_graphs(settings: Settings, processes: int | None = None) -> list[str]:
    """On a runtime that needs no torch (``onnxruntime``, ``onnxruntime-int8``, ``openvino``), have a child
    process export the encoders' graphs that the export cache lacks (:func:`export_graphs`):
    exporting loads torch, about 500 MB that this process would otherwise hold for life. Run
    before the model loads (``emostream worker``, and once by a ``--processes N`` supervisor for
    all its workers). Returns what is still missing afterwards (then the model's first use
    exports it here, as before); anything that keeps the model from loading is left for
    :func:`load_model` to report."""
    from engines.errors import EngineError
    from engines.registry import load_extractors
    from engines.runtime.select import RuntimeUnavailable, resolve_runtime
    from streams.processes import shared_by

    try:
        runtime = resolve_runtime(settings.engine.runtime, processes=processes or shared_by())
        if not (runtime.text in TORCH_FREE and runtime.audio in TORCH_FREE):
            return []
        featurizer = ModelFeaturizer(load_extractors(settings.model_dir(), runtime=runtime))
        missing = featurizer.unexported()
    except (RuntimeUnavailable, EngineError, OSError, ImportError):
        return []
    if missing and export_graphs(settings, runtime.name, missing):
        missing = featurizer.unexported()
        if missing:
            log.warning("the export process left the %s graph(s) missing (a read-only cache?): exporting "
                        "them here, with torch", "+".join(missing))  # fmt: skip
    return missing


def export_graphs(settings: Settings, runtime: str, missing: list[str], timeout: float = EXPORT_TIMEOUT_S) -> bool:
    """Run ``emostream worker --prepare`` in a child process with these engine settings on
    ``runtime`` (the one this process resolved; no Kafka or Redis settings, so no secrets), which
    exports the encoders' graphs into the export cache and exits, taking torch's memory with it.
    The child ends with this process. True if it succeeded; a failure or a child past ``timeout``
    is logged, not raised."""
    import os
    import subprocess
    import sys
    import time

    from streams.settings import settings_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSTREAM_")}
    env |= {k: v for k, v in settings_env(settings).items() if k.startswith("EMOSTREAM_ENGINE__")}
    env |= {"EMOSTREAM_ENGINE__RUNTIME": runtime, "EMOSTREAM_LOG_LEVEL": settings.log_level}
    log.info("the export cache lacks the %s graph(s): exporting them in a child process (once)", "+".join(missing))
    start = time.monotonic()
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--prepare", "--parent-pid", str(os.getpid())]
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("the export process did not finish within %.0f s and was stopped", timeout)
        return False
    except OSError as exc:
        log.warning("could not start the export process: %s", exc)
        return False
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
        log.warning("the export process failed (exit %d): %s", run.returncode, " | ".join(tail))
        return False
    log.info("graphs exported in %.0f s by a child process", time.monotonic() - start)
    return True


def _feature_key(meta: dict[str, Any]) -> tuple[Any, ...]:
    """What two artifacts must share to run on the same feature vectors: sizes and extractors
    (an absent text ``kind`` is MiniLM, as in ``engines.features.text_encoder_from_dict``)."""
    text = dict(meta.get("text") or {})
    text.setdefault("kind", "minilm")
    audio = meta.get("audio") or {}
    tuned = text.get("sha256")  # a fine-tuned MiniLM's layers (engines.features.tuning)
    from engines.modalities import FeatureSpec

    spec = meta.get("spec")
    try:  # the sizes, however written (an artifact may leave out a modality of size 0)
        sizes: Any = FeatureSpec.from_dict(spec) if isinstance(spec, dict) else spec
    except ValueError:
        sizes = spec
    return (sizes, text.get("kind"), text.get("model_id"), text.get("dim"), tuned, audio.get("id"))


def heard_level(settings: Settings, model_dir: Path, revision: Any) -> str:
    """The level voices are heard at (engine.audio_level; "model": the one the model learnt them at,
    which a revision model, reading the same features, must share)."""
    from engines import artifact

    named: str = settings.engine.audio_level
    if named != "model":
        log.info("voices heard %s (engine.audio_level)", _LEVEL_WORDS[named])
        return named
    level = artifact.audio_level(model_dir)
    revision_dir = settings.revision_model_dir() if revision is not None else None
    if revision_dir is not None and artifact.audio_level(revision_dir) != level:
        raise ConfigError(
            f"the model {model_dir} learnt its voices {_LEVEL_WORDS[level]} and the revision model {revision_dir} "
            f"{_LEVEL_WORDS[artifact.audio_level(revision_dir)]}: they read the same features; name one level with "
            "engine.audio_level, or a revision model trained like the model"
        )
    if level != "as-sent":
        log.info("voices heard %s (as the model learnt them)", _LEVEL_WORDS[level])
    return level


_LEVEL_WORDS = {"as-sent": "at the level the line brings", "speaker": "at their speakers' level in the call"}


def load_revision_model(settings: Settings, engine: Any) -> tuple[Any, int]:
    """(engine for revised events, k future utterances) from settings; (None, k) without a revision model."""
    from engines import artifact
    from engines.errors import EngineError
    from engines.registry import load_engine

    path = settings.revision_model_dir()
    if path is None:
        return None, settings.engine.future
    try:
        artifact.verify(path)
        revision = load_engine(path, runtime=settings.engine.runtime)
        same = _feature_key(artifact.read_json(path, artifact.FEATURES)) == _feature_key(
            artifact.read_json(settings.model_dir(), artifact.FEATURES)
        )
    except (EngineError, FileNotFoundError) as exc:
        raise ConfigError(f"cannot load revision model from {path}: {exc}") from exc
    if not same or tuple(revision.info.labels) != tuple(engine.info.labels):
        raise ConfigError(
            f"revision model {path} does not use the same features and labels as the model {settings.model_dir()}"
        )
    future = settings.engine.future or revision.info.future
    if future == 0:
        raise ConfigError(f"revision model {path} was trained causal (future 0): set engine.future to use it")
    return revision, future


def build_worker(settings: Settings, send: Any, metrics: Metrics | None = None) -> Worker:
    from engines.errors import EngineError

    engine, featurizer = load_model(settings)
    revision, future = load_revision_model(settings, engine)
    window = min(engine.info.max_window, (revision or engine).info.max_window, settings.redis.window + 1)
    if future >= window:  # (the Processor's assertion, once everything else had started)
        raise ConfigError(f"engine.future {future} must be less than the context the model reads ({window} "
                          "utterances: its own window, and redis.window + 1)")  # fmt: skip
    try:
        audio_level = heard_level(settings, settings.model_dir(), revision)
    except EngineError as exc:  # a config.json whose train.audio_level is none of the levels
        raise ConfigError(str(exc)) from exc
    try:
        featurizer.warm_up()  # compiles the graphs: the openvino runtime checks them on the probes here
    except EngineError as exc:
        raise ConfigError(f"cannot start the encoders on runtime {engine.info.runtime}: {exc}") from exc
    client = connect(settings.redis)
    store = ContextStore(
        client,
        settings.redis.key_prefix,
        settings.redis.window,
        settings.redis.ttl_s,
        started_ttl_s=settings.redis.started_ttl_s,
    )
    metrics = metrics or Metrics()
    port = metrics.port if metrics.port is not None else metrics.serve(settings.metrics.host, settings.metrics.port)
    metrics.model(engine.info.name, engine.info.version, engine.info.runtime)
    log.info(
        "model %s %s (%s); metrics on http://%s:%d/metrics",
        engine.info.name,
        engine.info.version,
        engine.info.runtime,
        settings.metrics.host,
        port,
    )
    if revision is not None:
        log.info("revised events after %d later utterances by %s %s", future, revision.info.name, revision.info.version)
    processor = Processor(
        engine,
        featurizer,
        store,
        future=future,
        revision_engine=revision,
        min_speech_s=settings.engine.min_speech_s,
        shed_audio_after_s=settings.engine.shed_audio_after_s,
        audio_level=audio_level,
    )
    analytics = None
    if settings.analytics.enabled:
        book = load_rules(settings.analytics.rules)
        log.info(
            "call analytics: %d escalation rules from %s", len(book.rule), settings.analytics.rules or DEFAULT_RULES
        )
        for line in book.unread(engine.info.labels):
            log.warning("escalation rules %s: %s", settings.analytics.rules or DEFAULT_RULES, line)
        analytics = CallAnalytics(
            client,
            settings.redis.key_prefix,
            settings.redis.ttl_s,
            book,
            recent_turns=settings.analytics.recent_turns,
            max_turns=settings.analytics.max_turns,
        )
        analytics.instance = processor.instance  # a call id used again: its alerts' and reports' ids too
    return Worker(settings, processor, metrics, send, analytics=analytics)
