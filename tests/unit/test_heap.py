"""streams/heap.py: collections are timed by generation, and settle() freezes what is alive."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Histogram

from streams import heap


def test_every_collection_is_timed_by_generation_while_the_histogram_lives() -> None:
    registry = CollectorRegistry()
    hist = Histogram("t_gc_pause_seconds", "pauses", ["generation"], registry=registry)
    before = len(gc.callbacks)
    heap.watch(hist)
    assert len(gc.callbacks) == before + 1
    gc.collect(0)
    gc.collect(2)
    for generation in ("0", "2"):
        assert (registry.get_sample_value("t_gc_pause_seconds_count", {"generation": generation}) or 0) >= 1
        assert (registry.get_sample_value("t_gc_pause_seconds_sum", {"generation": generation}) or -1) >= 0
    del hist, registry
    gc.collect()  # the histogram is gone: the callback takes itself out
    gc.collect()
    assert len(gc.callbacks) == before


def test_settle_freezes_the_objects_alive_and_a_full_collection_skips_them() -> None:
    keep = [[i] for i in range(10_000)]  # objects alive "after the model is loaded"
    try:
        frozen = heap.settle()
        assert frozen >= len(keep) and gc.get_freeze_count() == frozen
        tracked = len(gc.get_objects())
        assert tracked < frozen  # the generations hold far fewer objects than were frozen
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0 and keep
