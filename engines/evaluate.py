"""``emostream evaluate``: figures of an artifact (run by ONNX Runtime) on a dataset split.

Prints one JSON object: weighted_f1, accuracy, macro_f1, n, per_class_f1, mean_weights (mean
relevance weight per modality), sentiment_mae, plus what was evaluated (model, dataset, split,
modalities, future, seed) and ``corrupt`` (null unless asked for).

- ``--future K``: windows hold up to K later utterances of the dialogue (``prepare(future=K)``).
  The past a window keeps is the model's own: a model trained with ``future = F`` (config.json;
  0 for a causal one) keeps ``max_window - 1 - min(F, k)`` earlier utterances, k being the later
  ones the window got. So a model evaluated with its own K sees exactly its training (and the
  stream's) windows, and a causal model keeps its whole causal past: its figures do not depend on K.
- ``--corrupt audio=0.5``: that fraction of utterances gets the audio of another emotion
  (:mod:`engines.corrupt`); ``corrupt`` then reports the figures and mean modality weights of the
  corrupted and of the clean utterances apart (a clean utterance may have corrupted context).
- ``--plot FILE.png``: the confusion matrix, counts and row-normalised (:mod:`engines.plot`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.argtypes import decibels, positive_int
from engines.features.acknowledge import ACKNOWLEDGEMENTS
from engines.features.channel import CHANNELS
from engines.features.speech import MIN_SPEECH_S
from engines.features.text import TRANSCRIPTS
from engines.interface import MODALITIES, Engine
from engines.prepare import Prepared
from engines.windows import WindowIndex


def add_evaluate_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from engines.artifact import SHIPPED
    from engines.datasets import DATASETS
    from engines.registry import RUNTIMES

    parser.add_argument(
        "--model", default="default", help=f"artifact directory, or a shipped one: {', '.join(SHIPPED)}"
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="the data to score on")
    parser.add_argument("--data-dir", required=True, help="folder holding meld/, ravdess/, ...")
    parser.add_argument(
        "--split", default="dev", help="the dataset split to score (train, dev, test where the data has one)"
    )
    parser.add_argument(
        "--fold", type=int, default=None, metavar="K", help="RAVDESS-based datasets: --split of actor fold K (0-4)"
    )
    parser.add_argument(
        "--modalities", default=None, help="comma-separated subset to feed (e.g. 'text'); default: all the data has"
    )
    parser.add_argument(
        "--runtime", default="onnxruntime", choices=RUNTIMES, help="what runs the encoders and the engine"
    )
    parser.add_argument("--seed", type=int, default=0, help="composite clip assignment and --corrupt seed")
    parser.add_argument(
        "--future", type=int, default=0, help="K later utterances of context per window (0: causal windows)"
    )
    parser.add_argument(
        "--corrupt",
        default=None,
        metavar="MODALITY[:KIND]=FRACTION",
        help="give that fraction of utterances the input of another emotion (audio: a RAVDESS clip of the "
        "same split, same actor when possible; text: another utterance's text), e.g. audio=0.5; or audio "
        "without a voice: audio:noise=1.0, audio:silence=1.0 (engines/corrupt.py)",
    )
    parser.add_argument(
        "--channel",
        default="clean",
        choices=list(CHANNELS),
        help="telephone: every clip through a seeded simulated phone line (8 kHz, 300-3400 Hz, G.711, noise at "
        "10-30 dB SNR, +-6 dB gain, 2%% lost packets; engines/features/channel.py), seeded by --seed; "
        "8k-as-16k / 16k-as-8k / alaw-as-mulaw / mulaw-as-alaw: every clip as the worker decodes it when a "
        "producer declared the wrong rate or G.711 law (engines/features/format_check.py); pauses: every clip padded "
        "as a recorder or diarizer pads its segments (2-8 s of line before and after the speech, a 2-4 s pause "
        "inside it, the line's idle noise 20-50 dB under the voice); long: every clip said again and again into "
        "15-45 s, one long utterance",
    )
    parser.add_argument(
        "--line-gain",
        type=decibels,
        default=0.0,
        metavar="DB",
        help="every clip DB louder (quieter where negative, held under clipping) before --channel: a line whose "
        "level is not the studio's (within -60 to 60; the telephone's nominal level is roughly 10-12 dB over RAVDESS's "
        "median clip; "
        "engines/features/channel.py LineGain)",
    )
    parser.add_argument(
        "--levels",
        default="model",
        choices=["model", "as-sent", "speaker"],
        help="as the stream's engine.audio_level: model (default), the level the model learnt its voices at; "
        "as-sent hears every clip at its level; speaker at its level relative to its speaker's own so far in its "
        "dialogue (engines/features/level.py)",
    )
    parser.add_argument(
        "--silences",
        default="shorten",
        choices=["shorten", "keep"],
        help="shorten (default, as the stream does): long silences cut short before a clip is encoded "
        "(engines/features/pauses.py); keep: every clip encoded whole, for the comparison",
    )
    parser.add_argument(
        "--transcripts",
        default="as-written",
        choices=list(TRANSCRIPTS),
        help="asr: every transcript as a speech-to-text engine without punctuation or casing writes it (lower case, "
        "no '?', '!', '...': engines/features/text.py asr_form); as-written (default): the dataset's own",
    )
    parser.add_argument(
        "--acknowledgements",
        default="agents",
        choices=list(ACKNOWLEDGEMENTS),
        help="as the stream's engine.acknowledgements: a feeling a transcript names as the listener's ('I understand "
        "your frustration') is made neutral, and an apology ('I'm so sorry for the wait') an acknowledgement, before "
        "it is encoded (engines/features/acknowledge.py) in the lines of "
        "agents (default: speakers named agent*, rep, rep-*, representative* or operator*, which no dataset has), "
        "of all speakers, or off",
    )
    parser.add_argument(
        "--format-check",
        default="warn",
        choices=["warn", "drop", "off"],
        help="as the stream's engine.format_check: warn (default) uses the clips the format check judges "
        "mis-declared and counts them (misdeclared_clips); drop does not use them; off does not check",
    )
    parser.add_argument(
        "--min-speech-s",
        type=float,
        default=MIN_SPEECH_S,
        metavar="S",
        help="clips with less speech (Silero VAD) count as no audio, as in the stream (0: every clip counts)",
    )
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="write the confusion matrix there")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="windows per engine call")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads for the runtime")
    parser.add_argument("--cache-dir", default=None, help="feature cache root (default ~/.cache/emostream)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    return parser


def predict_prepared(
    engine: Engine, data: Prepared, modalities: Sequence[str], batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs (N, C), sentiment (N,), weights (N, 3)) over every window of ``data``."""
    from engines.windows import gather_batch, keep_modalities

    probs, sent, weights = [], [], []
    for start in range(0, data.n, batch_size):
        rows = np.arange(start, min(start + batch_size, data.n))
        batch = gather_batch(data.windows, rows, data.feats, data.has, engine.info.features)
        out = engine.predict(keep_modalities(batch, modalities))
        probs.append(out.probs)
        sent.append(out.sentiment)
        weights.append(out.weights)
    return np.concatenate(probs), np.concatenate(sent), np.concatenate(weights)


