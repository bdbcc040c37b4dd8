"""``emostream evaluate``: figures of an artifact (run by ONNX Runtime) on a dataset split.

Prints one JSON object: weighted_f1, accuracy, macro_f1, n, per_class_f1, mean_weights (mean
relevance weight per modality), plus what was evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.interface import MODALITIES, Engine
from engines.prepare import Prepared


def add_evaluate_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from engines.datasets import DATASETS
    from engines.registry import RUNTIMES

    parser.add_argument("--model", default="default", help="artifact directory, or 'default'")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", required=True, help="folder holding meld/, ravdess/, ...")
    parser.add_argument("--split", default="dev")
    parser.add_argument(
        "--modalities", default=None, help="comma-separated subset to feed (e.g. 'text'); default: all the data has"
    )
    parser.add_argument("--runtime", default="onnxruntime", choices=RUNTIMES)
    parser.add_argument("--seed", type=int, default=0, help="composite clip assignment seed")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
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


def evaluate_engine(engine: Engine, data: Prepared, modalities: Sequence[str], batch_size: int = 256) -> dict[str, Any]:
    from engines.metrics import classification_report

    probs, sent, weights = predict_prepared(engine, data, modalities, batch_size)
    if tuple(engine.info.labels) != tuple(data.label_names):
        from engines.errors import DatasetError

        raise DatasetError(
            f"the model's labels {engine.info.labels} are not the dataset's {data.label_names}: "
            "evaluate a model on a dataset with its label set"
        )
    report = classification_report(data.labels, probs.argmax(1), weights, data.label_names)
    report["sentiment_mae"] = round(float(np.abs(sent - data.sentiment).mean()), 4)
    return report


def run_evaluate(ns: argparse.Namespace) -> int:
    import torch

    from engines.datasets import load_dataset
    from engines.errors import EngineError
    from engines.prepare import AudioTable, prepare
    from engines.registry import load_engine, load_extractors

    torch.set_num_threads(ns.threads)
    try:
        engine = load_engine(ns.model, runtime=ns.runtime)
        ex = load_extractors(ns.model)
        dialogues = load_dataset(ns.dataset, ns.data_dir, ns.split, seed=ns.seed)
        paths = [u.audio for d in dialogues for u in d.utterances if u.audio]
        table = AudioTable(paths, ex.audio, ns.cache_dir, progress=not ns.json) if (ex.audio and paths) else None
        data = prepare(dialogues, ex.spec, ex.text, table, engine.info.max_window, ns.cache_dir, progress=not ns.json)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    available = [m for m in MODALITIES if m in data.has and data.has[m].any()]
    wanted = available if ns.modalities is None else [m.strip() for m in ns.modalities.split(",") if m.strip()]
    bad = [m for m in wanted if m not in MODALITIES]
    if bad:
        print(f"error: unknown modalities {bad}; known: {MODALITIES}", file=sys.stderr)
        return 2
    try:
        report = evaluate_engine(engine, data, wanted, ns.batch_size)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {
        "model": str(ns.model),
        "engine": engine.info.name,
        "version": engine.info.version,
        "runtime": ns.runtime,
        "dataset": ns.dataset,
        "split": ns.split,
        "modalities": wanted,
        **report,
    }
    print(json.dumps(report) if ns.json else json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_evaluate_args(argparse.ArgumentParser(prog="emostream evaluate", description=__doc__))
    return run_evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
