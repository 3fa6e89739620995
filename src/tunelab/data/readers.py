"""Read data files into (line number, record) pairs, streaming, so every later error can name the line.

Supported: ``.json`` (an array, JSON Lines despite the name, or concatenated JSON values), ``.jsonl``,
``.csv``/``.tsv`` (header row gives the keys), ``.parquet``, ``.txt`` (split by line, paragraph or not at
all), any of them gzip-compressed, and folders of such files. Text encodings are detected (see
``encoding.py``). Each reader is registered by suffix in ``READERS``.

A record that cannot be parsed, in a format where the next one still can (a JSON Lines line, a CSV row),
comes out as an ``InvalidRecord`` so the caller decides whether to stop or skip and count; problems with
the file as a whole raise ``DataError``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from tunelab.data.encoding import iter_text, open_binary
from tunelab.data.jsonstream import iter_json_array, iter_json_values
from tunelab.errors import ConfigError, DataError

Record = tuple[int, Any]  # (1-based line number where the record starts, parsed record)
TEXT_SPLITS = ("line", "paragraph", "file")
PARQUET_BATCH_ROWS = 1024


@dataclass
class InvalidRecord:
    """A record that failed to parse while the rest of its file still reads.

    ``reason`` is a short stable category ("invalid JSON", "wrong number of CSV columns") to count by;
    ``detail`` says what exactly is wrong.
    """

    reason: str
    detail: str

    def error(self, file: Path | str, line: int) -> DataError:
        """The DataError to raise for a caller that does not skip bad records."""
        return DataError(f"{self.reason}: {self.detail}", file=str(file), line=line)


@dataclass(frozen=True)
class ReadOptions:
    """How to read: ``encoding`` overrides detection; ``text_split`` and ``delimiter`` apply to .txt and .csv."""

    encoding: str | None = None
    text_split: str = "line"
    delimiter: str | None = None

    def __post_init__(self) -> None:
        if self.text_split not in TEXT_SPLITS:
            raise ConfigError(f"text_split must be one of {', '.join(TEXT_SPLITS)}, got '{self.text_split}'")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ConfigError(f"delimiter must be a single character, got {self.delimiter!r}")


DEFAULT_OPTIONS = ReadOptions()


def read_text(path: Path, encoding: str | None = None) -> str:
    """Whole file as text (gunzipped, encoding detected unless given); for small files only."""
    return "".join(iter_text(path, encoding))


# --- text helpers -------------------------------------------------------------------------------------

def _split_lines(chunks: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Numbered lines without their "\\n" (a "\\r" before it stays). Splits on "\\n" only: U+2028 and
    friends occur inside real JSON strings (e.g. GPQA). A line spanning chunks is joined once, not re-copied."""
    number, pending = 1, []
    for chunk in chunks:
        *complete, rest = chunk.split("\n")
        for line in complete:
            if pending:
                pending.append(line)
                line, pending = "".join(pending), []
            yield number, line
            number += 1
        if rest:
            pending.append(rest)
    if pending:
        yield number, "".join(pending)


def _visible_text(path: Path, options: ReadOptions) -> tuple[str, Iterator[str]]:
    """The first non-whitespace character and the file's text chunks; an empty file raises."""
    chunks = iter_text(path, options.encoding)
    seen = []
    for chunk in chunks:
        seen.append(chunk)
        visible = chunk.lstrip()
        if visible:
            return visible[0], chain(seen, chunks)
    raise DataError("file is empty", file=str(path))


def _text_or_empty(path: Path, options: ReadOptions) -> Iterator[str]:
    return _visible_text(path, options)[1]


# --- JSON -------------------------------------------------------------------------------------------

def _json_lines(lines: Iterable[tuple[int, str]]) -> Iterator[Record]:
    for number, line in lines:
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            yield number, InvalidRecord("invalid JSON", f"{error.msg.removesuffix(' at')} at column {error.colno}")


def read_jsonl(path: Path, options: ReadOptions = DEFAULT_OPTIONS) -> Iterator[Record]:
    """JSON Lines: one record per line; a line that is not JSON becomes an InvalidRecord."""
    yield from _json_lines(_split_lines(_text_or_empty(path, options)))


def read_json(path: Path, options: ReadOptions = DEFAULT_OPTIONS) -> Iterator[Record]:
    """A ``.json`` file: an array of records, JSON Lines despite the name (decided by the first character),
    or, when its first line is not a whole JSON value, pretty-printed objects one after another."""
    first, chunks = _visible_text(path, options)
    if first == "[":
        yield from iter_json_array(chunks, path)
        return
    records = _json_lines(_split_lines(chunks))
    head = next(records)
    if isinstance(head[1], InvalidRecord) and first == "{":
        records.close()
        yield from iter_json_values(iter_text(path, options.encoding), path)
        return
    yield head
    yield from records


# --- CSV / TSV --------------------------------------------------------------------------------------

class _CsvFeed:
    """Lines for ``csv.reader``, keeping those of the current record: at the end of the file an odd number
    of quotes in it means a quoted field was never closed, which the csv module accepts silently."""

    def __init__(self, lines: Iterator[tuple[int, str]]):
        self.lines, self.record, self.done = lines, [], False

    def __iter__(self) -> _CsvFeed:
        return self

    def __next__(self) -> str:
        try:
            _, line = next(self.lines)
        except StopIteration:
            self.done = True
            raise
        self.record.append(line)
        return line + "\n"

    def unclosed_quote(self, quote: str = '"') -> bool:
        return self.done and sum(line.count(quote) for line in self.record) % 2 == 1


