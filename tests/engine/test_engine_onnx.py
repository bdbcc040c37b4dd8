"""Exported graph vs PyTorch: parity on random batches of varied batch and window sizes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from engines import artifact  # noqa: E402
from engines.export import FORBIDDEN_OPS, example_batch, export_onnx  # noqa: E402
from engines.interface import EngineBatch, FeatureSpec  # noqa: E402
from engines.models.relevance import RelevanceConfig, RelevanceNet  # noqa: E402
from engines.runtime.torch import TorchEngine  # noqa: E402
from engines.spec import engine_spec  # noqa: E402

pytestmark = pytest.mark.engine
SPEC = FeatureSpec({"text": 16, "audio": 9})
SHAPES = [(1, 1), (2, 3), (5, 12), (17, 7), (3, 30)]


def random_batch(spec: FeatureSpec, b: int, w: int, seed: int) -> EngineBatch:
    batch = example_batch(engine_spec(spec), batch=b, window=w, seed=seed)
    rng = np.random.default_rng(seed + 1)
    first = (batch.valid == 0).sum(1)  # first real column per row
    target = np.array([rng.integers(f, w) for f in first], dtype=np.int64)  # not always the last
    return dataclasses.replace(batch, target=target)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RelevanceNet]:
    import onnx

    torch.manual_seed(0)
    net = RelevanceNet(RelevanceConfig(**SPEC.to_dict(), d_model=32)).eval()
    net.set_normaliser("audio", torch.randn(SPEC.dim("audio")), torch.rand(SPEC.dim("audio")) + 0.5)
    out = tmp_path_factory.mktemp("artifact")
    export_onnx(net, SPEC, out / artifact.ONNX)
    artifact.write_json(
        out, artifact.CONFIG, {"engine": "relevance", "name": "test", "version": "0", "model": net.cfg.to_dict()}
    )
    artifact.write_json(out, artifact.LABELS, ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"])
    artifact.write_json(out, artifact.FEATURES, {"spec": {"text_dim": 16, "audio_dim": 9, "video_dim": 0}})
    ops = {n.op_type for n in onnx.load(str(out / artifact.ONNX)).graph.node}
    assert not ops & FORBIDDEN_OPS
    return out, net


@pytest.mark.parametrize(("b", "w"), SHAPES)
def test_onnxruntime_matches_pytorch(exported: tuple[Path, RelevanceNet], b: int, w: int) -> None:
    from engines.runtime.onnx import OnnxEngine

    path, net = exported
    ort_engine, ref = OnnxEngine(path), TorchEngine(net=net)
    batch = random_batch(SPEC, b, w, seed=10 * b + w)
    got, want = ort_engine.predict(batch), ref.predict(batch)
    for name in ("logits", "probs", "sentiment", "weights"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-4, rtol=0, err_msg=name)
    assert got.logits.shape == (b, 7) and got.weights.shape == (b, 3)
    present_t = batch.present[np.arange(b), batch.target]  # (B, 3)
    assert np.all(got.weights[present_t == 0] == 0.0)


def test_graph_io_follows_spec(exported: tuple[Path, RelevanceNet]) -> None:
    from engines.runtime.onnx import OnnxEngine

    engine = OnnxEngine(exported[0])
    spec = engine_spec(SPEC)
    assert [i.name for i in engine.session.get_inputs()] == spec.input_names
    assert [o.name for o in engine.session.get_outputs()] == spec.output_names
    shapes = {i.name: i.shape for i in engine.session.get_inputs()}
    assert shapes["text"] == ["batch", "window", 16] and shapes["target"] == ["batch"]
    with pytest.raises(ValueError, match="audio features have size 5"):
        b = random_batch(SPEC, 2, 3, 0)
        cut = {**b.features, "audio": b.features["audio"][..., :5]}
        engine.predict(EngineBatch(cut, b.present, b.speakers, b.valid, b.target))


def test_the_process_thread_setting_reaches_the_session(exported: tuple[Path, RelevanceNet]) -> None:
    """engine.cpu_threads (and --processes N's share of the cores) caps ONNX Runtime's pool."""
    from engines.runtime.onnx import OnnxEngine
    from engines.runtime.threads import cpu_threads, set_cpu_threads

    before, torch_before = cpu_threads(), torch.get_num_threads()
    try:
        set_cpu_threads(1)
        one = OnnxEngine(exported[0])
        assert int(one.session.get_session_options().intra_op_num_threads) == 1
        assert torch.get_num_threads() == 1
        batch = random_batch(SPEC, 3, 4, seed=1)
        np.testing.assert_allclose(
            one.predict(batch).probs, OnnxEngine(exported[0], intra_op_threads=2).predict(batch).probs, atol=1e-5
        )
    finally:
        set_cpu_threads(before)
        torch.set_num_threads(torch_before)


def test_an_artifact_is_exported_again_only_when_the_new_graph_computes_the_same(tmp_path: Path) -> None:
    """``python -m engines.artifact export DIR``: the shipped model (trust gate and all) exported
    again matches its graph and is sealed; weights changed behind the graph's back are refused."""
    import shutil

    from engines.errors import ArtifactError

    model = tmp_path / "default"
    shutil.copytree(artifact.resolve_model_dir("default"), model)
    diff = artifact.reexport(model)
    assert set(diff) == {"logits", "probs", "sentiment", "weights"} and max(diff.values()) < 1e-4, diff
    artifact.verify(model)
    from safetensors.torch import load_file, save_file

    state = load_file(str(model / artifact.WEIGHTS))
    state = {k: v * 1.5 if v.dtype.is_floating_point else v for k, v in state.items()}
    save_file(state, str(model / artifact.WEIGHTS))
    artifact.seal(model)  # someone trusted the changed weights; the graph still holds the old ones
    before = (model / artifact.ONNX).read_bytes()
    with pytest.raises(ArtifactError, match="computes something else"):
        artifact.reexport(model)
    assert (model / artifact.ONNX).read_bytes() == before
