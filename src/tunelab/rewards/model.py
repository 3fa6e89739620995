"""``reward_model``: the score of a model trained by stage ``rm`` for (prompt, completion).

The path in ``reward_model`` is a full ``rm`` output folder, or a LoRA ``rm`` adapter folder (it holds
adapter_config.json), which loads on the base model it records. Scoring is ``inference.reward.RewardScorer``,
so the sequence scored is the one the model was trained on. The value is the raw score (unbounded).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import RewardError
from tunelab.models.sources import ADAPTER_FILE
from tunelab.rewards.settings import RewardSettings


def is_adapter(path: str) -> bool:
    return (Path(path).expanduser() / ADAPTER_FILE).is_file()


def load_scorer(path: str) -> Any:
    """A RewardScorer for a full rm model folder or an rm adapter folder."""
    import os

    import torch

    from tunelab.inference.reward import RewardScorer

    # each process of a multi-GPU run scores on its own GPU (cuda alone would mean cuda:0 before training starts)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    return RewardScorer(None, adapter=path, device=device) if is_adapter(path) else RewardScorer(path, device=device)


def reward_model(settings: RewardSettings) -> Callable[..., list[float]]:
    """The ``reward_model`` reward; loads the model now, so that a bad one fails before training."""
    if settings.reward_model is None:  # check_reward_specs reports this first; a direct caller gets it too
        raise RewardError("reward 'reward_model' needs reward_model: the folder of a model trained by stage rm")
    scorer = load_scorer(settings.reward_model)

    def reward(prompts: list[Any] | None = None, completions: list[Any] | None = None, **_: Any) -> list[float]:
        completions = list(completions or [])
        prompts = list(prompts) if prompts is not None else [None] * len(completions)
        if any(prompt is None for prompt in prompts):
            raise RewardError("the reward model scores (prompt, completion): the rows need a 'prompt'")
        return scorer.score_batch(prompts, completions)

    return reward
