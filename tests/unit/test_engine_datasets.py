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


def test_iemocap_text_and_emorynlp_have_their_own_labels(shared_data: Path) -> None:
    from engines.datasets import dataset_labels

    iemocap = load_dataset("iemocap-text", shared_data, "dev")
    assert len(iemocap) == 12 and sum(len(d) for d in iemocap) == 647
    assert iemocap[0].labels == dataset_labels("iemocap-text") == (
        "happy", "sad", "neutral", "angry", "excited", "frustrated",
    )  # fmt: skip
    assert {u.speaker for d in iemocap for u in d.utterances} == {"M", "F"}
    emory = load_dataset("emorynlp", shared_data, "dev")
    assert len(emory) == 89 and sum(len(d) for d in emory) == 954
    assert emory[0].labels == dataset_labels("emorynlp") and len(emory[0].labels) == 7
    assert all(u.sentiment in (-1, 0, 1) and u.text for d in emory for u in d.utterances)
    with pytest.raises(DatasetError, match="Session 5"):
        load_dataset("iemocap-text", shared_data, "test")
    with pytest.raises(DatasetError, match="emorynlp_test_final.csv"):
        load_dataset("emorynlp", shared_data, "test")


def test_feature_pickle_dataset(tmp_path: Path) -> None:
    """A DialogueRNN-style IEMOCAP pickle: its vectors become the utterances' features."""
    import pickle

    import numpy as np

    from engines.datasets.pickles import precomputed_spec

    ids = [f"Ses0{i}" for i in range(20)]
    rng = np.random.default_rng(0)
    lab = {v: [i % 6, (i + 1) % 6] for i, v in enumerate(ids)}
    obj = (
        {v: v for v in ids},
        {v: ["M", "F"] for v in ids},
        lab,
        {v: rng.standard_normal((2, 10)).tolist() for v in ids},
        {v: rng.standard_normal((2, 4)).tolist() for v in ids},
        {v: rng.standard_normal((2, 3)).tolist() for v in ids},
        {v: ["hello", "bye"] for v in ids},
        ids[:16],
        ids[16:],
    )
    with (tmp_path / "IEMOCAP_features.pkl").open("wb") as f:
        pickle.dump(obj, f)
    train = load_dataset("iemocap-pickle", tmp_path, "train")
    dev = load_dataset("iemocap-pickle", tmp_path, "dev")
    test = load_dataset("iemocap-pickle", tmp_path, "test")
    assert (len(train), len(dev), len(test)) == (14, 2, 4)
    assert not {d.id for d in train} & {d.id for d in dev}
    spec = precomputed_spec(train)
    assert spec is not None and spec.dims() == {"text": 10, "audio": 4, "video": 3}
    d = train[0]
    assert d.features is not None and d.features["text"].shape == (2, 10)
    assert [u.emotion for u in d.utterances] == lab[d.id.removeprefix("iemocap-pickle-")]
    with pytest.raises(DatasetError, match="MELD_features_raw"):
        load_dataset("meld-pickle", tmp_path, "dev")
