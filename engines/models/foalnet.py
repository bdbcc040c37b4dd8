"""Foal-Net ("align before fuse", Interspeech 2024) as a causal conversational engine, ONNX-exportable.

Architecture (per window of W utterances, B windows, M = the model's active modalities):

1. **Per-utterance modality vectors.** Each modality is normalised with train-set statistics
   (buffers) and projected to ``d`` (:class:`~engines.models.common.Projector`); absent
   utterance-modalities are zeroed. The paper pools frame-level audio and video into utterance
   vectors; our inputs already are pooled utterance vectors (frozen sentence embeddings, clip
   functionals), so the projector is the pooling stage.
2. **Causal window context (added; not in the paper).** Foal-Net classifies isolated clips. To work
   as a conversational engine each modality runs through a speaker-aware transformer over the
   window (modalities folded into the batch, shared weights, a modality embedding): speaker,
   "same speaker as the target" and relative-position embeddings plus a learned per-head bias for
   same-speaker pairs. Keys are the utterances where that modality is present and, with
   ``causal``, never after the query, so no utterance (the target included) sees a later one.
   Non-causal models (``--future K``) use the future utterances the window holds.
3. **Align.** The target's contextual vector of each modality goes through a projection head and a
   supervised contrastive loss (same-label pairs positive) aligns the modalities *before* fusion:
   with two or more modalities only cross-modal pairs count (the paper's audio-video alignment);
   a text-only model falls back to intra-modal supervised contrast over the batch.
4. **Fuse.** Cross-attention fusion: every utterance of modality m attends to the *other*
   modalities' utterances of the window (same causal mask, keys only where present), followed by
   a feed-forward layer; ``fusion_layers`` such blocks. With a single modality there is nothing
   to attend to and the fusion attention is skipped (it would only add a zero).
5. **Per-modality weights and heads.** A small MLP scores each modality's fused target vector; a
   softmax over the modalities *present at the target* gives the ``weights`` output. The
   emotion head (logits) and the tanh sentiment head read the weighted sum of the fused vectors.
6. **Label matching (auxiliary, training only).** A head reads a pair of aligned target vectors
   ``[u, v, |u - v|, u * v]`` and predicts whether the two samples share an emotion; per anchor it
   sees its hardest positive (least similar same-label sample of another modality, or of the same
   modality but another utterance for a single-modality model) and its hardest negative (most
   similar different-label sample), as the paper mines hard negatives.

Loss = CE + ``align_weight`` * supcon + ``match_weight`` * BCE (paper: 1 and 0.1) +
``sentiment_weight`` * MSE(sentiment) + ``aux_weight`` * CE of each present modality's own head
(the service calls with any subset of modalities, so each must classify alone).

What ``weights`` means here: how much each modality's fused (context- and cross-modal-attended)
target vector contributes to the vector the emotion head reads. They are learned end to end with
no relevance target: a share of the fused representation, not a calibrated confidence. Exactly 0
for modalities absent at the target, summing to 1 over the present ones.

Adapted for a causal stream on small frozen features, and why: the paper aligns and fuses
frame-level audio and video of one clip with large encoders trained end to end; here the inputs
are frozen per-utterance vectors (MiniLM text, audio functionals; video when a feed has it), the
target must be labelled from past context only, and any subset of modalities may arrive. So the
encoders are small projectors plus a causal window transformer, alignment and fusion act on
utterance vectors across the window instead of frames within a clip, text is a modality like the
others, and auxiliary per-modality heads plus the trainer's modality dropout keep every single
modality usable. On these data (dev, a few seeds) the align and match terms neither helped nor
hurt measurably (MELD text, IEMOCAP text, the MELD+RAVDESS composite); they are kept at the
paper's weights, and ``--set align_weight=0 --set match_weight=0`` turns them off.

Only dense ops (matmul, masks, one-hot selection); dynamic batch and window axes. Hard-example
mining lives in ``training_loss`` and is never exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.interface import EMOTIONS, MODALITIES
from engines.models.common import (
    NEG,
    Block,
    WindowContext,
    WindowEmbedder,
    expand_weights,
    masked_softmax,
    supcon,
)
from engines.models.config import ModelConfig
from engines.models.losses import modality_ce


@dataclass
class FoalNetConfig(ModelConfig):
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2  # context (window) layers per modality
    fusion_layers: int = 1  # cross-modal attention blocks
    ff_mult: int = 2
    dropout: float = 0.2  # transformer blocks (the shared --dropout)
    proj_dropout: float | None = None  # inside the modality projectors; None: ``dropout``
    head_dropout: float | None = None  # emotion head; None: ``dropout``
    max_speakers: int = 8  # window-local speaker ids at or above this share the last embedding
    max_window: int = 12  # relative positions are clamped to +-max_window
    causal: bool = True
    n_classes: int = len(EMOTIONS)
    proj_dim: int = 64  # alignment projection size
    # loss weights (paper: CE + align + 0.1 match)
    align_weight: float = 1.0
    match_weight: float = 0.1
    sentiment_weight: float = 0.2
    aux_weight: float = 0.3
    align_temperature: float = 0.1
    label_smoothing: float = 0.05


class FoalNet(WindowEmbedder, nn.Module):
    """``forward(features, present, speakers, valid, target) -> dict of tensors``.

    Outputs: ``logits`` (B, C), ``sentiment`` (B,), ``weights`` (B, 3); for the losses
    ``weights_active`` (B, M), ``aux_logits`` (B, M, C), ``aligned`` (B, M, P) and ``present_t``
    (B, M) over the active modalities M.
    """

    #: with no modality present at the target its output is one constant whatever the window holds:
    #: the heads read only the target's fused vectors, weighted over the modalities present there
    #: (none: weights 0, the heads read a zero vector). The voice gate's words network relies on it
    #: (:func:`engines.trust.wrap` computes that coalition on one row); a test checks it.
    constant_without_target = True

    def __init__(self, cfg: FoalNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.active = cfg.active()
        assert self.active, "a model needs at least one modality"
        d = cfg.d_model
        h_drop = cfg.dropout if cfg.head_dropout is None else cfg.head_dropout
        self.init_projectors(cfg.proj_dropout)
        self.modality_emb = nn.Parameter(torch.randn(len(self.active), d) * 0.02)
        self.init_places()
        self.same_bias = nn.Parameter(torch.zeros(cfg.n_layers, cfg.n_heads))
        self.context = nn.ModuleList([Block(d, cfg.n_heads, cfg.dropout, cfg.ff_mult) for _ in range(cfg.n_layers)])
        self.ln_ctx = nn.LayerNorm(d)
        n_fuse = cfg.fusion_layers if len(self.active) > 1 else 0
        self.fusion = nn.ModuleList([Block(d, cfg.n_heads, cfg.dropout, cfg.ff_mult) for _ in range(n_fuse)])
        self.ln_fused = nn.LayerNorm(d)
        self.align = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.proj_dim))
        self.match = nn.Sequential(nn.Linear(4 * cfg.proj_dim, d), nn.GELU(), nn.Linear(d, 1))
        self.score = nn.Sequential(nn.Linear(d, d // 2), nn.Tanh(), nn.Linear(d // 2, 1))
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(h_drop), nn.Linear(d, cfg.n_classes))
        self.sent_head = nn.Linear(d, 1)
        self.aux_heads = nn.ModuleList([nn.Linear(d, cfg.n_classes) for _ in self.active])

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
        n_m, d = len(self.active), cfg.d_model
        assert present.shape[-1] == len(MODALITIES), present.shape
        ctx = WindowContext(valid, speakers, target, cfg.causal)
        pos_e = self.place(speakers, ctx.same_t, ctx.rel)  # (B, W, d)

        z = self.project(features)
        hs, pms = [], []
        for j, m in enumerate(self.active):
            assert z[m].shape[:2] == (b, w), (MODALITIES[m], z[m].shape)
            pm = present[:, :, m] * ctx.valid  # (B, W)
            hs.append(z[m] * pm[..., None] + pos_e + self.modality_emb[j])  # (B, W, d)
            pms.append(pm)
        pres = torch.stack(pms, dim=1)  # (B, M, W)

        # 2. causal, speaker-aware window context per modality (modalities folded into the batch)
        h = torch.stack(hs, dim=1).reshape(b * n_m, w, d)  # (B*M, W, d)
        allowed = ctx.allowed[:, None] * pres[:, :, None, :]  # (B, M, W, W) keys where present
        allowed = allowed.reshape(b * n_m, w, w)
        same = ctx.same[:, None].expand(b, n_m, w, w).reshape(b * n_m, 1, w, w)  # (B*M, 1, W, W)
        for i, blk in enumerate(self.context):
            h = blk(h, allowed, bias=same * self.same_bias[i][None, :, None, None])
        h = self.ln_ctx(h).reshape(b, n_m, w, d)  # (B, M, W, d)
        c = (h * ctx.onehot[:, None, :, None]).sum(2)  # (B, M, d) target vectors before fusion

        # 4. cross-attention fusion: modality m attends to the other modalities across the window
        if len(self.fusion) > 0:
            kv_keep = pres[:, None, :, None, :] * (1.0 - torch.eye(n_m, device=h.device))[None, :, :, None, None]
            # (B, Mq, Mk, 1, W) keys: other modalities, present
            cross = ctx.allowed[:, None, None] * kv_keep  # (B, Mq, Mk, W, W)
            cross = cross.permute(0, 1, 3, 2, 4).reshape(b * n_m, w, n_m * w)  # (B*M, W, M*W)
            z = h.reshape(b * n_m, w, d)
            for blk in self.fusion:
                kv = z.reshape(b, 1, n_m * w, d).expand(b, n_m, n_m * w, d).reshape(b * n_m, n_m * w, d)
                z = blk(z, cross, kv=kv)
            h = z.reshape(b, n_m, w, d)
        f = self.ln_fused((h * ctx.onehot[:, None, :, None]).sum(2))  # (B, M, d) fused target vectors

        # 5. per-modality weights over the modalities present at the target
        present_t = (pres * ctx.onehot[:, None, :]).sum(2)  # (B, M)
        weights = masked_softmax(self.score(f)[..., 0], present_t, dim=1)  # (B, M)
        fused = (weights[..., None] * f).sum(1)  # (B, d)
        logits = self.head(fused)  # (B, C)
        sentiment = torch.tanh(self.sent_head(fused))[:, 0]  # (B,)
        aux = torch.stack([hd(f[:, j]) for j, hd in enumerate(self.aux_heads)], dim=1)  # (B, M, C)
        return {
            "logits": logits,
            "sentiment": sentiment,
            "weights": expand_weights(weights, self.active),  # (B, 3)
            "weights_active": weights,
            "aux_logits": aux,
            "aligned": self.align(c),  # (B, M, P)
            "present_t": present_t,
        }

    def training_loss(self, inputs: dict[str, Any], labels: Tensor, sentiment: Tensor) -> dict[str, Tensor]:
        return foal_loss(self, self(**inputs), labels, sentiment)


def pair_rows(z: Tensor, present: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flatten (B, M, P) aligned vectors into rows with label, modality group and keep flag."""
    b, n_m, p = z.shape
    rows = z.reshape(b * n_m, p)  # (N, P) row = sample * M + modality
    labels = y[:, None].expand(b, n_m).reshape(-1)  # (N,)
    group = torch.arange(n_m, device=z.device)[None, :].expand(b, n_m).reshape(-1)  # (N,)
    return rows, labels, group, present.reshape(-1)


