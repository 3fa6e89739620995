"""The reward keys of the RL stages (and of ``tunelab rewards score``): which functions, their weights, the knobs.

Only pydantic is imported here: the config is validated before any model loads. The RL stages subclass
``RewardSettings``, so every name is a flat user-facing YAML key; each carries a ``reward_``, ``length_``,
``repetition_`` or ``similarity_`` prefix so that it cannot collide with another stage's key.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _comma_list(value: Any) -> Any:
    """YAML lists pass through; ``"a, b"`` (a command-line override) becomes ``["a", "b"]``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RewardSettings(BaseModel):
    """What the reward functions read (see docs/rewards.md for every built-in's definition)."""

    model_config = ConfigDict(extra="forbid")

    reward_funcs: list[str] = Field(
        [], description="Reward functions by name (`tunelab rewards list`: correctness, int, "
        "strict_format, soft_format, xmlcount, accuracy, length, repetition, similarity, reward_model) or your "
        "own as path/to/file.py:function or module:function; a list or comma-separated.")
    reward_weights: list[float] | None = Field(
        None, description="One weight per reward function, in order (the reward model last when it is added by "
        "reward_model alone); default 1.0 each. The training reward is the weighted sum.")
    reward_model: str | None = Field(
        None, description="Folder of a model trained by stage rm (a full output folder or its LoRA adapter "
        "folder); its score is the reward `reward_model`, added to reward_funcs when not listed.")
    length_target_chars: int = Field(
        1000, ge=1, description="Reward `length`: the completion length in characters that scores 1.0 "
        "(1 - |length - target| / target, floored at 0).")
    repetition_ngram: int = Field(
        3, ge=1, description="Reward `repetition`: n of the word n-grams whose repeats are penalised.")
    similarity_model: str | None = Field(
        None, description="Reward `similarity`: a local sentence-embedding model folder (default: the offline "
        "all-MiniLM-L6-v2 of pip extra tunelab[rl]).")
    similarity_cosine_weight: float = Field(
        0.7, ge=0, le=1, description="Reward `similarity`: weight of the embedding cosine; the word Jaccard "
        "overlap gets 1 minus this.")
    similarity_bad_weight: float = Field(
        1.0, ge=0, description="Reward `similarity`: how much the closest bad answer (column bad_answers) "
        "subtracts.")

    @field_validator("reward_funcs", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("reward_weights", mode="before")
    @classmethod
    def _split_weights(cls, value: Any) -> Any:
        return _comma_list(value)
