"""Building blocks shared by the engines (the window embedder every network opens with, normalising
projector, masks, attention, contrastive losses).

Everything here is dense (matmuls, masks, one-hot selection): no scatter, no data-dependent
control flow, so graphs export to ONNX with dynamic batch (B) and window (W) axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.interface import MODALITIES

NEG = -1e4  # additive mask value (finite: fully masked rows stay NaN-free)

__all__ = [
    "NEG",
    "Block",
    "MaskedAttention",
    "Projector",
    "WindowContext",
    "WindowEmbedder",
    "expand_weights",
    "info_nce",
    "masked_softmax",
    "sentiment_mse",
    "set_normaliser",
    "supcon",
    "window_context",
]


class Projector(nn.Module):
    """Normalise with fixed train statistics, then project one modality to ``d``.

    In training only: Gaussian noise (in normalised units) and feature masking on the input.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, in_dim: int, d: int, dropout: float, noise: float = 0.0, mask: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.noise = noise
        self.mask = nn.Dropout(mask)
        self.net = nn.Sequential(nn.Linear(in_dim, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d), nn.LayerNorm(d))

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std  # (B, W, D)
        if self.training and self.noise > 0:
            x = x + self.noise * torch.randn_like(x)
        return self.net(self.mask(x))  # (B, W, d)


def set_normaliser(proj: nn.ModuleDict, modality: str, mean: Tensor, std: Tensor) -> None:
    """Copy train-set statistics into a modality's :class:`Projector` buffers."""
    p = cast(Projector, proj[modality])
    assert mean.shape == p.mean.shape and std.shape == p.std.shape, (mean.shape, p.mean.shape)
    p.mean.copy_(mean)
    p.std.copy_(std.clamp(min=1e-6))


class WindowContext:
    """Positions, target selection and pair masks of a batch of windows (all float tensors)."""

    def __init__(self, valid: Tensor, speakers: Tensor, target: Tensor, causal: bool) -> None:
        valid = valid.float()  # (B, W)
        self.valid = valid
        self.pos = torch.cumsum(torch.ones_like(valid), dim=1) - 1.0  # (B, W) 0..W-1
        self.onehot = (self.pos == target[:, None].float()).float()  # (B, W) selects the target
        self.rel = target[:, None].float() - self.pos  # (B, W) > 0 before the target
        pi, pj = self.pos[:, :, None], self.pos[:, None, :]
        self.past = (pj < pi).float()  # (B, W, W) key strictly before query
        self.future = (pj > pi).float()  # (B, W, W)
        self.eye = (pj == pi).float()  # (B, W, W)
        self.same = (speakers[:, :, None] == speakers[:, None, :]).float()  # (B, W, W)
        pair = valid[:, :, None] * valid[:, None, :]  # (B, W, W)
        self.allowed = pair * (1.0 - self.future) if causal else pair  # (B, W, W) query i may see key j
        spk_t = (self.onehot * speakers.float()).sum(1, keepdim=True)  # (B, 1)
        self.same_t = (speakers.float() == spk_t).long()  # (B, W) same speaker as the target

    def at_target(self, x: Tensor) -> Tensor:
        """(B, W, ...) -> (B, ...) the target's row."""
        shape = self.onehot.shape + (1,) * (x.dim() - 2)
        return (x * self.onehot.reshape(shape)).sum(1)


def window_context(valid: Tensor, speakers: Tensor, target: Tensor, causal: bool) -> WindowContext:
    return WindowContext(valid, speakers, target, causal)


