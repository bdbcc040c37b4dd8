"""``emostream evaluate`` on real data with small real artifacts: JSON figures, --future, --corrupt,
--plot and the errors of bad requests; ``train --corrupt-train`` checks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from engines.corrupt import CorruptSpec, audio_pool, corrupt_dialogues, parse_corrupt  # noqa: E402
from engines.errors import DatasetError  # noqa: E402
from engines.interface import EMOTIONS, MODALITIES, FeatureSpec  # noqa: E402

MAX_WINDOW = 6
CLEAN = ("weighted_f1", "accuracy", "macro_f1", "n", "per_class_f1", "sentiment_mae")


def make_artifact(out: Path, causal: bool, future: int) -> Path:
    """A small relevance artifact (text + audio, random weights) written as training writes one."""
    from safetensors.torch import save_file

    from engines import artifact
    from engines.export import export_onnx
    from engines.features.audio import AudioFeatureExtractor
    from engines.features.text import TextEncoderConfig
    from engines.models import build_model

    audio = AudioFeatureExtractor()
    spec = FeatureSpec({"text": 384, "audio": audio.dim})
    torch.manual_seed(1)
    cfg = {"text_dim": 384, "audio_dim": audio.dim, "d_model": 32, "n_heads": 2, "n_layers": 1}
    net = build_model("relevance", {**cfg, "max_window": MAX_WINDOW, "causal": causal, "dropout": 0.0}).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / artifact.WEIGHTS))
    config = {"engine": "relevance", "name": "emostream-relevance", "version": "test", "max_window": MAX_WINDOW}
    artifact.write_json(out, artifact.CONFIG, {**config, "future": future, "model": net.cfg.to_dict()})
    artifact.write_json(out, artifact.LABELS, list(EMOTIONS))
    features = {
        "spec": {"text_dim": 384, "audio_dim": audio.dim, "video_dim": 0},
        "text": {"model_id": TextEncoderConfig.model_id, "dim": 384, "normalise_text": True},
        "audio": {**audio.to_dict(), "id": audio.id},
    }
    artifact.write_json(out, artifact.FEATURES, features)
    artifact.write_json(out, artifact.SPEC, export_onnx(net, spec, out / artifact.ONNX).to_dict())
    return out


@pytest.fixture(scope="module")
def causal_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("causal"), causal=True, future=0)


@pytest.fixture(scope="module")
def future_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("future2"), causal=False, future=2)


def evaluate(capsys: pytest.CaptureFixture[str], model: Path, data: Path, *extra: str) -> dict[str, Any]:
    from engines.evaluate import main

    argv = ["--model", str(model), "--data-dir", str(data), "--threads", "1", "--json"]
    if "--dataset" not in extra:
        argv += ["--dataset", "meld-ravdess"]
    code = main([*argv, *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return dict(json.loads(out))


def evaluate_error(capsys: pytest.CaptureFixture[str], model: Path, data: Path, *extra: str) -> str:
    from engines.evaluate import main

    code = main(["--model", str(model), "--data-dir", str(data), "--threads", "1", "--json", *extra])
    out, err = capsys.readouterr()
    assert code == 2 and not out, (code, out)
    return err


def test_json_report_and_plot(
    causal_model: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "figs" / "cm.png"
    rep = evaluate(capsys, causal_model, shared_data, "--plot", str(png))
    assert rep["n"] == 1109 and rep["future"] == 0 and rep["corrupt"] is None
    assert rep["modalities"] == ["text", "audio"]
    assert set(rep["per_class_f1"]) == set(EMOTIONS)
    assert all(0.0 <= rep[k] <= 1.0 for k in ("weighted_f1", "accuracy", "macro_f1"))
    w = rep["mean_weights"]
    assert set(w) == set(MODALITIES) and w["video"] == 0.0 and w["text"] > 0 and w["audio"] > 0
    assert abs(w["text"] + w["audio"] - 1.0) < 1e-3  # every utterance has both
    assert rep["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    text_only = evaluate(capsys, causal_model, shared_data, "--modalities", "text")
    assert text_only["mean_weights"] == {"text": 1.0, "audio": 0.0, "video": 0.0}


def test_plot_confusion_counts(tmp_path: Path) -> None:
    from engines.metrics import confusion_counts
    from engines.plot import plot_confusion

    cm = confusion_counts(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    path = plot_confusion(cm, ("a", "b", "c"), tmp_path / "cm.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_causal_model_ignores_future(
    causal_model: Path, future_model: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = evaluate(capsys, causal_model, shared_data)
    for k in (1, 3, 8):
        rep = evaluate(capsys, causal_model, shared_data, "--future", str(k))
        assert rep["future"] == k
        assert {x: rep[x] for x in CLEAN} == {x: base[x] for x in CLEAN}, k
        for m in MODALITIES:
            assert abs(rep["mean_weights"][m] - base["mean_weights"][m]) <= 1e-4
    # The future does reach a non-causal model (so the invariance above is the causal mask's doing).
    blind = evaluate(capsys, future_model, shared_data)
    seeing = evaluate(capsys, future_model, shared_data, "--future", "2")
    assert (blind["sentiment_mae"], blind["mean_weights"]) != (seeing["sentiment_mae"], seeing["mean_weights"])


def test_context_windows_keep_the_models_past(shared_data: Path) -> None:
    from engines.datasets import load_dataset
    from engines.evaluate import context_windows
    from engines.windows import dialogue_windows

    dialogues = load_dataset("meld", shared_data, "dev")[:20]
    names = [u.speaker for d in dialogues for u in d.utterances]
    for k in (1, 2, 4):
        wide = dialogue_windows(dialogues, MAX_WINDOW + k, future=k)
        own = context_windows(wide, names, MAX_WINDOW, trained_future=k)  # a model trained with k
        want = dialogue_windows(dialogues, MAX_WINDOW, future=k)  # = its training windows
        trim = own.utt.shape[1] - MAX_WINDOW
        assert (own.utt[:, :trim] == -1).all()
        np.testing.assert_array_equal(own.utt[:, trim:], want.utt)
        np.testing.assert_array_equal(own.speakers[:, trim:], want.speakers)
        np.testing.assert_array_equal(own.target - trim, want.target)
        causal = context_windows(wide, names, MAX_WINDOW, trained_future=0)
        plain = dialogue_windows(dialogues, MAX_WINDOW, future=0)
        for r in range(plain.utt.shape[0]):  # the causal past, then up to k later utterances
            past = plain.utt[r][plain.utt[r] >= 0]
            row = causal.utt[r][causal.utt[r] >= 0]
            t = int(causal.target[r]) - int((causal.utt[r] < 0).sum())
            np.testing.assert_array_equal(row[: t + 1], past)
            assert len(row) - t - 1 == min(k, len(row) - t - 1) and row[t] == past[-1]


def test_corrupt_report(causal_model: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rep = evaluate(capsys, causal_model, shared_data, "--corrupt", "audio=0.5", "--seed", "0")
    again = evaluate(capsys, causal_model, shared_data, "--corrupt", "audio=0.5", "--seed", "0")
    assert rep == again
    c = rep["corrupt"]
    assert c["modality"] == "audio" and c["fraction"] == 0.5 and c["seed"] == 0
    assert c["n_corrupted"] + c["n_clean"] == rep["n"] == 1109 and c["n_corrupted"] == round(0.5 * 1109)
    for key in ("mean_weights_corrupted", "mean_weights_clean"):
        assert abs(c[key]["text"] + c[key]["audio"] - 1.0) < 1e-3
    assert c["audio_weight_ratio"] == pytest.approx(
        c["mean_weights_corrupted"]["audio"] / c["mean_weights_clean"]["audio"], abs=1e-3
    )
    assert 0.0 <= c["weighted_f1_corrupted"] <= 1.0 and 0.0 <= c["weighted_f1_clean"] <= 1.0
    clean = evaluate(capsys, causal_model, shared_data)
    corrupted_out = (rep["sentiment_mae"], rep["mean_weights"])
    assert corrupted_out != (clean["sentiment_mae"], clean["mean_weights"])  # the swapped clips reach the model


def test_corrupted_utterances_carry_another_emotion(shared_data: Path) -> None:
    from engines.datasets import load_dataset
    from engines.datasets.ravdess import load_ravdess_clips

    dialogues = load_dataset("meld-ravdess", shared_data, "dev")
    pool = audio_pool("meld-ravdess", shared_data, "dev")
    assert {c.actor for c in pool} == {17, 18, 19, 20}
    clips = {c.path: c for c in load_ravdess_clips(shared_data, "dev")}
    a = corrupt_dialogues(dialogues, CorruptSpec("audio", 0.3), seed=5, clips=pool)
    b = corrupt_dialogues(dialogues, CorruptSpec("audio", 0.3), seed=5, clips=pool)
    other = corrupt_dialogues(dialogues, CorruptSpec("audio", 0.3), seed=6, clips=pool)
    assert a.dialogues == b.dialogues and (a.mask == b.mask).all()
    assert a.dialogues != other.dialogues and (a.mask != other.mask).any()
    before = [u for d in dialogues for u in d.utterances]
    after = [u for d in a.dialogues for u in d.utterances]
    assert len(after) == len(before) == a.mask.shape[0] == 1109
    assert a.n_corrupted == round(0.3 * 1109)
    for i, (u, v) in enumerate(zip(before, after, strict=True)):
        assert (u.text, u.speaker, u.emotion) == (v.text, v.speaker, v.emotion)
        if a.mask[i]:
            swapped, own = clips[str(v.audio)], clips[str(u.audio)]
            assert swapped.emotion != u.emotion == own.emotion  # another emotion
            assert swapped.actor == own.actor  # the speaker's own actor (each has every emotion)
            assert a.donor_emotion[i] == swapped.emotion
        else:
            assert v.audio == u.audio and a.donor_emotion[i] == -1
    swapped_to = Counter(EMOTIONS[int(e)] for e in a.donor_emotion[a.mask])
    assert len(swapped_to) == len(EMOTIONS)  # donors of every emotion, not one fixed clip

    text = corrupt_dialogues(dialogues, CorruptSpec("text", 0.5), seed=0)
    new = [x for d in text.dialogues for x in d.utterances]
    changed = [(u, v) for u, v, hit in zip(before, new, text.mask, strict=True) if hit]
    assert len(changed) == round(0.5 * 1109)
    assert all(v.audio == u.audio and v.emotion == u.emotion for u, v in changed)
    emotion_of = {}
    for u in before:
        emotion_of.setdefault(u.text, set()).add(u.emotion)
    assert all(any(e != u.emotion for e in emotion_of[v.text]) for u, v in changed)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("audio", r"MODALITY\[:KIND\]=FRACTION"),
        ("audio=", r"MODALITY\[:KIND\]=FRACTION"),
        ("=0.5", r"MODALITY\[:KIND\]=FRACTION"),
        ("audio:hum=1", "no kind 'hum'"),
        ("text:noise=1", "no kind 'noise'"),
        ("speech=0.5", "unknown modality"),
        ("video=0.5", "cannot be corrupted"),
        ("audio=half", "must be a number"),
        ("audio=1.5", r"in \[0, 1\]"),
        ("audio=-0.1", r"in \[0, 1\]"),
    ],
)
def test_bad_corrupt_specs(spec: str, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        parse_corrupt(spec)


def test_corrupt_errors_on_the_command_line(
    causal_model: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = evaluate_error(capsys, causal_model, shared_data, "--dataset", "meld", "--corrupt", "audio=0.5")
    assert "needs a dataset with audio" in err
    err = evaluate_error(capsys, causal_model, shared_data, "--dataset", "meld-ravdess", "--corrupt", "audio:0.5")
    assert "MODALITY[:KIND]=FRACTION" in err
    err = evaluate_error(
        capsys, causal_model, shared_data, "--dataset", "meld-ravdess", "--modalities", "text", "--corrupt", "audio=0.5"
    )
    assert "among --modalities" in err
    err = evaluate_error(capsys, causal_model, shared_data, "--dataset", "meld-ravdess", "--future", "-1")
    assert "--future" in err
    # found by a newcomer: scored on nothing, these gave a figure that looked like a result
    err = evaluate_error(capsys, causal_model, shared_data, "--dataset", "meld", "--modalities", "audio")
    assert "--modalities audio: no utterance of meld dev has it as an input of this model; it has text" in err
    err = evaluate_error(capsys, causal_model, shared_data, "--dataset", "meld", "--modalities", ",")
    assert "names none" in err


def test_corrupt_train_needs_the_composite(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engines.train import main

    argv = ["--dataset", "iemocap-text", "--data-dir", str(shared_data), "--out", str(tmp_path / "x")]
    assert main([*argv, "--corrupt-train", "0.3", "--threads", "1", "--no-progress"]) == 2
    assert "meld-ravdess composite" in capsys.readouterr().err
    argv[1] = "meld-ravdess"
    with pytest.raises(SystemExit) as out:  # a rate out of range: argparse's one line, before anything
        main([*argv, "--corrupt-train", "1.5", "--threads", "1", "--no-progress"])
    assert out.value.code == 2 and "--corrupt-train: must be between 0 and 1, not 1.5" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_numbers_and_engine_settings_out_of_range_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a newcomer: --epochs 0, --heads 3 or --set agreement=False ended in a traceback deep in
    training, or (the string "False" is true) trained the wrong model."""
    from engines.train import main

    argv = ["--dataset", "meld", "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path / "x")]
    for flags, said in (
        (["--epochs", "0"], "--epochs: must be at least 1, not 0"),
        (["--dropout", "1.5"], "--dropout: must be 0 or more and under 1, not 1.5"),
        (["--lr", "nan"], "--lr: must be finite, not nan"),
    ):
        with pytest.raises(SystemExit):
            main([*argv, *flags])
        assert said in capsys.readouterr().err
    for flags, said in (
        (["--engine", "relevance", "--set", "agreement=False"], "setting agreement must be true or false, not 'False'"),
        (["--engine", "relevance", "--set", 'loss={"bogus": 1}'], "setting loss must be a table of some of"),
        (["--engine", "unimse", "--set", "d_model=-4"], "setting d_model must be an integer >= 1, not -4"),
        (["--engine", "unimse", "--heads", "3"], "d_model 128 must be a multiple of n_heads 3"),
        (["--tune-text", "2", "--text-weights", "models/default"], "give one"),  # the tuning was dropped
    ):
        assert main([*argv, *flags]) == 2  # before the data (there is none there) is looked for
        assert said in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "checksums.json").write_text("{}")  # an artifact there: said before the work
    assert main(argv) == 2
    assert f"train: {tmp_path / 'x'} holds an artifact; it is replaced when this run ends" in capsys.readouterr().err


