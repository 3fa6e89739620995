"""Data formats: detect a record's format and convert it to canonical rows of a kind.

Kinds and their rows (TRL's standard dataset types; see ``base.py`` and docs/architecture.md): sft
``{"messages", "tools"}``, pt ``{"text"}``, preference ``{"prompt", "chosen", "rejected"}``, kto
``{"prompt", "completion", "label"}``, rl ``{"prompt", ...extra columns}``. One module per kind holds its
formats; ``detect.py`` holds the registry ``FORMATS`` and ``detect_format``.

Contract: ``detect_format(record, spec, kind) -> Format``; ``fmt.convert(record, spec) -> list[Row]``
(never empty; several rows when one record holds several examples); both raise ``FieldError`` with a
``field``, a message and a short stable ``reason``.
"""

from tunelab.data.formats.base import (
    DATASET_REASONS,
    KINDS,
    OPTIONS,
    REASONS,
    ColumnSpec,
    FieldError,
    Format,
    Row,
)
from tunelab.data.formats.conversation import check_conversation
from tunelab.data.formats.detect import FORMATS, detect_format
from tunelab.data.formats.supervised import PAIR_LAYOUTS

__all__ = ["DATASET_REASONS", "FORMATS", "KINDS", "OPTIONS", "PAIR_LAYOUTS", "REASONS", "ColumnSpec",
           "FieldError", "Format", "Row", "check_conversation", "detect_format"]
