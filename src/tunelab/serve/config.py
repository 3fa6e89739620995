"""`tunelab serve`'s settings: flags, the same keys in a YAML file, and LLaMA-Factory's names
(``model_name_or_path``, ``adapter_name_or_path``, ``infer_backend``, ``API_PORT`` / ``API_KEY``) accepted.
Checked in full before anything loads."""

from __future__ import annotations

import difflib
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunelab.config import read_yaml_mapping
from tunelab.data.templates import TemplateName
from tunelab.errors import ConfigError
from tunelab.inference.rag.retriever import DEFAULT_MAX_DISTANCE, DEFAULT_TEMPLATE, DEFAULT_TOP_K
from tunelab.inference.rag.store import DEFAULT_COLLECTION

# other names for the same key (LLaMA-Factory's, vLLM's)
ALIASES = {"model_name_or_path": "model", "adapter_name_or_path": "adapter", "adapters": "adapter",
           "infer_backend": "engine", "attn": "flash_attn", "vllm_maxlen": "max_model_len",
           "vllm_gpu_util": "gpu_memory_utilization", "vllm_tensor_parallel_size": "tensor_parallel_size"}
ENGINE_NAMES = {"hf": "hf", "huggingface": "hf", "transformers": "hf", "vllm": "vllm"}


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Base model id or folder (default: the adapter's base, else the "
                                                "embedded stories260K).")
    adapter: list[str] = Field(default_factory=list, description="Adapter folders, each [NAME=]PATH; each is a "
                                                                 "model of its own in /v1/models.")
    template: TemplateName = Field(None, description="Chat template (default: the adapter's or the model's own).")
    engine: str = Field("hf", description="hf (transformers, CPU or GPU) or vllm (GPU, tunelab[vllm]).")
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 serves the whole network.")
    port: int = Field(8000, ge=0, le=65535, description="Port (0: any free port).")
    api_key: str | None = Field(None, description="Require Authorization: Bearer KEY on /v1 (also TUNELAB_API_KEY "
                                                  "or API_KEY).")
    served_model_name: str | None = Field(None, description="Name of the base model in /v1/models.")
    max_concurrency: int = Field(32, ge=1, description="Requests generated together in one batch.")
    max_queue: int = Field(256, ge=0, description="Requests that may wait; more get 429 with Retry-After.")
    quiet: bool = Field(False, description="No line per request.")
    trust_remote_code: bool = False
    revision: str = "main"
    flash_attn: str = Field("auto", description="auto, sdpa, fa2, eager.")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one model is split over.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm: share of GPU memory it may take.")
    max_model_len: int | None = Field(None, ge=1, description="vllm: context length (default: the model's).")
    # budget forcing defaults for every chat request (a request's own fields win); unset: no forcing
    max_thinking_tokens: int | None = Field(None, ge=0, description="Close <think> after this many tokens.")
    min_thinking_tokens: int = Field(0, ge=0, description="An earlier close of <think> becomes wait_text.")
    num_wait: int = Field(0, ge=0, description="Replace this many closes of <think> with wait_text (s1).")
    wait_text: str = Field("Wait", min_length=1, description="What replaces a suppressed close of <think>.")
    max_answer_tokens: int | None = Field(None, ge=1, description="Tokens of the answer after </think>.")
    # retrieval (inference/rag) for every chat request; unset: none
    rag_db: str | None = Field(None, description="A `tunelab rag index` folder: chunks close to each question go "
                                                 "into its prompt; the response names them in `sources`.")
    rag_collection: str = Field(DEFAULT_COLLECTION, min_length=1, description="The collection in rag_db.")
    rag_top_k: int = Field(DEFAULT_TOP_K, ge=1, description="At most this many chunks per question.")
    rag_max_distance: float = Field(DEFAULT_MAX_DISTANCE, ge=0, le=2, description="Only chunks within this cosine "
                                                                                  "distance (2 keeps all).")
    rag_template: str = Field(DEFAULT_TEMPLATE, description="The question with its clues: {context}, {question}.")

    def budget(self) -> Any:
        from tunelab.inference.engines.budget import ThinkingBudget

        return ThinkingBudget.of(self)

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value.lower() not in ENGINE_NAMES:
            raise ValueError(f"'{value}' is not an engine; use hf or vllm")
        return ENGINE_NAMES[value.lower()]

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapters(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):  # LLaMA-Factory writes several adapters comma-separated
            return [part.strip() for part in value.split(",") if part.strip()]
        return [str(item) for item in value]


def load_serve_config(path: str | None, flags: dict[str, Any]) -> ServeConfig:
    """YAML keys under flags given on the command line; environment values where neither sets one."""
    known = list(ServeConfig.model_fields)
    values: dict[str, Any] = {}
    for key, value in (read_yaml_mapping(path) if path else {}).items():
        name = ALIASES.get(key, key)
        if name not in known:
            close = difflib.get_close_matches(name, known + list(ALIASES), n=1, cutoff=0.6)
            raise ConfigError(f"{path}: unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else
                                                                 f"; known keys: {', '.join(known)}"))
        values[name] = value
    env = {"port": os.environ.get("API_PORT"),
           "api_key": os.environ.get("TUNELAB_API_KEY") or os.environ.get("API_KEY")}
    for key, value in env.items():
        if value and key not in values:
            values[key] = value
    # a flag left unset is None (or an empty list, or a False switch); 0 is a value (`--port 0`, a bad
    # `--max-concurrency 0`), so no `in (None, [], False)` test, which 0 == False would pass
    values.update({key: value for key, value in flags.items() if value is not None and value is not False
                   and value != []})
    try:
        return ServeConfig(**values)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"serve settings{f' ({path})' if path else ''}: {problems}") from None
