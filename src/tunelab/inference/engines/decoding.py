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

from tunelab.inference.engines.types import Completion, Request, Sink
from tunelab.inference.tools import ToolParser


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
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    emitted: str = ""
    generator: torch.Generator | None = None
    _text: str = ""

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _visible(self, decoded: str) -> str:
        """The answer as shown: surrounding whitespace dropped (as ``str.strip``; kept after an assistant prefix),
        trailing whitespace held back until more text follows."""
        return (decoded if self.request.continue_from else decoded.lstrip()).rstrip()

    def add(self, token: int) -> None:
        """Take the row's next token: stop on a stop token, a stop string, the token limit or cancellation."""
        self.tokens.append(token)
        sampling = self.request.sampling
        if token in self.stop_ids:
            self.finish_reason = "stop"
        else:
            self._text = self._decode()
            cut = min((i for i in (self._text.find(s) for s in sampling.stop) if i >= 0), default=-1)
            if cut >= 0:
                self._text, self.finish_reason = self._text[:cut], "stop"
            elif len(self.tokens) >= (self.limit or sampling.max_tokens):
                self.finish_reason = "length"
            elif self.sink.cancelled.is_set():
                self.finish_reason = "cancelled"
        if not self.done:
            self._stream(self._visible(self._text))

    def _decode(self) -> str:
        """The answer's text. After an assistant prefix it is decoded behind the prompt's last tokens and cut
        after them: SentencePiece drops a leading space at the start of a decode, which joins "Anna," and "I"."""
        if not self.request.continue_from:
            return self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        context = self.prompt_ids[-4:]
        before = self.tokenizer.decode(context, skip_special_tokens=True)
        return self.tokenizer.decode(context + self.tokens, skip_special_tokens=True)[len(before):]

    def _stream(self, text: str) -> None:
        """Send what is certain: not a partial character, not a possible start of a stop string or tool call."""
        keep = len(text)
        if text.endswith("\ufffd"):
            keep = len(text.rstrip("\ufffd"))
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
        """The completion; the rest of the text is streamed first (minus any tool-call markup)."""
        self.finish_reason = self.finish_reason or reason or "length"
        text = self._visible(self._text)
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
                                model=self.model)
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
        if row.done or (sampling.temperature == 0 and sampling.repetition_penalty == 1):
            continue
        logits = scores[index].float().clone()
        if sampling.repetition_penalty != 1:
            logits = _penalize(logits, row.prompt_ids + row.tokens, sampling.repetition_penalty)
        if sampling.temperature == 0:
            choice[index] = logits.argmax()
            continue
        if row.generator is None:
            row.generator = torch.Generator(device=scores.device)
            row.generator.manual_seed(sampling.seed if sampling.seed is not None else secrets.randbits(63))
        choice[index] = _sample(logits, sampling.temperature, sampling.top_k, sampling.top_p, row.generator)
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
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)
