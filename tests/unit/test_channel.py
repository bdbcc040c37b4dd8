"""The simulated telephone line (engines/features/channel.py): what a contact center's audio
loses, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from engines.features.channel import TelephoneChannel, make_channel

SR = 16_000


def band_energy(wave: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / SR)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].sum())


def speechlike(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Harmonics of a 150 Hz voice up to 7 kHz, amplitude-modulated like syllables."""
    t = np.arange(int(seconds * SR)) / SR
    voice = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 47))
    return (0.3 * voice / np.abs(voice).max() * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def test_the_line_keeps_the_telephone_band_and_removes_the_rest() -> None:
    clean = speechlike()
    line = TelephoneChannel(snr_db=(40.0,), gain_db=0.0, packet_loss=0.0)(clean, "clip")
    assert line.shape == clean.shape and line.dtype == np.float32
    kept = band_energy(line, 500, 3000) / band_energy(clean, 500, 3000)
    above = band_energy(line, 4500, 8000) / band_energy(clean, 4500, 8000)
    below = band_energy(line, 50, 200) / band_energy(clean, 50, 200)
    assert 0.5 < kept < 1.5, kept
    assert above < 1e-3, above  # 8 kHz sampling: nothing above 4 kHz survives
    assert below < 0.1, below  # the handset's high-pass takes the fundamental


def test_a_clip_always_meets_the_same_line_and_other_clips_or_seeds_another() -> None:
    clean = speechlike()
    ch = TelephoneChannel(seed=3)
    np.testing.assert_array_equal(ch(clean, "a"), ch(clean, "a"))
    assert not np.array_equal(ch(clean, "a"), ch(clean, "b"))
    assert not np.array_equal(ch(clean, "a"), TelephoneChannel(seed=4)(clean, "a"))
    assert ch.id != TelephoneChannel(seed=4).id and ch.id == TelephoneChannel(seed=3).id


def test_lost_packets_are_silent_20_ms_holes() -> None:
    clean = speechlike(seconds=4.0)
    line = TelephoneChannel(snr_db=(60.0,), gain_db=0.0, packet_loss=0.2)(clean, "lossy")
    frames = line[: len(line) // 320 * 320].reshape(-1, 320)  # 20 ms at 16 kHz
    silent = (np.abs(frames[:, 40:-40]).max(axis=1) < 1e-3).mean()  # the resampler smears the edges
    assert 0.1 < silent < 0.3, silent


def test_noise_follows_the_snr() -> None:
    quiet = TelephoneChannel(snr_db=(30.0,), gain_db=0.0, packet_loss=0.0, low_hz=50.0, high_hz=3990.0)
    loud = TelephoneChannel(snr_db=(0.0,), gain_db=0.0, packet_loss=0.0, low_hz=50.0, high_hz=3990.0)
    silence = np.zeros(SR, dtype=np.float32)
    assert np.abs(quiet(silence, "s")).max() < 1e-3  # no signal, no noise: SNR is relative
    assert np.std(loud(speechlike(), "x")) > np.std(quiet(speechlike(), "x"))


def test_evaluate_channels() -> None:
    assert make_channel("clean") is None
    assert isinstance(make_channel("telephone", seed=2), TelephoneChannel)
    with pytest.raises(ValueError, match="unknown channel"):
        make_channel("carrier pigeon")
