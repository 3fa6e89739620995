"""User-facing errors: the CLI prints their message alone (no traceback) and exits non-zero."""

from __future__ import annotations


class TunelabError(Exception):
    """An error caused by the user's input, with a message that says what to fix."""


class ConfigError(TunelabError):
    """A configuration key is unknown, mistyped or contradicts another one."""


class DataError(TunelabError):
    """A data file or record cannot be used; names the file, the record and the field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, record: int | None = None):
        where = []
        if file:
            where.append(str(file))
        if line is not None:
            # several records can share a line (a one-line JSON array): then the record number tells which
            where.append(f"line {line}" + (f" (record {record})" if record is not None and record != line else ""))
        if field:
            where.append(f"field '{field}'")
        self.file, self.line, self.field, self.record = file, line, field, record
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class RewardError(TunelabError):
    """A reward function failed or returned something unusable; names the function and the sample."""

    def __init__(self, message: str, *, sample: int | None = None):
        self.sample = sample
        super().__init__(message)


def shorten(text: str, limit: int = 300) -> str:
    """A library's message cut to about ``limit`` characters at a word boundary, marked with '...'."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
