from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engines.features.text import normalise_text
from streams.schemas import TextPart
from tools.dialogues import (
    EMOTIONS,
    Dialogue,
    DialogueFormatError,
    Utterance,
    attach_ravdess,
    encode_audio,
    parse_timestamp,
    read_jsonl,
    read_meld_csv,
    resample,
    speaker_id,
    synthesize_audio,
    write_jsonl,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo" / "calls.jsonl"


@pytest.fixture(scope="module")
def meld_dev(shared_data: Path) -> list[Dialogue]:
    return read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv")


# --- MELD --------------------------------------------------------------------------------------


def test_meld_dev_has_every_dialogue_and_utterance(meld_dev: list[Dialogue]) -> None:
    assert len(meld_dev) == 114
    assert sum(len(d.utterances) for d in meld_dev) == 1109
    assert meld_dev[0].call_id == "meld-dev-d0"
    assert meld_dev[12].call_id == "meld-dev-d12"


def test_meld_utterances_in_order_with_contiguous_seq(meld_dev: list[Dialogue]) -> None:
    d49 = next(d for d in meld_dev if d.call_id == "meld-dev-d49")  # Utterance_IDs 4 and 5 are missing
    assert [u.utterance_id for u in d49.utterances][3:6] == ["u3", "u6", "u7"]
    for d in meld_dev:
        assert [u.seq for u in d.utterances] == list(range(len(d.utterances)))
        ids = [int(u.utterance_id[1:]) for u in d.utterances]
        assert ids == sorted(ids)


def test_meld_first_dialogue_content(meld_dev: list[Dialogue]) -> None:
    u0, u1 = meld_dev[0].utterances[:2]
    assert u0.text == "Oh my God, he's lost it. He's totally lost it."  # the engines' repair: folded to ASCII
    assert (u0.speaker, u0.label, u0.start_s, u0.end_s) == ("Phoebe", "sadness", 0.0, 2.793)
    assert (u1.text, u1.label, u1.start_s) == ("What?", "surprise", 4.671)  # 00:21:01,927 - 00:20:57,256


def test_meld_text_has_no_mojibake_and_ids_fit_the_schema(meld_dev: list[Dialogue]) -> None:
    for d in meld_dev:
        for u in d.utterances:
            assert u.text is not None
            assert not any("\x80" <= ch <= "\x9f" for ch in u.text), u.text
            assert "â€" not in u.text
            assert u.label in EMOTIONS
            TextPart(call_id=u.call_id, utterance_id=u.utterance_id, seq=u.seq, speaker=u.speaker, text=u.text)


def test_meld_selection(shared_data: Path) -> None:
    path = shared_data / "meld" / "dev_sent_emo.csv"
    assert [d.call_id for d in read_meld_csv(path, limit_dialogues=3)] == [f"meld-dev-d{i}" for i in range(3)]
    assert [d.call_id for d in read_meld_csv(path, dialogue_ids=[7, 2])] == ["meld-dev-d2", "meld-dev-d7"]


def test_meld_text_is_repaired_as_the_models_saw_it(shared_data: Path) -> None:
    """One text repair for the whole project: the engines' (mojibake undone, punctuation folded),
    so a replayed line is the text the shipped model was trained on."""
    (d0,) = read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv", dialogue_ids=[0])
    assert d0.utterances[0].text == "Oh my God, he's lost it. He's totally lost it."
    assert all(t == normalise_text(t) for t in (u.text or "" for u in d0.utterances))


def test_parse_timestamp_and_speaker_id() -> None:
    assert parse_timestamp("00:16:16,059") == pytest.approx(976.059)
    assert parse_timestamp("0:00:01,5") == pytest.approx(1.5)
    assert parse_timestamp("") is None and parse_timestamp("soon") is None
    assert speaker_id("Mrs. Green") == "Mrs._Green"
    assert speaker_id("Monica and Rachel") == "Monica_and_Rachel"


# --- JSONL -------------------------------------------------------------------------------------


def _lines(path: Path, *objs: object) -> Path:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return path


def test_jsonl_groups_calls_sorts_by_seq_and_loads_wav(tmp_path: Path) -> None:
    t = np.arange(22050) / 22050
    sf.write(tmp_path / "hello.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 22050)
    path = _lines(
        tmp_path / "calls.jsonl",
        "# a comment",
        {"call_id": "c1", "utterance_id": "b", "seq": 1, "speaker": "agent", "text": "second"},
        {"call_id": "c2", "utterance_id": "a", "seq": 0, "speaker": "x", "video_features": [0.5, 1]},
        {"call_id": "c1", "utterance_id": "a", "seq": 0, "speaker": "customer", "text": "first",
         "audio_path": "hello.wav", "start_s": 0.5, "end_s": 1.5, "label": "anger"},
        "",
    )  # fmt: skip
    c1, c2 = read_jsonl(path)
    assert (c1.call_id, c2.call_id) == ("c1", "c2")
    assert [u.text for u in c1.utterances] == ["first", "second"]
    first = c1.utterances[0]
    assert (first.label, first.start_s, first.end_s, first.audio_encoding) == ("anger", 0.5, 1.5, "flac")
    data, sr = sf.read(io.BytesIO(first.audio or b""))
    assert sr == 16000 and data.ndim == 1 and len(data) == 16000
    assert c2.utterances[0].video_features == (0.5, 1.0)
    assert c1.modalities() == ["text", "audio"] and c2.modalities() == ["video"]

    pcm = read_jsonl(path, wav_encoding="pcm_s16le")[0].utterances[0]
    assert pcm.audio_encoding == "pcm_s16le" and len(pcm.audio or b"") == 2 * 16000


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "Invalid JSON"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "text": "hi"}, "speaker: Field required"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a"}, "needs at least one of"),
        ({"call_id": "c", "utterance_id": "u", "seq": -1, "speaker": "a", "text": "x"}, "seq:"),
        ({"call_id": "c d", "utterance_id": "u", "seq": 0, "speaker": "a", "text": "x"}, "call_id:"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a", "txt": "x"}, "txt: Extra inputs"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a", "audio_path": "no.flac"}, "not found"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a", "audio_path": "a.mp3"}, ".flac or .wav"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a", "audio_b64": "AAAA"}, "audio_encoding"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a", "audio_b64": "!!",
          "audio_encoding": "flac"}, "not base64"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a", "audio_b64": "AAAA",
          "audio_encoding": "pcm_mulaw", "audio_sample_rate": 16000}, "8000 Hz (G.711)"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a", "audio_b64": "AAAA",
          "audio_encoding": "pcm_s16le", "audio_sample_rate": 12345}, "not supported"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a", "audio_b64": "AAAA",
          "audio_encoding": "flac", "audio_sample_rate": 8000}, "carry theirs"),
        ({"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a", "text": "x",
          "audio_sample_rate": 8000}, "audio_sample_rate"),
        ({"call_id": "c", "utterance_id": "u9", "seq": 0, "speaker": "a", "text": "dup"}, "seq 0 appears twice"),
        ({"call_id": "c", "utterance_id": "u2", "seq": 1, "speaker": "a", "text": "x", "start_s": 2, "end_s": 1},
         "end_s 1 is before start_s 2"),  # the wire format refuses it: said here, with its line
        ({"call_id": "c", "utterance_id": "u2", "seq": "1", "speaker": "a", "text": "x"}, "seq"),  # as on the wire
        ({"call_id": "c", "utterance_id": "u2", "seq": 1, "speaker": "a", "text": "x", "start_s": "3"}, "start_s"),
        ({"call_id": "c", "utterance_id": "u", "seq": 5, "speaker": "a", "text": "dup"}, "utterance_id 'u' repeats"),
    ],
)  # fmt: skip
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, bad: object, message: str) -> None:
    good = {"call_id": "c", "utterance_id": "u", "seq": 0, "speaker": "a", "text": "fine"}
    path = _lines(tmp_path / "calls.jsonl", good, "", bad)
    with pytest.raises(DialogueFormatError) as info:
        read_jsonl(path)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    audio = encode_audio(np.zeros(800), 16000, "flac")
    d = Dialogue("c1", (
        Utterance("c1", "u0", 0, "agent", text="héllo", audio=audio, audio_encoding="flac", start_s=0.0, end_s=1.0,
                  label="joy"),
        Utterance("c1", "u1", 1, "customer", audio_features=(1.0, 2.0), video_features=(3.0,)),
    ))  # fmt: skip
    write_jsonl([d], tmp_path / "out.jsonl")
    (back,) = read_jsonl(tmp_path / "out.jsonl")
    assert back.utterances == d.utterances