def hard_pairs(rows: Tensor, labels: Tensor, group: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per anchor: index of its hardest positive and hardest negative, and whether each exists.

    Candidates: kept rows of another modality (if any row has one), never the anchor itself.
    Hardest positive: least similar row with the same label; hardest negative: most similar row
    with a different label (Foal-Net's hard negatives).
    """
    n = rows.shape[0]
    with torch.no_grad():
        zn = F.normalize(rows, dim=-1)
        sim = zn @ zn.T  # (N, N)
        cand = keep[:, None] * keep[None, :] * (1.0 - torch.eye(n, device=rows.device))
        if bool((group > 0).any()):
            cand = cand * (group[:, None] != group[None, :]).float()
        same = (labels[:, None] == labels[None, :]).float()
        pos_c, neg_c = cand * same, cand * (1.0 - same)
        pos = (sim - 10.0 * pos_c).argmin(1)  # (N,) least similar positive (masked rows pushed up)
        neg = (sim + 10.0 * neg_c).argmax(1)  # (N,) most similar negative
        has_pos = (pos_c.sum(1) > 0).float() * keep
        has_neg = (neg_c.sum(1) > 0).float() * keep
    return pos, neg, has_pos, has_neg


def match_loss(net: FoalNet, z: Tensor, present: Tensor, y: Tensor) -> Tensor:
    """BCE of the label-matching head on (anchor, hardest positive) and (anchor, hardest negative)."""
    rows, labels, group, keep = pair_rows(z, present, y)
    pos, neg, has_pos, has_neg = hard_pairs(rows, labels, group, keep)
    if float(has_pos.sum() + has_neg.sum()) < 1:
        return z.sum() * 0.0

    def logit(u: Tensor, v: Tensor) -> Tensor:
        return net.match(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))[:, 0]  # (N,)

    lp = F.binary_cross_entropy_with_logits(logit(rows, rows[pos]), torch.ones_like(has_pos), reduction="none")
    ln = F.binary_cross_entropy_with_logits(logit(rows, rows[neg]), torch.zeros_like(has_neg), reduction="none")
    return ((lp * has_pos).sum() + (ln * has_neg).sum()) / (has_pos.sum() + has_neg.sum())


def align_loss(z: Tensor, present: Tensor, y: Tensor, temp: float) -> Tensor:
    """Supervised contrastive alignment: cross-modal when there are two or more modalities."""
    rows, labels, group, keep = pair_rows(z, present, y)
    return supcon(rows, labels, keep, temp, group=group if z.shape[1] > 1 else None)


def foal_loss(net: FoalNet, out: dict[str, Tensor], y: Tensor, sentiment: Tensor) -> dict[str, Tensor]:
    """All loss terms and their weighted sum under ``"loss"``."""
    cfg = net.cfg
    ce = F.cross_entropy(out["logits"], y, label_smoothing=cfg.label_smoothing)
    sent = F.mse_loss(out["sentiment"], sentiment.float())
    present = out["present_t"]  # (B, M)
    aux = modality_ce(out["aux_logits"], y, present, cfg.label_smoothing)
    z = out["aligned"]
    align = align_loss(z, present, y, cfg.align_temperature) if cfg.align_weight > 0 else ce * 0.0
    match = match_loss(net, z, present, y) if cfg.match_weight > 0 else ce * 0.0
    loss = ce + cfg.align_weight * align + cfg.match_weight * match + cfg.sentiment_weight * sent + cfg.aux_weight * aux
    return {"loss": loss, "ce": ce, "align": align, "match": match, "sentiment": sent, "aux": aux}


__all__ = ["NEG", "Config", "FoalNet", "FoalNetConfig", "Net", "align_loss", "foal_loss", "hard_pairs", "match_loss"]

# the names every model module provides (engines.models)
Config = FoalNetConfig
Net = FoalNet
