"""Supervised fine-tuning recipe (stage ``sft``; ``pt`` uses the same steps on plain text).

Reads top to bottom: check the run directory and paths, read and validate the data, load the
tokenizer and template, encode (all before the run folder is written or a model loaded), start the
run, load the model, attach the fine-tuning method, and let the shared lifecycle train with TRL's
SFTTrainer (with tunelab's labelled-positions loss, padding-free batches where the model allows), save, plot
and say where everything is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.stage_registry import Stage
from tunelab.training.generation_keys import GenerationKeys

if TYPE_CHECKING:  # the recipe's imports come when it runs: validating a config only reads the keys above
    from tunelab.config import TrainConfig
    from tunelab.training.lifecycle import TrainResult


STAGES = [
    Stage("sft", "sft", "supervised fine-tuning on conversations (loss on the answers)", "tunelab.stages.sft:run_sft",
          GenerationKeys, check="tunelab.training.generation_keys:check_generation_keys"),
    Stage("pt", "pt", "continued pretraining on plain text (loss on every token)", "tunelab.stages.sft:run_sft"),
]


def run_sft(cfg: TrainConfig, callbacks: list[Any] | None = None, command: str | None = None) -> TrainResult:
    from tunelab.training.lifecycle import begin, load_trainable_model, preflight, prepare_data, train_and_save

    run = preflight(cfg)
    tokenizer, train_dataset, eval_dataset, report = prepare_data(cfg)
    from tunelab.training.arguments import make_sft_config
    from tunelab.training.packed_attention import use_per_sample_attention
    from tunelab.training.sft_trainer import LabelledLossSFTTrainer
    from tunelab.training.token_loss import causal_lm, supports_padding_free

    begin(run, report)
    model = load_trainable_model(cfg, tokenizer, run)
    image_tokens = getattr(tokenizer, "image_tokens", None)  # a vision-language model (models/vision.py)
    padding_free = supports_padding_free(model, cfg)
    if padding_free:
        use_per_sample_attention(causal_lm(model))  # each sample attends within itself, no row-squared mask
    images: dict[str, Any] = {}
    if image_tokens is not None:  # the images are opened batch by batch; their column must reach the collator
        from tunelab.training.collate import ImageCollator

        images = {"data_collator": ImageCollator(tokenizer.pad_token_id, image_tokens)}
    trainer = LabelledLossSFTTrainer(
        model=model,
        args=make_sft_config(cfg, padding_free=padding_free, **({"remove_unused_columns": False} if images else {})),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        **images,
    )
    return train_and_save(trainer, cfg, run, tokenizer, report, command)
