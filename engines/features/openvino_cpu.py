"""MiniLM and Whisper's encoder compiled by OpenVINO for the CPU: the encoders of the ``openvino`` runtime.

    text = OpenVinoTextEncoder(TunedTextEncoder(...))        # or OpenVinoTextEncoder(TextEncoder())
    audio = OpenVinoWhisperExtractor(WhisperConfig(layers=(2,)))

Both run the graphs that the ``onnxruntime`` runtime exports (the same export cache, the same
probe checks at export: :mod:`engines.features.text_onnx`, :mod:`engines.features.whisper_onnx`),
compiled by OpenVINO's CPU plugin with its inference precision at bf16 where the CPU computes bf16
natively (AMX or AVX-512 BF16: the plugin lists ``BF16`` among its capabilities), fp32 elsewhere.
There the matrix products run in bf16 (on AMX tiles, or AVX-512 BF16 dot products), as the torch
encoders of ``onnxruntime-bf16`` do, but without torch in the process (about 500 MB resident) and
with the graph's operators fused (README, Runtimes and Performance, has the measurements: made on
an AMD EPYC with AVX-512 BF16, not yet on AMX).

A text's vector must not depend on the texts it is encoded with (a replay after a crash encodes an
utterance in another batch and must give its event the same probabilities). OpenVINO's kernels
give a row the same bits whatever the number of rows, but not whatever the padded width: so each
text is padded to a multiple of :data:`SPAN` tokens and a call holds only texts of one padded width
(:meth:`OpenVinoTextEncoder.encode`). Whisper's passes are cut as the ONNX Runtime extractor cuts
them; in bf16 a clip's vector can move in its last bits with its pass (as with ``onnxruntime-bf16``).
The same bits were checked at one, two (every core of this project's machine) and four threads
(``tests/engine/test_openvino.py``).

The probe check at export runs ONNX Runtime in fp32; the compiled graph is checked at each start as
well, against the graph it was compiled from run by ONNX Runtime in fp32, on the same probes (the
export's probe sentences, :data:`~engines.features.text_onnx.PROBE`, and probe clips,
:func:`~engines.features.whisper_onnx.probe_waves`): an OpenVINO release or a CPU whose kernels
compute the graph wrongly fails at start (:class:`~engines.errors.FeatureError`, naming the other
runtimes) rather than labelling a stream from wrong vectors. It costs an ONNX Runtime session of each
graph for the check's duration (under a second at a start).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import FeatureError
from engines.features.text import TextEncoder, normalise_text
from engines.features.text_onnx import PROBE, OnnxTextEncoder
from engines.features.whisper_onnx import OnnxWhisperExtractor, probe_waves
from engines.runtime.select import openvino_native_bf16
from engines.runtime.threads import cpu_threads

#: a text is padded to a multiple of this many tokens (see the module's docstring)
SPAN = 16
#: compiled kernels kept per shape: the CPU plugin keeps 5000 by default, and Whisper's passes take
#: a new shape with nearly every batch (clip lengths vary), so a process grew from 340 to 1016 MB
#: over 240 calls of random sizes (651 at 0, 679 at 64, at the same speed; onnxruntime 481)
RUNTIME_CACHE = 64
#: the compiled graph against ONNX Runtime fp32 at each start: the probe sentences' least cosine, and
#: the probe clips' largest difference relative to the vector's largest value (measured on the AMD
#: EPYC in bf16: see tests/engine/test_openvino.py, which prints them)
START_MIN_COSINE = 0.999
START_MAX_REL = 0.02


def openvino_precision() -> str:
    """``bf16`` where OpenVINO's CPU plugin computes bf16 natively, else ``f32``."""
    return "bf16" if openvino_native_bf16() else "f32"


