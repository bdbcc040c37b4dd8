"""The format check on the shipped default's audio vectors: speech sent right passes (RAVDESS
actors it never trained on, clean and through the telephone line, and espeak-ng speech slow and
fast); speech whose rate or G.711 law was declared wrongly is caught and the mistake named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from engines.features.format_check import (
    CLASSES,
    WRONG_LAW,
    WRONG_RATE,
    FormatCheck,
    Misdeclared,
    load_format_check,
    probe_path,
    speak,
)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def audio():  # type: ignore[no-untyped-def]
    from engines.registry import load_extractors

    ex = load_extractors("default", runtime="onnxruntime")
    assert ex.audio is not None
    return ex.audio


@pytest.fixture(scope="module")
def check(audio) -> FormatCheck:  # type: ignore[no-untyped-def]
    found = load_format_check(audio.id)
    assert found is not None, f"no probe for the default's audio extractor at {probe_path(audio.id)}"
    return found


def _dev_clips(shared_data, n: int = 6) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    from engines.datasets.ravdess import load_ravdess_clips
    from engines.features.audio import read_audio_file

    clips = load_ravdess_clips(shared_data, "dev")  # actors 17-20: the probe never trained on them
    return [read_audio_file(c.path) for c in clips[:: len(clips) // n][:n]]


def test_right_rates_pass_and_wrong_ones_are_caught_and_named(audio, check, shared_data) -> None:  # type: ignore[no-untyped-def]
    from engines.features.channel import TelephoneChannel

    line = TelephoneChannel(seed=3)
    clean = _dev_clips(shared_data)
    waves = clean + [line(w, str(i)) for i, w in enumerate(clean)]
    right = check.verdicts(audio.extract(waves))
    assert right == [None] * len(waves), right
    for name in CLASSES[1:]:
        verdicts = check.verdicts(audio.extract([Misdeclared(name)(w) for w in waves]))
        prefix, meant = {
            "8k-as-16k": (WRONG_RATE, "8 kHz sent as 16 kHz"),
            "16k-as-8k": (WRONG_RATE, "16 kHz sent as 8 kHz"),
            "alaw-as-mulaw": (WRONG_LAW, "A-law bytes sent as pcm_mulaw or mu-law as pcm_alaw"),
            "mulaw-as-alaw": (WRONG_LAW, "A-law bytes sent as pcm_mulaw or mu-law as pcm_alaw"),
        }[name]
        assert all(v is not None and v.startswith(prefix) and meant in v for v in verdicts), (name, verdicts)


def test_stereo_samples_sent_as_mono_sound_an_octave_low_and_are_caught(audio, check, shared_data) -> None:  # type: ignore[no-untyped-def]
    """Interleaved stereo read as mono: every instant twice, so the voice plays at half speed."""
    from engines.features.codecs import decode_audio, encode_audio

    for rate in (8000, 16000):
        waves = []
        for w in _dev_clips(shared_data):
            mono = np.frombuffer(encode_audio(w, 16000, "pcm_s16le", rate), "<i2")
            waves.append(decode_audio(np.repeat(mono, 2).astype("<i2").tobytes(), "pcm_s16le", rate))
        verdicts = check.verdicts(audio.extract(waves))
        assert all(v is not None and "octave low" in v for v in verdicts), (rate, verdicts)


def test_fast_and_slow_speech_at_the_right_rate_is_not_taken_for_a_wrong_rate(audio, check) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    line = "I have been waiting on hold for forty minutes and nobody can tell me where my refund is."
    voices = (("en-us", 90, 20), ("en-us+f3", 420, 80), ("en-gb+m2", 380, 30), ("en+f4", 120, 90))
    waves = [speak(line, voice, speed, pitch) for voice, speed, pitch in voices]
    assert check.verdicts(audio.extract(waves)) == [None] * len(waves)


def test_a_transcript_that_starts_with_a_dash_is_spoken_not_read_as_an_option() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    # On the command line, "-x" is espeak-ng's "write phoneme mnemonics" option and the rest was
    # spoken as something else; on stdin it is the transcript.
    dashed = speak("-x yes, I would like to cancel my order today", "en-us", 175, 50)
    plain = speak("x yes, I would like to cancel my order today", "en-us", 175, 50)
    assert abs(len(dashed) - len(plain)) < 0.15 * len(plain), (len(dashed), len(plain))
    assert len(plain) > 1.5 * 16000


def test_a_vector_that_is_not_finite_is_not_judged(check) -> None:  # type: ignore[no-untyped-def]
    x = np.full((1, check.mean.shape[0]), np.nan, dtype=np.float32)
    assert check.verdicts(x) == [None]


def test_an_extractor_without_a_probe_is_not_checked_and_a_wrong_file_is_refused(check, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert load_format_check("functionals-v1-000000000000", root=tmp_path) is None
    check.save(probe_path("functionals-v1-000000000000", tmp_path))  # another extractor's check under its name
    with pytest.raises(ValueError, match="not of functionals"):
        load_format_check("functionals-v1-000000000000", root=tmp_path)
    probe_path(check.extractor_id, tmp_path).write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a format check"):
        load_format_check(check.extractor_id, root=tmp_path)
    shipped = probe_path(check.extractor_id).read_bytes()
    probe_path(check.extractor_id, tmp_path).write_bytes(shipped[: len(shipped) // 2])  # cut short
    with pytest.raises(ValueError, match="not a format check"):
        load_format_check(check.extractor_id, root=tmp_path)
    three = FormatCheck(check.extractor_id, check.mean, check.scale, check.coef[:3], check.intercept[:3])
    three.save(probe_path(check.extractor_id, tmp_path))  # a check of other classes than these
    with pytest.raises(ValueError, match=f"of {len(CLASSES)} classes"):
        load_format_check(check.extractor_id, root=tmp_path)
    assert load_format_check(check.extractor_id, root=probe_path(check.extractor_id).parent) is not None
