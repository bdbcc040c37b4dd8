"""The model contract of engines.models, checked for every engine whose module exists.

Each engine, causal and not: output shapes; per-modality weights that are 0 for modalities absent
at the target and sum to 1 over the present ones; a causal model blind to later utterances; a
finite training loss with gradients; an ONNX export without Scatter/Loop/If whose ONNX Runtime
outputs match PyTorch within 1e-4 on batches of varied size, window and target position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from engines import artifact  # noqa: E402
from engines.export import FORBIDDEN_OPS, example_inputs, export_onnx  # noqa: E402
from engines.interface import MODALITIES, EngineBatch, FeatureSpec  # noqa: E402
from engines.models import available_engines, build_model, config_fields  # noqa: E402
from engines.runtime.torch import TorchEngine, torch_inputs  # noqa: E402
from engines.spec import engine_spec  # noqa: E402

pytestmark = pytest.mark.engine
SPEC = FeatureSpec({"text": 16, "audio": 9, "video": 5})
LABELS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
ENGINES = available_engines()
CASES = [(e, causal) for e in ENGINES for causal in (True, False)]


def small_net(engine: str, causal: bool, spec: FeatureSpec = SPEC, seed: int = 0) -> Any:
    fields = config_fields(engine)
    values = {
        **spec.to_dict(),
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 1,
        "max_window": 12,
        "causal": causal,
        "n_classes": len(LABELS),
    }
    torch.manual_seed(seed)
    net = build_model(engine, {k: v for k, v in values.items() if k in fields})
    for m, d in spec.dims().items():
        if d > 0:
            net.set_normaliser(m, torch.randn(d), torch.rand(d) + 0.5)
    return net.eval()


def random_batch(spec: FeatureSpec, b: int, w: int, seed: int) -> EngineBatch:
    x = example_inputs(engine_spec(spec), batch=b, window=w, seed=seed)
    rng = np.random.default_rng(seed + 1)
    first = (x["valid"] == 0).sum(1)  # first real column per row
    target = np.array([rng.integers(f, w) for f in first], dtype=np.int64)  # not always the last
    present = x["present"].copy()
    present[np.arange(b), target, 0] = 1.0  # text at every target, other modalities random
    zeros = np.zeros((b, w, 0), np.float32)
    return EngineBatch(
        features={m: x.get(m, zeros) for m in MODALITIES},
        present=present * x["valid"][..., None],
        speakers=x["speakers"],
        valid=x["valid"],
        target=target,
    )


def test_every_registered_engine_is_built() -> None:
    assert set(ENGINES) <= {"relevance", "joyful", "unimse", "foal-net"}
    assert "relevance" in ENGINES


@pytest.mark.parametrize(("engine", "causal"), CASES)
def test_outputs_and_weights(engine: str, causal: bool) -> None:
    net = small_net(engine, causal)
    batch = random_batch(SPEC, 6, 5, seed=3)
    out = TorchEngine(net=net, labels=LABELS).predict(batch)
    assert out.logits.shape == (6, len(LABELS)) and out.sentiment.shape == (6,) and out.weights.shape == (6, 3)
    assert np.isfinite(out.logits).all() and (np.abs(out.sentiment) <= 1.0).all()
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
    present_t = batch.present[np.arange(6), batch.target]  # (B, 3)
    assert np.all(out.weights[present_t == 0] == 0.0), (out.weights, present_t)
    np.testing.assert_allclose(out.weights.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_text_only_model(engine: str) -> None:
    spec = FeatureSpec({"text": 16})
    net = small_net(engine, True, spec)
    out = TorchEngine(net=net, labels=LABELS).predict(random_batch(spec, 3, 4, seed=5))
    assert np.isfinite(out.logits).all()
    np.testing.assert_allclose(out.weights, np.tile([1.0, 0.0, 0.0], (3, 1)), atol=1e-6)


@pytest.mark.parametrize(("engine", "causal"), CASES)
def test_future_utterances(engine: str, causal: bool) -> None:
    """A causal model ignores what follows the target; a non-causal one uses it."""
    net = small_net(engine, causal)
    b, w = 4, 6
    batch = random_batch(SPEC, b, w, seed=7)
    batch = EngineBatch(
        batch.features, batch.present, batch.speakers, np.ones((b, w), np.float32), np.full((b,), 2, np.int64)
    )
    rng = np.random.default_rng(0)
    changed = {m: a.copy() for m, a in batch.features.items()}
    for m in MODALITIES:
        changed[m][:, 3:] = rng.standard_normal(changed[m][:, 3:].shape)
    speakers = batch.speakers.copy()
    speakers[:, 3:] = (speakers[:, 3:] + 1) % 3
    other = EngineBatch(changed, batch.present, speakers, batch.valid, batch.target)
    ref = TorchEngine(net=net, labels=LABELS)
    a, c = ref.predict(batch), ref.predict(other)
    if causal:
        np.testing.assert_allclose(a.logits, c.logits, atol=1e-5)
        np.testing.assert_allclose(a.weights, c.weights, atol=1e-6)
    else:
        assert np.abs(a.logits - c.logits).max() > 1e-4


@pytest.mark.parametrize(("engine", "causal"), CASES)
def test_training_loss_has_gradients(engine: str, causal: bool) -> None:
    net = small_net(engine, causal).train()
    batch = random_batch(SPEC, 16, 5, seed=11)
    kw = torch_inputs(batch, SPEC.dims())
    y = torch.from_numpy(np.arange(16) % len(LABELS))
    s = torch.from_numpy((np.arange(16) % 3 - 1).astype(np.float32))
    losses = net.training_loss(kw, y, s)
    assert torch.isfinite(losses["loss"]) and all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert sum(1 for g in grads if g is not None and g.abs().sum() > 0) > len(grads) // 2


@pytest.fixture(scope="module", params=CASES, ids=[f"{e}-{'causal' if c else 'future'}" for e, c in CASES])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    import onnx

    engine, causal = request.param
    net = small_net(engine, causal)
    out = tmp_path_factory.mktemp(f"{engine}-{causal}")
    export_onnx(net, SPEC, out / artifact.ONNX)
    artifact.write_json(out, artifact.CONFIG, {"engine": engine, "name": engine, "version": "0", "model": {}})
    artifact.write_json(out, artifact.LABELS, list(LABELS))
    artifact.write_json(out, artifact.FEATURES, {"spec": {"text_dim": 16, "audio_dim": 9, "video_dim": 5}})
    ops = {n.op_type for n in onnx.load(str(out / artifact.ONNX)).graph.node}
    assert not ops & FORBIDDEN_OPS, ops & FORBIDDEN_OPS
    return out, net


def test_onnxruntime_matches_pytorch(exported: tuple[Path, Any]) -> None:
    from engines.runtime.onnx import OnnxEngine

    path, net = exported
    ort_engine, ref = OnnxEngine(path), TorchEngine(net=net, labels=LABELS)
    for b, w in [(1, 1), (2, 3), (5, 12), (17, 7), (3, 20)]:
        batch = random_batch(SPEC, b, w, seed=10 * b + w)
        got, want = ort_engine.predict(batch), ref.predict(batch)
        for name in ("logits", "probs", "sentiment", "weights"):
            np.testing.assert_allclose(
                getattr(got, name), getattr(want, name), atol=1e-4, rtol=0, err_msg=f"{name} at B={b} W={w}"
            )
