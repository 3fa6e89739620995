"""Reference-free preference stages: ``orpo`` (odds-ratio preference, with the SFT loss built in) and
``simpo`` (length-normalised reward with a target margin), on TRL's experimental ORPO and CPO trainers.

TRL moved both trainers to ``trl.experimental``; that import stays inside this module. Both trainers
tokenize text their own way; here they take tunelab's encoded pairs instead (``tokenize_row`` maps them to
the trainers' columns), so the same tokens carry loss as in sft and dpo: each answer's content and end
marker. No reference model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.stage_registry import Stage
from tunelab.training.preference import PreferenceKeys

if TYPE_CHECKING:
    from tunelab.config import TrainConfig
    from tunelab.data.pipeline import DataReport
    from tunelab.training.lifecycle import TrainResult

STAGES = [
    Stage("orpo", "preference", "odds-ratio preference optimisation, reference-free (SFT loss included)",
          "tunelab.stages.orpo:run_reference_free", PreferenceKeys, presets={"pref_loss": "orpo"},
          check="tunelab.stages.orpo:check_reference_free"),
    Stage("simpo", "preference", "simple preference optimisation: length-normalised, reference-free",
          "tunelab.stages.orpo:run_reference_free", PreferenceKeys, presets={"pref_loss": "simpo"},
          check="tunelab.stages.orpo:check_reference_free"),
]


def check_reference_free(cfg: TrainConfig, data: DataReport | None = None) -> None:
    from tunelab.errors import ConfigError

    if cfg.stage in ("orpo", "simpo") and cfg.pref_loss != cfg.stage:
        raise ConfigError(f"stage {cfg.stage} trains with pref_loss {cfg.stage}, not {cfg.pref_loss}; use stage: dpo "
                          f"for pref_loss {cfg.pref_loss}")


def experimental_row(feature: dict[str, Any]) -> dict[str, list[int]]:
    """tunelab's pair (prompt_ids, chosen_ids/_mask, rejected_ids/_mask) in the columns of TRL's experimental
    preference trainers: full sequences with labels -100 wherever no loss is taken."""
    from tunelab.data.masking import IGNORE_INDEX

    prompt = list(feature["prompt_ids"])
    row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        ids, mask = list(feature[f"{side}_ids"]), feature[f"{side}_mask"]
        row[f"{side}_input_ids"] = prompt + ids
        row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(ids))
        row[f"{side}_labels"] = [IGNORE_INDEX] * len(prompt) + [t if m else IGNORE_INDEX for t, m in zip(ids, mask,
                                                                                                           strict=True)]
    return row


def _trainer(cfg: TrainConfig) -> tuple[type, type, dict[str, Any]]:
    """(trainer class, config class, its settings) for the configured loss."""
    if cfg.pref_loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        base, config, settings = ORPOTrainer, ORPOConfig, {"beta": cfg.pref_beta}
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        # SimPO is CPO's simpo loss without the behaviour-cloning term (cpo_alpha 0), plus pref_ftx if asked.
        base, config = CPOTrainer, CPOConfig
        settings = {"loss_type": "simpo", "beta": cfg.pref_beta, "simpo_gamma": cfg.simpo_gamma,
                    "cpo_alpha": cfg.pref_ftx, "label_smoothing": cfg.dpo_label_smoothing}

    class EncodedPairsTrainer(base):
        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, list[int]]:
            return experimental_row(feature)

    settings.update(max_length=cfg.cutoff_len * 2, max_completion_length=None, remove_unused_columns=False,
                    dataset_num_proc=cfg.preprocessing_num_workers)
    return EncodedPairsTrainer, config, settings


def run_reference_free(cfg: TrainConfig, callbacks: list[Any] | None = None,
                       command: str | None = None) -> TrainResult:
    from tunelab.training.lifecycle import begin, load_trainable_model, preflight, prepare_data, train_and_save

    run = preflight(cfg)
    tokenizer, train_dataset, eval_dataset, report = prepare_data(cfg)
    from tunelab.training.arguments import training_arguments

    trainer_class, config_class, settings = _trainer(cfg)
    begin(run, report)
    model = load_trainable_model(cfg, tokenizer, run)
    trainer = trainer_class(
        model=model,
        args=training_arguments(cfg, config_class, **settings),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return train_and_save(trainer, cfg, run, tokenizer, report, command)
