"""MiniLM written out in plain torch (engines/features/text_bf16.py): in fp32 it is the
SentenceTransformer's model to float precision; with bf16 weights (the onnxruntime-bf16 runtime)
it stays within the runtimes' parity bound, and a vector does not depend on its bucket (on a CPU
with AMX, to the bit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.errors import FeatureError  # noqa: E402
from engines.features.factory import text_encoder_from_dict  # noqa: E402
from engines.features.text import TextEncoder  # noqa: E402
from engines.features.text_bf16 import Bf16TextEncoder  # noqa: E402

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "Oh my God, you did what?!",
    "Okay.",
    "I told you already, the package never arrived and nobody calls me back, not once, in three weeks.",
    "Thank you so much, that's wonderful news!",
    "",
    "ça va? naïve café — “quoted”",
]


def shipped() -> TextEncoder:
    """The shipped default's tuned MiniLM (layers 4-5 from models/default), in torch fp32."""
    import json

    meta = json.loads((ROOT / "models" / "default" / "features.json").read_text())["text"]
    return text_encoder_from_dict(meta, base_dir=ROOT / "models" / "default")


@pytest.mark.parametrize("tuned", [False, True], ids=["minilm", "tuned"])
def test_written_out_in_fp32_it_is_the_sentence_transformer(tuned: bool) -> None:
    ref = shipped() if tuned else TextEncoder()
    got = Bf16TextEncoder(ref, dtype="float32")
    np.testing.assert_allclose(got.encode(TEXTS), ref.encode(TEXTS), atol=2e-5)


def test_with_bf16_weights_it_stays_close_and_a_vector_does_not_depend_on_its_bucket() -> None:
    ref = shipped()
    got = Bf16TextEncoder(ref)
    want, vec = ref.encode(TEXTS), got.encode(TEXTS)
    cos = (want * vec).sum(1)
    assert cos.min() > 0.9995, cos
    assert np.abs(want - vec).max() > 1e-6  # it did run in bf16
    assert got.session().blocks[0].qkv.weight.dtype == torch.bfloat16
    alone = np.concatenate([got.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(alone, vec, atol=2e-3)  # padding is masked out
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)


def test_a_vector_has_the_same_bits_whatever_texts_share_its_call() -> None:
    """A replay encodes an utterance in another batch; bf16 rounding would magnify the fp32
    kernels' last-bit differences between shapes to about 1e-3 (the kill -9 chaos scenario then
    saw one event_id with two sets of probabilities). Exact on a CPU with AMX, where auto picks
    this encoder; elsewhere within bf16 rounding."""
    import pandas as pd

    from engines.runtime.select import cpu_amx_bf16

    got = Bf16TextEncoder(shipped())
    meld = ROOT.parent / "shared" / "data" / "meld" / "dev_sent_emo.csv"
    pool = pd.read_csv(meld)["Utterance"].astype(str).tolist()[:300] if meld.is_file() else TEXTS * 50
    rng = np.random.default_rng(7)
    probes = pool[:40]
    want = got.encode(probes)  # one call: lengths 1 to 60-odd tokens, several spans and buckets
    worst = 0.0
    for i in range(len(probes)):
        others = [pool[j] for j in rng.integers(40, len(pool), int(rng.integers(1, 60)))]
        cut = int(rng.integers(0, len(others) + 1))
        vec = got.encode([*others[:cut], probes[i], *others[cut:]])[cut]
        worst = max(worst, float(np.abs(vec - want[i]).max()))
    assert worst <= (0.0 if cpu_amx_bf16() else 2e-3), worst


def test_tuned_layers_that_do_not_fit_minilm_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "text_encoder.safetensors"
    save_file({"encoder.layer.5.output.dense.weight": torch.zeros(3, 3)}, str(bad))
    enc = Bf16TextEncoder(TextEncoder())
    enc.encoder.weights = bad  # type: ignore[attr-defined]
    with pytest.raises(FeatureError, match="do not fit MiniLM"):
        enc.encode(["hello"])


def test_a_loaded_model_is_what_it_runs_and_its_vectors_have_a_cache_of_their_own() -> None:
    ref = TextEncoder()
    with torch.no_grad():  # weights changed in memory (as tuning does) are the ones that run
        ref._load()[0].auto_model.encoder.layer[5].output.dense.weight.mul_(0.5)
    got = Bf16TextEncoder(ref, dtype="float32")
    np.testing.assert_allclose(got.encode(TEXTS), ref.encode(TEXTS), atol=2e-5)
    assert got.cache_namespace.startswith(ref.cache_namespace + "/") and Bf16TextEncoder(ref).cache_namespace != (
        got.cache_namespace
    )


def test_a_sentence_encoder_of_another_layout_is_refused(tmp_path: Path) -> None:
    import json

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(
        json.dumps([{"type": f"sentence_transformers.models.{t}"} for t in ("Transformer", "Pooling", "Normalize")])
    )
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(FeatureError, match="mean pooling"):
        Bf16TextEncoder(TextEncoder(model_dir=tmp_path)).encode(["hello"])
