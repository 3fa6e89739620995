"""The transformers engine (``engine: hf``, CPU and GPU): one base model with its PEFT adapters loaded side by
side. Requests of one served model decode together: continuously (``continuous.py``: new requests join
between steps) where the model's cache allows, else as whole batches through ``generate``; per-row sampling,
stopping and streaming come from ``decoding.py`` either way. A batch holds one served model, so one request's
adapter never reaches another's output.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tunelab.data.images import image_refs
from tunelab.errors import TunelabError, shorten
from tunelab.inference.engines.base import Engine, ServedModel
from tunelab.inference.engines.continuous import DecodeBatch, supports_continuous
from tunelab.inference.engines.decoding import Row, RowSampler, RowStopper
from tunelab.inference.engines.types import Completion, Request, RequestError, Sink
from tunelab.inference.loading import LoadOptions, load_for_inference
from tunelab.models.sources import resolve_model_path
from tunelab.models.vision import ImageTokens, is_vision_config

# End-of-turn markers of common chat formats; a template that uses one must stop there even when the
# tokenizer's eos is another token (a base model's </s> under a chatml template, say).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Where generation ends: eos of the tokenizer and of the model, plus the template's end-of-turn token if it
    has one. Chat, predict, serve and the RL stages' sampling stop at the same tokens."""
    ids: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id,
                             getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template or ""
    candidates += [vocab[token] for token in END_OF_TURN_TOKENS if token in template and token in vocab]
    for candidate in candidates:
        for token_id in candidate if isinstance(candidate, list) else [candidate]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
    return ids


