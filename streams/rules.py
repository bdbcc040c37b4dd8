"""Escalation rules: which state of a call a supervisor should be alerted to.

A rules file is TOML (the shipped default is ``streams/escalation.toml``; set
``analytics.rules`` to use your own). Its grammar:

```toml
[roles]                      # speaker id -> role: the first role with a matching glob wins
agent = ["agent*"]
customer = ["*"]

[[rule]]
name = "customer-anger-rising"   # lower case, digits, '-' or '_'; unique
kind = "rising"                  # rising | streak | below | reply (fields per kind below)
role = "customer"                # whose turns the rule looks at
emotions = ["anger", "disgust"]  # labels summed (a label the model lacks counts 0)
turns = 3                        # the role's last `turns` turns
min_share = 0.5                  # (rising) the last turn's share of `emotions` at least this
severity = "critical"            # info | warning | critical
message = "The customer is getting angrier"   # optional: shown to the supervisor
clear_after = 3                  # optional (1): new turns of `role` without the rule holding before it clears
```

Kinds, each judged on the call's turns so far (the latest revision of each utterance):

- ``rising``: the probability of ``emotions`` rises at every step over the role's last ``turns``
  turns and reaches ``min_share`` on the last one; once raised, a turn of that speaker still at
  ``min_share`` (anger at its height, no longer rising) is no step toward clearing it. (``rising``,
  ``streak`` and ``below`` read the turns of the role's latest speaker only: two customers are two
  people.)
- ``streak``: each of the role's last ``turns`` turns is labelled with one of ``emotions`` (or, with
  ``sentiment = "negative"``, has a negative sentiment label), with a label probability of at
  least ``min_confidence`` (default 0).
- ``below``: the mean sentiment (-1..1) of the role's last ``turns`` turns is below ``threshold``.
- ``reply``: within the call's last ``within`` turns, a turn of ``role`` labelled with one of
  ``emotions`` comes right after a turn of ``after`` labelled with one of ``after_emotions``
  (either list left out: a negative sentiment label), both with a label probability of at least
  ``min_confidence`` (default 0).

A rule holds or not after every turn: an alert opens when it starts to hold, is updated while its
evidence changes, and clears when it stops holding (the call recovered) or the call ends. With
``clear_after = N`` (any kind; 1 by default) it clears only once N new turns of its role (for
``reply``: of ``role`` or ``after``, but not a turn of ``role`` that is itself such a reply: an agent
still angry after a customer who calmed down has not recovered) have come without it holding (a
revision that breaks it counts no turn: with N of 2 or more a revision that moves a label's
probability under a rule's bar does not clear the alert, where with 1 it did and the next turn raised
it again). If the rule holds again before that, the same alert goes on (updated if its evidence
moved). N must outlast the turns the rule needs to hold again: a ``rising`` rule over 3 turns whose
rise pauses for one turn holds again two turns later, so the shipped one takes 3 and stays one
alert through the pause (with 2 it cleared on the turn before it held again); a ``streak`` over T
turns holds again T turns after a break at the earliest, and a ``below`` over T turns keeps a calm
turn in its mean for T turns: the shipped ones over 3 turns take 4, so a customer's one "okay."
between angry turns is one alert, not two raised and cleared (with 2 it cleared on the angry turn
after the "okay." and was raised again two turns later); the ``reply`` rule takes 2. Only the turns of
the speaker an alert is about count toward it (``rising``, ``streak``, ``below``: the role's latest
speaker's turns), so another customer's calm turns do not clear it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streams.errors import ConfigError

DEFAULT_RULES = Path(__file__).with_name("escalation.toml")
Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True)
class Turn:
    """One labelled utterance of a call, as the rules see it."""

    utterance_id: str
    seq: int
    speaker: str
    role: str
    label: str
    probabilities: dict[str, float]
    sentiment: float
    sentiment_label: str
    revision: int = 0
    confidence: float = 1.0  # the label's probability
    used: bool = True  # False: every part was ignored (a blank transcript): stored, but no turn for the rules

    def share(self, emotions: Sequence[str]) -> float:
        return sum(self.probabilities.get(e, 0.0) for e in emotions)


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)  # turns = "3" is a typo, not 3

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    role: str = "customer"
    severity: Severity = "warning"
    message: str | None = None
    clear_after: int = Field(1, ge=1, le=50)  # new turns of `role` without holding before the alert clears

    def describe(self) -> str:
        return self.message or self.name.replace("-", " ").replace("_", " ")

    def evidence(self, turns: Sequence[Turn]) -> list[Turn] | None:
        """The turns that make the rule hold now, or None if it does not."""
        raise NotImplementedError

    def measured(self, evidence: Sequence[Turn]) -> str:
        """What the rule measured on its ``evidence``, in words, for the alert ('anger+disgust
        0.21 -> 0.35 -> 0.62': a rising alert's evidence shows each turn's label, which need not be
        one of its emotions)."""
        raise NotImplementedError

    def counts(self, turn: Turn, speaker: str | None = None) -> bool:
        """Whether a new ``turn`` counts toward ``clear_after`` of an alert about ``speaker``'s turns:
        a turn of the role the rule reads, by that speaker (another customer's calm turns do not say
        this one recovered)."""
        return turn.role == self.role and (speaker is None or turn.speaker == speaker)

    def sustains(self, turns: Sequence[Turn], speaker: str | None) -> bool:
        """Whether an open alert of this rule, no longer holding, is still borne out by ``speaker``'s
        latest turn (a revision then does not clear it): only a rising rule's, whose speaker is still
        at its ``min_share``."""
        return False

    def sustained_by(self, turn: Turn) -> bool:
        """Whether ``turn``, arriving, still bears out an open alert of this rule that no longer holds
        (then it is no step toward ``clear_after``): only a rising rule's at its ``min_share``."""
        return False

    def _last(self, turns: Sequence[Turn], n: int) -> list[Turn] | None:
        """The last ``n`` turns of the role's latest speaker, oldest first (None: fewer), read from
        the end: a rule is judged after every batch of a call, and a long call has hundreds of turns.
        One speaker's: two speakers of one role (a diarizer's spk_0 and spk_1, both customers by the
        globs, or a conference call) are two people, whose turns a rising rule once mixed."""
        mine: list[Turn] = []
        speaker = None
        for t in reversed(turns):
            if t.role == self.role and (speaker is None or t.speaker == speaker):
                speaker = t.speaker
                mine.append(t)
                if len(mine) == n:
                    return mine[::-1]
        return None


