"""OnnxTextEncoder vs the torch TextEncoder on real MELD sentences (real model, real ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from engines.datasets import load_dataset  # noqa: E402
from engines.errors import FeatureError  # noqa: E402
from engines.features import text_onnx  # noqa: E402
from engines.features.text import TextEncoder  # noqa: E402
from engines.features.text_onnx import OnnxTextEncoder, state_key  # noqa: E402

pytestmark = pytest.mark.engine
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    if not (DATA / "meld").is_dir():
        pytest.skip(f"MELD not found under {DATA}")
    dev = [u.text or "" for d in load_dataset("meld", DATA, "dev") for u in d.utterances]
    longest = sorted(dev, key=len)[-4:]  # the longest dev utterances, padding-heavy buckets
    odd = ["", "don\x92t", "Wait\x85 what?", " ".join(["really"] * 200)]  # empty, mojibake, > max_seq_length
    return dev[::20] + longest + odd  # 64 utterances in 2 buckets


@pytest.fixture(scope="module")
def torch_encoder() -> TextEncoder:
    torch.set_num_threads(1)
    return TextEncoder()


@pytest.fixture(scope="module")
def reference(torch_encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    return torch_encoder.encode(texts)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def optimised(torch_encoder: TextEncoder, cache_dir: Path) -> OnnxTextEncoder:
    enc = OnnxTextEncoder(
        torch_encoder, optimize=True, intra_op_threads=1, providers=["CPUExecutionProvider"], cache_dir=cache_dir
    )
    enc.session()  # exports model.onnx, optimises it, checks the probe sentences
    return enc


def assert_parity(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, cos.min()
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()


def test_optimised_graph_matches_torch(optimised: OnnxTextEncoder, texts: list[str], reference: np.ndarray) -> None:
    assert optimised.onnx_path is not None and optimised.onnx_path.name.startswith("model.opt-ort")
    import onnx

    ops = {n.op_type for n in onnx.load(str(optimised.onnx_path)).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops  # the fusions that make it worth having
    assert_parity(optimised.encode(texts), reference)


def test_plain_graph_is_reused_and_matches_torch_with_char_buckets(
    optimised: OnnxTextEncoder,
    torch_encoder: TextEncoder,
    cache_dir: Path,
    texts: list[str],
    reference: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_export(*args: object) -> None:
        pytest.fail("the cached export was not reused")

    monkeypatch.setattr(text_onnx, "export_text_onnx", no_export)
    plain = OnnxTextEncoder(torch_encoder, optimize=False, intra_op_threads=1, cache_dir=cache_dir, sort_by="chars")
    got = plain.encode(texts)
    assert plain.onnx_path == optimised.export_paths()[0]
    assert_parity(got, reference)


def test_same_api_and_batch_independent(
    optimised: OnnxTextEncoder, torch_encoder: TextEncoder, texts: list[str], reference: np.ndarray
) -> None:
    assert isinstance(optimised, TextEncoder)
    assert (optimised.kind, optimised.dim, optimised.to_dict()) == (
        torch_encoder.kind,
        torch_encoder.dim,
        torch_encoder.to_dict(),
    )
    assert optimised.cache_namespace == torch_encoder.cache_namespace  # same vectors, one feature cache
    assert optimised.encode([]).shape == (0, 384)
    one = optimised.encode([texts[5]])  # a stream call: one utterance, no padding
    np.testing.assert_allclose(one[0], reference[5], atol=1e-4)


def test_changed_weights_get_their_own_export(
    optimised: OnnxTextEncoder, torch_encoder: TextEncoder, cache_dir: Path, texts: list[str], reference: np.ndarray
) -> None:
    """A fine-tuned top layer (the lead's ``minilm-tuned``) must never run the base model's graph."""
    model = torch_encoder._load()
    before = state_key(model)
    weight = model[0].auto_model.encoder.layer[-1].output.dense.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(1.5)
        assert state_key(model) != before
        tuned = OnnxTextEncoder(torch_encoder, optimize=False, intra_op_threads=1, cache_dir=cache_dir)
        got = tuned.encode(texts[:16])
        assert tuned.onnx_path is not None and optimised.onnx_path is not None
        assert tuned.onnx_path.parent != optimised.onnx_path.parent
        assert np.abs(got - reference[:16]).max() > 1e-3  # the changed layer is in use
        assert_parity(got, torch_encoder.encode(texts[:16]))
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert state_key(model) == before


def test_refuses_a_model_it_cannot_export(tmp_path: Path) -> None:
    class NotSentenceTransformer(TextEncoder):
        def _load(self) -> object:
            return object()

    enc = OnnxTextEncoder(NotSentenceTransformer(), cache_dir=tmp_path)
    with pytest.raises(FeatureError, match="SentenceTransformer"):
        enc.encode(["hi"])
    assert not any(tmp_path.iterdir())


def test_stream_extractors_run_the_shipped_text_encoder_in_onnxruntime() -> None:
    """The stream's default on a CPU without AMX (runtime auto -> onnxruntime) runs MiniLM in ONNX
    Runtime with the torch encoder's vectors (with AMX, openvino: tests/engine/test_openvino.py)."""
    from engines.registry import load_extractors
    from engines.runtime.select import resolve_runtime
    from streams.settings import Settings

    assert resolve_runtime(Settings().engine.runtime, cuda=False).name in (
        "onnxruntime",
        "openvino",
        "onnxruntime-bf16",
    )
    onnx = load_extractors("default", runtime=resolve_runtime("auto", cuda=False, amx=False, openvino=False)).text
    torch_enc = load_extractors("default", runtime="torch").text
    assert type(onnx) is OnnxTextEncoder and not isinstance(torch_enc, OnnxTextEncoder)
    texts = ["Oh my God!", "I told you already, the package never arrived.", "okay"]
    np.testing.assert_allclose(onnx.encode(texts), torch_enc.encode(texts), atol=1e-4)


def test_the_lean_tokenizer_gives_the_sentence_transformer_ids(torch_encoder: TextEncoder, texts: list[str]) -> None:
    """The worker tokenizes with tokenizer.json through `tokenizers` alone (no sentence-transformers
    import): the ids, type ids, padding token and side must be the SentenceTransformer's."""
    from engines.features.text import normalise_text
    from engines.features.text_onnx import LeanTokenizer

    model = torch_encoder._load()
    more = [
        "Ça va? Très bien!",
        "日本語のテキスト",
        "emoji 😀🎉 ok",
        "tab\tand\nnewline",
        "ALL CAPS SHOUTING!!!",
        "a" * 600,
    ]
    clean = [normalise_text(t) for t in texts + more]
    lean = LeanTokenizer(OnnxTextEncoder(torch_encoder).model_dir(), torch_encoder.config.max_seq_length)
    ids, types = lean.encode(clean)
    want = model.tokenizer(clean, padding=False, truncation="longest_first", max_length=model.max_seq_length)
    assert ids == list(want["input_ids"]) and types == list(want["token_type_ids"])
    assert max(len(x) for x in ids) == torch_encoder.config.max_seq_length  # the long ones are truncated
    assert lean.pad_token_id == model.tokenizer.pad_token_id and lean.padding_side == model.tokenizer.padding_side


def test_a_process_with_the_export_recorded_never_loads_the_torch_model(
    texts: list[str], reference: np.ndarray, tmp_path: Path
) -> None:
    """The first export from the files records which graph they give; a fresh encoder (a worker's
    start) runs that graph without loading MiniLM in torch. Other files, another source key."""
    cache = tmp_path / "cache"
    first = OnnxTextEncoder(TextEncoder(), optimize=True, intra_op_threads=1, cache_dir=cache)
    assert first._recorded_graph() is None
    first.session()  # loads the model from its files, exports, checks the probes, records
    assert first.encoder._model is not None and first._recorded_graph() == first.onnx_path
    fresh = OnnxTextEncoder(TextEncoder(), optimize=True, intra_op_threads=1, cache_dir=cache)
    got = fresh.encode(texts)
    assert fresh._model is None and fresh.encoder._model is None  # nothing loaded in torch
    assert fresh.onnx_path == first.onnx_path
    assert_parity(got, reference)
    # a copy of the model directory with one file changed has another source key
    import shutil

    copy = tmp_path / "minilm"
    shutil.copytree(fresh.model_dir(), copy)
    (copy / "README.md").write_text("changed\n")
    other = OnnxTextEncoder(TextEncoder(model_dir=copy), optimize=True, intra_op_threads=1, cache_dir=cache)
    assert other.source_key() != fresh.source_key() and other._recorded_graph() is None


def test_a_tokenizer_config_that_disagrees_with_tokenizer_json_is_not_tokenized_lean(tmp_path: Path) -> None:
    """HF's fast tokenizer rebuilds the normaliser when tokenizer_config.json disagrees with
    tokenizer.json; the lean one refuses such files (the encoder then uses the model's own)."""
    import json
    import shutil

    from engines.features.text import default_model_dir
    from engines.features.text_onnx import LeanTokenizer

    copy = tmp_path / "minilm"
    shutil.copytree(default_model_dir(), copy)
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**cfg, "do_lower_case": False}))
    with pytest.raises(FeatureError, match="do_lower_case"):
        LeanTokenizer(copy, 128)
    enc = OnnxTextEncoder(TextEncoder(model_dir=copy), optimize=False, cache_dir=tmp_path / "cache")
    assert type(enc.tokenizer()).__name__ == "_ModelTokenizer"


