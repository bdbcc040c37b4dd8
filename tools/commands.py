"""``emostream feed``, ``subscribe`` and ``demo``: each imports its module only when it runs."""

from __future__ import annotations

import re
import sys
from typing import Any

from engines.argtypes import positive, positive_int


def cmd_demo(ns: Any) -> int:
    from tools.demo import run_demo

    return run_demo(ns)


def cmd_feed(ns: Any) -> int:
    from streams.kafka import wait_for_topics
    from streams.settings import load_settings
    from tools.dialogues import attach_ravdess, read_jsonl, read_meld_csv
    from tools.feed import feed

    settings = load_settings(ns.config)
    problem = _feed_options_problem(ns)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if ns.file.endswith(".csv"):
        dialogues = read_meld_csv(ns.file, limit_dialogues=ns.limit)
        if ns.audio_dir:
            dialogues = attach_ravdess(dialogues, ns.audio_dir, seed=ns.seed)
    else:
        dialogues = read_jsonl(ns.file)[: ns.limit]
    if ns.call_suffix:
        dialogues = [with_call_suffix(d, ns.call_suffix) for d in dialogues]
        too_long = [d.call_id for d in dialogues if len(d.call_id) > 128]
        if too_long:
            print(f"error: --call-suffix makes call id {too_long[0]!r} longer than 128 characters", file=sys.stderr)
            return 2
    wanted = {m.strip() for m in ns.modalities.split(",")}
    if not dialogues:
        print(f"error: {ns.file}: no calls in it" if ns.limit != 0 else "error: --limit 0: no calls to send",
              file=sys.stderr)  # fmt: skip
        return 2
    have = {m for d in dialogues for m in d.modalities()}
    if not have & wanted:
        print(f"error: {ns.file} has {'+'.join(sorted(have)) or 'no parts'}: --modalities {ns.modalities} leaves "
              "nothing to send", file=sys.stderr)  # fmt: skip
        return 2
    wait_for_topics(settings)  # a broker still starting is waited for (kafka.startup_timeout_s)
    import signal

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the calls under way get their `ended`

    signal.signal(signal.SIGTERM, stop)
    try:
        report = feed(
            dialogues,
            settings,
            realtime=not ns.fast,
            speed=ns.speed,
            modalities=tuple(sorted(wanted)),
            progress=not ns.no_progress,
            audio_as=(ns.audio_encoding, ns.audio_rate) if ns.audio_encoding else None,
        )
    except ValueError as exc:  # bad options, or a message the broker and the workers would refuse
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.failed else 0


def _feed_options_problem(ns: Any) -> str | None:
    """What is wrong with `emostream feed`'s options before anything is read or sent (None: nothing)."""
    from engines.features.codecs import G711_RATE, RATES
    from engines.modalities import MODALITIES
    from streams.schemas import ID_CHARS

    unknown = {m.strip() for m in ns.modalities.split(",")} - set(MODALITIES)
    if unknown:
        return f"--modalities {ns.modalities}: {', '.join(sorted(unknown))} is no modality ({', '.join(MODALITIES)})"
    if ns.audio_rate is not None:
        if not ns.audio_encoding:
            return "--audio-rate sets the rate of --audio-encoding pcm_s16le, flac or wav: name the encoding too"
        if ns.audio_encoding in ("pcm_mulaw", "pcm_alaw") and ns.audio_rate != G711_RATE:
            return f"--audio-encoding {ns.audio_encoding} is G.711 at {G711_RATE} Hz, not {ns.audio_rate}"
        if ns.audio_rate not in RATES:
            return f"--audio-rate {ns.audio_rate} Hz: the worker takes {', '.join(map(str, RATES))}"
    if ns.limit is not None and ns.limit < 0:
        return f"--limit {ns.limit}: the number of calls to send, 1 or more"
    if ns.audio_dir and not ns.file.endswith(".csv"):
        return "--audio-dir attaches RAVDESS speech to a MELD CSV; a JSONL file names its own audio (audio_path)"
    if ns.call_suffix and not re.fullmatch(rf"[{ID_CHARS}]{{1,32}}", ns.call_suffix):
        return f"--call-suffix {ns.call_suffix!r}: up to 32 of A-Z a-z 0-9 . _ : @ / - (it becomes part of call ids)"
    return None


