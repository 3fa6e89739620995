"""Rewards on the shape of a completion, not its content: ``length`` and ``repetition``.

- ``length``: ``max(0, 1 - |n - target| / target)`` with ``n`` the completion's length in characters and
  ``target`` the setting ``length_target_chars``: 1.0 at the target, 0.0 at twice the target or for an empty
  completion. Characters, not tokens, so that `tunelab rewards score` (which has no tokenizer) and training
  agree. Range [0, 1].
- ``repetition``: minus the share of repeated word n-grams (``repetition_ngram`` lower-cased words):
  ``-(1 - distinct / total)``, 0.0 without repeats and for completions shorter than n words. Range (-1, 0].
  A penalty meant to be added to a task reward, so that a policy does not loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunelab.rewards.settings import RewardSettings
from tunelab.rewards.text import completion_text, words


def length_score(text: str, target: int) -> float:
    return max(0.0, 1.0 - abs(len(text) - target) / target)


def repetition_score(text: str, n: int) -> float:
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return (len(set(grams)) - len(grams)) / len(grams) if grams else 0.0  # -(1 - distinct/total), no -0.0


def length(settings: RewardSettings) -> Callable[..., list[float]]:
    """The ``length`` reward for ``settings.length_target_chars``."""
    target = settings.length_target_chars

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return [length_score(completion_text(completion), target) for completion in completions]

    return reward


def repetition(settings: RewardSettings) -> Callable[..., list[float]]:
    """The ``repetition`` penalty for ``settings.repetition_ngram``."""
    n = settings.repetition_ngram

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return [repetition_score(completion_text(completion), n) for completion in completions]

    return reward
