"""Turn dialogues into flat per-utterance features and windows (train and evaluate).

Features come from the extractors (text encoder, audio table), or, for dialogues that carry
precomputed vectors (``Dialogue.features``, the feature pickles), straight from the dialogues.
Windows are causal unless ``future = K`` (up to K later utterances of the dialogue as context).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.datasets.base import Dialogue, Utterance, label_set
from engines.errors import DatasetError
from engines.features import level, pauses
from engines.features.audio import AudioFeatureExtractor, read_audio_file
from engines.features.cache import FeatureCache, item_key
from engines.features.channel import Pauses, TelephoneChannel
from engines.features.format_check import FormatCheck, Misdeclared
from engines.features.speech import MIN_SPEECH_S, SpeechDetector
from engines.features.text import TextEncoder
from engines.interface import EMOTIONS, MODALITIES, FeatureSpec
from engines.windows import WindowIndex, dialogue_windows


class AudioTable:
    """Feature vectors of audio files, computed once per file content (cached on disk); with a
    ``channel`` (a :class:`~engines.features.channel.TelephoneChannel`), of each file as heard
    through that line (seeded by the file's content, cached apart from the clean features).

    ``speech`` holds each file's seconds of speech (:mod:`engines.features.speech`, cached too);
    :meth:`lookup` counts a file with less than ``min_speech_s`` as no audio, as the stream does
    (None: every file counts). With a ``format_check`` (:mod:`engines.features.format_check`),
    ``misdeclared`` marks the files with speech it judges mis-declared, which ``drop_misdeclared``
    counts as no audio too. Clips are encoded as the stream encodes them, their long silences cut
    short (:mod:`engines.features.pauses`; ``shorten`` False: whole, for the comparison).

    With ``dialogues`` (``engine.audio_level = "speaker"``), each of their utterances is heard at
    its level relative to its speaker's own so far in its dialogue, as the stream hears it
    (:mod:`engines.features.level`): a clip has features per gain, and :meth:`lookup` takes the
    dialogues' utterances in order."""

    def __init__(
        self,
        paths: Sequence[str],
        extractor: AudioFeatureExtractor,
        cache_root: str | Path | None = None,
        progress: bool = False,
        channel: TelephoneChannel | Misdeclared | Pauses | None = None,
        min_speech_s: float | None = MIN_SPEECH_S,
        format_check: FormatCheck | None = None,
        drop_misdeclared: bool = False,
        shorten: bool = True,
        dialogues: Sequence[Dialogue] | None = None,
        gains: Sequence[int] | None = None,
    ) -> None:
        if gains is not None and len(gains) != len(paths):
            raise ValueError(f"{len(gains)} gains for {len(paths)} paths")
        self.paths = sorted(set(paths))
        self.drop_misdeclared = drop_misdeclared
        self.min_speech_s = min_speech_s
        blobs = [Path(p).read_bytes() for p in self.paths]
        base = {p: item_key(b) for p, b in zip(self.paths, blobs, strict=True)}
        del blobs
        chan = f"/{channel.id}" if channel is not None else ""

        def heard(path: str) -> np.ndarray:
            clean = read_audio_file(path)
            return clean if channel is None else channel(clean, base[path])

        self._heard, self._base, self._chan, self._cache_root = heard, base, chan, cache_root
        self.seconds = {p: np.inf for p in self.paths}  # path -> its seconds of speech
        if min_speech_s is not None:
            detector = SpeechDetector()
            speech_cache = FeatureCache(f"speech/{detector.id}{chan}", root=cache_root)

            def speech(idx: list[int]) -> np.ndarray:  # in chunks: decoded clips are not all held at once
                return np.concatenate(
                    [detector.seconds([heard(self.paths[i]) for i in idx[j : j + 64]]) for j in range(0, len(idx), 64)]
                )

            got = speech_cache.get_or_compute([base[p] for p in self.paths], lambda idx: speech(idx)[:, None])
            self.seconds = dict(zip(self.paths, got.reshape(len(self.paths)).tolist(), strict=True))
        #: per utterance of ``dialogues``, in order, its gain in dB (None: every clip as it is)
        self.utterance_gains: list[int] | None = None
        if dialogues is not None:
            self.utterance_gains = speaker_gains(dialogues, self.levels())
            flat = [u.audio for d in dialogues for u in d.utterances]
            items = sorted({(p, g) for p, g in zip(flat, self.utterance_gains, strict=True) if p is not None})
        elif gains is not None:
            items = sorted(set(zip(paths, (int(g) for g in gains), strict=True)))
        else:
            items = [(p, 0) for p in self.paths]
        self.row = {item: i for i, item in enumerate(items)}
        # a clip at a gain: its key names the gain, and the way gains are applied past its first version
        gained = "" if level.VERSION == 1 else f"|v{level.VERSION}"
        keys = [base[p] if g == 0 else item_key(f"{base[p]}|gain{g:+d}{gained}") for p, g in items]
        namespace = f"audio/{extractor.id}{chan}"
        # how the clips are read, beside the extractor's id: their silences cut short (or not), and for
        # Whisper its segments (a long clip's features differ with them)
        reading = getattr(extractor, "reading", None)
        namespace += (f"/{pauses.RULE}" if shorten else "") + (f"/{reading}" if reading else "")
        cache = FeatureCache(namespace, root=cache_root)

        def wave(i: int) -> np.ndarray:  # as the stream encodes it: at its gain, its long silences cut short
            path, gain = items[i]
            x = level.apply_gain(heard(path), gain)
            return pauses.shorten_silences(x) if shorten else x

        def compute(idx: list[int]) -> np.ndarray:
            chunks = [idx[i : i + 64] for i in range(0, len(idx), 64)]
            if progress:
                from tqdm import tqdm

                chunks = tqdm(chunks, desc="audio features", unit="x64")
            return np.concatenate([extractor.extract([wave(i) for i in c]) for c in chunks])

        self.matrix = cache.get_or_compute(keys, compute).reshape(len(items), extractor.dim)
        self.speech = np.array([self.seconds[p] for p, _ in items], dtype=np.float32)
        # files with speech the check judges mis-declared, as in the stream (which checks only
        # what the speech gate let through)
        self.misdeclared = np.zeros((len(items),), dtype=bool)
        if format_check is not None and min_speech_s is not None and len(items):
            judged = np.array([v is not None for v in format_check.verdicts(self.matrix)], dtype=bool)
            self.misdeclared = judged & (self.speech >= min_speech_s)

    def misdeclared_clips(self) -> int:
        """How many clips the format check judged mis-declared (a clip heard at several gains once)."""
        return len({p for (p, _), row in self.row.items() if self.misdeclared[row]})

    def levels(self) -> dict[str, float | None]:
        """Each clip's level as heard through the table's channel (:func:`engines.features.level.speech_level`,
        cached); None where it has less than ``min_speech_s`` of speech, or no level."""
        cache = FeatureCache(f"level/v{level.VERSION}{self._chan}", root=self._cache_root)
        got = cache.get_or_compute(
            [self._base[p] for p in self.paths],
            lambda idx: np.array([[_or_nan(level.speech_level(self._heard(self.paths[i])))] for i in idx]),
        )
        enough = self.min_speech_s or 0.0
        return {  # to 0.01 dB as level.speech_level gives it (the cache holds float32)
            p: None if self.seconds[p] < enough else _or_none(round(v, 2))
            for p, v in zip(self.paths, got.reshape(len(self.paths)).tolist(), strict=True)
        }

    def lookup(
        self, paths: Sequence[str | None], dim: int, gains: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, dim) features (zeros where no audio, or no speech in it) and (N,) presence; each path
        heard at its gain in ``gains``, or with ``dialogues``, ``paths`` are their utterances' in
        order, or else at 0 dB."""
        gains = self.utterance_gains if gains is None else gains
        if gains is not None and len(gains) != len(paths):
            raise ValueError(
                f"{len(paths)} paths for a table of {len(gains)} utterances heard at their speakers' level"
            )
        out = np.zeros((len(paths), dim), dtype=np.float32)
        has = np.zeros((len(paths),), dtype=np.float32)
        for i, p in enumerate(paths):
            if p is None:
                continue
            row = self.row[(p, gains[i] if gains is not None else 0)]
            if self.drop_misdeclared and self.misdeclared[row]:
                continue
            if self.min_speech_s is None or self.speech[row] >= self.min_speech_s:
                out[i] = self.matrix[row]
                has[i] = 1.0
        return out, has


def heard_as(
    model: str | Path, dialogues: Sequence[Dialogue], extractor: AudioFeatureExtractor, **kw: Any
) -> AudioTable:
    """The table of ``dialogues``' clips as ``model`` hears them in the stream: at the level it learnt
    its voices at (:func:`engines.artifact.audio_level`: each utterance at its speaker's level so far
    in its dialogue, or every clip as it is); ``kw``: the rest of :class:`AudioTable`'s options."""
    from engines import artifact

    by_speaker = artifact.audio_level(model) == "speaker"
    paths = [u.audio for d in dialogues for u in d.utterances if u.audio]
    return AudioTable(paths, extractor, dialogues=dialogues if by_speaker else None, **kw)


def speaker_gains(dialogues: Sequence[Dialogue], levels: dict[str, float | None]) -> list[int]:
    """Per utterance of ``dialogues``, in order, the gain that hears it at its speaker's level so far in
    its dialogue (:func:`engines.features.level.causal_gains`; ``levels``: each clip's, None for no speech)."""
    gains: list[int] = []
    for d in dialogues:
        gains += level.causal_gains([(u.speaker, levels.get(u.audio) if u.audio else None) for u in d.utterances])
    return gains


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else x


def _or_none(x: float) -> float | None:
    return None if x != x else x


@dataclass
class Prepared:
    """Flat utterances of a dialogue list, their features and windows."""

    dialogues: list[Dialogue]
    labels: np.ndarray  # (N,) int64, indexes label_names
    sentiment: np.ndarray  # (N,) float32
    feats: dict[str, np.ndarray]  # modality -> (N, D)
    has: dict[str, np.ndarray]  # modality -> (N,) float32
    windows: WindowIndex
    label_names: tuple[str, ...] = EMOTIONS  # the dialogues' label set, in logits order
    future: int = 0  # later utterances a window may hold (0 = causal)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


def _precomputed(dialogues: list[Dialogue], spec: FeatureSpec) -> dict[str, np.ndarray]:
    """modality -> (N, D) stacked from ``Dialogue.features`` (modalities every dialogue carries)."""
    carried = [set((d.features or {}).keys()) for d in dialogues]
    common = set.intersection(*carried) if carried else set()
    dims = spec.dims()
    out: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        if m not in common or dims[m] == 0:
            continue
        arr = np.concatenate([np.asarray((d.features or {})[m], dtype=np.float32) for d in dialogues])
        if arr.shape[1] != dims[m]:
            raise DatasetError(f"the data's {m} vectors are {arr.shape[1]}-d but the model expects {dims[m]}-d")
        out[m] = arr
    return out


def text_features(
    utts: Sequence[Utterance], text_encoder: TextEncoder, dim: int, cache_root: str | Path | None, progress: bool
) -> np.ndarray:
    """(N, dim) float32: each utterance's transcript encoded (cached), zeros where it has none."""
    idx = [i for i, u in enumerate(utts) if u.text]
    text = np.zeros((len(utts), dim), dtype=np.float32)
    if idx:
        text[idx] = text_encoder.encode_cached([utts[i].text or "" for i in idx], cache_root, progress)
    return text


def prepare(
    dialogues: list[Dialogue],
    spec: FeatureSpec,
    text_encoder: TextEncoder | None,
    audio_table: AudioTable | None,
    max_window: int,
    cache_root: str | Path | None = None,
    progress: bool = False,
    *,
    future: int = 0,
) -> Prepared:
    """Features and windows of ``dialogues``; ``future = K`` lets windows hold K later utterances."""
    utts = [u for d in dialogues for u in d.utterances]
    feats: dict[str, np.ndarray] = _precomputed(dialogues, spec)
    has: dict[str, np.ndarray] = {m: np.ones((len(utts),), dtype=np.float32) for m in feats}
    if spec.dim("text") > 0 and "text" not in feats:
        assert text_encoder is not None
        feats["text"] = text_features(utts, text_encoder, spec.dim("text"), cache_root, progress)
        has["text"] = np.array([1.0 if u.text else 0.0 for u in utts], dtype=np.float32)
    if spec.dim("audio") > 0 and "audio" not in feats:
        if audio_table is None:
            feats["audio"] = np.zeros((len(utts), spec.dim("audio")), dtype=np.float32)
            has["audio"] = np.zeros((len(utts),), dtype=np.float32)
        else:
            feats["audio"], has["audio"] = audio_table.lookup([u.audio for u in utts], spec.dim("audio"))
    return Prepared(
        dialogues=dialogues,
        labels=np.array([u.emotion for u in utts], dtype=np.int64),
        sentiment=np.array([u.sentiment for u in utts], dtype=np.float32),
        feats=feats,
        has=has,
        windows=dialogue_windows(dialogues, max_window, future=future),
        label_names=label_set(dialogues),
        future=future,
    )
