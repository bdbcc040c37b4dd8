"""How many joined utterances the next engine batch takes: batches grow under load, within a budget.

A batch goes to the engine when ``engine.max_wait_s`` has passed since its oldest utterance was
ready, or when the queue holds as many as the batch may take (:class:`BatchSizer`). Under light
traffic the deadline flushes small batches; under load the queue fills while a batch computes
and the next one takes more, which is where the throughput comes from (MiniLM on 2 cores: 2.8 ms
a text at 32 a batch, 2.2 at 128). How many more is bounded twice: by ``engine.max_batch`` and by
``engine.batch_budget_s``, the compute time one batch may take, so that a voice that costs ten
times a text does not make batches that hold every event back for seconds. The sizer keeps a
moving average of the compute seconds per utterance (encoders and engine, as the worker measures
its compute stage) and allows ``budget / that`` utterances.
"""

from __future__ import annotations

import math

#: the weight of the newest batch in the average of seconds per utterance
SMOOTHING = 0.2
#: what the first batches may take, before any has been measured
FIRST_BATCHES = 32


class BatchSizer:
    """``limit()``: the most utterances the next batch takes; ``observe(n, seconds)`` after each."""

    def __init__(self, max_batch: int, budget_s: float) -> None:
        if max_batch < 1 or budget_s <= 0:
            raise ValueError(f"max_batch must be >= 1 and budget_s > 0, not {max_batch} and {budget_s}")
        self.max_batch = max_batch
        self.budget_s = budget_s
        self.per_utterance_s: float | None = None  # moving average, None until a batch is measured

    def limit(self) -> int:
        if self.per_utterance_s is None:
            return min(self.max_batch, FIRST_BATCHES)
        fits = math.floor(self.budget_s / max(self.per_utterance_s, 1e-9))
        return max(1, min(self.max_batch, fits))

    def observe(self, n: int, seconds: float) -> None:
        """A batch of ``n`` utterances computed in ``seconds`` (nothing learned from an empty one)."""
        if n <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        each = seconds / n
        prev = self.per_utterance_s
        self.per_utterance_s = each if prev is None else (1 - SMOOTHING) * prev + SMOOTHING * each
