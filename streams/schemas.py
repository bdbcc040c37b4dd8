"""Every message emostream reads or writes, defined once, typed and versioned.

Input topics (key = call id, value = JSON): :class:`TextPart`, :class:`AudioPart`,
:class:`VideoPart` (one part of one utterance each) and :class:`CallControl` (a call started with
its expected modalities, or ended). Output topics: :class:`EmotionEvent` and :class:`DeadLetter`.
``emostream schemas --out schemas/`` writes the JSON Schema files client teams use; a test checks
that the committed files match these definitions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import operator
import re
import time
from typing import Annotated, Any, Literal, TypeVar, get_args

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from streams.errors import InvalidMessage

SCHEMA_VERSION: Literal[1] = 1
Modality = Literal["text", "audio", "video"]  # engines.interface.MODALITIES (a test keeps them equal)
MAX_SEQ = 2**63 - 1  # a Kafka-sized integer: anything larger is a forged or broken producer
ID_CHARS = r"A-Za-z0-9._:@/-"  # what a call or utterance id may hold
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=rf"^[{ID_CHARS}]+$")]


#: characters a speaker may not hold: line breaks (a log line of its own) and the bidirectional
#: embeddings, overrides and isolates (they reverse what a supervisor reads); other format characters
#: stay (the zero-width joiners of Persian and Indic names, emoji sequences)
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


_ENDS = re.compile(r"^[\s\ufeff]+|[\s\ufeff]+$")  # spaces and byte-order marks at either end


def _speaker_name(value: str) -> str:
    """A speaker as telephony platforms name them ("Agent Smith", "+15551234567", "José", "sip:
    ext-204@pbx"): any printable characters, in Unicode NFC (one "Zoé" however a producer composes
    it). Not control characters or bidirectional overrides, and not blank; spaces and a byte-order
    mark at either end are dropped (" agent-7" is "agent-7", for the roles' globs)."""
    import unicodedata

    for ch in value:
        if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs"):
            raise PydanticCustomError(
                "speaker_character",
                "a speaker may not hold control characters, line breaks or bidirectional overrides ({char})",
                {"char": repr(ch)},
            )
    name = unicodedata.normalize("NFC", _ENDS.sub("", value))
    if not name:
        raise PydanticCustomError("speaker_blank", "a speaker must not be blank", {})
    return name


#: a part's speaker: printable characters, 1-128 of them (the JSON Schema's pattern leaves out the
#: C0 and C1 controls and line separators; the worker also refuses bidirectional overrides)
Speaker = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[^\u0000-\u001f\u007f-\u009f\u2028\u2029]+$",
        json_schema_extra={"not": {"pattern": "^[\\s\\ufeff]*$"}},  # not blank (the worker refuses it)
    ),
    AfterValidator(_speaker_name),
]
# A number in an input message is a JSON number: pydantic's lax mode would also take "1.5" and true
Number = Annotated[float, Strict()]


def _whole_number(value: Any) -> Any:
    """An integer (numpy's too), or a number with no fraction (``2.0``: JSON Schema's integer, as
    ``schema_version`` 1.0 is 1); not ``true`` (which pydantic reads as 1), ``2.5`` nor ``"2"``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (bool, np.bool_, float, str, bytes)):
        kind = (
            "a boolean"
            if isinstance(value, (bool, np.bool_))
            else "a decimal number"
            if isinstance(value, float)
            else "a string"
        )
        raise PydanticCustomError("int_type", f"must be an integer, not {kind}")
    try:
        return operator.index(value)
    except TypeError:
        return value  # pydantic says what it is not


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


MAX_ABS_FEATURE = 1e6  # a feature value beyond this is no feature: 1e38 overflowed the engine's norms to NaN


def _finite(values: list[float] | None, what: str) -> list[float] | None:
    if values is None:
        return values
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} holds NaN or Inf")
    if any(abs(v) > MAX_ABS_FEATURE for v in values):
        raise ValueError(f"{what} holds a value beyond +-{MAX_ABS_FEATURE:g}")
    return values


F32_DESCRIPTION = (
    "the same vector as base64 of little-endian float32, 4 bytes a value: the compact form (a third of the "
    "JSON numbers' size, and read without parsing a number per value)"
)


def f32_vector(value: str, what: str) -> np.ndarray:
    """A vector sent as base64 of little-endian float32 (read-only float32, finite), or ValueError."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not base64: {exc}") from None
    if len(raw) % 4:
        raise ValueError(f"{what} holds {len(raw)} bytes, not a whole number of float32 values")
    vec = np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)
    if _large_f32(raw):  # numpy only then (below)
        if not np.isfinite(vec).all():
            raise ValueError(f"{what} holds NaN or Inf")
        if float(np.abs(vec).max()) > MAX_ABS_FEATURE:
            raise ValueError(f"{what} holds a value beyond +-{MAX_ABS_FEATURE:g}")
    return vec


