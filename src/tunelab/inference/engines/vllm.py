"""The vLLM engine (``engine: vllm``, GPU, ``pip install 'tunelab[vllm]'``): the same interface as ``hf``, with
vLLM's own batching and its LoRA support serving every adapter (``LoRARequest`` per request), rendered with the
same template and stopped at the same tokens. A batch's text arrives whole per row (vLLM's offline ``LLM``)."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tunelab.errors import TunelabError
from tunelab.inference.engines.base import Engine, ServedModel
from tunelab.inference.engines.decoding import Row
from tunelab.inference.engines.types import Completion, Request, RequestError, Sink
from tunelab.inference.loading import LoadOptions


def check_vllm() -> None:
    """Why vLLM cannot run here, as one error, before anything loads."""
    if importlib.util.find_spec("vllm") is None:
        raise TunelabError("engine vllm: vLLM is not installed; pip install 'tunelab[vllm]' on a machine with an "
                           "NVIDIA GPU, or use --engine hf")
    import torch

    if not torch.cuda.is_available():
        raise TunelabError("engine vllm: no CUDA device here (vLLM runs on GPUs); use --engine hf")


class VLLMEngine(Engine):

    def __init__(self, model: str | None = None, adapters: dict[str, str] | None = None,
                 template: str | None = None, *, options: LoadOptions | None = None,
                 served_model_name: str | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None) -> None:
        check_vllm()
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        from tunelab.inference.engines.hf import stop_token_ids
        from tunelab.inference.loading import check_inference_sources
        from tunelab.models.loading import load_tokenizer
        from tunelab.models.sources import default_template, resolve_model_path

        options = options or LoadOptions()
        adapters = dict(adapters or {})
        base = check_inference_sources(model, next(iter(adapters.values()), None), use="generate")
        ranks = [_lora_rank(path) for path in adapters.values()]
        self.llm = LLM(model=str(resolve_model_path(base)), tokenizer=str(resolve_model_path(base)),
                       trust_remote_code=options.trust_remote_code, revision=options.revision,
                       tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, enable_lora=bool(adapters), max_loras=max(1, len(adapters)),
                       max_lora_rank=max(8, 1 << (max(ranks, default=16) - 1).bit_length()))
        self.base_name = served_model_name or base
        base_tokenizer = load_tokenizer(base, default_template(base, template), **options.tokenizer_kwargs())
        self.models = {self.base_name: ServedModel(self.base_name, None, base_tokenizer)}
        self._lora: dict[str, Any] = {}
        for index, (name, path) in enumerate(adapters.items(), start=1):
            own = load_tokenizer(path, None, **options.tokenizer_kwargs()) \
                if template is None and (Path(path) / "tokenizer_config.json").is_file() else base_tokenizer
            self.models[name] = ServedModel(name, path, own, key=str(index))
            self._lora[name] = LoRARequest(name, index, path)
        self.default_model = next(iter(adapters)) if len(adapters) == 1 else self.base_name
        self.context_length = self.llm.llm_engine.model_config.max_model_len
        eos = _generation_eos(str(resolve_model_path(base)), options,
                              getattr(self.llm.llm_engine.model_config.hf_config, "eos_token_id", None))
        model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos))  # what stop_token_ids reads
        self._stops = {name: stop_token_ids(served.tokenizer, model) for name, served in self.models.items()}
        self._lock = threading.Lock()

    def stop_token_ids(self, model: str) -> list[int]:
        return self._stops[self.served(model).name]

    def check(self, request: Request, strict: bool = True) -> list[int]:
        if request.budget is not None:  # never silently ignored: the forcing works token by token on hf only
            raise RequestError("budget forcing (max_thinking_tokens, num_wait, ...) runs on the hf engine; the vllm "
                               "engine does not apply it yet", param="max_thinking_tokens")
        return super().check(request, strict)

    def run_batch(self, requests: list[Request], sinks: list[Sink]) -> list[Completion]:
        from vllm import SamplingParams, TokensPrompt

        served = self.served(requests[0].model)
        rows, prompts, params = [], [], []
        for request, sink in zip(requests, sinks, strict=True):
            ids = self.check(request, strict=False)
            limit = self.token_limit(request, ids)
            rows.append(Row(request, ids, frozenset(self._stops[served.name]), served.tokenizer, sink,
                            served.tool_parser, served.name, limit=limit, reasoning=self.reasoning_mode(request, ids)))
            sampling = request.sampling
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(SamplingParams(max_tokens=limit, temperature=sampling.temperature, top_p=sampling.top_p,
                                         top_k=sampling.top_k or -1, repetition_penalty=sampling.repetition_penalty,
                                         stop=list(sampling.stop), seed=sampling.seed,
                                         stop_token_ids=self._stops[served.name], skip_special_tokens=True))
        with self._lock:
            outputs = self.llm.generate(prompts, params, lora_request=self._lora.get(served.name), use_tqdm=False)
        completions = []
        for row, output in zip(rows, outputs, strict=True):
            result = output.outputs[0]
            row.tokens = list(result.token_ids)
            row._text = result.text
            reason = "length" if result.finish_reason == "length" else "stop"
            completions.append(row.finish(reason))
        return completions


def _generation_eos(model: str, options: LoadOptions, fallback: Any) -> Any:
    """The eos ids of the model's generation_config.json (often more than its config's), as the hf engine reads."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model, revision=options.revision).eos_token_id
    except OSError:  # no generation_config.json
        return fallback


def _lora_rank(path: str) -> int:
    from tunelab.models.sources import adapter_setting

    rank = adapter_setting(path, "r")
    return int(rank) if isinstance(rank, int) else 16
