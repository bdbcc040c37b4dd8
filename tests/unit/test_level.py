"""A voice heard at its level relative to its speaker's own (engine.audio_level = "speaker"):
whatever gain the line has, the encoder hears the same waveform."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engines import artifact
from engines.datasets.base import Dialogue, Utterance
from engines.errors import ArtifactError
from engines.features import level
from engines.features.level import REF_DB, SpeakerLevels, apply_gain, causal_gains, speech_level
from engines.prepare import AudioTable
from streams import join
from streams.pipeline import utterance_features
from streams.validate import Payload

RATE = 16000


def tone(amplitude: float, seconds: float = 1.0, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_the_level_is_the_loud_part_of_the_speech_not_the_silence_around_it() -> None:
    voice = tone(0.1)
    expected = 20 * np.log10(0.1 / np.sqrt(2))
    assert speech_level(voice) == pytest.approx(expected, abs=0.1)
    padded = np.concatenate([np.zeros(2 * RATE, np.float32), voice, np.zeros(RATE, np.float32)])
    assert speech_level(padded) == pytest.approx(expected, abs=0.1)  # 3 s of silence around 1 s of voice
    assert speech_level(np.zeros(RATE, np.float32)) is None  # digital silence has no level
    assert speech_level(voice[:100]) is None  # shorter than a frame


def test_a_gain_is_held_under_clipping() -> None:
    loud = tone(0.5)
    out = apply_gain(loud, 20)
    assert np.max(np.abs(out)) == pytest.approx(level.PEAK, rel=1e-4)
    np.testing.assert_allclose(out / np.max(np.abs(out)), loud / np.max(np.abs(loud)), atol=1e-5)  # not clipped
    assert apply_gain(loud, -6) == pytest.approx(loud * 10 ** (-6 / 20), abs=1e-6)


def test_each_speakers_median_so_far_is_put_at_the_reference() -> None:
    gains = causal_gains([("A", -40.0), ("B", -20.0), ("A", -30.0), (("A"), None), ("A", -20.0), ("B", -26.0)])
    # A: -40 alone -> +8; B: -20 -> -12; A: median(-40, -30) = -35 -> +3; no speech -> 0; A: median -30 -> -2;
    # B: median(-20, -26) = -23 -> -9
    assert gains == [8, -12, 3, 0, -2, -9]
    assert causal_gains([("A", REF_DB - 100)]) == [level.MAX_GAIN_DB]  # a near-silent line is not lifted unbounded


def test_the_stream_gives_the_gains_evaluation_gives_in_whatever_order_it_encodes() -> None:
    said = [("A", -40.0), ("B", -20.0), ("A", -30.0), ("A", -20.0), ("B", -26.0)]
    levels = SpeakerLevels()
    got = [levels.gain("call", s, i, lv) for i, (s, lv) in enumerate(said)]
    assert got == causal_gains(said)
    assert levels.gain("call", "A", 0, -40.0) == got[0]  # a replay of the first: as the first time
    assert levels.gain("call", "A", 2, -30.0) == got[2]
    # encoded out of order (ahead on a thread, the rest in the batch): each by its own seq all the same
    shuffled = SpeakerLevels()
    order = [3, 1, 4, 0, 2]
    by_seq = {i: shuffled.gain("call", said[i][0], i, said[i][1]) for i in order}
    # each as evaluation says but seq 3, encoded first: before A's seq 0 and 2 were heard
    assert [by_seq[i] for i in range(len(said))] == [*got[:3], causal_gains([said[3]])[0], got[4]]
    again = {i: shuffled.gain("call", said[i][0], i, said[i][1]) for i in range(len(said))}  # a replay of all
    assert list(again.values()) == got
    assert levels.gain("other", "A", 0, -10.0) == gain_alone(-10.0)  # calls apart
    levels.forget("call")
    assert levels.gain("call", "A", 3, -20.0) == gain_alone(-20.0)  # the call forgotten: afresh
    assert levels.gain("call", "A", 9, None) == 0 and len(levels) == 2
    small = SpeakerLevels(max_calls=2)
    for c in ("c1", "c2", "c3"):
        small.gain(c, "A", 0, -30.0)
    assert len(small) == 2
    long = SpeakerLevels()
    for i in range(3 * level.KEEP):
        long.gain("c", "A", i, -60.0 if i < level.KEEP else -20.0)
    assert long.gain("c", "A", 3 * level.KEEP, -20.0) == gain_alone(-20.0)  # the last KEEP only


def gain_alone(lv: float) -> int:
    return causal_gains([("A", lv)])[0]


class Featurizer:
    def __init__(self) -> None:
        self.heard: list[np.ndarray] = []
        self.format_check = None

    def text(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), 2), np.float32)

    def audio(self, waves: list[np.ndarray]) -> np.ndarray:
        self.heard += waves
        return np.ones((len(waves), 3), np.float32)

    def speech(self, waves: list[np.ndarray], enough: float | None = None) -> np.ndarray:
        return np.array([0.0 if not np.any(w) else 1.0 for w in waves], np.float32)


def call(gain_db: float, call_id: str) -> list[join.Utterance]:
    """A call of two speakers, the customer louder as it goes on, heard ``gain_db`` louder."""
    amps = [("cust", 0.02), ("agent", 0.01), ("cust", 0.04), ("agent", 0.0), ("cust", 0.08)]
    return [
        join.Utterance(
            call_id,
            f"u{i}",
            i,
            who,
            0.0,
            parts={"audio": Payload("wave", tone(a) * np.float32(10 ** (gain_db / 20)))},
        )  # fmt: skip
        for i, (who, a) in enumerate(amps)
    ]


@pytest.mark.parametrize("line_db", [-20.0, 12.0])
def test_with_speaker_levels_a_line_s_gain_changes_nothing_the_encoder_hears(line_db: float) -> None:
    dims = {"text": 2, "audio": 3, "video": 0}
    studio, line = Featurizer(), Featurizer()
    levels = SpeakerLevels()
    a, b = call(0.0, "studio"), call(line_db, "line")
    for utt_a, utt_b in zip(a, b, strict=True):  # one at a time, as they arrive
        utterance_features([utt_a], studio, dims, min_speech_s=0.1, levels=levels)
        utterance_features([utt_b], line, dims, min_speech_s=0.1, levels=levels)
    assert len(studio.heard) == len(line.heard) == 4  # the agent's silent turn has no speech
    for x, y in zip(studio.heard, line.heard, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)
    lv = [speech_level(x) for x in studio.heard]
    # the customer's first at the reference; then 6 dB louder: 3 dB over the median of the two so far;
    # then 6 dB louder again: 6 dB over the median of the three (louder as it goes on: still louder)
    assert [round(x - REF_DB) for x in (lv[0], lv[2], lv[3])] == [0, 3, 6]
    as_sent = Featurizer()
    utterance_features(call(line_db, "x"), as_sent, dims, min_speech_s=0.1)
    assert speech_level(as_sent.heard[0]) == pytest.approx(speech_level(tone(0.02)) + line_db, abs=0.1)


class LevelExtractor:
    """A fake audio extractor whose one feature is the level the clip is heard at."""

    id, dim = "level-fake", 1

    def extract(self, waves: list[np.ndarray]) -> np.ndarray:
        return np.array([[speech_level(w) or -200.0] for w in waves], np.float32)


def test_evaluation_hears_each_utterance_at_its_speakers_level(tmp_path: Path) -> None:
    def dialogue(gain_db: float, name: str) -> Dialogue:
        utts = []
        for i, (who, a) in enumerate([("A", 0.02), ("B", 0.05), ("A", 0.04), ("A", 0.01)]):
            path = tmp_path / f"{name}-{i}.wav"
            sf.write(path, tone(a) * 10 ** (gain_db / 20), RATE)
            utts.append(Utterance(f"t{i}", who, 0, 0, str(path)))
        return Dialogue(name, utts)

    dialogues = [dialogue(0.0, "studio"), dialogue(-20.0, "quiet")]
    paths = [u.audio for d in dialogues for u in d.utterances if u.audio]
    flat = [u.audio for d in dialogues for u in d.utterances]
    table = AudioTable(paths, LevelExtractor(), tmp_path / "cache", min_speech_s=None, dialogues=dialogues)
    feats, has = table.lookup(flat, 1)
    assert has.all()
    np.testing.assert_allclose(feats[:4], feats[4:], atol=0.5)  # 20 dB quieter: heard the same
    assert feats[0, 0] == pytest.approx(REF_DB, abs=0.5) and feats[1, 0] == pytest.approx(REF_DB, abs=0.5)
    assert feats[2, 0] > feats[0, 0] + 2  # A louder than A's median so far: above the reference
    as_sent = AudioTable(paths, LevelExtractor(), tmp_path / "cache", min_speech_s=None)
    plain, _ = as_sent.lookup(flat, 1)
    np.testing.assert_allclose(plain[4:] - plain[:4], -20.0, atol=0.1)
    with pytest.raises(ValueError, match="4 paths for a table of 8"):
        table.lookup(flat[:4], 1)


def _model(folder: Path, level_: str | None) -> Path:
    folder.mkdir()
    train = {} if level_ is None else {"audio_level": level_}
    (folder / "config.json").write_text(json.dumps({"engine": "unimse", "train": train}))
    return folder


def test_the_stream_hears_voices_at_the_level_the_model_learnt_them_at(tmp_path: Path) -> None:
    from streams.errors import ConfigError
    from streams.runtime import heard_level
    from streams.settings import Settings

    old, new = _model(tmp_path / "old", None), _model(tmp_path / "new", "speaker")
    assert artifact.audio_level(old) == "as-sent" and artifact.audio_level(new) == "speaker"
    revision = object()  # a revision engine is loaded: its artifact's level must be the model's

    def settings(model: Path, revised: Path | None, level_: str = "model") -> Settings:
        engine = {"model": str(model), "revision_model": None if revised is None else str(revised)}
        return Settings(engine={**engine, "audio_level": level_})

    assert heard_level(settings(old, None), old, None) == "as-sent"
    assert heard_level(settings(new, None), new, None) == "speaker"
    assert heard_level(settings(new, new), new, revision) == "speaker"
    with pytest.raises(ConfigError, match="revision model .* at the level the line brings: they read the same"):
        heard_level(settings(new, old), new, revision)
    assert heard_level(settings(new, old, "as-sent"), new, revision) == "as-sent"  # named: both hear it so
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"train": {"audio_level": "loud"}}))
    with pytest.raises(ArtifactError, match="'loud' is none of"):
        artifact.audio_level(tmp_path / "bad")


def test_a_call_s_speakers_are_forgotten_when_it_ends_or_its_id_is_used_again() -> None:
    import asyncio

    from streams.pipeline import Processor
    from tests.unit.test_worker_logic import FakeEngine, FakeFeaturizer, FakeStore

    assert not Processor(FakeEngine(), FakeFeaturizer(), FakeStore()).levels.apply  # as-sent: only watched
    p = Processor(FakeEngine(), FakeFeaturizer(), FakeStore(), audio_level="speaker")
    assert p.levels.apply

    async def run() -> None:
        p.levels.gain("ended", "A", 0, -30.0)
        p.levels.gain("again", "A", 0, -30.0)
        await p.started("again", ["audio"], 1)
        await p.release(["ended"])
        assert len(p.levels) == 1  # 'again' was started before any 'ended': not used again yet
        await p.release(["again"], {"again": 2})
        await p.started("again", ["audio"], 3)  # a new call under the id
        assert len(p.levels) == 0
        p.levels.gain("again", "A", 0, -10.0)
        assert await p.started("again", ["audio"], 5) and len(p.levels) == 0

    asyncio.run(run())


def test_a_line_gain_names_its_line_and_plays_louder_before_it() -> None:
    from engines.features.channel import LineGain, make_channel

    phone = make_channel("telephone", 0)
    assert LineGain(12.0).id == "gain-v1+12dB" and LineGain(-20.0, phone).id == f"gain-v1-20dB-{phone.id}"
    voice = tone(0.01)
    assert speech_level(LineGain(-20.0)(voice, "k")) == pytest.approx(speech_level(voice) - 20, abs=0.05)
    np.testing.assert_allclose(LineGain(6.0, phone)(voice, "k"), phone(apply_gain(voice, 6.0), "k"))


def test_a_speaker_on_a_quiet_line_heard_as_sent_is_said_to_be_from_the_third_utterance() -> None:
    from streams.pipeline import QUIET, QUIET_AFTER

    dims = {"text": 2, "audio": 3, "video": 0}
    said = {}
    for line_db, apply in ((-25.0, False), (0.0, False), (-25.0, True)):
        levels, f = SpeakerLevels(apply=apply), Featurizer()
        utts = call(line_db, "c")
        for u in utts:
            utterance_features([u], f, dims, min_speech_s=0.1, levels=levels)
        said[(line_db, apply)] = [u.suspect.get("audio", "") for u in utts]
    quiet = said[(-25.0, False)]  # the customer at 0.02, 0.04, 0.08 (-37, -31, -25 dBFS) 25 dB down
    assert [x.startswith(QUIET) for x in quiet] == [False, False, False, False, True], quiet
    assert "over 3 utterances" in quiet[4] and QUIET_AFTER == 3
    assert not any(said[(0.0, False)]) and not any(said[(-25.0, True)])  # a studio's level; levels applied


@pytest.mark.parametrize("bad", ["nan", "inf", "-1000", "61", "loud"])
def test_evaluate_refuses_a_line_gain_that_is_no_line_s(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from engines.evaluate import add_evaluate_args

    parser = add_evaluate_args(argparse.ArgumentParser(prog="emostream evaluate"))
    need = ["--dataset", "ravdess", "--data-dir", "data"]
    assert parser.parse_args([*need, "--line-gain", "-20", "--levels", "speaker"]).line_gain == -20.0
    with pytest.raises(SystemExit):
        parser.parse_args([*need, "--line-gain", bad])
    assert "argument --line-gain:" in capsys.readouterr().err


def test_a_batch_s_levels_are_recorded_in_seq_order_and_nothing_is_encoded_ahead_at_speakers_levels() -> None:
    from streams.pipeline import Processor
    from tests.unit.test_worker_logic import FakeEngine, FakeFeaturizer, FakeStore

    dims = {"text": 2, "audio": 3, "video": 0}
    in_order, shuffled = Featurizer(), Featurizer()
    utts = call(-25.0, "c")
    utterance_features(utts, in_order, dims, min_speech_s=0.1, levels=SpeakerLevels())
    mixed = call(-25.0, "c")
    order = [4, 2, 0, 3, 1]
    utterance_features([mixed[i] for i in order], shuffled, dims, min_speech_s=0.1, levels=SpeakerLevels())
    voiced = [i for i in order if i != 3]  # the agent's silent turn: no speech
    by_utt = dict(zip(voiced, shuffled.heard, strict=True))
    for k, i in enumerate([0, 1, 2, 4]):  # heard in the batch's order, at the gains of seq order
        np.testing.assert_allclose(by_utt[i], in_order.heard[k], atol=1e-6)
    p = Processor(FakeEngine(), FakeFeaturizer(), FakeStore(), audio_level="speaker")
    p.prefetch(call(0.0, "d"))  # no event loop needed: nothing is started
    assert p._prefetch is None
