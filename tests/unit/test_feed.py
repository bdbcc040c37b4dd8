from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streams.schemas import parse_input
from streams.settings import Settings
from tools.dialogues import Dialogue, Utterance
from tools.feed import call_starts, feed, plan, send_offsets

SETTINGS = Settings()
TOPICS = SETTINGS.kafka.topics
KIND = TOPICS.inputs()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class FakeProducer:
    clock: FakeClock
    sent: list[tuple[float, str, bytes, Any]] = field(default_factory=list)
    flushed: bool = False

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        assert not self.flushed
        self.sent.append((self.clock.now, topic, key, parse_input(KIND[topic], value, 1 << 22)))

    def flush(self, timeout: float | None = None) -> None:
        self.flushed = True


def _call(call_id: str, n: int, times: bool = False, audio: bool = False) -> Dialogue:
    return Dialogue(call_id, tuple(
        Utterance(call_id, f"u{i}", i, "agent" if i % 2 else "customer", text=f"line {i}",
                  audio=b"\x01\x00" * 1600 if audio else None, audio_encoding="pcm_s16le" if audio else None,
                  start_s=2.0 * i if times else None, end_s=2.0 * i + 1.0 if times else None)
        for i in range(n)
    ))  # fmt: skip


def _run(dialogues: list[Dialogue], **kwargs: Any) -> tuple[FakeProducer, Any]:
    clock = FakeClock()
    producer = FakeProducer(clock)
    report = feed(dialogues, SETTINGS, progress=False, producer=producer, clock=clock, sleep=clock.sleep, **kwargs)
    return producer, report


def test_send_offsets_follow_end_times_default_gap_and_cap() -> None:
    us = [
        Utterance("c", "a", 0, end_s=3.0),
        Utterance("c", "b", 1),  # no times: 1.5 s after the previous one
        Utterance("c", "c", 2, start_s=4.0),  # start + 1.5
        Utterance("c", "d", 3, start_s=1.0, end_s=2.0),  # goes backwards: clamped
        Utterance("c", "e", 4, end_s=500.0),  # scene cut: capped at +10 s
    ]
    assert send_offsets(us) == [3.0, 4.5, 5.5, 5.5, 15.5]


def test_call_starts_wait_for_a_free_line() -> None:
    assert call_starts([10, 10, 10], concurrency=2, stagger_s=1) == [0, 1, 10]
    assert call_starts([10, 10, 10], concurrency=None, stagger_s=1) == [0, 1, 2]


def test_plan_interleaves_calls_and_scales_with_speed() -> None:
    steps = plan([_call("a", 3), _call("b", 3)], realtime=True, speed=2.0, stagger_s=2.0)
    kinds = [(s.call_id, s.kind) for s in steps]
    assert kinds[0] == ("a", "started") and kinds[-1] == ("b", "ended")
    assert kinds.index(("b", "started")) < kinds.index(("a", "ended"))  # calls overlap
    assert [s.at for s in steps if s.call_id == "a"] == [0.0, 0.75, 1.5, 2.25, 2.75]  # (0, 1.5, 3, 4.5, 5.5) / 2
    fast = plan([_call("a", 3), _call("b", 3)], realtime=False)
    assert [(s.call_id, s.kind) for s in fast] == kinds and {s.at for s in fast} == {0.0}


