"""UniMSE engine (after Hu et al., EMNLP 2022), adapted to a causal stream on frozen features.

Architecture, per window of B dialogues x W utterances:

1. **Text backbone input.** Each utterance's frozen sentence embedding is normalised (train-set
   statistics kept as buffers) and projected to ``d``; an utterance without text gets a learned
   "no text" vector instead. A window-local speaker embedding, a "same speaker as the target"
   embedding and a clamped relative-position embedding are added.
2. **Window transformer.** ``n_layers`` pre-norm blocks of masked self-attention over the window
   (dense 0/1 masks: padding, and with ``causal`` no query ever attends to a later utterance),
   each with a learned per-head same-speaker attention bias.
3. **Bottleneck adapters in the last layers.** After each of the last ``adapter_layers`` blocks,
   every other modality (audio, video) is injected into the text stream through its own
   bottleneck adapter: ``h += g_m * present_m * up(GELU(down([LN(h); a_m])))`` with a scalar gate
   ``g_m = sigmoid(w_m . [LN(h); a_m])`` per utterance, where ``a_m`` is that utterance's
   projected audio/video feature. Where an utterance has no text, its backbone token is the
   "no text" vector plus context, so the adapters' input is what carries its signal. Audio/video
   of *earlier* utterances reach the target only through a block after an adapter, so the
   default ``adapter_layers = 2`` (every block of the default 2-layer backbone; the last two of a
   deeper one) beat ``1`` on the meld-ravdess composite (dev fused W-F1 0.729 vs 0.714, one seed).
4. **Universal heads.** From the target's final state: emotion logits and a tanh sentiment
   intensity in [-1, 1], trained jointly (MELD carries both labels; the other datasets derive
   sentiment from the emotion).

``weights`` (B, 3): how strongly each modality is injected at the target. Text enters the
backbone's residual stream at a fixed unit gate; audio and video enter through their adapters'
gates (mean over the adapter layers, in (0, 1)). These gate values, times the modality's
presence at the target, are normalised to sum to 1 over the present modalities (exactly 0 for an
absent one). A text-only model therefore always reports ``(1, 0, 0)`` when text is present.

Losses (:meth:`UniMSENet.training_loss`): CE(emotion) + ``w_sentiment`` * MSE(sentiment)
+ ``w_contrast_audio`` * InfoNCE(text, audio) + ``w_contrast_video`` * InfoNCE(text, video)
(temperature ``temperature``; the text side is the target's backbone state before the first
adapter, the other side its projected audio/video feature; pairs are the same utterance, other
utterances of the batch are negatives; only utterances with both modalities count). Optional
R-Drop (``rdrop`` > 0): two dropout views, CE on both and a symmetric KL between them. Optional
text-alone CE (``w_text_alone`` > 0): a second pass over the same windows with every audio and
video hidden, CE on the targets that have text, so the text path stays a classifier of its own
on every window (a call without voice, a voice the trust wrapper discounts) rather than only on
the windows modality dropout happens to strip.

Adapted from the paper, and why:
- The paper's backbone is T5 fine-tuned end to end, generating a "universal label" string. A
  stream on a 2-core CPU cannot run or fine-tune T5 per utterance, so the backbone is a small
  transformer over the dialogue window on frozen sentence embeddings (all-MiniLM-L6-v2 or the
  dataset's feature pickle), and the universal label becomes two heads (emotion classes plus a
  sentiment regression) on one shared representation.
- The paper's adapters sit inside the last T5 encoder layers over token sequences; here they sit
  after the last window-transformer blocks over utterance tokens, with a gate per modality so
  that a missing modality injects nothing and the gate doubles as the reported modality weight.
- The paper's InfoNCE runs on pooled text/audio/video of the same sample; kept as is (tau 0.1,
  weight 0.5 each), on the target utterance of each window.
- Causality: the paper sees whole utterances in isolation; here the target may attend to earlier
  utterances of its window (and, with ``causal=False``, the later ones the window holds).

Only dense ops (matmul, masks, one-hot selection): no scatter, no data-dependent control flow;
dynamic batch and window axes export to ONNX.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.interface import EMOTIONS, MODALITIES
from engines.models.common import (
    Block,
    WindowContext,
    WindowEmbedder,
    expand_weights,
    info_nce,
)
from engines.models.config import ModelConfig

TEXT = 0


@dataclass
class UniMSEConfig(ModelConfig):
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.2
    max_speakers: int = 8  # window-local speaker ids at or above this share the last embedding
    max_window: int = 12  # relative positions are clamped to +-max_window
    causal: bool = True
    n_classes: int = len(EMOTIONS)
    adapter_layers: int = 2  # the last blocks followed by audio/video adapters (clamped to n_layers)
    adapter_dim: int = 32  # adapter bottleneck width
    proj_dim: int = 64  # contrastive projection size
    # losses
    w_sentiment: float = 0.5
    w_contrast_audio: float = 0.5
    w_contrast_video: float = 0.5
    temperature: float = 0.1
    label_smoothing: float = 0.05
    rdrop: float = 0.0  # weight of the R-Drop symmetric KL between two dropout views (0 = one view)
    w_text_alone: float = 0.0  # weight of CE on a second pass with audio/video hidden (0 = no second pass)

    def __post_init__(self) -> None:
        super().__post_init__()
        assert self.adapter_layers >= 0 and self.n_layers >= 1, (self.adapter_layers, self.n_layers)
        side = [m for m in self.active() if MODALITIES[m] != "text"]
        if side and self.adapter_layers == 0:  # the forward pass had no gate to weigh them by and failed
            raise ValueError(
                f"unimse: adapter_layers=0 leaves {'+'.join(MODALITIES[m] for m in side)} unused (they enter "
                "the text stream through the adapters); set adapter_layers >= 1, or train on text alone"
            )


class GatedAdapter(nn.Module):
    """Bottleneck adapter injecting one modality into the text stream, with a scalar gate."""

    def __init__(self, d: int, r: int, dropout: float) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.down = nn.Linear(2 * d, r)
        self.up = nn.Linear(r, d)
        self.gate = nn.Linear(2 * d, 1)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.up.weight)  # starts as the identity on the text stream
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor, a: Tensor, pm: Tensor) -> tuple[Tensor, Tensor]:
        """h (B, W, d) text stream, a (B, W, d) modality, pm (B, W) presence -> (delta, gate (B, W))."""
        u = torch.cat([self.ln(h), a], dim=-1)  # (B, W, 2d)
        g = torch.sigmoid(self.gate(u))[..., 0] * pm  # (B, W), 0 where the modality is absent
        z = self.up(self.drop(F.gelu(self.down(u))))  # (B, W, d)
        return z * g[..., None], g


class UniMSENet(WindowEmbedder, nn.Module):
    """``forward(features, present, speakers, valid, target) -> dict of tensors``.

    Outputs: ``logits`` (B, C), ``sentiment`` (B,), ``weights`` (B, 3), and for the losses
    ``text_repr`` (B, d), ``side_repr`` (B, S, d) and ``present_t`` (B, 3) (S: the model's
    non-text modalities, in MODALITIES order).
    """

    #: forward takes ``projected`` (:meth:`project`'s output): the voice gate's copies of a window share it
    takes_projected = True

    def __init__(self, cfg: UniMSEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.active = cfg.active()
        assert self.active, "a model needs at least one modality"
        d = cfg.d_model
        self.init_projectors()
        self.side = [m for m in self.active if m != TEXT]  # modalities fused through adapters
        self.no_text = nn.Parameter(torch.zeros(d))
        self.init_places()
        self.blocks = nn.ModuleList([Block(d, cfg.n_heads, cfg.dropout, cfg.ff_mult) for _ in range(cfg.n_layers)])
        self.same_bias = nn.Parameter(torch.zeros(cfg.n_layers, cfg.n_heads))
        self.n_adapt = min(cfg.adapter_layers, cfg.n_layers) if self.side else 0
        self.adapters = nn.ModuleList(
            [
                nn.ModuleDict({MODALITIES[m]: GatedAdapter(d, cfg.adapter_dim, cfg.dropout) for m in self.side})
                for _ in range(self.n_adapt)
            ]
        )
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, cfg.n_classes))
        self.sent_head = nn.Linear(d, 1)
        self.contrast_text = nn.ModuleDict({MODALITIES[m]: nn.Linear(d, cfg.proj_dim) for m in self.side})
        self.contrast_side = nn.ModuleDict({MODALITIES[m]: nn.Linear(d, cfg.proj_dim) for m in self.side})
        nn.init.normal_(self.no_text, std=0.02)

    def forward(
        self,
        features: Mapping[str, Tensor | None],
        present: Tensor,
        speakers: Tensor,
        valid: Tensor,
        target: Tensor,
        projected: dict[int, Tensor] | None = None,
        states: list[tuple[Tensor, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """``projected``: :meth:`project`'s output for these inputs, when the caller has it already
        (the trust wrapper projects once for its four presence variants; the raw inputs are then
        not read). ``states``: a list that gets each block's keys and values (B, H, W, dh), for :meth:`target_rows`."""
        cfg = self.cfg
        b, w = valid.shape
        z = self.project(features) if projected is None else projected
        assert present.shape == (b, w, len(MODALITIES)), present.shape
        ctx = WindowContext(valid, speakers, target, cfg.causal)
        pres = present.float() * ctx.valid[..., None]  # (B, W, 3)

        context = self.place(speakers, ctx.same_t, ctx.rel)  # (B, W, d)

        if TEXT in self.active:
            x = z[TEXT]
            assert x.shape[:2] == (b, w), x.shape
            pt = pres[..., TEXT]  # (B, W)
            tok = x * pt[..., None] + (1.0 - pt[..., None]) * self.no_text  # (B, W, d)
        else:
            tok = self.no_text.expand(b, w, -1)  # (B, W, d)
        h = tok + context  # (B, W, d)

        side: dict[int, Tensor] = {}
        for m in self.side:
            x = z[m]
            assert x.shape[:2] == (b, w), (MODALITIES[m], x.shape)
            side[m] = x * pres[..., m, None]  # (B, W, d), absent -> 0

        first_adapter = cfg.n_layers - self.n_adapt
        text_state = h
        gates: dict[int, list[Tensor]] = {m: [] for m in self.side}
        for i, blk in enumerate(cast(list[Block], self.blocks)):
            bias = ctx.same[:, None] * self.same_bias[i][None, :, None, None]  # (B, H, W, W)
            k, v = blk.self_keys_values(h)  # (B, H, W, dh) each
            if states is not None:
                states.append((k, v))
            h = blk.rows(h, k, v, ctx.allowed, bias)  # (B, W, d): every row, as blk(h, ctx.allowed, bias=bias)
            if i >= first_adapter:
                if i == first_adapter:
                    text_state = h  # the text-only state the contrastive loss aligns
                layer = cast(nn.ModuleDict, self.adapters[i - first_adapter])
                deltas = []
                for m in self.side:
                    delta, g = layer[MODALITIES[m]](h, side[m], pres[..., m])
                    deltas.append(delta)
                    gates[m].append(g)
                for delta in deltas:
                    h = h + delta  # (B, W, d)
        if self.n_adapt == 0:
            text_state = h

        c = ctx.at_target(self.ln_f(h))  # (B, d)
        logits = self.head(c)  # (B, C)
        sentiment = torch.tanh(self.sent_head(c))[:, 0]  # (B,)

        present_t = ctx.at_target(pres)  # (B, 3)
        score_cols = []
        for m in self.active:
            if m == TEXT:
                score_cols.append(present_t[:, TEXT])
            else:
                g_t = ctx.at_target(torch.stack(gates[m], dim=-1).mean(-1))  # (B,)
                score_cols.append(g_t * present_t[:, m])
        score = torch.stack(score_cols, dim=1)  # (B, M)
        weights = expand_weights(score / score.sum(1, keepdim=True).clamp(min=1e-12), self.active)  # (B, 3)

        out = {"logits": logits, "sentiment": sentiment, "weights": weights, "present_t": present_t}
        out["text_repr"] = ctx.at_target(text_state)  # (B, d)
        if self.side:
            out["side_repr"] = torch.stack([ctx.at_target(side[m]) for m in self.side], dim=1)  # (B, S, d)
        return out

    def target_rows(
        self,
        projected: dict[int, Tensor],
        present: Tensor,
        speakers: Tensor,
        valid: Tensor,
        target: Tensor,
        states: list[tuple[Tensor, Tensor]],
        n: int,
    ) -> dict[str, Tensor]:
        """``logits`` and ``sentiment`` of ``n`` copies of a causal model's windows that differ from
        a run already made only in what is present *at the target* (the trust wrapper's subsets),
        computing the target's row alone: in a causal window no other row sees the target, so
        every other row is the run's own, and its keys and values are read from ``states`` (that
        run's, per block). ``present`` (n * G, W, 3): the copies', concatenated; the rest are the
        G windows' as in that run. A fraction of running the copies whole (the window's width)."""
        cfg = self.cfg
        assert cfg.causal, "only a causal model's other rows do not see the target"
        g, w = valid.shape
        ctx = WindowContext(valid, speakers, target, cfg.causal)

        def rep(x: Tensor) -> Tensor:
            return torch.cat([x] * n, dim=0)

        onehot = rep(ctx.onehot)  # (N, W)
        pres_t = (present.float() * rep(ctx.valid)[..., None] * onehot[..., None]).sum(1)  # (N, 3)
        context = ctx.at_target(self.place(speakers, ctx.same_t, ctx.rel))  # (G, d)
        if TEXT in self.active:
            pt = pres_t[:, TEXT : TEXT + 1]  # (N, 1)
            tok = rep(ctx.at_target(projected[TEXT])) * pt + (1.0 - pt) * self.no_text  # (N, d)
        else:
            tok = self.no_text.expand(n * g, -1)
        h = (tok + rep(context))[:, None]  # (N, 1, d) the target's row
        side = {m: (rep(ctx.at_target(projected[m])) * pres_t[:, m : m + 1])[:, None] for m in self.side}
        pm = {m: pres_t[:, m : m + 1] for m in self.side}  # (N, 1)
        allowed = rep((ctx.allowed * ctx.onehot[:, :, None]).sum(1))[:, None]  # (N, 1, W) the target's query
        same = rep(ctx.same_t.float())  # (N, W) the target's row of ctx.same
        at = onehot[:, None, :, None]  # (N, 1, W, 1) the target's key and value
        first_adapter = cfg.n_layers - self.n_adapt
        for i, blk in enumerate(cast(list[Block], self.blocks)):
            k, v = states[i]  # (G, H, W, dh) as in the run
            k_t, v_t = blk.self_keys_values(h)  # (N, H, 1, dh) each copy's own target
            k = rep(k) * (1.0 - at) + at * k_t
            v = rep(v) * (1.0 - at) + at * v_t
            bias = same[:, None, None, :] * self.same_bias[i][None, :, None, None]  # (N, H, 1, W)
            h = blk.rows(h, k, v, allowed, bias)  # (N, 1, d)
            if i >= first_adapter:
                layer = cast(nn.ModuleDict, self.adapters[i - first_adapter])
                deltas = [layer[MODALITIES[m]](h, side[m], pm[m])[0] for m in self.side]
                for delta in deltas:
                    h = h + delta
        c = self.ln_f(h[:, 0])  # (N, d)
        return {"logits": self.head(c), "sentiment": torch.tanh(self.sent_head(c))[:, 0]}

    def contrastive_terms(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """InfoNCE between the target's text state and each side modality (0 without pairs)."""
        cfg = self.cfg
        terms: dict[str, Tensor] = {}
        for j, m in enumerate(self.side):
            name = MODALITIES[m]
            keep = out["present_t"][:, TEXT] * out["present_t"][:, m]  # (B,)
            zt = self.contrast_text[name](out["text_repr"])  # (B, P)
            zm = self.contrast_side[name](out["side_repr"][:, j])  # (B, P)
            terms[f"nce_{name}"] = info_nce(zt, zm, keep, cfg.temperature)
        return terms

    def training_loss(self, inputs: dict[str, Any], labels: Tensor, sentiment: Tensor) -> dict[str, Tensor]:
        cfg = self.cfg
        out = self(**inputs)
        ce = F.cross_entropy(out["logits"], labels, label_smoothing=cfg.label_smoothing)
        sent = F.mse_loss(out["sentiment"], sentiment.float())
        terms: dict[str, Tensor] = {"ce": ce, "sentiment": sent}
        loss = ce + cfg.w_sentiment * sent
        if cfg.rdrop > 0:
            out2 = self(**inputs)
            ce2 = F.cross_entropy(out2["logits"], labels, label_smoothing=cfg.label_smoothing)
            lp1, lp2 = F.log_softmax(out["logits"], -1), F.log_softmax(out2["logits"], -1)
            kl = 0.5 * (
                F.kl_div(lp1, lp2, log_target=True, reduction="batchmean")
                + F.kl_div(lp2, lp1, log_target=True, reduction="batchmean")
            )
            sent2 = F.mse_loss(out2["sentiment"], sentiment.float())
            loss = 0.5 * (loss + ce2 + cfg.w_sentiment * sent2) + cfg.rdrop * kl
            terms["rdrop"] = kl
        if cfg.w_text_alone > 0 and self.side and TEXT in self.active:
            present = inputs["present"].clone()
            present[..., self.side] = 0.0  # every audio and video of the window hidden
            alone = self(**{**inputs, "present": present})
            has_text = out["present_t"][:, TEXT]  # (B,) 0/1
            ce_each = F.cross_entropy(alone["logits"], labels, label_smoothing=cfg.label_smoothing, reduction="none")
            ce_text = (ce_each * has_text).sum() / has_text.sum().clamp(min=1.0)
            loss = loss + cfg.w_text_alone * ce_text
            terms["ce_text_alone"] = ce_text
        weights = {"audio": cfg.w_contrast_audio, "video": cfg.w_contrast_video}
        for name, value in self.contrastive_terms(out).items():
            terms[name] = value
            loss = loss + weights[name.removeprefix("nce_")] * value
        return {"loss": loss, **terms}


# the names every model module provides (engines.models)
Config = UniMSEConfig
Net = UniMSENet
