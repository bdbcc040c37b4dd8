"""Dialogues to replay into the service: one in-memory model and the readers that fill it.

A :class:`Dialogue` is one call: its id and its :class:`Utterance` objects in ``seq`` order.
Readers: :func:`read_meld_csv` (MELD's CSV, one call per Dialogue_ID), :func:`read_jsonl` (our own
format, below); :func:`attach_ravdess` gives utterances real emotional speech from RAVDESS and
:func:`synthesize_audio` speaks them with espeak-ng. Audio from files and
readers is 16 kHz mono FLAC (or PCM s16le); inline JSONL audio may also be WAV, G.711 or 8-48 kHz PCM.

JSONL format (one utterance per line; blank lines and lines starting with ``#`` are skipped)::

    {"call_id": "demo-1", "utterance_id": "u0", "seq": 0, "speaker": "customer",
     "text": "My card was charged twice.", "label": "anger", "start_s": 0.0, "end_s": 2.1}

Required: ``call_id``, ``utterance_id`` (ids: letters, digits and ``._:@/-``), ``seq`` (int >= 0,
unique within its call) and ``speaker`` (printable characters: "Agent Smith", "+15551234567").
Optional: ``text``;
``audio_path`` (relative to the JSONL file's folder, ``.flac`` or ``.wav``; converted to 16 kHz
mono, WAV to FLAC or PCM as asked) or ``audio_b64`` with ``audio_encoding`` (``flac``, ``wav``,
``pcm_s16le``, or G.711 ``pcm_mulaw``/``pcm_alaw``; sent as it is) and, for ``pcm_s16le`` other
than 16 kHz, ``audio_sample_rate`` (8-48 kHz; G.711 is 8 kHz; FLAC and WAV carry their own);
``audio_features`` and ``video_features`` (lists of numbers);
``start_s``/``end_s`` (seconds from the call's start); ``label`` (an emotion, for scoring). Each
line needs at least one of text, audio, audio_features or video_features. Calls keep the order in
which they first appear; utterances are sorted by ``seq``. A bad line raises
:class:`DialogueFormatError` naming the file and line.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import logging
import random
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engines.datasets.ravdess import EMOTION_MAP
from engines.features.text import normalise_text
from engines.modalities import MODALITIES
from streams.errors import ConfigError
from streams.schemas import Id, Modality, Number, Speaker, WholeNumber

log = logging.getLogger("emostream.feed")

AudioEncoding = Literal["flac", "pcm_s16le"]  # what audio files are converted to
InlineEncoding = Literal["flac", "wav", "pcm_s16le", "pcm_mulaw", "pcm_alaw"]  # what audio_b64 may carry
SAMPLE_RATE = 16000
_MODALITIES = cast(tuple[Modality, ...], MODALITIES)
EMOTIONS = ("neutral", "joy", "anger", "fear", "sadness", "surprise", "disgust")
#: RAVDESS emotion -> MELD/emostream emotion.
RAVDESS_TO_EMOTION = EMOTION_MAP  # the engines' mapping of RAVDESS' acted emotions to ours: one for the project
_ID_BAD = re.compile(r"[^A-Za-z0-9._:@/-]+")
_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*$")


class DialogueFormatError(ConfigError):
    """A dialogue file that cannot be read; ``path`` and ``line`` say where."""

    def __init__(self, path: str | Path, line: int | None, detail: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {detail}")
        self.path = str(path)
        self.line = line
        self.detail = detail


@dataclass(frozen=True)
class Utterance:
    call_id: str
    utterance_id: str
    seq: int
    speaker: str = "unknown"
    text: str | None = None
    audio: bytes | None = None
    audio_encoding: InlineEncoding | None = None
    audio_features: tuple[float, ...] | None = None
    video_features: tuple[float, ...] | None = None
    start_s: float | None = None
    end_s: float | None = None
    label: str | None = None
    audio_source: str | None = None  # where the audio came from, e.g. "ravdess:Actor_03/...flac"
    audio_rate: int | None = None  # pcm_s16le's sample rate when not 16 kHz (None: the encoding's default)
    line: int | None = field(default=None, compare=False)  # its line in the JSONL file it came from

    def modalities(self) -> list[Modality]:
        present: dict[Modality, bool] = {"text": self.text is not None, "video": self.video_features is not None}
        present["audio"] = self.audio is not None or self.audio_features is not None
        return [m for m in _MODALITIES if present[m]]


@dataclass(frozen=True)
class Dialogue:
    call_id: str
    utterances: tuple[Utterance, ...]
    source: str = ""

    def speakers(self) -> list[str]:
        """Speakers in the order they first speak."""
        return list(dict.fromkeys(u.speaker for u in self.utterances))

    def modalities(self) -> list[Modality]:
        """Modalities that at least one utterance has, in text/audio/video order."""
        have = {m for u in self.utterances for m in u.modalities()}
        return [m for m in _MODALITIES if m in have]


def speaker_id(name: str) -> str:
    """A display name made safe for the message schemas' id fields ('Mrs. Green' -> 'Mrs._Green')."""
    return _ID_BAD.sub("_", name.strip())[:128] or "unknown"


