"""Trainer callbacks every stage shares: metrics.jsonl, self-describing checkpoints, and progress.

Progress replaces transformers' own tqdm bar and its raw ``{'loss': '1.23', ...}`` dict lines: a bar with
step N/total, elapsed, remaining, loss and learning rate in a terminal; one readable line per logging
step when output goes to a file or a CI log, a heartbeat line when nothing was printed for
``HEARTBEAT_SECONDS``, and the last step's line at the end.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunelab.config import TrainConfig
from tunelab.console import console
from tunelab.metrics.text import TEXT_METRICS
from tunelab.models.saving import record_base_model
from tunelab.runs import CHECKPOINT_CONFIG
from tunelab.signals import STOP

# The end-of-training summary (mean train loss, runtime): not a step of the curve. Per-step logs also carry
# the session's train_runtime and speeds, so train_loss alone marks the summary.
_SUMMARY_KEYS = ("train_loss",)
HEARTBEAT_SECONDS = 30.0  # a log file or CI log hears from a run at least this often


def _numbers(logs: dict[str, Any]) -> dict[str, float]:
    return {key: value for key, value in logs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class MetricsCallback(TrainerCallback):
    """One JSON object per logging step in metrics.jsonl: every number the trainer logs (loss, learning
    rate, grad norm, eval and stage measures such as rewards/chosen), plus non-padding tokens/s."""

    def __init__(self, path: Path):
        self.path = path
        self._last: tuple[float, int] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = (time.perf_counter(), state.num_input_tokens_seen)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or any(key in logs for key in _SUMMARY_KEYS):
            return
        values = _numbers(logs)
        values.pop("epoch", None)
        if not values:
            return
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **values}
        if "loss" in values:
            now, tokens = time.perf_counter(), int(logs.get("num_input_tokens_seen", state.num_input_tokens_seen))
            if self._last is not None and now > self._last[0]:
                record["tokens_per_second"] = round((tokens - self._last[1]) / (now - self._last[0]), 1)
            self._last = (now, tokens)
            record["tokens_seen"] = tokens
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class CheckpointCallback(TrainerCallback):
    """Each checkpoint carries the config that wrote it (so a resume can check it is the same run) and
    names its base model portably."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / CHECKPOINT_CONFIG).write_text(self.cfg.to_yaml(), encoding="utf-8")
            record_base_model(folder, self.cfg.model_name_or_path)


class GracefulStop(TrainerCallback):
    """After a SIGTERM (tunelab/signals.py), end training at the end of the current step with a checkpoint of it,
    so a preempted run keeps every finished step and the same command resumes it. Under several processes the
    ranks agree (any rank's signal stops all of them at the same step), so none waits in a collective alone."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if _any_rank(STOP.requested.is_set(), args.device):
            STOP.requested.set()
            control.should_save = True
            control.should_training_stop = True


def _any_rank(flag: bool, device: Any) -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _format_value(key: str, value: float) -> str:
    if key in ("learning_rate",) or (value and abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


_SHORT = {"learning_rate": "lr", "rewards/accuracies": "reward_acc", "rewards/margins": "reward_margin"}
# What a progress line shows; metrics.jsonl keeps every number.
_SHOWN = ("loss", "grad_norm", "learning_rate", "mean_token_accuracy", "rewards/accuracies", "rewards/margins",
          "accuracy", "margin", "kl", "reward")


def _shown(key: str) -> bool:
    return key.removeprefix("eval_") in _SHOWN or key.removeprefix("eval_") in TEXT_METRICS


class ProgressCallback(TrainerCallback):
    """Step N/total with elapsed and remaining time, loss and learning rate."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._started = 0.0
        self._first_step = 0
        self._state: Any = None  # the trainer's state, read by the heartbeat
        self._printed_at = 0.0
        self._printed_step = -1
        self._stop = threading.Event()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self._started, self._first_step, self._state = time.perf_counter(), state.global_step, state
        self._printed_at = time.perf_counter()
        resumed = f" (resuming at step {state.global_step})" if state.global_step else ""
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                 console=console, transient=False)
            self._task = self._bar.add_task("train", total=state.max_steps, completed=state.global_step,
                                            status="")
            self._bar.start()
        else:  # a log, not a terminal: a line at least every HEARTBEAT_SECONDS, even inside a long step
            self._stop.clear()
            threading.Thread(target=self._beat, name="tunelab-heartbeat", daemon=True).start()
        console.print(f"[bold]train[/bold] {state.max_steps} optimizer steps{resumed}")

    def _beat(self) -> None:
        while not self._stop.wait(min(5.0, HEARTBEAT_SECONDS)):
            self.heartbeat(time.perf_counter())

    def heartbeat(self, now: float) -> None:
        """Say where the run is when nothing was printed for HEARTBEAT_SECONDS."""
        if self._state is not None and self._bar is None and now - self._printed_at >= HEARTBEAT_SECONDS:
            self._print(self._position(self._state) + "  (working)")

    def _position(self, state: Any) -> str:
        total = max(state.max_steps, 1)
        remaining = self._remaining(state)
        timing = f"elapsed {_clock(time.perf_counter() - self._started)}" + (
            f"  remaining {_clock(remaining)}" if remaining is not None else "")
        return f"step {state.global_step}/{total} ({100 * state.global_step // total}%)  {timing}"

    def _print(self, line: str, *, step: int | None = None) -> None:
        (self._bar.console if self._bar is not None else console).print(line, markup=False, highlight=False)
        self._printed_at = time.perf_counter()
        if step is not None:  # a step's own line (not a heartbeat): the end need not repeat it
            self._printed_step = step

    def _remaining(self, state: Any) -> float | None:
        done = state.global_step - self._first_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._started) / done * (state.max_steps - state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        values = {key: value for key, value in _numbers(logs).items() if _shown(key)}
        if any(key in logs for key in _SUMMARY_KEYS):
            return
        shown = "  ".join(f"{_SHORT.get(key, key)} {_format_value(key, value)}" for key, value in values.items())
        if self._bar is not None and "loss" in values:
            self._bar.update(self._task, status=shown)
            return
        step, timing = self._position(state).split("  ", 1)
        prefix = "eval " if any(key.startswith("eval_") for key in values) else ""
        self._print(f"{prefix}{step}  {shown}  {timing}", step=state.global_step)

    def note(self, text: str) -> None:
        """A phase inside a long step (PPO sampling its rollout, scoring it), shown in the bar's status."""
        if self._bar is not None:
            self._bar.update(self._task, status=text)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=state.global_step)
        elif state.is_world_process_zero and self._printed_step != state.global_step:
            self._print(self._position(state))  # the last step, which logging_steps may not have reached
        self.close()

    def close(self) -> None:
        """Stop the live bar and the heartbeat (also after an interrupt, when on_train_end never comes)."""
        self._stop.set()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
