"""``emostream train`` options -> an engine's Config (engines.train.model_config)."""

from __future__ import annotations

import argparse

import pytest

from engines.interface import FeatureSpec
from engines.models import make_config
from engines.train import add_train_args, model_config

SPEC = FeatureSpec({"text": 384, "audio": 0})


def _ns(*args: str) -> argparse.Namespace:
    return add_train_args(argparse.ArgumentParser()).parse_args(["--data-dir", "d", "--out", "o", *args])


def test_unset_shared_sizes_leave_the_engine_defaults() -> None:
    values = model_config(_ns("--engine", "joyful"), SPEC, 7)
    assert not {"d_model", "n_layers", "n_heads", "dropout"} & set(values)
    cfg = make_config("joyful", values)
    assert (cfg.d_model, cfg.n_classes, cfg.text_dim, cfg.causal) == (128, 7, 384, True)


def test_command_line_sizes_then_set_override() -> None:
    values = model_config(_ns("--engine", "unimse", "--d-model", "64", "--future", "2"), SPEC, 6)
    assert values["d_model"] == 64 and values["causal"] is False
    values = model_config(_ns("--d-model", "64", "--set", "d_model=32", "--set", "dropout=0.1"), SPEC, 6)
    assert (values["d_model"], values["dropout"]) == (32, 0.1)


def test_keep_epoch_outside_the_schedule_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from engines.train import main

    assert main(["--data-dir", "d", "--out", "o", "--epochs", "5", "--keep-epoch", "6"]) == 2
    assert "--keep-epoch 6 is outside the schedule's epochs 1-5" in capsys.readouterr().err
    assert main(["--data-dir", "d", "--out", "o", "--keep-epoch", "0"]) == 2


def test_keep_epoch_zero_turns_a_recipes_epoch_off() -> None:
    """`emostream cv --recipe default --nested -- --keep-epoch 0`: each fold stops early again, the
    way the recipe's keep_epoch was chosen (with it, every fold would keep that epoch)."""
    from engines.train import _check_options, parse_train_args

    assert parse_train_args(["--recipe", "default"]).keep_epoch == 11
    ns = parse_train_args(["--recipe", "default", "--keep-epoch", "0"])
    assert ns.keep_epoch == 0
    _check_options(ns)  # accepted: off
