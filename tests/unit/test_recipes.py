"""Training recipes (engines/recipes.py, ``emostream train --recipe``): parsing, precedence, records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engines.errors import ArtifactError
from engines.interface import FeatureSpec
from engines.recipes import RECIPES_DIR
from engines.train import _subcommand_words, model_config, parse_train_args

REPO = Path(__file__).resolve().parents[2]


def test_a_recipe_sets_the_defaults_and_flags_given_win(tmp_path: Path) -> None:
    ns = parse_train_args(["--recipe", "default"])
    assert (ns.engine, ns.dataset, ns.telephone, ns.out, ns.seed) == (
        "unimse",
        "meld-ravdess",
        0.3,
        "models/default",
        2,
    )
    assert ns.text_weights == "runs/meld-tuned"  # '@meld-tuned': that recipe's artifact
    assert ns.recipe_needs == [RECIPES_DIR / "meld-tuned.toml", RECIPES_DIR / "default-words.toml"]
    assert ns.text_network == "runs/default-words"  # '@default-words': the words network inside the gate
    ns = parse_train_args(["--seed", "3", "--recipe", "default", "--out", str(tmp_path), "--telephone", "0"])
    assert (ns.seed, ns.out, ns.telephone, ns.engine) == (3, str(tmp_path), 0.0, "unimse")
    record = ns.recipe_record
    assert record["file"] == "recipes/default.toml" and len(record["sha256"]) == 64
    assert record["command"][:4] == ["emostream", "train", "--seed", "3"]


def test_the_model_table_is_under_set(tmp_path: Path) -> None:
    spec = FeatureSpec({"text": 384, "audio": 768})
    ns = parse_train_args(["--recipe", "relevance-agreement"])
    values = model_config(ns, spec, 7)
    assert values["agreement"] is True and values["sharpness"] == 2
    assert values["loss"] == {"relevance": 1.0, "relevance_temperature": 0.3}
    ns = parse_train_args(["--recipe", "relevance-agreement", "--set", "sharpness=3"])
    assert model_config(ns, spec, 7)["sharpness"] == 3


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[train]\nengine = "unimse"\ntelephon = 0.3\n', r"unknown \[train\] keys \['telephon'\]"),
        ('[train]\nengine = "bert"\n', "engine = 'bert' is not one of"),
        ("[train\n", "not valid TOML"),
        ('[train]\nengine = "unimse"\nepochs = 2.5\nout = "o"\ndata_dir = "d"\n', "epochs must be an integer"),
        ('[train]\nepochs = 0\nout = "o"\ndata_dir = "d"\n', "epochs must be at least 1, not 0"),
        ('[train]\nepochs = inf\nout = "o"\ndata_dir = "d"\n', "epochs must be an integer"),
        ('[train]\nlr = nan\nout = "o"\ndata_dir = "d"\n', "lr must be a finite number"),
        ('[train]\ntelephone = 1.5\nout = "o"\ndata_dir = "d"\n', "telephone must be between 0 and 1, not 1.5"),
        ('[train]\nno_resample_audio = "false"\nout = "o"\ndata_dir = "d"\n', "switch"),
        ('[train]\nlr = 1\nout = "o"\ndata_dir = "d"\n[model]\ndropout = 0.5\n', r"dropout -> \[train\] dropout"),
        ('[train]\ntext_weights = "@nowhere"\nout = "o"\ndata_dir = "d"\n', "not found"),
    ],
)
def test_bad_recipes_are_refused_with_the_reason(tmp_path: Path, text: str, reason: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ArtifactError, match=reason):
        parse_train_args(["--recipe", str(bad)])


def test_a_missing_recipe_or_output_is_refused() -> None:
    with pytest.raises(ArtifactError, match="not found"):
        parse_train_args(["--recipe", "no-such-recipe"])
    with pytest.raises(ArtifactError, match="--data-dir and --out are required"):
        parse_train_args(["--engine", "unimse"])


@pytest.mark.parametrize("name", ["default", "revised"])
def test_the_shipped_models_recipes_match_how_they_were_trained(name: str) -> None:
    """Every option the recipe sets is what the shipped artifact's config.json records (its text
    layers came from meld-tuned's artifact, copied; the paths and thread count were the run's)."""
    ns = parse_train_args(["--recipe", name])
    recorded = json.loads((REPO / "models" / name / "config.json").read_text())["train"]
    ignored = {"out", "text_weights", "threads", "data_dir", "recipe", "no_progress", "cache_dir", "config", "command"}
    ignored |= {"text_network"}  # a path of the run, like text_weights: its record is checked below
    for key, value in vars(ns).items():
        if key in recorded and key not in ignored:
            assert recorded[key] == value, (name, key, recorded[key], value)
    words = json.loads((REPO / "models" / name / "config.json").read_text()).get("text_network")
    assert (words is not None) == bool(ns.text_network), name
    if words is not None:  # the words network is the one its recipe trains
        recipe = parse_train_args(["--recipe", ns.recipe_needs[-1].stem])
        assert (words["engine"], words["model"]["dropout"]) == (recipe.engine, recipe.dropout), words
        assert words["model"]["input_noise"][0] == recipe.text_noise and words["model"]["causal"]


def test_every_shipped_recipe_parses() -> None:
    recipes = sorted(RECIPES_DIR.rglob("*.toml"))
    assert {p.stem for p in recipes} >= {"default", "meld-tuned", "revised", "joyful-meld"} and len(recipes) >= 30
    for path in recipes:
        ns = parse_train_args(["--recipe", str(path)])
        assert ns.out and ns.data_dir
        name = str(path.relative_to(RECIPES_DIR).with_suffix(""))
        assert parse_train_args(["--recipe", name]).out == ns.out  # by name, subfolders too


def test_the_words_of_the_train_subcommand_are_found() -> None:
    assert _subcommand_words(["--config", "train", "train", "--recipe", "x"], "train") == ["--recipe", "x"]
    assert _subcommand_words(["train"], "train") == []


def _needing_recipe(tmp_path: Path, tuned_extra: str = "") -> Path:
    """recipes in ``tmp_path``: main.toml (unimse, out m) whose text_weights are '@' tuned.toml's
    artifact (foal-net, out t, plus ``tuned_extra`` lines); returns main.toml."""
    tuned = tmp_path / "tuned.toml"
    tuned.write_text(f'[train]\nengine = "foal-net"\n{tuned_extra}out = "{tmp_path / "t"}"\n')
    main = tmp_path / "main.toml"
    main.write_text(f'[train]\nengine = "unimse"\ntext_weights = "@{tuned}"\nout = "{tmp_path / "m"}"\n')
    return main


def test_a_needed_recipe_is_trained_first_only_when_its_artifact_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engines.train as train

    main = _needing_recipe(tmp_path, 'dataset = "meld"\ntune_text = 2\n')
    trained: list[tuple[str, str]] = []
    monkeypatch.setattr(train, "_train", lambda ns: trained.append((ns.engine, ns.out)) or 0)
    assert train.main(["--recipe", str(main), "--data-dir", "d"]) == 0
    assert trained == [("foal-net", str(tmp_path / "t")), ("unimse", str(tmp_path / "m"))]
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "checksums.json").write_text("{}")
    trained.clear()
    assert train.main(["--recipe", str(main), "--data-dir", "d"]) == 0
    assert trained == [("unimse", str(tmp_path / "m"))]


def test_a_flag_that_replaces_a_needed_artifact_drops_the_need() -> None:
    ns = parse_train_args(["--recipe", "default", "--text-weights", "models/default"])
    assert ns.text_weights == "models/default" and ns.recipe_needs == [RECIPES_DIR / "default-words.toml"]
    ns = parse_train_args(["--recipe", "default", "--text-weights", "models/default", "--text-network", "runs/w"])
    assert ns.text_network == "runs/w" and ns.recipe_needs == []


def test_at_name_on_the_command_line_is_a_recipes_artifact_trained_first_if_missing() -> None:
    ns = parse_train_args(["--recipe", "default", "--text-weights", "models/default", "--text-network", "@meld-words"])
    assert ns.text_network == "runs/meld-words" and ns.recipe_needs == [RECIPES_DIR / "meld-words.toml"]
    ns = parse_train_args(["--text-weights", "@meld-tuned", "--data-dir", "d", "--out", "o"])  # no recipe
    assert ns.text_weights == "runs/meld-tuned" and ns.recipe_needs == [RECIPES_DIR / "meld-tuned.toml"]
    with pytest.raises(ArtifactError, match="not found"):
        parse_train_args(["--text-network", "@no-such-recipe", "--data-dir", "d", "--out", "o"])


def test_emostream_train_with_at_name_and_no_recipe_trains_the_named_recipe_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command a user runs (``emostream train``, not only ``python -m engines.train``)."""
    import engines.train as train
    from streams.cli import main

    seen: list[tuple[str, str | None]] = []
    monkeypatch.setattr(train, "_train", lambda ns: seen.append((ns.out, ns.text_weights)) or 0)
    out = str(tmp_path / "o")
    monkeypatch.chdir(tmp_path)  # recipes/meld-tuned.toml's out, runs/meld-tuned, holds no artifact here
    assert main(["train", "--text-weights", "@meld-tuned", "--data-dir", "d", "--out", out]) == 0
    assert seen == [("runs/meld-tuned", None), (out, "runs/meld-tuned")]


