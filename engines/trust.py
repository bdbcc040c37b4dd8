"""Trust a voice only when it should be trusted, and weights that mean one thing for every engine.

:class:`TrustedNet` wraps any engine's network (:mod:`engines.models`) in the exported graph. For
each window it runs the network on ``2**M`` copies, one for each subset of the ``M`` modalities
the network has, with the others marked absent *at the target utterance* (its context is
untouched); a network whose forward takes ``projected`` (UniMSE) projects each position once for all copies, and
a causal one with ``target_rows`` (the shipped default) computes only the target's row of each
copy, from the full run's keys and values: no other row sees the target, so they are the full
run's (about half the engine's time on windows with a voice, where every row ran 4 times). Only
windows whose target holds a voice or two modalities need the copies: the others (a text-only
call, a voice without speech) run once, their output the network's and their weight all on the
one modality present, which is what the copies would give them (with a words network, below, a
window whose target has no voice gets the words network's output instead). From those:

**The voice gate** (networks with audio). With ``p_t`` the prediction without the target's audio
and ``p_a`` the prediction from its audio alone (the context of the window kept in both: an
approximation that counts the context twice), how likely is it that the voice belongs to these
words, against it having another emotion than the utterance (a contradiction, with prior ``pi``)?
By Bayes, with ``r = p_a / prior`` (``prior``: the training labels' frequencies)::

    agree = sum_y q_t(y) r(y)        other = sum_y q_t(y) mean_{y' != y} r(y')
    w = (1 - pi) agree / ((1 - pi) agree + pi other)

with ``q_t = softmax(log p_t / text_temperature)`` (1 in the shipped models: ``q_t = p_t``; ``sweep
--temperatures`` measures others; ``p_a`` likewise at ``audio_temperature``, ``sweep
--audio-temperatures``: neither moved the trade-off out, README "Trusting a voice"), and the
output is ``w * p_all + (1 - w) * p_t`` (sentiment
likewise). ``pi`` depends on how
familiar the voice is: ``prior`` for voices like those the model learned from, ``prior_unfamiliar``
for others (the espeak-ng speech of the demo, say). Familiarity is a distance of the target's raw
audio vector from the training clips (clean and through the telephone channel): per dimension,
the mean of its squared whitened coordinates in their top ``k`` principal components and of its
squared residual outside them over the residual variance, ``s = (inside + outside) / 2``; then
``f = sigmoid((tau - s) / (0.1 tau))`` with ``tau`` twice the 99th percentile of ``s`` over the
training clips, and ``pi = f prior + (1 - f) prior_unfamiliar``.

**The words network** (optional, ``wrap(..., text_net=...)``; the shipped default's since 1.5.0):
a network of the words alone (``config.json``'s ``text_network``) that computes every coalition
without the target's voice (``p_t`` and the empty one) and every window whose target has no voice,
where the network would otherwise give them with its voice dropped; the network then runs only on
the windows whose target has a voice (each window runs one of the two). A network trained for the
words alone reads them better than one trained for words and voice together (MELD dev 0.600
against 0.573 in 1.5.0), and the gate judges a voice against that reading and falls back to it.
1.6.0's was trained with half its dialogues unpunctuated (0.592): less sure of itself, it is a
better judge of a voice (``models/default/README.md``).

**The weights.** Each modality's share of the fused decision: the Shapley value of the modality in
the log-probability of the predicted label, over the subsets above, negative values counted as 0,
normalised to sum 1 over the modalities present at the target (an absent modality changes nothing,
so it gets exactly 0). A modality whose removal would not change the label's probability carried
none of the decision; text and audio that agree share it. The voice counts by the gate in every
subset it is in (each such subset's prediction is mixed with the same subset without the voice, by
``w``), not only in the full one: a voice the gate turned away is a null player and gets 0, where
counting its prediction alone ungated credited it with part of a decision it did not move.

What it costs and buys, on the composite's dev split (``emostream evaluate``; ``prior`` 0.05 in
1.2.0, 0.1 in 1.3.0-1.5.0, 0.18 since 1.6.0): see ``models/default/README.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from engines.interface import MODALITIES

AUDIO = MODALITIES.index("audio")
TRUST_WEIGHTS = "trust.safetensors"


@dataclass(frozen=True)
class TrustConfig:
    prior: float = 0.05  # contradiction prior for familiar voices
    prior_unfamiliar: float = 0.5  # and for voices unlike the training ones
    k: int = 32  # principal components of the familiarity distance
    tau: float = 0.0  # familiarity threshold (fit)
    residual_var: float = 1.0  # mean variance outside the k components (fit)
    n_fit: int = 0  # audio vectors the familiarity was fit on
    text_temperature: float = 1.0  # p_t's temperature in the gate (> 1: a text less sure of itself)
    audio_temperature: float = 1.0  # and p_a's (> 1: a voice less sure of itself)

    def __post_init__(self) -> None:
        for name in ("text_temperature", "audio_temperature"):
            t = getattr(self, name)
            if not (t > 0 and math.isfinite(t)):
                raise ValueError(f"{name} must be a positive number, not {t}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_trust(
    labels: np.ndarray, n_classes: int, audio: np.ndarray | None, cfg: TrustConfig
) -> tuple[dict[str, np.ndarray], TrustConfig]:
    """The gate's tensors from the training labels and raw training audio vectors (N, Da) (None:
    a model without audio; only the class prior is kept)."""
    prior = np.bincount(labels.astype(np.int64), minlength=n_classes).astype(np.float64)
    tensors = {"class_prior": ((prior + 1.0) / (prior.sum() + n_classes)).astype(np.float32)}
    if audio is None or len(audio) == 0:
        return tensors, cfg
    x = np.asarray(audio, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("the voice gate's training audio vectors must be finite")
    if len(x) < 3:  # too few voices to tell familiar from not: no gate, the Shapley weights only
        return tensors, cfg
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / max(1, len(x) - 1)
    k = max(1, min(cfg.k, len(x) - 2, x.shape[1] - 1))
    residual_var = float(max(var[k:].sum() / max(1, x.shape[1] - k), 1e-12))
    tensors.update(
        audio_mean=mean.astype(np.float32),
        audio_components=vt[:k].astype(np.float32),
        audio_scale=(1.0 / np.sqrt(np.maximum(var[:k], 1e-12))).astype(np.float32),
    )
    fitted = dataclasses.replace(cfg, k=k, tau=0.0, residual_var=residual_var, n_fit=len(x))
    score = unfamiliarity(x, tensors, fitted)
    tau = max(float(2.0 * np.percentile(score, 99)), 1e-6)  # identical vectors: 0, and the graph divides by tau
    return tensors, dataclasses.replace(fitted, tau=tau)


def unfamiliarity(x: np.ndarray, tensors: dict[str, np.ndarray], cfg: TrustConfig) -> np.ndarray:
    """(N,) the familiarity distance ``s`` of raw audio vectors (numpy twin of the graph's)."""
    z = np.asarray(x, dtype=np.float64) - tensors["audio_mean"]
    proj = z @ tensors["audio_components"].T.astype(np.float64)  # (N, k)
    inside = ((proj * tensors["audio_scale"]) ** 2).mean(1)
    outside = np.maximum((z**2).sum(1) - (proj**2).sum(1), 0.0) / max(1, z.shape[1] - cfg.k) / cfg.residual_var
    return np.asarray(0.5 * (inside + outside))


def save_trust(model_dir: str | Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(Path(model_dir) / TRUST_WEIGHTS))


def load_trust(model_dir: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(Path(model_dir) / TRUST_WEIGHTS)))


