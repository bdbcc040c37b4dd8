"""Runtime choice (engines/runtime/select.py) and the worker's refusal of a runtime it cannot run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engines.runtime.select import CONCRETE, RUNTIMES, RuntimeUnavailable, cpu_amx_bf16, resolve_runtime


@pytest.mark.parametrize(
    ("cuda", "tensorrt", "amx", "openvino", "want"),
    [
        (False, False, False, False, "onnxruntime"),
        (False, True, False, False, "onnxruntime"),
        (False, False, True, True, "openvino"),
        (False, False, False, True, "openvino"),  # no AMX: bf16 on AVX-512 BF16 (AMD Zen 4), fp32 on AVX2
        (False, False, True, False, "onnxruntime-bf16"),  # AMX, openvino missing
        (True, False, True, True, "torch-cuda"),
        (True, True, False, True, "tensorrt"),
    ],
)
def test_auto_takes_the_fastest_runtime_the_machine_has(
    cuda: bool, tensorrt: bool, amx: bool, openvino: bool, want: str
) -> None:
    rt = resolve_runtime("auto", cuda=cuda, tensorrt=tensorrt, amx=amx, openvino=openvino, memory=64 << 30)
    assert rt.name == want
    assert rt.why.startswith("auto: ")
    assert rt.gpu == cuda


def test_auto_takes_openvino_in_fp32_where_the_cpu_has_no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """On AVX2 alone OpenVINO runs fp32: in the worker 1.45x onnxruntime with audio and the same with
    text (README, Performance), so auto takes it there too and says which precision it runs."""
    import engines.runtime.select as select

    monkeypatch.setattr(select, "openvino_available", lambda: True)
    monkeypatch.setattr(select, "openvino_native_bf16", lambda: False)
    rt = resolve_runtime("auto", cuda=False, amx=False, memory=8 << 30)
    assert rt.name == "openvino" and "fp32" in rt.why and "without native bf16" in rt.why
    monkeypatch.setattr(select, "openvino_native_bf16", lambda: True)
    rt = resolve_runtime("auto", cuda=False, amx=False, memory=8 << 30)
    assert rt.name == "openvino" and "computes bf16" in rt.why
    monkeypatch.setattr(select, "openvino_available", lambda: False)
    rt = resolve_runtime("auto", cuda=False, amx=False, memory=8 << 30)
    assert rt.name == "onnxruntime" and "openvino does not import" in rt.why


def test_auto_takes_openvino_on_amx_and_leaves_torch_out_where_memory_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where OpenVINO computes bf16 auto takes openvino (without torch) with OPENVINO_MIN_MEMORY a worker
    process; where it does not import, onnxruntime-bf16, which holds torch (1.4-1.9 GB a worker with
    audio), only with BF16_MIN_MEMORY; counting the processes that share the memory."""
    from engines.runtime.select import BF16_MIN_MEMORY

    def auto(memory: int | None, processes: int = 1, openvino: bool = False) -> str:
        return resolve_runtime("auto", cuda=False, amx=True, openvino=openvino, memory=memory, processes=processes).name

    from engines.runtime.select import OPENVINO_MIN_MEMORY

    assert auto(64 << 30, openvino=True) == auto(2 << 30, openvino=True) == "openvino"
    assert auto(8 << 30, processes=4, openvino=True) == "openvino"
    rt = resolve_runtime("auto", cuda=False, amx=True, openvino=True, memory=4 << 30)
    assert "OpenVINO" in rt.why and rt.why.startswith("auto: ")
    # openvino holds no torch, but 0.8-0.97 GB a worker with audio: under its floor, onnxruntime (0.6 GB)
    assert auto(OPENVINO_MIN_MEMORY, openvino=True) == "openvino"
    assert auto(OPENVINO_MIN_MEMORY - 1, openvino=True) == "onnxruntime"
    assert auto(4 << 30, processes=8, openvino=True) == "onnxruntime"
    rt = resolve_runtime("auto", cuda=False, amx=True, openvino=True, memory=1 << 30)
    assert "1.0 GiB a process" in rt.why and "openvino or a bf16 runtime wants" in rt.why
    assert resolve_runtime("auto", cuda=False, amx=False, openvino=True, memory=64 << 30).name == "openvino"
    assert auto(4 << 30) == "onnxruntime-bf16"  # the Kubernetes base's 4 GiB limit
    assert auto(2 << 30) == "onnxruntime"  # a 2 GiB container
    assert auto(4 << 30, processes=2) == "onnxruntime"  # two workers in 4 GiB
    assert auto(BF16_MIN_MEMORY) == "onnxruntime-bf16" and auto(BF16_MIN_MEMORY - 1) == "onnxruntime"
    rt = resolve_runtime("auto", cuda=False, amx=True, openvino=False, memory=2 << 30)
    assert "2.0 GiB a process" in rt.why and "without torch" in rt.why and "openvino does not import" in rt.why
    # under openvino's floor the answer is onnxruntime either way: openvino is not even probed
    import engines.runtime.select as select

    def probe() -> bool:
        raise AssertionError("probed openvino for a process too small for it")

    monkeypatch.setattr(select, "openvino_available", probe)
    assert resolve_runtime("auto", cuda=False, amx=True, memory=1 << 30).name == "onnxruntime"
    assert resolve_runtime("onnxruntime-bf16", memory=1 << 30).name == "onnxruntime-bf16"  # named: as set