class Rising(_Rule):
    kind: Literal["rising"]
    emotions: list[str] = Field(min_length=1)
    turns: int = Field(3, ge=2, le=50)
    min_share: float = Field(0.5, ge=0, le=1)

    def evidence(self, turns: Sequence[Turn]) -> list[Turn] | None:
        last = self._last(turns, self.turns)
        if last is None:
            return None
        shares = [t.share(self.emotions) for t in last]
        rising = all(b > a for a, b in zip(shares, shares[1:], strict=False))
        return last if rising and shares[-1] >= self.min_share else None

    def sustains(self, turns: Sequence[Turn], speaker: str | None) -> bool:
        """Anger that stopped rising at its height (0.89 -> 0.89 -> 0.76, "cancel my account") has not
        recovered: a supervisor's trial saw the critical alert clear as 'recovered' on the angriest
        turn of the call. Only a turn under ``min_share`` counts toward clearing."""
        for t in reversed(turns):
            if t.role == self.role and (speaker is None or t.speaker == speaker):
                return self.sustained_by(t)
        return False

    def sustained_by(self, turn: Turn) -> bool:
        return turn.share(self.emotions) >= self.min_share

    def measured(self, evidence: Sequence[Turn]) -> str:
        shares = " -> ".join(f"{t.share(self.emotions):.2f}" for t in evidence)
        # the emotions the model has (the shipped rules name three label sets' words for them)
        named = [e for e in self.emotions if any(e in t.probabilities for t in evidence)] or self.emotions
        return f"{'+'.join(named)} {shares} (rising, at least {self.min_share:g} at the end)"