def adapter_names(adapters: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` -> {name: path}; a bare path is named by its folder (``run/checkpoint-40`` for a
    checkpoint). Two adapters under one name are an error that says how to name them."""
    named: dict[str, str] = {}
    for item in adapters:
        name, sep, path = item.partition("=")
        if not sep or not name or Path(item).exists():
            name, path = "", item
        if not name:
            folder = Path(path.rstrip("/")).expanduser()
            name = f"{folder.parent.name}/{folder.name}" if folder.name.startswith("checkpoint-") else folder.name
        if name in named:
            raise TunelabError(f"two adapters are named '{name}' ({named[name]} and {path}); name them with "
                               "--adapter NAME=PATH")
        named[name] = path
    return named


class HFEngine(Engine):
    """See the module docstring. ``adapters``: {served name: folder}; ``model`` None: the adapters' base."""


    def __init__(self, model: str | None = None, adapters: dict[str, str] | None = None,
                 template: str | None = None, *, device: str | None = None, options: LoadOptions | None = None,
                 served_model_name: str | None = None, head: str = "causal_lm") -> None:
        from peft import PeftModel

        from tunelab.models.loading import load_tokenizer
        from tunelab.models.sources import default_template

        options = options or LoadOptions()
        adapters = dict(adapters or {})
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Half precision only where it is fast; CPU generation stays in fp32.
        # (a reward model's scores stay in fp32: a ranking of near-equal answers must not flip with the dtype)
        fast_half = self.device.type == "cuda" and torch.cuda.is_bf16_supported() and head == "causal_lm"
        dtype = torch.bfloat16 if fast_half else torch.float32
        paths = list(adapters.values())
        if head == "score" and len(paths) > 1:
            raise TunelabError("a reward model is served on its own: give one adapter")
        self.head = head
        tokenizer, loaded, base = load_for_inference(model, paths[0] if paths else None, template, dtype=dtype,
                                                     options=options, head=head)
        self.base_name = served_model_name or base
        self.models = {}
        if paths:
            base_tokenizer = load_tokenizer(base, default_template(base, template), **options.tokenizer_kwargs())
            self.models[self.base_name] = ServedModel(self.base_name, None, base_tokenizer)
        else:
            self.models[self.base_name] = ServedModel(self.base_name, None, tokenizer)
        for index, (name, path) in enumerate(adapters.items()):
            key = "default" if index == 0 else f"adapter{index}"
            if index:
                self._load_adapter(loaded, name, path, key, base)
            own = tokenizer if index == 0 else self._adapter_tokenizer(path, template, tokenizer, options)
            self.models[name] = ServedModel(name, path, own, key)
        if self.base_name in adapters:
            raise TunelabError(f"an adapter is named '{self.base_name}' like the base model; name it with "
                               "--adapter NAME=PATH")
        self.default_model = next(iter(adapters)) if len(adapters) == 1 else self.base_name
        self.model = loaded.to(self.device).eval()
        self.context_length = _context_length(self.model)
        self._stops = {name: stop_token_ids(served.tokenizer, self.model) for name, served in self.models.items()}
        self._lock = threading.Lock()
        self._peft = isinstance(loaded, PeftModel)
        if is_vision_config(self.model.config):
            self.vision = ImageTokens(str(resolve_model_path(base)), tokenizer,
                                      getattr(self.model.config, "image_token_id", None))
        # a vision model's rotary positions are computed per batch from its images: whole batches only
        self._continuous = head == "causal_lm" and supports_continuous(self.model) and self.vision is None

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, name: str) -> HFEngine:
        """An engine over a model already in memory (a model in training): same rendering, stopping and decoding
        as a loaded one. The tokenizer is copied, so padding settings never reach the trainer's."""
        import copy

        engine = cls.__new__(cls)
        engine.device = next(model.parameters()).device
        engine.model, engine.base_name, engine.default_model = model, name, name
        engine.models = {name: ServedModel(name, None, copy.copy(tokenizer), key=None)}
        engine.context_length = _context_length(model)
        engine._stops = {name: stop_token_ids(tokenizer, model)}
        engine._lock = threading.Lock()
        engine._peft, engine.head = False, "causal_lm"  # the model is used as it is, adapter included
        engine._continuous = supports_continuous(model) and not getattr(
            getattr(model, "active_peft_config", None), "is_prompt_learning", False)
        return engine

    @staticmethod
    def _adapter_tokenizer(path: str, template: str | None, fallback: Any, options: LoadOptions) -> Any:
        """An adapter's own saved tokenizer carries the template it was trained with."""
        from tunelab.models.loading import load_tokenizer

        if template is None and (Path(path) / "tokenizer_config.json").is_file():
            return load_tokenizer(path, None, **options.tokenizer_kwargs())
        return fallback

    @staticmethod
    def _load_adapter(model: Any, name: str, path: str, key: str, base: str) -> None:
        from tunelab.inference.loading import check_inference_sources

        check_inference_sources(None, path, use="generate")
        try:
            model.load_adapter(path, adapter_name=key)
        except Exception as error:  # another base, or a PEFT method that cannot sit beside the first
            raise TunelabError(f"could not load adapter '{name}' ({path}) beside the others on '{base}': "
                               f"{type(error).__name__}: {shorten(str(error))}; serve it on its own") from None

    def stop_token_ids(self, model: str) -> list[int]:
        return self._stops[self.served(model).name]

    @contextmanager
    def _using(self, served: ServedModel) -> Iterator[Any]:
        """The module that generates for ``served``: the PEFT model with its adapter active, or the bare base."""
        if not self._peft:
            yield self.model
        elif served.key is None:
            with self.model.disable_adapter():
                yield self.model.get_base_model()
        else:
            self.model.set_adapter(served.key)
            yield self.model

    def _rows(self, served: ServedModel, jobs: list[tuple[Request, Sink]]) -> list[Row]:
        stops = frozenset(self._stops[served.name])
        rows = []
        for request, sink in jobs:
            if self.served(request.model).name != served.name:
                raise ValueError("one batch serves one model")
            ids = self.check(request, strict=False)
            rows.append(Row(request, ids, stops, served.tokenizer, sink, served.tool_parser, served.name,
                            limit=self.token_limit(request, ids), reasoning=self.reasoning_mode(request, ids)))
        return rows

    def _refuse_generation(self, served: ServedModel) -> None:
        if not self.can_generate:
            raise RequestError(f"'{served.name}' is a reward model: it scores answers and cannot generate them; use "
                               "/v1/score (or `tunelab score`)", param="model", code="model_not_supported")

    def _pad_id(self, served: ServedModel) -> int:
        pad = served.tokenizer.pad_token_id
        return pad if pad is not None else self._stops[served.name][0]

    def _prompt_learning(self, served: ServedModel) -> bool:
        return self._peft and served.key is not None and self.model.peft_config[served.key].is_prompt_learning

    @property
    def can_generate(self) -> bool:
        return self.head == "causal_lm"

    @property
    def can_score(self) -> bool:
        return self.head == "score"

    def score(self, prompts: list[Any], responses: list[Any], model: str | None = None,
              batch_size: int = 8) -> list[float]:
        """A reward model's score per (prompt, response), each text or messages. The pair is rendered and cut
        exactly as stage ``rm`` trained on it (``data/encoders.py``), so a score here is the one it learned."""
        if not self.can_score:
            raise RequestError(f"'{self.served(model).name}' generates answers; scores need a reward model (stage "
                               "rm)", param="model", code="model_not_supported")
        served = self.served(model)
        sequences = [self.scored_ids(p, r, served.name) for p, r in zip(prompts, responses, strict=True)]
        pad = served.tokenizer.pad_token_id if served.tokenizer.pad_token_id is not None else 0
        scores: list[float] = []
        with self._lock, self._using(served) as module, torch.inference_mode():
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start:start + batch_size]
                ids = torch.full((len(batch), max(len(s) for s in batch)), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, tokens in enumerate(batch):  # right padding: the head reads the last real token
                    ids[row, :len(tokens)] = torch.tensor(tokens)
                    mask[row, :len(tokens)] = 1
                logits = module(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                scores += logits[:, 0].float().cpu().tolist()
        return scores

    def scored_ids(self, prompt: Any, response: Any, model: str | None = None) -> list[int]:
        """The token ids a score reads for (prompt, response): the pair as stage rm encoded it in training."""
        from tunelab.data.encoders import encode_pair, scored_sequence

        turn = _messages(response, "assistant")
        row = {"prompt": _messages(prompt, "user"), "chosen": turn, "rejected": turn}
        return scored_sequence(encode_pair(row, self.served(model).tokenizer)[0])

    def run_continuous(self, jobs: list[tuple[Request, Sink]], more: Callable[[int], list[tuple[Request, Sink]]],
                       max_rows: int) -> None:
        """Continuous batching (``continuous.py``) where the model's cache allows it, else whole batches."""
        served = self.served(jobs[0][0].model)
        self._refuse_generation(served)
        if not self._continuous or self._prompt_learning(served):
            return super().run_continuous(jobs, more, max_rows)
        with self._lock, self._using(served) as model, torch.inference_mode():
            batch = DecodeBatch(model, self.device, self._pad_id(served))
            while True:
                if jobs:
                    batch.join(self._rows(served, jobs))
                if batch.rows:
                    batch.step()
                jobs = more(max_rows - len(batch.rows)) if len(batch.rows) < max_rows else []
                if not jobs and not batch.rows:
                    return

    def conversation_losses(self, conversations: list[tuple[list[dict], Any]], model: str | None = None, *,
                            cutoff_len: int = 2048, batch_size: int = 4) -> list[tuple[float, int]]:
        """(summed loss, trained tokens) per conversation under the training loss mask: what perplexity reads,
        computed by the served model as it generates (its adapter active, its template)."""
        from tunelab.evaluation.perplexity import conversation_losses

        served = self.served(model)
        with self._lock, self._using(served) as module:
            return conversation_losses(module, served.tokenizer, conversations, cutoff_len=cutoff_len,
                                       batch_size=batch_size, vision=self.vision)

    def run_batch(self, requests: list[Request], sinks: list[Sink]) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        from tunelab.models.generation import generate

        served = self.served(requests[0].model)
        self._refuse_generation(served)
        rows = self._rows(served, list(zip(requests, sinks, strict=True)))
        stops = frozenset(self._stops[served.name])
        pad = self._pad_id(served)
        width = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for index, row in enumerate(rows):  # left padding: every prompt ends where generation starts
            input_ids[index, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids)
            mask[index, width - len(row.prompt_ids):] = 1
        # Greedy over logits RowSampler has already decided; every processor a model's defaults could switch on
        # is switched off by value (transformers fills fields left None from the model's generation_config).
        config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max(row.limit for row in rows),
                                  min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                                  renormalize_logits=False, remove_invalid_values=False, eos_token_id=sorted(stops),
                                  pad_token_id=pad)
        with self._lock, self._using(served) as model, torch.inference_mode():
            generate(model, input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                     generation_config=config, logits_processor=LogitsProcessorList([RowSampler(rows)]),
                     stopping_criteria=StoppingCriteriaList([RowStopper(rows)]), **self._image_inputs(rows, input_ids))
        return [row.finish() for row in rows]

    def _image_inputs(self, rows: list[Row], input_ids: torch.Tensor) -> dict[str, Any]:
        """The batch's images, in row order, as a vision-language model's forward takes them; none: nothing."""
        found = [self.images(refs) for refs in (image_refs(row.request.messages or []) for row in rows) if refs]
        if not found:
            return {}
        dtype = next(self.model.parameters()).dtype
        return {"pixel_values": torch.cat([values for values, _ in found]).to(self.device, dtype),
                "image_grid_thw": torch.cat([grids for _, grids in found]).to(self.device),
                "mm_token_type_ids": self.vision.token_types(input_ids).to(self.device)}


def _messages(text: str | list[dict], role: str) -> list[dict]:
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


def _context_length(model: Any) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        value = getattr(config, name, None) or getattr(getattr(config, "text_config", None), name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
