"""Turn a model's tool-call text back into OpenAI ``tool_calls``, for the templates that define tool calls.

Two forms are known: Qwen2.5 / Hermes (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block
per call, text before it is the message content) and Llama 3.1 (the whole answer is one JSON object with
``name`` and ``parameters``, after ``<|python_tag|>`` or alone). The parser is chosen from the chat template's
own text, so a model answers in the form it was trained on. While streaming, text from the first possible start
of a call is held back until the answer ends, so a call is never shown as content.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from tunelab.inference.engines.types import ToolCall

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"


def _call(name: Any, arguments: Any) -> ToolCall | None:
    if not isinstance(name, str) or not name:
        return None
    text = arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {},
                                                                    ensure_ascii=False)
    return ToolCall(name=name, arguments=text, id=f"call_{uuid.uuid4().hex[:24]}")


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class ToolParser:
    """``kind`` "hermes" or "llama3"; ``split`` gives (content, calls); ``held_from`` where streaming pauses."""

    kind: str

    def split(self, text: str) -> tuple[str, list[ToolCall]]:
        if self.kind == "hermes":
            return _split_hermes(text)
        return _split_llama3(text)

    def held_from(self, text: str) -> int:
        """Index in ``text`` from which it may belong to a tool call (len(text): none of it does)."""
        if self.kind == "llama3":
            stripped = text.lstrip()
            if stripped.startswith(("{", PYTHON_TAG)) or PYTHON_TAG.startswith(stripped) and stripped:
                return len(text) - len(stripped)
            return len(text) if PYTHON_TAG not in text else text.index(PYTHON_TAG)
        found = text.find(HERMES_OPEN)
        if found >= 0:
            return found
        for size in range(min(len(HERMES_OPEN) - 1, len(text)), 0, -1):  # a marker cut in half at the end
            if HERMES_OPEN.startswith(text[-size:]):
                return len(text) - size
        return len(text)


def _split_hermes(text: str) -> tuple[str, list[ToolCall]]:
    calls: list[ToolCall] = []
    start = text.find(HERMES_OPEN)
    if start < 0:
        return text, calls
    content, rest = text[:start], text[start:]
    while rest.startswith(HERMES_OPEN):
        end = rest.find(HERMES_CLOSE)
        body, rest = (rest[len(HERMES_OPEN):], "") if end < 0 else (rest[len(HERMES_OPEN):end],
                                                                      rest[end + len(HERMES_CLOSE):])
        value = _json_object(body.strip())
        call = _call(value.get("name"), value.get("arguments", value.get("parameters"))) if value else None
        if call is None:  # not a call after all: everything stays text
            return text, []
        calls.append(call)
        rest = rest.lstrip()
    return (content + rest).strip(), calls


def _split_llama3(text: str) -> tuple[str, list[ToolCall]]:
    body = text.strip()
    body = body[len(PYTHON_TAG):].strip() if body.startswith(PYTHON_TAG) else body
    calls: list[ToolCall] = []
    for line in body.split(";") if not body.startswith("{") or _json_object(body) is None else [body]:
        value = _json_object(line.strip())
        call = _call(value.get("name"), value.get("parameters", value.get("arguments"))) if value else None
        if call is None:
            return text, []
        calls.append(call)
    return "", calls


def tool_parser_for(chat_template: str | None) -> ToolParser | None:
    """The parser for a template that renders tool calls, or None when it defines none."""
    template = chat_template or ""
    if HERMES_OPEN in template:
        return ToolParser("hermes")
    if PYTHON_TAG in template or ("<|eot_id|>" in template and "parameters" in template):
        return ToolParser("llama3")
    return None


def messages_for_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates expect them: tool-call arguments as objects (Llama 3.1's template writes
    them with ``tojson``), ``None`` content as empty text, image parts as ``{"type": "image"}``."""
    from tunelab.data.images import template_messages

    shaped = []
    for message in template_messages(messages):
        message = dict(message)
        if message.get("content") is None:
            message["content"] = ""
        calls = []
        for call in message.get("tool_calls") or []:
            function = dict(call.get("function", call))
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                function["arguments"] = _json_object(arguments) if _json_object(arguments) is not None else arguments
            calls.append({**call, "function": function, "type": call.get("type", "function")})
        if calls:
            message["tool_calls"] = calls
        shaped.append(message)
    return shaped