def with_call_suffix(d: Any, suffix: str) -> Any:
    """The dialogue under call id ``<call id><suffix>``: sent again, it is a new call to the worker."""
    import dataclasses

    return dataclasses.replace(
        d, call_id=d.call_id + suffix, utterances=tuple(dataclasses.replace(u, call_id=u.call_id + suffix)
                                                         for u in d.utterances)
    )  # fmt: skip


def cmd_subscribe(ns: Any) -> int:
    from streams.settings import load_settings
    from tools.subscribe import subscribe

    if ns.no_events and not (ns.deadletters or ns.alerts):
        print("subscribe: --no-events leaves nothing to print: add --deadletters and/or --alerts", file=sys.stderr)
        return 2
    settings = load_settings(ns.config)
    subscribe(
        settings,
        call_ids=ns.call or None,
        fmt="json" if ns.json else "pretty",
        from_beginning=ns.from_beginning,
        max_events=ns.max_events,
        timeout_s=ns.timeout,
        deadletters=ns.deadletters,
        alerts=ns.alerts,
        events=not ns.no_events,
    )
    return 0


def cmd_bench(ns: Any) -> int:
    from tools.bench import cmd_bench as run

    return run(ns)


def register(sub: Any) -> None:
    from tools.bench import add_bench_args
    from tools.demo import add_demo_args

    p = sub.add_parser("feed", help="replay dialogues (MELD CSV or our JSONL) into the input topics")
    p.add_argument("file", help="a MELD CSV ({split}_sent_emo.csv) or a JSONL file (format: demo/README.md)")
    p.add_argument("--audio-dir", help="RAVDESS folder: attach real speech of each utterance's emotion (MELD)")
    p.add_argument("--seed", type=int, default=0, help="which RAVDESS clip each utterance gets (--audio-dir)")
    p.add_argument("--limit", type=int, default=None, help="at most this many calls")
    p.add_argument("--fast", action="store_true", help="as fast as possible instead of in real time")
    p.add_argument("--speed", type=float, default=1.0, help="real-time speed-up factor")
    p.add_argument(
        "--modalities",
        default="text,audio,video",
        help="comma-separated parts to send, of those the file has (default: all)",
    )
    p.add_argument(
        "--audio-encoding",
        choices=["pcm_mulaw", "pcm_alaw", "pcm_s16le", "flac", "wav"],
        help="send audio in this encoding (pcm_mulaw/pcm_alaw: an 8 kHz G.711 telephone line; default: as read)",
    )
    p.add_argument("--audio-rate", type=int, help="sample rate for pcm_s16le/flac/wav (default 16000)")
    p.add_argument(
        "--call-suffix",
        default="",
        metavar="S",
        help="append S to every call id: the worker labels each call and utterance id once, so a file sent again "
        "needs new ids (e.g. --call-suffix -2)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_feed)
    p = sub.add_parser("subscribe", help="print emotion events as they arrive")
    p.add_argument("--call", action="append", help="only this call id (repeatable; exact, case included)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of readable lines")
    p.add_argument("--from-beginning", action="store_true", help="read the topic from its start, not from now")
    p.add_argument("--deadletters", action="store_true", help="also print dead letters")
    p.add_argument("--alerts", action="store_true", help="also print escalation alerts and call summaries")
    p.add_argument(
        "--no-events",
        action="store_true",
        help="print no emotion events: with --deadletters and/or --alerts, only those (bad input to triage, a "
        "supervisor's feed)",
    )
    p.add_argument(
        "--max-events", type=positive_int, default=None, help="stop after this many records (default: run until Ctrl-C)"
    )
    p.add_argument("--timeout", type=positive, default=None, help="stop after this many seconds (default: never)")
    p.set_defaults(func=cmd_subscribe)
    p = sub.add_parser("demo", help="local Kafka + Redis + worker + sample calls, events printed live")
    add_demo_args(p)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser(
        "bench", help="throughput and latency of the pipeline on local Kafka + Redis, beside two references"
    )
    add_bench_args(p)
    p.set_defaults(func=cmd_bench)
