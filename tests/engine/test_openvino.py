"""The openvino runtime (engines/features/openvino_cpu.py): MiniLM and Whisper's exported graphs
compiled by OpenVINO, close to fp32, a text's vector independent of its batch, no torch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")

from engines.features.openvino_cpu import SPAN, OpenVinoTextEncoder, OpenVinoWhisperExtractor  # noqa: E402
from engines.registry import load_engine, load_extractors  # noqa: E402
from tests.engine.test_runtimes import RAVDESS, TEXTS, clips, through_the_engine  # noqa: E402

pytestmark = pytest.mark.engine

#: texts of many token lengths (1 to about 60), so calls hold several padded widths
VARIED = TEXTS + [" ".join(["no"] * k) + "." for k in (1, 5, 14, 15, 16, 17, 31, 33, 47, 60)]


def test_both_encoders_run_in_openvino_close_to_fp32_and_the_engine_as_onnxruntime() -> None:
    ref, got = load_extractors("default", runtime="onnxruntime"), load_extractors("default", runtime="openvino")
    assert isinstance(got.text, OpenVinoTextEncoder) and isinstance(got.audio, OpenVinoWhisperExtractor)
    assert ref.text is not None and ref.audio is not None
    t_got, t_ref = got.text.encode(VARIED), ref.text.encode(VARIED)
    assert got.text.precision in ("bf16", "f32")
    cos = (t_got * t_ref).sum(1)
    assert 0.9995 < cos.min(), cos
    waves = clips()
    a, b = ref.audio.extract(waves), got.audio.extract(waves)
    rel = np.abs(a - b).max(1) / np.abs(a).max(1)
    assert rel.max() < 0.02, rel
    if got.text.precision == "bf16":  # reduced precision where the CPU has it (this project's: AMX)
        assert np.abs(t_got - t_ref).max() > 1e-6 and rel.max() > 0
    texts = (TEXTS * 2)[: len(waves)]
    through_the_engine(got.text.encode(texts), b, ref.text.encode(texts), a)
    assert load_engine("default", runtime="openvino").info.runtime == "openvino"
    assert got.text.cache_namespace != ref.text.cache_namespace  # its vectors never mix with fp32's in a cache


def meld_texts(n: int = 64) -> list[str]:
    import csv

    path = RAVDESS.parent / "meld" / "dev_sent_emo.csv"
    if not path.is_file():
        pytest.skip(f"no MELD transcripts at {path}")
    with path.open(encoding="utf-8") as f:
        return [row["Utterance"] for row in csv.DictReader(f)][:n]


def test_a_text_vector_has_the_same_bits_whatever_texts_share_its_call() -> None:
    """OpenVINO's bf16 kernels give a text other bits at another padded width (on MELD's first 64
    dev utterances, grouped by width but padded to each group's longest: 4 texts differ by up to
    7e-4), so each text runs at its own width, rounded up to SPAN tokens."""
    shipped = load_extractors("default", runtime="openvino").text
    assert isinstance(shipped, OpenVinoTextEncoder)
    texts = meld_texts() + VARIED + ["", "and then " * 80]  # nothing, and past max_seq_length (truncated)
    first = None
    for threads in (None, 1, 4):  # every core, one, and more than this machine has
        enc = shipped if threads is None else OpenVinoTextEncoder(shipped.encoder, intra_op_threads=threads)
        together = enc.encode(texts)
        if first is None:
            first = together
        assert np.array_equal(together, first)  # a replay on a pod with another thread count
        alone = np.concatenate([enc.encode([t]) for t in texts])
        assert np.array_equal(together, alone)
        rng = np.random.default_rng(0)
        for _ in range(3):  # other companions, other orders, calls cut at other places
            order = rng.permutation(len(texts))
            mixed = enc.encode([texts[i] for i in order] + texts[:3])
            assert np.array_equal(mixed[: len(texts)], together[order])
    ids, _ = shipped._tokenize(texts)
    assert len({-(-len(x) // SPAN) for x in ids}) >= 3  # the texts did fall into several widths


def test_two_threads_may_encode_at_once() -> None:
    """The worker encodes a batch and the next one in two threads (streams/pipeline.py); an
    OpenVINO infer request takes one call at a time (without the lock: 'Infer Request is busy')."""
    from concurrent.futures import ThreadPoolExecutor

    ex = load_extractors("default", runtime="openvino")
    assert ex.text is not None and ex.audio is not None
    texts, waves = meld_texts(32) + VARIED, clips(4)
    want_t, want_a = ex.text.encode(texts), ex.audio.extract(waves)
    with ThreadPoolExecutor(4) as pool:
        text_runs = [pool.submit(ex.text.encode, texts) for _ in range(6)]
        audio_runs = [pool.submit(ex.audio.extract, waves) for _ in range(4)]
        for f in text_runs:
            assert np.array_equal(f.result(), want_t)
        for f in audio_runs:
            np.testing.assert_allclose(f.result(), want_a, rtol=0, atol=1e-6)


def test_the_compiled_graphs_keep_few_shapes_kernels() -> None:
    """Whisper's passes take a new shape with nearly every batch: with the plugin's default cache
    (5000 shapes) a process grew from 340 to 1016 MB over 240 calls of random sizes. (A compiled
    model does not report the setting back, so its settings are read where they are made.)"""
    from engines.features.openvino_cpu import RUNTIME_CACHE, compile_config

    config = compile_config(3)
    assert config["CPU_RUNTIME_CACHE_CAPACITY"] == RUNTIME_CACHE <= 64
    assert config["PERFORMANCE_HINT"] == "LATENCY" and config["INFERENCE_NUM_THREADS"] == 3
    assert config["ENABLE_CPU_PINNING"] is False  # pinned, the processes of one machine share the same cores
    ex = load_extractors("default", runtime="openvino")
    assert isinstance(ex.text, OpenVinoTextEncoder) and isinstance(ex.audio, OpenVinoWhisperExtractor)
    for session in (ex.text.session(), ex.audio.session()):  # compiled with them
        assert int(session.compiled.get_property("INFERENCE_NUM_THREADS")) > 0
