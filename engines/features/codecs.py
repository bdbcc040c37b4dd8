"""Audio on the wire <-> the one waveform the models hear: float32 mono at 16 kHz.

Encodings an audio message may carry (``AudioPart.encoding``):

==============  ==========================================  ===============================
encoding        bytes                                       sample rate
==============  ==========================================  ===============================
``pcm_s16le``   raw little-endian int16, mono               declared; any of :data:`RATES`
``pcm_mulaw``   G.711 mu-law, one byte a sample, mono       8 kHz (G.711's rate)
``pcm_alaw``    G.711 A-law, one byte a sample, mono        8 kHz
``flac``        a FLAC stream (channels averaged)           its header's; any of :data:`RATES`
``wav``         a RIFF/WAVE file (PCM, float, mu/A-law)     its header's; any of :data:`RATES`
==============  ==========================================  ===============================

Contact-center audio is usually 8 kHz G.711 (Amazon Connect, Twilio Media Streams, SIPREC
recorders); it is resampled once, here, with scipy's polyphase FIR resampler
(:func:`resample`), so the extractors only ever see 16 kHz.

A message's length is checked *before* it is decoded (from its byte count, or a container's
header), and a container whose header hides its length is decoded no further than the limit: a
small compressed message never becomes a huge array. :func:`encode_audio` is the inverse, used by
``emostream feed`` to send any encoding and by the telephone-channel simulation.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from math import gcd

import numpy as np

from engines.errors import AudioDecodeError, AudioTooLong

SAMPLE_RATE = 16_000  # what every extractor hears
G711_RATE = 8_000
RATES: tuple[int, ...] = (8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
ENCODINGS: tuple[str, ...] = ("pcm_s16le", "pcm_mulaw", "pcm_alaw", "flac", "wav")
G711: tuple[str, ...] = ("pcm_mulaw", "pcm_alaw")  # raw G.711, at 8 kHz
CONTAINERS = {"flac": "FLAC", "wav": "WAV"}  # the format each is written in
#: the formats libsndfile reads each as: a WAV with the extensible header (what ffmpeg writes for more than
#: 16 bits or 2 channels) and an RF64 file (a WAV past 4 GB's header, that recorders write) are WAV files
READ_AS = {"flac": ("FLAC",), "wav": ("WAV", "WAVEX", "RF64")}
MIN_SECONDS = 0.1


_PCM_SCALE = np.float32(2.0**-15)


def decode_audio(
    data: bytes, encoding: str, sample_rate: int | None = None, max_seconds: float | None = None
) -> np.ndarray:
    """Decode ``data`` to float32 mono at 16 kHz, shape (N,); raise :class:`AudioDecodeError`.

    ``sample_rate`` is the rate the producer declared: needed for ``pcm_s16le`` (16 kHz if None),
    and if given for the others it must agree with G.711's 8 kHz or the container's header.
    ``max_seconds`` bounds the audio's length (:class:`AudioTooLong`), checked before decoding.
    """
    return to_model_rate(*decode_as_sent(data, encoding, sample_rate, max_seconds))


def to_model_rate(wave: np.ndarray, rate: int) -> np.ndarray:
    """:func:`decode_as_sent`'s samples at the models' 16 kHz, contiguous float32."""
    return np.ascontiguousarray(resample(wave, rate, SAMPLE_RATE), dtype=np.float32)


def decode_as_sent(
    data: bytes, encoding: str, sample_rate: int | None = None, max_seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """As :func:`decode_audio`, before resampling: float32 mono in [-1, 1] at the rate it was sent,
    and that rate (what :func:`streams.validate.clipped` looks at: resampling smooths flat tops away)."""
    wave, rate, _ = decode_noted(data, encoding, sample_rate, max_seconds)
    return wave, rate


def decode_noted(
    data: bytes, encoding: str, sample_rate: int | None = None, max_seconds: float | None = None
) -> tuple[np.ndarray, int, str | None]:
    """:func:`decode_as_sent`, and what the decoding noticed of the channels of a FLAC or WAV file
    that has several (:func:`channels_note`; None else)."""
    note = None
    if encoding not in ENCODINGS:
        raise AudioDecodeError(f"unsupported audio encoding {encoding!r}; expected one of {ENCODINGS}")
    if not data:
        raise AudioDecodeError("empty audio payload")
    if encoding in CONTAINERS:
        wave, rate, note = _decode_container(data, encoding, sample_rate, max_seconds)
    else:
        rate = declared_rate(encoding, sample_rate)
        if (container := _container_of(data)) is not None:  # its header would be heard as a click
            raise AudioDecodeError(f"payload is a {container} file, message says {encoding}: send it as {container}")
        width = sample_width(encoding)
        if len(data) % width:
            raise AudioDecodeError(f"{encoding} payload of odd length {len(data)} bytes")
        seconds = len(data) / width / rate
        if max_seconds is not None and seconds > max_seconds:
            raise AudioTooLong(f"audio of {seconds:.1f} s > {max_seconds:g} s")
        # one pass, into the one array kept (x / 32768 and x * 2**-15 are the same float32 bits)
        if encoding == "pcm_s16le":
            samples = np.frombuffer(data, dtype="<i2")
            _refuse_big_endian(samples)
            wave = np.multiply(samples, _PCM_SCALE, dtype=np.float32)
        else:
            table = _mulaw_table() if encoding == "pcm_mulaw" else _alaw_table()
            wave = np.multiply(table[np.frombuffer(data, dtype=np.uint8)], _PCM_SCALE, dtype=np.float32)
    if wave.shape[0] < int(MIN_SECONDS * rate):
        raise AudioDecodeError(f"audio too short: {wave.shape[0] / rate:.4f} s, need {MIN_SECONDS} s")
    if encoding in CONTAINERS:  # integer PCM is finite, within full scale and not subnormal by construction
        wave = _float_samples(wave)
    return wave, rate, note


#: a container's float samples may overshoot full scale (1.0) by this much and are clipped to it;
#: beyond, they are refused (int16 values stored as floats, or a gain gone wrong)
MAX_FLOAT_PEAK = 2.0
#: float samples smaller than this are zero: 2**-24, below a 24-bit sample's step. Subnormal floats
#: (under 1.2e-38) cost the encoders some 40 times more a sample (a 23 s float WAV of them took the
#: speech detector 2 s against 40 ms)
TINY = np.float32(2.0**-24)


def _float_samples(wave: np.ndarray) -> np.ndarray:
    """A container's decoded samples (a float WAV's as they were written), made safe for the encoders."""
    if not wave.size:
        return wave
    if not np.isfinite(wave).all():
        raise AudioDecodeError("audio contains non-finite samples")
    size = np.abs(wave)
    peak = float(size.max())
    if peak > MAX_FLOAT_PEAK:  # such a spectrum overflowed Whisper's float32 front end: a NaN vector
        raise AudioDecodeError(
            f"float samples reach {peak:.3g}, beyond full scale (1.0): float WAV holds samples in [-1, 1] "
            "(int16 values written as floats?)"
        )
    if peak > 1.0:
        np.clip(wave, -1.0, 1.0, out=wave)
    wave[size < TINY] = 0.0
    return wave


#: ``pcm_s16le`` samples whose high bytes change this many times more than their low bytes (read
#: as the high bytes of the byte-swapped samples) are taken for big-endian ones
BIG_ENDIAN_RATIO = 4.0
BIG_ENDIAN_MIN_STEP = 1.0  # and whose high bytes change by at least this much a sample, on average


def _byte_steps(column: np.ndarray, keep: np.ndarray) -> float:
    """The mean change of one byte of each sample (signed) from one sample to the next, over the
    pairs ``keep`` marks."""
    steps = np.abs(np.diff(column.astype(np.int16)))[keep]
    return float(steps.mean()) if steps.size else 0.0


def _refuse_big_endian(samples: np.ndarray) -> None:
    """Raise :class:`AudioDecodeError` for ``pcm_s16le`` bytes that are big-endian samples.

    Such bytes are valid little-endian samples too, of loud noise, and a voice activity detector
    does not reliably refuse that noise. In a sound of either order the high byte of a sample
    moves slowly from one sample to the next and the low byte jumps; read in the wrong order, the
    two change places. So: the high bytes as sent against those of the byte-swapped samples.
    Pairs of samples with one at full scale (+-32767 or -32768, where a clipped tone or beep jumps
    from rail to rail) are left out of both. Measured (2026-12-05) on 400 RAVDESS clips as 16 kHz,
    8 kHz and telephone 8 kHz PCM: the ratio is at most 0.17 in the right order (so at least 5.9
    byte-swapped); white noise, hum, a square wave and near-silence at most 2.45; and all 1,200
    clips at 8 and at 16 kHz pass in the right order and are refused byte-swapped. RTP's L16
    payload is big-endian: a producer that forwards it as it is sends exactly this."""
    if samples.size < 2:
        return
    rail = (samples >= 32767) | (samples <= -32767)
    keep = ~(rail[1:] | rail[:-1])
    pairs = samples.view(np.int8).reshape(-1, 2)  # the bytes as sent: (low, high) of each sample
    sent = _byte_steps(pairs[:, 1], keep)  # the high bytes; byte-swapped, the high bytes are these low ones
    swapped = _byte_steps(pairs[:, 0], keep)
    if sent >= BIG_ENDIAN_MIN_STEP and swapped > 0 and sent >= BIG_ENDIAN_RATIO * swapped:
        raise AudioDecodeError(
            f"pcm_s16le samples that look big-endian (their high bytes change {sent / swapped:.0f}x more "
            "than their low bytes): pcm_s16le is little-endian; swap each sample's two bytes (RTP's L16 "
            "payload is big-endian)"
        )


def sample_width(encoding: str) -> int:
    """Bytes a sample of a raw encoding: 2 for pcm_s16le, 1 for G.711."""
    return 2 if encoding == "pcm_s16le" else 1


def declared_rate(encoding: str, sample_rate: int | None) -> int:
    """The rate raw audio is read at: G.711's 8000 Hz, else ``sample_rate`` (16000 if None); raises
    :class:`AudioDecodeError` for a rate that is not one of :data:`RATES` (or G.711 at another)."""
    if encoding in ("pcm_mulaw", "pcm_alaw"):
        if sample_rate not in (None, G711_RATE):
            raise AudioDecodeError(f"{encoding} is {G711_RATE} Hz (G.711), message says {sample_rate} Hz")
        return G711_RATE
    rate = SAMPLE_RATE if sample_rate is None else sample_rate
    if rate not in RATES:
        raise AudioDecodeError(f"sample rate {rate} Hz not supported; use one of {RATES}")
    return rate


def _container_of(data: bytes) -> str | None:
    """The encoding of a file whose header ``data`` starts with ('wav', 'flac'), if any: 12 or 8
    bytes of signature, which raw samples match by chance once in 2**64."""
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        return "wav"
    if (
        data[:4] == b"fLaC" and len(data) >= 8 and data[4] & 0x7F == 0 and data[5:8] == b"\x00\x00\x22"
    ):  # its STREAMINFO block
        return "flac"
    return None


_WAV_PLACEHOLDER = 0x7FFF0000
#: the dead letter of bytes that are not a WAV file, sent as one
NOT_A_WAV = (
    "no RIFF/WAVE header: raw samples? send G.711 as pcm_mulaw or pcm_alaw, 16-bit PCM as pcm_s16le with its "
    "sample_rate"
)


def header_problem(data: bytes, encoding: str, max_seconds: float | None = None) -> str | None:
    """What a WAV or FLAC payload's header already shows that the workers refuse, for a producer to
    refuse before sending (:func:`client.publisher.refused`): a file of another format than named
    (raw samples sent as 'wav' among them), a WAV cut short (:func:`_checked_wav`), or a file whose
    header declares fewer frames than :data:`MIN_SECONDS` at its rate, counted as the workers count
    them, or more than ``max_seconds`` (``limits.max_audio_s``). None where the header shows nothing
    wrong or does not say (RF64 and big-endian RIFX lengths, compressed WAV formats, a live
    encoder's FLAC): the workers find the rest by decoding."""
    other = _container_of(data)
    if other is not None and other != encoding:  # (what a file named .wav or .flac is, the same words)
        return f"payload is a {other} file, message says {encoding}: send it as {other}"
    frames = rate = 0
    if encoding == "wav":
        if data[:4] not in (b"RIFF", b"RF64", b"RIFX") or data[8:12] != b"WAVE":
            return f"wav payload: {_not_a_wav(data)}"
        if data[:4] != b"RIFF":
            return None
        try:
            _checked_wav(data)
        except AudioDecodeError as exc:
            return str(exc)
        fmt, size = _wav_fmt_and_size(data)
        if fmt is not None and len(fmt) >= 16 and size is not None:
            tag, rate, align = (int.from_bytes(fmt[i : i + w], "little") for i, w in ((0, 2), (4, 4), (12, 2)))
            if tag in _FRAMED_WAV_TAGS and align and 0 < size < _WAV_PLACEHOLDER:
                frames = size // align
    elif encoding == "flac" and other == "flac" and len(data) >= 26:
        rate = (data[18] << 12) | (data[19] << 4) | (data[20] >> 4)
        frames = ((data[21] & 0x0F) << 32) | int.from_bytes(data[22:26], "big")  # 0: not known
    if frames and rate and frames < int(MIN_SECONDS * rate):
        return f"audio too short: {frames / rate:.4f} s, need {MIN_SECONDS} s"
    if frames and rate and max_seconds is not None and frames > int(max_seconds * rate):  # (the workers' count)
        return f"audio of {frames / rate:.1f} s is over limits.max_audio_s ({max_seconds:g} s): split it"
    return None


#: WAV format tags whose block_align is one frame (PCM, float, A-law, mu-law, extensible): their
#: frames are the data's bytes over it; a compressed format's blocks hold many
_FRAMED_WAV_TAGS = (1, 3, 6, 7, 0xFFFE)


def _wav_fmt_and_size(data: bytes) -> tuple[bytes | None, int | None]:
    """A RIFF/WAVE file's ``fmt `` chunk and its ``data`` chunk's declared size, walking the chunks
    (a LIST chunk's text may hold the bytes "data")."""
    fmt, at = None, 12
    while at + 8 <= len(data):
        chunk, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        if chunk == b"fmt " and fmt is None:
            fmt = data[at + 8 : at + 8 + size]
        elif chunk == b"data":
            return fmt, size
        at += 8 + size + (size & 1)
    return fmt, None


def _not_a_wav(data: bytes) -> str:
    """What bytes sent as 'wav' without a RIFF/WAVE header are: another format libsndfile knows
    (as the workers say it), or else raw samples."""
    import soundfile as sf

    try:
        kind = sf.info(io.BytesIO(data)).format
    except Exception:  # noqa: BLE001 - not a format libsndfile knows: raw samples, most likely
        return NOT_A_WAV
    return f"the payload is {kind}, not WAV: convert it to WAV or FLAC, or send its samples as raw PCM or G.711"


def _checked_wav(data: bytes) -> bytes:
    """Refuse a RIFF/WAVE file cut short: its ``data`` chunk declares more bytes than the payload
    holds (libsndfile would quietly decode the part that arrived). A size from 0x7FFF0000 up (what
    live writers put there when they do not know the length yet: 0xFFFFFFFF, SoX's 0x7FFFF000; no
    message is that large) and RF64 files are left to libsndfile; a size of 0 (another writer's
    placeholder), which libsndfile reads as no samples, is taken as the bytes that follow."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    at = 12
    while at + 8 <= len(data):
        chunk, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        if chunk == b"data":
            held = len(data) - at - 8
            if 0 < size < _WAV_PLACEHOLDER and size > held:
                raise AudioDecodeError(
                    f"truncated wav payload: its header declares {size} bytes of samples, {held} arrived"
                )
            if size == 0 and held > 0 and not _a_chunk(data[at + 8 :]):  # (an empty data chunk before another)
                return data[: at + 4] + held.to_bytes(4, "little") + data[at + 8 :]
            return data
        at += 8 + size + (size & 1)
    return data


def _a_chunk(data: bytes) -> bool:
    """Whether ``data`` starts with a RIFF chunk's header: four printable ASCII characters, and a size
    that fits in what follows."""
    return (
        len(data) >= 8 and all(32 <= b < 127 for b in data[:4]) and int.from_bytes(data[4:8], "little") <= len(data) - 8
    )


_UNKNOWN_LENGTH = 2**62  # libsndfile reports a header without a sample count as about 2**63


def _decode_container(
    data: bytes, encoding: str, sample_rate: int | None, max_seconds: float | None, block: int = 1 << 16
) -> tuple[np.ndarray, int, str | None]:
    import soundfile as sf

    if encoding == "wav":
        data = _checked_wav(data)
    blocks: list[np.ndarray] = []
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.format not in READ_AS[encoding]:
                raise AudioDecodeError(f"payload is {f.format}, message says {encoding}")
            rate = int(f.samplerate)
            if sample_rate is not None and rate != sample_rate:
                raise AudioDecodeError(f"{encoding} stream is {rate} Hz but message says {sample_rate} Hz")
            if rate not in RATES:
                raise AudioDecodeError(f"sample rate {rate} Hz not supported; use one of {RATES}")
            if f.channels > 8:
                raise AudioDecodeError(f"{encoding} stream has {f.channels} channels")
            max_frames = None if max_seconds is None else int(max_seconds * rate)
            known = 0 < f.frames < _UNKNOWN_LENGTH
            if max_frames is not None and known and f.frames > max_frames:  # the header's sample count
                raise AudioTooLong(f"audio of {f.frames / rate:.1f} s > {max_seconds:g} s")
            if not known:  # libsndfile fails on the read that crosses such a stream's end, losing that block
                block = min(block, 1024)
            n = 0
            sums = np.zeros(f.channels)  # of several channels: each one's sum and their products (channels_note)
            products = np.zeros((f.channels, f.channels))
            while True:
                try:
                    chunk = f.read(frames=block, dtype="float32", always_2d=True)  # (n, C)
                except RuntimeError:  # LibsndfileError: a live encoder's stream of unknown length ends so
                    if known or not blocks:
                        raise
                    break
                if not chunk.shape[0]:
                    break
                if f.channels > 1:
                    wide = chunk.astype(np.float64)
                    sums += wide.sum(axis=0)
                    products += wide.T @ wide
                blocks.append(chunk.mean(axis=1, dtype=np.float32))  # mono block by block: 8 channels held as 1
                n += chunk.shape[0]
                if max_frames is not None and n > max_frames:  # a header that hid the length
                    raise AudioTooLong(f"audio longer than {max_seconds:g} s")
    except AudioDecodeError:
        raise
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        why = re.sub(r"^Error opening <[^>]*>: ", "", str(exc))  # soundfile names its BytesIO, not the problem
        if encoding == "wav" and "Format not recognised" in why and _container_of(data) is None:
            why = NOT_A_WAV  # (raw mu-law sent as 'wav': "Format not recognised" said nothing to act on)
        elif "lost sync" in why:  # libsndfile's FLAC decoder, on a stream cut short or damaged
            why = f"the stream is cut short or damaged ({why.strip()}): send the whole file"
        if "SF_INFO struct incomplete" in why:  # libsndfile's words for a header's rate of 0 Hz or out of range
            why = (
                f"the header's sample rate (0 Hz, or out of range), channel count or sample format is not valid ({why})"
            )
        raise AudioDecodeError(f"undecodable {encoding} payload: {why}") from exc
    if not blocks:
        return np.zeros(0, dtype=np.float32), rate, None
    note = channels_note(sums, products, n) if sums.size > 1 else None
    return np.concatenate(blocks), rate, note  # (N,) mono: the channels' mean


#: a channel this far under the loudest is silent: its sound does not change the voice the mean gives (channels_note)
QUIET_CHANNEL_DB = 20.0
#: channels whose samples correlate less than this carry different sound (the same voice on both: about 1)
SAME_SOUND = 0.5


def channels_note(sums: np.ndarray, products: np.ndarray, n: int) -> str | None:
    """A note for a file whose channels (their samples' ``sums`` and ``products``, the (C, C) sums of
    their products, over ``n`` frames) carry different sound, which decoding hears as one voice
    (their mean): a call recorded with the agent on one channel and the customer on the other
    labels both voices as the part's speaker, and channels in opposite phase cancel. None for
    channels that copy each other, and where only one sounds (the other speaker silent during this
    utterance: the mean is the one voice). Each channel's mean (a DC offset) is left out."""
    if n < 2:
        return None
    mean = sums / n
    covariance = products / n - np.outer(mean, mean)
    power = np.clip(np.diag(covariance), 0.0, None)
    sounding = np.flatnonzero((power > 0) & (power >= power.max() * 10 ** (-QUIET_CHANNEL_DB / 10)))
    if sounding.size < 2:
        return None
    corr = covariance[np.ix_(sounding, sounding)] / np.sqrt(np.outer(power[sounding], power[sounding]))
    lowest = float(corr[np.triu_indices(sounding.size, 1)].min())
    if lowest >= SAME_SOUND:
        return None
    channels = sums.size
    if lowest <= -SAME_SOUND:
        return (
            f"channels in opposite phase: {channels} channels heard as one voice (their mean), which cancels it; "
            "send one channel"
        )
    return (
        f"channels mixed: {channels} channels that carry different sound heard as one voice (their mean); a "
        "call recorded with one speaker a channel labels both as this part's speaker: send each speaker's "
        "channel as a part of its own"
    )


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase FIR resampling (scipy, Kaiser-windowed anti-aliasing filter) of a mono signal."""
    if rate_in == rate_out or wave.shape[0] == 0:
        return wave
    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return np.asarray(resample_poly(wave, rate_out // g, rate_in // g), dtype=wave.dtype)


def warm_up() -> None:
    """Import the resampler now (about a second), rather than on the first audio that needs it."""
    resample(np.zeros(800, dtype=np.float32), G711_RATE, SAMPLE_RATE)


def encode_audio(wave: np.ndarray, rate_in: int, encoding: str, rate_out: int | None = None) -> bytes:
    """Float samples in [-1, 1] (mono, or (N, C) averaged) at ``rate_in`` -> bytes of ``encoding``
    at ``rate_out`` (8 kHz for G.711; 16 kHz if None otherwise)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported audio encoding {encoding!r}; expected one of {ENCODINGS}")
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    rate = declared_rate(encoding, rate_out) if encoding not in CONTAINERS else (rate_out or SAMPLE_RATE)
    x = np.clip(resample(x, rate_in, rate), -1.0, 1.0)
    pcm = np.round(x * 32767).astype("<i2")
    if encoding == "pcm_s16le":
        return pcm.tobytes()
    if encoding in ("pcm_mulaw", "pcm_alaw"):
        return g711_encode(pcm, encoding).tobytes()
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format=CONTAINERS[encoding], subtype="PCM_16")
    return buf.getvalue()


