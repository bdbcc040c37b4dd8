"""Joyful engine: relation masks, gate, graph contrastive loss, fusion reconstruction losses."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from engines.models import forward_kwargs  # noqa: E402
from engines.models.common import WindowContext  # noqa: E402
from engines.models.joyful import JoyfulConfig, JoyfulNet, grace_loss, relations  # noqa: E402
from tests.unit.model_inputs import DA, DT  # noqa: E402
from tests.unit.model_inputs import make_inputs as model_inputs  # noqa: E402


def make_net(seed: int = 0, causal: bool = True, **kw: object) -> JoyfulNet:
    torch.manual_seed(seed)
    cfg = JoyfulConfig(text_dim=DT, audio_dim=DA, d_model=32, n_heads=4, n_layers=1, causal=causal, **kw)  # type: ignore[arg-type]
    return JoyfulNet(cfg).eval()


def make_inputs(b: int = 8, w: int = 6, seed: int = 1) -> dict[str, Any]:
    return model_inputs(b, w, seed)


def test_relations_split_speakers_and_time_and_respect_causality() -> None:
    speakers = torch.tensor([[0, 1, 0, 1, 1]])
    valid = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])  # first column is padding
    target = torch.tensor([3])
    causal = relations(WindowContext(valid, speakers, target, causal=True))[0]  # (R, W, W)
    full = relations(WindowContext(valid, speakers, target, causal=False))[0]
    assert causal[2:].sum() == 0  # no future relations at all when causal
    assert full[2:].sum() > 0
    # every allowed ordered pair i != j of real utterances is in exactly one relation
    eye = torch.eye(5)
    pair = valid[0][:, None] * valid[0][None, :] * (1 - eye)
    torch.testing.assert_close(full.sum(0), pair)
    assert full[:, 0].sum() == 0 and full[:, :, 0].sum() == 0  # padding has no edges
    assert causal[0, 3, 1] == 1  # 3 <- 1: same speaker, past
    assert causal[1, 3, 2] == 1  # 3 <- 2: other speaker, past
    assert full[3, 1, 2] == 1  # 1 <- 2: other speaker, future


def test_gate_ignores_absent_modalities_per_utterance() -> None:
    net = make_net()
    x = make_inputs()
    x["present"][:, :, 1] = 0.0  # no audio anywhere
    base = net(**forward_kwargs(x))
    torch.testing.assert_close(base["weights"][:, 0], torch.ones(8))
    x["audio"] = torch.randn_like(x["audio"]) * 100  # garbage in an absent slot changes nothing
    torch.testing.assert_close(net(**forward_kwargs(x))["logits"], base["logits"])


def test_gate_weights_follow_presence_at_target_not_context() -> None:
    net = make_net()
    x = make_inputs()
    x["present"][0, -1, 1] = 0.0  # target of window 0 without audio
    x["present"][1, :-1, 1] = 0.0  # window 1: audio only at the target
    w = net(**forward_kwargs(x))["weights"].detach()
    assert w[0, 1] == 0.0 and w[0, 0] == pytest.approx(1.0)
    assert 0.0 < w[1, 1] < 1.0


def test_eval_forward_is_deterministic_and_views_are_random() -> None:
    net = make_net()
    x = make_inputs()
    torch.testing.assert_close(net(**forward_kwargs(x))["logits"], net(**forward_kwargs(x))["logits"])
    enc = net.encode(**forward_kwargs(x))
    z1, z2 = net.views(enc)
    assert not torch.allclose(z1, z2)  # feature masking and edge drop differ between the views


def test_grace_loss_prefers_matching_views() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 16, generator=g)
    same = grace_loss(z, z + 0.01 * torch.randn(32, 16, generator=g), 0.2)
    shuffled = grace_loss(z, z[torch.randperm(32, generator=g)], 0.2)
    assert torch.isfinite(same) and same < shuffled
    assert grace_loss(z[:1], z[:1], 0.2) == 0.0  # one anchor: no negatives, no loss


def test_auxiliary_losses_decrease_with_training() -> None:
    net = make_net(dropout=0.0).train()
    x = make_inputs(b=12, w=4)
    y = torch.arange(12) % 7
    s = torch.zeros(12)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    first = {k: v.item() for k, v in net.training_loss(forward_kwargs(x), y, s).items()}
    for _ in range(25):
        losses = net.training_loss(forward_kwargs(x), y, s)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    last = {k: v.item() for k, v in net.training_loss(forward_kwargs(x), y, s).items()}
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
    assert last["fusion"] < 0.5 * first["fusion"], (first, last)
    assert last["contrastive"] < first["contrastive"], (first, last)
    assert last["ce"] < 0.5 * first["ce"], (first, last)


def test_contrastive_weight_zero_skips_views() -> None:
    net = make_net(w_contrastive=0.0).train()
    losses = net.training_loss(forward_kwargs(make_inputs()), torch.zeros(8, dtype=torch.long), torch.zeros(8))
    assert losses["contrastive"].item() == 0.0


def test_non_causal_target_uses_future_through_graph_and_transformer() -> None:
    x = make_inputs(w=7)
    x["target"] = torch.full((8,), 3, dtype=torch.long)
    y: dict[str, Any] = {k: (v.clone() if v is not None else None) for k, v in x.items()}
    y["text"][:, 4:] = torch.randn(8, 3, DT) * 3
    causal, future = make_net(causal=True), make_net(causal=False)
    torch.testing.assert_close(causal(**forward_kwargs(x))["logits"], causal(**forward_kwargs(y))["logits"])
    assert (future(**forward_kwargs(x))["logits"] - future(**forward_kwargs(y))["logits"]).abs().max() > 1e-4
