"""Generation from a model (plus an optional PEFT adapter) through the same chat template as training.

One ``Predictor`` serves the chat command (streaming), one-off calls and batched dataset prediction, so
all three render, stop and decode the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import torch

from tunelab.data.templates import render
from tunelab.errors import ConfigError
from tunelab.inference.loading import LoadOptions, load_for_inference
from tunelab.models.generation import generate

# End-of-turn markers of common chat formats; a template that uses one must stop there even when the
# tokenizer's eos is another token (a base model's </s> under a chatml template, say).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
# Names of generation settings kept on the predictor; any other override goes straight to ``generate``.
_SETTINGS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty")


class _Cancelled:
    """A stopping criterion that ends generation once the consumer of a stream has gone away."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = self.event.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def check_generation_settings(max_new_tokens: int, temperature: float, top_p: float,
                              repetition_penalty: float) -> None:
    """One place for what a generation setting may be, for every command that generates."""
    problems = []
    if max_new_tokens < 1:
        problems.append(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        problems.append(f"temperature must be 0 (greedy) or more, got {temperature}")
    if not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        problems.append(f"repetition_penalty must be above 0, got {repetition_penalty}")
    if problems:
        raise ConfigError("; ".join(problems))


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Where generation ends: eos of the tokenizer and of the model, plus the template's end-of-turn token if it
    has one. Chat, predict and the RL stages' sampling stop at the same tokens."""
    ids: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)]
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template or ""
    candidates += [vocab[token] for token in END_OF_TURN_TOKENS if token in template and token in vocab]
    for candidate in candidates:
        for token_id in candidate if isinstance(candidate, list) else [candidate]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
    return ids


class Predictor:
    """A loaded model ready to answer chat messages; greedy when ``temperature`` is 0.

    ``model`` None means the adapter's own base model (or the embedded model without an adapter).
    """

    def __init__(self, model: str | None = None, adapter: str | None = None, template: str | None = None, *,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, device: str | None = None,
                 options: LoadOptions | None = None) -> None:
        check_generation_settings(max_new_tokens, temperature, top_p, repetition_penalty)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature,
                                         "top_p": top_p, "repetition_penalty": repetition_penalty}
        # Half precision only where it is fast; CPU generation stays in fp32.
        fast_half = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if fast_half else torch.float32
        self.tokenizer, self.model, self.model_name = load_for_inference(model, adapter, template, dtype=dtype,
                                                                         options=options or LoadOptions())
        self.tokenizer.padding_side = "left"  # batches are left-padded: every prompt ends where generation starts
        self.model.to(self.device).eval()
        self.stop_token_ids = stop_token_ids(self.tokenizer, self.model)

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, name: str, *, max_new_tokens: int = 256,
                    temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0) -> Predictor:
        """A predictor over a model already in memory (a model in training): same rendering, stopping and
        decoding as a loaded one. The tokenizer is copied, so left padding does not reach the trainer's."""
        import copy

        check_generation_settings(max_new_tokens, temperature, top_p, repetition_penalty)
        predictor = cls.__new__(cls)
        predictor.settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                              "repetition_penalty": repetition_penalty}
        predictor.model, predictor.model_name = model, name
        predictor.tokenizer = copy.copy(tokenizer)
        predictor.tokenizer.padding_side = "left"
        predictor.device = next(model.parameters()).device
        predictor.stop_token_ids = stop_token_ids(tokenizer, model)
        return predictor

    # --- building blocks ----------------------------------------------------------------------

    @staticmethod
    def messages(query: str, history: list[dict] | None = None, system: str | None = None) -> list[dict]:
        """System prompt, earlier turns, then the new user query."""
        messages = [{"role": "system", "content": system}] if system else []
        return messages + list(history or []) + [{"role": "user", "content": query}]

    def _generate_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        settings = {**self.settings, **{k: v for k, v in overrides.items() if k in _SETTINGS}}
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings["max_new_tokens"],
            "repetition_penalty": settings["repetition_penalty"],
            "eos_token_id": self.stop_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if settings["temperature"] > 0:
            kwargs.update(do_sample=True, temperature=settings["temperature"], top_p=settings["top_p"])
        else:
            # Sampling knobs are left out: generate warns about them when do_sample is off.
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        kwargs.update({k: v for k, v in overrides.items() if k not in _SETTINGS})
        return kwargs

    def _encode(self, conversations: list[list[dict]],
                tools: list[Any] | None = None) -> dict[str, torch.Tensor]:
        """Render and tokenize; the templates write bos themselves, so no special tokens are added."""
        tools = tools or [None] * len(conversations)
        prompts = [render(self.tokenizer, messages, tools=tool, add_generation_prompt=True)
                   for messages, tool in zip(conversations, tools, strict=True)]
        self.tokenizer.padding_side = "left"
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {"input_ids": batch["input_ids"].to(self.device),
                "attention_mask": batch["attention_mask"].to(self.device)}

    # --- public API ---------------------------------------------------------------------------

    def __call__(self, query: str, history: list[dict] | None = None, system: str | None = None,
                 **generation_overrides: Any) -> str:
        """The answer to ``query`` after ``history``, as one string."""
        return self.generate_batch([self.messages(query, history, system)], **generation_overrides)[0]

    def generate_batch(self, conversations: list[list[dict]], *, tools: list[Any] | None = None,
                       **generation_overrides: Any) -> list[str]:
        """Answers to several conversations at once (left-padded), in order.

        ``tools`` holds one tool list (or None) per conversation, for tool-calling datasets.
        """
        if not conversations:
            return []
        inputs = self._encode(conversations, tools)
        with torch.inference_mode():
            output = generate(self.model, **inputs, **self._generate_kwargs(generation_overrides))
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def stream(self, query: str, history: list[dict] | None = None, system: str | None = None,
               **generation_overrides: Any) -> Iterator[str]:
        """Pieces of the answer as they are generated; joined they equal ``__call__``'s answer."""
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        inputs = self._encode([self.messages(query, history, system)])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = _Cancelled()
        kwargs = self._generate_kwargs(generation_overrides)
        kwargs["stopping_criteria"] = StoppingCriteriaList([*kwargs.get("stopping_criteria", []), cancelled])
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    generate(self.model, **inputs, **kwargs, streamer=streamer)
            except BaseException as error:  # re-raised in the consumer; end() unblocks its loop
                failure.append(error)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from _strip_stream(streamer)
        finally:
            cancelled.event.set()  # the consumer stopped early (or finished): let generation end
            thread.join()
        if failure:
            raise failure[0]


def _strip_stream(pieces: Iterator[str]) -> Iterator[str]:
    """Drop leading and trailing whitespace of the whole stream, as ``str.strip`` does for one string."""
    started, pending = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        text = pending + piece
        kept = text.rstrip()
        pending = text[len(kept):]
        if kept:
            yield kept
