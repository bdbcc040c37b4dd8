"""Audio decoding errors and the handcrafted extractor."""

from __future__ import annotations

import io

import numpy as np
import pytest

from engines.errors import AudioDecodeError, EngineError
from engines.features.audio import AudioFeatureExtractor
from engines.features.codecs import decode_audio

SR = 16_000


def tone(freq: float, seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def flac_bytes(wave: np.ndarray, rate: int = SR) -> bytes:
    sf = pytest.importorskip("soundfile")
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def test_pcm_roundtrip() -> None:
    w = tone(220.0)
    pcm = (w * 32767).astype("<i2").tobytes()
    out = decode_audio(pcm, "pcm_s16le", SR)
    assert out.dtype == np.float32 and out.shape == w.shape
    assert np.abs(out - w).max() < 1e-3


def test_flac_roundtrip_and_stereo_to_mono() -> None:
    w = tone(220.0)
    assert np.abs(decode_audio(flac_bytes(w), "flac", SR) - w).max() < 1e-3
    stereo = np.stack([w, w], axis=1)
    out = decode_audio(flac_bytes(stereo), "flac", SR)
    assert out.ndim == 1 and out.shape[0] == w.shape[0]


@pytest.mark.parametrize(
    ("data", "encoding", "rate"),
    [
        (b"this is not audio at all, just some garbage bytes " * 20, "flac", SR),
        (bytes(range(256)) * 8, "flac", SR),
        (b"", "pcm_s16le", SR),
        (b"", "flac", SR),
        (b"\x01\x02\x03", "pcm_s16le", SR),  # odd length
        (b"\x00\x01" * 100, "pcm_s16le", SR),  # 100 samples: too short
        (b"\x00\x01" * 16000, "pcm_s16le", 12345),  # unsupported rate
        (b"\x00" * 16000, "pcm_mulaw", SR),  # G.711 is 8 kHz
        (b"\x00\x01" * 16000, "mp3", SR),  # unsupported encoding
    ],
)
def test_decode_errors(data: bytes, encoding: str, rate: int) -> None:
    with pytest.raises(AudioDecodeError):
        decode_audio(data, encoding, rate)


def test_flac_rate_must_match_message() -> None:
    with pytest.raises(AudioDecodeError, match="Hz"):
        decode_audio(flac_bytes(tone(220.0), rate=8000), "flac", SR)


def test_truncated_flac_is_an_error() -> None:
    data = flac_bytes(tone(220.0))
    with pytest.raises(AudioDecodeError):
        decode_audio(data[:40], "flac", SR)


def test_error_tree() -> None:
    assert issubclass(AudioDecodeError, EngineError)


def test_extractor_shape_determinism_and_batch_independence() -> None:
    pytest.importorskip("torch")
    ex = AudioFeatureExtractor()
    rng = np.random.default_rng(0)
    waves = [tone(150.0, 1.3), (0.1 * rng.standard_normal(24_000)).astype(np.float32), tone(300.0, 0.2)]
    a = ex.extract(waves)
    assert a.shape == (3, ex.dim) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(ex.extract(waves), a)
    np.testing.assert_allclose(ex.extract(waves[1:2])[0], a[1], rtol=1e-5, atol=1e-5)
    assert ex.extract([]).shape == (0, ex.dim)


def test_pitch_proxy_tracks_octaves() -> None:
    pytest.importorskip("torch")
    ex = AudioFeatureExtractor()
    c = ex.config
    pitch_mean = 2 * c.n_mels + 5 * c.n_mfcc + 5 * 6  # index of mean log2 f0 over voiced frames
    low, high = ex.extract([tone(110.0), tone(220.0)])
    assert high[pitch_mean] - low[pitch_mean] == pytest.approx(1.0, abs=0.1)
    assert low[pitch_mean] == pytest.approx(np.log2(110.0), abs=0.1)


def test_loud_and_quiet_copies_differ_only_in_level_features() -> None:
    pytest.importorskip("torch")
    ex = AudioFeatureExtractor()
    w = tone(200.0) + 0.01 * np.random.default_rng(1).standard_normal(SR).astype(np.float32)
    a, b = ex.extract([w, 0.5 * w])
    c = ex.config
    mfcc_std = slice(2 * c.n_mels + c.n_mfcc, 2 * c.n_mels + 2 * c.n_mfcc)
    np.testing.assert_allclose(a[mfcc_std], b[mfcc_std], rtol=1e-3, atol=1e-3)
    assert not np.allclose(a[: c.n_mels], b[: c.n_mels])  # log-mel means move with level


def _flac(seconds: float) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16000), dtype=np.int16), 16000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def test_a_flac_bomb_is_refused_from_its_header_before_decoding() -> None:
    """38 KB of FLAC that says 600 s: refused without decoding (no 38 MB array)."""
    import tracemalloc

    from engines.errors import AudioTooLong

    data = _flac(600.0)
    assert len(data) < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLong, match="600.0 s > 60 s"):
            decode_audio(data, "flac", 16000, max_seconds=60.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_a_flac_whose_header_hides_its_length_is_decoded_no_further_than_the_limit() -> None:
    from engines.errors import AudioTooLong

    data = bytearray(_flac(90.0))
    assert data[:4] == b"fLaC"
    data[21] &= 0xF0  # STREAMINFO total samples (36 bits from byte 21's low nibble): 0 = unknown
    data[22:26] = b"\0\0\0\0"
    with pytest.raises(AudioTooLong):
        decode_audio(bytes(data), "flac", 16000, max_seconds=60.0)
    # no limit: all of it (a live encoder's stream of unknown length; libsndfile drops the last partial block)
    assert 90 * 16000 - 1024 < decode_audio(bytes(data), "flac", 16000).shape[0] <= 90 * 16000


def test_pcm_longer_than_the_limit_is_refused_by_its_size() -> None:
    from engines.errors import AudioTooLong

    with pytest.raises(AudioTooLong):
        decode_audio(b"\0\0" * (16000 * 3), "pcm_s16le", 16000, max_seconds=2.0)
    assert decode_audio(b"\0\0" * (16000 * 2), "pcm_s16le", 16000, max_seconds=2.0).shape == (32000,)
