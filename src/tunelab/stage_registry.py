"""The stage registry: every training stage, found in one place with everything about it.

Each module of ``tunelab/stages/`` declares ``STAGES = [Stage(...)]``: the stage's name, the kind of row it
trains on, its own config keys (a pydantic model: type, default, help) and its recipe. The modules are
found by discovery, never imported here by name, so adding a stage is adding one module; `tunelab train`,
`tunelab config`, `data inspect --stage`, `train --help` and the docs read the list from here. Stage
modules import only pydantic at the top (a recipe's heavy imports live inside it), so listing the stages
stays cheap. This module imports nothing of tunelab at its top: config and the data layer ask it for
stage names and kinds without depending on the recipes.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel


class NoKeys(BaseModel):
    """A stage without keys of its own."""


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # which canonical rows it trains on: a name in data/row_kinds.py
    summary: str
    recipe: str  # "module:function", imported when the stage runs: function(cfg, command=...) -> TrainResult
    keys: type[BaseModel] = NoKeys
    # Settings this stage fixes for its trainer (e.g. orpo = dpo with pref_loss orpo), applied as defaults.
    presets: dict[str, Any] = field(default_factory=dict)
    # "module:function"(cfg, data) -> None: the stage's own checks beyond its keys' types (batch shapes, other
    # models' paths, data size), run before any model loads, by the run and by `train --dry-run` alike: once with
    # data None, and again with the DataReport once the data is read and encoded.
    check: str | None = None

    def run(self) -> Callable[..., Any]:
        return _function(self.recipe)

    def check_config(self, cfg: Any, data: Any = None) -> None:
        if self.check:
            _function(self.check)(cfg, data)


def _function(name: str) -> Callable[..., Any]:
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


@functools.cache
def all_stages() -> dict[str, Stage]:
    package = importlib.import_module("tunelab.stages")  # discovery: the recipes sit above this module

    found: dict[str, Stage] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for stage in getattr(module, "STAGES", ()):
            if stage.name in found:
                raise RuntimeError(f"stage '{stage.name}' is declared twice ({info.name})")
            found[stage.name] = stage
    return dict(sorted(found.items(), key=lambda item: _ORDER.get(item[0], 99)))


_ORDER = {"sft": 0, "pt": 1, "rm": 2, "dpo": 3, "orpo": 4, "simpo": 5, "kto": 6, "ppo": 7, "grpo": 8, "rloo": 9}


def stage_names() -> list[str]:
    return list(all_stages())


def stage_kinds() -> dict[str, str]:
    return {name: stage.kind for name, stage in all_stages().items()}


def stages_declaring(key: str) -> list[str]:
    """Names of the stages whose own keys include ``key``."""
    return [name for name, stage in all_stages().items() if key in stage.keys.model_fields]


def stage_keys() -> dict[str, tuple[Any, list[str]]]:
    """Every stage key: (its pydantic field, the stages that declare it)."""
    keys: dict[str, tuple[Any, list[str]]] = {}
    for name, stage in all_stages().items():
        for key, info in stage.keys.model_fields.items():
            keys.setdefault(key, (info, []))[1].append(name)
    return keys