class Streak(_Rule):
    kind: Literal["streak"]
    emotions: list[str] | None = None
    sentiment: Literal["negative"] | None = None
    turns: int = Field(3, ge=1, le=50)
    min_confidence: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _one_test(self) -> Streak:
        if (self.emotions is None) == (self.sentiment is None):
            raise ValueError("a streak rule names either emotions or sentiment = 'negative'")
        return self

    def evidence(self, turns: Sequence[Turn]) -> list[Turn] | None:
        last = self._last(turns, self.turns)
        if last is None:
            return None
        if self.emotions is not None:
            ok = all(t.label in self.emotions for t in last)
        else:
            ok = all(t.sentiment_label == self.sentiment for t in last)
        return last if ok and all(t.confidence >= self.min_confidence for t in last) else None

    def measured(self, evidence: Sequence[Turn]) -> str:
        what = ", ".join(f"{t.label} {t.confidence:.2f}" for t in evidence)
        return f"{what} (each at least {self.min_confidence:g})" if self.min_confidence else what


class Below(_Rule):
    kind: Literal["below"]
    threshold: float = Field(ge=-1, le=1)
    turns: int = Field(3, ge=1, le=50)

    def evidence(self, turns: Sequence[Turn]) -> list[Turn] | None:
        last = self._last(turns, self.turns)
        if last is None:
            return None
        return last if sum(t.sentiment for t in last) / len(last) < self.threshold else None

    def measured(self, evidence: Sequence[Turn]) -> str:
        mean = sum(t.sentiment for t in evidence) / len(evidence)
        shown = f"{mean:+.2f}" if abs(mean - self.threshold) >= 0.005 else f"{mean:+.3f}"  # not "-0.50 (below -0.50)"
        return f"mean sentiment {shown} (below {self.threshold:+.2f})"


class Reply(_Rule):
    kind: Literal["reply"]
    role: str = "agent"
    after: str = "customer"
    emotions: list[str] | None = None  # the reply's labels that count (None: a negative sentiment label)
    after_emotions: list[str] | None = None  # the same for the turn it answers
    within: int = Field(4, ge=2, le=50)
    min_confidence: float = Field(0.0, ge=0, le=1)

    def counts(self, turn: Turn, speaker: str | None = None) -> bool:
        """Either side's turns move the pair out of ``within`` (counting only the role's kept an
        alert open while the customer went on talking), but not another reply of ``role`` that
        counts itself (an agent still angry, after a customer who calmed down: not recovered)."""
        if turn.role == self.role:
            return not (_negative(turn, self.emotions) and turn.confidence >= self.min_confidence)
        return turn.role == self.after

    def evidence(self, turns: Sequence[Turn]) -> list[Turn] | None:
        recent = list(turns[-self.within :])
        for a, b in reversed(list(zip(recent, recent[1:], strict=False))):
            if (a.role, b.role) != (self.after, self.role) or min(a.confidence, b.confidence) < self.min_confidence:
                continue
            if _negative(a, self.after_emotions) and _negative(b, self.emotions):
                return [a, b]
        return None

    def measured(self, evidence: Sequence[Turn]) -> str:
        return ", then ".join(f"{t.role} {t.label} {t.confidence:.2f}" for t in evidence)


def _negative(turn: Turn, emotions: list[str] | None) -> bool:
    return turn.label in emotions if emotions is not None else turn.sentiment_label == "negative"


Rule = Annotated[Rising | Streak | Below | Reply, Field(discriminator="kind")]
KINDS = ("rising", "streak", "below", "reply")


