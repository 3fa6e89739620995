"""Read data files into (line number, record) pairs, so every later error can name the line.

Supported here: ``.json`` holding an array or JSON Lines (several real datasets name JSONL files
``.json``), ``.jsonl``, ``.txt`` (one document per line), any of them gzip-compressed, and folders of
such files. Each reader is registered by suffix in ``READERS``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

Record = tuple[int, Any]  # (1-based line number where the record starts, parsed record)


def read_text(path: Path) -> str:
    """Whole file as text, gunzipped if needed; UTF-8 with or without BOM."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"not UTF-8 text (byte {error.start}); set the dataset's encoding", file=str(path),
                        line=line) from None


def _split_lines(text: str) -> list[str]:
    # Split on '\n' only: U+2028 and friends occur inside real JSON strings (e.g. GPQA).
    return text.split("\n")


def _read_json_lines(path: Path, text: str) -> Iterator[Record]:
    for number, line in enumerate(_split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON ({error.msg} at column {error.colno})", file=str(path),
                            line=number) from None


def _read_json_array(path: Path, text: str) -> Iterator[Record]:
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    line = text.count("\n", 0, position) + 1
    length = len(text)
    while True:
        start = position
        while position < length and text[position] in " \t\r\n,":
            position += 1
        line += text.count("\n", start, position)
        if position >= length:
            raise DataError("JSON array is not closed (file truncated?)", file=str(path), line=line)
        if text[position] == "]":
            return
        try:
            record, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON ({error.msg})", file=str(path), line=error.lineno) from None
        yield line, record
        line += text.count("\n", position, end)
        position = end


def read_json(path: Path) -> Iterator[Record]:
    """A ``.json`` file: an array of records, or JSON Lines despite the name."""
    text = read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise DataError("file is empty", file=str(path))
    if stripped[0] == "[":
        return _read_json_array(path, text)
    return _read_json_lines(path, text)


def read_jsonl(path: Path) -> Iterator[Record]:
    text = read_text(path)
    if not text.strip():
        raise DataError("file is empty", file=str(path))
    return _read_json_lines(path, text)


def read_txt(path: Path) -> Iterator[Record]:
    """Plain text: one document per non-empty line, as ``{"text": line}``."""
    text = read_text(path)
    for number, line in enumerate(_split_lines(text), start=1):
        if line.strip():
            yield number, {"text": line.rstrip("\r")}


READERS: dict[str, Callable[[Path], Iterator[Record]]] = {
    ".json": read_json,
    ".jsonl": read_jsonl,
    ".txt": read_txt,
}


def data_suffix(path: Path) -> str:
    """The suffix that decides the reader, looking through a trailing ``.gz``."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        return suffixes[-2] if len(suffixes) > 1 else ""
    return path.suffix


def list_data_files(path: Path) -> list[Path]:
    """The file itself, or every readable file of a folder (recursively, sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and data_suffix(p) in READERS)
        if not files:
            raise DataError(f"folder has no data files ({', '.join(READERS)})", file=str(path))
        return files
    if not path.exists():
        raise DataError("file does not exist", file=str(path))
    if data_suffix(path) not in READERS:
        raise DataError(f"unsupported file type '{data_suffix(path)}'; expected one of {', '.join(READERS)}",
                        file=str(path))
    return [path]


def read_records(path: Path) -> Iterator[tuple[Path, int, Any]]:
    """Every record of a file or folder as (file, line, record)."""
    for file in list_data_files(path):
        for line, record in READERS[data_suffix(file)](file):
            yield file, line, record
