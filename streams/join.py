"""The hand-built join of one utterance's modality parts (Faust has no stream joins).

Parts are joined by (call id, utterance id) in whatever order they arrive. An utterance is
*ready* when every modality its call expects has arrived, or when ``wait_s`` has passed since its
first part; a call's ready utterances are released in ``seq`` order (an earlier utterance that is
still waiting holds back later ones of the same call, at most ``wait_s``). A call's end releases
everything it still has. Pure and synchronous: the caller passes the clock and opaque ``handle``s
(the Kafka events to ack once the utterance's event is out).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("text", "audio", "video")


@dataclass
class Utterance:
    """One utterance being joined, then handed to the engine."""

    call_id: str
    utterance_id: str
    seq: int
    speaker: str
    first_at: float
    parts: dict[str, Any] = field(default_factory=dict)  # modality -> decoded part payload
    last_at: float = 0.0
    ready_at: float | None = None
    timed_out: bool = False
    expected: tuple[str, ...] = ()
    handles: list[Any] = field(default_factory=list)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.parts)


@dataclass
class JoinResult:
    ready: list[Utterance] = field(default_factory=list)
    ack_now: list[Any] = field(default_factory=list)  # handles of parts that need no event (late duplicates)
    late_parts: int = 0
    duplicate_parts: int = 0
    ended_calls: list[str] = field(default_factory=list)  # calls whose context can be released

    def extend(self, other: JoinResult) -> None:
        self.ready += other.ready
        self.ack_now += other.ack_now
        self.late_parts += other.late_parts
        self.duplicate_parts += other.duplicate_parts
        self.ended_calls += other.ended_calls


@dataclass
class _Call:
    expected: tuple[str, ...]
    last_seen: float = 0.0
    ends_at: float | None = None  # 'ended' arrived: release everything at this time
    pending: dict[str, Utterance] = field(default_factory=dict)  # utterance id -> utterance
    done: OrderedDict[str, None] = field(default_factory=OrderedDict)  # released ids (bounded)


class Joiner:
    """Keeps partial utterances of many calls; see the module docstring."""

    def __init__(
        self, wait_s: float, default_modalities: tuple[str, ...], idle_s: float = 3600.0, max_done_per_call: int = 4096
    ) -> None:
        assert wait_s >= 0 and default_modalities, (wait_s, default_modalities)
        self.wait_s = wait_s
        self.idle_s = idle_s
        self.default = tuple(m for m in MODALITIES if m in default_modalities)
        self.max_done = max_done_per_call
        self._calls: dict[str, _Call] = {}

    # -- inputs ---------------------------------------------------------------------------------
    def call_started(self, call_id: str, modalities: list[str] | None, now: float) -> JoinResult:
        call = self._call(call_id)
        call.last_seen = now
        if modalities:
            call.expected = tuple(m for m in MODALITIES if m in modalities)
        return self._release(call_id, now)

    def call_ended(self, call_id: str, now: float) -> JoinResult:
        """The call's end arrived. Its parts travel on other topics and may still be behind it,
        so the call is closed ``wait_s`` later (by :meth:`expire`), not now."""
        call = self._call(call_id)
        call.last_seen = now
        call.ends_at = now + self.wait_s
        return self._release(call_id, now)

    def add(
        self,
        call_id: str,
        utterance_id: str,
        seq: int,
        speaker: str,
        modality: str,
        payload: Any,
        handle: Any,
        now: float,
    ) -> JoinResult:
        assert modality in MODALITIES, modality
        call = self._call(call_id)
        call.last_seen = now
        if utterance_id in call.done:
            return JoinResult(ack_now=[handle], late_parts=1)
        utt = call.pending.get(utterance_id)
        if utt is None:
            utt = call.pending[utterance_id] = Utterance(call_id, utterance_id, seq, speaker, first_at=now)
        utt.handles.append(handle)
        if modality in utt.parts:
            return JoinResult(duplicate_parts=1)
        utt.parts[modality] = payload
        utt.last_at = now
        if speaker != "unknown":
            utt.speaker = speaker
        return self._release(call_id, now)

    def expire(self, now: float) -> JoinResult:
        result = JoinResult()
        for call_id, call in list(self._calls.items()):
            if call.ends_at is not None and now >= call.ends_at:
                result.extend(self._close(call_id, now))
                continue
            result.extend(self._release(call_id, now))
            if not call.pending and now - call.last_seen > self.idle_s:
                del self._calls[call_id]  # an idle call that never sent 'ended'
        return result

    # -- queries --------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        times = [u.first_at + self.wait_s for c in self._calls.values() for u in c.pending.values()]
        times += [c.ends_at for c in self._calls.values() if c.ends_at is not None]
        return min(times) if times else None

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    @property
    def open_utterances(self) -> int:
        return sum(len(c.pending) for c in self._calls.values())

    def drain(self, now: float) -> JoinResult:
        """Release every pending utterance now (shutdown, partitions revoked)."""
        result = JoinResult()
        for call_id, call in list(self._calls.items()):
            for utt in sorted(call.pending.values(), key=lambda u: u.seq):
                utt.ready_at, utt.expected = now, call.expected
                utt.timed_out = set(utt.modalities) != set(call.expected)
                result.ready.append(utt)
                self._mark_done(call, utt.utterance_id)
            call.pending.clear()
            del self._calls[call_id]
        return result

    # -- internals ------------------------------------------------------------------------------
    def _close(self, call_id: str, now: float) -> JoinResult:
        call = self._calls.pop(call_id)
        result = JoinResult(ended_calls=[call_id])
        for utt in sorted(call.pending.values(), key=lambda u: u.seq):
            utt.ready_at, utt.expected = now, call.expected
            utt.timed_out = set(utt.modalities) != set(call.expected)
            result.ready.append(utt)
        return result

    def _call(self, call_id: str) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            call = self._calls[call_id] = _Call(expected=self.default)
        return call

    def _release(self, call_id: str, now: float) -> JoinResult:
        call = self._calls[call_id]
        result = JoinResult()
        for utt in sorted(call.pending.values(), key=lambda u: u.seq):
            complete = all(m in utt.parts for m in call.expected)
            expired = now - utt.first_at >= self.wait_s
            if not (complete or expired):
                break  # holds back later utterances of this call, at most wait_s
            utt.ready_at, utt.expected = now, call.expected
            utt.timed_out = not complete
            result.ready.append(utt)
            del call.pending[utt.utterance_id]
            self._mark_done(call, utt.utterance_id)
        return result

    def _mark_done(self, call: _Call, utterance_id: str) -> None:
        call.done[utterance_id] = None
        while len(call.done) > self.max_done:
            call.done.popitem(last=False)