# 1 for a float32's high byte whose seven top exponent bits are 71 or more: |x| >= 2**15, NaN or Inf
_HIGH_EXPONENT = bytes(1 if b & 0x7F >= 71 else 0 for b in range(256))
assert 2.0**15 < MAX_ABS_FEATURE


def _large_f32(raw: bytes) -> bool:
    """Whether any little-endian float32 value in ``raw`` could be NaN, Inf or beyond
    :data:`MAX_ABS_FEATURE` (``|x| >= 2**15``). Read from the high bytes with ``bytes`` methods, so
    that numpy runs only then: numpy's loop lets go of the GIL, and the event loop's thread (which
    parses every message) then waited up to the switch interval for the compute thread to hand it back."""
    return 1 in raw[3::4].translate(_HIGH_EXPONENT)


def encode_f32(values: Any) -> str:
    """The ``*_f32`` form of a vector (what :func:`f32_vector` reads)."""
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def _one_vector(part: _Part, values: list[float] | None, packed: str | None, what: str) -> None:
    if values is not None and packed is not None:
        raise ValueError(f"'{what}' and '{what}_f32' are two forms of one vector: send one")
    _finite(values, what)
    if packed is not None:  # decoded once: the bytes kept with the string they came from, for vector()
        part._decoded = (packed, f32_vector(packed, f"{what}_f32").tobytes())


def _vector_of(part: _Part, values: list[float] | None, packed: str | None, what: str) -> np.ndarray | list[float]:
    if packed is not None:
        if part._decoded is not None and part._decoded[0] is packed:  # not a copy made with another vector
            return np.frombuffer(part._decoded[1], dtype="<f4")
        return f32_vector(packed, f"{what}_f32")
    assert values is not None, what
    return values


class _Part(_Message):
    call_id: Id
    utterance_id: Id
    seq: WholeNumber = Field(ge=0, le=MAX_SEQ, description="order of the utterance in its call (0, 1, 2, ...)")
    speaker: Speaker = Field(
        "unknown", description="who said it, as the platform names them ('agent-42', 'Agent Smith', '+15551234567')"
    )
    start_s: Number | None = Field(None, ge=0, description="utterance start, seconds from call start")
    end_s: Number | None = Field(None, ge=0, description="utterance end, seconds from call start (not before start_s)")
    sent_at: Number = Field(default_factory=time.time, description="unix time the producer sent it")
    _decoded: tuple[str, bytes] | None = PrivateAttr(None)  # the *_f32 vector's bytes, as validated

    @model_validator(mode="after")
    def _in_order(self) -> _Part:
        if self.start_s is not None and self.end_s is not None and self.end_s < self.start_s:
            raise ValueError(f"end_s {self.end_s:g} is before start_s {self.start_s:g}")
        return self


def _one_present(*branches: tuple[str, str]) -> list[JsonValue]:
    """JSON Schema branches of which exactly one must hold (``oneOf``): each a field given, not null."""
    return [{"required": [name], "properties": {name: {"type": kind}}} for name, kind in branches]


