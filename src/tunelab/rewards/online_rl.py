"""The keys every online RL stage (grpo, rloo, ppo) reads: the rewards (``RewardSettings``), the system prompt,
sampling and completion logging; below the stages, so that none imports another. Only pydantic at the top."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from tunelab.config.concerns import SystemPromptKeys
from tunelab.rewards.settings import RewardSettings

if TYPE_CHECKING:
    from tunelab.config import TrainConfig


class OnlineRLKeys(RewardSettings, SystemPromptKeys):
    """What every RL stage reads: the rewards (RewardSettings), the prompts' system prompt, sampling, logging."""

    max_completion_length: int = Field(256, ge=1, description="Most tokens sampled per answer.")
    max_new_tokens: int | None = Field(None, ge=1, description="LLaMA-Factory's name for max_completion_length.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the answers.")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens (0 = no limit).")
    log_completions: bool = Field(True, description="Write sampled answers with their rewards to completions.jsonl "
                                                    "in the run folder every logging step.")
    num_completions_to_log: int = Field(4, ge=0, description="How many answers per logging step go to "
                                                             "completions.jsonl.")

    @model_validator(mode="after")
    def _checked(self) -> OnlineRLKeys:
        if self.max_new_tokens is not None:
            if "max_completion_length" in self.model_fields_set and self.max_completion_length != self.max_new_tokens:
                raise ValueError(f"max_new_tokens {self.max_new_tokens} and max_completion_length "
                                 f"{self.max_completion_length} are the same setting; give one")
            self.max_completion_length = self.max_new_tokens
        from tunelab.rewards.registry import check_reward_specs

        check_reward_specs(self.reward_funcs, self.reward_weights, self.reward_model, check_model_path=False)
        return self


def check_rewards(cfg: TrainConfig) -> None:
    """The reward list once more, now with the reward model's folder (at config time it may not exist yet)."""
    from tunelab.rewards.registry import check_reward_specs

    check_reward_specs(cfg.reward_funcs, cfg.reward_weights, cfg.reward_model)
