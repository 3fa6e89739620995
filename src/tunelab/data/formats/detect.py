"""The format registry and detection: which ``Format`` turns a dataset's records into rows of a kind.

A dataset's format is decided once, from its first record: named by ``formatting`` in
dataset_info.json (a format name or a family: "alpaca", "sharegpt"), else the first format of the
wanted kind whose columns the record has. Records that plainly belong to another kind say which stage
they are for instead of failing somewhere inside a converter.
"""

from __future__ import annotations

from typing import Any

from tunelab.data.formats.base import (
    BAD_FORMATTING,
    UNKNOWN_FORMAT,
    WRONG_STAGE,
    WRONG_TYPE,
    ColumnSpec,
    FieldError,
    Format,
    check_options,
)
from tunelab.data.formats.kto import KTO_FORMATS, parse_label
from tunelab.data.formats.preference import PREFERENCE_FORMATS
from tunelab.data.formats.pretrain import PRETRAIN_FORMATS
from tunelab.data.formats.rl import RL_FORMATS
from tunelab.data.formats.supervised import MESSAGE_LIST, SUPERVISED_FORMATS
from tunelab.data.row_kinds import ROW_KIND_TABLE, stages_of_kind

# Order matters within a kind: detection takes the first match, so specific layouts come first.
FORMATS: dict[str, Format] = {
    fmt.name: fmt
    for fmt in (*SUPERVISED_FORMATS, MESSAGE_LIST, *PREFERENCE_FORMATS, *KTO_FORMATS, *RL_FORMATS,
                *PRETRAIN_FORMATS)
}
# Columns whose mapping in dataset_info.json says which kind of rows a dataset holds.
_KIND_COLUMNS = {column: kind.name for kind in ROW_KIND_TABLE.values() for column in kind.mapping_columns}
# The kinds a record of another stage's data can be named as, the most specific first.
_NAMEABLE = [kind.name for kind in sorted(ROW_KIND_TABLE.values(), key=lambda k: k.precedence or 0)
             if kind.precedence is not None]


def _stages(kind: str) -> str:
    stages = stages_of_kind(kind)
    if not stages:
        return f"a stage for {kind} rows (none in this version)"
    return ", ".join(stages[:-1]) + (" or " if len(stages) > 1 else "") + stages[-1]


def _formats_of(kind: str) -> list[Format]:
    return [fmt for fmt in FORMATS.values() if fmt.kind == kind]


def _first_match(kind: str, columns: set[str], spec: ColumnSpec) -> Format | None:
    return next((fmt for fmt in _formats_of(kind) if fmt.detect(columns, spec)), None)


def _other_stage_error(kind: str, fmt: Format, columns: set[str]) -> FieldError:
    return FieldError(", ".join(sorted(columns)), f"these records look like {ROW_KIND_TABLE[fmt.kind].title} data "
                      f"({fmt.name} format: {fmt.needs}), not {kind} data; use stage: {_stages(fmt.kind)}",
                      WRONG_STAGE)


def _named_format(spec: ColumnSpec, kind: str, columns: set[str]) -> Format:
    named = spec.formatting
    candidates = [fmt for fmt in _formats_of(kind) if named in (fmt.name, fmt.formatting)]
    if candidates:
        return next((fmt for fmt in candidates if fmt.detect(columns, spec)), candidates[0])
    known = {fmt.name for fmt in FORMATS.values()} | {fmt.formatting for fmt in FORMATS.values() if fmt.formatting}
    if named in known:
        forms = sorted({fmt.name for fmt in _formats_of(kind)})
        raise FieldError("formatting", f"formatting '{named}' has no {kind} form; {kind} data comes as one of "
                         f"{', '.join(forms)}", BAD_FORMATTING)
    raise FieldError("formatting", f"unknown formatting '{named}'; expected one of {', '.join(sorted(known))}",
                     BAD_FORMATTING)


def _mapped_kind(spec: ColumnSpec) -> str | None:
    return next((kind for column, kind in _KIND_COLUMNS.items() if spec.columns.get(column)), None)


def _kind_mismatch(kind: str, record: dict, spec: ColumnSpec) -> FieldError | None:
    """Rows of another kind than the stage's, which a converter would silently misread (KTO data for sft
    learns the undesirable answers as targets). A mapping of only this kind's columns is the user's
    explicit choice and passes."""
    mapped = _mapped_kind(spec)
    if mapped and mapped != kind:
        return FieldError(", ".join(sorted(spec.columns)), f"the dataset's column mapping ({sorted(spec.columns)}) "
                          f"is for {ROW_KIND_TABLE[mapped].title} data, not {kind} data; use stage: {_stages(mapped)}, "
                          "or map the columns for this stage explicitly", WRONG_STAGE)
    if kind == "sft" and not spec.columns and (kto := _first_match("kto", set(record), spec)):
        try:
            parse_label(record, "label")
        except FieldError:
            return None  # a 'label' that is no boolean is some other column, not a KTO label
        return _other_stage_error(kind, kto, set(record))
    return None


def _undetected(kind: str, columns: set[str], spec: ColumnSpec) -> FieldError:
    for other in _NAMEABLE:
        fmt = _first_match(other, columns, spec) if other != kind else None
        if fmt:
            return _other_stage_error(kind, fmt, columns)
    expected = "; or ".join(fmt.needs for fmt in _formats_of(kind) if fmt is not MESSAGE_LIST)
    return FieldError(", ".join(sorted(columns)) or "record",
                      f"cannot tell the format from columns {sorted(columns)}; expected {expected} "
                      "(or map your columns with 'columns' in dataset_info.json)", UNKNOWN_FORMAT)


def detect_format(record: Any, spec: ColumnSpec, kind: str) -> Format:
    """The format for rows of ``kind`` (a name in data/row_kinds.py; a stage's kind is in its registry entry).

    Raises FieldError: for the record (reason "unknown format", "wrong type") or for the dataset's
    settings (reasons in DATASET_REASONS: wrong stage, bad formatting, bad option).
    """
    if kind not in ROW_KIND_TABLE:
        raise ValueError(f"kind must be one of {', '.join(ROW_KIND_TABLE)}, got {kind!r}")
    check_options(spec)
    if spec.ranking and kind != "preference":
        raise FieldError("ranking", f"a ranking (preference) dataset cannot give {kind!r} rows; use stage: "
                         f"{_stages('preference')}", WRONG_STAGE)
    if isinstance(record, list):
        if kind == "sft":
            return MESSAGE_LIST
        raise FieldError("record", f"a record that is a bare list of messages gives sft rows, not {kind!r} rows",
                         WRONG_TYPE)
    if not isinstance(record, dict):
        raise FieldError("record", f"expected a JSON object, got {type(record).__name__}", WRONG_TYPE)
    if kind == "pt":
        return FORMATS["text"]
    columns = set(record)
    if kind != "pt" and (mismatch := _kind_mismatch(kind, record, spec)):
        raise mismatch
    if spec.formatting:
        return _named_format(spec, kind, columns)
    if kind in ("sft", "kto") and (preference := _first_match("preference", columns, spec)):
        raise _other_stage_error(kind, preference, columns)
    fmt = _first_match(kind, columns, spec)
    if fmt is None:
        raise _undetected(kind, columns, spec)
    return fmt
