"""How much of the joined queue the next engine batch takes: batches grow under load, within a budget.

A batch goes to the engine when ``engine.max_wait_s`` has passed since its oldest utterance was
ready, or when the queue holds a full batch. Under light traffic the deadline flushes small
batches; under load the queue fills while a batch computes and the next one takes more, which is
where the throughput comes from (MiniLM on 2 cores: 2.8 ms a text at 32 a batch, 2.2 at 128).

How much more is bounded by ``engine.max_batch`` utterances and by ``engine.batch_budget_s``, the
compute time one batch may take, so that batches never hold every event back for seconds. Work
is counted in *units*, not utterances, since a voice costs more than its words: an utterance is one
unit, plus one a second of audio that the worker encodes itself (:func:`units`; on 2 cores a text
costs about 2.5 ms and a second of speech about 3 ms). The sizer keeps a moving average of the
compute seconds per unit (encoders and engine, as the worker times its compute stage; utterances
that were replays and not computed are left out) and a batch takes as many utterances from the
head of the queue as fit in ``budget / that`` units (at least one). So a switch from texts to long
recordings does not send 250 of them at once: each minute of audio counts 60 times.

The same units bound the queue itself: the worker stops reading when 4 batches' worth are queued
(:meth:`BatchSizer.allowance`), so queued audio stays bounded in seconds, not only in count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from engines.features.codecs import SAMPLE_RATE  # waveforms in the queue are decoded to it

if TYPE_CHECKING:
    from streams.join import Utterance

#: the weight of the newest batch in the average of seconds per unit
SMOOTHING = 0.2
#: the units the first batches may take, before any has been measured
FIRST_UNITS = 32.0
#: units a second of audio that the worker decodes and encodes itself adds to its utterance
UNITS_PER_AUDIO_S = 1.0


def units(utt: Utterance) -> float:
    """The work units of one joined utterance: 1, plus 1 a second of waveform it carries."""
    samples = sum(len(p.value) for p in utt.parts.values() if p.kind == "wave")
    return 1.0 + UNITS_PER_AUDIO_S * samples / SAMPLE_RATE


class BatchSizer:
    """``take(queue)``: how many utterances the next batch takes; ``observe(units, seconds)`` after each."""

    def __init__(self, max_batch: int, budget_s: float) -> None:
        if max_batch < 1 or not (0 < budget_s < math.inf):
            raise ValueError(f"max_batch must be >= 1 and budget_s finite and > 0, not {max_batch} and {budget_s}")
        self.max_batch = max_batch
        self.budget_s = budget_s
        self.per_unit_s: float | None = None  # moving average, None until a batch is measured

    def allowance(self) -> float:
        """The units the next batch may take (it takes at least one utterance however many it has)."""
        if self.per_unit_s is None:
            return FIRST_UNITS
        return self.budget_s / max(self.per_unit_s, 1e-9)

    def take(self, queue: Sequence[Utterance]) -> int:
        """How many utterances from the head of ``queue`` the next batch takes (1 at least, if any)."""
        room, n = self.allowance(), 0
        for utt in queue[: self.max_batch]:
            room -= units(utt)
            if n and room < 0:
                break
            n += 1
        return n

    def full(self, queue: Sequence[Utterance], queued_units: float) -> bool:
        """Whether ``queue`` (holding ``queued_units``) already holds more than one batch takes."""
        return len(queue) >= self.max_batch or queued_units >= self.allowance()

    def observe(self, units: float, seconds: float) -> None:
        """A batch of ``units`` computed in ``seconds`` (nothing learned from one that computed nothing)."""
        if not (units > 0 and math.isfinite(units) and math.isfinite(seconds) and seconds >= 0):
            return
        each = seconds / units
        prev = self.per_unit_s
        self.per_unit_s = each if prev is None else (1 - SMOOTHING) * prev + SMOOTHING * each
