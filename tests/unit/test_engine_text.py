"""Text normalisation and the on-disk feature cache (no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.features.cache import FeatureCache, item_key
from engines.features.text import normalise_text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("don\x92t", "don't"),
        ("Wait\x85 what?", "Wait... what?"),
        ("donâ€™t", "don't"),
        ("Iâ€™m â€œfineâ€\x9d", 'I\'m "fine"'),
        ("you’re “here”", 'you\'re "here"'),
        ("café", "café"),
        ("  so   much\tspace ", "so much space"),
    ],
)
def test_normalise_text(raw: str, clean: str) -> None:
    assert normalise_text(raw) == clean
    assert normalise_text(clean) == clean


def test_cache_computes_each_item_once(tmp_path: Path) -> None:
    calls: list[list[int]] = []
    keys = [item_key(t) for t in ["a", "b", "a", "c"]]

    def compute(idx: list[int]) -> np.ndarray:
        calls.append(idx)
        return np.array([[float(i), 1.0] for i in idx], dtype=np.float32)

    first = FeatureCache("m/x", root=tmp_path).get_or_compute(keys, compute)
    assert calls == [[0, 1, 3]]  # the repeated "a" is computed once
    assert len(list((tmp_path / "m" / "x").glob("shard-*.npz"))) == 1
    np.testing.assert_array_equal(first[0], first[2])
    again = FeatureCache("m/x", root=tmp_path).get_or_compute(keys, lambda idx: pytest.fail("recomputed"))
    np.testing.assert_array_equal(again, first)
    other = FeatureCache("m/y", root=tmp_path).get_or_compute(keys[:1], compute)  # another namespace
    assert calls[-1] == [0] and other.shape == (1, 2)


@pytest.mark.parametrize(
    ("written", "heard"),
    [
        ("Oh my God! He's lost it.", "oh my god he's lost it"),
        ("What?!", "what"),
        ("don\x92t go - ok?", "don't go ok"),  # MELD's cp1252 apostrophe, repaired first
        ("'Quoted' word...", "quoted word"),  # quotes are not apostrophes inside words
        ("X-ray at 3.5", "x ray at 3 5"),
        ("...", ""),
    ],
)
def test_asr_form_writes_what_a_recogniser_without_punctuation_writes(written: str, heard: str) -> None:
    from engines.features.text import asr_form

    assert asr_form(written) == heard and asr_form(heard) == heard


def test_as_transcribed_keeps_the_dialogues_but_their_words() -> None:
    from engines.datasets.base import Dialogue, Utterance, as_transcribed

    d = [
        Dialogue(
            "d",
            [
                Utterance("Hi! How are you?", "A", 0, 0, "a.wav"),
                Utterance("...", "B", 1, 0),
                Utterance(None, "A", 2, 1),
            ],
        )
    ]
    assert as_transcribed(d, "as-written") is d
    heard = as_transcribed(d, "asr")
    assert [u.text for u in heard[0].utterances] == ["hi how are you", "...", None]  # "..." leaves nothing: kept
    assert [(u.speaker, u.emotion, u.sentiment, u.audio) for u in heard[0].utterances] == [
        (u.speaker, u.emotion, u.sentiment, u.audio) for u in d[0].utterances
    ]
    with pytest.raises(ValueError, match="one of as-written, asr"):
        as_transcribed(d, "shouting")
