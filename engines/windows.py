"""Dialogue windows: from utterance sequences to :class:`engines.interface.EngineBatch`.

Windows are left-padded to the longest window of the batch. Causal windows end at the target;
with ``future = K`` a window also holds up to K later utterances of the dialogue, so the target
is not necessarily last (``target`` says where it is). Speaker names become window-local indices
in order of first appearance (0 = first seen).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.datasets.base import Dialogue
from engines.interface import MODALITIES, EngineBatch, FeatureSpec
from engines.modalities import index


def local_speakers(names: Sequence[str]) -> list[int]:
    """Window-local speaker indices: ``["b", "a", "b"] -> [0, 1, 0]``."""
    seen: dict[str, int] = {}
    return [seen.setdefault(n, len(seen)) for n in names]


@dataclass(frozen=True)
class UtteranceFeatures:
    """One utterance as the stream has it: speaker plus whichever feature vectors arrived."""

    speaker: str
    vectors: Mapping[str, np.ndarray | None] = field(default_factory=dict)  # modality -> (D,); absent: missing or None

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, Mapping):
            raise TypeError(f"vectors must map a modality to its vector, not {type(self.vectors).__name__}")
        for name in self.vectors:
            index(name)  # a misspelt modality is an error, not a modality silently absent


def _vectors(u: UtteranceFeatures) -> Mapping[str, np.ndarray | None]:
    return u.vectors


def pack_windows(
    windows: Sequence[Sequence[Any]],
    features: FeatureSpec,
    targets: Sequence[int] | None = None,
    vectors: Callable[[Any], Mapping[str, np.ndarray | None]] = _vectors,
) -> EngineBatch:
    """Left-pad windows into an :class:`EngineBatch`; ``targets`` default to each window's last.

    An item has a ``speaker`` and ``vectors(item)`` maps a modality to its (D,) vector or None
    (default: the ``vectors`` of :class:`UtteranceFeatures`; the stream passes its context items'
    dicts). An item shared by several windows (consecutive windows of a call share all but one) is
    read and stacked once, then scattered to every slot it fills.
    """
    assert windows and all(len(w) > 0 for w in windows), "every window needs at least one utterance"
    b, width = len(windows), max(len(w) for w in windows)
    dims = features.dims()
    present = np.zeros((b, width, len(MODALITIES)), dtype=np.float32)
    speakers = np.zeros((b, width), dtype=np.int64)
    valid = np.zeros((b, width), dtype=np.float32)
    target = np.zeros((b,), dtype=np.int64)
    slot = np.full((b, width), -1, dtype=np.int64)  # index into the unique items of the item in each slot
    seen: dict[int, tuple[int, Any]] = {}  # id(item) -> its index among the unique items, and the item (kept alive)
    for i, win in enumerate(windows):
        off = width - len(win)
        speakers[i, off:] = local_speakers([u.speaker for u in win])
        valid[i, off:] = 1.0
        t = len(win) - 1 if targets is None else int(targets[i])
        assert 0 <= t < len(win), (t, len(win))
        target[i] = off + t
        slot[i, off:] = [seen.setdefault(id(u), (len(seen), u))[0] for u in win]
    maps = [vectors(u) for _, u in seen.values()]  # in order of first appearance
    n = len(maps)
    arrays: dict[str, np.ndarray] = {}
    for k, m in enumerate(MODALITIES):
        d = dims[m]
        vecs = [v.get(m) for v in maps] if d else []
        given = [v for v in vecs if v is not None]
        if not given:
            arrays[m] = np.zeros((b, width, d), dtype=np.float32)  # absent: zeros
            continue
        for v in given:
            assert v.shape == (d,), (m, v.shape, d)
        # one concatenation (np.stack makes a view of each vector first: three times as long, and
        # Python-bound, so it also held the GIL from the event loop), the last row for padding (slot -1)
        stacked = np.empty((n + 1, d), dtype=np.float32)
        stacked[n] = 0.0
        if len(given) == n:
            np.concatenate(given, out=stacked[:n].reshape(-1))
            has = np.ones(n + 1, dtype=np.float32)
            has[n] = 0.0
        else:
            has = np.array([v is not None for v in vecs] + [False], dtype=np.float32)
            stacked[:n] = 0.0
            stacked[np.flatnonzero(has)] = np.concatenate(given).reshape(-1, d)
        arrays[m] = np.take(stacked, slot, axis=0)  # (B, W, D): one gather, padding and absent rows 0
        present[..., k] = has[slot]
    return EngineBatch(arrays, present, speakers, valid, target)


@dataclass(frozen=True)
class WindowIndex:
    """Windows over a flat utterance list: one row per target utterance."""

    utt: np.ndarray  # (N, W) int64 flat utterance index, -1 for left padding
    speakers: np.ndarray  # (N, W) int64 window-local speaker index (0 on padding)
    target: np.ndarray  # (N,) int64 column of the target (W - 1 for causal windows)


def dialogue_windows(dialogues: Sequence[Dialogue], max_window: int, future: int = 0) -> WindowIndex:
    """Every utterance of every dialogue as the target of a window of up to ``max_window``.

    A window holds the target, up to ``future`` later utterances of its dialogue (fewer at the
    dialogue's end, and at most ``max_window - 1``) and as many earlier ones as still fit.
    ``future = 0`` gives causal windows ending at the target.
    """
    assert max_window >= 1 and future >= 0, (max_window, future)
    rows_u, rows_s, rows_t = [], [], []
    offset = 0
    for d in dialogues:
        names = [u.speaker for u in d.utterances]
        for t in range(len(names)):
            hi = t + min(future, len(names) - 1 - t, max_window - 1)  # last utterance in the window
            lo = max(0, hi - max_window + 1)
            idx = list(range(offset + lo, offset + hi + 1))
            pad = max_window - len(idx)
            rows_u.append([-1] * pad + idx)
            rows_s.append([0] * pad + local_speakers(names[lo : hi + 1]))
            rows_t.append(pad + t - lo)
        offset += len(names)
    n = len(rows_u)
    return WindowIndex(
        np.asarray(rows_u, dtype=np.int64).reshape(n, max_window),
        np.asarray(rows_s, dtype=np.int64).reshape(n, max_window),
        np.asarray(rows_t, dtype=np.int64).reshape(n),
    )


def causal_windows(dialogues: Sequence[Dialogue], max_window: int) -> WindowIndex:
    """Causal windows (ending at their target): ``dialogue_windows(..., future=0)``."""
    return dialogue_windows(dialogues, max_window, future=0)


def gather_batch(
    win: WindowIndex,
    rows: np.ndarray,
    feats: dict[str, np.ndarray],
    has: dict[str, np.ndarray],
    features: FeatureSpec,
) -> EngineBatch:
    """Batch of windows ``rows`` from flat per-utterance features (trimmed to the longest)."""
    utt = win.utt[rows]  # (B, W)
    first = int((utt >= 0).argmax(axis=1).min())  # leading columns that are padding everywhere
    utt = utt[:, first:]
    valid = (utt >= 0).astype(np.float32)  # (B, W)
    safe = np.where(utt >= 0, utt, 0)
    dims = features.dims()
    b, w = utt.shape
    arrays: dict[str, np.ndarray] = {}
    present = np.zeros((b, w, len(MODALITIES)), dtype=np.float32)
    for k, m in enumerate(MODALITIES):
        if dims[m] > 0 and m in feats:
            arrays[m] = feats[m][safe] * valid[..., None]  # (B, W, D)
            present[..., k] = has[m][safe] * valid
        else:
            arrays[m] = np.zeros((b, w, dims[m]), dtype=np.float32)
    return EngineBatch(
        {m: a.astype(np.float32, copy=False) for m, a in arrays.items()},
        present,
        win.speakers[rows][:, first:].copy(),
        valid,
        win.target[rows] - first,
    )


def keep_modalities(batch: EngineBatch, keep: Sequence[str]) -> EngineBatch:
    """``batch`` with every modality not in ``keep`` marked absent and zeroed."""
    unknown = set(keep) - set(MODALITIES)
    assert not unknown, unknown
    present = batch.present.copy()
    arrays = {}
    for k, m in enumerate(MODALITIES):
        arr = batch.features[m]
        if m not in keep:
            present[..., k] = 0.0
            arr = np.zeros_like(arr)
        arrays[m] = arr
    return EngineBatch(arrays, present, batch.speakers, batch.valid, batch.target)
