"""engines/features/emoji.py: emoji of feelings read as words by the English encoders."""

from __future__ import annotations

from engines.features.emoji import EMOJI_WORDS, emoji_words
from engines.features.text import TextEncoder, read_form


def test_emoji_are_read_as_words_and_modifiers_dropped() -> None:
    assert emoji_words("\U0001f621\U0001f621\U0001f621\U0001f92c") == "angry! angry! angry! angry!"
    assert emoji_words("thanks\U0001f642") == "thanks happy!"
    assert emoji_words("ok \U0001f44d\U0001f3fd") == "ok good"  # a skin tone says nothing of its own
    assert emoji_words("\u2764\ufe0f it") == "love it"  # the variation selector goes with its emoji
    assert emoji_words("\U0001f984 unicorn") == "\U0001f984 unicorn"  # not in the table: as it is
    # a zero-width-joiner sequence means what it means as a whole: a shaking head is no smile
    assert emoji_words("\U0001f642\u200d\u2194\ufe0f no") == "\U0001f642\u200d\u2194 no"
    assert emoji_words("plain text, caf\u00e9") == "plain text, caf\u00e9"
    assert len(EMOJI_WORDS) > 80 and all(len(ch) == 1 for ch in EMOJI_WORDS)


def test_the_english_encoders_read_them_the_multilingual_one_does_not() -> None:
    from engines.features.multilingual import MultilingualE5Encoder

    assert read_form("I\u2019m so done \U0001f621") == "I'm so done angry!"
    assert TextEncoder().clean("\U0001f622") == "sad"
    assert (
        MultilingualE5Encoder.clean(MultilingualE5Encoder.__new__(MultilingualE5Encoder), "\U0001f622") == "\U0001f622"
    )


def test_a_line_of_symbols_has_no_words_for_the_english_encoders_only() -> None:
    from streams.pipeline import has_words

    assert not has_words("\U0001f984\U0001f984 \u2605") and has_words("\U0001f621") and has_words("\u4f60\u597d")
    assert has_words("\U0001f984\U0001f984", reads_emoji=True)  # e5's vocabulary holds them