def test_demo_calls_are_short_call_center_dialogues() -> None:
    calls = read_jsonl(DEMO)
    assert 4 <= len(calls) <= 6
    labels = set()
    for d in calls:
        assert 6 <= len(d.utterances) <= 10, d.call_id
        assert set(d.speakers()) == {"customer", "agent"}
        assert all(u.text and u.label in EMOTIONS and u.audio is None for u in d.utterances)
        labels |= {u.label for u in d.utterances}
    assert labels == set(EMOTIONS)


# --- audio -------------------------------------------------------------------------------------


def test_resample_keeps_a_tone_and_its_duration() -> None:
    t = np.arange(22050) / 22050
    y = resample(np.sin(2 * np.pi * 300 * t), 22050, 16000)
    assert len(y) == 16000
    peak = np.argmax(np.abs(np.fft.rfft(y)))  # bin width 1 Hz
    assert abs(peak - 300) <= 1
    assert np.max(np.abs(y)) == pytest.approx(1.0, abs=0.05)


# --- RAVDESS -----------------------------------------------------------------------------------


def test_ravdess_attachment_is_deterministic_and_per_speaker(shared_data: Path, meld_dev: list[Dialogue]) -> None:
    root = shared_data / "ravdess"
    some = meld_dev[:6]
    a = attach_ravdess(some, root, seed=3)
    b = attach_ravdess(some, root, seed=3)
    alone = attach_ravdess([some[4]], root, seed=3)
    other = attach_ravdess(some, root, seed=4)
    sources = [[u.audio_source for u in d.utterances] for d in a]
    assert sources == [[u.audio_source for u in d.utterances] for d in b]
    assert sources[4] == [u.audio_source for u in alone[0].utterances]  # independent of the other calls
    assert sources != [[u.audio_source for u in d.utterances] for d in other]

    labels = {}
    for row in (root / "labels.csv").read_text().splitlines()[1:]:
        path, actor, _, emotion = row.split(",")[:4]
        labels[path] = (int(actor), emotion)
    mapping = {"neutral": "neutral", "calm": "neutral", "happy": "joy", "angry": "anger", "fearful": "fear",
               "sad": "sadness", "surprised": "surprise", "disgust": "disgust"}  # fmt: skip
    for d in a:
        actor_of: dict[str, int] = {}
        for u in d.utterances:
            assert u.audio_source is not None and u.audio_encoding == "flac"
            actor, emotion = labels[u.audio_source.removeprefix("ravdess:")]
            assert mapping[emotion] == u.label
            assert actor_of.setdefault(u.speaker, actor) == actor  # one actor per speaker
            assert u.audio == (root / u.audio_source.removeprefix("ravdess:")).read_bytes()
        assert len(set(actor_of.values())) == len(actor_of)  # distinct actors while there are enough