def test_feed_sends_control_parts_and_control_in_order() -> None:
    producer, report = _run([_call("call-1", 3, audio=True), _call("call-2", 2)], realtime=False)
    assert producer.flushed
    by_call: dict[str, list[Any]] = {}
    for _, topic, key, msg in producer.sent:
        assert key == msg.call_id.encode()
        by_call.setdefault(msg.call_id, []).append((topic, msg))
    first, last = by_call["call-1"][0][1], by_call["call-1"][-1][1]
    assert (first.event, first.modalities, last.event) == ("started", ["text", "audio"], "ended")
    assert by_call["call-2"][0][1].modalities == ["text"]
    audio = [m for t, m in by_call["call-1"] if t == TOPICS.audio]
    assert [m.seq for m in audio] == [0, 1, 2]
    assert audio[0].encoding == "pcm_s16le" and base64.b64decode(audio[0].data) == b"\x01\x00" * 1600
    assert [m.text for t, m in by_call["call-2"] if t == TOPICS.text] == ["line 0", "line 1"]
    assert report.utterances == 5 and report.calls == 2 and report.failed == 0
    assert report.messages == {TOPICS.control: 4, TOPICS.text: 5, TOPICS.audio: 3}
    assert report.bytes_sent > 0 and "fed 2 calls, 5 utterances: 12 messages" in report.summary()
    assert sum(producer.clock.sleeps) == 0  # as fast as possible


def test_feed_modalities_and_no_control() -> None:
    producer, _ = _run([_call("c", 2, audio=True)], realtime=False, modalities=("audio",), send_control=False)
    assert {t for _, t, _, _ in producer.sent} == {TOPICS.audio}
    with pytest.raises(ValueError, match="unknown modalities"):
        _run([_call("c", 1)], realtime=False, modalities=("smell",))


def test_realtime_feed_paces_by_end_times_divided_by_speed() -> None:
    producer, report = _run([_call("c", 3, times=True)], realtime=True, speed=4.0)
    sent = [(round(t - 100.0, 3), m.seq) for t, topic, _, m in producer.sent if topic == TOPICS.text]
    assert sent == [(0.25, 0), (0.75, 1), (1.25, 2)]  # end_s 1, 3, 5 at 4x speed
    assert report.duration_s == pytest.approx(1.5)  # + 1 s hang-up / 4


def test_audio_delay_sends_audio_later_and_ended_after_it() -> None:
    producer, _ = _run([_call("c", 2, times=True, audio=True)], realtime=True, audio_delay_s=3.0)
    timeline = [
        (round(t - 100.0, 3), topic, getattr(m, "seq", m.__class__.__name__)) for t, topic, _, m in producer.sent
    ]
    text_at = {seq: t for t, topic, seq in timeline if topic == TOPICS.text}
    audio_at = {seq: t for t, topic, seq in timeline if topic == TOPICS.audio}
    assert audio_at == {seq: text_at[seq] + 3.0 for seq in text_at}
    assert timeline[-1][1] == TOPICS.control and timeline[-1][0] >= max(audio_at.values())


def _with_second_utterance(call: Dialogue, **changes: Any) -> Dialogue:
    import dataclasses

    first, second, *rest = call.utterances
    return dataclasses.replace(call, utterances=(first, dataclasses.replace(second, **changes), *rest))


def _refused_before_sending(dialogue: Dialogue, match: str) -> None:
    """feed refuses ``dialogue`` with ``match`` and sends nothing at all."""
    clock = FakeClock()
    producer = FakeProducer(clock)
    with pytest.raises(ValueError, match=match):
        feed([dialogue], SETTINGS, realtime=False, progress=False, producer=producer, clock=clock, sleep=clock.sleep)
    assert producer.sent == []


def test_a_text_over_the_workers_limit_is_refused_before_anything_is_sent() -> None:
    """The worker dead-letters a text over limits.max_text_chars (5000): feed says so first, naming it."""
    long = _with_second_utterance(_call("call-1", 2), text="x" * 5001)
    _refused_before_sending(long, r"call-1/u1: text of 5001 characters, over limits.max_text_chars \(5000\)")
    _run([long], realtime=False, modalities=("audio",))  # not sending the text: nothing to refuse


def test_raw_audio_the_workers_would_dead_letter_is_refused_before_anything_is_sent() -> None:
    """A clip of raw G.711 under 0.1 s, or over limits.max_audio_s: the publisher refuses it (a
    ValueError), which stopped feed mid-file after the call's first messages had gone out."""
    short = _with_second_utterance(_call("call-1", 2), audio=b"\xff" * 400, audio_encoding="pcm_mulaw", audio_rate=8000)
    _refused_before_sending(short, r"call-1/u1: its audio part: audio of 0.0500 s is too short: at least 0.1 s")
    long = _with_second_utterance(_call("call-1", 2), audio=b"\xff" * 8000 * 61, audio_encoding="pcm_alaw")
    _refused_before_sending(long, r"call-1/u1: its audio part: audio of 61.0 s is over limits.max_audio_s")


