from __future__ import annotations

import numpy as np
import pytest

from engines.interface import FeatureSpec
from streams.context import ContextItem
from streams.join import Utterance
from streams.pipeline import (
    BEHIND,
    build_batch,
    forget_featurizer_notes,
    sent_ago,
    sentiment_label,
    utterance_features,
)
from streams.validate import Payload

DIMS = {"text": 2, "audio": 3, "video": 0}


def item(i: int, speaker: str, mods: dict[str, float]) -> ContextItem:
    return ContextItem(f"u{i}", i, speaker, {m: np.full(DIMS[m], v, np.float32) for m, v in mods.items()})


def test_windows_are_right_aligned_with_masks_and_window_local_speakers() -> None:
    windows = [
        [item(0, "bob", {"text": 1}), item(1, "ann", {"text": 2, "audio": 3}), item(2, "bob", {"audio": 4})],
        [item(0, "zed", {"text": 5})],
    ]
    b = build_batch(windows, FeatureSpec({"text": 2, "audio": 3, "video": 0}))
    assert (
        b.features["text"].shape == (2, 3, 2)
        and b.features["audio"].shape == (2, 3, 3)
        and b.features["video"].shape == (2, 3, 0)
    )
    assert b.valid.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b.target.tolist() == [2, 2]
    assert b.speakers.tolist() == [[0, 1, 0], [0, 0, 0]]
    assert b.present[0].tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 0]]
    assert b.present[1].tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert b.features["text"][1, 2].tolist() == [5, 5] and b.features["audio"][0, 2].tolist() == [4, 4, 4]