def transcode(
    data: bytes, encoding: str, to_encoding: str, to_rate: int | None = None, rate: int | None = None
) -> tuple[bytes, int | None]:
    """Audio bytes in one encoding (pcm_s16le at ``rate``, 16 kHz if None) -> (bytes, the rate a
    message must declare) in another, through 16 kHz: G.711 is 8 kHz, pcm_s16le at ``to_rate``
    (16 kHz if None), containers carry their rate (``to_rate``, 16 kHz if None) in their header
    and declare None."""
    out = encode_audio(decode_audio(data, encoding, rate), SAMPLE_RATE, to_encoding, to_rate)
    if to_encoding in CONTAINERS:
        return out, None
    return out, declared_rate(to_encoding, to_rate)


# --- G.711 (ITU-T G.711, 1988): 8-bit companded codes <-> 16-bit linear -------------------------


@lru_cache(maxsize=1)
def _mulaw_table() -> np.ndarray:
    """The 256 mu-law codes as int16 linear values (the standard's decoder, as in audioop/sox)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


@lru_cache(maxsize=1)
def _alaw_table() -> np.ndarray:
    """The 256 A-law codes as int16 linear values (even bits inverted; sign bit set = positive)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


@lru_cache(maxsize=2)
def _encoder(encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted decoded levels and their codes, for nearest-level quantization."""
    table = _mulaw_table() if encoding == "pcm_mulaw" else _alaw_table()
    order = np.argsort(table, kind="stable")
    return table[order].astype(np.int32), order.astype(np.uint8)


def g711_encode(pcm: np.ndarray, encoding: str) -> np.ndarray:
    """int16 linear samples -> G.711 codes (uint8): each sample to the nearest level of the law."""
    levels, codes = _encoder(encoding)
    x = np.asarray(pcm, dtype=np.int32)
    hi = np.clip(np.searchsorted(levels, x), 1, len(levels) - 1)
    lo = hi - 1
    nearest = np.where(x - levels[lo] <= levels[hi] - x, lo, hi)
    return codes[nearest]


def g711_decode(codes: np.ndarray, encoding: str) -> np.ndarray:
    """G.711 codes (uint8) -> int16 linear samples."""
    table = _mulaw_table() if encoding == "pcm_mulaw" else _alaw_table()
    return table[np.asarray(codes, dtype=np.uint8)]
