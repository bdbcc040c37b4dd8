"""streams/heap.py: collections are timed by generation, and settle() freezes what is alive."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from streams import heap


def test_every_collection_is_timed_by_generation_and_exported_as_a_histogram() -> None:
    registry = CollectorRegistry()
    registry.register(heap.PauseCollector())
    heap.watch()
    heap.watch()  # once per process
    assert gc.callbacks.count(heap._callback) == 1

    def count(generation: str) -> float:
        return registry.get_sample_value("emostream_gc_pause_seconds_count", {"generation": generation}) or 0.0

    before = count("0"), count("2")
    gc.collect(0)
    gc.collect(2)
    assert count("0") >= before[0] + 1 and count("2") >= before[1] + 1
    inf = registry.get_sample_value("emostream_gc_pause_seconds_bucket", {"generation": "2", "le": "+Inf"})
    low = registry.get_sample_value("emostream_gc_pause_seconds_bucket", {"generation": "2", "le": "0.0005"})
    assert inf == count("2") and low is not None and low <= inf  # cumulative buckets
    assert (registry.get_sample_value("emostream_gc_pause_seconds_sum", {"generation": "2"}) or -1) > 0


def test_settle_freezes_the_objects_alive_and_a_full_collection_skips_them() -> None:
    keep = [[i] for i in range(10_000)]  # objects alive "after the model is loaded"
    try:
        frozen = heap.settle()
        assert frozen >= len(keep) and gc.get_freeze_count() == frozen
        assert len(gc.get_objects()) < frozen  # the generations hold far fewer objects than were frozen
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0 and keep
