"""The modality registry and the feature spec keyed by it."""

from __future__ import annotations

import pytest

from engines import artifact
from engines.errors import ArtifactError
from engines.interface import MODALITIES as INTERFACE_MODALITIES
from engines.modalities import MODALITIES, REGISTRY, FeatureSpec, dim_key, index
from engines.models import available_engines, config_fields, make_config


def test_one_list_of_modalities_in_one_order() -> None:
    assert INTERFACE_MODALITIES is MODALITIES
    assert MODALITIES == tuple(m.name for m in REGISTRY) == ("text", "audio", "video")
    assert [index(m) for m in MODALITIES] == list(range(len(MODALITIES)))
    with pytest.raises(ValueError, match="unknown modality 'face'"):
        index("face")


def test_a_spec_is_keyed_by_modality_and_leaves_the_others_at_zero() -> None:
    spec = FeatureSpec({"text": 16, "audio": 9})
    assert spec.dims() == {"text": 16, "audio": 9, "video": 0}
    assert (spec.dim("audio"), spec.used()) == (9, ("text", "audio"))
    assert FeatureSpec().dims() == {"text": 384, "audio": 0, "video": 0}
    assert FeatureSpec({"text": 16, "audio": 9}) == spec and hash(FeatureSpec({"audio": 9, "text": 16})) == hash(spec)
    with pytest.raises(ValueError, match="unknown modality"):
        FeatureSpec({"txt": 16})
    with pytest.raises(ValueError, match="0 or more"):
        FeatureSpec({"text": -1})
    for odd in (384.7, True, "384"):  # not silently truncated or read as 1
        with pytest.raises(ValueError, match="whole number"):
            FeatureSpec({"text": odd})  # type: ignore[dict-item]
    assert repr(spec) == "FeatureSpec({'text': 16, 'audio': 9, 'video': 0})"


def test_an_utterance_names_only_known_modalities() -> None:
    import numpy as np

    from engines.windows import UtteranceFeatures

    v = np.ones(4, np.float32)
    assert UtteranceFeatures("a", {"text": v, "audio": None}).vectors["text"] is v
    with pytest.raises(ValueError, match="unknown modality 'txt'"):
        UtteranceFeatures("a", {"txt": v})  # would otherwise be packed as absent
    with pytest.raises(TypeError, match="map a modality"):
        UtteranceFeatures("a", v)  # type: ignore[arg-type]  # the old positional text vector


def test_two_artifacts_that_write_their_sizes_differently_share_feature_vectors() -> None:
    from streams.runtime import _feature_key

    short = {"spec": {"text_dim": 384}, "text": {"kind": "minilm"}}
    full = {"spec": {"text_dim": 384, "audio_dim": 0, "video_dim": 0}, "text": {"kind": "minilm"}}
    assert _feature_key(short) == _feature_key(full)
    assert _feature_key(full) != _feature_key({**full, "spec": {"text_dim": 384, "audio_dim": 768}})


def test_the_stored_form_keeps_the_artifacts_keys_and_refuses_others() -> None:
    spec = FeatureSpec({"text": 384, "audio": 1280})
    assert spec.to_dict() == {"text_dim": 384, "audio_dim": 1280, "video_dim": 0}
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert FeatureSpec.from_dict({"text_dim": 384}) == FeatureSpec()  # an artifact before video was written
    with pytest.raises(ValueError, match="face_dim"):
        FeatureSpec.from_dict({"text_dim": 384, "face_dim": 3})
    with pytest.raises(ValueError, match="whole number"):
        FeatureSpec.from_dict({"text_dim": "384"})


def test_a_features_file_with_an_unknown_modality_is_an_artifact_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    artifact.write_json(tmp_path, artifact.FEATURES, {"spec": {"text_dim": 8, "smell_dim": 2}})
    with pytest.raises(ArtifactError, match="smell_dim"):
        artifact.feature_spec(tmp_path)


@pytest.mark.parametrize("engine", available_engines())
def test_every_engine_config_has_a_size_per_modality_and_reads_them_as_a_spec(engine: str) -> None:
    fields = config_fields(engine)
    assert all(dim_key(m) in fields for m in MODALITIES), sorted(fields)
    cfg = make_config(engine, {"text_dim": 16, "audio_dim": 8, "n_heads": 2, "d_model": 16})
    assert cfg.features == FeatureSpec({"text": 16, "audio": 8})
    assert cfg.active() == [0, 1]
    stored = cfg.to_dict()
    assert {m: stored[dim_key(m)] for m in MODALITIES} == {"text": 16, "audio": 8, "video": 0}