def test_a_graph_no_record_vouches_for_is_checked_before_use(tmp_path: Path) -> None:
    """A crash between a graph's rename and its probe check leaves a graph without its record: the
    next start checks it (and refuses a wrong one) instead of trusting it because it exists."""
    import onnx
    from onnx import numpy_helper

    from engines.features.text import TextEncoder

    made = OnnxTextEncoder(TextEncoder(), optimize=False, cache_dir=tmp_path / "a")
    made.encode(["warm up"])
    graph = onnx.load(str(made.export_paths()[0]))
    big = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # a weight matrix, changed
    big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) * 1.5, big.name))
    fresh = OnnxTextEncoder(TextEncoder(), optimize=False, cache_dir=tmp_path / "b")
    plain, _ = fresh.export_paths()
    plain.parent.mkdir(parents=True)
    onnx.save(graph, str(plain))  # where the graph goes, and no record: as a crash would leave it
    assert fresh._recorded_graph() is None
    with pytest.raises(FeatureError, match="differ from torch"):
        fresh.encode(["you did what?"])
    assert not plain.exists()  # removed: the next start exports it again
    again = OnnxTextEncoder(TextEncoder(), optimize=False, cache_dir=tmp_path / "b")
    assert again.encode(["you did what?"]).shape == (1, 384)
