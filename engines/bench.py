"""Benchmarks that print figures (not tests): ``python -m engines.bench {text,audio,engine,audio-probe}``.

text         utterances/s of TextEncoder.encode on MELD dev (cold model load excluded)
audio        decode + extract speed on RAVDESS dev clips, as a multiple of real time
engine       OnnxEngine.predict latency per batch for windows of 12 utterances
audio-probe  RAVDESS by actor (train 1-16, dev 17-20), 8 classes: extractor features +
             logistic regression, dev accuracy (the field-notes floor is 0.49)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def bench_text(data_dir: Path, n: int) -> dict[str, float]:
    from engines.datasets import load_dataset
    from engines.features.text import TextEncoder

    texts = [u.text or "" for d in load_dataset("meld", data_dir, "dev") for u in d.utterances][:n]
    enc = TextEncoder()
    enc.encode(texts[:8])  # load the model
    t = time.perf_counter()
    enc.encode(texts)
    dt = time.perf_counter() - t
    return {"utterances": len(texts), "seconds": round(dt, 2), "utterances_per_s": round(len(texts) / dt, 1)}


def bench_audio(data_dir: Path, n: int) -> dict[str, float]:
    from engines.datasets.ravdess import load_ravdess_clips
    from engines.features.audio import AudioFeatureExtractor, decode_audio

    blobs = [Path(c.path).read_bytes() for c in load_ravdess_clips(data_dir, "dev")[:n]]
    ex = AudioFeatureExtractor()
    ex.extract([np.zeros(16000, np.float32)])
    t = time.perf_counter()
    waves = [decode_audio(b, "flac", 16000) for b in blobs]
    t_dec = time.perf_counter() - t
    ex.extract(waves)
    dt = time.perf_counter() - t
    audio_s = sum(len(w) for w in waves) / 16000
    return {
        "clips": len(waves),
        "audio_seconds": round(audio_s, 1),
        "decode_s": round(t_dec, 2),
        "total_s": round(dt, 2),
        "x_real_time": round(audio_s / dt, 1),
    }


def bench_engine(model: str, batches: Sequence[int]) -> dict[str, float]:
    from engines.export import example_inputs
    from engines.interface import EngineBatch
    from engines.registry import load_engine

    engine = load_engine(model)
    out: dict[str, float] = {}
    for b in batches:
        x = example_inputs(engine.spec, batch=b, window=12)  # type: ignore[attr-defined]
        dims = engine.info.features.dims()
        batch = EngineBatch(
            **{m: x.get(m, np.zeros((b, 12, dims[m]), np.float32)) for m in ("text", "audio", "video")},
            present=x["present"],
            speakers=x["speakers"],
            valid=x["valid"],
            target=x["target"],
        )
        engine.predict(batch)
        t = time.perf_counter()
        reps = 20
        for _ in range(reps):
            engine.predict(batch)
        out[f"batch_{b}_ms"] = round(1000 * (time.perf_counter() - t) / reps, 2)
    return out


def audio_probe(data_dir: Path) -> dict[str, float]:
    import csv

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from engines.features.audio import AudioFeatureExtractor
    from engines.prepare import AudioTable

    with (data_dir / "ravdess" / "labels.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    paths = [str(data_dir / "ravdess" / r["path"]) for r in rows]
    table = AudioTable(paths, AudioFeatureExtractor())
    x = table.matrix[[table.row[p] for p in paths]]
    y = np.array([r["emotion"] for r in rows])
    actor = np.array([int(r["actor"]) for r in rows])
    tr, dv = actor <= 16, (actor >= 17) & (actor <= 20)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(x[tr], y[tr])
    return {
        "classes": 8,
        "train_clips": int(tr.sum()),
        "dev_clips": int(dv.sum()),
        "dev_accuracy": round(float((clf.predict(x[dv]) == y[dv]).mean()), 4),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engines.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["text", "audio", "engine", "audio-probe"])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    ns = p.parse_args(argv)
    import torch

    torch.set_num_threads(ns.threads)
    data_dir = Path(ns.data_dir)
    if ns.what == "text":
        res = bench_text(data_dir, ns.n)
    elif ns.what == "audio":
        res = bench_audio(data_dir, ns.n)
    elif ns.what == "engine":
        res = bench_engine(ns.model, [1, 16, 64])
    else:
        res = audio_probe(data_dir)
    print(json.dumps({"bench": ns.what, **res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
