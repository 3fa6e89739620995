"""Supervised fine-tuning recipe (stage ``sft``; ``pt`` uses the same steps on plain text).

Reads top to bottom: check the run directory and paths, read and validate the data, load the
tokenizer and template, encode (all before the run folder is written or a model loaded), start the
run, load the model, attach the fine-tuning method, and let the shared lifecycle train with TRL's
SFTTrainer, save, plot and say where everything is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.errors import ConfigError
from tunelab.metrics import parse_metrics
from tunelab.stage_registry import Stage

if TYPE_CHECKING:  # the recipe's imports come when it runs: validating a config only reads the keys above
    from tunelab.config import TrainConfig
    from tunelab.data.pipeline import DataReport
    from tunelab.training.lifecycle import TrainResult


class GenerationKeys(BaseModel):
    """Generated-text metrics on the held-out data (the ChatGLM P-Tuning and LLaMA-Factory keys)."""

    model_config = ConfigDict(extra="forbid")

    predict_with_generate: bool = Field(False, description="At each evaluation also generate answers to the eval "
                                        "prompts and log generation_metrics (eval_bleu-4, ...) beside eval_loss.")
    do_predict: bool = Field(False, description="After training, generate answers to the eval prompts: "
                             "generated_predictions.jsonl and predict_results.json (predict_bleu-4, ...).")
    generation_metrics: list[str] = Field(["bleu-4", "rouge-1", "rouge-2", "rouge-l"], description="Metrics of "
                                          "predict_with_generate/do_predict (see `tunelab eval --help`).")
    generation_max_new_tokens: int = Field(128, gt=0, description="Tokens generated per eval answer.")
    generation_max_samples: int | None = Field(None, gt=0, description="Generate for at most this many eval "
                                               "prompts (default: all).")

    @field_validator("generation_metrics", mode="before")
    @classmethod
    def _metrics(cls, value: Any) -> list[str]:
        try:
            names = parse_metrics(value)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        if "perplexity" in names:
            raise ValueError("perplexity is exp(eval_loss), which evaluation already logs; leave it out")
        return names


STAGES = [
    Stage("sft", "sft", "supervised fine-tuning on conversations (loss on the answers)", "tunelab.stages.sft:run_sft",
          GenerationKeys, check="tunelab.stages.sft:check_generation_keys"),
    Stage("pt", "pt", "continued pretraining on plain text (loss on every token)", "tunelab.stages.sft:run_sft"),
]


def check_generation_keys(cfg: TrainConfig, data: DataReport | None = None) -> None:
    """Generating on held-out prompts needs held-out data (and, during training, evaluations)."""
    wants = [key for key in ("predict_with_generate", "do_predict") if getattr(cfg, key, False)]
    if wants and not (cfg.val_size or cfg.eval_dataset):
        raise ConfigError(f"{' and '.join(wants)}: generating for the eval prompts needs eval data; set val_size "
                          "or eval_dataset")
    if wants and (cfg.deepspeed or cfg.fsdp):
        raise ConfigError(f"{' and '.join(wants)}: generation runs on the main process, which under DeepSpeed/FSDP "
                          "holds only a shard of the weights; train without them and score the saved model with "
                          "`tunelab eval`")
    if getattr(cfg, "predict_with_generate", False) and cfg.eval_strategy == "no":
        raise ConfigError("predict_with_generate logs at each evaluation, but eval_strategy is 'no'; set "
                          "eval_strategy: steps with eval_steps (or use do_predict for one pass after training)")
    if wants and data is not None:  # an accuracy needs references that name a task
        from tunelab.training.generation_eval import check_generation_task

        check_generation_task(cfg, data.eval_rows)


def run_sft(cfg: TrainConfig, callbacks: list[Any] | None = None, command: str | None = None) -> TrainResult:
    from tunelab.training.lifecycle import begin, load_trainable_model, preflight, prepare_data, train_and_save

    run = preflight(cfg)
    tokenizer, train_dataset, eval_dataset, report = prepare_data(cfg)
    from trl import SFTTrainer

    from tunelab.training.arguments import make_sft_config

    begin(run, report)
    model = load_trainable_model(cfg, tokenizer, run)
    trainer = SFTTrainer(
        model=model,
        args=make_sft_config(cfg),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return train_and_save(trainer, cfg, run, tokenizer, report, command)
