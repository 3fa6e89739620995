"""Messages: parsing the ways datasets write turns (OpenAI role/content, ShareGPT from/value, typed
content parts, Anthropic "Human:/Assistant:" transcripts), tools, and the order checks every kind uses.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunelab.data.formats.base import (
    EMPTY_ANSWER,
    EMPTY_TEXT,
    IMAGE_COUNT,
    MALFORMED,
    MISSING_FIELD,
    NO_ASSISTANT,
    NOT_ALTERNATING,
    UNKNOWN_ROLE,
    WRONG_TYPE,
    ColumnSpec,
    FieldError,
    optional_text,
    require_text,
)
from tunelab.data.images import PLACEHOLDER, ImageError, image_refs

ROLES = ("system", "user", "assistant", "tool")
# Columns that hold the prompt in the formats without a conversation, in the order they are looked for.
PROMPT_COLUMNS = ("prompt", "instruction", "question", "problem")
# Inputs that mean "no input": Self-Instruct/Alpaca generations wrote these instead of leaving it empty.
PLACEHOLDER_INPUTS = frozenset({"<noinput>", "<no input>", "noinput", "no input"})
_TRANSCRIPT_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
ASSISTANT_MARKER = "\n\nAssistant:"


def join_parts(parts: list, where: str) -> str:
    """Content given as typed parts ([{"type": "text", "text"|"value": ...}]) joined to text; an image part
    becomes an ``<image>`` placeholder (its file goes to the row's images: ``row_images``)."""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text":
            texts.append(part.get("text", part.get("value", "")))
        elif isinstance(part, dict) and part.get("type") in ("image", "image_url"):
            texts.append(PLACEHOLDER)
        else:
            raise FieldError(where, f"only text and image content parts are supported, got {part!r:.60}",
                             WRONG_TYPE)
    return "".join(texts)


def row_images(record: dict, column: str | None, turns: Any = None) -> list[str] | None:
    """The images of a record: its ``images`` column (LLaMA-Factory: a path or a list of paths, one per
    ``<image>`` placeholder), then the images of typed content parts in ``turns``, in order."""
    value = record.get(column) if column else None
    if value in (None, "", []):
        images: list[str] = []
    elif isinstance(value, str):
        images = [value]
    elif isinstance(value, list) and all(isinstance(item, str) and item for item in value):
        images = list(value)
    else:
        raise FieldError(column or "images", "expected an image path or a list of image paths", WRONG_TYPE)
    for turn in turns if isinstance(turns, list) else []:
        content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
        try:
            images += [ref.source for ref in image_refs([{"content": content}])]
        except ImageError as error:
            raise FieldError(column or "images", str(error), WRONG_TYPE) from None
    return images or None


def check_image_count(messages: list[dict], images: list[str] | None, column: str) -> None:
    """Each ``<image>`` placeholder takes the next image: their counts must be equal."""
    marks = sum(str(m.get("content") or "").count(PLACEHOLDER) for m in messages)
    if marks != len(images or []):
        raise FieldError(column, f"{marks} {PLACEHOLDER} placeholder(s) in the text but {len(images or [])} "
                         "image(s); each placeholder takes the next image", IMAGE_COUNT)


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return join_parts(value, where)
    if not isinstance(value, str):
        raise FieldError(where, f"expected text, got {type(value).__name__}", WRONG_TYPE)
    return value


def _check_answer(message: dict, where: str, allow_empty: bool) -> None:
    if message["role"] == "assistant" and not allow_empty and not message.get("tool_calls") \
            and not message["content"].strip():
        raise FieldError(where, "assistant answer is empty", EMPTY_ANSWER)


def normalize_messages(turns: Any, column: str, *, allow_empty: bool = False) -> list[dict]:
    """OpenAI-style ``{role, content}`` messages; tool_calls kept, other keys (loss_weight...) dropped."""
    if not isinstance(turns, list) or not turns:
        raise FieldError(column, "expected a non-empty list of {role, content} messages", WRONG_TYPE)
    messages = []
    for index, turn in enumerate(turns):
        where = f"{column}[{index}]"
        if not isinstance(turn, dict) or "role" not in turn:
            raise FieldError(where, "expected an object with 'role' and 'content'", WRONG_TYPE)
        role = turn["role"]
        if role not in ROLES:
            raise FieldError(f"{where}.role", f"unknown role {role!r}; expected system, user, assistant or tool",
                             UNKNOWN_ROLE)
        message = {"role": role, "content": _content(turn.get("content"), f"{where}.content")}
        if turn.get("tool_calls"):
            message["tool_calls"] = turn["tool_calls"]
        _check_answer(message, f"{where}.content", allow_empty)
        messages.append(message)
    return messages


def tool_call_message(text: str, where: str) -> dict:
    """A ShareGPT ``function_call`` turn (JSON name/arguments) as an assistant message with tool_calls."""
    try:
        calls = json.loads(text)
    except json.JSONDecodeError:
        raise FieldError(where, "function_call turn is not JSON with 'name' and 'arguments'", MALFORMED) from None
    calls = calls if isinstance(calls, list) else [calls]
    tool_calls = []
    for call in calls:
        if not isinstance(call, dict) or "name" not in call:
            raise FieldError(where, "function_call turn needs a 'name'", MALFORMED)
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        tool_calls.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return {"role": "assistant", "content": "", "tool_calls": tool_calls}


def sharegpt_messages(turns: Any, column: str, spec: ColumnSpec, *, allow_empty: bool = False) -> list[dict]:
    """ShareGPT turns (``from``/``value`` and human/gpt/system/function_call/observation, renamable by tags)."""
    if not isinstance(turns, list) or not turns:
        raise FieldError(column, "expected a non-empty list of turns", WRONG_TYPE)
    role_tag, content_tag = spec.tag("role_tag", "from"), spec.tag("content_tag", "value")
    role_of = {
        spec.tag("user_tag", "human"): "user",
        spec.tag("assistant_tag", "gpt"): "assistant",
        spec.tag("system_tag", "system"): "system",
        spec.tag("observation_tag", "observation"): "tool",
        spec.tag("function_tag", "function_call"): "function_call",
    }
    messages = []
    for index, turn in enumerate(turns):
        where = f"{column}[{index}]"
        if not isinstance(turn, dict):
            raise FieldError(where, f"expected an object with '{role_tag}' and '{content_tag}'", WRONG_TYPE)
        tag = turn.get(role_tag)
        if tag not in role_of:
            raise FieldError(f"{where}.{role_tag}", f"unknown role {tag!r}; expected one of {sorted(role_of)} "
                             "(map other names with 'tags' in dataset_info.json)", UNKNOWN_ROLE)
        content = turn.get(content_tag)
        if not isinstance(content, str | list):
            raise FieldError(f"{where}.{content_tag}", f"expected text, got {type(content).__name__}", WRONG_TYPE)
        content = _content(content, f"{where}.{content_tag}")
        if role_of[tag] == "function_call":
            messages.append(tool_call_message(content, f"{where}.{content_tag}"))
            continue
        message = {"role": role_of[tag], "content": content}
        _check_answer(message, f"{where}.{content_tag}", allow_empty)
        messages.append(message)
    return messages


def turns_to_messages(turns: Any, column: str, spec: ColumnSpec, *, allow_empty: bool = False) -> list[dict]:
    """Either style of turns: role/content turns are read as OpenAI messages unless tags say otherwise."""
    first = turns[0] if isinstance(turns, list) and turns else None
    if "role_tag" not in spec.tags and isinstance(first, dict) and "role" in first and "from" not in first:
        return normalize_messages(turns, column, allow_empty=allow_empty)
    return sharegpt_messages(turns, column, spec, allow_empty=allow_empty)


def with_system(messages: list[dict], record: dict, spec: ColumnSpec) -> list[dict]:
    """Prepend the record's system column (if any) unless the conversation already opens with one."""
    system = optional_text(record, spec.column("system", "system"))
    if system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def parse_tools(record: dict, column: str | None) -> list[dict] | None:
    """Tool definitions (a list, or a JSON string of one) as OpenAI ``{"type": "function", ...}`` entries."""
    if not column or record.get(column) in (None, "", []):
        return None
    value = record[column]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise FieldError(column, f"expected a JSON list of tool definitions ({error.msg})", MALFORMED) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise FieldError(column, f"expected a list of tool definitions, got {type(value).__name__}", WRONG_TYPE)
    return [tool if "type" in tool else {"type": "function", "function": tool} for tool in value]


def check_order(messages: list[dict], column: str) -> list[str]:
    """Optional system first, then a user turn, and no user turn answered by another user or a tool.

    Returns the roles after the system message. Consecutive assistant turns are allowed: a tool call
    followed by text, or a reply continued, is real data.
    """
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        raise FieldError(column, "a system message may only come first", NOT_ALTERNATING)
    if not body or body[0] != "user":
        raise FieldError(column, f"conversation must start with a user turn, got {body[:1] or 'nothing'}",
                         NOT_ALTERNATING)
    for previous, current in zip(body, body[1:], strict=False):
        if previous == current == "user" or (previous == "user" and current == "tool"):
            raise FieldError(column, f"turns do not alternate: '{previous}' followed by '{current}'",
                             NOT_ALTERNATING)
    return body


def check_conversation(messages: list[dict], column: str) -> None:
    """A trainable conversation: optional system first, a user turn before any reply, and a reply."""
    if "assistant" not in check_order(messages, column):
        raise FieldError(column, "conversation has no assistant turn to train on", NO_ASSISTANT)


def check_prompt(messages: list[dict], column: str) -> None:
    """A prompt to answer: in order, and ending with a user (or tool) turn that the answer replies to."""
    body = check_order(messages, column)
    if body[-1] == "assistant":
        raise FieldError(column, "the prompt must end with a user turn, not an assistant turn", NOT_ALTERNATING)


def split_last_answer(messages: list[dict], column: str) -> tuple[list[dict], list[dict]]:
    """(prompt, [final assistant message]) of a conversation whose last turn is the answer."""
    if not messages or messages[-1]["role"] != "assistant":
        raise FieldError(column, "the conversation must end with the assistant answer", NO_ASSISTANT)
    prompt = messages[:-1]
    check_prompt(prompt, column)
    return prompt, messages[-1:]


def clean_query(query: str) -> str:
    """An input that only says there is no input ("<No Input>" in real Alpaca data) is no input."""
    return "" if query.strip().lower() in PLACEHOLDER_INPUTS else query


def user_turn(instruction: str, query: str) -> str:
    """Instruction and input in one user turn, as Alpaca/LLaMA-Factory do; placeholder inputs dropped."""
    return "\n".join(part for part in (instruction, clean_query(query)) if part)


def history_messages(record: dict, column: str | None) -> list[dict]:
    """Alpaca ``history``: earlier [question, answer] pairs as user/assistant turns."""
    history = record.get(column) if column else None
    if history in (None, ""):
        return []
    if not isinstance(history, list):
        raise FieldError(column, f"expected a list of [question, answer] pairs, got {type(history).__name__}",
                         WRONG_TYPE)
    messages = []
    for index, turn in enumerate(history):
        if not (isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise FieldError(f"{column}[{index}]", "expected a [question, answer] pair of strings", WRONG_TYPE)
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    return messages


def prompt_column(record: dict, spec: ColumnSpec, candidates: tuple[str, ...] = PROMPT_COLUMNS) -> str:
    """The mapped prompt column, else the first of ``candidates`` the record has."""
    mapped = spec.columns.get("prompt")
    if mapped:
        return mapped
    found = next((column for column in candidates if column in record), None)
    if found is None:
        raise FieldError("prompt", f"missing a prompt column: one of {', '.join(candidates)} "
                         "(or map one with columns.prompt)", MISSING_FIELD)
    return found


def instruction_prompt(record: dict, spec: ColumnSpec, column: str, query_column: str | None) -> list[dict]:
    """A user turn from an instruction column (+ an input column) with the record's system and history.

    The instruction may be empty when the input carries the request (real Alpaca records do that).
    """
    query = clean_query(optional_text(record, query_column)) if query_column and query_column != column else ""
    instruction = require_text(record, column, allow_empty=bool(query.strip()))
    messages = history_messages(record, spec.column("history", "history"))
    messages = with_system([*messages, {"role": "user", "content": user_turn(instruction, query)}], record, spec)
    check_prompt(messages, column)
    return messages


def prompt_messages(record: dict, spec: ColumnSpec,
                    candidates: tuple[str, ...] = PROMPT_COLUMNS) -> tuple[list[dict], set[str]]:
    """The prompt of a record without a conversation column, and the columns it was built from.

    The prompt column holds text (then ``input`` or the mapped query column is appended, and the system
    and history columns apply) or a list of messages (TRL's conversational prompts).
    """
    column = prompt_column(record, spec, candidates)
    value = record.get(column)
    if isinstance(value, list):
        messages = with_system(turns_to_messages(value, column, spec), record, spec)
        check_prompt(messages, column)
        return messages, {column, spec.column("system", "system")}
    query_column = spec.columns.get("query") or ("input" if column == "instruction" else None)
    messages = instruction_prompt(record, spec, column, query_column)
    used = {column, spec.column("system", "system"), spec.column("history", "history")}
    return messages, used | ({query_column} if query_column else set())


def answer_messages(value: Any, column: str, spec: ColumnSpec, *, allow_empty: bool = False) -> list[dict]:
    """An answer given as text, one ShareGPT/OpenAI turn object, or a list of turns, starting with the assistant.

    ``allow_empty`` is for preference data, where an empty reply can be the preferred one.
    """
    if value is None:
        raise FieldError(column, f"missing field '{column}'", MISSING_FIELD)
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise FieldError(column, "is empty; expected non-empty text", EMPTY_ANSWER)
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise FieldError(column, f"expected text or messages, got {type(value).__name__}", WRONG_TYPE)
    messages = turns_to_messages(value, column, spec, allow_empty=allow_empty)
    if messages[0]["role"] != "assistant":
        raise FieldError(column, f"the answer must start with an assistant turn, got '{messages[0]['role']}'",
                         NOT_ALTERNATING)
    return messages


def parse_transcript(text: str, column: str) -> list[dict]:
    """An Anthropic HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as user/assistant messages."""
    pieces = _TRANSCRIPT_TURN.split(text)
    if pieces[0].strip():
        raise FieldError(column, "a transcript must start with 'Human:'", MALFORMED)
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[speaker], "content": content.strip()}
            for speaker, content in zip(pieces[1::2], pieces[2::2], strict=True)]


def require_transcript(value: Any, column: str) -> str:
    """A transcript column's text: present, a string, not blank."""
    if value is None:
        raise FieldError(column, f"missing field '{column}'", MISSING_FIELD)
    if not isinstance(value, str):
        raise FieldError(column, f"expected a transcript string, got {type(value).__name__}", WRONG_TYPE)
    if not value.strip():
        raise FieldError(column, "is empty; expected a transcript", EMPTY_TEXT)
    return value
