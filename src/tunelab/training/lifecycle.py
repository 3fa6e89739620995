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

from tunelab.config import SystemPromptKeys, TrainConfig
from tunelab.console import console, stdout
from tunelab.method_registry import method
from tunelab.models.saving import record_base_model, usage_command, write_model_card
from tunelab.models.sources import (
    check_adapter_method,
    check_adapter_source,
    check_model_source,
    check_quantization_backend,
    default_template,
    resolve_model_path,
)
from tunelab.quiet import quiet_libraries
from tunelab.runs import CHECKPOINT_CONFIG, COMPLETIONS_FILE, RunDir, checkpoints, holds_final_model, is_main_process
from tunelab.signals import STOP
from tunelab.stage_registry import all_stages

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
    """Everything that can be checked before data, tokenizer or model: fails fast, writes nothing. The stage's
    own checks run here and again in ``prepare_data``, so `train --dry-run` runs every check a run runs."""
    quiet_libraries()  # stages run from Python too, not only through the commands
    run = RunDir(cfg)
    check_model_source(cfg.model_name_or_path, cache_dir=cfg.cache_dir, revision=cfg.model_revision)
    check_quantization_backend(cfg.quantization_bit)
    if cfg.adapter_name_or_path:
        check_adapter_source(cfg.adapter_name_or_path)
        check_adapter_method(cfg.adapter_name_or_path, cfg.finetuning_type)
    all_stages()[cfg.stage].check_config(cfg)
    return run


def prepare_data(cfg: TrainConfig) -> tuple[Any, Any, Any, Any]:
    """(tokenizer, train dataset, eval dataset, data report): every data and template check of a run, each
    row encoded by its kind's entry in data/row_kinds.py, or the same samples from the tokenized-data cache."""
    from tunelab.data.cache import cache_folder, cache_key, load_cached, save_cached
    from tunelab.data.pipeline import DataReport, encode_datasets, load_rows
    from tunelab.errors import shorten
    from tunelab.models.vision import attach_image_tokens, is_vision_model

    prompts = cfg.keys_of(SystemPromptKeys)
    system_prompt = prompts.system_prompt if prompts else None
    # image samples hang on image files the cache key does not read: a vision model's data is encoded each run
    key = None if is_vision_model(cfg.model_name_or_path) else cache_key(
        cfg, cfg.row_kind, cfg.seed, Path(resolve_model_path(cfg.model_name_or_path)), system_prompt)
    try:
        cached = load_cached(key) if key and not cfg.overwrite_cache else None
    except Exception as error:  # a damaged entry: encode again (and replace it)
        console.print(f"note: the tokenized-data cache entry could not be read ({shorten(str(error))}); "
                      "tokenizing again", markup=False, highlight=False)
        cached = None
    if cached is None:
        train_rows, eval_rows, report = load_rows(cfg, cfg.row_kind, cfg.seed)  # no torch yet: a bad record is quick
    from tunelab.models.loading import load_tokenizer

    tokenizer = load_tokenizer(cfg.model_name_or_path, default_template(cfg.model_name_or_path, cfg.template),
                               trust_remote_code=cfg.trust_remote_code, revision=cfg.model_revision,
                               cache_dir=cfg.cache_dir, require_template=cfg.row_kind != "pt")
    attach_image_tokens(tokenizer, cfg.model_name_or_path)  # image rows expand to the model's image tokens
    if cached is not None:
        train_dataset, eval_dataset, fields = cached
        report = DataReport.from_cache(fields, str(cache_folder(key)))
    else:
        train_dataset, eval_dataset = encode_datasets(train_rows, eval_rows, tokenizer, cfg, cfg.row_kind, report,
                                                      system_prompt)
        if key and is_main_process():
            try:
                save_cached(key, train_dataset, eval_dataset, {**report.as_dict(), "eval_rows": report.eval_rows})
            except Exception as error:  # a full disk or rows JSON cannot hold: the run goes on, uncached
                console.print(f"note: the tokenized data was not cached ({shorten(str(error))})", markup=False,
                              highlight=False)
    all_stages()[cfg.stage].check_config(cfg, report)
    return tokenizer, train_dataset, eval_dataset, report


def begin(run: RunDir, report: Any) -> None:
    """Write the run folder (everything checked by now) and show what the data gave."""
    run.start(report.as_dict())
    if run.is_main:
        for line in report.lines():
            console.print(f"[bold]data[/bold] {line}")


