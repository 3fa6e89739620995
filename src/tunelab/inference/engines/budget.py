"""Budget forcing (s1, "simple test-time scaling"): how long a reasoning model thinks, decided token by token.

A row with a ``ThinkingBudget`` gets its tokens through ``BudgetForcer.choose``: the token the sampler picked, or
one the budget puts in its place.

- Thinking that reaches ``max_thinking_tokens`` is closed: the end delimiter, then the answer cue if one is set
  (s1's "Final Answer:").
- An attempt to close thinking early is suppressed: the end delimiter, or a stop token, while thinking.
  "Wait" goes in its place, as long as fewer than ``num_wait`` waits were given or fewer than
  ``min_thinking_tokens`` were thought.
- The answer after thinking ends at ``max_answer_tokens``.
- When the prompt does not open the thinking section, the forcer opens it, so that thinking meant to be bounded
  is never an unbounded answer.

Everything works on token ids, inside the engine's per-row decoding (``decoding.py``). Nothing is re-tokenised,
and rows of one batch keep their own budgets. The counts, as in s1: thinking tokens are those the model wrote
inside the section plus the inserted waits; the delimiters and the cue are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.inference.engines.types import RequestError
from tunelab.inference.reasoning import THINK_END, THINK_START

# The settings a command, a server config or a request sets (the rest: answer cue, delimiters, keep defaults).
BUDGET_KEYS = ("max_thinking_tokens", "min_thinking_tokens", "num_wait", "wait_text", "max_answer_tokens")


@dataclass(frozen=True)
class ThinkingBudget:
    """Per-request budget settings; all unset means no forcing."""

    max_thinking_tokens: int | None = None
    min_thinking_tokens: int = 0
    num_wait: int = 0
    wait_text: str = "Wait"
    max_answer_tokens: int | None = None
    answer_cue: str = ""  # written after a budget cut, before the answer (s1: "Final Answer:")
    start: str = THINK_START
    end: str = THINK_END

    @property
    def active(self) -> bool:
        return bool(self.max_thinking_tokens is not None or self.min_thinking_tokens or self.num_wait
                    or self.max_answer_tokens is not None)

    def check(self) -> None:
        checks = [
            ("max_thinking_tokens", self.max_thinking_tokens is None or self.max_thinking_tokens >= 0,
             f"max_thinking_tokens must be 0 or more, got {self.max_thinking_tokens}"),
            ("min_thinking_tokens", self.min_thinking_tokens >= 0,
             f"min_thinking_tokens must be 0 or more, got {self.min_thinking_tokens}"),
            ("min_thinking_tokens", self.max_thinking_tokens is None
             or self.min_thinking_tokens <= self.max_thinking_tokens,
             f"min_thinking_tokens {self.min_thinking_tokens} is above max_thinking_tokens "
             f"{self.max_thinking_tokens}"),
            ("num_wait", self.num_wait >= 0, f"num_wait must be 0 or more, got {self.num_wait}"),
            ("wait_text", bool(self.wait_text.strip()), "wait_text must not be empty"),
            ("max_answer_tokens", self.max_answer_tokens is None or self.max_answer_tokens >= 1,
             f"max_answer_tokens must be at least 1, got {self.max_answer_tokens}"),
            ("end", bool(self.start) and bool(self.end), "the thinking delimiters must not be empty"),
        ]
        for param, ok, message in checks:
            if not ok:
                raise RequestError(message, param=param)

    @classmethod
    def of(cls, settings: Any) -> ThinkingBudget:
        """The budget that ``settings`` (command flags, a server config) hold under ``BUDGET_KEYS``."""
        return cls(**{key: getattr(settings, key) for key in BUDGET_KEYS})

    def token_limit(self, max_tokens: int) -> int:
        """New tokens a forced row may need: the thinking budget (plus the delimiters, cue and waits, at most a few
        dozen tokens) and the answer's."""
        if self.max_thinking_tokens is None:
            return max_tokens
        answer = self.max_answer_tokens if self.max_answer_tokens is not None else max_tokens
        return self.max_thinking_tokens + answer + 64


class BudgetForcer:
    """One row's thinking phase and counts; ``choose`` is called with each token the sampler proposes, ``took``
    with each token the row then takes."""

    def __init__(self, budget: ThinkingBudget, tokenizer: Any, stop_ids: frozenset[int], prompt_opens: bool) -> None:
        def ids(text: str) -> list[int]:
            return list(tokenizer.encode(text, add_special_tokens=False)) if text else []

        self.budget, self.stop_ids = budget, stop_ids
        self.end_ids = ids(budget.end)
        self.close_ids = ids(f"\n{budget.end}\n\n") + ids(budget.answer_cue)
        self.wait_ids = ids(f"\n{budget.wait_text}")
        self.queue: list[int] = [] if prompt_opens else ids(f"{budget.start}\n")
        self.phase = "thinking" if prompt_opens else "opening"
        self.thinking = self.answer = self.waits = 0
        self.recent: list[int] = []  # the last tokens thought, to see a delimiter of several tokens

    def _tries_to_close(self, token: int) -> bool:
        """The model ends thinking with this token: a one-token delimiter (Qwen3, DeepSeek-R1, minimind), or a stop
        token. A delimiter of several tokens is seen once written (``took``); its first piece may be plain text."""
        return (len(self.end_ids) == 1 and token == self.end_ids[0]) or token in self.stop_ids

    def choose(self, proposed: int) -> int:
        if self.queue:
            return self.queue[0]
        if self.phase != "thinking":
            return proposed
        budget = self.budget
        if budget.max_thinking_tokens is not None and self.thinking >= budget.max_thinking_tokens:
            self.queue = list(self.close_ids)
            self.phase = "closing"
            return self.queue[0]
        if self._tries_to_close(proposed):
            if self.waits < budget.num_wait or self.thinking < budget.min_thinking_tokens:
                self.waits += 1
                self.queue = list(self.wait_ids)
                self.thinking += len(self.wait_ids)  # s1 counts the inserted waits as thinking
                return self.queue[0]
            if proposed in self.stop_ids:  # a stop token while thinking: close thinking properly first
                self.queue = list(self.close_ids)
                self.phase = "closing"
                return self.queue[0]
        return proposed

    def took(self, token: int) -> None:
        if self.queue and token == self.queue[0]:
            self.queue.pop(0)
            if not self.queue and self.phase == "opening":
                self.phase = "thinking"
            elif not self.queue and self.phase == "closing":
                self.phase = "answer"
            return
        if self.phase == "thinking":
            self.recent = (self.recent + [token])[-len(self.end_ids):]
            if self.recent == self.end_ids:  # the model closed thinking itself
                self.phase = "answer"
            else:
                self.thinking += 1
        elif self.phase == "answer":
            self.answer += 1

    @property
    def answer_done(self) -> bool:
        limit = self.budget.max_answer_tokens
        return self.phase == "answer" and limit is not None and self.answer >= limit
