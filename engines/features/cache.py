"""On-disk cache of per-item feature vectors, so training sets are encoded once.

Layout: ``<root>/<namespace>/shard-<digest>.npz``; each shard holds ``keys`` (sha256 hex of the
item, shape (N,)) and ``values`` (N, D) float32. A namespace names the producer (model id plus
its configuration, e.g. ``embeddings/sentence-transformers_all-MiniLM-L6-v2`` or
``audio/emostream-functionals-v1-<config hash>``), so a changed model or extractor never reads
stale vectors. Shards are written atomically (temp file + rename) and never modified, so
concurrent readers are safe.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path.home() / ".cache" / "emostream"


def item_key(item: str | bytes) -> str:
    """sha256 hex digest of a text (utf-8) or raw bytes."""
    data = item.encode("utf-8") if isinstance(item, str) else item
    return hashlib.sha256(data).hexdigest()


def safe_namespace(name: str) -> Path:
    """A relative directory for a producer id: ``/`` separates levels, other odd characters become ``_``."""
    parts = ["".join(c if c.isalnum() or c in "-_." else "_" for c in p) for p in name.split("/")]
    parts = [p for p in parts if p not in ("", ".", "..")]
    assert parts, name
    return Path(*parts)


class FeatureCache:
    """Vectors keyed by item hash under one namespace."""

    def __init__(self, namespace: str, root: str | Path | None = None) -> None:
        self.dir = Path(root if root is not None else DEFAULT_ROOT) / safe_namespace(namespace)
        self._mem: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._mem is None:
            mem: dict[str, np.ndarray] = {}
            if self.dir.is_dir():
                for shard in sorted(self.dir.glob("shard-*.npz")):
                    with np.load(shard) as z:
                        for k, v in zip(z["keys"].tolist(), z["values"], strict=True):
                            mem[str(k)] = v
            self._mem = mem
        return self._mem

    def _write(self, keys: list[str], values: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256("".join(sorted(keys)).encode()).hexdigest()[:16]
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, keys=np.asarray(keys), values=values.astype(np.float32))
            os.replace(tmp, self.dir / f"shard-{digest}.npz")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_compute(
        self,
        keys: Sequence[str],
        compute: Callable[[list[int]], np.ndarray],
    ) -> np.ndarray:
        """Vectors for ``keys`` (N, D) float32; ``compute(missing_indices)`` fills the gaps."""
        mem = self._load()
        missing = sorted({i for i, k in enumerate(keys) if k not in mem})
        # Deduplicate: one computation per distinct key.
        first: dict[str, int] = {}
        for i in missing:
            first.setdefault(keys[i], i)
        todo = list(first.values())
        if todo:
            new = np.asarray(compute(todo), dtype=np.float32)
            assert new.shape[0] == len(todo), (new.shape, len(todo))
            new_keys = [keys[i] for i in todo]
            self._write(new_keys, new)
            for k, v in zip(new_keys, new, strict=True):
                mem[k] = v
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([mem[k] for k in keys]).astype(np.float32, copy=False)
