"""The Python API for generation: ``Predictor(model, adapter=...)(query, history=[...])``, ``.stream(...)`` and
batches, on top of the engine layer (``inference/engines``), so chat, predict, eval and the server render, stop
and decode the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Any, NamedTuple

from tunelab.errors import ConfigError
from tunelab.inference.engines.base import OverEngine
from tunelab.inference.engines.budget import ThinkingBudget
from tunelab.inference.engines.hf import END_OF_TURN_TOKENS, HFEngine, stop_token_ids
from tunelab.inference.engines.types import Completion, Request, RequestError, Sampling
from tunelab.inference.loading import LoadOptions
from tunelab.inference.reasoning import thinking_template_kwargs

__all__ = ["END_OF_TURN_TOKENS", "Answer", "Predictor", "check_generation_settings", "stop_token_ids"]

# Predictor's names for the sampling settings (``max_new_tokens`` is transformers' name for max_tokens).
_NAMES = {"max_new_tokens": "max_tokens", "max_tokens": "max_tokens", "temperature": "temperature",
          "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repetition_penalty", "stop": "stop",
          "seed": "seed"}
# Budget forcing (engines/budget.py): how long a reasoning model thinks; enable_thinking goes to the template.
_BUDGET_NAMES = frozenset(f.name for f in fields(ThinkingBudget))


def check_generation_settings(max_new_tokens: int, temperature: float, top_p: float,
                              repetition_penalty: float) -> None:
    """One place for what a generation setting may be, for every command that generates."""
    try:
        Sampling(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                 repetition_penalty=repetition_penalty).check()
    except RequestError as error:
        raise ConfigError(str(error).replace("max_tokens", "max_new_tokens")) from None


class Answer(NamedTuple):
    """A batch answer (predict, eval): the <think> block (None where the template writes none), the answer as
    written, and the retrieved chunks (``inference.rag.Hit``) its prompt carried."""

    thinking: str | None
    text: str
    sources: list[Any]


class Predictor(OverEngine):
    """A loaded model ready to answer chat messages; greedy when ``temperature`` is 0.

    ``model`` None means the adapter's own base model (or the embedded model without an adapter). With ``rag``
    (an ``inference.rag.Retriever``), every question first gets the chunks of the index close to it as clues;
    ``last_sources`` holds those of the latest single question (``__call__``, ``stream``).
    """

    def __init__(self, model: str | None = None, adapter: str | None = None, template: str | None = None, *,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, device: str | None = None,
                 options: LoadOptions | None = None, engine: HFEngine | None = None,
                 budget: ThinkingBudget | None = None, enable_thinking: bool | None = None,
                 rag: Any = None) -> None:
        check_generation_settings(max_new_tokens, temperature, top_p, repetition_penalty)
        self.sampling = Sampling(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 repetition_penalty=repetition_penalty)
        self.budget = budget or ThinkingBudget()
        self.budget.check()
        self.enable_thinking = enable_thinking
        self.rag, self.last_sources = rag, []
        self.engine = engine or HFEngine(model, {"adapter": adapter} if adapter else None, template, device=device,
                                         options=options)
        self.served = self.engine.served(None).name

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, name: str, *, max_new_tokens: int = 256,
                    temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0) -> Predictor:
        """A predictor over a model already in memory (a model in training)."""
        return cls(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                   repetition_penalty=repetition_penalty, engine=HFEngine.from_loaded(model, tokenizer, name))

    # what earlier code and users read from a predictor (model, tokenizer, model_name, device: OverEngine)
    @property
    def stop_token_ids(self) -> list[int]:
        return self.engine.stop_token_ids(self.served)

    @property
    def settings(self) -> dict[str, Any]:
        return {"max_new_tokens": self.sampling.max_tokens, "temperature": self.sampling.temperature,
                "top_p": self.sampling.top_p, "repetition_penalty": self.sampling.repetition_penalty}

    @staticmethod
    def messages(query: str, history: list[dict] | None = None, system: str | None = None,
                 images: list[str] | None = None) -> list[dict]:
        """System prompt, earlier turns, then the new user query (after its ``images``: paths, file:// or data
        URLs, for a vision-language model)."""
        messages = [{"role": "system", "content": system}] if system else []
        content: str | list[dict] = query
        if images:
            content = [*({"type": "image", "image": image} for image in images), {"type": "text", "text": query}]
        return messages + list(history or []) + [{"role": "user", "content": content}]

    def request(self, messages: list[dict], tools: Any = None, continue_from: str | None = None,
                **overrides: Any) -> Request:
        """An engine request with this predictor's settings, ``overrides`` for this call only; ``continue_from``
        is the start of the answer, which the model continues (the completion holds only what follows)."""
        enable_thinking = overrides.pop("enable_thinking", self.enable_thinking)
        budget = replace(self.budget, **{name: overrides.pop(name) for name in list(overrides)
                                         if name in _BUDGET_NAMES})
        unknown = sorted(set(overrides) - set(_NAMES))
        if unknown:
            raise TypeError(f"unknown generation setting(s) {', '.join(unknown)}; known: "
                            f"{', '.join([*_NAMES, *sorted(_BUDGET_NAMES), 'enable_thinking'])}")
        budget.check()
        if budget.active and enable_thinking is None:  # forcing is asked for thinking: templates that can, open it
            enable_thinking = True
        changes = {_NAMES[name]: value for name, value in overrides.items()}
        if "stop" in changes:
            changes["stop"] = (changes["stop"],) if isinstance(changes["stop"], str) else tuple(changes["stop"] or ())
        sampling = replace(self.sampling, **changes)
        check_generation_settings(sampling.max_tokens, sampling.temperature, sampling.top_p,
                                  sampling.repetition_penalty)
        if isinstance(tools, str):
            import json

            tools = json.loads(tools)
        thinking = None if enable_thinking is None else thinking_template_kwargs(enable_thinking)
        return Request(messages=messages, tools=tools or None, sampling=sampling, model=self.served,
                       continue_from=continue_from, budget=budget if budget.active else None,
                       template_kwargs=thinking)

    def with_clues(self, conversations: list[list[dict]]) -> tuple[list[list[dict]], list[list[Any]]]:
        """The conversations with retrieved clues in their last question (unchanged without ``rag``), and the
        chunks used for each."""
        if self.rag is None:
            return conversations, [[] for _ in conversations]
        return self.rag.augment(conversations)

    def __call__(self, query: str, history: list[dict] | None = None, system: str | None = None,
                 images: list[str] | None = None, **generation_overrides: Any) -> str:
        """The answer to ``query`` (about ``images``, if any) after ``history``, as one string."""
        completions, sources = self._generate([self.messages(query, history, system, images)], None,
                                              generation_overrides)
        self.last_sources = sources[0]
        return completions[0].text

    def complete(self, conversations: list[list[dict]], *, tools: list[Any] | None = None,
                 continue_from: str | None = None, **generation_overrides: Any) -> list[Completion]:
        """Completions (text, token counts, finish reason, tool calls) for several conversations, in order."""
        return self._generate(conversations, tools, generation_overrides, continue_from=continue_from,
                              parse_tools=True)[0]

    def generate_batch(self, conversations: list[list[dict]], *, tools: list[Any] | None = None,
                       **generation_overrides: Any) -> list[str]:
        """Answers to several conversations at once, in order. ``tools`` holds one tool list (or None) per
        conversation, for tool-calling datasets; the answer is the text as the model wrote it (predict and eval
        score it as written), tool-call markup included."""
        return [completion.text for completion in self._generate(conversations, tools, generation_overrides)[0]]

    def answers_batch(self, conversations: list[list[dict]], *, tools: list[Any] | None = None,
                      **generation_overrides: Any) -> list[Answer]:
        """An ``Answer`` per conversation: a reasoning template's <think> block apart from the answer, the answer
        as written (tool-call markup included) and the retrieved chunks its prompt carried (predict, eval)."""
        completions, sources = self._generate(conversations, tools, generation_overrides, parse_reasoning=True)
        return [Answer(c.reasoning, c.text, hits) for c, hits in zip(completions, sources, strict=True)]

    def stream(self, query: str, history: list[dict] | None = None, system: str | None = None,
               images: list[str] | None = None, **generation_overrides: Any) -> Iterator[str]:
        """Pieces of the answer as they are generated; joined they equal ``__call__``'s answer."""
        [messages], [self.last_sources] = self.with_clues([self.messages(query, history, system, images)])
        yield from self.engine.stream(self.request(messages, **generation_overrides), strict=False)

    def _generate(self, conversations: list[list[dict]], tools: list[Any] | None, overrides: dict[str, Any], *,
                  continue_from: str | None = None, parse_tools: bool = False, parse_reasoning: bool = False
                  ) -> tuple[list[Completion], list[list[Any]]]:
        """One engine batch for the conversations (with clues when retrieving), each request checked first."""
        conversations, sources = self.with_clues(conversations)
        tools = tools or [None] * len(conversations)
        requests = [replace(self.request(messages, tool, continue_from, **overrides), parse_tools=parse_tools,
                            parse_reasoning=parse_reasoning) for messages, tool in zip(conversations, tools,
                                                                                       strict=True)]
        for request in requests:
            self.engine.check(request, strict=False)
        return (self.engine.generate(requests) if requests else []), sources
