"""How many CPU threads this process's model runtimes use: ONNX Runtime's intra-op pool (the
engine and the text encoder) and torch's (Whisper, the torch runtimes).

By default each runtime takes every core, which is right for one worker process on a machine.
``emostream worker --processes N`` gives each of its N processes ``cores // N`` threads, so that
N processes do not each spin a pool over every core and fight over them
(``engine.cpu_threads`` sets it explicitly)."""

from __future__ import annotations

import os

_threads: int | None = None


def set_cpu_threads(n: int | None) -> None:
    """Use ``n`` threads from now on (None: the runtimes' own default, every core)."""
    global _threads
    _threads = n
    if n is not None:
        try:
            import torch
        except ImportError:
            return
        torch.set_num_threads(n)


def cpu_threads() -> int | None:
    return _threads


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``n`` for this process (before its threads start), unless
    ``MALLOC_ARENA_MAX`` is set. glibc gives threads that allocate arenas of their own, up to 8
    per core, and the worker's threads (the event loop, the encoders, ONNX Runtime's and torch's
    pools) each keep freed memory in theirs: with audio, 2.35 GB peak resident against 2.10 GB
    capped at 2 in one bench run each (issue 12). False where it does not apply (not glibc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, n))
    except (OSError, AttributeError):
        return False


def share_of_cores(processes: int) -> int:
    """Threads per process when ``processes`` share this machine's cores (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes))