def test_ravdess_respects_actor_choice_and_skips_unmapped_labels(shared_data: Path) -> None:
    d = Dialogue("c", (
        Utterance("c", "u0", 0, "a", text="hi", label="joy"),
        Utterance("c", "u1", 1, "b", text="hm", label="frustrated"),
    ))  # fmt: skip
    (out,) = attach_ravdess([d], shared_data / "ravdess", seed=0, actors=[5])
    assert out.utterances[0].audio_source is not None and "Actor_05/" in out.utterances[0].audio_source
    assert out.utterances[1] == d.utterances[1]


# --- espeak-ng ---------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_synthesize_audio_gives_each_utterance_16k_flac_and_times(tmp_path: Path) -> None:
    (call,) = read_jsonl(DEMO)[:1]
    call = Dialogue(call.call_id, call.utterances[:3])
    (out,) = synthesize_audio([call], tmp_path)
    ends = []
    for u in out.utterances:
        data, sr = sf.read(io.BytesIO(u.audio or b""))
        assert sr == 16000 and data.ndim == 1 and len(data) > 8000
        assert np.sqrt(np.mean(data**2)) > 0.01  # speech, not silence
        assert u.start_s is not None and u.end_s == pytest.approx(u.start_s + len(data) / sr, abs=0.01)
        ends.append(u.end_s)
        assert (tmp_path / call.call_id / f"{u.utterance_id}.flac").read_bytes() == u.audio
    assert ends == sorted(ends)
    assert base64.b64encode(out.utterances[0].audio or b"")  # sendable


