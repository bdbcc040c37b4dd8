"""Relevance network: shapes, modality masking, causality, padding, losses."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engines.models import forward_kwargs  # noqa: E402
from engines.models.losses import LossWeights, total_loss  # noqa: E402
from engines.models.relevance import RelevanceConfig, RelevanceNet  # noqa: E402
from tests.unit.model_inputs import DA, DT, make_inputs  # noqa: E402


def make_net(seed: int = 0, causal: bool = True) -> RelevanceNet:
    torch.manual_seed(seed)
    cfg = RelevanceConfig(text_dim=DT, audio_dim=DA, d_model=32, n_heads=4, n_layers=2, causal=causal)
    return RelevanceNet(cfg).eval()


def test_output_shapes_and_weights_sum_to_one() -> None:
    out = make_net()(**forward_kwargs(make_inputs()))
    assert out["logits"].shape == (4, 7)
    assert out["sentiment"].shape == (4,)
    assert out["weights"].shape == (4, 3)
    assert torch.all(out["sentiment"].abs() <= 1.0)
    torch.testing.assert_close(out["weights"].sum(1), torch.ones(4))
    assert torch.all(out["weights"][:, 2] == 0.0)  # no video input at all


def test_missing_modality_at_target_gets_zero_weight() -> None:
    x = make_inputs()
    x["present"][0, -1, 1] = 0.0  # window 0: no audio for the target
    x["present"][1, -1, 0] = 0.0  # window 1: no text for the target
    w = make_net()(**forward_kwargs(x))["weights"].detach()
    assert w[0, 1] == 0.0 and w[0, 0] == pytest.approx(1.0)
    assert w[1, 0] == 0.0 and w[1, 1] == pytest.approx(1.0)
    assert torch.all(w[2:, :2] > 0.0)


def test_absent_features_are_ignored() -> None:
    net = make_net()
    x = make_inputs()
    x["present"][:, :, 1] = 0.0
    base = net(**forward_kwargs(x))
    x["audio"] = torch.randn_like(x["audio"]) * 100  # garbage in an absent slot changes nothing
    torch.testing.assert_close(net(**forward_kwargs(x))["logits"], base["logits"])


def test_no_modality_present_gives_finite_output() -> None:
    x = make_inputs()
    x["present"][0, -1, :] = 0.0
    out = make_net()(**forward_kwargs(x))
    assert torch.isfinite(out["logits"]).all()
    assert torch.all(out["weights"][0] == 0.0)


def test_causal_future_utterance_does_not_change_target() -> None:
    net = make_net()
    x = make_inputs(w=7)
    x["target"] = torch.tensor([3, 4, 6, 0])
    base = net(**forward_kwargs(x))["logits"]
    y = {k: (v.clone() if v is not None else None) for k, v in x.items()}
    y["text"][:, 5:] = torch.randn(4, 2, DT) * 3
    y["audio"][:, 5:] = torch.randn(4, 2, DA) * 3
    y["speakers"][:, 5:] = 2
    after = net(**forward_kwargs(y))["logits"]
    torch.testing.assert_close(after[[0, 1, 3]], base[[0, 1, 3]])  # targets before position 5
    assert not torch.allclose(after[2], base[2])  # target 6 sees positions 5 and 6


def test_non_causal_model_uses_future_context() -> None:
    net = make_net(causal=False)
    x = make_inputs(w=7)
    x["target"] = torch.tensor([3, 3, 3, 3])
    base = net(**forward_kwargs(x))["logits"]
    x["text"][:, 6] = torch.randn(4, DT) * 3
    assert not torch.allclose(net(**forward_kwargs(x))["logits"], base)


def test_padding_is_ignored() -> None:
    net = make_net()
    x = make_inputs(w=6)
    x["valid"][:2, :3] = 0.0  # left padding in the first two windows
    base = net(**forward_kwargs(x))["logits"]
    x["text"][:2, :3] = 50.0
    x["audio"][:2, :3] = -50.0
    x["speakers"][:2, :3] = 7
    torch.testing.assert_close(net(**forward_kwargs(x))["logits"], base)


def test_shorter_window_equals_padded_window() -> None:
    net = make_net()
    x = make_inputs(b=1, w=4)
    short = net(**forward_kwargs(x))["logits"]
    pad = {k: v for k, v in x.items()}
    for k in ("text", "audio", "present", "speakers", "valid"):
        v = x[k]
        pad[k] = torch.cat([torch.zeros_like(v[:, :2]), v], dim=1)
    pad["target"] = x["target"] + 2
    torch.testing.assert_close(net(**forward_kwargs(pad))["logits"], short, atol=1e-5, rtol=1e-5)


def test_speaker_identity_matters() -> None:
    net = make_net()
    x = make_inputs()
    x["speakers"][:] = torch.tensor([0, 1, 0, 1, 0, 1])
    a = net(**forward_kwargs(x))["logits"]
    x["speakers"][:] = torch.tensor([0, 1, 2, 3, 4, 5])
    assert not torch.allclose(net(**forward_kwargs(x))["logits"], a)


def test_losses_are_finite_and_backpropagate() -> None:
    net = make_net().train()
    x = make_inputs(b=8)
    x["present"][0, -1, 1] = 0.0
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    s = torch.tensor([0.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0, 0.0])
    losses = total_loss(net(**forward_kwargs(x)), y, s, LossWeights())
    for name, v in losses.items():
        assert torch.isfinite(v), name
    assert losses["contrastive"] > 0 and losses["relevance"] >= 0
    losses["loss"].backward()
    assert net.proj["audio"].net[0].weight.grad is not None
    assert net.aux_heads[1].weight.grad is not None


def test_text_only_model() -> None:
    torch.manual_seed(0)
    net = RelevanceNet(RelevanceConfig(text_dim=DT, audio_dim=0, d_model=32)).eval()
    x = make_inputs()
    x["audio"] = None
    out = net(**forward_kwargs(x))
    assert torch.all(out["weights"][:, 0] == 1.0) and torch.all(out["weights"][:, 1:] == 0.0)


def test_three_modalities() -> None:
    torch.manual_seed(0)
    net = RelevanceNet(RelevanceConfig(text_dim=DT, audio_dim=DA, video_dim=5, d_model=32)).eval()
    x = make_inputs()
    x["video"] = torch.randn(4, 6, 5)
    x["present"][..., 2] = 1.0
    x["present"][0, -1, 0] = 0.0
    w = net(**forward_kwargs(x))["weights"].detach()
    torch.testing.assert_close(w.sum(1), torch.ones(4))
    assert w[0, 0] == 0.0 and torch.all(w[1:] > 0.0)


# --- agreement: the relevance scorer sees whether a modality agrees with the others ---------------


def make_agree_net(seed: int = 0, causal: bool = True, sharpness: float = 1.0) -> RelevanceNet:
    torch.manual_seed(seed)
    cfg = RelevanceConfig(
        text_dim=DT, audio_dim=DA, d_model=32, n_heads=4, n_layers=2, causal=causal, agreement=True, sharpness=sharpness
    )
    return RelevanceNet(cfg).eval()


def test_agreement_is_off_by_default_and_old_artifacts_load_unchanged() -> None:
    from engines import artifact

    assert RelevanceConfig().agreement is False and RelevanceConfig().sharpness == 1.0
    assert not any(k.startswith("agree") for k in make_net().state_dict())
    shipped = [artifact.MODELS_DIR / n for n in artifact.SHIPPED]
    shipped = [p for p in shipped if (p / artifact.WEIGHTS).exists()]
    if not shipped:
        pytest.skip("no shipped models in this checkout")
    for path in shipped:
        artifact.load_torch_model(path)  # raises unless the weights match the engine's network exactly
        config = artifact.read_json(path, artifact.CONFIG)
        if config["engine"] == "relevance":  # one trained before the option existed keeps it off
            cfg = RelevanceConfig(**config["model"])
            assert cfg.agreement is False and cfg.sharpness == 1.0


def test_agreement_features() -> None:
    from engines.models.relevance import agreement_features

    big = 20.0
    aux = torch.full((3, 2, 7), -big)
    aux[:, 0, 4] = big  # text says joy everywhere
    aux[0, 1, 4] = big  # window 0: audio agrees
    aux[1, 1, 6] = big  # window 1: audio says anger
    aux[2, 1, 6] = big  # window 2: audio says anger, but text is absent
    present = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    f = agreement_features(aux, present)  # (B, M, 3C + 2)
    assert f.shape == (3, 2, 23)
    agree, has_other = f[..., 21], f[..., 22]
    torch.testing.assert_close(agree[0], torch.ones(2))  # same emotion: agreement 1 for both
    torch.testing.assert_close(agree[1], torch.zeros(2))  # joy vs anger: 0
    torch.testing.assert_close(has_other, torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
    assert torch.all(f[2, 0] == 0.0)  # text absent: all zero
    assert torch.all(f[2, 1, 7:] == 0.0)  # audio alone: its own distribution, nothing to agree with
    torch.testing.assert_close(f[2, 1, :7].sum(), torch.tensor(1.0))
    torch.testing.assert_close(f[1, 1, 7:14], f[1, 0, :7])  # audio's "others" is text's distribution


def test_agreement_weights_keep_the_contract() -> None:
    net = make_agree_net()
    x = make_inputs(w=7)
    x["target"] = torch.tensor([3, 4, 6, 6])
    x["present"][3, 6, 1] = 0.0  # window 3: no audio at the target
    out = net(**forward_kwargs(x))
    w = out["weights"].detach()
    torch.testing.assert_close(w.sum(1), torch.ones(4))
    assert w[3, 1] == 0.0 and w[3, 0] == pytest.approx(1.0)
    assert torch.all(w[:3, :2] > 0.0)
    y = {k: (v.clone() if v is not None else None) for k, v in x.items()}
    y["text"][:, 5:] = torch.randn(4, 2, DT) * 3
    y["audio"][:, 5:] = torch.randn(4, 2, DA) * 3
    after = net(**forward_kwargs(y))
    torch.testing.assert_close(after["weights"][:2], out["weights"][:2])  # causal: targets 3, 4 blind to 5, 6
    torch.testing.assert_close(after["logits"][:2], out["logits"][:2])


def test_audio_weight_depends_on_what_the_text_head_predicts() -> None:
    """With agreement the audio weight moves when the text head changes its mind; without it the
    weights never read the heads' predictions."""
    x = make_inputs()
    for net, moves in ((make_agree_net(), True), (make_net(), False)):
        before = net(**forward_kwargs(x))["weights"].detach()
        with torch.no_grad():
            net.aux_heads[0].weight.mul_(-3.0)  # the text head now predicts something else
            net.aux_heads[0].bias.add_(torch.linspace(-2.0, 2.0, 7))
        after = net(**forward_kwargs(x))["weights"].detach()
        assert (not torch.allclose(after, before)) == moves


