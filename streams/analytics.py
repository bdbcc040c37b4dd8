"""Call-level analytics: a stage of the worker after the emotion events of a batch are published.

For every call a batch touched, the stage keeps the call's turns in Redis (the latest revision of
each utterance, so a revised event replaces its provisional one instead of counting twice),
judges the escalation rules (:mod:`streams.rules`) on them, and returns what to publish:

- :class:`~streams.schemas.AlertEvent` on ``kafka.topics.alerts``: an alert is *raised* when a
  rule starts to hold, *updated* while its evidence changes, *cleared* when it stops holding
  (``reason: recovered``; after the rule's ``clear_after`` new turns without holding) or when the
  call ends (``reason: call ended``; ``call idle`` when the worker ended it for want of parts,
  ``join.idle_end_s``; ``call started again`` when a 'started' of its id ended it);
- :class:`~streams.schemas.CallReport` on ``kafka.topics.calls``: the call's running trajectory
  per speaker, and a final one, the call summary, when the call ends.

Everything lives under two deterministic Redis keys per call with the windows' TTL: the turns
(``{key_prefix}turns#{call}``, a hash) and the rest (``acall#``: the open alerts, how many each
rule raised, and a random token that changes with every store, as one JSON string), stored by one
Lua script for all of a batch's calls (atomic, as a transaction) only after the batch's messages
are published, and
every message has a deterministic ``event_id``: a worker that restarts, or retries a batch whose
publishing failed, finds the call's state as it was before the batch and publishes the same
messages again under the same ``event_id`` (consumers deduplicate on it). A call whose state
expired (no event for ``redis.ttl_s``) starts afresh.

Each worker keeps the states it stored last in memory with their token, and reads a call's state
back from Redis only when the token there differs (another worker stored the call since, or it
expired): a batch then costs one small read per call instead of decoding every turn of every
call it touched, which grew with the length of the calls (issue 12's profile: a third of the
worker's main thread at 30 turns a call). A batch takes a call's state out of that memory and
changes it in place; its commit puts it back, and a batch that fails before its commit leaves the
call to be read back from Redis as it was. A state keeps its turns indexed by seq, overall and
per speaker, so judging the rules and building the report cost the turns a batch brings and the
last few of each speaker, not every turn of the call.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from streams.context import run_script
from streams.rules import RuleBook, Turn
from streams.schemas import AlertEvent, CallReport, EmotionEvent, Evidence, SpeakerTrajectory

#: The labels a report's ``negative_share`` counts: the negative emotions of the label sets the
#: engines learn (MELD's, IEMOCAP's and EmoryNLP's). The label, not the sentiment score: a neutral
#: agent line scored -0.38 once made an agent "negative 100%" in the demo's summary.
NEGATIVE_EMOTIONS: frozenset[str] = frozenset(
    {"anger", "disgust", "fear", "sadness", "frustration", "angry", "sad", "frustrated", "mad", "scared"}
)
#: The labels a report's ``hostile_share`` counts: the negative emotions turned at someone (anger,
#: disgust, frustration, as the ``reply`` rule reads an agent's turn), not sadness or fear. An agent's
#: sympathy ("that sounds like an awful week") is read as sadness (its apology, "I'm so sorry", no longer
#: is with engine.acknowledgements: engines/features/acknowledge.py); on the hand-written
#: call-center lines of tests/fixtures, 1.6.0 labelled 55 % and 72 % of agents' empathy statements
#: with a negative emotion, as many as of agents' hostile replies (53 % and 67 %), but 8 % and 12 % of
#: them anger or disgust at :data:`HOSTILE_MIN_CONFIDENCE` or more, against 43 % and 47 % of the
#: hostile replies.
HOSTILE_EMOTIONS: frozenset[str] = frozenset({"anger", "disgust", "frustration", "angry", "frustrated", "mad"})
#: ... with at least this label probability: after an angry customer the model reads an agent's plain
#: "Let me fix that right now." as anger 0.47 (the customer's anger carried over by the context); a
#: newcomer's agent who said nothing hostile came out "hostile 67 %"
HOSTILE_MIN_CONFIDENCE = 0.5
#: an alert's ``reason`` when its call's end clears it, by what ended the call (CallReport.ended_by)
CLEARED_AT_END = {"ended": "call ended", "idle": "call idle", "started": "call started again"}


def hostile(t: Turn) -> bool:
    """Whether a turn counts in its speaker's ``hostile_share``."""
    return t.label in HOSTILE_EMOTIONS and t.confidence >= HOSTILE_MIN_CONFIDENCE