def load_trainable_model(cfg: TrainConfig, tokenizer: Any, run: RunDir, head: str = "causal_lm",
                         attach: bool = True) -> Any:
    """The model with its fine-tuning method attached (``head``: causal_lm, or score for a reward model), on a
    4/8-bit base with ``quantization_bit``. ``attach=False`` leaves a new adapter to the trainer (see
    ``model_for_trainer``)."""
    from transformers import set_seed

    from tunelab.models.loading import load_model, quantization_config, training_dtype
    from tunelab.models.methods import attach as attach_method

    if run.is_main:
        bits = f" in {cfg.quantization_bit} bits" if cfg.quantization_bit else ""
        console.print(f"[bold]model[/bold] loading {cfg.model_name_or_path}{bits} ...")
    set_seed(cfg.seed)  # adapter (and score head) initialisation draws random numbers: same seed, same run
    model = load_model(cfg.model_name_or_path, tokenizer,
                       dtype=training_dtype(cfg.bf16, cfg.fp16, method(cfg.finetuning_type).fp32_weights),
                       flash_attn=cfg.flash_attn, trust_remote_code=cfg.trust_remote_code,
                       revision=cfg.model_revision, cache_dir=cfg.cache_dir, head=head,
                       quantization=quantization_config(cfg))
    from tunelab.training.lean_mlp import use_lean_mlps
    from tunelab.training.lean_norms import use_lean_norm_weights, use_lean_norms

    use_lean_mlps(model)  # the same gradients, two intermediate-wide tensors per token and layer less kept
    use_lean_norms(model)  # and two hidden-wide ones
    use_lean_norm_weights(model)  # and, where the norms train, one per norm
    return attach_method(model, cfg) if attach else model


def model_for_trainer(cfg: TrainConfig, tokenizer: Any, run: RunDir) -> tuple[Any, Any]:
    """(model, PEFT config or None) for TRL's preference and RL trainers: a new adapter goes to the trainer as a
    config, so its reference model is the base with the adapter disabled (no copy). A continued adapter, or a
    method on the base's own weights, comes attached."""
    from tunelab.models.methods import peft_config

    fresh_adapter = method(cfg.finetuning_type).is_peft and not cfg.adapter_name_or_path
    model = load_trainable_model(cfg, tokenizer, run, attach=not fresh_adapter)
    return model, (peft_config(model, cfg) if fresh_adapter else None)


def planned_steps(trainer: Any) -> int | None:
    """The optimizer steps this run will have made at its end, as the trainer itself computes them."""
    try:
        return int(trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1])
    except Exception:  # an iterable dataset without length: the trainer stops by max_steps itself
        return None


def _attach_callbacks(trainer: Any, cfg: TrainConfig, run: RunDir) -> Any:
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgress

    from tunelab.callbacks import CheckpointCallback, GracefulStop, MetricsCallback, ProgressCallback

    for callback in (PrinterCallback, HFProgress):
        trainer.remove_callback(callback)
    progress = ProgressCallback()
    for callback in (MetricsCallback(run.metrics_path), CheckpointCallback(cfg), GracefulStop(), progress):
        trainer.add_callback(callback)
    return progress


def _complete_from_checkpoint(run: RunDir, cfg: TrainConfig, total: int) -> None:
    """The run already reached its end: make sure the final model sits in output_dir, train nothing."""
    if run.is_main and not holds_final_model(run.path):
        for item in Path(run.resume).iterdir():
            if item.is_file() and not item.name.startswith(_TRAINER_FILES):
                shutil.copy2(item, run.path / item.name)
        write_model_card(run.path, cfg, None, None, run.resume_step)  # last: the folder now holds a finished run
    console.print(f"[bold]run[/bold] already complete: {run.resume} is step {run.resume_step} of {total}; nothing "
                  "to train (raise max_steps or num_train_epochs to continue it)")


