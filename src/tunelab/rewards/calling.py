"""Calling reward functions safely: one name each, errors that name the function and the sample, checked results.

TRL calls ``func(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=...,
log_metric=..., **columns)`` with one value per completion in every list, and logs ``rewards/<__name__>/mean``.
``named`` wraps a function so that its ``__name__`` is the tunelab name, a failure says which function failed
on which sample (found by calling it again one sample at a time), and the result is one float per completion
(``None``, TRL's "no reward for this sample", becomes NaN, which TRL treats the same way).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, RewardError, TunelabError, shorten
from tunelab.rewards.text import TRAINER_ARGUMENTS, completion_text

RewardFunction = Callable[..., list[float]]
# Keyword arguments that are not one value per completion, even when they happen to be lists.
_SHARED = ("trainer_state", "log_extra", "log_metric")


def _preview(completion: Any) -> str:
    try:
        text = completion_text(completion)
    except TunelabError:
        text = repr(completion)
    text = " ".join(text.split())
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _one_sample(kwargs: dict[str, Any], index: int, count: int) -> dict[str, Any]:
    """The keyword arguments of a call cut down to sample ``index``."""
    return {key: [value[index]] if key not in _SHARED and isinstance(value, (list, tuple)) and len(value) == count
            else value for key, value in kwargs.items()}


def _failure(name: str, error: BaseException, index: int | None, completion: Any) -> RewardError:
    detail = str(error) if isinstance(error, TunelabError) else f"{type(error).__name__}: {shorten(str(error))}"
    where = f" on sample {index} (completion: {_preview(completion)})" if index is not None else ""
    return RewardError(f"reward function '{name}' failed{where}: {detail}", sample=index)


def _checked(name: str, values: Any, count: int) -> list[float]:
    """One float per completion, or a RewardError saying what came back instead."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise RewardError(f"reward function '{name}' must return a list of {count} numbers (one per completion), "
                          f"got {type(values).__name__}")
    values = list(values)
    if len(values) != count:
        raise RewardError(f"reward function '{name}' returned {len(values)} values for {count} completions; it "
                          "must return one number per completion")
    result = []
    for index, value in enumerate(values):
        if value is None:
            result.append(math.nan)
        elif isinstance(value, numbers.Real) or (hasattr(value, "item") and getattr(value, "ndim", 1) == 0):
            result.append(float(value))
        else:
            raise RewardError(f"reward function '{name}' returned {type(value).__name__} {shorten(repr(value), 60)} "
                              f"for sample {index}; a reward is a number (or None to skip the sample)",
                              sample=index)
    return result


def named(function: Callable[..., Any], name: str) -> RewardFunction:
    """``function`` under ``name``, with failures and wrong results turned into clear RewardErrors. Called with
    keywords only, as TRL calls reward functions."""

    def reward(**kwargs: Any) -> list[float]:
        completions = list(kwargs.get("completions") or [])
        try:
            values = function(**kwargs)
        except Exception as error:  # noqa: BLE001 - any failure of user code becomes one clear error
            raise _locate(function, name, error, kwargs, completions) from error
        return _checked(name, values, len(completions))

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = function.__doc__
    return reward


def _locate(function: Callable[..., Any], name: str, error: Exception, kwargs: dict[str, Any],
             completions: list[Any]) -> RewardError:
    """Call again one sample at a time to find the first sample that fails."""
    count = len(completions)
    if count > 1:
        for index in range(count):
            try:
                function(**_one_sample(kwargs, index, count))
            except Exception as single:  # noqa: BLE001
                return _failure(name, single, index, completions[index])
    return _failure(name, error, 0 if count == 1 else None, completions[0] if count == 1 else None)


def check_weight_count(weights: list[float] | None, names: list[str], note: str = "") -> None:
    """One weight per reward function, or none at all (1.0 each)."""
    if weights is not None and len(weights) != len(names):
        raise ConfigError(f"reward_weights has {len(weights)} value{'' if len(weights) == 1 else 's'} for "
                          f"{len(names)} reward functions ({', '.join(names)}){note}; give one weight per function")


