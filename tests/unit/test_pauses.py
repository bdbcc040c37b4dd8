"""Long silences cut short before a voice is encoded (engines/features/pauses.py), and the padded
segments ``emostream evaluate --channel pauses`` measures it on (engines/features/channel.py)."""

from __future__ import annotations

import numpy as np

from engines.features.channel import Pauses, make_channel
from engines.features.pauses import EDGE_KEEP_S, GAP_KEEP_S, shorten_silences

RATE = 16000


def voice(seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    """A stand-in for speech: a 200 Hz tone with a little noise, ``level`` its amplitude."""
    t = np.arange(round(seconds * RATE)) / RATE
    noise = np.random.default_rng(seed).normal(0.0, 0.1, t.size)
    return (level * (np.sin(2 * np.pi * 200 * t) + noise)).astype(np.float32)


def hush(seconds: float, level: float = 0.0, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0.0, level, round(seconds * RATE))).astype(np.float32)


def test_a_clip_with_no_long_silence_is_left_as_it_is() -> None:
    clip = np.concatenate([hush(0.8), voice(1.0), hush(0.25), voice(1.0), hush(0.9)])
    assert shorten_silences(clip) is clip
    short = hush(0.2)  # (shorter than a pause kept: nothing to cut, silence or not)
    assert shorten_silences(short) is short


def test_silence_before_after_and_inside_the_speech_is_cut_to_what_the_models_learnt() -> None:
    a, b = voice(1.0, seed=2), voice(0.6, seed=3)
    clip = np.concatenate([hush(6.0), a, hush(3.0), b, hush(10.0)])
    out = shorten_silences(clip)
    kept = EDGE_KEEP_S + 1.0 + GAP_KEEP_S + 0.6 + EDGE_KEEP_S
    assert abs(out.size / RATE - kept) <= 0.02 + 1e-9
    start = round(EDGE_KEEP_S * RATE)
    assert not out[:start].any() and np.array_equal(out[start : start + a.size], a)  # the voice untouched
    assert not out[start + a.size : start + a.size + round(GAP_KEEP_S * RATE)].any()


def test_a_lines_idle_noise_is_silence_but_noise_near_the_voice_is_not() -> None:
    idle = np.concatenate([hush(5.0, level=0.1 * 10 ** (-45 / 20)), voice(1.0), hush(5.0, level=1e-4)])
    assert shorten_silences(idle).size / RATE <= EDGE_KEEP_S * 2 + 1.0 + 0.02
    loud = np.concatenate([hush(5.0, level=0.02), voice(1.0), hush(5.0, level=0.02)])  # 15 dB under
    assert shorten_silences(loud) is loud


def test_the_padded_channel_is_seeded_by_the_clip_and_pads_within_its_ranges() -> None:
    channel = make_channel("pauses", seed=3)
    assert isinstance(channel, Pauses) and channel.id.startswith("pauses-v1-")
    clip = voice(2.0)
    one, again, other = channel(clip, "k1"), channel(clip, "k1"), channel(clip, "k2")
    assert np.array_equal(one, again) and not np.array_equal(one[: other.size], other[: one.size])
    low = 2.0 + sum(span[0] for span in (channel.lead_s, channel.trail_s, channel.gap_s))
    high = 2.0 + sum(span[1] for span in (channel.lead_s, channel.trail_s, channel.gap_s))
    assert low <= one.size / RATE <= high and one.dtype == np.float32
    # the padding is the line's idle noise, 40-55 dB under the voice, which the cut removes again
    assert 0 < np.abs(one[:RATE]).max() < 0.1 * 10 ** (-30 / 20)
    assert shorten_silences(one).size / RATE <= 2.0 + 2 * EDGE_KEEP_S + GAP_KEEP_S + 0.08  # (20 ms frames)


def test_a_beep_or_a_click_does_not_make_a_quiet_voice_silence() -> None:
    """A recording notice's 200 ms beep at -3 dBFS before a voice at -40 dBFS: with the loudest
    100 ms as the reference, the voice was 'silence' and cut to a second (a review)."""
    rng = np.random.default_rng(0)
    quiet = (0.01 * rng.standard_normal(4 * RATE)).astype(np.float32)
    t = np.arange(RATE // 5) / RATE
    beep = (0.7 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    for clip in (np.concatenate([beep, quiet]), np.concatenate([quiet[:RATE], np.full(64, 0.9, np.float32), quiet])):
        assert shorten_silences(clip) is clip


def test_a_lines_noise_20_to_30_db_under_the_voice_is_silence_too() -> None:
    """A telephone trial: speech at -26 dBFS over line noise at -50 (24 dB) padded with 10 s at each
    end was not cut, and drifted to disgust with a false format warning."""
    rng = np.random.default_rng(4)
    speech = voice(3.0, level=0.07, seed=5)
    rms = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64))))
    for snr in (20.0, 24.0, 30.0):
        padded = np.concatenate([np.zeros(10 * RATE), speech, np.zeros(10 * RATE)])
        noisy = (padded + rng.normal(0.0, rms * 10 ** (-snr / 20), padded.size)).astype(np.float32)
        assert shorten_silences(noisy).size / RATE <= 3.0 + 2 * EDGE_KEEP_S + 0.04, snr
        zeros = np.concatenate([noisy, np.zeros(3 * RATE, np.float32)])  # exact zeros are no line's noise floor
        assert shorten_silences(zeros).size / RATE <= 3.0 + 2 * EDGE_KEEP_S + 0.04, snr


def test_speech_without_a_pause_is_not_cut_by_the_noise_floors_rule() -> None:
    """A review: the quietest syllables of speech without a pause made a 'floor', and 0.4-0.8 s of a
    10 s sentence was cut. A floor is a line's steady noise, not speech spread over 20-30 dB."""
    rng = np.random.default_rng(2)
    for spread in (20.0, 30.0):
        syllables = [
            voice(0.1, level=0.1 * 10 ** (-rng.uniform(0, spread) / 20), seed=int(rng.integers(1 << 30)))
            for _ in range(100)
        ]
        speech = np.concatenate(syllables)
        assert shorten_silences(speech) is speech, spread


def test_the_long_channel_says_a_clip_again_into_one_long_utterance() -> None:
    channel = make_channel("long", seed=1)
    clip = voice(3.2)
    one = channel(clip, "k")
    assert 15.0 <= one.size / RATE <= 45.0 and np.array_equal(one[: clip.size], clip)
    assert np.array_equal(one, channel(clip, "k")) and one.size != channel(clip, "other").size
