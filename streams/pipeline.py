"""From ready utterances to emotion events: features, context windows, one engine call per batch.

:class:`Processor` is transport-free: the worker hands it a batch of joined utterances and gets
back the events to publish and the context items to append to Redis *after* the events are out
(so a crash in between replays the batch with the same windows). An utterance already in its
call's labelled set (:meth:`ContextStore.labelled`) had its event published before: a replay of it
is acked without labelling it again, so its ``event_id`` never carries a second content.

A batch in which the encoders, the engine or the event build raise is split in halves (in order,
each half seeing the context the one before it added) until the utterances that fail alone are
found; those come back in :attr:`BatchOutcome.failed` with what failed, the rest get their events.
Redis failures are not split: they raise, and the worker retries the batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from engines.features import format_check, language
from engines.features.codecs import G711
from engines.features.emoji import EMOJI_WORDS
from engines.features.level import SpeakerLevels, apply_gain, gain_for, speech_level
from engines.features.pauses import shorten_silences
from engines.interface import MODALITIES, Engine, EngineBatch, EngineOutput, FeatureSpec
from engines.windows import pack_windows
from streams import heap
from streams.context import ContextItem, ContextStore
from streams.join import Utterance
from streams.schemas import EmotionEvent, ModelRef, Timings, call_instance, event_id
from streams.validate import Payload

log = logging.getLogger("emostream.pipeline")


class Featurizer(Protocol):
    """Raw text and waveforms to the feature vectors the engine was trained on."""

    def text(self, texts: list[str]) -> np.ndarray: ...  # (N, Dt) float32

    def audio(self, waves: list[np.ndarray]) -> np.ndarray: ...  # (N, Da) float32

    # (N,) float32 seconds of speech; with ``enough``, a clip stops being run once it has that much
    def speech(self, waves: list[np.ndarray], enough: float | None = None) -> np.ndarray: ...

    # optional attributes ``format_check``: an engines.features.format_check.FormatCheck of the
    # audio vectors (None or absent: no check), and ``format_action``: "warn" (default) or "drop";
    # ``language_check``: an engines.features.language.LanguageCheck of the transcripts (None or
    # absent: no check), and ``language_action``: "drop" (default) or "warn"; ``acknowledge(texts,
    # speakers)``: the transcripts as the encoder is to read them (absent: as written); ``unread(texts)``:
    # per transcript, a note where the encoder reads only its first tokens (absent: no note)


@dataclass
class BatchOutcome:
    events: list[tuple[EmotionEvent, Utterance | None]] = field(default_factory=list)  # with what caused it
    appends: dict[str, list[ContextItem]] = field(default_factory=dict)
    engine_s: float = 0.0
    failed: list[tuple[Utterance, str]] = field(default_factory=list)  # utterances that could not be labelled, why
    replayed: int = 0  # utterances whose events were already out (a replay): acked, not labelled again
    joins: dict[str, dict[str, str]] = field(default_factory=dict)  # call -> utterance -> parts labelled
    read_s: float = 0.0  # of the batch's time, reading its calls' windows from Redis
    #: utterances whose seq is below every one of their call's window: (call, utterance, its seq, the window's
    #: highest): labelled without context, a seq that started again (a transfer) or jumped ahead
    seq_behind: list[tuple[str, str, int, int]] = field(default_factory=list)

    def only(self, keep: Callable[[Utterance], bool]) -> BatchOutcome:
        """The part of the outcome caused by utterances ``keep`` accepts (events of a call's end stay)."""
        dropped = {(u.call_id, u.utterance_id) for u in self._utterances() if not keep(u)}
        if not dropped:
            return self
        return BatchOutcome(
            [(e, u) for e, u in self.events if u is None or keep(u)],
            {c: [i for i in items if (c, i.utterance_id) not in dropped] for c, items in self.appends.items()},
            self.engine_s,
            [(u, why) for u, why in self.failed if keep(u)],
            self.replayed,
            {c: {u: m for u, m in js.items() if (c, u) not in dropped} for c, js in self.joins.items()},
            self.read_s,
            [b for b in self.seq_behind if (b[0], b[1]) not in dropped],
        )

    def _utterances(self) -> list[Utterance]:
        return [u for _, u in self.events if u is not None] + [u for u, _ in self.failed]

    def merge(self, later: BatchOutcome) -> BatchOutcome:
        appends = {c: list(items) for c, items in self.appends.items()}
        for call_id, items in later.appends.items():
            appends.setdefault(call_id, []).extend(items)
        return BatchOutcome(
            self.events + later.events,
            appends,
            max(self.engine_s, later.engine_s),
            self.failed + later.failed,
            self.replayed + later.replayed,
            {c: {**self.joins.get(c, {}), **later.joins.get(c, {})} for c in {*self.joins, *later.joins}},
            self.read_s + later.read_s,
            self.seq_behind + later.seq_behind,
        )


MISDECLARED = format_check.PREFIXES  # how ignored["audio"] begins where the format check did not use audio
OTHER_LANGUAGE = language.OTHER_LANGUAGE  # how ignored["text"] / suspect["text"] begin for words in another language
LONG_TRANSCRIPT = "long transcript: "  # how suspect["text"] begins for words past what the text model reads
NOT_AN_INPUT = "this model uses no "  # ignored[m] of a part the model has no input for (not counted as ignored)
BEHIND = "worker behind: "  # how ignored["audio"] begins for audio not encoded so the worker catches up
#: the last token of a recorded join (``Processor.run``, "text+audio+behind") whose audio was not encoded, the
#: worker behind: its replay does the same (a worker before this token reads it as no modality and ignores it)
JOIN_BEHIND = "behind"
#: why a waveform was not encoded (``ignored["audio"]``): no age and no setting in it, so that a replay,
#: later or after the setting changed, says the same
BEHIND_NOTE = (
    f"{BEHIND}the worker came to this utterance more than engine.shed_audio_after_s after it was sent: its voice "
    "is not encoded while the worker catches up, the words decide"
)


def utterance_features(
    utts: list[Utterance],
    featurizer: Featurizer,
    dims: dict[str, int],
    min_speech_s: float = 0.0,
    shed_after_s: float = 0.0,
    now: float | None = None,
    levels: SpeakerLevels | None = None,
) -> list[dict[str, np.ndarray]]:
    """Per utterance, modality -> feature vector, for the modalities that arrived and the model uses.

    ``shed_after_s`` > 0: a waveform whose utterance was sent more than that long before ``now`` (wall
    seconds, default: the time now; :func:`sent_ago`: its first part's record time, unless the worker
    read that part's partition to its end since), and whose utterance has words to
    read, is not encoded, and ``utt.ignored["audio"]`` says why (:data:`BEHIND`): a worker behind,
    under overload or reading a backlog, labels from the words, several times faster with audio on a
    CPU, and catches up. A replay (``utt.shed`` set) does what its first run did, whatever its age.

    A waveform with less than ``min_speech_s`` of speech (silence, line noise, hold music) is not
    used: the utterance gets no audio vector and ``utt.ignored["audio"]`` says why. One whose
    voice the featurizer's ``format_check`` judges mis-declared (a wrong sample rate or G.711 law,
    :mod:`engines.features.format_check`) is used all the same and ``utt.suspect["audio"]`` says
    why (the voice gate weighs it: on the composite that beats the words alone), or, where the
    featurizer's ``format_action`` is ``"drop"``, not used and ``utt.ignored["audio"]`` says why.
    With ``levels`` (``engine.audio_level = "speaker"``) a waveform with speech is heard at its
    level relative to its speaker's own so far in the call (:mod:`engines.features.level`), not at
    the level the line brought. A transcript the featurizer's ``language_check`` reads as another language than the text
    model's (:mod:`engines.features.language`) is not encoded and ``utt.ignored["text"]`` says why
    (``language_action`` "drop"), or encoded and ``utt.suspect["text"]`` says why ("warn")."""
    feats: list[dict[str, np.ndarray]] = [{} for _ in utts]
    texts: list[tuple[int, str]] = []
    waves: list[tuple[int, np.ndarray]] = []
    wave_notes: dict[int, str] = {}  # what the decoding noticed of a waveform (clipping): suspect, if it is used
    raw_g711: set[int] = set()  # waveforms sent as raw G.711, the one encoding whose law can be declared wrongly
    now = time.time() if now is None else now
    for i, utt in enumerate(utts):
        forget_featurizer_notes(utt)  # an earlier attempt's (a batch split and retried): judged afresh
        for modality, payload in utt.parts.items():
            assert isinstance(payload, Payload), type(payload)
            if dims[modality] == 0:  # arrived, but this model has no input for it (video, mostly)
                utt.ignored[modality] = f"{NOT_AN_INPUT}{modality}"
                continue
            if payload.kind == "text":
                if has_words(str(payload.value), getattr(featurizer, "reads_emoji", False)):
                    texts.append((i, str(payload.value)))
                else:  # an empty transcript says nothing: the label comes from what else there is
                    utt.ignored["text"] = (
                        "no words: the transcript is empty, or only spaces, control characters or symbols the text "
                        "model does not read"
                    )
            elif payload.kind == "wave":
                assert isinstance(payload.value, np.ndarray)
                waves.append((i, payload.value))
                if payload.note is not None:
                    wave_notes[i] = payload.note
                if payload.encoding in (None, *G711):
                    raw_g711.add(i)
            else:
                assert isinstance(payload.value, np.ndarray)
                feats[i][modality] = payload.value
    language = getattr(featurizer, "language_check", None)
    if texts and language is not None:  # words the text model cannot read: not used, or used and said
        drop = getattr(featurizer, "language_action", "drop") == "drop"
        kept = []
        for (i, text), other in zip(texts, language.verdicts([t for _, t in texts]), strict=True):
            if other is not None and drop:
                utts[i].ignored["text"] = other
                continue
            kept.append((i, text))
            if other is not None:
                utts[i].suspect["text"] = other
        texts = kept
    if waves:  # a worker behind: the words decide where there are words to read (not: the voice is all there is)
        worded = {i for i, _ in texts} | {i for i, f in enumerate(feats) if "text" in f}
        shed = {i for i, _ in waves if i in worded and _late(utts[i], shed_after_s, now)}
        for i in shed:
            utts[i].ignored["audio"] = BEHIND_NOTE
        waves = [(i, w) for i, w in waves if i not in shed]
    acknowledge = getattr(featurizer, "acknowledge", None)
    if texts and acknowledge is not None:  # an agent's "I understand your frustration" is not the agent's anger
        read = acknowledge([t for _, t in texts], [utts[i].speaker for i, _ in texts])
        texts = [(i, r) for (i, _), r in zip(texts, read, strict=True)]
    gate = bool(waves) and min_speech_s > 0
    clips = [w for _, w in waves]
    detect: Future[np.ndarray] | None = None
    if gate and texts:  # beside the text encoder: the detector (ONNX Runtime, one thread) would leave a core idle
        detect = _speech_pool().submit(featurizer.speech, clips, min_speech_s)
    if texts:
        try:
            emb = featurizer.text([t for _, t in texts])  # (n, Dt)
        except BaseException:
            if detect is not None and not detect.cancel():  # not left holding a pool thread
                wait([detect])  # while the batch is split and retried (its failure is the text's)
            raise
        for (i, _), vec in zip(texts, emb, strict=True):
            feats[i]["text"] = vec
        unread = getattr(featurizer, "unread", None)
        if unread is not None:  # the rest of a long transcript is not read: the event says so
            for (i, _), note in zip(texts, unread([t for _, t in texts]), strict=True):
                if note is not None:  # beside what the language check said, if anything
                    said = utts[i].suspect.get("text")
                    utts[i].suspect["text"] = note if said is None else f"{said}; {note}"
    if gate:  # (n,), exact below min_speech_s
        seconds = detect.result() if detect is not None else featurizer.speech(clips, min_speech_s)
        for (i, w), s in zip(waves, seconds, strict=True):
            if s < min_speech_s:
                utts[i].ignored["audio"] = (
                    f"no speech: {float(s):.2f} s of speech, less than {min_speech_s:g} s" + _loud(w)
                )
        waves = [(i, w) for (i, w), s in zip(waves, seconds, strict=True) if s >= min_speech_s]
    if waves and levels is not None:  # the speakers' levels so far (level.py), each call's in seq order
        heard = []
        for i, w in sorted(waves, key=lambda iw: (utts[iw[0]].call_id, utts[iw[0]].seq)):
            utt = utts[i]
            median, n = levels.baseline(utt.call_id, utt.speaker, utt.seq, speech_level(w))
            if median is not None and levels.apply:  # the speaker's level put where the model's clips had theirs
                w = apply_gain(w, gain_for(median))
            elif median is not None and n >= QUIET_AFTER and median < QUIET_DBFS:  # heard as sent: said
                note = quiet_note(median, n)
                wave_notes[i] = note if i not in wave_notes else f"{wave_notes[i]}; {note}"
            heard.append((i, w))
        order = {i: k for k, (i, _) in enumerate(waves)}
        waves = sorted(heard, key=lambda iw: order[iw[0]])  # back in the batch's order
    if waves:  # as the model learnt voices: about a second of silence at an end, none long inside (pauses.py)
        waves = [(i, shorten_silences(w)) for i, w in waves]
        aud = featurizer.audio([w for _, w in waves])  # (n, Da)
        # the check was taught speech only: where the speech gate is off, noise would reach it
        check = getattr(featurizer, "format_check", None) if min_speech_s > 0 else None
        drop = getattr(featurizer, "format_action", "warn") == "drop"
        verdicts = check.verdicts(aud) if check is not None else [None] * len(waves)
        # a short clip (a filler's "uh") is not judged: at the right rate, some sound mis-declared
        shortest = format_check.MIN_CLIP_S * format_check.SAMPLE_RATE
        verdicts = [v if len(w) >= shortest else None for v, (_, w) in zip(verdicts, waves, strict=True)]
        # a G.711 law is declared wrongly only in raw G.711 (a file's header names its own; PCM has none):
        # elsewhere "the other law" said nothing a producer could act on (a telephone trial, pcm_s16le)
        verdicts = [
            None if v is not None and v.startswith(format_check.WRONG_LAW) and i not in raw_g711 else v
            for v, (i, _) in zip(verdicts, waves, strict=True)
        ]
        for (i, _), vec, wrong in zip(waves, aud, verdicts, strict=True):
            if not np.isfinite(
                vec
            ).all():  # the engine would give NaN, and the utterance be dead-lettered, words and all
                utts[i].ignored["audio"] = NOT_FINITE
                continue
            if wrong is not None and drop:
                utts[i].ignored["audio"] = wrong
                continue
            feats[i]["audio"] = vec
            notes = [n for n in (wrong, wave_notes.get(i)) if n is not None]
            if notes:  # used: the voice gate weighs it (measured better than the words alone)
                utts[i].suspect["audio"] = "; ".join(notes)
    return feats


#: ``ignored["audio"]`` where the audio encoder gave a vector that is not finite (a guard: decoding
#: refuses or clips what would overflow it)
NOT_FINITE = "unusable audio: its features came out not finite (NaN or infinite)"

#: a speaker heard as sent (engine.audio_level as-sent) whose median speech level over its utterances so
#: far (QUIET_AFTER of them at least) is under this is on a quiet line: the models' training speakers sit
#: at -47.5 dBFS or over 95 % of them (RAVDESS actors on the composite, engines/features/level.py), a
#: line 20 dB down cost 0.11 W-F1 (README 'Line levels'); a single calm or sad clip may be quieter
QUIET_DBFS = -50.0
QUIET_AFTER = 3
QUIET = "quiet line: "  # how the note begins


def quiet_note(median_db: float, n: int) -> str:
    return (
        f"{QUIET}the speaker's voice at {median_db:.0f} dBFS over {n} utterances, quieter than the model's training "
        f"speakers (under {QUIET_DBFS:g} dBFS): a line this quiet moves the voice's labels (README 'Line levels'; "
        "engine.audio_level = speaker hears each voice at its speaker's level)"
    )


#: a clip without speech this loud or louder is said to be sound, not silence (a line muted or on hold is far below)
LOUD_DBFS = -45.0


def _loud(wave: np.ndarray) -> str:
    """What a clip without speech sounds like, where that helps find why: a loud one may be speech
    declared at another sample rate or encoding than it has (8 kHz samples sent as 16 kHz sound an
    octave high, and the detector may hear no voice in them), or noise or music."""
    level = 10 * np.log10(float(np.mean(np.square(wave, dtype=np.float64))) + 1e-12) if wave.size else -120.0
    if level < LOUD_DBFS:
        return ""
    return (
        f" (the clip is sound at {round(min(level, 0.0))} dBFS, not silence: noise or music, or speech at another "
        "sample_rate or encoding than declared?)"
    )


def voice_shed(ignored: dict[str, str]) -> bool:
    """Whether an utterance's notes (its ``ignored``) say its voice was not encoded, the worker behind."""
    return ignored.get("audio", "").startswith(BEHIND)


def sent_ago(utt: Utterance, now: float) -> float | None:
    """How long before ``now`` (wall seconds) ``utt`` was sent, as far as the worker can tell: since its
    first part's record time (the producer's clock), and no longer than since the end offset its
    partition was read to before that part (:attr:`Utterance.fresh_at`, the worker's own clock: a
    producer whose clock runs behind does not make a worker that keeps up look behind, and one whose
    clock runs ahead is believed, as before); None: neither is known."""
    ages = [now - t for t in (utt.first_ts, utt.fresh_at) if t is not None]
    return min(ages) if ages else None


def _late(utt: Utterance, shed_after_s: float, now: float) -> bool:
    """Whether ``utt``'s audio is not to be encoded, the worker behind (see :func:`utterance_features`)."""
    if utt.shed is not None:  # a replay: as the first run did
        return utt.shed
    age = sent_ago(utt, now)
    return shed_after_s > 0 and age is not None and age > shed_after_s


_T = TypeVar("_T")


#: how the notes :func:`utterance_features` itself writes in ``ignored`` begin (the join's, a part
#: dead-lettered, are kept)
FEATURIZER_NOTES = ("no speech: ", "no words: ", NOT_AN_INPUT, BEHIND, *MISDECLARED, OTHER_LANGUAGE, NOT_FINITE)


def forget_featurizer_notes(utt: Utterance) -> None:
    """Drop what an earlier encoding of ``utt`` noted (it is encoded again and notes afresh)."""
    utt.suspect.clear()
    for modality, why in list(utt.ignored.items()):
        if why.startswith(FEATURIZER_NOTES):
            del utt.ignored[modality]


def has_words(text: str, reads_emoji: bool = False) -> bool:
    """Whether a transcript holds a letter, a digit, a punctuation mark or an emoji the encoders
    read as a word (engines/features/emoji.py). "", "  \n", "\x00\x00" do not: encoded, they got a
    confident 'neutral' that no one said; nor do "🦄🦄" or "★★★", which the English text model read as
    unknown tokens (an emoji-only line came out joy 0.60). With ``reads_emoji`` (a multilingual
    encoder whose vocabulary holds them) every symbol counts."""
    words = "LNPS" if reads_emoji else "LNP"
    return any(unicodedata.category(ch)[0] in words or ch in EMOJI_WORDS for ch in text)


def _to_encode(utt: Utterance) -> bool:
    """Whether an utterance holds raw text or a waveform (its vectors need no encoder)."""
    return any(isinstance(p, Payload) and p.kind != "vector" for p in utt.parts.values())


_SPEECH_POOL: ThreadPoolExecutor | None = None
_SPEECH_LOCK = threading.Lock()


def _speech_pool() -> ThreadPoolExecutor:
    """The threads that run the speech detector beside the text encoder: two, as two batches may
    be encoded at once (a batch's own utterances and the next batch's, see :meth:`Processor.run`)."""
    global _SPEECH_POOL
    with _SPEECH_LOCK:
        if _SPEECH_POOL is None:
            _SPEECH_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="speech")
        return _SPEECH_POOL