def compile_config(threads: int | None = None, precision: str | None = None) -> dict[str, Any]:
    """The CPU plugin's settings: ``precision`` (None: bf16 where native, see
    :func:`openvino_precision`), latency hint (one stream), at most :data:`RUNTIME_CACHE` shapes'
    kernels kept, threads not pinned to cores, ``threads`` (None: :func:`cpu_threads`, else every core)."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision or openvino_precision(),
        "PERFORMANCE_HINT": "LATENCY",
        "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE,
        # the plugin pins its threads to cores, the same cores in every process: two processes of one
        # thread each on two cores encoded 171 texts/s each pinned, 335 unpinned
        "ENABLE_CPU_PINNING": False,
    }
    n = threads if threads is not None else cpu_threads()
    if n is not None:
        config["INFERENCE_NUM_THREADS"] = int(n)
    return config


def reference_session(path: Path) -> Any:
    """``path`` in ONNX Runtime, fp32, one thread: what a compiled graph is checked against."""
    import onnxruntime as ort

    from engines.runtime.threads import encoder_session_options

    return ort.InferenceSession(str(path), sess_options=encoder_session_options(1), providers=["CPUExecutionProvider"])


def refuse(what: str, figure: str) -> FeatureError:
    return FeatureError(
        f"OpenVINO's compiled {what} graph differs from the same graph in ONNX Runtime fp32 on the probes "
        f"({figure}): this OpenVINO release or this CPU computes it wrongly; run --runtime onnxruntime "
        "(or onnxruntime-bf16) instead"
    )


def compile_cpu(path: Path, threads: int | None = None, precision: str | None = None) -> Any:
    """``path`` (an ONNX graph) compiled for this CPU with :func:`compile_config`."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise FeatureError("the openvino runtime needs the openvino package (pip install openvino)") from exc
    core = ov.Core()
    try:
        return core.compile_model(core.read_model(str(path)), "CPU", compile_config(threads, precision))
    except RuntimeError as exc:  # OpenVINO's errors: an operator it lacks, a file it cannot read
        raise FeatureError(
            f"OpenVINO cannot compile {path.name}: {exc}; run --runtime onnxruntime (or onnxruntime-bf16) instead"
        ) from exc


class OpenVinoRunner:
    """An OpenVINO compiled model behind ONNX Runtime's ``run(outputs, feeds)`` (``outputs``: names,
    or None for all of them in the graph's order; ``feeds``: those of them the graph takes, as ONNX
    Runtime is fed). An infer request takes one call at a time: by default one request behind a lock
    (the encoders: one call's threads use the cores), with ``concurrent`` one request per calling
    thread (the speech detector: two batches' detectors may run at once, ``streams.pipeline``)."""

    def __init__(self, compiled: Any, concurrent: bool = False) -> None:
        self.compiled = compiled
        self.inputs = [i.get_any_name() for i in compiled.inputs]
        self._local = threading.local()
        # shared: one request and a lock; concurrent: none shared, each thread's own (no lock)
        self._request: Any = None if concurrent else compiled.create_infer_request()
        self._lock: Any = contextlib.nullcontext() if concurrent else threading.Lock()

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {name: feeds[name] for name in self.inputs}
        wanted = self.compiled.outputs if outputs is None else [self.compiled.output(n) for n in outputs]
        with self._lock:
            request = self._request
            if request is None:
                request = getattr(self._local, "request", None)
                if request is None:
                    request = self._local.request = self.compiled.create_infer_request()
            result = request.infer(feeds)
            return [np.array(result[out]) for out in wanted]  # copies: the request reuses its buffers


