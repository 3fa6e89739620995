"""Score predictions against references: per-sample values, their means, and the corpus-level scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import ConfigError
from tunelab.metrics.answers import TASKS, check_answer, detect_task
from tunelab.metrics.text import LANGUAGES, TEXT_METRICS, corpus_scores, detect_language, sample_scores
from tunelab.metrics.wordnet import INSTALL_HINT, load_wordnet


@dataclass
class Scores:
    """``summary``: metric name -> mean over samples (None when it could not be computed), ``num_samples``,
    ``corpus`` and, when something was left out, ``notes``. ``samples``: one dict of values per sample (with the
    accuracy check's extracted answer and rule). ``settings``: language and task used."""

    summary: dict[str, Any]
    samples: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)


def resolve_task(task: str | None, golds: Sequence[Any], metrics: Sequence[str]) -> str | None:
    """The accuracy task: the one asked for, else the one the gold answers look like (None: not a task)."""
    if task not in (None, "auto") and task not in TASKS:
        raise ConfigError(f"task '{task}' is not one of auto, {', '.join(TASKS)}")
    found = detect_task(list(golds)) if task in (None, "auto") else task
    if "accuracy" in metrics and found is None:
        raise ConfigError("metric accuracy needs a task: the references look like neither GSM8K solutions ('#### N') "
                          f"nor choice letters; pass --task {' or --task '.join(TASKS)}")
    return found


def score_predictions(predictions: Sequence[str], references: Sequence[Sequence[str]], metrics: Sequence[str],
                      *, language: str = "auto", task: str | None = None) -> Scores:
    """Every metric in ``metrics`` except perplexity (which needs the model): per sample, mean, and corpus."""
    if language not in LANGUAGES:
        raise ConfigError(f"language '{language}' is not one of {', '.join(LANGUAGES)}")
    if len(predictions) != len(references):
        raise ConfigError(f"{len(predictions)} predictions for {len(references)} references")
    refs = [list(r) if r else [""] for r in references]
    language = detect_language([r[0] for r in refs]) if language == "auto" else language
    task = resolve_task(task, [r[0] for r in refs], metrics) if "accuracy" in metrics else None
    text_metrics = [name for name in metrics if name in TEXT_METRICS]
    wordnet = load_wordnet() if "meteor" in text_metrics else None
    samples = []
    for prediction, answers in zip(predictions, refs, strict=True):
        values: dict[str, Any] = sample_scores(prediction, answers, text_metrics, language, wordnet)
        if task is not None:
            check = check_answer(task, prediction, answers[0])
            values["accuracy"] = float(check.correct)
            values["answer"] = check.as_dict()
        samples.append(values)
    summary: dict[str, Any] = {}
    for name in (*text_metrics, *(["accuracy"] if task is not None else [])):
        known = [s[name] for s in samples if s.get(name) is not None]
        summary[name] = sum(known) / len(known) if known and len(known) == len(samples) else None
    summary["num_samples"] = len(samples)
    if samples and text_metrics:
        summary["corpus"] = corpus_scores(list(predictions), refs, text_metrics, language)
    if "meteor" in text_metrics and wordnet is None:
        summary["notes"] = [INSTALL_HINT]
    return Scores(summary, samples, {"language": language, "task": task})