class RuleBook(BaseModel):
    """A rules file: speaker roles and the rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roles: dict[str, list[str]] = Field(default_factory=lambda: {"agent": ["agent*"], "customer": ["*"]})
    rule: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> RuleBook:
        names = [r.name for r in self.rule]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rule names must be unique: {', '.join(twice)}")
        known = {*self.roles, "other"}
        for r in self.rule:
            for role in (r.role, getattr(r, "after", r.role)):
                if role not in known:
                    raise ValueError(f"rule {r.name}: role {role!r} is not in [roles] ({', '.join(sorted(known))})")
        return self

    def unread(self, labels: Sequence[str]) -> list[str]:
        """What a model of ``labels`` cannot read in these rules, in words: a rule's emotion that is a
        label but for its case or spaces ('Anger ', which counts as 0), and a rule none of whose
        emotions is a label (it can never hold). Other names are fine: the shipped rules list three
        label sets' (a supervisor's typo turned the critical rule off without a word)."""
        said = []
        known = {label.strip().lower(): label for label in labels}
        for r in self.rule:
            for field in ("emotions", "after_emotions"):
                names = getattr(r, field, None)
                if names is None:  # (no list: a negative sentiment label; an empty one never holds)
                    continue
                for name in names:
                    meant = known.get(name.strip().lower())
                    if meant is not None and meant != name:
                        said.append(
                            f"rule {r.name}: {field} {name!r} is no label of the model: did you mean {meant!r}?"
                        )
                if not any(name in labels for name in names):
                    said.append(
                        f"rule {r.name}: none of its {field} ({', '.join(map(repr, names))}) is a label of the model "
                        f"({', '.join(labels)}): it can never hold"
                    )
        return said

    def role_of(self, speaker: str) -> str:
        for role, globs in self.roles.items():
            if any(fnmatch.fnmatchcase(speaker.lower(), g.lower()) for g in globs):
                return role
        return "other"

    def is_agent(self, speaker: str) -> bool:
        """Whether ``speaker``'s role is ``agent``."""
        return self.role_of(speaker) == "agent"

    def judge(self, turns: Sequence[Turn]) -> dict[str, list[Turn]]:
        """Rule name -> its evidence, for every rule that holds on ``turns`` (in seq order)."""
        found = {}
        for rule in self.rule:
            evidence = rule.evidence(turns)
            if evidence:
                found[rule.name] = evidence
        return found

    def by_name(self, name: str) -> Rising | Streak | Below | Reply | None:
        return next((r for r in self.rule if r.name == name), None)


def load_rules(path: str | Path | None = None) -> RuleBook:
    """Read and check a rules file (None: the shipped default); a clear error names what is wrong."""
    path = Path(path) if path else DEFAULT_RULES
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"rules file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"rules file {path} is not valid TOML: {exc}") from exc
    try:
        return RuleBook.model_validate(raw)
    except ValidationError as exc:
        given = raw.get("rule")
        rules: list[Any] = given if isinstance(given, list) else []

        def where(loc: tuple[Any, ...]) -> str:
            # rule.2.below.threshold -> rule 'customer-sentiment-low' (the 3rd) threshold: by its name, as
            # a supervisor knows it, and without the kind pydantic's union tried
            if len(loc) >= 2 and loc[0] == "rule" and isinstance(loc[1], int):
                named = rules[loc[1]].get("name") if loc[1] < len(rules) and isinstance(rules[loc[1]], dict) else None
                rest = [str(x) for x in loc[2:] if x not in KINDS]
                head = f"rule {named!r} (the {_ordinal(loc[1] + 1)})" if named else f"the {_ordinal(loc[1] + 1)} rule"
                return " ".join([head, ".".join(rest)]).strip()
            return ".".join(str(x) for x in loc)

        problems = "; ".join(
            ": ".join(p for p in (where(tuple(e["loc"])), e["msg"].removeprefix("Value error, ")) if p)
            for e in exc.errors()[:5]
        )
        raise ConfigError(f"rules file {path}: {problems}") from exc


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