class OpenVinoTextEncoder(OnnxTextEncoder):
    """A MiniLM :class:`TextEncoder` (tuned or not) run from its exported ONNX graph by OpenVINO.

    ``kind``, ``to_dict()`` are the wrapped encoder's; the cache namespace is its own (vectors to
    bf16 precision never mix with the fp32 encoder's in a feature cache)."""

    def __init__(self, encoder: TextEncoder | None = None, intra_op_threads: int | None = None) -> None:
        super().__init__(encoder, optimize=False, intra_op_threads=intra_op_threads)
        self.precision: str | None = None  # once compiled

    @property
    def cache_namespace(self) -> str:
        return f"{self.encoder.cache_namespace}/openvino-{openvino_precision()}"

    def session(self) -> Any:
        """The compiled graph: the export cache's (exported and checked by ONNX Runtime first if
        it lacks one, as the onnxruntime runtime does)."""
        if self._session is None:
            path = self._recorded_graph() if self.encoder._model is None else None
            if path is None:
                OnnxTextEncoder.session(self)  # exports, checks the probe and records the graph
                path = self.onnx_path
                self._session = None  # the ONNX Runtime session goes; OpenVINO runs the graph
            assert path is not None
            runner = OpenVinoRunner(compile_cpu(path, self.intra_op_threads))
            self._check_compiled(runner, path)
            self._session = runner
            self.onnx_path = path
            self.precision = openvino_precision()
        return self._session

    def _check_compiled(self, runner: OpenVinoRunner, path: Path) -> None:
        """Refuse a compiled graph whose probe vectors are not those of ONNX Runtime fp32."""
        ids, types = self._tokenize([normalise_text(t) for t in PROBE])
        feeds = OnnxTextEncoder._pad(self, ids, types)  # one call, the graph's own padding
        ref = reference_session(path)
        want = np.asarray(ref.run(None, {i.name: feeds[i.name] for i in ref.get_inputs()})[0])
        got = runner.run(None, feeds)[0]
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
        cos = float(((got * want).sum(1) / norms).min()) if np.isfinite(got).all() else float("nan")
        if not cos >= START_MIN_COSINE:
            raise refuse("text", f"least cosine {cos:.6f}, at least {START_MIN_COSINE} expected")

    def _run_bucket(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        session = self.session()
        if not isinstance(session, OpenVinoRunner):  # during the export's probe check: the ONNX Runtime session
            return super()._run_bucket(feeds)
        return session.run(None, feeds)[0]

    def _pad(self, ids: list[list[int]], types: list[list[int]] | None) -> dict[str, np.ndarray]:
        """The tokenizer's padding, widened to a multiple of :data:`SPAN` (on its padding side)."""
        feeds = super()._pad(ids, types)
        width = feeds["input_ids"].shape[1]
        span = max(SPAN, -(-width // SPAN) * SPAN)
        if span == width:
            return feeds
        tokenizer = self.tokenizer()
        cols = (span - width, 0) if tokenizer.padding_side == "left" else (0, span - width)
        pad = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        return {k: np.pad(v, ((0, 0), cols), constant_values=pad[k]) for k, v in feeds.items()}

    def _calls(self, clean: list[str], ids: list[list[int]]) -> list[list[int]]:
        """Texts grouped by their length rounded up to :data:`SPAN` tokens, each group in calls of
        at most ``config.bucket_size``, so a text's vector is the same in any batch."""
        groups: dict[int, list[int]] = {}
        for i, x in enumerate(ids):
            groups.setdefault(-(-max(1, len(x)) // SPAN), []).append(i)
        size = self.config.bucket_size
        return [members[s : s + size] for _, members in sorted(groups.items()) for s in range(0, len(members), size)]


class OpenVinoWhisperExtractor(OnnxWhisperExtractor):
    """Whisper's exported encoder graph (:class:`OnnxWhisperExtractor`'s, exported and checked by
    ONNX Runtime) run by OpenVINO; the same log-mel front end, passes and pooling."""

    #: where the speech detector beside it runs (:func:`engines.features.speech.detector_for`)
    speech_runtime = "openvino"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.precision: str | None = None
        # its ``id`` is the fp32 extractor's (the same features, to bf16 precision): evaluate keeps a
        # reduced-precision runtime's features out of the shared cache (Runtime.exact)

    def _runner(self, path: Path) -> Any:
        runner = OpenVinoRunner(compile_cpu(path, self.intra_op_threads))
        self._check_compiled(runner, path)
        self.precision = openvino_precision()
        return runner

    def _check_compiled(self, runner: OpenVinoRunner, path: Path) -> None:
        """Refuse a compiled graph whose probe vectors are not those of ONNX Runtime fp32."""
        waves = probe_waves()
        want = self._extract(reference_session(path), waves)
        got = self._extract(runner, waves)
        rel = float((np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)).max())
        if not rel <= START_MAX_REL:
            raise refuse("Whisper", f"largest relative difference {rel:.3g}, at most {START_MAX_REL} expected")