def test_agreement_trains_the_scorer_not_the_heads() -> None:
    net = make_agree_net().train()
    x = make_inputs(b=8)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    losses = total_loss(net(**forward_kwargs(x)), y, torch.zeros(8), LossWeights())
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert net.agree is not None and net.agree[0].weight.grad is not None
    assert float(net.agree[0].weight.grad.abs().sum()) > 0
    net.zero_grad()
    net(**forward_kwargs(x))["weights_active"][:, 1].sum().backward()  # the weights alone: no gradient into the heads
    grad = net.aux_heads[0].weight.grad
    assert grad is None or float(grad.abs().sum()) == 0.0


def test_sharpness_commits_harder_and_the_loss_fits_the_estimate() -> None:
    x = make_inputs(b=8)
    x["present"][0, -1, 1] = 0.0  # window 0: no audio at the target
    soft, sharp = make_agree_net()(**forward_kwargs(x)), make_agree_net(sharpness=3.0)(**forward_kwargs(x))
    torch.testing.assert_close(sharp["relevance_active"], soft["weights_active"])  # same scorer, same estimate
    torch.testing.assert_close(sharp["weights"].sum(1), torch.ones(8))
    assert sharp["weights"][0, 1] == 0.0
    w_soft, w_sharp = soft["weights"][1:, 1], sharp["weights"][1:, 1]
    assert torch.all((w_sharp - 0.5).abs() > (w_soft - 0.5).abs())  # further from even, same side
    assert torch.all((w_sharp > 0.5) == (w_soft > 0.5))
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    from engines.models.losses import relevance_loss

    got = total_loss(sharp, y, torch.zeros(8), LossWeights())["relevance"]
    want = relevance_loss(sharp["aux_logits"], sharp["relevance_active"], sharp["present_t"], y, 1.0)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("causal,sharpness", [(True, 1.0), (False, 1.0), (True, 3.0)])