class WindowEmbedder:
    """The opening every engine's network shares (UniMSE, Foal-Net, Joyful, relevance): each
    modality's features normalised and projected to ``d_model`` (a :class:`Projector` per modality
    the network has), and each utterance's place in its window as the sum of three embeddings: its
    speaker (the index within the window), whether it is the target's speaker, and its distance to
    the target (negative after it).

    A mixin of the networks (``class UniMSENet(WindowEmbedder, nn.Module)``): its parameters are
    the network's own, under the names the shipped weights use (``proj.<modality>``,
    ``speaker_emb``, ``same_emb``, ``pos_emb``), and each network creates them where it always did
    (:meth:`init_projectors`, :meth:`init_places`), so a seed draws the same initial weights.
    Needs ``self.cfg`` (``d_model``, ``dropout``, ``max_speakers``, ``max_window``, ``dims()``,
    ``input_noise``, ``input_mask``) and ``self.active``."""

    cfg: Any
    active: list[int]
    proj: nn.ModuleDict
    speaker_emb: nn.Embedding
    same_emb: nn.Embedding
    pos_emb: nn.Embedding

    def init_projectors(self, dropout: float | None = None) -> None:
        """``proj``: a :class:`Projector` per active modality (``dropout``: the config's if None)."""
        cfg, dims = self.cfg, self.cfg.features.sizes
        p = cfg.dropout if dropout is None else dropout
        self.proj = nn.ModuleDict(
            {
                MODALITIES[m]: Projector(dims[m], cfg.d_model, p, cfg.input_noise[m], cfg.input_mask[m])
                for m in self.active
            }
        )

    def init_places(self) -> None:
        """The speaker, same-speaker and distance embeddings of :meth:`place`."""
        cfg = self.cfg
        self.speaker_emb = nn.Embedding(cfg.max_speakers, cfg.d_model)
        self.same_emb = nn.Embedding(2, cfg.d_model)
        self.pos_emb = nn.Embedding(2 * cfg.max_window + 1, cfg.d_model)

    def set_normaliser(self, modality: str, mean: Tensor, std: Tensor) -> None:
        """Train-set statistics of a modality's features, kept as its projector's buffers."""
        set_normaliser(self.proj, modality, mean, std)

    def project(self, features: Mapping[str, Tensor | None]) -> dict[int, Tensor]:
        """Each active modality's features (modality name -> (B, W, D), None for one the network
        does not read), normalised and projected: modality index -> (B, W, d). Per position
        (presence is the caller's to apply), so windows or copies of them can share it."""
        out: dict[int, Tensor] = {}
        for m in self.active:
            x = features.get(MODALITIES[m])
            assert x is not None, MODALITIES[m]
            out[m] = self.proj[MODALITIES[m]](x)
        return out

    def place(self, speakers: Tensor, same_t: Tensor, rel: Tensor) -> Tensor:
        """(B, W, d): each utterance's place in its window. ``speakers`` (B, W) window-local speaker
        indices, ``same_t`` (B, W) 1 where the target's speaker speaks, ``rel`` (B, W) the target's
        position less the utterance's (:class:`WindowContext`'s ``same_t`` and ``rel``). Speakers
        past ``max_speakers`` share the last embedding; distances are clipped to ``max_window``."""
        cfg = self.cfg
        spk = speakers.clamp(min=0, max=cfg.max_speakers - 1)
        dist = rel.clamp(-cfg.max_window, cfg.max_window) + cfg.max_window
        return self.speaker_emb(spk) + self.same_emb(same_t) + self.pos_emb(dist.long())  # type: ignore[no-any-return]


