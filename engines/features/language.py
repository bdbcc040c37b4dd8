"""Is the transcript in the language the text model reads? A language check before the encoder.

The shipped text encoders learnt English (all-MiniLM-L6-v2, tuned on MELD): a transcript in
another language is labelled all the same, and confidently (a Spanish "Estoy muy enfadado..." came
out neutral 0.90, a Chinese line joy 0.33). :class:`LanguageCheck` asks py3langid (a naive Bayes
language identifier over byte n-grams, BSD-3-Clause, its model inside the PyPI wheel) how likely
the transcript is in the model's language, and judges only transcripts whose distinct words hold
at least :data:`MIN_LETTERS` letters (a short line, "Okay.", "Gracias", a name, "haha haha haha
haha", says too little), by their first :data:`JUDGED_CHARS` characters (a little more than the
encoder reads: its first 128 tokens). A shorter line is judged by its script alone: "我很生气",
"Я злюсь" or "네." is written in a script the English model cannot read at all (a short line in
another language written in Latin letters, "Je suis fâché", is still read as English).

A transcript whose probability of being in the model's language is below
:data:`MAX_PROBABILITY` is judged another language. Measured (``python -m engines.features.language
measure --data-dir ../shared/data``): of the 17,469 English lines of MELD, EmoryNLP and IEMOCAP that
are judged, none; of the call-center lines in 17 languages in
``tests/fixtures/other-languages.jsonl``, all but the ones listed there as missed. The stream then
does not use such words (``engine.language_check = "drop"``, the default: the label comes from the
voice, or from the model's prior alone, and the event's ``ignored`` says why) or uses them and says
so in the event's ``suspect`` (``"warn"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import threading
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: transcripts whose distinct words hold fewer letters than this are not judged ("haha haha haha
#: haha" says as little as "haha")
MIN_LETTERS = 15
#: characters judged: the start of a transcript, about what the text encoder reads (128 tokens)
JUDGED_CHARS = 1000
#: py3langid's labels for no language at all (random characters, codes): not judged either
NO_LANGUAGE = ("zxx", "und")
#: a transcript whose probability of being in the model's language is below this is another language
MAX_PROBABILITY = 0.001
#: how the event's ``ignored["text"]`` or ``suspect["text"]`` begins for such a transcript
OTHER_LANGUAGE = "other language? "
#: the language each text encoder kind reads (features.json "text.kind"); a kind not listed
#: (e5-multilingual) is not checked
READS = {"minilm": "en", "minilm-tuned": "en"}
#: names for the event's words (py3langid's ISO 639 codes otherwise)
NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "pl": "Polish", "ru": "Russian", "uk": "Ukrainian", "tr": "Turkish", "ar": "Arabic",
    "he": "Hebrew", "hi": "Hindi", "bn": "Bengali", "ur": "Urdu", "fa": "Persian", "zh": "Chinese",
    "ja": "Japanese", "ko": "Korean", "vi": "Vietnamese", "th": "Thai", "id": "Indonesian", "ms": "Malay",
    "tl": "Tagalog", "sv": "Swedish", "no": "Norwegian", "nb": "Norwegian", "nn": "Norwegian", "da": "Danish",
    "fi": "Finnish", "cs": "Czech", "sk": "Slovak", "hu": "Hungarian", "ro": "Romanian", "el": "Greek",
    "bg": "Bulgarian", "sr": "Serbian", "hr": "Croatian", "bs": "Bosnian", "sl": "Slovenian", "ca": "Catalan",
    "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "pa": "Punjabi", "gu": "Gujarati", "mr": "Marathi",
    "ht": "Haitian Creole", "so": "Somali", "am": "Amharic", "yo": "Yoruba", "zu": "Zulu", "lg": "Ganda",
    "fo": "Faroese", "st": "Sotho", "wuu": "Wu Chinese", "yue": "Cantonese", "kab": "Kabyle", "mg": "Malagasy",
    "pcm": "Nigerian Pidgin", "af": "Afrikaans", "et": "Estonian", "lv": "Latvian", "lt": "Lithuanian",
    "is": "Icelandic", "ga": "Irish", "cy": "Welsh", "eu": "Basque", "gl": "Galician", "sq": "Albanian",
    "mk": "Macedonian", "be": "Belarusian", "ka": "Georgian", "hy": "Armenian", "az": "Azerbaijani",
    "kk": "Kazakh", "uz": "Uzbek", "ne": "Nepali", "si": "Sinhala", "km": "Khmer", "lo": "Lao", "my": "Burmese",
    "ml": "Malayalam", "kn": "Kannada", "jv": "Javanese", "ha": "Hausa", "ig": "Igbo", "xh": "Xhosa",
}  # fmt: skip


#: the script each model language is written in (the first word of its letters' Unicode names)
SCRIPTS = {"en": "LATIN"}
SCRIPT_NAMES = {"CJK": "Han"}  # the Unicode names' first word where it is not the script's name
#: a line too short to judge by its words is judged by its script from this many letters on ...
MIN_SCRIPT_LETTERS = 1
#: ... when at least this share of them are of scripts other than the model's
SCRIPT_SHARE = 0.8


def script_of(ch: str) -> str:
    """The script of a letter, by the first word of its Unicode name: LATIN, CYRILLIC, ARABIC, CJK
    (Han), HIRAGANA, HANGUL, DEVANAGARI, ... ('UNKNOWN' for a letter without a name)."""
    words = unicodedata.name(ch, "UNKNOWN").split(" ")
    if words[0] in ("FULLWIDTH", "HALFWIDTH") and len(words) > 1:  # "ＯＫ" from a CJK input method is Latin
        return words[1]
    return words[0]


def language_name(code: str) -> str:
    return NAMES.get(code, code)


def letters(text: str) -> int:
    """Letters (Unicode category L*) in ``text``: what a language can be told from."""
    return sum(1 for ch in text if unicodedata.category(ch).startswith("L"))


def distinct_letters(text: str) -> int:
    """Letters of ``text``'s distinct words (case folded): a word said again tells no more."""
    return letters(" ".join(dict.fromkeys(_WORD.findall(text.casefold()))))


