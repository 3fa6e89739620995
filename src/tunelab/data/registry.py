"""Find datasets by name (a LLaMA-Factory-compatible ``dataset_info.json``), path or hub id, and load rows.

Loading reads records, converts each to canonical rows (naming file, line and field on any
problem, or skipping and counting it with ``skip_invalid``), drops exact duplicates on request and
applies ``max_samples``. Mixing several datasets and the validation split live in ``mixing.py``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.formats import ColumnSpec, FieldError, Format, detect_format
from tunelab.data.formats.base import IMAGE_MISSING
from tunelab.data.images import ImageError, resolve_images
from tunelab.data.mixing import split_rows  # noqa: F401  (re-exported: part of the registry API)
from tunelab.data.readers import InvalidRecord, read_records
from tunelab.errors import DataError
from tunelab.hub import hub_offline, hub_unreachable

REGISTRY_FILE = "dataset_info.json"
EXAMPLES_PER_REASON = 3
SKIP_HINT = "set skip_invalid: true to skip and count such records"  # commands with a flag pass their own
# dataset_info.json keys that tell where the data is and how to read it, rather than how columns map.
_READ_KEYS = ("encoding", "text_split", "delimiter")


@dataclass
class DatasetSource:
    """Where one dataset comes from, how to read it and how its columns map."""

    name: str
    path: Path | None = None  # local file or folder
    hub_id: str | None = None  # Hugging Face dataset id
    spec: ColumnSpec = field(default_factory=ColumnSpec)
    read_options: dict[str, Any] = field(default_factory=dict)  # encoding, text_split, delimiter

    @property
    def location(self) -> str:
        return str(self.path or self.hub_id)


@dataclass
class Skipped:
    """Records left out, by reason, with the first few examples of each: nothing goes uncounted."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {reason: {"count": count, "examples": self.examples.get(reason, [])}
                for reason, count in self.counts.most_common()}

    def merge(self, other: Skipped) -> None:
        for reason, count in other.counts.items():
            self.counts[reason] += count
            shown = self.examples.setdefault(reason, [])
            shown.extend(other.examples.get(reason, [])[: EXAMPLES_PER_REASON - len(shown)])


@dataclass
class LoadedDataset:
    name: str
    format: str
    rows: list[dict[str, Any]]
    lines: list[int]  # source line of each row, for later messages
    source: DatasetSource
    skipped: Skipped


def _read_registry(dataset_dir: Path) -> dict[str, Any]:
    registry_path = dataset_dir / REGISTRY_FILE
    if not registry_path.is_file():
        return {}
    try:
        registry = json.loads(registry_path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON ({error.msg})", file=str(registry_path), line=error.lineno) from None
    if not isinstance(registry, dict):
        raise DataError("expected an object mapping dataset names to entries", file=str(registry_path))
    return registry


def _source_from_entry(name: str, entry: dict[str, Any], dataset_dir: Path) -> DatasetSource:
    spec = ColumnSpec(entry.get("formatting"), dict(entry.get("columns") or {}), dict(entry.get("tags") or {}),
                      ranking=bool(entry.get("ranking")), options=dict(entry.get("options") or {}))
    read_options = {key: entry[key] for key in _READ_KEYS if entry.get(key)}
    if "file_name" in entry:
        return DatasetSource(name, dataset_dir / entry["file_name"], spec=spec, read_options=read_options)
    if "hf_hub_url" in entry:
        return DatasetSource(name, hub_id=entry["hf_hub_url"], spec=spec, read_options=read_options)
    raise DataError(f"entry '{name}' has neither 'file_name' nor 'hf_hub_url'", file=str(dataset_dir / REGISTRY_FILE))


def _looks_like_hub_id(name: str) -> bool:
    """``org/name``, not written as a path: ``data/typo.jsonl`` with a ``data`` folder here is a missing file."""
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and "." not in parts[0]
            and not Path(parts[0]).is_dir())


def resolve_dataset(name: str, dataset_dir: str | Path) -> DatasetSource:
    """A registry name in ``dataset_dir/dataset_info.json``, else a file or folder path, else a hub id."""
    dataset_dir = Path(dataset_dir)
    registry = _read_registry(dataset_dir)
    if name in registry:
        return _source_from_entry(name, registry[name], dataset_dir)
    for candidate in (Path(name), dataset_dir / name):
        if candidate.exists():
            return DatasetSource(candidate.name, candidate)
    if _looks_like_hub_id(name):
        return DatasetSource(name, hub_id=name)
    close = difflib.get_close_matches(name, list(registry), n=1, cutoff=0.6)
    suggestion = f" (did you mean '{close[0]}'?)" if close else ""
    known = ", ".join(sorted(registry)[:8]) + (" ..." if len(registry) > 8 else "")
    where = f"{dataset_dir / REGISTRY_FILE}" if registry else f"{dataset_dir} (no {REGISTRY_FILE} there)"
    relative = "" if dataset_dir.is_absolute() else (
        f"; dataset_dir '{dataset_dir}' is relative to the current folder ({Path.cwd()})"
        + (", and defaults to 'data'" if str(dataset_dir) == "data" else ""))
    raise DataError(f"dataset '{name}' is neither a name in {where} nor an existing file or folder{suggestion}"
                    + (f"; known names: {known}" if registry else "") + relative)


