"""`emostream demo` hands its worker the demo's whole settings, and logs where the local services run."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from streams.settings import REPO_ROOT, load_settings
from tools.demo import demo_log, write_settings


def test_the_demo_worker_gets_every_setting_the_user_gave_not_a_few(tmp_path: Path) -> None:
    user = tmp_path / "user.toml"
    user.write_text(
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_username = "u"\nsasl_password = "secret"\n'
        '[engine]\nruntime = "onnxruntime-int8"\nmax_batch = 7\n[limits]\nmax_text_chars = 99\n'
    )
    settings = load_settings(str(user), kafka={"group_id": "emostream-demo-x"}, redis={"key_prefix": "demo:x:"})
    written = write_settings(settings, tmp_path / "worker.json")
    again = load_settings(str(written))
    assert again == settings
    assert again.kafka.sasl_password.get_secret_value() == "secret" and again.engine.max_batch == 7
    assert again.kafka.group_id == "emostream-demo-x" and again.limits.max_text_chars == 99
    assert stat.S_IMODE(written.stat().st_mode) == 0o600  # it holds passwords


def test_the_demo_log_follows_the_run_folder_of_the_local_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMOSTREAM_RUN_DIR", raising=False)
    assert demo_log() == (REPO_ROOT / ".run").resolve() / "demo-worker.log"
    monkeypatch.setenv("EMOSTREAM_RUN_DIR", str(tmp_path / "runs"))
    assert demo_log() == (tmp_path / "runs").resolve() / "demo-worker.log"