def test_the_memory_limit_is_the_cgroups_or_the_machines(tmp_path: Path) -> None:
    from engines.runtime.threads import memory_limit

    def write(files: dict[str, str], cgroup: str = "0::/\n") -> tuple[str, str, str]:
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        root.mkdir()
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        (root / "proc-cgroup").write_text(cgroup)
        (root / "meminfo").write_text("MemTotal:       16000000 kB\nMemFree: 1 kB\n")
        return str(root), str(root / "proc-cgroup"), str(root / "meminfo")

    machine = 16000000 * 1024
    assert memory_limit(*write({})) == machine  # no cgroup files: the machine's memory
    assert memory_limit(*write({"memory.max": "max\n"})) == machine
    assert memory_limit(*write({"memory.max": "2147483648\n"})) == 2 << 30
    # the process's own group (a pod's container), tighter than the root's
    own = {"memory.max": "max\n", "kubepods/pod1/memory.max": "1073741824\n"}
    assert memory_limit(*write(own, "0::/kubepods/pod1\n")) == 1 << 30
    v1 = {
        "memory/docker/abc/memory.limit_in_bytes": "3221225472\n",
        "memory/memory.limit_in_bytes": "9223372036854771712\n",
    }
    assert memory_limit(*write(v1, "4:memory:/docker/abc\n0::/\n")) == 3 << 30  # v1's "no limit" is ignored
    assert memory_limit(*(str(tmp_path / "none"),) * 3) is None
    # a limit on a group above the process's own (the pod's, over its containers'), and v1 co-mounted controllers
    nested = {"kubepods/pod1/memory.max": "2147483648\n", "kubepods/pod1/c1/memory.max": "max\n"}
    assert memory_limit(*write(nested, "0::/kubepods/pod1/c1\n")) == 2 << 30
    comounted = {"memory/x/memory.limit_in_bytes": "1073741824\n"}
    assert memory_limit(*write(comounted, "5:memory,hugetlb:/x\n")) == 1 << 30


def test_amx_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_int8\n")
    assert not cpu_amx_bf16(str(info))  # bf16 on AVX-512 alone is not the tile unit
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_amx_bf16(str(info))
    assert not cpu_amx_bf16(str(tmp_path / "absent"))  # not Linux: no AMX assumed


def test_every_runtime_runs_the_engine_and_both_encoders_on_one_device() -> None:
    table = {name: resolve_runtime(name, cuda=True, tensorrt=True, bf16=True, openvino=True) for name in CONCRETE}
    assert {n: (r.engine, r.text, r.audio, r.device, r.autocast, r.int8) for n, r in table.items()} == {
        "onnxruntime": ("onnxruntime", "onnxruntime", "onnxruntime", "cpu", None, False),
        "openvino": ("onnxruntime", "openvino", "openvino", "cpu", "bfloat16", False),
        "onnxruntime-bf16": ("onnxruntime", "bf16", "torch", "cpu", "bfloat16", False),
        "onnxruntime-int8": ("onnxruntime", "onnxruntime", "onnxruntime", "cpu", None, True),
        "torch": ("torch", "torch", "torch", "cpu", None, False),
        "torch-cuda": ("torch", "torch", "torch", "cuda", "bfloat16", False),
        "tensorrt": ("tensorrt", "torch", "torch", "cuda", "bfloat16", False),
    }
    assert [n for n, r in table.items() if r.exact] == ["onnxruntime", "torch"]  # what may read fp32 caches
    assert set(RUNTIMES) == {"auto", *CONCRETE}


@pytest.mark.parametrize("name", ["torch-cuda", "tensorrt"])
def test_a_gpu_runtime_named_without_a_gpu_fails_instead_of_falling_back(name: str) -> None:
    with pytest.raises(RuntimeUnavailable, match="needs a CUDA GPU"):
        resolve_runtime(name, cuda=False, tensorrt=True)


def test_gpus_that_only_emulate_bf16_get_fp16() -> None:
    old = resolve_runtime("auto", cuda=True, tensorrt=False, bf16=False)
    assert (old.name, old.autocast) == ("torch-cuda", "float16") and "emulates bf16" in old.why
    assert resolve_runtime("torch-cuda", cuda=True, bf16=True).autocast == "bfloat16"
    assert resolve_runtime("onnxruntime", cuda=True, bf16=False).autocast is None


def test_openvino_named_without_the_package_says_what_to_install() -> None:
    with pytest.raises(RuntimeUnavailable, match="pip install openvino"):
        resolve_runtime("openvino", openvino=False)
    assert resolve_runtime("openvino", openvino=True).name == "openvino"


