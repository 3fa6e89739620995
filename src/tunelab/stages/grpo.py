"""Group-relative RL (stages ``grpo`` and ``rloo``) on TRL's GRPOTrainer and RLOOTrainer, with named rewards.

Both sample ``num_generations`` answers per prompt and learn from how each answer's reward compares with the
others of its group (GRPO: the group's mean and spread; RLOO: the mean of the other answers), so no value model
is needed. The rows are RL prompts with their extra columns (a GSM8K ``answer``, a LIMO gold answer), which
TRL hands to the reward functions (``tunelab.rewards``: built-ins by name, a user's ``file.py:function``, or an
``rm``-stage model). Reads top to bottom: check, read the prompts, load the rewards, start the run, load the
policy, train through the shared lifecycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tunelab.rewards.online_rl import OnlineRLKeys, check_rewards
from tunelab.rewards.settings import RewardSettings
from tunelab.stage_registry import Stage

if TYPE_CHECKING:
    from tunelab.config import TrainConfig
    from tunelab.data.pipeline import DataReport
    from tunelab.training.lifecycle import TrainResult

# The loss aggregations of the installed TRL's GRPOTrainer (loss_type).
GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


class GroupKeys(OnlineRLKeys):
    num_generations: int = Field(8, ge=2, description="Answers sampled per prompt, compared with each other.")
    beta: float = Field(0.04, ge=0, description="KL coefficient toward the reference (0 = no reference pass; "
                                                "TRL's RLOO defaults to 0.05, its GRPO to 0).")
    epsilon: float = Field(0.2, gt=0, description="Clip range of the probability ratio (lower side, and upper "
                                                  "unless epsilon_high is set).")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO's clip-higher, e.g. 0.28).")
    num_iterations: int = Field(1, ge=1, description="Updates per batch of answers (mu); above 1 the ratio clips.")
    mask_truncated_completions: bool = Field(False, description="Leave answers cut at max_completion_length out of "
                                                                "the loss (DAPO).")
    use_vllm: bool = Field(False, description="Sample with vLLM (GPU; pip install vllm).")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM inside the training processes; server: a `trl vllm-serve` process.")
    vllm_server_host: str = Field("0.0.0.0", description="vllm_mode server: host of `trl vllm-serve`.")
    vllm_server_port: int = Field(8000, description="vllm_mode server: port of `trl vllm-serve`.")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vllm_mode colocate: GPU memory share "
                                                                           "vLLM may take.")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vllm_mode colocate: GPUs per vLLM engine.")


class GRPOKeys(GroupKeys):
    loss_type: Literal[GRPO_LOSSES] = Field("dapo", description="Loss aggregation: grpo (per answer), dr_grpo, "
                                            "dapo (per token, TRL's default), bnpo, cispo, sapo, luspo, vespo.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the reward spread of the group, of the batch, or not (Dr. GRPO).")
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="Probability ratio per token, or per answer (GSPO).")


class RLOOKeys(GroupKeys):
    normalize_advantages: bool = Field(False, description="Scale RLOO's advantages to unit variance per batch.")


STAGES = [
    Stage("grpo", "rl", "group relative policy optimisation: several answers per prompt scored by named rewards",
          "tunelab.stages.grpo:run_grpo", GRPOKeys, check="tunelab.stages.grpo:check_group_stage"),
    Stage("rloo", "rl", "REINFORCE leave-one-out: each answer's reward against the mean of the others",
          "tunelab.stages.grpo:run_rloo", RLOOKeys, check="tunelab.stages.grpo:check_group_stage"),
]


def check_group_stage(cfg: TrainConfig, data: DataReport | None = None) -> None:
    if data is None:
        check_group_batch(cfg)
        check_method(cfg)
        check_vllm(cfg)
        check_rewards(cfg)


def check_group_batch(cfg: TrainConfig) -> None:
    """TRL compares the num_generations answers of a prompt within one generation batch (completions per
    device x gradient accumulation steps): it must hold whole groups."""
    import os

    from tunelab.errors import ConfigError

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * processes
    if batch % cfg.num_generations:
        raise ConfigError(f"stage {cfg.stage}: per_device_train_batch_size x gradient_accumulation_steps x "
                          f"{processes} process(es) = {batch} answers per generation batch, not a multiple of "
                          f"num_generations {cfg.num_generations}; a prompt's answers are compared within one "
                          "generation batch")


def check_method(cfg: TrainConfig) -> None:
    """TRL samples through the PEFT model's own generate, which drifts for prompt-learning adapters under
    transformers 5 (see models/generation.py): refused rather than trained on wrong samples."""
    from tunelab.errors import ConfigError
    from tunelab.method_registry import method, method_names

    if method(cfg.finetuning_type).is_prompt_learning:
        raise ConfigError(f"stage {cfg.stage} with finetuning_type {cfg.finetuning_type}: TRL would sample through "
                          "PEFT's generate, which is wrong for prompt-learning adapters under transformers 5; use "
                          f"{', '.join(method_names(lambda m: not m.is_prompt_learning))}")


def check_vllm(cfg: TrainConfig) -> None:
    import importlib.util

    from tunelab.errors import ConfigError

    if cfg.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ConfigError("use_vllm: vLLM is not installed (pip install vllm, on a machine with a GPU)")


def sampling_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The TRL settings every group RL stage shares."""
    settings = {key: getattr(cfg, key) for key in (
        "num_generations", "max_completion_length", "temperature", "top_p", "top_k", "beta", "epsilon",
        "epsilon_high", "num_iterations", "mask_truncated_completions", "reward_weights", "use_vllm", "vllm_mode",
        "vllm_server_host", "vllm_server_port", "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size")}
    settings.update(remove_unused_columns=False, log_completions=False)
    return settings


