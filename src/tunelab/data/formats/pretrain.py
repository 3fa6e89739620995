"""Pretraining text (pt): ``{"text": str}`` rows from a text column.

The column is ``text`` unless ``columns.prompt`` names another (LLaMA-Factory's c4_demo, wiki_demo and
refinedweb entries map ``prompt`` to ``text`` or ``content`` this way).
"""

from __future__ import annotations

from tunelab.data.formats.base import ColumnSpec, Format, Row, object_record, require_text


def _column(record: dict | set[str], spec: ColumnSpec) -> str:
    column = spec.column("prompt", "text")
    return column if column in record or "text" not in record else "text"


def _detect(columns: set[str], spec: ColumnSpec) -> bool:
    return _column(columns, spec) in columns


@object_record
def _convert(record: dict, spec: ColumnSpec) -> list[Row]:
    return [{"text": require_text(record, _column(record, spec))}]


PRETRAIN_FORMATS = (
    Format("text", "pt", _detect, _convert, "'text' (or the column that columns.prompt names)"),
)
