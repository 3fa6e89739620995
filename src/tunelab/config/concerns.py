"""The common keys of a training run, one pydantic model per concern: the model, the method, the data, the output,
the training loop and evaluation. ``TrainConfig`` composes them (plus the chosen stage's and method's own keys)
into one flat schema, so a YAML file stays LLaMA-Factory's flat ``key: value`` list; the layers below the stages
take only the concern they read (the data pipeline takes ``DataSettings``).

Key names follow LLaMA-Factory's (and Hugging Face ``TrainingArguments``') where they mean the same, so an
existing LLaMA-Factory SFT YAML runs here with at most the model path changed.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tunelab.method_registry import ALIASES, method_names

EMBEDDED_MODEL = "stories260K"  # the real small model that ships in tunelab/assets (see models/sources.py)
PATH_KEYS = frozenset({"model_name_or_path", "adapter_name_or_path", "cache_dir", "dataset_dir", "output_dir"})


class Concern(BaseModel):
    """One concern's keys; its ``*_problems`` method lists contradictions among them, found before anything loads."""

    model_config = ConfigDict(validate_assignment=True, coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _expand_home(cls, value: Any, info: ValidationInfo) -> Any:
        """``~/runs/x`` means the home folder for every library underneath, not only for tunelab's checks."""
        if info.field_name in PATH_KEYS and isinstance(value, str) and value.startswith("~"):
            return os.path.expanduser(value)
        return value


class ModelSettings(Concern):
    model_name_or_path: str = Field(
        EMBEDDED_MODEL,
        description="Hugging Face model id or local folder. 'stories260K' is the embedded offline model.",
    )
    adapter_name_or_path: str | None = Field(None, description="PEFT adapter to load on top of the model.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (ChatGLM, etc.).")
    model_revision: str = Field("main", description="Branch, tag or commit of a hub model.")
    cache_dir: str | None = Field(None, description="Where hub downloads are cached.")
    flash_attn: Literal["auto", "disabled", "sdpa", "fa2", "eager"] = Field(
        "auto", description="Attention implementation: auto (transformers' choice), sdpa, fa2, eager."
    )
    freeze_vision_tower: bool = Field(True, description="Vision-language models: the vision encoder stays as it is "
                                      "(LoRA goes on the language model's linear layers only).")
    freeze_multi_modal_projector: bool = Field(True, description="Vision-language models: the projector from image "
                                               "features into the language model stays as it is (full, freeze).")
    train_mm_proj_only: bool = Field(False, description="Vision-language models: train the multi-modal projector "
                                     "alone, everything else frozen (full tuning).")


class MethodSettings(Concern):
    """Which stage trains and how the weights train; each method's own keys live in its registry entry."""

    stage: str = Field("sft", description="Training stage (`tunelab config` lists them): sft, pt, rm, dpo, ...")
    do_train: bool = Field(True, description="Run training (tunelab train requires true).")
    finetuning_type: str = Field(
        "lora", description=f"How the model trains: {', '.join(method_names())} (aliases: "
        f"{', '.join(f'{alias} = {name}' for alias, name in ALIASES.items())}); each method's own keys are listed "
        "with it.")
    quantization_bit: Literal[4, 8] | None = Field(None, description="Load the base in 4 or 8 bits (bitsandbytes) "
                                                   "and train an adapter on it (QLoRA).")
    quantization_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quantization: bool = Field(True, description="4-bit: quantize the quantization constants too.")
    quantization_compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype of the 4-bit matmuls (auto: bfloat16 with bf16, float16 with fp16, else float32).")

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        from tunelab.config.suggest import suggest
        from tunelab.stage_registry import stage_names

        if value not in stage_names():
            raise ValueError(f"unknown stage '{value}'{suggest(value, stage_names())} (stages: "
                             f"{', '.join(stage_names())})")
        return value

    @field_validator("finetuning_type")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from tunelab.config.suggest import suggest
        from tunelab.method_registry import canonical_name

        name = canonical_name(value)
        if name == "qlora":
            raise ValueError("finetuning_type 'qlora' is LoRA on a quantized base: set finetuning_type: lora and "
                             "quantization_bit: 4")
        if name not in method_names():
            raise ValueError(f"unknown finetuning_type '{value}'{suggest(value, [*method_names(), *ALIASES])} "
                             f"(methods: {', '.join(method_names())})")
        return name


class DataSettings(Concern):
    """What the data layer reads: which datasets, how they mix and split, and how samples are cut and masked."""

    dataset: str | list[str] | None = Field(
        None, description="Comma-separated dataset names from dataset_info.json, or file paths."
    )
    eval_dataset: str | list[str] | None = Field(None, description="Datasets for evaluation.")
    dataset_dir: str = Field("data", description="Folder holding dataset_info.json and the data files.")
    template: str | None = Field(
        None, description="Chat template: none = the tokenizer's own; or alpaca, chatml, qwen, llama3, default."
    )
    cutoff_len: int = Field(2048, gt=0, description="Maximum tokens per sample after templating.")
    max_samples: int | None = Field(None, gt=0, description="Use at most this many records per dataset.")
    val_size: float = Field(0.0, ge=0.0, description="Held-out fraction (<1) or count (>=1) for evaluation.")
    train_on_prompt: bool = Field(False, description="Also train on prompt tokens (loss on every token).")
    mask_history: bool = Field(False, description="Train only on the last assistant turn.")
    cutoff_policy: Literal["truncate", "drop"] = Field(
        "truncate", description="A sample longer than cutoff_len: truncate it, or drop it (counted either way)."
    )
    skip_invalid: bool = Field(
        False, description="Skip unusable records (counted and reported with examples) instead of stopping."
    )
    dedup: bool = Field(False, description="Drop exact duplicate records (counted and reported).")
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = Field(
        "concat", description="Combine several datasets: concat, or interleave until the first (under) / "
        "last (over) one runs out."
    )
    interleave_probs: str | list[float] | None = Field(
        None, description="Sampling ratio per dataset for interleave_*, e.g. '0.7,0.3'."
    )
    packing: bool = Field(False, description="Pack several samples into one sequence of cutoff_len.")
    overwrite_cache: bool = Field(False, description="Tokenize again even when the tokenized-data cache "
                                  "($TUNELAB_CACHE, default ~/.cache/tunelab) holds this data, tokenizer and keys.")
    preprocessing_num_workers: int | None = Field(
        None, description="Processes for TRL's dataset packing (tunelab tokenizes in one process)."
    )

    @field_validator("dataset", "eval_dataset", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("interleave_probs", mode="before")
    @classmethod
    def _split_probs(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return [float(part) for part in value.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"expected comma-separated numbers, got {value!r}") from None
        return value

    @property
    def loss_policy(self) -> str:
        """Which tokens carry loss: 'all' (train_on_prompt), 'last' (mask_history) or 'assistant'."""
        if self.train_on_prompt:
            return "all"
        return "last" if self.mask_history else "assistant"

    def data_problems(self) -> list[str]:
        problems = []
        if self.train_on_prompt and self.mask_history:
            problems.append("train_on_prompt and mask_history are both true; training on the prompt "
                            "contradicts training only on the last turn")
        if self.interleave_probs is not None:
            if self.mix_strategy == "concat":
                problems.append("interleave_probs is set but mix_strategy is 'concat'; use interleave_under or "
                                "interleave_over")
            elif self.dataset and len(self.interleave_probs) != len(self.dataset):
                problems.append(f"interleave_probs has {len(self.interleave_probs)} values for "
                                f"{len(self.dataset)} datasets")
            elif any(p < 0 for p in self.interleave_probs) or not sum(self.interleave_probs):
                problems.append("interleave_probs must be non-negative and not all zero")
        return problems


class OutputSettings(Concern):
    output_dir: str = Field("outputs/run", description="Run directory: config, metrics, checkpoints, model.")
    overwrite_output_dir: bool = Field(False, description="Allow writing into a non-empty output_dir.")
    logging_steps: int = Field(10, gt=0, description="Log (console and metrics.jsonl) every N steps.")
    save_steps: int = Field(500, gt=0, description="Save a checkpoint every N steps.")
    save_total_limit: int | None = Field(None, description="Keep at most this many checkpoints.")
    save_only_model: bool = Field(False, description="Checkpoints without optimizer state (cannot resume).")
    plot_loss: bool = Field(True, description="Write a loss-curve PNG at the end.")
    report_to: str | list[str] = Field("none", description="none, tensorboard, wandb, ...")


class TrainingSettings(Concern):
    """The optimisation loop, precision and distribution (the ``TrainingArguments`` every stage shares)."""

    per_device_train_batch_size: int = Field(1, gt=0, description="Batch size per device.")
    per_device_eval_batch_size: int = Field(1, gt=0, description="Eval batch size per device.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Steps to accumulate before an update.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, description="Gradient clipping norm.")
    num_train_epochs: float = Field(3.0, gt=0, description="Epochs to train.")
    max_steps: int = Field(-1, description="If > 0, stop after this many optimizer steps.")
    lr_scheduler_type: str = Field("cosine", description="linear, cosine, constant, constant_with_warmup, ...")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Fraction of steps for linear warmup.")
    warmup_steps: int = Field(0, ge=0, description="Warmup steps (overrides warmup_ratio when > 0).")
    optim: str = Field("adamw_torch_fused", description="Optimizer name as in transformers (fused AdamW by default).")
    bf16: bool = Field(False, description="Train in bfloat16 mixed precision.")
    fp16: bool = Field(False, description="Train in float16 mixed precision.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    group_by_length: bool = Field(
        False, description="Batch samples of similar length together: less padding where batches are padded, but a "
                           "different batch composition (so a different loss curve).")
    seed: int = Field(42, description="Random seed (data split, shuffling, init).")
    dataloader_num_workers: int = Field(0, ge=0, description="Data loader worker processes.")
    ddp_timeout: int = Field(1800, description="Seconds before a distributed collective times out.")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config path (under accelerate/torchrun).")
    fsdp: str | None = Field(None, description="FSDP options, e.g. 'full_shard auto_wrap'.")
    fsdp_config: str | dict[str, Any] | None = Field(None, description="FSDP config dict or JSON path.")
    resume_from_checkpoint: str | None = Field(
        None, description="Checkpoint folder to resume from, or 'last' for the newest in output_dir."
    )

    def training_problems(self) -> list[str]:
        return ["bf16 and fp16 are both true; choose one precision"] if self.bf16 and self.fp16 else []


class EvalSettings(Concern):
    eval_strategy: Literal["no", "steps", "epoch"] = Field("no", description="When to evaluate.")
    eval_steps: int | None = Field(None, description="Evaluate every N steps (eval_strategy: steps).")

    def eval_problems(self) -> list[str]:
        return ["eval_strategy is 'steps' but eval_steps is not set"] \
            if self.eval_strategy == "steps" and self.eval_steps is None else []


class SystemPromptKeys(BaseModel):
    """Declared by the stages that train on prompts alone (the RL stages): the data layer puts this system prompt in
    front of every prompt, where ``cfg.keys_of(SystemPromptKeys)`` finds it."""

    system_prompt: str | None = Field(None, description="System prompt put in front of every prompt that has none "
                                                        "(e.g. the R1 recipe's <reasoning>/<answer> format).")


# The concerns in the order `tunelab config` lists their keys.
CONCERNS: tuple[type[Concern], ...] = (ModelSettings, MethodSettings, DataSettings, OutputSettings, TrainingSettings,
                                       EvalSettings)