def test_a_bad_words_artifact_given_outright_is_refused_before_any_needed_recipe_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engines.train as train

    main = _needing_recipe(tmp_path)
    trained: list[str] = []
    monkeypatch.setattr(train, "_train", lambda ns: trained.append(ns.out) or 0)
    words = ["--recipe", str(main), "--data-dir", "d", "--text-network", str(tmp_path / "none")]
    assert train.main(words) == 2
    assert trained == []  # the tuned layers were not trained for a run that could not start


def test_recipe_values_are_typed_and_cycles_caught(tmp_path: Path) -> None:
    r = tmp_path / "r.toml"
    r.write_text(f'[train]\ntext_weights = "@{r}"\nout = "{tmp_path / "o"}"\ndata_dir = "d"\n')
    import engines.train as train

    assert train.main(["--recipe", str(r)]) == 2  # needs itself: refused, not a RecursionError
    ns = parse_train_args(["--recipe", "default", "--text-weights", "x", "--fold", "1"])
    assert isinstance(ns.fold, int) and parse_train_args(["--recipe", "default"]).lr == 1e-3


def test_a_fold_refuses_a_needed_recipe_that_heard_every_voice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.train as train

    audio = tmp_path / "audio.toml"
    audio.write_text(f'[train]\ndataset = "ravdess"\nout = "{tmp_path / "a"}"\n')
    main = tmp_path / "main.toml"
    main.write_text(f'[train]\ntext_weights = "@{audio}"\nout = "{tmp_path / "m"}"\ndataset = "meld-ravdess"\n')
    monkeypatch.setattr(train, "_train", lambda ns: 0)
    assert train.main(["--recipe", str(main), "--data-dir", "d"]) == 0
    assert train.main(["--recipe", str(main), "--data-dir", "d", "--fold", "0"]) == 2


