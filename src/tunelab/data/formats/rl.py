"""RL prompt formats (ppo, grpo): a prompt to generate from, and whatever the reward functions need.

Rows are ``{"prompt": [...], **every other column unchanged}``: TRL hands the extra columns (a GSM8K
``answer``, a MATH ``solution``...) to reward functions as keyword arguments.
"""

from __future__ import annotations

from tunelab.data.formats.base import (
    EMPTY_ANSWER,
    MALFORMED,
    ColumnSpec,
    FieldError,
    Format,
    Row,
    object_record,
    require_text,
)
from tunelab.data.formats.conversation import PROMPT_COLUMNS, prompt_messages

GSM8K_MARK = "####"


def extract_final_answer(text: str, column: str) -> str:
    """GSM8K's final answer: what follows the last "####", commas dropped ("1,600" -> "1600")."""
    if GSM8K_MARK not in text:
        raise FieldError(column, f"no '{GSM8K_MARK} <answer>' to extract the final answer from", MALFORMED)
    answer = text.rsplit(GSM8K_MARK, 1)[1].strip().replace(",", "")
    if not answer:
        raise FieldError(column, f"nothing after '{GSM8K_MARK}'", EMPTY_ANSWER)
    return answer


def _detect(columns: set[str], spec: ColumnSpec) -> bool:
    mapped = spec.columns.get("prompt")
    return mapped in columns if mapped else any(column in columns for column in PROMPT_COLUMNS)


@object_record
def _convert(record: dict, spec: ColumnSpec) -> list[Row]:
    prompt, used = prompt_messages(record, spec)
    extra = {key: value for key, value in record.items() if key not in used and key != "prompt"}
    if spec.option("extract_answer"):
        column = spec.column("response", "answer")
        extra[column] = extract_final_answer(require_text(record, column, empty_reason=EMPTY_ANSWER), column)
    return [{"prompt": prompt, **extra}]


RL_FORMATS = (
    Format("rl_prompt", "rl", _detect, _convert,
           "a prompt in 'prompt', 'instruction', 'question' or 'problem' (other columns are kept)",
           formatting="alpaca"),
)
