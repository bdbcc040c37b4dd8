"""Entry points for the stream: ``load_engine`` and ``load_extractors``.

    engine = load_engine("default")            # or an artifact directory
    ex = load_extractors("default")
    text = ex.text.encode(["hi there"])        # (N, 384)
    audio = ex.audio.extract([decode_audio(payload, "pcm_s16le", 16000)])  # (N, Da)
    # -> engines.windows.pack_windows(...) -> engine.predict(batch)

Features go to the engine raw: normalisation statistics are inside the model graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engines import artifact
from engines.errors import ArtifactError
from engines.features.audio import AudioFeatureExtractor
from engines.features.factory import audio_extractor_from_dict, text_encoder_from_dict
from engines.features.text import TextEncoder
from engines.features.whisper_spec import WhisperFeatures
from engines.interface import Engine, FeatureSpec
from engines.runtime.select import RUNTIMES, Runtime, resolve_runtime

__all__ = ["RUNTIMES", "TEXT_RUNTIMES", "Extractors", "load_engine", "load_extractors"]


def load_engine(model_dir: str | Path = "default", runtime: str | Runtime = "onnxruntime") -> Engine:
    """The engine of an artifact directory (``"default"``: the shipped ``models/default``) on a
    runtime of :data:`RUNTIMES` (``"auto"`` picks one, see :mod:`engines.runtime.select`)."""
    rt = runtime if isinstance(runtime, Runtime) else resolve_runtime(runtime)
    if rt.engine == "onnxruntime":
        from engines.runtime.onnx import OnnxEngine

        return OnnxEngine(model_dir, runtime=rt.name)
    if rt.engine == "tensorrt":
        from engines.runtime.tensorrt import TensorRTEngine

        return TensorRTEngine(model_dir)
    from engines.runtime.torch import TorchEngine

    return TorchEngine(model_dir, device=rt.device, autocast=rt.autocast, buckets=rt.gpu, runtime=rt.name)


@dataclass
class Extractors:
    """The feature extractors an artifact was trained with (``None`` for an unused modality).

    ``text`` is a :class:`TextEncoder` (MiniLM, or its subclass for multilingual-e5-small) and
    ``audio`` an :class:`AudioFeatureExtractor` (torch functionals, or openSMILE eGeMAPS), as the
    artifact's ``features.json`` names them by "kind" (see :mod:`engines.features.factory`).
    """

    spec: FeatureSpec
    text: TextEncoder | None
    audio: AudioFeatureExtractor | None


TEXT_RUNTIMES: tuple[str, ...] = ("onnxruntime", "openvino", "bf16", "torch")


def load_extractors(
    model_dir: str | Path = "default",
    device: str = "cpu",
    text_runtime: str = "torch",
    runtime: str | Runtime | None = None,
) -> Extractors:
    """Extractors matching the artifact's ``features.json`` (models load lazily on first use).

    ``text_runtime="onnxruntime"`` runs a MiniLM text encoder (tuned or not) as an ONNX graph
    (:class:`engines.features.text_onnx.OnnxTextEncoder`: the same vectors, faster on CPU);
    other encoders keep their own runtime. ``runtime`` (a name of :data:`RUNTIMES` or a resolved
    :class:`Runtime`) sets the device, the text runtime and the autocast of both encoders
    together and overrides ``device`` and ``text_runtime``.

    Raises :class:`ArtifactError` for a description that does not match what can be built, and
    :class:`engines.errors.FeatureError` when an optional extractor's package is not installed.
    """
    from engines.runtime.threads import single_thread_blas

    single_thread_blas()  # the encoders' runtimes own the cores (see there)
    autocast, int8, audio_runtime = None, False, "torch"
    if runtime is not None:
        rt = runtime if isinstance(runtime, Runtime) else resolve_runtime(runtime)
        device, text_runtime, autocast, int8, audio_runtime = rt.device, rt.text, rt.autocast, rt.int8, rt.audio
    if text_runtime not in TEXT_RUNTIMES:
        raise ArtifactError(f"unknown text runtime {text_runtime!r}; known: {TEXT_RUNTIMES}")
    path = artifact.resolve_model_dir(model_dir)
    meta = artifact.read_json(path, artifact.FEATURES)
    spec = artifact.feature_spec(path)
    text = None
    if spec.dim("text") > 0:
        text = text_encoder_from_dict(meta.get("text", {}), dim=spec.dim("text"), device=device, base_dir=path)
        if text_runtime == "onnxruntime" and text.kind in ("minilm", "minilm-tuned"):
            from engines.features.text_onnx import OnnxTextEncoder

            text = OnnxTextEncoder(text, quantize=int8)
        elif text_runtime == "openvino" and text.kind in ("minilm", "minilm-tuned"):
            from engines.features.openvino_cpu import OpenVinoTextEncoder

            text = OpenVinoTextEncoder(text)
        elif text_runtime == "bf16" and text.kind in ("minilm", "minilm-tuned"):
            from engines.features.text_bf16 import Bf16TextEncoder

            text = Bf16TextEncoder(text)
        else:
            text.autocast = autocast
    audio = None
    if spec.dim("audio") > 0:
        a = meta.get("audio", {})
        audio = audio_extractor_from_dict(a, device=device, runtime=audio_runtime)
        if (
            isinstance(audio, WhisperFeatures) and audio_runtime == "torch"
        ):  # onnxruntime: fp32; openvino: its own precision
            audio.autocast = autocast  # type: ignore[attr-defined]
        want_id = a.get("id")
        want_dim = spec.dim("audio")
        if audio.dim != want_dim or (want_id is not None and audio.id != want_id):
            raise ArtifactError(
                f"{path}: audio extractor {audio.id} (dim {audio.dim}) does not match {want_id} (dim {want_dim})"
            )
    return Extractors(spec, text, audio)
