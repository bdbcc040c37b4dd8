"""Telephone and other audio encodings in, one 16 kHz waveform out (engines/features/codecs.py)."""

from __future__ import annotations

import base64
import io
import struct

import numpy as np
import pytest
import soundfile as sf

from engines.errors import AudioDecodeError, AudioTooLong
from engines.features import codecs
from engines.features.codecs import decode_audio, encode_audio
from streams.schemas import AudioPart


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def g711_wav(codes: bytes, fmt: int) -> bytes:
    """A WAVE file holding G.711 codes as they are (format 7 mu-law, 6 A-law), 8 kHz mono."""
    fmt_chunk = struct.pack("<HHIIHHH", fmt, 1, 8000, 8000, 1, 8, 0)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"fact" + struct.pack("<II", 4, len(codes)) + b"data" + struct.pack("<I", len(codes)) + codes
    return b"RIFF" + struct.pack("<I", len(body)) + body


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(("encoding", "fmt"), [("pcm_mulaw", 7), ("pcm_alaw", 6)])
def test_g711_tables_agree_with_libsndfile_for_every_code(encoding: str, fmt: int) -> None:
    codes = bytes(range(256))
    theirs, rate = sf.read(io.BytesIO(g711_wav(codes, fmt)), dtype="int16")
    assert rate == 8000
    np.testing.assert_array_equal(codecs.g711_decode(np.frombuffer(codes, np.uint8), encoding), theirs)


@pytest.mark.parametrize("encoding", ["pcm_mulaw", "pcm_alaw"])
def test_g711_encoder_inverts_the_decoder(encoding: str) -> None:
    codes = np.arange(256, dtype=np.uint8)
    back = codecs.g711_encode(codecs.g711_decode(codes, encoding), encoding)
    same_level = codecs.g711_decode(back, encoding) == codecs.g711_decode(codes, encoding)
    assert same_level.all()  # mu-law has two codes for 0: either is right
    assert (back == codes).mean() >= 255 / 256


@pytest.mark.parametrize("encoding", ["pcm_mulaw", "pcm_alaw"])
def test_a_telephone_tone_comes_out_at_16_khz_with_its_pitch_and_level(encoding: str) -> None:
    wave8k = tone(440.0, 8000)
    data = codecs.g711_encode(np.round(wave8k * 32767).astype(np.int16), encoding).tobytes()
    out = decode_audio(data, encoding)
    assert out.dtype == np.float32 and out.shape == (16000,)
    assert abs(peak_hz(out, 16000) - 440.0) < 2.0
    ideal = tone(440.0, 16000)
    core = slice(400, -400)  # the resampler's filter edges aside
    noise = out[core] - ideal[core]
    snr_db = 10 * np.log10(np.mean(ideal[core] ** 2) / np.mean(noise**2))
    assert snr_db > 30, snr_db  # G.711 is about 38 dB on a loud tone


def test_downsampling_filters_what_16_khz_cannot_hold() -> None:
    """A 10 kHz tone at 48 kHz is above 16 kHz's Nyquist: it must vanish, not alias to 6 kHz."""
    loud = tone(1000.0, 48000)
    high = tone(10_000.0, 48000)
    pcm = lambda w: np.round(w * 32767).astype("<i2").tobytes()  # noqa: E731
    kept = decode_audio(pcm(loud), "pcm_s16le", 48000)
    gone = decode_audio(pcm(high), "pcm_s16le", 48000)
    assert kept.shape == gone.shape == (16000,)
    assert abs(peak_hz(kept, 16000) - 1000.0) < 2.0
    assert 20 * np.log10(np.std(gone) / np.std(kept)) < -40


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [("pcm_s16le", 8000), ("pcm_s16le", 16000), ("pcm_s16le", 44100), ("pcm_mulaw", 8000), ("pcm_alaw", 8000),
     ("flac", 8000), ("flac", 48000), ("wav", 8000), ("wav", 22050)],
)  # fmt: skip
def test_every_encoding_round_trips_at_16_khz(encoding: str, rate: int) -> None:
    wave = tone(300.0, 16000, seconds=0.8) + tone(1200.0, 16000, seconds=0.8, amp=0.2)
    data = encode_audio(wave, 16000, encoding, rate)
    out = decode_audio(data, encoding, rate)
    assert abs(out.shape[0] - 12800) <= 2
    n = min(out.shape[0], 12800)
    assert np.corrcoef(out[200 : n - 200], wave[200 : n - 200])[0, 1] > 0.99


