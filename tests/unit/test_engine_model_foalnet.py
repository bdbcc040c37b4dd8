"""Foal-Net engine: cross-modal fusion masking, hard-pair mining, align and match losses."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engines.models import forward_kwargs  # noqa: E402
from engines.models.foalnet import (  # noqa: E402
    FoalNet,
    FoalNetConfig,
    align_loss,
    hard_pairs,
    match_loss,
)
from tests.unit.model_inputs import DA, DT, make_inputs  # noqa: E402


def make_net(seed: int = 0, causal: bool = True, audio: bool = True, **kw: float) -> FoalNet:
    torch.manual_seed(seed)
    cfg = FoalNetConfig(text_dim=DT, audio_dim=DA if audio else 0, d_model=32, n_heads=4, causal=causal, **kw)
    return FoalNet(cfg).eval()


def test_text_only_model_has_no_fusion_and_full_text_weight() -> None:
    net = make_net(audio=False)
    assert len(net.fusion) == 0
    x = make_inputs()
    x["audio"] = None
    out = net(**forward_kwargs(x))
    assert out["logits"].shape == (4, 7)
    assert torch.all(out["weights"] == torch.tensor([1.0, 0.0, 0.0]))


def test_text_vector_hears_audio_through_cross_attention() -> None:
    """The fused text vector changes with the audio of an earlier utterance (fusion across the window)."""
    net = make_net()
    x = make_inputs()
    base = net(**forward_kwargs(x))
    x["audio"][:, 2] = torch.randn(4, DA) * 3
    after = net(**forward_kwargs(x))
    # score MLP input is the fused per-modality vector; compare the text column's aux head
    assert not torch.allclose(after["aux_logits"][:, 0], base["aux_logits"][:, 0])


def test_cross_attention_never_reads_absent_or_future_audio() -> None:
    net = make_net()
    x = make_inputs(w=7)
    x["target"] = torch.tensor([4, 4, 4, 4])
    x["present"][:, 1, 1] = 0.0  # utterance 1 has no audio
    base = net(**forward_kwargs(x))
    y = {k: (v.clone() if v is not None else None) for k, v in x.items()}
    y["audio"][:, 1] = 100.0  # garbage in an absent slot
    y["audio"][:, 5:] = torch.randn(4, 2, DA) * 3  # later utterances
    after = net(**forward_kwargs(y))
    torch.testing.assert_close(after["logits"], base["logits"])
    torch.testing.assert_close(after["aux_logits"][:, 0], base["aux_logits"][:, 0])


def test_hard_pairs_pick_least_similar_positive_and_most_similar_negative() -> None:
    rows = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.6], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    group = torch.zeros(5, dtype=torch.long)  # one modality: intra-modal pairs
    keep = torch.ones(5)
    pos, neg, has_pos, has_neg = hard_pairs(rows, labels, group, keep)
    assert int(pos[0]) == 2  # of rows 1 and 2 (label 0), row 2 is the least similar
    assert int(neg[0]) == 3  # of rows 3 and 4 (label 1), row 3 is the most similar
    assert int(pos[3]) == 4 and int(neg[4]) in (0, 1, 2)
    assert torch.all(has_pos == 1.0) and torch.all(has_neg == 1.0)
    keep[4] = 0.0  # row 4 dropped: row 3 has no positive left, row 4 counts for nothing
    _, neg, has_pos, has_neg = hard_pairs(rows, labels, group, keep)
    assert has_pos[3] == 0.0 and has_pos[4] == 0.0 and has_neg[4] == 0.0
    assert int(neg[0]) == 3


def test_hard_pairs_are_cross_modal_with_two_modalities() -> None:
    # rows: sample 0 text, sample 0 audio, sample 1 text, sample 1 audio
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.5, 0.5]])
    labels = torch.tensor([0, 0, 1, 1])
    group = torch.tensor([0, 1, 0, 1])
    pos, neg, has_pos, has_neg = hard_pairs(rows, labels, group, torch.ones(4))
    # row 0's nearest different-label row is row 2 (text), but only audio rows are candidates
    assert int(neg[0]) == 3 and int(pos[0]) == 1
    assert int(neg[1]) == 2 and int(pos[1]) == 0


def test_align_loss_counts_only_cross_modal_positives() -> None:
    y = torch.tensor([0, 1])
    present = torch.ones(2, 2)
    # each sample's text and audio coincide: perfectly aligned pairs, low loss
    z = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    good = align_loss(z, present, y, 0.1)
    # audio swapped between the samples: each text now sits on the other label's audio
    swapped = torch.stack([z[:, 0], z.flip(0)[:, 1]], dim=1)  # (2, 2, 2)
    bad = align_loss(swapped, present, y, 0.1)
    assert float(good) < 0.01 < float(bad)
    # with one modality it is plain supervised contrast: two same-label samples, finite
    z1 = torch.tensor([[[1.0, 0.0]], [[0.9, 0.1]], [[0.0, 1.0]]])
    assert torch.isfinite(align_loss(z1, torch.ones(3, 1), torch.tensor([0, 0, 1]), 0.1))


def test_auxiliary_losses_decrease_with_training() -> None:
    torch.manual_seed(0)
    net = make_net(dropout=0.0).train()
    g = torch.Generator().manual_seed(3)
    x = make_inputs(b=16, seed=3)
    y = torch.randint(0, 4, (16,), generator=g)
    x["text"][:, -1] += torch.nn.functional.one_hot(y, DT).float() * 3  # label visible at the target
    x["audio"][:, -1] += torch.nn.functional.one_hot(y, DA).float() * 3
    x["present"][0, -1, 1] = 0.0
    s = torch.zeros(16)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = {k: float(v.detach()) for k, v in net.training_loss(forward_kwargs(x), y, s).items()}
    for _ in range(60):
        losses = net.training_loss(forward_kwargs(x), y, s)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in net.training_loss(forward_kwargs(x), y, s).items()}
    for k in ("loss", "ce", "align", "match"):
        assert last[k] < first[k], (k, first[k], last[k])
    assert last["match"] < 0.5 * first["match"]


def test_match_loss_trains_the_match_head_and_the_encoder() -> None:
    net = make_net().train()
    x = make_inputs(b=8)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    out = net(**forward_kwargs(x))
    loss = match_loss(net, out["aligned"], out["present_t"], y)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert net.match[0].weight.grad is not None and net.match[0].weight.grad.abs().sum() > 0
    assert net.align[0].weight.grad is not None and net.align[0].weight.grad.abs().sum() > 0


def test_losses_finite_when_one_label_per_batch_or_no_audio() -> None:
    net = make_net().train()
    x = make_inputs(b=4)
    x["present"][:, :, 1] = 0.0  # no audio anywhere
    losses = net.training_loss(forward_kwargs(x), torch.zeros(4, dtype=torch.long), torch.zeros(4))
    for name, v in losses.items():
        assert torch.isfinite(v), name
    losses["loss"].backward()


def test_zero_loss_weights_switch_terms_off() -> None:
    net = make_net(align_weight=0.0, match_weight=0.0).train()
    losses = net.training_loss(forward_kwargs(make_inputs()), torch.tensor([0, 1, 0, 1]), torch.zeros(4))
    assert float(losses["align"].detach()) == 0.0 and float(losses["match"].detach()) == 0.0
