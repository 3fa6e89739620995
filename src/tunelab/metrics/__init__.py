"""Evaluation metrics: text similarity (text.py), task accuracy (answers.py), and their combination per sample
(scoring.py). Pure Python on top of sacrebleu, rouge-chinese, nltk, jieba and math-verify: no model needed, so
``tunelab eval --predictions`` and the training stages use the same code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from tunelab.errors import ConfigError
from tunelab.metrics.text import BLEU, ROUGE, TEXT_METRICS

METRICS = (*TEXT_METRICS, "accuracy", "perplexity")
# Names that stand for several metrics on the command line and in configs.
GROUPS = {"bleu": BLEU, "rouge": ROUGE, "text": TEXT_METRICS, "all": METRICS}
# Metrics where a smaller number is better (the table and the chart say so).
LOWER_IS_BETTER = ("ter", "perplexity", "loss")
_ALIASES = {"bleu4": "bleu-4", "rougeL": "rouge-l", "rouge-L": "rouge-l", "rougel": "rouge-l", "em": "exact_match",
            "acc": "accuracy", "ppl": "perplexity", "chrF": "chrf", "TER": "ter"}


def canonical_metric(name: str) -> str:
    """A metric or group name as tunelab spells it ("rougeL" -> "rouge-l", "acc" -> "accuracy")."""
    name = _ALIASES.get(name.strip(), name.strip())
    return {**{f"rouge{n}": f"rouge-{n}" for n in range(1, 5)}, **{f"bleu{n}": f"bleu-{n}" for n in range(1, 5)}
            }.get(name, name)


def parse_metrics(names: str | Iterable[str]) -> list[str]:
    """Metric names (comma-separated or a list, groups and aliases allowed) in METRICS order, checked."""
    given = [part.strip() for part in (names.split(",") if isinstance(names, str) else names) if part.strip()]
    chosen: set[str] = set()
    for name in map(canonical_metric, given):
        if name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in METRICS:
            chosen.add(name)
        else:
            close = difflib.get_close_matches(name, [*METRICS, *GROUPS], n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown metric '{name}'{hint}; known: {', '.join(METRICS)}, or the groups "
                              f"{', '.join(GROUPS)}")
    if not chosen:
        raise ConfigError("no metric given")
    return [name for name in METRICS if name in chosen]
