"""The keys of generated-text metrics during training (stage sft) and their checks, below the stages and with
only pydantic at the top: validating a config reads them without loading the generation code
(``generation_eval``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.errors import ConfigError
from tunelab.metrics import parse_metrics

if TYPE_CHECKING:
    from tunelab.config import TrainConfig
    from tunelab.data.pipeline import DataReport


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


def check_generation_keys(cfg: TrainConfig, data: DataReport | None = None) -> None:
    """Generating on held-out prompts needs held-out data (and, during training, evaluations)."""
    keys = cfg.keys_of(GenerationKeys)
    if keys is None:
        return
    wants = [key for key in ("predict_with_generate", "do_predict") if getattr(keys, key)]
    if wants and not (cfg.val_size or cfg.eval_dataset):
        raise ConfigError(f"{' and '.join(wants)}: generating for the eval prompts needs eval data; set val_size "
                          "or eval_dataset")
    if wants and (cfg.deepspeed or cfg.fsdp):
        raise ConfigError(f"{' and '.join(wants)}: generation runs on the main process, which under DeepSpeed/FSDP "
                          "holds only a shard of the weights; train without them and score the saved model with "
                          "`tunelab eval`")
    if keys.predict_with_generate and cfg.eval_strategy == "no":
        raise ConfigError("predict_with_generate logs at each evaluation, but eval_strategy is 'no'; set "
                          "eval_strategy: steps with eval_steps (or use do_predict for one pass after training)")
    if wants and data is not None:  # an accuracy needs references that name a task
        from tunelab.training.generation_eval import check_generation_task

        check_generation_task(keys, data.eval_rows)