log = logging.getLogger("emostream.analytics")
#: a call with this many turns of two or more speakers and no agent among them is logged (once)
NO_AGENT_TURNS = 4


@dataclass
class Outgoing:
    """A message for an output topic: ``topic`` is 'alerts' or 'calls' (a TopicSettings field)."""

    topic: str
    key: bytes
    value: bytes
    event_id: str
    message: AlertEvent | CallReport


@dataclass
class _State:
    """One call's analytics state, as stored in Redis, with indexes kept up to date turn by turn so
    that a batch costs the turns it brings, not the length of the call (a long call has hundreds)."""

    turns: dict[str, Turn] = field(default_factory=dict)  # utterance id -> its latest revision
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule -> {alert_id, evidence}
    raised: dict[str, int] = field(default_factory=dict)  # rule -> alerts it raised in this call
    changed: dict[str, Turn] = field(default_factory=dict)  # turns to write
    dropped: list[str] = field(default_factory=list)  # turns to delete (past max_turns)
    legacy: bool = False  # read from the previous version's keys (alerts#, raised#, aver#): delete them
    order: list[tuple[int, str]] = field(default_factory=list)  # (seq, utterance id) of every turn, ascending
    speakers: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # the same, per speaker
    version: int = 0  # a digest of the turns and their revisions (sum of each one's, mod 2**64)

    @classmethod
    def of(cls, turns: dict[str, Turn], **kw: Any) -> _State:
        """A state read back from Redis: its indexes built once."""
        state = cls(**kw)
        for t in sorted(turns.values(), key=lambda t: (t.seq, t.utterance_id)):
            state.put(t)
        state.changed = {}
        return state

    def put(self, t: Turn) -> None:
        """Add a turn, or replace the revision stored under its utterance id. A turn whose every part
        was ignored (``used`` False) is stored (its call then has a summary when it ends) but not
        indexed: no rule, trajectory, count or version sees it."""
        old = self.turns.get(t.utterance_id)
        if old is not None:
            self._unindex(old)
        self.turns[t.utterance_id] = self.changed[t.utterance_id] = t
        if not t.used:
            return
        key = (t.seq, t.utterance_id)
        if not self.order or self.order[-1] < key:  # the common case: the call's next turn
            self.order.append(key)
        else:
            bisect.insort(self.order, key)
        mine = self.speakers.setdefault(t.speaker, [])
        if not mine or mine[-1] < key:
            mine.append(key)
        else:
            bisect.insort(mine, key)
        self.version = (self.version + _digest(t)) % 2**64

    def drop_oldest(self, keep: int) -> None:
        """Forget the oldest turns past ``keep`` (deleted from Redis at the next store)."""
        while len(self.order) > keep:
            t = self.turns.pop(self.order[0][1])
            self._unindex(t)
            self.changed.pop(t.utterance_id, None)
            self.dropped.append(t.utterance_id)
        unused = len(self.turns) - len(self.order)  # turns with nothing used: bounded the same way
        if unused > keep:
            for _, uid in sorted((t.seq, t.utterance_id) for t in self.turns.values() if not t.used)[: unused - keep]:
                del self.turns[uid]
                self.changed.pop(uid, None)
                self.dropped.append(uid)

    def _unindex(self, t: Turn) -> None:
        if not t.used:
            return
        key = (t.seq, t.utterance_id)
        del self.order[bisect.bisect_left(self.order, key)]
        mine = self.speakers[t.speaker]
        del mine[bisect.bisect_left(mine, key)]
        if not mine:
            del self.speakers[t.speaker]
        self.version = (self.version - _digest(t)) % 2**64

    def ordered(self) -> _Turns:
        """The turns in seq order (a view: the rules read it from the end)."""
        return _Turns(self.order, self.turns)

    def by_speaker(self) -> list[tuple[str, _Turns]]:
        """Each speaker's turns in seq order, speakers in the order of their first turn."""
        ranked = sorted(self.speakers.items(), key=lambda kv: kv[1][0])
        return [(speaker, _Turns(keys, self.turns)) for speaker, keys in ranked]


