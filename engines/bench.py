"""Benchmarks that print figures (not tests): ``python -m engines.bench {text,audio,engine,audio-probe,fusion}``.

text         utterances/s on MELD dev, torch eager vs ONNX Runtime (plain and optimised graph), batched
             and one utterance per call, with ratios (cold model load and export excluded)
audio        decode + extract speed on RAVDESS dev clips, as a multiple of real time
engine       OnnxEngine.predict latency per batch for windows of 12 utterances; ``--model A,B``:
             artifacts side by side in one process, with and without voices, with ratios
runtimes     text encoder, audio encoder and engine on every runtime this machine has, side by
             side (engines/runtime/select.py), with ratios against torch fp32
audio-probe  RAVDESS by actor (train 1-16, dev 17-20), 8 classes: extractor features +
             logistic regression, dev accuracy (the field-notes floor is 0.49)
fusion       composite dev: the model fused, each modality alone, and the Bayes combination of its
             text-alone and audio-alone posteriors, p(y|t) p(y|a) / p(y) with the train prior: the
             best late fusion of those two predictors when text and audio are independent given the
             emotion, which the composite makes them by construction (a clip is drawn by label only)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np


def _rate(encode: Callable[[list[str]], np.ndarray], texts: list[str], one_by_one: bool = False) -> tuple[float, float]:
    """Utterances per wall second and per CPU second (this process) of one pass over ``texts``."""
    t, c = time.perf_counter(), time.process_time()
    if one_by_one:
        for x in texts:
            encode([x])
    else:
        encode(texts)
    return len(texts) / (time.perf_counter() - t), len(texts) / (time.process_time() - c)


def bench_text(data_dir: Path, n: int, threads: int, repeats: int = 3, single: int = 100) -> dict[str, Any]:
    """TextEncoder (torch eager) and OnnxTextEncoder on the same texts: plain and optimised graph
    (texts bucketed by token count), and the optimised graph bucketed by character count as
    TextEncoder does (``onnx_opt_charsort``: what token-count bucketing alone is worth).

    Rounds alternate the runtimes so load from other processes falls on all of them alike; the
    figures are medians over ``repeats`` rounds. ``batched``: the ``n`` texts in one ``encode``
    call (length buckets of 32); ``single``: the first ``single`` texts one call each (a stream
    that does not batch). ``per_s``: wall clock; ``per_cpu_s``: this process's CPU time, steadier
    on a shared machine (spinning worker threads count too when threads > 1). Ratios are against
    torch eager. Model load and ONNX export excluded
    (``onnx_setup_s``: export/optimise when not yet cached, else hashing and session start).
    """
    from engines.datasets import load_dataset
    from engines.features.text import TextEncoder
    from engines.features.text_onnx import OnnxTextEncoder

    texts = [u.text or "" for d in load_dataset("meld", data_dir, "dev") for u in d.utterances][:n]
    base = TextEncoder()
    base.encode(texts[:8])  # load the torch model
    encoders: dict[str, Any] = {"torch": base}
    setup: dict[str, float] = {}
    variants: tuple[tuple[str, bool, Literal["tokens", "chars"]], ...] = (
        ("onnx", False, "tokens"),
        ("onnx_opt", True, "tokens"),
        ("onnx_opt_charsort", True, "chars"),
    )
    for name, optimize, sort_by in variants:
        enc = OnnxTextEncoder(
            base, optimize=optimize, intra_op_threads=threads, providers=["CPUExecutionProvider"], sort_by=sort_by
        )
        t = time.perf_counter()
        enc.session()
        setup[name] = round(time.perf_counter() - t, 2)
        encoders[name] = enc
    for enc in encoders.values():
        enc.encode(texts[:8])  # load, first-call allocations
    rates: dict[str, dict[str, list[tuple[float, float]]]] = {k: {"batched": [], "single": []} for k in encoders}
    for _ in range(repeats):
        for name, enc in encoders.items():
            rates[name]["batched"].append(_rate(enc.encode, texts))
            if name != "onnx_opt_charsort":  # one text per call: no buckets, same as onnx_opt
                rates[name]["single"].append(_rate(enc.encode, texts[:single], one_by_one=True))
    res: dict[str, Any] = {"utterances": len(texts), "single_utterances": min(single, len(texts)), "threads": threads}
    res["repeats"] = repeats
    for mode in ("batched", "single"):
        for col, unit in ((0, "s"), (1, "cpu_s")):
            med = {k: float(np.median([r[col] for r in v[mode]])) for k, v in rates.items() if v[mode]}
            res[f"{mode}_utterances_per_{unit}"] = {k: round(v, 1) for k, v in med.items()}
            res[f"{mode}_ratio_vs_torch_per_{unit}"] = {
                k: round(v / med["torch"], 2) for k, v in med.items() if k != "torch"
            }
    res["onnx_setup_s"] = setup
    return res


def bench_audio(data_dir: Path, n: int) -> dict[str, float]:
    from engines.datasets.ravdess import load_ravdess_clips
    from engines.features.audio import AudioFeatureExtractor
    from engines.features.codecs import decode_audio

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


def compare_engines(models: Sequence[str], batches: Sequence[int], rounds: int = 7) -> list[dict[str, Any]]:
    """Artifacts side by side in one process (ONNX Runtime): ms per call on windows of 12, every
    target with a voice and then none, medians of ``rounds`` alternating rounds of 10 calls, and
    each one's ratio to the first."""
    import dataclasses

    from engines.export import example_batch
    from engines.runtime.onnx import OnnxEngine

    engines = {m: OnnxEngine(m) for m in models}
    spec = engines[models[0]].spec
    rows: list[dict[str, Any]] = []
    for case in ("voice", "no voice"):
        for b in batches:
            batch = example_batch(spec, batch=b, window=12)
            present = batch.present.copy()
            present[:, :, 0] = 1.0
            present[:, :, 1] = 1.0 if case == "voice" else 0.0
            batch = dataclasses.replace(batch, present=present)
            times: dict[str, list[float]] = {m: [] for m in models}
            for _ in range(rounds):
                for m, engine in engines.items():
                    engine.predict(batch)
                    t = time.perf_counter()
                    for _ in range(10):
                        engine.predict(batch)
                    times[m].append((time.perf_counter() - t) * 100)
            med = {m: round(float(np.median(v)), 2) for m, v in times.items()}
            ratios = {f"ratio {m}": round(med[m] / med[models[0]], 2) for m in models[1:]}
            rows.append({"case": case, "batch": b, **med, **ratios})
    return rows