def test_corrupt_train_keeps_the_targets_text() -> None:
    from engines.train import _modality_dropout

    b, w = 6, 4
    present = torch.ones(b, w, 3)
    present[..., 2] = 0.0
    kw = {"present": present, "target": torch.full((b,), w - 1)}
    keep = torch.tensor([True, True, True, False, False, False])
    gen = torch.Generator().manual_seed(0)
    _modality_dropout(kw, [0, 1], p_window=1.0, p_context=0.0, gen=gen, keep_text=keep)  # every window loses text
    text = kw["present"][:, :, 0]
    assert (text[3:] == 0).all()
    assert (text[:3, w - 1] == 1).all() and (text[:3, : w - 1] == 0).all()  # contradicted targets keep their text
    assert (kw["present"][:, :, 1] == 1).all()


def test_target_dropout_hides_one_modality_of_the_target_alone_and_never_its_last() -> None:
    from engines.train import _modality_dropout

    b, w = 400, 4
    present = torch.ones(b, w, 3)
    present[..., 2] = 0.0
    present[:50, w - 1, 1] = 0.0  # 50 targets have no audio: their text must stay
    target = torch.full((b,), w - 1)
    kw = {"present": present, "target": target}
    before = present.clone()
    gen = torch.Generator().manual_seed(0)
    _modality_dropout(kw, [0, 1], p_window=0.0, p_context=0.0, gen=gen, p_target=0.5)
    after = kw["present"]
    assert torch.equal(after[:, : w - 1], before[:, : w - 1])  # the context keeps everything
    at = after[:, w - 1, :2]
    assert (at.sum(-1) >= 1).all()  # never the target's last modality
    assert (at[:50, 0] == 1).all()
    hidden = (at == 0) & (before[:, w - 1, :2] == 1)
    assert 120 < int(hidden[50:].sum()) < 230  # about half of the 350 with both, one modality each
    assert 0 < int(hidden[50:, 0].sum()) and 0 < int(hidden[50:, 1].sum())  # text or audio
    same = torch.ones(b, w, 3)
    kw0 = {"present": same, "target": target}
    _modality_dropout(kw0, [0, 1], p_window=0.0, p_context=0.0, gen=torch.Generator().manual_seed(0))
    assert (kw0["present"] == 1).all()  # 0 (the default): nothing