#: the sample rates the worker decodes (engines.features.codecs.RATES; not imported: this module is
#: the client's too, without the audio stack)
AUDIO_RATES = (8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
#: base64 as the worker decodes it (padded, no line breaks: binascii's strict mode)
_BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class TextPart(_Part):
    """The transcript of one utterance, as text or as a precomputed sentence embedding."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": _one_present(("text", "string"), ("embedding", "array"), ("embedding_f32", "string"))
        }
    )

    kind: Literal["text"] = "text"
    text: str | None = None
    embedding: list[Number] | None = None
    embedding_f32: str | None = Field(None, description=F32_DESCRIPTION.replace("vector", "vector as 'embedding'"))

    @model_validator(mode="after")
    def _one_of(self) -> TextPart:
        if (self.text is None) == (self.embedding is None and self.embedding_f32 is None):
            raise ValueError("exactly one of 'text' and 'embedding' (or 'embedding_f32') is required")
        _one_vector(self, self.embedding, self.embedding_f32, "embedding")
        return self

    def vector(self) -> np.ndarray | list[float]:
        """The embedding, from whichever form it came in."""
        return _vector_of(self, self.embedding, self.embedding_f32, "embedding")

    @field_validator("text")
    @classmethod
    def _utf8(cls, v: str | None) -> str | None:
        # JSON allows lone surrogates ("\ud800"); tokenizers raise on them: refuse them here
        if v is not None:
            try:
                v.encode("utf-8", "strict")
            except UnicodeEncodeError as exc:
                raise ValueError(f"text is not valid Unicode: {exc.reason} at position {exc.start}") from None
        return v


class AudioPart(_Part):
    """The speech of one utterance, as base64 bytes of one of the audio encodings (telephone G.711
    at 8 kHz, PCM at 8-48 kHz, FLAC, WAV: resampled to 16 kHz by the worker), or a feature vector."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"encoding": {"const": "features"}}},
            "then": {
                "oneOf": _one_present(("features", "array"), ("features_f32", "string")),
                "properties": {"data": {"type": "null"}},
            },
            "else": {
                "required": ["data"],
                "properties": {
                    "data": {"type": "string", "minLength": 4, "pattern": _BASE64},
                    "features": {"type": "null"},
                    "features_f32": {"type": "null"},
                    "sample_rate": {"enum": [*AUDIO_RATES, None]},
                },
                "if": {"properties": {"encoding": {"enum": ["pcm_mulaw", "pcm_alaw"]}}},
                "then": {"properties": {"sample_rate": {"enum": [8000, None]}}},  # G.711
            },
        }
    )

    kind: Literal["audio"] = "audio"
    encoding: Literal["pcm_s16le", "pcm_mulaw", "pcm_alaw", "flac", "wav", "features"] = Field(
        description="pcm_s16le: raw little-endian int16 mono at sample_rate; pcm_mulaw/pcm_alaw: G.711 "
        "at 8 kHz (Amazon Connect, Twilio, SIPREC); flac/wav: a file, its header gives the rate; "
        "features: a vector in 'features' computed by the model's own audio extractor"
    )
    sample_rate: Annotated[int, Field(gt=0), BeforeValidator(_whole_number)] | None = Field(
        None,
        description="Hz; pcm_s16le: 8000, 11025, 16000, 22050, 24000, 32000, 44100 or 48000 (16000 if "
        "absent); G.711 is 8000; flac/wav: if given, must match the header",
    )
    data: str | None = Field(None, description="base64 audio bytes (every encoding but 'features')")
    features: list[Number] | None = None
    features_f32: str | None = Field(None, description=F32_DESCRIPTION.replace("vector", "vector as 'features'"))

    @model_validator(mode="after")
    def _payload(self) -> AudioPart:
        vector = self.features is not None or self.features_f32 is not None
        if self.encoding == "features":
            if not vector or self.data is not None:
                raise ValueError("encoding 'features' needs 'features' (or 'features_f32') and no 'data'")
            _one_vector(self, self.features, self.features_f32, "features")
        elif self.data is None or vector:
            raise ValueError(f"encoding {self.encoding!r} needs base64 'data' and no 'features'")
        return self

    def vector(self) -> np.ndarray | list[float]:
        """The feature vector (encoding 'features'), from whichever form it came in."""
        return _vector_of(self, self.features, self.features_f32, "features")

    def audio_bytes(self) -> bytes:
        assert self.data is not None
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidMessage("undecodable_audio", f"'data' is not base64: {exc}") from exc


