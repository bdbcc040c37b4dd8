"""Training losses of the relevance network.

total = CE(emotion) + w_sent * MSE(sentiment)
        + w_aux * CE of each present modality's own head            (weak relevance supervision)
        + w_rel * KL(target relevance || predicted weights)          (relevance estimation)
        + w_con * category-level cross-modal contrastive loss

The relevance target is the softmax, over the modalities present at the target, of each
modality head's log-probability of the true label (detached): the modality that explains the
label best should get the most weight, a contradicting one the least.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossWeights:
    sentiment: float = 0.2
    aux: float = 0.5
    relevance: float = 0.1
    contrastive: float = 0.1
    label_smoothing: float = 0.05
    temperature: float = 0.1  # contrastive
    relevance_temperature: float = 1.0


def relevance_loss(aux_logits: Tensor, weights: Tensor, present: Tensor, y: Tensor, temp: float) -> Tensor:
    """KL(r || w) where r = softmax over present modalities of log p_m(y) / temp. Shapes (B, M, C), (B, M)."""
    logp = F.log_softmax(aux_logits.detach(), dim=-1)  # (B, M, C)
    logp_y = logp.gather(2, y[:, None, None].expand(-1, logp.shape[1], 1))[..., 0] / temp  # (B, M)
    logp_y = logp_y.masked_fill(present < 0.5, -1e4)
    r = torch.softmax(logp_y, dim=1) * present  # (B, M)
    keep = present.sum(1) > 1.5  # only meaningful with two or more modalities present
    if not bool(keep.any()):
        return weights.sum() * 0.0
    kl = (r * (torch.log(r.clamp(min=1e-8)) - torch.log(weights.clamp(min=1e-8)))).sum(1)  # (B,)
    return kl[keep].mean()


def cross_modal_contrastive(emb: Tensor, present: Tensor, y: Tensor, temp: float) -> Tensor:
    """Supervised (category-level) InfoNCE between every ordered pair of modalities.

    An anchor from modality a is pulled towards samples of modality b with the same label and
    pushed from those with other labels. emb (B, M, P), present (B, M), y (B,).
    """
    b, n_m, _ = emb.shape
    z = F.normalize(emb, dim=-1)
    same = (y[:, None] == y[None, :]).float()  # (B, B)
    losses = []
    for a in range(n_m):
        for c in range(n_m):
            if a == c:
                continue
            pa, pc = present[:, a], present[:, c]  # (B,)
            sim = z[:, a] @ z[:, c].T / temp  # (B, B)
            sim = sim.masked_fill(pc[None, :] < 0.5, -1e4)
            logprob = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # (B, B)
            pos = same * pc[None, :]  # (B, B)
            n_pos = pos.sum(1)
            ok = (pa > 0.5) & (n_pos > 0) & (pc.sum() > 1)
            if bool(ok.any()):
                per = -(logprob * pos).sum(1) / n_pos.clamp(min=1.0)  # (B,)
                losses.append(per[ok].mean())
    if not losses:
        return emb.sum() * 0.0
    return torch.stack(losses).mean()


def modality_ce(aux_logits: Tensor, y: Tensor, present: Tensor, label_smoothing: float) -> Tensor:
    """Mean cross-entropy of each modality's own head over the modalities present at the target.
    aux_logits (B, M, C), y (B,) or (B, M) (a label per modality), present (B, M)."""
    n_m = aux_logits.shape[1]
    y_m = y.reshape(-1) if y.dim() == 2 else y.repeat_interleave(n_m)  # (B * M,)
    aux_ce = F.cross_entropy(
        aux_logits.reshape(-1, aux_logits.shape[-1]),
        y_m,
        reduction="none",
        label_smoothing=label_smoothing,
    ).reshape(-1, n_m)  # (B, M)
    return (aux_ce * present).sum() / present.sum().clamp(min=1.0)


def total_loss(
    out: dict[str, Tensor], y: Tensor, sentiment: Tensor, w: LossWeights, y_heads: Tensor | None = None
) -> dict[str, Tensor]:
    """All loss terms and their weighted sum under ``"loss"``.

    ``y_heads`` (B, M): what each modality's own input shows, where it differs from the label
    (``--corrupt-train`` swaps in a clip of another emotion: the audio head learns that clip's
    emotion, not the utterance's). The relevance target still scores each head on ``y``.
    """
    ce = F.cross_entropy(out["logits"], y, label_smoothing=w.label_smoothing)
    sent = F.mse_loss(out["sentiment"], sentiment.float())
    present = out["present_t"]  # (B, M)
    aux_logits = out["aux_logits"]  # (B, M, C)
    n_m = aux_logits.shape[1]
    aux = modality_ce(aux_logits, y if y_heads is None else y_heads, present, w.label_smoothing)
    # Predicted relevance over the model's active modalities, in the same order as present_t (the
    # fusion weights unless the model sharpens them; the loss fits the unsharpened estimate).
    active_w = out.get("relevance_active", out["weights_active"])
    rel = relevance_loss(aux_logits, active_w, present, y, w.relevance_temperature)
    con = cross_modal_contrastive(out["embeddings"], present, y, w.temperature) if n_m > 1 else ce * 0.0
    loss = ce + w.sentiment * sent + w.aux * aux + w.relevance * rel + w.contrastive * con
    return {"loss": loss, "ce": ce, "sentiment": sent, "aux": aux, "relevance": rel, "contrastive": con}