def test_words_alone_noise_touches_only_windows_whose_target_has_no_voice() -> None:
    from engines.train import _noise_words_alone

    b, w, d = 300, 4, 8
    present = torch.ones(b, w, 3)
    present[..., 2] = 0.0
    present[:100, w - 1, 1] = 0.0  # 100 targets without audio (their context may have some)
    present[100:200, :, 1] = 0.0  # 100 windows without audio at all
    text = torch.randn(b, w, d)
    std = torch.linspace(0.5, 4.0, d)  # each dimension's training spread
    kw = {"present": present, "target": torch.full((b,), w - 1), "features": {"text": text.clone()}}
    _noise_words_alone(kw, std, 0.5, torch.Generator().manual_seed(0))
    moved = kw["features"]["text"] - text
    assert torch.equal(moved[200:], torch.zeros_like(moved[200:]))  # the voice is there: words untouched
    assert (moved[:200].abs() > 0).all()  # every vector of a window whose target is words alone
    spread = moved[:200].reshape(-1, d).std(0) / std  # in units of each dimension's spread
    assert torch.allclose(spread, torch.full((d,), 0.5), atol=0.05), spread
    kw0 = {"present": torch.ones(2, w, 3), "target": torch.zeros(2, dtype=torch.long), "features": {"text": None}}
    _noise_words_alone(kw0, std, 0.5, torch.Generator().manual_seed(0))  # no text: nothing to do
    assert kw0["features"]["text"] is None


