"""Fine-tuned MiniLM layers (engines.features.tuning) on the real model from the wheel."""

from __future__ import annotations

import numpy as np
import pytest

from engines.errors import ArtifactError
from engines.features.factory import text_encoder_from_dict
from engines.features.text import TextEncoder
from engines.features.tuning import TUNED_FILE, TuneConfig, TunedTextEncoder, tune_text_encoder

HAPPY = ["I love this, thank you so much!", "That is wonderful news.", "Great, we did it!", "You made my day."]
ANGRY = ["This is unacceptable.", "Stop lying to me!", "I am so sick of this.", "How dare you say that?"]
NEUTRAL = ["The meeting is at ten.", "Please hold the line.", "My account number is four.", "It is in the box."]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[TextEncoder, TunedTextEncoder, dict]:
    texts = HAPPY + ANGRY + NEUTRAL
    labels = np.repeat(np.arange(3), 4)
    base = TextEncoder()
    cfg = TuneConfig(layers=1, epochs=2, lr=1e-3, batch_size=4)
    out = tmp_path_factory.mktemp("tuned") / TUNED_FILE
    enc, report = tune_text_encoder(base, (texts, labels), (texts, labels), 3, out, cfg, log=False)
    return base, enc, report


def test_only_the_top_layers_are_stored_and_they_change_the_embeddings(tuned: tuple) -> None:
    base, enc, report = tuned
    assert enc.layers == (5,) and report["layers"] == [5]
    assert len(report["history"]) == 2 and 1 <= report["best_epoch"] <= 2
    a, b = base.encode(HAPPY), enc.encode(HAPPY)
    assert a.shape == b.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float(np.abs(a - b).max()) > 1e-3  # tuned layers are in use
    np.testing.assert_allclose(TextEncoder().encode(HAPPY), a, atol=1e-6)  # the base model was not touched


def test_tuned_encoder_embeddings_match_the_tuning_forward(tuned: tuple) -> None:
    """The head was trained on the tuning code's own forward; the stream uses sentence-transformers:
    both must give the same vectors, or the engine sees other features than it was trained on."""
    import torch

    from engines.features.text import normalise_text
    from engines.features.tuning import _lower_states, _Upper

    _, enc, _ = tuned
    model = enc._load()
    bert = model[0].auto_model
    states = _lower_states(bert, model.tokenizer, [normalise_text(t) for t in ANGRY], 5, 128)
    with torch.inference_mode():
        ours = _Upper(bert.encoder.layer[5:], 384)(states).numpy()
    np.testing.assert_allclose(ours, enc.encode(ANGRY), atol=1e-5)


def test_rebuilt_from_features_json_and_checked_by_sha(tuned: tuple) -> None:
    _, enc, _ = tuned
    meta = enc.to_dict()
    assert meta["kind"] == "minilm-tuned" and meta["weights"] == TUNED_FILE and meta["layers"] == [5]
    again = text_encoder_from_dict(meta, dim=384, base_dir=enc.weights.parent)
    assert isinstance(again, TunedTextEncoder) and again.cache_namespace == enc.cache_namespace
    np.testing.assert_allclose(again.encode(NEUTRAL), enc.encode(NEUTRAL), atol=1e-6)
    assert again.cache_namespace != TextEncoder().cache_namespace
    with pytest.raises(ArtifactError, match="sha256"):
        text_encoder_from_dict({**meta, "sha256": "0" * 64}, dim=384, base_dir=enc.weights.parent)
    with pytest.raises(ArtifactError):
        text_encoder_from_dict(meta, dim=384)  # no artifact directory to find the layers in


def test_asr_text_tunes_on_the_unpunctuated_forms_and_zero_changes_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``asr_text`` reads that share of the training lines in their asr_form: at 0 the tuning is
    reproducible (same seed, same weights; its draws come from a generator of their own, so the
    recipes before it train as they did); at 1 it learns from other inputs."""
    from safetensors.numpy import load_file

    texts, labels = HAPPY + ANGRY + NEUTRAL, np.repeat(np.arange(3), 4)
    base = TextEncoder()

    def tune(rate: float, name: str) -> dict[str, np.ndarray]:
        cfg = TuneConfig(layers=1, epochs=1, lr=1e-3, batch_size=4, asr_text=rate)
        _, report = tune_text_encoder(base, (texts, labels), (texts, labels), 3, tmp_path / name, cfg, log=False)
        assert report["config"]["asr_text"] == rate
        return load_file(str(tmp_path / name))

    plain, again, heard = tune(0.0, "a.safetensors"), tune(0.0, "b.safetensors"), tune(1.0, "c.safetensors")
    assert all(np.array_equal(plain[k], again[k]) for k in plain)
    assert any(not np.array_equal(plain[k], heard[k]) for k in plain)
