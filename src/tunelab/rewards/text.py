"""What every reward needs from its inputs: a completion as text, and a row's column with a clear error.

TRL hands a completion over as text (plain prompts) or as a list of messages (conversational prompts), and
every extra column of the rows as a keyword argument holding one value per completion.
"""

from __future__ import annotations

import re
from typing import Any

from tunelab.data.completions import completion_text
from tunelab.errors import RewardError

__all__ = ["TRAINER_ARGUMENTS", "column", "completion_text", "words"]  # completion_text lives with the sample log
_WORD = re.compile(r"\w+")
# Keyword arguments TRL's trainers pass besides the rows' columns.
TRAINER_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                     "environments")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore), the unit of Jaccard overlap and n-gram repeats."""
    return _WORD.findall(text.lower())


def column(columns: dict[str, Any], name: str, count: int, *, alternatives: tuple[str, ...] = ()) -> list[Any]:
    """One value per completion from the first of ``name`` and ``alternatives`` that the rows carry."""
    for key in (name, *alternatives):
        values = columns.get(key)
        if values is not None:
            if not isinstance(values, (list, tuple)) or len(values) != count:
                raise RewardError(f"column '{key}' must hold one value per completion ({count})")
            return list(values)
    wanted = " or ".join(f"'{key}'" for key in (name, *alternatives))
    present = sorted(key for key in columns if key not in TRAINER_ARGUMENTS)
    raise RewardError(f"the rows need a column {wanted}; they have {', '.join(present) or 'no extra columns'}")
