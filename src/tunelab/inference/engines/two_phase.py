"""Budget forcing where generation cannot be steered token by token (vLLM's offline ``LLM.generate``): s1's own
algorithm, in whole generation calls.

1. A thinking pass: at most the thinking budget left, stopping at the end delimiter (a stop string) or a stop
   token.
2. While fewer than ``num_wait`` waits were given, or fewer than ``min_thinking_tokens`` thought, and the pass
   stopped rather than ran out: the wait text is appended and thinking continues with the budget left.
3. Thinking is closed (the end delimiter, then the answer cue after a budget cut) and an answer pass runs, at most
   ``max_answer_tokens``.

Rows of a batch advance together: each call generates for every row still in the same phase. The counts are the
hf engine's (``budget.py``): thinking is the model's tokens in the section plus the waits; delimiters and the cue
are not counted. ``generate`` is injected, so the algorithm is tested without vLLM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunelab.inference.engines.budget import ThinkingBudget


@dataclass(frozen=True)
class Pass:
    """One generation call for one row (its index in the batch, for its sampling settings): from these token ids,
    at most ``max_tokens``, also stopping at ``stop``."""

    row: int
    prompt_ids: list[int]
    max_tokens: int
    stop: tuple[str, ...]


@dataclass(frozen=True)
class PassResult:
    token_ids: list[int]
    stopped: bool  # on a stop string or stop token (False: it ran out of tokens)


Generate = Callable[[list[Pass]], list[PassResult]]


@dataclass
class _Row:
    index: int
    budget: ThinkingBudget
    prompt: list[int]
    limit: int  # new tokens in all, as the request allows
    stop: tuple[str, ...]  # the request's own stop strings, for the answer
    tokens: list[int] = field(default_factory=list)
    thought: int = 0
    waits: int = 0
    cut: bool = False
    stopped: bool = True

    def room(self) -> int:
        return self.limit - len(self.tokens)


def force_budgets(generate: Generate, prompts: list[list[int]], budgets: list[ThinkingBudget], limits: list[int],
                  stops: list[tuple[str, ...]], opens: list[bool], tokenizer: Any) -> list[tuple[list[int], bool]]:
    """(new token ids, stopped rather than cut by length) per row, after thinking and answering under its budget;
    ``opens`` says whether a row's prompt already opened the thinking section."""

    def ids(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False)) if text else []

    rows = []
    for index, (prompt, budget, limit, stop, opened) in enumerate(zip(prompts, budgets, limits, stops, opens,
                                                                     strict=True)):
        row = _Row(index, budget, prompt, limit, stop)
        row.tokens = [] if opened else ids(f"{budget.start}\n")
        rows.append(row)
    thinking = list(rows)
    while thinking:
        asked = []
        for row in thinking:
            left = row.room() if row.budget.max_thinking_tokens is None else min(
                row.room(), row.budget.max_thinking_tokens - row.thought)
            asked.append(max(left, 0))
        ready = [(row, left) for row, left in zip(thinking, asked, strict=True) if left > 0]
        for row, left in zip(thinking, asked, strict=True):
            row.cut = row.cut or left <= 0
        results = generate([Pass(row.index, row.prompt + row.tokens, left, (row.budget.end,))
                            for row, left in ready]) if ready else []
        still = []
        for (row, _), result in zip(ready, results, strict=True):
            row.tokens += result.token_ids
            row.thought += len(result.token_ids)
            if not result.stopped:  # the budget ran out: cut
                row.cut = True
            elif row.waits < row.budget.num_wait or row.thought < row.budget.min_thinking_tokens:
                wait = ids(f"\n{row.budget.wait_text}")
                row.tokens += wait
                row.thought += len(wait)  # s1 counts the inserted waits as thinking
                row.waits += 1
                still.append(row)
        thinking = still
    for row in rows:
        row.tokens += ids(f"\n{row.budget.end}\n\n") + (ids(row.budget.answer_cue) if row.cut else [])
    answering = [row for row in rows if row.room() > 0]
    passes = [Pass(row.index, row.prompt + row.tokens, min(row.room(), row.budget.max_answer_tokens or row.room()),
                   row.stop) for row in answering]
    for row, result in zip(answering, generate(passes) if passes else [], strict=True):
        row.tokens += result.token_ids
        row.stopped = result.stopped
    return [(row.tokens[:row.limit], row.stopped and len(row.tokens) <= row.limit) for row in rows]