def test_what_feed_refuses_from_a_file_names_its_line(tmp_path: Path) -> None:
    """A newcomer's 20,000-character line was refused naming its call and utterance, not where in
    the file it was."""
    import json

    from tools.dialogues import read_jsonl

    path = tmp_path / "calls.jsonl"
    lines = [{"call_id": "c", "utterance_id": f"u{i}", "seq": i, "speaker": "cust", "text": "hi"} for i in range(3)]
    lines[2]["text"] = "x" * 5001
    path.write_text("# my calls\n" + "\n".join(json.dumps(x) for x in lines) + "\n")
    _refused_before_sending(read_jsonl(path)[0], r"^calls.jsonl:4: c/u2: text of 5001 characters")


def test_a_part_over_the_brokers_limit_is_refused_before_anything_is_sent() -> None:
    """Found by a newcomer: 5 s of 44.1 kHz stereo WAV (1.17 MB as JSON) stopped feed mid-call with
    "a 1171514-byte message ... is over limits.max_message_bytes", naming no utterance, after the
    call's `started` and its first text had gone out; the call was never ended."""
    big = _with_second_utterance(_call("call-1", 2, audio=True), audio=b"RIFF" + bytes(800_000))
    _refused_before_sending(big, r"call-1/u1: its audio part is a 10\d{5}-byte message, over limits")
    _run([big], realtime=False, modalities=("text",))  # not sending the audio: nothing to refuse


