"""The bench's reading of where the worker's time went (tools.bench.inside), on /metrics pages."""

from __future__ import annotations

from tools.bench import inside, worker_cores


def page(
    batches: int,
    utterances: int,
    compute_s: float,
    publish_s: float,
    engine_s: float,
    started: float | None = None,
    cpu_s: float | None = None,
) -> str:
    process = [] if started is None else [f"process_start_time_seconds {started}"]
    process += [] if cpu_s is None else [f"process_cpu_seconds_total {cpu_s}"]
    return "\n".join(
        [
            *process,
            "# HELP emostream_batch_size utterances per batch",
            f"emostream_batch_size_count {batches}",
            f"emostream_batch_size_sum {utterances}",
            f'emostream_batch_stage_seconds_sum{{stage="compute"}} {compute_s}',
            f'emostream_batch_stage_seconds_sum{{stage="publish"}} {publish_s}',
            f"emostream_engine_latency_seconds_count {batches}",
            f"emostream_engine_latency_seconds_sum {engine_s}",
            "emostream_join_wait_seconds_count 0",
            "emostream_end_to_end_latency_seconds_count 0",
        ]
    )


def test_a_levels_figures_are_its_own_not_the_workers_lifetime() -> None:
    """A fixed-load level of small batches, then flat out with big ones: the flat-out level's mean
    batch and stage times are its own (the bench once printed lifetime averages)."""
    start = page(batches=2, utterances=2, compute_s=0.2, publish_s=0.02, engine_s=0.2)  # the warm-up
    after_fixed = page(batches=102, utterances=1002, compute_s=2.2, publish_s=0.52, engine_s=2.2)
    after_max = page(batches=152, utterances=11002, compute_s=12.2, publish_s=1.52, engine_s=12.2)
    fixed, flat = inside(after_fixed, start), inside(after_max, after_fixed)
    assert fixed["batches"] == 100 and fixed["mean_batch"] == 10.0 and fixed["compute_ms_per_batch"] == 20.0
    assert flat["batches"] == 50 and flat["mean_batch"] == 200.0
    assert flat["compute_ms_per_batch"] == 200.0 and flat["publish_ms_per_batch"] == 20.0
    assert flat["engine_ms_per_batch"] == 200.0
    assert inside(after_max)["mean_batch"] == round(11002 / 152, 1)  # without a start: since the worker began


def test_a_worker_restarted_within_a_level_is_read_from_its_restart() -> None:
    before = page(batches=500, utterances=9000, compute_s=50.0, publish_s=5.0, engine_s=50.0)
    after = page(batches=20, utterances=400, compute_s=2.0, publish_s=0.2, engine_s=2.0)  # counters began again
    got = inside(after, before)
    assert got["reset"] == 1.0 and got["batches"] == 20 and got["mean_batch"] == 20.0
    assert got["compute_ms_per_batch"] == 100.0 and "reset" not in inside(before, page(1, 1, 0.1, 0.01, 0.1))


def test_the_pages_of_several_worker_processes_add_up_child_by_child() -> None:
    """With --processes N the bench reads every child's page: each child's level is its own
    difference (a restart detected per child), then they are summed (it once read the first child's
    only); a child unread at either end is left out and counted."""
    one = page(batches=10, utterances=100, compute_s=1.0, publish_s=0.1, engine_s=1.0)
    two = page(batches=30, utterances=900, compute_s=5.0, publish_s=0.3, engine_s=5.0)
    both = inside([one, two])
    assert both["batches"] == 40 and both["mean_batch"] == 25.0
    assert both["compute_ms_per_batch"] == 150.0 and both["publish_ms_per_batch"] == 10.0
    assert both["engine_ms_per_batch"] == 150.0 and "children_unread" not in both
    then = inside([one, two], [page(5, 50, 0.5, 0.05, 0.5), page(10, 300, 2.0, 0.1, 2.0)])
    assert then["batches"] == 25 and then["mean_batch"] == 26.0 and then["compute_ms_per_batch"] == 140.0
    # child 0 restarted within the level (500 batches, then 20 since); child 1 went from 10 to 610
    start = [page(500, 5000, 50.0, 5.0, 50.0), page(10, 100, 1.0, 0.1, 1.0)]
    end = [page(20, 200, 2.0, 0.2, 2.0), page(610, 6100, 61.0, 6.1, 61.0)]
    got = inside(end, start)
    assert got["reset"] == 1.0 and got["batches"] == 620 and got["mean_batch"] == 10.0
    # child 1 unreadable at the start: its lifetime is not counted as the level's
    got = inside(end, [start[0], None])
    assert got["children_unread"] == 1.0 and got["batches"] == 20


def test_a_restart_that_passed_its_old_counts_is_told_by_the_process_start_time() -> None:
    """A worker process that restarted early in a long level and did more batches since than its
    predecessor had: the counts alone went up, so only its start time tells (the bench once took
    the new process's whole count minus the old one's)."""
    before = page(50, 500, 5.0, 0.5, 5.0, started=1000.0, cpu_s=40.0)
    after = page(80, 800, 8.0, 0.8, 8.0, started=1060.5, cpu_s=12.0)
    got = inside(after, before)
    assert got["reset"] == 1.0 and got["batches"] == 80 and got["worker_cpu_s"] == 12.0
    same = inside(page(80, 800, 8.0, 0.8, 8.0, started=1000.0, cpu_s=52.5), before)
    assert "reset" not in same and same["batches"] == 30 and same["worker_cpu_s"] == 12.5
    # the cores kept busy: none for the restarted process, whose CPU time counts loading its models
    assert worker_cores(got, 10.0) is None and worker_cores(same, 10.0) == 1.25


def test_the_worker_registry_exports_its_process_metrics() -> None:
    from prometheus_client import generate_latest

    from streams.metrics import Metrics

    text = generate_latest(Metrics().registry).decode()
    for name in ("process_start_time_seconds", "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert f"\n{name} " in text, name


def test_the_flat_out_backlog_follows_the_recent_rate_not_the_levels_average() -> None:
    from tools.bench import RecentRate

    rate, done = RecentRate(window_s=3.0), 0
    for step in range(101):  # 10 s in steps of 0.1 s: 10 utterances/s for 5 s, then 100/s
        t = step / 10
        got = rate.update(t, done)
        done += 1 if t < 5 else 10
    assert abs(got - 100.0) < 5.0, got  # the level's average would say about 55
    assert len(rate.samples) <= 32  # the window's samples only
    assert RecentRate().update(0.0, 0) == 0.0