class VideoPart(_Part):
    """Visual features of one utterance (a vector computed by the caller's face pipeline)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["features"]}, {"required": ["features_f32"]}]})

    kind: Literal["video"] = "video"
    features: list[Number] | None = None
    features_f32: str | None = Field(None, description=F32_DESCRIPTION.replace("vector", "vector as 'features'"))

    @model_validator(mode="after")
    def _check(self) -> VideoPart:
        if self.features is None and self.features_f32 is None:
            raise PydanticCustomError("missing", "'features' (or 'features_f32') is required")
        _one_vector(self, self.features, self.features_f32, "features")
        return self

    def vector(self) -> np.ndarray | list[float]:
        """The feature vector, from whichever form it came in."""
        return _vector_of(self, self.features, self.features_f32, "features")


class CallControl(_Message):
    """A call's start (with the modalities to wait for) or end (releases its context)."""

    kind: Literal["call"] = "call"
    call_id: Id
    event: Literal["started", "ended"]
    modalities: list[Modality] | None = None
    at: Number = Field(default_factory=time.time)

    @field_validator("modalities")
    @classmethod
    def _once_each(cls, modalities: list[str] | None) -> list[str] | None:
        """Each modality once (a list padded with repeats was stored whole in Redis, per call id)."""
        return None if modalities is None else list(dict.fromkeys(modalities))


Part = TextPart | AudioPart | VideoPart


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    name: str
    version: str
    runtime: str


class Timings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    join_s: float = Field(description="first part arrived -> utterance complete (or timed out)")
    queue_s: float = Field(description="complete -> engine batch started")
    engine_s: float = Field(description="encoders + engine for the batch")
    end_to_end_s: float = Field(description="last part arrived at the worker -> event produced")


class EmotionEvent(_Message):
    """The emotion of one utterance. Revision 0 is provisional (past context only)."""

    kind: Literal["emotion"] = "emotion"
    event_id: str = Field(
        description="deterministic key of (call, utterance, revision): deduplicate on it; a call id used again "
        "after its previous call closed (a new 'started') names the call <call>~g<generation> in it"
    )
    call_id: str
    utterance_id: str
    seq: int
    revision: int = 0
    speaker: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    sentiment: float = Field(ge=-1, le=1)
    sentiment_label: Literal["negative", "neutral", "positive"]
    weights: dict[str, float] = Field(
        description="the share of the decision each modality carried, summing to 1 over the modalities present "
        "(0 where absent or ignored): its Shapley value in the log-probability of the label over the subsets of "
        "modalities (negative counted as 0; the voice counted in each by the trust the gate gave it, so a voice "
        "turned away gets 0), the same for every engine trained with the trust gate "
        "(engines/trust.py; artifacts with --no-trust report their engine's own weights, see its README)"
    )
    modalities_present: list[Modality]
    ignored: dict[Modality, str] = Field(
        default_factory=dict,
        description="parts that arrived but were not used, with why: audio with less than engine.min_speech_s of "
        "speech (silence, line noise, hold music) is not used, so its weight is 0 and the label is the other "
        "modalities' (revisions say what their provisional event said); a part dead-lettered once its ids were "
        "read (audio that does not decode, say, or a part against its schema whose ids parse) is "
        "'dead-lettered: <reason> (<the start of its detail>)', "
        "and its utterance did not "
        "wait for it; a transcript with no words (empty, spaces, control characters, symbols the text model does "
        "not read) is 'no words: ...'; with engine.format_check = drop, audio whose "
        "voice sounds mis-declared by the producer is 'wrong sample rate? the voice sounds an octave high: ...' "
        "(or low), or 'wrong G.711 law? ...' (A-law sent as mu-law or the reverse); audio of an utterance sent more "
        "than engine.shed_audio_after_s before the worker came to it (a worker behind, catching up) is 'worker behind: "
        "...'; with engine.language_check = "
        "drop (the default), a transcript that reads as another language than the model's is 'other language? the "
        "words read as Spanish (es), ...'",
    )
    suspect: dict[Modality, str] | None = Field(
        None,
        description="parts that were used though they look wrong, with why (absent when none): with "
        "engine.format_check = warn (the default), audio whose voice sounds mis-declared by the producer is "
        "'wrong sample rate? the voice sounds an octave high: ...' (or low), or 'wrong G.711 law? ...'; with "
        "engine.language_check = warn, a transcript that reads as another language is 'other language? ...'; a "
        "transcript longer than the text model reads (128 tokens for the shipped models) is 'long transcript: ...' "
        "(its first tokens were read, not the rest); audio clipped at full scale is 'clipped: ...'; audio of a speaker "
        "whose voice, heard as sent, sits under -50 dBFS over 3 or more of its utterances is 'quiet line: ...' (a line "
        "that quiet moves the voice's labels); the label leaned on it by its weight. Revisions of the "
        "utterance carry it too",
    )
    model: ModelRef
    context_size: int = Field(description="utterances in the window, the target included")
    context_reset: bool = Field(
        False,
        description="the call's earlier context was lost (Redis lost data, or the window expired): "
        "the window holds only what came after",
    )
    future_context: int = 0
    timings: Timings
    produced_at: float


