"""`tunelab train CONFIG --dry-run`: everything a run checks, without training or writing anything.

Reads and validates the data, loads tokenizer and template, counts tokens and optimizer steps, and
estimates memory from the model's config alone (the model is built on the meta device: no weights are
downloaded or allocated), so a 7B GPU recipe can be checked on a laptop.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from tunelab.config import TrainConfig
from tunelab.console import human_size, stdout
from tunelab.data.row_kinds import row_kind
from tunelab.errors import TunelabError, shorten
from tunelab.models.sources import default_template, resolve_model_path
from tunelab.training.lifecycle import preflight, prepare_data

GIB = 1024**3


@dataclass
class MemoryEstimate:
    """Bytes per device for one training step, by part. An estimate: kernels, fragmentation and the
    CUDA context add more; DeepSpeed/FSDP shard the optimizer and weights."""

    parameters: int
    trainable: int
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def _meta_model(cfg: TrainConfig) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(cfg.model_name_or_path),
                                            trust_remote_code=cfg.trust_remote_code, revision=cfg.model_revision,
                                            cache_dir=cfg.cache_dir)
    except Exception as error:
        raise TunelabError(f"could not read the config of '{cfg.model_name_or_path}': {shorten(str(error))}") from None
    auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=cfg.trust_remote_code), config


def estimate_memory(cfg: TrainConfig, sequence_length: int) -> MemoryEstimate:
    """Weights, gradients, AdamW state and activations for the configured method, batch and length."""
    from tunelab.method_registry import method
    from tunelab.models.loading import training_dtype
    from tunelab.models.methods import attach, count_parameters

    model, config = _meta_model(cfg)
    parameters = sum(p.numel() for p in model.parameters())
    # An adapter to continue is counted as a fresh one of the configured size (its weights are not read).
    model = attach(model, cfg.model_copy(update={"adapter_name_or_path": None}))
    trainable, _ = count_parameters(model)
    dtype = training_dtype(cfg.bf16, cfg.fp16, method(cfg.finetuning_type).fp32_weights)
    weight_bytes = 2 if str(dtype).endswith(("bfloat16", "float16")) else 4
    if cfg.quantization_bit:  # frozen base weights in 4 or 8 bits (the adapter stays in dtype, a small part)
        weight_bytes = cfg.quantization_bit / 8
    hidden = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)
    layers = getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0)
    vocab = getattr(config, "vocab_size", 0)
    tokens = cfg.per_device_train_batch_size * sequence_length
    act_bytes = 2 if (cfg.bf16 or cfg.fp16) else 4
    # ~17 activation values per hidden unit per layer kept for backward (memory-efficient attention);
    # with checkpointing only each layer's input stays, plus one layer being recomputed.
    per_layer = 17 * tokens * hidden * act_bytes
    kept = (layers * tokens * hidden * act_bytes + per_layer) if cfg.gradient_checkpointing else layers * per_layer
    logits = 2 * tokens * vocab * 4  # fp32 logits and their gradient
    return MemoryEstimate(parameters=parameters, trainable=trainable, weights=parameters * weight_bytes,
                          gradients=trainable * 4, optimizer=trainable * 8, activations=kept + logits)


def uses_per_sample(cfg: TrainConfig) -> int:
    """How often an epoch feeds each sample to the trainer: GRPO/RLOO sample num_generations answers per prompt
    (the batch counts answers); other stages once (PPO is counted by rollouts)."""
    return cfg.num_generations if cfg.row_kind == "rl" and cfg.stage != "ppo" else 1


def planned_optimizer_steps(cfg: TrainConfig, train_samples: int) -> int:
    """As the trainer counts them: batches per device, rounded up, per accumulation, times epochs."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.stage == "ppo":  # whole rollouts only (the sampler drops a last partial one), ppo_epochs passes each
        rollout = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * cfg.ppo_buffer_size * world
        return math.ceil(cfg.num_train_epochs * (train_samples // rollout) * cfg.ppo_epochs * cfg.ppo_buffer_size)
    batches = math.ceil(train_samples * uses_per_sample(cfg) / (cfg.per_device_train_batch_size * world))
    per_epoch = max(1, math.ceil(batches / cfg.gradient_accumulation_steps))
    return math.ceil(cfg.num_train_epochs * per_epoch)


def sample_lengths(dataset: Any, tokenizer: Any, cfg: TrainConfig) -> list[int]:
    """Tokens of each training sequence: the sample, a pair's longer side, prompt + KTO answer, or an RL prompt
    plus the longest answer it may sample."""
    columns = dataset.column_names
    kind = row_kind(cfg.row_kind)
    if kind.inputs is None:  # trains online: the prompt plus the longest answer it may sample
        return [kind.lengths(kind.encode(row, tokenizer, cfg.loss_policy, None)[0]) + cfg.max_completion_length
                for row in dataset]
    if "input_ids" in columns:
        return [len(ids) for ids in dataset["input_ids"]]
    prompts = [len(ids) for ids in dataset["prompt_ids"]]
    sides = [column for column in ("chosen_ids", "rejected_ids", "completion_ids") if column in columns]
    longest = [max(len(row[column]) for column in sides) for row in dataset.select_columns(sides)]
    return [p + a for p, a in zip(prompts, longest, strict=True)]


def dry_run(cfg: TrainConfig) -> dict[str, Any]:
    run = preflight(cfg)
    tokenizer, train_dataset, _eval_dataset, report = prepare_data(cfg)
    lengths = sample_lengths(train_dataset, tokenizer, cfg)
    sequence = cfg.cutoff_len if cfg.packing else max(lengths)
    steps = planned_optimizer_steps(cfg, len(lengths))
    memory = estimate_memory(cfg, sequence)
    template = default_template(cfg.model_name_or_path, cfg.template) or "the tokenizer's own"
    for line in report.lines():
        stdout.print(f"[bold]data[/bold] {line}")
    stdout.print(f"[bold]sequence tokens[/bold] {sum(lengths):,} in {len(lengths):,} train samples "
                 f"({row_kind(cfg.row_kind).sequence}; longest {max(lengths)}, mean {sum(lengths) / len(lengths):.0f})"
                 + (f"; template {template}" if cfg.stage != "pt" else ""))
    stdout.print(f"[bold]steps[/bold] {steps:,} optimizer steps (batch {cfg.per_device_train_batch_size} x "
                 f"accumulation {cfg.gradient_accumulation_steps} x {os.environ.get('WORLD_SIZE', '1')} processes"
                 + (f", {cfg.num_train_epochs:g} epochs" if cfg.max_steps <= 0 else "") + ")"
                 + (" before packing" if cfg.packing else ""))
    stdout.print(f"[bold]model[/bold] {cfg.model_name_or_path}: {memory.parameters:,} parameters, "
                 f"{memory.trainable:,} trainable ({cfg.finetuning_type})")
    stdout.print(f"[bold]memory[/bold] about {human_size(memory.total)} per device for sequences of {sequence} "
                 "tokens: "
                 f"weights {human_size(memory.weights)}, gradients {human_size(memory.gradients)}, AdamW state "
                 f"{human_size(memory.optimizer)}, activations {human_size(memory.activations)} (an estimate)")
    for note in run.notes:  # what the run would do to output_dir (replace, resume, move aside)
        stdout.print(f"[bold]output_dir[/bold] (what the run would do) {note}")
    stdout.print(f"[bold green]dry run passed[/bold green]: nothing was written; `tunelab train` would write to "
                 f"{run.path}" + (f", resuming {run.resume}" if run.resume else ""))
    return {"train_samples": len(lengths), "eval_samples": report.eval_samples, "tokens": sum(lengths),
            "steps": steps, "sequence_length": sequence, "parameters": memory.parameters,
            "trainable": memory.trainable, "memory_gib": round(memory.total / GIB, 3)}
