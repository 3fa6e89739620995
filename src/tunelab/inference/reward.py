"""Scores from a reward model trained by stage ``rm``: one float per (prompt, response), the Python API over the
engine's score capability (``HFEngine.score``), as ``Predictor`` is over its generation. The RL stages use it as
a reward; `tunelab score` and `tunelab serve`'s /v1/score use the engine underneath."""

from __future__ import annotations

from typing import Any

from tunelab.inference.engines.base import OverEngine
from tunelab.inference.engines.hf import HFEngine
from tunelab.inference.loading import LoadOptions


class RewardScorer(OverEngine):
    """A reward model (a full ``rm`` output folder, or a base model plus an ``rm`` adapter)."""

    def __init__(self, model: str | None = None, adapter: str | None = None, template: str | None = None, *,
                 device: str | None = None, batch_size: int = 8, options: LoadOptions | None = None) -> None:
        self.batch_size = batch_size
        self.engine = HFEngine(model, {"reward": adapter} if adapter else None, template, device=device,
                               options=options, head="score")

    def sequence(self, prompt: str | list[dict], response: str | list[dict]) -> list[int]:
        """The token ids the score reads (the pair as stage rm encoded it in training)."""
        return self.engine.scored_ids(prompt, response)

    def score_batch(self, prompts: list[Any], responses: list[Any]) -> list[float]:
        """One score per (prompt, response); prompts and responses are text or message lists."""
        return self.engine.score(prompts, responses, batch_size=self.batch_size)

    def __call__(self, prompt: str | list[dict], response: str | list[dict]) -> float:
        return self.score_batch([prompt], [response])[0]