def check_text_net(net: Any, text_net: Any, tensors: dict[str, np.ndarray]) -> None:
    """Refuse a words network that cannot stand in for ``net`` without the target's voice: it must
    read the text alone, with ``net``'s window, causality and classes, and ``net`` must be a gated
    network of text and audio."""
    text = MODALITIES.index("text")
    if sorted(net.active) != sorted({text, AUDIO}) or "audio_mean" not in tensors:
        raise ValueError("a words network stands in for a voice-gated network of text and audio only")
    if list(text_net.active) != [text]:
        names = [MODALITIES[m] for m in text_net.active]
        raise ValueError(f"the words network must read the text alone, not {names}")
    for field in ("causal", "max_window", "n_classes", "text_dim"):
        mine, theirs = getattr(net.cfg, field), getattr(text_net.cfg, field)
        if mine != theirs:
            raise ValueError(f"the words network's {field} is {theirs}, the network's {mine}")


def _subsets(active: list[int]) -> list[tuple[int, ...]]:
    """Every subset of ``active`` (the modalities kept at the target), the full one first."""
    out = [tuple(c) for r in range(len(active), -1, -1) for c in itertools.combinations(active, r)]
    return out


def _rows(mask: Any) -> Any:
    """The indices of ``mask``'s true rows, or row 0 alone where there are none (never an empty
    batch in the graph; that row's result is never read: see ``back`` in :func:`wrap`)."""
    import torch

    first = torch.arange(mask.shape[0], device=mask.device) == 0
    return torch.nonzero(mask | (first & ~mask.any())).reshape(-1)


