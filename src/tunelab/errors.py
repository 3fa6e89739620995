"""User-facing errors: the CLI prints their message alone (no traceback) and exits non-zero."""

from __future__ import annotations


class TunelabError(Exception):
    """An error caused by the user's input, with a message that says what to fix."""


class ConfigError(TunelabError):
    """A configuration key is unknown, mistyped or contradicts another one."""


class DataError(TunelabError):
    """A data file or record cannot be used; names the file, the record and the field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = []
        if file:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field '{field}'")
        self.file, self.line, self.field = file, line, field
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
