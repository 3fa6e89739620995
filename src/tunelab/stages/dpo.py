"""Direct preference optimisation (stage ``dpo``) on TRL's DPOTrainer, with its loss variants.

Reads top to bottom: check, read and encode the pairs (tunelab's masks: only each answer's content and
end marker carry loss), start the run, load the policy, pick the reference (the base with the adapter
disabled under LoRA, no second copy; a frozen copy, or ``ref_model``, otherwise), and train through the
shared lifecycle. TRL would re-tokenize the pairs its own way (training the text after the end marker
too), so the trainer here takes tunelab's encoded pairs as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.stage_registry import Stage

if TYPE_CHECKING:
    from tunelab.config import TrainConfig
    from tunelab.data.pipeline import DataReport
    from tunelab.training.lifecycle import TrainResult

# The loss types of TRL's DPOTrainer (installed version), by LLaMA-Factory's key name pref_loss; orpo and
# simpo are reference-free and run the recipe of stages/orpo.py.
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
REFERENCE_FREE = ("orpo", "simpo")


class PreferenceKeys(BaseModel):
    """The keys of the pairwise preference stages (dpo, orpo, simpo), named as in LLaMA-Factory."""

    model_config = ConfigDict(extra="forbid")

    pref_beta: float = Field(0.1, gt=0, description="beta: DPO's KL strength (higher = closer to the reference); "
                                                    "ORPO's odds-ratio weight; SimPO's reward scale.")
    pref_loss: Literal[DPO_LOSSES + REFERENCE_FREE] = Field(
        "sigmoid", description="Preference loss: sigmoid (DPO), hinge, ipo, robust, bco_pair, sppo_hard, apo_zero, "
        "... (TRL's DPO losses), or the reference-free orpo and simpo.")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO's target reward margin gamma.")
    pref_ftx: float = Field(0.0, ge=0, description="Weight of an extra SFT loss on the chosen answers (0 = off).")
    dpo_label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Label smoothing for noisy preferences "
                                                                      "(robust/cDPO), in [0, 0.5).")
    ref_model: str | None = Field(None, description="Reference model folder or id (default: the base model; "
                                                    "under LoRA the base with the adapter disabled).")


STAGES = [Stage("dpo", "preference", "direct preference optimisation on chosen/rejected pairs (pref_loss picks "
                "the variant)", "tunelab.stages.dpo:run_dpo", PreferenceKeys, check="tunelab.stages.dpo:check_dpo")]


def check_reference(cfg: TrainConfig, data: DataReport | None = None) -> None:
    """A ref_model must be a model that loads, like the base."""
    from tunelab.models.sources import check_model_source

    if data is None and cfg.ref_model:
        check_model_source(cfg.ref_model, "ref_model")


def check_dpo(cfg: TrainConfig, data: DataReport | None = None) -> None:
    if cfg.pref_loss in REFERENCE_FREE:  # runs the recipe of stages/orpo.py
        from tunelab.stages.orpo import check_reference_free

        check_reference_free(cfg, data)
        return
    check_reference(cfg, data)


def _trainer_class() -> type:
    from trl import DPOTrainer

    class EncodedPairsDPOTrainer(DPOTrainer):
        """DPOTrainer on pairs tunelab already encoded and masked (``prompt_ids``, ``chosen_ids``/``_mask``, ...)."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset

    return EncodedPairsDPOTrainer


def reference_model(cfg: TrainConfig, tokenizer: Any) -> Any:
    """None for a PEFT method (TRL disables the adapter for the reference pass); else a frozen model."""
    from tunelab.method_registry import method

    if method(cfg.finetuning_type).is_peft and not cfg.ref_model:
        return None
    from tunelab.models.loading import load_model, training_dtype

    model = load_model(cfg.ref_model or cfg.model_name_or_path, tokenizer,
                       dtype=training_dtype(cfg.bf16, cfg.fp16, False), flash_attn=cfg.flash_attn,
                       trust_remote_code=cfg.trust_remote_code, revision=cfg.model_revision, cache_dir=cfg.cache_dir)
    return model.eval().requires_grad_(False)


def dpo_settings(cfg: TrainConfig) -> dict[str, Any]:
    """DPOConfig settings of the preference keys."""
    losses, weights = [cfg.pref_loss], None
    if cfg.pref_ftx > 0:
        losses, weights = [cfg.pref_loss, "sft"], [1.0, cfg.pref_ftx]
    return {"beta": cfg.pref_beta, "loss_type": losses, "loss_weights": weights,
            "label_smoothing": cfg.dpo_label_smoothing, "max_length": None, "remove_unused_columns": False}


def run_dpo(cfg: TrainConfig, callbacks: list[Any] | None = None, command: str | None = None) -> TrainResult:
    from tunelab.training.lifecycle import begin, model_for_trainer, preflight, prepare_data, train_and_save

    if cfg.pref_loss in REFERENCE_FREE:  # LLaMA-Factory's `stage: dpo` + `pref_loss: orpo | simpo`
        from tunelab.stages.orpo import run_reference_free

        return run_reference_free(cfg, callbacks, command)

    run = preflight(cfg)
    tokenizer, train_dataset, eval_dataset, report = prepare_data(cfg)
    from trl import DPOConfig

    from tunelab.training.arguments import training_arguments
    from tunelab.training.collate import PairCollator

    begin(run, report)
    # A new LoRA adapter goes to TRL as a config, so the reference is the base with the adapter disabled (no
    # copy). Continuing an adapter (adapter_name_or_path, e.g. the SFT one), TRL keeps a frozen copy of that
    # adapter as the reference: the SFT model, as DPO intends, at the cost of one adapter.
    model, peft_config = model_for_trainer(cfg, tokenizer, run)
    trainer = _trainer_class()(
        model=model,
        peft_config=peft_config,
        ref_model=reference_model(cfg, tokenizer),
        args=training_arguments(cfg, DPOConfig, **dpo_settings(cfg)),
        data_collator=PairCollator(tokenizer.pad_token_id),  # completion_mask = tunelab's trained tokens
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return train_and_save(trainer, cfg, run, tokenizer, report, command)