def test_a_feed_stopped_or_refused_midway_ends_the_calls_it_started() -> None:
    """Ctrl-C (and SIGTERM, which the command turns into it), or a part refused as it is sent,
    left the calls under way open: no summary, alerts never cleared, no revision of the last
    utterances. Each call started gets its `ended` before the error goes on."""
    clock = FakeClock()

    class Interrupted(FakeProducer):
        def send(self, topic: str, key: bytes, value: bytes) -> None:
            super().send(topic, key, value)
            if topic == TOPICS.text and sum(t == TOPICS.text for _, t, _, _ in self.sent) == 3:  # Ctrl-C
                raise KeyboardInterrupt

    producer = Interrupted(clock)
    with pytest.raises(KeyboardInterrupt):
        feed([_call("a", 4), _call("b", 4), _call("c", 4)], SETTINGS, realtime=True, progress=False,
             producer=producer, clock=clock, sleep=clock.sleep, concurrency=2)  # fmt: skip
    control = [(m.call_id, m.event) for _, t, _, m in producer.sent if t == TOPICS.control]
    started = [c for c, e in control if e == "started"]
    assert started and sorted(c for c, e in control if e == "ended") == sorted(started), control
    assert control[-len(started) :] == [(c, "ended") for c in sorted(started)], control


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad settings file, a missing one after the subcommand, a dialogue file with NaN: `error:
    <what>` and exit status 2, no traceback (a newcomer's first tries)."""
    from streams.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("x = [")
    nan = tmp_path / "nan.jsonl"
    nan.write_text('{"call_id":"c","utterance_id":"u","seq":0,"speaker":"a","text":"hi","audio_features":[NaN]}\n')
    cases = [
        (["--config", str(bad), "worker"], f"error: settings file {bad}: "),
        (["worker", "--config", str(tmp_path / "none.toml")], f"error: settings file {tmp_path / 'none.toml'}: "),
        (["feed", str(nan)], f"error: {nan}:1: audio_features.0: Input should be a finite number"),
    ]
    for argv, said in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and said in err and "Traceback" not in err, (argv, err)


def test_feed_refuses_options_and_files_it_would_silently_get_wrong(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a newcomer: each of these printed 'fed ...' and exit 0 while sending nothing, or
    sending what every worker would dead-letter, or failed with a codec's message and no line."""
    from streams.cli import main

    line = '{"call_id":"c","utterance_id":"u","seq":0,"speaker":"a","text":"%s"}\n'
    text = tmp_path / "text.jsonl"
    text.write_text(line % "hi")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(
        b"\xef\xbb\xbf" + (line % "hi").encode() + (line % "caf\xe9").replace('"u"', '"v"').encode("latin-1")
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("# nothing\n")
    cases = [
        ([str(latin)], f"{latin}:2: not UTF-8 text (byte 0xe9): save the file as UTF-8"),
        ([str(empty)], f"{empty}: no calls in it"),
        ([str(text), "--modalities", "audio"], "has text: --modalities audio leaves nothing to send"),
        ([str(text), "--audio-rate", "8000"], "--audio-rate sets the rate of --audio-encoding"),
        ([str(text), "--audio-encoding", "flac", "--audio-rate", "96000"], "--audio-rate 96000 Hz: the worker takes"),
        ([str(text), "--audio-encoding", "pcm_alaw", "--audio-rate", "16000"], "G.711 at 8000 Hz, not 16000"),
        ([str(text), "--audio-dir", str(tmp_path)], "--audio-dir attaches RAVDESS speech to a MELD CSV"),
        ([str(text), "--call-suffix", "a b"], "--call-suffix 'a b': up to 32 of"),
        ([str(text), "--call-suffix", "-p 2"], "--call-suffix '-p 2': up to 32 of"),  # a value that starts with '-'
        ([str(text), "--modalities", "text,vidoe"], "--modalities text,vidoe: vidoe is no modality"),
        ([str(text), "--limit", "0"], "--limit 0: no calls to send"),
        ([str(text), "--limit", "-1"], "--limit -1: the number of calls to send, 1 or more"),  # sent all but the last
    ]
    for argv, said in cases:
        code = main(["feed", *argv, "--fast"])
        err = capsys.readouterr().err
        assert code == 2 and said in err and "Traceback" not in err, (argv, err)


def test_a_byte_order_mark_is_read_past_and_a_call_suffix_makes_new_calls(tmp_path: Any) -> None:
    from tools.commands import with_call_suffix
    from tools.dialogues import read_jsonl

    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"call_id":"c","utterance_id":"u","seq":0,"speaker":"a","text":"hi"}\n')
    (d,) = read_jsonl(bom)  # was: "Invalid JSON: expected value at line 1 column 1"
    again = with_call_suffix(d, "-2")
    assert again.call_id == "c-2" and [u.call_id for u in again.utterances] == ["c-2"]
    assert again.utterances[0].utterance_id == "u" and again.utterances[0].text == "hi"


def test_a_settings_variable_that_does_not_parse_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    monkeypatch.setenv("EMOSTREAM_JOIN__DEFAULT_MODALITIES", "text")  # a list wants JSON: ["text"]
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad settings (EMOSTREAM_* variables)") and "Traceback" not in err, err
    assert "a list or a table is written as JSON" in err
    monkeypatch.delenv("EMOSTREAM_JOIN__DEFAULT_MODALITIES")
    # found by a newcomer: a misspelt section was ignored (the default broker used), a misspelt key refused
    for name, said in [
        ("EMOSTREAM_KAFKA_BROKERS", "two underscores, EMOSTREAM_KAFKA__BROKERS"),
        ("EMOSTREAM_REDDIS__WINDOW", "unknown setting EMOSTREAM_REDDIS__WINDOW; known: ANALYTICS, ENGINE"),
    ]:
        monkeypatch.setenv(name, "3")
        assert main(["subscribe", "--timeout", "1"]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err
        monkeypatch.delenv(name)
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:  # found by a newcomer: aiohttp's traceback
        port = taken.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"emostream ui: port {port} on 127.0.0.1 is in use" in err and "Traceback" not in err, err
    monkeypatch.setenv("EMOSTREAM_RUN_DIR", "/tmp/x")  # the local scripts' own: no setting, not refused
    from streams.settings import unknown_variables

    assert unknown_variables({"EMOSTREAM_RUN_DIR": "x", "EMOSTREAM_KAFKA__BROKERS": "h:1", "PATH": "/"}) is None
    # what Kubernetes adds to every pod for the shipped emostream-ui Service (found in review): no setting
    links = ["EMOSTREAM_UI_SERVICE_HOST", "EMOSTREAM_UI_SERVICE_PORT", "EMOSTREAM_UI_SERVICE_PORT_HTTP",
             "EMOSTREAM_UI_PORT", "EMOSTREAM_UI_PORT_80_TCP", "EMOSTREAM_UI_PORT_80_TCP_PROTO",
             "EMOSTREAM_UI_PORT_80_TCP_PORT", "EMOSTREAM_UI_PORT_80_TCP_ADDR"]  # fmt: skip
    assert unknown_variables(dict.fromkeys(links, "1")) is None
    assert "EMOSTREAM_KAFKA__BROKERS" in (unknown_variables({"emostream_kafka_brokers": "x"}) or "")  # any case


REFUSED = [
    ["--config", "my.toml", "schemas"],
    ["evaluate", "--dataset", "meld", "--data-dir", "d", "--config", "my.toml"],
    ["--config", "my.toml", "train", "--recipe", "default"],
    ["train", "--recipe", "default", "--config", "my.toml"],
    ["schemas", "--config", "my.toml"],
]


@pytest.mark.parametrize("argv", REFUSED)
def test_config_given_to_a_command_that_reads_no_settings_is_refused_not_ignored(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    command = next(w for w in argv if w in ("schemas", "evaluate", "train"))
    # after the command too (found by a newcomer: argparse's "unrecognized arguments" there)
    assert f"--config does not apply to `emostream {command}`: only " in err, err


def test_a_call_suffix_may_start_with_a_dash() -> None:
    from streams.cli import build_parser, joined_dashed_values

    ns = build_parser().parse_args(joined_dashed_values(["feed", "f.jsonl", "--call-suffix", "-p2", "--fast"]))
    assert ns.call_suffix == "-p2" and ns.fast
    assert joined_dashed_values(["feed", "f.jsonl", "--call-suffix"]) == ["feed", "f.jsonl", "--call-suffix"]
    # a next option stays an option (argparse then says the value is missing); nothing after '--' changes
    assert joined_dashed_values(["feed", "f", "--call-suffix", "--fast"]) == ["feed", "f", "--call-suffix", "--fast"]
    assert joined_dashed_values(["cv", "--", "--call-suffix", "-x"]) == ["cv", "--", "--call-suffix", "-x"]


def test_a_mistyped_model_path_stops_the_worker_before_it_waits_for_kafka(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    monkeypatch.setenv("EMOSTREAM_KAFKA__BROKERS", "127.0.0.1:9")  # nothing there: the wait would take minutes
    monkeypatch.setenv("EMOSTREAM_ENGINE__REVISION_MODEL", "revsed")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: engine.revision_model: not a model artifact") and "did you mean revised" in err


def test_a_runtime_this_machine_lacks_stops_the_worker_before_it_joins_the_group(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker set to a GPU runtime on a CPU machine failed after it had joined the consumer
    group, in two tracebacks, and the running workers rebalanced twice for it."""
    from engines.runtime.select import cuda_available
    from streams.cli import main

    if cuda_available():
        pytest.skip("this machine has a CUDA GPU")
    monkeypatch.setenv("EMOSTREAM_KAFKA__BROKERS", "127.0.0.1:9")  # nothing there: the wait would take minutes
    monkeypatch.setenv("EMOSTREAM_ENGINE__RUNTIME", "torch-cuda")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: engine.runtime: ") and "CUDA" in err, err
    assert len(err.strip().splitlines()) == 1, err
