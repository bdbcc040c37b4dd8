"""``emostream cv``: a recipe trained on every RAVDESS actor fold, its figures as mean and spread.

Four dev actors are too few to choose a model on: a choice that holds for voices never heard must
hold across folds. Fold k trains on 16 of the 20 distributed actors and stops early on the other
four (``train-fold{k}`` / ``dev-fold{k}``, :mod:`engines.datasets.ravdess`); each fold's artifact
lands in ``ROOT/NAME/fold{k}`` (a fold whose artifact is there, trained by the same command, is not
trained again, so an interrupted run resumes) and its dev figures, measured through ONNX Runtime by
training, are gathered into one report: per fold and per modality subset, then mean, standard
deviation (n - 1) and range. MELD's text is the same in every fold (its own train and dev splits);
only the voices change.
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
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "train_words",
        nargs=argparse.REMAINDER,
        help="after '--': more `emostream train` flags for every fold (e.g. -- --seed 1 --epochs 8)",
    )
    return parser


def _held(fold: int) -> str:
    actors = ACTORS[f"dev-fold{fold}"]
    return f"{min(actors)}-{max(actors)}"


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


def run_cv(ns: argparse.Namespace) -> int:
    from engines import artifact
    from engines.errors import EngineError
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
        out = Path(ns.root) / name / f"fold{k}"
        words = ["--recipe", ns.recipe, *extra, "--fold", str(k), "--out", str(out)]
        if (out / artifact.CHECKSUMS).is_file():  # trained before: only if by the same command
            recorded = artifact.read_json(out, artifact.CONFIG).get("recipe", {}).get("command")
            if recorded != ["emostream", "train", *words]:
                print(
                    f"error: {out} was trained by {recorded}, not by these options; remove it or pick another --root",
                    file=sys.stderr,
                )
                return 2
        else:
            print(f"cv: {name} fold {k} (held-out actors {_held(k)}) -> {out}", file=sys.stderr)
            code = train_main(words)
            if code != 0:
                return code
        try:
            per_fold[k] = artifact.read_json(out, artifact.METRICS)
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    figures = {k: {s: v for s, v in m.items() if isinstance(v, dict) and "n" in v} for k, m in per_fold.items()}
    summary = summarise(per_fold)
    report = {"recipe": name, "folds": figures, "summary": summary}
    if ns.json:
        print(json.dumps(report))
        return 0
    print(f"{name}: dev figures over actor folds {folds} (weighted F1 / accuracy)")
    subsets = list(summary)
    print("| fold | held-out actors | " + " | ".join(subsets) + " |")
    print("|---|---|" + "---|" * len(subsets))
    for k, m in figures.items():
        cells = [f"{m[s]['weighted_f1']:.3f} / {m[s]['accuracy']:.3f}" if s in m else "-" for s in subsets]
        print(f"| {k} | {_held(k)} | " + " | ".join(cells) + " |")
    cells = []
    for s in subsets:
        w, a = summary[s]["weighted_f1"], summary[s]["accuracy"]
        cells.append(f"{w['mean']:.3f} ± {w['std']:.3f} / {a['mean']:.3f} ± {a['std']:.3f}")
    print("| mean ± sd | | " + " | ".join(cells) + " |")
    return 0
