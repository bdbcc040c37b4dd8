"""``emostream train --out DIR`` over an artifact already there: replaced whole, or left whole."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from engines import train


def _artifact(folder: Path, text: str, *extra: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("weights.safetensors", *extra):
        (folder / name).write_text(text)
    (folder / "checksums.json").write_text(json.dumps({n: text for n in ("weights.safetensors", *extra)}))


def test_a_failed_run_leaves_the_artifact_there_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies after writing its first files (the tuned text layers are written first)
    used to leave them in the old artifact, whose checksums then failed: models/default broken."""
    out = tmp_path / "default"
    _artifact(out, "old")

    def dies(ns: argparse.Namespace, out_dir: Path) -> int:
        (out_dir / "text_encoder.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (out_dir / "text_encoder.safetensors").write_text("new")
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_train_into", dies)
    with pytest.raises(KeyboardInterrupt):
        train._train(argparse.Namespace(out=str(out)))
    assert sorted(p.name for p in out.iterdir()) == ["checksums.json", "weights.safetensors"]
    assert (out / "weights.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]  # no staging folder left


def test_a_finished_run_replaces_the_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "default"
    _artifact(out, "old", "text_network.safetensors")  # an artifact file the new run does not write goes
    (out / "README.md").write_text("the model card")  # the folder's other files stay
    (out / "metrics.json").write_text("old")  # the run writes its own
    (tmp_path / ".default.partial").mkdir()  # left by a run stopped earlier
    (tmp_path / ".default.partial" / "stale").write_text("stale")

    def trains(ns: argparse.Namespace, out_dir: Path) -> int:
        assert not (out_dir / "stale").exists()
        _artifact(out_dir, "new")
        return 0

    monkeypatch.setattr(train, "_train_into", trains)
    assert train._train(argparse.Namespace(out=str(out))) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "checksums.json", "weights.safetensors"]
    assert (out / "weights.safetensors").read_text() == "new"
    assert (out / "README.md").read_text() == "the model card"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]


def test_a_first_run_makes_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "runs" / "new"

    def trains(ns: argparse.Namespace, out_dir: Path) -> int:
        _artifact(out_dir, "new")
        return 0

    monkeypatch.setattr(train, "_train_into", trains)
    assert train._train(argparse.Namespace(out=str(out))) == 0
    assert (out / "weights.safetensors").read_text() == "new"
