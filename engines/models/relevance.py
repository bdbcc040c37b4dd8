"""Multimodal relevance estimation network (after arXiv 2302.01555), ONNX-exportable.

Per utterance, each modality is normalised (statistics fit on train, stored as buffers) and
projected to a shared size ``d``. A speaker-aware transformer runs over the window for each
modality separately (modalities are folded into the batch: one set of weights, a modality
embedding tells them apart). Keys are restricted to utterances where that modality is present,
to real (non-padding) utterances and, when ``causal``, to positions not after the query, so the
target never sees the future. Speakers enter as a window-local speaker embedding, a
"same speaker as the target" embedding and a per-head attention bias for same-speaker pairs.

At the target, relevance attention scores each modality's contextual vector; a softmax over the
modalities *present at the target* gives one weight per modality (absent ones get exactly 0).
The weighted sum feeds the emotion head (7 logits) and a tanh sentiment head. Auxiliary heads
predict the label from each modality alone (weak supervision of relevance), and per-modality
projections feed a category-level cross-modal contrastive loss (see ``losses.py``).

With ``agreement`` (off by default; artifacts trained before it load and behave as before) the
scorer of modality m also sees whether m agrees with the others: its own head's predicted
distribution p_m, the mean q_m of the other present modalities' distributions, p_m * q_m and
sum_c p_m q_m (the chance the two name the same emotion), all detached so the per-modality heads
stay honest single-modality predictors. Each head reads its modality's contextual vector, so the
agreement is with the words *and* the dialogue context. A score computed from m's own features
alone cannot tell a clip of another emotion from a clean one (both are real, confident speech);
the agreement terms can, once ``emostream train --corrupt-train RATE`` has shown it such clips.
``sharpness`` k (default 1) makes the fusion weights softmax(k * score) while the relevance loss
still fits softmax(score) to its target: the estimate stays calibrated, fusion commits harder to
the modality it believes (a calibrated posterior of "this clip contradicts" is too timid a weight).

Only dense ops (matmul, masks, one-hot selection): no scatter, dynamic batch and window axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from engines.interface import EMOTIONS, MODALITIES
from engines.models.common import NEG, WindowEmbedder
from engines.models.config import ModelConfig


@dataclass
class RelevanceConfig(ModelConfig):
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.2
    max_speakers: int = 8  # window-local speaker ids at or above this share the last embedding
    max_window: int = 12  # relative positions are clamped to +-max_window
    causal: bool = True
    n_classes: int = len(EMOTIONS)
    proj_dim: int = 64  # contrastive projection size
    loss: dict[str, float] = field(default_factory=dict)  # LossWeights overrides
    agreement: bool = False  # relevance scorer also sees cross-modal agreement of the heads' predictions
    sharpness: float = 1.0  # fusion weights = softmax(sharpness * relevance score); 1 = the estimate itself


class SpeakerAttention(nn.Module):
    """Multi-head self-attention with an additive mask and a same-speaker bias per head."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        assert d % n_heads == 0, (d, n_heads)
        self.h, self.dh = n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.same_speaker = nn.Parameter(torch.zeros(n_heads))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask_bias: Tensor, same: Tensor) -> Tensor:
        n, w, d = x.shape  # (N, W, d), N = B * M
        qkv = self.qkv(x).reshape(n, w, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # (3, N, H, W, dh)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = q @ k.transpose(-1, -2) / (self.dh**0.5)  # (N, H, W, W)
        scores = scores + mask_bias[:, None] + same[:, None] * self.same_speaker[None, :, None, None]
        attn = self.drop(torch.softmax(scores, dim=-1))
        y = (attn @ v).transpose(1, 2).reshape(n, w, d)  # (N, W, d)
        return self.out(y)


class Block(nn.Module):
    def __init__(self, cfg: RelevanceConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d)
        self.attn = SpeakerAttention(d, cfg.n_heads, cfg.dropout)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(
            nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ff_mult * d, d)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask_bias: Tensor, same: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask_bias, same))  # (N, W, d)
        return x + self.drop(self.ff(self.ln2(x)))


