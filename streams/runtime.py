"""Wiring: settings -> engine, featurizer, Redis context store, metrics -> :class:`Worker`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from streams.context import ContextStore
from streams.errors import ConfigError
from streams.metrics import Metrics
from streams.pipeline import Processor
from streams.settings import Settings
from streams.worker import Worker

log = logging.getLogger("emostream.runtime")


class ModelFeaturizer:
    """The feature extractors that belong to a model artifact (see ``engines.registry``)."""

    def __init__(self, extractors: Any) -> None:
        self._x = extractors

    def text(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._x.text.encode(texts), dtype=np.float32)  # (N, Dt)

    def audio(self, waves: list[np.ndarray]) -> np.ndarray:
        return np.asarray(self._x.audio.extract(waves), dtype=np.float32)  # (N, Da)

    def warm_up(self) -> None:
        """Load the encoders now rather than on the first utterance."""
        if self._x.text is not None:
            self._x.text.encode(["warm up"])
        if self._x.audio is not None:
            self._x.audio.extract([np.zeros(16000, dtype=np.float32)])


def load_model(settings: Settings) -> tuple[Any, ModelFeaturizer]:
    from engines.errors import EngineError
    from engines.registry import load_engine, load_extractors

    model_dir = settings.model_dir()
    try:
        engine = load_engine(model_dir)
        extractors = load_extractors(model_dir)
    except (EngineError, FileNotFoundError) as exc:
        raise ConfigError(f"cannot load model from {model_dir}: {exc}") from exc
    return engine, ModelFeaturizer(extractors)


def build_worker(settings: Settings, send: Any, metrics: Metrics | None = None) -> Worker:
    import redis.asyncio as aioredis

    engine, featurizer = load_model(settings)
    featurizer.warm_up()
    client = aioredis.from_url(settings.redis.url.get_secret_value())
    store = ContextStore(client, settings.redis.key_prefix, settings.redis.window, settings.redis.ttl_s)
    metrics = metrics or Metrics()
    port = metrics.serve(settings.metrics.host, settings.metrics.port)
    log.info(
        "model %s %s (%s); metrics on http://%s:%d/metrics",
        engine.info.name,
        engine.info.version,
        engine.info.runtime,
        settings.metrics.host,
        port,
    )
    return Worker(settings, Processor(engine, featurizer, store, future=settings.engine.future), metrics, send)
