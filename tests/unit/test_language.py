"""The language check (engines/features/language.py): transcripts the English text model cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engines.features.language import (
    FIXTURE,
    MIN_LETTERS,
    OTHER_LANGUAGE,
    LanguageCheck,
    check_for,
    distinct_letters,
    language_of,
    measure,
    script_of,
)
from engines.features.text import asr_form
from streams.join import Utterance
from streams.pipeline import forget_featurizer_notes, utterance_features
from streams.validate import Payload

#: fixture lines of at least MIN_LETTERS letters the check does not catch (measured; the README quotes them)
MISSED = {"Quero cancelar a assinatura, por favor.", "Kailan po darating ang order ko?"}

CALL_CENTER_ENGLISH = [
    "Thank you for calling Acme Telecom, how can I help you today?",
    "i was charged twice for the same order and nobody called me back",
    "Your account number is ABC123XYZ, correct?",
    "I need to speak with Señor Gutiérrez about my invoice",
    "Can you spell that? B as in bravo, Q as in quebec",
    "My name is Nguyen Thi Huong and I live at 42 Rue de Rivoli",
    "I'm sorry to hear that, let me check your account",
    "THIS IS THE THIRD TIME I HAVE CALLED ABOUT THIS",
    "Yes I need help with mi cuenta por favor because it is blocked",
]


@pytest.fixture(scope="module")
def check() -> LanguageCheck:
    return LanguageCheck("en")


def _fixture() -> list[dict[str, str]]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


def _latin(text: str) -> bool:
    return all(script_of(ch) == "LATIN" for ch in text if ch.isalpha())


def test_call_center_lines_in_other_languages_are_told_and_short_ones_by_their_script(check: LanguageCheck) -> None:
    lines = _fixture()
    assert len({x["language"] for x in lines}) >= 15
    for x in lines:
        why = check.verdict(x["text"])
        if distinct_letters(x["text"]) < MIN_LETTERS and _latin(x["text"]) or x["text"] in MISSED:
            assert why is None, x  # "Tamam.", "Sí, claro.": too short to tell from English
        elif distinct_letters(x["text"]) < MIN_LETTERS:  # "好的。", "네.", "Да, хорошо."
            assert why is not None and " script: the model reads English" in why, x
        else:
            assert why is not None and why.startswith(OTHER_LANGUAGE), x
            assert why.endswith("the model reads English"), why
    why = check.verdict("Estoy muy enfadado, me han cobrado dos veces este mes.") or ""
    assert why.startswith("other language? the words read as Spanish (es), English at p ")


def test_english_call_center_lines_are_english(check: LanguageCheck) -> None:
    assert check.verdicts(CALL_CENTER_ENGLISH) == [None] * len(CALL_CENTER_ENGLISH)
    assert check.verdict("\uff2f\uff2b") is None  # fullwidth "OK" from a CJK input method: Latin letters
    # as a speech-to-text engine without punctuation writes them, too
    assert check.verdicts([asr_form(t) for t in CALL_CENTER_ENGLISH]) == [None] * len(CALL_CENTER_ENGLISH)


def test_laughter_fillers_and_noise_are_not_judged(check: LanguageCheck) -> None:
    """A word said again tells no more (py3langid read "haha haha haha haha" as Sotho and dropped
    the laughter); characters of no language (py3langid's zxx) are no other language either."""
    said = ["haha haha haha haha", "hi hi hi hi hi hi hi hi", "bye bye bye bye bye bye", "um um um um um um um um",
            "ah ah ah ah ah ah ah ah", "qzxv kjhg wpfm trnb lkjh 8f3k"]  # fmt: skip
    assert check.verdicts(said) == [None] * len(said)


def test_a_long_transcript_is_judged_by_its_start_as_the_encoder_reads_it(check: LanguageCheck) -> None:
    english, spanish = CALL_CENTER_ENGLISH[1] + ". ", "Llevo media hora esperando y nadie me ayuda. "
    assert check.verdict(english * 30 + spanish * 2000) is None  # the encoder reads the English start
    assert (check.verdict(spanish * 30 + english * 2000) or "").startswith(OTHER_LANGUAGE)


def test_no_english_line_of_the_datasets_is_judged_another_language(shared_data: Path) -> None:
    """The README's figure: 0 of the 17,469 English lines of MELD, EmoryNLP and IEMOCAP that are judged."""
    out = measure(shared_data)
    assert out["english_judged"] > 15_000 and out["english_flagged"] == 0, out["english_flagged_lines"]
    assert {x["text"] for x in out["other_missed"]} == MISSED
    # the shorter lines, judged by their script: none of 7,944 English ones, the 14 of the fixture not in Latin letters
    assert out["english_short"] > 7_000 and out["english_short_flagged"] == 0, out["english_flagged_lines"]
    assert (out["other_short"], out["other_short_flagged"]) == (25, 14)


def test_the_verdict_names_the_language_and_the_kinds_say_what_they_read(check: LanguageCheck) -> None:
    why = check.verdict("Ich möchte meinen Vertrag zum Monatsende kündigen, bitte.")
    assert why is not None and "German (de)" in why

    class Kind:
        def __init__(self, kind: str) -> None:
            self.kind = kind

        def to_dict(self) -> dict[str, str]:
            return {"kind": self.kind}

    assert [language_of(Kind(k)) for k in ("minilm", "minilm-tuned", "e5-multilingual")] == ["en", "en", None]
    assert check_for(Kind("e5-multilingual")) is None and check_for(None) is None
    assert isinstance(check_for(Kind("minilm-tuned")), LanguageCheck)
    with pytest.raises(ValueError, match="does not know the language"):
        LanguageCheck("klingon")


class Featurizer:
    def __init__(self, check: LanguageCheck, action: str) -> None:
        self.language_check, self.language_action, self.encoded = check, action, []

    def text(self, texts: list[str]) -> np.ndarray:
        self.encoded += texts
        return np.zeros((len(texts), 2), np.float32)


def _utts(*texts: str) -> list[Utterance]:
    return [Utterance("c", f"u{i}", i, "A", 0.0, parts={"text": Payload("text", t)}) for i, t in enumerate(texts)]


def test_the_stream_drops_or_flags_words_in_another_language(check: LanguageCheck) -> None:
    spanish, english = "Llevo media hora esperando y nadie me ayuda.", "I have been waiting for half an hour."
    dims = {"text": 2, "audio": 3, "video": 0}
    f = Featurizer(check, "drop")
    utts = _utts(spanish, english, "Sí, claro.")
    assert [set(x) for x in utterance_features(utts, f, dims)] == [set(), {"text"}, {"text"}]
    assert f.encoded == [english, "Sí, claro."]  # the Spanish words are not even encoded
    assert utts[0].ignored["text"].startswith(OTHER_LANGUAGE) and utts[0].suspect == {}
    assert utts[1].ignored == {} == utts[2].ignored
    forget_featurizer_notes(utts[0])  # encoded again (a batch split and retried): judged afresh
    assert utts[0].ignored == {}
    f = Featurizer(check, "warn")
    utts = _utts(spanish, english)
    assert [set(x) for x in utterance_features(utts, f, dims)] == [{"text"}, {"text"}]
    assert utts[0].suspect["text"].startswith(OTHER_LANGUAGE) and utts[0].ignored == {}
    assert utts[1].suspect == {}
