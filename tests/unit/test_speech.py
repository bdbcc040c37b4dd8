"""Is there a voice at all: the Silero VAD gate on real clips and on lines without a voice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.corrupt import probe_clips
from engines.errors import FeatureError
from engines.features.audio import read_audio_file
from engines.features.channel import make_channel
from engines.features.speech import MIN_SPEECH_S, SpeechDetector, is_speech
from streams.join import Utterance
from streams.pipeline import utterance_features
from streams.validate import Payload

#: acted strong anger that Silero scores low (at its default 0.5 both had < 0.05 s of speech)
SHOUTED = ["Actor_18/03-01-05-02-01-02-18.flac", "Actor_18/03-01-05-02-02-01-18.flac"]


def _openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


@pytest.fixture(
    scope="module",
    params=["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(not _openvino(), reason="no openvino"))],
)
def detector(request: pytest.FixtureRequest) -> SpeechDetector:
    return SpeechDetector(runtime=request.param)


def test_voices_pass_and_lines_without_one_do_not(detector: SpeechDetector, shared_data: Path, tmp_path: Path) -> None:
    actor = sorted((shared_data / "ravdess" / "Actor_17").glob("*.flac"))[::6]
    voiced = [read_audio_file(str(p)) for p in actor] + [
        read_audio_file(str(shared_data / "ravdess" / s)) for s in SHOUTED
    ]
    phone = make_channel("telephone", 0)
    on_the_phone = [phone(w, str(i)) for i, w in enumerate(voiced)]
    none = [read_audio_file(p) for kind in ("noise", "silence") for p in probe_clips(kind, 0, tmp_path)]
    none += [np.zeros(8000, np.float32), np.zeros(0, np.float32)]  # digital silence, an empty part
    assert is_speech(detector.seconds(voiced)).all()
    assert is_speech(detector.seconds(on_the_phone)).all()
    seconds = detector.seconds(none)
    assert not is_speech(seconds).any(), seconds.max()
    assert detector.seconds([voiced[0]])[0] > 5 * MIN_SPEECH_S


def test_stopping_at_enough_speech_decides_as_the_whole_clip(
    detector: SpeechDetector, shared_data: Path, tmp_path: Path
) -> None:
    """The stream runs a clip only until it has enough speech: the same verdict on every clip,
    the exact figure below the threshold, the same probabilities for the frames it ran, and
    fewer frames run on a voice."""
    voiced = [read_audio_file(str(p)) for p in sorted((shared_data / "ravdess" / "Actor_19").glob("*.flac"))[::5]]
    phone = make_channel("telephone", 1)
    clips = voiced + [phone(w, str(i)) for i, w in enumerate(voiced)]
    clips += [read_audio_file(p) for kind in ("noise", "silence") for p in probe_clips(kind, 0, tmp_path)]
    clips += [np.zeros(0, np.float32), np.concatenate([np.zeros(48000, np.float32), voiced[0]])]
    for enough in (MIN_SPEECH_S, 0.16, 1.0):  # 0.16 s is exactly 5 frames of 32 ms
        whole, early = detector.seconds(clips), detector.seconds(clips, enough)
        np.testing.assert_array_equal(is_speech(whole, enough), is_speech(early, enough))
        below = whole < enough
        assert below.any() and not below.all()
        np.testing.assert_array_equal(early[below], whole[below])
        assert (early[~below] >= enough).all() and (early[~below] <= whole[~below]).all()
    ran = [detector.frame_probs(w, 5) for w in voiced]
    full = [detector.frame_probs(w) for w in voiced]
    for r, f in zip(ran, full, strict=True):
        np.testing.assert_array_equal(r, f[: r.size])
    assert sum(r.size for r in ran) < 0.6 * sum(f.size for f in full)


class Featurizer:
    def __init__(self, seconds: dict[int, float]) -> None:
        self.seconds, self.audio_sizes = seconds, []  # wave size -> its seconds of speech
        self.format_check: object = None
        self.format_action = "warn"

    def text(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), 2), np.float32)

    def audio(self, waves: list[np.ndarray]) -> np.ndarray:
        self.audio_sizes += [w.size for w in waves]
        return np.ones((len(waves), 3), np.float32)

    def speech(self, waves: list[np.ndarray], enough: float | None = None) -> np.ndarray:
        self.enough = enough
        return np.array([self.seconds[w.size] for w in waves], np.float32)


def spoken(*sizes: int) -> list[Utterance]:
    """Utterances of text "hi" and a waveform of each size (the fake featurizers key seconds by it)."""
    return [
        Utterance(
            "c",
            f"u{i}",
            i,
            "A",
            0.0,
            parts={"text": Payload("text", "hi"), "audio": Payload("wave", np.zeros(n, np.float32))},
        )  # fmt: skip
        for i, n in enumerate(sizes)
    ]


def test_audio_without_speech_gets_no_vector_and_says_why() -> None:
    f = Featurizer({100: 1.2, 200: 0.05})
    utts = spoken(100, 200)
    feats = utterance_features(utts, f, {"text": 2, "audio": 3, "video": 0}, min_speech_s=0.15)
    assert set(feats[0]) == {"text", "audio"} and set(feats[1]) == {"text"}
    assert f.audio_sizes == [100]  # no audio features computed for the silent one
    assert f.enough == 0.15  # the detector may stop a clip once it has that much speech
    assert utts[0].ignored == {} and utts[1].ignored["audio"].startswith("no speech: 0.05 s")
    again = [Utterance("c", "u", 0, "A", 0.0, parts={"audio": Payload("wave", np.zeros(200, np.float32))})]
    assert set(utterance_features(again, f, {"text": 2, "audio": 3, "video": 0})[0]) == {"audio"}  # 0: no gate
    assert "dBFS" not in utts[1].ignored["audio"]  # silence: nothing more to say


def test_a_loud_clip_without_speech_says_it_is_sound_not_silence() -> None:
    """Found by a newcomer: 8 kHz samples sent as 16 kHz, an octave high, were 'no speech' for two
    clips, which sends an operator looking for a muted line: a clip that is sound says so."""
    f = Featurizer({300: 0.02, 200: 0.0})
    loud = Utterance("c", "u0", 0, "A", 0.0, parts={"audio": Payload("wave", np.full(300, 0.1, np.float32))})
    quiet = Utterance("c", "u1", 1, "A", 0.0, parts={"audio": Payload("wave", np.full(200, 1e-3, np.float32))})
    utterance_features([loud, quiet], f, {"text": 2, "audio": 3, "video": 0}, min_speech_s=0.15)
    assert loud.ignored["audio"] == (
        "no speech: 0.02 s of speech, less than 0.15 s (the clip is sound at -20 dBFS, not silence: noise or music, "
        "or speech at another sample_rate or encoding than declared?)"
    )
    assert quiet.ignored["audio"] == "no speech: 0.00 s of speech, less than 0.15 s"  # -60 dBFS: a muted line


def test_audio_the_format_check_flags_is_used_and_suspected_or_with_drop_not_used() -> None:
    """The featurizer's format check (engines/features/format_check.py) sees the audio vectors; one
    it judges mis-declared is used all the same and the utterance says why in ``suspect``
    (``format_action`` "warn", the default), or not used and said in ``ignored`` ("drop")."""
    from engines.features.format_check import WRONG_RATE, FormatCheck

    f = Featurizer({16_000: 1.2, 16_200: 1.2, 8_000: 0.5})
    # a probe that calls the first coordinate's sign: vectors of ones are '8k-as-16k'
    f.format_check = FormatCheck("fake", np.zeros(3), np.ones(3), np.array([[-9.0, 0, 0], [9.0, 0, 0], [0, 0, 0]]),
                                 np.zeros(3))  # fmt: skip
    said = WRONG_RATE + "the voice sounds an octave high: p(misdeclared)=1.000"
    dims = {"text": 2, "audio": 3, "video": 0}
    utts = spoken(16_000, 16_200)
    assert [set(x) for x in utterance_features(utts, f, dims, min_speech_s=0.15)] == [{"text", "audio"}] * 2
    assert all(u.suspect["audio"].startswith(said) and u.ignored == {} for u in utts), utts
    f.format_action = "drop"
    utts = spoken(16_000, 16_200)
    assert [set(x) for x in utterance_features(utts, f, dims, min_speech_s=0.15)] == [{"text"}] * 2
    assert all(u.ignored["audio"].startswith(said) and u.suspect == {} for u in utts), utts
    # a clip under a second (a filler's "uh") is not judged: at the right rate some sounded mis-declared
    utts = spoken(8_000)
    assert [set(x) for x in utterance_features(utts, f, dims, min_speech_s=0.15)] == [{"text", "audio"}]
    assert utts[0].ignored == {} and utts[0].suspect == {}, utts
    # the check hears speech only: with the speech gate off (min_speech_s 0) it is not asked
    utts = spoken(16_000)
    assert [set(x) for x in utterance_features(utts, f, dims)] == [{"text", "audio"}] and utts[0].ignored == {}
    f.format_check = None
    utts = spoken(16_000)
    assert [set(x) for x in utterance_features(utts, f, dims, 0.15)] == [{"text", "audio"}] and utts[0].suspect == {}


def test_the_format_check_flags_from_its_threshold_on() -> None:
    """p(misdeclared) just above 0.9 is flagged, just below it is not (intercepts alone: p(ok) = 1 / (1 + e^b))."""
    import math

    from engines.features.format_check import THRESHOLD, FormatCheck

    assert THRESHOLD == 0.9
    zeros = np.zeros((1, 3))
    for b, flagged in ((math.log(9) + 0.01, True), (math.log(9) - 0.01, False)):
        check = FormatCheck("fake", np.zeros(3), np.ones(3), np.zeros((3, 3)), np.array([0.0, -50.0, b]))
        assert (check.verdicts(zeros)[0] is not None) is flagged, (b, check.probs(zeros))
        if flagged:
            assert "octave low" in str(check.verdicts(zeros)[0])


def test_the_speech_detector_runs_beside_the_text_encoder() -> None:
    """The detector (ONNX Runtime, one thread) runs in a thread of its own while the text encoder
    runs: here the text encoder waits until the detector has started, which would never happen
    if they ran one after the other. The results are as before."""
    import threading

    started = threading.Event()

    class Beside(Featurizer):
        def text(self, texts: list[str]) -> np.ndarray:
            assert started.wait(10), "the speech detector did not run while the text encoder did"
            return super().text(texts)

        def speech(self, waves: list[np.ndarray], enough: float | None = None) -> np.ndarray:
            started.set()
            return super().speech(waves, enough)

    f = Beside({100: 1.2, 200: 0.05})
    utts = spoken(100, 200)
    feats = utterance_features(utts, f, {"text": 2, "audio": 3, "video": 0}, min_speech_s=0.15)
    assert set(feats[0]) == {"text", "audio"} and set(feats[1]) == {"text"} and f.audio_sizes == [100]


def test_a_text_encoder_failure_waits_for_the_detector_beside_it() -> None:
    """The text encoder's failure is the batch's (as before), and the detection started beside it
    has finished by then: no job left holding one of the detector's two threads while the batch
    is split and retried."""
    import threading
    import time

    started, finished = threading.Event(), threading.Event()

    class Failing(Featurizer):
        def text(self, texts: list[str]) -> np.ndarray:
            assert started.wait(10)  # the detection is running (one not yet started is cancelled)
            raise ValueError("the text encoder broke")

        def speech(self, waves: list[np.ndarray], enough: float | None = None) -> np.ndarray:
            started.set()
            time.sleep(0.2)
            finished.set()
            return super().speech(waves, enough)

    utts = spoken(100)
    with pytest.raises(ValueError, match="text encoder broke"):
        utterance_features(utts, Failing({100: 1.2}), {"text": 2, "audio": 3, "video": 0}, min_speech_s=0.15)
    assert finished.is_set()


def test_an_empty_transcript_is_not_encoded_and_says_why() -> None:
    """ "", spaces and control characters are no words: no text vector (they got a confident
    'neutral' once), ``ignored["text"]`` says why; a word, a digit or "?" is encoded."""
    from streams.pipeline import has_words

    f = Featurizer({100: 1.2})
    # symbols the English text model reads as unknown tokens are no words either; emoji of feelings are
    # (engines/features/emoji.py reads them as words)
    texts = [
        "",
        "   \n\t ",
        "\x00\x00\x00",
        "\u200b\ufeff",
        "\U0001f984\U0001f984 \u2605",
        "ok",
        "?",
        "42",
        "\U0001f621",
    ]
    utts = [Utterance("c", f"u{i}", i, "A", 0.0, parts={"text": Payload("text", t)}) for i, t in enumerate(texts)]
    feats = utterance_features(utts, f, {"text": 2, "audio": 3, "video": 0})
    assert [set(x) for x in feats] == [set()] * 5 + [{"text"}] * 4
    assert all(u.ignored["text"].startswith("no words") for u in utts[:5]) and utts[5].ignored == {}
    assert [has_words(t) for t in texts] == [False] * 5 + [True] * 4
    both = spoken(100)
    both[0].parts["text"] = Payload("text", " ")
    assert set(utterance_features(both, f, {"text": 2, "audio": 3, "video": 0}, min_speech_s=0.15)[0]) == {"audio"}


@pytest.mark.skipif(not _openvino(), reason="no openvino")
def test_openvino_gives_the_detectors_probabilities_and_two_threads_may_run_it_at_once(
    shared_data: Path, tmp_path: Path
) -> None:
    """The openvino runtime's workers run Silero by OpenVINO in fp32: the same frame
    probabilities as ONNX Runtime to 1e-5 (about 1e-7 measured) and the same seconds; two
    threads at once each get their own infer request."""
    from concurrent.futures import ThreadPoolExecutor

    ort, ov = SpeechDetector(), SpeechDetector(runtime="openvino")
    clips = [read_audio_file(str(p)) for p in sorted((shared_data / "ravdess" / "Actor_20").glob("*.flac"))[::9]]
    clips += [read_audio_file(p) for kind in ("noise", "silence") for p in probe_clips(kind, 0, tmp_path)]
    for clip in clips:
        a, b = ort.frame_probs(clip), ov.frame_probs(clip)
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-5
    want = ort.seconds(clips)
    np.testing.assert_array_equal(ov.seconds(clips), want)
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(ov.seconds, clips, enough) for enough in (None, MIN_SPEECH_S) * 3]
        for i, f in enumerate(runs):
            got = f.result()
            if i % 2 == 0:
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_array_equal(is_speech(got), is_speech(want))
    with pytest.raises(FeatureError, match="onnxruntime or openvino, not 'torch'"):
        SpeechDetector(runtime="torch")


@pytest.mark.skipif(not _openvino(), reason="no openvino")
def test_a_compiled_detector_that_computes_wrongly_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each start compares OpenVINO's frame probabilities on the probe clips with ONNX Runtime's:
    off by 0.01 (it would take some voices for silence) is refused with a configuration-grade
    error naming the other runtime."""
    import engines.features.openvino_cpu as openvino_cpu

    run = openvino_cpu.OpenVinoRunner.run

    def off(self: object, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        probs, h, c = run(self, outputs, feeds)  # type: ignore[arg-type]
        return [probs + 0.01, h, c]

    monkeypatch.setattr(openvino_cpu.OpenVinoRunner, "run", off)
    with pytest.raises(FeatureError, match="speech detector graph differs .* up to 1.0e-02.*--runtime onnxruntime"):
        SpeechDetector(runtime="openvino")


@pytest.mark.skipif(not _openvino(), reason="no openvino")
def test_a_graph_openvino_cannot_compile_is_a_clear_error(tmp_path: Path) -> None:
    from engines.features.openvino_cpu import compile_cpu

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(FeatureError, match="(?s)OpenVINO cannot compile broken.onnx: .*--runtime onnxruntime"):
        compile_cpu(bad, 1)


def test_the_worker_runs_the_detector_on_openvino_beside_openvinos_whisper(monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.features.speech as speech
    from engines.features.openvino_cpu import OpenVinoWhisperExtractor
    from engines.features.whisper_onnx import OnnxWhisperExtractor
    from streams.runtime import ModelFeaturizer

    made: list[str] = []

    def make(runtime: str = "onnxruntime") -> str:
        made.append(runtime)
        return runtime

    monkeypatch.setattr(speech, "SpeechDetector", make)
    for audio, want in (
        (object.__new__(OpenVinoWhisperExtractor), "openvino"),
        (object.__new__(OnnxWhisperExtractor), "onnxruntime"),
        (None, "onnxruntime"),
    ):
        featurizer = ModelFeaturizer(type("X", (), {"text": None, "audio": audio})())
        assert featurizer._detector() == want
    assert made == ["openvino", "onnxruntime", "onnxruntime"]


def test_a_wrong_g711_law_is_said_only_of_raw_g711() -> None:
    """A file names its own format and PCM has no law: 'wrong G.711 law?' of a pcm_s16le or WAV
    part (a telephone trial: noisy padded clips sent as pcm_s16le) told a producer nothing to do."""
    from engines.features.format_check import WRONG_LAW, FormatCheck

    f = Featurizer({16_000: 1.2})
    coef = np.zeros((5, 3))
    coef[3, 0] = 9.0  # vectors of ones sound like A-law read as mu-law
    f.format_check = FormatCheck("fake", np.zeros(3), np.ones(3), coef, np.zeros(5))
    dims = {"text": 2, "audio": 3, "video": 0}
    said = {}
    for encoding in ("pcm_mulaw", "pcm_alaw", "pcm_s16le", "wav", "flac", None):
        (utt,) = spoken(16_000)
        utt.parts["audio"] = Payload("wave", np.zeros(16_000, np.float32), encoding=encoding)
        utterance_features([utt], f, dims, min_speech_s=0.15)
        said[encoding] = utt.suspect.get("audio", "")
    assert all(said[e].startswith(WRONG_LAW) for e in ("pcm_mulaw", "pcm_alaw", None)), said
    assert said["pcm_s16le"] == said["wav"] == said["flac"] == "", said