def test_jsonl_carries_telephone_audio_inline_and_feed_sends_it_as_it_is(tmp_path: Path) -> None:
    """G.711 and 8 kHz PCM given inline reach the audio part unchanged, with the rate the worker
    needs to decode them; written back, the JSONL keeps the rate."""
    from engines.features.codecs import decode_audio, encode_audio
    from streams.schemas import parse_input
    from streams.settings import Settings
    from tools.feed import part_message

    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
    mulaw, pcm8 = encode_audio(tone, 8000, "pcm_mulaw"), encode_audio(tone, 8000, "pcm_s16le", 8000)
    path = _lines(
        tmp_path / "calls.jsonl",
        {"call_id": "c", "utterance_id": "u0", "seq": 0, "speaker": "a", "audio_encoding": "pcm_mulaw",
         "audio_b64": base64.b64encode(mulaw).decode()},
        {"call_id": "c", "utterance_id": "u1", "seq": 1, "speaker": "a", "audio_encoding": "pcm_s16le",
         "audio_sample_rate": 8000, "audio_b64": base64.b64encode(pcm8).decode()},
    )  # fmt: skip
    (call,) = read_jsonl(path)
    topics = Settings().kafka.topics
    for u, encoding, rate in zip(call.utterances, ("pcm_mulaw", "pcm_s16le"), (None, 8000), strict=True):
        message = part_message(u, "audio", topics)
        assert message is not None
        part = parse_input("audio", message[1], 1 << 22)
        assert (part.encoding, part.sample_rate, base64.b64decode(part.data)) == (encoding, rate, u.audio)
        wave = decode_audio(base64.b64decode(part.data), part.encoding, part.sample_rate)
        assert len(wave) == 16000  # one second, resampled to 16 kHz
        flac = part_message(u, "audio", topics, audio_as=("flac", None))  # --audio-encoding flac
        assert flac is not None and parse_input("audio", flac[1], 1 << 22).encoding == "flac"
    write_jsonl([call], tmp_path / "back.jsonl")
    assert read_jsonl(tmp_path / "back.jsonl")[0].utterances[1].audio_rate == 8000


def test_a_csv_that_is_not_meld_says_which_columns_it_lacks(tmp_path: Path) -> None:
    """Found by a newcomer: `bad Dialogue_ID/Utterance_ID: 'Dialogue_ID'` (a KeyError as it was)."""
    from tools.dialogues import DialogueFormatError

    path = tmp_path / "calls.csv"
    path.write_text("call,speaker,text\nc1,agent,hello\n")
    with pytest.raises(
        DialogueFormatError,
        match=r"calls.csv:1: not a MELD CSV: no Dialogue_ID, Utterance_ID, Utterance column "
        r"\(its columns: call, speaker, text\)",
    ):
        read_meld_csv(path)


def test_an_audio_file_is_read_as_the_workers_read_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A telephone trial: feed converted files before any check, so half a truncated WAV was sent
    and labelled, raw mu-law named .wav got libsndfile's 'Format not recognised', and a two-channel
    call was mixed without a word."""
    import logging

    from tools.dialogues import load_audio_file

    t = np.arange(16000) / 8000
    agent, customer = 0.3 * np.sin(2 * np.pi * 180 * t), 0.3 * np.sin(2 * np.pi * 260 * t + 1.0)
    whole = tmp_path / "whole.wav"
    sf.write(whole, agent, 8000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    with pytest.raises(ValueError, match="cut.wav: truncated wav payload: its header declares 32000 bytes"):
        load_audio_file(cut)
    raw = tmp_path / "raw.wav"
    raw.write_bytes(b"\xff\x7f" * 8000)
    with pytest.raises(ValueError, match="raw.wav: wav payload: no RIFF/WAVE header: raw samples"):
        load_audio_file(raw)
    stereo = tmp_path / "call.wav"
    sf.write(stereo, np.stack([agent, customer], axis=1), 8000, subtype="PCM_16")
    with caplog.at_level(logging.WARNING, logger="emostream.feed"):
        data, encoding = load_audio_file(stereo)
    assert encoding == "flac" and sf.info(io.BytesIO(data)).channels == 1
    assert "call.wav: channels mixed: 2 channels that carry different sound" in caplog.text
    mono16k = tmp_path / "mono.flac"
    sf.write(mono16k, np.zeros(16000), 16000, format="FLAC", subtype="PCM_16")
    assert load_audio_file(mono16k) == (mono16k.read_bytes(), "flac")  # passed through as it is


def test_an_audio_file_of_any_rate_or_channels_is_still_converted(tmp_path: Path) -> None:
    """A review: reading files as the workers read parts refused a 96 kHz or 10-channel WAV, which
    feed converts to 16 kHz mono FLAC before sending (demo/README.md)."""
    from tools.dialogues import load_audio_file

    for name, rate, channels in (("hi.wav", 96000, 1), ("many.wav", 16000, 10)):
        path = tmp_path / name
        sf.write(path, np.zeros((rate // 2, channels)) + 0.01, rate, subtype="PCM_16")
        data, encoding = load_audio_file(path)
        info = sf.info(io.BytesIO(data))
        assert (encoding, info.samplerate, info.channels) == ("flac", 16000, 1)
