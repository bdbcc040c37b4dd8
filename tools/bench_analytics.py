"""`emostream bench analytics`: the call analytics stage alone against a real Redis, by call length.

The worker judges the escalation rules and builds a call report for every call a batch touched
(streams/analytics.py). This measures what one batch of events costs that stage (observe, then
commit: the Redis round trips included, the Kafka sends not) when every call already has N turns,
for several N: a stage whose cost grows with the length of the calls slows a worker down as its
calls go on, and a contact center's calls run to hundreds of turns.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")


def _event(call: str, seq: int, rng: random.Random) -> Any:
    from streams.schemas import EmotionEvent

    raw = [rng.random() ** 3 for _ in LABELS]
    total = sum(raw)
    probs = {k: round(v / total, 4) for k, v in zip(LABELS, raw, strict=True)}
    label = max(probs, key=lambda k: probs[k])
    sentiment = round(rng.uniform(-1, 1), 3)
    return EmotionEvent(
        event_id=f"{call}:u{seq}:0",
        call_id=call,
        utterance_id=f"u{seq}",
        seq=seq,
        speaker="agent-1" if seq % 2 else "customer",
        label=label,
        confidence=probs[label],
        probabilities=probs,
        sentiment=sentiment,
        sentiment_label="negative" if sentiment < -0.3 else ("positive" if sentiment > 0.3 else "neutral"),
        weights={"text": 0.6, "audio": 0.4},
        modalities_present=["text", "audio"],
        model={"name": "unimse", "version": "bench", "runtime": "onnxruntime"},
        context_size=12,
        timings={"end_to_end_s": 0.1, "engine_s": 0.01, "join_s": 0.0, "queue_s": 0.0},
        produced_at=time.time(),
    )


async def _measure(
    redis_url: str, turns: int, calls: int, batch: int, batches: int, seed: int, burst: int = 1
) -> dict[str, Any]:
    """ms per batch of ``batch`` events (``burst`` new turns each of ``batch / burst`` calls: the
    rules are judged after each) once every call has ``turns``."""
    import redis.asyncio as aioredis

    from streams.analytics import CallAnalytics
    from streams.rules import load_rules

    rng = random.Random(seed)
    client = aioredis.from_url(redis_url)
    prefix = f"bench-analytics:{turns}:{time.time_ns()}:"
    a = CallAnalytics(client, prefix, ttl_s=600, book=load_rules(), max_turns=max(500, turns + batches * burst))
    names = [f"c{k}" for k in range(calls)]
    seqs = dict.fromkeys(names, 0)

    def next_batch() -> list[Any]:
        out = []
        for call in rng.sample(names, batch // burst):
            for _ in range(burst):
                out.append(_event(call, seqs[call], rng))
                seqs[call] += 1
        return out

    try:
        while min(seqs.values()) < turns:  # fill every call to `turns` (not timed), a call's turns in order
            short = sorted(names, key=lambda c: seqs[c])[:batch]
            events = [_event(c, seqs[c], rng) for c in short]
            for c in short:
                seqs[c] += 1
            await a.commit(await a.observe(events))
        planned = [next_batch() for _ in range(batches)]
        laps = []
        for events in planned:
            t0 = time.perf_counter()
            update = await a.observe(events)
            await a.commit(update)
            laps.append(time.perf_counter() - t0)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()
    ms = sorted(1000 * x for x in laps)
    return {
        "turns": turns,
        "calls": calls,
        "batch": batch,
        "burst": burst,
        "batches": batches,
        "ms_per_batch_median": round(statistics.median(ms), 3),
        "ms_per_batch_p90": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "ms_per_event": round(statistics.median(ms) / batch, 4),
    }


def run(
    turns: Sequence[int], calls: int, batch: int, batches: int, run_dir: Path, redis_port: int, burst: int = 1
) -> list[dict[str, Any]]:
    """Each call length in turn on a Redis started here (deploy/local/redis.sh) and stopped after."""
    from chaos.harness import LocalServices

    run_dir = (run_dir / "analytics").resolve()  # its own data, wiped after: nothing to load next time
    run_dir.mkdir(parents=True, exist_ok=True)
    services = LocalServices(run_dir, redis_port=redis_port)
    services.script("redis.sh", "up")
    try:
        return [asyncio.run(_measure(services.redis_url, n, calls, batch, batches, n, burst)) for n in turns]
    finally:
        services.script("redis.sh", "down", "--wipe")


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| turns a call | ms per batch (median) | p90 | ms per event | x the shortest calls |",
        "|---|---|---|---|---|",
    ]
    base = rows[0]["ms_per_batch_median"] if rows else 1.0
    for r in rows:
        lines.append(
            f"| {r['turns']} | {r['ms_per_batch_median']:.2f} | {r['ms_per_batch_p90']:.2f} | "
            f"{r['ms_per_event']:.3f} | {r['ms_per_batch_median'] / base:.2f} |"
        )
    return "\n".join(lines)


def cmd(ns: Any) -> int:
    try:
        turns = [int(t) for t in ns.turns.split(",") if t]
    except ValueError:
        print(f"error: --turns expects comma-separated integers, got {ns.turns!r}", file=sys.stderr)
        return 2
    burst = ns.burst
    if not turns or min(turns) < 1 or burst < 1 or ns.batch % burst or ns.batch // burst > ns.calls:
        print(
            "error: --turns needs positive lengths, --burst must divide --batch, and --batch / --burst calls must "
            "be at most --calls",
            file=sys.stderr,
        )
        return 2
    print(
        f"call analytics: {ns.calls} calls, batches of {ns.batch} events ({burst} turns of each call in a batch), "
        f"{ns.batches} timed batches per length"
    )
    rows = run(turns, ns.calls, ns.batch, ns.batches, Path(ns.run_dir), ns.redis_port, burst)
    print(report(rows))
    return 0
