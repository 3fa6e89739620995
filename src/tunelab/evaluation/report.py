"""The console view of ``tunelab eval``: one table, metrics down, systems across, then where the files are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.console import console, stdout
from tunelab.metrics import LOWER_IS_BETTER, METRICS


def _cell(value: Any, name: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if name.startswith("corpus ") or name in ("perplexity",) else f"{value:.4f}"


def print_results(results: dict[str, Any], output_dir: str | Path) -> None:
    from rich.table import Table

    summaries = results["systems"] if "systems" in results else {"result": results}
    table = Table(title=f"evaluation ({next(iter(summaries.values()))['num_samples']} samples; means over samples, "
                        "corpus scores on sacrebleu's 0-100 scale)", title_justify="left")
    table.add_column("metric")
    for label in summaries:
        table.add_column(label, justify="right")
    first = next(iter(summaries.values()))
    rows = [name for name in (*METRICS, "loss") if name in first]
    rows += [f"corpus {name}" for name in first.get("corpus", {}) if name != "signatures"]
    for name in rows:
        values = [s.get("corpus", {}).get(name[7:]) if name.startswith("corpus ") else s.get(name)
                  for s in summaries.values()]
        known = [v for v in values if v is not None]
        best = (min(known) if name.removeprefix("corpus ") in LOWER_IS_BETTER else max(known)) if known else None
        cells = [f"[bold]{_cell(v, name)}[/bold]" if len(summaries) > 1 and v is not None and v == best
                 else _cell(v, name) for v in values]
        arrow = " (lower is better)" if name.removeprefix("corpus ") in LOWER_IS_BETTER else ""
        table.add_row(name + arrow, *cells)
    stdout.print(table)
    for note in {note for s in summaries.values() for note in s.get("notes", [])}:
        console.print(f"[yellow]note[/yellow]: {note}")
    folder = Path(output_dir)
    lines = [f"results       {folder / 'eval_results.json'}"]
    lines += [f"samples       {s['settings']['samples_file']}" for s in summaries.values()]
    if len(summaries) > 1:
        lines.append(f"chart         {folder / 'comparison.png'}")
    stdout.print("[bold green]saved[/bold green]\n  " + "\n  ".join(lines))
