"""``emostream cv``: a recipe trained on every RAVDESS actor fold, its figures as mean and spread.

Four dev actors are too few to choose a model on: a choice that holds for voices never heard must
hold across folds. Fold k trains on 16 of the 20 distributed actors and stops early on the other
four (``train-fold{k}`` / ``dev-fold{k}``, :mod:`engines.datasets.ravdess`); each fold's artifact
lands in ``ROOT/NAME/fold{k}`` (a fold whose artifact is there, trained by the same command, is not
trained again, so an interrupted run resumes) and its dev figures, measured through ONNX Runtime by
training, are gathered into one report: per fold and per modality subset, then mean, standard
deviation (n - 1) and range. MELD's text is the same in every fold (its own train and dev splits);
only the voices change.

Those figures are the early-stopping actors', so slightly optimistic. ``--nested`` removes that
for the voices: fold k trains on 12 actors, stops early on fold k+1's four (``train-nest{k}`` /
``dev-nest{k}``) and is measured afterwards by ``emostream evaluate`` (the exported graph, voice
gate and speech detector included) on fold k's four (``--split dev --fold k``), whose voices
neither training nor the choice of epoch heard (artifacts in ``ROOT/NAME/nested{k}``). On the
composite the words are MELD dev's in both, so the text of the held-out figures is not held out:
only the audio is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from engines.datasets.ravdess import ACTORS, FOLDS


def add_cv_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--recipe", required=True, metavar="NAME|FILE", help="the training recipe (recipes/NAME.toml)")
    parser.add_argument(
        "--folds", default=",".join(str(k) for k in range(FOLDS)), help="comma-separated folds to run (default all)"
    )
    parser.add_argument("--root", default="runs/cv", help="where the folds' artifacts go (ROOT/NAME/foldK)")
    parser.add_argument(
        "--nested",
        action="store_true",
        help="fold k trains on 12 actors and stops early on fold k+1's; its figures are on fold k's four, "
        "which no choice saw (artifacts in ROOT/NAME/nestedK)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "train_words",
        nargs=argparse.REMAINDER,
        help="after '--': more `emostream train` flags for every fold (e.g. -- --seed 1 --epochs 8)",
    )
    return parser


def _held(fold: int, nested: bool = False) -> str:
    actors = ACTORS[f"dev-fold{fold}"]
    held = f"{min(actors)}-{max(actors)}"
    if nested:
        stop = ACTORS[f"dev-nest{fold}"]
        held += f" (stopped on {min(stop)}-{max(stop)})"
    return held


def held_out_figures(out: Path, fold: int, subsets: list[str]) -> dict[str, Any]:
    """``emostream evaluate``'s figures of the artifact ``out`` on fold ``fold``'s actors
    (``dev-fold{k}``: the test of a nested fold), one report per modality subset (``text+audio``, ...)."""
    from engines import artifact
    from engines.evaluate import add_evaluate_args, evaluate_model

    train = artifact.read_json(out, artifact.CONFIG)["train"]
    figures: dict[str, Any] = {}
    for sub in subsets:
        words = ["--model", str(out), "--dataset", train["dataset"], "--data-dir", train["data_dir"]]
        words += ["--split", "dev", "--fold", str(fold), "--modalities", sub.replace("+", ","), "--json"]
        words += ["--seed", str(train.get("seed", 0)), "--future", str(train.get("future", 0))]
        words += ["--threads", str(train.get("threads") or 2)]
        words += ["--cache-dir", train["cache_dir"]] if train.get("cache_dir") else []
        report = evaluate_model(add_evaluate_args(argparse.ArgumentParser()).parse_args(words))
        figures[sub] = {k: report[k] for k in ("n", "weighted_f1", "accuracy") if k in report}
    return figures


def summarise(per_fold: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean, spread and range of each subset's weighted F1 and accuracy over the folds."""
    subsets = sorted({s for m in per_fold.values() for s, v in m.items() if isinstance(v, dict) and "n" in v})
    out: dict[str, Any] = {}
    for sub in subsets:
        row: dict[str, Any] = {}
        for metric in ("weighted_f1", "accuracy"):
            values = [m[sub][metric] for m in per_fold.values() if sub in m]
            row[metric] = {
                "mean": round(statistics.fmean(values), 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
            }
        out[sub] = row
    return out


def _fold_dir(ns: argparse.Namespace, name: str, k: int) -> Path:
    return Path(ns.root) / name / f"{'nested' if ns.nested else 'fold'}{k}"


def run_cv(ns: argparse.Namespace) -> int:
    from engines import artifact
    from engines.errors import ArtifactError, EngineError
    from engines.recipes import recipe_path
    from engines.train import main as train_main

    try:
        folds = sorted({int(k) for k in ns.folds.split(",") if k.strip()})
    except ValueError:
        print(f"error: --folds expects comma-separated integers, got {ns.folds!r}", file=sys.stderr)
        return 2
    if not folds or not all(0 <= k < FOLDS for k in folds):
        print(f"error: folds are 0-{FOLDS - 1}, got {ns.folds!r}", file=sys.stderr)
        return 2
    extra = [w for w in ns.train_words if w != "--"]
    name = recipe_path(ns.recipe).stem
    per_fold: dict[int, dict[str, Any]] = {}
    for k in folds:
        out = _fold_dir(ns, name, k)
        words = [
            "--recipe",
            ns.recipe,
            *extra,
            "--fold",
            str(k),
            *(["--nested"] if ns.nested else []),
            "--out",
            str(out),
        ]
        if (out / artifact.CHECKSUMS).is_file():  # trained before: only if by the same command
            recorded = artifact.read_json(out, artifact.CONFIG).get("recipe", {}).get("command")
            if recorded != ["emostream", "train", *words]:
                print(
                    f"error: {out} was trained by {recorded}, not by these options; remove it or pick another --root",
                    file=sys.stderr,
                )
                return 2
        else:
            print(f"cv: {name} fold {k} (held-out actors {_held(k, ns.nested)}) -> {out}", file=sys.stderr)
            code = train_main(words)
            if code != 0:
                return code
        try:
            per_fold[k] = artifact.read_json(out, artifact.METRICS)
            stopped_on = f"dev-{'nest' if ns.nested else 'fold'}{k}"
            if per_fold[k].get("split") != stopped_on:  # `-- --nested`, or a recipe that sets it
                raise ArtifactError(
                    f"{out} stopped early on {per_fold[k].get('split')!r}, not {stopped_on!r}: "
                    "nest folds with `emostream cv --nested`, not with a train flag or recipe key"
                )
            if ns.nested:  # the early-stopping actors' figures are the choice's: test on fold k's
                subsets = [s for s, v in per_fold[k].items() if isinstance(v, dict) and "n" in v]
                per_fold[k] = held_out_figures(out, k, subsets)
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    figures = {k: {s: v for s, v in m.items() if isinstance(v, dict) and "n" in v} for k, m in per_fold.items()}
    summary = summarise(per_fold)
    epochs = {k: int(artifact.read_json(_fold_dir(ns, name, k), artifact.METRICS).get("best_epoch", 0)) for k in folds}
    report = {"recipe": name, "nested": bool(ns.nested), "folds": figures, "summary": summary, "best_epochs": epochs}
    if ns.json:
        print(json.dumps(report))
        return 0
    what = "held-out figures over nested actor folds" if ns.nested else "dev figures over actor folds"
    print(f"{name}: {what} {folds} (weighted F1 / accuracy)")
    subsets = list(summary)
    print("| fold | held-out actors | " + " | ".join(subsets) + " |")
    print("|---|---|" + "---|" * len(subsets))
    for k, m in figures.items():
        cells = [f"{m[s]['weighted_f1']:.3f} / {m[s]['accuracy']:.3f}" if s in m else "-" for s in subsets]
        print(f"| {k} | {_held(k, ns.nested)} | " + " | ".join(cells) + " |")
    cells = []
    for s in subsets:
        w, a = summary[s]["weighted_f1"], summary[s]["accuracy"]
        cells.append(f"{w['mean']:.3f} ± {w['std']:.3f} / {a['mean']:.3f} ± {a['std']:.3f}")
    print("| mean ± sd | | " + " | ".join(cells) + " |")
    print(
        f"epochs kept: {', '.join(str(e) for e in epochs.values())} (median {statistics.median(epochs.values()):g}); "
        "with a recipe's keep_epoch every fold keeps that one: `-- --keep-epoch 0` lets each stop early"
    )
    return 0
