"""A words network taken into a voice-gated artifact (``emostream train --text-network MODEL``):
what is checked before it stands in, and what the artifact keeps of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from engines import artifact  # noqa: E402
from engines.errors import ArtifactError  # noqa: E402
from engines.models import build_model  # noqa: E402

LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
TEXT = {"kind": "minilm-tuned", "dim": 16, "sha256": "ab" * 32, "layers": [4, 5]}


def words_artifact(
    out: Path, *, audio_dim: int = 0, labels: list[str] = LABELS, text: dict[str, Any] = TEXT, window: int = 12
) -> Path:
    """A sealed artifact of a small text-only (or, with ``audio_dim``, text and audio) network."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = build_model("foal-net", {"text_dim": 16, "audio_dim": audio_dim, "d_model": 16, "n_heads": 2})
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / artifact.WEIGHTS))
    config = {"engine": "foal-net", "version": "0", "max_window": window, "future": 0, "model": net.cfg.to_dict()}
    artifact.write_json(out, artifact.CONFIG, config)
    artifact.write_json(out, artifact.LABELS, labels)
    features = {"spec": {"text_dim": 16, "audio_dim": audio_dim, "video_dim": 0}, "text": text}
    artifact.write_json(out, artifact.FEATURES, features)
    artifact.write_json(out, artifact.METRICS, {"best_epoch": 3, "text": {"weighted_f1": 0.5}})
    artifact.seal(out)
    return out


def take(source: Path, out: Path) -> tuple[Any, dict[str, Any]]:
    """``take_text_network`` as training calls it, then the copy training makes with the artifact."""
    import shutil

    net, record = artifact.take_text_network(source, LABELS, TEXT, 12, 0)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / artifact.WEIGHTS, out / artifact.TEXT_NETWORK)
    return net, record


def test_a_words_artifact_is_recorded_and_loads_back_only_as_recorded(tmp_path: Path) -> None:
    src = words_artifact(tmp_path / "words")
    net, record = take(src, tmp_path / "model")
    assert record["sha256"] == artifact.file_sha256(src / artifact.WEIGHTS)
    assert (record["engine"], record["dev_weighted_f1"], record["best_epoch"]) == ("foal-net", 0.5, 3)
    again = artifact.load_text_network(tmp_path / "model", {"text_network": record})
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert artifact.load_text_network(tmp_path / "model", {}) is None  # none recorded
    changed = bytearray((src / artifact.WEIGHTS).read_bytes())
    changed[-1] ^= 1  # one bit of one weight: another network than the one recorded
    (tmp_path / "model" / artifact.TEXT_NETWORK).write_bytes(bytes(changed))
    with pytest.raises(ArtifactError, match="is not the one config.json's text_network records"):
        artifact.load_text_network(tmp_path / "model", {"text_network": record})


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"audio_dim": 8}, "a words-only artifact is needed"),
        ({"labels": LABELS[::-1]}, "its labels"),
        ({"text": {**TEXT, "sha256": "cd" * 32}}, "its text features"),
        ({"window": 8}, "window 8"),
    ],
)
def test_a_words_artifact_that_cannot_stand_in_is_refused(tmp_path: Path, kwargs: dict[str, Any], reason: str) -> None:
    src = words_artifact(tmp_path / "words", **kwargs)
    with pytest.raises(ArtifactError, match=reason):
        take(src, tmp_path / "model")


def test_an_unsealed_or_edited_words_artifact_is_refused(tmp_path: Path) -> None:
    src = words_artifact(tmp_path / "words")
    (src / artifact.WEIGHTS).write_bytes((src / artifact.WEIGHTS).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="does not match its SHA-256"):
        take(src, tmp_path / "model")
    with pytest.raises(ArtifactError, match="lacks text_network.safetensors"):
        artifact.load_text_network(tmp_path / "nowhere", {"text_network": {"engine": "foal-net", "model": {}}})


def test_train_refuses_a_words_network_before_any_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import engines.train as train

    monkeypatch.setattr(train, "_train", lambda ns: pytest.fail("trained although the words network is refused"))
    base = ["--data-dir", "d", "--out", str(tmp_path / "o")]
    assert train.main([*base, "--text-network", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    both = words_artifact(tmp_path / "both", audio_dim=8)
    assert train.main([*base, "--text-network", str(both)]) == 2
    assert "a words-only artifact is needed" in capsys.readouterr().err
    words = words_artifact(tmp_path / "words")
    assert train.main([*base, "--text-network", str(words), "--no-trust"]) == 2
    assert "--no-trust leaves out" in capsys.readouterr().err
