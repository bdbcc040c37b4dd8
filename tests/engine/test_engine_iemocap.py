"""IEMOCAP text, causal: an engine trained here, from the train split, reaches the issue's 0.60.

The README's IEMOCAP row, ``recipes/iemocap-e5.toml`` (relevance on multilingual-e5 embeddings
with its regularisation, seed 0), trained through the real CLI from the recipe and scored on the
dev split (which training never fits; it picks the epoch) by ``emostream evaluate`` through ONNX Runtime. Measured at
0.643 for seed 0 and 0.629-0.643 over seeds 0-3 on the 2-core machine; the floor is the target.
About two minutes (plus encoding the 5,810 utterances once into the feature cache); ``make test-accuracy``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.cli import evaluate, train

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

# a whole training run: longer than the suite's per-test limit on a slow or fresh (uncached) machine
pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]

IEMOCAP_TEXT_CAUSAL_TARGET = 0.60  # the engines issue's floor (dev weighted F1)
RECIPE = ["--recipe", "iemocap-e5"]


@pytest.mark.accuracy
def test_iemocap_text_causal_reaches_the_target(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(shared_data)]
    trained = train([*RECIPE, *data], tmp_path / "iemocap", capsys)
    assert trained["text"]["n"] == 647
    config = json.loads((tmp_path / "iemocap" / "config.json").read_text())
    assert (
        config["recipe"]["file"] == "recipes/iemocap-e5.toml" and config["train"]["text_encoder"] == "e5-multilingual"
    )
    assert config["model"]["dropout"] == 0.3 and config["train"]["out"] == str(tmp_path / "iemocap")

    report = evaluate(["--model", str(tmp_path / "iemocap"), "--dataset", "iemocap-text", *data], capsys)
    assert report["n"] == 647 and report["split"] == "dev"
    assert report["weighted_f1"] == pytest.approx(trained["text"]["weighted_f1"], abs=1e-4)
    assert report["weighted_f1"] >= IEMOCAP_TEXT_CAUSAL_TARGET, report


def test_keep_epoch_ships_that_epoch_and_lets_dev_choose_nothing(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--keep-epoch N`` (the recipes' ``keep_epoch``, an epoch chosen over nested actor folds):
    training stops after epoch N of the schedule and ships its weights, whatever dev says. On MiniLM,
    not the recipe's multilingual-e5: the only test of ``make test`` that trains, and encoding IEMOCAP
    afresh with e5 took about 105 of its 130 s on a fresh AVX2-only machine (MiniLM: 60 s in all)."""
    out = tmp_path / "kept"
    args = ["--data-dir", str(shared_data), "--text-encoder", "minilm", "--epochs", "4", "--keep-epoch", "2"]
    trained = train([*RECIPE, *args], out, capsys)
    metrics = json.loads((out / "metrics.json").read_text())
    assert trained["best_epoch"] == metrics["best_epoch"] == 2 and metrics["epoch_chosen_by"] == "--keep-epoch"
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert json.loads((out / "config.json").read_text())["train"]["text_encoder"] == "minilm"  # the flag won
    report = evaluate(["--model", str(out), "--dataset", "iemocap-text", "--data-dir", str(shared_data)], capsys)
    assert report["weighted_f1"] == pytest.approx(metrics["text"]["weighted_f1"], abs=1e-4)
