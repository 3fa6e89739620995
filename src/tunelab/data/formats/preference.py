"""Preference formats (rm, dpo, orpo, simpo): a prompt with a chosen and a rejected answer.

Every format here gives ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` rows, plus ``"tools"``
when the record has a tools column. An empty answer is allowed on one side (Anthropic HH prefers an empty
reply to a harmful one in a few pairs, and that still teaches a preference); equal sides are not.
"""

from __future__ import annotations

import os
from typing import Any

from tunelab.data.formats.base import (
    CHOSEN_EQUALS_REJECTED,
    EMPTY_ANSWER,
    MISSING_FIELD,
    NO_ASSISTANT,
    PROMPTS_DIFFER,
    WRONG_TYPE,
    ColumnSpec,
    FieldError,
    Format,
    Row,
    object_record,
)
from tunelab.data.formats.conversation import (
    ASSISTANT_MARKER,
    PROMPT_COLUMNS,
    answer_messages,
    check_image_count,
    check_order,
    check_prompt,
    parse_tools,
    parse_transcript,
    prompt_messages,
    require_transcript,
    row_images,
    turns_to_messages,
    with_system,
)

_PAIR_COLUMNS = (("chosen", "rejected"), ("chosen_messages", "rejected_messages"))  # TRL; LLaMA-Factory v1


def pair_columns(columns: set[str] | dict, spec: ColumnSpec) -> tuple[str, str] | None:
    """The (chosen, rejected) columns: mapped ones, else the usual names, if the record has both."""
    mapped = (spec.column("chosen", None), spec.column("rejected", None))
    for chosen, rejected in (mapped, *_PAIR_COLUMNS):
        if chosen and rejected and chosen in columns and rejected in columns:
            return chosen, rejected
    return None


def _require_pair(record: dict, spec: ColumnSpec) -> tuple[str, str]:
    found = pair_columns(record, spec)
    if found is None:
        chosen, rejected = spec.column("chosen", "chosen"), spec.column("rejected", "rejected")
        missing = chosen if chosen not in record else rejected
        raise FieldError(missing, f"missing field '{missing}'", MISSING_FIELD)
    return found


def _pair_row(prompt: list[dict], chosen: list[dict], rejected: list[dict], columns: tuple[str, str],
              record: dict, spec: ColumnSpec) -> Row:
    for side, column in zip((chosen, rejected), columns, strict=True):
        if not any((message.get("content") or "").strip() or message.get("tool_calls") for message in side):
            raise FieldError(column, "the answer is empty; a preference pair needs two non-empty answers",
                             EMPTY_ANSWER)
    if chosen == rejected:
        raise FieldError(columns[1], "chosen and rejected answers are the same", CHOSEN_EQUALS_REJECTED)
    check_order(prompt + chosen, columns[0])
    check_order(prompt + rejected, columns[1])
    row: Row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    tools_column = spec.column("tools", "tools")
    if tools_column in record:
        row["tools"] = parse_tools(record, tools_column)
    images = row_images(record, spec.column("images", "images"))
    if images:  # the images belong to the prompt both answers share
        check_image_count(prompt, images, spec.column("images", "images"))
        row["images"] = images
    return row


def _conversation_prompt(record: dict, spec: ColumnSpec) -> list[dict]:
    """The prompt from a conversation column if there is one, else from prompt/instruction/question."""
    column = spec.column("messages", "conversations")
    if column in record:
        messages = with_system(turns_to_messages(record[column], column, spec), record, spec)
        check_prompt(messages, column)
        return messages
    return prompt_messages(record, spec)[0]


# --- ShareGPT: conversation + one chosen and one rejected turn (LLaMA-Factory ranking data) -------------

def _sharegpt_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return spec.column("messages", "conversations") in columns and pair_columns(columns, spec) is not None


@object_record
def _sharegpt_convert(record: dict, spec: ColumnSpec) -> list[Row]:
    columns = _require_pair(record, spec)
    prompt = _conversation_prompt(record, spec)
    chosen, rejected = (answer_messages(record[c], c, spec, allow_empty=True) for c in columns)
    return [_pair_row(prompt, chosen, rejected, columns, record, spec)]


# --- chosen/rejected with an explicit prompt, or an implicit one shared by two whole conversations ------