def _no_op(*_: Any, **__: Any) -> None:
    """``log_extra`` / ``log_metric`` outside a trainer."""


def score_rewards(functions: list[RewardFunction], weights: list[float] | None, prompts: list[Any],
                  completions: list[Any], columns: dict[str, list[Any]]) -> tuple[dict[str, list[float]], list[float]]:
    """Each function's values (by ``__name__``) and the weighted total per completion (NaN values skipped, as
    TRL's nansum; NaN when every function skipped the sample)."""
    weights = [1.0] * len(functions) if weights is None else list(weights)
    check_weight_count(weights, [function.__name__ for function in functions])
    reserved = sorted(set(columns) & set(TRAINER_ARGUMENTS))
    if reserved:
        raise ConfigError(f"column '{reserved[0]}' has the name of a reward function argument; rename the column")
    values = {}
    for function in functions:
        result = function(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None,
                          log_extra=_no_op, log_metric=_no_op, **columns)
        values[function.__name__] = _checked(function.__name__, result, len(completions))
    totals = []
    for index in range(len(completions)):
        terms = [weight * values[f.__name__][index] for weight, f in zip(weights, functions, strict=True)
                 if not math.isnan(values[f.__name__][index])]
        totals.append(sum(terms) if terms else math.nan)
    return values, totals


# --- a user's own function --------------------------------------------------------------------------------

def split_spec(spec: str) -> tuple[str, str]:
    """``path/to/file.py:function`` or ``module:function`` -> (source, function)."""
    source, _, function = spec.rpartition(":")
    return source.strip(), function.strip()


def check_user_spec(spec: str) -> None:
    """The parts of a user spec that can be checked without importing it."""
    source, function = split_spec(spec)
    if not source or not function:
        raise ConfigError(f"reward function '{spec}': give it as path/to/file.py:function or module:function")
    if not function.isidentifier():
        raise ConfigError(f"reward function '{spec}': '{function}' is not a Python function name")
    if source.endswith(".py"):
        path = Path(source).expanduser()
        if not path.is_file():
            where = "is a folder" if path.is_dir() else f"does not exist (relative to {Path.cwd()})"
            raise ConfigError(f"reward function '{spec}': file '{source}' {where}")
    elif importlib.util.find_spec(source.split(".")[0]) is None:
        raise ConfigError(f"reward function '{spec}': no module '{source.split('.')[0]}' is installed "
                          "(a file is given as path/to/file.py:function)")


def _import_file(path: Path) -> Any:
    """A user's file as a module, once per process (two functions of one file share it)."""
    module_name = f"tunelab_user_rewards_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    if module_name not in sys.modules:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]


def load_user_function(spec: str) -> RewardFunction:
    """Import ``spec``'s function and wrap it under its own name."""
    check_user_spec(spec)
    source, name = split_spec(spec)
    try:
        if source.endswith(".py"):
            path = Path(source).expanduser().resolve()
            module = _import_file(path)
        else:
            module = importlib.import_module(source)
    except Exception as error:  # noqa: BLE001 - the user's module failed to import
        raise ConfigError(f"reward function '{spec}': importing '{source}' failed: {type(error).__name__}: "
                          f"{shorten(str(error))}") from None
    function = getattr(module, name, None)
    if function is None:
        raise ConfigError(f"reward function '{spec}': '{source}' has no function '{name}'")
    if not callable(function):
        raise ConfigError(f"reward function '{spec}': '{name}' is not a function (it is {type(function).__name__})")
    if inspect.iscoroutinefunction(function):
        raise ConfigError(f"reward function '{spec}': async reward functions are not supported; make it a plain "
                          "function")
    return named(function, getattr(function, "__name__", name))