class SourceRef(BaseModel):
    """Where one input message was read."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    topic: str
    partition: int
    offset: int


class DeadLetter(_Message):
    """An input message (or a joined utterance) that could not be used, with why and where it came from.

    Reasons up to ``conflicting_part`` are about one message (``conflicting_part``: another,
    different part of the same modality under ids whose utterance already has one; the first one
    counts); ``processing_failed`` is an utterance that was valid but failed in the encoders, the
    engine or the event build: ``parts`` lists all its input messages and ``payload`` is empty."""

    kind: Literal["deadletter"] = "deadletter"
    reason: str
    detail: str
    source_topic: str
    partition: int
    offset: int
    key: str | None = Field(None, description="the original key, decoded as UTF-8, cut to 256 characters")
    call_id: str | None = Field(None, description="the message's call, when it parsed (its content was refused)")
    utterance_id: str | None = Field(None, description="the message's utterance, when it parsed")
    parts: list[SourceRef] = Field(default_factory=list, description="every input message of a failed utterance")
    payload: str = Field(
        "", description="the original value, base64: whole, cut or left out, as limits.deadletter_payload says"
    )
    payload_truncated: bool = False
    payload_bytes: int = Field(0, description="size of the original value")
    at: Number = Field(default_factory=time.time)


class Evidence(BaseModel):
    """One utterance an alert rests on, as it was labelled (its latest revision)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    utterance_id: str
    seq: int
    speaker: str
    role: str
    label: str
    sentiment: float


class AlertEvent(_Message):
    """An escalation alert of one call (streams/rules.py), on the alerts topic keyed by call id.
    One alert (``alert_id``) is raised, updated while its evidence changes, and cleared."""

    kind: Literal["alert"] = "alert"
    event_id: str = Field(description="deterministic key of (alert, state, latest evidence): deduplicate on it")
    alert_id: str = Field(
        description="'<call>:<rule>:<n>', the rule's n-th alert in the call (<call> is '<call_id>~g<offset>' for a "
        "call id used again: README, Calls that end); its raise, updates and clear share it"
    )
    call_id: str
    rule: str
    severity: Literal["info", "warning", "critical"]
    message: str
    state: Literal["raised", "updated", "cleared"]
    reason: str | None = Field(
        None,
        description="why it cleared: 'recovered'; 'call ended' (its 'ended'), 'call idle' (no part for "
        "join.idle_end_s and no 'ended') or 'call started again' (a 'started' of its id before any 'ended'): the "
        "call's end, as its final report's ended_by",
    )
    evidence: list[Evidence] = Field(description="the turns that made the rule hold (empty once cleared)")
    measured: str | None = Field(
        None,
        description="what the rule measured on the evidence, in words: a rising rule's share of its emotions turn "
        "by turn ('anger+disgust 0.21 -> 0.35 -> 0.62 ...': the emotions the model has), a streak's labels and their "
        "probabilities, a low-sentiment rule's mean, a reply rule's two turns (none once cleared)",
    )
    produced_at: float