def _positions(mask: Any, n: int) -> Any:
    """(B,) each row's place among the ``n`` results computed on :func:`_rows` ``(mask)``: its own
    for a true row, the last one (read nowhere) for the others."""
    import torch

    return torch.where(mask, torch.cumsum(mask.long(), 0) - 1, torch.full_like(mask, n - 1, dtype=torch.long))


def _takes_projected(net: Any) -> bool:
    """Whether the network's forward takes its inputs already projected (``projected=``: UniMSE),
    so the copies of a window share one projection."""
    return bool(getattr(net, "takes_projected", False))


def wrap(net: Any, tensors: dict[str, np.ndarray], cfg: TrustConfig, text_net: Any = None) -> Any:
    """``net`` inside a :class:`TrustedNet` (a torch module with the same forward signature).

    ``text_net`` (optional): a network of the words alone that stands in for ``net`` wherever the
    target's voice is absent: the gate's ``p_t``, the coalitions without the voice, and every
    window whose target has no voice (a text-only call, a voice without speech)."""
    import torch
    from torch import nn

    if text_net is not None:
        check_text_net(net, text_net, tensors)

    class TrustedNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.text_net = text_net
            self.cfg = net.cfg
            self.active = list(net.active)
            self.trust = cfg
            self.subsets = _subsets(self.active)
            for name, value in tensors.items():
                self.register_buffer(name, torch.from_numpy(np.asarray(value, dtype=np.float32)))
            self.gated = AUDIO in self.active and "audio_mean" in tensors
            # the copies differ from the full run only at the target: a causal network whose other
            # rows never see it computes that row alone (UniMSE; the others run the copies whole)
            self.rows_only = hasattr(net, "target_rows") and _takes_projected(net) and bool(net.cfg.causal)
            self.words_constant = bool(getattr(text_net, "constant_without_target", False))

        def _run(
            self, feats: Any, projected: Any, rows: tuple[Any, ...], n: int, states: list[Any] | None = None
        ) -> dict[str, Any]:
            """The network on ``n`` copies of the windows (``rows``: present per copy, concatenated,
            then speakers, valid and target), from projected positions when it takes them."""
            rest = (rows[0], *(torch.cat([x] * n, 0) for x in rows[1:]))
            if projected is not None:  # each position projected once, not once per copy
                return self.net(
                    {},
                    *rest,
                    projected={m: torch.cat([v] * n, 0) for m, v in projected.items()},
                    states=states,
                )
            copies = {m: None if x is None else torch.cat([x] * n, dim=0) for m, x in feats.items()}
            return self.net(copies, *rest)

        def forward(
            self, features: Mapping[str, Any], present: Any, speakers: Any, valid: Any, target: Any
        ) -> dict[str, Any]:
            b, w = valid.shape
            at = (torch.arange(w, device=valid.device)[None, :] == target[:, None]).to(present.dtype)  # (B, W)
            present_t = (present * at[..., None]).sum(1).clamp(max=1.0)  # (B, 3)
            feats = {m: features.get(m) for m in MODALITIES}
            text: Any = feats["text"]  # there whenever a words network is (check_text_net)
            mine = torch.tensor(
                [1.0 if m in self.active else 0.0 for m in range(len(MODALITIES))], device=present.device
            )
            only = present_t * mine / (present_t * mine).sum(-1, keepdim=True).clamp(min=1.0)  # (B, 3) the one present
            # The other subsets change the result only where the target holds two modalities or
            # more (the weights' Shapley values) or a voice (the gate): elsewhere every subset
            # computes the full one or nothing, the weights are the present modality's, and those
            # windows (a text-only call, a voice without speech) skip them
            need = (present_t[:, self.active] > 0.0).sum(-1) >= 2
            if self.gated:
                need = need | (present_t[:, AUDIO] > 0.0)
            silent = present_t[:, AUDIO] <= 0.0
            if self.text_net is not None:  # the network runs only where the target has a voice
                need = need | ~silent  # (the same rows: a words network sits in a gated text + audio net)
            # those rows (row 0 alone, whatever it holds, where none does: never an empty batch); the
            # rows that skipped point at the last result, which `back` ignores
            idx = _rows(need)  # (G,)
            g = idx.shape[0]
            at_g, present_g = at.index_select(0, idx), present.index_select(0, idx)
            feats_g = {m: None if x is None else x.index_select(0, idx) for m, x in feats.items()}
            others_g = tuple(x.index_select(0, idx) for x in (speakers, valid, target))
            # every window with all it has at the target; a causal network that can compute the
            # target's row alone keeps each block's keys and values for the copies (see `target_rows`)
            states: list[Any] | None = [] if self.rows_only else None
            if self.text_net is None:  # every window, by the network
                projected = self.net.project(feats) if _takes_projected(self.net) else None
                out = self._run(feats, projected, (present, speakers, valid, target), 1, states)
                logp_full = torch.log_softmax(out["logits"], dim=-1)  # (B, C)
                sent_full = out["sentiment"]  # (B,)
                logp_full_g, sent_full_g = logp_full.index_select(0, idx), sent_full.index_select(0, idx)
                projected_g = None if projected is None else {m: v.index_select(0, idx) for m, v in projected.items()}
                if states is not None:
                    states = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in states]
            else:
                # a target without a voice: the words network's, run on those windows only (as
                # `idx`: row 0 where there are none); a target with one: the network's, on those only
                idx_w = _rows(silent)
                words = self.text_net(
                    {"text": text.index_select(0, idx_w)},
                    *(x.index_select(0, idx_w) for x in (present, speakers, valid, target)),
                )
                pos_w = _positions(silent, idx_w.shape[0])
                # every row: the rows with a voice take `final` below instead (`back`)
                logp_full = torch.log_softmax(words["logits"], dim=-1).index_select(0, pos_w)
                sent_full = words["sentiment"].index_select(0, pos_w)
                projected_g = self.net.project(feats_g) if _takes_projected(self.net) else None
                out = self._run(feats_g, projected_g, (present_g, *others_g), 1, states)
                logp_full_g, sent_full_g = torch.log_softmax(out["logits"], dim=-1), out["sentiment"]
            presents = []
            for kept in self.subsets[1:]:
                drop = torch.tensor(
                    [0.0 if m in kept else 1.0 for m in range(len(MODALITIES))],
                    dtype=present.dtype,
                    device=present.device,
                )
                presents.append(present_g * (1.0 - at_g[..., None] * drop))
            # the coalitions without the target's voice go to the words network when there is one
            by_words = [self.text_net is not None and AUDIO not in kept for kept in self.subsets[1:]]
            mine_p = [p for p, w in zip(presents, by_words, strict=True) if not w]
            words_p = [p for p, w in zip(presents, by_words, strict=True) if w]
            rows_g = (torch.cat(mine_p, 0), *others_g)
            if states is not None:  # rows_only: a network with `project`, so projected_g is set
                out_g = self.net.target_rows(
                    projected_g,
                    *rows_g,
                    states,
                    len(mine_p),
                )
            else:
                out_g = self._run(feats_g, projected_g, rows_g, len(mine_p))
            chunks = list(torch.log_softmax(out_g["logits"], dim=-1).reshape(len(mine_p), g, -1).unbind(0))
            sents = list(out_g["sentiment"].reshape(len(mine_p), g).unbind(0))
            if words_p:
                # a words network whose output with nothing at the target is one constant (Foal-Net
                # reads the window only through the target's vectors) runs that coalition on one row
                words_kept = [kept for kept, w in zip(self.subsets[1:], by_words, strict=True) if w]
                n_rows = [1 if self.words_constant and not kept else g for kept in words_kept]
                text_g = text.index_select(0, idx)
                out_w = self.text_net(
                    {"text": torch.cat([text_g[:n] for n in n_rows], 0)},
                    torch.cat([p[:n] for p, n in zip(words_p, n_rows, strict=True)], 0),
                    *(torch.cat([x[:n] for n in n_rows], 0) for x in others_g),
                )
                w_logp = [x.expand(g, -1) for x in torch.log_softmax(out_w["logits"], dim=-1).split(n_rows, 0)]
                w_sent = [x.expand(g) for x in out_w["sentiment"].split(n_rows, 0)]
                mine_l, mine_s, words_l, words_s = iter(chunks), iter(sents), iter(w_logp), iter(w_sent)
                chunks = [next(words_l) if w else next(mine_l) for w in by_words]
                sents = [next(words_s) if w else next(mine_s) for w in by_words]
            logp = torch.stack([logp_full_g, *chunks], 0)  # (S, G, C)
            sent = torch.stack([sent_full_g, *sents], 0)  # (S, G)
            value = {kept: logp[i] for i, kept in enumerate(self.subsets)}
            full = self.subsets[0]
            final, final_sent = logp[0], sent[0]
            gate: Any = None  # (G, 1) the trust in the voice, where there is one to weigh
            if self.gated:
                without = tuple(m for m in full if m != AUDIO)
                i_t, i_a = self.subsets.index(without), self.subsets.index((AUDIO,))
                p_all, p_t, p_a = logp[0].exp(), logp[i_t].exp(), logp[i_a].exp()
                if self.trust.audio_temperature != 1.0:
                    p_a = torch.softmax(logp[i_a] / self.trust.audio_temperature, -1)
                r = p_a / cast(Any, self.class_prior)  # (G, C)
                c = r.shape[-1]
                q_t = (
                    p_t
                    if self.trust.text_temperature == 1.0
                    else torch.softmax(logp[i_t] / self.trust.text_temperature, -1)
                )
                agree = (q_t * r).sum(-1)
                other = (q_t * (r.sum(-1, keepdim=True) - r) / (c - 1)).sum(-1)
                x = (cast(Any, feats_g["audio"]) * at_g[..., None]).sum(
                    1
                ) - self.audio_mean  # (G, Da) the target's raw audio
                proj = x @ self.audio_components.T  # (G, k)
                inside = ((proj * self.audio_scale) ** 2).mean(-1)
                outside = (x.pow(2).sum(-1) - proj.pow(2).sum(-1)).clamp(min=0.0) / max(1, x.shape[-1] - self.trust.k)
                s = 0.5 * (inside + outside / self.trust.residual_var)
                familiar = torch.sigmoid((self.trust.tau - s) / (0.1 * self.trust.tau))
                pi = familiar * self.trust.prior + (1.0 - familiar) * self.trust.prior_unfamiliar
                gate = (1.0 - pi) * agree / ((1.0 - pi) * agree + pi * other).clamp(min=1e-12)  # (G,)
                gate = gate[:, None]
                final = torch.log((gate * p_all + (1.0 - gate) * p_t).clamp(min=1e-12))
                final_sent = gate[:, 0] * sent[0] + (1.0 - gate[:, 0]) * sent[i_t]
                # the voice counts by the gate in every coalition it joins, not only in the full one:
                # a voice the gate turned away carried none of the decision (a null player)
                for kept in self.subsets:
                    if AUDIO in kept:
                        lesser = self.subsets.index(tuple(m for m in kept if m != AUDIO))
                        value[kept] = torch.log(
                            (gate * value[kept].exp() + (1.0 - gate) * logp[lesser].exp()).clamp(min=1e-12)
                        )
            best = final.argmax(-1, keepdim=True)  # (G, 1)
            v = {kept: lp.gather(-1, best)[:, 0] for kept, lp in value.items()}  # (G,) each
            m_all = len(self.active)
            phi = []
            for m in range(len(MODALITIES)):
                if m not in self.active:
                    phi.append(torch.zeros_like(v[full]))
                    continue
                total = torch.zeros_like(v[full])
                for kept in self.subsets:
                    if m in kept:
                        continue
                    with_m = tuple(sorted((*kept, m)))
                    size = len(kept)
                    coef = math.factorial(size) * math.factorial(m_all - size - 1) / math.factorial(m_all)
                    total = total + coef * (v[with_m] - v[kept])
                phi.append(total)
            share = torch.stack(phi, dim=-1).clamp(min=0.0)  # (G, 3)
            share = share * present_t.index_select(0, idx)
            norm = share.sum(-1, keepdim=True)
            # no modality raised the label (every value <= 0): an even share of what is present, the
            # voice counted by its trust, so a voice the gate turned away gets 0 here too
            even = present_t.index_select(0, idx) * mine
            if gate is not None:
                even = even * torch.where(torch.arange(even.shape[-1], device=even.device) == AUDIO, gate, 1.0)
            even_norm = even.sum(-1, keepdim=True)
            fallback = torch.where(even_norm > 1e-6, even / even_norm.clamp(min=1e-12), only.index_select(0, idx))
            weights_g = torch.where(norm > 1e-6, share / norm.clamp(min=1e-12), fallback)
            # back to every row, densely (no scatter in the graph): row i takes result pos[i] of the
            # rows that needed the subsets, the others the extra last one, which `where` ignores
            pos = _positions(need, g)  # (B,)

            def back(x_g: Any, x_all: Any) -> Any:
                mask = need.reshape((b,) + (1,) * (x_all.dim() - 1))
                return torch.where(mask, x_g.index_select(0, pos), x_all)

            return {
                "logits": back(final, logp_full),
                "sentiment": back(final_sent, sent_full),
                "weights": back(weights_g, only),
            }

    return TrustedNet().eval()


