"""Dataset loaders on the shared data (skipped where it is absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from engines.datasets import load_dataset
from engines.datasets.ravdess import load_ravdess_clips
from engines.errors import DatasetError
from engines.interface import EMOTIONS


def test_meld_dev(shared_data: Path) -> None:
    dialogues = load_dataset("meld", shared_data, "dev")
    utts = [u for d in dialogues for u in d.utterances]
    assert len(dialogues) == 114 and len(utts) == 1109
    assert Counter(EMOTIONS[u.emotion] for u in utts)["neutral"] == 470
    assert all(u.text and u.audio is None and u.sentiment in (-1, 0, 1) for u in utts)
    bad = [u.text for u in utts if u.text and any("\x80" <= c <= "\x9f" or c in "\u2019\u00e2" for c in u.text)]
    assert not bad, bad[:3]


def test_missing_split_is_a_clear_error(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="test_sent_emo.csv"):
        load_dataset("meld", shared_data, "test")
    with pytest.raises(DatasetError, match="labels"):
        load_dataset("ravdess", tmp_path, "train")
    with pytest.raises(DatasetError, match="actors 21-24"):
        load_dataset("ravdess", shared_data, "test")
    with pytest.raises(DatasetError):
        load_dataset("nope", shared_data, "dev")


def test_ravdess_split_by_actor_and_label_map(shared_data: Path) -> None:
    train = load_ravdess_clips(shared_data, "train")
    dev = load_ravdess_clips(shared_data, "dev")
    assert {c.actor for c in train} == set(range(1, 17)) and {c.actor for c in dev} == set(range(17, 21))
    counts = Counter(EMOTIONS[c.emotion] for c in dev)
    assert counts["neutral"] == 48 and counts["joy"] == 32 and len(counts) == 7  # calm + neutral merged


def test_composite_is_deterministic_and_consistent(shared_data: Path) -> None:
    a = load_dataset("meld-ravdess", shared_data, "dev", seed=3)
    b = load_dataset("meld-ravdess", shared_data, "dev", seed=3)
    c = load_dataset("meld-ravdess", shared_data, "dev", seed=4)
    assert a == b and a != c
    clips = {cl.path: cl for cl in load_ravdess_clips(shared_data, "dev")}
    meld = load_dataset("meld", shared_data, "dev")
    for d, m in zip(a, meld, strict=True):
        actor_of: dict[str, int] = {}
        for u, v in zip(d.utterances, m.utterances, strict=True):
            assert (u.text, u.speaker, u.emotion) == (v.text, v.speaker, v.emotion)
            clip = clips[u.audio]  # dev MELD gets dev actors only
            assert clip.emotion == u.emotion
            assert actor_of.setdefault(u.speaker, clip.actor) == clip.actor  # one actor per speaker
