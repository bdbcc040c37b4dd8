"""The worker's Python heap: the cyclic garbage collector kept off the hot path, and its pauses measured.

A loaded worker holds about half a million objects that live as long as it does (the model, the
encoders, torch's and ONNX Runtime's Python side, the libraries), and a full collection traverses
every one of them: about 280 ms on this project's 2-core machine, the event loop and the engine
thread stopped meanwhile, whenever the objects that survived since the last one reach a quarter of
them. :func:`settle` collects once and freezes what is there (``gc.freeze``: those objects leave
the collector's generations for good), so a full collection traverses only what serving itself
keeps (windows, analytics states, queued utterances). :func:`watch` times every collection into
``emostream_gc_pause_seconds{generation}``, so a pause is seen on the dashboard instead of guessed at.
"""

from __future__ import annotations

import atexit
import gc
import time
import weakref
from typing import Any

from prometheus_client import Histogram


def settle() -> int:
    """Collect, then freeze every object alive now (call once the model is loaded, before
    serving). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    # back in the generations at exit, so the interpreter's last collection frees them (nanobind
    # reports frozen objects of its bindings as leaked otherwise)
    atexit.register(gc.unfreeze)
    return gc.get_freeze_count()


def watch(histogram: Histogram) -> None:
    """Observe every collection's duration into ``histogram`` (labelled by generation) for as
    long as it lives (the callback holds it weakly and removes itself after)."""
    ref = weakref.ref(histogram)
    started: list[float] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
            return
        target = ref()
        if target is None:
            gc.callbacks.remove(callback)
            return
        if started:
            target.labels(str(info.get("generation", "?"))).observe(time.perf_counter() - started[0])
            started.clear()

    gc.callbacks.append(callback)


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
