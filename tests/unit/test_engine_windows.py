"""Window packing: left padding, local speakers, targets, modality restriction."""

from __future__ import annotations

import numpy as np

from engines.datasets.base import Dialogue, Utterance
from engines.interface import FeatureSpec
from engines.windows import (
    UtteranceFeatures,
    causal_windows,
    gather_batch,
    keep_modalities,
    local_speakers,
    pack_windows,
)

SPEC = FeatureSpec({"text": 4, "audio": 3})


def test_local_speakers() -> None:
    assert local_speakers(["b", "a", "b", "c"]) == [0, 1, 0, 2]


def test_pack_windows_left_pads() -> None:
    t = np.ones(4, dtype=np.float32)
    a = np.full(3, 2.0, dtype=np.float32)
    batch = pack_windows(
        [
            [UtteranceFeatures("x", {"text": t}), UtteranceFeatures("y", {"audio": a})],
            [UtteranceFeatures("z", {"text": t, "audio": a})],
        ],
        SPEC,
    )
    assert batch.valid.tolist() == [[1, 1], [0, 1]]
    assert batch.target.tolist() == [1, 1]
    assert batch.speakers.tolist() == [[0, 1], [0, 0]]
    assert batch.present[0].tolist() == [[1, 0, 0], [0, 1, 0]]
    assert batch.present[1, 1].tolist() == [1, 1, 0] and batch.present[1, 0].sum() == 0
    assert batch.features["video"].shape == (2, 2, 0)
    text_only = keep_modalities(batch, ["text"])
    assert text_only.present[..., 1].sum() == 0 and not text_only.features["audio"].any()


def test_causal_windows_and_gather() -> None:
    d = Dialogue("d", [Utterance(f"u{i}", "ab"[i % 2], 0, 0) for i in range(5)])
    win = causal_windows([d, Dialogue("e", [Utterance("v", "c", 1, 0)])], max_window=3)
    assert win.utt.tolist()[:3] == [[-1, -1, 0], [-1, 0, 1], [0, 1, 2]]
    assert win.utt.tolist()[5] == [-1, -1, 5]
    assert win.speakers.tolist()[3] == [0, 1, 0]  # window (1, 2, 3): b a b
    feats = {"text": np.arange(6, dtype=np.float32)[:, None].repeat(4, 1), "audio": np.zeros((6, 3), np.float32)}
    has = {"text": np.ones(6, np.float32), "audio": np.zeros(6, np.float32)}
    batch = gather_batch(win, np.array([0, 1]), feats, has, SPEC)
    assert batch.valid.shape == (2, 2)  # trimmed to the longest window of the batch
    assert batch.target.tolist() == [1, 1]
    assert batch.features["text"][1, :, 0].tolist() == [0.0, 1.0]


def test_future_windows_hold_later_utterances() -> None:
    from engines.windows import dialogue_windows

    d = Dialogue("d", [Utterance(f"u{i}", "ab"[i % 2], 0, 0) for i in range(5)])
    win = dialogue_windows([d], max_window=3, future=1)
    assert win.utt.tolist() == [[-1, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [2, 3, 4]]
    assert win.target.tolist() == [1, 1, 1, 1, 2]  # the last utterance has no future: it ends its window
    assert win.speakers.tolist()[0] == [0, 0, 1]
    # future is capped at max_window - 1 so the target always stays inside the window
    capped = dialogue_windows([d], max_window=2, future=5)
    assert capped.utt.tolist()[0] == [0, 1] and capped.target.tolist()[0] == 0
    assert (dialogue_windows([d], 3, future=0).utt == causal_windows([d], 3).utt).all()


def test_pack_windows_scatters_shared_items_as_a_slot_by_slot_copy_would() -> None:
    """Consecutive windows of a call share items: each is stacked once and gathered into every
    slot it fills; the result is the slot-by-slot copy's, absent modalities and padding zero."""
    import pytest

    rng = np.random.default_rng(3)
    items = [
        UtteranceFeatures(
            "ab"[i % 2],
            {
                "text": rng.standard_normal(4).astype(np.float32) if i % 3 else None,
                "audio": rng.standard_normal(3).astype(np.float32) if i % 2 else None,
            },
        )
        for i in range(9)
    ]
    windows = [items[max(0, i - 3) : i + 1] for i in range(9)] + [items[2:6]]
    targets = [len(w) - 1 for w in windows[:-1]] + [1]
    batch = pack_windows(windows, SPEC, targets)
    width = 4
    for i, win in enumerate(windows):
        off = width - len(win)
        for j in range(width):
            u = win[j - off] if j >= off else None
            for k, (m, dim) in enumerate((("text", 4), ("audio", 3))):
                vec = None if u is None else u.vectors.get(m)
                got = batch.features[m][i, j]
                assert np.array_equal(got, vec if vec is not None else np.zeros(dim, np.float32)), (i, j, m)
                assert batch.present[i, j, k] == (vec is not None)
    assert batch.target.tolist()[-1] == 1
    # the stream's context items hold a dict of the modalities present
    from streams.context import ContextItem

    ctx = []
    for i, u in enumerate(items):
        feats = {m: v for m, v in u.vectors.items() if v is not None}
        ctx.append(ContextItem(str(i), i, u.speaker, feats))
    by_dict = pack_windows([ctx[max(0, i - 3) : i + 1] for i in range(9)], SPEC, vectors=lambda c: c.features)
    assert np.array_equal(by_dict.features["text"], batch.features["text"][:9]) and np.array_equal(
        by_dict.present, batch.present[:9]
    )
    # every item with both modalities (one concatenation into the padded array)
    vec = lambda d: rng.standard_normal(d).astype(np.float32)  # noqa: E731
    full = [UtteranceFeatures("ab"[i % 2], {"text": vec(4), "audio": vec(3)}) for i in range(5)]
    both = pack_windows([full[: i + 1] for i in range(5)], SPEC)
    for i in range(5):
        assert np.array_equal(both.features["text"][i, 4 - i :], np.stack([u.vectors["text"] for u in full[: i + 1]]))
        assert np.array_equal(both.features["audio"][i, 4 - i :], np.stack([u.vectors["audio"] for u in full[: i + 1]]))
        assert not both.features["text"][i, : 4 - i].any() and both.present[i, : 4 - i].sum() == 0
        assert both.present[i, 4 - i :, :2].all()
    with pytest.raises(AssertionError):
        pack_windows([[UtteranceFeatures("x", {"text": np.ones(5, np.float32)})]], SPEC)
