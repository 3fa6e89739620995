"""The one interface under every command that generates (chat, predict, eval, serve, later the web UI).

An engine holds one base model and any number of adapters, each served under a name. It renders a request
with the template that model was trained with, checks it against the context, and generates requests of one
model together (``run_continuous``: new requests may join while others run; ``run_batch``: one whole batch),
streaming each row to its own ``Sink``. ``generate`` and ``stream`` are the convenience forms the commands use;
the server's scheduler calls ``run_continuous`` itself. A reward-model engine scores instead (``score``).
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tunelab.data.images import ImageError, ImageRef, image_refs
from tunelab.inference.engines.types import Completion, Request, RequestError, Sink
from tunelab.inference.reasoning import THINK_END, opens_in_prompt
from tunelab.inference.tools import ToolParser, messages_for_template, tool_parser_for

IMAGE_CACHE = 16  # requests' images kept processed between a request's checks and its batch


@dataclass
class ServedModel:
    """One name a client can ask for: the base (``adapter`` None) or one adapter on it."""

    name: str
    adapter: str | None
    tokenizer: Any
    key: str | None = None  # the engine's own handle for the adapter (PEFT adapter name, vLLM LoRA id)

    @property
    def tool_parser(self) -> ToolParser | None:
        return tool_parser_for(getattr(self.tokenizer, "chat_template", None))

    @property
    def reasons(self) -> bool:
        """The template writes reasoning in a <think> block (Qwen3, DeepSeek-R1, minimind)."""
        return THINK_END in (getattr(self.tokenizer, "chat_template", None) or "")


class Engine(ABC):
    """Base model plus adapters; see the module docstring."""

    models: dict[str, ServedModel]
    default_model: str
    context_length: int
    vision: Any = None  # a vision-language model's ImageTokens (models/vision.py); None: text only
    images_refused: str | None = None  # why an engine takes no images whatever the model (vllm, for now)

    # --- what subclasses provide ------------------------------------------------------------

    @abstractmethod
    def run_batch(self, requests: list[Request], sinks: list[Sink]) -> list[Completion]:
        """Generate for requests of one model together; each row streams to its sink and ends on its own."""

    def run_continuous(self, jobs: list[tuple[Request, Sink]], more: Callable[[int], list[tuple[Request, Sink]]],
                       max_rows: int) -> None:
        """Serve ``jobs`` (one model) and whatever ``more(free_rows)`` hands over while they run, until none are
        left; results go to the sinks. Here: each group as a whole batch; engines whose batches can take new
        rows between steps override it."""
        while jobs:
            self.run_batch([request for request, _ in jobs], [sink for _, sink in jobs])
            jobs = more(max_rows)

    @abstractmethod
    def stop_token_ids(self, model: str) -> list[int]:
        """Token ids that end an answer of this served model."""

    # --- capabilities (a reward model scores, a language model generates) -------------------

    can_generate = True
    can_score = False

    def score(self, prompts: list[Any], responses: list[Any], model: str | None = None,
              batch_size: int = 8) -> list[float]:
        """One score per (prompt, response), for an engine over a reward model."""
        raise RequestError("this engine generates; scores need a reward model (stage rm)", param="model",
                           code="model_not_supported")

    # --- shared ---------------------------------------------------------------------------

    def served(self, name: str | None) -> ServedModel:
        """The served model by name (None: the default); unknown names are a 404 that lists the known ones."""
        name = name or self.default_model
        if name not in self.models:
            raise RequestError(f"The model '{name}' does not exist; served models: {', '.join(self.models)}",
                               param="model", code="model_not_found", status=404)
        return self.models[name]

    def prompt_text(self, request: Request) -> str:
        """The request as the model sees it: rendered with the chat template, or the raw prompt."""
        served = self.served(request.model)
        if request.messages is None:
            return request.prompt or ""
        if not request.messages:
            raise RequestError("messages must not be empty", param="messages")
        if not getattr(served.tokenizer, "chat_template", None):
            raise RequestError(f"'{served.name}' has no chat template (a base model); use /v1/completions, or serve "
                               "it with --template", param="messages")
        from tunelab.data.templates import render

        try:
            text = render(served.tokenizer, messages_for_template(request.messages), tools=request.tools,
                          add_generation_prompt=True, **(request.template_kwargs or {}))
        except Exception as error:  # the template's own refusal (raise_exception), or a missing field
            raise RequestError(f"the chat template of '{served.name}' cannot render these messages: "
                               f"{type(error).__name__}: {error}", param="messages") from None
        return text + (request.continue_from or "")

    def prompt_ids(self, request: Request) -> list[int]:
        """Token ids of the prompt; chat templates write their own bos, raw prompts get the tokenizer's. Each image
        of the messages becomes as many pad tokens as the model reads for it."""
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        served = self.served(request.model)
        refs = image_refs(request.messages or []) if request.messages else []
        if refs and self.images_refused:
            raise RequestError(self.images_refused, param="messages")
        if refs and self.vision is None:
            raise RequestError(f"'{served.name}' reads text only, and the messages hold {len(refs)} image(s); use a "
                               "vision-language model (Qwen2-VL, Qwen2.5-VL) for images", param="messages")
        text = self.prompt_text(request)
        ids = list(served.tokenizer(text, add_special_tokens=request.messages is None)["input_ids"])
        return self.vision.expand(ids, self.images(refs)[1]) if refs else ids

    def images(self, refs: list[ImageRef]) -> tuple[Any, Any]:
        """(pixel_values, image_grid_thw) of the images, opened once for a request's checks and its batch."""
        key = tuple(refs)
        cache = self.__dict__.setdefault("_image_cache", {})
        if key not in cache:
            try:
                cache[key] = self.vision.load(refs)
            except ImageError as error:
                raise RequestError(str(error), param="messages") from None
            while len(cache) > IMAGE_CACHE:
                cache.pop(next(iter(cache)))
        return cache[key]

    def check(self, request: Request, strict: bool = True) -> list[int]:
        """Everything that can be wrong with a request, before it waits for a batch; returns its prompt ids.
        Not ``strict`` (the commands, as before the server existed): the prompt and max_tokens are not held to the
        context; the answer then stops where the context ends, if the prompt leaves room (``token_limit``)."""
        request.sampling.check()
        ids = self.prompt_ids(request)
        if not ids:
            raise RequestError("the prompt is empty", param="prompt")
        room = self.context_length - len(ids)
        if strict and room < 1:
            raise RequestError(f"the prompt has {len(ids)} tokens, more than the model's context of "
                               f"{self.context_length}", param="messages", code="context_length_exceeded")
        if strict and request.sampling.max_tokens > room:
            raise RequestError(f"max_tokens {request.sampling.max_tokens} plus the prompt's {len(ids)} tokens is "
                               f"more than the model's context of {self.context_length} (at most {room} here)",
                               param="max_tokens", code="context_length_exceeded")
        return ids

    def token_limit(self, request: Request, prompt_ids: list[int]) -> int:
        """max_tokens, cut to the room the context leaves (a prompt past the context keeps max_tokens)."""
        wanted = request.sampling.max_tokens
        if request.budget is not None and request.budget.active:  # room for the thinking budget and the answer
            wanted = request.budget.token_limit(wanted)
        room = self.context_length - len(prompt_ids)
        return min(wanted, room) if room > 0 else wanted

    def reasoning_mode(self, request: Request, prompt_ids: list[int]) -> str | None:
        """How a row reads <think> blocks: None (not asked, or the template has none), "prompt" (the prompt
        opened one) or "answer" (the answer may open one)."""
        served = self.served(request.model)
        if not request.parse_reasoning or request.messages is None or not served.reasons:
            return None
        return "prompt" if opens_in_prompt(served.tokenizer.decode(prompt_ids[-8:])) else "answer"

    def generate(self, requests: list[Request]) -> list[Completion]:
        """Completions in order; requests of the same model share batches."""
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(self.served(request.model).name, []).append(index)
        for indices in groups.values():
            sinks = [_Keep() for _ in indices]
            self.run_continuous([(requests[i], sink) for i, sink in zip(indices, sinks, strict=True)],
                                lambda free: [], len(indices))
            for index, sink in zip(indices, sinks, strict=True):
                results[index] = sink.completion
        return [c for c in results if c is not None]

    def stream(self, request: Request, strict: bool = True) -> Stream:
        """Pieces of one answer as they are generated; ``.completion`` once the iteration ends."""
        return Stream(self, request, strict)


