"""Supervised fine-tuning recipe (stage ``sft``; ``pt`` uses the same steps on plain text).

Reads top to bottom: check the run directory, load the tokenizer, build and validate the data
(before any model is loaded), load the model, attach the fine-tuning method, train with TRL's
SFTTrainer, save the adapter or model with the tokenizer, plot, and say where everything is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import TrainConfig
from tunelab.console import console
from tunelab.data.pipeline import build_datasets
from tunelab.models.adapters import apply_finetuning, count_parameters
from tunelab.models.loading import load_model, load_tokenizer, training_dtype
from tunelab.runs import MetricsCallback, RunDir, plot_loss
from tunelab.stages.arguments import make_sft_config


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    final_loss: float | None
    interrupted: bool = False
    model: Any = None  # the trained model (PEFT-wrapped for lora), for callers that keep using it


def run_sft(cfg: TrainConfig, callbacks: list[Any] | None = None) -> TrainResult:
    from transformers import set_seed
    from trl import SFTTrainer

    run = RunDir(cfg)
    tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.template, trust_remote_code=cfg.trust_remote_code,
                               revision=cfg.model_revision, cache_dir=cfg.cache_dir)
    train_dataset, eval_dataset, report = build_datasets(cfg, tokenizer)
    if run.is_main:
        for line in report.lines():
            console.print(f"[bold]data[/bold] {line}")
        (run.path / "data_report.json").write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False),
                                                   encoding="utf-8")

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
        callbacks=[MetricsCallback(run.metrics_path), *(callbacks or [])],
    )
    interrupted = False
    try:
        trainer.train(resume_from_checkpoint=run.resume)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted[/yellow]: checkpoints saved so far are kept; continue with "
                      "resume_from_checkpoint=last")
    if not interrupted:
        trainer.save_model(cfg.output_dir)  # collective under DeepSpeed/FSDP: every rank calls it
        if run.is_main:
            tokenizer.save_pretrained(cfg.output_dir)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if run.is_main:
        _print_outputs(cfg, plot_loss(cfg.output_dir) if cfg.plot_loss else None, interrupted)
    return TrainResult(Path(cfg.output_dir), trainer.state.global_step, losses[-1] if losses else None,
                       interrupted, trainer.model)


def _print_outputs(cfg: TrainConfig, plot: Path | None, interrupted: bool) -> None:
    out = Path(cfg.output_dir)
    what = "adapter (PEFT format)" if cfg.finetuning_type == "lora" else "model"
    lines = [f"config        {out / 'config.yaml'}", f"metrics       {out / 'metrics.jsonl'}"]
    if plot:
        lines.append(f"loss curve    {plot}")
    checkpoints = sorted(out.glob("checkpoint-*"))
    if checkpoints:
        lines.append(f"checkpoints   {', '.join(str(c) for c in checkpoints)}")
    if not interrupted:
        lines.append(f"{what:<13} {out}  (tokenizer saved with it)")
    console.print("[bold green]saved[/bold green]\n  " + "\n  ".join(lines))
