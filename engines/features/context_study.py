"""Does MiniLM read an utterance better with the utterances before it? A study, not a runtime path.

``--tune-text`` tunes MiniLM's top layers on each utterance alone, and the engines model the
dialogue over the resulting vectors. Text models of the field that reach MELD's 0.62-0.65 encode
the target together with its preceding turns; this study asks whether the shipped encoder does
better that way. For each ``--context K`` it tunes the top layers (the same optimiser, schedule,
head and seed as :func:`engines.features.tuning.tune_text_encoder`) on inputs
``[CLS] u(i-K) [SEP] ... u(i-1) [SEP] u(i) [SEP]`` (the preceding turns of the dialogue, the
nearest kept first, within ``--budget`` tokens), mean-pooled over the target's tokens only, and
prints the utterance head's dev weighted F1 after each epoch. ``K = 0`` is each utterance alone, as
the shipped tuning reads it (which pools its [CLS] and [SEP] too), in the same code as the other
rows, so they compare::

    python -m engines.features.context_study --data-dir ../shared/data --context 0 3

It writes no artifact: the stream encodes each utterance once, alone (a context-aware encoder would
need the call's preceding transcripts at encoding time). Result: README, Fine-tuned text.

Two more of the tuning route's options, on the same inputs: ``--pool target-cls`` pools the target's
tokens and the [CLS] state (their mean) instead of the target's alone, and ``--sentiment-weight W``
adds UniMSE's idea to the tuning, a second linear head on the same embedding that learns MELD's
sentiment (negative, neutral, positive) with weight ``W`` in the loss::

    python -m engines.features.context_study --data-dir ../shared/data --context 0 --pool target-cls
    python -m engines.features.context_study --data-dir ../shared/data --context 0 --sentiment-weight 0.5
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.features.text import normalise_text
from engines.features.tuning import TuneConfig, additive_mask, optimiser, predict, train_epoch, weighted_f1

MAX_TARGET_TOKENS = 62  # a target's word pieces kept (MELD's are far shorter)


@dataclass(frozen=True)
class Item:
    ids: list[int]  # [CLS] context [SEP] target [SEP]
    start: int  # the target's first token
    stop: int  # one past its last
    label: int
    sentiment: int = 1  # 0 negative, 1 neutral, 2 positive (given with the turn, else neutral)


def context_inputs(
    dialogues: Sequence[Sequence[tuple[str | None, int] | tuple[str | None, int, int]]],
    tokenize: Any,
    cls: int,
    sep: int,
    context: int,
    budget: int = 96,
) -> list[Item]:
    """One :class:`Item` per utterance with words: ``dialogues`` holds (text, label) per turn;
    ``tokenize(text) -> word-piece ids`` (no special tokens); up to ``context`` preceding turns,
    the nearest first, as long as they fit in ``budget`` tokens with their separators. A turn may
    carry its sentiment (-1, 0, 1) third."""
    items: list[Item] = []
    for turns in dialogues:
        pieces = [list(tokenize(normalise_text(t[0])))[:MAX_TARGET_TOKENS] if t[0] else [] for t in turns]
        for i, (text, label, *sentiment) in enumerate(turns):
            if not text:
                continue
            ctx: list[int] = []
            for j in range(i - 1, max(-1, i - 1 - context), -1):
                if len(ctx) + len(pieces[j]) + 1 > budget:
                    break
                ctx = pieces[j] + [sep] + ctx
            start = 1 + len(ctx)
            stop = start + len(pieces[i])
            if stop == start:  # no word pieces at all: pool the [SEP] that ends it
                stop = start + 1
            items.append(Item([cls, *ctx, *pieces[i], sep], start, stop, int(label), 1 + int(sum(sentiment))))
    return items


def _states(bert: Any, items: list[Item], low: int) -> list[Any]:
    """Token states after the first ``low`` layers, one (T_i, D) tensor per item."""
    import torch

    out: list[Any] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
    with torch.inference_mode():
        for s in range(0, len(order), 64):
            idx = order[s : s + 64]
            n = max(len(items[i].ids) for i in idx)
            ids = torch.zeros(len(idx), n, dtype=torch.long)
            mask = torch.zeros(len(idx), n)
            for r, i in enumerate(idx):
                ids[r, : len(items[i].ids)] = torch.tensor(items[i].ids)
                mask[r, : len(items[i].ids)] = 1.0
            h = bert.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
            ext = additive_mask(mask)
            for layer in bert.encoder.layer[:low]:
                o = layer(h, attention_mask=ext)
                h = o[0] if isinstance(o, tuple) else o
            for r, i in enumerate(idx):
                out[i] = h[r, : len(items[i].ids)].clone()
    return out


def study(
    encoder: Any,
    train: Sequence[Sequence[tuple[str | None, int, int]]],
    dev: Sequence[Sequence[tuple[str | None, int, int]]],
    n_classes: int,
    context: int,
    cfg: TuneConfig,
    budget: int = 96,
    pool_cls: bool = False,
    sentiment_weight: float = 0.0,
) -> dict[str, Any]:
    """Tune the top ``cfg.layers`` on ``context``-turn inputs; the head's dev weighted F1 per epoch.
    ``pool_cls``: the embedding pools the [CLS] state with the target's; ``sentiment_weight``: the
    weight of a sentiment head's loss."""
    import torch

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = encoder._load()
    bert, tok = model[0].auto_model, model.tokenizer

    def tokenize(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def build(ds: Sequence[Sequence[tuple[str | None, int, int]]]) -> list[Item]:
        return context_inputs(ds, tokenize, tok.cls_token_id, tok.sep_token_id, context, budget)

    tr, dv = build(train), build(dev)
    low = len(bert.encoder.layer) - cfg.layers
    tr_x, dv_x = _states(bert, tr, low), _states(bert, dv, low)
    tr_y = np.array([x.label for x in tr], dtype=np.int64)
    dv_y = np.array([x.label for x in dv], dtype=np.int64)
    top = torch.nn.ModuleList([copy.deepcopy(layer) for layer in bert.encoder.layer[low:]])
    dim = int(bert.config.hidden_size)
    head = torch.nn.Linear(dim, n_classes)
    sentiment_head = torch.nn.Linear(dim, 3)
    tr_s = torch.tensor([x.sentiment for x in tr], dtype=torch.long)

    def embed(idx: Any, xs: list[Any], items: list[Item]) -> Any:
        n = max(int(xs[i].shape[0]) for i in idx)
        x, mask, pool = torch.zeros(len(idx), n, dim), torch.zeros(len(idx), n), torch.zeros(len(idx), n)
        for r, i in enumerate(idx):
            x[r, : xs[i].shape[0]] = xs[i]
            mask[r, : xs[i].shape[0]] = 1.0
            pool[r, items[i].start : items[i].stop] = 1.0
        ext = additive_mask(mask)
        for layer in top:
            o = layer(x, attention_mask=ext)
            x = o[0] if isinstance(o, tuple) else o
        pooled = (x * pool[..., None]).sum(1) / pool.sum(1, keepdim=True)
        if pool_cls:
            pooled = 0.5 * (pooled + x[:, 0])
        return torch.nn.functional.normalize(pooled, dim=-1) * cfg.scale

    def logits(idx: Any, xs: list[Any], items: list[Item]) -> Any:
        return head(embed(idx, xs, items))

    class Heads(torch.nn.Module):  # both heads under the optimiser's head rate
        def __init__(self) -> None:
            super().__init__()
            self.emotion, self.sentiment = head, sentiment_head

    def loss_of(idx: Any) -> Any:  # train_epoch's logits_of: the emotion logits (and the sentiment head's loss)
        z = embed(idx, tr_x, tr)
        if sentiment_weight <= 0:
            return head(z)
        extra = torch.nn.functional.cross_entropy(sentiment_head(z), tr_s[idx], label_smoothing=cfg.label_smoothing)
        return head(z), extra * sentiment_weight

    steps = optimiser(top, Heads() if sentiment_weight > 0 else head, cfg, len(tr_x))
    dv_len = [int(h.shape[0]) for h in dv_x]
    history = []
    for epoch in range(cfg.epochs):
        loss = train_epoch(loss_of, tr_y, top, steps, cfg, rng)
        pred = predict(lambda idx: logits(idx, dv_x, dv), dv_len, top)
        history.append({"epoch": epoch + 1, "loss": round(loss, 4), "dev_wf1": round(weighted_f1(dv_y, pred), 4)})
        print(f"context {context}: {history[-1]} ({time.time() - t0:.0f}s)", file=sys.stderr)
    return {
        "context": context,
        "budget": budget,
        "pool": "target-cls" if pool_cls else "target",
        "sentiment_weight": sentiment_weight,
        "tokens_per_input_train": round(float(np.mean([len(x.ids) for x in tr])), 1),
        "history": history,
        "best_dev_wf1_head": max(h["dev_wf1"] for h in history),
        "seconds": round(time.time() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    from engines.datasets import load_dataset
    from engines.features.text import TextEncoder

    p = argparse.ArgumentParser(prog="python -m engines.features.context_study", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding the dataset (read-only)")
    p.add_argument("--dataset", default="meld", help="a text dataset with dialogues (meld, emorynlp, iemocap-text)")
    p.add_argument("--context", type=int, nargs="+", default=[0, 3], help="preceding turns per input, one run each")
    p.add_argument("--budget", type=int, default=96, help="tokens of preceding turns at most")
    p.add_argument("--epochs", type=int, default=TuneConfig.epochs, help="tuning epochs per run")
    p.add_argument("--layers", type=int, default=TuneConfig.layers, help="MiniLM's top layers tuned")
    p.add_argument("--seed", type=int, default=0, help="the tuning's initialisation and batch order")
    p.add_argument(
        "--pool",
        choices=("target", "target-cls"),
        default="target",
        help="the target's tokens, or those and the [CLS] state",
    )
    p.add_argument(
        "--sentiment-weight",
        type=float,
        default=0.0,
        help="weight of a sentiment head's loss beside the emotion head's (0: none)",
    )
    ns = p.parse_args(argv)
    import torch

    from engines.runtime.threads import available_cores

    torch.set_num_threads(max(1, available_cores()))
    train, dev = (load_dataset(ns.dataset, ns.data_dir, s) for s in ("train", "dev"))
    n_classes = len(train[0].labels)

    def turns(ds: list[Any]) -> list[list[tuple[str | None, int, int]]]:
        return [[(u.text, u.emotion, u.sentiment) for u in d.utterances] for d in ds]

    cfg = TuneConfig(layers=ns.layers, epochs=ns.epochs, seed=ns.seed)
    encoder = TextEncoder()
    for k in ns.context:
        result = study(encoder, turns(train), turns(dev), n_classes, k, cfg, ns.budget, ns.pool == "target-cls",
                       ns.sentiment_weight)  # fmt: skip
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
