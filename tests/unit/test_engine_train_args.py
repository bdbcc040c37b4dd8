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


def _options_without_help(parser: argparse.ArgumentParser, name: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                missing += _options_without_help(sub, f"{name} {sub_name}")
        elif not action.help and not isinstance(action, argparse._HelpAction):
            missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_of_every_command_says_what_it_does() -> None:
    """A newcomer reads ``--help`` before the README: an option listed bare (``--lr LR``) says nothing."""
    from streams.cli import build_parser

    parsers = [(build_parser(), "emostream"), (add_train_args(argparse.ArgumentParser()), "emostream train")]
    assert [m for parser, name in parsers for m in _options_without_help(parser, name)] == []
