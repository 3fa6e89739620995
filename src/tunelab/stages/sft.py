"""Supervised fine-tuning recipe (stage ``sft``; ``pt`` uses the same steps on plain text).

Reads top to bottom: check the run directory and paths, read and validate the data, load the
tokenizer and template, encode (all before the run folder is written or a model loaded), start the
run, load the model, attach the fine-tuning method, and let the shared lifecycle train with TRL's
SFTTrainer, save, plot and say where everything is.
"""

from __future__ import annotations

from typing import Any

from tunelab.config import TrainConfig
from tunelab.console import console
from tunelab.data.pipeline import encode_datasets, load_rows
from tunelab.models.sources import default_template
from tunelab.stages.lifecycle import TrainResult, preflight, train_and_save


def prepare_data(cfg: TrainConfig) -> tuple[Any, Any, Any, Any]:
    """(tokenizer, train dataset, eval dataset, data report): every data and template check of a run."""
    train_rows, eval_rows, report = load_rows(cfg)  # no torch needed to find a wrong name or record
    from tunelab.models.loading import load_tokenizer

    tokenizer = load_tokenizer(cfg.model_name_or_path, default_template(cfg.model_name_or_path, cfg.template),
                               trust_remote_code=cfg.trust_remote_code, revision=cfg.model_revision,
                               cache_dir=cfg.cache_dir, require_template=cfg.stage != "pt")
    train_dataset, eval_dataset = encode_datasets(train_rows, eval_rows, tokenizer, cfg, report)
    return tokenizer, train_dataset, eval_dataset, report


def run_sft(cfg: TrainConfig, callbacks: list[Any] | None = None, command: str | None = None) -> TrainResult:
    run = preflight(cfg)
    tokenizer, train_dataset, eval_dataset, report = prepare_data(cfg)

    from transformers import set_seed
    from trl import SFTTrainer

    from tunelab.models.adapters import apply_finetuning, count_parameters
    from tunelab.models.loading import load_model, training_dtype
    from tunelab.stages.arguments import make_sft_config

    run.start(report.as_dict())
    if run.is_main:
        for line in report.lines():
            console.print(f"[bold]data[/bold] {line}")
        console.print(f"[bold]model[/bold] loading {cfg.model_name_or_path} ...")

    set_seed(cfg.seed)  # adapter initialisation draws random numbers: same seed, same run
    model = load_model(cfg.model_name_or_path, tokenizer,
                       dtype=training_dtype(cfg.bf16, cfg.fp16, cfg.finetuning_type == "full"),
                       flash_attn=cfg.flash_attn, trust_remote_code=cfg.trust_remote_code,
                       revision=cfg.model_revision, cache_dir=cfg.cache_dir)
    model = apply_finetuning(model, cfg)
    trainable, total = count_parameters(model)
    if run.is_main:
        console.print(f"[bold]model[/bold] {cfg.model_name_or_path} ({cfg.finetuning_type}): "
                      f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%)")

    trainer = SFTTrainer(
        model=model,
        args=make_sft_config(cfg),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    what = "adapter (PEFT format)" if cfg.finetuning_type == "lora" else "model"
    return train_and_save(trainer, cfg, run, tokenizer, report.as_dict(), command, what)