def _csv_rows(path: Path, options: ReadOptions) -> Iterator[tuple[int, list[str]]]:
    """Rows with the line each starts on; a quoted field may span lines. Blank lines are skipped."""
    delimiter = options.delimiter or ("\t" if data_suffix(path) == ".tsv" else ",")
    feed = _CsvFeed(_split_lines(_text_or_empty(path, options)))
    reader = csv.reader(feed, delimiter=delimiter)
    while True:
        start, feed.record = reader.line_num + 1, []
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:  # the parser cannot resynchronise, so the file is unusable from here
            raise DataError(f"malformed CSV starting here ({error}); a quote that is never closed?",
                            file=str(path), line=start) from None
        if feed.unclosed_quote():
            raise DataError("a quoted field starting here is never closed (file truncated?)", file=str(path),
                            line=start)
        if row and (len(row) > 1 or row[0].strip()):
            yield start, row


def _check_header(path: Path, line: int, header: list[str]) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise DataError(f"column '{name}' appears twice in the header row", file=str(path), line=line)
        seen.add(name)


def read_csv(path: Path, options: ReadOptions = DEFAULT_OPTIONS) -> Iterator[Record]:
    """CSV/TSV with a header row: each row as a dict; a row with another column count is an InvalidRecord."""
    rows = _csv_rows(path, options)
    header_line, header = next(rows, (1, None))
    if header is None:
        raise DataError("file is empty", file=str(path))
    _check_header(path, header_line, header)
    names = ", ".join(header) if len(header) <= 8 else ", ".join(header[:8]) + ", ..."
    for line, row in rows:
        if len(row) != len(header):
            yield line, InvalidRecord("wrong number of CSV columns",
                                      f"expected {len(header)} ({names}), got {len(row)}")
        else:
            yield line, dict(zip(header, row, strict=True))


# --- plain text -------------------------------------------------------------------------------------

def _paragraphs(lines: Iterable[tuple[int, str]]) -> Iterator[Record]:
    block: list[str] = []
    start = 0
    for number, line in lines:
        if line.strip():
            if not block:
                start = number
            block.append(line.rstrip("\r"))
        elif block:
            yield start, {"text": "\n".join(block)}
            block = []
    if block:
        yield start, {"text": "\n".join(block)}


def read_txt(path: Path, options: ReadOptions = DEFAULT_OPTIONS) -> Iterator[Record]:
    """Plain text as ``{"text": ...}``: one document per non-empty line, per blank-line separated
    paragraph, or the whole file (``options.text_split``)."""
    chunks = _text_or_empty(path, options)
    if options.text_split == "file":
        yield 1, {"text": "".join(chunks).replace("\r\n", "\n")}
    elif options.text_split == "paragraph":
        yield from _paragraphs(_split_lines(chunks))
    else:
        for number, line in _split_lines(chunks):
            if line.strip():
                yield number, {"text": line.rstrip("\r")}


# --- Parquet ----------------------------------------------------------------------------------------

def read_parquet(path: Path, options: ReadOptions = DEFAULT_OPTIONS) -> Iterator[Record]:
    """Parquet rows as dicts, a batch at a time; the "line" is the 1-based row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_binary(path) as stream:
        if not stream.read(1):
            raise DataError("file is empty", file=str(path))
        stream.seek(0)
        number = 0
        try:
            batches = pq.ParquetFile(stream).iter_batches(batch_size=PARQUET_BATCH_ROWS)
            for batch in batches:
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except (pa.ArrowException, OSError, EOFError) as error:
            raise DataError(f"not a readable Parquet file ({error})", file=str(path), line=number + 1) from None


# --- files and folders ------------------------------------------------------------------------------

Reader = Callable[[Path, ReadOptions], Iterator[Record]]
READERS: dict[str, Reader] = {
    ".json": read_json,
    ".jsonl": read_jsonl,
    ".csv": read_csv,
    ".tsv": read_csv,
    ".parquet": read_parquet,
    ".txt": read_txt,
}


def data_suffix(path: Path) -> str:
    """The suffix that decides the reader (lower case), looking through a trailing ``.gz``."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        return suffixes[-2] if len(suffixes) > 1 else ""
    return suffixes[-1] if suffixes else ""


def _hidden(path: Path, root: Path) -> bool:
    """Inside a dot-folder or a dot-file (.git, .ipynb_checkpoints copies): not data."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


# A dataset folder's own documentation (README.txt, LICENSE, SOURCE_COMMIT.txt ...) is not data.
_DOCUMENTATION = re.compile(r"(?i)^(readme|license|licence|notice|disclaimer|changelog|source_commit|data_license)\b")


def list_data_files(path: Path) -> list[Path]:
    """The file itself, or every data file of a folder (recursively, sorted; hidden files and the folder's
    documentation such as README/LICENSE/SOURCE_COMMIT left out)."""
    kinds = ", ".join(READERS) + " (optionally .gz)"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and data_suffix(p) in READERS
                       and not _hidden(p, path) and not _DOCUMENTATION.match(p.name))
        if not files:
            raise DataError(f"folder has no data files ({kinds})", file=str(path))
        return files
    if not path.exists():
        raise DataError("file does not exist", file=str(path))
    if data_suffix(path) not in READERS:
        raise DataError(f"unsupported file type '{data_suffix(path)}'; expected one of {kinds}", file=str(path))
    return [path]


def read_records(path: Path, *, encoding: str | None = None, text_split: str = "line",
                 delimiter: str | None = None) -> Iterator[tuple[Path, int, Any]]:
    """Every record of a file or folder as (file, line, record); a record may be an ``InvalidRecord``."""
    options = ReadOptions(encoding, text_split, delimiter)
    for file in list_data_files(Path(path)):
        for line, record in READERS[data_suffix(file)](file, options):
            yield file, line, record