def masked_softmax(scores: Tensor, keep: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` restricted to ``keep`` (0/1); rows with nothing kept give all zeros."""
    scores = scores + (1.0 - keep) * NEG
    e = torch.exp(scores - scores.max(dim=dim, keepdim=True).values) * keep
    return e / e.sum(dim, keepdim=True).clamp(min=1e-12)


def expand_weights(w_active: Tensor, active: list[int]) -> Tensor:
    """(B, M) weights over the active modalities -> (B, 3) in MODALITIES order, 0 elsewhere."""
    zero = torch.zeros_like(w_active[:, 0])
    cols = [w_active[:, active.index(m)] if m in active else zero for m in range(len(MODALITIES))]
    return torch.stack(cols, dim=1)


class MaskedAttention(nn.Module):
    """Multi-head attention, queries from ``x``, keys/values from ``kv``, additive 0/1 mask."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        assert d % n_heads == 0, (d, n_heads)
        self.h, self.dh = n_heads, d // n_heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, kv: Tensor, allowed: Tensor, bias: Tensor | None = None) -> Tensor:
        return self.attend(x, *self.keys_values(kv), allowed, bias)

    def keys_values(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        """(N, Wk, d) -> keys and values (N, H, Wk, dh) each."""
        n, wk, _ = kv.shape
        k, v = self.kv(kv).reshape(n, wk, 2, self.h, self.dh).permute(2, 0, 3, 1, 4)
        return k, v

    def attend(self, x: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor | None = None) -> Tensor:
        """Queries from ``x`` (N, Wq, d) over :meth:`keys_values`' ``k``, ``v``; ``allowed`` (N, Wq, Wk)."""
        n, wq, d = x.shape  # (N, Wq, d)
        q = self.q(x).reshape(n, wq, self.h, self.dh).transpose(1, 2)  # (N, H, Wq, dh)
        scores = q @ k.transpose(-1, -2) / (self.dh**0.5)  # (N, H, Wq, Wk)
        if bias is not None:
            scores = scores + bias
        scores = scores + (1.0 - allowed[:, None]) * NEG
        attn = self.drop(torch.softmax(scores, dim=-1) * allowed[:, None].amax(-1, keepdim=True))
        y = (attn @ v).transpose(1, 2).reshape(n, wq, d)  # (N, Wq, d)
        return self.out(y)


class Block(nn.Module):
    """Pre-norm transformer block; ``kv`` (cross-attention) defaults to ``x`` (self-attention)."""

    def __init__(self, d: int, n_heads: int, dropout: float, ff_mult: int = 2) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.ln_kv = nn.LayerNorm(d)
        self.attn = MaskedAttention(d, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor, kv: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        q = self.ln1(x)
        k = q if kv is None else self.ln_kv(kv)
        x = x + self.drop(self.attn(q, k, allowed, bias))  # (N, W, d)
        return x + self.drop(self.ff(self.ln2(x)))

    def self_keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values self-attention computes from ``x`` (N, W, d): (N, H, W, dh) each."""
        return self.attn.keys_values(self.ln1(x))

    def rows(self, x: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor | None = None) -> Tensor:
        """Self-attention's output for some rows ``x`` (N, Wq, d) only, the window's keys and values
        given (:meth:`self_keys_values` of the whole window, these rows' included): the same as
        those rows of :meth:`forward` when the other rows do not depend on them (a causal window
        and its target)."""
        x = x + self.drop(self.attn.attend(self.ln1(x), k, v, allowed, bias))
        return x + self.drop(self.ff(self.ln2(x)))


def info_nce(a: Tensor, b: Tensor, keep: Tensor, temp: float) -> Tensor:
    """Symmetric InfoNCE between rows of ``a`` and ``b`` (N, P): row i of each is the positive
    pair, the other kept rows are negatives. ``keep`` (N,) 0/1; 0 when fewer than two rows."""
    if int(keep.sum()) < 2:
        return a.sum() * 0.0
    za, zb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    sim = za @ zb.T / temp  # (N, N)
    sim = sim + (1.0 - keep[None, :]) * NEG
    eye = torch.eye(a.shape[0], device=a.device)
    l1 = -(torch.log_softmax(sim, dim=1) * eye).sum(1)  # (N,)
    l2 = -(torch.log_softmax(sim.T + (1.0 - keep[None, :]) * NEG, dim=1) * eye).sum(1)
    return ((l1 + l2) * 0.5 * keep).sum() / keep.sum()


def supcon(z: Tensor, y: Tensor, keep: Tensor, temp: float, group: Tensor | None = None) -> Tensor:
    """Supervised contrastive loss (Khosla et al.) over rows of ``z`` (N, P) with labels ``y`` (N,).

    Positives of an anchor: other kept rows with the same label. With ``group`` (N,) set, only
    rows of a *different* group (e.g. another modality) count as positives and negatives, which
    makes it a cross-modal alignment loss.
    """
    n = z.shape[0]
    zz = F.normalize(z, dim=-1)
    sim = zz @ zz.T / temp  # (N, N)
    eye = torch.eye(n, device=z.device)
    cand = keep[None, :] * keep[:, None] * (1.0 - eye)  # (N, N)
    if group is not None:
        cand = cand * (group[:, None] != group[None, :]).float()
    pos = cand * (y[:, None] == y[None, :]).float()
    n_pos = pos.sum(1)
    ok = (n_pos > 0).float() * keep
    if float(ok.sum()) < 1:
        return z.sum() * 0.0
    logprob = sim - torch.logsumexp(sim + (1.0 - cand) * NEG, dim=1, keepdim=True)  # (N, N)
    per = -(logprob * pos).sum(1) / n_pos.clamp(min=1.0)  # (N,)
    return (per * ok).sum() / ok.sum()


def sentiment_mse(out: dict[str, Any], sentiment: Tensor) -> Tensor:
    return F.mse_loss(out["sentiment"], sentiment.float())
