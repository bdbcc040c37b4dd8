"""Whisper in ONNX Runtime (engines/features/whisper_onnx.py): the torch extractor's features, an
export made once and checked, and a worker on the onnxruntime runtime that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.errors import FeatureError
from engines.features import audio_extractor_from_dict
from engines.features.whisper_onnx import OnnxWhisperExtractor
from engines.features.whisper_spec import WhisperConfig
from tests.unit.test_features_whisper import voice

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]
MAX_REL = 1e-5  # against the torch extractor, relative to a vector's largest value (about 2e-6 measured)


def odd_clips() -> list[np.ndarray]:
    """Lengths a call brings: ordinary, shorter than one STFT frame, silence, over 30 s (three
    segments), and a 1 s tail segment."""
    return [
        voice(2.3, seed=1),
        voice(0.005, seed=2),
        np.zeros(8000, np.float32),
        voice(0.9, f0=220.0, seed=3),
        voice(61.0, seed=4),
        np.concatenate([voice(31.0, seed=5), np.zeros(7, np.float32)]),
    ]


@pytest.mark.parametrize(
    "config",
    [WhisperConfig(layers=(2,)), WhisperConfig(layers=(1, 3), pooling="mean"), WhisperConfig(layers=(0, 4))],
    ids=["block2", "mean-of-1-3", "stem-and-output"],
)
def test_onnxruntime_gives_the_torch_extractors_features(config: WhisperConfig, tmp_path: Path) -> None:
    from engines.features.whisper import WhisperExtractor

    ref, got = WhisperExtractor(config), OnnxWhisperExtractor(config, cache_dir=tmp_path)
    assert (got.id, got.dim, got.to_dict()) == (ref.id, ref.dim, ref.to_dict())  # the same features, by name
    waves = odd_clips()
    a, b = ref.extract(waves), got.extract(waves)
    assert b.shape == a.shape and np.isfinite(b).all()
    rel = np.abs(a - b).max(1) / np.maximum(np.abs(a).max(1), 1e-12)
    assert rel.max() < MAX_REL, rel
    assert np.abs(b[0] - b[3]).max() > 0.1  # not a constant


def test_a_clips_vector_does_not_depend_on_its_batch(tmp_path: Path) -> None:
    waves = [voice(s, f0=100.0 + 20 * i, seed=i) for i, s in enumerate([0.37, 3.1, 1.6, 0.9, 2.2])]
    ex = OnnxWhisperExtractor(WhisperConfig(layers=(2,)), cache_dir=tmp_path)
    alone = np.stack([ex.extract([w])[0] for w in waves])
    np.testing.assert_allclose(ex.extract(waves), alone, rtol=1e-5, atol=1e-5)
    small = OnnxWhisperExtractor(WhisperConfig(layers=(2,), chunk=2), cache_dir=tmp_path)
    np.testing.assert_allclose(small.extract(waves[::-1])[::-1], alone, rtol=1e-5, atol=1e-5)


def test_the_graph_is_exported_once_and_a_wrong_one_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.features.whisper_onnx as wo

    first = OnnxWhisperExtractor(WhisperConfig(layers=(1,)), cache_dir=tmp_path)
    want = first.extract([voice(1.0)])
    path = first.graph_path()
    assert first.onnx_path == path and path.is_file()
    assert first.graph_path() != OnnxWhisperExtractor(WhisperConfig(layers=(2,)), cache_dir=tmp_path).graph_path()

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    with monkeypatch.context() as m:
        m.setattr(wo, "export_whisper_onnx", no_export)
        again = OnnxWhisperExtractor(WhisperConfig(layers=(1,)), cache_dir=tmp_path)
        assert np.array_equal(again.extract([voice(1.0)]), want)  # the cached graph, no torch needed

    monkeypatch.setattr(wo, "PROBE_MAX_REL", -1.0)  # every new graph now "differs" from torch
    other = tmp_path / "other"
    bad = OnnxWhisperExtractor(WhisperConfig(layers=(1,)), cache_dir=other)
    with pytest.raises(FeatureError, match="differs from the torch encoder"):
        bad.extract([voice(1.0)])
    assert not bad.graph_path().exists()  # not kept for the next start
    assert not list(other.rglob("*.onnx*"))  # nor left under its temporary name


def test_the_factory_builds_it_for_the_onnxruntime_runtime() -> None:
    meta = {"kind": "whisper-tiny", "name": "whisper-tiny", "layers": [2], "pooling": "concat", "version": 1}
    ex = audio_extractor_from_dict(meta, runtime="onnxruntime")
    assert isinstance(ex, OnnxWhisperExtractor) and ex.settings.layers == (2,)
    assert type(audio_extractor_from_dict(meta)).__name__ == "WhisperExtractor"


WORKER_PROBE = """
import json, sys
import numpy as np
import streams.worker  # noqa: F401 - what the worker imports
from streams.runtime import load_model, prepare_graphs
from streams.settings import load_settings