def run_grpo(cfg: TrainConfig, callbacks: list[Any] | None = None, command: str | None = None) -> TrainResult:
    from trl import GRPOConfig, GRPOTrainer

    extra = {key: getattr(cfg, key) for key in ("loss_type", "scale_rewards", "importance_sampling_level")}
    return run_group(cfg, GRPOTrainer, GRPOConfig, extra, callbacks, command)


def run_rloo(cfg: TrainConfig, callbacks: list[Any] | None = None, command: str | None = None) -> TrainResult:
    from trl import RLOOConfig, RLOOTrainer

    return run_group(cfg, RLOOTrainer, RLOOConfig, {"normalize_advantages": cfg.normalize_advantages}, callbacks,
                     command)


def run_group(cfg: TrainConfig, trainer_class: type, config_class: type, extra: dict[str, Any],
              callbacks: list[Any] | None, command: str | None) -> TrainResult:
    from tunelab.training.lifecycle import begin, model_for_trainer, preflight, prepare_data, train_and_save

    run = preflight(cfg)
    tokenizer, train_dataset, eval_dataset, report = prepare_data(cfg)
    from tunelab.rewards.registry import load_rewards
    from tunelab.training.arguments import training_arguments
    from tunelab.training.samples import SampleLog

    rewards = load_rewards(cfg.reward_funcs, RewardSettings.model_validate(_reward_keys(cfg)))
    begin(run, report)
    # A new LoRA adapter goes to TRL as a config: with beta > 0 the reference is the base with the adapter
    # disabled (no copy). Full and freeze tuning get a frozen copy of the base, loaded by TRL.
    model, peft_config = model_for_trainer(cfg, tokenizer, run)
    samples = SampleLog(cfg.output_dir, cfg.logging_steps, cfg.num_completions_to_log, cfg.log_completions)
    trainer = trainer_class(
        model=model,
        reward_funcs=samples.wrap(rewards, cfg.reward_weights, is_main=run.is_main,
                                  steps_per_batch=cfg.num_iterations),
        args=training_arguments(cfg, config_class, **sampling_settings(cfg), **extra),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft_config,
    )
    samples.training = lambda: trainer.model.training
    if peft_config is None and getattr(trainer, "ref_model", None) is not None:
        # TRL loads its own reference from the model's path, without tunelab's resized embeddings (a template's
        # added tokens), revision or cache folder: the reference is tunelab's frozen copy instead
        from trl.trainer.utils import add_fused_lm_head

        from tunelab.training.preference import reference_model

        reference = reference_model(cfg, tokenizer)
        # the per-token log-probabilities head TRL put on its own reference
        add_fused_lm_head(reference, temperature=trainer.temperature,
                          cast_lm_head_to_fp32=getattr(trainer.args, "cast_lm_head_to_fp32", False))
        trainer.ref_model = None
        trainer.ref_model = trainer.accelerator.prepare_model(reference, evaluation_mode=True)
    from tunelab.training.token_loss import supports_padding_free

    if supports_padding_free(model, cfg):  # prompts and completions without their padding, one row per batch
        from tunelab.training.padding_free import pack_trainer_forwards

        pack_trainer_forwards(trainer)
    return train_and_save(trainer, cfg, run, tokenizer, report, command)


def _reward_keys(cfg: TrainConfig) -> dict[str, Any]:
    return {key: getattr(cfg, key) for key in RewardSettings.model_fields}
