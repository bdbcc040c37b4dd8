"""The hand-built join of one utterance's modality parts (Faust has no stream joins).

Parts are joined by (call id, utterance id) in whatever order they arrive. An utterance is
*ready* when every modality its call expects has arrived, or when ``wait_s`` has passed since its
first part; a call's ready utterances are released in ``seq`` order (an earlier utterance that is
still waiting holds back later ones of the same call). A call's end releases everything it still
has.

When the worker is behind, the wall clock is not the parts' clock: after an outage or under overload the worker
reads a backlog, and it reads a topic of small messages (text) far ahead of one of large messages
(audio): a part that was sent on time is read late. So with a ``behind(modality, partition, t)``
predicate (the worker's: has it read that modality's partition up to record time ``t``, or to its
end?) an utterance past ``wait_s`` keeps waiting while a missing part's topic has not yet been
read up to the utterance's record time + ``wait_s`` and still has messages to read (the predicate
decides for how long: the worker's gives up on a partition that stops being read further), and
never longer than ``max_hold_s`` after its first part, if given (a backstop). An
utterance past its wait takes only parts sent in time: one whose record time is more than
``wait_s`` after the utterance's first part is late (acked, counted), as it would have been had
nothing held the utterance (the caller marks its topic read, which ends the hold).
Without record times or the predicate, the wall clock alone decides.

Pure and synchronous: the caller passes the clock and opaque ``handle``s
(the Kafka events to ack once the utterance's event is out).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engines.interface import MODALITIES  # the one list of modalities, in the engines' order

_BITS = (1 << 30) - 1  # a part's digest
RECHECK_S = 0.25  # how often a held utterance or call end is looked at again


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
    partition: int = -1  # the input partition of its call (all its parts share it)
    first_ts: float | None = None  # the record time (producer clock, s) of its first part
    held: bool = False  # waited past wait_s for a part of a topic read behind
    recheck_at: float | None = None  # while held: when the heap looks at it again
    ignored: dict[str, str] = field(default_factory=dict)  # parts that arrived but were not used -> why
    suspect: dict[str, str] = field(default_factory=dict)  # parts used though they look mis-declared -> why
    said: dict[str, tuple[int, str]] = field(default_factory=dict)  # modality -> the (seq, speaker) its part gave
    #: of a call that had closed (its summary out), reopened by a late part: labelled, but no turn of the
    #: call's analytics, which ended with the summary
    after_close: bool = False
    #: expected modalities it did not wait for: its call has never sent them (see Joiner's learn_after)
    not_waited: tuple[str, ...] = ()
    #: a replay's: whether its first run left its audio unencoded, the worker behind (the replay does the
    #: same, so its event repeats the first); None: judged by its age (engine.shed_audio_after_s)
    shed: bool | None = None
    #: the wall time (the worker's clock) of the latest end offset the broker gave for its first part's
    #: input partition that the worker had read up to before that part: the part became readable after
    #: it, so the utterance has waited at most ``now - fresh_at`` for this worker whatever its producer's
    #: clock says (a producer clock running behind does not make a caught-up worker look behind:
    #: engine.shed_audio_after_s); None: not known (the partition not read to its end since the worker
    #: got it)
    fresh_at: float | None = None

    def settle(self, modality: str, seq: int, speaker: str) -> list[str]:
        """Take ``modality``'s usable part's ``seq`` and ``speaker``; where the utterance's usable
        parts disagree, the first of :data:`MODALITIES` to say decides (the transcript's, usually),
        whatever order they arrive in (a dead-lettered part's count only until a usable part says).
        The fields on which this part disagrees with another, each once."""
        clash: list[str] = []
        for other, (s, who) in self.said.items():
            if other == modality:
                continue
            if s != seq and "seq" not in clash:
                clash.append("seq")
            if "unknown" not in (who, speaker) and who != speaker and "speaker" not in clash:
                clash.append("speaker")
        self.said[modality] = (seq, speaker)
        self.keep(tuple(self.said))
        return clash

    def keep(self, modalities: tuple[str, ...]) -> None:
        """Settle the seq and speaker from what ``modalities``' parts said (a replay keeps the parts
        it was labelled from: their word decides, as it did the first time)."""
        order = [m for m in MODALITIES if m in self.said and m in modalities]
        if order:
            self.seq = self.said[order[0]][0]
            known = [self.said[m][1] for m in order if self.said[m][1] != "unknown"]
            self.speaker = known[0] if known else "unknown"

    def has(self, modality: str) -> bool:
        """Whether its ``modality`` part arrived: usable, or dead-lettered (nothing more to wait for)."""
        return modality in self.parts or modality in self.ignored

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.parts)


@dataclass
class JoinResult:
    ready: list[Utterance] = field(default_factory=list)
    ack_now: list[Any] = field(default_factory=list)  # handles of parts that need no event (late, redelivered)
    late_parts: int = 0
    duplicate_parts: int = 0
    #: the part just added differs from the one its utterance already has (pending or labelled):
    #: why, for a dead letter (the caller acks it then; its handle is nowhere else)
    conflict: str | None = None
    #: the part just added belongs to a call that ended and was closed: why, for a dead letter
    #: (the caller acks it then); the call is not reopened
    after_end: str | None = None
    ended_calls: list[str] = field(default_factory=list)  # calls whose context can be released
    #: the part just added disagrees with another part of its utterance on these fields ("seq",
    #: "speaker"): joined all the same (see :meth:`Utterance.settle`), and why, for the log
    inconsistent: list[str] = field(default_factory=list)
    inconsistency: str | None = None
    #: the part just added reopened a call that had closed (sent in time, or not shown late): why, for the log
    reopened: str | None = None
    #: calls whose utterances stopped waiting join.wait_s for a modality they have not sent, and calls
    #: whose utterances wait for it again (its first part came): why, for the log
    learned: list[str] = field(default_factory=list)
    unlearned: list[str] = field(default_factory=list)
    #: calls forgotten after ``idle_s`` without a part and without an 'ended', that labelled something here
    idle_calls: list[str] = field(default_factory=list)

    def extend(self, other: JoinResult) -> None:
        self.ready += other.ready
        self.ack_now += other.ack_now
        self.late_parts += other.late_parts
        self.duplicate_parts += other.duplicate_parts
        self.conflict = self.conflict or other.conflict
        self.after_end = self.after_end or other.after_end
        self.ended_calls += other.ended_calls
        self.inconsistent += other.inconsistent
        self.inconsistency = self.inconsistency or other.inconsistency
        self.reopened = self.reopened or other.reopened
        self.learned += other.learned
        self.unlearned += other.unlearned
        self.idle_calls += other.idle_calls


@dataclass
class _Call:
    expected: tuple[str, ...]
    partition: int = -1
    last_seen: float = 0.0
    ends_at: float | None = None  # 'ended' arrived: release everything at this time
    ended_at: float = 0.0  # when 'ended' arrived (wall clock)
    ended_ts: float | None = None  # its record time
    quiet_end: bool = False  # its end stands in for an 'ended' that never came (join.idle_end_s)
    used: bool = False  # an utterance of it was released with a part (said something here)
    pending: dict[str, Utterance] = field(default_factory=dict)  # utterance id -> utterance
    declared: bool = False  # its 'started' said what it sends: nothing is learnt of the call (of a speaker, yes)
    heard: set[str] = field(default_factory=set)  # modalities it sent a part of (usable or dead-lettered)
    unheard: int = 0  # its utterances that went without a modality it never sent (see Joiner's learn_after)
    skip: tuple[str, ...] = ()  # expected modalities it has never sent: its utterances wait UNSENT_WAIT_S for them
    #: per speaker, as ``heard``, ``unheard`` and ``skip`` per call: a speaker who never sends a modality
    #: the call's others send (the customer's leg recorded, not the agent's) is learnt apart
    heard_by: dict[str, set[str]] = field(default_factory=dict)
    unheard_by: dict[str, int] = field(default_factory=dict)
    skip_by: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: for a call that replaced an earlier one under its id here: that call's end (its 'ended''s record
    #: time, or this call's 'started''s where not known); an 'ended' sent by then was the earlier call's
    replaced_ts: float | None = None

    def waits_for(self) -> tuple[str, ...]:
        return tuple(m for m in self.expected if m not in self.skip)

    def skips(self, speaker: str) -> tuple[str, ...]:
        """The expected modalities an utterance of ``speaker`` waits only UNSENT_WAIT_S for."""
        mine = self.skip_by.get(speaker, ())
        return tuple(m for m in self.expected if m in self.skip or m in mine)


class _Closed(NamedTuple):
    """What the join keeps of a call closed after its 'ended' (see ``Joiner._ended``)."""

    partition: int
    ended_ts: float | None  # the 'ended''s record time
    expected: tuple[str, ...]
    declared: bool
    heard: frozenset[str]
    skip: tuple[str, ...]
    said: bool = False  # it had utterances labelled here, or pending with a part, when it closed
    quiet_end: bool = False  # closed for sending no part for join.idle_end_s, not after an 'ended'
    #: per speaker, what their utterances stopped waiting for (_Call.skip_by; who sent what is not kept: a
    #: call reopened learns no speaker apart until it has heard them again)
    skip_by: tuple[tuple[str, tuple[str, ...]], ...] = ()


#: how long an utterance waits for a modality its call has not sent (see Joiner.learn_after), at most wait_s:
#: a part sent just after its utterance's other parts (an audio clip after its transcript) is still joined
UNSENT_WAIT_S = 0.5

#: a call with more utterances waiting than this no longer holds its later utterances back behind an
#: earlier one still waiting for a part: a producer numbering a call's utterances backwards, each missing a
#: part, kept all of them waiting (a review), until the open-utterance cap stopped the reading of every call
MAX_PENDING_PER_CALL = 1000

#: speakers of a call whose missing parts are learnt apart (Joiner, per speaker): a conference has a few;
#: a producer naming each utterance's speaker afresh made every released utterance cost a pass over them all
MAX_SPEAKERS_PER_CALL = 64

#: producers' clocks may disagree (the control topic's and the parts' come from different systems):
#: a part is refused as sent after its call's end only past ``join.wait_s`` and this much more
CLOCK_SKEW_S = 60.0


class Joiner:
    """Keeps partial utterances of many calls; see the module docstring.

    Memory is bounded: at most ``max_calls`` calls are kept (past that, the least recently active
    call with nothing pending is forgotten: its declared modalities fall back to the default) and
    at most ``max_finished`` labelled (call, utterance) ids are remembered, with digests of the parts
    used, to recognise late parts, redeliveries and conflicting parts (in memory: after a restart or
    a rebalance a conflicting part is joined afresh, and the stored window decides, so the check is
    best effort), and the ids of the last ``max_calls`` calls closed after their 'ended', with its
    record time: a part sent more than ``end_wait_s`` and :data:`CLOCK_SKEW_S` after its call's 'ended'
    (by record times, once the control topic is read past the part's time by as much again: a
    'started' reusing the id would have come) is refused,
    :attr:`JoinResult.after_end`, rather than reopening the call. A part that cannot be shown late
    so (no record times, or sent in time and read late) is joined as before, reopening the call.
    Open utterances are bounded by the caller, which stops reading at its cap (see
    :attr:`open_utterances`): they leave within ``wait_s`` on their own (past
    :data:`MAX_PENDING_PER_CALL` in one call, out of seq order). Deadlines live in a heap,
    so :meth:`expire` touches only what is due.

    A call whose 'started' did not say what it sends (or that sent none) waits for the default
    modalities; once ``learn_after`` of its utterances went without a modality it has never sent a
    part of (a call of words only, say), its utterances wait only :data:`UNSENT_WAIT_S` for it once
    their other parts are in (longer while its topic is read behind, as any wait), and its first part
    of that modality makes them wait ``wait_s`` again (:attr:`JoinResult.learned`, ``unlearned``).
    The released utterances still name it as expected, so the missing-modality count shows an outage
    of that input. What a call declared and sent is kept through its close (a part sent in time
    reopens it as it was), not past this worker's memory of it (a restart, a rebalance, the cap).

    The same is learnt per speaker, in calls that declared what they send too: once ``learn_after``
    utterances of one speaker went without a modality that speaker never sent and another speaker of
    the call did (a platform that records the customer's leg, not the agent's), that speaker's
    utterances wait only :data:`UNSENT_WAIT_S` for it once their other parts are in (longer while its
    topic is read behind, as any wait); their first part of it makes them wait ``wait_s`` again. A
    part is credited to its utterance's speaker (one that names none, "unknown", once another part of
    its utterance names them).
    The cost, as for a call: until that first part, one that comes more than ``UNSENT_WAIT_S`` after
    its utterance's other parts (and not behind) is late. A call id used again starts afresh.
    """

    def __init__(
        self,
        wait_s: float,
        default_modalities: tuple[str, ...],
        idle_s: float = 3600.0,
        max_calls: int = 50_000,
        max_finished: int = 200_000,
        behind: Callable[[str, int, float], bool] | None = None,
        read_to: Callable[[str, int], float | None] | None = None,
        max_hold_s: float | None = None,
        inputs: tuple[str, ...] = MODALITIES,
        learn_after: int = 2,
        end_wait_s: float | None = None,
    ) -> None:
        """``inputs``: the modalities the model takes; a part of another one is never waited for
        (declared by a call or by default), only joined if it comes while its utterance waits.
        ``read_to(kind, partition)``: the highest record time read on that input partition (None:
        nothing), which shows a part sent after its call's end (:attr:`JoinResult.after_end`)."""
        assert wait_s >= 0 and default_modalities, (wait_s, default_modalities)
        assert max_calls >= 1 and max_finished >= 1
        self.wait_s = wait_s
        #: how long a call's close waits after its 'ended' for parts still coming (join.end_wait_s)
        self.end_wait_s = wait_s if end_wait_s is None else max(wait_s, end_wait_s)  # not cutting utterances short
        self.idle_s = idle_s
        self.inputs = inputs
        self.default = tuple(m for m in MODALITIES if m in default_modalities and m in inputs)
        self.max_calls = max_calls
        self.max_finished = max_finished
        self.behind = behind
        self.read_to = read_to  # (topic kind, partition) -> the highest record time read there
        self.max_hold_s = max_hold_s
        self.learn_after = learn_after  # 0: never learnt
        self.unsent_wait_s = min(UNSENT_WAIT_S, wait_s)
        self.held_utterances = 0  # utterances that waited for a part read behind (a metric)
        self._calls: OrderedDict[str, _Call] = OrderedDict()  # least recently active first
        #: labelled ids -> (partition, digest of the text, audio and video used or None, the utterance's
        #: seq, a digest of its speaker), oldest first
        self._done: OrderedDict[tuple[str, str], tuple[int | None, ...]] = OrderedDict()
        #: calls closed after their 'ended' -> (partition, the end's record time, the modalities it
        #: expected, whether it declared them, those it sent, those not waited for), oldest first (at
        #: most ``max_calls``): a part sent after does not reopen them (no context, a report after the
        #: final one); one sent in time and read late reopens it as it was
        self._ended: OrderedDict[str, _Closed] = OrderedDict()
        self._done_of: dict[str, set[str]] = {}  # call id -> its utterance ids in _done (open calls)
        self._closed_ids: dict[str, set[str]] = {}  # the same of the calls in _ended, moved there at the close
        #: of the ids in _done, those released with every part dead-lettered -> why each (Joiner._set_aside)
        self._aside: dict[tuple[str, str], dict[str, str]] = {}
        self._reopened_calls: set[str] = set()  # calls in _ended opened again here by a part read after their close
        self._heap: list[tuple[float, int, str, str]] = []  # (deadline, tie, call id, utterance id or '' = end)
        self._tie = itertools.count()
        self._open = 0
        self._held = 0  # samples of the decoded audio the open utterances hold (16 kHz)
        self.evicted_calls = 0  # calls forgotten at the cap (a metric)

    # -- inputs ---------------------------------------------------------------------------------
    def call_started(
        self,
        call_id: str,
        modalities: list[str] | None,
        now: float,
        partition: int = -1,
        closed_before: bool = False,
        ts: float | None = None,
    ) -> JoinResult:
        """A call's 'started' (``ts``: its record time); ``closed_before``: its id's previous call
        closed (the caller knows so from the context store, which outlives this worker's memory)."""
        closed = self._ended.pop(call_id, None)
        if closed is not None or closed_before:  # the id used again for a new call
            # and maybe its utterance ids: the previous call's labelled ones are forgotten (not those
            # labelled since its close: the new call's, read before this 'started')
            for utterance_id in self._closed_ids.pop(call_id, set()):
                self._done.pop((call_id, utterance_id), None)
                self._aside.pop((call_id, utterance_id), None)
        call = self._touch(call_id, now, partition)
        if closed is not None or closed_before:
            call.replaced_ts = closed.ended_ts if closed is not None and closed.ended_ts is not None else ts
            call.heard_by, call.unheard_by, call.skip_by = {}, {}, {}  # another call's speakers
        # what it will send and the model takes (an empty or absent list, or none the model takes: the
        # default, as a call that declares only video to a model without video may well send its words
        # and voice too: the caller says so in its log)
        if modalities:
            call.expected = tuple(m for m in MODALITIES if m in modalities and m in self.inputs) or self.default
            call.declared, call.skip = True, ()
        return self._release(call_id, now)

    def call_ended(
        self, call_id: str, now: float, partition: int = -1, ts: float | None = None, quiet: bool = False
    ) -> JoinResult:
        """The call's end arrived (``quiet``: the worker stands in for an 'ended' that never came,
        the call having sent no part for ``join.idle_end_s``). Its parts travel on other topics and
        may still be behind it, so the call is closed ``end_wait_s`` later (by :meth:`expire`), not
        now; later still while those topics are read behind the end's record time ``ts``. An end
        read again while the close waits (a producer's retries) keeps the first one's schedule: each
        one moved the close on by ``end_wait_s``, so retries within it kept the call from closing."""
        call = self._touch(call_id, now, partition)
        if call.ends_at is not None:
            call.ended_ts = call.ended_ts if call.ended_ts is not None else ts  # the stand-in for one had none
            call.quiet_end = call.quiet_end and quiet
            return JoinResult()
        call.ends_at, call.ended_at, call.ended_ts = now + self.end_wait_s, now, ts
        call.quiet_end = quiet
        self._push(call.ends_at, call_id, "")
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
        partition: int = -1,
        ts: float | None = None,
        fresh_at: float | None = None,
    ) -> JoinResult:
        """One part; ``ts`` is its record time (for waits behind, see the module doc); ``fresh_at``
        becomes the utterance's :attr:`Utterance.fresh_at` where the part opens it."""
        assert modality in MODALITIES, modality
        again = self._heard(call_id, modality, speaker)
        result = self._add(
            call_id, utterance_id, seq, speaker, modality, payload, handle, now, partition, ts, fresh_at
        )  # fmt: skip
        if again is not None:
            result.unlearned.append(again)
        return result

    def _add(
        self,
        call_id: str,
        utterance_id: str,
        seq: int,
        speaker: str,
        modality: str,
        payload: Any,
        handle: Any,
        now: float,
        partition: int,
        ts: float | None,
        fresh_at: float | None = None,
        refused: dict[str, str] | None = None,
    ) -> JoinResult:
        """:meth:`add`; ``refused``: why the parts of the utterance, set aside, were (:meth:`_set_aside`)."""
        done = self._done.get((call_id, utterance_id))
        why = self._aside.get((call_id, utterance_id)) if done is not None else None
        if why is not None and self._after_end(call_id, partition, ts) is None:
            # every part it had was dead-lettered, nothing labelled: it opens again, knowing why
            self._undo((call_id, utterance_id))
            return self._add(call_id, utterance_id, seq, speaker, modality, payload, handle, now, partition, ts,
                             fresh_at, why)  # fmt: skip
        if done is not None:
            self._done.move_to_end((call_id, utterance_id))
            used = done[1 + MODALITIES.index(modality)]
            if used is None:  # a part that came after its utterance went without it
                return JoinResult(ack_now=[handle], late_parts=1)
            if used != _digest(payload):
                return JoinResult(conflict=_conflict(call_id, utterance_id, modality, "was labelled from"))
            again = JoinResult(ack_now=[handle], duplicate_parts=1)  # the same part again (a redelivery)
            speaker_differs = speaker != "unknown" and done[-1] != _UNKNOWN and _digest(speaker) != done[-1]
            _repeated(again, utterance_id, call_id, modality, seq, speaker, seq != done[-2], speaker_differs,
                      "the utterance it was labelled in had another", "acked without a second event")  # fmt: skip
            return again
        late = self._after_end(call_id, partition, ts)
        if late is not None and ts is not None:
            return JoinResult(after_end=f"call {call_id!r} ended (record time {late:.3f}) and this {modality} part of "
                              f"utterance {utterance_id!r} (seq {seq}) was sent {ts - late:.1f} s after, past "
                              f"join.end_wait_s {self.end_wait_s:g} s and {CLOCK_SKEW_S:g} s of clock skew; a call's "
                              "parts come before its 'ended'; a call id used again starts with 'started'")  # fmt: skip
        reopening = call_id not in self._calls and call_id in self._ended
        if reopening:
            self._reopened_calls.add(call_id)
        call = self._touch(call_id, now, partition)
        call.heard.add(modality)
        utt = call.pending.get(utterance_id)
        if utt is None:
            utt = self._open_utterance(call, call_id, utterance_id, seq, speaker, now, ts, fresh_at)
            utt.ignored.update(refused or {})  # not waited for again
        elif modality in utt.parts:
            if _digest(utt.parts[modality]) != _digest(payload):
                return JoinResult(conflict=_conflict(call_id, utterance_id, modality, "already has"))
            # acked now (its first copy, read before it, holds the commit back until the event): held with
            # the utterance, each copy kept its record (a producer's retries, up to join.max_hold_s: a review)
            again = JoinResult(ack_now=[handle], duplicate_parts=1)
            speaker_differs = "unknown" not in (speaker, utt.speaker) and speaker != utt.speaker
            _repeated(again, utterance_id, call_id, modality, seq, speaker, seq != utt.seq, speaker_differs,
                      f"the utterance has seq {utt.seq} speaker {utt.speaker!r}, another", "joined once")  # fmt: skip
            return again
        elif utt.parts and self._sent_late(utt, now, ts):  # (nothing usable yet: nothing it was late for)
            result = JoinResult(ack_now=[handle], late_parts=1)
            result.extend(self._release(call_id, now))
            return result
        utt.handles.append(handle)
        utt.parts[modality] = payload
        self._held += _samples(payload)
        utt.ignored.pop(modality, None)  # sent again after a dead-lettered copy: this one counts
        utt.last_at = now
        clash = utt.settle(modality, seq, speaker)
        # each of its parts is the speaker's its parts name (an audio part that names none, read first, too)
        credited = [self._credit(call_id, call, utt.speaker, m) for m in (*utt.parts, *utt.ignored)]
        result = self._release(call_id, now)
        result.unlearned += [c for c in credited if c is not None]
        if reopening:
            result.reopened = self._reopened(call_id, utterance_id, seq, modality, ts)
        if clash:
            result.inconsistent += clash
            result.inconsistency = _inconsistency(utt, modality, seq, speaker, clash)
        return result

    def reject(
        self,
        call_id: str,
        utterance_id: str,
        seq: int,
        speaker: str,
        modality: str,
        why: str,
        now: float,
        partition: int = -1,
        ts: float | None = None,
        handle: Any = None,
        fresh_at: float | None = None,
    ) -> JoinResult:
        """A part that was dead-lettered (its ids parsed, its content did not: audio that does not
        decode, say): its utterance waits for it no longer, and goes with what else it has
        (``ignored[modality] = why``); an utterance with no other part gives no event. ``handle``
        (the part's own) is acked with its utterance's parts, not before: a worker that crashes
        before the utterance's event is out reads the part again after it, so the replay knows
        again not to wait for it and says why the event lacks it."""
        assert modality in MODALITIES, modality
        again = self._heard(call_id, modality, speaker)  # it sends that modality (this part was bad)
        if (call_id, utterance_id) in self._done or self._after_end(call_id, partition, ts) is not None:
            return JoinResult(ack_now=[handle] if handle is not None else [], unlearned=[again] if again else [])
        reopening = call_id not in self._calls and call_id in self._ended
        if reopening:
            self._reopened_calls.add(call_id)
        call = self._touch(call_id, now, partition)
        call.heard.add(modality)
        utt = call.pending.get(utterance_id) or self._open_utterance(
            call, call_id, utterance_id, seq, speaker, now, ts, fresh_at
        )  # fmt: skip
        if handle is not None:
            utt.handles.append(handle)
        if modality not in utt.parts:
            utt.ignored[modality] = why  # its seq and speaker count only until a usable part says (settle)
        credited = self._credit(call_id, call, utt.speaker, modality)  # it sends that modality (this part was bad)
        result = self._release(call_id, now)
        if credited is not None:
            result.unlearned.append(credited)
        if reopening:
            result.reopened = self._reopened(call_id, utterance_id, seq, modality, ts)
        if again is not None:
            result.unlearned.append(again)
        return result

    def _reopened(self, call_id: str, utterance_id: str, seq: int, modality: str, ts: float | None) -> str:
        """Why a part reopened a call that had closed, for the log."""
        closed = self._ended.get(call_id)
        end_ts = None if closed is None else closed.ended_ts
        if closed is not None and closed.quiet_end:
            when = "read after the call was ended for sending no part for join.idle_end_s (no 'ended' came)"
        elif ts is None or end_ts is None:
            when = "read after the call had closed (no record times to tell when it was sent)"
        elif ts <= end_ts:
            when = "sent before the call's 'ended' and read after the call had closed (a backlog)"
        else:
            when = f"sent {ts - end_ts:.1f} s after the call's 'ended', after the call had closed"
        return (
            f"call {call_id}: its {modality} part of utterance {utterance_id} (seq {seq}) was {when}: it reopens the "
            "call and is labelled without the call's earlier context, which closed with it (unless the utterance "
            "was labelled before: a part sent again, skipped, emostream_replays_skipped_total); a call's parts "
            "come before its 'ended' (README: Calls that end)"
        )

    def _open_utterance(
        self,
        call: _Call,
        call_id: str,
        utterance_id: str,
        seq: int,
        speaker: str,
        now: float,
        ts: float | None,
        fresh_at: float | None = None,
    ) -> Utterance:
        """A new pending utterance of ``call``, due ``wait_s`` from its first part (or dead letter)."""
        utt = Utterance(call_id, utterance_id, seq, speaker, first_at=now, partition=call.partition, first_ts=ts)
        utt.fresh_at = fresh_at
        utt.after_close = call_id in self._ended
        call.pending[utterance_id] = utt
        self._open += 1
        self._push(now + self.wait_s, call_id, utterance_id)
        if call.skips(speaker):
            self._push(now + self.unsent_wait_s, call_id, utterance_id)
        return utt

    def _set_aside(self, utt: Utterance, partition: int) -> None:
        """An utterance released with every part dead-lettered: marked done as any (a part of it is
        known, for late and reused-id parts, and forgotten with its partition), with why its parts
        were refused: nothing was labelled, so a usable part of it read later (a transcript slower
        than ``wait_s`` after its bad audio) opens it again, knowing why (:meth:`_add`). It was
        counted late, and the utterance gave no event at all (an operator's trial)."""
        self._aside[(utt.call_id, utt.utterance_id)] = dict(utt.ignored)
        self._mark_done(utt, partition)

    def _sent_late(self, utt: Utterance, now: float, ts: float | None) -> bool:
        """Whether a part reaching ``utt`` past its wait (held, or queued behind a held one) was
        sent after that wait too: late, as it would have been had nothing held the utterance."""
        if ts is None or utt.first_ts is None or now - utt.first_at < self.wait_s:
            return False
        return ts > utt.first_ts + self.wait_s

    def expire(self, now: float) -> JoinResult:
        """Release what is due (from the deadline heap) and forget calls idle for ``idle_s``."""
        result = JoinResult()
        while self._heap and self._heap[0][0] <= now:
            deadline, _, call_id, utterance_id = heapq.heappop(self._heap)
            call = self._calls.get(call_id)
            if call is None:
                continue  # closed or forgotten since
            if not utterance_id:
                if call.ends_at == deadline and self._hold_end(call, now):
                    call.ends_at = now + RECHECK_S  # never 'now': the loop above would spin
                    self._push(call.ends_at, call_id, "")
                elif call.ends_at == deadline:
                    result.extend(self._close(call_id, now))
            elif utterance_id in call.pending:
                result.extend(self._release(call_id, now))
        self._let_reopened_go(now)
        while self._calls:
            call_id, call = next(iter(self._calls.items()))
            if call.pending or call.ends_at is not None or now - call.last_seen <= self.idle_s:
                break
            del self._calls[call_id]  # an idle call that never sent 'ended'
            # its labelled ids, as a closed call's: a 'started' using the id again forgets them
            self._file_closed(call_id)
            # (not one that sent 'ended', reopened by a part read after its close; nor one that labelled
            # nothing here: a 'started' alone, or parts all dead-lettered, which a newcomer saw counted)
            if call_id not in self._ended and call.used:
                result.idle_calls.append(call_id)
        return result

    def _let_reopened_go(self, now: float) -> None:
        """Forget the calls reopened by a part read after their close once they have nothing pending
        and sent nothing for ``end_wait_s``: they stay closed (a later part reopens them again), and
        no longer count as open calls (before, they did until ``idle_s``, an hour: a newcomer saw 2
        open calls after every call had ended)."""
        for call_id in list(self._reopened_calls):
            call = self._calls.get(call_id)
            if call is None or call_id not in self._ended:  # forgotten, closed again, or started again
                self._reopened_calls.discard(call_id)
            elif not call.pending and call.ends_at is None and now - call.last_seen > self.end_wait_s:
                del self._calls[call_id]  # what it labelled since stays the new call's (_done_of), should a
                self._reopened_calls.discard(call_id)  # 'started' of a call reusing the id come after it

    # -- queries --------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The earliest time something may become due (stale heap entries make it early, never late)."""
        return self._heap[0][0] if self._heap else None

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    @property
    def open_utterances(self) -> int:
        return self._open

    @property
    def held_audio_s(self) -> float:
        """Seconds of decoded audio the utterances waiting for parts hold (64 KB a second)."""
        return self._held / AUDIO_RATE

    @property
    def finished_ids(self) -> int:
        return len(self._done)

    def knows(self, call_id: str) -> bool:
        return call_id in self._calls

    def spoke(self, call_id: str) -> bool:
        """Whether the call, open here, has an utterance pending or labelled since it began here."""
        call = self._calls.get(call_id)
        return call is not None and (bool(call.pending) or bool(self._done_of.get(call_id)))

    def active(self, call_id: str, now: float, within: float) -> bool:
        """Whether the call, open here, has an utterance pending, its end scheduled, or a part or
        control message read within the last ``within`` seconds."""
        call = self._calls.get(call_id)
        return call is not None and (bool(call.pending) or call.ends_at is not None or now - call.last_seen < within)

    def said_something(self, call_id: str) -> bool:
        """Whether the call, closed here, had utterances when it closed (labelled here since it last
        opened, or pending with a part)."""
        closed = self._ended.get(call_id)
        return closed is not None and closed.said

    def began_after(self, call_id: str, ts: float | None) -> bool:
        """Whether an 'ended' sent at ``ts`` is that of the call the one open here replaced under its
        id (sent by that call's end, by record times): not this call's."""
        call = self._calls.get(call_id)
        return call is not None and None not in (ts, call.replaced_ts) and ts <= call.replaced_ts  # type: ignore[operator]

    def declared(self, call_id: str) -> bool:
        """Whether the call, open here, said in its 'started' what it sends."""
        call = self._calls.get(call_id)
        return call is not None and call.declared

    def has_ended(self, call_id: str) -> bool:
        """Whether ``call_id`` was closed after its 'ended' (and not started again since)."""
        return call_id in self._ended

    def of_previous_call(self, call_id: str, utterance_id: str, modality: str, ts: float | None) -> bool:
        """While a 'started' that uses ``call_id`` again waits for the previous call's close (the
        worker holds the new call's messages until then): whether a part is the previous call's:
        sent (by record times) before its 'ended', or one its pending utterance still lacks, sent
        within ``end_wait_s`` and :data:`CLOCK_SKEW_S` after it (a transcript lags the hang-up; clocks
        differ) or without record times."""
        end_ts = self._end_ts(call_id)
        call = self._calls.get(call_id)
        utt = call.pending.get(utterance_id) if call is not None and call.ends_at is not None else None
        if utt is not None and modality not in utt.parts:
            if ts is None or end_ts is None or ts <= end_ts + self.end_wait_s + CLOCK_SKEW_S:
                return True
        return ts is not None and end_ts is not None and ts <= end_ts

    def labelled(self, call_id: str, utterance_id: str) -> bool:
        """Whether the utterance is remembered as labelled (see the class doc)."""
        return (call_id, utterance_id) in self._done

    def sent_after_end(self, call_id: str, utterance_id: str, modality: str, ts: float | None) -> bool:
        """Whether a part was sent (by record times) after its call's 'ended' and meets a part its
        utterance already has here (labelled, or pending with that modality): the call id used
        again, with the same utterance ids, whose 'started' may be read after it; or else a late
        part or a redelivery."""
        end_ts = self._end_ts(call_id)
        if ts is None or end_ts is None or ts <= end_ts:
            return False
        if (call_id, utterance_id) in self._done:
            return True
        call = self._calls.get(call_id)
        utt = call.pending.get(utterance_id) if call is not None else None
        return utt is not None and modality in utt.parts

    def sent_after_its_end(self, call_id: str, ts: float | None) -> bool:
        """Whether a part was sent (by record times) after its call's 'ended' (closing or closed here)."""
        end_ts = self._end_ts(call_id)
        return ts is not None and end_ts is not None and ts > end_ts

    def needs_declaration(self, call_id: str) -> bool:
        """Whether a call's stored declaration ('started' read by another worker, or forgotten here)
        should be read and applied: not for a call open here, nor for one closed here (it stays so)."""
        return call_id not in self._calls and call_id not in self._ended

    def forget(self, partitions: set[int], labelled: Sequence[Utterance] = ()) -> int:
        """Drop every call of ``partitions`` (partitions revoked): pending utterances go unreleased,
        and labelled ids of those partitions are forgotten, so that what the partition's next owner
        (maybe this worker again) replays is joined afresh. ``labelled`` are utterances released
        but not yet published, also forgotten. Returns how many pending utterances were dropped."""
        dropped = 0
        for call_id in [c for c, call in self._calls.items() if call.partition in partitions]:
            call = self._calls.pop(call_id)
            dropped += len(call.pending)
            self._open -= len(call.pending)
            self._held -= sum(_held_by(u) for u in call.pending.values())
        for key in [k for k, v in self._done.items() if v[0] in partitions]:
            self._undo(key)
        for call_id in [c for c, closed in self._ended.items() if closed.partition in partitions]:
            del self._ended[call_id]
            self._closed_ids.pop(call_id, None)
        for utt in labelled:
            self._undo((utt.call_id, utt.utterance_id))
        return dropped

    # -- internals ------------------------------------------------------------------------------
    def _push(self, deadline: float, call_id: str, utterance_id: str) -> None:
        heapq.heappush(self._heap, (deadline, next(self._tie), call_id, utterance_id))

    def _close(self, call_id: str, now: float) -> JoinResult:
        call = self._calls.pop(call_id)
        said = bool(self._done_of.get(call_id)) or any(u.parts for u in call.pending.values())
        self._ended[call_id] = _Closed(
            call.partition,
            call.ended_ts,
            call.expected,
            call.declared,
            frozenset(call.heard),
            call.skip,
            said,
            call.quiet_end,
            tuple((k, v) for k, v in call.skip_by.items() if v),
        )
        self._ended.move_to_end(call_id)
        while len(self._ended) > self.max_calls:
            self._ended.popitem(last=False)  # its labelled ids stay indexed until _done lets them go (_undo)
        result = JoinResult(ended_calls=[call_id])
        for utt in sorted(call.pending.values(), key=lambda u: u.seq):
            utt.ready_at, utt.expected, utt.not_waited = now, call.expected, call.skips(utt.speaker)
            utt.timed_out = not all(utt.has(m) for m in call.expected)
            if utt.parts:  # not one whose every part was dead-lettered: nothing to label
                result.ready.append(utt)
                self._mark_done(utt, call.partition)
            else:
                result.ack_now.extend(utt.handles)
                self._set_aside(utt, call.partition)
        self._open -= len(call.pending)
        self._held -= sum(_held_by(u) for u in call.pending.values())
        self._file_closed(call_id)  # closed again: both
        return result

    def _file_closed(self, call_id: str) -> None:
        """A closed or forgotten call's labelled ids move from ``_done_of`` to ``_closed_ids`` (no
        entry for a call that labelled nothing: every 'ended' of a call never started left one)."""
        labelled = self._done_of.pop(call_id, None)
        if labelled:
            self._closed_ids.setdefault(call_id, set()).update(labelled)

    def _touch(self, call_id: str, now: float, partition: int = -1) -> _Call:
        """The call's state (created if new), marked as the most recently active."""
        call = self._calls.get(call_id)
        if call is None:
            self._make_room()
            closed = self._ended.get(call_id)  # reopened by a part sent in time: what it expected still holds
            call = self._calls[call_id] = _Call(expected=self.default, partition=partition)
            if closed is not None:
                call.expected, call.declared, call.skip = closed.expected, closed.declared, closed.skip
                call.heard = set(closed.heard)
                call.skip_by = dict(closed.skip_by)
        else:
            self._calls.move_to_end(call_id)
        call.last_seen = now
        return call

    def _make_room(self, scan: int = 64) -> None:
        """At the cap, forget the least recently active calls that have nothing pending and no end
        scheduled (scanning a few from the old end: calls that are busy stay)."""
        if len(self._calls) < self.max_calls:
            return
        idle = [
            c for c, call in itertools.islice(self._calls.items(), scan) if not call.pending and call.ends_at is None
        ]
        for call_id in idle[: len(self._calls) - self.max_calls + 1]:
            del self._calls[call_id]
            self.evicted_calls += 1

    def _release(self, call_id: str, now: float) -> JoinResult:
        call = self._calls[call_id]
        result = JoinResult()
        for utt in sorted(call.pending.values(), key=lambda u: u.seq):
            complete = all(utt.has(m) for m in call.expected)
            # a call (or speaker) that has not sent a modality: its other parts in, its utterances wait less for it
            skips = call.skips(utt.speaker)
            waits = tuple(m for m in call.expected if m not in skips)
            wait = self.unsent_wait_s if skips and all(utt.has(m) for m in waits) else self.wait_s
            expired = now - utt.first_at >= wait and not self._hold(utt, call.expected, now, wait)
            if not (complete or expired):
                if len(call.pending) <= MAX_PENDING_PER_CALL:
                    break  # holds back later utterances of this call
                continue
            utt.ready_at, utt.expected, utt.not_waited = now, call.expected, skips
            utt.timed_out = not complete
            if not complete:
                self._learn(call_id, call, utt, result)
            if utt.parts:  # not one whose every part was dead-lettered: nothing to label
                result.ready.append(utt)
                call.used = True
                self._mark_done(utt, call.partition)
            else:
                result.ack_now.extend(utt.handles)
                self._set_aside(utt, call.partition)
            del call.pending[utt.utterance_id]
            self._open -= 1
            self._held -= _held_by(utt)
        return result

    def _learn(self, call_id: str, call: _Call, utt: Utterance, result: JoinResult) -> None:
        """After ``utt`` went without a part it waited for: once ``learn_after`` utterances of a call
        that did not say what it sends went without a modality it has never sent a part of, while it
        sends another, its utterances wait only :data:`UNSENT_WAIT_S` for that modality (until its
        first part comes)."""
        self._learn_speaker(call_id, call, utt, result)
        never = [m for m in call.waits_for() if not utt.has(m) and m not in call.heard]
        sent = [m for m in call.expected if m in call.heard]
        if not self.learn_after or call.declared or not never or not sent:
            return
        call.unheard += 1
        if call.unheard < self.learn_after:
            return
        call.skip = tuple(m for m in call.expected if m in call.skip or m in never)
        for pending in call.pending.values():  # due sooner now
            self._push(pending.first_at + self.unsent_wait_s, call_id, pending.utterance_id)
        result.learned.append(
            f"call {call_id} has sent no {'+'.join(never)} part in {call.unheard} utterances: once their "
            f"{'+'.join(sent)} is in, its next ones wait for {'+'.join(never)} until {self.unsent_wait_s:g} s after "
            f"their first part, not join.wait_s {self.wait_s:g} s (a call that sends only {'+'.join(sent)} says "
            f"so in its 'started', modalities {list(sent)}); its first {'+'.join(never)} part makes them wait "
            "join.wait_s again"
        )

    def _learn_speaker(self, call_id: str, call: _Call, utt: Utterance, result: JoinResult) -> None:
        """After ``utt`` went without a part it waited for: once ``learn_after`` utterances of its
        speaker went without a modality the speaker never sent and another speaker of the call did,
        that speaker's utterances wait only :data:`UNSENT_WAIT_S` for it (until their first part of it)."""
        speaker, mine = utt.speaker, call.heard_by.get(utt.speaker, set())
        if speaker not in call.heard_by:
            return  # past MAX_SPEAKERS_PER_CALL: not learnt apart (waits as the call's utterances do)
        skips = call.skips(speaker)
        others = set().union(*(v for k, v in call.heard_by.items() if k not in (speaker, "unknown")))
        never = [m for m in call.expected if m not in skips and not utt.has(m) and m not in mine and m in others]
        if not self.learn_after or not never or not utt.parts or speaker == "unknown":
            return
        n = call.unheard_by[speaker] = call.unheard_by.get(speaker, 0) + 1
        if n < self.learn_after:
            return
        call.skip_by[speaker] = tuple(m for m in call.expected if m in call.skip_by.get(speaker, ()) or m in never)
        for pending in call.pending.values():  # due sooner now
            if pending.speaker == speaker:
                self._push(pending.first_at + self.unsent_wait_s, call_id, pending.utterance_id)
        result.learned.append(
            f"call {call_id}: speaker {speaker!r} has sent no {'+'.join(never)} part in {n} utterances while "
            f"another speaker of the call did (one leg recorded, say): their next utterances wait for "
            f"{'+'.join(never)} until {self.unsent_wait_s:g} s after their first part, not join.wait_s "
            f"{self.wait_s:g} s; their first {'+'.join(never)} part makes them wait join.wait_s again"
        )

    def _credit(self, call_id: str, call: _Call, speaker: str, modality: str) -> str | None:
        """``speaker`` sent a part of ``modality`` (not credited while no part names the speaker,
        "unknown"): if their utterances had stopped waiting for it, they wait again; what changed,
        for the log."""
        if speaker == "unknown":  # credited once a part of its utterance names the speaker (_add, reject)
            return None
        if speaker not in call.heard_by and speaker not in call.skip_by and len(call.heard_by) >= MAX_SPEAKERS_PER_CALL:
            return None
        call.heard_by.setdefault(speaker, set()).add(modality)
        if modality not in call.skip_by.get(speaker, ()):
            return None
        call.skip_by[speaker] = tuple(m for m in call.skip_by[speaker] if m != modality)
        call.unheard_by[speaker] = 0
        return (
            f"call {call_id}: a {modality} part of speaker {speaker!r} came: their utterances wait join.wait_s "
            f"{self.wait_s:g} s for {modality} again"
        )

    def _heard(self, call_id: str, modality: str, speaker: str | None = None) -> str | None:
        """A part of ``modality`` came for ``call_id`` (from ``speaker``): if its utterances (or the
        speaker's) had stopped waiting for that modality (:meth:`_learn`, :meth:`_learn_speaker`),
        they wait again; what changed, for the log."""
        call = self._calls.get(call_id)
        if call is None:
            return None
        call.heard.add(modality)
        if speaker is not None:
            again = self._credit(call_id, call, speaker, modality)
            if again is not None and modality not in call.skip:
                return again
        if modality not in call.skip:
            return None
        call.skip, call.unheard = tuple(m for m in call.skip if m != modality), 0
        return (
            f"call {call_id}: its first {modality} part came: its utterances wait join.wait_s {self.wait_s:g} s for "
            f"{modality} again"
        )

    def _past_backstop(self, since: float, now: float) -> bool:
        return self.max_hold_s is not None and now - since >= self.max_hold_s

    def _hold(self, utt: Utterance, expected: tuple[str, ...], now: float, wait: float | None = None) -> bool:
        """Whether an utterance past its wait (``wait_s`` unless given) should wait on for a part of a
        topic read behind."""
        if self.behind is None or utt.first_ts is None or self._past_backstop(utt.first_at, now):
            return False
        until = utt.first_ts + (self.wait_s if wait is None else wait)
        if any(self.behind(m, utt.partition, until) for m in expected if not utt.has(m)):
            if not utt.held:
                utt.held = True
                self.held_utterances += 1
            if utt.recheck_at is None or utt.recheck_at <= now:  # whichever path held it, look again
                utt.recheck_at = now + RECHECK_S
                self._push(utt.recheck_at, utt.call_id, utt.utterance_id)
            return True
        return False

    def _hold_end(self, call: _Call, now: float) -> bool:
        """Whether a call's close should wait for its parts on topics read behind its end."""
        if self.behind is None or call.ended_ts is None:
            return False
        if self._past_backstop(call.ended_at + self.end_wait_s - self.wait_s, now):  # (max_hold_s: from wait_s)
            return False
        until = call.ended_ts + self.end_wait_s
        if any(self.behind(m, call.partition, until) for m in call.expected):
            return True
        incomplete = [u for u in call.pending.values() if not all(u.has(m) for m in call.expected)]
        return any(self._hold(u, call.expected, now) for u in incomplete)

    def _end_ts(self, call_id: str) -> float | None:
        """The record time of the call's 'ended', if it came: closing, or closed (and maybe reopened
        by a part sent in time)."""
        call = self._calls.get(call_id)
        if call is not None and call.ends_at is not None:
            return call.ended_ts
        return self._ended[call_id].ended_ts if call_id in self._ended else None

    def _after_end(self, call_id: str, partition: int, ts: float | None) -> float | None:
        """The record time of the call's 'ended' when a part sent at ``ts`` came past it by more than
        ``end_wait_s`` and :data:`CLOCK_SKEW_S`, and the control topic was read past ``ts`` and as much
        again (positive evidence that no 'started' using the id again is on its way), else None."""
        end_ts = self._end_ts(call_id)
        if ts is None or end_ts is None or ts <= end_ts + self.end_wait_s + CLOCK_SKEW_S:
            return None
        control = self.read_to("control", partition) if self.read_to is not None else None
        if control is None or control < ts + CLOCK_SKEW_S:
            return None  # not shown that no 'started' reusing the id is on its way: joined, as before
        return end_ts

    def _mark_done(self, utt: Utterance, partition: int) -> None:
        """Remember a labelled utterance: its partition and a digest of each part it used."""
        digests = (_digest(utt.parts[m]) if m in utt.parts else None for m in MODALITIES)
        # and its seq and speaker: a part sent again later under its ids is checked against them
        self._done[(utt.call_id, utt.utterance_id)] = (partition, *digests, utt.seq, _digest(utt.speaker))
        # a closed call reopened by a part sent before its end (or without record times: as if so)
        closed = self._ended.get(utt.call_id)
        previous = closed is not None and (
            closed.ended_ts is None or utt.first_ts is None or utt.first_ts <= closed.ended_ts
        )
        (self._closed_ids if previous else self._done_of).setdefault(utt.call_id, set()).add(utt.utterance_id)
        while len(self._done) > self.max_finished:
            self._undo(next(iter(self._done)))

    def _undo(self, key: tuple[str, str]) -> None:
        """Forget a labelled id (if remembered)."""
        if self._done.pop(key, None) is None:
            return
        self._aside.pop(key, None)
        for index in (self._done_of, self._closed_ids):
            ids = index.get(key[0])
            if ids is not None and key[1] in ids:
                ids.discard(key[1])
                if not ids:
                    del index[key[0]]


