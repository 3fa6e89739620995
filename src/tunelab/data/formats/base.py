"""What every format shares: kinds of canonical rows, the error a bad record raises, the column spec
that maps a dataset's columns, the ``Format`` registry entry, and text helpers.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunelab.data.row_kinds import ROW_KINDS

Row = dict[str, Any]

# The kinds of canonical rows a format produces, with the fields of each: the table in data/row_kinds.py.
KINDS = ROW_KINDS

# Short stable reasons, so callers can count skipped records by category (the message says the details).
MISSING_FIELD = "missing field"
WRONG_TYPE = "wrong type"
EMPTY_ANSWER = "empty answer"
EMPTY_TEXT = "empty text"
NOT_ALTERNATING = "turns do not alternate"
NO_ASSISTANT = "no assistant turn"
UNKNOWN_ROLE = "unknown role"
CHOSEN_EQUALS_REJECTED = "chosen equals rejected"
PROMPTS_DIFFER = "prompts differ"
BAD_LABEL = "bad label"
MALFORMED = "malformed value"
IMAGE_COUNT = "images do not match their placeholders"
IMAGE_MISSING = "image not found or not an image"
UNKNOWN_FORMAT = "unknown format"
INVALID_RECORD = "invalid record"
# These three are about the dataset's settings, not one record: skipping records cannot fix them.
WRONG_STAGE = "wrong stage"
BAD_FORMATTING = "bad formatting"
BAD_OPTION = "bad option"
DATASET_REASONS = frozenset({WRONG_STAGE, BAD_FORMATTING, BAD_OPTION})
REASONS = (MISSING_FIELD, WRONG_TYPE, EMPTY_ANSWER, EMPTY_TEXT, NOT_ALTERNATING, NO_ASSISTANT, UNKNOWN_ROLE,
           CHOSEN_EQUALS_REJECTED, PROMPTS_DIFFER, BAD_LABEL, MALFORMED, UNKNOWN_FORMAT, INVALID_RECORD,
           WRONG_STAGE, BAD_FORMATTING, BAD_OPTION, IMAGE_COUNT, IMAGE_MISSING)


class FieldError(ValueError):
    """A record's field is missing or malformed; the loader adds file and line.

    ``field`` names where (``messages[2].content``), ``reason`` is one of ``REASONS`` (a category to count
    skipped records by), and the message says exactly what is wrong.
    """

    def __init__(self, field: str, message: str, reason: str = INVALID_RECORD):
        if reason not in REASONS:
            raise ValueError(f"unknown FieldError reason {reason!r}")
        self.field = field
        self.reason = reason
        super().__init__(message)

    @property
    def dataset_level(self) -> bool:
        """True when the dataset's settings are wrong (stage, formatting, options): every record would fail."""
        return self.reason in DATASET_REASONS


# option name -> allowed values; the first is the default.
OPTIONS: dict[str, tuple[Any, ...]] = {
    "pairs": ("all", "first"),
    "instances": ("all", "first"),
    "extract_answer": (None, "gsm8k", "####"),
}


@dataclass
class ColumnSpec:
    """How a dataset's columns map to a format: LLaMA-Factory's ``dataset_info.json`` keys, plus options.

    ``formatting`` names a format ("dolly", "seed_tasks"...) or a family of them ("alpaca", "sharegpt"): the
    family's format for the wanted kind is used. ``columns`` maps roles to column names (prompt, query,
    response, history, system, tools, messages, chosen, rejected, kto_tag); ``tags`` maps ShareGPT turn
    keys and role names (role_tag, content_tag, user_tag, assistant_tag, observation_tag, function_tag,
    system_tag). ``ranking`` marks a preference dataset: it then only gives preference rows.

    ``options`` (a dataset's ``"options"`` object) tune conversion:

    - ``pairs``: ``"all"`` (default) makes one preference row per gold answer × bad answer of a
      ``gold_answers``/``bad_answers`` record; ``"first"`` only the first gold with the first bad.
    - ``instances``: ``"all"`` (default) makes one sft row per entry of a seed task's ``instances``;
      ``"first"`` only the first.
    - ``extract_answer``: ``"gsm8k"`` (same as ``"####"``) replaces an rl row's answer column (``answer``,
      or what ``columns.response`` names) by the text after its last ``####``, commas removed ("1,600" ->
      "1600"), so reward functions compare final numbers.
    """

    formatting: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    ranking: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def column(self, key: str, default: str | None) -> str | None:
        return self.columns.get(key, default)

    def tag(self, key: str, default: str) -> str:
        return self.tags.get(key, default)

    def option(self, key: str) -> Any:
        return self.options.get(key, OPTIONS[key][0])


def check_options(spec: ColumnSpec) -> None:
    """Unknown option names or values fail once, up front, rather than being silently ignored."""
    for key, value in spec.options.items():
        if key not in OPTIONS:
            close = difflib.get_close_matches(key, OPTIONS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known options: {', '.join(OPTIONS)}"
            raise FieldError(f"options.{key}", f"unknown option '{key}'{hint}", BAD_OPTION)
        if value not in OPTIONS[key]:
            allowed = ", ".join(repr(v) for v in OPTIONS[key] if v is not None)
            raise FieldError(f"options.{key}", f"option '{key}' must be one of {allowed}, got {value!r}", BAD_OPTION)


@dataclass(frozen=True)
class Format:
    """One input format: how to recognise it from a record's columns and convert a record to rows.

    ``convert(record, spec)`` always returns a non-empty ``list[Row]`` (most formats give one row; a
    record of several gold and bad answers or seed-task instances gives several) or raises FieldError.
    """

    name: str
    kind: str  # which canonical row it produces: a name in data/row_kinds.py
    detect: Callable[[set[str], ColumnSpec], bool]
    convert: Callable[[Any, ColumnSpec], list[Row]]
    needs: str  # what the columns must hold, for error messages
    formatting: str | None = None  # the dataset_info.json "formatting" family it belongs to


def object_record(convert: Callable[[dict, ColumnSpec], list[Row]]) -> Callable[[Any, ColumnSpec], list[Row]]:
    """Guard a converter that reads columns: a later record of another shape fails with a clear reason."""

    @functools.wraps(convert)
    def guarded(record: Any, spec: ColumnSpec) -> list[Row]:
        if not isinstance(record, dict):
            raise FieldError("record", f"expected a JSON object, got {type(record).__name__}", WRONG_TYPE)
        return convert(record, spec)

    return guarded


def require_text(record: dict, column: str, *, empty_reason: str = EMPTY_TEXT, allow_empty: bool = False) -> str:
    """A string column that must be there (and, unless allowed, hold more than whitespace)."""
    if record.get(column) is None:
        raise FieldError(column, f"missing field '{column}'", MISSING_FIELD)
    value = record[column]
    if not isinstance(value, str):
        raise FieldError(column, f"expected a string, got {type(value).__name__}", WRONG_TYPE)
    if not allow_empty and not value.strip():
        raise FieldError(column, "is empty; expected non-empty text", empty_reason)
    return value


def optional_text(record: dict, column: str | None) -> str:
    """A string column that may be absent or empty ("" then)."""
    if not column or record.get(column) in (None, ""):
        return ""
    value = record[column]
    if not isinstance(value, str):
        raise FieldError(column, f"expected a string, got {type(value).__name__}", WRONG_TYPE)
    return value
