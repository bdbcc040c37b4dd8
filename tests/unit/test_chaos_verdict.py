"""The chaos verdict: lost, conflicting and duplicate events counted right."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from chaos.scenarios import SHORT, drawn_messages, hostile, make_calls
from chaos.verdict import conflicts, judge
from streams.errors import InvalidMessage
from streams.schemas import EmotionEvent, parse_input


def _event(utt: str, **kw: Any) -> EmotionEvent:
    base: dict[str, Any] = dict(
        call_id="c", utterance_id=utt, seq=0, speaker="A", label="joy", confidence=0.5,
        probabilities={"joy": 0.5, "anger": 0.5}, sentiment=0.0, sentiment_label="neutral",
        weights={"text": 1.0, "audio": 0.0, "video": 0.0}, model={"name": "m", "version": "1", "runtime": "x"},
        context_size=1, timings={"join_s": 0, "queue_s": 0, "engine_s": 0, "end_to_end_s": 0},
        produced_at=time.time(), event_id=f"c:{utt}:r0:x", modalities_present=["text"],
    )  # fmt: skip
    return EmotionEvent.model_validate({**base, **kw})


def test_a_cut_join_is_a_conflict_a_replay_is_a_duplicate() -> None:
    text_only, audio_only = _event("u"), _event("u", modalities_present=["audio"])
    assert conflicts([text_only, text_only]) == []
    assert len(conflicts([text_only, audio_only])) == 1
    assert conflicts([text_only, _event("u", probabilities={"joy": 0.5004, "anger": 0.4996})]) == []
    assert len(conflicts([text_only, _event("u", context_size=4)])) == 1


def test_judge_counts_lost_duplicates_and_ignores_other_calls() -> None:
    want = {("c", "u0"), ("c", "u1"), ("c", "u2")}
    events = [_event("u0"), _event("u0"), _event("u1"), _event("x", call_id="fuzz-1", event_id="f")]
    v = judge("s", want, events, 1.5)
    assert (v.utterances, v.events, v.lost, v.conflicting, v.duplicates) == (3, 3, 1, 0, 1)
    assert not v.ok and "| s | 3 | 3 | 1 | 0 | 1 | 1.5 |" in v.row()


def test_fuzzed_messages_are_never_valid_chaos_utterances() -> None:
    rnd = random.Random(0)
    for i in range(240):
        raw = hostile(rnd, i)
        for kind in ("text", "audio", "video", "control"):
            try:
                msg = parse_input(kind, raw, 1 << 20)
            except InvalidMessage:
                continue
            assert msg.call_id.startswith("fuzz-")  # valid ones (silence, noise) belong to fuzz calls


def test_drawn_messages_are_as_many_as_asked_keyed_by_their_call_and_never_valid_chaos_utterances() -> None:
    drawn: list[tuple[bytes, str]] = []
    assert drawn_messages(150, lambda value, key: drawn.append((value, key))) == 150 and len(drawn) == 150
    again: list[tuple[bytes, str]] = []
    drawn_messages(150, lambda value, key: again.append((value, key)))
    assert again == drawn  # a fixed seed: a failing run can be replayed
    assert len({value for value, _ in drawn}) > 100  # distinct draws, not one message repeated
    keyed = 0
    for raw, key in drawn:
        assert key.startswith("fuzz-")
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict) and "call_id" in obj:
            assert obj["call_id"] == key  # objects get past the key check, to decoding and the join
            keyed += 1
        for kind in ("text", "audio", "video", "control"):
            try:
                msg = parse_input(kind, raw, 1 << 20)
            except InvalidMessage:
                continue
            assert msg.call_id.startswith("fuzz-")
    assert keyed > 30


def test_synthetic_calls_have_the_asked_size_and_both_modalities() -> None:
    calls = make_calls(SHORT, audio_dim=8)
    assert len(calls) == SHORT.calls and all(len(c.utterances) == SHORT.per_call for c in calls)
    u = calls[0].utterances[3]
    assert u.text and u.audio_features is not None and len(u.audio_features) == 8 and u.seq == 3


def test_a_zombie_counts_as_gone() -> None:
    """The scripts' daemons are orphans; where init does not reap them, a killed one stays a zombie
    and ``kill(pid, 0)`` still succeeds: the scenario must not wait on it (and date its fault late)."""
    import subprocess

    from chaos.harness import _alive

    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _read_state(dead.pid) != "Z":
            time.sleep(0.02)
        assert _read_state(dead.pid) == "Z"  # not waited for: a zombie
        assert _alive(live.pid) and not _alive(dead.pid)
    finally:
        live.kill()
        live.wait()
        dead.wait()
    assert not _alive(dead.pid)


def _read_state(pid: int) -> str:
    from pathlib import Path

    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_process_the_harness_starts_stops_when_the_test_process_is_killed() -> None:
    """A test run killed by a signal runs no cleanup: its workers must not go on (chaos/harness.py)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    code = (
        "import subprocess, time; from chaos.harness import stop_with_parent; "
        "p = subprocess.Popen(['sleep', '60'], preexec_fn=stop_with_parent); print(p.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the child outlived the process that started it"
