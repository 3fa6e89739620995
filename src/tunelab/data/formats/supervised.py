"""Supervised (sft) formats: conversations, and instruction/answer pairs under their many column names.

Every format here gives ``{"messages": [...], "tools": list | None}`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from tunelab.data.formats.base import (
    EMPTY_ANSWER,
    MISSING_FIELD,
    WRONG_TYPE,
    ColumnSpec,
    FieldError,
    Format,
    Row,
    object_record,
    require_text,
)
from tunelab.data.formats.conversation import (
    check_conversation,
    check_image_count,
    instruction_prompt,
    normalize_messages,
    parse_tools,
    row_images,
    turns_to_messages,
    user_turn,
    with_system,
)


def _sft_row(messages: list[dict], column: str, tools: list | None, images: list[str] | None = None) -> list[Row]:
    """A supervised row; ``images`` (one per ``<image>`` placeholder) only where the record has some."""
    check_conversation(messages, column)
    if images:  # without images an "<image>" in the text is just text
        check_image_count(messages, images, "images")
        return [{"messages": messages, "tools": tools, "images": images}]
    return [{"messages": messages, "tools": tools}]


# --- conversations ------------------------------------------------------------------------------------

def _conversation_format(default_column: str) -> tuple[Any, Any]:
    """detect/convert for a column of turns (ShareGPT ``conversations`` or OpenAI ``messages``): the
    turns reader understands both from/value and role/content, so only the default column differs."""

    def detect(columns: set[str], spec: ColumnSpec) -> bool:
        return spec.column("messages", default_column) in columns

    @object_record
    def convert(record: dict, spec: ColumnSpec) -> list[Row]:
        column = spec.column("messages", default_column)
        messages = with_system(turns_to_messages(record.get(column), column, spec), record, spec)
        return _sft_row(messages, column, parse_tools(record, spec.column("tools", "tools")),
                        row_images(record, spec.column("images", "images"), record.get(column)))

    return detect, convert


_sharegpt_detect, _sharegpt_convert = _conversation_format("conversations")
_messages_detect, _messages_convert = _conversation_format("messages")


def _message_list_convert(record: Any, spec: ColumnSpec) -> list[Row]:
    """A record that is itself the list of messages (no column around it)."""
    if not isinstance(record, list):
        raise FieldError("record", f"expected a list of messages, got {type(record).__name__}", WRONG_TYPE)
    return _sft_row(normalize_messages(record, "record"), "record", None)


# --- prompt / completion (TRL) -----------------------------------------------------------------------------

def _prompt_completion_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return {"prompt", "completion"} <= columns


def _side(value: Any, column: str, role: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise FieldError(column, "is empty; expected non-empty text", EMPTY_ANSWER)
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return normalize_messages(value, column)
    if value is None:
        raise FieldError(column, f"missing field '{column}'", MISSING_FIELD)
    raise FieldError(column, f"expected text or a list of messages, got {type(value).__name__}", WRONG_TYPE)


@object_record
def _prompt_completion_convert(record: dict, spec: ColumnSpec) -> list[Row]:
    messages = _side(record.get("prompt"), "prompt", "user") + _side(record.get("completion"), "completion",
                                                                       "assistant")
    return _sft_row(messages, "prompt", parse_tools(record, spec.column("tools", "tools")),
                    row_images(record, spec.column("images", "images")))


# --- instruction / answer pairs: one declarative table ---------------------------------------------------

@dataclass(frozen=True)
class PairLayout:
    """Where a pair dataset keeps the request and the answer; ``query`` is appended to the request.

    ``metadata`` lists the layout's other known columns, which carry no training text and are ignored.
    Any of the columns can be overridden by LLaMA-Factory's ``columns`` (prompt, query, response).
    """

    name: str
    prompt: str
    response: str
    query: str | None = None
    metadata: tuple[str, ...] = ()
    seen_in: str = ""


PAIR_LAYOUTS = (
    PairLayout("alpaca", "instruction", "output", "input", ("task",), "Stanford Alpaca, Self-Instruct (task)"),
    PairLayout("dolly", "instruction", "response", "context", ("category",), "Databricks Dolly"),
    PairLayout("prompt_response", "prompt", "response", seen_in="ChatGLM-6B data_sample.jsonl"),
    PairLayout("input_target", "input_text", "target_text", seen_in="T5/FLAN-style seq2seq sets"),
    PairLayout("context_target", "context", "target", seen_in="ChatGLM P-Tuning examples"),
    PairLayout("content_summary", "content", "summary", seen_in="AdvertiseGen"),
    PairLayout("question_answer", "question", "answer", seen_in="GSM8K, WikiQA"),
    PairLayout("problem_solution", "problem", "solution", metadata=("answer", "level", "subject"),
               seen_in="MATH, LIMO"),
    PairLayout("title_ask_answer", "title", "answer", "ask", ("department",), "Chinese medical dialogue CSV"),
)


def _pair_detect(layout: PairLayout, columns: set[str], spec: ColumnSpec) -> bool:
    return (spec.column("prompt", layout.prompt) in columns
            and spec.column("response", layout.response) in columns)


def _pair_convert(layout: PairLayout, record: dict, spec: ColumnSpec) -> list[Row]:
    prompt = instruction_prompt(record, spec, spec.column("prompt", layout.prompt),
                                spec.column("query", layout.query))
    answer = require_text(record, spec.column("response", layout.response), empty_reason=EMPTY_ANSWER)
    messages = [*prompt, {"role": "assistant", "content": answer}]
    return _sft_row(messages, spec.column("prompt", layout.prompt), parse_tools(record, spec.column("tools", None)),
                    row_images(record, spec.column("images", "images")))


def _pair_format(layout: PairLayout) -> Format:
    query = f" (+ '{layout.query}')" if layout.query else ""
    return Format(layout.name, "sft", partial(_pair_detect, layout), object_record(partial(_pair_convert, layout)),
                  f"'{layout.prompt}'{query} and '{layout.response}'", formatting="alpaca")


# --- seed tasks (Self-Instruct / BELLE zh_seed_tasks) ------------------------------------------------------

def _seed_tasks_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return {"instruction", "instances"} <= columns


@object_record
def _seed_tasks_convert(record: dict, spec: ColumnSpec) -> list[Row]:
    """One row per instance: each instance is a separate worked example of the task's instruction."""
    instruction = require_text(record, "instruction")
    instances = record.get("instances")
    if not isinstance(instances, list) or not instances:
        raise FieldError("instances", "expected a non-empty list of {input, output}", WRONG_TYPE if instances
                         else MISSING_FIELD)
    if spec.option("instances") == "first":
        instances = instances[:1]
    rows = []
    for index, instance in enumerate(instances):
        where = f"instances[{index}]"
        if not isinstance(instance, dict):
            raise FieldError(where, "expected an object with 'input' and 'output'", WRONG_TYPE)
        query = instance.get("input") or ""
        if not isinstance(query, str):
            raise FieldError(f"{where}.input", f"expected a string, got {type(query).__name__}", WRONG_TYPE)
        answer = require_text(instance, "output", empty_reason=EMPTY_ANSWER)
        messages = with_system([{"role": "user", "content": user_turn(instruction, query)},
                                {"role": "assistant", "content": answer}], record, spec)
        rows += _sft_row(messages, where, None)
    return rows


SUPERVISED_FORMATS = (
    Format("sharegpt", "sft", _sharegpt_detect, _sharegpt_convert, "'conversations' of {from, value}",
           formatting="sharegpt"),
    Format("messages", "sft", _messages_detect, _messages_convert, "'messages' of {role, content}"),
    _pair_format(PAIR_LAYOUTS[0]),
    Format("prompt_completion", "sft", _prompt_completion_detect, _prompt_completion_convert,
           "'prompt' and 'completion'"),
    Format("seed_tasks", "sft", _seed_tasks_detect, _seed_tasks_convert, "'instruction' and 'instances'"),
    *(_pair_format(layout) for layout in PAIR_LAYOUTS[1:]),
)
# Not detected from columns: detect_format picks it when the record itself is a list.
MESSAGE_LIST = Format("message_list", "sft", lambda columns, spec: False, _message_list_convert,
                      "a JSON list of {role, content} messages")