class SpeakerTrajectory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    speaker: str
    role: str
    turns: int
    talk_share: float = Field(description="this speaker's share of the call's turns")
    recent: dict[str, float] = Field(description="mean emotion probabilities over the speaker's recent turns")
    negative_share: float = Field(
        description="share of the recent turns labelled with a negative emotion (anger, disgust, fear, sadness, "
        "frustration, and IEMOCAP's and EmoryNLP's names for them)"
    )
    hostile_share: float = Field(
        0.0,
        description="share of the recent turns labelled anger, disgust or frustration with a probability of 0.5 or "
        "more (an agent's sympathy reads as sadness: negative, not hostile); 0 in reports from workers that did "
        "not count it",
    )
    sentiment: float = Field(description="mean sentiment of the recent turns (-1..1)")
    sentiment_trend: float = Field(
        description="mean sentiment of the speaker's latest k turns minus that of the k before them, "
        "k = min(recent turns, turns // 2) (0 with a single turn)"
    )


class CallReport(_Message):
    """A call's running trajectory, on the calls topic keyed by call id: one after each batch that
    labelled some of its utterances, and a final one (``final``: the call summary) when it ends."""

    kind: Literal["call_report"] = "call_report"
    event_id: str = Field(description="deterministic key of (call, turns and revisions seen, final)")
    call_id: str
    final: bool = False
    turns: int
    unread: int = Field(
        0,
        description="the call's utterances whose event read nothing (every part ignored: words in another "
        "language, no words, no speech): no turns of the analytics, not in turns or speakers",
    )
    speakers: list[SpeakerTrajectory]
    open_alerts: list[str] = Field(description="alert ids open now (none once final)")
    alerts_raised: list[str] = Field(description="rules that raised an alert during the call so far")
    ended_by: Literal["ended", "started", "idle"] | None = Field(
        None,
        description="what ended the call (final reports only): its 'ended' control message; 'started', a "
        "'started' of its call id before any 'ended' (a new call under the id); 'idle', no part for "
        "join.idle_end_s and no 'ended'",
    )
    produced_at: float


OUTPUT_MODELS: dict[str, type[_Message]] = {
    "text-part": TextPart,
    "audio-part": AudioPart,
    "video-part": VideoPart,
    "call-control": CallControl,
    "emotion-event": EmotionEvent,
    "dead-letter": DeadLetter,
    "alert-event": AlertEvent,
    "call-report": CallReport,
}

_BY_KIND: dict[str, type[_Message]] = {
    "text": TextPart,
    "audio": AudioPart,
    "video": VideoPart,
    "control": CallControl,
}


_Published = TypeVar("_Published", bound=BaseModel)


def read_published(model: type[_Published], raw: bytes | str) -> _Published:
    """A published message (event, alert, report, dead letter) as a consumer reads it: a top-level
    field this version does not know, added by a newer worker (as ``suspect`` was to events), is
    left out rather than refused, so consumers upgraded after the workers still read every record.
    Anything else wrong still raises :class:`pydantic.ValidationError`."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if not all(e["type"] == "extra_forbidden" and len(e["loc"]) == 1 for e in exc.errors()):
            raise
        obj = json.loads(raw)
        return model.model_validate({k: v for k, v in obj.items() if k in model.model_fields})


def json_type(value: Any) -> str:
    """A parsed JSON value's type as JSON names it (a dead letter's reader sent JSON, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def call_instance(call_id: str, generation: str = "") -> str:
    """The call as the ids of its messages name it: its id, or for a call id used again after its
    previous call closed, ``<call>~g<generation>`` (the offset of the new call's 'started' on its
    control partition). '~' is not allowed in ids, so it never names another call."""
    return f"{call_id}~g{generation}" if generation else call_id


