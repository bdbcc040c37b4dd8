"""``make gpu-check``'s script runs end to end (on the CPU here, at tiny sizes) and writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine


def test_the_gpu_check_dry_run_writes_parity_throughput_and_a_plot(tmp_path: Path) -> None:
    from engines.gpucheck import STAGES, main

    assert main(["--pack", str(tmp_path / "assets")]) == 0
    assert (tmp_path / "assets" / "vocab.txt").is_file()
    out = tmp_path / "out"
    args = [
        str(out),
        "--device",
        "cpu",
        "--batches",
        "1,4",
        "--seconds",
        "0.1",
        "--weights",
        "random",
        "--parity",
        "32",
        "--processes",
        "2",
        "--heap-rounds",
        "1",
        "--process-seconds",
        "0.5",
    ]
    assert main([*args, "--assets", str(tmp_path / "assets")]) == 0
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["weights"] == {"engine": "models/default", "text": "random", "audio": "random"}
    parity = report["parity"]
    assert parity["engine_probs_max_abs_diff"] < 0.01 and parity["engine_argmax_agreement"] >= 0.95
    assert parity["text_min_cosine"] > 0.999 and parity["audio_max_relative_diff"] < 0.02
    for stage in STAGES:
        assert set(report["throughput"][stage]) == {"1", "4"}
        assert all(row["per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] for row in report["throughput"][stage].values())
    assert (out / "gpu-check.png").stat().st_size > 10_000
    heap = report["heap"]  # one process at the largest batch without, then with, its heap kept
    assert heap["batch"] == 4 and len(heap["default"]) == len(heap["kept"]) == 1, heap
    assert all(isinstance(x, float) and x > 0 for x in heap["default"] + heap["kept"]), heap
    (row,) = report["processes"]  # two processes sharing the device, both counted
    assert "errors" not in row, row
    assert row["processes"] == 2 and len(row["per_process"]) == 2 and all(r > 0 for r in row["per_process"])
    assert 0 < row["per_s"] <= sum(row["per_process"]) * 1.01