class RelevanceNet(WindowEmbedder, nn.Module):
    """``forward(features, present, speakers, valid, target) -> dict of tensors``.

    Inputs follow :class:`engines.interface.EngineBatch` (inputs of modalities with size 0 are
    ignored and may be ``None``). Outputs: ``logits`` (B, C), ``sentiment`` (B,), ``weights``
    (B, 3), and for the losses ``aux_logits`` (B, M, C), ``embeddings`` (B, M, P), ``present_t``
    (B, M) over the model's active modalities M.
    """

    def __init__(self, cfg: RelevanceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.active = cfg.active()
        assert self.active, "a model needs at least one modality"
        d = cfg.d_model
        self.init_projectors()
        self.modality_emb = nn.Parameter(torch.zeros(len(self.active), d))
        self.init_places()
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.rel_key = nn.Linear(d, d)
        self.rel_query = nn.Linear(d, d, bias=False)
        self.rel_score = nn.Linear(d, 1, bias=False)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, cfg.n_classes))
        self.sent_head = nn.Linear(d, 1)
        self.aux_heads = nn.ModuleList([nn.Linear(d, cfg.n_classes) for _ in self.active])
        self.contrast = nn.ModuleList([nn.Linear(d, cfg.proj_dim) for _ in self.active])
        nn.init.normal_(self.modality_emb, std=0.02)
        self.agree: nn.Module | None = None
        if cfg.agreement:
            n_c = cfg.n_classes
            self.agree = nn.Sequential(nn.Linear(3 * n_c + 2, d), nn.GELU(), nn.Linear(d, d))

    #: training_loss reads ``inputs["audio_label"]`` (B,): the emotion of the target's clip
    accepts_audio_label = True

    def training_loss(self, inputs: dict[str, Any], labels: Tensor, sentiment: Tensor) -> dict[str, Tensor]:
        from engines.models.losses import LossWeights, total_loss

        inputs = dict(inputs)
        audio_label = inputs.pop("audio_label", None)  # training-only: set by --corrupt-train
        y_heads = None
        if audio_label is not None and 1 in self.active:
            y_heads = labels[:, None].repeat(1, len(self.active))  # (B, M)
            y_heads[:, self.active.index(1)] = audio_label
        return total_loss(self(**inputs), labels, sentiment, LossWeights(**self.cfg.loss), y_heads)

    def forward(
        self,
        features: Mapping[str, Tensor | None],
        present: Tensor,
        speakers: Tensor,
        valid: Tensor,
        target: Tensor,
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        b, w = valid.shape
        assert present.shape[-1] == len(MODALITIES), present.shape
        valid = valid.float()
        pos = torch.cumsum(torch.ones_like(valid), dim=1) - 1.0  # (B, W) 0..W-1
        onehot = (pos == target[:, None].float()).float()  # (B, W) selects the target

        spk_t = (onehot * speakers.float()).sum(1, keepdim=True)  # (B, 1)
        same_t = (speakers.float() == spk_t).long()  # (B, W)
        ctx = self.place(speakers, same_t, target[:, None].float() - pos)  # (B, W, d)

        same_pair = (speakers[:, :, None] == speakers[:, None, :]).float()  # (B, W, W)
        allowed_base = valid[:, None, :] * valid[:, :, None]  # (B, W, W)
        if cfg.causal:
            allowed_base = allowed_base * (pos[:, :, None] >= pos[:, None, :]).float()
        eye = (pos[:, :, None] == pos[:, None, :]).float()  # (B, W, W)

        z = self.project(features)
        hs, biases = [], []
        for j, m in enumerate(self.active):
            assert z[m].shape[:2] == (b, w), (MODALITIES[m], z[m].shape)
            pm = present[:, :, m] * valid  # (B, W)
            h = z[m] * pm[..., None]  # (B, W, d), absent -> 0
            hs.append(h + ctx + self.modality_emb[j])
            allowed = torch.clamp(allowed_base * pm[:, None, :] + eye, max=1.0)  # (B, W, W)
            biases.append((1.0 - allowed) * NEG)
        n_m = len(self.active)
        h = torch.stack(hs, dim=1).reshape(b * n_m, w, cfg.d_model)  # (B*M, W, d)
        bias = torch.stack(biases, dim=1).reshape(b * n_m, w, w)  # (B*M, W, W)
        same = same_pair[:, None].expand(b, n_m, w, w).reshape(b * n_m, w, w)
        for blk in self.blocks:
            h = blk(h, bias, same)
        h = self.ln_f(h).reshape(b, n_m, w, cfg.d_model)  # (B, M, W, d)
        c = (h * onehot[:, None, :, None]).sum(2)  # (B, M, d) target vectors

        present_t = torch.stack([(present[:, :, m] * valid * onehot).sum(1) for m in self.active], dim=1)  # (B, M)
        query = (c * present_t[..., None]).sum(1) / present_t.sum(1, keepdim=True).clamp(min=1.0)  # (B, d)
        aux = torch.stack([hd(c[:, j]) for j, hd in enumerate(self.aux_heads)], dim=1)  # (B, M, C)
        key = self.rel_key(c) + self.rel_query(query)[:, None]  # (B, M, d)
        if self.agree is not None:
            key = key + self.agree(agreement_features(aux, present_t))
        score = self.rel_score(torch.tanh(key))[..., 0]  # (B, M)
        score = score + (1.0 - present_t) * NEG
        relevance = _present_softmax(score, present_t)  # (B, M) the relevance estimate, 0 where absent
        weights = relevance if cfg.sharpness == 1.0 else _present_softmax(cfg.sharpness * score, present_t)
        fused = (weights[..., None] * c).sum(1)  # (B, d)

        logits = self.head(fused)  # (B, C)
        sentiment = torch.tanh(self.sent_head(fused))[:, 0]  # (B,)
        emb = torch.stack([pr(c[:, j]) for j, pr in enumerate(self.contrast)], dim=1)  # (B, M, P)

        cols = []
        j = 0
        for m in range(len(MODALITIES)):
            if m in self.active:
                cols.append(weights[:, j])
                j += 1
            else:
                cols.append(torch.zeros_like(weights[:, 0]))
        return {
            "logits": logits,
            "sentiment": sentiment,
            "weights": torch.stack(cols, dim=1),  # (B, 3)
            "weights_active": weights,  # (B, M)
            "relevance_active": relevance,  # (B, M) what the relevance loss trains (= weights unless sharpened)
            "aux_logits": aux,
            "embeddings": emb,
            "present_t": present_t,
        }


def _present_softmax(score: Tensor, present: Tensor) -> Tensor:
    """Softmax of (B, M) scores over the present modalities (score already has NEG where absent)."""
    e = torch.exp(score - score.max(dim=1, keepdim=True).values) * present  # (B, M)
    return e / e.sum(1, keepdim=True).clamp(min=1e-12)


def agreement_features(aux_logits: Tensor, present: Tensor) -> Tensor:
    """Per modality, how its head's prediction relates to the other present modalities' ones.

    aux_logits (B, M, C), present (B, M) 0/1 -> (B, M, 3C + 2): p_m, q_m (mean of the others'
    distributions), p_m * q_m, sum_c p_m q_m, and 1 if any other modality is present (all zero
    without one). Detached: the scorer reads the heads, it does not train them.
    """
    p = torch.softmax(aux_logits.detach(), dim=-1) * present[..., None]  # (B, M, C), 0 where absent
    n_other = present.sum(1, keepdim=True) - present  # (B, M) other present modalities
    has_other = (n_other > 0.5).float()  # (B, M)
    q = (p.sum(1, keepdim=True) - p) / n_other.clamp(min=1.0)[..., None]  # (B, M, C)
    q = q * (present * has_other)[..., None]
    both = p * q  # (B, M, C)
    agree = both.sum(-1, keepdim=True)  # (B, M, 1)
    return torch.cat([p, q, both, agree, (present * has_other)[..., None]], dim=-1)


# the names every model module provides (engines.models)
Config = RelevanceConfig
Net = RelevanceNet
