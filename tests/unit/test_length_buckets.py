"""How a batch of texts is cut into ONNX Runtime calls (engines.features.text_onnx.length_buckets)."""

from __future__ import annotations

import itertools

import pytest

from engines.features.text_onnx import length_buckets


def cost(lengths: list[int], runs: list[tuple[int, int]], call: float) -> float:
    return sum(lengths[b - 1] * (b - a) + call for a, b in runs)


def brute(lengths: list[int], call: float, max_size: int) -> float:
    n, best = len(lengths), float("inf")
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], n]
        runs = list(itertools.pairwise(bounds))
        if all(b - a <= max_size for a, b in runs):
            best = min(best, cost(lengths, runs, call))
    return best


@pytest.mark.parametrize("call", [0.0, 5.0, 24.0, 1000.0])
def test_cuts_are_optimal_and_cover_the_batch(call: float) -> None:
    lengths = sorted([3, 4, 4, 5, 9, 10, 12, 30, 31, 58])
    runs = length_buckets(lengths, call, max_size=4)
    assert runs[0][0] == 0 and runs[-1][1] == len(lengths)
    assert all(a < b and b - a <= 4 for a, b in runs)
    assert all(runs[i][1] == runs[i + 1][0] for i in range(len(runs) - 1))
    assert cost(lengths, runs, call) == pytest.approx(brute(lengths, call, 4))


def test_equal_lengths_make_one_call_and_a_free_call_pads_nothing() -> None:
    assert length_buckets([7] * 20, 24.0, 32) == [(0, 20)]
    assert length_buckets([1, 2, 3], 0.0, 32) == [(0, 1), (1, 2), (2, 3)]
    assert length_buckets([], 24.0, 32) == []


def test_unsorted_lengths_are_refused() -> None:
    with pytest.raises(AssertionError):
        length_buckets([5, 3], 24.0, 32)
