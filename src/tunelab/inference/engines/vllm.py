"""The vLLM engine (``engine: vllm``, GPU, ``pip install 'tunelab[vllm]'``): the same interface as ``hf``, with
vLLM's own batching and its LoRA support serving every adapter (``LoRARequest`` per request), rendered with the
same template and stopped at the same tokens. A batch's text arrives whole per row (vLLM's offline ``LLM``), so
budget forcing runs as s1 runs it on vLLM: whole passes with stop strings (``two_phase.py``)."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tunelab.errors import TunelabError
from tunelab.inference.engines.base import Engine, ServedModel
from tunelab.inference.engines.decoding import Row
from tunelab.inference.engines.two_phase import Pass, PassResult, force_budgets
from tunelab.inference.engines.types import Completion, Request, Sink
from tunelab.inference.loading import LoadOptions
from tunelab.inference.reasoning import opens_in_prompt


def check_vllm() -> None:
    """Why vLLM cannot run here, as one error, before anything loads."""
    if importlib.util.find_spec("vllm") is None:
        raise TunelabError("engine vllm: vLLM is not installed; pip install 'tunelab[vllm]' on a machine with an "
                           "NVIDIA GPU, or use --engine hf")
    import torch

    if not torch.cuda.is_available():
        raise TunelabError("engine vllm: no CUDA device here (vLLM runs on GPUs); use --engine hf")


class VLLMEngine(Engine):
    images_refused = "the vllm engine takes no images yet; serve a vision-language model with --engine hf"

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

    def run_batch(self, requests: list[Request], sinks: list[Sink]) -> list[Completion]:
        from vllm import SamplingParams, TokensPrompt

        served = self.served(requests[0].model)
        rows = []
        for request, sink in zip(requests, sinks, strict=True):
            ids = self.check(request, strict=False)
            rows.append(Row(request, ids, frozenset(self._stops[served.name]), served.tokenizer, sink,
                            served.tool_parser, served.name, limit=self.token_limit(request, ids),
                            reasoning=self.reasoning_mode(request, ids)))

        def generate(passes: list[Pass], requests: list[Request]) -> list[PassResult]:
            """One vLLM call; ``requests[i]`` holds the sampling settings of ``passes[i]``."""
            params = [SamplingParams(max_tokens=one.max_tokens, temperature=r.sampling.temperature,
                                     top_p=r.sampling.top_p, top_k=r.sampling.top_k or -1,
                                     repetition_penalty=r.sampling.repetition_penalty, stop=list(one.stop),
                                     seed=r.sampling.seed, stop_token_ids=self._stops[served.name],
                                     skip_special_tokens=True) for one, r in zip(passes, requests, strict=True)]
            with self._lock:
                outputs = self.llm.generate([TokensPrompt(prompt_token_ids=one.prompt_ids) for one in passes], params,
                                            lora_request=self._lora.get(served.name), use_tqdm=False)
            return [PassResult(list(o.outputs[0].token_ids), o.outputs[0].finish_reason != "length") for o in outputs]

        stopped: dict[int, bool] = {}  # row index -> ended on a stop (not cut by its length)
        plain = [index for index, row in enumerate(rows) if row.request.budget is None]
        results = generate([Pass(i, rows[i].prompt_ids, rows[i].limit, rows[i].request.sampling.stop) for i in plain],
                           [rows[i].request for i in plain]) if plain else []
        for index, result in zip(plain, results, strict=True):
            rows[index].tokens, stopped[index] = result.token_ids, result.stopped
        forced = [index for index, row in enumerate(rows) if row.request.budget is not None]
        if forced:  # s1's passes; a pass's row is its place in `forced`
            budgets = [rows[i].request.budget for i in forced]
            for index, (tokens, ended) in zip(forced, force_budgets(
                    lambda passes: generate(passes, [rows[forced[one.row]].request for one in passes]),
                    [rows[i].prompt_ids for i in forced], budgets, [rows[i].limit for i in forced],
                    [rows[i].request.sampling.stop for i in forced],
                    [opens_in_prompt(served.tokenizer.decode(rows[i].prompt_ids[-8:]), budget.start)
                     for i, budget in zip(forced, budgets, strict=True)], served.tokenizer), strict=True):
                rows[index].tokens, stopped[index] = tokens, ended
        completions = []
        for index, row in enumerate(rows):
            row._text = served.tokenizer.decode(row.tokens, skip_special_tokens=True)
            completions.append(row.finish("stop" if stopped[index] else "length"))
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
