"""A feeling the speaker names as the listener's is not the speaker's: "I understand your frustration."

The text models learned emotion from MELD's sitcom dialogue, where a line that names anger is
mostly an angry line. So they read the empathy statements contact centers train their agents to
make as the agent's own feeling: the shipped default 1.6.0 labels "I understand your
frustration." anger 0.62, "I completely understand why you're upset." anger 0.60 and "I understand
you're angry, and you have every right to be." anger 0.85, and the escalation rule
``agent-hostile-reply`` told a supervisor that the agent answered an upset customer with anger.

:func:`acknowledged_form` rewrites what names the listener's feeling into a neutral phrase before
the words are encoded: "your frustration" -> "your feelings", "you're (really) upset" -> "you're
feeling this way", "you must feel angry" -> "you must feel this way". Only second-person phrases
are touched, and only words for negative feelings: "You're making me angry!", "This is
frustrating!", "I'm so upset" and "You're annoying" (what the speaker feels, or says of the
listener's conduct) are left as they are. The words are English; another language matches
nothing.

The stream applies it to every transcript (``engine.acknowledgements = "neutral"``, the default;
``"off"`` leaves the words as written), and ``emostream evaluate --acknowledgements`` does the
same to a dataset. ``python -m engines.features.acknowledge measure --data-dir ../shared/data``
counts the lines of the datasets it changes (README: 'Agents' empathy statements').
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

#: what the stream and evaluate do with such phrases: "neutral" rewrites them, "off" leaves them
ACKNOWLEDGEMENTS = ("neutral", "off")

#: adjectives for a negative feeling a person has (not "annoying", "frustrating": those describe
#: what causes it, as in "you're annoying", which is the speaker's complaint)
_FEELING_ADJ = (
    "angry|upset|frustrated|annoyed|irritated|furious|livid|mad|cross|outraged|disappointed|"
    "unhappy|dissatisfied|fed up|worried|concerned|anxious|stressed|stressed out|scared|afraid|"
    "frightened|nervous|confused|sad|distressed|disgusted|hurt|offended"
)
#: nouns for the same feelings ("your frustration")
_FEELING_NOUN = (
    "frustrations?|anger|annoyance|irritation|disappointment|dissatisfaction|unhappiness|upset|"
    "worry|worries|concerns?|anxiety|stress|fears?|confusion|distress|disgust|outrage"
)
#: adjectives for a situation that causes such a feeling ("that must be so frustrating")
_SITUATION_ADJ = (
    "annoying|frustrating|irritating|upsetting|stressful|maddening|infuriating|aggravating|worrying|worrisome|"
    "disappointing|scary|frightening|confusing|exasperating|nerve-racking|nerve-wracking|unsettling|distressing|"
    "exhausting|infuriating"
)
#: words that may stand between the verb and the feeling ("you're understandably very upset")
_DEGREE = (
    r"(?:(?:so|very|really|quite|rather|pretty|extremely|incredibly|understandably|rightly|clearly|obviously|"
    r"naturally|justifiably|completely|totally|a bit|a little|a little bit|getting|becoming)\s+)*"
)

#: "you're", "you are", "you must be", "you've been" ... + (degree) + a feeling: the be-forms
_BE = re.compile(
    r"\b(you(?:['’]?re|\s+are|\s+were|['’]ve\s+been|\s+have\s+been|\s+must\s+be|\s+might\s+be|\s+may\s+be|"
    r"\s+would\s+be|['’]d\s+be|\s+seem(?:\s+to\s+be)?|\s+sound|\s+look))\s+" + _DEGREE + rf"(?:{_FEELING_ADJ})\b",
    re.IGNORECASE,
)
#: "you feel", "you must feel", "you're feeling" + (degree) + a feeling
_FEEL = re.compile(
    r"\b(you(?:\s+must|\s+might|\s+may|\s+would|['’]d|['’]?re|\s+are)?\s+(?:feel|feeling|felt))\s+"
    + _DEGREE
    + rf"(?:{_FEELING_ADJ})\b",
    re.IGNORECASE,
)
#: "your (understandable) frustration"
_YOUR = re.compile(
    r"\b(your)\s+(?:(?:understandable|obvious|complete|total|growing|frustration\s+and|anger\s+and)\s+)*"
    rf"(?:{_FEELING_NOUN})\b",
    re.IGNORECASE,
)


#: a feeling the speaker would have, not has: "I'd be angry too", "anyone would be frustrated",
#: "I would be just as irritated as you are", "that would make me angry too"
_WOULD = re.compile(
    r"\b((?:would|['’]d)\s+(?:(?:be|feel|get)\s+(?:just\s+)?(?:as\s+)?|make\s+(?:me|anyone|anybody|everyone|"
    r"someone|people|you)\s+(?:feel\s+)?))" + _DEGREE + rf"(?:{_FEELING_ADJ})(?:\s+as\s+you(?:['’]?re|\s+are)?)?\b",
    re.IGNORECASE,
)
#: the situation as the listener must find it: "that must be so frustrating", "it must have been scary"
_MUST = re.compile(
    r"\b((?:that|this|it)(?:\s+must|\s+has\s+to|['’]s\s+got\s+to)\s+(?:be|have\s+been))\s+"
    + _DEGREE
    + rf"(?:{_SITUATION_ADJ})\b",
    re.IGNORECASE,
)
#: "I understand how frustrating this is", "I can hear how worried you are"
_HOW = re.compile(
    r"\b((?:understand|know|imagine|see|appreciate|get|realize|realise|hear)\s+how)\s+"
    + _DEGREE
    + rf"(?:(?:{_SITUATION_ADJ})|(?:{_FEELING_ADJ})\s+you(?:['’]?re|\s+are|\s+must\s+be|\s+feel|\s+were|"
    r"['’]ve\s+been|\s+have\s+been))\b",
    re.IGNORECASE,
)
#: "a very irritating experience for you"
_FOR_YOU = re.compile(r"\b" + _DEGREE + rf"(?:{_SITUATION_ADJ})((?:\s+\w+){{0,2}}\s+for\s+you)\b", re.IGNORECASE)


def _would(m: re.Match[str]) -> str:
    verb = m.group(1).split()  # ["would", "be"] or ["would", "make", "me", ("feel")]
    return " ".join(verb[:3] + ["feel the same"]) if verb[1].lower() == "make" else f"{verb[0]} feel the same"


def _be(m: re.Match[str]) -> str:
    verb = m.group(1)
    if re.search(r"(seem|sound|look)$", verb, re.IGNORECASE):  # "you sound upset"
        return f"{verb} like you feel this way"
    return f"{verb} feeling this way"  # "you're upset", "you seem to be upset"


_CUES = ("you", "would", "'d", "’d", "must", "how", "got to", "has to")  # one of them is in every pattern
_SITUATION_END = tuple(_SITUATION_ADJ.split("|"))


def acknowledged_form(text: str) -> str:
    """``text`` with each phrase that names the listener's negative feeling made neutral (see
    the module docstring); the text itself where it names none."""
    low = text.lower()
    if not any(w in low for w in _CUES):  # most lines: no regex runs
        return text
    out = _WOULD.sub(_would, text)
    out = _MUST.sub(lambda m: f"{m.group(1)} difficult", out)
    out = _HOW.sub(
        lambda m: (
            f"{m.group(1)} difficult" if m.group(0).lower().endswith(_SITUATION_END) else f"{m.group(1)} you feel"
        ),
        out,
    )
    out = _FOR_YOU.sub(lambda m: f"difficult{m.group(1)}", out)
    out = _YOUR.sub(lambda m: f"{m.group(1)} feelings", out)
    out = _FEEL.sub(lambda m: f"{m.group(1)} this way", out)
    return _BE.sub(_be, out)


def acknowledged(texts: Sequence[str], mode: str = "neutral") -> list[str]:
    """:func:`acknowledged_form` of each text for ``mode`` "neutral", the texts as they are for "off"."""
    if mode not in ACKNOWLEDGEMENTS:
        raise ValueError(f"acknowledgements {mode!r}: one of {', '.join(ACKNOWLEDGEMENTS)}")
    return list(texts) if mode == "off" else [acknowledged_form(t) for t in texts]


def _measure(data_dir: str, show: int) -> int:
    from engines.datasets import load_dataset

    for name in ("meld", "emorynlp", "iemocap-text"):
        for split in ("train", "dev"):
            try:
                dialogues = load_dataset(name, data_dir, split=split)
            except Exception as exc:  # noqa: BLE001 - a dataset not there is reported, not fatal
                print(f"{name} {split}: not read ({exc})")
                continue
            lines = [(u.text, d.labels[u.emotion]) for d in dialogues for u in d.utterances if u.text]
            changed = [(t, lab) for t, lab in lines if acknowledged_form(t) != t]
            print(f"{name} {split}: {len(changed)} of {len(lines)} lines changed")
            for t, lab in changed[:show]:
                print(f"    [{lab}] {t!r} -> {acknowledged_form(t)!r}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.features.acknowledge", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="count the datasets' lines that acknowledged_form changes, and show some")
    m.add_argument("--data-dir", required=True, help="the datasets' folder (../shared/data)")
    m.add_argument("--show", type=int, default=10, help="changed lines to print per dataset and split")
    f = sub.add_parser("form", help="print each line of standard input as the stream reads it")
    f.add_argument("--mode", choices=ACKNOWLEDGEMENTS, default="neutral", help="what to do with acknowledged feelings")
    ns = p.parse_args(argv)
    if ns.command == "measure":
        return _measure(ns.data_dir, ns.show)
    for line in sys.stdin:
        print(acknowledged([line.rstrip("\n")], ns.mode)[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
