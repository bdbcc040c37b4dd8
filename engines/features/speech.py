"""Is there a voice at all? Seconds of speech in a waveform, by Silero VAD (MIT).

A voice model trusted on silence, line noise or hold music labels the call from whatever the
noise resembles: on the composite's dev split the shipped default fell from W-F1 0.84 to 0.29
with every clip replaced by near-silence and to 0.35 with noise, far below its text alone
(0.59). Audio with less than :data:`MIN_SPEECH_S` of speech is therefore *not used*: the stream,
``emostream evaluate`` and training treat it as absent (its weight is exactly 0, the label is
the text's), and the stream's event says why (``ignored``).

The detector is Silero VAD v6 as the ``silero-vad`` package ships it (``silero_vad_16k_sequence.onnx``,
MIT licence, 1.2 MB): the sequence export runs a whole clip's 32 ms frames (512 samples at
16 kHz, each with the previous frame's last 64 samples as context) in one ONNX Runtime call,
~10 ms for a 4 s clip on one core. A frame counts as speech when its probability exceeds
:data:`FRAME_THRESHOLD`, far below the package's 0.5 for segmenting: the question here is only
whether a voice is there at all, and Silero scores acted shouting low (at 0.5, 16 of 1200 RAVDESS
clips had under 0.25 s of speech, both strong-anger clips of actor 18 none). Measured with
the seeded probes (``engines.corrupt.probe_clips``) at 0.05: RAVDESS clips 0.22-3.7 s of speech,
through the telephone channel 1.3-3.3 s, espeak-ng speech 2.4-6.4 s; white, pink and hum noise at
-35..-15 dBFS at most 0.10 s, -80..-60 dBFS silence 0.03 s, a synthetic chord 0.00 s.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import FeatureError
from engines.features.codecs import SAMPLE_RATE

#: audio whose detected speech is shorter than this is not used (seconds)
MIN_SPEECH_S = 0.15
FRAME_THRESHOLD = 0.05
FRAME = 512  # samples per frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame each frame carries
CHUNK = 16  # frames of the first call when a clip may stop early (``frame_probs(enough=...)``), doubling
MODEL_FILE = "silero_vad_16k_sequence.onnx"
DETECTOR_ID = f"silero-vad-6-seq-p{FRAME_THRESHOLD:g}"  # names the cached seconds: the threshold changes them
START_MAX_DIFF = 1e-4  # OpenVINO's frame probabilities against ONNX Runtime's at each start (about 1e-7 measured)
RUNTIMES = ("onnxruntime", "openvino")


def model_path() -> Path:
    """The ONNX file inside the installed ``silero-vad`` package (found without importing it: its
    ``__init__`` imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FeatureError("the speech detector needs the silero-vad package (pip install silero-vad)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / MODEL_FILE
    if not path.is_file():
        raise ImportError(f"silero-vad has no {MODEL_FILE} (expected at {path}); install silero-vad>=6.2")
    return path


class SpeechDetector:
    """``seconds(waves)``: seconds of speech in each 16 kHz mono float32 waveform.

    ``runtime``: ``onnxruntime``, or ``openvino`` (the ``openvino`` runtime's workers: fp32, the
    same probabilities to about 1e-7, checked against ONNX Runtime at each start; faster a call on
    a CPU with AVX-512, as fast on one with AVX2 only: docs/performance-history.md)."""

    def __init__(self, threads: int = 1, runtime: str = "onnxruntime") -> None:
        import hashlib

        path = model_path()
        #: names the cached seconds: another threshold or another model file gives other seconds
        #: (not the runtime: both compute the graph in fp32)
        self.id = f"{DETECTOR_ID}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
        if runtime not in RUNTIMES:
            raise FeatureError(f"the speech detector runs on {' or '.join(RUNTIMES)}, not {runtime!r}")
        self.runtime = runtime
        self._session: Any = _onnx_session(path, threads)
        if runtime == "openvino":
            from engines.features.openvino_cpu import OpenVinoRunner, compile_cpu

            self._use_checked(OpenVinoRunner(compile_cpu(path, threads, precision="f32"), concurrent=True))

    def _use_checked(self, compiled: Any) -> None:
        """Run on ``compiled`` from now on, once its frame probabilities on the probe clips match
        ONNX Runtime's (the session until now): a release or a CPU that computes the graph
        wrongly would take voices for silence."""
        from engines.features.openvino_cpu import refuse
        from engines.features.whisper_onnx import probe_waves

        waves = probe_waves()
        want = [self.frame_probs(w) for w in waves]
        self._session = compiled
        diff = max(float(np.abs(self.frame_probs(w) - p).max()) for w, p in zip(waves, want, strict=True))
        if not diff <= START_MAX_DIFF:  # NaN fails too
            raise refuse(
                "speech detector", f"frame probabilities differ by up to {diff:.1e}, at most {START_MAX_DIFF:g}"
            )

    def frame_probs(self, wave: np.ndarray, enough: int | None = None) -> np.ndarray:
        """(frames,) speech probability of each 32 ms frame (the last one zero-padded).

        ``enough``: stop once that many frames count as speech (:data:`FRAME_THRESHOLD`) and return
        the probabilities of the frames run so far. The frames run in chunks of :data:`CHUNK` with
        the recurrent state carried from one chunk to the next, so each probability is the one the
        whole clip in one call gives (exactly: the same operations in the same order). Each chunk is
        twice the one before, so a long clip without speech costs a few calls."""
        x = np.ascontiguousarray(wave, dtype=np.float32).reshape(-1)
        n = (x.size + FRAME - 1) // FRAME
        if n == 0 or not np.isfinite(x).all():  # decode_audio refuses non-finite samples; direct callers: no speech
            return np.zeros((0,), dtype=np.float32)
        frames = np.zeros((n, FRAME), dtype=np.float32)
        frames.reshape(-1)[: x.size] = x
        context = np.zeros((n, CONTEXT), dtype=np.float32)
        context[1:] = frames[:-1, -CONTEXT:]
        inputs = np.concatenate([context, frames], axis=1)  # (n, CONTEXT + FRAME)
        h = c = np.zeros((1, 1, 128), dtype=np.float32)
        step = n if enough is None else CHUNK
        out, voiced, start = [], 0, 0
        while start < n:
            probs, h, c = self._session.run(
                ["speech_probs", "hn", "cn"], {"input": inputs[start : start + step], "h": h, "c": c}
            )
            out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
            voiced += int((out[-1] > FRAME_THRESHOLD).sum())
            if enough is not None and voiced >= enough:
                break
            start += step
            step *= 2  # a long clip without speech takes a few calls, not one per chunk
        return out[0] if len(out) == 1 else np.concatenate(out)

    def seconds(self, waves: Sequence[np.ndarray], enough: float | None = None) -> np.ndarray:
        """(N,) float32 seconds of speech per waveform.

        ``enough`` (seconds): a clip is run only until it has that much speech, and its figure is
        then at least ``enough`` rather than the whole clip's (figures below it are exact). The
        stream asks only whether a clip has :data:`MIN_SPEECH_S` of speech, which most clips show
        in their first second: 2.5x less work than running the whole clip on RAVDESS."""
        per_frame = FRAME / SAMPLE_RATE
        frames = None
        if enough is not None:  # the fewest speech frames whose seconds (in float32, as returned) reach enough
            frames = max(1, math.ceil(enough / per_frame - 1e-9))
            while np.float32(frames * per_frame) < enough:
                frames += 1
        return np.array(
            [float((self.frame_probs(w, frames) > FRAME_THRESHOLD).sum()) * per_frame for w in waves], dtype=np.float32
        )


def _onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def detector_for(audio: Any) -> SpeechDetector:
    """The detector that runs beside an audio extractor: on the runtime the extractor names in its
    ``speech_runtime`` (OpenVINO's Whisper: ``openvino``), else on ONNX Runtime (no OpenVINO
    loaded for it)."""
    return SpeechDetector(runtime=getattr(audio, "speech_runtime", "onnxruntime"))


def is_speech(seconds: np.ndarray | float, min_speech_s: float = MIN_SPEECH_S) -> np.ndarray:
    """Where the audio has enough speech to be used."""
    return np.asarray(seconds) >= min_speech_s