def event_id(call_id: str, utterance_id: str, revision: int, generation: str = "") -> str:
    """Deterministic event key: the same utterance and revision of the same call always get the
    same id; a call id used again (``generation``, see :func:`call_instance`) gets other ids."""
    call = call_instance(call_id, generation)
    digest = hashlib.sha1(f"{call}\x1f{utterance_id}\x1f{revision}".encode()).hexdigest()[:16]
    return f"{call}:{utterance_id}:r{revision}:{digest}"


class DuplicateKey(ValueError):
    """A JSON object names one key twice (the JSON RFC leaves which one counts to each reader)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DuplicateKey(f"the key {twice[:64]!r} appears twice: which one counts is ambiguous")
    return obj


def _undecodable(raw: bytes, exc: Exception) -> str:
    """Why ``raw`` is no JSON: first of all, where it is not UTF-8 text (JSON's encoding), say so."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not UTF-8 text (byte {raw[bad.start]:#04x} at {bad.start}): JSON messages are UTF-8"
    return str(exc)[:200]


def parse_input(kind: str, raw: bytes | None, max_bytes: int) -> Part | CallControl:
    """Decode one input message of ``kind`` ('text', 'audio', 'video', 'control').

    Raises :class:`InvalidMessage` with a dead-letter reason for anything unusable.
    """
    if kind not in _BY_KIND:
        raise InvalidMessage("unknown_topic", f"no schema for input kind {kind!r}")
    if raw is None or len(raw) == 0:
        raise InvalidMessage("malformed_json", "empty message")
    if len(raw) > max_bytes:
        invalid = InvalidMessage("oversized", f"message of {len(raw)} bytes > limits.max_message_bytes {max_bytes}")
        invalid.part = _ids_scanned(kind, raw)  # its utterance waits for it no longer, and says why
        if invalid.part is not None:
            invalid.call_id, invalid.utterance_id = invalid.part.call_id, invalid.part.utterance_id
        raise invalid
    try:
        obj = json.loads(raw, object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        raise InvalidMessage("malformed_json", str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidMessage("malformed_json", _undecodable(raw, exc)) from exc
    except RecursionError:
        raise InvalidMessage("malformed_json", "JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than sys.get_int_max_str_digits() digits
        raise InvalidMessage("invalid_value", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise InvalidMessage("wrong_type", f"top level is {json_type(obj)}, not an object")
    if "schema_version" not in obj:
        raise InvalidMessage("missing_field", f"schema_version: required (this worker reads {SCHEMA_VERSION})")
    version = obj["schema_version"]
    if isinstance(version, bool) or not isinstance(version, (int, float)):  # 1.0 is the integer 1 in JSON Schema
        raise InvalidMessage(
            "wrong_type",
            f"schema_version: the integer {SCHEMA_VERSION}, not {_shown(version)} ({json_type(version)})",
        )
    if version != SCHEMA_VERSION:
        raise InvalidMessage(
            "unknown_schema_version", f"schema_version {version!r}, this worker reads {SCHEMA_VERSION}"
        )
    expected_kind = "call" if kind == "control" else kind
    if obj.get("kind", expected_kind) != expected_kind:
        raise InvalidMessage("wrong_type", f"kind {_shown(obj.get('kind'))} on the {kind} topic")
    try:
        return _BY_KIND[kind].model_validate(obj)  # type: ignore[return-value]
    except ValidationError as exc:
        invalid = InvalidMessage(_reason(exc), _summary(exc))
        invalid.part = _ids_of(kind, obj)
        invalid.call_id, invalid.utterance_id = _valid_id(obj.get("call_id")), _valid_id(obj.get("utterance_id"))
        raise invalid from exc
    except RecursionError:
        raise InvalidMessage("invalid_value", "a field is nested too deeply") from None


class _PartIds(BaseModel):
    """The ids of a part, read on their own (the rest of the message may be anything)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    call_id: Id
    utterance_id: Id
    seq: WholeNumber = Field(ge=0, le=MAX_SEQ)
    speaker: Speaker = "unknown"


def _ids_of(kind: str, obj: dict[str, Any]) -> Part | None:
    """A part of ``kind`` holding only the ids of ``obj``, a part whose content failed its schema
    (an unknown audio encoding, a sample rate of 0, ...), when the ids themselves are valid; else
    None. Not validated: nothing but its ids is to be read."""
    if kind not in get_args(Modality):
        return None
    for fields in (obj, {k: v for k, v in obj.items() if k != "speaker"}):  # a bad speaker: "unknown"
        try:
            ids = _PartIds.model_validate(fields)
        except (ValidationError, RecursionError):
            continue
        return _BY_KIND[kind].model_construct(**ids.model_dump())  # type: ignore[return-value]
    return None


_ID = re.compile(rf"[{ID_CHARS}]{{1,128}}")

#: the ids of a part too large to parse, found as a JSON object's top-level members are written (their
#: values hold no quote or backslash; a quote inside a string value is escaped, so it never matches)
_SCANNED = {
    name: re.compile(rb'"' + name.encode() + rb'"\s*:\s*' + value)
    for name, value in (
        ("call_id", rb'"([^"\\]{1,128})"'),
        ("utterance_id", rb'"([^"\\]{1,128})"'),
        ("seq", rb"(\d{1,19})(?![\d.eE])"),  # an integer (3.5 is no seq)
        ("speaker", rb'"([^"\\]{1,128})"'),
        ("kind", rb'"([a-z_]{1,16})"'),
        ("schema_version", rb"(\d{1,3})(?![\d.eE])"),
    )
}
SCANNED_BYTES = 4096  # at either end of a message too large to parse


def _ids_scanned(kind: str, raw: bytes) -> Part | None:
    """The ids of a part too large to parse (a long clip as raw PCM passes the message limit), read
    from its first and last :data:`SCANNED_BYTES` (the ids come before or after the audio's data), as
    :func:`_ids_of` reads them; None where they are not all found there, or not valid."""
    ends = raw[:SCANNED_BYTES] + b"\n" + raw[-SCANNED_BYTES:]
    found: dict[str, Any] = {}
    for name, pattern in _SCANNED.items():
        match = pattern.search(ends)
        if match is not None:
            text = match.group(1).decode("utf-8", "replace")
            found[name] = int(text) if name in ("seq", "schema_version") else text
    if found.pop("schema_version", None) != SCHEMA_VERSION or found.pop("kind", kind) != kind:
        return None  # another version's, or a part of another kind sent to this topic
    return _ids_of(kind, found)


def _valid_id(value: Any) -> str | None:
    """``value`` if it is a valid call or utterance id, else None."""
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


def _reason(exc: ValidationError) -> str:
    errors = exc.errors()
    types = {e["type"] for e in errors}
    text = " ".join(str(e.get("msg", "")) for e in errors)
    if "missing" in types:
        return "missing_field"
    if "NaN or Inf" in text or "finite_number" in types:
        return "non_finite"
    if any(t.endswith("_type") or t.endswith("_parsing") for t in types):
        return "wrong_type"
    return "invalid_value"


#: a value or key a dead letter's detail quotes is at most this long; a longer one is named by its
#: type and length (a field of a transcript's words put where a number goes must not reach the log)
SHOWN_CHARS = 24


def _shown(value: Any) -> str:
    """``value`` as JSON when short, else its type and length."""
    text = json.dumps(value)
    if len(text) <= SHOWN_CHARS:
        return text
    size = f" of {len(value)} characters" if isinstance(value, str) else ""
    return f"<{json_type(value)}{size}>"


def _loc(part: Any) -> str:
    text = str(part)
    return text if len(text) <= SHOWN_CHARS else f"<a key of {len(text)} characters>"


def _summary(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(_loc(x) for x in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")  # pydantic's prefix for a validator's own words
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)[:500]


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name stem -> JSON Schema, for every published message. ``schema_version`` is required
    in each (the worker refuses a message without it, :func:`parse_input`), though the Python
    classes fill it in."""
    out = {}
    for name, model in OUTPUT_MODELS.items():
        schema = model.model_json_schema()
        if "schema_version" in schema.get("properties", {}):
            schema["required"] = ["schema_version", *[r for r in schema.get("required", []) if r != "schema_version"]]
        out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}  # pydantic's dialect
    return out
