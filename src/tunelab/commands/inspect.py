"""`tunelab data inspect`: what a dataset looks like to the trainer, before any model is loaded."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from tunelab.console import stdout
from tunelab.data.encoders import encode_kto, encode_pair, encode_prompt, encode_pt, encode_sft
from tunelab.data.masking import Encoded, segments
from tunelab.data.registry import Skipped, iter_rows, resolve_dataset
from tunelab.models.loading import load_tokenizer
from tunelab.models.sources import default_template
from tunelab.stage_registry import kind_of


def _encode(row: dict, kind: str, tokenizer: Any, policy: str) -> tuple[list[Encoded], dict[str, Any]]:
    """Encodings whose lengths count, and the sample fields to show, for one canonical row of any kind
    (through the same encoders as training)."""
    if kind == "pt":
        encoded = encode_pt(row, tokenizer)
        return encoded, {"segments": [s for item in encoded for s in segments(item)]}
    if kind == "sft":
        encoded = encode_sft(row, tokenizer, policy)
        return encoded, {"segments": segments(encoded[0])}
    if kind == "preference":
        chosen, rejected = encode_pair(row, tokenizer)
        return [chosen, rejected], {"segments": segments(chosen), "rejected_segments": segments(rejected)}
    if kind == "kto":
        encoded = encode_kto(row, tokenizer)
        return [encoded], {"segments": segments(encoded), "label": row["label"]}
    encoded = encode_prompt(row, tokenizer)  # rl: the prompt is all there is
    extra = {key: value for key, value in row.items() if key not in ("prompt", "tools")}
    return [encoded], {"segments": [{"text": encoded.text, "trained": False}], "extra": extra}


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


def _histogram(lengths: list[int], bins: int = 10) -> list[dict[str, int]]:
    low, high = min(lengths), max(lengths)
    width = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for length in lengths:
        counts[min(bins - 1, (length - low) // width)] += 1
    return [{"from": low + i * width, "to": low + (i + 1) * width - 1, "count": c} for i, c in enumerate(counts)]


def _plot_histogram(lengths: list[int], cutoff_len: int, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(lengths, bins=40, color="#4c72b0")
    if cutoff_len <= max(lengths):
        axes.axvline(cutoff_len, color="#c44e52", linestyle="--", label=f"cutoff_len {cutoff_len}")
        axes.legend()
    axes.set_xlabel("tokens per sample")
    axes.set_ylabel("samples")
    axes.set_title(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def inspect_dataset(dataset: str, *, dataset_dir: str = "data", model: str = "stories260K",
                    template: str | None = None, stage: str = "sft", cutoff_len: int = 2048,
                    num_samples: int = 2, policy: str = "assistant", skip_invalid: bool = False,
                    encoding: str | None = None, plot_dir: str | None = None,
                    skip_hint: str | None = None) -> dict[str, Any]:
    """Format, mapping, counts, skipped records, token lengths and rendered samples of one dataset."""
    kind = kind_of(stage)
    source = resolve_dataset(dataset, dataset_dir)
    if encoding:
        source.read_options["encoding"] = encoding
    tokenizer = load_tokenizer(model, default_template(model, template), require_template=kind != "pt")
    skipped = Skipped()
    fmt_name, lengths, samples = "?", [], []
    hint = {"skip_hint": skip_hint} if skip_hint else {}
    for fmt, line, row in iter_rows(source, kind, skip_invalid=skip_invalid, skipped=skipped, **hint):
        fmt_name = fmt.name
        encoded, shown = _encode(row, kind, tokenizer, policy)
        # pt chunks add up; a preference pair is as long as its longer side
        pick = sum if kind == "pt" else max
        lengths.append(pick(len(e.input_ids) for e in encoded))
        if len(samples) < num_samples:
            trained = sum(e.num_trained for e in encoded) if kind == "pt" else encoded[0].num_trained
            samples.append({"line": line, **shown, "num_tokens": lengths[-1], "num_trained_tokens": trained})
    result: dict[str, Any] = {
        "dataset": dataset, "source": source.location, "format": fmt_name, "kind": kind,
        "column_mapping": source.spec.columns, "tags": source.spec.tags, "num_rows": len(lengths),
        "skipped": skipped.as_dict(), "num_skipped": skipped.total, "samples": samples,
        "token_lengths": _length_stats(lengths, cutoff_len) if lengths else None,
        "histogram": _histogram(lengths) if lengths else [], "histogram_png": None,
    }
    if lengths and plot_dir:
        name = re.sub(r"[^\w.-]+", "_", Path(dataset).name)
        result["histogram_png"] = str(_plot_histogram(lengths, cutoff_len, dataset, Path(plot_dir) / f"{name}.png"))
    return result


def print_inspection(result: dict[str, Any]) -> None:
    stdout.print(f"[bold]{result['dataset']}[/bold]  {result['source']}")
    mapping = f"  columns {result['column_mapping']}" if result["column_mapping"] else ""
    stdout.print(f"format: {result['format']} ({result['kind']} rows){mapping}")
    stdout.print(f"rows: {result['num_rows']} usable, {result['num_skipped']} skipped")
    for reason, info in result["skipped"].items():
        stdout.print(f"  skipped {info['count']}: {reason}", markup=False)
        for example in info["examples"]:
            stdout.print(f"    e.g. {example}", markup=False, style="dim")
    stats = result["token_lengths"]
    if stats:
        stdout.print(f"tokens per sample: min {stats['min']}  mean {stats['mean']}  p50 {stats['p50']}  "
                     f"p95 {stats['p95']}  max {stats['max']}; longer than cutoff_len {stats['cutoff_len']} "
                     f"(truncated in training): {stats['over_cutoff']}")
        peak = max(bucket["count"] for bucket in result["histogram"]) or 1
        for bucket in result["histogram"]:
            bar = "█" * round(30 * bucket["count"] / peak)
            stdout.print(f"  {bucket['from']:>7}-{bucket['to']:<7} {bar} {bucket['count']}", markup=False)
    if result["histogram_png"]:
        stdout.print(f"histogram: {result['histogram_png']}")
    for sample in result["samples"]:
        label = f", label {sample['label']}" if "label" in sample else ""
        stdout.print(f"\n[bold]record at line {sample['line']}[/bold] ({sample['num_tokens']} tokens, "
                     f"{sample['num_trained_tokens']} trained{label}; [green]green = trained[/green], "
                     "[dim]dim = context[/dim])")
        _print_segments(sample["segments"])
        if "rejected_segments" in sample:
            stdout.print("[bold]rejected:[/bold]")
            _print_segments(sample["rejected_segments"])
        if sample.get("extra"):
            stdout.print(f"extra columns: {sample['extra']}", markup=False)


def _print_segments(parts: list[dict[str, Any]]) -> None:
    for segment in parts:
        stdout.print(segment["text"], style="green" if segment["trained"] else "dim", end="", markup=False)
    stdout.print()
