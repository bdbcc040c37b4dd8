"""A fast handcrafted audio extractor computed in torch (batched, CPU or GPU).

:mod:`engines.features.codecs` turns the bytes of an audio message into a float32 mono 16 kHz
waveform (:func:`~engines.features.codecs.decode_audio`).
:class:`AudioFeatureExtractor` turns waveforms into one fixed-size vector per utterance:
frame-level log-mel (64 bands), MFCC, log energy, zero-crossing rate, spectral centroid, roll-off
and flatness, an autocorrelation pitch proxy with its voicing strength, summarised over the
active (non-silent) frames by mean / std / percentiles, plus delta and delta-delta statistics.
Everything is plain FFTs and matrix products (no pitch tracker, no librosa), deterministic, and
independent of what else is in the batch. Normalisation statistics are not applied here: they are
fit on the training set and live in the model artifact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engines.features.codecs import SAMPLE_RATE, decode_audio


def read_audio_file(path: str) -> np.ndarray:
    """An audio file (FLAC/WAV, any rate of :data:`~engines.features.codecs.RATES`) as float32
    mono at 16 kHz; raise :class:`AudioDecodeError`."""
    encoding = "wav" if path.lower().endswith(".wav") else "flac"
    with open(path, "rb") as f:
        return decode_audio(f.read(), encoding)


@dataclass(frozen=True)
class AudioFeatureConfig:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 512  # 32 ms frames
    hop: int = 160  # 10 ms
    n_mels: int = 64
    n_mfcc: int = 20
    fmin: float = 50.0
    fmax: float = 8000.0
    f0_min: float = 60.0
    f0_max: float = 400.0
    active_db: float = 35.0  # frames within this many dB of the loudest are "active"
    voicing_threshold: float = 0.45
    chunk: int = 32  # waves per forward pass
    version: int = 1


N_SCALARS = 6  # energy, zcr, centroid, rolloff, flatness, voicing
N_PCT = 3  # p10, p50, p90
PERCENTILES = (0.1, 0.5, 0.9)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(cfg: AudioFeatureConfig) -> np.ndarray:
    """HTK-style triangular filters, Slaney area normalisation: (n_fft // 2 + 1, n_mels)."""
    n_bins = cfg.n_fft // 2 + 1
    freqs = np.linspace(0.0, cfg.sample_rate / 2, n_bins)
    mels = np.linspace(_hz_to_mel(np.array(cfg.fmin)), _hz_to_mel(np.array(cfg.fmax)), cfg.n_mels + 2)
    hz = _mel_to_hz(mels)
    fb = np.zeros((n_bins, cfg.n_mels), dtype=np.float64)
    for m in range(cfg.n_mels):
        lo, mid, hi = hz[m], hz[m + 1], hz[m + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[:, m] = np.maximum(0.0, np.minimum(up, down)) * (2.0 / (hi - lo))
    return fb.astype(np.float32)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II basis (n_in, n_out)."""
    n = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    basis = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    basis[:, 0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


def extractor_id(prefix: str, version: int, description: dict[str, Any]) -> str:
    """``<prefix>-v<version>-<12 hex of the description's sha256>``: an extractor's stable id (the
    feature cache namespace and the artifact check), shared by every audio extractor."""
    blob = json.dumps(description, sort_keys=True).encode()
    return f"{prefix}-v{version}-{hashlib.sha256(blob).hexdigest()[:12]}"


class AudioFeatureExtractor:
    """``extract(waves) -> (N, dim) float32`` utterance-level functionals."""

    def __init__(self, config: AudioFeatureConfig | None = None, device: str = "cpu") -> None:
        self.config = config or AudioFeatureConfig()
        self.device = device
        c = self.config
        self.dim = 2 * c.n_mels + 5 * c.n_mfcc + 5 * N_SCALARS + 6 + 2 * c.n_mfcc + N_SCALARS + 1 + c.n_mfcc + 2
        self._consts: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        """Stable id of this extractor and its configuration (cache namespace, artifact check)."""
        return extractor_id("emostream-functionals", self.config.version, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self.config)
        d.pop("chunk")
        return {"name": "functionals", "dim": self.dim, **d}

    def _constants(self) -> dict[str, Any]:
        if self._consts is None:
            import torch

            from engines.runtime.threads import apply_to_torch

            apply_to_torch()

            c = self.config
            self._consts = {
                "mel": torch.from_numpy(mel_filterbank(c)).to(self.device),
                "dct": torch.from_numpy(dct_matrix(c.n_mels, c.n_mfcc)).to(self.device),
                "window": torch.hann_window(c.n_fft, periodic=True, dtype=torch.float32).to(self.device),
                "window8": torch.hann_window(c.n_fft // 2, periodic=True, dtype=torch.float32).to(self.device),
                "bins": torch.linspace(0.0, 1.0, c.n_fft // 2 + 1, dtype=torch.float32).to(self.device),
            }
        return self._consts

    def extract(self, waves: list[np.ndarray]) -> np.ndarray:
        """Feature vectors (N, dim) float32 for float32 mono 16 kHz waveforms."""
        import torch

        assert isinstance(waves, list), type(waves)
        out = np.zeros((len(waves), self.dim), dtype=np.float32)
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # little padding per chunk
        with torch.inference_mode():
            for start in range(0, len(order), self.config.chunk):
                idx = order[start : start + self.config.chunk]
                out[idx] = self._extract_chunk([waves[i] for i in idx]).cpu().numpy()
        return out

    def _extract_chunk(self, waves: list[np.ndarray]) -> Any:
        import torch

        c = self.config
        k = self._constants()
        lengths = [max(int(w.shape[0]), c.n_fft) for w in waves]
        n_max = max(lengths)
        x = torch.zeros(len(waves), n_max, dtype=torch.float32)
        for i, w in enumerate(waves):
            assert w.ndim == 1, w.shape
            x[i, : w.shape[0]] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        x = x.to(self.device)  # (B, L)
        frames = x.unfold(1, c.n_fft, c.hop)  # (B, T, n_fft)
        b, t, _ = frames.shape
        n_frames = torch.tensor([1 + (n - c.n_fft) // c.hop for n in lengths], device=self.device)
        valid = torch.arange(t, device=self.device)[None, :] < n_frames[:, None]  # (B, T)

        frames = frames - frames.mean(dim=-1, keepdim=True)
        energy = 10.0 * torch.log10(frames.pow(2).mean(-1) + 1e-10)  # (B, T)
        signs = frames > 0
        zcr = (signs[..., 1:] != signs[..., :-1]).float().mean(-1)  # (B, T)
        power = torch.view_as_real(torch.fft.rfft(frames * k["window"], dim=-1)).pow(2).sum(-1)  # (B, T, F)
        n_bins = power.shape[-1]
        total = power.sum(-1) + 1e-10  # (B, T)
        centroid = (power @ k["bins"]) / total  # (B, T) fraction of Nyquist
        rolloff = (power.cumsum(-1) < 0.85 * total[..., None]).float().sum(-1) / n_bins  # (B, T)
        flatness = torch.log(power + 1e-10).mean(-1) - torch.log(total / n_bins)  # (B, T)
        logmel = 10.0 * torch.log10(power @ k["mel"] + 1e-10)  # (B, T, M)
        mfcc = logmel @ k["dct"]  # (B, T, C)

        # Pitch proxy at 8 kHz on the same frame grid: linear autocorrelation (zero-padded FFT)
        # peak in the f0 lag range, normalised by lag 0.
        half = frames.shape[-1] // 2
        x8 = frames.reshape(b, t, half, 2).mean(-1)  # (B, T, n_fft/2) crude 2x decimation
        x8 = x8 * k["window8"]
        ac = torch.fft.irfft(torch.view_as_real(torch.fft.rfft(x8, n=2 * half, dim=-1)).pow(2).sum(-1), dim=-1)
        sr8 = c.sample_rate / 2
        lag_lo = int(sr8 / c.f0_max)
        lag_hi = min(int(sr8 / c.f0_min), half - 1)
        peak, lag = ac[..., lag_lo : lag_hi + 1].max(dim=-1)  # (B, T)
        voicing = (peak / (ac[..., 0] + 1e-10)).clamp(min=0.0)
        pitch = torch.log2(sr8 / (lag.float() + lag_lo))  # (B, T) octaves

        loudest = torch.where(valid, energy, torch.full_like(energy, -1e9)).max(dim=1).values
        active = valid & (energy > loudest[:, None] - c.active_db)  # (B, T)
        voiced = active & (voicing > c.voicing_threshold)
        scalars = torch.stack([energy, zcr, centroid, rolloff, flatness, voicing], dim=-1)  # (B, T, 6)

        d_mfcc = _delta(mfcc)
        dd_mfcc = _delta(d_mfcc)
        d_scal = _delta(scalars)
        d_pitch = _delta(pitch[..., None])
        pos = torch.arange(t, device=self.device)[None, :]
        inner = active & (pos >= 2) & (pos < n_frames[:, None] - 2)  # deltas away from padding
        inner_voiced = voiced & inner

        n_active = active.float().sum(1)
        feats = [
            _masked_mean(logmel, active),
            _masked_std(logmel, active),
            _masked_mean(mfcc, active),
            _masked_std(mfcc, active),
            _masked_percentiles(mfcc, active),
            _masked_mean(scalars, active),
            _masked_std(scalars, active),
            _masked_percentiles(scalars, active),
            _masked_mean(pitch[..., None], voiced),
            _masked_std(pitch[..., None], voiced),
            _masked_percentiles(pitch[..., None], voiced),
            (voiced.float().sum(1) / n_active.clamp(min=1.0))[:, None],
            _masked_mean(d_mfcc.abs(), inner),
            _masked_std(d_mfcc, inner),
            _masked_std(d_scal, inner),
            _masked_std(d_pitch, inner_voiced),
            _masked_std(dd_mfcc, inner),
            torch.log1p(n_active * c.hop / c.sample_rate)[:, None],
            (n_active / n_frames.float())[:, None],
        ]
        out = torch.cat(feats, dim=-1)  # (B, dim)
        assert out.shape == (b, self.dim), (out.shape, self.dim)
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _delta(x: Any, width: int = 2) -> Any:
    """Regression deltas over +-width frames along T: (B, T, F) -> (B, T, F)."""
    import torch

    t = x.shape[1]
    padded = torch.cat([x[:, :1].expand(-1, width, -1), x, x[:, -1:].expand(-1, width, -1)], dim=1)
    num = sum(
        n * (padded[:, width + n : width + n + t] - padded[:, width - n : width - n + t]) for n in range(1, width + 1)
    )
    return num / (2 * sum(n * n for n in range(1, width + 1)))


def _masked_mean(x: Any, mask: Any) -> Any:
    m = mask.to(x.dtype)[:, None, :]  # (B, 1, T)
    return (m @ x)[:, 0] / m.sum(-1).clamp(min=1.0)  # (B, F)


def _masked_std(x: Any, mask: Any) -> Any:
    m = mask.to(x.dtype)[:, None, :]  # (B, 1, T)
    n = m.sum(-1).clamp(min=1.0)  # (B, 1)
    mean = (m @ x) / n[..., None]  # (B, 1, F)
    var = (m @ (x - mean).pow(2))[:, 0] / n  # (B, F)
    return var.clamp(min=0.0).sqrt()


def _masked_percentiles(x: Any, mask: Any) -> Any:
    """p10, p50, p90 over masked frames: (B, T, F) -> (B, 3 * F), zeros where none are masked in."""
    import torch

    big = torch.finfo(x.dtype).max
    filled = torch.where(mask[..., None], x, torch.full_like(x, big))
    ordered = filled.sort(dim=1).values  # (B, T, F), masked-out frames last
    count = mask.long().sum(1)  # (B,)
    outs = []
    for q in PERCENTILES:
        idx = (q * (count - 1).clamp(min=0).float()).floor().long()  # (B,)
        idx = idx[:, None, None].expand(-1, 1, x.shape[-1])
        val = ordered.gather(1, idx)[:, 0]  # (B, F)
        outs.append(torch.where(count[:, None] > 0, val, torch.zeros_like(val)))
    return torch.cat(outs, dim=-1)
