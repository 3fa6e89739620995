"""The run directory: config snapshot, metrics.jsonl, loss plot, checkpoints and resume."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunelab.config import TrainConfig
from tunelab.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
CONFIG_FILE = "config.yaml"


def last_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[-1]), default=None)


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (and the only process otherwise)."""
    return int(os.environ.get("RANK", "0")) == 0


class RunDir:
    """Owns ``output_dir``: checks it before any model loads, snapshots config, resolves resume.

    Only the main process checks and writes; under a launcher the other ranks would otherwise find
    rank 0's fresh config.yaml and refuse the directory.
    """

    def __init__(self, cfg: TrainConfig):
        self.path = Path(cfg.output_dir)
        self.metrics_path = self.path / METRICS_FILE
        self.is_main = is_main_process()
        self.resume: str | None = None
        if cfg.resume_from_checkpoint:
            self.resume = str(self._resolve_resume(cfg.resume_from_checkpoint))
        if not self.is_main:
            return
        if not cfg.resume_from_checkpoint and self.path.is_dir() and any(self.path.iterdir()) \
                and not cfg.overwrite_output_dir:
            raise ConfigError(f"output_dir '{self.path}' already holds files; set overwrite_output_dir: true, "
                              "resume with resume_from_checkpoint: last, or pick another output_dir")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
        if self.resume:
            self._trim_metrics(self._checkpoint_step(Path(self.resume)))
        elif self.metrics_path.exists():
            self.metrics_path.unlink()

    def _resolve_resume(self, value: str) -> Path:
        if value in ("last", "true", "True"):
            found = last_checkpoint(self.path)
            if found is None:
                raise ConfigError(f"resume_from_checkpoint: last, but '{self.path}' has no checkpoint-* folder")
            return found
        path = Path(value)
        if not (path / "trainer_state.json").is_file():
            raise ConfigError(f"resume_from_checkpoint: '{value}' is not a checkpoint folder "
                              "(no trainer_state.json in it)")
        return path

    @staticmethod
    def _checkpoint_step(checkpoint: Path) -> int:
        return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])

    def _trim_metrics(self, step: int) -> None:
        """Forget metrics logged after the checkpoint, so the resumed curve continues the saved one."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.metrics_path.write_text("".join(f"{line}\n" for line in kept))


class MetricsCallback(TrainerCallback):
    """Appends one JSON object per logging step to metrics.jsonl (with non-padding tokens/s)."""

    def __init__(self, path: Path):
        self.path = path
        self._last: tuple[float, int] | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            now, tokens = time.perf_counter(), int(logs.get("num_input_tokens_seen", state.num_input_tokens_seen))
            rate = None
            if self._last is not None and now > self._last[0]:
                rate = round((tokens - self._last[1]) / (now - self._last[0]), 1)
            self._last = (now, tokens)
            record.update(loss=logs["loss"], learning_rate=logs.get("learning_rate"),
                          grad_norm=logs.get("grad_norm"), tokens_per_second=rate, tokens_seen=tokens)
        elif "eval_loss" in logs:
            record["eval_loss"] = logs["eval_loss"]
        else:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = (time.perf_counter(), state.num_input_tokens_seen)


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(output_dir: str | Path) -> Path | None:
    """Loss (and eval loss) against step as a PNG; None when nothing was logged."""
    records = read_metrics(output_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evaluation = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(*zip(*train, strict=True), label="train loss")
    if evaluation:
        axes.plot(*zip(*evaluation, strict=True), marker="o", label="eval loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(Path(output_dir).name)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(output_dir) / PLOT_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
