"""The engines' PyTorch models, by engine name.

Every model module (``engines/models/<module>.py``) provides the same two names:

- ``Config``: a dataclass deriving from :class:`engines.models.config.ModelConfig` (which gives
  it what it holds per modality: the feature sizes, ``text_dim`` and the like, read as
  ``cfg.features``, and ``input_noise, input_mask``, one float per modality; and the methods
  ``to_dict()`` and ``active()``: indices into MODALITIES of the modalities with inputs), with at
  least the fields ``d_model, n_heads, n_layers, dropout, max_window, causal, n_classes`` and its
  own hyper-parameters with defaults.
- ``Net(cfg)``: an ``nn.Module`` with attributes ``cfg`` and ``active``, and methods

  - ``forward(features, present, speakers, valid, target) -> dict`` following
    :class:`engines.interface.EngineBatch` (``features``: modality name -> (B, W, D) tensor, a
    modality of size 0 absent or ``None``; :func:`forward_kwargs` makes these keywords from tensors
    named as the graph's inputs), with at
    least ``logits`` (B, C), ``sentiment`` (B,) in [-1, 1] and ``weights`` (B, 3) (per-modality
    weights, 0 for modalities absent at the target, summing to 1 over the present ones);
  - ``training_loss(inputs, labels, sentiment) -> dict`` of loss terms with their weighted sum
    under ``"loss"`` (``inputs``: the forward keyword arguments; a model with augmented views
    runs forward as often as it needs);
  - ``set_normaliser(modality, mean, std)``: train-set feature statistics kept as buffers.

With ``causal`` a target never attends to later utterances of its window, whatever the window
holds; otherwise it uses the future utterances the window gives it (revised events).

Every ``Net`` opens the same way, with :class:`engines.models.common.WindowEmbedder` (a mixin):
a normalising projection per modality (``project``, ``set_normaliser``) and each utterance's
place in its window (``place``: speaker, same speaker as the target, distance to the target).
What follows is the engine's own: UniMSE's text transformer with gated adapters, Foal-Net's
per-modality context and alignment, Joyful's fusion and relational graph, the relevance scorer.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from engines.errors import ArtifactError
from engines.modalities import MODALITIES

#: engine name (command line, config.json) -> model module
ENGINES: dict[str, str] = {
    "relevance": "engines.models.relevance",
    "joyful": "engines.models.joyful",
    "unimse": "engines.models.unimse",
    "foal-net": "engines.models.foalnet",
}


def forward_kwargs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A ``Net``'s forward keywords from tensors named as the exported graph's inputs (each
    modality's features by its name, then ``present``, ``speakers``, ``valid``, ``target``; other
    keys, a training view's labels say, pass through): the modalities gathered into ``features``."""
    features = {m: inputs.get(m) for m in MODALITIES}
    return {"features": features, **{k: v for k, v in inputs.items() if k not in MODALITIES}}


def model_module(engine: str) -> ModuleType:
    if engine not in ENGINES:
        raise ArtifactError(f"unknown engine {engine!r}; known: {tuple(ENGINES)}")
    return importlib.import_module(ENGINES[engine])


def available_engines() -> tuple[str, ...]:
    """Engines whose model module exists in this checkout."""
    out = []
    for name, mod in ENGINES.items():
        if importlib.util.find_spec(mod) is not None:
            out.append(name)
    return tuple(out)


#: Config fields that must be at least 1 (the others that are integers: at least 0)
_AT_LEAST_ONE = ("d_model", "n_heads", "n_layers", "max_window", "ff_mult", "max_speakers", "n_classes", "proj_dim")


def check_values(engine: str, values: dict[str, Any]) -> None:
    """Refuse ``values`` (for the engine's ``Config``) that it does not know or of the wrong kind,
    saying which (a ``--set`` typo, ``agreement=False`` read as the string "False"), before any
    work; the ``loss`` table's keys are the loss weights'."""
    import math
    import typing

    from engines.models.losses import LossWeights

    cls = model_module(engine).Config
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ArtifactError(f"engine {engine!r} has no settings {unknown}; it has {sorted(known)}")

    def number(v: Any) -> bool:
        try:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        except OverflowError:  # an integer too large for a float
            return False

    for key, value in values.items():
        kind, origin = hints[key], typing.get_origin(hints[key])
        if kind is bool:
            ok, want = isinstance(value, bool), "true or false"
        elif kind is int:
            low = 1 if key in _AT_LEAST_ONE else 0
            ok, want = isinstance(value, int) and not isinstance(value, bool) and value >= low, f"an integer >= {low}"
        elif kind is float:
            ok, want = number(value) and value >= 0, "a number >= 0"
            if key == "dropout":
                ok, want = ok and value < 1, "a number from 0 to under 1"
        elif origin is tuple:
            ok, want = isinstance(value, list | tuple) and all(number(v) for v in value), "a list of numbers"
        elif origin is dict:
            weights = {f.name for f in dataclasses.fields(LossWeights)} if key == "loss" else None
            ok = isinstance(value, dict) and all(number(v) for v in value.values())
            want = "a table of numbers"
            if ok and weights is not None and set(value) - weights:
                ok, want = False, f"a table of some of {sorted(weights)}"
        else:
            ok, want = True, ""
        if not ok:
            raise ArtifactError(f"engine {engine!r} setting {key} must be {want}, not {value!r} (--set {key}=JSON)")


def make_config(engine: str, values: dict[str, Any]) -> Any:
    """The engine's ``Config`` from ``values``; keys it does not know or values of the wrong kind
    are an error (:func:`check_values`)."""
    cls = model_module(engine).Config
    check_values(engine, values)
    try:
        return cls(**values)
    except ValueError as exc:  # a combination the engine refuses (its message says why)
        raise ArtifactError(str(exc)) from exc


def config_fields(engine: str) -> dict[str, Any]:
    """Field name -> default of the engine's ``Config``."""
    cls = model_module(engine).Config
    return {f.name: f.default for f in dataclasses.fields(cls)}


def build_model(engine: str, config: dict[str, Any]) -> Any:
    """A fresh ``Net`` of ``engine`` (train mode) for a config dict as stored in config.json."""
    return model_module(engine).Net(make_config(engine, config))
