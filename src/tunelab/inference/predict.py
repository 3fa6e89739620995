"""Batch prediction over a dataset: every record's prompt in, one JSON line (prediction, reference) out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.console import console
from tunelab.data.registry import load_dataset_rows
from tunelab.inference.predictor import Predictor


def split_prompt(messages: list[dict]) -> tuple[list[dict], str]:
    """Messages before the last assistant turn (the prompt) and that turn's text (the reference)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "assistant":
            return messages[:index], messages[index].get("content") or ""
    return list(messages), ""


def _last_user_text(messages: list[dict]) -> str:
    return next((m.get("content") or "" for m in reversed(messages) if m["role"] == "user"), "")


def run_predict(predictor: Predictor, dataset: str, *, dataset_dir: str = "data",
                output: str = "predictions.jsonl", batch_size: int = 8,
                max_samples: int | None = None) -> Path:
    """Generate for each record of ``dataset`` and write JSONL; returns the file's path."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows = load_dataset_rows(dataset, dataset_dir, "sft", max_samples).rows
    samples: list[tuple[list[dict], str, Any]] = [(*split_prompt(row["messages"]), row.get("tools"))
                                                  for row in rows]
    path = Path(output)
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
    console.print(f"[bold green]wrote[/bold green] {len(samples)} predictions to {path}")
    return path
