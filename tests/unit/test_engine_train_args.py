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


def test_asr_text_swaps_whole_dialogues_to_their_unpunctuated_forms_each_epoch() -> None:
    """``--asr-text``: the training split's text features as written and in asr_form, by row; each
    epoch a seeded draw picks whole dialogues (a call's speech-to-text writes all its lines alike)."""
    import numpy as np

    from engines.datasets.base import Dialogue, Utterance
    from engines.features.text import asr_form
    from engines.prepare import prepare
    from engines.train import _asr_texts, asr_draw

    class Encoder:  # a vector per text: its length and its count of '!' (what asr_form takes away)
        def encode_cached(self, texts: list[str], cache: object, progress: bool) -> np.ndarray:
            return np.array([[len(t), t.count("!")] for t in texts], dtype=np.float32)

    lines = ["Hi!", "What?!", "No way!!", "Okay."]
    dialogues = [Dialogue(f"d{k}", [Utterance(t, "A", 0, 0) for t in lines[k % 4 :]]) for k in range(20)]
    spec = FeatureSpec({"text": 2, "audio": 0})
    train = prepare(dialogues, spec, Encoder(), None, 4)  # type: ignore[arg-type]
    ns = _ns("--asr-text", "0.5")
    written, heard = _asr_texts(ns, train, Encoder(), True)  # type: ignore[misc]
    assert heard[:4].tolist() == [[len(asr_form(t)), 0] for t in lines] and written[:4, 1].tolist() == [1, 1, 2, 0]
    assert not np.array_equal(heard[4:7], written[4:7])  # the next dialogue starts at "What?!"
    one, again, other = (asr_draw((written, heard), dialogues, 0.5, seed) for seed in (5, 5, 6))
    assert np.array_equal(one, again) and not np.array_equal(one, other)
    start, kinds = 0, []
    for d in dialogues:  # every dialogue's rows all heard or all as written
        rows = slice(start, start + len(d))
        start += len(d)
        kinds.append("heard" if np.array_equal(one[rows], heard[rows]) else "written")
        assert np.array_equal(one[rows], heard[rows] if kinds[-1] == "heard" else written[rows])
    assert start == len(one) and 4 <= kinds.count("heard") <= 16
    assert _asr_texts(_ns(), train, Encoder(), True) is None  # off by default


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


@pytest.mark.parametrize(
    "module",
    [
        "engines.bench",
        "engines.trust",
        "engines.evaluate",
        "engines.gpucheck",
        "engines.features.format_check",
        "engines.features.context_study",
        "engines.features.language",
        "tools.bench",
        "tools.rss_bursts",
        "chaos.producer",
    ],
)
def test_every_option_of_every_standalone_tool_says_what_it_does(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``python -m`` tools the README quotes (benchmarks, sweeps, studies) are read through
    ``--help`` too. Their parser is caught where ``main`` parses, before anything runs."""
    import importlib

    def caught(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", caught)
    with pytest.raises(_Parsed) as got:
        importlib.import_module(module).main([])
    assert _options_without_help(got.value.parser, module) == []
