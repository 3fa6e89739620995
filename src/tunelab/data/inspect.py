"""`tunelab data inspect`: what a dataset looks like to the trainer, before any model is loaded."""

from __future__ import annotations

import statistics
from typing import Any

from tunelab.console import console
from tunelab.data.masking import segments
from tunelab.data.pipeline import encode_row
from tunelab.data.registry import iter_rows, resolve_dataset
from tunelab.models.loading import load_tokenizer


def _length_stats(lengths: list[int], cutoff_len: int) -> dict[str, Any]:
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
        "over_cutoff": sum(length > cutoff_len for length in ordered),
        "cutoff_len": cutoff_len,
    }


def inspect_dataset(dataset: str, *, dataset_dir: str = "data", model: str = "stories260K",
                    template: str | None = None, stage: str = "sft", cutoff_len: int = 2048,
                    num_samples: int = 2, policy: str = "assistant") -> dict[str, Any]:
    """Format, row count, token-length statistics and rendered samples split into trained segments."""
    source = resolve_dataset(dataset, dataset_dir)
    if template is None and model == "stories260K":
        template = "default"  # the embedded base model has no template of its own
    tokenizer = load_tokenizer(model, template)
    fmt_name, lengths, samples = "?", [], []
    for fmt, line, row in iter_rows(source, stage):
        fmt_name = fmt.name
        encoded = encode_row(row, tokenizer, stage, policy, cutoff_len=10**9)
        lengths.append(sum(len(item.input_ids) for item in encoded))
        if len(samples) < num_samples:
            samples.append({"line": line, "segments": [s for item in encoded for s in segments(item)],
                            "num_tokens": lengths[-1],
                            "num_trained_tokens": sum(item.num_trained for item in encoded)})
    return {
        "dataset": dataset,
        "source": str(source.path or source.hub_id),
        "format": fmt_name,
        "num_rows": len(lengths),
        "token_lengths": _length_stats(lengths, cutoff_len) if lengths else None,
        "samples": samples,
    }


def print_inspection(result: dict[str, Any]) -> None:
    console.print(f"[bold]{result['dataset']}[/bold]  {result['source']}")
    console.print(f"format: {result['format']}   rows: {result['num_rows']}")
    stats = result["token_lengths"]
    if stats:
        console.print(f"tokens per sample: min {stats['min']}  mean {stats['mean']}  p50 {stats['p50']}  "
                      f"p95 {stats['p95']}  max {stats['max']}  (over cutoff_len {stats['cutoff_len']}: "
                      f"{stats['over_cutoff']})")
    for sample in result["samples"]:
        console.print(f"\n[bold]record at line {sample['line']}[/bold] ({sample['num_tokens']} tokens, "
                      f"{sample['num_trained_tokens']} trained; [green]green = trained[/green], "
                      "[dim]dim = context[/dim])")
        for segment in sample["segments"]:
            console.print(segment["text"], style="green" if segment["trained"] else "dim", end="",
                          markup=False)
        console.print()
