"""A simulated telephone line, to hear studio speech as a contact center does.

:class:`TelephoneChannel` turns a clean 16 kHz waveform into what arrives from a narrowband call,
in the order a real line degrades it::

    gain (talker level, +-gain_db) -> noise at an SNR drawn from snr_db (room, line)
    -> 8 kHz -> band-pass low_hz..high_hz (4th-order Butterworth, the handset and the network)
    -> G.711 mu-law or A-law (codec) -> lost 20 ms packets, silent (no concealment) -> 16 kHz

Every random choice (gain, SNR, codec, which packets) comes from ``seed`` and the clip's key, so a
clip always meets the same line: ``emostream evaluate --channel telephone`` is reproducible, and
training can draw a fresh line per epoch by changing the seed. ``id`` names the channel and its
parameters (feature caches keep telephone and clean features apart).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engines.features.codecs import G711_RATE, SAMPLE_RATE, g711_decode, g711_encode, resample

PACKET_S = 0.02  # RTP carries 20 ms of G.711 per packet


def channel_id(name: str, channel: Any) -> str:
    """A channel's id: its name, version and a digest of its parameters (feature caches keep each
    channel's features apart)."""
    blob = json.dumps(asdict(channel), sort_keys=True).encode()
    return f"{name}-v{channel.version}-{hashlib.sha256(blob).hexdigest()[:12]}"


