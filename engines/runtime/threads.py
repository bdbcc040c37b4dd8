"""How many CPU threads this process's model runtimes use: ONNX Runtime's intra-op pool (the
engine and the text encoder) and torch's (Whisper, the torch runtimes); and the memory it may
use (:func:`memory_limit`, which ``auto`` weighs, engines/runtime/select.py).

By default each runtime takes every core, which is right for one worker process on a machine.
``emostream worker --processes N`` gives each of its N processes ``cores // N`` threads, so that
N processes do not each spin a pool over every core and fight over them
(``engine.cpu_threads`` sets it explicitly). Under a cgroup CPU quota (a container's CPU limit)
"every core" means the quota's, rounded up: ONNX Runtime and torch count the host's cores."""

from __future__ import annotations

import math
import os
import sys
from typing import Any

_threads: int | None = None


def set_cpu_threads(n: int | None) -> None:
    """Use ``n`` threads from now on (None: the runtimes' own default, every core)."""
    global _threads
    _threads = n
    apply_to_torch()


def apply_to_torch() -> None:
    """Give torch the thread count, if torch is loaded: :func:`set_cpu_threads` does not import it
    (a worker on an ONNX Runtime runtime never does), so what loads a torch model calls this."""
    torch = sys.modules.get("torch")
    if _threads is not None and torch is not None:
        torch.set_num_threads(_threads)


def cpu_threads() -> int | None:
    return _threads


_blas: Any = None  # the limit, once set


def single_thread_blas() -> None:
    """Run the BLAS libraries loaded so far (numpy's OpenBLAS) on one thread in this process from
    now on (once; later calls do nothing). Its pool spins for a while after each call, on every core: the log-mel front
    end's one matrix product, right before each Whisper pass, left OpenVINO's threads fighting it
    for the cores (a pass of 16 clips 63-92 ms after it, 37-47 with it on one thread; the OpenVINO
    Whisper extractor 647 -> 969 audio s/s on two AMX cores, docs/performance-history.md). The
    encoders and the engine have pools of their own; numpy's products here are small."""
    global _blas
    if _blas is None:  # an OpenBLAS loaded later (scipy's, say) keeps its own pool
        from threadpoolctl import threadpool_limits

        _blas = threadpool_limits(limits=1, user_api="blas")


def encoder_session_options(intra_op_threads: int | None = None) -> Any:
    """ONNX Runtime options for an encoder's graph: every graph optimisation, sequential execution
    with one inter-op thread, and ``intra_op_threads`` (None: :func:`cpu_threads`, else ONNX
    Runtime's default, every core) for its operators."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    threads = intra_op_threads if intra_op_threads is not None else cpu_threads()
    if threads is not None:
        opts.intra_op_num_threads = threads
    return opts


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


M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
KEPT_HEAP_MMAP = 32 * 2**20  # glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)


def keep_heap(trim_bytes: int = 2**31 - 1) -> bool:
    """Keep freed memory in this process's heap for the next allocation instead of handing it back
    to the system (glibc: every block under 32 MB from the heap, and free space at its top trimmed
    only past ``trim_bytes``). A GPU host that decodes a batch of audio writes some 100-200 MB of
    fresh arrays a batch; handed back after each, every page is faulted in and zeroed again on the
    next (issue 12: decoding 1024 clips of 3 s, 130 ms -> 35 ms on this project's CPU). The price
    is resident memory held at the batch's peak. ``trim_bytes`` is a C int (2 GiB at most). False
    where it does not apply (not glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        trim = min(trim_bytes, 2**31 - 1)  # mallopt takes an int: more would wrap to "trim at every free"
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEPT_HEAP_MMAP)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim))
    except (OSError, AttributeError):
        return False


def _own_cgroup(proc_cgroup: str, controller: str = "") -> str:
    """This process's cgroup path: the v2 line ("0::/path") or, with ``controller``, its v1 line."""
    own = ""
    try:
        with open(proc_cgroup) as f:
            for line in f:
                _, controllers, path = (line.rstrip("\n").split(":", 2) + ["", ""])[:3]
                if (controller in controllers.split(",")) if controller else line.startswith("0::"):
                    own = path.strip("/")
    except OSError:
        pass
    return own


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (a container's ``resources.limits.cpu``),
    or None where there is none. cgroup v2 ``cpu.max`` ("200000 100000": 2 cores; "max ...": none)
    of the process's own group and of the root as mounted; else v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``. The smallest found wins."""
    own = _own_cgroup(proc_cgroup)
    limits: list[float] = []
    for group in {own, ""}:
        try:
            with open(os.path.join(root, group, "cpu.max")) as f:
                quota, period = (f.read().split() + ["100000"])[:2]
        except OSError:
            continue
        if quota != "max" and float(period) > 0:
            limits.append(float(quota) / float(period))
    for v1 in (os.path.join(root, "cpu"), os.path.join(root, "cpu,cpuacct")):
        try:
            with open(os.path.join(v1, "cpu.cfs_quota_us")) as f:
                quota_us = float(f.read())
            with open(os.path.join(v1, "cpu.cfs_period_us")) as f:
                period_us = float(f.read())
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            limits.append(quota_us / period_us)
    return min(limits) if limits else None


def memory_limit(
    root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup", meminfo: str = "/proc/meminfo"
) -> int | None:
    """The memory this process's cgroup may use, in bytes (a container's ``resources.limits.memory``),
    or the machine's memory where that is smaller; None where neither is known. cgroup v2
    ``memory.max`` of the process's own group, of each group above it (a pod's limit over its
    containers') and of the root as mounted ("max": none); v1 ``memory.limit_in_bytes`` likewise
    (its "none" is a number near 2**63). The smallest found wins."""

    def lineage(path: str) -> list[str]:  # "a/b/c" -> ["", "a", "a/b", "a/b/c"]
        parts = [p for p in path.split("/") if p]
        return ["/".join(parts[:i]) for i in range(len(parts) + 1)]

    limits: list[int] = []
    own, own_v1 = _own_cgroup(proc_cgroup), _own_cgroup(proc_cgroup, "memory")
    files = [os.path.join(root, g, "memory.max") for g in lineage(own)]
    files += [os.path.join(root, "memory", g, "memory.limit_in_bytes") for g in lineage(own_v1)]
    for path in files:
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 60:
            limits.append(int(value))
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return min(limits) if limits else None


def _affinity_cores() -> int:
    """The cores this process may run on (what ONNX Runtime and torch see, quota or not)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_cores(limit: float | None = None) -> int:
    """The cores this process may use: those it may run on, and no more than its cgroup's CPU
    quota rounded up (``limit``: that quota, read from /sys/fs/cgroup when None)."""
    cores = _affinity_cores()
    quota = cgroup_cpu_limit() if limit is None else limit
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def default_cpu_threads(limit: float | None = None) -> int | None:
    """What a worker's runtimes use unless ``engine.cpu_threads`` says: their own default (every
    core of the machine: None), except under a CPU quota smaller than the cores it sees, where a
    pool over every core of the host would be throttled (a 2-core pod on a 64-core node), and
    the quota's cores are used."""
    usable = available_cores(limit)
    return usable if usable < _affinity_cores() else None


def share_of_cores(processes: int, limit: float | None = None) -> int:
    """Threads per process when ``processes`` share this machine's cores, or its CPU quota (at least 1)."""
    return max(1, available_cores(limit) // max(1, processes))