def _hub_records(source: DatasetSource) -> Iterator[tuple[str, int, Any]]:
    unreachable = None if hub_offline() else hub_unreachable()
    if unreachable:  # said at once, not after the datasets library's retries
        raise DataError(f"'{source.hub_id}' is no local file or folder, and the Hugging Face hub, where it would be a "
                        f"dataset id, cannot be reached ({unreachable}); download it elsewhere and point file_name "
                        "(or the dataset path) at the local copy", file=source.name)
    try:
        import datasets

        hub = datasets.load_dataset(source.hub_id, split="train", streaming=True)
        iterator = iter(hub)
        first = next(iterator, None)
    except Exception as error:  # offline, unknown id, gated: all end the same way for the user
        raise DataError(f"could not load '{source.hub_id}' from the Hugging Face hub ({type(error).__name__}: "
                        f"{str(error)[:200]}); without network access, download it elsewhere and point "
                        "file_name (or the dataset path) at the local copy", file=source.name) from None
    if first is not None:
        yield source.hub_id, 1, first
    for index, record in enumerate(iterator, start=2):
        yield source.hub_id, index, record


def _records(source: DatasetSource) -> Iterator[tuple[str, int, Any]]:
    if source.hub_id:
        return _hub_records(source)
    return ((str(file), line, record) for file, line, record in read_records(source.path, **source.read_options))


def iter_rows(source: DatasetSource, kind: str, *, skip_invalid: bool = False, skipped: Skipped | None = None,
              skip_hint: str = SKIP_HINT) -> Iterator[tuple[Format, int, dict[str, Any]]]:
    """Canonical rows with their source line, streaming.

    A record that cannot be used raises DataError naming file, line and field, or, with
    ``skip_invalid``, is counted in ``skipped`` (by reason, with examples) and left out.
    """
    skipped = skipped if skipped is not None else Skipped()
    fmt: Format | None = None
    number, current_file = 0, None
    for file, line, record in _records(source):
        number = number + 1 if file == current_file else 1
        current_file = file
        if isinstance(record, InvalidRecord):
            problem, reason, field_name = record.detail, record.reason, None
        else:
            try:
                if fmt is None:
                    fmt = detect_format(record, source.spec, kind)
                for row in fmt.convert(record, source.spec):
                    if row.get("images"):  # relative to the data file, and there, before any model loads
                        row["images"] = _images_of(row["images"], Path(file).parent)
                    yield fmt, line, row
                continue
            except FieldError as error:
                problem, reason, field_name = str(error), error.reason, error.field
                if fmt is not None:
                    problem = f"{problem} ({fmt.name} format)"
                if error.dataset_level:  # the whole dataset is wrong for this stage: skipping cannot help
                    raise DataError(problem, file=file, line=line, field=field_name, record=number) from None
        if not skip_invalid:
            raise DataError(f"{problem}; {skip_hint}", file=file,
                            line=line, field=field_name, record=number)
        skipped.add(reason or "invalid record", str(DataError(problem, file=file, line=line, field=field_name,
                                                              record=number)))


def _images_of(images: list[str], base: Path) -> list[str]:
    try:
        return resolve_images(images, base)
    except ImageError as error:
        raise FieldError("images", str(error), IMAGE_MISSING) from None


def _row_key(row: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(row, sort_keys=True, ensure_ascii=False).encode(), digest_size=16).hexdigest()


def load_dataset_rows(name: str, dataset_dir: str | Path, kind: str, max_samples: int | None = None, *,
                      skip_invalid: bool = False, dedup: bool = False, skip_hint: str = SKIP_HINT) -> LoadedDataset:
    """Rows of one dataset; at most ``max_samples`` usable rows (after skipping and deduplication)."""
    source = resolve_dataset(name, dataset_dir)
    skipped = Skipped()
    rows, lines, seen, fmt_name = [], [], {}, "?"
    for fmt, line, row in iter_rows(source, kind, skip_invalid=skip_invalid, skipped=skipped, skip_hint=skip_hint):
        fmt_name = fmt.name
        if dedup:
            key = _row_key(row)
            if key in seen:
                skipped.add("duplicate record", f"{source.location}, line {line}: same as line {seen[key]}")
                continue
            seen[key] = line
        rows.append(row)
        lines.append(line)
        if max_samples and len(rows) >= max_samples:
            break
    if not rows:
        detail = f" ({skipped.total} skipped: {dict(skipped.counts)})" if skipped.total else ""
        raise DataError(f"no usable records{detail}", file=source.location)
    return LoadedDataset(name, fmt_name, rows, lines, source, skipped)
