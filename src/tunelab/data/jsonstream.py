"""Parse a JSON array (or a stream of concatenated JSON values) record by record from text chunks.

``json.load`` needs the whole document in memory; a multi-GB array must not. ``raw_decode`` runs over a
sliding buffer instead: consumed text is dropped, and a record cut by a chunk boundary is retried with
more text (the read doubles each retry, so a 20 MB record costs linear time, not quadratic).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

_SPACE = re.compile(r"[ \t\r\n]*")
_DECODER = json.JSONDecoder()
_ESCAPE_ROOM = 16  # an error this close to the buffer's end may be an escape sequence cut in half


class _Buffer:
    """Text not yet parsed, with the 1-based line number at the current position."""

    def __init__(self, chunks: Iterator[str], path: Path):
        self.chunks, self.path = chunks, path
        self.text, self.pos, self.line, self.eof = "", 0, 1, False

    def fill(self, at_least: int) -> None:
        """Drop the parsed prefix and append chunks until ``at_least`` more characters (or the end)."""
        pieces, added = [self.text[self.pos:]], 0
        while added < at_least:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.eof = True
                break
            pieces.append(chunk)
            added += len(chunk)
        self.text, self.pos = "".join(pieces), 0

    def advance(self, end: int) -> None:
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end

    def peek(self) -> str:
        """The next non-whitespace character, or "" at the end of the file."""
        while True:
            self.advance(_SPACE.match(self.text, self.pos).end())
            if self.pos < len(self.text) or self.eof:
                return self.text[self.pos:self.pos + 1]
            self.fill(1)

    def error(self, message: str, pos: int | None = None) -> DataError:
        line = self.line + (self.text.count("\n", self.pos, pos) if pos is not None else 0)
        return DataError(message, file=str(self.path), line=line)

    def value(self) -> Any:
        """Decode the value at the current position, reading more text while it may just be incomplete."""
        want = 1 << 16
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as error:
                if self.eof or not self._maybe_cut(error):
                    raise self._invalid(error) from None
            else:
                if end < len(self.text) or self.eof:  # a number at the very end may continue in the next chunk
                    self.advance(end)
                    return value
            want = max(want, len(self.text) - self.pos)  # double the unparsed text each retry
            self.fill(want)

    def _maybe_cut(self, error: json.JSONDecodeError) -> bool:
        return error.msg.startswith("Unterminated string") or error.pos >= len(self.text) - _ESCAPE_ROOM

    def _invalid(self, error: json.JSONDecodeError) -> DataError:
        truncated = error.msg.startswith("Unterminated string") or not self.text[error.pos:].strip()
        if self.eof and truncated:
            return self.error(f"JSON ends inside a record ({error.msg}); is the file truncated?", error.pos)
        return self.error(f"not valid JSON ({error.msg})", error.pos)


def _close(buffer: _Buffer) -> bool:
    """Consume a ']' if it comes next; after it only whitespace may follow."""
    if buffer.peek() != "]":
        return False
    buffer.advance(buffer.pos + 1)
    if buffer.peek():
        raise buffer.error("unexpected text after the JSON array's closing ']'")
    return True


def iter_json_array(chunks: Iterator[str], path: Path) -> Iterator[tuple[int, Any]]:
    """Each element of a top-level JSON array with the line it starts on."""
    buffer = _Buffer(chunks, path)
    if buffer.peek() != "[":
        raise buffer.error("expected a JSON array starting with '['")
    buffer.advance(buffer.pos + 1)
    while not _close(buffer):
        if not buffer.peek():
            raise buffer.error("JSON array is not closed (file truncated?)")
        line = buffer.line
        yield line, buffer.value()
        separator = buffer.peek()
        if separator == ",":
            buffer.advance(buffer.pos + 1)  # a trailing comma before ']' is tolerated, as hand-edited files have it
        elif separator != "]":
            if not separator:
                raise buffer.error("JSON array is not closed (file truncated?)")
            raise buffer.error(f"expected ',' or ']' after the record of line {line}, found {separator!r}")


def iter_json_values(chunks: Iterator[str], path: Path) -> Iterator[tuple[int, Any]]:
    """Each of several JSON values written one after another (e.g. pretty-printed objects), or a single one."""
    buffer = _Buffer(chunks, path)
    while buffer.peek():
        line = buffer.line
        yield line, buffer.value()
