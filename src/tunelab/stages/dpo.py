"""Direct preference optimisation (stage ``dpo``) on TRL's DPOTrainer, with its loss variants.

Reads top to bottom: check, read and encode the pairs (tunelab's masks: only each answer's content and
end marker carry loss), start the run, load the policy, pick the reference (the base with the adapter
disabled under LoRA, no second copy; a frozen copy, or ``ref_model``, otherwise), and train through the
shared lifecycle. TRL would re-tokenize the pairs its own way (training the text after the end marker
too), so the trainer here takes tunelab's encoded pairs as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.stage_registry import Stage
from tunelab.training.preference import REFERENCE_FREE, PreferenceKeys, check_reference, reference_model

if TYPE_CHECKING:
    from tunelab.config import TrainConfig
    from tunelab.data.pipeline import DataReport
    from tunelab.training.lifecycle import TrainResult

STAGES = [Stage("dpo", "preference", "direct preference optimisation on chosen/rejected pairs (pref_loss picks "
                "the variant)", "tunelab.stages.dpo:run_dpo", PreferenceKeys, check="tunelab.stages.dpo:check_dpo")]


def check_dpo(cfg: TrainConfig, data: DataReport | None = None) -> None:
    if cfg.pref_loss not in REFERENCE_FREE:  # orpo and simpo have no reference to check
        check_reference(cfg, data)


def _trainer_class() -> type:
    from trl import DPOTrainer

    class EncodedPairsDPOTrainer(DPOTrainer):
        """DPOTrainer on pairs tunelab already encoded and masked (``prompt_ids``, ``chosen_ids``/``_mask``, ...);
        with ``padding_free`` its batches of chosen and rejected answers run as one row without padding."""

        def __init__(self, *args: Any, padding_free: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if padding_free:
                from tunelab.training.padding_free import pack_trainer_forwards

                pack_trainer_forwards(self)

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset

    return EncodedPairsDPOTrainer


def dpo_settings(cfg: TrainConfig) -> dict[str, Any]:
    """DPOConfig settings of the preference keys."""
    losses, weights = [cfg.pref_loss], None
    if cfg.pref_ftx > 0:
        losses, weights = [cfg.pref_loss, "sft"], [1.0, cfg.pref_ftx]
    return {"beta": cfg.pref_beta, "loss_type": losses, "loss_weights": weights,
            "label_smoothing": cfg.dpo_label_smoothing, "max_length": None, "remove_unused_columns": False}


def _collator(cfg: TrainConfig, tokenizer: Any) -> Any:
    """The row kind's collator; pairs whose prompts have images (a vision-language model) also get their images."""
    from tunelab.data.row_kinds import row_kind

    image_tokens = getattr(tokenizer, "image_tokens", None)
    if image_tokens is not None and cfg.row_kind == "preference":
        from tunelab.training.collate import ImagePairCollator

        return ImagePairCollator(tokenizer.pad_token_id, image_tokens)
    return row_kind(cfg.row_kind).collator_class()(tokenizer.pad_token_id)


def run_dpo(cfg: TrainConfig, callbacks: list[Any] | None = None, command: str | None = None) -> TrainResult:
    from tunelab.training.lifecycle import begin, model_for_trainer, preflight, prepare_data, train_and_save

    if cfg.pref_loss in REFERENCE_FREE:  # LLaMA-Factory's `stage: dpo` + `pref_loss: orpo | simpo`: that
        from tunelab.stage_registry import all_stages  # stage's recipe, found by name (no stage imports another)

        return all_stages()[cfg.pref_loss].run()(cfg, callbacks, command)

    run = preflight(cfg)
    tokenizer, train_dataset, eval_dataset, report = prepare_data(cfg)
    from trl import DPOConfig

    from tunelab.training.arguments import training_arguments

    begin(run, report)
    # A new LoRA adapter goes to TRL as a config, so the reference is the base with the adapter disabled (no
    # copy). Continuing an adapter (adapter_name_or_path, e.g. the SFT one), TRL keeps a frozen copy of that
    # adapter as the reference: the SFT model, as DPO intends, at the cost of one adapter.
    model, peft_config = model_for_trainer(cfg, tokenizer, run)
    from tunelab.training.token_loss import supports_padding_free

    trainer = _trainer_class()(
        padding_free=supports_padding_free(model, cfg, sequences_per_sample=2),
        model=model,
        peft_config=peft_config,
        ref_model=reference_model(cfg, tokenizer),
        args=training_arguments(cfg, DPOConfig, **dpo_settings(cfg)),
        # completion_mask = tunelab's trained tokens
        data_collator=_collator(cfg, tokenizer),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return train_and_save(trainer, cfg, run, tokenizer, report, command)
