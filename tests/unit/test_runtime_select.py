"""Runtime choice (engines/runtime/select.py) and the worker's refusal of a runtime it cannot run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engines.runtime.select import CONCRETE, RUNTIMES, RuntimeUnavailable, cpu_amx_bf16, resolve_runtime


@pytest.mark.parametrize(
    ("cuda", "tensorrt", "amx", "want"),
    [
        (False, False, False, "onnxruntime"),
        (False, True, False, "onnxruntime"),
        (False, False, True, "onnxruntime-bf16"),
        (True, False, True, "torch-cuda"),
        (True, True, False, "tensorrt"),
    ],
)
def test_auto_takes_the_fastest_runtime_the_machine_has(cuda: bool, tensorrt: bool, amx: bool, want: str) -> None:
    rt = resolve_runtime("auto", cuda=cuda, tensorrt=tensorrt, amx=amx)
    assert rt.name == want
    assert rt.why.startswith("auto: ")
    assert rt.gpu == cuda


def test_amx_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_int8\n")
    assert not cpu_amx_bf16(str(info))  # bf16 on AVX-512 alone is not the tile unit
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_amx_bf16(str(info))
    assert not cpu_amx_bf16(str(tmp_path / "absent"))  # not Linux: no AMX assumed


def test_every_runtime_runs_the_engine_and_both_encoders_on_one_device() -> None:
    table = {name: resolve_runtime(name, cuda=True, tensorrt=True, bf16=True) for name in CONCRETE}
    assert {n: (r.engine, r.text, r.audio, r.device, r.autocast, r.int8) for n, r in table.items()} == {
        "onnxruntime": ("onnxruntime", "onnxruntime", "onnxruntime", "cpu", None, False),
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
    for name in ("onnxruntime", "onnxruntime-bf16", "onnxruntime-int8", "torch"):
        assert resolve_runtime(name).name == name


def test_without_a_gpu_driver_cuda_is_absent_without_asking_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engines.runtime.select as select

    monkeypatch.setitem(sys.modules, "torch", None)  # an import of torch now fails
    monkeypatch.setattr(select, "GPU_NODES", (str(tmp_path / "nvidiactl"),))
    assert select.cuda_available(nodes=select.GPU_NODES) is False
    assert resolve_runtime("auto", amx=False).name == "onnxruntime"
    with pytest.raises(ImportError):  # a GPU runtime named explicitly asks torch itself
        resolve_runtime("torch-cuda")