def parse_timestamp(value: str) -> float | None:
    """``00:16:16,059`` -> 976.059 seconds; None for an empty or malformed value."""
    m = _TIME.match(value or "")
    if m is None:
        return None
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def read_meld_csv(
    path: str | Path,
    limit_dialogues: int | None = None,
    dialogue_ids: Iterable[int] | None = None,
    split: str | None = None,
) -> list[Dialogue]:
    """One :class:`Dialogue` per MELD Dialogue_ID (call id ``meld-<split>-d<id>``), in id order.

    ``split`` defaults to the file name's first word (``dev_sent_emo.csv`` -> ``dev``). Times become
    seconds from the dialogue's earliest StartTime; ``label`` is the Emotion column.
    """
    path = Path(path)
    split = split or path.name.split("_")[0].split(".")[0]
    wanted = None if dialogue_ids is None else {int(d) for d in dialogue_ids}
    rows: dict[int, list[dict[str, str]]] = {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            lacking = [c for c in MELD_COLUMNS if c not in columns]
            if lacking:
                raise DialogueFormatError(
                    path, 1, f"not a MELD CSV: no {', '.join(lacking)} column (its columns: "
                    f"{', '.join(columns[:8]) or 'none'}); our own calls are JSONL, README 'Topics and messages'"
                )  # fmt: skip
            for line, row in enumerate(reader, start=2):
                try:
                    did = int(row["Dialogue_ID"])
                    int(row["Utterance_ID"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise DialogueFormatError(path, line, f"bad Dialogue_ID/Utterance_ID: {exc}") from exc
                if wanted is None or did in wanted:
                    rows.setdefault(did, []).append(row)
    except UnicodeDecodeError as exc:
        raise DialogueFormatError(
            path, None, f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise DialogueFormatError(path, None, str(exc)) from exc
    ids = sorted(rows)[:limit_dialogues] if limit_dialogues is not None else sorted(rows)
    return [_meld_dialogue(f"meld-{split}-d{did}", rows[did], f"meld-{split}") for did in ids]


#: the columns a MELD CSV must have (Speaker, StartTime, EndTime and Emotion are read when present)
MELD_COLUMNS = ("Dialogue_ID", "Utterance_ID", "Utterance")


def _meld_dialogue(call_id: str, rows: list[dict[str, str]], source: str) -> Dialogue:
    rows = sorted(rows, key=lambda r: int(r["Utterance_ID"]))
    starts = [parse_timestamp(r.get("StartTime", "")) for r in rows]
    t0 = min((s for s in starts if s is not None), default=0.0)
    utterances = []
    for seq, (row, start) in enumerate(zip(rows, starts, strict=True)):
        end = parse_timestamp(row.get("EndTime", ""))
        start_s = None if start is None else round(start - t0, 3)
        end_s = None if end is None or start is None or end < start else round(end - t0, 3)
        utterances.append(
            Utterance(
                call_id=call_id,
                utterance_id=f"u{int(row['Utterance_ID'])}",
                seq=seq,
                speaker=speaker_id(normalise_text(row.get("Speaker", ""))),
                text=normalise_text(row.get("Utterance", "")),
                start_s=start_s,
                end_s=end_s,
                label=(row.get("Emotion") or "").strip().lower() or None,
            )
        )
    return Dialogue(call_id, tuple(utterances), source)


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    call_id: Id
    utterance_id: Id
    seq: WholeNumber = Field(ge=0)
    speaker: Speaker
    text: str | None = None
    audio_path: str | None = None
    audio_b64: str | None = None
    audio_encoding: InlineEncoding | None = None
    audio_sample_rate: WholeNumber | None = None
    audio_features: list[Number] | None = None
    video_features: list[Number] | None = None
    start_s: Number | None = Field(None, ge=0)
    end_s: Number | None = Field(None, ge=0)
    label: str | None = None

    @model_validator(mode="after")
    def _check(self) -> _Line:
        if self.audio_path is not None and self.audio_b64 is not None:
            raise ValueError("give 'audio_path' or 'audio_b64', not both")
        if self.audio_b64 is not None and self.audio_encoding is None:
            raise ValueError("'audio_b64' needs 'audio_encoding' (flac, wav, pcm_s16le, pcm_mulaw or pcm_alaw)")
        if self.audio_sample_rate is not None:
            from engines.features.codecs import RATES

            if self.audio_b64 is None or self.audio_encoding in ("flac", "wav"):
                raise ValueError(
                    "'audio_sample_rate' is for audio_b64 in pcm_s16le or G.711 (FLAC and WAV carry theirs)"
                )
            if self.audio_encoding in ("pcm_mulaw", "pcm_alaw") and self.audio_sample_rate != 8000:
                raise ValueError(f"{self.audio_encoding} is 8000 Hz (G.711), not {self.audio_sample_rate}")
            if self.audio_sample_rate not in RATES:
                raise ValueError(f"audio_sample_rate {self.audio_sample_rate} Hz not supported; use one of {RATES}")
        if self.start_s is not None and self.end_s is not None and self.end_s < self.start_s:
            raise ValueError(f"end_s {self.end_s:g} is before start_s {self.start_s:g}")
        if self.text is None and self.audio_path is None and self.audio_b64 is None:
            if self.audio_features is None and self.video_features is None:
                raise ValueError("needs at least one of text, audio_path, audio_b64, audio/video_features")
        return self


def read_jsonl(path: str | Path, wav_encoding: AudioEncoding = "flac") -> list[Dialogue]:
    """Dialogues from our JSONL format (see the module docstring); WAV audio becomes ``wav_encoding``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is no JSON
    except UnicodeDecodeError as exc:
        data = path.read_bytes()
        body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # utf-8-sig counts from after the mark
        at_line = body[: exc.start].count(b"\n") + 1
        raise DialogueFormatError(
            path,
            at_line,
            f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): save the file as UTF-8, one JSON object a line",
        ) from exc
    except OSError as exc:
        raise DialogueFormatError(path, None, str(exc)) from exc
    calls: dict[str, dict[int, Utterance]] = {}
    seen_ids: set[tuple[str, str]] = set()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            line = _Line.model_validate_json(raw)
            u = replace(_utterance(line, path.parent, wav_encoding), line=number)
        except ValidationError as exc:
            raise DialogueFormatError(path, number, _summary(exc)) from exc
        except (ValueError, OSError, RuntimeError) as exc:
            raise DialogueFormatError(path, number, str(exc)) from exc
        call = calls.setdefault(u.call_id, {})
        if u.seq in call:
            raise DialogueFormatError(path, number, f"seq {u.seq} appears twice in call {u.call_id!r}")
        if (u.call_id, u.utterance_id) in seen_ids:
            raise DialogueFormatError(path, number, f"utterance_id {u.utterance_id!r} repeats in {u.call_id!r}")
        seen_ids.add((u.call_id, u.utterance_id))
        call[u.seq] = u
    return [Dialogue(cid, tuple(us[k] for k in sorted(us)), path.name) for cid, us in calls.items()]


def _summary(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")  # pydantic's prefix for a validator's own words
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _utterance(line: _Line, folder: Path, wav_encoding: AudioEncoding) -> Utterance:
    audio: bytes | None = None
    encoding: InlineEncoding | None = None
    if line.audio_path is not None:
        audio, encoding = load_audio_file(folder / line.audio_path, wav_encoding)
    elif line.audio_b64 is not None:
        try:
            audio = base64.b64decode(line.audio_b64, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"audio_b64 is not base64: {exc}") from exc
        encoding = line.audio_encoding
    return Utterance(
        call_id=line.call_id, utterance_id=line.utterance_id, seq=line.seq, speaker=line.speaker,
        text=line.text, audio=audio, audio_encoding=encoding,
        audio_features=None if line.audio_features is None else tuple(line.audio_features),
        video_features=None if line.video_features is None else tuple(line.video_features),
        start_s=line.start_s, end_s=line.end_s, label=line.label,
        audio_source=line.audio_path, audio_rate=line.audio_sample_rate,
    )  # fmt: skip


def write_jsonl(dialogues: Iterable[Dialogue], path: str | Path) -> None:
    """Write dialogues in the JSONL format, audio inline as ``audio_b64`` (read back by :func:`read_jsonl`)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for d in dialogues:
            for u in d.utterances:
                obj = {
                    "call_id": u.call_id, "utterance_id": u.utterance_id, "seq": u.seq,
                    "speaker": u.speaker, "text": u.text, "start_s": u.start_s, "end_s": u.end_s,
                    "label": u.label, "audio_encoding": u.audio_encoding, "audio_sample_rate": u.audio_rate,
                    "audio_b64": None if u.audio is None else base64.b64encode(u.audio).decode(),
                    "audio_features": None if u.audio_features is None else list(u.audio_features),
                    "video_features": None if u.video_features is None else list(u.video_features),
                }  # fmt: skip
                f.write(json.dumps({k: v for k, v in obj.items() if v is not None}, ensure_ascii=False) + "\n")


# --- audio -------------------------------------------------------------------------------------


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited (FFT) resampling of a mono float signal."""
    if sr_in == sr_out or len(x) == 0:
        return x
    n_out = max(1, round(len(x) * sr_out / sr_in))
    spectrum = np.fft.rfft(x)
    keep = n_out // 2 + 1
    spectrum = spectrum[:keep] if len(spectrum) >= keep else np.pad(spectrum, (0, keep - len(spectrum)))
    return np.fft.irfft(spectrum, n_out) * (n_out / len(x))


def encode_audio(x: np.ndarray, sr: int, encoding: AudioEncoding) -> bytes:
    """Float samples (mono or (N, C)) at ``sr`` -> 16 kHz mono FLAC or raw PCM s16le bytes."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    x = np.clip(resample(x, sr, SAMPLE_RATE), -1.0, 1.0)
    pcm = np.round(x * 32767).astype("<i2")
    if encoding == "pcm_s16le":
        return pcm.tobytes()
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def load_audio_file(path: Path, wav_encoding: AudioEncoding = "flac") -> tuple[bytes, AudioEncoding]:
    """A .flac or .wav file as 16 kHz mono bytes; a 16 kHz mono FLAC is passed through unchanged.
    Its header is judged as the workers judge a part of its format: a file they would refuse (cut
    short, too short, another format) is refused here, saying what is wrong, where converting it
    first sent what could be read of it (a telephone trial: half a truncated WAV was labelled); any
    rate and up to any channels are converted; channels that carry different sound are said
    (logged) before they are mixed into the one voice sent."""
    import soundfile as sf

    from engines.features.codecs import channels_note, header_problem

    suffix = path.suffix.lower()
    if suffix not in (".flac", ".wav"):
        raise ValueError(f"{path.name}: audio must be .flac or .wav")
    if not path.is_file():
        raise ValueError(f"audio file not found: {path}")
    raw, kind = path.read_bytes(), suffix[1:]
    problem = header_problem(raw, kind)
    if problem is not None:
        raise ValueError(f"{path.name}: {problem}")
    try:
        info = sf.info(io.BytesIO(raw))
        if kind == "flac" and info.samplerate == SAMPLE_RATE and info.channels == 1:
            return raw, "flac"
        data, rate = sf.read(io.BytesIO(raw), dtype="float64", always_2d=True)  # (any rate and channels: converted)
    except sf.LibsndfileError as exc:
        raise ValueError(f"{path.name}: unreadable audio: {exc}") from exc
    if data.shape[1] > 1:  # as the workers would say it of the file, before its channels are mixed here
        mixed = channels_note(data.sum(axis=0), data.T @ data, data.shape[0])
        if mixed is not None:
            log.warning("%s: %s (sent as their mean, the one voice the workers would hear)", path.name, mixed)
    encoding: AudioEncoding = "flac" if kind == "flac" else wav_encoding
    return encode_audio(data, rate, encoding), encoding


# --- RAVDESS composites ------------------------------------------------------------------------


def attach_ravdess(
    dialogues: Sequence[Dialogue], ravdess_dir: str | Path, seed: int = 0, actors: Iterable[int] | None = None
) -> list[Dialogue]:
    """Give every utterance whose label maps to a RAVDESS emotion a real clip of that emotion.

    Each speaker of a dialogue gets one actor (distinct while there are enough); the choice depends
    only on ``seed``, the call id, its speakers and labels, so a dialogue gets the same audio
    whichever other dialogues are passed. The clips say a fixed neutral sentence: the result is a
    *composite* (emotion in the voice only) and must be reported as one. ``actors``: actor numbers
    to draw from (default: all in ``labels.csv``). Other utterances are returned unchanged.
    """
    root = Path(ravdess_dir)
    clips = _ravdess_clips(root)  # (actor, emotion) -> relative paths
    pool = sorted({a for a, _ in clips} if actors is None else {int(a) for a in actors})
    missing = [a for a in pool if not any((a, e) in clips for e in EMOTIONS)]
    if not pool or missing:
        raise ConfigError(f"no RAVDESS clips for actors {missing or pool} under {root}")
    cache: dict[str, bytes] = {}
    out = []
    for d in dialogues:
        rng = random.Random(f"{seed}:{d.call_id}")
        speakers = d.speakers()
        order = rng.sample(pool, len(pool))
        actor_of = {s: order[i % len(order)] for i, s in enumerate(speakers)}
        used: set[str] = set()
        utterances = []
        for u in d.utterances:
            choices = clips.get((actor_of[u.speaker], (u.label or "").lower()), [])
            if not choices:
                utterances.append(u)
                continue
            fresh = [c for c in choices if c not in used] or choices
            rel = rng.choice(fresh)
            used.add(rel)
            if rel not in cache:
                cache[rel] = (root / rel).read_bytes()
            utterances.append(
                replace(u, audio=cache[rel], audio_encoding="flac", audio_rate=None, audio_source=f"ravdess:{rel}")
            )
        out.append(replace(d, utterances=tuple(utterances)))
    return out


def _ravdess_clips(root: Path) -> dict[tuple[int, str], list[str]]:
    labels = root / "labels.csv"
    if not labels.is_file():
        raise ConfigError(f"RAVDESS labels not found: {labels}")
    clips: dict[tuple[int, str], list[str]] = {}
    with labels.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            emotion = RAVDESS_TO_EMOTION.get(row["emotion"])
            if emotion is not None and int(row.get("sample_rate") or SAMPLE_RATE) == SAMPLE_RATE:
                clips.setdefault((int(row["actor"]), emotion), []).append(row["path"])
    for paths in clips.values():
        paths.sort()
    return clips


# --- synthetic speech --------------------------------------------------------------------------

VOICES = ("en-us+m3", "en-us+f2", "en-gb+m1", "en-us+f4", "en-gb+f3", "en-us+m6")
#: espeak-ng (speed wpm, pitch 0-99, amplitude 0-200) per label: crude prosody, not acting.
PROSODY = {
    "anger": (185, 35, 160), "disgust": (150, 30, 120), "joy": (185, 70, 120),
    "sadness": (125, 25, 80), "surprise": (180, 80, 130), "fear": (195, 65, 90),
}  # fmt: skip
_NEUTRAL_PROSODY = (165, 50, 100)


def synthesize_audio(
    dialogues: Sequence[Dialogue], out_dir: str | Path, voices: Sequence[str] = VOICES, gap_s: float = 0.4
) -> list[Dialogue]:
    """Speak every utterance's text with espeak-ng (one voice per speaker, prosody by label).

    Writes ``out_dir/<call_id>/<utterance_id>.flac`` (16 kHz mono) and returns the dialogues with
    the audio attached. A dialogue without any times gets consecutive ``start_s``/``end_s`` from
    the clip durations, ``gap_s`` apart, so a real-time replay follows the speech.
    """
    import soundfile as sf

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        for d in dialogues:
            voice_of = {s: voices[i % len(voices)] for i, s in enumerate(d.speakers())}
            timed = any(u.start_s is not None or u.end_s is not None for u in d.utterances)
            folder = Path(out_dir) / d.call_id
            folder.mkdir(parents=True, exist_ok=True)
            clock, utterances = 0.0, []
            for u in d.utterances:
                if not u.text:
                    utterances.append(u)
                    continue
                _espeak(u.text, voice_of[u.speaker], PROSODY.get(u.label or "", _NEUTRAL_PROSODY), wav)
                data, sr = sf.read(str(wav), dtype="float64")
                flac = folder / f"{speaker_id(u.utterance_id)}.flac"
                flac.write_bytes(encode_audio(data, sr, "flac"))
                start_s, end_s = u.start_s, u.end_s
                if not timed:
                    start_s, end_s = round(clock, 3), round(clock + len(data) / sr, 3)
                    clock = end_s + gap_s
                audio = flac.read_bytes()
                utterances.append(
                    replace(
                        u,
                        audio=audio,
                        audio_encoding="flac",
                        audio_rate=None,
                        audio_source=str(flac),
                        start_s=start_s,
                        end_s=end_s,
                    )
                )
            out.append(replace(d, utterances=tuple(utterances)))
    return out


def _espeak(text: str, voice: str, prosody: tuple[int, int, int], wav: Path) -> None:
    speed, pitch, amplitude = prosody
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude)]
    try:
        subprocess.run([*cmd, "--stdin", "-w", str(wav)], input=text.encode(), check=True, capture_output=True)
    except FileNotFoundError as exc:
        raise ConfigError("espeak-ng is not installed (apt-get install -y espeak-ng)") from exc
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"espeak-ng failed: {exc.stderr.decode(errors='replace')[:200]}") from exc
