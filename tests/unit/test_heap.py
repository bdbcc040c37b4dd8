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
        # a frozen object freed meanwhile leaves the count (threads of earlier tests in a full run
        # freed 2 of 711,954 between the two reads: a CI run failed on an exact ==)
        assert frozen >= len(keep) and frozen - 1000 <= gc.get_freeze_count() <= frozen
        assert len(gc.get_objects()) < frozen  # the generations hold far fewer objects than were frozen
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0 and keep


def test_trim_hands_the_freed_heap_back_to_the_system() -> None:
    """What Whisper's batches leave: freed blocks among others still in use, kept by glibc until a
    trim. In a fresh process (this one's allocator has a history of its own)."""
    import json
    import subprocess
    import sys

    import pytest

    if heap._libc_trim is None or not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc_trim is Linux-only")
    script = """
import json
from streams import heap
before = heap.resident()
blocks, pin = [], []
for _ in range(1500):  # 150 MB of touched heap blocks, each followed by a small one still in use
    blocks.append(b"\\x01" * 100_000)
    pin.append(b"\\x02" * 1000)
del blocks  # glibc shrinks the heap's top, not the holes between blocks still in use
held = heap.resident()
idle = heap.trim(growth=1 << 40)  # not grown enough: nothing done
done = heap.trim(growth=0)
print(json.dumps([before, held, heap.resident(), idle, done, pin[-1][:1] == b"\\x02"]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    before, held, after, idle, done, kept = json.loads(out.stdout)
    mb = [x >> 20 for x in (before, held, after)]
    assert held - before > 50 << 20, mb  # glibc kept the freed blocks
    assert not idle and done and kept
    assert after < before + 0.3 * (held - before), mb


def test_a_kept_heap_reuses_freed_memory_and_is_never_trimmed() -> None:
    """keep() (a GPU worker): a batch's freed arrays stay in the heap for the next batch, which
    then faults no fresh pages in, and trim() does nothing. In a fresh process, as above."""
    import json
    import subprocess
    import sys

    import pytest

    if heap._libc_trim is None or not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt is Linux-only")
    script = """
import json, resource
import numpy as np
from streams import heap

def batch():  # a batch of 256 decoded 3 s clips: 49 MB of fresh arrays, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    waves = [np.ones(48_000, dtype=np.float32) for _ in range(256)]
    del waves
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

batch()
handed_back = batch()
kept = heap.keep()
batch()
reused = batch()
print(json.dumps([handed_back, kept, reused, heap.trim(growth=0)]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    handed_back, kept, reused, trimmed = json.loads(out.stdout)
    assert kept and not trimmed
    assert handed_back > 3_000, handed_back  # each batch faulted thousands of its 12,000 pages in again
    assert reused < handed_back / 10, (handed_back, reused)