def test_cv_resumes_only_a_fold_trained_by_the_same_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    import engines.train as train
    from engines.crossval import add_cv_args, run_cv

    def fake_main(words: list[str]) -> int:
        out = Path(words[words.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "checksums.json").write_text("{}")
        (out / "config.json").write_text(json.dumps({"recipe": {"command": ["emostream", "train", *words]}}))
        split = f"dev-{'nest' if '--nested' in words else 'fold'}{words[words.index('--fold') + 1]}"
        metrics = {"split": split, "audio": {"weighted_f1": 0.5, "accuracy": 0.5, "n": 1}}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return 0

    monkeypatch.setattr(train, "main", fake_main)
    parser = add_cv_args(argparse.ArgumentParser())
    root = str(tmp_path / "cv")
    assert run_cv(parser.parse_args(["--recipe", "default", "--folds", "0,1", "--root", root])) == 0
    assert run_cv(parser.parse_args(["--recipe", "default", "--folds", "0,1", "--root", root])) == 0  # resumed
    assert run_cv(parser.parse_args(["--recipe", "default", "--folds", "0", "--root", root, "--", "--seed", "1"])) == 2
    # nested by a train flag: its stopping actors' figures would pass for fold 2's held-out ones
    assert run_cv(parser.parse_args(["--recipe", "default", "--folds", "2", "--root", root, "--", "--nested"])) == 2


def test_cv_nested_trains_with_nested_folds_and_reports_the_held_out_actors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    import engines.crossval as crossval
    import engines.train as train

    trained: list[list[str]] = []

    def fake_main(words: list[str]) -> int:
        trained.append(words)
        out = Path(words[words.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "checksums.json").write_text("{}")
        (out / "config.json").write_text(json.dumps({"recipe": {"command": ["emostream", "train", *words]}}))
        fold = int(words[words.index("--fold") + 1])
        metrics = {"split": f"dev-nest{fold}", "audio": {"weighted_f1": 0.9, "n": 1}, "best_epoch": 10 + fold}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return 0

    held: list[tuple[Path, int, list[str]]] = []

    def fake_held_out(out: Path, fold: int, subsets: list[str]) -> dict[str, object]:
        held.append((out, fold, subsets))
        return {"audio": {"weighted_f1": 0.5 + fold / 10, "accuracy": 0.5, "n": 4}}

    monkeypatch.setattr(train, "main", fake_main)
    monkeypatch.setattr(crossval, "held_out_figures", fake_held_out)
    parser = crossval.add_cv_args(argparse.ArgumentParser())
    root = tmp_path / "cv"
    assert (
        crossval.run_cv(
            parser.parse_args(["--recipe", "default", "--folds", "0,1", "--root", str(root), "--nested", "--json"])
        )
        == 0
    )
    assert all("--nested" in w and w[w.index("--fold") + 1] == str(k) for k, w in enumerate(trained))
    assert [(p.name, k, s) for p, k, s in held] == [("nested0", 0, ["audio"]), ("nested1", 1, ["audio"])]
    report = json.loads(capsys.readouterr().out)
    assert report["nested"] is True
    assert report["summary"]["audio"]["weighted_f1"]["mean"] == 0.55  # the held-out figures, not the stopping actors'
    assert report["best_epochs"] == {"0": 10, "1": 11}  # what each fold kept: the recipe's epoch is their median


def test_cv_measures_a_nested_fold_on_its_held_out_actors_with_its_training_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engines.evaluate as evaluate
    from engines.crossval import held_out_figures

    out = tmp_path / "nested3"
    out.mkdir()
    train_cfg = {"dataset": "meld-ravdess", "data_dir": "data", "seed": 2, "future": 0, "threads": 1}
    (out / "config.json").write_text(json.dumps({"train": train_cfg}))
    asked: list[Any] = []

    def fake_evaluate(ns: Any) -> dict[str, Any]:
        asked.append(ns)
        return {"n": 7, "weighted_f1": 0.6, "accuracy": 0.7, "split": "ignored"}

    monkeypatch.setattr(evaluate, "evaluate_model", fake_evaluate)
    got = held_out_figures(out, 3, ["text+audio", "audio"])
    assert got == {s: {"n": 7, "weighted_f1": 0.6, "accuracy": 0.7} for s in ("text+audio", "audio")}
    for ns, modalities in zip(asked, ("text,audio", "audio"), strict=True):
        assert (ns.model, ns.dataset, ns.data_dir) == (str(out), "meld-ravdess", "data")
        assert (ns.split, ns.fold, ns.modalities, ns.seed, ns.future) == ("dev", 3, modalities, 2, 0)


def test_a_recipe_name_with_a_typo_gets_a_suggestion_and_a_shipped_file_name_is_found(tmp_path: Path) -> None:
    """Found by a newcomer: 'defualt' listed no recipe, and 'default.toml' was looked for here."""
    from engines.artifact import resolve_model_dir
    from engines.recipes import recipe_path

    with pytest.raises(
        ArtifactError, match=r"did you mean default or default-words\? the shipped ones: .*engines/joyful-meld"
    ):
        parse_train_args(["--recipe", "defualt"])
    assert recipe_path("default.toml") == RECIPES_DIR / "default.toml"
    mine = tmp_path / "default.toml"
    assert recipe_path(str(mine)) == mine  # a path given is taken as it is
    with pytest.raises(ArtifactError, match="did you mean default"):
        resolve_model_dir("defualt")
