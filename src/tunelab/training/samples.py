"""What the policy writes during RL: a few sampled completions with their rewards, kept in the run folder.

Numbers say whether the reward rises; only the text says whether the policy learned the task or a way around
the reward. Every logging step, ``completions.jsonl`` in the run folder gets a few (prompt, completion, each
reward, weighted total) spread over that step's batch. TRL's trainers call each reward function on the same batch
in turn, so ``SampleLog.wrap`` collects the values function by function and writes once the last one ran.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tunelab.data.completions import completion_text
from tunelab.runs import COMPLETIONS_FILE


class SampleLog:
    def __init__(self, output_dir: str | Path, every_steps: int, count: int, enabled: bool = True) -> None:
        self.path = Path(output_dir) / COMPLETIONS_FILE
        self.every_steps = max(every_steps, 1)
        self.count = count
        self.enabled = enabled and count > 0
        self._last_step: int | None = None
        self.training: Callable[[], bool] = lambda: True  # set to the trainer's mode: eval batches are not logged

    def due(self, first: int, steps: int = 1) -> int | None:
        """The logging step (or the first step) among the ``steps`` steps that one batch of answers trains, from
        ``first`` on (PPO's rollout, GRPO's generation batch reused for num_iterations), if any."""
        if not self.enabled:
            return None
        for step in range(first, first + steps):
            if step != self._last_step and (step <= 1 or step % self.every_steps == 0):
                return step
        return None

    def record(self, first: int, prompts: Sequence[Any], completions: Sequence[Any],
               rewards: dict[str, Sequence[float]], weights: Sequence[float] | None = None, steps: int = 1) -> None:
        step = self.due(first, steps)
        if step is None:
            return
        self._last_step = step
        names = list(rewards)
        weights = list(weights) if weights else [1.0] * len(names)
        with self.path.open("a", encoding="utf-8") as handle:
            stride = max(1, len(completions) // self.count)  # spread over the batch: GRPO's groups share a prompt
            for index in range(0, len(completions), stride)[:self.count]:
                values = {name: float(rewards[name][index]) for name in names}
                total = sum(weight * values[name] for weight, name in zip(weights, names, strict=True)
                            if not math.isnan(values[name]))  # None (no reward for this sample) counts as 0, as in TRL
                handle.write(json.dumps({"step": step, "prompt": prompts[index],
                                         "completion": completion_text(completions[index]),
                                         "rewards": values, "total": total}, ensure_ascii=False) + "\n")

    def wrap(self, functions: list[Callable[..., list[float]]], weights: Sequence[float] | None,
             is_main: bool = True, steps_per_batch: int = 1) -> list[Callable[..., list[float]]]:
        """The reward functions, unchanged in name and result, recording one batch per logging step; a batch of
        answers trains ``steps_per_batch`` optimizer steps. Evaluation batches (no training state) are not
        recorded."""
        if not self.enabled or not is_main:
            return functions
        batch: dict[str, list[float]] = {}
        last = len(functions) - 1

        def recording(position: int, function: Callable[..., list[float]]) -> Callable[..., list[float]]:
            @functools.wraps(function)
            def call(*args: Any, **kwargs: Any) -> list[float]:
                values = function(*args, **kwargs)
                batch[function.__name__] = list(values)
                state = kwargs.get("trainer_state")
                if position == last and state is not None and self.training():
                    self.record(state.global_step + 1, kwargs.get("prompts") or [], kwargs.get("completions") or [],
                                dict(batch), weights, steps=steps_per_batch)
                if position == last:
                    batch.clear()
                return values
            return call

        return [recording(position, function) for position, function in enumerate(functions)]
