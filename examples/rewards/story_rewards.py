"""Reward functions for the demo's RL prompts ("Write a story about NAME and a ANIMAL.").

A user's own reward function is named in the config as ``path/to/file.py:function``. It receives the sampled
answers (text, or a list of messages for chat prompts) and the row's other columns as keyword arguments, one
value per answer, and returns one float per answer.
"""

from __future__ import annotations

from typing import Any


def _text(completion: Any) -> str:
    if isinstance(completion, list):  # chat prompts: [{"role": "assistant", "content": "..."}]
        return " ".join(str(message.get("content", "")) for message in completion)
    return str(completion)


def uses_requested_name(completions: list[Any], name: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the story names the requested character, else 0.0."""
    return [1.0 if requested in _text(completion) else 0.0
            for completion, requested in zip(completions, name, strict=True)]


def uses_requested_animal(completions: list[Any], animal: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the story mentions the requested animal, else 0.0."""
    return [1.0 if requested in _text(completion) else 0.0
            for completion, requested in zip(completions, animal, strict=True)]