def _then_trim(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, then the heap trimmed if the encoders left it grown (:func:`streams.heap.trim`)."""
    try:
        return fn(*args)
    finally:
        heap.trim()


def build_batch(windows: list[list[ContextItem]], spec: FeatureSpec, targets: list[int] | None = None) -> EngineBatch:
    """Context windows as one padded batch; ``targets[i]`` indexes the utterance to label in
    ``windows[i]`` (default: its last item; later items are future context)."""
    return pack_windows(windows, spec, targets, vectors=_features)


def _features(item: ContextItem) -> dict[str, np.ndarray]:
    return item.features


def sentiment_label(score: float) -> str:
    return "positive" if score > 0.2 else "negative" if score < -0.2 else "neutral"


def _by_seq(items: list[ContextItem]) -> list[ContextItem]:
    """A call's window in conversation order (Redis keeps arrival order; a late utterance is behind)."""
    return sorted(items, key=lambda i: i.seq)


def _model_ref(engine: Engine) -> ModelRef:
    return ModelRef(name=engine.info.name, version=engine.info.version, runtime=engine.info.runtime)


@dataclass(frozen=True)
class _Row:
    """One engine input row: label ``window[target]``; revision 0 is the provisional event of a new
    utterance, revision 1 its revision once ``future`` later utterances (or the call's end) came."""

    call_id: str
    window: list[ContextItem]
    target: int
    revision: int
    trigger: Utterance | None  # the new utterance that caused this row (None: the call's end)
    context_reset: bool = False  # the call's window lost items this worker had written

    @property
    def item(self) -> ContextItem:
        return self.window[self.target]

    @property
    def future(self) -> int:
        return len(self.window) - 1 - self.target


@dataclass(frozen=True)
class _Ready:
    """Features encoded ahead of their batch, the part payloads they came from (held, so compared
    by identity), what the encoding ignored (no speech; a mis-declared format, with
    ``engine.format_check = "drop"``) and what it used but suspects (a mis-declared format)."""

    parts: dict[str, Any]
    features: dict[str, np.ndarray]
    ignored: dict[str, str]
    suspect: dict[str, str]

    def fits(self, utt: Utterance) -> bool:
        """Encoded from ``utt``'s parts (and, for a replay, as its first run did: its voice encoded or not)."""
        same = self.parts.keys() == utt.parts.keys() and all(self.parts[m] is utt.parts[m] for m in self.parts)
        return same and (utt.shed is None or utt.shed == voice_shed(self.ignored))


class Processor:
    """``future`` > 0 turns on revised events: each utterance is labelled again, with ``future``
    later utterances of its call as context, once they have arrived (or when the call ends)."""

    def __init__(
        self,
        engine: Engine,
        featurizer: Featurizer,
        store: ContextStore,
        future: int = 0,
        revision_engine: Engine | None = None,
        min_speech_s: float = 0.0,
        shed_audio_after_s: float = 0.0,
        wall: Callable[[], float] = time.time,
        audio_level: str = "as-sent",
    ) -> None:
        self.engine = engine
        # each call's speakers' levels so far (engines/features/level.py): applied with engine.audio_level
        # "speaker", watched for a quiet line otherwise
        self.levels = SpeakerLevels(apply=audio_level == "speaker")
        self.shed_audio_after_s = shed_audio_after_s  # audio of utterances sent longer ago is not encoded (0: all is)
        self.wall = wall  # the clock that ages utterances against their record times
        self.computing_since: float | None = None  # monotonic start of the batch in the engine (liveness)
        self.min_speech_s = min_speech_s  # audio with less speech is not used (0: all audio is)
        self.revision_engine = revision_engine or engine  # labels revisions (trained with future context)
        assert tuple(self.revision_engine.info.labels) == tuple(engine.info.labels)
        assert self.revision_engine.info.features == engine.info.features
        self.featurizer = featurizer
        self.store = store
        self.future = future
        self.dims = engine.info.features.dims()
        self.max_window = min(engine.info.max_window, self.revision_engine.info.max_window, store.window + 1)
        assert self.future < self.max_window, (future, self.max_window)
        self.model_ref = _model_ref(engine)
        self._prefetch: asyncio.Future[dict[tuple[str, str], _Ready]] | None = None
        self._prefetch_since: float | None = None  # monotonic start of the prefetch (liveness, as computing_since)
        self._ready: OrderedDict[tuple[str, str], _Ready] = OrderedDict()  # encoded ahead, not used yet
        self.max_ready = 4096  # utterances held encoded ahead at most (oldest dropped: encoded again if they come)
        self.revision_model_ref = _model_ref(self.revision_engine)
        self._written: OrderedDict[str, int] = OrderedDict()  # call -> highest seq this worker appended
        # call -> its generation, for the calls whose id was used before (ContextStore.started), as
        # the last read of the call's state found it: the ids of its events (call_instance)
        self._generations: dict[str, str] = {}
        self.max_remembered = 100_000
        if self.revision_engine is not engine and self.revision_model_ref == self.model_ref:
            # two artifacts under one name and version (artifacts trained before `train --future k`
            # named them `-future<k>`): the revisions' reference must still tell them apart
            k = self.revision_engine.info.future or future
            self.revision_model_ref = self.model_ref.model_copy(update={"name": f"{self.model_ref.name}-future{k}"})

    async def run(self, utts: list[Utterance], ahead: Callable[[], list[Utterance]] | None = None) -> BatchOutcome:
        """Label ``utts`` (ordered by seq within each call); nothing is written to Redis yet.

        ``ahead``: the utterances the next batch will hold, asked once this batch's prefetched
        features are in: their encoding starts then, beside this batch's engine and publishing."""
        started = time.monotonic()
        asking: dict[str, list[str]] = {}  # call -> its utterances in the batch (calls in batch order)
        for u in utts:
            asking.setdefault(u.call_id, []).append(u.utterance_id)
        calls = list(asking)
        state = await self.store.state(calls, asking)
        read_s = time.monotonic() - started
        for c, s in state.items():
            self._generation(c, s.generation)
        history = {c: _by_seq(s.window) for c, s in state.items()}
        fresh = [u for u in utts if u.utterance_id not in state[u.call_id].labelled]
        replayed = len(utts) - len(fresh)
        reset = frozenset(c for c in calls if self._lost(c, history[c]))
        if reset:
            log.warning("context of %d calls was lost (Redis data loss or expiry): %s", len(reset), sorted(reset)[:5])
        if not fresh:
            return BatchOutcome(replayed=replayed, read_s=read_s)
        for utt in fresh:  # a replay of an utterance labelled before (its event maybe out): the same parts
            joined = state[utt.call_id].joins.get(utt.utterance_id)
            parts = [] if joined is None else joined.split("+")
            if set(parts) & set(utt.parts):
                utt.parts = {m: p for m, p in utt.parts.items() if m in parts}
                utt.keep(tuple(utt.parts))
                utt.shed = JOIN_BEHIND in parts
        ready = await self._prefetched(fresh)
        if ahead is not None:
            self.prefetch(ahead())
        outcome = await self._computing(self._isolated, fresh, history, started, reset, False, ready)
        outcome.replayed = replayed
        outcome.read_s = read_s
        for utt in fresh:
            behind = voice_shed(utt.ignored)
            tokens = [*utt.modalities, JOIN_BEHIND] if behind else list(utt.modalities)
            outcome.joins.setdefault(utt.call_id, {})[utt.utterance_id] = "+".join(tokens)
        return outcome

    def prefetch(self, utts: list[Utterance]) -> None:
        """Start the encoders on utterances that a later batch will hold (the worker asks for the
        next batch's as soon as a batch has its own features, and again while it publishes): their
        features do not depend on any context, so the encoders overlap the batch's engine and its
        Kafka and Redis work instead of waiting for them. One encoding runs at a time; utterances
        already encoded ahead (for the same parts) are not encoded again. A batch uses what is
        ready for its utterances and encodes the rest itself. With ``engine.audio_level = "speaker"``
        a voice's features depend on its speaker's earlier levels, so nothing is encoded ahead: an
        utterance encoded before an earlier one of its speaker would miss that one's level (heard as
        sent, the quiet-line note can miss it likewise: README 'Line levels')."""
        if self.levels.apply:
            return
        if self._prefetch is not None:
            if not self._prefetch.done():
                return
            self._harvest()
        todo = [u for u in utts if _to_encode(u) and not self._encoded(u)]
        if not todo:  # nothing for an encoder (vectors only, say): the batch reads its vectors itself
            return
        # copies, taken here on the event loop: the thread neither sees a replay's parts change
        # under it nor marks the queued utterance (what it ignored is carried over only when used)
        copies = [dataclasses.replace(u, parts=dict(u.parts), ignored={}, suspect={}) for u in todo]
        self._prefetch_since = time.monotonic()
        task = asyncio.ensure_future(asyncio.to_thread(_then_trim, self._encode, copies))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a result never awaited: no warning
        self._prefetch = task

    def _encoded(self, utt: Utterance) -> bool:
        r = self._ready.get((utt.call_id, utt.utterance_id))
        return r is not None and r.fits(utt)

    def _utterance_features(self, utts: list[Utterance]) -> list[dict[str, np.ndarray]]:
        return utterance_features(
            utts, self.featurizer, self.dims, self.min_speech_s, self.shed_audio_after_s, self.wall(), self.levels
        )

    def _harvest(self) -> None:
        """A finished prefetch's features into :attr:`_ready` (a failed one leaves them to their batch)."""
        task, self._prefetch = self._prefetch, None
        if task is None or task.cancelled() or task.exception() is not None:
            return
        self._ready.update(task.result())
        while len(self._ready) > self.max_ready:
            self._ready.popitem(last=False)

    def _encode(self, utts: list[Utterance]) -> dict[tuple[str, str], _Ready]:
        feats = self._utterance_features(utts)
        return {
            (u.call_id, u.utterance_id): _Ready(u.parts, f, u.ignored, u.suspect)
            for u, f in zip(utts, feats, strict=True)
        }

    async def _prefetched(self, utts: list[Utterance]) -> dict[tuple[str, str], _Ready]:
        """What was encoded ahead for ``utts`` (taken out of :attr:`_ready`), once the encoding
        running now (the next batch's: these, mostly) has finished."""
        task = self._prefetch
        if task is not None:
            self.computing_since = self._prefetch_since  # a wedged encoder stops the heartbeat here too
            try:
                await asyncio.shield(task)
            except Exception:  # encoded again with the batch, where a failure is isolated to its utterance
                log.debug("prefetched encoding failed; the batch encodes its utterances itself", exc_info=True)
            finally:
                self.computing_since = None
            self._harvest()
        keys = {(u.call_id, u.utterance_id) for u in utts}
        return {k: self._ready.pop(k) for k in keys if k in self._ready}

    async def _computing(self, fn: Callable[..., BatchOutcome], *args: Any) -> BatchOutcome:
        """``fn`` (encoders and engine) in a thread, marked in :attr:`computing_since` meanwhile."""
        self.computing_since = time.monotonic()
        try:
            return await asyncio.to_thread(_then_trim, fn, *args)
        finally:
            self.computing_since = None

    async def record(self, outcome: BatchOutcome) -> None:
        """Before publishing: which parts each utterance was labelled with (see :meth:`run`)."""
        await self.store.record_joins(outcome.joins)

    def _lost(self, call_id: str, window: list[ContextItem]) -> bool:
        """Whether Redis no longer has what this worker appended for the call."""
        written = self._written.get(call_id)
        return written is not None and (not window or window[-1].seq < written)

    async def close(self, call_id: str) -> BatchOutcome:
        """The call ended: the final revisions of its last utterances, with the future they have."""
        self._generation(call_id, (await self.store.generations([call_id]))[call_id])  # its report's id too
        if not self.future:
            return BatchOutcome()
        started = time.monotonic()
        known = _by_seq((await self.store.fetch([call_id]))[call_id])
        rows = [self._revision(call_id, known, j, None) for j in range(max(0, len(known) - self.future), len(known))]
        try:
            return await self._computing(self._predict, rows, started, {})
        except Exception:  # the engine failing on a finished call's window must not hold up the stream
            log.exception("final revisions of call %s failed; the call closes without them", call_id)
            return BatchOutcome()

    async def commit(self, outcome: BatchOutcome) -> None:
        await self.store.append(outcome.appends)
        for call_id, items in outcome.appends.items():
            if items:
                self._written[call_id] = max(self._written.pop(call_id, -1), max(i.seq for i in items))
        while len(self._written) > self.max_remembered:
            self._written.popitem(last=False)

    def forget_cached(self) -> None:
        """Drop the windows held in memory (the worker's partitions changed), and the features
        encoded ahead (of utterances another worker may now own)."""
        self.store.forget_cached()
        self._ready.clear()
        self._generations.clear()  # read again with each call's next state
        self._written.clear()  # another worker may have written them meanwhile (a context reset it is not)

    async def release(
        self, call_ids: list[str], ended: dict[str, int] | None = None, partitions: dict[str, int] | None = None
    ) -> None:
        """The calls ended: free their windows (and declarations); ``ended``, ``partitions``: see
        :meth:`ContextStore.release`."""
        await self.store.release(call_ids, ended, partitions)
        for call_id in call_ids:
            self._written.pop(call_id, None)
            self._generations.pop(call_id, None)
            self.levels.forget(call_id)

    async def superseded(self, call_id: str, ended_offset: int) -> bool:
        """Whether a call's 'ended', at ``ended_offset`` of its control partition, came before the
        'started' of the call now under its id (its generation, read from Redis): an earlier call's
        'ended' read again after a crash, which must not close the new call."""
        generation = (await self.store.generations([call_id]))[call_id]
        self._generation(call_id, generation)
        return bool(generation) and int(generation) > ended_offset

    def generation(self, call_id: str) -> str:
        """The call's generation as last read ('' for the first call under its id)."""
        return self._generations.get(call_id, "")

    def instance(self, call_id: str) -> str:
        """The call as its messages' ids name it (:func:`~streams.schemas.call_instance`), as the
        last read of its state found it (a batch of it, or its close)."""
        return call_instance(call_id, self._generations.get(call_id, ""))

    def _generation(self, call_id: str, generation: str) -> None:
        if generation:
            self._generations[call_id] = generation
        else:
            self._generations.pop(call_id, None)

    async def started(self, call_id: str, modalities: list[str], offset: int, identity: str = "") -> bool:
        """A call's 'started' (see :meth:`ContextStore.started`): True if its id's previous call closed
        or started before it."""
        again: bool = await self.store.started(call_id, modalities, offset, identity)
        if again:
            self._written.pop(call_id, None)
            self.levels.forget(call_id)  # another call under the same id: its speakers start afresh
        return again

    def _isolated(
        self,
        utts: list[Utterance],
        history: dict[str, list[ContextItem]],
        started: float,
        reset: frozenset[str] = frozenset(),
        retried: bool = False,
        ready: dict[tuple[str, str], _Ready] | None = None,
    ) -> BatchOutcome:
        """:meth:`_compute`, splitting the batch around the utterances it fails on (see the module doc).
        What was encoded is kept in ``ready`` for the halves: a failure after the encoders (the engine,
        an event) does not encode the batch again, the audio included; the lone utterance's last try
        encodes it afresh."""
        ready = {} if ready is None else ready
        try:
            return self._compute(utts, {c: list(items) for c, items in history.items()}, started, reset, ready)
        except Exception as exc:
            if len(utts) > 1:
                mid = len(utts) // 2
                log.warning("batch of %d failed (%s: %s); splitting it", len(utts), type(exc).__name__, exc)
                first = self._isolated(utts[:mid], history, started, reset, ready=ready)
                after = {c: list(items) for c, items in history.items()}
                for call_id, items in first.appends.items():
                    known = after.setdefault(call_id, [])
                    ids = {i.utterance_id for i in known}
                    known.extend(i for i in items if i.utterance_id not in ids)
                    known.sort(key=lambda i: i.seq)
                return first.merge(self._isolated(utts[mid:], after, started, reset, ready=ready))
            if not retried:  # alone, once more: a passing fault is not the utterance's (the encoder's included)
                for u in utts:
                    ready.pop((u.call_id, u.utterance_id), None)
                return self._isolated(utts, history, started, reset, retried=True, ready=ready)
            utt = utts[0]
            log.exception("utterance %s of call %s cannot be processed", utt.utterance_id, utt.call_id)
            return BatchOutcome(failed=[(utt, f"{type(exc).__name__}: {exc}"[:500])])

    def _compute(
        self,
        utts: list[Utterance],
        history: dict[str, list[ContextItem]],
        started: float,
        reset: frozenset[str] = frozenset(),
        ready: dict[tuple[str, str], _Ready] | None = None,
    ) -> BatchOutcome:
        feats = self._features(utts, {} if ready is None else ready)
        behind: list[tuple[str, str, int, int]] = []
        rows: list[_Row] = []
        appends: dict[str, list[ContextItem]] = {}
        for utt, f in zip(utts, feats, strict=True):
            known = history.setdefault(utt.call_id, [])
            past = [i for i in known if i.seq < utt.seq and i.utterance_id != utt.utterance_id]
            item = ContextItem(
                utt.utterance_id, utt.seq, utt.speaker, f, dict(utt.suspect), dict(utt.ignored), tuple(utt.modalities)
            )
            window = [*past[max(0, len(past) - (self.max_window - 1)) :], item] if self.max_window > 1 else [item]
            rows.append(_Row(utt.call_id, window, len(window) - 1, 0, utt, utt.call_id in reset))
            appends.setdefault(utt.call_id, []).append(item)
            if any(i.utterance_id == utt.utterance_id for i in known):
                continue  # a replay: its revision was published with the first run
            if not past and known and known[-1].seq > utt.seq:
                behind.append((utt.call_id, utt.utterance_id, utt.seq, known[-1].seq))
            known.append(item)
            known.sort(key=lambda i: i.seq)
            if self.future:
                rows += self._due(utt.call_id, known, known.index(item), utt)
        outcome = self._predict(rows, started, appends)
        outcome.seq_behind = behind
        return outcome

    def _features(self, utts: list[Utterance], ready: dict[tuple[str, str], _Ready]) -> list[dict[str, np.ndarray]]:
        """Each utterance's features: prefetched where they were for the same parts, else encoded now."""
        got: list[dict[str, np.ndarray] | None] = []
        for u in utts:
            r = ready.get((u.call_id, u.utterance_id))
            if r is not None and r.fits(u):
                forget_featurizer_notes(u)
                u.ignored.update(r.ignored)
                u.suspect.update(r.suspect)
                got.append(r.features)
            else:
                got.append(None)
        todo = [i for i, f in enumerate(got) if f is None]
        if todo:
            fresh = self._utterance_features([utts[i] for i in todo])
            for i, f in zip(todo, fresh, strict=True):
                got[i] = f
                u = utts[i]  # kept for a retry of the batch (see _isolated), with the notes of the encoding
                notes = {m: why for m, why in u.ignored.items() if why.startswith(FEATURIZER_NOTES)}
                ready[(u.call_id, u.utterance_id)] = _Ready(dict(u.parts), f, notes, dict(u.suspect))
        return [f if f is not None else {} for f in got]

    def _due(self, call_id: str, known: list[ContextItem], p: int, trigger: Utterance) -> list[_Row]:
        """The revisions that the utterance just put at ``known[p]`` completes: the one that now
        has exactly ``future`` later utterances, if the new one is among them; or, when the new one
        came late (after ``future`` or more later ones), the new one itself. So every utterance is
        revised once as soon as it has ``future`` later ones, whatever order they came in."""
        q = len(known) - 1 - self.future  # the utterance with exactly `future` later ones
        if q < 0:
            return []
        return [self._revision(call_id, known, q if q < p else p, trigger)]

    def _revision(self, call_id: str, known: list[ContextItem], j: int, trigger: Utterance | None) -> _Row:
        future = min(self.future, len(known) - 1 - j)
        start = max(0, j - (self.max_window - 1 - future))
        return _Row(call_id, known[start : j + future + 1], j - start, 1, trigger)

    def _predict(self, rows: list[_Row], started: float, appends: dict[str, list[ContextItem]]) -> BatchOutcome:
        if not rows:
            return BatchOutcome(appends=appends)
        # provisional rows and revisions go to their engines (the same one unless a revision model is set)
        groups = [[i for i, r in enumerate(rows) if r.revision == 0], [i for i, r in enumerate(rows) if r.revision > 0]]
        if self.revision_engine is self.engine:
            groups = [list(range(len(rows)))]
        outs: dict[int, tuple[EngineOutput, int]] = {}
        for idx in groups:
            if not idx:
                continue
            engine = self.engine if rows[idx[0]].revision == 0 else self.revision_engine
            batch = build_batch([rows[i].window for i in idx], engine.info.features, [rows[i].target for i in idx])
            out = engine.predict(batch)
            outs.update({i: (out, k) for k, i in enumerate(idx)})
        done = time.monotonic()
        events = [(self._event(r, *outs[i], started, done), r.trigger) for i, r in enumerate(rows)]
        return BatchOutcome(events=events, appends=appends, engine_s=done - started)

    def _event(self, row: _Row, out: EngineOutput, i: int, started: float, done: float) -> EmotionEvent:
        labels = self.engine.info.labels
        probs = out.probs[i]
        best = int(np.argmax(probs))
        sentiment = float(np.clip(out.sentiment[i], -1.0, 1.0))
        item, utt = row.item, row.trigger
        if row.revision == 0 and utt is not None:
            ready = utt.ready_at if utt.ready_at is not None else started
            present = list(utt.modalities)
            join_s, queue_s = ready - utt.first_at, max(0.0, started - ready)
        else:  # a revision says what its provisional event said of the parts
            present = item.modalities_present()
            join_s = queue_s = 0.0
        end_to_end = time.monotonic() - utt.last_at if utt is not None else done - started
        return EmotionEvent(
            event_id=event_id(row.call_id, item.utterance_id, row.revision, self._generations.get(row.call_id, "")),
            call_id=row.call_id,
            utterance_id=item.utterance_id,
            seq=item.seq,
            revision=row.revision,
            speaker=item.speaker,
            label=labels[best],
            confidence=round(float(probs[best]), 6),
            probabilities={lab: round(float(p), 6) for lab, p in zip(labels, probs, strict=True)},
            sentiment=round(sentiment, 6),
            sentiment_label=sentiment_label(sentiment),  # type: ignore[arg-type]
            weights={m: round(float(w), 6) for m, w in zip(MODALITIES, out.weights[i], strict=True)},
            modalities_present=present,  # type: ignore[arg-type]
            ignored=dict(utt.ignored if row.revision == 0 and utt is not None else item.ignored),  # type: ignore[arg-type]
            suspect=dict(item.suspect) or None,  # type: ignore[arg-type]
            model=self.revision_model_ref if row.revision > 0 else self.model_ref,
            context_size=len(row.window),
            context_reset=row.context_reset,
            future_context=row.future,
            timings=Timings(
                join_s=round(join_s, 6),
                queue_s=round(queue_s, 6),
                engine_s=round(done - started, 6),
                end_to_end_s=round(end_to_end, 6),
            ),
            produced_at=time.time(),
        )
