"""Peak memory of one `emostream worker` under bursts of long telephone utterances.

``python -m tools.rss_bursts [--runs drop,off] [--tree DIR]`` (after ``make services-up``: the
local broker on 9092 and Redis on 6379) starts a worker for each run, waits for it, then sends four
bursts of 60 utterances, each 59 s of G.711 mu-law speech (RAVDESS clips joined) with its
transcript, 25 s apart, and samples the worker's resident memory every 0.2 s. It prints the peak
while starting and while the bursts are worked. Each run uses topics of its own (a new consumer
group would otherwise read every earlier run's bursts too). A run named ``drop``, ``warn`` or
``off`` sets ``engine.language_check``; any other name runs the code in ``--tree`` (a git worktree
of an older commit, say) as it is. About 3.5 minutes a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LINES = (
    "I have been waiting for forty minutes and nobody has called me back about the refund.",
    "Thank you so much, that is exactly what I needed today.",
)
TOPICS = ("text", "audio", "video", "control", "emotions", "deadletter", "alerts", "calls")


def long_clip(data_dir: Path, seconds: float = 59.0) -> bytes:
    import soundfile as sf

    from engines.features.codecs import encode_audio

    waves, rate = [], 16000
    for path in sorted(data_dir.glob("ravdess/Actor_*/*.flac"))[:40]:
        wave, rate = sf.read(path, dtype="float32")
        waves.append(wave.mean(1) if wave.ndim > 1 else wave)
    if not waves:
        raise SystemExit(f"no RAVDESS clips under {data_dir}/ravdess")
    return encode_audio(np.concatenate(waves)[: int(seconds * rate)], rate, "pcm_mulaw")


def run(name: str, tree: Path, clip: bytes, bursts: int = 4, size: int = 60) -> dict[str, float]:
    from client.publisher import Publisher
    from streams.settings import Settings

    tag = uuid.uuid4().hex[:6]
    os.environ.update({f"EMOSTREAM_KAFKA__TOPICS__{k.upper()}": f"rss{tag}.{k}" for k in TOPICS})
    env = dict(os.environ, EMOSTREAM_KAFKA__GROUP_ID=f"rss-{tag}")
    if name in ("drop", "warn", "off"):
        env["EMOSTREAM_ENGINE__LANGUAGE_CHECK"] = name
    log_path = Path("/tmp") / f"rss-bursts-{name}-{tag}.log"
    with log_path.open("w") as log:
        cwd = tree if name not in ("drop", "warn", "off") else REPO
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], cwd=cwd, env=env, stdout=log, stderr=log
        )
        peaks = {"start": 0.0, "bursts": 0.0}
        phase, stop = ["start"], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                    kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
                    peaks[phase[0]] = max(peaks[phase[0]], kb / 1024)
                except (OSError, StopIteration, ValueError):
                    pass
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()
        try:
            time.sleep(45)  # start-up: models, topics, partitions
            if proc.poll() is not None:
                raise SystemExit(f"the worker of run {name} exited: see {log_path}")
            publisher = Publisher(Settings())
            phase[0] = "bursts"
            for b in range(bursts):
                for i in range(size):
                    call = f"rss-{tag}-{b}-{i}"
                    publisher.text(call, "u0", 0, "customer", LINES[i % len(LINES)])
                    publisher.audio(call, "u0", 0, "customer", clip, "pcm_mulaw", 8000)
                publisher.flush()
                time.sleep(25)
            time.sleep(30)
            publisher.close()
        finally:
            stop.set()
            proc.terminate()
            proc.wait(30)
    return {k: round(v) for k, v in peaks.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.rss_bursts", description=__doc__)
    parser.add_argument("--runs", default="drop,off", help="comma-separated runs, in order (alternate them)")
    parser.add_argument("--tree", default=str(REPO), help="the code that runs not named drop/warn/off run")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("EMOSTREAM_DATA_DIR", "../shared/data"),
        help="folder holding ravdess/ (the long clip is built from it)",
    )
    ns = parser.parse_args(argv)
    clip = long_clip(Path(ns.data_dir))
    out = []
    for name in ns.runs.split(","):
        out.append({"run": name, **run(name, Path(ns.tree), clip)})
        print(f"{name}: peak RSS MiB {out[-1]}", file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
