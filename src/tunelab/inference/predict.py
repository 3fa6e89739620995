"""Batch prediction over a dataset: every record's prompt in, one JSON line (prediction, reference) out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.console import console, stdout
from tunelab.data.registry import SKIP_HINT, load_dataset_rows
from tunelab.errors import DataError, TunelabError
from tunelab.inference.predictor import Predictor


def split_prompt(messages: list[dict]) -> tuple[list[dict], str]:
    """Messages before the last assistant turn (the prompt) and that turn's text (the reference)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "assistant":
            return messages[:index], messages[index].get("content") or ""
    return list(messages), ""


# Columns of a prompt-only (RL-style) record that hold the expected answer, in order of preference.
REFERENCE_COLUMNS = ("answer", "output", "response", "completion", "solution", "target", "summary")


Sample = tuple[list[dict], str, Any]  # (prompt messages, reference, tools)


def load_samples(dataset: str, dataset_dir: str = "data", max_samples: int | None = None, *,
                 skip_invalid: bool = False, skip_hint: str = SKIP_HINT) -> list[Sample]:
    """(prompt messages, reference, tools) per record. Conversations give their last answer as the
    reference; data without answers (prompts only, e.g. GSM8K questions) is read as prompt rows."""
    options = {"skip_invalid": skip_invalid, "skip_hint": skip_hint}
    try:
        loaded = load_dataset_rows(dataset, dataset_dir, "sft", max_samples, **options)
        _report_skipped(loaded)
        return [(*split_prompt(row["messages"]), row.get("tools")) for row in loaded.rows]
    except DataError as sft_error:
        try:
            loaded = load_dataset_rows(dataset, dataset_dir, "rl", max_samples, **options)
        except DataError:
            raise sft_error from None
    _report_skipped(loaded)
    return [(row["prompt"], _reference(row), row.get("tools")) for row in loaded.rows]


def _report_skipped(loaded: Any) -> None:
    """With --skip-invalid, what was left out is said, by reason with an example: nothing goes uncounted."""
    for reason, info in loaded.skipped.as_dict().items():
        console.print(f"skipped {info['count']} records of {loaded.name}: {reason} (e.g. {info['examples'][0]})",
                      markup=False, highlight=False)


def _reference(row: dict[str, Any]) -> str:
    value = next((row[c] for c in REFERENCE_COLUMNS if row.get(c) not in (None, "")), "")
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _last_user_text(messages: list[dict]) -> str:
    return next((m.get("content") or "" for m in reversed(messages) if m["role"] == "user"), "")


def run_predict(predictor: Predictor, dataset: str | list[Sample], *, dataset_dir: str = "data",
                output: str | Path = "predictions.jsonl", batch_size: int = 8,
                max_samples: int | None = None) -> Path:
    """Generate for each record of ``dataset`` (a name or path, or samples from ``load_samples``) and write
    JSONL; returns the file's path."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if batch_size < 1:
        raise TunelabError(f"--batch-size must be at least 1, got {batch_size}")
    samples = load_samples(dataset, dataset_dir, max_samples) if isinstance(dataset, str) else dataset
    path = Path(output)
    if path.is_dir():
        raise TunelabError(f"output '{path}' is a folder; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with path.open("w", encoding="utf-8") as handle, Progress(*columns, console=console) as progress:
        task = progress.add_task("predict", total=len(samples))
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            predictions = predictor.generate_batch([prompt for prompt, _, _ in batch],
                                                   tools=[tools for _, _, tools in batch])
            for (prompt, reference, _), prediction in zip(batch, predictions, strict=True):
                record = {"prompt": _last_user_text(prompt), "messages": prompt, "prediction": prediction,
                          "reference": reference}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            progress.advance(task, len(batch))
    stdout.print(f"[bold green]wrote[/bold green] {len(samples)} predictions to {path}")
    return path
