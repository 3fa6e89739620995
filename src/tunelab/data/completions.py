"""The text a model wrote, from a completion as TRL and the reward functions get it (text, or messages whose
content may be a list of parts). Below training and rewards, which both read it."""

from __future__ import annotations

from typing import Any

from tunelab.errors import RewardError


def _content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict)
                       and part.get("type", "text") == "text" and isinstance(part.get("text"), str))
    return "" if content is None else str(content)


def completion_text(completion: Any) -> str:
    """The text a model wrote: the completion itself, or the contents of its assistant messages joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list) and all(isinstance(message, dict) for message in completion):
        own = [m for m in completion if m.get("role", "assistant") == "assistant"] or completion
        return "".join(_content_text(message.get("content")) for message in own)
    raise RewardError(f"a completion must be text or a list of messages, got {type(completion).__name__}")
