"""RAVDESS actor folds (cross-validation over voices never heard) and ``emostream cv``'s summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.crossval import summarise
from engines.datasets import load_dataset
from engines.datasets.ravdess import ACTORS, FOLDS, fold_split, load_ravdess_clips
from engines.errors import DatasetError


def test_folds_hold_out_four_actors_each_and_fold_4_is_the_plain_split() -> None:
    held = [set(ACTORS[f"dev-fold{k}"]) for k in range(FOLDS)]
    assert all(len(h) == 4 for h in held) and set().union(*held) == set(range(1, 21))
    assert sum(len(h) for h in held) == 20  # disjoint
    for k in range(FOLDS):
        assert set(ACTORS[f"train-fold{k}"]) == set(range(1, 21)) - held[k]
    assert ACTORS["dev-fold4"] == ACTORS["dev"] and ACTORS["train-fold4"] == ACTORS["train"]
    assert fold_split("dev", None) == "dev" and fold_split("train", 2) == "train-fold2"
    with pytest.raises(DatasetError):
        fold_split("test", 1)
    with pytest.raises(DatasetError):
        fold_split("dev", 5)


def test_a_folds_composite_hears_only_its_actors(shared_data: Path) -> None:
    train = load_dataset("meld-ravdess", shared_data, "train-fold0", seed=0)
    dev = load_dataset("meld-ravdess", shared_data, "dev-fold0", seed=0)
    actor_of = {c.path: c.actor for c in load_ravdess_clips(shared_data, "train-fold0")}
    actor_of |= {c.path: c.actor for c in load_ravdess_clips(shared_data, "dev-fold0")}
    train_actors = {actor_of[u.audio] for d in train for u in d.utterances}
    dev_actors = {actor_of[u.audio] for d in dev for u in d.utterances}
    assert dev_actors == {1, 2, 3, 4} and train_actors <= set(range(5, 21)) and len(train_actors) > 8
    plain = load_dataset("meld-ravdess", shared_data, "dev", seed=0)
    assert [u.text for d in dev for u in d.utterances] == [u.text for d in plain for u in d.utterances]  # MELD dev


def test_a_nested_fold_never_hears_its_test_actors_and_stops_on_the_next_folds() -> None:
    for k in range(FOLDS):
        test, stop = set(ACTORS[f"dev-fold{k}"]), set(ACTORS[f"dev-nest{k}"])
        train = set(ACTORS[f"train-nest{k}"])
        assert stop == set(ACTORS[f"dev-fold{(k + 1) % FOLDS}"])
        assert len(train) == 12 and train | stop | test == set(range(1, 21))
        assert not train & test and not train & stop and not stop & test
    assert fold_split("train", 3, "meld-ravdess", nested=True) == "train-nest3"
    assert fold_split("dev", 3, nested=True) == "dev-nest3"
    with pytest.raises(DatasetError, match="--nested needs --fold"):
        fold_split("train", None, nested=True)


def test_a_nested_folds_composite_keeps_melds_splits_and_its_actors(shared_data: Path) -> None:
    train = load_dataset("meld-ravdess", shared_data, "train-nest1", seed=0)
    stop = load_dataset("meld-ravdess", shared_data, "dev-nest1", seed=0)
    clips = load_ravdess_clips(shared_data, "train-nest1") + load_ravdess_clips(shared_data, "dev-nest1")
    actor_of = {c.path: c.actor for c in clips}
    assert {actor_of[u.audio] for d in stop for u in d.utterances} == {9, 10, 11, 12}
    assert {actor_of[u.audio] for d in train for u in d.utterances} <= {1, 2, 3, 4} | set(range(13, 21))
    plain = load_dataset("meld-ravdess", shared_data, "train", seed=0)
    assert [u.text for d in train for u in d.utterances] == [u.text for d in plain for u in d.utterances]


def test_the_summary_gives_mean_spread_and_range() -> None:
    per_fold = {
        k: {"audio": {"weighted_f1": f, "accuracy": f, "n": 10}, "best_epoch": 3} for k, f in enumerate([0.5, 0.6, 0.7])
    }
    s = summarise(per_fold)["audio"]["weighted_f1"]
    assert s == {"mean": 0.6, "std": 0.1, "min": 0.5, "max": 0.7}