def _shared_prefix(chosen: list[dict], rejected: list[dict],
                   columns: tuple[str, str]) -> tuple[list[dict], list[dict], list[dict]]:
    """Split two conversations where they part: the prompt is the shared turns before both answers.

    The answers start at the last turn, within or right after the shared part, where both sides have
    an assistant turn (so a shared first reply followed by different follow-ups stays in the answers).
    """
    limit = min(len(chosen), len(rejected))
    shared = next((i for i in range(limit) if chosen[i] != rejected[i]), limit)
    cut = shared
    while cut > 0 and not (cut < limit and chosen[cut]["role"] == rejected[cut]["role"] == "assistant"):
        cut -= 1
    if cut == 0:
        raise FieldError(columns[1], "chosen and rejected share no prompt before their answers", PROMPTS_DIFFER)
    check_prompt(chosen[:cut], columns[0])
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _split_transcripts(record: dict, columns: tuple[str, str]) -> tuple[list[dict], list[dict], list[dict]]:
    """Anthropic HH: two "\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts sharing everything up to the
    last "\\n\\nAssistant:" they have in common; what follows it on each side is that side's answer."""
    texts = [require_transcript(record.get(column), column) for column in columns]
    for text, column in zip(texts, columns, strict=True):
        if ASSISTANT_MARKER not in text:
            raise FieldError(column, 'transcript has no "\\n\\nAssistant:" turn', NO_ASSISTANT)
    if texts[0] == texts[1]:
        raise FieldError(columns[1], "chosen and rejected transcripts are the same", CHOSEN_EQUALS_REJECTED)
    cut = os.path.commonprefix(texts).rfind(ASSISTANT_MARKER)
    if cut < 0:
        raise FieldError(columns[1], "chosen and rejected transcripts share no prompt", PROMPTS_DIFFER)
    prompt = parse_transcript(texts[0][:cut], columns[0])
    check_prompt(prompt, columns[0])
    answers = ([{"role": "assistant", "content": text[cut + len(ASSISTANT_MARKER):].strip()}] for text in texts)
    return prompt, *answers


def _has_prompt(record: dict, spec: ColumnSpec) -> bool:
    return bool(spec.columns.get("prompt")) or any(column in record for column in PROMPT_COLUMNS)


def _preference_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return pair_columns(columns, spec) is not None


@object_record
def _preference_convert(record: dict, spec: ColumnSpec) -> list[Row]:
    columns = _require_pair(record, spec)
    if _has_prompt(record, spec):
        prompt, _ = prompt_messages(record, spec)
        chosen, rejected = (answer_messages(record.get(c), c, spec, allow_empty=True) for c in columns)
    elif all(isinstance(record.get(c), list) for c in columns):
        sides = [turns_to_messages(record[c], c, spec, allow_empty=True) for c in columns]
        if sides[0] == sides[1]:
            raise FieldError(columns[1], "chosen and rejected conversations are the same", CHOSEN_EQUALS_REJECTED)
        prompt, chosen, rejected = _shared_prefix(*sides, columns)
    else:
        prompt, chosen, rejected = _split_transcripts(record, columns)
    return [_pair_row(prompt, chosen, rejected, columns, record, spec)]


# --- several good and bad answers to one prompt --------------------------------------------------------------

def _gold_bad_detect(columns: set[str], spec: ColumnSpec) -> bool:
    return {"gold_answers", "bad_answers"} <= columns


def _answers(record: dict, column: str, spec: ColumnSpec) -> list[list[dict]]:
    values: Any = record.get(column)
    if not values:
        raise FieldError(column, f"expected a non-empty list of answers in '{column}'", MISSING_FIELD)
    if not isinstance(values, list):
        raise FieldError(column, f"expected a list of answers, got {type(values).__name__}", WRONG_TYPE)
    return [answer_messages(value, f"{column}[{index}]", spec, allow_empty=True)
            for index, value in enumerate(values)]


@object_record
def _gold_bad_convert(record: dict, spec: ColumnSpec) -> list[Row]:
    """Every gold answer against every bad one (``options.pairs: first`` keeps only the first pair)."""
    prompt = _conversation_prompt(record, spec)
    golds, bads = _answers(record, "gold_answers", spec), _answers(record, "bad_answers", spec)
    if spec.option("pairs") == "first":
        golds, bads = golds[:1], bads[:1]
    return [_pair_row(prompt, gold, bad, ("gold_answers", "bad_answers"), record, spec)
            for gold in golds for bad in bads]


PREFERENCE_FORMATS = (
    Format("sharegpt_preference", "preference", _sharegpt_detect, _sharegpt_convert,
           "'conversations' with 'chosen' and 'rejected' turns", formatting="sharegpt"),
    Format("gold_bad_answers", "preference", _gold_bad_detect, _gold_bad_convert,
           "'gold_answers' and 'bad_answers' lists with a conversation or prompt"),
    Format("preference", "preference", _preference_detect, _preference_convert,
           "'chosen' and 'rejected' (with 'prompt'/'instruction'/'question', or whole conversations or "
           "Human/Assistant transcripts sharing the prompt)", formatting="alpaca"),
)
