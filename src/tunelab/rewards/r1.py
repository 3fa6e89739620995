r"""The five rewards of the widely used GSM8K "R1" GRPO recipe (willccbb's gist), with the recipe's values.

The policy is asked (``R1_SYSTEM_PROMPT``) to answer as ``<reasoning>\n...\n</reasoning>\n<answer>\n...\n
</answer>\n``. The values and quirks are the recipe's, kept so that its published curves compare:

- the answer is the text after the last ``<answer>`` up to the next ``</answer>``, stripped; without tags that is
  the whole completion (a bare "18" is an answer);
- ``correctness``: 2.0 if that answer equals the gold answer, else 0.0. Unlike the recipe, "1,600" equals
  "1600", "$18" equals "18" and "5.0" equals "5", and a gold column that still holds a whole GSM8K solution
  is compared by its "#### N" number;
- ``int``: 0.5 if the answer is all digits (``str.isdigit``: "-3" and "1,600" are not), else 0.0;
- ``strict_format``: 0.5 if the whole completion matches ``^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n
  </answer>\n$`` without DOTALL: ``.`` does not cross newlines, so the reasoning and the answer must each be one
  line (``$`` also matches before one final extra newline);
- ``soft_format``: 0.5 if ``<reasoning>.*?</reasoning>\s*<answer>.*?</answer>`` matches at the start, again
  without DOTALL, so a reasoning that spans lines never matches;
- ``xmlcount``: 0.125 for each of "<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n" and "\n</answer>" that
  occurs exactly once; with the third, minus 0.001 per character after the last "\n</answer>\n" (the whole
  text when there is none); with the fourth, minus 0.001 per character after the last "\n</answer>" beyond the
  first (so a completion ending right at "\n</answer>" gains 0.001). Range about [-0.002 x length, 0.251].
"""

from __future__ import annotations

import re
from typing import Any

from tunelab.metrics.answers import extract_answer, gold_answer, same_answer
from tunelab.rewards.text import column, completion_text

__all__ = ["R1_SYSTEM_PROMPT", "extract_answer", "gold_answer", "same_answer"]  # answers live in metrics

R1_SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""

CORRECT, INTEGER, FORMAT, TAG = 2.0, 0.5, 0.5, 0.125
TRAILING_PENALTY = 0.001  # per character after the closing answer tag

_STRICT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")
_SOFT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")


def _texts(completions: list[Any]) -> list[str]:
    return [completion_text(completion) for completion in completions]


def correctness(completions: list[Any], **columns: Any) -> list[float]:
    """2.0 when the answer equals the gold answer of column ``answer``."""
    golds = column(columns, "answer", len(completions))
    return [CORRECT if same_answer(extract_answer(text), gold_answer(gold)) else 0.0
            for text, gold in zip(_texts(completions), golds, strict=True)]


def integer_answer(completions: list[Any], **_: Any) -> list[float]:
    """0.5 when the answer is all digits (the reward named ``int``)."""
    return [INTEGER if extract_answer(text).isdigit() else 0.0 for text in _texts(completions)]


def strict_format(completions: list[Any], **_: Any) -> list[float]:
    """0.5 when the whole completion is exactly the one-line-reasoning, one-line-answer layout."""
    return [FORMAT if _STRICT.match(text) else 0.0 for text in _texts(completions)]


def soft_format(completions: list[Any], **_: Any) -> list[float]:
    """0.5 when the completion starts with a reasoning block followed by an answer block (no DOTALL)."""
    return [FORMAT if _SOFT.match(text) else 0.0 for text in _texts(completions)]


def xml_tag_score(text: str) -> float:
    """The recipe's ``xmlcount`` for one completion."""
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += TAG
    if text.count("\n</reasoning>\n") == 1:
        score += TAG
    if text.count("\n<answer>\n") == 1:
        score += TAG - TRAILING_PENALTY * len(text.rsplit("\n</answer>\n", 1)[-1])
    if text.count("\n</answer>") == 1:
        score += TAG - TRAILING_PENALTY * (len(text.rsplit("\n</answer>", 1)[-1]) - 1)
    return score


def xmlcount(completions: list[Any], **_: Any) -> list[float]:
    """0.125 per well-placed tag, minus 0.001 per character of text after the answer."""
    return [xml_tag_score(text) for text in _texts(completions)]
