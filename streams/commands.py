"""The service's subcommands beyond ``schemas`` (worker, ui, chaos, train, evaluate, cv); the tools'
(feed, subscribe, demo) are :mod:`tools.commands`. Each imports its heavy module only when it runs."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def cmd_worker(ns: Any) -> int:
    from streams.app import run_worker
    from streams.settings import load_settings

    overrides: dict[str, Any] = {} if ns.metrics_port is None else {"metrics": {"port": ns.metrics_port}}
    if ns.instance_id is not None:  # a supervised child's static membership
        overrides["kafka"] = {"instance_id": ns.instance_id}
    settings = load_settings(ns.config, **overrides)
    if ns.parent_pid is not None:  # a supervised worker, or a worker's export child: ends with its parent
        from streams.processes import die_with_parent

        die_with_parent(ns.parent_pid)
    if ns.prepare:
        return prepare_model(settings)
    if ns.processes > 1:
        from streams.errors import ConfigError
        from streams.processes import run_processes
        from streams.settings import INSTANCE_ID_MAX

        last = settings.metrics.port + ns.processes - 1
        if settings.metrics.port and last > 65535:
            raise ConfigError(
                f"metrics ports {settings.metrics.port}..{last} for --processes {ns.processes}: a port is at most "
                "65535 (set metrics.port lower, or 0 for any free ports)"
            )
        base = settings.kafka.instance_id
        if base and len(f"{base}-{ns.processes - 1}") > INSTANCE_ID_MAX:
            raise ConfigError(
                f"kafka.instance_id is {len(base)} characters: with --processes {ns.processes} each child's id adds "
                f"'-{ns.processes - 1}' at most, and an id is at most {INSTANCE_ID_MAX} (set a shorter one)"
            )
        from streams.runtime import prepare_graphs

        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        prepare_graphs(settings, ns.processes)  # once for all of them, before they start
        return run_processes(ns.processes, ns.config, settings)
    from engines.runtime.threads import limit_malloc_arenas

    limit_malloc_arenas()  # before the model's threads start
    return run_worker(settings)


def prepare_model(settings: Any) -> int:
    """Load the model on its runtime and warm its encoders, which fills the export cache with
    their graphs, then exit: run once where the workers' home is (an image build), so that their
    starts find the graphs and, on the ONNX Runtime runtimes, never load torch."""
    import sys

    from engines.features.cache import DEFAULT_ROOT
    from streams.runtime import load_model, load_revision_model

    engine, featurizer = load_model(settings)
    load_revision_model(settings, engine)  # checked too: it shares the encoders (and so their graphs)
    featurizer.warm_up()
    graphs = sorted(str(p.relative_to(DEFAULT_ROOT)) for p in (DEFAULT_ROOT / "onnx").rglob("*.onnx"))
    print(f"prepared {settings.model_dir()} on runtime {engine.info.runtime}; graphs in {DEFAULT_ROOT}:")
    for g in graphs:
        print(f"  {g}")
    print(f"this process loaded torch: {'yes' if 'torch' in sys.modules else 'no'}")
    return 0


def cmd_ui(ns: Any) -> int:
    from streams.settings import load_settings
    from streams.ui.server import run_ui

    return run_ui(load_settings(ns.config), ns.host, ns.port, ns.since * 60, ns.allowed_hosts)


def _not_negative(text: str) -> float:
    x = float(text)
    if not 0 <= x < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more (and finite), not {text}")
    return x


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def register(sub: Any) -> None:

    p = sub.add_parser("worker", help="run a stream worker (settings from --config and EMOSTREAM_*)")
    p.add_argument(
        "--processes",
        type=_positive,
        default=1,
        metavar="N",
        help="N worker processes in the one consumer group, supervised (metrics on port, port+1, ...); "
        "one per core of a many-core machine (streams/processes.py)",
    )
    p.add_argument(
        "--prepare",
        action="store_true",
        help="load the model on its runtime, export the encoders' graphs into the cache and exit (no Kafka)",
    )
    p.add_argument("--metrics-port", type=int, default=None, help=argparse.SUPPRESS)  # a supervised child's
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)  # its supervisor's
    p.add_argument("--instance-id", default=None, help=argparse.SUPPRESS)  # a supervised child's, kept on restarts
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("ui", help="serve the live supervisor page (calls, emotion timelines, alerts)")
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (the page shows what callers feel: keep it private)"
    )
    p.add_argument("--port", type=int, default=8080, help="HTTP port of the page")
    p.add_argument("--since", type=_not_negative, default=60.0, help="show calls from this many minutes ago on")
    p.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated host names the page answers for (its address as the browser names it: "
        "'localhost,127.0.0.1' behind a port published on loopback, your proxy's name behind it; '*': any); "
        "default: the loopback names where --host is a loopback address, else any. Another name gets 421: a web "
        "page cannot read this one by pointing its own domain at it (DNS rebinding)",
    )
    p.set_defaults(func=cmd_ui)
    from chaos.cli import add_chaos_args, run_chaos

    p = sub.add_parser("chaos", help="fault scenarios against real processes, one table (make chaos)")
    add_chaos_args(p)
    p.set_defaults(func=run_chaos)
    from engines.evaluate import add_evaluate_args, run_evaluate
    from engines.train import add_train_args, run_train

    p = sub.add_parser(
        "train",
        help="train an engine and write a model artifact",
        description="Train an engine and write a model artifact. `--recipe NAME` (recipes/NAME.toml) reproduces a "
        "shipped model or a README results row; flags given win over the recipe, --set over its [model] table.",
    )
    add_train_args(p)
    p.set_defaults(func=run_train)
    p = sub.add_parser(
        "evaluate",
        help="evaluate a model artifact on a dataset split",
        description="Evaluate a model artifact (default, revised, or a directory) on a dataset split: weighted F1, "
        "accuracy, per-class F1 and the mean modality weights; --json for the whole report.",
    )
    add_evaluate_args(p)
    p.set_defaults(func=run_evaluate)
    from engines.crossval import add_cv_args, run_cv

    p = sub.add_parser("cv", help="train a recipe on every RAVDESS actor fold; figures as mean and spread")
    add_cv_args(p)
    p.set_defaults(func=run_cv)
