"""`tunelab data convert`: canonical rows to JSON Lines, one record at a time (memory stays flat)."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.commands.flags import check_encoding, output_file
from tunelab.console import console, stdout
from tunelab.data.registry import SKIP_HINT, Skipped, iter_rows, resolve_dataset
from tunelab.data.row_kinds import kind_of
from tunelab.errors import TunelabError


def convert_dataset(source_name: str, output: str | Path, *, dataset_dir: str = "data", stage: str = "sft",
                    skip_invalid: bool = False, encoding: str | None = None,
                    skip_hint: str = SKIP_HINT) -> tuple[int, Skipped]:
    """Stream every usable row of a dataset into ``output``; returns (rows written, skipped records)."""
    kind = kind_of(stage)
    source = resolve_dataset(source_name, dataset_dir)
    if encoding:
        source.read_options["encoding"] = encoding
    output = Path(output)
    if output.is_dir():
        raise TunelabError(f"output '{output}' is a folder; give a file path, e.g. {output / 'rows.jsonl'}")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")  # a failed or interrupted convert leaves no half file
    skipped, written, fmt_name = Skipped(), 0, "?"
    try:
        with partial.open("w", encoding="utf-8") as handle:
            for fmt, _line, row in iter_rows(source, kind, skip_invalid=skip_invalid, skipped=skipped,
                                             skip_hint=skip_hint):
                fmt_name = fmt.name
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
                if written % 100_000 == 0:
                    console.print(f"  {written:,} rows ...")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(output)
    stdout.print(f"converted {written:,} rows ({fmt_name} format → {kind} rows) to {output}")
    for reason, info in skipped.as_dict().items():
        console.print(f"  skipped {info['count']}: {reason} (e.g. {info['examples'][0]})", markup=False)
    return written, skipped


def convert_command(source: str, output: str, *, to: str, dataset_dir: str, stage: str, skip_invalid: bool,
                    encoding: str | None, skip_hint: str) -> None:
    """Every flag checked before the first record is read."""
    if to != "jsonl":
        raise TunelabError(f"--to '{to}' is not supported; only jsonl")
    kind_of(stage)
    check_encoding(encoding)
    convert_dataset(source, output_file(output, "OUTPUT"), dataset_dir=dataset_dir, stage=stage,
                    skip_invalid=skip_invalid, encoding=encoding, skip_hint=skip_hint)