def bench_engine(model: str, batches: Sequence[int]) -> dict[str, float]:
    from engines.export import example_batch
    from engines.registry import load_engine

    engine = load_engine(model)
    out: dict[str, float] = {}
    for b in batches:
        batch = example_batch(engine.spec, batch=b, window=12)  # type: ignore[attr-defined]
        engine.predict(batch)
        t = time.perf_counter()
        reps = 20
        for _ in range(reps):
            engine.predict(batch)
        out[f"batch_{b}_ms"] = round(1000 * (time.perf_counter() - t) / reps, 2)
    return out


def bench_runtimes(
    model: str,
    data_dir: Path,
    n_texts: int,
    n_clips: int,
    repeats: int = 3,
    batches: Sequence[int] = (1, 16, 64, 256),
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The text encoder, the audio encoder and the engine on every runtime this machine has
    (:mod:`engines.runtime.select`), side by side on the same inputs: MELD dev transcripts (one
    ``encode`` call, buckets of 32), RAVDESS dev clips decoded once (one ``extract`` call), and
    windows of 12 at each batch size; and the speech detector that runs beside each audio encoder
    (:func:`engines.features.speech.detector_for`) on the clips, until each has enough speech, as
    the stream runs it. Rounds alternate the runtimes so that load from other
    processes falls on all of them alike; figures are medians over ``repeats`` rounds; ratios are
    against ``torch`` (fp32 eager; its speech detector is ONNX Runtime's, so only ``openvino``'s
    speech ratio compares two runtimes). Model loading, ONNX export and quantization are excluded."""
    from engines.datasets import load_dataset
    from engines.datasets.ravdess import load_ravdess_clips
    from engines.export import example_batch
    from engines.features.codecs import decode_audio
    from engines.features.speech import MIN_SPEECH_S, detector_for
    from engines.interface import EngineBatch
    from engines.registry import load_engine, load_extractors
    from engines.runtime.select import CONCRETE, RuntimeUnavailable, resolve_runtime
    from engines.spec import engine_spec

    texts = [u.text or "" for d in load_dataset("meld", data_dir, "dev") for u in d.utterances][:n_texts]
    waves = [decode_audio(Path(c.path).read_bytes(), "flac", 16000) for c in load_ravdess_clips(data_dir, "dev")]
    waves = waves[:n_clips]
    audio_s = sum(len(w) for w in waves) / 16000
    parts: dict[str, tuple[Any, Any]] = {}
    detectors: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in names or CONCRETE:
        try:
            rt = resolve_runtime(name)
        except RuntimeUnavailable as exc:
            skipped[name] = str(exc)
            continue
        engine, ex = load_engine(model, runtime=rt), load_extractors(model, runtime=rt)
        if ex.text is None or ex.audio is None:
            raise SystemExit(f"bench runtimes needs a text + audio model; {model} lacks one")
        ex.text.encode(texts[:8])
        ex.audio.extract(waves[:2])
        detectors[name] = detector_for(ex.audio)  # the worker's, beside this audio encoder
        detectors[name].seconds(waves[:2])
        parts[name] = (engine, ex)
    if not parts:
        raise SystemExit(f"no runtime runs here: {skipped}")
    first = next(iter(parts.values()))[0]
    spec = engine_spec(first.info.features, n_classes=len(first.info.labels))  # (the torch engine keeps none)
    windows: dict[int, EngineBatch] = {b: example_batch(spec, batch=b, window=12) for b in batches}
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in parts}
    for _ in range(repeats):
        for name, (engine, ex) in parts.items():
            t = time.perf_counter()
            ex.text.encode(texts)
            rows[name].setdefault("texts_per_s", []).append(len(texts) / (time.perf_counter() - t))
            t = time.perf_counter()
            ex.audio.extract(waves)
            rows[name].setdefault("audio_s_per_s", []).append(audio_s / (time.perf_counter() - t))
            t = time.perf_counter()
            detectors[name].seconds(waves, MIN_SPEECH_S)  # the stream's question: any voice at all
            rows[name].setdefault("speech_clips_per_s", []).append(len(waves) / (time.perf_counter() - t))
            for b, batch in windows.items():
                engine.predict(batch)
                t, reps = time.perf_counter(), max(3, 64 // b)
                for _ in range(reps):
                    engine.predict(batch)
                rows[name].setdefault(f"engine_b{b}_windows_per_s", []).append(b * reps / (time.perf_counter() - t))
    med = {name: {k: round(float(np.median(v)), 1) for k, v in r.items()} for name, r in rows.items()}
    ratios = {
        name: {k: round(v / med["torch"][k], 2) for k, v in r.items()}
        for name, r in med.items()
        if name != "torch" and "torch" in med
    }
    return {
        "texts": len(texts),
        "clips": len(waves),
        "audio_seconds": round(audio_s, 1),
        "repeats": repeats,
        "per_runtime": med,
        "ratio_vs_torch": ratios,
        "skipped": skipped,
    }


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
    x = table.matrix[[table.row[(p, 0)] for p in paths]]
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


def independent_experts(posteriors: Sequence[np.ndarray], prior: np.ndarray) -> np.ndarray:
    """p(y | x_1..x_M) from each p(y | x_m) when the x_m are independent given y: the product of the
    posteriors divided by prior^(M-1), renormalised; rows of (N, C) arrays in, (N, C) out."""
    log = sum(np.log(np.clip(p, 1e-12, None)) for p in posteriors) - (len(posteriors) - 1) * np.log(prior)
    log = log - log.max(axis=1, keepdims=True)
    out = np.exp(log)
    return out / out.sum(axis=1, keepdims=True)


def fusion_ceiling(model: str, data_dir: Path) -> dict[str, Any]:
    from engines.datasets import load_dataset
    from engines.evaluate import predict_prepared
    from engines.metrics import classification_report
    from engines.prepare import heard_as, prepare
    from engines.registry import load_engine, load_extractors

    engine, ex = load_engine(model), load_extractors(model)
    if ex.text is None or ex.audio is None:
        raise SystemExit(f"{model}: fusion needs a model with text and audio")
    dev = load_dataset("meld-ravdess", data_dir, "dev")
    table = heard_as(model, dev, ex.audio)
    data = prepare(dev, ex.spec, ex.text, table, engine.info.max_window, future=engine.info.future)
    counts = np.bincount(
        [u.emotion for d in load_dataset("meld-ravdess", data_dir, "train") for u in d.utterances],
        minlength=len(data.label_names),
    )
    prior = (counts + 1.0) / (counts + 1.0).sum()
    probs = {m: predict_prepared(engine, data, m)[0] for m in (("text", "audio"), ("text",), ("audio",))}

    def wf1(p: np.ndarray) -> float:
        rep = classification_report(data.labels, p.argmax(1), None, tuple(data.label_names))
        return float(rep["weighted_f1"])

    both = independent_experts([probs[("text",)], probs[("audio",)]], prior)
    return {
        "model": model,
        "n": int(data.n),
        "fused_wf1": wf1(probs[("text", "audio")]),
        "text_wf1": wf1(probs[("text",)]),
        "audio_wf1": wf1(probs[("audio",)]),
        "independent_experts_wf1": wf1(both),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engines.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "what",
        choices=["text", "audio", "engine", "runtimes", "audio-probe", "fusion"],
        help="what to time (this module's docstring says what each one measures)",
    )
    p.add_argument("--data-dir", default="../shared/data", help="folder holding meld/ and ravdess/ (read-only)")
    p.add_argument("--model", default="default", help="a name under models/ or an artifact folder")
    p.add_argument("--n", type=int, default=400, help="utterances (or clips, or windows) timed")
    p.add_argument("--threads", type=int, default=2, help="PyTorch and ONNX Runtime threads")
    p.add_argument("--repeats", type=int, default=3, help="text: alternating rounds, medians reported")
    ns = p.parse_args(argv)
    import torch

    torch.set_num_threads(ns.threads)
    data_dir = Path(ns.data_dir)
    if ns.what == "text":
        res = bench_text(data_dir, ns.n, ns.threads, ns.repeats)
    elif ns.what == "audio":
        res = bench_audio(data_dir, ns.n)
    elif ns.what == "runtimes":
        res = bench_runtimes(ns.model, data_dir, ns.n, max(8, ns.n // 8), ns.repeats)
    elif ns.what == "engine" and "," in ns.model:  # --model A,B: side by side
        for row in compare_engines(ns.model.split(","), [1, 16, 64]):
            print(json.dumps(row))
        return 0
    elif ns.what == "engine":
        res = bench_engine(ns.model, [1, 16, 64])
    elif ns.what == "fusion":
        res = fusion_ceiling(ns.model, data_dir)
    else:
        res = audio_probe(data_dir)
    print(json.dumps({"bench": ns.what, **res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
