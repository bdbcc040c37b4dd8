"""The worker's Python heap: the cyclic garbage collector kept off the hot path, and its pauses measured.

A loaded worker holds about half a million objects that live as long as it does (the model, the
encoders, torch's and ONNX Runtime's Python side, the libraries), and a full collection traverses
every one of them: about 300 ms on this project's 2-core machine, the event loop and the engine
thread stopped meanwhile, whenever the objects that survived since the last one reach a quarter of
them. :func:`settle` collects once and freezes what is there (``gc.freeze``: those objects leave
the collector's generations for good), so a full collection traverses only what serving itself
keeps (windows, analytics states, queued utterances). :func:`watch` times every collection, and
:class:`PauseCollector` exports the times as ``emostream_gc_pause_seconds{generation}``, so a pause
is seen on the dashboard instead of guessed at.

The timing callback takes no lock: a collection can start inside any allocation, a /metrics scrape
holding a metric's lock included, and a callback waiting for that lock would wait for ever
(prometheus/client_python#363). It adds to plain per-process tallies that the collector reads.
"""

from __future__ import annotations

import atexit
import bisect
import gc
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
NAME = "emostream_gc_pause_seconds"
HELP = "Python garbage collections of this worker process by generation (the event loop stops meanwhile)"

# generation -> [collections in each bucket (the last: above every bound)], and the seconds summed
_counts: dict[int, list[int]] = {g: [0] * (len(BUCKETS) + 1) for g in range(3)}
_sums: dict[int, float] = dict.fromkeys(range(3), 0.0)
_started: list[float] = [0.0]
_watching: list[bool] = [False]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    seconds = time.perf_counter() - _started[0]
    generation = int(info.get("generation", 2))
    if generation in _counts:
        _counts[generation][bisect.bisect_left(BUCKETS, seconds)] += 1
        _sums[generation] += seconds


def watch() -> None:
    """Time every collection of this process from now on (once per process)."""
    if not _watching[0]:
        gc.callbacks.append(_callback)
        _watching[0] = True


class PauseCollector(Collector):
    """``emostream_gc_pause_seconds{generation}``: a histogram of the collections :func:`watch` timed."""

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(NAME, HELP, labels=["generation"])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(NAME, HELP, labels=["generation"])
        for generation, counts in _counts.items():
            counts = list(counts)
            if not sum(counts):
                continue
            running, buckets = 0, []
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                running += n
                buckets.append((bound, running))
            family.add_metric([str(generation)], buckets, _sums[generation])
        yield family


TRIM_GROWTH = 256 << 20  # bytes of resident growth past the last trim that make the next one worth it
_trim_lock = threading.Lock()
_trimmed_at = [0]  # resident bytes the last trim left


def _malloc_trim() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_libc_trim = _malloc_trim()


def resident() -> int:
    """This process's resident memory in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_kept = [False]  # keep(): this process keeps its freed memory and never trims


def keep() -> bool:
    """From now on keep freed memory for reuse and skip :func:`trim` (a worker on a GPU runtime:
    :func:`engines.runtime.threads.keep_heap`). A GPU worker's batches are large and its host's
    share of the work is its limit: on the H200 the GPU check's end to end at batch 1024 went from
    4,234 to 5,920 utterances/s with the heap kept (issue 12), for resident memory held at the
    largest batch's. True if glibc took the setting."""
    from engines.runtime.threads import keep_heap

    _kept[0] = keep_heap()  # trims stay on where glibc did not take it
    return _kept[0]


def trim(growth: int = TRIM_GROWTH) -> bool:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``) once resident memory
    has grown ``growth`` bytes past what the last trim left; True if it trimmed.

    The encoders' batches (Whisper's activations above all) free hundreds of MB that glibc keeps:
    a worker's resident memory ratchets up to the largest batch's, and a batch of a few hundred
    clips leaves it about 600 MB above its live heap (1.74 GB against 1.13 GB with a trim after
    each batch; 20 ms a trim, issue 12). A trim also gives back what the next batch would have
    reused, to be faulted in again: after every batch of the audio bench (64 MB of growth) it cost
    about a tenth of the throughput; at 256 MB, 1.47 GB peak against 1.88 at the same throughput.
    Called by the threads that run the encoders, after each batch; one trim at a time (a second
    caller skips)."""
    if _libc_trim is None or _kept[0]:
        return False
    now = resident()
    if now - _trimmed_at[0] < growth or not _trim_lock.acquire(blocking=False):
        return False
    try:
        _libc_trim(0)  # ctypes lets go of the GIL meanwhile: the event loop runs on
        _trimmed_at[0] = resident()
    finally:
        _trim_lock.release()
    return True


def settle() -> int:
    """Collect, then freeze every object alive now (call once the model is loaded, before
    serving). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    # back in the generations at exit, so the interpreter's last collection frees them (nanobind
    # reports frozen objects of its bindings as leaked otherwise)
    atexit.register(gc.unfreeze)
    return gc.get_freeze_count()


def main() -> int:
    """``python -m streams.heap``: what one full collection costs a loaded worker, before and
    after :func:`settle` (the default settings' model; no Kafka or Redis needed)."""
    import logging

    from streams.runtime import build_worker
    from streams.settings import load_settings

    logging.basicConfig(level=logging.WARNING)
    build_worker(load_settings(None), lambda *a: None)

    def full_ms() -> float:
        started = time.perf_counter()
        gc.collect()
        return 1000 * (time.perf_counter() - started)

    print(f"objects tracked by the collector: {len(gc.get_objects())}")
    print(f"a full collection: {min(full_ms() for _ in range(3)):.1f} ms (best of 3)")
    print(f"frozen: {settle()} objects")
    print(f"a full collection after the freeze: {min(full_ms() for _ in range(3)):.1f} ms (best of 3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
