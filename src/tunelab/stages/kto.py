"""Kahneman-Tversky optimisation (stage ``kto``) on TRL's KTOTrainer: unpaired answers labelled desirable
or undesirable (LLaMA-Factory's ``kto_en_demo``), no pairs needed.

Reads top to bottom like dpo: tunelab encodes and masks each (prompt, answer) (only the answer's content
and end marker carry loss); the KL estimate pairs each prompt with the answer of the row before it in the
shuffled dataset (as LLaMA-Factory pairs across the data, not within a batch as TRL does), so any batch size
trains, 1 included; the rows are shuffled once here and then read in order. The reference is the base with the
adapter disabled under LoRA, else a frozen copy or ``ref_model``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.stage_registry import Stage

if TYPE_CHECKING:
    from tunelab.config import TrainConfig
    from tunelab.training.lifecycle import TrainResult


class KTOKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pref_beta: float = Field(0.1, gt=0, description="beta: how far the policy may move from the reference.")
    kto_chosen_weight: float = Field(1.0, gt=0, description="KTO: weight of the desirable (label true) answers.")
    kto_rejected_weight: float = Field(1.0, gt=0, description="KTO: weight of the undesirable (label false) answers.")
    ref_model: str | None = Field(None, description="Reference model folder or id (default: the base model; "
                                                    "under LoRA the base with the adapter disabled).")


STAGES = [Stage("kto", "kto", "Kahneman-Tversky optimisation on answers labelled desirable / undesirable",
                "tunelab.stages.kto:run_kto", KTOKeys, check="tunelab.training.preference:check_reference")]


KL_CHUNK = 1000  # rows rotated at a time: memory stays bounded on large datasets


def with_kl_completions(dataset: Any) -> Any:
    """Each row also carries the answer of the row before it (the first row the last one's), for the KL term:
    a mismatched (prompt, answer) whatever the batch size."""
    if dataset is None:
        return None
    columns = ("completion_ids", "completion_mask")

    def rotate(chunk: dict[str, list], indices: list[int]) -> dict[str, list]:
        before = dataset[(indices[0] - 1) % len(dataset)]
        for key in columns:
            chunk[f"KL_{key}"] = [before[key], *chunk[key][:-1]]
        return chunk

    return dataset.map(rotate, with_indices=True, batched=True, batch_size=KL_CHUNK)


def _trainer_class() -> type:
    from trl import KTOTrainer

    class EncodedKTOTrainer(KTOTrainer):
        """KTOTrainer on rows tunelab already encoded, masked and paired for KL; with ``padding_free`` its batches
        run as one row without padding."""

        def __init__(self, *args: Any, padding_free: bool = False, **kwargs: Any) -> None:
            # TRL refuses batch size 1 because its own pairing rotates within a batch; tunelab's pairs come from
            # across the dataset (with_kl_completions), so its check is passed over for that case alone.
            settings = kwargs["args"]
            batch = settings.per_device_train_batch_size
            settings.per_device_train_batch_size = max(batch, 2)
            try:
                super().__init__(*args, **kwargs)
            finally:
                settings.per_device_train_batch_size = batch
            self._train_batch_size = settings.train_batch_size
            if padding_free:
                from tunelab.training.padding_free import pack_trainer_forwards

                pack_trainer_forwards(self)

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset

    return EncodedKTOTrainer


def run_kto(cfg: TrainConfig, callbacks: list[Any] | None = None, command: str | None = None) -> TrainResult:
    from tunelab.training.lifecycle import begin, model_for_trainer, preflight, prepare_data, train_and_save

    run = preflight(cfg)
    tokenizer, train_dataset, eval_dataset, report = prepare_data(cfg)
    from trl import KTOConfig

    from tunelab.data.row_kinds import row_kind
    from tunelab.training.arguments import training_arguments
    from tunelab.training.preference import reference_model

    train_dataset = with_kl_completions(train_dataset.shuffle(seed=cfg.seed).flatten_indices())
    eval_dataset = with_kl_completions(eval_dataset)
    begin(run, report)
    model, peft_config = model_for_trainer(cfg, tokenizer, run)
    settings = {"beta": cfg.pref_beta, "desirable_weight": cfg.kto_chosen_weight,
                "undesirable_weight": cfg.kto_rejected_weight, "max_length": None, "remove_unused_columns": False,
                "train_sampling_strategy": "sequential"}
    from tunelab.training.token_loss import supports_padding_free

    trainer = _trainer_class()(
        padding_free=supports_padding_free(model, cfg),
        model=model,
        ref_model=reference_model(cfg, tokenizer),
        args=training_arguments(cfg, KTOConfig, **settings),
        data_collator=row_kind(cfg.row_kind).collator_class()(tokenizer.pad_token_id),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft_config,
    )
    return train_and_save(trainer, cfg, run, tokenizer, report, command)