class OverEngine:
    """What the Python APIs over an engine (``Predictor``, ``RewardScorer``) show of it: the loaded model, the
    tokenizer of the model they serve, the base's name, the device."""

    engine: Any
    served: str | None = None

    @property
    def model(self) -> Any:
        return self.engine.model

    @property
    def tokenizer(self) -> Any:
        return self.engine.served(self.served).tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.base_name

    @property
    def device(self) -> Any:
        return self.engine.device


class _Keep(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.completion: Completion | None = None

    def done(self, completion: Completion) -> None:
        self.completion = completion


class _QueueSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def text(self, piece: str) -> None:
        self.events.put(("text", piece))

    def done(self, completion: Completion) -> None:
        self.events.put(("done", completion))


class Stream:
    """Iterate for text pieces (they join to ``completion.text``); leaving early cancels the generation."""

    def __init__(self, engine: Engine, request: Request, strict: bool = True) -> None:
        engine.check(request, strict)
        self.completion: Completion | None = None
        self._sink = _QueueSink()
        self._failure: list[BaseException] = []

        def work() -> None:
            try:
                engine.run_continuous([(request, self._sink)], lambda free: [], 1)
            except BaseException as error:  # re-raised in the consumer
                self._failure.append(error)
                self._sink.events.put(("error", error))

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[str]:
        try:
            while True:
                kind, value = self._sink.events.get()
                if kind == "text":
                    yield value
                elif kind == "done":
                    self.completion = value
                    break
                else:
                    raise value
        finally:
            self._sink.cancelled.set()  # the consumer stopped early (or finished): let generation end
            self._thread.join()