def sweep(
    model: str,
    data_dir: str,
    priors: list[float],
    seed: int = 0,
    fold: int | None = None,
    temperatures: Sequence[float] | None = None,
    audio_temperatures: Sequence[float] | None = None,
    transcripts: str = "as-written",
    channel: str = "clean",
) -> list[dict[str, Any]]:
    """Dev figures of ``model``'s network under its own trust tensors with the familiar-voice prior
    set to each of ``priors``: clean W-F1, W-F1 with half the clips swapped (``--corrupt
    audio=0.5``) and the mean audio weight on the swapped and the genuine clips; and the text alone.
    ``transcripts``: "asr" reads every transcript as a speech-to-text engine without punctuation
    writes it (``engines.datasets.base.as_transcribed``); ``channel``: every clip heard through
    ``evaluate --channel``'s line (``telephone``: seeded by ``seed``)."""
    import dataclasses

    import torch

    from engines import artifact
    from engines.corrupt import audio_pool, corrupt_dialogues, parse_corrupt
    from engines.datasets import load_dataset
    from engines.datasets.base import as_transcribed
    from engines.datasets.ravdess import fold_split
    from engines.evaluate import predict_prepared
    from engines.features.channel import make_channel
    from engines.metrics import classification_report
    from engines.prepare import heard_as, prepare
    from engines.registry import load_extractors
    from engines.runtime.torch import TorchEngine

    path = artifact.resolve_model_dir(model)
    cfg = artifact.read_json(path, artifact.CONFIG)
    if not cfg.get("trust"):
        raise SystemExit(f"{path} has no trust gate (trained with --no-trust, or before 1.2.0)")
    net = artifact.load_torch_model(path, trusted=False)
    text_net = artifact.load_text_network(path, cfg)
    tensors, base = load_trust(path), TrustConfig(**cfg["trust"])
    labels = tuple(artifact.read_json(path, artifact.LABELS))
    ex = load_extractors(path)
    assert ex.audio is not None, "a gated model has audio"
    split = fold_split("dev", fold, "meld-ravdess")  # a fold's held-out actors (a nested fold's test)
    clean = as_transcribed(load_dataset("meld-ravdess", data_dir, split, seed=seed), transcripts)
    swapped = corrupt_dialogues(clean, parse_corrupt("audio=0.5"), seed, audio_pool("meld-ravdess", data_dir, split))
    data = {}
    line = make_channel(channel, seed)
    for name, ds in (("clean", clean), ("swapped", swapped.dialogues)):
        table = heard_as(path, ds, ex.audio, channel=line)
        # a revision model reads its windows as it was trained: with its later utterances
        data[name] = prepare(ds, ex.spec, ex.text, table, int(cfg["max_window"]), future=int(cfg.get("future", 0)))
    bad = swapped.mask
    rows: list[dict[str, Any]] = []
    text_alone = 0.0
    with torch.inference_mode():
        grid = itertools.product(
            priors, temperatures or [base.text_temperature], audio_temperatures or [base.audio_temperature]
        )
        for prior, temperature, audio_temperature in grid:
            trust = dataclasses.replace(
                base, prior=prior, text_temperature=temperature, audio_temperature=audio_temperature
            )
            engine = TorchEngine(net=wrap(net.eval(), tensors, trust, text_net=text_net), labels=labels)
            row: dict[str, Any] = {
                "transcripts": transcripts,
                "channel": channel,
                "prior": prior,
                "text_temperature": temperature,
                "audio_temperature": audio_temperature,
            }
            if not rows:  # the text alone (the same for every prior: no voice, no gate)
                probs, _, weights = predict_prepared(engine, data["clean"], ["text"])
                labels_ = data["clean"].labels
                text_alone = classification_report(labels_, probs.argmax(1), weights, labels)["weighted_f1"]
            row["text_alone_wf1"] = text_alone
            for name, d in data.items():
                probs, _, weights = predict_prepared(engine, d, ["text", "audio"])
                row[f"{name}_wf1"] = classification_report(d.labels, probs.argmax(1), weights, labels)["weighted_f1"]
                if name == "swapped":
                    w_bad, w_good = float(weights[bad, AUDIO].mean()), float(weights[~bad, AUDIO].mean())
                    row.update(audio_weight_swapped=round(w_bad, 4), audio_weight_genuine=round(w_good, 4))
                    row["ratio"] = round(w_bad / w_good, 4)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m engines.trust sweep --model default --data-dir DIR [--priors 0,0.05,...]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m engines.trust", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="dev figures of a gated model's network for several contradiction priors")
    s.add_argument("--model", default="default", help="a gated artifact (a name under models/ or a directory)")
    s.add_argument("--data-dir", required=True, help="folder holding meld/ and ravdess/")
    s.add_argument("--priors", default="0,0.02,0.05,0.1,0.2,0.3,0.5,1", help="comma-separated contradiction priors")
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the composite's clip assignment, the swap and (--channel telephone) the lines",
    )
    s.add_argument(
        "--transcripts",
        default="as-written",
        choices=["as-written", "asr"],
        help="asr: every transcript as a speech-to-text engine without punctuation writes it",
    )
    s.add_argument(
        "--channel",
        default="clean",
        choices=["clean", "telephone"],
        help="telephone: every clip through evaluate --channel telephone's seeded line (--seed picks it)",
    )
    s.add_argument(
        "--temperatures",
        default=None,
        help="comma-separated temperatures of the text's prediction in the gate (default: the model's own)",
    )
    s.add_argument(
        "--audio-temperatures",
        default=None,
        help="comma-separated temperatures of the voice's prediction in the gate (default: the model's own)",
    )
    s.add_argument(
        "--fold",
        type=int,
        default=None,
        metavar="K",
        help="the dev split of actor fold K (a nested fold's test actors)",
    )
    ns = parser.parse_args(argv)
    temperatures = [float(t) for t in ns.temperatures.split(",")] if ns.temperatures else None
    audio_t = [float(t) for t in ns.audio_temperatures.split(",")] if ns.audio_temperatures else None
    priors = [float(p) for p in ns.priors.split(",")]
    for row in sweep(
        ns.model, ns.data_dir, priors, ns.seed, ns.fold, temperatures, audio_t, ns.transcripts, ns.channel
    ):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
