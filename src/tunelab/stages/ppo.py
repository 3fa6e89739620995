"""Proximal policy optimisation (stage ``ppo``): RLHF with a reward model from stage ``rm``, reward functions,
or both, on tunelab's own PPO trainer (``training/ppo.py``; TRL >= 1.13 has none).

Reads top to bottom: check, read the prompts, load the rewards, start the run, load the policy (the value head
is added by the trainer), pick the reference (the base with the adapter disabled under LoRA, else a frozen
copy or ``ref_model``), train through the shared lifecycle. Key names follow LLaMA-Factory's where it has them
(``ppo_epochs``, ``ppo_buffer_size``, ``ppo_target``, ``ppo_score_norm``, ``ppo_whiten_rewards``,
``reward_model``, ``max_new_tokens``, ``top_k``, ``top_p``), so its PPO YAML runs as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from tunelab.rewards.online_rl import OnlineRLKeys, check_rewards
from tunelab.stage_registry import Stage

if TYPE_CHECKING:
    from tunelab.config import TrainConfig
    from tunelab.data.pipeline import DataReport
    from tunelab.training.lifecycle import TrainResult


class PPOKeys(OnlineRLKeys):
    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout (its answers are reused this often).")
    ppo_buffer_size: int = Field(1, ge=1, description="Rollout size in optimizer steps: each rollout holds "
                                 "per_device_train_batch_size x gradient_accumulation_steps x ppo_buffer_size prompts.")
    ppo_target: float | None = Field(6.0, gt=0, description="Target KL (nats per answer) of the adaptive KL "
                                     "coefficient; none keeps ppo_kl_coef fixed.")
    ppo_kl_coef: float = Field(0.2, ge=0, description="Initial KL penalty coefficient per token.")
    ppo_score_norm: bool = Field(False, description="Normalise scores by their running mean and standard deviation.")
    ppo_whiten_rewards: bool = Field(False, description="Scale the per-token rewards to unit variance per rollout.")
    ppo_cliprange: float = Field(0.2, gt=0, description="Clip range of the policy's probability ratio.")
    ppo_cliprange_value: float = Field(0.2, gt=0, description="Clip range of the value update around the rollout's.")
    ppo_vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ppo_gamma: float = Field(1.0, gt=0, le=1, description="Discount per token.")
    ppo_lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (bias/variance of the advantages).")
    ref_model: str | None = Field(None, description="Reference model folder or id (default: the base model; "
                                                    "under LoRA the base with the adapter disabled).")


STAGES = [Stage("ppo", "rl", "proximal policy optimisation with a value head, a KL penalty to the reference and a "
                "reward model and/or reward functions", "tunelab.stages.ppo:run_ppo", PPOKeys,
                check="tunelab.stages.ppo:check_ppo")]


def ppo_settings(cfg: TrainConfig) -> Any:
    from tunelab.training.ppo import PPOSettings

    return PPOSettings(ppo_epochs=cfg.ppo_epochs, ppo_buffer_size=cfg.ppo_buffer_size, kl_coef=cfg.ppo_kl_coef,
                       kl_target=cfg.ppo_target, clip_range=cfg.ppo_cliprange, clip_range_value=cfg.ppo_cliprange_value,
                       value_loss_coef=cfg.ppo_vf_coef, gamma=cfg.ppo_gamma, lam=cfg.ppo_lam,
                       score_norm=cfg.ppo_score_norm, whiten_rewards=cfg.ppo_whiten_rewards,
                       max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
                       top_k=cfg.top_k)


class WeightedScore:
    """The rewards as PPO's one score per answer: each function's values and their weighted total."""

    def __init__(self, functions: list[Any], weights: list[float] | None) -> None:
        self.functions, self.weights = functions, weights

    def __call__(self, prompts: list[Any], completions: list[Any],
                 columns: dict[str, list[Any]]) -> tuple[dict[str, list[float]], list[float]]:
        from tunelab.rewards.registry import score_rewards

        return score_rewards(self.functions, self.weights, prompts, completions, columns)


def check_ppo(cfg: TrainConfig, data: DataReport | None = None) -> None:
    from tunelab.errors import ConfigError
    from tunelab.training.preference import check_reference

    if data is not None:
        check_rollout_size(cfg, data.train_samples)
        return
    if cfg.eval_strategy != "no":
        raise ConfigError("stage ppo does not evaluate during training; set eval_strategy: no and score the result "
                          "with `tunelab rewards score` or `tunelab predict`")
    from tunelab.method_registry import method, method_names

    if method(cfg.finetuning_type).is_prompt_learning:
        raise ConfigError(f"stage ppo with finetuning_type {cfg.finetuning_type}: the value head and the per-token "
                          "log-probabilities are not checked for virtual tokens yet; use "
                          f"{', '.join(method_names(lambda m: not m.is_prompt_learning))}")
    if cfg.deepspeed or cfg.fsdp:
        raise ConfigError("stage ppo runs data-parallel (accelerate launch / torchrun, one model copy per GPU); "
                          "DeepSpeed and FSDP sharding are not supported by its generation and checkpoints yet")
    check_rewards(cfg)
    check_reference(cfg)


def run_ppo(cfg: TrainConfig, callbacks: list[Any] | None = None, command: str | None = None) -> TrainResult:
    from tunelab.training.lifecycle import begin, load_trainable_model, preflight, prepare_data, train_and_save

    run = preflight(cfg)
    tokenizer, train_dataset, _, report = prepare_data(cfg)
    from tunelab.inference.predictor import stop_token_ids
    from tunelab.rewards.registry import load_rewards
    from tunelab.rewards.settings import RewardSettings
    from tunelab.training.arguments import training_arguments
    from tunelab.training.ppo import PPOTrainer, PromptCollator
    from tunelab.training.preference import reference_model
    from tunelab.training.samples import SampleLog

    rewards = load_rewards(cfg.reward_funcs, RewardSettings.model_validate(
        {key: getattr(cfg, key) for key in RewardSettings.model_fields}))
    train_dataset = train_dataset.map(lambda row: {"prompt_ids": _prompt_ids(row, tokenizer)})
    begin(run, report)
    model = load_trainable_model(cfg, tokenizer, run)
    trainer = PPOTrainer(
        model=model,
        ref_model=reference_model(cfg, tokenizer),  # None under LoRA: the base with the adapter disabled
        score=WeightedScore(rewards, cfg.reward_weights),
        settings=ppo_settings(cfg),
        stop_token_ids=stop_token_ids(tokenizer, model),
        sample_log=SampleLog(cfg.output_dir, cfg.logging_steps, cfg.num_completions_to_log, cfg.log_completions),
        args=training_arguments(cfg, _training_arguments_class(), remove_unused_columns=False),
        data_collator=PromptCollator(tokenizer.pad_token_id),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return train_and_save(trainer, cfg, run, tokenizer, report, command)


def check_rollout_size(cfg: TrainConfig, prompts: int) -> None:
    """A rollout takes batch x accumulation x ppo_buffer_size prompts per process; fewer prompts than one rollout
    would train nothing."""
    import os

    from tunelab.errors import ConfigError

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    rollout = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * cfg.ppo_buffer_size * processes
    if prompts < rollout:
        raise ConfigError(f"stage ppo: {prompts} train prompts, fewer than one rollout of {rollout} "
                          "(per_device_train_batch_size x gradient_accumulation_steps x ppo_buffer_size x processes); "
                          "add prompts or lower those settings")


def _prompt_ids(row: dict[str, Any], tokenizer: Any) -> list[int]:
    from tunelab.data.encoders import encode_prompt

    return encode_prompt(row, tokenizer).input_ids


def _training_arguments_class() -> type:
    from transformers import TrainingArguments

    return TrainingArguments
