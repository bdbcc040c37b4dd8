"""UniMSE engine: gated adapters, gate-based modality weights, text-absent targets, InfoNCE, R-Drop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from engines.models import forward_kwargs  # noqa: E402
from engines.models.unimse import UniMSEConfig, UniMSENet  # noqa: E402

DT, DA, DV = 12, 10, 6


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one thread avoids oversubscription on a shared machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_net(seed: int = 0, train_adapters: bool = True, **kw: object) -> UniMSENet:
    torch.manual_seed(seed)
    values: dict[str, object] = {"text_dim": DT, "audio_dim": DA, "d_model": 32, "n_heads": 4, "n_layers": 2}
    values.update(kw)
    net = UniMSENet(UniMSEConfig(**values))  # type: ignore[arg-type]
    if train_adapters:  # adapters start as the identity (zero up-projection): give them weights
        for layer in net.adapters:
            for ad in layer.values():
                torch.nn.init.normal_(ad.up.weight, std=0.3)  # type: ignore[union-attr]
    return net.eval()


def make_inputs(b: int = 8, w: int = 6, seed: int = 1, video: bool = False) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    present = torch.ones(b, w, 3)
    if not video:
        present[..., 2] = 0.0
    return {
        "text": torch.randn(b, w, DT, generator=g),
        "audio": torch.randn(b, w, DA, generator=g),
        "video": torch.randn(b, w, DV, generator=g) if video else None,
        "present": present,
        "speakers": torch.randint(0, 3, (b, w), generator=g),
        "valid": torch.ones(b, w),
        "target": torch.full((b,), w - 1, dtype=torch.long),
    }


def clone(x: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    return {k: (v.clone() if v is not None else None) for k, v in x.items()}


def test_fresh_adapters_leave_the_text_path_unchanged() -> None:
    net = make_net(train_adapters=False)
    x = make_inputs()
    base = net(**forward_kwargs(x))["logits"]
    y = clone(x)
    y["audio"] = torch.randn_like(x["audio"]) * 5  # type: ignore[arg-type]
    torch.testing.assert_close(
        net(**forward_kwargs(y))["logits"], base
    )  # zero up-projection: audio injects nothing yet


def test_weights_are_the_normalised_adapter_gates() -> None:
    net = make_net()
    out = net(**forward_kwargs(make_inputs()))
    w = out["weights"].detach()
    torch.testing.assert_close(w.sum(1), torch.ones(8))
    assert torch.all(w[:, 2] == 0.0)
    # text has unit gate, audio its adapter gate g in (0, 1): w_audio / w_text = g < 1
    ratio = w[:, 1] / w[:, 0]
    assert torch.all(ratio > 0.0) and torch.all(ratio < 1.0)
    assert torch.all(w[:, 0] > 0.5)


def test_text_only_model_reports_all_weight_on_text() -> None:
    net = make_net(audio_dim=0)
    x = make_inputs()
    x["audio"] = None
    x["present"][3, -1, 0] = 0.0  # type: ignore[index]
    w = net(**forward_kwargs(x))["weights"].detach()
    assert torch.all(w[[0, 1, 2, 4, 5, 6, 7]] == torch.tensor([1.0, 0.0, 0.0]))
    assert torch.all(w[3] == 0.0)  # nothing the model reads is present at that target


def test_without_text_at_the_target_the_adapter_carries_the_signal() -> None:
    net = make_net()
    x = make_inputs()
    x["present"][:, -1, 0] = 0.0  # type: ignore[index]  # the targets have audio only
    out = net(**forward_kwargs(x))
    assert torch.all(out["weights"][:, 1] == 1.0) and torch.all(out["weights"][:, 0] == 0.0)
    y = clone(x)
    y["text"][:, -1] = torch.randn(8, DT) * 5  # type: ignore[index]  # absent text: ignored
    torch.testing.assert_close(net(**forward_kwargs(y))["logits"], out["logits"])
    y["audio"][:, -1] = torch.randn(8, DA) * 5  # type: ignore[index]  # its audio: used
    assert not torch.allclose(net(**forward_kwargs(y))["logits"], out["logits"])


def test_absent_audio_injects_nothing() -> None:
    net = make_net()
    x = make_inputs()
    x["present"][:, :, 1] = 0.0  # type: ignore[index]
    base = net(**forward_kwargs(x))
    y = clone(x)
    y["audio"] = torch.randn_like(x["audio"]) * 100  # type: ignore[arg-type]
    torch.testing.assert_close(net(**forward_kwargs(y))["logits"], base["logits"])
    assert torch.all(base["weights"][:, 0] == 1.0)


def test_context_audio_reaches_the_target_only_through_an_earlier_adapter_layer() -> None:
    x = make_inputs()
    y = clone(x)
    y["audio"][:, 2] = torch.randn(8, DA) * 5  # type: ignore[index]  # an earlier utterance's audio
    last_only = make_net(adapter_layers=1)  # adapter after the last block: nothing attends after it
    torch.testing.assert_close(last_only(**forward_kwargs(y))["logits"], last_only(**forward_kwargs(x))["logits"])
    both = make_net(adapter_layers=2)  # injected after block 1, block 2 carries it to the target
    assert not torch.allclose(both(**forward_kwargs(y))["logits"], both(**forward_kwargs(x))["logits"])


def test_three_modalities_and_a_missing_video_at_the_target() -> None:
    net = make_net(video_dim=DV)
    x = make_inputs(video=True)
    x["present"][0, -1, 2] = 0.0  # type: ignore[index]
    w = net(**forward_kwargs(x))["weights"].detach()
    torch.testing.assert_close(w.sum(1), torch.ones(8))
    assert w[0, 2] == 0.0 and torch.all(w[1:] > 0.0)


def test_contrastive_terms_only_count_text_audio_pairs() -> None:
    net = make_net(video_dim=DV).train()
    x = make_inputs(video=True)
    y = torch.arange(8) % 7
    s = torch.zeros(8)
    losses = net.training_loss(forward_kwargs(x), y, s)
    assert set(losses) >= {"loss", "ce", "sentiment", "nce_audio", "nce_video"}
    for name, v in losses.items():
        assert torch.isfinite(v), name
    assert losses["nce_audio"] > 0 and losses["nce_video"] > 0
    x["present"][:, -1, 2] = 0.0  # type: ignore[index]  # no target has video: no text-video pairs
    assert net.training_loss(forward_kwargs(x), y, s)["nce_video"] == 0.0


def test_info_nce_aligns_text_and_audio_of_the_same_utterance() -> None:
    net = make_net(dropout=0.0).train()
    x = make_inputs(b=16, seed=3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        nce = net.contrastive_terms(net(**forward_kwargs(x)))["nce_audio"]
        first = float(nce.detach()) if first is None else first
        opt.zero_grad()
        nce.backward()
        opt.step()
    assert float(nce.detach()) < 0.5 * first


def test_sentiment_head_learns_intensity() -> None:
    net = make_net(dropout=0.0, w_contrast_audio=0.0).train()
    x = make_inputs(b=16, seed=4)
    s = torch.linspace(-1, 1, 16)
    y = torch.zeros(16, dtype=torch.long)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = float(net.training_loss(forward_kwargs(x), y, s)["sentiment"].detach())
    for _ in range(60):
        loss = net.training_loss(forward_kwargs(x), y, s)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = net.eval()(**forward_kwargs(x))
    assert torch.all(out["sentiment"].abs() <= 1.0)
    assert float(torch.nn.functional.mse_loss(out["sentiment"], s).detach()) < 0.3 * first


def test_rdrop_adds_a_consistency_term_between_two_dropout_views() -> None:
    net = make_net(rdrop=1.0, dropout=0.3).train()
    losses = net.training_loss(forward_kwargs(make_inputs()), torch.arange(8) % 7, torch.zeros(8))
    assert "rdrop" in losses and float(losses["rdrop"].detach()) > 0.0
    losses["loss"].backward()
    assert net.proj["text"].net[0].weight.grad is not None  # type: ignore[index]
    assert "rdrop" not in make_net().train().training_loss(
        forward_kwargs(make_inputs()), torch.arange(8) % 7, torch.zeros(8)
    )


def test_text_alone_loss_is_the_ce_of_a_pass_without_audio_on_targets_with_text() -> None:
    net = make_net(w_text_alone=0.5)  # eval mode: both passes deterministic
    x = make_inputs()
    x["present"][0, -1, 0] = 0.0  # type: ignore[index]  # target 0 has no text: it does not count
    labels = torch.arange(8) % 7
    losses = net.training_loss(forward_kwargs(x), labels, torch.zeros(8))
    hidden = clone(x)
    hidden["present"][..., 1] = 0.0  # type: ignore[index]
    logits = net(**forward_kwargs(hidden))["logits"]
    want = torch.nn.functional.cross_entropy(logits[1:], labels[1:], label_smoothing=net.cfg.label_smoothing)
    assert torch.allclose(losses["ce_text_alone"], want, atol=1e-6)
    base = make_net().training_loss(forward_kwargs(x), labels, torch.zeros(8))
    assert "ce_text_alone" not in base
    assert torch.allclose(losses["loss"], base["loss"] + 0.5 * want, atol=1e-5)
    assert not torch.allclose(logits, net(**forward_kwargs(x))["logits"])  # the audio did change the fused pass


def test_audio_without_adapter_layers_is_refused_with_a_clear_error() -> None:
    """Audio and video enter the text stream through the adapters: with none, the forward pass
    had no gate to weigh them by and failed inside torch.stack; the config says why instead."""
    with pytest.raises(ValueError, match="adapter_layers=0 leaves audio unused"):
        UniMSEConfig(text_dim=8, audio_dim=4, adapter_layers=0)
    UniMSENet(UniMSEConfig(text_dim=8, audio_dim=0, adapter_layers=0))  # text alone needs none
    from engines.errors import ArtifactError
    from engines.models import build_model

    with pytest.raises(ArtifactError, match="adapter_layers >= 1"):  # what `train --set` prints as its error
        build_model("unimse", {"text_dim": 8, "audio_dim": 4, "adapter_layers": 0})
