"""`tunelab predict`: its flags checked, then generation with skipped records said, a progress bar, and where the
predictions went."""

from __future__ import annotations

from pathlib import Path

from tunelab.commands.flags import ModelFlags, RagFlags, SamplingFlags, at_least, load_predictor, output_file
from tunelab.console import console, progress_bar, stdout
from tunelab.inference.predict import Sample, load_samples, write_predictions
from tunelab.inference.predictor import Predictor


def report_skipped(samples: list[Sample]) -> None:
    """With --skip-invalid, what was left out is said, by reason with an example."""
    for line in getattr(samples, "skipped", []):
        console.print(line, markup=False, highlight=False)


def run_predict(predictor: Predictor, dataset: str | list[Sample], *, dataset_dir: str = "data",
                output: str | Path = "predictions.jsonl", batch_size: int = 8,
                max_samples: int | None = None) -> Path:
    """Generate for each record of ``dataset`` (a name or path, or samples from ``load_samples``) and write
    JSONL with a progress bar; returns the file's path."""
    samples = load_samples(dataset, dataset_dir, max_samples) if isinstance(dataset, str) else dataset
    report_skipped(samples)
    with progress_bar("predicting", len(samples)) as advance:
        path = write_predictions(predictor, samples, output, batch_size=batch_size, on_batch=advance)
    stdout.print(f"[bold green]wrote[/bold green] {len(samples)} predictions to {path}")
    return path


def predict_command(dataset: str, output: str, dataset_dir: str, flags: ModelFlags, sampling: SamplingFlags, *,
                    batch_size: int, max_samples: int | None, skip_invalid: bool, skip_hint: str,
                    rag: RagFlags | None = None) -> Path:
    """Every flag checked and the prompts read before the model loads; then generate and write."""
    rag = rag or RagFlags()
    target = output_file(output, "--output")
    at_least(1, batch_size=batch_size, max_samples=max_samples)
    sampling.check()
    rag.check()
    options = flags.check(use="generate")  # a wrong path is reported before the data is read
    samples = load_samples(dataset, dataset_dir, max_samples, skip_invalid=skip_invalid, skip_hint=skip_hint)
    predictor = load_predictor(flags, sampling, options, rag.retriever())
    return run_predict(predictor, samples, output=target, batch_size=batch_size)
