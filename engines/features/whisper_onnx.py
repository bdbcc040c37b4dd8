"""Whisper tiny.en features run by ONNX Runtime, in a process that never imports torch.

    ex = OnnxWhisperExtractor(WhisperConfig(layers=(2,)))
    ex.extract([wave])  # (N, dim) float32: WhisperExtractor's vectors (to about 1e-6, relative)

What it runs: the log-mel front end in numpy (:func:`~engines.features.whisper_spec.log_mel_np`),
then one graph per setting of layers: Whisper's convolutions and the blocks up to the last layer
asked for (:class:`~engines.features.whisper.WhisperEncoder`, exported by the TorchScript
exporter; inputs ``mel`` float32 (batch, 80, frames) and ``n_frames`` int64 (batch,); output
``states`` float32 (layers, batch, frames / 2, 384), zero beyond each clip's valid frames; batch
and frames dynamic; opset :data:`OPSET`), then mean and std pooling in numpy. The clips are cut
into passes as the torch extractor cuts them (:func:`~engines.features.whisper_spec.plan_passes`),
and padding is masked the same way, so a clip's vector does not depend on its batch.

Export cache: ``<cache root>/onnx/whisper/<key>.onnx``, where ``key`` hashes this module's export
recipe, the layers, the bytes of the weights file (``model.bin``) and the source files of the
encoder and of this module, so another package version, setting or encoder gets its own graph.
The first process to need a graph imports torch to export it, writes it under a temporary name,
checks it there against the torch extractor on probe clips (:class:`~engines.errors.FeatureError` if
they differ, and the graph is not kept) and only then renames it into place; every later start runs
it with ONNX Runtime alone. That is what keeps torch (about 500 MB resident) out of a worker on the
``onnxruntime``, ``onnxruntime-int8`` and ``openvino`` runtimes (issue 12) once the export cache holds its graphs:
the start that exports them (this one, and the text encoder's, :mod:`engines.features.text_onnx`)
loads torch for its lifetime.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engines.artifact import file_sha256
from engines.errors import FeatureError
from engines.features.cache import DEFAULT_ROOT
from engines.features.whisper_spec import (
    D_MODEL,
    N_MELS,
    WhisperConfig,
    WhisperFeatures,
    log_mel_np,
    mel_filters,
    plan_passes,
)
from engines.runtime.threads import encoder_session_options

log = logging.getLogger(__name__)

RECIPE = "whisper-states-v1"  # change when the exported graph changes; part of the cache key
OPSET = 17
PROBE_SECONDS = (0.3, 1.7, 4.2)  # probe clips of three lengths: padding and masking are exercised
PROBE_MAX_REL = 1e-4  # largest difference from the torch extractor, relative to the vector's largest value


def probe_waves() -> list[np.ndarray]:
    """Voiced tones with a little noise, deterministic: what a new graph is checked on."""
    rng = np.random.default_rng(0)
    out = []
    for k, seconds in enumerate(PROBE_SECONDS):
        t = np.arange(int(seconds * 16_000)) / 16_000
        f0 = 120.0 + 40.0 * k
        x = sum((0.2 / h) * np.sin(2 * np.pi * h * f0 * t) for h in range(1, 6)) + 0.01 * rng.standard_normal(t.size)
        out.append(x.astype(np.float32))
    return out


def export_whisper_onnx(
    model_path: Path, layers: tuple[int, ...], path: Path, check: Callable[[Path], None] | None = None
) -> None:
    """Write the encoder states of ``layers`` (the weights of ``model_path``) to ``path`` as one
    ONNX graph (imports torch). ``check`` runs on the written graph before it takes its name: a
    graph that fails it (it raises) is never found by another process."""
    import onnx
    import torch

    from engines.features.text_onnx import _atomic_write
    from engines.features.whisper import WhisperEncoder, read_ct2_variables

    enc = WhisperEncoder.from_ct2(read_ct2_variables(model_path))
    if max(layers) > enc.cfg.n_layers or min(layers) < 0:
        raise FeatureError(f"layers {layers} outside 0..{enc.cfg.n_layers}")

    class States(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = enc

        def forward(self, mel: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
            states, n_out = self.enc(mel, n_frames, layers)  # L x (B, T', D), (B,)
            t_out = states[0].shape[1]
            valid = torch.arange(t_out, device=mel.device)[None, :] < n_out[:, None]  # (B, T')
            return torch.stack(states) * valid[None, :, :, None].to(states[0].dtype)  # (L, B, T', D)

    net = States().eval()
    # two lengths: the traced graph keeps the attention mask (one length alone would drop it)
    mel = torch.randn(2, N_MELS, 64)
    n_frames = torch.tensor([64, 41])

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notes
            torch.onnx.export(
                net,
                (mel, n_frames),
                str(tmp),
                input_names=["mel", "n_frames"],
                output_names=["states"],
                dynamic_axes={
                    "mel": {0: "batch", 2: "frames"},
                    "n_frames": {0: "batch"},
                    "states": {1: "batch", 2: "t"},
                },
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        onnx.checker.check_model(str(tmp))
        if check is not None:
            check(tmp)

    _atomic_write(path, write)


class OnnxWhisperExtractor(WhisperFeatures):
    """``extract(waves) -> (N, dim) float32``: the features of
    :class:`~engines.features.whisper.WhisperExtractor` (same ``id``), computed by ONNX Runtime.

    ``intra_op_threads`` caps ONNX Runtime's threads (None: :func:`cpu_threads`, else its default);
    ``cache_dir`` is the root of the export cache (default ``~/.cache/emostream``).
    """

    def __init__(
        self,
        config: WhisperConfig | None = None,
        model_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        super().__init__(config, model_path)
        self.device = "cpu"
        self.autocast: str | None = None  # always fp32: the features are the torch extractor's
        self.cache_root = Path(cache_dir) if cache_dir is not None else DEFAULT_ROOT
        self.intra_op_threads = intra_op_threads
        self.onnx_path: Path | None = None
        self._session: Any = None
        self._filters = mel_filters()

    def graph_path(self) -> Path:
        """Where the graph of these weights and layers lies in the export cache: the key hashes the
        recipe, the layers, the weights file and the source of the encoder and of its export."""
        key = hashlib.sha256(f"{RECIPE}/opset{OPSET}/layers{list(self.settings.layers)}/".encode())
        key.update(file_sha256(self.model_path).encode())
        for module in ("engines.features.whisper", __name__):  # found, not imported: no torch
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.origin is not None, module
            key.update(file_sha256(Path(spec.origin)).encode())
        return self.cache_root / "onnx" / "whisper" / f"{key.hexdigest()[:24]}.onnx"

    def exported(self) -> bool:
        """Whether the export cache holds this extractor's graph (its first use then loads no torch)."""
        return self.graph_path().is_file()

    def _open(self, path: Path) -> Any:
        import onnxruntime as ort

        opts = encoder_session_options(self.intra_op_threads)
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    def session(self) -> Any:
        """The ONNX Runtime session, exporting (and checking) the graph on first use."""
        if self._session is None:
            path = self.graph_path()
            if not path.exists():
                log.info("exporting Whisper's encoder to %s (once; later starts load it)", path)
                export_whisper_onnx(self.model_path, self.settings.layers, path, check=self._check_probe)
            self._session = self._runner(path)
            self.onnx_path = path
        return self._session

    def _runner(self, path: Path) -> Any:
        """What runs the graph (an ONNX Runtime session here; the probe check always uses one)."""
        return self._open(path)

    def _check_probe(self, path: Path) -> None:
        """Refuse a new graph whose probe vectors differ from the torch extractor's."""
        from engines.features.whisper import WhisperExtractor

        waves = probe_waves()
        want = WhisperExtractor(self.settings, model_path=self.model_path).extract(waves)
        got = self._extract(self._open(path), waves)
        rel = float((np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)).max())
        if not rel <= PROBE_MAX_REL:
            raise FeatureError(f"the exported Whisper graph differs from the torch encoder by {rel:.2g} (relative)")

    def extract(self, waves: list[np.ndarray]) -> np.ndarray:
        """Feature vectors (N, dim) float32 for float32 mono 16 kHz waveforms."""
        assert isinstance(waves, list), type(waves)
        if not waves:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._extract(self.session(), waves)

    def _extract(self, sess: Any, waves: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(waves), self.dim), dtype=np.float32)
        s = self.settings
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # little padding per pass
        for start in range(0, len(order), s.chunk):
            idx = order[start : start + s.chunk]
            mel, n_frames = log_mel_np([waves[i] for i in idx], self._filters)  # (B, 80, T)
            pooled: list[list[np.ndarray]] = [[] for _ in idx]
            for group in plan_passes(n_frames, s.chunk, s.max_frames):
                t = max(e - a for _, a, e in group)
                x = np.zeros((len(group), N_MELS, t), dtype=np.float32)
                for g, (j, a, e) in enumerate(group):
                    x[g, :, : e - a] = mel[j, :, a:e]
                lengths = np.array([e - a for _, a, e in group], dtype=np.int64)
                h = sess.run(None, {"mel": x, "n_frames": lengths})[0]  # (L, B, T', D)
                if s.pooling == "mean":
                    h = h.mean(axis=0, keepdims=True)
                for g, (j, _, _) in enumerate(group):
                    pooled[j].append(h[:, g, : (int(lengths[g]) + 1) // 2])  # (L, n, D)
            for j, i in enumerate(idx):
                frames = np.concatenate(pooled[j], axis=1)  # (L, n, D) over all segments of the clip
                stats = np.concatenate([frames.mean(axis=1), frames.std(axis=1)], axis=-1)  # (L, 2D)
                out[i] = stats.reshape(-1)
        assert out.shape[1] == self._width(D_MODEL)
        return out