_WORD = re.compile(r"\w+")


class LanguageCheck:
    """``verdicts(texts)``: for each transcript, None (the model's language, or too short to tell)
    or why it reads as another language (:data:`OTHER_LANGUAGE` ...)."""

    def __init__(self, reads: str = "en") -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        if reads not in self._ident.labels:
            raise ValueError(f"py3langid does not know the language {reads!r}")
        self.reads = reads
        self.script = SCRIPTS.get(reads)  # the script its language is written in (None: short lines not judged)
        self._lock = threading.Lock()  # cheap (40-80 us a transcript); the identifier is not documented thread-safe

    def probabilities(self, text: str) -> tuple[str, float, float]:
        """(the likeliest language, its probability, the probability of the model's language)."""
        with self._lock:
            ranked = self._ident.rank(text)
        return ranked[0][0], float(ranked[0][1]), float(dict(ranked).get(self.reads, 0.0))

    def verdict(self, text: str) -> str | None:
        text = text[:JUDGED_CHARS]  # a little more than the encoder reads; a transcript's length costs nothing more
        if distinct_letters(text) < MIN_LETTERS:
            return self._script_verdict(text)
        with self._lock:
            if self._ident.classify(text)[0] == self.reads:  # most lines: half the cost of ranking them all
                return None
        best, _, own = self.probabilities(text)
        if own >= MAX_PROBABILITY or best in NO_LANGUAGE:  # (best is not self.reads: classify said so)
            return None
        return (
            f"{OTHER_LANGUAGE}the words read as {language_name(best)} ({best}), "
            f"{language_name(self.reads)} at p {own:.0e}: the model reads {language_name(self.reads)}"
        )

    def _script_verdict(self, text: str) -> str | None:
        """A line too short to judge by its words ("我很生气", "Я злюсь"), judged by its script: one
        whose letters are mostly of another script than the model's language is written in is
        another language, however short (the model cannot read it at all)."""
        if self.script is None or (self.script == "LATIN" and text.isascii()):  # most lines: nothing to count
            return None
        counts: dict[str, int] = {}
        for ch in text:
            if unicodedata.category(ch).startswith("L"):
                name = script_of(ch)
                counts[name] = counts.get(name, 0) + 1
        total = sum(counts.values())
        if total < MIN_SCRIPT_LETTERS:
            return None
        foreign = {k: n for k, n in counts.items() if k != self.script}
        if sum(foreign.values()) < SCRIPT_SHARE * total:
            return None
        script = max(foreign.items(), key=lambda kv: kv[1])[0]  # the most common (Japanese: Han or Hiragana)
        return (
            f"{OTHER_LANGUAGE}the words are written in {SCRIPT_NAMES.get(script, script.title())} script: "
            f"the model reads {language_name(self.reads)}"
        )

    def verdicts(self, texts: Sequence[str]) -> list[str | None]:
        return [self.verdict(t) for t in texts]


