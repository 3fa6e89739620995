"""Combine several datasets (concatenate or interleave with sampling ratios) and split off validation rows."""

from __future__ import annotations

import random
from typing import Any

from tunelab.errors import DataError

Rows = list[dict[str, Any]]


def mix_rows(parts: list[Rows], strategy: str = "concat", probs: list[float] | None = None,
             seed: int = 42) -> Rows:
    """``concat``, or draw from the datasets with ``probs`` until the first (``interleave_under``) or
    every (``interleave_over``, re-using exhausted ones) dataset has run out; same seed, same mix."""
    if strategy == "concat" or len(parts) == 1:
        return [row for part in parts for row in part]
    weights = probs or [1.0] * len(parts)
    drawn = [i for i, weight in enumerate(weights) if weight > 0]
    rng = random.Random(seed)
    positions = [0] * len(parts)
    finished: set[int] = set()
    mixed: Rows = []
    while True:
        index = rng.choices(range(len(parts)), weights=weights)[0]
        if positions[index] >= len(parts[index]):  # this dataset has run out
            finished.add(index)
            if strategy == "interleave_under" or finished >= set(drawn):
                return mixed
            positions[index] = 0  # over-sampling: start it again
        mixed.append(parts[index][positions[index]])
        positions[index] += 1


def split_rows(rows: Rows, val_size: float, seed: int) -> tuple[Rows, Rows]:
    """Hold out ``val_size`` (a fraction < 1 or a count) with a fixed seed."""
    if not val_size:
        return rows, []
    count = int(val_size) if val_size >= 1 else max(1, round(len(rows) * val_size))
    if count >= len(rows):
        raise DataError(f"val_size {val_size} leaves no training rows out of {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