def test_agreement_exports_to_onnx(causal: bool, sharpness: float, tmp_path: object) -> None:
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    import onnxruntime as ort

    from engines.export import FORBIDDEN_OPS, example_inputs, export_onnx
    from engines.interface import FeatureSpec
    from engines.spec import engine_spec

    spec = FeatureSpec({"text": DT, "audio": DA, "video": 0})
    net = make_agree_net(causal=causal, sharpness=sharpness)
    path = tmp_path / "model.onnx"  # type: ignore[operator]
    export_onnx(net, spec, path)
    assert not {n.op_type for n in onnx.load(str(path)).graph.node} & FORBIDDEN_OPS
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for b, w in [(1, 1), (3, 5), (6, 12)]:
        feed = example_inputs(engine_spec(spec), batch=b, window=w, seed=b + w)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: feed[k] for k in names}), strict=True))
        kw = {k: torch.from_numpy(np.asarray(feed[k])) for k in names}
        with torch.no_grad():
            ref = net(**forward_kwargs(kw))
        np.testing.assert_allclose(got["weights"], ref["weights"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["logits"], ref["logits"].numpy(), atol=1e-4, rtol=0)


def test_audio_label_trains_the_audio_head_on_what_the_clip_shows() -> None:
    """--corrupt-train gives the target's clip emotion: only the audio head's loss changes, and the
    caller's inputs are left as they were."""
    from engines.models.losses import modality_ce

    net = make_agree_net().train()
    net.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, torch.nn.Dropout) else None)
    x = make_inputs()
    y = torch.tensor([0, 1, 2, 3])
    plain = net.training_loss(forward_kwargs(x), y, torch.zeros(4))
    same = net.training_loss(forward_kwargs({**x, "audio_label": y.clone()}), y, torch.zeros(4))
    torch.testing.assert_close(same["loss"], plain["loss"])
    swapped = {**x, "audio_label": torch.tensor([6, 6, 6, 6])}
    got = net.training_loss(forward_kwargs(swapped), y, torch.zeros(4))
    assert "audio_label" in swapped
    out = net(**forward_kwargs(x))
    want = modality_ce(out["aux_logits"], torch.tensor([[0, 6], [1, 6], [2, 6], [3, 6]]), out["present_t"], 0.05)
    torch.testing.assert_close(got["aux"], want)
    torch.testing.assert_close(got["relevance"], plain["relevance"])  # the relevance target still scores y