def seeded(seed: int, key: str) -> np.random.Generator:
    """The random draws of a channel of ``seed`` for the clip ``key``: the same line every time."""
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class TelephoneChannel:
    seed: int = 0
    low_hz: float = 300.0
    high_hz: float = 3400.0
    snr_db: tuple[float, ...] = (10.0, 20.0, 30.0)  # one drawn per clip
    gain_db: float = 6.0  # uniform in [-gain_db, +gain_db]
    packet_loss: float = 0.02
    codecs: tuple[str, ...] = ("pcm_mulaw", "pcm_alaw")  # one drawn per clip
    version: int = 1

    @property
    def id(self) -> str:
        return channel_id("telephone", self)

    def rng(self, key: str) -> np.random.Generator:
        return seeded(self.seed, key)

    def __call__(self, wave: np.ndarray, key: str) -> np.ndarray:
        """``wave``: float mono at 16 kHz -> the same speech after the line, float32 at 16 kHz."""
        from scipy.signal import butter, sosfilt

        rng = self.rng(key)
        x = np.asarray(wave, dtype=np.float64) * 10 ** (rng.uniform(-self.gain_db, self.gain_db) / 20)
        power = float(np.mean(x**2)) if x.size else 0.0
        if power > 0:
            snr = float(rng.choice(self.snr_db))
            x = x + rng.normal(0.0, np.sqrt(power / 10 ** (snr / 10)), x.shape)
        x = resample(x, SAMPLE_RATE, G711_RATE)
        sos = butter(4, [self.low_hz, self.high_hz], btype="bandpass", fs=G711_RATE, output="sos")
        x = sosfilt(sos, x)
        codec = str(rng.choice(self.codecs))
        pcm = np.round(np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)
        x = g711_decode(g711_encode(pcm, codec), codec).astype(np.float64) / 32768.0
        packet = int(PACKET_S * G711_RATE)
        lost = rng.random(-(-x.shape[0] // packet)) < self.packet_loss
        for i in np.flatnonzero(lost):
            x[i * packet : (i + 1) * packet] = 0.0
        return resample(x, G711_RATE, SAMPLE_RATE).astype(np.float32)


@dataclass(frozen=True)
class Pauses:
    """A recorder's or diarizer's padded segment: ``lead_s`` of line before the speech, ``trail_s``
    after it and a pause of ``gap_s`` at the quietest 20 ms of its middle third (each drawn per
    clip), the whole clip over a line's idle noise ``floor_db`` under its loudest 20 ms (white,
    drawn per clip; RAVDESS clips peak anywhere from -54 to -6 dBFS, so not a fixed level).
    Seeded like :class:`TelephoneChannel` (``emostream evaluate --channel pauses``)."""

    seed: int = 0
    lead_s: tuple[float, float] = (2.0, 8.0)
    trail_s: tuple[float, float] = (2.0, 8.0)
    gap_s: tuple[float, float] = (2.0, 4.0)
    floor_db: tuple[float, float] = (20.0, 50.0)
    version: int = 1

    @property
    def id(self) -> str:
        return channel_id("pauses", self)

    def __call__(self, wave: np.ndarray, key: str) -> np.ndarray:
        rng = seeded(self.seed, key)
        x = np.asarray(wave, dtype=np.float64)
        frame = SAMPLE_RATE // 50
        n = x.size // frame
        at, loudest = x.size // 2, float(np.max(np.abs(x), initial=0.0)) ** 2
        if n >= 3:  # the quietest frame of the middle third: a pause between words, not inside one
            level = np.mean(np.square(x[: n * frame].reshape(n, frame)), axis=1)
            loudest = float(level.max())
            third = level[n // 3 : 2 * n // 3]
            at = (n // 3 + int(np.argmin(third))) * frame + frame // 2
        lead, trail, gap = (round(rng.uniform(*span) * SAMPLE_RATE) for span in (self.lead_s, self.trail_s, self.gap_s))
        out = np.concatenate([np.zeros(lead), x[:at], np.zeros(gap), x[at:], np.zeros(trail)])
        floor = np.sqrt(loudest) * 10 ** (-rng.uniform(*self.floor_db) / 20)
        return (out + rng.normal(0.0, floor, out.shape)).astype(np.float32)


@dataclass(frozen=True)
class Monologue:
    """A long utterance: the clip said again and again, ``seconds`` in all (drawn per clip, seeded
    like :class:`TelephoneChannel`): a customer's long explanation in one voice and one feeling
    (``emostream evaluate --channel long``)."""

    seed: int = 0
    seconds: tuple[float, float] = (15.0, 45.0)
    version: int = 1

    @property
    def id(self) -> str:
        return channel_id("long", self)

    def __call__(self, wave: np.ndarray, key: str) -> np.ndarray:
        x = np.asarray(wave, dtype=np.float32)
        want = round(seeded(self.seed, key).uniform(*self.seconds) * SAMPLE_RATE)
        return np.tile(x, max(1, -(-want // max(1, x.size))))[:want] if x.size else x


@dataclass(frozen=True)
class LineGain:
    """Every clip ``db`` louder (quieter where negative) before the ``line`` (None: as it is), held
    under clipping as a limiter holds it: a line whose level is not the studio's
    (``emostream evaluate --line-gain DB``; the telephone's nominal level, ITU-T P.56 -26 dBov of
    active speech, is about 12 dB above RAVDESS's median clip)."""

    db: float
    line: Any = None
    version: int = 1

    @property
    def id(self) -> str:  # the line by its own id (its class and parameters), not by its fields alone
        return f"gain-v{self.version}{self.db:+g}dB" + (f"-{self.line.id}" if self.line is not None else "")

    def __call__(self, wave: np.ndarray, key: str) -> np.ndarray:
        from engines.features.level import apply_gain

        x = apply_gain(wave, self.db)
        return x if self.line is None else self.line(x, key)


#: clean, the telephone line, and the four ways a producer can declare an audio part's format
#: wrongly: its rate either way, its G.711 law either way (:class:`engines.features.format_check.Misdeclared`);
#: segments padded with silence (:class:`Pauses`); and long utterances (:class:`Monologue`)
CHANNELS = ("clean", "telephone", "8k-as-16k", "16k-as-8k", "alaw-as-mulaw", "mulaw-as-alaw", "pauses", "long")


def make_channel(name: str, seed: int = 0) -> Any:
    """The channel ``emostream evaluate --channel`` names: None for clean; else a callable
    ``(wave, key) -> wave`` with an ``id`` that names its features in the caches."""
    if name == "clean":
        return None
    if name == "telephone":
        return TelephoneChannel(seed=seed)
    if name == "pauses":
        return Pauses(seed=seed)
    if name == "long":
        return Monologue(seed=seed)
    if name in CHANNELS[2:6]:
        from engines.features.format_check import Misdeclared

        return Misdeclared(name)
    raise ValueError(f"unknown channel {name!r}; choose from {CHANNELS}")
