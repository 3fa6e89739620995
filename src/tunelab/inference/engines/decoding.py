"""Per-row decoding inside one batched ``generate`` call: each row keeps its own sampling settings and random
generator, its own stop tokens, stop strings and token limit, streams its own text and ends on its own.

transformers' ``generate`` applies one generation config to the whole batch. Here it runs greedy over logits
that this module has already reduced to one allowed token per row (``RowSampler``, a logits processor), and
``RowStopper`` (a stopping criterion, called after each step) reads the token each row got. So requests with
different temperatures, seeds, limits and stop strings share one forward pass per step.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.inference.engines.budget import BudgetForcer
from tunelab.inference.engines.types import Completion, Request, Sink
from tunelab.inference.reasoning import opens_in_prompt, split_reasoning
from tunelab.inference.tools import ToolParser

# Temperatures below this sample the most likely token: dividing logits by less overflows.
GREEDY_BELOW = 1e-5


@dataclass
class Row:
    """One request's state while its batch runs."""

    request: Request
    prompt_ids: list[int]
    stop_ids: frozenset[int]
    tokenizer: Any
    sink: Sink
    tool_parser: ToolParser | None = None
    model: str = ""
    limit: int = 0  # max_tokens, or less where the context ends first
    reasoning: str | None = None  # None: no <think> parsing; "prompt": the block opened in the prompt; "answer"
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    emitted: str = ""
    emitted_reasoning: str = ""
    generator: torch.Generator | None = None
    forcer: BudgetForcer | None = None  # the request's thinking budget at work (budget.py)
    _text: str = ""

    _window: list[int] = field(default_factory=list)  # token ids being decoded (the prompt's tail first)
    _prefix_offset: int = 0
    _read_offset: int = 0
    completion: Completion | None = None

    def __post_init__(self) -> None:
        # after an assistant prefix, decoding starts behind the prompt's last tokens: SentencePiece drops the
        # leading space of a decode's first token, which would join "Anna," and "I"
        if self.request.continue_from:
            self._window = list(self.prompt_ids[-4:])
            self._read_offset = len(self._window)
        budget = self.request.budget
        if budget is not None and budget.active and self.forcer is None:
            opens = opens_in_prompt(self.tokenizer.decode(self.prompt_ids[-8:]), budget.start)
            self.forcer = BudgetForcer(budget, self.tokenizer, self.stop_ids, opens)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _visible(self, decoded: str) -> str:
        """The answer as shown: a chat answer without surrounding whitespace (as ``str.strip``; while streaming,
        trailing whitespace waits for the text after it); a raw completion or a continued answer as generated."""
        if self.request.messages is None or self.request.continue_from:
            return decoded
        return decoded.strip()

    def _decode_next(self, token: int) -> str:
        """Text the token adds (incremental decoding: text already decoded never changes, and each step decodes
        a few tokens, not the whole answer); empty while a character is still incomplete."""
        self._window.append(token)
        before = self.tokenizer.decode(self._window[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        after = self.tokenizer.decode(self._window[self._prefix_offset:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._window)
        return after[len(before):]

    def add(self, token: int) -> None:
        """Take the row's next token: stop on a stop token, a stop string, the token limit or cancellation."""
        self.tokens.append(token)
        stops = self.request.sampling.stop
        if self.forcer is not None:
            self.forcer.took(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return
        new = self._decode_next(token)
        start = max(0, len(self._text) - max((len(stop) for stop in stops), default=0) + 1)
        self._text += new
        found = [i for i in (self._text.find(stop, start) for stop in stops) if i >= 0] if new else []
        if found:  # a stop string can only end in the new text
            self._text, self.finish_reason = self._text[:min(found)], "stop"
        elif len(self.tokens) >= (self.limit or self.request.sampling.max_tokens) or (
                self.forcer is not None and self.forcer.answer_done):
            self.finish_reason = "length"
        elif self.sink.cancelled.is_set():
            self.finish_reason = "cancelled"
        else:
            self._stream(self._visible(self._text))

    def _split(self, text: str, final: bool) -> tuple[str, str, bool]:
        """(reasoning, answer, certain) under this row's reasoning mode."""
        if self.reasoning is None:
            return "", text, True
        return split_reasoning(text, self.reasoning == "prompt", final)

    def _send_reasoning(self, reasoning: str) -> None:
        if reasoning.startswith(self.emitted_reasoning) and len(reasoning) > len(self.emitted_reasoning):
            self.sink.reasoning(reasoning[len(self.emitted_reasoning):])
            self.emitted_reasoning = reasoning

    def _stream(self, text: str) -> None:
        """Send what is certain: not a possible start of a stop string, tool call or reasoning marker; reasoning
        and answer each to their own channel."""
        reasoning, text, certain = self._split(text, final=False)
        if not certain:
            return
        self._send_reasoning(reasoning)
        keep = len(text)  # (a half-decoded character never gets here: _decode_next waits for it)
        for stop in self.request.sampling.stop:
            for size in range(min(len(stop) - 1, keep), 0, -1):
                if stop.startswith(text[keep - size:keep]):
                    keep -= size
                    break
        if self.tool_parser is not None and self.request.tools and self.request.parse_tools:
            keep = min(keep, self.tool_parser.held_from(text))
        safe = text[:keep]
        if safe.startswith(self.emitted) and len(safe) > len(self.emitted):
            self.sink.text(safe[len(self.emitted):])
            self.emitted = safe

    def finish(self, reason: str | None = None) -> Completion:
        """The completion (once; later calls return it); the rest of the text is streamed first (minus any
        tool-call markup)."""
        if self.completion is not None:
            return self.completion
        self.finish_reason = self.finish_reason or reason or "length"
        reasoning, text, _ = self._split(self._visible(self._text), final=True)
        self._send_reasoning(reasoning)
        calls = []
        if self.tool_parser is not None and self.request.tools and self.request.parse_tools:
            content, calls = self.tool_parser.split(text)
            if calls:
                text = content
        if text.startswith(self.emitted) and len(text) > len(self.emitted):
            self.sink.text(text[len(self.emitted):])
            self.emitted = text
        completion = Completion(text=text, prompt_tokens=len(self.prompt_ids), completion_tokens=len(self.tokens),
                                finish_reason="tool_calls" if calls else self.finish_reason, tool_calls=calls,
                                model=self.model, reasoning=reasoning if self.reasoning is not None else None)
        self.completion = completion
        self.sink.done(completion)
        return completion


def _penalize(logits: torch.Tensor, seen: list[int], penalty: float) -> torch.Tensor:
    """transformers' repetition penalty (CTRL paper): divide positive, multiply negative scores of seen tokens."""
    ids = torch.tensor(sorted(set(seen)), dtype=torch.long, device=logits.device)
    if ids.numel() == 0:
        return logits
    picked = logits[ids]
    logits[ids] = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits


def _sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
            generator: torch.Generator) -> int:
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        cutoff = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < cutoff, float("-inf"))
    probs = torch.softmax(logits, -1)
    if not torch.isfinite(probs).all():  # an extreme temperature or penalty: the most likely token
        return int(logits.nan_to_num(nan=float("-inf")).argmax())
    if top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, -1) - sorted_probs >= top_p  # the smallest set reaching top_p stays
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def choose_tokens(rows: list[Row], scores: torch.Tensor) -> torch.Tensor:
    """Each row's next token from its logits (``scores``: batch x vocab), with that row's own settings."""
    choice = scores.argmax(-1)
    for index, row in enumerate(rows):
        sampling = row.request.sampling
        if row.done or (sampling.temperature < GREEDY_BELOW and sampling.repetition_penalty == 1):
            continue
        logits = scores[index].float().clone()
        if sampling.repetition_penalty != 1:
            logits = _penalize(logits, row.prompt_ids + row.tokens, sampling.repetition_penalty)
        if sampling.temperature < GREEDY_BELOW:
            choice[index] = logits.argmax()
            continue
        if row.generator is None:
            row.generator = torch.Generator(device=scores.device)
            # any integer a client sends is a valid seed (torch takes 0 .. 2**64 - 1)
            row.generator.manual_seed(sampling.seed % 2**64 if sampling.seed is not None else secrets.randbits(63))
        choice[index] = _sample(logits, sampling.temperature, sampling.top_k, sampling.top_p, row.generator)
    for index, row in enumerate(rows):
        if row.forcer is not None and not row.done:
            choice[index] = row.forcer.choose(int(choice[index]))
    return choice


class RowSampler:
    """Logits processor: picks each row's token with that row's settings, leaves only it allowed."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        allowed = torch.full_like(scores, float("-inf"))
        return allowed.scatter_(1, choose_tokens(self.rows, scores).unsqueeze(1), 0.0)


class RowStopper:
    """Stopping criterion: hands each unfinished row its new token; a row is done when it says so."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last, strict=True):
            if not row.done:
                row.add(int(token))
                if row.done:  # its client hears at once, not when the whole batch ends
                    row.finish()
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)
