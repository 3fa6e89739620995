"""What the preference and RL stages share, below them so that no stage imports another: the preference keys
(named as in LLaMA-Factory), the reference model and its check. Only pydantic at the top: validating a config
reads the keys without loading training code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from tunelab.config import TrainConfig
    from tunelab.data.pipeline import DataReport

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


def check_reference(cfg: TrainConfig, data: DataReport | None = None) -> None:
    """A ref_model must be a model that loads, like the base."""
    from tunelab.models.sources import check_model_source

    if data is None and cfg.ref_model:
        check_model_source(cfg.ref_model, "ref_model")


def reference_model(cfg: TrainConfig, tokenizer: Any) -> Any:
    """None for a PEFT method (TRL disables the adapter for the reference pass); else a frozen model."""
    from tunelab.method_registry import method

    own = getattr(cfg, "ref_model", None)  # a key of the stages that take another reference (dpo, kto, ppo)
    if method(cfg.finetuning_type).is_peft and not own:
        return None
    from tunelab.models.loading import load_model, training_dtype

    model = load_model(own or cfg.model_name_or_path, tokenizer,
                       dtype=training_dtype(cfg.bf16, cfg.fp16, False), flash_attn=cfg.flash_attn,
                       trust_remote_code=cfg.trust_remote_code, revision=cfg.model_revision, cache_dir=cfg.cache_dir)
    return model.eval().requires_grad_(False)
