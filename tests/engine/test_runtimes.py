"""Every runtime against PyTorch fp32 on the same batch (engines/runtime/select.py).

On the CPU: ONNX Runtime, the torch-cuda path's numerics (bf16 autocast, power-of-two batches) run
on the CPU, and the float16 graph TensorRT builds from, run by ONNX Runtime. Tests marked ``gpu``
run torch-cuda and TensorRT themselves and skip without CUDA (and without ``tensorrt``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.export import example_batch  # noqa: E402
from engines.interface import EngineBatch, EngineOutput  # noqa: E402
from engines.registry import load_engine, load_extractors  # noqa: E402
from engines.runtime.select import Runtime, tensorrt_available  # noqa: E402
from engines.runtime.torch import TorchEngine, bucket, pad_batch  # noqa: E402

pytestmark = pytest.mark.engine
RAVDESS = Path(__file__).resolve().parents[3] / "shared" / "data" / "ravdess"
PROBS_ATOL = 0.01  # bf16 / fp16 against fp32: the largest probability difference allowed
INT8_MIN_COSINE = 0.98  # int8 MiniLM vectors against fp32 (0.987 on these)
# the int8 runtime's probabilities against fp32 (lossy: MELD dev W-F1 -0.010 on an AVX-512 CPU); on a
# CPU with AVX2 only (2026-12-05) one moved by 0.104 (7-bit weights, reduce_range, were further off)
INT8_PROBS_ATOL = 0.15
TEXTS = [
    "Oh my God, you did what?!",
    "Okay.",
    "I told you already, the package never arrived and nobody calls me back.",
    "Thank you so much, that's wonderful news!",
]
BF16_CPU = Runtime("torch-bf16-cpu", "torch", "torch", "cpu", "bfloat16", "the torch-cuda numerics on the CPU")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def windows(b: int, w: int = 12, seed: int = 0) -> EngineBatch:
    return example_batch(load_engine("default").spec, batch=b, window=w, seed=seed)  # type: ignore[attr-defined]


def close(got: EngineOutput, ref: EngineOutput, atol: float, logits: bool = True) -> None:
    """``logits=False``: judged by the probabilities, weights, sentiment and labels alone."""
    assert got.probs.shape == ref.probs.shape
    if logits:
        np.testing.assert_allclose(got.logits, ref.logits, atol=10 * atol)
    np.testing.assert_allclose(got.probs, ref.probs, atol=atol)
    # a weight is a modality's share of the label's log-probability over the presence subsets: a
    # ratio of differences, which bf16 rounding moves about twice as much as the probabilities
    # (1.4.0: 0.0103 on one window of 37 at atol 0.01); an event's weight 0.01 off is no other story
    np.testing.assert_allclose(got.weights, ref.weights, atol=2 * atol)
    np.testing.assert_allclose(got.sentiment, ref.sentiment, atol=atol)
    assert (got.probs.argmax(1) == ref.probs.argmax(1)).mean() >= 0.95


def clips(n: int = 6) -> list[np.ndarray]:
    import soundfile as sf
    from scipy.signal import resample_poly

    paths = sorted(RAVDESS.glob("Actor_*/*.flac"))[::97][:n]
    if not paths:
        pytest.skip(f"no RAVDESS clips under {RAVDESS}")
    out = []
    for p in paths:
        x, sr = sf.read(p, dtype="float32")
        out.append(resample_poly(x if x.ndim == 1 else x.mean(1), 16000, sr).astype(np.float32))
    return out


def real_windows(text: np.ndarray, audio: np.ndarray) -> EngineBatch:
    """Every prefix of one conversation of real utterances (text i with clip i) as a window."""
    from engines.windows import UtteranceFeatures, pack_windows

    utts = [UtteranceFeatures(f"s{i % 2}", {"text": text[i], "audio": audio[i]}) for i in range(len(audio))]
    return pack_windows([utts[: i + 1] for i in range(len(utts))], load_engine("default").info.features)


def through_the_engine(
    text: np.ndarray,
    audio: np.ndarray,
    ref_text: np.ndarray,
    ref_audio: np.ndarray,
    atol: float = 2 * PROBS_ATOL,
    logits: bool = True,
) -> float:
    """Features from a runtime against the fp32 ones, judged where it matters: the fp32 engine's
    output on windows of them (the engine normalises features by their training spread, so a
    small absolute difference in a feature with a tiny spread moves the label). Returns the
    largest probability difference."""
    engine = load_engine("default", runtime="torch")
    got, ref = engine.predict(real_windows(text, audio)), engine.predict(real_windows(ref_text, ref_audio))
    close(got, ref, atol, logits)
    return float(np.abs(got.probs - ref.probs).max())


def test_onnxruntime_gives_the_fp32_probabilities() -> None:
    b = windows(37)
    close(load_engine("default", runtime="onnxruntime").predict(b), load_engine("default", "torch").predict(b), 1e-4)


def test_bf16_autocast_engine_stays_within_tolerance_of_fp32() -> None:
    b = windows(37)
    ref = load_engine("default", runtime="torch").predict(b)
    got = TorchEngine("default", autocast="bfloat16").predict(b)
    close(got, ref, PROBS_ATOL)
    assert np.abs(got.probs - ref.probs).max() > 0  # it did run in bf16


@pytest.mark.parametrize(("n", "want"), [(1, 1), (3, 4), (32, 32), (33, 64), (256, 256), (1500, 1500)])
def test_batches_pad_to_power_of_two_buckets(n: int, want: int) -> None:
    assert bucket(n) == want


def test_padding_a_batch_to_its_bucket_changes_no_output() -> None:
    b = windows(5)
    padded = pad_batch(b, 8)
    assert padded.size == 8 and np.array_equal(
        padded.features["text"][5:], np.repeat(b.features["text"][-1:], 3, axis=0)
    )
    plain = TorchEngine("default").predict(b)
    bucketed = TorchEngine("default", buckets=True).predict(b)
    assert bucketed.probs.shape == (5, 7)
    close(bucketed, plain, 1e-5)


def test_the_encoders_under_bf16_autocast_give_the_fp32_vectors() -> None:
    ref, got = load_extractors("default", runtime="torch"), load_extractors("default", runtime=BF16_CPU)
    assert got.text is not None and ref.text is not None and got.text.autocast == "bfloat16"
    cos = (ref.text.encode(TEXTS) * got.text.encode(TEXTS)).sum(1)  # unit vectors
    assert cos.min() > 0.9995, cos
    waves = clips()
    assert got.audio is not None and ref.audio is not None
    a, b = ref.audio.extract(waves), got.audio.extract(waves)
    rel = np.abs(a - b).max(1) / np.abs(a).max(1)
    assert rel.max() < 0.01, rel
    texts = (TEXTS * 2)[: len(waves)]
    through_the_engine(got.text.encode(texts), b, ref.text.encode(texts), a)


def test_the_bf16_cpu_runtime_runs_both_encoders_in_bf16_and_the_engine_as_onnxruntime() -> None:
    """onnxruntime-bf16 (auto's pick on a CPU with AMX where openvino does not import): the engine
    graph as onnxruntime, MiniLM in plain torch with bf16 weights and Whisper under bf16 autocast,
    each close to fp32."""
    from engines.features.text_bf16 import Bf16TextEncoder

    ref, got = load_extractors("default", runtime="onnxruntime"), load_extractors("default", runtime="onnxruntime-bf16")
    assert isinstance(got.text, Bf16TextEncoder) and ref.text is not None
    t_got, t_ref = got.text.encode(TEXTS), ref.text.encode(TEXTS)
    cos = (t_got * t_ref).sum(1)
    assert 0.9995 < cos.min() and np.abs(t_got - t_ref).max() > 1e-6, cos  # reduced precision, and close
    assert got.audio is not None and ref.audio is not None
    assert (got.audio.autocast, ref.audio.autocast) == ("bfloat16", None)
    waves = clips()
    a, b = ref.audio.extract(waves), got.audio.extract(waves)
    rel = np.abs(a - b).max(1) / np.abs(a).max(1)
    assert 0 < rel.max() < 0.01, rel  # reduced precision, and close
    texts = (TEXTS * 2)[: len(waves)]
    through_the_engine(got.text.encode(texts), b, ref.text.encode(texts), a)
    assert load_engine("default", runtime="onnxruntime-bf16").info.runtime == "onnxruntime-bf16"


def test_the_int8_runtime_quantizes_the_text_encoder_and_stays_close() -> None:
    from engines.features.text_onnx import OnnxTextEncoder

    ref, got = load_extractors("default", runtime="torch"), load_extractors("default", runtime="onnxruntime-int8")
    assert isinstance(got.text, OnnxTextEncoder) and got.text.quantize and ref.text is not None
    texts = (TEXTS * 2)[:6]
    t_got, t_ref = got.text.encode(texts), ref.text.encode(texts)
    assert got.text.onnx_path is not None and ".int8-" in got.text.onnx_path.name
    assert INT8_MIN_COSINE < (t_got * t_ref).sum(1).min() < 0.99999  # quantized, and close
    assert got.audio is not None
    a = got.audio.extract(clips())
    # lossy by design: its W-F1 cost is measured by evaluate (README, Runtimes); here, the probabilities
    # and labels hold. Not the log-probabilities of unlikely classes: on a CPU with AVX2 only
    # (2026-12-05) one moved from -2.94 to -4.20 (p 0.053 -> 0.015)
    assert through_the_engine(got.text.encode(texts), a, t_ref, a, atol=INT8_PROBS_ATOL, logits=False) > 1e-3
    assert load_engine("default", runtime="onnxruntime-int8").info.runtime == "onnxruntime-int8"


def test_the_float16_graph_tensorrt_builds_from_gives_the_fp32_probabilities(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from engines.runtime.tensorrt import half_graph, profile

    half_graph("models/default/model.onnx", tmp_path / "half.onnx")
    graph = onnx.load(str(tmp_path / "half.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.graph.initializer)
    fp32 = load_engine("default", runtime="onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "half.onnx"), providers=["CPUExecutionProvider"])
    b = windows(16)
    logits, probs, sentiment, weights = session.run(fp32.spec.output_names, fp32.feeds(b))  # type: ignore[attr-defined]
    close(EngineOutput(logits, probs, sentiment, weights), fp32.predict(b), PROBS_ATOL)
    shapes = profile(fp32.spec, max_window=12)  # type: ignore[attr-defined]
    assert shapes["text"] == ((1, 1, 384), (32, 12, 384), (256, 12, 384))
    assert shapes["target"] == ((1,), (32,), (256,))


@pytest.mark.gpu
@CUDA
def test_torch_cuda_gives_the_cpu_fp32_results() -> None:
    b = windows(64)
    ref = load_engine("default", runtime="torch").predict(b)
    engine = load_engine("default", runtime="torch-cuda")
    assert engine.info.runtime == "torch-cuda"
    close(engine.predict(b), ref, PROBS_ATOL)
    cpu, gpu = load_extractors("default", runtime="torch"), load_extractors("default", runtime="torch-cuda")
    assert cpu.text is not None and gpu.text is not None and cpu.audio is not None and gpu.audio is not None
    assert (cpu.text.encode(TEXTS) * gpu.text.encode(TEXTS)).sum(1).min() > 0.999
    waves = clips()
    a, g = cpu.audio.extract(waves), gpu.audio.extract(waves)
    assert (np.abs(a - g).max(1) / np.abs(a).max(1)).max() < 0.02


@pytest.mark.gpu
@CUDA
@pytest.mark.skipif(not tensorrt_available(), reason="needs the tensorrt package")
def test_tensorrt_gives_the_cpu_fp32_results(tmp_path: Path) -> None:
    from engines.runtime.tensorrt import TensorRTEngine

    engine = TensorRTEngine("default", cache_root=tmp_path)
    ref = load_engine("default", runtime="torch")
    for n in (1, 7, 64, 300):  # 300: past the profile's 256, run in slices
        b = windows(n, seed=n)
        close(engine.predict(b), ref.predict(b), PROBS_ATOL)
    again = TensorRTEngine("default", cache_root=tmp_path)  # the cached plan
    assert again.plan_dir == engine.plan_dir
