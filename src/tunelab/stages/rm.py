"""Reward modelling (stage ``rm``): a causal LM with a one-output score head, trained on preference pairs
with TRL's RewardTrainer (Bradley-Terry: the chosen answer should score above the rejected one).

Each side is the conversation rendered through the chat template up to the answer's end marker, the same
sequence that ``tunelab score`` and the RL stages score later. With LoRA the score head trains and saves
with the adapter (PEFT's sequence-classification task), so ``AutoModelForSequenceClassification`` plus the
adapter loads it; a full run saves a sequence-classification model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.stage_registry import Stage

if TYPE_CHECKING:
    from tunelab.config import TrainConfig
    from tunelab.training.lifecycle import TrainResult

STAGES = [Stage("rm", "preference", "reward model: a score head trained so chosen answers score above rejected ones",
                "tunelab.stages.rm:run_rm")]


def _scored_pairs(dataset: Any) -> Any:
    """prompt + answer for each side: the full sequences the score head reads."""
    if dataset is None:
        return None
    return dataset.map(lambda row: {"chosen_ids": row["prompt_ids"] + row["chosen_ids"],
                                    "rejected_ids": row["prompt_ids"] + row["rejected_ids"]},
                       remove_columns=["prompt_ids", "chosen_mask", "rejected_mask"])


def run_rm(cfg: TrainConfig, callbacks: list[Any] | None = None, command: str | None = None) -> TrainResult:
    from tunelab.training.lifecycle import begin, load_trainable_model, preflight, prepare_data, train_and_save

    run = preflight(cfg)
    tokenizer, train_dataset, eval_dataset, report = prepare_data(cfg)
    from trl import RewardConfig, RewardTrainer

    from tunelab.training.arguments import training_arguments

    begin(run, report)
    model = load_trainable_model(cfg, tokenizer, run, head="score")
    trainer = RewardTrainer(
        model=model,
        args=training_arguments(cfg, RewardConfig, max_length=None, remove_unused_columns=False),
        train_dataset=_scored_pairs(train_dataset),
        eval_dataset=_scored_pairs(eval_dataset),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    from tunelab.training.token_loss import causal_lm, supports_padding_free

    if supports_padding_free(model, cfg, sequences_per_sample=2) and hasattr(causal_lm(model), "score"):
        from tunelab.training.padding_free import pack_reward_forward

        pack_reward_forward(trainer)  # chosen and rejected sequences as one row, without their padding
    return train_and_save(trainer, cfg, run, tokenizer, report, command)
