"""``emostream chaos``: run fault scenarios against real processes and print one table."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def add_chaos_args(p: argparse.ArgumentParser) -> None:
    from chaos.scenarios import SCENARIOS

    p.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable; default: all)"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="the full sizes (50 calls x 100 utterances, 10 faults, 100,000 fuzzed messages)",
    )
    p.add_argument("--workdir", help="where services, logs and data go (default: a new temporary folder)")


def run_chaos(ns: argparse.Namespace) -> int:
    from chaos.scenarios import FULL, SCENARIOS, SHORT, run_scenarios
    from chaos.verdict import table

    names = ns.scenario or list(SCENARIOS)
    size = FULL if ns.full else SHORT
    workdir = Path(ns.workdir) if ns.workdir else Path(tempfile.mkdtemp(prefix="emostream-chaos-"))
    print(f"chaos: {', '.join(names)} at {'full' if ns.full else 'short'} size "
          f"({size.calls} calls x {size.per_call} utterances); logs in {workdir}", flush=True)  # fmt: skip
    started = time.monotonic()
    verdicts = run_scenarios(names, size, workdir)
    print(table(verdicts))
    for v in verdicts:
        for example in v.examples:
            print(f"chaos: {v.scenario}: conflicting {example}")
    print(f"chaos: {time.monotonic() - started:.0f} s; {'all held' if all(v.ok for v in verdicts) else 'FAILED'}")
    return 0 if all(v.ok for v in verdicts) else 1
