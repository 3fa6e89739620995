r"""Final answers of reasoning tasks: extract them from a completion and check them against the gold answer.

One place for answer checking, shared by the RL rewards (``correctness``, ``accuracy``) and ``tunelab eval``'s
``accuracy``. Three tasks:

- ``gsm8k``: the gold answer is the number after "####"; the completion's answer is, by the first rule that
  applies, the inside of its last ``<answer>`` tag, the text after its last "####", its last ``\boxed{}``, what
  follows "answer is", else its last number. Equal as numbers ("1,600" = "1600" = "1600.0").
- ``math``: mathematical equivalence by math-verify (LaTeX and plain expressions through sympy: ``\frac{1}{2}``
  = ``0.5``; sets, tuples, intervals). The completion's answer is the inside of its last ``<answer>`` tag, else
  math-verify's anchored answer: ``\boxed{}`` first, then "final answer is ...".
- ``choice``: a multiple-choice letter (GPQA, Gaokao); the completion's letter is, by the first rule that
  applies, its last ``\boxed{X}``, "answer is (X)" / "Answer: X", else the last letter standing alone.

Each check returns the extracted answer and the rule that found it, so a per-sample report says why a sample
counted as right or wrong.

math-verify bounds parsing and checking with ``signal.alarm``, which works only in the main thread; in any
other thread (a reward run from a worker) the time limits are off rather than failing.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

TASKS = ("gsm8k", "math", "choice")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")


def extract_answer(text: str) -> str:
    """The recipe's answer: after the last ``<answer>``, before the next ``</answer>``, stripped."""
    return text.rsplit("<answer>", 1)[-1].split("</answer>", 1)[0].strip()


def gold_answer(gold: Any) -> str:
    """A gold column's answer; a whole GSM8K solution gives its final "#### N"."""
    text = str(gold)
    return text.rsplit("####", 1)[-1].strip() if "####" in text else text.strip()


def _as_number(text: str) -> Decimal | None:
    """ "$1,600.00" -> 1600.00; anything but a plain number -> None."""
    cleaned = _THOUSANDS.sub("", text.strip().removeprefix("$").strip()).rstrip(".")
    if not _NUMBER.fullmatch(cleaned):
        return None
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def same_answer(answer: str, gold: str) -> bool:
    """Equal as numbers when both are plain numbers, else equal as stripped text."""
    number, expected = _as_number(answer), _as_number(gold)
    if number is not None and expected is not None:
        return number == expected
    return answer.strip() == gold.strip()


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
    return check_math(completion, gold, choice).correct


@dataclass(frozen=True)
class AnswerCheck:
    """One sample's verdict: right or not, the answer found in the completion (None: none found), the rule that
    found it, and the gold answer compared with."""

    correct: bool
    extracted: str | None
    rule: str
    gold: str

    def as_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "extracted": self.extracted, "rule": self.rule, "gold": self.gold}


def check_math(completion: str, gold: Any, choice: Any = None) -> AnswerCheck:
    """math-verify equivalence of the completion's final answer with the gold answer (or the choice letter)."""
    from math_verify import verify

    limit = _time_limit()
    text = _tidy(completion)
    answer = _parse_completion(text, limit)
    rule = "<answer> tag" if "<answer>" in text and "</answer>" in text else \
        "\\boxed{}" if "\\boxed" in text else "anchored expression ('answer is ...')"
    golds = _gold_texts(gold, choice)
    shown_gold = " or ".join(golds) if golds else str(gold)
    if not answer:
        return AnswerCheck(False, None, "no answer found", shown_gold)
    extracted = str(answer[-1])
    for gold_text in golds:
        expected = _parse_plain(_tidy(gold_text), limit)
        if expected and verify(expected, answer, timeout_seconds=limit):
            return AnswerCheck(True, extracted, rule, shown_gold)
    return AnswerCheck(False, extracted, rule, shown_gold)


_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*[:(]?\s*\$?\s*([^\n]+)", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"[-+]?\$?\d(?:[\d,]*\d)?(?:\.\d+)?")  # "18, since" is 18; "1,600" is 1,600


def _gsm8k_candidate(completion: str) -> tuple[str | None, str]:
    if "<answer>" in completion:
        return extract_answer(completion), "<answer> tag"
    if "####" in completion:
        return completion.rsplit("####", 1)[1].strip().split("\n", 1)[0], "after ####"
    boxed = _BOXED.findall(completion)
    if boxed:
        return boxed[-1], "\\boxed{}"
    stated = _ANSWER_IS.findall(completion)
    if stated:
        return stated[-1], "answer is"
    numbers = _LAST_NUMBER.findall(completion)
    return (numbers[-1], "last number") if numbers else (None, "no answer found")


def _first_number(text: str) -> str:
    """ "$18 per day." -> "18": the number inside a stated answer (the whole text when there is none)."""
    found = _LAST_NUMBER.search(text)
    return found.group(0).replace("$", "").rstrip(".") if found else text.strip()


def check_gsm8k(completion: str, gold: Any) -> AnswerCheck:
    """GSM8K: the completion's number against the gold "#### N" (or a bare gold number)."""
    expected = gold_answer(gold).replace(",", "")
    candidate, rule = _gsm8k_candidate(completion)
    if candidate is None:
        return AnswerCheck(False, None, rule, expected)
    answer = _first_number(candidate)
    return AnswerCheck(same_answer(answer, expected), answer, rule, expected)


_CHOICE_LETTER = re.compile(r"^\s*\(?\s*([A-J])\s*\)?\s*[.)]?\s*$")
_BOXED_LETTER = re.compile(r"\\boxed\s*\{\s*(?:\\text\{)?\s*\(?([A-J])\)?\s*\}?\s*\}")
# The letter itself is upper case and stands alone ("The answer is a bit subtle" names no choice).
_STATED_LETTER = re.compile(r"(?i:answer)\s*(?i:is)?\s*[:：]?\s*[(\[]?\**\s*([A-J])\s*\**[)\]]?(?=[\s.,;:!)]|$)")
_LONE_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")


def choice_letter(text: str) -> str | None:
    """A gold answer that is a choice letter ("C", "(C)", "C.") -> "C"; anything else -> None."""
    found = _CHOICE_LETTER.match(str(text))
    return found.group(1) if found else None


def check_choice(completion: str, gold: Any) -> AnswerCheck:
    """Multiple choice: the completion's letter against the gold letter."""
    expected = choice_letter(gold) or str(gold).strip()
    for pattern, rule in ((_BOXED_LETTER, "\\boxed{}"), (_STATED_LETTER, "answer is"),
                          (_LONE_LETTER, "last lone letter")):
        found = pattern.findall(completion)
        if found:
            return AnswerCheck(found[-1] == expected, found[-1], rule, expected)
    return AnswerCheck(False, None, "no answer found", expected)


def detect_task(golds: list[Any]) -> str | None:
    """The task the gold answers look like: GSM8K solutions ("####") or plain numbers, choice letters, else None."""
    texts = [str(gold) for gold in golds if gold not in (None, "")]
    if not texts:
        return None
    if all("####" in text or _as_number(text) is not None for text in texts):
        return "gsm8k"  # GSM8K solutions, or plain numbers (GSM8K with extract_answer, AIME)
    if all(choice_letter(text) for text in texts):
        return "choice"
    return None


def check_answer(task: str, completion: str, gold: Any) -> AnswerCheck:
    """The check of ``task`` (one of TASKS) on one sample."""
    if task == "gsm8k":
        return check_gsm8k(completion, gold)
    if task == "choice":
        return check_choice(completion, gold)
    return check_math(completion, gold)