def test_a_wav_with_channels_at_its_own_rate_needs_no_declared_rate() -> None:
    stereo = np.stack([tone(500.0, 44100), tone(500.0, 44100)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 44100, format="WAV", subtype="PCM_16")
    out = decode_audio(buf.getvalue(), "wav")
    assert out.shape == (16000,) and abs(peak_hz(out, 16000) - 500.0) < 2.0


@pytest.mark.parametrize(
    ("data", "encoding", "rate", "message"),
    [
        (b"\xff" * 8000, "pcm_mulaw", 16000, "8000 Hz"),
        (b"\x00\x01" * 8000, "pcm_s16le", 12345, "not supported"),
        (b"\xff" * 500, "pcm_alaw", None, "too short"),
        (encode_audio(tone(300.0, 16000), 16000, "flac"), "wav", None, "message says wav"),
        (encode_audio(tone(300.0, 16000), 16000, "wav", 8000), "wav", 16000, "8000 Hz"),
    ],
)
def test_what_cannot_be_decoded_says_why(data: bytes, encoding: str, rate: int | None, message: str) -> None:
    with pytest.raises(AudioDecodeError, match=message):
        decode_audio(data, encoding, rate)


@pytest.mark.parametrize(
    ("data", "encoding", "rate"),
    [
        (b"\xff" * 8000 * 61, "pcm_mulaw", None),  # 61 s at one byte a sample
        (b"\x00\x00" * 8000 * 61, "pcm_s16le", 8000),
        (encode_audio(np.zeros(8000 * 61), 8000, "wav", 8000), "wav", None),  # from the header
    ],
)
def test_length_is_checked_before_decoding(data: bytes, encoding: str, rate: int | None) -> None:
    with pytest.raises(AudioTooLong, match="61.0 s > 60 s"):
        decode_audio(data, encoding, rate, max_seconds=60)


def test_the_message_schema_offers_exactly_the_codecs_encodings() -> None:
    offered = AudioPart.model_json_schema()["properties"]["encoding"]["enum"]
    assert sorted(offered) == sorted([*codecs.ENCODINGS, "features"])


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT", "ULAW"])
def test_a_wav_cut_short_is_refused_not_decoded_in_part(subtype: str) -> None:
    buf = io.BytesIO()
    sf.write(buf, tone(220.0, 16_000), 16_000, format="WAV", subtype=subtype)
    whole = buf.getvalue()
    assert decode_audio(whole, "wav").shape == (16_000,)
    with pytest.raises(AudioDecodeError, match="truncated wav payload: its header declares"):
        decode_audio(whole[: len(whole) // 2], "wav")


@pytest.mark.parametrize("placeholder", [0xFFFFFFFF, 0x7FFFF000, 0x7FFFFFFF, 0x80000000, 0])
def test_a_wav_whose_writer_did_not_know_its_length_still_decodes(placeholder: int) -> None:
    codes = encode_audio(tone(300.0, 8000), 8000, "pcm_mulaw")
    data = bytearray(g711_wav(codes, 7))
    at = data.index(b"data") + 4
    data[at : at + 4] = struct.pack("<I", placeholder)  # a live writer's (SoX to a pipe: 0x7FFFF000)
    assert decode_audio(bytes(data), "wav").shape[0] == 16000  # every sample (0: none were read)


def test_an_empty_data_chunk_before_another_chunk_is_empty() -> None:
    """A data chunk of size 0 followed by samples is a writer's placeholder; followed by another chunk
    (a LIST of tags), it is empty: the tags are not heard as samples."""
    fmt_chunk = struct.pack("<HHIIHHH", 7, 1, 8000, 8000, 1, 8, 0)
    tags = b"LIST" + struct.pack("<I", 4000) + b"INFO" + b"x" * 3996
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + b"data" + struct.pack("<I", 0) + tags
    with pytest.raises(AudioDecodeError, match="too short"):
        decode_audio(b"RIFF" + struct.pack("<I", len(body)) + body, "wav")


def _voice_like(rate: int, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A quiet start, then a buzz with a moving pitch and formant-like partials, and breath noise:
    what the high-byte test must pass in the right byte order at 8 and 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.2 + 0.15 * np.sin(2 * np.pi * 3 * t))
    voice[: rate // 2] = 0.0
    return voice + rng.standard_normal(t.size) * 0.002


@pytest.mark.parametrize("rate", [8000, 16000])
def test_big_endian_pcm_is_refused_and_little_endian_passes(rate: int) -> None:
    pcm = encode_audio(_voice_like(rate), rate, "pcm_s16le")
    assert decode_audio(pcm, "pcm_s16le", rate).size > 0
    swapped = np.frombuffer(pcm, "<i2").byteswap().tobytes()
    with pytest.raises(AudioDecodeError, match="look big-endian.*swap each sample's two bytes"):
        decode_audio(swapped, "pcm_s16le", rate)


@pytest.mark.parametrize(
    "name",
    [
        "white noise",
        "loud white noise",
        "near silence",
        "hum",
        "square wave",
        "full-scale square wave",
        "clipped beep",
        "8-bit audio widened",
    ],
)
def test_sounds_that_are_not_speech_are_not_taken_for_big_endian(name: str) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    samples = {
        "white noise": rng.standard_normal(t.size) * 3000,
        "loud white noise": np.clip(rng.standard_normal(t.size) * 20000, -32768, 32767),
        "near silence": rng.standard_normal(t.size) * 3,
        "hum": 3000 * np.sin(2 * np.pi * 50 * t) + rng.standard_normal(t.size) * 30,
        "square wave": np.sign(np.sin(2 * np.pi * 440 * t)) * 30000,
        "full-scale square wave": np.where(np.sin(2 * np.pi * 440 * t) >= 0, 32767, -32768),
        "clipped beep": np.clip(np.sin(2 * np.pi * 1000 * t) * 60000, -32768, 32767),
        "8-bit audio widened": np.round(np.sin(2 * np.pi * 300 * t) * 100) * 256,  # low bytes all 0
    }[name]
    pcm = samples.astype("<i2").tobytes()
    assert decode_audio(pcm, "pcm_s16le", 16000).size == t.size


def float_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_float_samples_beyond_full_scale_are_refused_or_clipped() -> None:
    """A float WAV of speech scaled by 1e20 decoded, passed the speech gate and overflowed Whisper's
    front end: a NaN vector, and the utterance dead-lettered, transcript and all."""
    with pytest.raises(AudioDecodeError, match=r"float samples reach 1e\+20, beyond full scale"):
        decode_audio(float_wav(tone(300.0, 16000, amp=1e20)), "wav")
    with pytest.raises(AudioDecodeError, match="beyond full scale"):
        decode_audio(float_wav(tone(300.0, 16000, amp=20000.0)), "wav")  # int16 values written as floats
    out = decode_audio(float_wav(tone(300.0, 16000, amp=1.5)), "wav")  # a float mix that overshoots a little
    assert out.max() <= 1.0 and out.min() >= -1.0 and out.max() > 0.99
    same = tone(300.0, 16000, amp=0.5).astype(np.float32)  # within full scale: as sent (what is below 2**-24 is 0)
    assert np.array_equal(decode_audio(float_wav(same), "wav"), np.where(np.abs(same) < 2.0**-24, 0, same))


def test_subnormal_float_samples_are_read_as_silence() -> None:
    """Subnormal floats cost the encoders about 40 times more a sample: 23 s of them in a 1 MB
    message held the speech detector 2 s."""
    rng = np.random.default_rng(0)
    tiny = rng.standard_normal(8000).astype(np.float32) * np.float32(1e-39)
    assert (np.abs(tiny[tiny != 0]) < np.finfo(np.float32).tiny).all()  # subnormal
    out = decode_audio(float_wav(tiny, 8000), "wav")
    assert out.shape == (16000,) and not out.any()
    quiet = rng.standard_normal(16000).astype(np.float32) * np.float32(1e-4)  # a quiet line stays as it is
    assert np.array_equal(decode_audio(float_wav(quiet), "wav"), np.where(np.abs(quiet) < 2.0**-24, 0, quiet))


def test_many_channels_are_averaged_block_by_block() -> None:
    """Eight channels of 60 s at 48 kHz, a 23 KB FLAC of DC, held all eight until the end (+187 MB)."""
    import tracemalloc

    wave = np.full((48000 * 60, 8), 0.25, dtype=np.float32)
    wave[:, 1] = -0.25
    buf = io.BytesIO()
    sf.write(buf, wave, 48000, format="FLAC", subtype="PCM_16")
    data = buf.getvalue()
    del wave
    tracemalloc.start()
    out = decode_audio(data, "flac")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (16000 * 60,) and abs(float(out[1000:-1000].mean()) - (7 * 0.25 - 0.25) / 8) < 1e-3
    assert peak < 60e6, f"{peak / 1e6:.0f} MB"  # the mono 48 kHz array (11.5 MB) and its 16 kHz copy, not 8 channels


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("WAVEX", "FLOAT"), ("WAVEX", "PCM_24"), ("WAVEX", "PCM_16"), ("RF64", "PCM_16")]
)
def test_extensible_and_rf64_wav_files_are_wav(fmt: str, subtype: str) -> None:
    """An operator's trial: ffmpeg writes WAVE_FORMAT_EXTENSIBLE for more than 16 bits or 2 channels,
    recorders RF64; both were refused as 'payload is WAVEX, message says wav', with no encoding to send."""
    buf = io.BytesIO()
    sf.write(buf, tone(300.0, 16000), 16000, format=fmt, subtype=subtype)
    out = decode_audio(buf.getvalue(), "wav")
    assert out.shape == (16000,) and abs(peak_hz(out, 16000) - 300.0) < 2.0


@pytest.mark.parametrize(("container", "raw"), [("wav", "pcm_s16le"), ("flac", "pcm_s16le"), ("wav", "pcm_mulaw")])
def test_a_file_sent_as_raw_samples_is_refused(container: str, raw: str) -> None:
    """An operator's trial: a whole WAV file sent as pcm_s16le decoded, its 44-byte header heard as a
    click that changed the label."""
    data = encode_audio(tone(300.0, 8000), 8000, container, 8000)
    with pytest.raises(AudioDecodeError, match=f"payload is a {container} file, message says {raw}: send it as"):
        decode_audio(data, raw, 8000)
    with pytest.raises(AudioDecodeError, match="odd length|too short"):
        decode_audio(b"fLaC", raw, 8000)  # a signature's start alone (it raised IndexError)
    noise = np.random.default_rng(0).integers(-3000, 3000, 16000, dtype=np.int16).tobytes()
    assert decode_audio(noise, "pcm_s16le", 16000).shape == (16000,)  # raw samples pass


@pytest.mark.parametrize(("encoding", "at", "size"), [("wav", 24, 4), ("flac", 18, 3)])
def test_a_header_with_a_sample_rate_of_0_hz_is_said_so(encoding: str, at: int, size: int) -> None:
    """libsndfile says only "Internal error : SF_INFO struct incomplete." (an operator's trial: that
    reached the dead letter as the whole reason)."""
    out = io.BytesIO()
    sf.write(out, np.zeros(16000), 16000, format=encoding.upper(), subtype="PCM_16")
    data = bytearray(out.getvalue())
    data[at : at + size] = bytes(size)  # the sample rate (FLAC: its 20 bits and the channels' first)
    with pytest.raises(AudioDecodeError, match=r"header's sample rate \(0 Hz, or out of range\), channel count"):
        codecs.decode_as_sent(bytes(data), encoding, None, max_seconds=60)


def _two_channels(left: np.ndarray, right: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], axis=1), 8000, format=fmt, subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize("encoding", ["wav", "flac"])
def test_channels_that_carry_different_voices_are_said_to_be_mixed_copies_or_one_silent_are_not(
    encoding: str,
) -> None:
    """A call recorded agent left, customer right, sent as one part, was labelled as the customer's
    from both voices, and nothing said so (a telephone trial); the worker's payload notes it."""
    from streams.schemas import AudioPart
    from streams.settings import LimitSettings
    from streams.validate import to_payload

    rng = np.random.default_rng(5)
    t = np.arange(16000) / 8000
    agent = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.3 * rng.standard_normal(t.size))
    customer = 0.3 * np.sin(2 * np.pi * 260 * t + 1.0) * (1 + 0.3 * rng.standard_normal(t.size))
    fmt = encoding.upper()

    def note(data: bytes, block: int = 1 << 16) -> str | None:
        return codecs._decode_container(data, encoding, None, None, block)[2]

    two_voices = _two_channels(agent, customer, fmt)
    said = note(two_voices)
    assert said is not None and said.startswith("channels mixed: 2 channels that carry different sound")
    assert "send each speaker's channel as a part of its own" in said
    assert note(two_voices, block=1000) == said  # read block by block, as a long file is
    if encoding == "flac":  # a live encoder's stream: no length in its STREAMINFO (read whole, it was not said)
        live = bytearray(two_voices)
        live[21] &= 0xF0
        live[22:26] = bytes(4)
        assert codecs.decode_noted(bytes(live), "flac")[2] == said
    assert note(_two_channels(agent, agent, fmt)) is None  # a copy
    assert note(_two_channels(agent, agent * 0.01, fmt)) is None  # one sounds (-40 dB)
    assert note(_two_channels(agent, np.zeros_like(agent), fmt)) is None
    assert note(_two_channels(agent, np.full_like(agent, 0.5), fmt)) is None  # a DC offset is no sound
    opposite = note(_two_channels(agent, -agent, fmt))
    assert opposite is not None and opposite.startswith("channels in opposite phase")
    mono = io.BytesIO()
    sf.write(mono, agent, 8000, format=fmt, subtype="PCM_16")
    assert codecs.decode_noted(mono.getvalue(), encoding)[2] is None
    assert codecs.decode_noted(b"\x00\x01" * 800, "pcm_s16le", 8000)[2] is None  # raw PCM has one channel
    part = AudioPart(
        call_id="c", utterance_id="u", seq=0, encoding=encoding, data=base64.b64encode(two_voices).decode()
    )
    payload = to_payload(part, {"text": 1, "audio": 1, "video": 0}, LimitSettings())
    assert payload.kind == "wave" and payload.note == said


