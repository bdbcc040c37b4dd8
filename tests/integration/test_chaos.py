"""The chaos scenarios at their short size, on the suite's broker and Redis: each must lose
nothing and never give one event_id two contents. (``make chaos`` runs every scenario at full
size on services of its own; the broker and Redis outages have their own tests in
test_outages.py, the rebalance in test_rebalance.py.) The cluster scenario starts a three-broker
KRaft cluster of its own beside the suite's Redis; the overload scenario fails if the worker's
memory grows by more than chaos.scenarios.MEMORY_SLACK under three times its capacity; the child
scenario if a supervised child started again after a kill -9 sets off a rebalance. Every
scenario fails when fewer than chaos.scenarios.MIN_WITH_AUDIO (95 %) of its utterances are
labelled with their audio (a backlog read text-first must not cost the audio). Half the fuzzed
messages are drawn by hypothesis."""

from __future__ import annotations

import pytest

from chaos.scenarios import SCENARIOS, SHORT
from chaos.verdict import table

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["kill9", "child", "fuzz", "cluster", "overload"])
def test_short_scenario_holds(services, tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    verdict = SCENARIOS[name](services, SHORT, tmp_path)
    print("\n" + table([verdict]))
    assert verdict.lost == 0 and verdict.conflicting == 0, (table([verdict]), verdict.examples)
    assert verdict.events >= verdict.utterances
    assert verdict.ok, (
        table([verdict]) + "\n" + verdict.details
    )  # the scenario's own checks: audio share, memory, load reached
