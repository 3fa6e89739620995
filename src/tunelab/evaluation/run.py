"""``tunelab eval``: generate with each system (a model, or a model plus an adapter) through the same code as
``tunelab predict``, or read existing predictions, score them, and write one comparison.

Outputs in ``output_dir``: ``eval_results.json`` (the summary: metric means, corpus scores, settings),
per system a ``predictions*.jsonl`` (when generated) and a ``samples*.jsonl`` (prompt, reference, prediction,
each metric, the accuracy check's extracted answer and rule), and with several systems ``comparison.png``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.console import console
from tunelab.data.encoding import iter_text
from tunelab.data.jsonstream import iter_json_values
from tunelab.errors import DataError, TunelabError
from tunelab.inference.loading import LoadOptions
from tunelab.inference.predict import Sample
from tunelab.metrics import GROUPS, canonical_metric, parse_metrics
from tunelab.metrics.scoring import resolve_task, score_predictions

RESULTS_FILE = "eval_results.json"
CHART_FILE = "comparison.png"
# Field names of a predictions file: tunelab predict's, then LLaMA-Factory's generated_predictions.jsonl.
PREDICTION_FIELDS = ("prediction", "predict")
REFERENCE_FIELDS = ("reference", "references", "label")


@dataclass(frozen=True)
class System:
    """One column of the comparison: a model (None: the adapter's base or the embedded model), an optional
    adapter, or a predictions file scored as it is."""

    label: str
    model: str | None = None
    adapter: str | None = None
    predictions: str | None = None

    def describe(self) -> dict[str, Any]:
        return {key: value for key, value in (("model", self.model), ("adapter", self.adapter),
                                              ("predictions", self.predictions)) if value is not None}


@dataclass(frozen=True)
class GenerationSettings:
    batch_size: int = 16
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    cutoff_len: int = 2048  # perplexity: conversations longer than this are cut, as in training
    budget: Any = None  # a ThinkingBudget (budget forcing), or None
    rag: Any = None  # a Retriever (inference/rag): clues in every prompt, or None


def _first(record: dict, fields: Sequence[str]) -> tuple[str | None, Any]:
    return next(((name, record[name]) for name in fields if name in record), (None, None))


def read_predictions(path: str) -> tuple[list[str], list[list[str]], list[str]]:
    """(predictions, references per sample, prompts) from a JSONL of rows with ``prediction`` and ``reference``
    (text or a list of texts); LLaMA-Factory's ``predict``/``label`` are read too."""
    file = Path(path)
    if not file.is_file():
        raise TunelabError(f"--predictions '{path}' is not a file")
    predictions, references, prompts = [], [], []
    for line, record in iter_json_values(iter_text(file), file):
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, got {type(record).__name__}", file=path, line=line)
        name, prediction = _first(record, PREDICTION_FIELDS)
        if not isinstance(prediction, str):
            field = name or PREDICTION_FIELDS[0]
            raise DataError("expected the prediction as text" if name else "missing; expected the model's answer",
                            file=path, line=line, field=field)
        name, reference = _first(record, REFERENCE_FIELDS)
        refs = [reference] if isinstance(reference, str) else reference
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise DataError("expected the reference as text or a non-empty list of texts", file=path, line=line,
                            field=name or REFERENCE_FIELDS[0])
        predictions.append(prediction)
        references.append(refs)
        prompts.append(record.get("prompt") if isinstance(record.get("prompt"), str) else "")
    if not predictions:
        raise DataError("no predictions in the file", file=path)
    return predictions, references, prompts


def choose_metrics(spec: str, task: str, golds: list[str], generating: bool) -> tuple[list[str], str | None,
                                                                                  list[str]]:
    """(metrics to compute, accuracy task, notes on what a group left out) for ``--metrics spec``: ``auto`` is the
    text metrics plus accuracy where the references are a task; a metric named outright that cannot be computed
    is an error, one that came with a group (``all``) is left out with a note. Runs before any model loads."""
    chosen = parse_metrics(GROUPS["text"] if spec == "auto" else spec)
    named = {canonical_metric(part) for part in spec.split(",")}
    found = resolve_task(task, golds, ["accuracy"] if "accuracy" in named else [])
    notes = []
    chosen = [name for name in chosen if name != "accuracy"]
    if found is not None and (spec == "auto" or named & {"accuracy", "all"}):
        chosen.append("accuracy")
    elif "all" in named:
        notes.append("accuracy left out: the references look like neither GSM8K answers nor choice letters "
                      "(pass --task math or --task choice)")
    if not generating and "perplexity" in chosen:
        if "perplexity" in named:
            raise TunelabError("perplexity needs a model, not a predictions file; drop it from --metrics or "
                               "evaluate a model on a dataset")
        chosen.remove("perplexity")
        notes.append("perplexity left out: it needs a model, and predictions files were scored")
    return chosen, found, notes


def check_references(golds: list[str], where: str) -> list[str]:
    """All references empty is an error (nothing to score against); some empty is a note."""
    empty = sum(1 for gold in golds if not str(gold).strip())
    if golds and empty == len(golds):
        raise TunelabError(f"{where} has no reference answers to score against (no assistant answer, nor an "
                           "answer/output/... column); use `tunelab predict` to generate without scoring")
    return [f"{empty} of {len(golds)} samples have an empty reference; they score against empty text"] if empty \
        else []


def _file_suffix(label: str, several: bool) -> str:
    return "-" + re.sub(r"[^\w.-]+", "_", label).strip("_") if several else ""


def _generate(system: System, samples: list[Sample], metrics: list[str], settings: GenerationSettings,
              options: LoadOptions, target: Path, template: str | None) -> dict[str, Any]:
    """Generate with the system into ``target`` (as ``tunelab predict`` writes), and compute perplexity when
    asked, while the model is loaded. Returns the perplexity summary values."""
    from tunelab.console import progress_bar
    from tunelab.inference.loading import base_model_for
    from tunelab.inference.predict import write_predictions
    from tunelab.inference.predictor import Predictor

    name = base_model_for(system.model, system.adapter)
    console.print(f"[bold]eval[/bold] {system.label}: loading {name}"
                  + (f" with adapter {system.adapter}" if system.adapter else "") + " ...")
    predictor = Predictor(system.model, adapter=system.adapter, template=template,
                          max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                          top_p=settings.top_p, options=options, budget=settings.budget, rag=settings.rag)
    with progress_bar("predicting", len(samples)) as advance:
        write_predictions(predictor, samples, target, batch_size=settings.batch_size, on_batch=advance)
    if "perplexity" not in metrics:
        return {}
    from tunelab.evaluation.perplexity import perplexity

    conversations = [(prompt + [{"role": "assistant", "content": reference}], tools)
                     for prompt, reference, tools in samples]
    losses = predictor.engine.conversation_losses(conversations, predictor.served, cutoff_len=settings.cutoff_len,
                                                  batch_size=settings.batch_size)
    value, mean_loss = perplexity(losses)
    return {"perplexity": value, "loss": mean_loss,
            "per_sample": [total / count if count else None for total, count in losses]}


def evaluate_system(system: System, samples: list[Sample] | None, metrics: list[str], *, output_dir: Path,
                    several: bool, settings: GenerationSettings, options: LoadOptions, language: str,
                    task: str | None, template: str | None) -> dict[str, Any]:
    """Generate (or read) and score one system; writes its samples file and returns its summary."""
    suffix = _file_suffix(system.label, several)
    extra: dict[str, Any] = {}
    if system.predictions is not None:
        source = Path(system.predictions)
    else:
        assert samples is not None
        source = output_dir / f"predictions{suffix}.jsonl"
        extra = _generate(system, samples, metrics, settings, options, source, template)
    predictions, references, prompts = read_predictions(str(source))
    scores = score_predictions(predictions, references, [m for m in metrics if m != "perplexity"],
                               language=language, task=task)
    per_sample_loss = extra.pop("per_sample", [None] * len(predictions))
    samples_file = output_dir / f"samples{suffix}.jsonl"
    with samples_file.open("w", encoding="utf-8") as handle:
        for prompt, prediction, refs, values, loss in zip(prompts, predictions, references, scores.samples,
                                                         per_sample_loss, strict=True):
            record = {"prompt": prompt, "reference": refs[0] if len(refs) == 1 else refs, "prediction": prediction,
                      **values, **({"loss": loss} if "perplexity" in metrics else {})}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary = dict(scores.summary)
    if "perplexity" in metrics:
        summary = {**{k: v for k, v in summary.items() if k not in ("num_samples", "corpus", "notes")},
                   "perplexity": extra["perplexity"], "loss": extra["loss"],
                   **{k: v for k, v in summary.items() if k in ("num_samples", "corpus", "notes")}}
    summary["settings"] = {**scores.settings, **system.describe(), "samples_file": str(samples_file)}
    return summary


def _clear_earlier_results(folder: Path, keep: set[Path]) -> None:
    """An earlier evaluation's files in the folder would read as this one's: remove them (never an input)."""
    patterns = (RESULTS_FILE, CHART_FILE, "samples.jsonl", "samples-*.jsonl", "predictions.jsonl",
                "predictions-*.jsonl")
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path.resolve() not in keep:
                path.unlink()


def run_eval(systems: list[System], samples: list[Sample] | None, metrics: list[str], *, output_dir: str | Path,
             settings: GenerationSettings | None = None, options: LoadOptions | None = None,
             language: str = "auto", task: str | None = None, template: str | None = None) -> dict[str, Any]:
    """Evaluate every system; write eval_results.json (and comparison.png for several). Returns the results:
    one summary, or ``{"systems": {label: summary}}`` for several."""
    folder = Path(output_dir)
    if folder.is_file():
        raise TunelabError(f"--output-dir '{output_dir}' is a file; give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    _clear_earlier_results(folder, {Path(s.predictions).resolve() for s in systems if s.predictions})
    several = len(systems) > 1
    settings, options = settings or GenerationSettings(), options or LoadOptions()
    summaries = {system.label: evaluate_system(system, samples, metrics, output_dir=folder, several=several,
                                               settings=settings, options=options, language=language, task=task,
                                               template=template)
                 for system in systems}
    results: dict[str, Any] = {"systems": summaries} if several else next(iter(summaries.values()))
    (folder / RESULTS_FILE).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if several:
        from tunelab.plots import plot_comparison

        plot_comparison({label: summary for label, summary in summaries.items()}, folder / CHART_FILE)
    return results