class _Turns(Sequence[Turn]):
    """Turns in seq order, read through an index of (seq, utterance id) without copying it."""

    def __init__(self, keys: list[tuple[int, str]], turns: dict[str, Turn]) -> None:
        self.keys, self.turns = keys, turns

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> Turn: ...
    @overload
    def __getitem__(self, i: slice) -> list[Turn]: ...
    def __getitem__(self, i: int | slice) -> Turn | list[Turn]:
        if isinstance(i, slice):
            return [self.turns[k[1]] for k in self.keys[i]]
        return self.turns[self.keys[i][1]]

    def __iter__(self) -> Iterator[Turn]:
        return (self.turns[k[1]] for k in self.keys)

    def __reversed__(self) -> Iterator[Turn]:
        return (self.turns[k[1]] for k in reversed(self.keys))


def _digest(t: Turn) -> int:
    """A turn's part of its call's version: 64 bits of a hash of its id and revision."""
    return int.from_bytes(hashlib.blake2b(f"{t.utterance_id}@{t.revision}".encode(), digest_size=8).digest(), "big")


@dataclass
class Update:
    """What a batch caused: publish ``out``, then :meth:`CallAnalytics.commit` the state, so that
    a failed publish (the batch is retried) finds the state as it was and publishes it all again."""

    out: list[Outgoing] = field(default_factory=list)
    states: dict[str, _State] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)  # call -> its input partition, where known


