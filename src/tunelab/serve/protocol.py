"""The OpenAI API's request bodies as pydantic models (the fields tunelab honours; other fields clients send
are ignored, fields it cannot honour are refused by name), and its error body."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.inference.engines.budget import BUDGET_KEYS, ThinkingBudget
from tunelab.inference.engines.types import RequestError, Sampling

MAX_N = 16


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def plain(self) -> dict[str, Any]:
        """The message as a chat template reads it: text parts joined (kept as parts beside images: ``image_url``
        with a data URL or a path, for a vision-language model), developer as system."""
        content = self.content
        if isinstance(content, list):
            kinds = {part.get("type") for part in content}
            if kinds - {"text", "image_url", "image"}:
                raise RequestError(f"content parts of type {', '.join(sorted(map(str, kinds - {'text'})))} are not "
                                   "supported (text, image_url)", param="messages")
            if kinds == {"text"}:
                content = "".join(str(part.get("text", "")) for part in content)
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role,
                                   "content": content or ""}
        for key in ("tool_calls", "tool_call_id", "name"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        return message


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Generation(BaseModel):
    """Sampling fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # budget forcing (tunelab's extension, as s1): unset fields take the server's defaults (tunelab serve keys)
    max_thinking_tokens: int | None = None
    min_thinking_tokens: int | None = None
    num_wait: int | None = None
    wait_text: str | None = None
    max_answer_tokens: int | None = None

    def budget(self, defaults: ThinkingBudget) -> ThinkingBudget | None:
        """This request's thinking budget over the server's; None when neither asks for forcing."""
        asked = {name: getattr(self, name) for name in BUDGET_KEYS if getattr(self, name) is not None}
        budget = replace(defaults, **asked)
        budget.check()
        return budget if budget.active else None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop strings")
        return value

    def refuse_unsupported(self) -> None:
        if self.logprobs:
            raise RequestError("logprobs are not supported", param="logprobs")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise RequestError(f"{name} is not supported; use repetition_penalty", param=name)

    def sampling(self, max_tokens: int, index: int = 0) -> Sampling:
        """Settings for choice ``index`` of ``n``; with a seed each choice samples from seed + index."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        sampling = Sampling(max_tokens=max_tokens, temperature=self.temperature,
                            top_p=self.top_p, top_k=self.top_k, repetition_penalty=self.repetition_penalty,
                            stop=stop, seed=None if self.seed is None else self.seed + index)
        sampling.check()
        return sampling


class ChatRequest(_Generation):
    messages: list[Message]
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # template variables, e.g. {"enable_thinking": false}

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Generation):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    max_tokens: int | None = 16  # the OpenAI default for text completions

    def token_limit(self) -> int | None:
        return self.max_tokens


class ScoreRequest(BaseModel):
    """prompt + response -> score, one pair or lists of pairs (``tunelab score``'s model)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | list[Any]
    response: str | list[Any]
