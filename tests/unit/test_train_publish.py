"""``emostream train --out DIR`` over an artifact already there: replaced whole, or left whole."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from engines import artifact, train
from engines.errors import ArtifactError


def _artifact(folder: Path, text: str, *extra: str) -> None:
    """A sealed folder of fake artifact files (``artifact.seal`` lists every ``*.safetensors``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("weights.safetensors", *extra):
        (folder / name).write_text(text)
    (folder / "config.json").write_text("{}")
    artifact.seal(folder)


def _trains(text: str, *extra: str) -> object:
    def run(ns: argparse.Namespace, out_dir: Path) -> int:
        assert out_dir.is_dir() and not any(out_dir.iterdir())  # a fresh folder of its own
        _artifact(out_dir, text, *extra)
        return 0

    return run


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_failed_run_leaves_the_artifact_there_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies after writing its first files (the tuned text layers are written first)
    used to leave them in the old artifact, whose checksums then failed: models/default broken."""
    out = tmp_path / "default"
    _artifact(out, "old")

    def dies(ns: argparse.Namespace, out_dir: Path) -> int:
        (out_dir / "text_encoder.safetensors").write_text("new")
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_train_into", dies)
    with pytest.raises(KeyboardInterrupt):
        train._train(argparse.Namespace(out=str(out)))
    assert _left(out) == ["checksums.json", "config.json", "weights.safetensors"]
    artifact.verify(out)
    assert _left(tmp_path) == ["default"]  # no staging folder left


def test_a_finished_run_replaces_the_artifact_and_keeps_its_model_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "default"
    _artifact(out, "old", "text_network.safetensors")  # an artifact file the new run does not write goes
    (out / "README.md").write_text("the model card")  # the folder's other files stay
    (out / "metrics.json").write_text("old")  # the run writes its own, or none
    monkeypatch.setattr(train, "_train_into", _trains("new"))
    assert train._train(argparse.Namespace(out=str(out))) == 0
    assert _left(out) == ["README.md", "checksums.json", "config.json", "weights.safetensors"]
    assert (out / "weights.safetensors").read_text() == "new"
    assert (out / "README.md").read_text() == "the model card"
    artifact.verify(out)
    assert _left(tmp_path) == ["default"]


def test_a_first_run_makes_the_folder_and_a_relative_out_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "_train_into", _trains("new"))
    assert train._train(argparse.Namespace(out="runs/new")) == 0
    assert train._train(argparse.Namespace(out="flat")) == 0  # no parent named: the current folder's
    artifact.verify(tmp_path / "runs" / "new")
    artifact.verify(tmp_path / "flat")
    assert _left(tmp_path) == ["flat", "runs"]


@pytest.mark.parametrize("out", [".", "..", "./"])
def test_the_current_folder_or_one_above_is_refused(out: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--out .`` moved the current folder's files into a staging folder inside it, then lost them."""
    here = tmp_path / "work"
    here.mkdir()
    (here / "mine.txt").write_text("mine")
    monkeypatch.chdir(here)
    monkeypatch.setattr(train, "_train_into", _trains("new"))
    with pytest.raises(ArtifactError, match="this folder or one above it"):
        train._train(argparse.Namespace(out=out))
    assert _left(here) == ["mine.txt"]


def test_an_artifact_stranded_between_the_renames_is_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed after moving the old artifact aside and before moving the new one in."""
    stranded = tmp_path / ".default.x1y2.old"
    _artifact(stranded, "old")
    monkeypatch.setattr(train, "_train_into", lambda ns, out_dir: 1)  # this run fails
    assert train._train(argparse.Namespace(out=str(tmp_path / "default"))) == 1
    artifact.verify(tmp_path / "default")
    assert _left(tmp_path) == ["default"]


def test_where_the_folder_cannot_be_renamed_the_files_are_replaced_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mounted model volume cannot be renamed: the new files replace the old ones in it."""
    out = tmp_path / "default"
    _artifact(out, "old", "text_network.safetensors")
    (out / "README.md").write_text("the model card")
    rename = Path.rename

    def no_rename_of_out(self: Path, target: str | os.PathLike[str]) -> Path:
        if self == out:
            raise OSError(16, "Device or resource busy")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", no_rename_of_out)
    monkeypatch.setattr(train, "_train_into", _trains("new"))
    assert train._train(argparse.Namespace(out=str(out))) == 0
    assert _left(out) == ["README.md", "checksums.json", "config.json", "weights.safetensors"]
    assert (out / "weights.safetensors").read_text() == "new"
    artifact.verify(out)
    assert _left(tmp_path) == ["default"]


def test_two_runs_with_the_same_out_write_into_folders_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second run started while the first trains removed the first one's folder (same name)."""
    out = tmp_path / "default"
    seen: list[Path] = []

    def first(ns: argparse.Namespace, out_dir: Path) -> int:
        seen.append(out_dir)
        monkeypatch.setattr(train, "_train_into", _trains("second"))
        assert train._train(argparse.Namespace(out=str(out))) == 0  # the second run, meanwhile
        assert out_dir.is_dir()  # still there
        _artifact(out_dir, "first")
        return 0

    monkeypatch.setattr(train, "_train_into", first)
    assert train._train(argparse.Namespace(out=str(out))) == 0
    assert (out / "weights.safetensors").read_text() == "first"  # the last to finish
    artifact.verify(out)
    assert _left(tmp_path) == ["default"]
