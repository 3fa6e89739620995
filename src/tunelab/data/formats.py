"""Data formats: detect a record's format from its columns and convert it to canonical rows.

Canonical rows are TRL's standard types (see docs/architecture.md):
``{"messages": [...], "tools": [...] | None}`` for sft and ``{"text": str}`` for pt.
Each format is one entry of ``FORMATS``; the data-layer issue adds more entries here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class FieldError(ValueError):
    """A record's field is missing or malformed; the loader adds file and line."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass
class ColumnSpec:
    """How a dataset's columns map to a format (LLaMA-Factory's dataset_info.json keys)."""

    formatting: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def column(self, key: str, default: str | None) -> str | None:
        return self.columns.get(key, default)

    def tag(self, key: str, default: str) -> str:
        return self.tags.get(key, default)


Row = dict[str, Any]


def _require_text(record: dict, column: str, *, allow_empty: bool = False) -> str:
    if column not in record or record[column] is None:
        raise FieldError(column, f"missing field '{column}'")
    value = record[column]
    if not isinstance(value, str):
        raise FieldError(column, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise FieldError(column, "is empty; expected non-empty text")
    return value


def _optional_text(record: dict, column: str | None) -> str:
    if not column or record.get(column) in (None, ""):
        return ""
    value = record[column]
    if not isinstance(value, str):
        raise FieldError(column, f"expected a string, got {type(value).__name__}")
    return value


def _parse_tools(record: dict, column: str | None) -> list[dict] | None:
    if not column or record.get(column) in (None, "", []):
        return None
    value = record[column]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise FieldError(column, f"expected a JSON list of tool definitions ({error.msg})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise FieldError(column, f"expected a list of tool definitions, got {type(value).__name__}")
    return [tool if "type" in tool else {"type": "function", "function": tool} for tool in value]


def _tool_call_message(text: str, column: str) -> dict:
    """A ShareGPT ``function_call`` turn (JSON name/arguments) as an assistant message with tool_calls."""
    try:
        calls = json.loads(text)
    except json.JSONDecodeError:
        raise FieldError(column, "function_call turn is not JSON with 'name' and 'arguments'") from None
    calls = calls if isinstance(calls, list) else [calls]
    tool_calls = []
    for call in calls:
        if not isinstance(call, dict) or "name" not in call:
            raise FieldError(column, "function_call turn needs a 'name'")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        tool_calls.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return {"role": "assistant", "content": "", "tool_calls": tool_calls}


def check_conversation(messages: list[dict], column: str) -> None:
    """A trainable conversation: optional system first, a user turn before any reply, and a reply."""
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        raise FieldError(column, "a system message may only come first")
    if not body or body[0] != "user":
        raise FieldError(column, f"conversation must start with a user turn, got {body[:1] or 'nothing'}")
    if "assistant" not in body:
        raise FieldError(column, "conversation has no assistant turn to train on")
    for previous, current in zip(body, body[1:], strict=False):
        if previous == current == "user" or (previous == "user" and current == "tool"):
            raise FieldError(column, f"turns do not alternate: '{previous}' followed by '{current}'")


# --- alpaca ---------------------------------------------------------------------------------

def _alpaca_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return spec.column("prompt", "instruction") in columns and spec.column("response", "output") in columns


def _alpaca_convert(record: dict, spec: ColumnSpec) -> Row:
    prompt_col = spec.column("prompt", "instruction")
    query_col = spec.column("query", "input")
    response_col = spec.column("response", "output")
    instruction = _require_text(record, prompt_col, allow_empty=bool(_optional_text(record, query_col)))
    query = _optional_text(record, query_col)
    user = "\n".join(part for part in (instruction, query) if part)
    messages = []
    system = _optional_text(record, spec.column("system", "system"))
    if system:
        messages.append({"role": "system", "content": system})
    history_col = spec.column("history", "history")
    for turn_index, turn in enumerate(record.get(history_col) or []):
        if not (isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise FieldError(f"{history_col}[{turn_index}]", "expected a [question, answer] pair of strings")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    messages += [{"role": "user", "content": user},
                 {"role": "assistant", "content": _require_text(record, response_col)}]
    return {"messages": messages, "tools": _parse_tools(record, spec.column("tools", None))}


# --- sharegpt (from/value) ----------------------------------------------------------------------

def _sharegpt_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return spec.column("messages", "conversations") in columns


def _sharegpt_convert(record: dict, spec: ColumnSpec) -> Row:
    column = spec.column("messages", "conversations")
    turns = record.get(column)
    if not isinstance(turns, list) or not turns:
        raise FieldError(column, "expected a non-empty list of turns")
    role_tag, content_tag = spec.tag("role_tag", "from"), spec.tag("content_tag", "value")
    role_of = {
        spec.tag("user_tag", "human"): "user",
        spec.tag("assistant_tag", "gpt"): "assistant",
        spec.tag("system_tag", "system"): "system",
        spec.tag("observation_tag", "observation"): "tool",
        spec.tag("function_tag", "function_call"): "function_call",
    }
    messages = []
    system = _optional_text(record, spec.column("system", "system"))
    if system:
        messages.append({"role": "system", "content": system})
    for index, turn in enumerate(turns):
        where = f"{column}[{index}]"
        if not isinstance(turn, dict):
            raise FieldError(where, f"expected an object with '{role_tag}' and '{content_tag}'")
        tag = turn.get(role_tag)
        if tag not in role_of:
            raise FieldError(f"{where}.{role_tag}", f"unknown role {tag!r}; expected one of {sorted(role_of)} "
                             "(map other names with 'tags' in dataset_info.json)")
        content = turn.get(content_tag)
        if isinstance(content, list):
            content = _join_parts(content, f"{where}.{content_tag}")
        if not isinstance(content, str):
            raise FieldError(f"{where}.{content_tag}", f"expected text, got {type(content).__name__}")
        role = role_of[tag]
        if role == "function_call":
            messages.append(_tool_call_message(content, f"{where}.{content_tag}"))
        else:
            if role == "assistant" and not content.strip():
                raise FieldError(f"{where}.{content_tag}", "assistant answer is empty")
            messages.append({"role": role, "content": content})
    check_conversation(messages, column)
    return {"messages": messages, "tools": _parse_tools(record, spec.column("tools", "tools"))}


# --- OpenAI messages (role/content) --------------------------------------------------------------

def _join_parts(parts: list, where: str) -> str:
    """Content given as typed parts ([{"type": "text", "text"|"value": ...}]) joined to text."""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text":
            texts.append(part.get("text", part.get("value", "")))
        else:
            raise FieldError(where, f"only text content parts are supported, got {part!r:.60}")
    return "".join(texts)


def _messages_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return spec.column("messages", "messages") in columns


def _normalize_messages(turns: Any, column: str) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise FieldError(column, "expected a non-empty list of {role, content} messages")
    messages = []
    for index, turn in enumerate(turns):
        where = f"{column}[{index}]"
        if not isinstance(turn, dict) or "role" not in turn:
            raise FieldError(where, "expected an object with 'role' and 'content'")
        role = turn["role"]
        if role not in ("system", "user", "assistant", "tool"):
            raise FieldError(f"{where}.role", f"unknown role {role!r}; expected system, user, assistant or tool")
        content = turn.get("content") or ""
        if isinstance(content, list):
            content = _join_parts(content, f"{where}.content")
        if not isinstance(content, str):
            raise FieldError(f"{where}.content", f"expected text, got {type(content).__name__}")
        message = {"role": role, "content": content}
        if turn.get("tool_calls"):
            message["tool_calls"] = turn["tool_calls"]
        elif role == "assistant" and not content.strip():
            raise FieldError(f"{where}.content", "assistant answer is empty")
        messages.append(message)
    return messages


def _messages_convert(record: dict, spec: ColumnSpec) -> Row:
    column = spec.column("messages", "messages")
    messages = _normalize_messages(record.get(column), column)
    check_conversation(messages, column)
    return {"messages": messages, "tools": _parse_tools(record, spec.column("tools", "tools"))}


# --- prompt / completion -------------------------------------------------------------------------

def _prompt_completion_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return {"prompt", "completion"} <= columns


def _prompt_completion_convert(record: dict, spec: ColumnSpec) -> Row:
    messages = []
    for column, role in (("prompt", "user"), ("completion", "assistant")):
        value = record.get(column)
        if isinstance(value, str):
            if not value.strip():
                raise FieldError(column, "is empty; expected non-empty text")
            messages.append({"role": role, "content": value})
        elif isinstance(value, list):
            messages += _normalize_messages(value, column)
        else:
            raise FieldError(column, "expected text or a list of messages")
    check_conversation(messages, "prompt")
    return {"messages": messages, "tools": _parse_tools(record, spec.column("tools", "tools"))}


# --- plain text (pretraining) ------------------------------------------------------------------

def _text_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return spec.column("prompt", "text") in columns or "text" in columns


def _text_convert(record: dict, spec: ColumnSpec) -> Row:
    column = spec.column("prompt", "text")
    if column not in record:
        column = "text"
    return {"text": _require_text(record, column)}


@dataclass(frozen=True)
class Format:
    name: str
    kind: str  # which canonical row it produces: "sft" or "pt"
    detect: Callable[[set[str], ColumnSpec], bool]
    convert: Callable[[dict, ColumnSpec], Row]
    needs: str  # what the columns must hold, for error messages


FORMATS: dict[str, Format] = {
    fmt.name: fmt
    for fmt in (
        Format("sharegpt", "sft", _sharegpt_detect, _sharegpt_convert, "'conversations' of {from, value}"),
        Format("messages", "sft", _messages_detect, _messages_convert, "'messages' of {role, content}"),
        Format("alpaca", "sft", _alpaca_detect, _alpaca_convert, "'instruction', 'input', 'output'"),
        Format("prompt_completion", "sft", _prompt_completion_detect, _prompt_completion_convert,
               "'prompt' and 'completion'"),
        Format("text", "pt", _text_detect, _text_convert, "'text'"),
    )
}


def detect_format(record: Any, spec: ColumnSpec, stage: str) -> Format:
    """The format named by the registry, else the first whose columns the record has."""
    if not isinstance(record, dict):
        if isinstance(record, list):
            raise FieldError("record", "a record that is a bare list of messages is not supported yet; "
                             "wrap it as {\"messages\": [...]}")
        raise FieldError("record", f"expected a JSON object, got {type(record).__name__}")
    if stage == "pt":
        return FORMATS["text"]
    named = spec.formatting
    if named:
        if named not in FORMATS:
            raise FieldError("formatting", f"unknown formatting '{named}'; expected one of {sorted(FORMATS)}")
        return FORMATS[named]
    columns = set(record)
    for fmt in FORMATS.values():
        if fmt.kind == "sft" and fmt.detect(columns, spec):
            return fmt
    if FORMATS["text"].detect(columns, spec):
        raise FieldError("text", "this is plain text (pretraining data); use stage: pt, or give SFT records")
    expected = "; or ".join(f.needs for f in FORMATS.values() if f.kind == "sft")
    raise FieldError(", ".join(sorted(columns)) or "record",
                     f"cannot tell the format from columns {sorted(columns)}; expected {expected}")
