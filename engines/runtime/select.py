"""Which runtime runs a model: the engine, the text encoder and the audio encoder, chosen together.

    rt = resolve_runtime("auto")   # Runtime(name="onnxruntime", device="cpu", ...) on a CPU without AMX
    engine = load_engine("default", runtime=rt.name); ex = load_extractors("default", runtime=rt.name)

==============  ======  ==========================================================================
name            device  what runs
==============  ======  ==========================================================================
onnxruntime     CPU     the engine, MiniLM and Whisper's encoder as graphs in ONNX Runtime, fp32
                        (:mod:`engines.features.whisper_onnx`): the process never imports torch
openvino        CPU     as onnxruntime, but MiniLM's and Whisper's exported graphs compiled by OpenVINO
                        (:mod:`engines.features.openvino_cpu`) in bf16 where the CPU has it natively,
                        fp32 elsewhere: in the worker on AVX-512 BF16 (AMD EPYC, no AMX),
                        onnxruntime-bf16's speed with audio (1.75x onnxruntime) and 1.3-1.4x with
                        text, without torch (0.80-0.97 GB against 1.41-1.48 with audio flat out;
                        README, Performance); not yet measured on AMX
onnxruntime-    CPU     as onnxruntime, but Whisper under bf16 autocast and MiniLM in plain PyTorch
bf16                    with its weights in bf16 (:mod:`engines.features.text_bf16`): on a CPU with
                        AMX (Intel Sapphire Rapids and later) their matrix products run on the tile
                        unit, 1.3-1.9x at 16-64 clips a batch and 1.2-1.7x at 8-512 texts; dev W-F1
                        within 0.005 of fp32 (README, Runtimes). Without AMX or AVX-512 BF16, bf16 is
                        emulated and slower; auto picks it only where /proc/cpuinfo lists amx_bf16
                        and openvino does not import
onnxruntime-    CPU     as onnxruntime, but MiniLM's graph with int8 weights (ONNX Runtime dynamic
int8                    quantization, per channel): texts 1.4x faster, MELD dev W-F1 0.010 lower
                        (README, Runtimes), so never chosen by auto. Whisper's graph stays fp32, as
                        does the engine (it is small); no torch in the process either
torch           CPU     all three in PyTorch eager, fp32: the reference every runtime is compared with
torch-cuda      GPU     all three in PyTorch on CUDA under bf16 autocast (weights stay fp32; softmax,
                        norms and reductions in fp32 as autocast keeps them; fp16 on GPUs before
                        Ampere, which only emulate bf16); engine batches padded to power-of-two sizes
                        so the GPU sees few shapes
tensorrt        GPU     the engine as a TensorRT plan (:mod:`engines.runtime.tensorrt`); encoders as
                        in torch-cuda
auto            either  tensorrt when it imports and a GPU is there, else torch-cuda with a GPU, else
                        openvino where its CPU plugin loads (bf16 where the CPU computes it natively,
                        fp32 elsewhere: in the worker on AVX2, 1.45x onnxruntime with audio and the
                        same with text) and a worker process has at least :data:`OPENVINO_MIN_MEMORY`
                        (the container's memory limit, or the machine's memory, over ``--processes``);
                        where openvino does not import, onnxruntime-bf16 on a CPU with AMX and at
                        least :data:`BF16_MIN_MEMORY`; else onnxruntime
==============  ======  ==========================================================================

A runtime named explicitly that cannot run here (torch-cuda without a GPU, tensorrt or openvino
without its package) raises :class:`RuntimeUnavailable` at start-up instead of falling back: a deployment that
asked for the GPU should not quietly run on the CPU. ``auto`` says in :attr:`Runtime.why` what it
found.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Literal

from engines.errors import EngineError

RuntimeName = Literal[
    "auto", "onnxruntime", "openvino", "onnxruntime-bf16", "onnxruntime-int8", "torch", "torch-cuda", "tensorrt"
]
RUNTIMES: tuple[str, ...] = (
    "auto",
    "onnxruntime",
    "openvino",
    "onnxruntime-bf16",
    "onnxruntime-int8",
    "torch",
    "torch-cuda",
    "tensorrt",
)
CONCRETE: tuple[str, ...] = RUNTIMES[1:]


class RuntimeUnavailable(EngineError):
    """A runtime that was asked for by name cannot run on this machine."""


@dataclass(frozen=True)
class Runtime:
    name: str  # one of CONCRETE
    engine: Literal["onnxruntime", "torch", "tensorrt"]  # what runs the engine graph
    # what runs a MiniLM text encoder (bf16: engines.features.text_bf16, openvino: engines.features.openvino_cpu)
    text: Literal["onnxruntime", "openvino", "bf16", "torch"]
    device: Literal["cpu", "cuda"]
    autocast: Literal["bfloat16", "float16"] | None  # the torch parts' autocast dtype (None: fp32)
    why: str  # how it was chosen, for the start-up log
    int8: bool = False  # the text encoder's weights in int8 (dynamic quantization)
    audio: Literal["onnxruntime", "openvino", "torch"] = "torch"  # what runs a Whisper audio encoder

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def exact(self) -> bool:
        """Whether its features are the fp32 encoders' (to 1e-4): what a feature cache may hold."""
        return self.autocast is None and not self.int8


