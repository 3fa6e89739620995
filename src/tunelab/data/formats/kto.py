"""KTO formats: one answer per prompt with a desirable/undesirable label.

Every format here gives ``{"prompt": [...], "completion": [...], "label": bool}`` rows, plus ``"tools"``
when the record has a tools column.
"""

from __future__ import annotations

from typing import Any

from tunelab.data.formats.base import BAD_LABEL, MISSING_FIELD, ColumnSpec, FieldError, Format, Row, object_record
from tunelab.data.formats.conversation import (
    answer_messages,
    check_order,
    parse_tools,
    prompt_messages,
    split_last_answer,
    turns_to_messages,
    with_system,
)

_LABEL_TEXT = {"true": True, "false": False}


def parse_label(record: dict, column: str) -> bool:
    """true/false, 1/0 or "true"/"false": anything else is more likely a mistake than a label."""
    value: Any = record.get(column)
    if value is None:
        raise FieldError(column, f"missing field '{column}'", MISSING_FIELD)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_TEXT:
        return _LABEL_TEXT[value.strip().lower()]
    raise FieldError(column, f"expected a boolean label (true/false, 1/0), got {value!r:.40}", BAD_LABEL)


def _label_column(spec: ColumnSpec) -> str:
    return spec.column("kto_tag", "label")


def _row(prompt: list[dict], completion: list[dict], record: dict, spec: ColumnSpec) -> list[Row]:
    check_order(prompt + completion, "completion")
    row: Row = {"prompt": prompt, "completion": completion, "label": parse_label(record, _label_column(spec))}
    tools_column = spec.column("tools", "tools")
    if tools_column in record:
        row["tools"] = parse_tools(record, tools_column)
    return [row]


# --- a conversation whose last assistant turn is the labelled answer (LLaMA-Factory kto_en_demo) -------

def _conversation_column(columns: set[str] | dict, spec: ColumnSpec) -> str | None:
    mapped = spec.columns.get("messages")
    if mapped:
        return mapped if mapped in columns else None
    return next((column for column in ("messages", "conversations") if column in columns), None)


def _conversation_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return _label_column(spec) in columns and _conversation_column(columns, spec) is not None


@object_record
def _conversation_convert(record: dict, spec: ColumnSpec) -> list[Row]:
    column = _conversation_column(record, spec) or spec.column("messages", "messages")
    messages = with_system(turns_to_messages(record.get(column), column, spec), record, spec)
    prompt, completion = split_last_answer(messages, column)
    return _row(prompt, completion, record, spec)


# --- prompt + completion + label (TRL's unpaired preference) --------------------------------------------

def _completion_column(spec: ColumnSpec) -> str:
    return spec.column("response", "completion")


def _unpaired_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return _label_column(spec) in columns and _completion_column(spec) in columns


@object_record
def _unpaired_convert(record: dict, spec: ColumnSpec) -> list[Row]:
    prompt, _ = prompt_messages(record, spec)
    column = _completion_column(spec)
    return _row(prompt, answer_messages(record.get(column), column, spec), record, spec)


KTO_FORMATS = (
    Format("kto_conversation", "kto", _conversation_detect, _conversation_convert,
           "'messages' (or 'conversations') ending with the answer, and a boolean 'label'", formatting="sharegpt"),
    Format("kto", "kto", _unpaired_detect, _unpaired_convert,
           "'prompt', 'completion' and a boolean 'label'", formatting="alpaca"),
)
