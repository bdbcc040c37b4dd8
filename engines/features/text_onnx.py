"""The sentence encoder of a :class:`~engines.features.text.TextEncoder` run by ONNX Runtime.

    enc = OnnxTextEncoder(TextEncoder(), optimize=True, intra_op_threads=2)
    enc.encode(["you did what?"])  # (N, 384) float32, unit norm: the torch encoder's vectors

What it runs: the SentenceTransformer that ``TextEncoder._load()`` returns, exported as one graph
(``BertModel`` + attention-mask mean pooling + L2 normalisation; inputs ``input_ids``,
``attention_mask``, ``token_type_ids`` int64 (batch, seq); output ``embedding`` float32
(batch, dim); both axes dynamic; opset :data:`OPSET`). The model's own tokenizer, the same text
normalisation (:func:`~engines.features.text.normalise_text`) and the bucket size of
``TextEncoder.encode`` feed it (texts sorted by token count by default, which pads less than
TextEncoder's character count), so the vectors match the torch encoder (cosine >= 0.9999) and
share its feature cache namespace (:meth:`encode_cached` is the inherited one).

Export cache: ``<cache root>/onnx/text/<key>/model.onnx``, where ``key`` hashes the whole state
dict, the transformer config (the transformers version in it) and this module's export recipe, so
a fine-tuned or otherwise changed model gets its own export. ``model.opt-ort<version>.onnx`` beside it
is the same graph after ``onnxruntime.transformers.optimizer`` (model type "bert": fused
EmbedLayerNormalization, Attention, BiasGelu, SkipLayerNormalization). Files are written to a
temporary name and renamed, and a graph is checked against the torch encoder on a few probe
sentences before it is used unless a record (below) vouches for it: a new one, or one a crash left
between its rename and its check (:class:`~engines.errors.FeatureError` if they differ; it is removed).

The torch model is loaded only to export (its state dict names the export) and to check a new
graph. The export also records, under ``<cache root>/onnx/text/sources/``, which export the
encoder's source files give (:meth:`OnnxTextEncoder.source_key`: the export recipe, the encoder's
settings, the versions of the packages that export and tokenize, and the sha256 of every file of
its MiniLM directory and tuned weights); a process that
finds its record runs the cached graph with the model's own ``tokenizer.json`` through the
``tokenizers`` package, and never imports sentence-transformers nor holds the torch weights
(about 350 MB of a worker's resident memory, issue 12). Providers: CPU, with CUDA listed first
when onnxruntime-gpu offers it, unless ``providers`` says otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engines.errors import FeatureError
from engines.features.cache import DEFAULT_ROOT
from engines.features.text import TextEncoder
from engines.runtime.threads import encoder_session_options

log = logging.getLogger(__name__)
OPSET = 17
RECIPE = "minilm-meanpool-l2-v1"  # change when the exported graph changes; part of the cache key
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embedding"
PROBE = ["Oh my God, you did what?!", "Okay.", "I don't know, maybe we should just go home and forget it."]
PROBE_MIN_COSINE = 0.9999
CALL_COST_TOKENS = 24  # what one ONNX Runtime call costs on a CPU, in padded tokens (measured: tools/bench, issue 12)
PROBE_MIN_COSINE_INT8 = 0.98  # int8 weights: 0.987 on the probes with the shipped tuned MiniLM
EXPORTED_BY = ("torch", "transformers", "sentence-transformers", "tokenizers", "onnx", "onnxruntime")
INT8_RECIPE = "dyn-qint8-perchannel-v1"  # change when quantize_text_onnx changes; part of the file name


def state_key(model: Any) -> str:
    """sha256 hex of a SentenceTransformer's weights, transformer config and the export recipe."""
    import torch

    h = hashlib.sha256(f"{RECIPE}/opset{OPSET}".encode())
    h.update(model[0].auto_model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_layout(model: Any) -> None:
    """The graph recipe assumes Transformer -> mean Pooling -> Normalize; refuse anything else."""
    from sentence_transformers import SentenceTransformer

    if not isinstance(model, SentenceTransformer):
        raise FeatureError(f"cannot export {type(model).__name__}: OnnxTextEncoder needs a SentenceTransformer")
    names = [type(m).__name__ for m in model]
    if names != ["Transformer", "Pooling", "Normalize"]:
        raise FeatureError(
            f"cannot export sentence encoder with modules {names}; expected Transformer, Pooling, Normalize"
        )
    pooling = model[1]
    mode = getattr(pooling, "pooling_mode", None) or (
        "mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else None
    )
    if mode != "mean":
        raise FeatureError(f"cannot export sentence encoder with pooling {mode!r}; expected mean")


def _pooled_module(bert: Any) -> Any:
    """``BertModel`` + attention-mask mean pooling + L2 normalisation as one module."""
    import torch
    from torch import nn

    class MeanPooledEncoder(nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state  # (B, T, D)
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
            return torch.nn.functional.normalize(v, p=2.0, dim=1)  # (B, D), unit norm

    return MeanPooledEncoder(bert)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_text_onnx(model: Any, path: str | Path) -> None:
    """Write the SentenceTransformer ``model`` (mean pooling, L2) to ``path`` as one ONNX graph."""
    import onnx
    import torch

    _check_layout(model)
    bert = copy.deepcopy(model[0].auto_model).to("cpu").float().eval()  # the caller's model is untouched
    if hasattr(bert, "set_attn_implementation"):
        bert.set_attn_implementation("eager")  # the attention pattern the ORT optimizer fuses (sdpa is not)
    net = _pooled_module(bert).eval()
    tok = model.tokenizer(PROBE[:2], padding=True, return_tensors="pt")  # two lengths: padding is traced
    args = tuple(tok[n] if n in tok else torch.zeros_like(tok["input_ids"]) for n in INPUT_NAMES)
    axes = {n: {0: "batch", 1: "seq"} for n in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notes
            torch.onnx.export(
                net,
                args,
                str(tmp),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        onnx.checker.check_model(str(tmp))

    _atomic_write(Path(path), write)


def optimize_text_onnx(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """``onnxruntime.transformers.optimizer`` (bert fusions) from ``src`` to ``dst``; the fused op counts."""
    from onnxruntime.transformers import optimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimizer.optimize_model(
            str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=False
        )
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    if stats.get("Attention", 0) == 0:
        raise FeatureError(f"onnxruntime optimizer fused no attention in {src}: {stats}")
    _atomic_write(Path(dst), lambda tmp: opt.save_model_to_file(str(tmp)))
    return stats


def quantize_text_onnx(src: str | Path, dst: str | Path) -> None:
    """``src`` with int8 weights (ONNX Runtime dynamic quantization, per channel: activations are
    quantized per batch at run time; embeddings, LayerNorm and softmax stay fp32), to ``dst``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(src),
                str(tmp),
                weight_type=QuantType.QInt8,
                per_channel=True,
                # the fused graph's com.microsoft ops defeat shape inference: their outputs are float
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )

    _atomic_write(Path(dst), write)


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu offers it, then CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class LeanTokenizer:
    """A sentence-transformers model's tokenizer from its ``tokenizer.json``, through the
    ``tokenizers`` package alone (what its HF fast tokenizer runs): ids as the SentenceTransformer
    tokenizes, special tokens added, truncated to ``max_seq_length``, unpadded."""

    def __init__(self, model_dir: Path, max_seq_length: int) -> None:
        from tokenizers import Tokenizer

        if not (model_dir / "tokenizer.json").is_file():
            raise FeatureError(f"{model_dir} has no tokenizer.json")
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=max_seq_length, strategy="longest_first")
        self.whole = Tokenizer.from_file(str(model_dir / "tokenizer.json"))  # counts a text's tokens, uncut
        self.whole.no_padding()
        self.whole.no_truncation()
        settings = _read_json(model_dir / "tokenizer_config.json")
        st = _read_json(model_dir / "sentence_bert_config.json")
        # HF's BertTokenizerFast rebuilds the normaliser when its config disagrees with the file's:
        # refuse such a model rather than tokenize otherwise
        norm = dict(_read_json(model_dir / "tokenizer.json").get("normalizer") or {})
        for key, field in (("do_lower_case", "lowercase"), ("strip_accents", "strip_accents"),
                           ("tokenize_chinese_chars", "handle_chinese_chars")):  # fmt: skip
            if key in settings and field in norm and settings[key] != norm[field]:
                raise FeatureError(
                    f"{model_dir}: tokenizer_config {key}={settings[key]!r} but tokenizer.json {field}={norm[field]!r}"
                )
        self.lower = bool(st.get("do_lower_case", False))  # sentence-transformers' own lowercasing
        self.padding_side = str(settings.get("padding_side", "right"))
        pad = settings.get("pad_token", "[PAD]")
        pad_id = self.tok.token_to_id(pad if isinstance(pad, str) else pad.get("content", "[PAD]"))
        self.pad_token_id = int(pad_id or 0)

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        if self.lower:
            texts = [t.lower() for t in texts]
        out = self.tok.encode_batch(texts)
        return [e.ids for e in out], [e.type_ids for e in out]

    def count(self, texts: list[str]) -> list[int]:
        """Tokens of each text, special ones included, not truncated."""
        if self.lower:
            texts = [t.lower() for t in texts]
        return [len(e.ids) for e in self.whole.encode_batch(texts)]


class _ModelTokenizer:
    """A SentenceTransformer's own tokenizer, in :class:`LeanTokenizer`'s interface."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.padding_side = str(getattr(model.tokenizer, "padding_side", "right"))
        self.pad_token_id = int(model.tokenizer.pad_token_id or 0)

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        model = self.model
        if getattr(model[0], "do_lower_case", False):
            texts = [t.lower() for t in texts]
        tok = model.tokenizer(texts, padding=False, truncation="longest_first", max_length=model.max_seq_length)
        return list(tok["input_ids"]), (list(tok["token_type_ids"]) if "token_type_ids" in tok else None)

    def count(self, texts: list[str]) -> list[int]:
        """Tokens of each text, special ones included, not truncated."""
        if getattr(self.model[0], "do_lower_case", False):
            texts = [t.lower() for t in texts]
        counted = self.model.tokenizer(texts, padding=False, truncation=False, verbose=False)
        return [len(ids) for ids in counted["input_ids"]]


def _int8(src: Path) -> Path:
    """The int8 graph quantized from ``src``, beside it."""
    return src.with_name(f"{src.stem}.int8-{INT8_RECIPE}.onnx")


def _read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


class OnnxTextEncoder(TextEncoder):
    """``encode(texts) -> (N, dim) float32`` of ``encoder`` through ONNX Runtime; loaded on first use.

    A :class:`TextEncoder` (``kind``, ``dim``, ``config``, ``to_dict()`` and the cache namespace are
    the wrapped encoder's: the vectors are the same features). ``optimize`` runs the graph after
    the transformer optimizer's fusions; ``intra_op_threads`` caps ONNX Runtime's threads (None:
    its default, all cores); ``providers`` overrides :func:`default_providers`; ``cache_dir`` is
    the root of the export cache (default ``~/.cache/emostream``); ``sort_by`` is the length
    that orders texts into buckets (see :meth:`encode`).
    """

    def __init__(
        self,
        encoder: TextEncoder | None = None,
        *,
        optimize: bool = True,
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
        cache_dir: str | Path | None = None,
        sort_by: Literal["tokens", "chars"] = "tokens",
        quantize: bool = False,
    ) -> None:
        if sort_by not in ("tokens", "chars"):
            raise ValueError(f"sort_by must be 'tokens' or 'chars', not {sort_by!r}")
        self.encoder = encoder if encoder is not None else TextEncoder()
        super().__init__(self.encoder.config)
        self.kind = self.encoder.kind
        self.dim = self.encoder.dim
        self.sort_by = sort_by
        self.optimize = optimize
        self.quantize = quantize
        self.intra_op_threads = intra_op_threads
        self.providers = list(providers) if providers is not None else None
        self.cache_root = Path(cache_dir) if cache_dir is not None else DEFAULT_ROOT
        self._session: Any = None
        self._tokenizer: LeanTokenizer | _ModelTokenizer | None = None
        self._source_key: str | None = None
        self.onnx_path: Path | None = None  # the graph the session runs, once loaded

    @property
    def cache_namespace(self) -> str:
        return self.encoder.cache_namespace

    def to_dict(self) -> dict[str, Any]:
        return self.encoder.to_dict()

    def _load(self) -> Any:
        """The wrapped encoder's torch model (a SentenceTransformer)."""
        if self._model is None:
            self._model = self.encoder._load()
        return self._model

    def model_dir(self) -> Path:
        """The sentence-transformers directory the wrapped encoder loads (MiniLM's, from its wheel)."""
        from engines.features.text import default_model_dir

        return self.encoder._model_dir or default_model_dir()

    def source_key(self) -> str:
        """sha256 hex of what an export is made from, read without loading the model: the export
        recipe, the encoder's settings (a tuned encoder's hold its weights' sha256), the packages'
        versions, and every file of its model directory."""
        if self._source_key is not None:
            return self._source_key
        from importlib.metadata import PackageNotFoundError, version

        from engines.artifact import file_sha256

        h = hashlib.sha256(f"{RECIPE}/opset{OPSET}".encode())
        h.update(json.dumps([self.encoder.to_dict(), dataclasses.asdict(self.encoder.config)], sort_keys=True).encode())
        for package in EXPORTED_BY:  # another version may export or tokenize otherwise: export again
            try:
                h.update(f"{package}={version(package)}".encode())
            except PackageNotFoundError:
                h.update(f"{package}=-".encode())
        base = self.model_dir()  # (tuned weights: their sha256 is in the encoder's to_dict above)
        for f in sorted(p for p in base.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(base)}={file_sha256(f)}".encode())
        self._source_key = h.hexdigest()
        return self._source_key

    def _source_record(self) -> Path:
        return self.cache_root / "onnx" / "text" / "sources" / f"{self.source_key()[:32]}.json"

    def _paths(self, folder: Path) -> tuple[Path, Path]:
        import onnxruntime as ort

        return folder / "model.onnx", folder / f"model.opt-ort{ort.__version__}.onnx"

    def _graph(self, folder: Path) -> Path:
        """The graph this encoder runs from an export folder (plain, optimised or int8)."""
        plain, optimised = self._paths(folder)
        src = optimised if self.optimize else plain
        return _int8(src) if self.quantize else src

    def export_paths(self) -> tuple[Path, Path]:
        """(plain, optimised) graph paths for the current weights (nothing is written)."""
        return self._paths(self.cache_root / "onnx" / "text" / state_key(self._load())[:24])

    def int8_path(self) -> Path:
        """The int8 graph beside the graph it quantizes (optimised, or plain without ``optimize``)."""
        plain, optimised = self.export_paths()
        return _int8(optimised if self.optimize else plain)

    def _recorded_graph(self) -> Path | None:
        """The graph a previous export recorded for these source files, if it is still there."""
        try:
            folder = json.loads(self._source_record().read_text())["folder"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        path = self._graph(self.cache_root / "onnx" / "text" / str(folder))
        return path if path.is_file() else None

    def exported(self) -> bool:
        """Whether a record vouches for a cached graph of these source files (the first use then
        loads no torch); a model already in memory names its graph by its own state instead."""
        return self.encoder._model is None and self._recorded_graph() is not None

    def session(self) -> Any:
        """The ONNX Runtime session: the recorded graph of these source files, or the graph
        exported (and optimised) from the loaded model on first use."""
        if self._session is None:
            import onnxruntime as ort

            # a model already in memory may differ from its files (weights changed in place): its
            # own state names the graph; one loaded here from the files may use or leave the record
            from_files = self.encoder._model is None
            recorded = self._recorded_graph() if from_files else None
            path, new = (recorded, False) if recorded is not None else self._export()
            opts = encoder_session_options(self.intra_op_threads)
            providers = self.providers if self.providers is not None else default_providers()
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            self.onnx_path = path
            if recorded is None:  # no record vouches for it: a new graph, or one a crash left unchecked
                self._check_probe(path)
            if from_files and recorded is None:  # the next process finds this graph without loading the model
                record = json.dumps({"folder": path.parent.name}) + "\n"

                def write(tmp: Path) -> None:
                    tmp.write_text(record)

                try:
                    _atomic_write(self._source_record(), write)
                except OSError as exc:  # a read-only cache: each start loads the model, as before
                    log.warning("could not record the text graph for the next start (%s): %s", path, exc)
        return self._session

    def _export(self) -> tuple[Path, bool]:
        """(graph path, whether anything was written): export, optimise and quantize as needed."""
        model = self._load()
        _check_layout(model)
        plain, optimised = self.export_paths()
        new = False
        if not plain.is_file():
            export_text_onnx(model, plain)
            new = True
        path = plain
        if self.optimize:
            if not optimised.is_file():
                cfg = model[0].auto_model.config
                stats = optimize_text_onnx(plain, optimised, cfg.num_attention_heads, cfg.hidden_size)
                (optimised.parent / (optimised.stem + ".json")).write_text(json.dumps(stats) + "\n")
                new = True
            path = optimised
        if self.quantize:
            q = self.int8_path()
            if not q.is_file():
                quantize_text_onnx(path, q)
                new = True
            path = q
        return path, new

    def _check_probe(self, path: Path) -> None:
        """A graph no record vouches for must reproduce the torch encoder on the probe sentences;
        one that does not is removed with the graphs it was derived from or with (its folder), so
        that the next start exports them all again rather than optimising a bad export anew."""
        got, want = self.encode(PROBE), self.encoder.encode(PROBE)
        cos = float((got * want).sum(1).min())
        if not cos >= (PROBE_MIN_COSINE_INT8 if self.quantize else PROBE_MIN_COSINE):
            self._session = None
            import shutil

            try:
                shutil.rmtree(path.parent)
                gone = "graphs removed"
            except OSError as exc:  # a read-only cache: say so, the error is the probe's
                gone = f"could not remove them: {exc}"
            raise FeatureError(f"{path}: ONNX embeddings differ from torch (min cosine {cos:.6f}); {gone}")

    def tokenizer(self) -> LeanTokenizer | _ModelTokenizer:
        """The lean tokenizer; the loaded model's own where its files do not allow one."""
        if self._tokenizer is None:
            try:
                self._tokenizer = LeanTokenizer(self.model_dir(), self.config.max_seq_length)
            except FeatureError as exc:
                log.info("tokenizing with the torch model's tokenizer: %s", exc)
                self._tokenizer = _ModelTokenizer(self._load())
        return self._tokenizer

    def _tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        """Token ids and token type ids per text, unpadded (as the SentenceTransformer tokenizes)."""
        return self.tokenizer().encode(texts)

    def _token_counts(self, clean: list[str]) -> list[int]:
        return self.tokenizer().count(clean)

    def _pad(self, ids: list[list[int]], types: list[list[int]] | None) -> dict[str, np.ndarray]:
        """One bucket as graph inputs (n, T) int64, padded as the tokenizer pads."""
        tokenizer = self.tokenizer()
        width = max(len(x) for x in ids)
        left = tokenizer.padding_side == "left"
        feeds = {
            "input_ids": np.full((len(ids), width), tokenizer.pad_token_id, dtype=np.int64),
            "attention_mask": np.zeros((len(ids), width), dtype=np.int64),
            "token_type_ids": np.zeros((len(ids), width), dtype=np.int64),
        }
        for r, x in enumerate(ids):
            cols = slice(width - len(x), width) if left else slice(0, len(x))
            feeds["input_ids"][r, cols] = x
            feeds["attention_mask"][r, cols] = 1
            if types is not None:
                feeds["token_type_ids"][r, cols] = types[r]
        return feeds

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings (N, dim) float32, unit norm, in the order of ``texts``.

        Texts are normalised like ``TextEncoder.encode``, tokenized once, sorted by length and run
        in buckets of at most ``config.bucket_size``; length is counted in tokens (``sort_by="tokens"``,
        less padding than sorting by characters) or characters as TextEncoder does (``"chars"``).
        With tokens, the buckets are cut where padding would cost more than another call
        (:func:`length_buckets`): a batch of 32 stream utterances runs about twice as fast as one
        bucket padded to its longest. Padding is masked out, so a vector does not depend on its bucket,
        except with int8 weights (``quantize``): their activations are quantized with one scale per
        call, so those graphs keep the fixed buckets they were measured with.
        """
        assert isinstance(texts, list), type(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        self.session()  # loaded (or exported) before the texts are tokenized
        clean = [self.clean(t) for t in texts]
        ids, types = self._tokenize(clean)
        for idx in self._calls(clean, ids):
            feeds = self._pad([ids[i] for i in idx], None if types is None else [types[i] for i in idx])
            out[idx] = self._run_bucket(feeds)  # (n, dim)
        return out

    def _calls(self, clean: list[str], ids: list[list[int]]) -> list[list[int]]:
        """The texts' indexes, cut into the calls that :meth:`encode` makes (see there)."""
        lengths = [len(x) for x in ids] if self.sort_by == "tokens" else [len(t) for t in clean]
        order = sorted(range(len(clean)), key=lambda i: lengths[i])
        size = self.config.bucket_size
        if self.sort_by == "tokens" and not self.quantize:  # int8: activations are scaled per call, keep them together
            buckets = length_buckets([lengths[i] for i in order], CALL_COST_TOKENS, size)
        else:
            buckets = [(s, min(s + size, len(order))) for s in range(0, len(order), size)]
        return [order[start:stop] for start, stop in buckets]

    def _run_bucket(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """(n, dim) vectors of one padded bucket."""
        session = self.session()
        (emb,) = session.run([OUTPUT_NAME], {i.name: feeds[i.name] for i in session.get_inputs()})
        return np.asarray(emb)


def length_buckets(lengths: Sequence[int], call_cost: float, max_size: int) -> list[tuple[int, int]]:
    """Cut ascending ``lengths`` into runs [start, stop) of at most ``max_size`` that minimise the
    padded tokens (each run is padded to its last, longest item) plus ``call_cost`` per run: a
    dynamic programme over the cut points, exact for sorted lengths."""
    n = len(lengths)
    assert all(a <= b for a, b in zip(lengths, lengths[1:], strict=False)), "lengths must be sorted"
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_size), j):
            cost = best[i] + lengths[j - 1] * (j - i) + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs = []
    j = n
    while j > 0:
        runs.append((cut[j], j))
        j = cut[j]
    return runs[::-1]