def language_of(text_encoder: Any) -> str | None:
    """The language a text encoder reads, by its features.json kind (None: many, or unknown)."""
    kind = text_encoder.to_dict().get("kind") if text_encoder is not None else None
    return READS.get(str(kind))


def check_for(text_encoder: Any) -> LanguageCheck | None:
    """The language check of a model's text encoder, or None where it reads many languages."""
    reads = language_of(text_encoder)
    return None if reads is None else LanguageCheck(reads)


FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "other-languages.jsonl"
ENGLISH = (
    ("meld/train_sent_emo.csv", "Utterance"),
    ("meld/dev_sent_emo.csv", "Utterance"),
    ("emorynlp/emorynlp_train_final.csv", "Utterance"),
    ("emorynlp/emorynlp_dev_final.csv", "Utterance"),
    ("iemocap-text/iemocap_text.csv", "Utterance"),
)


def measure(data_dir: Path, fixture: Path = FIXTURE) -> dict[str, Any]:
    """How often English lines of the datasets are judged another language, and how often the
    fixture's lines in other languages are (those of at least MIN_LETTERS letters)."""
    check = LanguageCheck("en")
    english = []
    for name, column in ENGLISH:
        path = data_dir / name
        if path.is_file():
            with path.open(encoding="utf-8", errors="replace", newline="") as fh:
                english += [row[column] for row in csv.DictReader(fh)]
    judged = [t for t in english if distinct_letters(t[:JUDGED_CHARS]) >= MIN_LETTERS]
    flagged = [t for t in judged if check.verdict(t) is not None]
    short = [t for t in english if distinct_letters(t[:JUDGED_CHARS]) < MIN_LETTERS]
    short_flagged = [t for t in short if check.verdict(t) is not None]  # by their script
    lines = [json.loads(line) for line in fixture.read_text(encoding="utf-8").splitlines() if line.strip()]
    other = [x for x in lines if distinct_letters(x["text"][:JUDGED_CHARS]) >= MIN_LETTERS]
    missed = [x for x in other if check.verdict(x["text"]) is None]
    other_short = [x for x in lines if distinct_letters(x["text"][:JUDGED_CHARS]) < MIN_LETTERS]
    return {
        "english_lines": len(english),
        "english_judged": len(judged),
        "english_flagged": len(flagged),
        "english_flagged_lines": (flagged + short_flagged)[:20],
        "english_short": len(short),
        "english_short_flagged": len(short_flagged),
        "other_lines": len(lines),
        "other_judged": len(other),
        "other_languages": len({x["language"] for x in lines}),
        "other_flagged": len(other) - len(missed),
        "other_missed": missed,
        "other_short": len(other_short),
        "other_short_flagged": sum(check.verdict(x["text"]) is not None for x in other_short),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.features.language", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("measure", help="false alarms on the English datasets, detections on the fixture's lines")
    p.add_argument("--data-dir", default="../shared/data", help="folder holding meld/, emorynlp/, iemocap-text/")
    p = sub.add_parser("judge", help="judge each line of standard input")
    ns = parser.parse_args(argv)
    if ns.cmd == "judge":
        check = LanguageCheck("en")
        for line in sys.stdin:
            text = line.rstrip("\n")
            best, p_best, own = check.probabilities(text)
            print(f"{check.verdict(text) or 'English, or not judged'}\t[{best} {p_best:.3f}, en {own:.1e}]")
        return 0
    out = measure(Path(ns.data_dir))
    print(json.dumps(out, indent=1, ensure_ascii=False))
    print(
        f"English lines judged another language: {out['english_flagged']} of {out['english_judged']} "
        f"(of {out['english_lines']}, those with at least {MIN_LETTERS} letters); other-language lines judged so: "
        f"{out['other_flagged']} of {out['other_judged']} ({out['other_languages']} languages); shorter lines, "
        f"judged by their script: English {out['english_short_flagged']} of {out['english_short']}, other "
        f"languages {out['other_short_flagged']} of {out['other_short']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
