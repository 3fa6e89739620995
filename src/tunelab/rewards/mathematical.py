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

import logging
import re
import threading
from typing import Any

from tunelab.rewards.r1 import extract_answer, gold_answer
from tunelab.rewards.text import column, completion_text

TIME_LIMIT_S = 5  # per parse and per comparison, in the main thread
_SCIENTIFIC = re.compile(r"^([-+]?\d+(?:\.\d+)?)[eE]([-+]?\d+)$")
_CHOICE = re.compile(r"^\s*([A-Z])[.)．、:]\s*")
_UPRIGHT_LETTER = re.compile(r"\\mathrm\{\s*([A-Za-z])\s*\}")  # \mathrm{i}: math-verify drops it as a unit


def _tidy(text: str) -> str:
    return _UPRIGHT_LETTER.sub(r"\1", text)


def _time_limit() -> int | None:
    """math-verify's signal.alarm raises outside the main thread: there, parse without a time limit."""
    if threading.current_thread() is threading.main_thread():
        return TIME_LIMIT_S
    for name in ("math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)  # its "timeout disabled" warning, once per call
    return None


def _gold_texts(gold: Any, choice: Any) -> list[str]:
    """The gold answer as texts to parse: numbers and lists as text, a dict (sub-answers) as nothing."""
    texts = []
    if isinstance(choice, str) and choice.strip():
        texts.append(choice.strip())
    if isinstance(gold, bool) or isinstance(gold, dict) or gold is None:
        return texts
    if isinstance(gold, (list, tuple)):
        gold = ", ".join(str(item) for item in gold)
    text = gold_answer(gold)
    if texts:  # "C. 1-\mathrm{i}" with choice C: the option's text is an answer too
        text = _CHOICE.sub("", text)
    scientific = _SCIENTIFIC.match(text)
    if scientific:  # "4.5e33" is no LaTeX: write it as 4.5\times 10^{33}
        text = f"{scientific.group(1)}\\times 10^{{{scientific.group(2)}}}"
    return [*texts, text] if text else texts


def _parse_plain(text: str, limit: int | None) -> list[Any]:
    """An answer on its own (a gold answer, the inside of <answer>): LaTeX even without $ signs."""
    from math_verify import parse

    if "$" not in text and "\\boxed" not in text:
        parsed = parse(f"${text}$", parsing_timeout=limit)
        if parsed:
            return parsed
    return parse(text, parsing_timeout=limit)


def _parse_completion(text: str, limit: int | None) -> list[Any]:
    if "<answer>" in text and "</answer>" in text:
        return _parse_plain(extract_answer(text), limit)
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    anchored = [LatexExtractionConfig(normalization_config=NormalizationConfig(units=True), boxed_match_priority=0,
                                      try_extract_without_anchor=False),
                ExprExtractionConfig(try_extract_without_anchor=False)]
    return parse(text, extraction_config=anchored, extraction_mode="first_match", parsing_timeout=limit)


def is_equivalent(completion: str, gold: Any, choice: Any = None) -> bool:
    """Whether the completion's final answer equals the gold answer (or the choice letter)."""
    from math_verify import verify

    limit = _time_limit()
    answer = _parse_completion(_tidy(completion), limit)
    if not answer:
        return False
    for text in _gold_texts(gold, choice):
        expected = _parse_plain(_tidy(text), limit)
        if expected and verify(expected, answer, timeout_seconds=limit):
            return True
    return False


def accuracy(completions: list[Any], **columns: Any) -> list[float]:
    """1.0 when the completion's answer equals the gold answer mathematically."""
    count = len(completions)
    golds = column(columns, "answer", count, alternatives=("solution",))
    choices = columns.get("choice_answer")
    if not isinstance(choices, (list, tuple)) or len(choices) != count:
        choices = [None] * count
    return [1.0 if is_equivalent(completion_text(completion), gold, choice) else 0.0
            for completion, gold, choice in zip(completions, golds, choices, strict=True)]
