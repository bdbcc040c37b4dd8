"""Which runtime runs a model: the engine, the text encoder and the audio encoder, chosen together.

    rt = resolve_runtime("auto")   # Runtime(name="onnxruntime", device="cpu", ...) on a CPU machine
    engine = load_engine("default", runtime=rt.name); ex = load_extractors("default", runtime=rt.name)

==============  ======  ==========================================================================
name            device  what runs
==============  ======  ==========================================================================
onnxruntime     CPU     engine graph and MiniLM graph in ONNX Runtime, Whisper in PyTorch (fp32)
torch           CPU     all three in PyTorch eager, fp32: the reference every runtime is compared with
torch-cuda      GPU     all three in PyTorch on CUDA under bf16 autocast (weights stay fp32; softmax,
                        norms and reductions in fp32 as autocast keeps them); engine batches padded to
                        power-of-two sizes so the GPU sees few shapes
tensorrt        GPU     the engine as a TensorRT plan (:mod:`engines.runtime.tensorrt`); encoders as
                        in torch-cuda
auto            either  tensorrt when it imports and a GPU is there, else torch-cuda with a GPU, else
                        onnxruntime
==============  ======  ==========================================================================

A runtime named explicitly that cannot run here (torch-cuda without a GPU, tensorrt without the
package) raises :class:`RuntimeUnavailable` at start-up instead of falling back: a deployment that
asked for the GPU should not quietly run on the CPU. ``auto`` says in :attr:`Runtime.why` what it
found.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

from engines.errors import EngineError

RuntimeName = Literal["auto", "onnxruntime", "torch", "torch-cuda", "tensorrt"]
RUNTIMES: tuple[str, ...] = ("auto", "onnxruntime", "torch", "torch-cuda", "tensorrt")
CONCRETE: tuple[str, ...] = RUNTIMES[1:]


class RuntimeUnavailable(EngineError):
    """A runtime that was asked for by name cannot run on this machine."""


@dataclass(frozen=True)
class Runtime:
    name: str  # one of CONCRETE
    engine: Literal["onnxruntime", "torch", "tensorrt"]  # what runs the engine graph
    text: Literal["onnxruntime", "torch"]  # what runs a MiniLM text encoder
    device: Literal["cpu", "cuda"]
    autocast: Literal["bfloat16"] | None  # the torch parts' autocast dtype (None: fp32)
    why: str  # how it was chosen, for the start-up log

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _make(name: str, why: str) -> Runtime:
    if name == "onnxruntime":
        return Runtime(name, "onnxruntime", "onnxruntime", "cpu", None, why)
    if name == "torch":
        return Runtime(name, "torch", "torch", "cpu", None, why)
    if name == "torch-cuda":
        return Runtime(name, "torch", "torch", "cuda", "bfloat16", why)
    if name == "tensorrt":
        return Runtime(name, "tensorrt", "torch", "cuda", "bfloat16", why)
    raise RuntimeUnavailable(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")


def resolve_runtime(name: str = "auto", *, cuda: bool | None = None, tensorrt: bool | None = None) -> Runtime:
    """The :class:`Runtime` for a setting (``cuda``/``tensorrt`` override the probes, for tests)."""
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    has_cuda = cuda_available() if cuda is None else cuda
    has_trt = (tensorrt_available() if tensorrt is None else tensorrt) and has_cuda
    if name == "auto":
        if has_trt:
            return _make("tensorrt", "auto: tensorrt imports and a CUDA GPU is present")
        if has_cuda:
            return _make("torch-cuda", "auto: a CUDA GPU is present, tensorrt does not import")
        return _make("onnxruntime", "auto: no CUDA GPU, so the CPU path")
    if name in ("torch-cuda", "tensorrt") and not has_cuda:
        raise RuntimeUnavailable(
            f"runtime {name!r} needs a CUDA GPU and torch.cuda.is_available() is False here "
            "(set engine.runtime to auto or onnxruntime to run on the CPU)"
        )
    if name == "tensorrt" and not has_trt:
        raise RuntimeUnavailable(
            "runtime 'tensorrt' needs the tensorrt package (pip install 'emostream[gpu]'); torch-cuda runs without it"
        )
    return _make(name, "as set")