class CountingFeaturizer:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def text(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return np.array([[len(t), 0] for t in texts], np.float32)

    def audio(self, waves: list[np.ndarray]) -> np.ndarray:
        self.calls.append(len(waves))
        return np.array([[w.size, 0, 0] for w in waves], np.float32)


def utt(i: int, **parts: Payload) -> Utterance:
    return Utterance("c", f"u{i}", i, "A", first_at=0.0, parts=dict(parts))


def test_features_are_computed_in_one_call_per_modality_and_vectors_pass_through() -> None:
    f = CountingFeaturizer()
    utts = [
        utt(0, text=Payload("text", "hello"), audio=Payload("wave", np.zeros(160, np.float32))),
        utt(1, text=Payload("vector", np.array([7, 7], np.float32))),
        utt(2, text=Payload("text", "hi"), video=Payload("vector", np.zeros(0, np.float32))),
    ]
    feats = utterance_features(utts, f, DIMS)
    assert f.calls == [2, 1]  # one text batch of 2, one audio batch of 1
    assert feats[0]["text"].tolist() == [5, 0] and feats[0]["audio"].tolist() == [160, 0, 0]
    assert feats[1]["text"].tolist() == [7, 7] and "audio" not in feats[1]
    assert set(feats[2]) == {"text"}  # the model takes no video


def test_audio_of_an_utterance_sent_longer_ago_than_the_shed_age_is_not_encoded_and_says_why() -> None:
    """engine.shed_audio_after_s: a worker behind labels from the words; audio sent within the age,
    audio of an utterance without a record time, audio with no words beside it (a blank transcript,
    none at all) and vectors the caller sent are used."""
    wave = Payload("wave", np.zeros(160, np.float32))
    utts = [
        utt(0, text=Payload("text", "late"), audio=wave),
        utt(1, text=Payload("text", "on time"), audio=wave),
        utt(2, text=Payload("text", "no record time"), audio=wave),
        utt(3, text=Payload("text", "features"), audio=Payload("vector", np.ones(3, np.float32))),
        utt(4, audio=wave),  # the voice is all there is
        utt(5, text=Payload("text", "  "), audio=wave),  # no words
        utt(6, text=Payload("vector", np.array([7, 7], np.float32)), audio=wave),  # the caller's text vector
    ]
    for u, ts in zip(utts, (900.0, 990.5, None, 900.0, 900.0, 900.0, 900.0), strict=True):
        u.first_ts = ts
    f = CountingFeaturizer()
    feats = utterance_features(utts, f, DIMS, shed_after_s=10.0, now=1000.0)
    assert f.calls == [4, 4]  # four transcripts; the waves of 1, 2, 4 and 5
    assert [sorted(x) for x in feats] == [
        ["text"],
        ["audio", "text"],
        ["audio", "text"],
        ["audio", "text"],
        ["audio"],
        ["audio"],
        ["text"],
    ]
    for late in (utts[0], utts[6]):
        why = late.ignored["audio"]
        assert why.startswith(BEHIND) and "engine.shed_audio_after_s after it was sent" in why, why
    assert all("audio" not in u.ignored for u in utts[1:6])
    # off (0) encodes it however late; a retry judges afresh (the note is the featurizer's own)
    forget_featurizer_notes(utts[0])
    assert utts[0].ignored == {}
    assert set(utterance_features(utts[:1], f, DIMS, shed_after_s=0.0, now=1e9)[0]) == {"text", "audio"}
    # just at the age: still encoded
    assert "audio" in utterance_features(utts[:1], f, DIMS, shed_after_s=100.0, now=1000.0)[0]


def test_the_worker_reading_its_partitions_to_their_end_overrules_a_producer_clock_running_behind() -> None:
    """A part read after the worker had read its partition to the end the broker gave at wall time
    F was sent after F: an utterance whose record time says 100 s ago (a producer clock 100 s behind)
    but whose partition was read to its end 1 s ago keeps its voice; read to its end 50 s ago (a
    backlog), it is shed; with no record time, that alone ages it."""
    wave = Payload("wave", np.zeros(160, np.float32))
    cases = [(900.0, 999.0, True), (900.0, 950.0, False), (None, 950.0, False), (990.5, 900.0, True)]
    utts = [utt(i, text=Payload("text", "hello"), audio=wave) for i in range(len(cases))]
    for u, (ts, fresh, _) in zip(utts, cases, strict=True):
        u.first_ts, u.fresh_at = ts, fresh
    assert [sent_ago(u, 1000.0) for u in utts] == [1.0, 50.0, 50.0, 9.5]  # the smaller of the two
    assert sent_ago(utt(9), 1000.0) is None
    feats = utterance_features(utts, CountingFeaturizer(), DIMS, shed_after_s=10.0, now=1000.0)
    for u, f, (_, _, kept) in zip(utts, feats, cases, strict=True):
        assert ("audio" in f) is kept and u.ignored.get("audio", "").startswith(BEHIND) is not kept, (u, f)


class OtherLanguage:
    """A language check that reads every transcript starting 'hola' as Spanish."""

    def verdicts(self, texts: list[str]) -> list[str | None]:
        return ["other language? the words read as Spanish (es)" if t.startswith("hola") else None for t in texts]


def test_a_voice_beside_words_the_language_check_drops_is_encoded_however_late() -> None:
    f = CountingFeaturizer()
    f.language_check, f.language_action = OtherLanguage(), "drop"  # type: ignore[attr-defined]
    wave = Payload("wave", np.zeros(160, np.float32))
    utts = [utt(0, text=Payload("text", "hola amigo"), audio=wave), utt(1, text=Payload("text", "hi"), audio=wave)]
    for u in utts:
        u.first_ts = 0.0
    feats = utterance_features(utts, f, DIMS, shed_after_s=10.0, now=1000.0)
    assert set(feats[0]) == {"audio"} and utts[0].ignored["text"].startswith("other language?")
    assert set(feats[1]) == {"text"} and utts[1].ignored["audio"].startswith(BEHIND)


def test_a_replay_encodes_the_voice_or_not_as_its_first_run_did_whatever_its_age_now() -> None:
    wave = Payload("wave", np.zeros(160, np.float32))
    f = CountingFeaturizer()
    for first_run_shed in (True, False):
        u = utt(0, text=Payload("text", "again"), audio=wave)
        u.first_ts, u.shed = 900.0, first_run_shed
        for now in (905.0, 2000.0):  # within the age, and long past it
            forget_featurizer_notes(u)
            got = utterance_features([u], f, DIMS, shed_after_s=10.0, now=now)[0]
            assert ("audio" in got) is (not first_run_shed) and ("audio" in u.ignored) is first_run_shed


def test_features_encoded_ahead_fit_a_replay_only_if_its_voice_was_treated_alike() -> None:
    from streams.pipeline import _Ready

    u = utt(0, text=Payload("text", "x"), audio=Payload("wave", np.zeros(160, np.float32)))
    shed = _Ready(u.parts, {"text": np.zeros(2)}, {"audio": f"{BEHIND}..."}, {})
    used = _Ready(u.parts, {"text": np.zeros(2), "audio": np.zeros(3)}, {}, {})
    assert shed.fits(u) and used.fits(u)  # not a replay: either
    u.shed = True
    assert shed.fits(u) and not used.fits(u)
    u.shed = False
    assert used.fits(u) and not shed.fits(u)


def test_sentiment_label_thresholds() -> None:
    assert [sentiment_label(x) for x in (-0.9, -0.1, 0.0, 0.3)] == ["negative", "neutral", "neutral", "positive"]


def test_a_window_keeps_the_latest_utterances_by_seq_as_redis_trims_it() -> None:
    from streams.context import ContextItem, latest_by_seq

    def item(seq: int) -> ContextItem:
        return ContextItem(f"u{seq}", seq, "A", {"text": np.zeros(2, np.float32)})

    arrived = [item(39), item(40), item(50), item(10), item(45)]  # 10 and 45 read late
    assert [i.seq for i in latest_by_seq(arrived, 3)] == [40, 50, 45]  # arrival order kept
    assert [i.seq for i in latest_by_seq(arrived[:2], 3)] == [39, 40]
    same = [item(1), item(1), item(2)]  # equal seqs (a producer's mistake): the first to arrive goes first
    assert latest_by_seq(same, 2) == [same[1], same[2]]


def test_the_worker_warns_where_redis_may_evict_its_keys(caplog: pytest.LogCaptureFixture) -> None:
    """Found in review: every key has a TTL, so a Redis with maxmemory and a volatile-* policy drops
    them under pressure, and nothing said so."""
    import logging

    import redis

    from streams.context import _say_if_evicting

    class Client:
        def __init__(self, config: dict[str, str] | None) -> None:
            self.config = config

        def config_get(self, pattern: str) -> dict[str, str]:
            if self.config is None:
                raise redis.exceptions.ResponseError("unknown command 'CONFIG'")
            return self.config

    with caplog.at_level(logging.INFO, logger="emostream.context"):
        _say_if_evicting(Client({"maxmemory": "0", "maxmemory-policy": "noeviction"}))
        _say_if_evicting(Client({"maxmemory": "0", "maxmemory-policy": "volatile-lru"}))  # no limit: never evicts
        assert caplog.records == []
        _say_if_evicting(Client({"maxmemory": "1073741824", "maxmemory-policy": "volatile-lru"}))
        _say_if_evicting(Client(None))  # a managed Redis that refuses CONFIG
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said[0][0] == "WARNING" and "maxmemory-policy volatile-lru" in said[0][1]
    assert said[1][0] == "INFO" and "CONFIG refused" in said[1][1]


def test_an_audio_vector_that_is_not_finite_is_ignored_and_the_words_still_count() -> None:
    """A float WAV far beyond full scale once gave Whisper an overflowing spectrum: a NaN vector, NaN
    probabilities, and the utterance dead-lettered, its valid transcript with it."""
    from streams.pipeline import NOT_FINITE

    class NaNForLong(CountingFeaturizer):
        def audio(self, waves: list[np.ndarray]) -> np.ndarray:
            out = super().audio(waves)
            out[[w.size > 200 for w in waves]] = np.nan
            return out

    utts = [
        utt(0, text=Payload("text", "hello"), audio=Payload("wave", np.zeros(400, np.float32))),
        utt(1, text=Payload("text", "hi"), audio=Payload("wave", np.zeros(160, np.float32))),
    ]
    feats = utterance_features(utts, NaNForLong(), DIMS)
    assert sorted(feats[0]) == ["text"] and utts[0].ignored == {"audio": NOT_FINITE}
    assert sorted(feats[1]) == ["audio", "text"] and utts[1].ignored == {}
    forget_featurizer_notes(utts[0])  # a retry judges afresh
    assert utts[0].ignored == {}


def test_a_clipped_voice_is_used_and_said_suspect_a_loud_one_or_a_tone_is_not() -> None:
    """A newcomer's heavily clipped loud voice got an audio weight of 0 with nothing in the event to
    say why; what decoding notices goes into suspect when the voice is used. Flat tops at full scale
    as sent are clipping; samples merely near full scale are not (a beep or DTMF tone at 0 dBFS)."""
    from scipy.signal import lfilter

    from engines.features.codecs import decode_as_sent, decode_audio, encode_audio
    from streams.validate import CLIPPED, clipped

    rng = np.random.default_rng(1)  # speech-like: Laplacian samples (a high crest factor), most energy low
    voice = lfilter([1.0], [1.0, -0.95], rng.laplace(size=16000 * 2))
    voice /= np.abs(voice).max()
    t = np.arange(16000 * 2) / 16000
    beep = np.sin(2 * np.pi * 1000 * t)  # 0 dBFS
    dtmf = 0.5 * np.sin(2 * np.pi * 697 * t) + 0.5 * np.sin(2 * np.pi * 1209 * t)

    def note(wave: np.ndarray, encoding: str, rate: int | None) -> str | None:
        raw = encode_audio(wave, 16000, encoding, rate)
        sent, _ = decode_as_sent(raw, encoding, rate)  # as the worker looks at it (streams.validate.to_payload)
        return clipped(sent, encoding)

    cases = (
        ("pcm_s16le", 16000), ("pcm_s16le", 8000), ("pcm_mulaw", None), ("pcm_alaw", None), ("flac", None),
        ("flac", 8000), ("wav", 44100),  # containers at another rate: read again at their own
    )  # fmt: skip
    for encoding, rate in cases:
        assert note(voice * 0.99, encoding, rate) is None, encoding
        assert note(beep, encoding, rate) is None and note(dtmf, encoding, rate) is None, encoding
        said = note(np.clip(voice * 4, -1, 1), encoding, rate)
        assert said is not None and said.startswith(CLIPPED), (encoding, said)
    raw = encode_audio(np.clip(voice * 4, -1, 1), 16000, "pcm_mulaw")
    hot = decode_audio(raw, "pcm_mulaw")
    utts = [
        utt(
            0,
            text=Payload("text", "hello"),
            audio=Payload("wave", hot, clipped(decode_as_sent(raw, "pcm_mulaw")[0], "pcm_mulaw")),
        )
    ]  # noqa: E501
    feats = utterance_features(utts, CountingFeaturizer(), DIMS)
    assert "audio" in feats[0] and utts[0].suspect["audio"].startswith(CLIPPED)


def test_a_full_scale_clip_is_said_to_be_at_0_dbfs_not_minus_0() -> None:
    from streams.pipeline import _loud

    assert "sound at 0 dBFS" in _loud(np.full(800, 0.9999, np.float32))
    assert "sound at -20 dBFS" in _loud(np.full(800, 0.1, np.float32))


def test_a_clip_padded_with_silence_is_encoded_with_its_silences_cut_short() -> None:
    """A recorder's padding read as part of the voice pulled it towards disgust (a telephone
    trial): the encoder gets at most engines.features.pauses' silence at each end and inside."""
    from engines.features.pauses import EDGE_KEEP_S, GAP_KEEP_S

    t = np.arange(16000) / 16000
    tone = (0.1 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    silence = np.zeros(5 * 16000, np.float32)
    padded = np.concatenate([silence, tone, silence[:32000], tone, silence])
    f = CountingFeaturizer()
    feats = utterance_features([utt(0, audio=Payload("wave", padded))], f, DIMS)
    assert feats[0]["audio"][0] == round((2 * EDGE_KEEP_S + GAP_KEEP_S + 2.0) * 16000)
