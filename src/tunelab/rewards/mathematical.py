r"""``accuracy``: 1.0 when the completion's final answer is mathematically equal to the gold answer, else 0.0.

Equality is math-verify's (LaTeX and plain expressions through sympy: ``\frac{1}{2}`` = ``0.5`` = ``1/2``,
``\boxed{}``, sets, tuples, intervals). The gold answer is the row's ``answer`` column (the LIMO sets, AIME,
GSM8K: a whole solution counts by its "#### N"), else ``solution`` (MATH/TRL style, with a ``\boxed{}``); a
``choice_answer`` (a multiple-choice letter, as in Gaokao) is accepted besides the answer. The completion's
answer is the content of its last ``<answer>...</answer>`` when it has one (the R1 format); otherwise
math-verify looks for an anchored answer: ``\boxed{}`` first, then "final answer is ...". A completion
without a parseable answer, or a gold answer that cannot be parsed (e.g. a dict of sub-answers), gives 0.0.

math-verify bounds parsing and checking with ``signal.alarm``, which works only in the main thread; in any
other thread (a reward run from a worker) the time limits are off rather than failing.
"""

from __future__ import annotations

from typing import Any

from tunelab.metrics.answers import is_equivalent
from tunelab.rewards.text import column, completion_text


def accuracy(completions: list[Any], **columns: Any) -> list[float]:
    """1.0 when the completion's answer equals the gold answer mathematically."""
    count = len(completions)
    golds = column(columns, "answer", count, alternatives=("solution",))
    choices = columns.get("choice_answer")
    if not isinstance(choices, (list, tuple)) or len(choices) != count:
        choices = [None] * count
    return [1.0 if is_equivalent(completion_text(completion), gold, choice) else 0.0
            for completion, gold, choice in zip(completions, golds, choices, strict=True)]
