"""The built-in reward functions by name, the checks of a reward list, and loading it for a trainer.

``check_reward_specs`` runs while the config is validated, before any model loads, so it imports neither
torch, transformers nor math-verify: each built-in is named here by ``module:attribute`` and imported only by
``load_rewards``. Its attribute is the reward function itself, or (``configured``) a factory that takes the
``RewardSettings`` and returns it. Adding a built-in is one entry here plus its function.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from tunelab.errors import ConfigError
from tunelab.rewards.calling import (
    RewardFunction,
    check_user_spec,
    check_weight_count,
    load_user_function,
    named,
    score_rewards,
)
from tunelab.rewards.settings import RewardSettings

__all__ = ["BUILTINS", "check_reward_specs", "describe_rewards", "load_rewards", "reward_names", "score_rewards"]
MODEL_REWARD = "reward_model"


@dataclass(frozen=True)
class Builtin:
    name: str
    summary: str
    target: str  # "module:attribute" under tunelab.rewards
    configured: bool = False  # the attribute is a factory taking RewardSettings

    def build(self, settings: RewardSettings) -> RewardFunction:
        module, attribute = self.target.split(":")
        found = getattr(importlib.import_module(f"tunelab.rewards.{module}"), attribute)
        return named(found(settings) if self.configured else found, self.name)


BUILTINS = {reward.name: reward for reward in [
    Builtin("correctness", "R1 recipe: 2.0 if the <answer> equals the gold column `answer` (\"#### N\" of a GSM8K "
            "solution; 1,600 = 1600 = 1600.0), else 0.0", "r1:correctness"),
    Builtin("int", "R1 recipe: 0.5 if the <answer> is all digits, else 0.0", "r1:integer_answer"),
    Builtin("strict_format", "R1 recipe: 0.5 if the completion is exactly <reasoning>\\n...\\n</reasoning>\\n"
            "<answer>\\n...\\n</answer>\\n with one-line reasoning and answer, else 0.0", "r1:strict_format"),
    Builtin("soft_format", "R1 recipe: 0.5 if it starts with <reasoning>...</reasoning> then <answer>...</answer>, "
            "each on one line, else 0.0", "r1:soft_format"),
    Builtin("xmlcount", "R1 recipe: 0.125 per R1 tag present exactly once with its newlines, minus 0.001 per "
            "character after </answer>", "r1:xmlcount"),
    Builtin("accuracy", "1.0 if the final answer (<answer>, \\boxed{}, 'final answer is') equals the gold `answer` "
            "or `solution` mathematically (math-verify: LaTeX, fractions, sets), else 0.0", "mathematical:accuracy"),
    Builtin("length", "max(0, 1 - |characters - length_target_chars| / length_target_chars): 1.0 at the target "
            "length", "shape:length", configured=True),
    Builtin("repetition", "minus the share of repeated word n-grams (n = repetition_ngram), in (-1, 0]",
            "shape:repetition", configured=True),
    Builtin("similarity", "best mix of embedding cosine and word Jaccard with the row's `gold_answers`, minus "
            "similarity_bad_weight x the best with its `bad_answers`", "similarity:similarity", configured=True),
    Builtin(MODEL_REWARD, "the score of the stage-rm model in reward_model for (prompt, completion)",
            "model:reward_model", configured=True),
]}


def reward_names() -> list[str]:
    return list(BUILTINS)


def describe_rewards() -> list[tuple[str, str]]:
    """(name, one-line summary) of every built-in, for `tunelab rewards list`."""
    return [(reward.name, reward.summary) for reward in BUILTINS.values()]


def is_user_spec(name: str) -> bool:
    return ":" in name or name.endswith(".py")


def _unknown(name: str) -> ConfigError:
    match = difflib.get_close_matches(name, reward_names(), n=1, cutoff=0.6)
    hint = f" (did you mean '{match[0]}'?)" if match else ""
    return ConfigError(f"unknown reward function '{name}'{hint}; built-in: {', '.join(reward_names())}; or your own "
                       "as path/to/file.py:function or module:function")


def _with_model(names: list[str], reward_model: str | None) -> list[str]:
    """The functions in order: the reward model is appended when reward_model is set and not listed."""
    return [*names, MODEL_REWARD] if reward_model and MODEL_REWARD not in names else list(names)


def _check_reward_model(path: str) -> None:
    from tunelab.config import EMBEDDED_MODEL
    from tunelab.models.sources import adapter_base, check_adapter_source, check_model_source
    from tunelab.rewards.model import is_adapter

    if is_adapter(path):
        check_adapter_source(path, MODEL_REWARD)
        check_model_source(adapter_base(path) or EMBEDDED_MODEL, "reward_model's base model")
    else:
        check_model_source(path, MODEL_REWARD)


def check_reward_specs(names: list[str], weights: list[float] | None, reward_model: str | None,
                       check_model_path: bool = True) -> None:
    """Every mistake in a reward list that needs no model: unknown names, missing files, counts.
    ``check_model_path=False`` while a config loads: the reward model may be trained by an earlier command of
    the same script, so its folder is checked when the run starts."""
    for name in names:
        if is_user_spec(name):
            if name.endswith(".py"):
                raise ConfigError(f"reward function '{name}': name the function too, as {name}:function")
            check_user_spec(name)
        elif name not in BUILTINS:
            raise _unknown(name)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"reward_funcs lists {', '.join(repeated)} more than once")
    if MODEL_REWARD in names and not reward_model:
        raise ConfigError("reward function 'reward_model' needs reward_model: the folder of a model trained by "
                          "stage rm")
    functions = _with_model(names, reward_model)
    if not functions:
        raise ConfigError(f"no reward: set reward_funcs (built-in: {', '.join(reward_names())}) and/or "
                          "reward_model")
    added = " (reward_model comes last: it is added because reward_model is set)" if len(functions) > len(names) \
        else ""
    check_weight_count(weights, functions, added)
    if reward_model and check_model_path:
        _check_reward_model(reward_model)


def load_rewards(names: list[str], settings: RewardSettings) -> list[RewardFunction]:
    """The reward functions in order (the reward model appended when ``settings.reward_model`` is set and not
    listed), each named and wrapped (see ``calling.named``). Built-ins that need a model load it now, after the
    user functions imported and every name proved distinct."""
    check_reward_specs(names, settings.reward_weights, settings.reward_model)
    specs = _with_model(names, settings.reward_model)
    users = {spec: load_user_function(spec) for spec in specs if spec not in BUILTINS}
    seen: dict[str, str] = {}
    for spec in specs:
        name = users[spec].__name__ if spec in users else spec
        if name in seen:
            raise ConfigError(f"reward functions '{seen[name]}' and '{spec}' are both named '{name}'; the logs "
                              "(rewards/<name>/mean) need distinct names")
        seen[name] = spec
    return [users[spec] if spec in users else BUILTINS[spec].build(settings) for spec in specs]
