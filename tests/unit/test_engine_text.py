"""Text normalisation and the on-disk feature cache (no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.features.cache import FeatureCache, item_key
from engines.features.text import normalise_text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("don\x92t", "don't"),
        ("Wait\x85 what?", "Wait... what?"),
        ("donâ€™t", "don't"),
        ("Iâ€™m â€œfineâ€\x9d", 'I\'m "fine"'),
        ("you’re “here”", 'you\'re "here"'),
        ("café", "café"),
        ("  so   much\tspace ", "so much space"),
    ],
)
def test_normalise_text(raw: str, clean: str) -> None:
    assert normalise_text(raw) == clean
    assert normalise_text(clean) == clean


def test_cache_computes_each_item_once(tmp_path: Path) -> None:
    calls: list[list[int]] = []
    keys = [item_key(t) for t in ["a", "b", "a", "c"]]

    def compute(idx: list[int]) -> np.ndarray:
        calls.append(idx)
        return np.array([[float(i), 1.0] for i in idx], dtype=np.float32)

    first = FeatureCache("m/x", root=tmp_path).get_or_compute(keys, compute)
    assert calls == [[0, 1, 3]]  # the repeated "a" is computed once
    assert len(list((tmp_path / "m" / "x").glob("shard-*.npz"))) == 1
    np.testing.assert_array_equal(first[0], first[2])
    again = FeatureCache("m/x", root=tmp_path).get_or_compute(keys, lambda idx: pytest.fail("recomputed"))
    np.testing.assert_array_equal(again, first)
    other = FeatureCache("m/y", root=tmp_path).get_or_compute(keys[:1], compute)  # another namespace
    assert calls[-1] == [0] and other.shape == (1, 2)
