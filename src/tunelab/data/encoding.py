"""Find a data file's text encoding from a bounded sample, then decode the file chunk by chunk.

Real datasets arrive as UTF-8 (with or without BOM), UTF-16 and GB18030/GBK. Detecting from the first
megabyte keeps memory flat for multi-GB files; a byte that does not decode later on still raises a
``DataError`` naming the file and the line, and pointing at the ``encoding`` key.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tunelab.errors import DataError

SAMPLE_BYTES = 1 << 20  # read for detection; validated as UTF-8 in full
DETECT_BYTES = 256 << 10  # handed to charset-normalizer, whose cost grows with its input
CHUNK_BYTES = 1 << 20  # read per step while decoding

# UTF-32 first: its little-endian BOM starts with UTF-16's.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_GB_FAMILY = {"gb2312", "gbk", "gb18030"}  # GB18030 is the superset: decoding with it never loses a GBK file
_UTF8_EVIDENCE = 8  # GB18030 text forms this many valid UTF-8 characters in a row only by rare chance
_HINT = "set the dataset's 'encoding' key to the file's real encoding (e.g. encoding: gb18030)"


@dataclass(frozen=True)
class TextEncoding:
    """The codec a file is decoded with, and how it was chosen (for error messages)."""

    codec: str
    how: str


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, gunzipped on the fly for ``.gz``."""
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _read_sample(path: Path) -> bytes:
    with open_binary(path) as stream:
        return _read_chunk(stream, path, SAMPLE_BYTES, line=1)


def _read_chunk(stream: BinaryIO, path: Path, size: int, line: int) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as error:  # corrupt or truncated gzip data
        raise DataError(f"cannot read the file ({error})", file=str(path), line=line) from None


def _looks_utf8(sample: bytes, complete: bool) -> bool:
    """Valid UTF-8, or UTF-8 with a bad spot: enough non-ASCII characters decode before the first bad byte
    that the rest is surely meant as UTF-8 (a file joined from two sources), so the decode error names the
    line instead of a guessed code page turning the whole file into nonsense."""
    try:
        codecs.getincrementaldecoder("utf-8")("strict").decode(sample, final=complete)
    except UnicodeDecodeError as error:
        before = sample[:error.start].decode("utf-8")
        return sum(1 for char in before if char > "\x7f") >= _UTF8_EVIDENCE
    return True


def _whole_lines(sample: bytes) -> bytes:
    """Cut the sample after its last newline, so a multi-byte character split at the end cannot spoil detection."""
    cut = sample.rfind(b"\n")
    if cut <= 0:
        return sample
    end = cut + 1
    return sample[:end + 1] if sample[end:end + 1] == b"\x00" else sample[:end]  # UTF-16-LE's "\n\0"


def _guess(sample: bytes) -> str | None:
    """charset-normalizer's best match; a tie with GB18030 goes to GB18030, as short Chinese samples also
    decode as Korean or Japanese and GBK is by far the most common non-UTF-8 encoding of training data."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(_whole_lines(sample[:DETECT_BYTES])))
    if not matches:
        return None
    best = matches[0]
    if any(_canonical(match.encoding) in _GB_FAMILY and _rank(match) <= _rank(best) for match in matches):
        return "gb18030"
    return best.encoding


def _rank(match: Any) -> tuple[float, float]:
    return match.chaos, -match.coherence  # lower is better, as charset-normalizer orders its matches


def _canonical(codec: str) -> str:
    return codecs.lookup(codec).name


def detect_encoding(sample: bytes, complete: bool = False) -> str | None:
    """The codec for a file starting with ``sample`` (``complete``: the sample is the whole file), else None."""
    for bom, codec in _BOMS:
        if sample.startswith(bom):
            return codec
    if _looks_utf8(sample, complete):
        return "utf-8"
    guess = _guess(sample)
    if guess is None:
        return None
    return "gb18030" if _canonical(guess) in _GB_FAMILY else _canonical(guess)


def resolve_encoding(path: Path, declared: str | None = None) -> TextEncoding:
    """The declared encoding (it always wins), else the one detected from the first ``SAMPLE_BYTES``."""
    if declared:
        try:
            return TextEncoding(_canonical(declared), f"encoding '{declared}' was given")
        except LookupError:
            raise DataError(f"unknown encoding '{declared}'", file=str(path)) from None
    sample = _read_sample(path)
    codec = detect_encoding(sample, complete=len(sample) < SAMPLE_BYTES)
    if codec is None:
        raise DataError(f"cannot detect the text encoding (binary data?); {_HINT}", file=str(path), line=1)
    return TextEncoding(codec, f"encoding {codec} detected from the first {SAMPLE_BYTES >> 20} MiB")


def _decode_error(path: Path, chosen: TextEncoding, error: UnicodeDecodeError, newlines: int,
                  first_byte: int) -> DataError:
    """Name the line of the bad byte: count the newlines decoded before it."""
    before = codecs.decode(error.object[:error.start], error.encoding, "replace")
    offset = first_byte + error.start
    label = "UTF-8" if chosen.codec.startswith("utf-8") else chosen.codec
    return DataError(f"not {label} text at byte {offset} ({error.reason}; {chosen.how}); {_HINT}",
                     file=str(path), line=newlines + before.count("\n") + 1)


def iter_text(path: Path, encoding: str | None = None, chunk_bytes: int | None = None) -> Iterator[str]:
    """The file's text in decoded chunks (BOM removed); memory stays at about one chunk."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    chosen = resolve_encoding(path, encoding)
    decoder = codecs.getincrementaldecoder(chosen.codec)("strict")
    newlines = offset = 0
    started = False
    with open_binary(path) as stream:
        while True:
            chunk = _read_chunk(stream, path, chunk_bytes, newlines + 1)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                # error.object is the decoder's pending bytes plus this chunk
                raise _decode_error(path, chosen, error, newlines, offset + len(chunk) - len(error.object)) from None
            offset += len(chunk)
            if text and not started:
                text, started = text.removeprefix("\ufeff"), True
            newlines += text.count("\n")
            if text:
                yield text
            if not chunk:
                return
