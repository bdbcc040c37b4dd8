"""Train and evaluate through the real command-line entry points, as a user would, in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def train(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``emostream train ARGS --out OUT`` (2 threads, no progress bars) -> its final JSON line."""
    from engines.train import main

    assert main([*args, "--out", str(out), "--threads", "2", "--no-progress"]) == 0
    return _last_json(capsys)


def evaluate(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``emostream evaluate ARGS --json`` -> the report it printed."""
    from engines.evaluate import main

    assert main([*args, "--json"]) == 0
    return _last_json(capsys)


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return report