def test_raw_samples_sent_as_wav_and_a_flac_cut_short_are_refused_with_what_to_do() -> None:
    """A telephone trial: 'Format not recognised' and 'flac decoder lost sync' said nothing to act on."""
    with pytest.raises(AudioDecodeError, match="no RIFF/WAVE header: raw samples. send G.711 as pcm_mulaw"):
        decode_audio(b"\xff\x7f" * 8000, "wav")
    whole = encode_audio(0.3 * np.sin(np.arange(32000) / 5.0), 16000, "flac")
    with pytest.raises(AudioDecodeError, match="the stream is cut short or damaged .*send the whole file"):
        decode_audio(whole[: len(whole) // 2], "flac")
    mp3 = io.BytesIO()
    sf.write(mp3, 0.3 * np.sin(np.arange(16000) / 5.0), 16000, format="MP3")
    with pytest.raises(AudioDecodeError, match="payload is MP3, message says wav"):  # still told apart
        decode_audio(mp3.getvalue(), "wav")


def test_a_files_header_is_judged_as_the_workers_judge_the_file() -> None:
    """What a producer refuses before sending (client.publisher.refused) from a WAV or FLAC header:
    only what the workers refuse too (a review found RIFX, a wrong byte_rate and 1102 frames at
    11025 Hz refused though the workers take them, and a LIST chunk holding "data" let a 0.05 s
    file through)."""

    def made(seconds: float, rate: int = 8000, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
        buf = io.BytesIO()
        sf.write(buf, 0.3 * np.sin(np.arange(round(seconds * rate)) / 3.0), rate, format=fmt, subtype=subtype)
        return buf.getvalue()

    def judged(data: bytes, encoding: str = "wav") -> str | None:
        said = codecs.header_problem(data, encoding)
        try:
            codecs.decode_audio(data, encoding)
            worker = None
        except AudioDecodeError as exc:
            worker = str(exc)
        assert (said is None) == (worker is None), (said, worker)  # the two agree
        return said

    assert judged(made(0.05)) == "audio too short: 0.0500 s, need 0.1 s"
    long = made(61.0)
    assert (
        codecs.header_problem(long, "wav", max_seconds=60)
        == "audio of 61.0 s is over limits.max_audio_s (60 s): split it"
    )
    assert codecs.header_problem(long, "wav", max_seconds=61) is None and codecs.header_problem(long, "wav") is None
    with pytest.raises(AudioTooLong):
        codecs.decode_audio(long, "wav", max_seconds=60)
    assert judged(made(0.05, fmt="FLAC"), "flac") == "audio too short: 0.0500 s, need 0.1 s"
    assert judged(made(1102 / 11025, 11025)) is None  # int(0.1 * 11025) frames, as the workers count
    assert judged(made(0.5, subtype="IMA_ADPCM")) is None  # compressed: its blocks are not frames
    riff = made(0.5)
    big = io.BytesIO()
    sf.write(big, 0.3 * np.sin(np.arange(4000) / 3.0), 8000, format="WAV", subtype="PCM_16", endian="BIG")
    assert big.getvalue()[:4] == b"RIFX" and judged(big.getvalue()) is None
    wrong_rate = bytearray(riff)
    at = wrong_rate.find(b"fmt ")
    wrong_rate[at + 16 : at + 20] = (160000).to_bytes(4, "little")  # byte_rate: the length is not read from it
    assert codecs.header_problem(bytes(wrong_rate), "wav") is None  # (libsndfile says what is wrong with it)
    short = made(0.05)
    listed = short[:12] + b"LIST" + (12).to_bytes(4, "little") + b"INFOmetadata" + short[12:]
    listed = listed[:4] + (len(listed) - 8).to_bytes(4, "little") + listed[8:]
    assert judged(listed) == "audio too short: 0.0500 s, need 0.1 s"
    assert judged(made(0.5, fmt="FLAC")) == "payload is a flac file, message says wav: send it as flac"
    assert judged(riff, "flac") == "payload is a wav file, message says flac: send it as wav"
    assert judged(b"\xff\x7f" * 4000) == f"wav payload: {codecs.NOT_A_WAV}"
    mp3 = io.BytesIO()
    sf.write(mp3, 0.3 * np.sin(np.arange(16000) / 5.0), 16000, format="MP3")
    assert codecs.header_problem(mp3.getvalue(), "wav") == (
        "wav payload: the payload is MP3, not WAV: convert it to WAV or FLAC, or send its samples as raw PCM or G.711"
    )
