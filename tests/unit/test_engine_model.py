"""Relevance network: shapes, modality masking, causality, padding, losses."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engines.models.losses import LossWeights, total_loss  # noqa: E402
from engines.models.relevance import RelevanceConfig, RelevanceNet  # noqa: E402
from tests.unit.model_inputs import DA, DT, make_inputs  # noqa: E402


def make_net(seed: int = 0, causal: bool = True) -> RelevanceNet:
    torch.manual_seed(seed)
    cfg = RelevanceConfig(text_dim=DT, audio_dim=DA, d_model=32, n_heads=4, n_layers=2, causal=causal)
    return RelevanceNet(cfg).eval()


def test_output_shapes_and_weights_sum_to_one() -> None:
    out = make_net()(**make_inputs())
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
    w = make_net()(**x)["weights"].detach()
    assert w[0, 1] == 0.0 and w[0, 0] == pytest.approx(1.0)
    assert w[1, 0] == 0.0 and w[1, 1] == pytest.approx(1.0)
    assert torch.all(w[2:, :2] > 0.0)


def test_absent_features_are_ignored() -> None:
    net = make_net()
    x = make_inputs()
    x["present"][:, :, 1] = 0.0
    base = net(**x)
    x["audio"] = torch.randn_like(x["audio"]) * 100  # garbage in an absent slot changes nothing
    torch.testing.assert_close(net(**x)["logits"], base["logits"])


def test_no_modality_present_gives_finite_output() -> None:
    x = make_inputs()
    x["present"][0, -1, :] = 0.0
    out = make_net()(**x)
    assert torch.isfinite(out["logits"]).all()
    assert torch.all(out["weights"][0] == 0.0)


def test_causal_future_utterance_does_not_change_target() -> None:
    net = make_net()
    x = make_inputs(w=7)
    x["target"] = torch.tensor([3, 4, 6, 0])
    base = net(**x)["logits"]
    y = {k: (v.clone() if v is not None else None) for k, v in x.items()}
    y["text"][:, 5:] = torch.randn(4, 2, DT) * 3
    y["audio"][:, 5:] = torch.randn(4, 2, DA) * 3
    y["speakers"][:, 5:] = 2
    after = net(**y)["logits"]
    torch.testing.assert_close(after[[0, 1, 3]], base[[0, 1, 3]])  # targets before position 5
    assert not torch.allclose(after[2], base[2])  # target 6 sees positions 5 and 6


def test_non_causal_model_uses_future_context() -> None:
    net = make_net(causal=False)
    x = make_inputs(w=7)
    x["target"] = torch.tensor([3, 3, 3, 3])
    base = net(**x)["logits"]
    x["text"][:, 6] = torch.randn(4, DT) * 3
    assert not torch.allclose(net(**x)["logits"], base)


def test_padding_is_ignored() -> None:
    net = make_net()
    x = make_inputs(w=6)
    x["valid"][:2, :3] = 0.0  # left padding in the first two windows
    base = net(**x)["logits"]
    x["text"][:2, :3] = 50.0
    x["audio"][:2, :3] = -50.0
    x["speakers"][:2, :3] = 7
    torch.testing.assert_close(net(**x)["logits"], base)


def test_shorter_window_equals_padded_window() -> None:
    net = make_net()
    x = make_inputs(b=1, w=4)
    short = net(**x)["logits"]
    pad = {k: v for k, v in x.items()}
    for k in ("text", "audio", "present", "speakers", "valid"):
        v = x[k]
        pad[k] = torch.cat([torch.zeros_like(v[:, :2]), v], dim=1)
    pad["target"] = x["target"] + 2
    torch.testing.assert_close(net(**pad)["logits"], short, atol=1e-5, rtol=1e-5)


def test_speaker_identity_matters() -> None:
    net = make_net()
    x = make_inputs()
    x["speakers"][:] = torch.tensor([0, 1, 0, 1, 0, 1])
    a = net(**x)["logits"]
    x["speakers"][:] = torch.tensor([0, 1, 2, 3, 4, 5])
    assert not torch.allclose(net(**x)["logits"], a)


def test_losses_are_finite_and_backpropagate() -> None:
    net = make_net().train()
    x = make_inputs(b=8)
    x["present"][0, -1, 1] = 0.0
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    s = torch.tensor([0.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0, 0.0])
    losses = total_loss(net(**x), y, s, LossWeights())
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
    out = net(**x)
    assert torch.all(out["weights"][:, 0] == 1.0) and torch.all(out["weights"][:, 1:] == 0.0)


def test_three_modalities() -> None:
    torch.manual_seed(0)
    net = RelevanceNet(RelevanceConfig(text_dim=DT, audio_dim=DA, video_dim=5, d_model=32)).eval()
    x = make_inputs()
    x["video"] = torch.randn(4, 6, 5)
    x["present"][..., 2] = 1.0
    x["present"][0, -1, 0] = 0.0
    w = net(**x)["weights"].detach()
    torch.testing.assert_close(w.sum(1), torch.ones(4))
    assert w[0, 0] == 0.0 and torch.all(w[1:] > 0.0)