def test_tensorrt_named_without_the_package_says_what_to_install() -> None:
    with pytest.raises(RuntimeUnavailable, match=r"emostream\[gpu\]"):
        resolve_runtime("tensorrt", cuda=True, tensorrt=False)
    with pytest.raises(RuntimeUnavailable, match="unknown runtime 'tpu'"):
        resolve_runtime("tpu")


def test_the_worker_refuses_a_gpu_runtime_on_a_machine_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from streams.errors import ConfigError
    from streams.runtime import load_model
    from streams.settings import load_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="engine.runtime: runtime 'torch-cuda' needs a CUDA GPU"):
        load_model(load_settings(engine={"runtime": "torch-cuda"}))


def test_encoders_that_fail_their_start_check_stop_the_worker_with_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An encoder's graph that fails at warm-up (openvino's check of its compiled graphs) is a
    configuration error, the exit code a supervisor does not restart on, not a traceback."""
    from types import SimpleNamespace

    import streams.runtime as runtime
    from engines.errors import FeatureError
    from streams.errors import ConfigError
    from streams.settings import load_settings

    class Featurizer:
        def warm_up(self) -> None:
            raise FeatureError("OpenVINO's compiled text graph differs from the same graph in ONNX Runtime fp32")

    engine = SimpleNamespace(info=SimpleNamespace(runtime="openvino", max_window=12))
    monkeypatch.setattr(runtime, "load_model", lambda settings: (engine, Featurizer()))
    monkeypatch.setattr(runtime, "load_revision_model", lambda settings, engine: (None, 0))
    monkeypatch.setattr(runtime, "connect", lambda settings: pytest.fail("connected to Redis after the failure"))
    with pytest.raises(ConfigError, match="cannot start the encoders on runtime openvino: OpenVINO's compiled text"):
        runtime.build_worker(load_settings(), send=None)


def test_a_future_the_models_window_cannot_hold_stops_the_worker_with_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """engine.future 12 passes the settings (redis.window 12) but the model reads 12 utterances: the
    Processor's assertion failed once the worker had joined the group and loaded the model."""
    from types import SimpleNamespace

    import streams.runtime as runtime
    from streams.errors import ConfigError
    from streams.settings import load_settings

    engine = SimpleNamespace(info=SimpleNamespace(runtime="onnxruntime", max_window=12))
    monkeypatch.setattr(runtime, "load_model", lambda settings: (engine, None))
    monkeypatch.setattr(runtime, "load_revision_model", lambda settings, engine: (None, settings.engine.future))
    monkeypatch.setattr(runtime, "connect", lambda settings: pytest.fail("connected to Redis after the failure"))
    with pytest.raises(ConfigError, match="engine.future 12 must be less than the context the model reads .12 "):
        runtime.build_worker(load_settings(engine={"future": 12}), send=None)


def test_the_settings_take_only_known_runtimes() -> None:
    from streams.errors import ConfigError
    from streams.settings import load_settings

    assert load_settings().engine.runtime == "auto"
    assert load_settings(engine={"runtime": "torch-cuda"}).engine.runtime == "torch-cuda"
    with pytest.raises(ConfigError, match="engine.runtime: Input should be 'auto'"):
        load_settings(engine={"runtime": "cuda"})


def test_a_cpu_runtime_named_explicitly_probes_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Looking for CUDA imports torch; a worker told to run on ONNX Runtime must not need it."""
    import engines.runtime.select as select

    def probe() -> bool:
        raise AssertionError("probed CUDA for a CPU runtime")

    monkeypatch.setattr(select, "cuda_available", probe)
    for name in ("onnxruntime", "openvino", "onnxruntime-bf16", "onnxruntime-int8", "torch"):
        assert resolve_runtime(name, openvino=True).name == name


def test_without_a_gpu_driver_cuda_is_absent_without_asking_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engines.runtime.select as select

    monkeypatch.setitem(sys.modules, "torch", None)  # an import of torch now fails
    monkeypatch.setattr(select, "GPU_NODES", (str(tmp_path / "nvidiactl"),))
    assert select.cuda_available(nodes=select.GPU_NODES) is False
    assert resolve_runtime("auto", amx=False, openvino=False).name == "onnxruntime"
    with pytest.raises(ImportError):  # a GPU runtime named explicitly asks torch itself
        resolve_runtime("torch-cuda")


def test_loading_the_extractors_runs_numpys_blas_on_one_thread() -> None:
    """numpy's OpenBLAS pool spins after each product and takes the cores from the encoders'
    runtimes (engines/runtime/threads.py): a process that loads the extractors runs it on one
    thread. In a subprocess: the limit is the whole process's."""
    import os
    import subprocess

    code = (
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from engines.registry import load_extractors\n"
        "load_extractors('default')\n"
        "blas = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "print(blas)\n"
        "assert blas and all(n == 1 for n in blas), blas\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
