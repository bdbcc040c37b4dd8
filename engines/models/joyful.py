"""Joyful engine: joint modality fusion and graph contrastive learning (after Li et al., EMNLP 2023).

Architecture, per window of utterances (B windows, W utterances, M = the model's modalities):

1. **Per-modality encoders.** Each modality is normalised with train-set statistics and projected
   to ``d`` by an MLP (:class:`Projector`); an utterance's absent modality is zeroed.
2. **Global contextual fusion.** The modality vectors of an utterance are concatenated (absent
   ones as zeros), mapped to ``d``, given speaker and relative-position embeddings and passed
   through a transformer over the window (keys: real utterances, and only earlier ones plus the
   utterance itself when ``causal``). A linear decoder reconstructs the concatenated modality
   vectors from each contextual vector (the paper's global reconstruction loss).
3. **Modality-specific fusion.** Each modality vector gets its own projection, which is
   re-expressed in a low-rank basis shared by all modalities (coefficients per modality, basis
   common); the reconstruction error of each projection from the shared basis is the paper's
   specific reconstruction loss and pulls the modalities into one subspace. A learned gate scores
   each modality of an utterance; a softmax over the modalities *present at that utterance*
   weights the basis reconstructions into one specific vector.
4. **Speaker-relational graph** (COGMEN style) whose nodes are the fused utterance vectors
   (global + specific). Dense masked adjacency per relation: same/other speaker x past/future
   (future relations only when not causal), degree-normalised; one relational GCN layer (root
   weight plus one weight per relation) over every node, followed by a graph transformer layer
   (masked multi-head attention over the union of the edges and a self-loop, with a learned
   per-head bias per relation) read at the target node: only the target's graph vector feeds the
   heads, so that layer runs with the target as its single query.
5. **Heads** on the target's [fused vector, graph vector]: emotion logits and a tanh sentiment.

``weights`` (B, 3): the fusion gate at the target, i.e. each modality's share of the
modality-specific fused vector of the target utterance (0 for modalities absent there; they sum
to 1 over the present ones). The global branch sees every present modality through the
concatenation, so the weights describe the gated branch, not a full attribution of the output.

Training (``training_loss``): CE (label smoothing) + ``w_fusion`` x (global + specific
reconstruction) + ``w_contrastive`` x graph contrastive loss + ``w_sentiment`` x sentiment MSE.
The contrastive loss makes two views of each window's graph (feature masking: a random set of
node feature columns zeroed per window; edge perturbation: each edge dropped independently) and
applies the GRACE-style InfoNCE of the paper with inter-view and intra-view negatives (tau 0.2)
to the target nodes' projected graph outputs. Eval-time forward is plain (no views).

Adapted from the paper, and why:
- Causal stream: the paper's graph holds past *and* future utterances of a whole dialogue; here
  the graph is the window the stream has, with past edges only when ``causal`` (future edges with
  ``--future K``). Every attention and relation mask respects the same rule, so the target never
  depends on later utterances.
- Contrastive anchors are the target nodes only: the same utterance occurs in many overlapping
  windows of a batch with different context, so contrasting every node would push identical
  utterances apart as negatives.
- Small frozen features (e.g. 384-d MiniLM sentence vectors) and a 2-core CPU budget: one GCN
  and one graph transformer layer (queried at the target only), ``d_model`` 128, the two views
  run through the graph as one batch, and the paper's loss weights (0.06 fusion, 0.3
  contrastive). A small sentiment MSE term trains the contract's sentiment output.
- Dense masked adjacency instead of edge lists, so the graph is pure matmul and exports to ONNX
  with dynamic batch and window axes (no Scatter/Loop/If).
- The gate over present modalities is added so the engine reports per-modality weights and works
  with any subset of modalities present.
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
)
from engines.models.config import ModelConfig

N_RELATIONS = 4  # (same, other speaker) x (past, future)


@dataclass
class JoyfulConfig(ModelConfig):
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2  # global transformer layers
    ff_mult: int = 2
    dropout: float = 0.2
    max_speakers: int = 8  # window-local speaker ids at or above this share the last embedding
    max_window: int = 12  # relative positions are clamped to +-max_window
    causal: bool = True
    n_classes: int = len(EMOTIONS)
    n_basis: int = 32  # size of the shared basis of the specific branch
    proj_dim: int = 64  # contrastive projection size
    feature_mask: float = 0.2  # view augmentation: share of node feature columns zeroed
    edge_drop: float = 0.15  # view augmentation: chance of dropping each edge
    temperature: float = 0.2
    w_fusion: float = 0.06
    w_contrastive: float = 0.3
    w_sentiment: float = 0.1
    label_smoothing: float = 0.05


def relations(ctx: WindowContext) -> Tensor:
    """(B, R, W, W) 0/1 edges i <- j per relation, restricted to ``ctx.allowed`` (no self-loops)."""
    other = 1.0 - ctx.same
    rels = [ctx.same * ctx.past, other * ctx.past, ctx.same * ctx.future, other * ctx.future]
    return torch.stack(rels, dim=1) * ctx.allowed[:, None]  # (B, R, W, W)


def grace_loss(z1: Tensor, z2: Tensor, temp: float) -> Tensor:
    """InfoNCE with inter-view and intra-view negatives (GRACE), symmetric. z1, z2 (N, P)."""
    n = z1.shape[0]
    if n < 2:
        return z1.sum() * 0.0
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    eye = torch.eye(n, device=z1.device)

    def one_side(a: Tensor, b: Tensor) -> Tensor:
        inter = a @ b.T / temp  # (N, N) positive on the diagonal
        intra = a @ a.T / temp + eye * NEG  # (N, N) self excluded
        logits = torch.cat([inter, intra], dim=1)  # (N, 2N)
        return -(torch.log_softmax(logits, dim=1)[:, :n] * eye).sum(1).mean()

    return 0.5 * (one_side(z1, z2) + one_side(z2, z1))


class RelationalGraph(nn.Module):
    """Relational GCN layer over every node, then a graph transformer layer read at the target.

    Only the target's graph vector feeds the heads, so the graph transformer layer runs with the
    target as its single query (keys: its neighbours and itself) instead of over every node.
    """

    def __init__(self, d: int, n_heads: int, dropout: float, ff_mult: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, (N_RELATIONS + 1) * d)  # root weight, then one weight per relation
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.gt = Block(d, n_heads, dropout, ff_mult)
        self.rel_bias = nn.Parameter(torch.zeros(N_RELATIONS, n_heads))
        self.ln_out = nn.LayerNorm(d)

    def forward(self, h: Tensor, adj: Tensor, valid: Tensor, onehot: Tensor) -> Tensor:
        """h (B, W, d) nodes, adj (B, R, W, W), valid and onehot (B, W) -> (B, d) at the target."""
        b, w, d = h.shape
        hr = self.lin(h)  # (B, W, (R+1)*d)
        root = hr[..., :d]  # (B, W, d)
        per_rel = hr[..., d:].reshape(b, w, N_RELATIONS, d).transpose(1, 2)  # (B, R, W, d)
        norm = adj / adj.sum(-1, keepdim=True).clamp(min=1.0)  # (B, R, W, W) mean over neighbours
        msg = root + (norm @ per_rel).sum(1)  # (B, W, d)
        g = self.ln(h + self.drop(F.gelu(msg)))  # (B, W, d)
        sel = onehot[:, None, :]  # (B, 1, W)
        adj_t = sel[:, None] @ adj  # (B, R, 1, W) the target's edges
        allowed = (adj_t.sum(1) + sel * valid[:, None, :]).clamp(max=1.0)  # (B, 1, W) with self-loop
        bias = torch.einsum("brqj,rh->bhqj", adj_t, self.rel_bias)  # (B, H, 1, W)
        q = sel @ g  # (B, 1, d)
        return self.ln_out(self.gt(q, allowed, kv=g, bias=bias))[:, 0]  # (B, d)


class JoyfulNet(WindowEmbedder, nn.Module):
    """``forward(features, present, speakers, valid, target) -> dict of tensors``.

    Outputs: ``logits`` (B, C), ``sentiment`` (B,), ``weights`` (B, 3); ``training_loss`` uses
    :meth:`encode` and :meth:`head` directly to run the graph on augmented views.
    """

    def __init__(self, cfg: JoyfulConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.active = cfg.active()
        assert self.active, "a model needs at least one modality"
        d, n_m = cfg.d_model, len(self.active)
        self.init_projectors()
        # global contextual fusion
        self.fuse_in = nn.Linear(n_m * d, d)
        self.init_places()
        self.blocks = nn.ModuleList([Block(d, cfg.n_heads, cfg.dropout, cfg.ff_mult) for _ in range(cfg.n_layers)])
        self.ln_g = nn.LayerNorm(d)
        self.decode = nn.Linear(d, n_m * d)
        # modality-specific fusion
        self.spec_proj = nn.ModuleList([nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d)) for _ in self.active])
        self.coef = nn.ModuleList([nn.Linear(d, cfg.n_basis) for _ in self.active])
        self.basis = nn.Parameter(torch.randn(cfg.n_basis, d) / cfg.n_basis**0.5)
        self.gate_key = nn.Linear(d, d)
        self.gate_score = nn.Linear(d, 1, bias=False)
        self.spec_out = nn.Linear(d, d)
        self.ln_node = nn.LayerNorm(d)
        # graph and heads
        self.graph = RelationalGraph(d, cfg.n_heads, cfg.dropout, cfg.ff_mult)
        self.cls = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, cfg.n_classes))
        self.sent_head = nn.Linear(2 * d, 1)
        self.contrast = nn.Sequential(nn.Linear(d, d), nn.ELU(), nn.Linear(d, cfg.proj_dim))

    def encode(
        self,
        features: Mapping[str, Tensor | None],
        present: Tensor,
        speakers: Tensor,
        valid: Tensor,
        target: Tensor,
    ) -> dict[str, Tensor]:
        """Fused node vectors, adjacency and the fusion branch's tensors (no graph yet)."""
        cfg = self.cfg
        b, w = valid.shape
        assert present.shape == (b, w, len(MODALITIES)), present.shape
        ctx = WindowContext(valid, speakers, target, cfg.causal)
        z = self.project(features)
        zs, pms = [], []
        for m in self.active:
            assert z[m].shape[:2] == (b, w), (MODALITIES[m], z[m].shape)
            pm = present[:, :, m] * ctx.valid  # (B, W)
            zs.append(z[m] * pm[..., None])  # (B, W, d), absent -> 0
            pms.append(pm)
        z_cat = torch.cat(zs, dim=-1)  # (B, W, M*d)
        pm_all = torch.stack(pms, dim=-1)  # (B, W, M)

        # global contextual fusion: concatenation -> transformer over the window
        emb = self.place(speakers, ctx.same_t, ctx.rel)  # (B, W, d)
        g = self.fuse_in(z_cat) + emb  # (B, W, d)
        allowed = ctx.allowed  # (B, W, W)
        for blk in self.blocks:
            g = blk(g, allowed)
        g = self.ln_g(g)  # (B, W, d)

        # modality-specific fusion: shared-basis reconstruction, gated over present modalities
        specs = [sp(z) for sp, z in zip(self.spec_proj, zs, strict=True)]  # M x (B, W, d)
        recons = [cf(s) @ self.basis for cf, s in zip(self.coef, specs, strict=True)]  # M x (B, W, d)
        scores = torch.cat([self.gate_score(torch.tanh(self.gate_key(z))) for z in zs], dim=-1)  # (B, W, M)
        gate = masked_softmax(scores, pm_all)  # (B, W, M), 0 where absent
        spec = sum(gate[..., j : j + 1] * r for j, r in enumerate(recons))  # (B, W, d)
        assert isinstance(spec, Tensor)
        node = self.ln_node(g + self.spec_out(spec))  # (B, W, d)
        return {
            "node": node,
            "adj": relations(ctx),
            "valid": ctx.valid,
            "onehot": ctx.onehot,
            "gate_t": ctx.at_target(gate),  # (B, M)
            "z_cat": z_cat,
            "z_hat": self.decode(g) if self.training else z_cat,  # (B, W, M*d) global reconstruction
            "pm": pm_all,
            "specs": torch.stack(specs, dim=2),  # (B, W, M, d)
            "recons": torch.stack(recons, dim=2),  # (B, W, M, d)
        }

    def head(self, enc: dict[str, Tensor], node: Tensor, adj: Tensor) -> dict[str, Tensor]:
        """Graph over the (possibly augmented) nodes, then the heads at the target."""
        h_t = self.graph(node, adj, enc["valid"], enc["onehot"])  # (B, d)
        n_t = (enc["node"] * enc["onehot"][..., None]).sum(1)  # (B, d)
        both = torch.cat([n_t, h_t], dim=-1)  # (B, 2d)
        return {
            "logits": self.cls(both),
            "sentiment": torch.tanh(self.sent_head(both))[:, 0],
            "graph_t": h_t,
        }

    def forward(
        self,
        features: Mapping[str, Tensor | None],
        present: Tensor,
        speakers: Tensor,
        valid: Tensor,
        target: Tensor,
    ) -> dict[str, Tensor]:
        enc = self.encode(features, present, speakers, valid, target)
        out = self.head(enc, enc["node"], enc["adj"])
        out["weights"] = expand_weights(enc["gate_t"], self.active)  # (B, 3)
        return out

    def views(self, enc: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Projected target-node graph vectors (B, P) of two augmented views of each window's
        graph (feature masking per window, independent edge drop), run as one batch of 2B."""
        cfg = self.cfg
        node, adj = enc["node"], enc["adj"]
        b, w, d = node.shape
        node2 = torch.cat([node, node], dim=0)  # (2B, W, d)
        adj2 = torch.cat([adj, adj], dim=0)  # (2B, R, W, W)
        cols = (torch.rand(2 * b, 1, d, device=node.device) >= cfg.feature_mask).float()  # (2B, 1, d)
        keep = (torch.rand(2 * b, 1, w, w, device=node.device) >= cfg.edge_drop).float()  # (2B, 1, W, W)
        valid2 = torch.cat([enc["valid"], enc["valid"]], dim=0)
        onehot2 = torch.cat([enc["onehot"], enc["onehot"]], dim=0)
        z = self.contrast(self.graph(node2 * cols, adj2 * keep, valid2, onehot2))  # (2B, P)
        return z[:b], z[b:]

    def training_loss(self, inputs: dict[str, Any], labels: Tensor, sentiment: Tensor) -> dict[str, Tensor]:
        cfg = self.cfg
        enc = self.encode(**inputs)
        out = self.head(enc, enc["node"], enc["adj"])
        ce = F.cross_entropy(out["logits"], labels, label_smoothing=cfg.label_smoothing)
        sent = F.mse_loss(out["sentiment"], sentiment.float())
        fusion = fusion_loss(enc)
        con = grace_loss(*self.views(enc), cfg.temperature) if cfg.w_contrastive > 0 else ce * 0.0
        loss = ce + cfg.w_fusion * fusion + cfg.w_contrastive * con + cfg.w_sentiment * sent
        return {"loss": loss, "ce": ce, "fusion": fusion, "contrastive": con, "sentiment": sent}


def fusion_loss(enc: dict[str, Tensor]) -> Tensor:
    """Global reconstruction (concatenated modality vectors from the contextual vector) plus
    specific reconstruction (each modality's projection from the shared basis), both mean squared
    errors over present modalities of real utterances."""
    pm = enc["pm"]  # (B, W, M)
    b, w, n_m = pm.shape
    n = pm.sum().clamp(min=1.0)
    z = enc["z_cat"].reshape(b, w, n_m, -1)  # (B, W, M, d)
    glob = ((enc["z_hat"].reshape(b, w, n_m, -1) - z) ** 2).mean(-1)  # (B, W, M)
    spec = ((enc["recons"] - enc["specs"]) ** 2).mean(-1)  # (B, W, M)
    return ((glob + spec) * pm).sum() / n


# the names every model module provides (engines.models)
Config = JoyfulConfig
Net = JoyfulNet