def train_and_save(trainer: Any, cfg: TrainConfig, run: RunDir, tokenizer: Any, report: Any = None,
                   command: str | None = None) -> TrainResult:
    """Train (resuming when asked), save model + tokenizer + card, plot, and print where it all is.
    ``report``: the DataReport (for the model card)."""
    data_report = report.as_dict() if report is not None else None
    from tunelab.models.methods import count_parameters, finish, prepare_trainer
    from tunelab.plots import plot_loss
    from tunelab.training.token_loss import compact_trl_fused_head

    compact_trl_fused_head()  # TRL's trainers score only the labelled positions, on CPU too

    progress = _attach_callbacks(trainer, cfg, run)
    from tunelab.training.generation_eval import attach_generation_metrics, predict_after_training

    eval_rows = report.eval_rows if report is not None else []
    attach_generation_metrics(trainer, cfg, eval_rows)
    if run.is_main:
        trainable, parameters = count_parameters(trainer.model)
        console.print(f"[bold]model[/bold] {cfg.model_name_or_path} ({cfg.finetuning_type}): {trainable:,} of "
                      f"{parameters:,} parameters trainable ({100 * trainable / parameters:.2f}%)")
    run.resume, run.resume_step = _as_rank_zero_planned(run.resume, run.resume_step)
    total = planned_steps(trainer) if run.resume else None  # builds a dataloader: only when it matters
    prepare_trainer(trainer, cfg, lambda: total if total is not None else planned_steps(trainer))
    if total is not None and run.resume_step >= total:
        _complete_from_checkpoint(run, cfg, total)
        return TrainResult(run.path, run.resume_step, None, False, trainer.model)
    interrupted = False
    STOP.training = True  # a SIGTERM from here to the end of the final save waits for the step (or save) to end
    try:
        try:
            trainer.train(resume_from_checkpoint=run.resume)
        except KeyboardInterrupt:  # Ctrl-C, or a second SIGTERM
            interrupted = True
        finally:
            progress.close()
        interrupted = interrupted or STOP.requested.is_set()  # a SIGTERM ended the loop after a checkpoint
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        final_loss = losses[-1] if losses else None
        if not interrupted:
            trainer.save_model(cfg.output_dir)  # collective under DeepSpeed/FSDP: every rank calls it
            if run.is_main:
                finish(trainer.model, cfg)
                tokenizer.save_pretrained(cfg.output_dir)
                if getattr(tokenizer, "image_tokens", None) is not None:  # the images' rules travel with the model
                    tokenizer.image_tokens.processor.save_pretrained(cfg.output_dir)
                record_base_model(cfg.output_dir, cfg.model_name_or_path)
                # the card is written last: a folder with it holds a finished run (runs.holds_final_model)
                write_model_card(cfg.output_dir, cfg, data_report, final_loss, trainer.state.global_step, command)
    finally:
        STOP.training = False
    predictions = predict_after_training(trainer.model, tokenizer, cfg, eval_rows) \
        if run.is_main and not interrupted else None
    if run.is_main:
        plot = plot_loss(cfg.output_dir) if cfg.plot_loss else None
        _print_outputs(cfg, plot, interrupted, predictions)
    return TrainResult(Path(cfg.output_dir), trainer.state.global_step, final_loss, interrupted, trainer.model)


def _as_rank_zero_planned(resume: str | None, step: int) -> tuple[str | None, int]:
    """Under several processes, rank 0's plan for the folder (resume an unfinished run or not) for every rank:
    only rank 0 reads the folder before writing it, and ranks that disagreed would train different steps."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return resume, step
    plan = [(resume, step)]
    dist.broadcast_object_list(plan, src=0)
    return plan[0]


def _print_outputs(cfg: TrainConfig, plot: Path | None, interrupted: bool, predictions: Path | None = None) -> None:
    what = ("reward " if cfg.stage == "rm" else "") + (
        "adapter (PEFT)" if method(cfg.finetuning_type).is_peft else "model")
    out = Path(cfg.output_dir)
    lines = [f"config        {out / 'config.yaml'}", f"metrics       {out / 'metrics.jsonl'}"]
    if plot:
        lines.append(f"loss curve    {plot}")
    if (out / COMPLETIONS_FILE).is_file():
        lines.append(f"completions   {out / COMPLETIONS_FILE} (sampled answers with their rewards)")
    if predictions:
        lines.append(f"predictions   {predictions.parent / 'generated_predictions.jsonl'} (scores in {predictions})")
    saved = checkpoints(out)
    if saved:
        lines.append(f"checkpoints   {', '.join(c.name for c in saved)} in {out}")
    if interrupted:
        how = "terminated" if STOP.requested.is_set() else "interrupted"
        if saved:
            console.print(f"[yellow]{how}[/yellow]: checkpoints saved so far are kept; run the same command again "
                          f"to continue from {saved[-1].name}")
        else:
            console.print(f"[yellow]{how}[/yellow]: no checkpoint was saved yet (one every save_steps "
                          f"{cfg.save_steps}), so the same command starts over")
        stdout.print("[bold]kept[/bold]\n  " + "\n  ".join(lines))
        return
    lines.append(f"{what:<13} {out}  (tokenizer and README.md model card with it)")
    lines.append(f"use it        {usage_command(cfg, out)}")
    stdout.print("[bold green]saved[/bold green]\n  " + "\n  ".join(lines))


def end_distributed() -> None:
    """Under torchrun/accelerate: wait for every rank (rank 0 may still be writing the model), then close the
    process group, so no rank tears the communication down under another (seen as SIGABRT at exit)."""
    import sys

    if "torch.distributed" not in sys.modules:  # a run that stopped before torch: nothing to close
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
