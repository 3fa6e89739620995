"""The run lifecycle every stage shares: checks before anything heavy, then train, save, plot, summary.

A recipe calls ``preflight`` (run directory and model/adapter paths, nothing written), builds its data
and tokenizer, ``run.start(...)``, loads its model and trainer, and hands the trainer to ``train_and_save``,
which attaches tunelab's callbacks, refuses to train past the end, survives Ctrl-C with every saved
checkpoint intact, and says where everything is.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import TrainConfig
from tunelab.console import console
from tunelab.models.sources import check_adapter_source, check_model_source
from tunelab.runs import CHECKPOINT_CONFIG, RunDir, checkpoints

# What a checkpoint holds besides the model: trainer internals that a final output does not need.
_TRAINER_FILES = ("optimizer", "scheduler", "rng_state", "trainer_state", "training_args", "scaler",
                  CHECKPOINT_CONFIG.split(".")[0])


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    final_loss: float | None
    interrupted: bool = False
    model: Any = None  # the trained model (PEFT-wrapped for adapters), for callers that keep using it


def preflight(cfg: TrainConfig) -> RunDir:
    """Everything that can be checked before data, tokenizer or model: fails fast, writes nothing."""
    run = RunDir(cfg)
    check_model_source(cfg.model_name_or_path)
    if cfg.adapter_name_or_path:
        check_adapter_source(cfg.adapter_name_or_path)
    return run


def planned_steps(trainer: Any) -> int | None:
    """The optimizer steps this run will have made at its end, as the trainer itself computes them."""
    try:
        return int(trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1])
    except Exception:  # an iterable dataset without length: the trainer stops by max_steps itself
        return None


def _attach_callbacks(trainer: Any, cfg: TrainConfig, run: RunDir) -> Any:
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgress

    from tunelab.callbacks import CheckpointCallback, MetricsCallback, ProgressCallback

    for callback in (PrinterCallback, HFProgress):
        trainer.remove_callback(callback)
    progress = ProgressCallback()
    for callback in (MetricsCallback(run.metrics_path), CheckpointCallback(cfg), progress):
        trainer.add_callback(callback)
    return progress


def _complete_from_checkpoint(run: RunDir, total: int) -> None:
    """The run already reached its end: make sure the final model sits in output_dir, train nothing."""
    if run.is_main and not any((run.path / name).is_file() for name in ("adapter_config.json", "config.json")):
        for item in Path(run.resume).iterdir():
            if item.is_file() and not item.name.startswith(_TRAINER_FILES):
                shutil.copy2(item, run.path / item.name)
    console.print(f"[bold]run[/bold] already complete: {run.resume} is step {run.resume_step} of {total}; nothing "
                  "to train (raise max_steps or num_train_epochs to continue it)")


def train_and_save(trainer: Any, cfg: TrainConfig, run: RunDir, tokenizer: Any,
                   data_report: dict[str, Any] | None = None, command: str | None = None,
                   describe_output: str = "adapter (PEFT format)") -> TrainResult:
    """Train (resuming when asked), save model + tokenizer + card, plot, and print where it all is."""
    from tunelab.models.saving import record_base_model, write_model_card
    from tunelab.plots import plot_loss

    progress = _attach_callbacks(trainer, cfg, run)
    total = planned_steps(trainer)
    if run.resume and total is not None and run.resume_step >= total:
        _complete_from_checkpoint(run, total)
        return TrainResult(run.path, run.resume_step, None, False, trainer.model)
    interrupted = False
    try:
        trainer.train(resume_from_checkpoint=run.resume)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    final_loss = losses[-1] if losses else None
    if not interrupted:
        trainer.save_model(cfg.output_dir)  # collective under DeepSpeed/FSDP: every rank calls it
        if run.is_main:
            tokenizer.save_pretrained(cfg.output_dir)
            record_base_model(cfg.output_dir, cfg.model_name_or_path)
            write_model_card(cfg.output_dir, cfg, data_report, final_loss, trainer.state.global_step, command)
    if run.is_main:
        plot = plot_loss(cfg.output_dir) if cfg.plot_loss else None
        _print_outputs(cfg, plot, interrupted, describe_output)
    return TrainResult(Path(cfg.output_dir), trainer.state.global_step, final_loss, interrupted, trainer.model)


def _print_outputs(cfg: TrainConfig, plot: Path | None, interrupted: bool, what: str) -> None:
    out = Path(cfg.output_dir)
    lines = [f"config        {out / 'config.yaml'}", f"metrics       {out / 'metrics.jsonl'}"]
    if plot:
        lines.append(f"loss curve    {plot}")
    saved = checkpoints(out)
    if saved:
        lines.append(f"checkpoints   {', '.join(c.name for c in saved)} in {out}")
    if interrupted:
        console.print("[yellow]interrupted[/yellow]: checkpoints saved so far are kept; continue with "
                      "resume_from_checkpoint=last")
        console.print("[bold]kept[/bold]\n  " + "\n  ".join(lines))
        return
    lines.append(f"{what:<13} {out}  (tokenizer and README.md model card with it)")
    flag = "--adapter" if (out / "adapter_config.json").is_file() else "--model"
    lines.append(f"use it        tunelab chat {flag} {out}")
    console.print("[bold green]saved[/bold green]\n  " + "\n  ".join(lines))
