"""Nothing in emostream sends usage data out: OpenVINO's Python package did on `import openvino`
(Google Analytics, from a forked process; engines/__init__.py stops it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import multiprocessing
started = []
multiprocessing.Process.start = lambda self: started.append(self)
import engines
import openvino
import openvino.tools.ovc
import time
time.sleep(1.0)  # (its sender runs in a thread)
print("started", len(started))
"""


@pytest.mark.skipif(__import__("importlib").util.find_spec("openvino") is None, reason="openvino not installed")
def test_importing_openvino_through_emostream_sends_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}  # its own opt-outs
    env["HOME"] = str(tmp_path)  # no consent file: where it sends by default
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "started 0" in out.stdout
    assert not (tmp_path / "intel").exists()  # no client id written either
