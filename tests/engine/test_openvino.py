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


def test_a_call_holds_texts_of_one_padded_width() -> None:
    """What keeps a text's bits the same in any company is that a call never mixes widths: the bit
    test above passes on its texts with length buckets padded to their longest rounded width too
    (tried by hand), so the grouping is checked here directly."""
    from engines.features.text import normalise_text

    enc = load_extractors("default", runtime="openvino").text
    assert isinstance(enc, OpenVinoTextEncoder)
    texts = meld_texts() + VARIED + ["", "and then " * 80]
    clean = [normalise_text(t) for t in texts]
    ids, types = enc._tokenize(clean)
    calls = enc._calls(clean, ids)
    assert sorted(i for call in calls for i in call) == list(range(len(texts)))
    widths = []
    for call in calls:
        assert 0 < len(call) <= enc.config.bucket_size
        rounded = {-(-max(1, len(ids[i])) // SPAN) * SPAN for i in call}
        assert len(rounded) == 1, [len(ids[i]) for i in call]
        feeds = enc._pad([ids[i] for i in call], None if types is None else [types[i] for i in call])
        assert feeds["input_ids"].shape == (len(call), rounded.pop())
        widths.append(feeds["input_ids"].shape[1])
    assert len(set(widths)) >= 3


@pytest.mark.parametrize("which", ["text", "audio"])
def test_a_compiled_graph_that_computes_wrongly_fails_at_start(which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each start checks the compiled graph against ONNX Runtime fp32 on the export's probes; the
    shipped graphs pass with a wide margin (printed), a graph whose outputs are off fails."""
    from engines.errors import FeatureError
    from engines.features import openvino_cpu
    from engines.features.openvino_cpu import START_MAX_REL, START_MIN_COSINE

    fresh = load_extractors("default", runtime="openvino")
    enc = fresh.text if which == "text" else fresh.audio
    assert enc is not None
    enc.session()  # the check passed; how far inside its bound:
    if which == "text":
        assert isinstance(enc, OpenVinoTextEncoder)
        ids, types = enc._tokenize([openvino_cpu.normalise_text(t) for t in openvino_cpu.PROBE])
        feeds = openvino_cpu.OnnxTextEncoder._pad(enc, ids, types)
        ref = openvino_cpu.reference_session(enc.onnx_path)
        want = ref.run(None, {i.name: feeds[i.name] for i in ref.get_inputs()})[0]
        cos = float((enc.session().run(None, feeds)[0] * want).sum(1).min())
        print(f"text probes: least cosine {cos:.6f} (bound {START_MIN_COSINE})")
        assert 1 - cos < (1 - START_MIN_COSINE) / 5
    else:
        assert isinstance(enc, OpenVinoWhisperExtractor) and enc.onnx_path is not None
        waves = openvino_cpu.probe_waves()
        want = enc._extract(openvino_cpu.reference_session(enc.onnx_path), waves)
        got = enc._extract(enc.session(), waves)
        rel = float((np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)).max())
        print(f"audio probes: largest relative difference {rel:.4f} (bound {START_MAX_REL})")
        assert rel < START_MAX_REL / 2

    real_run = openvino_cpu.OpenVinoRunner.run

    def off(self: object, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = real_run(self, outputs, feeds)  # type: ignore[arg-type]
        return [o + 0.05 * np.abs(o).max() * np.sign(np.sin(np.arange(o.size))).reshape(o.shape) for o in out]

    monkeypatch.setattr(openvino_cpu.OpenVinoRunner, "run", off)
    again = load_extractors("default", runtime="openvino")
    with pytest.raises(FeatureError, match="differs from the same graph in ONNX Runtime fp32"):
        if which == "text":
            assert again.text is not None
            again.text.encode(["Fine."])
        else:
            assert again.audio is not None
            again.audio.extract([np.zeros(16_000, dtype=np.float32)])
