"""What goes into an engine and what comes out: one request per conversation (or raw prompt) with its own
sampling settings, one completion with its text, token counts and why it ended. Plain data, no torch."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import TunelabError


class RequestError(TunelabError):
    """A request the engine cannot serve as asked (unknown model, prompt too long, a bad setting): the server
    answers 400/404 with ``param`` and ``code``; a command prints it as an error line."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request",
                 status: int = 400) -> None:
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


@dataclass(frozen=True)
class Sampling:
    """Per-request generation settings; ``temperature`` 0 is greedy, ``seed`` makes sampling reproducible."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def check(self) -> None:
        """One place for what a setting may be, for every command and the server (``param`` names the field)."""
        checks = [
            ("max_tokens", self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}"),
            ("temperature", self.temperature >= 0, f"temperature must be 0 (greedy) or more, got {self.temperature}"),
            ("top_p", 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            ("top_k", self.top_k >= 0, f"top_k must be 0 (off) or more, got {self.top_k}"),
            ("repetition_penalty", self.repetition_penalty > 0,
             f"repetition_penalty must be above 0, got {self.repetition_penalty}"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for param, ok, message in checks:
            if not ok:
                raise RequestError(message, param=param)


@dataclass(frozen=True)
class Request:
    """One generation: chat ``messages`` (rendered with the model's template) or a raw ``prompt``; ``model`` is a
    served name (None: the engine's default); ``continue_from`` is an assistant prefix the answer continues."""


    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    tools: list[Any] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    model: str | None = None
    continue_from: str | None = None
    parse_tools: bool = True  # False: tool-call markup stays in the text (predict, eval)
    parse_reasoning: bool = False  # True: a <think> block becomes Completion.reasoning (the server)
    template_kwargs: dict[str, Any] | None = None  # extra chat-template variables (enable_thinking, ...)
    prompt_ids: tuple[int, ...] | None = None  # the rendered prompt's tokens, once known (rendered once per request)
    budget: Any = None  # a budget.ThinkingBudget: how long a reasoning model thinks (None: as it likes)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as the OpenAI API carries it
    id: str = ""


@dataclass
class Completion:
    """A finished generation. ``text`` holds the answer without any tool-call markup when tool calls were parsed."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning: str | None = None  # the <think> block, when the request asked for it apart
    model: str = ""


class Sink:
    """Where a running generation reports text as it is decoded; ``cancelled`` set by the consumer (a client that
    went away) ends that row at the next step, without stopping the rest of its batch."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def text(self, piece: str) -> None:
        """A new piece of the answer (pieces join to the final ``Completion.text``)."""

    def reasoning(self, piece: str) -> None:
        """A new piece of the reasoning (pieces join to ``Completion.reasoning``)."""

    def done(self, completion: Completion) -> None:
        """The row finished (also when cancelled)."""
