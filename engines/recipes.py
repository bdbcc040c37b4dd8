"""Training recipes: one TOML file per shipped model or results row, instead of a dozen flags.

A recipe (``recipes/*.toml``) holds what ``emostream train`` needs to reproduce a model::

    description = "what it is and where its figures are"
    [train]                  # train options, named like the flags (--text-weights -> text_weights)
    engine = "unimse"
    dataset = "meld-ravdess"
    data_dir = "../shared/data"
    out = "models/default"
    telephone = 0.3
    text_weights = "@meld-tuned"   # '@NAME': the artifact of recipes/NAME.toml (trained first if missing)
    [model]                  # engine Config fields (what --set FIELD=VALUE sets)
    sharpness = 2

``emostream train --recipe recipes/default.toml`` trains it; flags given on the command line win
over the recipe (``--seed 1 --out runs/seed1``) and ``--set`` over its ``[model]`` table. Paths are
relative to the directory the command runs in (the repository root). The artifact's
``config.json`` records the recipe (file, SHA-256, tables) and the command line, sealed with the
other files.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from engines.errors import ArtifactError

REPO = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO / "recipes"
_TOP_KEYS = {"description", "train", "model"}
_NOT_RECIPE = {"recipe", "set", "func", "command", "config", "no_progress"}  # flags that make no sense in a recipe
#: engine fields that train flags set: a recipe sets them with the flag's key in [train], not in [model]
_MODEL_FROM_FLAGS = {
    "d_model": "d_model", "n_heads": "heads", "n_layers": "layers", "dropout": "dropout", "max_window": "max_window",
    "causal": "future", "input_noise": "text_noise/audio_noise", "input_mask": "text_mask/audio_mask",
    "text_dim": "(the features)", "audio_dim": "(the features)", "video_dim": "(the features)",
    "n_classes": "(the data)",
}  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    path: Path
    description: str
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    @property
    def name(self) -> str:
        return self.path.stem

    def needs(self) -> dict[str, Path]:
        """Train option -> the recipe whose artifact it uses ('@NAME' values)."""
        return {k: recipe_path(v[1:]) for k, v in self.train.items() if isinstance(v, str) and v.startswith("@")}

    def record(self) -> dict[str, Any]:
        """What the artifact keeps of it."""
        path = self.path.resolve()
        file = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        return {"file": file, "sha256": self.sha256, "train": self.train, "model": self.model}


def recipe_path(name_or_path: str) -> Path:
    """``default`` -> the repository's ``recipes/default.toml``; a path is taken as it is."""
    path = Path(name_or_path)
    if path.suffix != ".toml":  # a name, maybe in a subfolder: engines/joyful-meld
        path = RECIPES_DIR / f"{name_or_path}.toml"
    elif not path.exists() and len(path.parts) == 1 and (RECIPES_DIR / path).is_file():
        path = RECIPES_DIR / path  # 'default.toml': the shipped one, not a file here
    return path


def shipped_recipes() -> list[str]:
    """The names of the shipped recipes (``engines/joyful-meld`` for a subfolder's)."""
    return sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.toml"))


def load_recipe(name_or_path: str, parser: argparse.ArgumentParser) -> Recipe:
    """Read and check a recipe against ``parser``'s train options (unknown keys are errors)."""
    path = recipe_path(name_or_path)
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        import difflib

        names = shipped_recipes()
        close = difflib.get_close_matches(path.stem, names, n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ArtifactError(f"recipe {path} not found; {hint}the shipped ones: {', '.join(names)}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ArtifactError(f"recipe {path} is not valid TOML: {exc}") from None
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ArtifactError(f"recipe {path}: unknown top-level keys {sorted(unknown)} (allowed: {sorted(_TOP_KEYS)})")
    train, model = data.get("train", {}), data.get("model", {})
    if not isinstance(train, dict) or not isinstance(model, dict):
        raise ArtifactError(f"recipe {path}: [train] and [model] must be tables")
    options = {a.dest: a for a in parser._actions if a.dest not in _NOT_RECIPE and a.option_strings}
    options.pop("help", None)
    bad = sorted(set(train) - set(options))
    if bad:
        raise ArtifactError(f"recipe {path}: unknown [train] keys {bad}; known: {', '.join(sorted(options))}")
    train = {key: _typed(path, key, value, options[key]) for key, value in train.items()}
    covered = sorted(set(model) & set(_MODEL_FROM_FLAGS))
    if covered:
        where = ", ".join(f"{k} -> [train] {_MODEL_FROM_FLAGS[k]}" for k in covered)
        raise ArtifactError(f"recipe {path}: [model] keys set by train options: {where}")
    return Recipe(path, str(data.get("description", "")), train, dict(model), hashlib.sha256(raw).hexdigest())


def _typed(path: Path, key: str, value: Any, action: argparse.Action) -> Any:
    """A [train] value checked against its flag: a choice, a number of the flag's type, a boolean for a switch."""
    if isinstance(value, dict | list):
        raise ArtifactError(f"recipe {path}: {key} must be a single value, got {value!r}")
    if action.nargs == 0:  # a switch (store_true)
        if not isinstance(value, bool):
            raise ArtifactError(f"recipe {path}: {key} is a switch: true or false, got {value!r}")
        return value
    if action.choices is not None and value not in action.choices:
        raise ArtifactError(f"recipe {path}: {key} = {value!r} is not one of {list(action.choices)}")
    kind = getattr(action.type, "number", action.type)  # engines/argtypes.py's checked numbers say their kind
    if kind in (int, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        try:
            ok = ok and math.isfinite(value) and (kind is not int or value == int(value))
        except OverflowError:  # an integer too large for a float
            ok = False
        if not ok:
            raise ArtifactError(f"recipe {path}: {key} must be {'an integer' if kind is int else 'a finite number'}")
        if action.type is not kind:  # its range too
            try:
                action.type(str(kind(value)))  # type: ignore[misc, operator]
            except argparse.ArgumentTypeError as exc:
                raise ArtifactError(f"recipe {path}: {key} {exc}") from None
        return kind(value)
    if not isinstance(value, str):
        raise ArtifactError(f"recipe {path}: {key} must be a string, got {value!r}")
    return value


def resolve_needs(train: dict[str, Any]) -> dict[str, Any]:
    """'@NAME' values -> the ``out`` directory of recipes/NAME.toml."""
    out = dict(train)
    for key, value in train.items():
        if isinstance(value, str) and value.startswith("@"):
            needed = recipe_path(value[1:])
            try:
                data = tomllib.loads(needed.read_text("utf-8"))
            except FileNotFoundError:
                raise ArtifactError(f"{key} = {value!r}: recipe {needed} not found") from None
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ArtifactError(f"{key} = {value!r}: recipe {needed} is not valid TOML: {exc}") from None
            target = data.get("train", {}).get("out")
            if not target:
                raise ArtifactError(f"{key} = {value!r}: recipe {recipe_path(value[1:])} has no [train] out")
            out[key] = target
    return out
