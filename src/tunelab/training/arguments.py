"""Translate tunelab's config into TRL's SFTConfig (the Hugging Face TrainingArguments underneath)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from tunelab.config import TrainConfig

_USER_TENSORBOARD_DIR = os.environ.get("TENSORBOARD_LOGGING_DIR")

# Keys whose names and meaning are the same in TrainingArguments: passed through unchanged.
PASSTHROUGH = (
    "output_dir", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "learning_rate", "weight_decay", "max_grad_norm", "num_train_epochs", "max_steps", "lr_scheduler_type",
    "warmup_steps", "logging_steps", "save_steps", "save_total_limit", "save_only_model", "optim", "bf16",
    "fp16", "seed", "dataloader_num_workers", "ddp_timeout", "deepspeed",
    "eval_strategy", "eval_steps", "report_to",
)


def training_arguments(cfg: TrainConfig, config_class: Any, **stage_settings: Any) -> Any:
    """A TRL config (SFTConfig, DPOConfig, RewardConfig, ...) from the keys every stage shares, plus the
    stage's own settings. Data reaches the trainers tokenized, masked and truncated by tunelab."""
    import torch

    kwargs = {key: getattr(cfg, key) for key in PASSTHROUGH}
    if cfg.warmup_ratio and not cfg.warmup_steps:
        kwargs["warmup_steps"] = cfg.warmup_ratio  # transformers 5 reads a float < 1 as a ratio
    # transformers 5.2x renamed gradient_checkpointing (our LLaMA-Factory-compatible key) to activation_checkpointing
    names = {f.name for f in dataclasses.fields(config_class)}
    kwargs["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = (
        cfg.gradient_checkpointing
    )
    if cfg.group_by_length:  # transformers 5 replaced the group_by_length flag with a sampler choice
        kwargs["train_sampling_strategy"] = "group_by_length"
    if cfg.fsdp:
        kwargs["fsdp"] = cfg.fsdp
        kwargs["fsdp_config"] = cfg.fsdp_config
    # transformers 5 dropped logging_dir: TensorBoard reads this variable; keep its event files in this run's
    # folder unless the user set it before tunelab started.
    if not _USER_TENSORBOARD_DIR:
        os.environ["TENSORBOARD_LOGGING_DIR"] = os.path.join(cfg.output_dir, "runs")
    kwargs.update(
        save_strategy="steps",
        disable_tqdm=True,  # tunelab's own progress bar / log lines replace tqdm and the raw log dicts
        logging_first_step=True,
        include_num_input_tokens_seen="non_padding",
        data_seed=cfg.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        # A GPU YAML (bf16: true) still runs on a CPU-only machine, with CPU autocast.
        use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
    )
    kwargs.update(stage_settings)
    return config_class(**kwargs)


def make_sft_config(cfg: TrainConfig, **overrides: Any) -> Any:
    """SFTConfig for a dataset that tunelab already tokenized, masked and truncated."""
    from trl import SFTConfig

    settings = {"max_length": cfg.cutoff_len if cfg.packing else None,  # truncation already done (and counted)
                "packing": cfg.packing, "dataset_num_proc": cfg.preprocessing_num_workers,
                "remove_unused_columns": True}
    return training_arguments(cfg, SFTConfig, **{**settings, **overrides})