def score_engine(
    engine: Engine, data: Prepared, modalities: Sequence[str], batch_size: int = 256
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(report, predicted class (N,), weights (N, 3)) of ``engine`` on every window of ``data``."""
    from engines.metrics import classification_report

    if tuple(engine.info.labels) != tuple(data.label_names):
        from engines.errors import DatasetError

        raise DatasetError(
            f"the model's labels {engine.info.labels} are not the dataset's {data.label_names}: "
            "evaluate a model on a dataset with its label set"
        )
    probs, sent, weights = predict_prepared(engine, data, modalities, batch_size)
    pred = probs.argmax(1)
    report = classification_report(data.labels, pred, weights, data.label_names)
    report["sentiment_mae"] = round(float(np.abs(sent - data.sentiment).mean()), 4)
    return report, pred, weights


def evaluate_engine(engine: Engine, data: Prepared, modalities: Sequence[str], batch_size: int = 256) -> dict[str, Any]:
    """The figures of ``engine`` on ``data`` fed ``modalities`` (see :func:`score_engine`)."""
    return score_engine(engine, data, modalities, batch_size)[0]


def context_windows(windows: WindowIndex, speakers: Sequence[str], max_window: int, trained_future: int) -> WindowIndex:
    """Windows of ``dialogue_windows(..., max_window + K, future=K)`` cut to the past a model trained
    with ``trained_future`` keeps: ``max_window - 1 - min(trained_future, k)`` earlier utterances
    for a window holding k later ones. ``speakers``: the flat utterances' speaker names."""
    from engines.windows import local_speakers

    n, width = windows.utt.shape
    utt = np.full((n, width), -1, dtype=np.int64)
    spk = np.zeros((n, width), dtype=np.int64)
    target = np.zeros((n,), dtype=np.int64)
    for r in range(n):
        row, t = windows.utt[r], int(windows.target[r])
        first = int((row >= 0).argmax())  # windows are left-padded
        later = width - 1 - t
        keep = min(t - first, max(0, max_window - 1 - min(trained_future, later)))
        idx = row[t - keep :]
        pad = width - idx.shape[0]
        utt[r, pad:] = idx
        spk[r, pad:] = local_speakers([speakers[i] for i in idx.tolist()])
        target[r] = pad + keep
    return WindowIndex(utt, spk, target)


def evaluate_model(ns: argparse.Namespace) -> dict[str, Any]:
    """The JSON report of ``emostream evaluate``; data and artifact problems raise ``EngineError``."""
    import torch

    from engines import artifact
    from engines.corrupt import Corrupted, audio_pool, corrupt_dialogues, parse_corrupt
    from engines.datasets import load_dataset
    from engines.datasets.base import as_acknowledged, as_transcribed
    from engines.datasets.pickles import precomputed_spec
    from engines.datasets.ravdess import fold_split
    from engines.errors import DatasetError
    from engines.features.channel import LineGain, make_channel
    from engines.features.format_check import load_format_check
    from engines.metrics import subset_report
    from engines.prepare import AudioTable, prepare
    from engines.registry import load_engine, load_extractors
    from engines.runtime.select import resolve_runtime

    torch.set_num_threads(ns.threads)
    if ns.future < 0:
        raise DatasetError(f"--future must be >= 0, got {ns.future}")
    corrupt = parse_corrupt(ns.corrupt) if ns.corrupt is not None else None
    asked = None if ns.modalities is None else [m.strip() for m in ns.modalities.split(",") if m.strip()]
    bad = [m for m in asked or [] if m not in MODALITIES]
    if bad:
        raise DatasetError(f"unknown modalities {bad}; known: {MODALITIES}")
    if asked == []:
        raise DatasetError(f"--modalities {ns.modalities!r} names none; known: {MODALITIES}")
    if corrupt is not None and asked is not None and corrupt.modality not in asked:
        raise DatasetError(f"--corrupt {corrupt.modality} needs {corrupt.modality} among --modalities {asked}")
    rt = resolve_runtime(ns.runtime)
    engine = load_engine(ns.model, runtime=rt)
    ex = load_extractors(ns.model, runtime=rt)
    if not rt.exact:
        # cached vectors are the fp32 encoders': a reduced-precision runtime computes its own, kept
        # in a scratch cache for this run only
        scratch = tempfile.TemporaryDirectory(prefix="emostream-evaluate-")
        ns.cache_dir = scratch.name
        if not ns.json:
            print(f"runtime {rt.name}: features computed afresh (the fp32 feature cache is not read)")
    ns.split = fold_split(ns.split, ns.fold, ns.dataset)
    dialogues = load_dataset(ns.dataset, ns.data_dir, ns.split, seed=ns.seed)
    if ns.transcripts != "as-written" and precomputed_spec(dialogues) is not None:
        raise DatasetError(f"--transcripts {ns.transcripts}: {ns.dataset} brings its text features precomputed")
    dialogues = as_transcribed(dialogues, ns.transcripts)
    acknowledged_lines = None  # a dataset that brings its text features has no words to read
    if precomputed_spec(dialogues) is None:
        dialogues, acknowledged_lines = as_acknowledged(dialogues, ns.acknowledgements)
    corrupted: Corrupted | None = None
    if corrupt is not None:
        if getattr(ex, corrupt.modality) is None:
            raise DatasetError(f"--corrupt {corrupt.modality}: the model has no {corrupt.modality} input")
        swap_audio = corrupt.modality == "audio" and corrupt.kind == "swap"
        clips = audio_pool(ns.dataset, ns.data_dir, ns.split) if swap_audio else None
        probes = None if ns.cache_dir is None else Path(ns.cache_dir) / "probes"
        corrupted = corrupt_dialogues(dialogues, corrupt, ns.seed, clips, probes)
        dialogues = corrupted.dialogues
    paths = [u.audio for d in dialogues for u in d.utterances if u.audio]
    channel = make_channel(ns.channel, ns.seed)
    levels = artifact.audio_level(ns.model) if ns.levels == "model" else ns.levels
    if ns.line_gain:
        channel = LineGain(ns.line_gain, channel)
    gate = ns.min_speech_s if ns.min_speech_s > 0 else None
    # as in the stream: on clips with speech, so not where the speech gate is off
    format_check = (
        load_format_check(ex.audio.id) if (ex.audio is not None and ns.format_check != "off" and gate) else None
    )
    table = (
        AudioTable(
            paths,
            ex.audio,
            ns.cache_dir,
            not ns.json,
            channel,
            gate,
            format_check,
            ns.format_check == "drop",
            shorten=ns.silences == "shorten",
            dialogues=dialogues if levels == "speaker" else None,
        )
        if (ex.audio and paths)
        else None
    )
    max_window = engine.info.max_window
    data = prepare(
        dialogues, ex.spec, ex.text, table, max_window + ns.future, ns.cache_dir, not ns.json, future=ns.future
    )
    if ns.future > 0:
        names = [u.speaker for d in dialogues for u in d.utterances]
        data.windows = context_windows(data.windows, names, max_window, engine.info.future)
    available = [m for m in MODALITIES if m in data.has and data.has[m].any()]
    # a modality the corruption removed (noise or silence, no speech in any clip) is still asked for
    voiceless = corrupt is not None and corrupt.kind in ("noise", "silence") and corrupt.fraction > 0
    absent = [m for m in asked or [] if m not in available and not (voiceless and corrupt and m == corrupt.modality)]
    if absent:  # scored on nothing, the figure would look like a result
        raise DatasetError(
            f"--modalities {','.join(absent)}: no utterance of {ns.dataset} {ns.split} has it as an input of "
            f"this model; it has {','.join(available) or 'none'}"
        )
    if ns.future > engine.info.future and not ns.json:
        print(f"note: the model reads {engine.info.future} later utterances; --future {ns.future} gives it no more")
    wanted = available if asked is None else asked
    report, pred, weights = score_engine(engine, data, wanted, ns.batch_size)
    out: dict[str, Any] = {
        "model": str(ns.model),
        "engine": engine.info.name,
        "version": engine.info.version,
        "runtime": rt.name,
        "dataset": ns.dataset,
        "split": ns.split,
        "modalities": wanted,
        "future": ns.future,
        "seed": ns.seed,
        "channel": ns.channel if channel is None else f"{ns.channel} ({channel.id})",
        "line_gain_db": ns.line_gain,
        "silences": ns.silences,
        "levels": levels,
        "transcripts": ns.transcripts,
        "acknowledgements": ns.acknowledgements,
        "acknowledged_lines": acknowledged_lines,  # transcripts it changed (None: the dataset has no words)
        # clips with speech the format check judged mis-declared (None: no check); not used with drop
        "misdeclared_clips": None if table is None or format_check is None else table.misdeclared_clips(),
        **report,
        "corrupt": None,
    }
    if corrupted is not None and corrupt is not None:
        m = corrupt.modality
        bad_rows, good_rows = corrupted.mask, ~corrupted.mask
        worse = subset_report(data.labels, pred, weights, bad_rows, data.label_names)
        clean = subset_report(data.labels, pred, weights, good_rows, data.label_names)
        w_bad, w_good = worse["mean_weights"][m], clean["mean_weights"][m]
        out["corrupt"] = {
            "modality": m,
            "kind": corrupt.kind,
            "fraction": corrupt.fraction,
            "seed": ns.seed,
            "n_corrupted": worse["n"],
            "n_clean": clean["n"],
            "mean_weights_corrupted": worse["mean_weights"],
            "mean_weights_clean": clean["mean_weights"],
            f"{m}_weight_ratio": round(w_bad / w_good, 4) if w_bad is not None and w_good else None,
            "weighted_f1_corrupted": worse["weighted_f1"],
            "weighted_f1_clean": clean["weighted_f1"],
            "accuracy_corrupted": worse["accuracy"],
            "accuracy_clean": clean["accuracy"],
        }
    if ns.plot:
        from engines.metrics import confusion_counts
        from engines.plot import plot_confusion

        cm = confusion_counts(data.labels, pred, len(data.label_names))
        title = f"{engine.info.name} on {ns.dataset} {ns.split} ({'+'.join(wanted)}): W-F1 {report['weighted_f1']}"
        out["plot"] = str(plot_confusion(cm, data.label_names, ns.plot, title))
    return out


def run_evaluate(ns: argparse.Namespace) -> int:
    """Print the report; 0 on success, 2 on a data or artifact error (message on stderr)."""
    from engines.errors import EngineError

    try:
        report = evaluate_model(ns)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report) if ns.json else json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_evaluate_args(argparse.ArgumentParser(prog="emostream evaluate", description=__doc__))
    return run_evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
