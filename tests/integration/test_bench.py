"""``emostream bench`` on the real broker and Redis, at a toy size: the worker at a fixed load and
flat out, the passthrough and the naive worker, each gets every utterance through and measures it.
(The figures themselves come from the full command, README "Performance"; none is asserted here.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.bench import Plan, plot, ratios, run_plan

pytestmark = pytest.mark.integration


def test_every_subject_gets_every_utterance_through_and_is_measured(
    services, shared_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    plan = Plan(
        workloads=("text",),
        loads={"text": (20.0,)},
        duration_s=3.0,
        drain_s=60.0,
        calls=8,
        references=("passthrough", "naive"),
        processes=(1,),
        naive_duration_s=3.0,
    )
    levels = run_plan(plan, shared_data, tmp_path, services)
    got = {(lv.subject, lv.offered): lv for lv in levels}
    assert sorted(got) == [("naive", "max"), ("passthrough", "max"), ("worker", "20"), ("worker", "max")]
    for lv in levels:
        assert lv.sent > 0 and lv.unfinished == 0 and lv.completed == lv.sent, lv
        assert lv.sustained > 0 and 0 < lv.p50_ms <= lv.p90_ms <= lv.p99_ms, lv
    fixed = got[("worker", "20")]
    assert 15 <= fixed.sent_per_s <= 25  # the load tool offers what it was asked
    assert fixed.inside["batches"] > 0 and fixed.inside["mean_batch"] >= 1  # read from the worker's /metrics
    # the worker holds the models; the passthrough holds none
    assert got[("worker", "max")].peak_rss_mib > 300 > got[("passthrough", "max")].peak_rss_mib > 0
    assert got[("naive", "max")].peak_rss_mib > 300
    lines = ratios(levels)
    assert any(line.startswith("text: worker / passthrough = ") for line in lines)
    assert any(line.startswith("text: worker / naive = ") for line in lines)
    assert plot(levels, tmp_path / "bench.png").stat().st_size > 10_000


def test_the_analytics_bench_measures_each_call_length_and_cleans_up(services) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    import redis

    from tools.bench_analytics import _measure, report

    rows = [asyncio.run(_measure(services.redis_url, n, calls=6, batch=3, batches=5, seed=n)) for n in (2, 12)]
    assert [r["turns"] for r in rows] == [2, 12]
    for r in rows:
        assert 0 < r["ms_per_batch_median"] <= r["ms_per_batch_p90"] and r["ms_per_event"] > 0, r
    assert "| 12 |" in report(rows)
    burst = asyncio.run(_measure(services.redis_url, 4, calls=6, batch=4, batches=5, seed=1, burst=2))
    assert burst["burst"] == 2 and burst["ms_per_event"] > 0, burst  # two turns of each call per batch
    db = redis.Redis.from_url(services.redis_url)
    assert not list(db.scan_iter(match="bench-analytics:*"))  # its keys deleted
    db.close()