def test_independent_experts_is_bayes_combination() -> None:
    """Two posteriors from label-independent evidence combine to p(y|a,b) = p(y|a) p(y|b) / p(y)."""
    from engines.bench import independent_experts

    rng = np.random.default_rng(0)
    prior = np.array([0.5, 0.3, 0.2])
    lik_a, lik_b = rng.random((4, 3)), rng.random((4, 3))  # p(x | y) per row
    post = lambda lik: lik * prior / (lik * prior).sum(1, keepdims=True)  # noqa: E731
    want = lik_a * lik_b * prior
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(independent_experts([post(lik_a), post(lik_b)], prior), want, atol=1e-9)
    np.testing.assert_allclose(independent_experts([post(lik_a)], prior), post(lik_a), atol=1e-9)


def test_voiceless_kinds_replace_the_chosen_clips_with_seeded_probes(tmp_path: Path) -> None:
    from engines.datasets.base import Dialogue, Utterance

    assert parse_corrupt("audio:noise=1") == CorruptSpec("audio", 1.0, "noise")
    assert str(parse_corrupt(" Audio:Silence = 0.5")) == "audio:silence=0.5"
    dialogues = [
        Dialogue("d", [Utterance("hi", "A", 0, 0, f"/clip{i}.flac") for i in range(10)] + [Utterance("x", "B", 1, 0)])
    ]
    got = corrupt_dialogues(dialogues, CorruptSpec("audio", 0.5, "noise"), seed=3, probe_dir=tmp_path)
    again = corrupt_dialogues(dialogues, CorruptSpec("audio", 0.5, "noise"), seed=3, probe_dir=tmp_path)
    swapped = [u.audio for u in got.dialogues[0].utterances if u.audio and u.audio.startswith(str(tmp_path))]
    assert got.n_corrupted == len(swapped) == 5 and (got.donor_emotion == -1).all()
    assert [u.audio for u in again.dialogues[0].utterances] == [u.audio for u in got.dialogues[0].utterances]
    assert all(Path(p).is_file() for p in swapped)


def test_transcripts_asr_is_refused_where_the_text_features_come_precomputed(
    causal_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A feature pickle brings its text vectors: rewriting its transcripts would change nothing the
    model reads, so the report would say 'asr' of figures that are not."""
    import pickle

    ids = [f"Ses0{i}" for i in range(20)]
    rng = np.random.default_rng(0)
    obj = (
        {v: v for v in ids},
        {v: ["M", "F"] for v in ids},
        {v: [i % 6, (i + 1) % 6] for i, v in enumerate(ids)},
        *({v: rng.standard_normal((2, n)).tolist() for v in ids} for n in (10, 4, 3)),
        {v: ["Hello!", "Bye?"] for v in ids},
        ids[:16],
        ids[16:],
    )
    with (tmp_path / "IEMOCAP_features.pkl").open("wb") as f:
        pickle.dump(obj, f)
    err = evaluate_error(capsys, causal_model, tmp_path, "--dataset", "iemocap-pickle", "--transcripts", "asr")
    assert "--transcripts asr: iemocap-pickle brings its text features precomputed" in err, err