class CallAnalytics:
    """``client`` is a ``redis.asyncio.Redis`` (the context store's)."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        ttl_s: float,
        book: RuleBook,
        recent_turns: int = 5,
        max_turns: int = 500,
        clock: Callable[[], float] = time.time,
        max_cached_turns: int = 100_000,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_ms = int(ttl_s * 1000)
        self.book = book
        self.recent_turns = recent_turns
        self.max_turns = max_turns
        self.clock = clock
        # call -> (token, state as stored, monotonic time stored), least recently stored first; bounded
        # by the turns it holds (about 1 KB each), and an entry older than the TTL is never used
        self.cache: OrderedDict[str, tuple[str, _State, float]] = OrderedDict()
        self.cached_turns = 0
        self.max_cached_turns = max_cached_turns
        self.reads = 0  # states read back from Redis (cache misses), for tests
        # the call as its alerts' and reports' ids name it: the worker's Processor.instance, so a
        # call id used again after its previous call closed gets other ids (streams.schemas.call_instance)
        self.instance: Callable[[str], str] = lambda call_id: call_id
        self._no_agent: OrderedDict[str, None] = OrderedDict()  # calls logged as having no agent (bounded)
        self.no_agent_logged = 0
        #: call -> (the severities of its open alerts, monotonic time stored, its input partition or
        #: None), least recently stored first: the calls this worker stored lately (within the TTL)
        #: that have open alerts
        self._open: OrderedDict[str, tuple[tuple[str, ...], float, int | None]] = OrderedDict()
        self._open_counts = {severity: 0 for severity in ("info", "warning", "critical")}  # summed over _open

    def _keys(self, call_id: str) -> tuple[str, str]:
        """The call's turns (a hash) and its alerts, rule counts and token (a JSON string)."""
        return f"{self.prefix}turns#{call_id}", f"{self.prefix}acall#{call_id}"

    async def observe(self, events: Sequence[EmotionEvent], partitions: Mapping[str, int] | None = None) -> Update:
        """Take a batch's published events: the alerts and reports they cause (nothing is stored
        until :meth:`commit`). ``partitions``: each call's input partition, where known (the
        open-alerts gauge keeps a call through a rebalance that leaves it here: :meth:`keep_open`)."""
        by_call: dict[str, list[EmotionEvent]] = defaultdict(list)
        for e in events:
            by_call[e.call_id].append(e)
        update = Update(partitions={c: p for c, p in (partitions or {}).items() if c in by_call})
        if not by_call:
            return update
        update.states = await self._load(list(by_call))
        for call_id, new in by_call.items():
            update.out += self._apply(call_id, update.states[call_id], new)
        return update

    async def commit(self, update: Update) -> None:
        """Store the state an :class:`Update` led to (after its messages are published)."""
        if update.states:
            await self._store(update.states, update.partitions)

    async def end(self, call_id: str, final_events: Sequence[EmotionEvent] = (), ended_by: str = "ended") -> Update:
        """The call ended (its final revisions are ``final_events``; ``ended_by``: see
        :attr:`CallReport.ended_by`): its open alerts cleared and its summary; publish them, then
        :meth:`forget` the call (nothing to commit). A call with no state (already forgotten: an
        'ended' replayed after its summary went out) gives nothing."""
        state = (await self._load([call_id]))[call_id]
        if not state.turns:  # (before the final revisions: a close done again after a crash would
            return Update()  # make a summary of them alone)
        # the final revisions' alerts, not their running report: the summary below comes at once (a newcomer
        # read a report still listing the alerts just cleared before it)
        revised = self._apply(call_id, state, [e for e in final_events if e.call_id == call_id])
        out = [o for o in revised if not isinstance(o.message, CallReport)]
        messages, _ = self._alerts(call_id, state, final=True, reason=CLEARED_AT_END.get(ended_by, "call ended"))
        out += [self._outgoing("alerts", m) for m in messages]
        report = self._report(call_id, state, {}, final=True).model_copy(update={"ended_by": ended_by})
        out.append(self._outgoing("calls", report))
        return Update(out)

    def forget_cached(self) -> None:
        """Drop every state held in memory (the worker's partitions changed: a call may have been
        stored meanwhile by a worker of an older version, which writes no token)."""
        self.cache.clear()
        self.cached_turns = 0

    def keep_open(self, partitions: set[int]) -> None:
        """The worker's input partitions are now ``partitions`` (a rebalance revokes them all, then
        assigns): the open alerts of calls on the others, or on no known partition, are no longer
        counted here; their next batch counts them at their new owner. The calls that stay keep
        theirs (before, every rebalance emptied the gauge until each call's next batch, so a call
        on hold went uncounted)."""
        for call_id, (_, _, partition) in list(self._open.items()):
            if partition not in partitions:
                self._set_open(call_id, ())

    def open_alerts(self) -> dict[str, int]:
        """Open alerts by severity, of the calls on this worker's partitions that it stored within
        the TTL (the gauge ``emostream_open_alerts``): a call that ended, whose state expired, or
        that another worker took is not counted here."""
        horizon = time.monotonic() - self.ttl_ms / 1000
        while self._open and next(iter(self._open.values()))[1] < horizon:
            self._set_open(next(iter(self._open)), ())  # its state has expired in Redis: its alerts can no longer clear
        return dict(self._open_counts)

    def _set_open(self, call_id: str, severities: tuple[str, ...], partition: int | None = None) -> None:
        """The call's open alerts are now of ``severities`` (none: it leaves ``_open``), stored now;
        ``partition``: its input partition (None: as known before, if at all)."""
        old = self._open.pop(call_id, None)
        for severity in old[0] if old else ():
            self._open_counts[severity] -= 1
        if severities:
            if partition is None and old is not None:
                partition = old[2]
            self._open[call_id] = (severities, time.monotonic(), partition)
            for severity in severities:
                self._open_counts[severity] = self._open_counts.get(severity, 0) + 1

    async def forget(self, call_id: str) -> None:
        """Delete the call's state (after its summary is published)."""
        self._uncache(call_id)
        self._set_open(call_id, ())
        await self.client.delete(*self._keys(call_id))

    # -- judging ---------------------------------------------------------------------------------

    def _apply(self, call_id: str, state: _State, new: Sequence[EmotionEvent]) -> list[Outgoing]:
        """The rules judged after each new turn, in the batch's order: an escalation and its
        recovery inside one batch (a burst of a call's turns, or a busy worker's large batches) still
        raise the alert and then clear it, as they would have turn by turn."""
        messages: list[AlertEvent] = []
        for e in new:
            old = state.turns.get(e.utterance_id)
            if old is None or e.revision >= old.revision:
                turn = self._turn(e)
                state.put(turn)
                state.drop_oldest(self.max_turns)
                # a new utterance (not a revision: a blank one made good by its revision, or one read
                # late with an earlier seq, counts as it arrives) of this role, for clear_after
                fresh = turn if old is None and turn.used else None
                revised = turn if old is not None else None
                now, state.alerts = self._alerts(call_id, state, final=False, fresh=fresh, revised=revised)
                messages += now
        self._say_if_no_agent(call_id, state)
        out = [self._outgoing("alerts", m) for m in messages]
        if messages or any(t.used for t in state.changed.values()):  # a blank turn changes no report
            out.append(self._outgoing("calls", self._report(call_id, state, state.alerts, False)))
        return out

    def _say_if_no_agent(self, call_id: str, state: _State) -> None:
        """Log once a call (the first ten such calls, then every 1000th) where two or more speakers
        spoke :data:`NO_AGENT_TURNS` turns and none is an agent by the rules' ``[roles]``: the agent
        rules never hold there, and the customer rules read each speaker as a customer (a newcomer's
        diarized spk_0 and spk_1)."""
        nameless = set(state.speakers) == {"unknown"}  # its parts name no speaker: one "customer" says it all
        if len(state.order) < NO_AGENT_TURNS or (len(state.speakers) < 2 and not nameless) or call_id in self._no_agent:
            return
        roles = {speaker: self.book.role_of(speaker) for speaker in state.speakers}  # a few, not every turn
        if "agent" in roles.values():
            return
        self._no_agent[call_id] = None
        if len(self._no_agent) > 10_000:
            self._no_agent.popitem(last=False)
        self.no_agent_logged += 1
        if self.no_agent_logged > 10 and self.no_agent_logged % 1000:
            return
        if nameless:
            log.warning("call %s: its parts name no speaker ('speaker' absent: 'unknown'), so every turn, the "
                        "agent's too, is read as one %s's and its agent rules never hold: send each part's "
                        "speaker as your platform names them [%d such calls]",
                        call_id, roles["unknown"], self.no_agent_logged)  # fmt: skip
        else:
            names = ", ".join(sorted(roles)[:5])
            log.warning("call %s: none of its speakers (%s) is an agent by the rules' [roles] globs, so its agent "
                        "rules never hold and each speaker is read as a %s; name agents to match them (%s) or set "
                        "your own [roles] (analytics.rules) [%d such calls]",
                        call_id, names, "/".join(sorted(set(roles.values()))),
                        ", ".join(self.book.roles.get("agent", [])) or "none", self.no_agent_logged)  # fmt: skip

    def _alerts(
        self,
        call_id: str,
        state: _State,
        final: bool,
        fresh: Turn | None = None,
        reason: str = "call ended",
        revised: Turn | None = None,
    ) -> tuple[list[AlertEvent], dict[str, dict[str, Any]]]:
        """``fresh``: the new turn just judged (None: a revision, or the call's end); an open alert
        whose rule no longer holds clears after its ``clear_after`` such turns that count for it
        (``final``: every open alert clears, for the call's end, with ``reason``); with a
        ``clear_after`` of 1, a ``revised`` turn that counts for it clears it too (a revision of
        another customer's turn says nothing of this one's)."""
        ordered = state.ordered()
        holding = {} if final else self.book.judge(ordered)
        now = self.clock()
        messages: list[AlertEvent] = []
        still: dict[str, dict[str, Any]] = {}
        for name, evidence in holding.items():
            # the evidence changes with its turns or their labels (a revision that only moves a
            # probability a little is no news to a supervisor)
            ids = [f"{t.utterance_id}@{t.label}" for t in evidence]
            was = state.alerts.get(name)
            if was is None:
                state.raised[name] = n = state.raised.get(name, 0) + 1
                alert_id = f"{self.instance(call_id)}:{name}:{n}"  # the rule's n-th alert in this call
                messages.append(self._alert(alert_id, call_id, name, "raised", evidence, ids, now))
            else:
                alert_id = was["alert_id"]
                if ids != was["evidence"]:
                    messages.append(self._alert(alert_id, call_id, name, "updated", evidence, ids, now))
            still[name] = {"alert_id": alert_id, "evidence": ids, "speaker": evidence[-1].speaker}
        for name, was in state.alerts.items():
            if name in holding:
                continue
            rule = self.book.by_name(name)
            speaker = was.get("speaker")
            # (the turn that came, not the speaker's latest by seq: a late one with an earlier seq counts as it comes;
            # a rising rule's turn still at its height is no step toward clearing)
            counted = rule is not None and fresh is not None and rule.counts(fresh, speaker)
            counted = counted and rule is not None and fresh is not None and not rule.sustained_by(fresh)
            misses = int(was.get("misses", 0)) + (1 if counted else 0)
            if final or rule is None:  # the call's end; a rule no longer in the rules file: clears now
                wait_more = False
            elif rule.clear_after == 1:  # a turn, or a revision of one, that counts for it (not another customer's)
                # (a revision does not clear a rising rule's alert while its speaker's latest turn is at its height)
                by_revision = (
                    revised is not None and rule.counts(revised, speaker) and not rule.sustains(ordered, speaker)
                )
                wait_more = not (counted or by_revision)
            else:
                wait_more = misses < rule.clear_after
            if wait_more:  # not yet: the alert stays open, as it was
                still[name] = {**was, "misses": misses}
                continue
            why = reason if final else "recovered"
            messages.append(self._alert(was["alert_id"], call_id, name, "cleared", [], was["evidence"], now, why))
        return messages, still

    def _severity(self, name: str) -> str:
        rule = self.book.by_name(name)
        return rule.severity if rule else "warning"

    def _alert(
        self,
        alert_id: str,
        call_id: str,
        name: str,
        state: str,
        evidence: list[Turn],
        ids: list[str],
        now: float,
        reason: str | None = None,
    ) -> AlertEvent:
        rule = self.book.by_name(name)
        return AlertEvent(
            event_id=f"{alert_id}:{state}:{(ids or ['-'])[-1] if state == 'cleared' else ','.join(ids)}",
            alert_id=alert_id,
            call_id=call_id,
            rule=name,
            severity=self._severity(name),
            message=rule.describe() if rule else name,
            state=state,  # type: ignore[arg-type]
            reason=reason,
            evidence=[
                Evidence(
                    utterance_id=t.utterance_id,
                    seq=t.seq,
                    speaker=t.speaker,
                    role=t.role,
                    label=t.label,
                    sentiment=t.sentiment,
                )
                for t in evidence
            ],  # fmt: skip
            measured=rule.measured(evidence) if rule is not None and evidence else None,
            produced_at=now,
        )

    def _report(self, call_id: str, state: _State, alerts: dict[str, dict[str, Any]], final: bool) -> CallReport:
        total = len(state.order)
        speakers = []
        for speaker, mine in state.by_speaker():
            recent = mine[-self.recent_turns :]
            half = min(self.recent_turns, len(mine) // 2)  # the trend: the latest `half` turns against those before
            latest, before = mine[len(mine) - half :], mine[len(mine) - 2 * half : len(mine) - half]
            sums: dict[str, float] = {}  # each label's probabilities over the recent turns, in turn order
            for t in recent:  # (a turn without a label adds nothing: the same float as adding 0.0)
                for k, p in t.probabilities.items():
                    sums[k] = sums.get(k, 0.0) + p
            sentiment = _mean([t.sentiment for t in recent])
            speakers.append(
                SpeakerTrajectory(
                    speaker=speaker,
                    role=mine[-1].role,
                    turns=len(mine),
                    talk_share=round(len(mine) / total, 4),
                    recent={k: round(sums[k] / len(recent), 4) for k in sorted(sums)},
                    negative_share=round(_mean([float(t.label in NEGATIVE_EMOTIONS) for t in recent]), 4),
                    hostile_share=round(_mean([float(hostile(t)) for t in recent]), 4),
                    sentiment=round(sentiment, 4),
                    sentiment_trend=round(
                        _mean([t.sentiment for t in latest]) - _mean([t.sentiment for t in before]), 4
                    )
                    if half
                    else 0.0,
                )
            )
        version = f"{state.version:016x}"[:12]  # the turns and revisions it covers
        return CallReport(
            event_id=f"{self.instance(call_id)}:report:" + ("final" if final else f"{total}:{version}"),
            call_id=call_id,
            final=final,
            turns=total,
            unread=len(state.turns) - total,
            speakers=speakers,
            open_alerts=sorted(a["alert_id"] for a in alerts.values()),
            alerts_raised=sorted(state.raised),
            produced_at=self.clock(),
        )

    def _turn(self, e: EmotionEvent) -> Turn:
        return Turn(
            utterance_id=e.utterance_id,
            seq=e.seq,
            speaker=e.speaker,
            role=self.book.role_of(e.speaker),
            label=e.label,
            probabilities=dict(e.probabilities),
            sentiment=e.sentiment,
            sentiment_label=e.sentiment_label,
            revision=e.revision,
            confidence=e.confidence,
            used=says_something(e),
        )

    @staticmethod
    def _outgoing(topic: str, message: AlertEvent | CallReport) -> Outgoing:
        return Outgoing(topic, message.call_id.encode(), message.to_bytes(), message.event_id, message)

    # -- Redis -------------------------------------------------------------------------------------

    async def _load(self, call_ids: list[str]) -> dict[str, _State]:
        raws = await self.client.mget([self._keys(c)[1] for c in call_ids])
        metas = [_meta(c, raw) for c, raw in zip(call_ids, raws, strict=True)]
        states = {}
        for call_id, meta in zip(call_ids, metas, strict=True):
            cached = self._uncache(call_id)  # the batch owns it now; its commit puts it back
            fresh = cached is not None and time.monotonic() - cached[2] < self.ttl_ms / 1000
            if cached is not None and fresh and cached[0] == meta.get("token"):
                states[call_id] = cached[1]
        missing = [(c, m) for c, m in zip(call_ids, metas, strict=True) if c not in states]
        if not missing:
            return states
        self.reads += len(missing)
        async with self.client.pipeline(transaction=False) as pipe:
            for call_id, meta in missing:
                pipe.hgetall(self._keys(call_id)[0])
                if not meta:  # none stored, or by the version before acall#: its alerts and rule counts
                    pipe.hgetall(f"{self.prefix}alerts#{call_id}")
                    pipe.hgetall(f"{self.prefix}raised#{call_id}")
            replies = iter(await pipe.execute())
        for call_id, meta in missing:
            turns = next(replies)
            legacy = False
            try:
                if not meta:
                    alerts, raised = next(replies), next(replies)
                    legacy = bool(alerts or raised)
                    meta = {
                        "alerts": {_s(k): json.loads(v) for k, v in alerts.items()},
                        "raised": {_s(k): int(v) for k, v in raised.items()},
                    }
                states[call_id] = _State.of(
                    {_s(k): turn_from_json(v) for k, v in turns.items()},
                    alerts={str(k): dict(v) for k, v in meta.get("alerts", {}).items()},
                    raised={str(k): int(v) for k, v in meta.get("raised", {}).items()},
                    legacy=legacy,
                )
            except (ValueError, TypeError, AttributeError) as exc:  # another version's format: start afresh
                log.warning("call %s: analytics state unreadable (%s); starting it afresh", call_id, exc)
                states[call_id] = _State(dropped=[_s(k) for k in turns])
        return states

    async def _store(self, states: dict[str, _State], partitions: Mapping[str, int] | None = None) -> None:
        tokens = {c: os.urandom(8).hex() for c in states}
        keys: list[str] = []
        args: list[Any] = [self.ttl_ms]
        for call_id, state in states.items():
            keys += self._keys(call_id)
            meta = {"token": tokens[call_id], "alerts": state.alerts, "raised": state.raised}
            args += [json.dumps(meta), len(state.dropped), *state.dropped, len(state.changed)]
            for k, t in state.changed.items():  # Turn is flat: vars(), not dataclasses.asdict (a deep copy)
                args += [k, json.dumps(vars(t))]
        await run_script(self.client, _STORE, keys, args)  # atomic: a call's turns and alerts change at once
        legacy = [f"{self.prefix}{k}#{c}" for c, s in states.items() if s.legacy for k in ("alerts", "raised", "aver")]
        if legacy:  # the previous version's keys, read into acall# (left over, they would expire with the TTL)
            await self.client.delete(*legacy)
        for call_id, state in states.items():  # what Redis now holds, under the token just written
            state.changed, state.dropped, state.legacy = {}, [], False
            self._uncache(call_id)
            self.cache[call_id] = (tokens[call_id], state, time.monotonic())
            self.cached_turns += len(state.turns)
            self._set_open(
                call_id, tuple(self._severity(rule) for rule in state.alerts), (partitions or {}).get(call_id)
            )
        while self.cached_turns > self.max_cached_turns and self.cache:
            self._uncache(next(iter(self.cache)))

    def _uncache(self, call_id: str) -> tuple[str, _State, float] | None:
        entry = self.cache.pop(call_id, None)
        if entry is not None:
            self.cached_turns -= len(entry[1].turns)
        return entry


_STORE = """
-- A batch's call states, as one command (atomic, as a script is).
-- KEYS: two per call: its turns hash, its state string
-- ARGV: TTL ms, then per call: the state's JSON, how many turns to delete and their ids, how many
-- turns to write and their (utterance id, JSON) pairs
local ttl, at = ARGV[1], 2
local function chunked(cmd, key, first, last)  -- unpack() of thousands of values overflows Lua's stack
  for i = first, last, 1000 do redis.call(cmd, key, unpack(ARGV, i, math.min(i + 999, last))) end
end
for c = 0, #KEYS / 2 - 1 do
  local turns, meta = KEYS[2 * c + 1], KEYS[2 * c + 2]
  redis.call('SET', meta, ARGV[at], 'PX', ttl)
  local dropped = tonumber(ARGV[at + 1])
  chunked('HDEL', turns, at + 2, at + 1 + dropped)
  at = at + 2 + dropped
  local changed = tonumber(ARGV[at])
  chunked('HSET', turns, at + 1, at + 2 * changed)
  at = at + 1 + 2 * changed
  redis.call('PEXPIRE', turns, ttl)
end
return #KEYS / 2
"""


_TURN_FIELDS = frozenset(f.name for f in dataclasses.fields(Turn))


def turn_from_json(raw: bytes | str) -> Turn:
    """A stored turn; fields a newer version added are left out, so that a worker rolled back (or
    not yet upgraded) reads the turns a newer one stored instead of starting the call afresh."""
    return Turn(**{k: v for k, v in json.loads(raw).items() if k in _TURN_FIELDS})


def says_something(e: EmotionEvent) -> bool:
    """Whether any part of the utterance was used: one whose every part was ignored (an empty
    transcript, audio without speech) is labelled from the model's prior alone, which says nothing
    about its speaker, so it is no turn of the call's trajectory and judges no rule."""
    return any(m not in e.ignored for m in e.modalities_present)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _meta(call_id: str, raw: bytes | str | None) -> dict[str, Any]:
    """A call's stored alerts, rule counts and token ({} when there is none or it is unreadable)."""
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
        if isinstance(meta, dict):
            return meta
    except ValueError:
        pass
    log.warning("call %s: stored alerts unreadable; the call's alerts start afresh", call_id)
    return {}


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
