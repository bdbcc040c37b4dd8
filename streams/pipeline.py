"""From ready utterances to emotion events: features, context windows, one engine call per batch.

:class:`Processor` is transport-free: the worker hands it a batch of joined utterances and gets
back the events to publish and the context items to append to Redis *after* the events are out
(so a crash in between replays the batch; the window append skips what it already has).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from engines.interface import MODALITIES, Engine, EngineBatch, EngineOutput
from streams.context import ContextItem, ContextStore
from streams.join import Utterance
from streams.schemas import EmotionEvent, ModelRef, Timings, event_id
from streams.validate import Payload


class Featurizer(Protocol):
    """Raw text and waveforms to the feature vectors the engine was trained on."""

    def text(self, texts: list[str]) -> np.ndarray: ...  # (N, Dt) float32

    def audio(self, waves: list[np.ndarray]) -> np.ndarray: ...  # (N, Da) float32


@dataclass
class BatchOutcome:
    events: list[tuple[EmotionEvent, Utterance]] = field(default_factory=list)
    appends: dict[str, list[ContextItem]] = field(default_factory=dict)
    engine_s: float = 0.0


def utterance_features(utts: list[Utterance], featurizer: Featurizer, dims: dict[str, int]) -> list[dict[str, np.ndarray]]:
    """Per utterance, modality -> feature vector, for the modalities that arrived and the model uses."""
    feats: list[dict[str, np.ndarray]] = [{} for _ in utts]
    texts: list[tuple[int, str]] = []
    waves: list[tuple[int, np.ndarray]] = []
    for i, utt in enumerate(utts):
        for modality, payload in utt.parts.items():
            assert isinstance(payload, Payload), type(payload)
            if dims[modality] == 0:
                continue
            if payload.kind == "text":
                texts.append((i, str(payload.value)))
            elif payload.kind == "wave":
                assert isinstance(payload.value, np.ndarray)
                waves.append((i, payload.value))
            else:
                assert isinstance(payload.value, np.ndarray)
                feats[i][modality] = payload.value
    if texts:
        emb = featurizer.text([t for _, t in texts])  # (n, Dt)
        for (i, _), vec in zip(texts, emb, strict=True):
            feats[i]["text"] = vec
    if waves:
        aud = featurizer.audio([w for _, w in waves])  # (n, Da)
        for (i, _), vec in zip(waves, aud, strict=True):
            feats[i]["audio"] = vec
    return feats


def build_batch(windows: list[list[ContextItem]], dims: dict[str, int]) -> EngineBatch:
    """Right-aligned windows (the target is each window's last item) as one padded batch."""
    b, w = len(windows), max(len(x) for x in windows)
    arrays = {m: np.zeros((b, w, dims[m]), dtype=np.float32) for m in MODALITIES}  # (B, W, D)
    present = np.zeros((b, w, len(MODALITIES)), dtype=np.float32)  # (B, W, 3)
    speakers = np.zeros((b, w), dtype=np.int64)
    valid = np.zeros((b, w), dtype=np.float32)
    for row, window in enumerate(windows):
        offset = w - len(window)
        names: dict[str, int] = {}
        for j, item in enumerate(window):
            col = offset + j
            valid[row, col] = 1.0
            speakers[row, col] = names.setdefault(item.speaker, len(names))
            for m_idx, m in enumerate(MODALITIES):
                vec = item.features.get(m)
                if vec is not None and dims[m] > 0:
                    arrays[m][row, col] = vec
                    present[row, col, m_idx] = 1.0
    target = np.full((b,), w - 1, dtype=np.int64)
    return EngineBatch(arrays["text"], arrays["audio"], arrays["video"], present, speakers, valid, target)


def sentiment_label(score: float) -> str:
    return "positive" if score > 0.2 else "negative" if score < -0.2 else "neutral"


class Processor:
    def __init__(self, engine: Engine, featurizer: Featurizer, store: ContextStore) -> None:
        self.engine = engine
        self.featurizer = featurizer
        self.store = store
        self.dims = engine.info.features.dims()
        self.max_window = min(engine.info.max_window, store.window + 1)
        self.model_ref = ModelRef(name=engine.info.name, version=engine.info.version, runtime=engine.info.runtime)

    async def run(self, utts: list[Utterance]) -> BatchOutcome:
        """Label ``utts`` (ordered by seq within each call); nothing is written to Redis yet."""
        started = time.monotonic()
        calls = list(dict.fromkeys(u.call_id for u in utts))
        history = await self.store.fetch(calls)
        return await asyncio.to_thread(self._compute, utts, history, started)

    async def commit(self, outcome: BatchOutcome) -> None:
        await self.store.append(outcome.appends)

    def _compute(self, utts: list[Utterance], history: dict[str, list[ContextItem]], started: float) -> BatchOutcome:
        feats = utterance_features(utts, self.featurizer, self.dims)
        windows: list[list[ContextItem]] = []
        appends: dict[str, list[ContextItem]] = {}
        for utt, f in zip(utts, feats, strict=True):
            known = history.setdefault(utt.call_id, [])
            past = [i for i in known if i.seq < utt.seq and i.utterance_id != utt.utterance_id]
            item = ContextItem(utt.utterance_id, utt.seq, utt.speaker, f)
            windows.append([*past[-(self.max_window - 1):], item] if self.max_window > 1 else [item])
            known.append(item)
            appends.setdefault(utt.call_id, []).append(item)
        out = self.engine.predict(build_batch(windows, self.dims))
        done = time.monotonic()
        events = [
            (self._event(utt, out, i, len(windows[i]), started, done), utt) for i, utt in enumerate(utts)
        ]
        return BatchOutcome(events=events, appends=appends, engine_s=done - started)

    def _event(self, utt: Utterance, out: EngineOutput, i: int, context: int, started: float, done: float) -> EmotionEvent:
        labels = self.engine.info.labels
        probs = out.probs[i]
        best = int(np.argmax(probs))
        sentiment = float(np.clip(out.sentiment[i], -1.0, 1.0))
        ready = utt.ready_at if utt.ready_at is not None else started
        return EmotionEvent(
            event_id=event_id(utt.call_id, utt.utterance_id, 0),
            call_id=utt.call_id,
            utterance_id=utt.utterance_id,
            seq=utt.seq,
            revision=0,
            speaker=utt.speaker,
            label=labels[best],
            confidence=round(float(probs[best]), 6),
            probabilities={lab: round(float(p), 6) for lab, p in zip(labels, probs, strict=True)},
            sentiment=round(sentiment, 6),
            sentiment_label=sentiment_label(sentiment),  # type: ignore[arg-type]
            weights={m: round(float(w), 6) for m, w in zip(MODALITIES, out.weights[i], strict=True)},
            modalities_present=list(utt.modalities),  # type: ignore[arg-type]
            model=self.model_ref,
            context_size=context,
            timings=Timings(
                join_s=round(ready - utt.first_at, 6),
                queue_s=round(max(0.0, started - ready), 6),
                engine_s=round(done - started, 6),
                end_to_end_s=round(time.monotonic() - utt.last_at, 6),
            ),
            produced_at=time.time(),
        )
