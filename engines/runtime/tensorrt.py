"""``TensorRTEngine``: an artifact's engine graph as a TensorRT plan on a CUDA GPU.

Not run in this project's own checks: TensorRT's wheels are gigabytes and none of the project's
machines can take them (the README says so); ``tests/engine/test_runtimes.py`` runs it wherever
``tensorrt`` and CUDA import. What it shares with the other runtimes is tested here on the CPU:

1. **The graph.** The artifact's own ``model.onnx`` (the ONNX Runtime path's graph, fp32) converted
   to float16 inside with fp32 inputs and outputs (:func:`half_graph`, ONNX Runtime's
   ``convert_float_to_float16`` with ``keep_io_types``): the matrix products and element-wise ops
   in fp16, the numerically delicate ops (:data:`FP32_OPS`: normalisations, softmax, reductions,
   powers, exp/log, and clamps whose tiny bounds fp16 cannot hold) kept in fp32. TensorRT 11
   networks are strongly typed and have no FP16 builder flag: the precision is the graph's. The
   half graph runs in ONNX Runtime on the CPU, where its parity with the fp32 graph is tested
   (ONNX Runtime may run some fp16 ops in fp32 there: that test checks the conversion, TensorRT's
   own test its arithmetic).
2. **The shape profile.** One optimization profile over batch and window (:func:`profile`): min 1,
   opt the worker's usual batch, max :data:`MAX_BATCH` windows of the model's ``max_window``.
3. **The cache.** Plans are kept under ``<cache root>/tensorrt/<key>/engine.plan``, ``key`` hashing
   the ONNX graph, the TensorRT version, the GPU's name and compute capability and the profile
   (:func:`plan_key`), so a new model, TensorRT or GPU builds a new plan.

At run time the inputs go to the GPU as torch tensors (fp32/int64, what the graph's edges take),
each input's shape is set on the execution context, outputs are torch tensors of the shapes the
context reports, and ``execute_async_v3`` runs on torch's current stream (no pycuda).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from engines import artifact
from engines.errors import ArtifactError
from engines.features.cache import DEFAULT_ROOT
from engines.interface import MODALITIES, EngineBatch, EngineInfo, EngineOutput
from engines.spec import EngineSpec, engine_spec

MAX_BATCH = 256
OPT_BATCH = 32  # a typical batch: engine.max_batch is 256, but batches fill only under load
HALF_RECIPE = "ort-float16-keep-io-fp32ops-v2"  # change when half_graph changes; part of the plan key
FP32_OPS = (
    "LayerNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Clip",
    "CumSum",
)


def half_graph(src: str | Path, dst: str | Path) -> None:
    """``src`` (an fp32 engine graph) as float16 inside, fp32 inputs and outputs, written to ``dst``."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = [*DEFAULT_OP_BLOCK_LIST, *FP32_OPS]
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=blocked)
    _topological(model.graph)  # the converter appends its casts; TensorRT's parser reads nodes in order
    onnx.checker.check_model(model)
    _atomic(Path(dst), onnx.save, model)


def _topological(graph: Any) -> None:
    """Reorder ``graph.node`` so that every node comes after the nodes whose outputs it reads."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[Any] = []
    while pending:
        rest = []
        for node in pending:
            if all(x in ready for x in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ArtifactError(f"engine graph has a cycle or an undefined input at {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def profile(spec: EngineSpec, max_window: int, max_batch: int = MAX_BATCH) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape of each input: batch 1..max_batch, window 1..max_window."""
    opt_b = min(OPT_BATCH, max_batch)
    out: dict[str, tuple[tuple[int, ...], ...]] = {}
    for t in spec.inputs:
        tail = tuple(int(s) for s in t.shape[2:])  # the feature size, fixed
        if len(t.shape) == 1:  # target: (batch,)
            out[t.name] = ((1,), (opt_b,), (max_batch,))
        else:
            out[t.name] = ((1, 1, *tail), (opt_b, max_window, *tail), (max_batch, max_window, *tail))
    return out


