"""`tunelab data inspect`: what a dataset looks like to the trainer, before any model is loaded."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

from tunelab.commands.flags import check_encoding, output_folder
from tunelab.console import stdout
from tunelab.data.masking import MaskingError
from tunelab.data.registry import Skipped, iter_rows, resolve_dataset
from tunelab.data.row_kinds import kind_of, row_kind
from tunelab.data.templates import check_template_name
from tunelab.errors import DataError, TunelabError
from tunelab.models.loading import load_tokenizer
from tunelab.models.sources import default_template
from tunelab.models.vision import IMAGE_PAD, attach_image_tokens


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
    kind = row_kind(kind_of(stage))
    source = resolve_dataset(dataset, dataset_dir)
    if encoding:
        source.read_options["encoding"] = encoding
    tokenizer = load_tokenizer(model, default_template(model, template), require_template=kind.name != "pt")
    attach_image_tokens(tokenizer, model)  # a vision-language model: images count as the tokens it reads
    skipped = Skipped()
    fmt_name, lengths, samples = "?", [], []
    hint = {"skip_hint": skip_hint} if skip_hint else {}
    for fmt, line, row in iter_rows(source, kind.name, skip_invalid=skip_invalid, skipped=skipped, **hint):
        fmt_name = fmt.name
        # through the same encoders as training, uncut: a record's length is its samples' (text chunks add up)
        try:
            encoded = kind.encode(row, tokenizer, policy, None)
        except MaskingError as error:
            raise DataError(str(error), file=source.location, line=line) from None
        lengths.append(sum(kind.lengths(sample) for sample in encoded))
        if len(samples) < num_samples:
            shown = kind.view(encoded[0], row)
            if len(encoded) > 1:  # several chunks of one text: show them all
                shown["segments"] = [part for sample in encoded for part in kind.view(sample, row)["segments"]]
            trained = sum(sample[0].num_trained for sample in encoded)
            if encoded[0][0].image_tokens:  # each image placeholder stands for this many tokens
                shown["images"] = [{"file": file, "tokens": count}
                                   for file, count in zip(row["images"], encoded[0][0].image_tokens, strict=True)]
            samples.append({"line": line, **shown, "num_tokens": lengths[-1], "num_trained_tokens": trained})
    result: dict[str, Any] = {
        "dataset": dataset, "source": source.location, "format": fmt_name, "kind": kind.name,
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
        for image in sample.get("images", []):
            stdout.print(f"image {image['file']}: {image['tokens']} tokens (one {IMAGE_PAD} above)", markup=False)
        if "rejected_segments" in sample:
            stdout.print("[bold]rejected:[/bold]")
            _print_segments(sample["rejected_segments"])
        if sample.get("extra"):
            stdout.print(f"extra columns: {sample['extra']}", markup=False)


def _print_segments(parts: list[dict[str, Any]]) -> None:
    for segment in parts:
        stdout.print(segment["text"], style="green" if segment["trained"] else "dim", end="", markup=False)
    stdout.print()


def inspect_command(dataset: str, *, dataset_dir: str, model: str, template: str | None, stage: str,
                    cutoff_len: int, num_samples: int, train_on_prompt: bool, mask_history: bool, skip_invalid: bool,
                    encoding: str | None, plot_dir: str, skip_hint: str, as_json: bool) -> None:
    """Every flag checked before the tokenizer loads; then the inspection, printed or as one JSON object."""
    kind_of(stage)
    if cutoff_len < 1 or num_samples < 0:
        raise TunelabError("--cutoff-len must be at least 1 and --num-samples at least 0")
    output_folder(plot_dir, "--plot-dir")
    check_template_name(template, "--template")
    check_encoding(encoding)
    policy = "all" if train_on_prompt else "last" if mask_history else "assistant"
    result = inspect_dataset(dataset, dataset_dir=dataset_dir, model=model, template=template, stage=stage,
                             cutoff_len=cutoff_len, num_samples=num_samples, policy=policy, skip_invalid=skip_invalid,
                             encoding=encoding, plot_dir=plot_dir, skip_hint=skip_hint)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_inspection(result)
