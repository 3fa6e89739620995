"""What ``tunelab rag index`` reads: text and Markdown files whole, the text fields of JSON/JSONL/CSV/Parquet
records, and folders of them, through the data layer's readers (so encodings are detected and a bad record is
named by file and line); then each text cut into chunks that the embedding model reads in full.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.readers import READERS, InvalidRecord, ReadOptions, data_suffix, read_text
from tunelab.data.registry import Skipped
from tunelab.errors import DataError

# Read whole, one document per file (a .txt in a dataset is split into records; here it is prose).
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
RECORD_SUFFIXES = tuple(suffix for suffix in READERS if suffix not in TEXT_SUFFIXES)
# The field a record's text is taken from when --field is not given, first found wins.
DEFAULT_FIELDS = ("text", "content", "document", "page_content")
# A chunk ends after one of these where it can (sentence ends, Chinese ones too), not mid-sentence.
SENTENCE_ENDS = frozenset(".!?;。！？；…\n")


@dataclass(frozen=True)
class Document:
    """One text to index: a whole file (``record`` None), or one record of a data file (1-based, and the line
    where it starts)."""

    source: str
    text: str
    record: int | None = None
    line: int | None = None


def document_files(paths: list[str]) -> list[Path]:
    """The files to index, in order: each file given, and every text or data file inside each folder (hidden
    ones left out). A path that is not there, or a file of another kind, is a DataError."""
    kinds = ", ".join(TEXT_SUFFIXES + RECORD_SUFFIXES)
    files: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _indexable(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"folder has no documents ({kinds}, optionally .gz for data files)", file=given)
            files += found
        elif not path.exists():
            raise DataError("no such file or folder", file=given)
        elif not _indexable(path):
            raise DataError(f"cannot index a '{''.join(path.suffixes) or path.name}' file; expected {kinds}",
                            file=given)
        else:
            files.append(path)
    return list(dict.fromkeys(p.resolve() for p in files))


def _indexable(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES or data_suffix(path) in RECORD_SUFFIXES


def file_documents(path: Path, fields: list[str], *, encoding: str | None = None,
                   skip_invalid: bool = False, skipped: Skipped | None = None) -> list[Document]:
    """The documents of one file. A record that cannot be read, or lacks the field, stops with its file and line
    (``skip_invalid``: counted in ``skipped`` instead); a record whose text is empty is always counted."""
    skipped = skipped if skipped is not None else Skipped()
    source = str(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        text = read_text(path, encoding)
        if not text.strip():
            skipped.add("empty text", source)
            return []
        return [Document(source, text)]
    documents = []
    reader = READERS[data_suffix(path)]
    for number, (line, record) in enumerate(reader(path, ReadOptions(encoding=encoding)), start=1):
        try:
            if isinstance(record, InvalidRecord):
                raise record.error(source, line)
            text = record_text(record, fields, source, line, number)
        except DataError as error:
            if not skip_invalid:
                raise
            skipped.add(str(error).split(": ", 1)[-1], f"{source} line {line}")
            continue
        if text.strip():
            documents.append(Document(source, text, number, line))
        else:
            skipped.add("empty text", f"{source} line {line}")
    return documents


def record_text(record: Any, fields: list[str], source: str, line: int, number: int) -> str:
    """The text of a record: its ``fields`` joined by a newline (by default the first of DEFAULT_FIELDS)."""
    if not isinstance(record, dict):
        raise DataError(f"a record must be an object with a text field, got {type(record).__name__}", file=source,
                        line=line, record=number)
    wanted = fields or [next((name for name in DEFAULT_FIELDS if name in record), "")]
    if not wanted[0]:
        raise DataError(f"which field holds the text? give --field (this record has: {', '.join(map(str, record))})",
                        file=source, line=line, record=number)
    parts = []
    for name in wanted:
        if name not in record:
            raise DataError(f"no field '{name}' (this record has: {', '.join(map(str, record))})", file=source,
                            line=line, record=number)
        value = record[name]
        parts.append("" if value is None else value if isinstance(value, str) else
                     json.dumps(value, ensure_ascii=False))
    return "\n".join(part for part in parts if part)


def split_text(text: str, tokenizer: Any, size: int, overlap: int) -> list[str]:
    """``text`` in pieces of at most ``size`` tokens of the embedding model's tokenizer, each starting
    ``overlap`` tokens before the previous one ended. A piece ends after a sentence end where one lies in its
    second half. The pieces are slices of the original text (its spaces and line breaks kept)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    offsets = [(start, end) for start, end in offsets if end > start]
    if len(offsets) <= size:
        return [text.strip()] if text.strip() else []
    pieces, start = [], 0
    while start < len(offsets):
        end = min(start + size, len(offsets))
        if end < len(offsets):
            end = next((stop + 1 for stop in range(end - 1, start + size // 2 - 1, -1)
                        if _ends_sentence(text, offsets[stop][1])), end)
        pieces.append(text[offsets[start][0]:offsets[end - 1][1]].strip())
        if end == len(offsets):
            break
        start = max(end - overlap, start + 1)
    return [piece for piece in pieces if piece]


def _ends_sentence(text: str, position: int) -> bool:
    """The token ending at ``position`` closes a sentence: it ends with a stop, or a line break follows."""
    return text[position - 1] in SENTENCE_ENDS or text[position:position + 1] == "\n"


def content_hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def iter_chunks(documents: list[Document], tokenizer: Any, size: int, overlap: int
                ) -> Iterator[tuple[Document, int, str]]:
    """(document, 1-based chunk number, chunk text) for every chunk of ``documents``."""
    for document in documents:
        for number, piece in enumerate(split_text(document.text, tokenizer, size, overlap), start=1):
            yield document, number, piece


def cjk_share(texts: list[str]) -> float:
    """The share of letters that are CJK ideographs, kana or hangul."""
    letters = [c for text in texts for c in text if c.isalpha()]
    cjk = sum(1 for c in letters if unicodedata.name(c, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")))
    return cjk / len(letters) if letters else 0.0
