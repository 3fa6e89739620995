"""Find datasets by name (a LLaMA-Factory-compatible ``dataset_info.json``) or path, and load rows.

Loading reads records, converts each to a canonical row (naming file, line and field on any
problem), applies ``max_samples`` and splits off ``val_size`` with a fixed seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.formats import ColumnSpec, FieldError, Format, detect_format
from tunelab.data.readers import read_records
from tunelab.errors import DataError

REGISTRY_FILE = "dataset_info.json"


@dataclass
class DatasetSource:
    """Where one dataset comes from and how its columns map."""

    name: str
    path: Path | None = None  # local file or folder
    hub_id: str | None = None  # Hugging Face dataset id
    spec: ColumnSpec = field(default_factory=ColumnSpec)
    ranking: bool = False


@dataclass
class LoadedDataset:
    name: str
    format: str
    rows: list[dict[str, Any]]
    lines: list[int]  # source line of each row, for later messages (e.g. cutoff drops)
    source: str


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


def resolve_dataset(name: str, dataset_dir: str | Path) -> DatasetSource:
    """A registry name in ``dataset_dir/dataset_info.json``, else a file or folder path."""
    dataset_dir = Path(dataset_dir)
    registry = _read_registry(dataset_dir)
    if name in registry:
        entry = registry[name]
        spec = ColumnSpec(entry.get("formatting"), dict(entry.get("columns") or {}), dict(entry.get("tags") or {}))
        if "file_name" in entry:
            return DatasetSource(name, dataset_dir / entry["file_name"], spec=spec,
                                 ranking=bool(entry.get("ranking")))
        if "hf_hub_url" in entry:
            return DatasetSource(name, hub_id=entry["hf_hub_url"], spec=spec, ranking=bool(entry.get("ranking")))
        raise DataError(f"entry '{name}' has neither 'file_name' nor 'hf_hub_url'",
                        file=str(dataset_dir / REGISTRY_FILE))
    for candidate in (Path(name), dataset_dir / name):
        if candidate.exists():
            return DatasetSource(candidate.stem, candidate)
    known = ", ".join(sorted(registry)[:8]) + (" ..." if len(registry) > 8 else "")
    where = f"{dataset_dir / REGISTRY_FILE}" if registry else f"{dataset_dir} (no {REGISTRY_FILE} there)"
    raise DataError(f"dataset '{name}' is neither a name in {where} nor an existing file"
                    + (f"; known names: {known}" if registry else ""))


def _hub_records(source: DatasetSource) -> Iterator[tuple[str, int, Any]]:
    try:
        import datasets

        hub = datasets.load_dataset(source.hub_id, split="train")
    except Exception as error:  # offline, unknown id, gated: all end the same way for the user
        raise DataError(f"could not load '{source.hub_id}' from the Hugging Face hub ({type(error).__name__}: "
                        f"{str(error)[:200]}); download it while online or point file_name at a local copy",
                        file=source.name) from None
    for index, record in enumerate(hub, start=1):
        yield source.hub_id, index, record


def iter_rows(source: DatasetSource, stage: str) -> Iterator[tuple[Format, int, dict[str, Any]]]:
    """Canonical rows of one dataset with their source line; the first bad record raises DataError."""
    if source.ranking:
        raise DataError(f"dataset '{source.name}' is a preference (ranking) dataset; stage '{stage}' needs "
                        "supervised records (preference stages come with the dpo/rm recipes)")
    records = (_hub_records(source) if source.hub_id
               else ((str(file), line, record) for file, line, record in read_records(source.path)))
    fmt = None
    for file, line, record in records:
        try:
            if fmt is None:
                fmt = detect_format(record, source.spec, stage)
            if not isinstance(record, dict):
                raise FieldError("record", f"expected a JSON object, got {type(record).__name__}")
            yield fmt, line, fmt.convert(record, source.spec)
        except FieldError as error:
            expected = f" ({fmt.name} format)" if fmt else ""
            raise DataError(f"{error}{expected}", file=file, line=line, field=error.field) from None


def load_dataset_rows(name: str, dataset_dir: str | Path, stage: str,
                      max_samples: int | None = None) -> LoadedDataset:
    source = resolve_dataset(name, dataset_dir)
    rows, lines, fmt_name = [], [], "?"
    for fmt, line, row in iter_rows(source, stage):
        fmt_name = fmt.name
        rows.append(row)
        lines.append(line)
        if max_samples and len(rows) >= max_samples:
            break
    if not rows:
        raise DataError("no records", file=str(source.path or source.hub_id))
    return LoadedDataset(name, fmt_name, rows, lines, str(source.path or source.hub_id))


def split_rows(rows: list[dict], val_size: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``val_size`` (a fraction < 1 or a count) with a fixed seed."""
    if not val_size:
        return rows, []
    count = int(val_size) if val_size >= 1 else max(1, round(len(rows) * val_size))
    if count >= len(rows):
        raise DataError(f"val_size {val_size} leaves no training rows out of {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