settings = load_settings(engine={"runtime": sys.argv[1]})
prepare_graphs(settings)  # as `emostream worker` does before it loads the model
engine, feat = load_model(settings)
feat.warm_up()
text = feat._x.text.encode(["you did what?"])
audio = feat._x.audio.extract([np.sin(np.arange(16000) / 8).astype(np.float32)])
print(json.dumps({"torch": "torch" in sys.modules, "runtime": engine.info.runtime,
                  "text": text.shape[1], "audio": audio.shape[1], "finite": bool(np.isfinite(audio).all())}))
"""


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_worker_on_a_torch_free_runtime_never_imports_torch(tmp_path: Path, runtime: str) -> None:
    """The shipped default with text and audio, as the worker loads it on onnxruntime or openvino
    (which compiles the same graphs): a start loads no torch at all, the first one on an empty
    export cache included (a child process exports the graphs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSTREAM_")}
    env["HOME"] = str(tmp_path)  # an empty export cache, whatever this machine's holds

    def start() -> dict[str, object]:
        run = subprocess.run(
            [sys.executable, "-c", WORKER_PROBE, runtime],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        out: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
        return out

    want = {"torch": False, "runtime": runtime, "text": 384, "audio": 768, "finite": True}
    first = start()  # a child exports what the cache lacks, with torch; this process loads none
    assert first == want and (tmp_path / ".cache" / "emostream" / "onnx" / "whisper").is_dir()
    assert start() == want


THREADS_PROBE = """
import json, sys
import numpy as np
from engines.runtime.threads import set_cpu_threads

set_cpu_threads(1)  # before torch is imported, as the worker does
assert "torch" not in sys.modules
from engines.registry import load_extractors

x = load_extractors("default", runtime=sys.argv[1])
x.text.encode(["you did what?"])
x.audio.extract([np.sin(np.arange(16000) / 8).astype(np.float32)])
import torch

print(json.dumps(torch.get_num_threads()))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one thread is the default anyway")
@pytest.mark.parametrize("runtime", ["onnxruntime-bf16", "torch"])
def test_torch_takes_the_thread_count_set_before_it_was_imported(runtime: str) -> None:
    """`engine.cpu_threads` (and --processes N) reach torch, which is imported after they are set."""
    run = subprocess.run(
        [sys.executable, "-c", THREADS_PROBE, runtime], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == 1


def test_worker_prepare_fills_the_export_cache_so_a_start_loads_no_torch(tmp_path: Path) -> None:
    """`emostream worker --prepare` (the image build runs it): exports and exits, no Kafka needed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSTREAM_")}
    env.update(HOME=str(tmp_path), EMOSTREAM_ENGINE__RUNTIME="onnxruntime")

    def prepare() -> str:
        cmd = [sys.executable, "-m", "streams.cli", "worker", "--prepare"]
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout

    first = prepare()
    assert "onnx/whisper/" in first and "onnx/text/" in first and "loaded torch: yes" in first
    assert "loaded torch: no" in prepare()
