"""A feeling the speaker names as the listener's is not the speaker's: "I understand your frustration."
An agent's apology is a courtesy, not the agent's sadness: "I'm so sorry for the wait."

The text models learned emotion from MELD's sitcom dialogue, where a line that names anger is
mostly an angry line. So they read the empathy statements contact centers train their agents to
make as the agent's own feeling: the shipped default 1.6.0 labels "I understand your
frustration." anger 0.62, "I completely understand why you're upset." anger 0.60 and "I understand
you're angry, and you have every right to be." anger 0.85, and the escalation rule
``agent-hostile-reply`` told a supervisor that the agent answered an upset customer with anger.

:func:`acknowledged_form` rewrites what names the listener's feeling into a neutral phrase before
the words are encoded: "your frustration" -> "your feelings", "you're (really) upset" -> "you're
feeling this way", "I'd be angry too" -> "I'd feel the same too", "that must be so annoying" ->
"that must be difficult". Only words for negative feelings are touched, and only where the feeling
is the listener's or a hypothetical one of the speaker's ("I'd be angry too", "anyone would be
frustrated", not "I would be very disappointed if ..." without an agreement such as "too"): "You're
making me angry!", "This is frustrating!", "I'm so upset" and "You're annoying" (what the speaker
feels, or says of the listener's conduct) are left as they are. Questions get no rule of their
own: "Are you mad at me?" is left as it is by its word order, "You're upset?" is rewritten. The
words are English; another language matches nothing.

Apologies (:data:`_HOW_SORRY`, :data:`_SAY_SORRY`, :data:`_AM_SORRY`, :data:`_APOLOGISE`,
:data:`_APOLOGIES`, :data:`_SORRY`) are read as
acknowledgements of what they were for: "I'm so sorry for the long wait" -> "I acknowledge the long
wait", "we apologise for the outage" -> "we acknowledge the outage", "sorry to keep you waiting" ->
"I acknowledge having to keep you waiting", "My apologies, let me fix that" -> "I acknowledge, let
me fix that". In MELD a line that says sorry is mostly a sad one (88 of the 190 train lines the
apology patterns change), and 1.6.0 read 36 of 60 hand-written agents' apologies as sadness, 0 to 3
since (README: 'Agents' apologies'). Left as written: "I'm not sorry", "no need to apologize",
"don't be (so) sorry", "I feel sorry for ...", "he was so sorry", "they were sorry", "better safe
than sorry", "why should I apologize", "Sorry doesn't pay my bills", "my apology was sincere", and
"Sorry?", "I'm sorry?", "sorry, what was that", "sorry come again", which ask for a repeat. A
customer's apology is often the speaker's own feeling ("I'm sorry, my husband passed away"): the
stream's default leaves customers' lines as written.

The stream applies it to the agents' transcripts (``engine.acknowledgements = "agents"``, the
default: speakers the escalation rules' ``[roles]`` call agents; ``"all"``: every speaker's;
``"off"``: none), since a customer who says "You don't understand how frustrating this is!" speaks
of their own feeling. ``emostream evaluate --acknowledgements`` does the same to a dataset, whose
speakers are agents by :data:`AGENT_GLOBS` (none of MELD's, EmoryNLP's or IEMOCAP's are; ``all``
rewrites every line). A front end that sends its own text vectors (``embedding``) instead of the
transcript is not rewritten: it can call :func:`acknowledged_form` itself. Training reads the
datasets as written. ``python -m engines.features.acknowledge measure --data-dir ../shared/data``
counts the datasets' lines it would change for every speaker (README: 'Agents' empathy
statements').
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import sys
from collections.abc import Callable, Sequence

from engines.features.text import normalise_text

#: whose transcripts the stream and evaluate rewrite: the agents' (default), every speaker's, nobody's
ACKNOWLEDGEMENTS = ("agents", "all", "off")
#: speakers evaluate counts as agents (streams/escalation.toml's [roles] agent, which the stream uses)
AGENT_GLOBS = ("agent*", "rep", "rep[!a-z]*", "representative*", "operator*")

#: adjectives for a negative feeling a person has (not "annoying", "frustrating": those describe
#: what causes it, as in "you're annoying", which is the speaker's complaint)
_FEELING_ADJ = (
    "angry|upset|frustrated|annoyed|irritated|furious|livid|cross|outraged|disappointed|"
    "unhappy|dissatisfied|fed up|worried|concerned|anxious|stressed|stressed out|scared|afraid|"
    "frightened|nervous|confused|sad|distressed|disgusted|hurt|offended"
)
#: nouns for the same feelings ("your frustration"; not "concern": "thank you for your concern")
_FEELING_NOUN = (
    "frustrations?|anger|annoyance|irritation|disappointment|dissatisfaction|unhappiness|upset|"
    "worry|worries|anxiety|stress|fears?|confusion|distress|disgust|outrage"
)
#: what may follow such a noun where it is no feeling ("your upset stomach", "your stress test")
_NOT_A_FEELING = r"(?!\s+(?:stomach|tummy|test|tests|level|levels|ball|balls|fracture|management|incontinence))"
#: adjectives for a situation that causes such a feeling ("that must be so frustrating")
_SITUATION_ADJ = (
    "annoying|frustrating|irritating|upsetting|stressful|maddening|infuriating|aggravating|worrying|worrisome|"
    "disappointing|scary|frightening|confusing|exasperating|nerve-racking|nerve-wracking|unsettling|distressing|"
    "exhausting"
)
#: words that may stand between the verb and the feeling ("you're understandably very upset")
_DEGREE = (
    r"(?:(?:so|very|really|quite|rather|pretty|extremely|incredibly|understandably|rightly|clearly|obviously|"
    r"naturally|justifiably|completely|totally|a bit|a little|a little bit|getting|becoming)\s+)*"
)


def _then_feeling(lead: str, feeling: str, tail: str = "") -> re.Pattern[str]:
    """``lead`` (group 1: what the rewrite keeps), the degree words, one of ``feeling``, ``tail``, as
    whole words, on text as the encoder reads it (apostrophes folded to "'")."""
    return re.compile(rf"\b{lead}\s+{_DEGREE}(?:{feeling}){tail}\b", re.IGNORECASE)


#: "you're", "you are", "you must be", "you've been" ... + (degree) + a feeling: the be-forms
_BE = _then_feeling(
    r"(you(?:'?re|\s+are|\s+were|'?ve\s+been|\s+have\s+been|\s+must\s+be|\s+might\s+be|\s+may\s+be|"
    r"\s+would\s+be|'?d\s+be|\s+seem(?:\s+to\s+be)?|\s+sound|\s+look))",
    _FEELING_ADJ,
)
#: "you feel", "you must feel", "you're feeling" + (degree) + a feeling
_FEEL = _then_feeling(
    r"(you(?:\s+must|\s+might|\s+may|\s+would|'?d|'?re|\s+are)?\s+(?:feel|feeling|felt))", _FEELING_ADJ
)
#: "your (understandable) frustration"
_YOUR = re.compile(
    r"\b(your)\s+(?:(?:understandable|obvious|complete|total|growing|frustration\s+and|anger\s+and)\s+)*"
    rf"(?:{_FEELING_NOUN})\b" + _NOT_A_FEELING,
    re.IGNORECASE,
)


#: a feeling one would have, said to agree: "I'd be angry too", "I would be just as irritated as you
#: are", "anyone would be frustrated", "that would make me angry too" (not "I would be very
#: disappointed if this isn't fixed", a warning, nor "he'd be worried": another's feeling)
_WOULD = _then_feeling(
    r"((?:I\s+would|I'?d)(?=[^.!?;]{0,150}?\b(?:too|as\s+well|also|myself|your\s+(?:shoes|position|place)|were\s+you|"
    r"as\s+you)\b)|(?:anyone|anybody|everyone|everybody|most\s+people|any\s+of\s+us)\s+would|(?:that|this|it)\s+would)"
    r"\s+(?:(?:be|feel|get)(?:\s+just)?(?:\s+as)?|(make\s+(?:me|anyone|anybody|everyone|someone|people))(?:\s+feel)?)",
    _FEELING_ADJ,
    r"(?:\s+as\s+you(?:'?re|\s+are|\s+were|\s+feel|\s+do)?)?",
)
#: the situation as the listener must find it: "that must be so frustrating", "it must have been scary"
_MUST = _then_feeling(r"((?:that|this|it)(?:\s+must|\s+has\s+to|'s\s+got\s+to)\s+(?:be|have\s+been))", _SITUATION_ADJ)
#: "I understand how frustrating this is", "I can hear how worried you are": said by "I" (not "you
#: don't understand how frustrating this is!", a customer's own)
_HOW = _then_feeling(
    r"(I(?:\s+(?:can|could|do|only|really|completely|totally|fully|truly|just|definitely|absolutely))*\s+"
    r"(?:understand|know|imagine|see|appreciate|get|realize|realise|hear)\s+how)",
    rf"{_SITUATION_ADJ}|(?:{_FEELING_ADJ})\s+you(?:'?re|\s+are|\s+must\s+be|\s+feel|\s+were|'ve\s+been|\s+have\s+been)",
)
#: "you have every right to be upset", "you're right to feel angry", "it's completely understandable
#: to be frustrated": the listener's feeling, granted
_RIGHT = _then_feeling(
    r"((?:you(?:'?ve|\s+have)(?:\s+got)?\s+(?:every|a|all\s+the)\s+right|you(?:'?re|\s+are)\s+(?:(?:absolutely|completely|totally|quite|so|perfectly)\s+)?(?:right|entitled)|"
    r"(?:it'?s|it\s+is|that'?s|that\s+is)\s+(?:(?:completely|totally|perfectly|only|very|so)\s+)?"
    r"(?:understandable|natural|normal|fair|reasonable)(?:\s+for\s+you)?)\s+to)\s+(?:be|feel)",
    _FEELING_ADJ,
)
#: "a very irritating experience for you" (no degree words before it: a run of them would be
#: scanned again from every word, quadratic in a 5000-character "so so so ...")
_FOR_YOU = re.compile(rf"\b(?:{_SITUATION_ADJ})((?:\s+\w+){{0,2}}\s+for\s+you)\b", re.IGNORECASE)


#: words that may stand in an apology ("I'm (so very) sorry", "I (do sincerely) apologise")
_SORRY_DEGREE = (
    r"(?:(?:so|very|really|truly|terribly|deeply|sincerely|extremely|awfully|genuinely|incredibly|profoundly|"
    r"most|again|also|just|still|honestly|completely|ever)\s+)*"
)
#: what may follow "sorry to" and keep its verb ("sorry to keep you waiting"): not "sorry to hear",
#: "apologise to you", "sorry to everyone"
_NOT_A_VERB = (
    r"hear|learn|you|everyone|everybody|anyone|all|the|him|her|them|us|me|our|your|my|each|both|any|those|these"
)
#: what an apology is for, dropped with it ("sorry for the wait" -> "I acknowledge the wait"); "sorry
#: to keep you waiting" keeps its verb (group "to": "I acknowledge having to keep you waiting"; "sorry
#: to have kept you", group "have": "I acknowledge having kept you")
_FOR = (
    r"(?:\s+to\s+(?:you|everyone|everybody|all\s+of\s+you|(?:all\s+)?our\s+customers))?"
    r"(?:\s+(?:again|once\s+again))?(?:\s+(?:for|about|to\s+hear(?:\s+about)?|to\s+learn(?:\s+about)?|regarding|over)\b"
    rf"|(?P<to>\s+to(?P<have>\s+have)?)(?=\s+(?!(?:{_NOT_A_VERB})\b)[a-z]))?"
)
#: "sorry" as the thing talked of, not said ("Sorry doesn't pay my bills", "my apology was sincere")
_SAID_OF = (
    r"(?!\s+(?:doesn'?t|does|don'?t|do|is|isn'?t|was|wasn'?t|were|are|aren'?t|won'?t|will|would|means?|seems|"
    r"sounds|ain'?t|letters?|credits?|notes?|emails?|calls?)\b)"
)
#: "I'm so sorry (for)", "we are truly sorry (to hear)" (not "I'm not sorry", "I feel sorry for",
#: "I'm sorry?": "pardon?"; "were" is no "we're")
_AM_SORRY = re.compile(
    rf"\b(?:(I)(?:'?m|\s+am)|(we)(?:'re|\s+are))\s+{_SORRY_DEGREE}sorry\b(?!\s*\?){_FOR}", re.IGNORECASE
)
#: "I (do sincerely) apologise (for)", "we'd like to apologize", "let me apologize" (not "I'm not
#: going to apologize", "no need to apologize", "why should I apologize")
_APOLOGISE = re.compile(
    r"(?<!should )(?<!would )(?<!could )(?<!shall )(?<!must )(?<!why )(?<!why do )(?<!why did )"
    r"\b(I|we|let\s+me|allow\s+me\s+to)(?:'d\s+like\s+to)?(?:\s+(?:do|really|sincerely|truly|deeply|genuinely|"
    r"must|can\s+only|want\s+to|wanted\s+to|would\s+like\s+to|'d\s+like\s+to|again|also|just|first|profusely))*\s+"
    rf"apologi[sz]e(?:\s+(?:again|once\s+again|sincerely|profusely|unreservedly))*\b(?!\s*\?){_FOR}",
    re.IGNORECASE,
)
#: "(please accept) my (sincere) apologies (for)", "our apologies", "apologies for the wait", "and
#: apologies for the delay" (not "my apology was sincere", "apologies don't fix anything")
_APOLOGIES = re.compile(
    r"(?:\b(?:please\s+)?accept\s+)?(?:\b(my|our)\s+|^|(?<=[.!?;,]\s)|(?<=\band\s))"
    rf"(?:(?:sincere|sincerest|deepest|deep|humble|heartfelt|profound|genuine)\s+)*apolog(?:y|ies)\b{_SAID_OF}{_FOR}",
    re.IGNORECASE,
)
#: a sentence's own "sorry (for)" ("Sorry for the wait", "oh sorry about that", "Sorry, let me
#: check"; not "Sorry?", "sorry, what was that", "sorry come again", which ask for a repeat, nor "Sorry
#: doesn't pay my bills", "you'll be so sorry", "don't be so sorry")
_SORRY = re.compile(
    r"(^|[.!?;:,]\s*|\b(?:oh|okay|ok|well|and|yeah|yes|no|ah|um|uh)[,]?\s+)"
    rf"{_SORRY_DEGREE}sorry(?:[,!.]?\s+sorry)*\b(?!\s*\?|[,]?\s+(?:what\b|come\s+again|say\s+(?:that|it)\s+again))"
    rf"{_SAID_OF}{_FOR}",
    re.IGNORECASE,
)
#: "I can't tell you how sorry I am (for)", "you don't know how sorry we are": the whole phrase
_HOW_SORRY = re.compile(
    r"(?:\b(?:I\s+(?:can'?t|cannot)|you\s+(?:don'?t|can'?t|cannot|won'?t)(?:\s+even)?)\s+(?:tell\s+you|say|know|"
    rf"imagine|believe)\s+)?\bhow\s+{_SORRY_DEGREE}sorry\s+(I|we)(?:'m|'re|\s+am|\s+are)\b{_FOR}",
    re.IGNORECASE,
)
#: "I want to say sorry (for)", "we'd like to say sorry", "I just wanted to say sorry"
_SAY_SORRY = re.compile(
    r"\b(I|we)(?:'d\s+like\s+to|(?:\s+just)?\s+(?:want|wanted|would\s+like|need|have)\s+to)\s+say\s+"
    rf"{_SORRY_DEGREE}sorry\b(?!\s*\?){_FOR}",
    re.IGNORECASE,
)
#: what rewrites an apology (the patterns above look only where one of these is)
_APOLOGY_CUES = ("sorry", "apolog")


_ACKNOWLEDGE = "acknowledge"  # what an apology is read as: "I'm sorry for the wait" -> "I acknowledge the wait"


def _apology(m: re.Match[str], subject: str = "I") -> str:
    """An apology (:data:`_AM_SORRY`, :data:`_APOLOGISE`, :data:`_APOLOGIES`, :data:`_SORRY`) as an
    acknowledgement: "I'm so sorry for" -> "I acknowledge", "our apologies" -> "we acknowledge",
    "sorry to keep" -> "I acknowledge having to keep", "sorry to have kept" -> "I acknowledge having kept"."""
    said = f"{'we' if subject.lower() in ('we', 'our') else 'I'} {_ACKNOWLEDGE}"
    if m.group("have"):
        return f"{said} having"
    return f"{said} having to" if m.group("to") else said


def _would(m: re.Match[str]) -> str:
    subject, make = m.group(1), m.group(2)  # "I'd" / "anyone would" / "that would", and "make me" or None
    return f"{subject} {make} feel the same" if make else f"{subject} feel the same"


def _be(m: re.Match[str]) -> str:
    verb = m.group(1)
    if re.search(r"(seem|sound|look)$", verb, re.IGNORECASE):  # "you sound upset"
        return f"{verb} like you feel this way"
    return f"{verb} feeling this way"  # "you're upset", "you seem to be upset"


READ_CHARS = 2000  # what is rewritten of a longer text: past the encoder's reach, and 2-18 ms at most at 5000
#: one is in every pattern
_CUES = ("you", "would", "'d", "id ", "must", "how", "got to", "has to", "to be", "to feel", *_APOLOGY_CUES)
#: apostrophe look-alikes beyond those normalise_text folds (as engines/features/text.py asr_form reads them)
_APOSTROPHES = str.maketrans({c: "'" for c in "`\u00b4\u2032\uff07\u02bc"})
_SITUATION_END = tuple(_SITUATION_ADJ.split("|"))


def acknowledged_form(text: str, apologies: bool = True) -> str:
    """``text`` with each phrase that names the listener's negative feeling made neutral, and
    (``apologies``) each apology made an acknowledgement (see the module docstring), in the form the
    text encoder reads (normalise_text: typographic and mojibake apostrophes folded); the text itself
    where it has neither."""
    low = text.lower()
    if not any(w in low for w in _CUES):  # most lines: no regex runs
        return text
    if len(text) > READ_CHARS:  # the encoder reads its first 128 tokens, some 500-700 characters
        return acknowledged_form(text[:READ_CHARS], apologies) + text[READ_CHARS:]
    read = normalise_text(text).translate(_APOSTROPHES)
    out = _WOULD.sub(_would, read)
    out = _MUST.sub(lambda m: f"{m.group(1)} difficult", out)
    out = _HOW.sub(
        lambda m: (
            f"{m.group(1)} difficult" if m.group(0).lower().endswith(_SITUATION_END) else f"{m.group(1)} you feel"
        ),
        out,
    )
    out = _FOR_YOU.sub(lambda m: f"difficult{m.group(1)}", out)
    out = _RIGHT.sub(lambda m: f"{m.group(1)} feel this way", out)
    out = _YOUR.sub(lambda m: f"{m.group(1)} feelings", out)
    out = _FEEL.sub(lambda m: f"{m.group(1)} this way", out)
    out = _BE.sub(_be, out)
    if apologies and any(w in low for w in _APOLOGY_CUES):
        out = _HOW_SORRY.sub(lambda m: _apology(m, m.group(1)), out)
        out = _SAY_SORRY.sub(lambda m: _apology(m, m.group(1)), out)
        out = _AM_SORRY.sub(lambda m: _apology(m, m.group(2) or "I"), out)
        out = _APOLOGISE.sub(lambda m: _apology(m, m.group(1)), out)
        out = _APOLOGIES.sub(lambda m: _apology(m, m.group(1) or "I"), out)
        out = _SORRY.sub(lambda m: m.group(1) + _apology(m), out)
    return out if out != read else text


def is_agent(speaker: str) -> bool:
    """Whether ``speaker`` is an agent by :data:`AGENT_GLOBS` (case-insensitive)."""
    return any(fnmatch.fnmatchcase(speaker.lower(), g) for g in AGENT_GLOBS)


def acknowledged(
    texts: Sequence[str],
    mode: str = "all",
    speakers: Sequence[str] | None = None,
    agent: Callable[[str], bool] = is_agent,
) -> list[str]:
    """The texts as the text model reads them with ``engine.acknowledgements = mode``:
    :func:`acknowledged_form` of every text ("all"), of the texts whose speaker ``agent`` calls an
    agent ("agents": ``speakers`` required, one per text), or of none ("off")."""
    if mode not in ACKNOWLEDGEMENTS:
        raise ValueError(f"acknowledgements {mode!r}: one of {', '.join(ACKNOWLEDGEMENTS)}")
    if mode == "off":
        return list(texts)
    if mode == "all":
        return [acknowledged_form(t) for t in texts]
    if speakers is None or len(speakers) != len(texts):
        raise ValueError("acknowledgements 'agents' needs each text's speaker")
    return [acknowledged_form(t) if agent(s) else t for t, s in zip(texts, speakers, strict=True)]


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
            feeling = sum(acknowledged_form(t, apologies=False) != t for t, _ in changed)
            print(f"{name} {split}: {len(changed)} of {len(lines)} lines changed ({feeling} naming the listener's "
                  f"feeling, {len(changed) - feeling} only apologising)")  # fmt: skip
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
    f.add_argument("--mode", choices=("all", "off"), default="all", help="all: rewrite every line; off: as written")
    ns = p.parse_args(argv)
    if ns.command == "measure":
        return _measure(ns.data_dir, ns.show)
    for line in sys.stdin:
        print(acknowledged([line.rstrip("\n")], ns.mode)[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
