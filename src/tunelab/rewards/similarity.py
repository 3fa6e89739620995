"""``similarity``: how close a completion is to the row's good answers, and how far from its bad ones.

For a completion ``c``, with ``w`` = ``similarity_cosine_weight`` and ``b`` = ``similarity_bad_weight``::

    mix(c, x) = w * cos(e(c), e(x)) + (1 - w) * jaccard(c, x)
    score     = max over gold in gold_answers of mix(c, gold) - b * max over bad in bad_answers of mix(c, bad)

``e`` is the sentence embedding (``embeddings.py``: all-MiniLM-L6-v2 offline by default, or
``similarity_model``), ``jaccard`` the overlap of the two texts' sets of lower-cased word tokens
(|A & B| / |A | B|, 0.0 when neither has a word). A row carries ``gold_answers`` (a list or one string) and
optionally ``bad_answers``; without bad answers the second term is 0. ``mix`` lies in [-w, 1] (cosine can be
negative), so the score lies in [-w - b, 1 + b * w]; an exact copy of a gold answer scores 1.0 (to float
precision) minus the bad term.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunelab.errors import RewardError
from tunelab.models.embeddings import load_embedder
from tunelab.rewards.settings import RewardSettings
from tunelab.rewards.text import column, completion_text, words


def jaccard(first: str, second: str) -> float:
    """Overlap of the lower-cased word sets; 0.0 when neither text has a word."""
    a, b = set(words(first)), set(words(second))
    return len(a & b) / len(a | b) if a | b else 0.0


def _answers(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise RewardError(f"column '{name}' must be a string or a list of strings, got {type(value).__name__}")


def similarity(settings: RewardSettings) -> Callable[..., list[float]]:
    """The ``similarity`` reward; loads the embedding model now, so that a missing one fails before training."""
    embedder = load_embedder(settings.similarity_model)
    weight, bad_weight = settings.similarity_cosine_weight, settings.similarity_bad_weight

    def reward(completions: list[Any], **columns: Any) -> list[float]:
        count = len(completions)
        texts = [completion_text(completion) for completion in completions]
        golds = [_answers(value, "gold_answers") for value in column(columns, "gold_answers", count)]
        bads = columns.get("bad_answers")
        bads = [_answers(value, "bad_answers") for value in bads] if isinstance(bads, (list, tuple)) \
            else [[] for _ in texts]
        if len(bads) != count:
            raise RewardError(f"column 'bad_answers' must hold one value per completion ({count})")
        if not all(golds):
            raise RewardError("column 'gold_answers' is empty in a row; give at least one good answer")
        unique = list(dict.fromkeys([*texts, *(g for row in golds for g in row), *(b for row in bads for b in row)]))
        vectors = embedder.embed(unique)
        index = {text: position for position, text in enumerate(unique)}

        def mix(text: str, other: str) -> float:
            cosine = float(vectors[index[text]] @ vectors[index[other]])
            return weight * cosine + (1 - weight) * jaccard(text, other)

        scores = []
        for text, gold, bad in zip(texts, golds, bads, strict=True):
            score = max(mix(text, answer) for answer in gold)
            if bad:
                score -= bad_weight * max(mix(text, answer) for answer in bad)
            scores.append(score)
        return scores

    return reward