def plan_key(onnx_path: Path, trt_version: str, gpu: str, shapes: dict[str, Any]) -> str:
    h = hashlib.sha256(f"{HALF_RECIPE}/trt{trt_version}/{gpu}".encode())
    h.update(json.dumps(shapes, sort_keys=True).encode())
    h.update(onnx_path.read_bytes())
    return h.hexdigest()[:32]


def _atomic(path: Path, write: Any, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_bytes(data: bytes, path: str) -> None:
    Path(path).write_bytes(data)


class TensorRTEngine:
    """Implements :class:`engines.interface.Engine` with a TensorRT plan (built on first use, cached)."""

    def __init__(
        self, model_dir: str | Path, cache_root: str | Path | None = None, max_batch: int = MAX_BATCH, device: int = 0
    ) -> None:
        import tensorrt as trt
        import torch

        self.model_dir = artifact.resolve_model_dir(model_dir)
        self.info: EngineInfo = artifact.engine_info(self.model_dir, runtime="tensorrt")
        self.spec = engine_spec(self.info.features, n_classes=len(self.info.labels))
        self.max_batch = max_batch
        self.device = torch.device("cuda", device)
        src = self.model_dir / artifact.ONNX
        if not src.is_file():
            raise ArtifactError(f"artifact {self.model_dir} lacks {artifact.ONNX}")
        props = torch.cuda.get_device_properties(self.device)
        gpu = f"{props.name}/sm{props.major}{props.minor}"
        shapes = profile(self.spec, self.info.max_window, max_batch)
        root = Path(cache_root) if cache_root is not None else DEFAULT_ROOT / "tensorrt"
        self.plan_dir = root / plan_key(src, trt.__version__, gpu, shapes)
        plan = self.plan_dir / "engine.plan"
        self._logger = trt.Logger(trt.Logger.WARNING)
        if not plan.is_file():
            half = self.plan_dir / "model.fp16.onnx"
            half_graph(src, half)
            _atomic(plan, _write_bytes, self._build(trt, half, shapes))
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not load the plan {plan}")
        self.context = self.engine.create_execution_context()
        self._torch_dtype = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT64: torch.int64,
            trt.DataType.INT32: torch.int32,
        }
        self._dtypes = {n: self._torch_dtype[self.engine.get_tensor_dtype(n)] for n in self.spec.input_names}
        self._dtypes.update({n: self._torch_dtype[self.engine.get_tensor_dtype(n)] for n in self.spec.output_names})

    def _build(self, trt: Any, onnx_path: Path, shapes: dict[str, tuple[tuple[int, ...], ...]]) -> bytes:
        builder = trt.Builder(self._logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ArtifactError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            prof.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(prof)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ArtifactError(f"TensorRT failed to build a plan from {onnx_path}")
        return bytes(serialized)

    def predict(self, batch: EngineBatch) -> EngineOutput:
        import torch

        n_c = len(self.info.labels)
        if batch.size == 0:
            z = np.zeros((0, n_c), dtype=np.float32)
            return EngineOutput(z, z.copy(), np.zeros((0,), np.float32), np.zeros((0, len(MODALITIES)), np.float32))
        if batch.size > self.max_batch:  # past the profile: in slices
            parts = [self.predict(_slice(batch, i, i + self.max_batch)) for i in range(0, batch.size, self.max_batch)]
            return EngineOutput(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(EngineOutput)))
        keep: list[Any] = []
        arrays = batch.inputs()
        for name in self.spec.input_names:
            t = torch.from_numpy(np.ascontiguousarray(arrays[name])).to(self.device, self._dtypes[name])
            keep.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise ValueError(
                    f"{name} of shape {tuple(t.shape)} is outside the plan's profile (window <= max_window)"
                )
            self.context.set_tensor_address(name, t.data_ptr())
        outs: dict[str, Any] = {}
        for name in self.spec.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        got = {k: v.float().cpu().numpy() for k, v in outs.items()}
        return EngineOutput(got["logits"], got["probs"], got["sentiment"], got["weights"])


def _slice(batch: EngineBatch, a: int, b: int) -> EngineBatch:
    return batch.map(lambda x: x[a:b])