#: the memory a worker process on onnxruntime-bf16 should have before ``auto`` picks it: with audio
#: flat out it peaked at 1.4-1.9 GB (torch's bf16 Whisper and MiniLM), against about 0.6 GB on
#: onnxruntime, which holds no torch (README, Performance)
BF16_MIN_MEMORY = int(2.5 * 2**30)
#: the same for openvino, which holds no torch: 0.80-0.97 GB a worker with audio flat out
#: (README, Performance), against about 0.6 GB on onnxruntime
OPENVINO_MIN_MEMORY = int(1.5 * 2**30)

GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")  # dxg: WSL 2; kfd: ROCm


def cuda_available(nodes: tuple[str, ...] | None = None) -> bool:
    """Whether torch sees a CUDA (or ROCm) GPU. With ``nodes`` (``auto`` passes :data:`GPU_NODES`),
    a machine without any of those driver files has none, said without importing torch: a worker
    that ``auto`` puts on ONNX Runtime then never loads it (issue 12)."""
    if nodes is not None and not any(os.path.exists(n) for n in nodes):
        return False
    import torch

    return bool(torch.cuda.is_available())


def tensorrt_available() -> bool:
    """Whether ``tensorrt`` imports (an installed package whose libraries fail to load does not)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, OSError of a missing libnvinfer, ...
        return False
    return True


@functools.cache
def openvino_available() -> bool:
    """Whether ``openvino`` imports and its CPU plugin loads (a dependency of the package; a
    trimmed image may lack it, a broken install may lack the plugin's libraries). Asked once a
    process: it loads the CPU plugin (and no other)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    try:
        import openvino as ov

        return bool(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception:  # noqa: BLE001 - ImportError, OSError of a missing library, RuntimeError of the plugin
        return False


@functools.cache
def openvino_native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (it lists ``BF16`` among its
    capabilities on AMX and on AVX-512 BF16, e.g. Intel Sapphire Rapids, AMD Zen 4)."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - as openvino_available
        return False


def cpu_amx_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AMX with bf16 tiles (Linux: the ``amx_bf16`` flag; elsewhere False)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


def native_bf16() -> bool:
    """Whether the CUDA GPU computes bf16 natively (Ampere, sm80, and later)."""
    import torch

    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def _make(name: str, why: str, bf16: bool = True) -> Runtime:
    half: Literal["bfloat16", "float16"] = "bfloat16" if bf16 else "float16"
    if name == "onnxruntime":
        return Runtime(name, "onnxruntime", "onnxruntime", "cpu", None, why, audio="onnxruntime")
    if name == "openvino":
        return Runtime(name, "onnxruntime", "openvino", "cpu", "bfloat16", why, audio="openvino")
    if name == "onnxruntime-bf16":
        return Runtime(name, "onnxruntime", "bf16", "cpu", "bfloat16", why)
    if name == "onnxruntime-int8":
        return Runtime(name, "onnxruntime", "onnxruntime", "cpu", None, why, int8=True, audio="onnxruntime")
    if name == "torch":
        return Runtime(name, "torch", "torch", "cpu", None, why)
    if name == "torch-cuda":
        return Runtime(name, "torch", "torch", "cuda", half, why)
    if name == "tensorrt":
        return Runtime(name, "tensorrt", "torch", "cuda", half, why)
    raise RuntimeUnavailable(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")


def resolve_runtime(
    name: str = "auto",
    *,
    cuda: bool | None = None,
    tensorrt: bool | None = None,
    bf16: bool | None = None,
    amx: bool | None = None,
    openvino: bool | None = None,
    memory: int | None = None,
    processes: int = 1,
) -> Runtime:
    """The :class:`Runtime` for a setting (``cuda``/``tensorrt``/``bf16``/``amx``/``openvino``/``memory``
    override the probes, for tests; ``openvino``: whether OpenVINO's CPU plugin loads here).
    ``memory``: the bytes this machine or container may use
    (:func:`~engines.runtime.threads.memory_limit` if None), shared by ``processes`` workers."""
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    if name == "openvino" and not (openvino_available() if openvino is None else openvino):
        raise RuntimeUnavailable(
            "runtime 'openvino' needs the openvino package with its CPU plugin (pip install openvino); "
            "onnxruntime runs without it"
        )
    if name not in ("auto", "torch-cuda", "tensorrt"):
        return _make(name, "as set")  # a CPU runtime: nothing to probe (no torch import to look for CUDA)
    has_cuda = cuda_available(GPU_NODES if name == "auto" else None) if cuda is None else cuda
    has_trt = has_cuda and (tensorrt_available() if tensorrt is None else tensorrt)
    has_bf16 = (native_bf16() if has_cuda else True) if bf16 is None else bf16
    note = "" if has_bf16 else " (fp16: this GPU only emulates bf16)"
    if name == "auto":
        if has_trt:
            return _make("tensorrt", "auto: tensorrt imports and a CUDA GPU is present" + note, has_bf16)
        if has_cuda:
            return _make("torch-cuda", "auto: a CUDA GPU is present, tensorrt does not import" + note, has_bf16)
        has_amx = cpu_amx_bf16() if amx is None else amx
        if memory is None:
            from engines.runtime.threads import memory_limit

            memory = memory_limit()
        share = None if memory is None else memory // max(1, processes)
        gib = "" if share is None else f"{share / 2**30:.1f} GiB a process"
        if share is not None and share < OPENVINO_MIN_MEMORY:  # (under BF16_MIN_MEMORY too): openvino not even loaded
            return _make(
                "onnxruntime",
                f"auto: no CUDA GPU, and {gib} is under the {OPENVINO_MIN_MEMORY / 2**30:g} GiB that openvino "
                "or a bf16 runtime wants, so the leanest CPU path",
            )
        if openvino_available() if openvino is None else openvino:
            if openvino is not None:  # told, not probed (tests)
                how = "OpenVINO runs here: Whisper and MiniLM compiled by OpenVINO"
            elif openvino_native_bf16():
                how = "OpenVINO computes bf16 on this CPU (AMX or AVX-512 BF16): Whisper and MiniLM in bf16 by OpenVINO"
            else:
                how = (
                    "OpenVINO runs here without native bf16: Whisper and MiniLM in fp32 by OpenVINO "
                    "(in the worker on AVX2, 1.45x onnxruntime with audio and the same with text)"
                )
            return _make("openvino", f"auto: no CUDA GPU, and {how}")
        if not has_amx:
            return _make("onnxruntime", "auto: no CUDA GPU, and openvino does not import, so the CPU path")
        if share is not None and share < BF16_MIN_MEMORY:
            return _make(
                "onnxruntime",
                f"auto: no CUDA GPU; this CPU has AMX, but openvino does not import and {gib} is under the "
                f"{BF16_MIN_MEMORY / 2**30:g} GiB that onnxruntime-bf16 (torch) wants, so the CPU path without torch",
            )
        return _make(
            "onnxruntime-bf16",
            "auto: no CUDA GPU, and this CPU has AMX: Whisper and MiniLM in bf16 by torch (openvino does not import)",
        )
    if name in ("torch-cuda", "tensorrt") and not has_cuda:
        raise RuntimeUnavailable(
            f"runtime {name!r} needs a CUDA GPU and torch.cuda.is_available() is False here "
            "(set engine.runtime to auto or onnxruntime to run on the CPU)"
        )
    if name == "tensorrt" and not has_trt:
        raise RuntimeUnavailable(
            "runtime 'tensorrt' needs the tensorrt package (pip install 'emostream[gpu]'); torch-cuda runs without it"
        )
    return _make(name, "as set" + (note if name in ("torch-cuda", "tensorrt") else ""), has_bf16)