#: the rate of the waveforms the join holds (engines.features.codecs.SAMPLE_RATE: every part is decoded to it)
AUDIO_RATE = 16_000


def _samples(payload: Any) -> int:
    """The samples of a decoded waveform part (streams.validate.Payload of kind 'wave'); 0 for the rest."""
    if getattr(payload, "kind", None) != "wave":
        return 0
    return int(getattr(payload.value, "size", 0))


def _held_by(utt: Utterance) -> int:
    return sum(_samples(p) for p in utt.parts.values())


def _digest(payload: Any) -> int:
    """A digest of a part's content, to tell a redelivered part from a different one under the same
    ids: text whole; an array by its shape and 256 to 511 of its values evenly spaced (cheap for a
    long waveform, and two different recordings agree on all of them only by design). 30 bits, so
    the 200,000 labelled ids a worker remembers keep small ints."""
    value = getattr(payload, "value", payload)
    shape = getattr(value, "shape", None)
    if shape is not None:
        flat = value.reshape(-1)
        return hash((shape, str(value.dtype), flat[:: max(1, flat.shape[0] // 256)].tobytes())) & _BITS
    try:
        return hash(value) & _BITS
    except TypeError:
        return hash(repr(value)) & _BITS


_UNKNOWN = _digest("unknown")  # a speaker no part named


def _repeated(
    result: JoinResult,
    utterance_id: str,
    call_id: str,
    modality: str,
    seq: int,
    speaker: str,
    seq_differs: bool,
    speaker_differs: bool,
    had: str,
    done: str,
) -> None:
    """A part that came again with its content (a redelivery) but another seq or speaker than its
    utterance's: counted and said in ``result`` as inconsistent (``had``: what the utterance had;
    ``done``: what became of the part)."""
    clash = [name for name, differs in (("seq", seq_differs), ("speaker", speaker_differs)) if differs]
    if clash:
        result.inconsistent += clash
        result.inconsistency = (
            f"utterance {utterance_id} of call {call_id}: its {modality} part came again with the same content, "
            f"but seq {seq} speaker {speaker!r}, where {had} {' and '.join(clash)}: {done}; every part of an "
            "utterance should carry the same seq and speaker, and another utterance another utterance id"
        )


def _inconsistency(utt: Utterance, modality: str, seq: int, speaker: str, fields: list[str]) -> str:
    others = ", ".join(f"its {m} part seq {s} speaker {w!r}" for m, (s, w) in utt.said.items() if m != modality)
    return (
        f"utterance {utt.utterance_id} of call {utt.call_id}: this {modality} part says seq {seq} speaker "
        f"{speaker!r}, but {others} (they differ on {' and '.join(fields)}); joined all the same, as seq "
        f"{utt.seq} speaker {utt.speaker!r} (the first of {', '.join(MODALITIES)} to say): every part of an "
        "utterance should carry the same seq and speaker"
    )


def _conflict(call_id: str, utterance_id: str, modality: str, what: str) -> str:
    return (
        f"utterance {utterance_id} of call {call_id} {what} a different {modality} part: two messages under "
        "one utterance id (the first one counts)"
    )
