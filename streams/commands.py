"""Subcommands beyond ``schemas``: each imports its heavy module only when it runs."""

from __future__ import annotations

from typing import Any


def cmd_worker(ns: Any) -> int:
    from streams.app import run_worker
    from streams.settings import load_settings

    return run_worker(load_settings(ns.config))


def cmd_demo(ns: Any) -> int:
    from streams.demo import run_demo

    return run_demo(ns)


def register(sub: Any) -> None:
    from streams.demo import add_demo_args

    p = sub.add_parser("worker", help="run a stream worker (settings from --config and EMOSTREAM_*)")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("demo", help="local Kafka + Redis + worker + sample calls, events printed live")
    add_demo_args(p)
    p.set_defaults(func=cmd_demo)
    try:
        from engines.evaluate import add_evaluate_args, run_evaluate
        from engines.train import add_train_args, run_train
    except ImportError:  # engines not built yet in this checkout
        return
    p = sub.add_parser("train", help="train an engine and write a model artifact")
    add_train_args(p)
    p.set_defaults(func=run_train)
    p = sub.add_parser("evaluate", help="evaluate a model artifact on a dataset split")
    add_evaluate_args(p)
    p.set_defaults(func=run_evaluate)
