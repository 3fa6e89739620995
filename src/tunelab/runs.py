"""The run directory: one folder that always tells the truth about one run.

``RunDir(cfg)`` only checks (output_dir usable, resume target found and of the same config) and plans what
the run will do to the folder, writing nothing, so a recipe can validate data and tokenizer first and
`train --dry-run` can say what would happen; ``start()`` then writes the config snapshot and data report,
after cleaning an earlier finished run when ``overwrite_output_dir`` asks for it. An unfinished run (checkpoints
but no final model: Ctrl-C, a preemption, a crash) is never deleted by re-running the same command: with the
same settings it is resumed, with other settings it is moved aside. A folder that holds only what a failed
start wrote (config and data report, nothing trained) never blocks the next start. No torch or transformers
import here: config mistakes are reported at once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import RESUME_MAY_CHANGE, TrainConfig
from tunelab.console import console
from tunelab.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
COMPLETIONS_FILE = "completions.jsonl"  # RL stages' sampled answers with their rewards (training/samples.py)
CONFIG_FILE = "config.yaml"
REPORT_FILE = "data_report.json"
CHECKPOINT_CONFIG = "tunelab_config.yaml"  # each checkpoint carries the config that wrote it
START_FILES = frozenset({CONFIG_FILE, REPORT_FILE})  # all that a start writes before the first step
# What only a finished run has at the top of its folder: the saved model or adapter, and the model card that is
# written after it (a run killed while saving has the first files, not the card).
FINAL_MODEL_FILES = ("adapter_config.json", "config.json", "model.safetensors", "model.safetensors.index.json",
                     "pytorch_model.bin")
CARD_FILE = "README.md"
# What a start writes while training before its first checkpoint: logs, nothing to resume from.
LOG_FILES = frozenset({METRICS_FILE, PLOT_FILE, COMPLETIONS_FILE, "runs", "eval_generations"})


def holds_final_model(output_dir: str | Path) -> bool:
    folder = Path(output_dir)
    return (folder / CARD_FILE).is_file() and any((folder / name).is_file() for name in FINAL_MODEL_FILES)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint-N folders (their trainer state written), in step order."""
    found = [p for p in Path(output_dir).glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def last_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (and the only process otherwise)."""
    return int(os.environ.get("RANK", "0")) == 0


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: saved -> now' for every setting that a resume may not change."""
    keys = [key for key in current if key not in RESUME_MAY_CHANGE]
    return [f"{key}: {saved.get(key)!r} -> {current[key]!r}" for key in keys
            if key in saved and saved[key] != current[key]]


def _saved_config(checkpoint: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The config a checkpoint was written with: its own copy, else its run folder's config.yaml."""
    for candidate in (checkpoint / CHECKPOINT_CONFIG, checkpoint.parent / CONFIG_FILE):
        if candidate.is_file():
            try:
                loaded = yaml.safe_load(candidate.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                continue
            if isinstance(loaded, dict):
                return loaded, candidate
    return None, None


def _unsafe_to_clean(path: Path) -> str | None:
    here, target = Path.cwd().resolve(), path.resolve()
    if target == here or target in here.parents or target == Path.home().resolve():
        return "it is the current folder, one of its parents or the home folder"
    if (target / ".git").exists():
        return "it holds a .git folder"
    return None


class RunDir:
    """Owns ``output_dir``. Only the main process writes; under a launcher the other ranks would
    otherwise find rank 0's fresh config.yaml and refuse the directory."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.path = Path(cfg.output_dir)
        self.metrics_path = self.path / METRICS_FILE
        self.is_main = is_main_process()
        self.resume: str | None = None
        self.resume_step = 0
        self.notes: list[str] = []  # what the run does to the folder, said by the run and by --dry-run
        self._clean = False
        self._aside: Path | None = None  # where an unfinished run of other settings is moved
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"output_dir '{self.path}' is a file; point output_dir at a folder")
        if cfg.resume_from_checkpoint:
            self._plan_resume(cfg.resume_from_checkpoint)
        if not self.resume and self.is_main:  # other ranks may already see rank 0's fresh files
            self._plan_fresh()

    # --- checks (nothing written) ---------------------------------------------------------------

    def _entries(self) -> list[Path]:
        return sorted(self.path.iterdir()) if self.path.is_dir() else []

    def _holds_a_run(self) -> bool:
        """More than what a start writes before its first checkpoint (config, data report, logs)."""
        return any(entry.name not in START_FILES | LOG_FILES for entry in self._entries())

    def _plan_fresh(self) -> None:
        entries = self._entries()
        if not entries:
            return
        if not self._holds_a_run():
            self.notes.append(f"{self.path} holds only the config and logs of an earlier start that saved no "
                              "checkpoint; starting over in it")
            self._clean = True
            return
        last = last_checkpoint(self.path)
        if last is not None and not holds_final_model(self.path):
            self._plan_unfinished(last)
            return
        if not self.cfg.overwrite_output_dir:
            raise ConfigError(f"output_dir '{self.path}' already holds a run; set overwrite_output_dir: true to "
                              "replace it, resume_from_checkpoint: last to continue it, or pick another output_dir")
        reason = _unsafe_to_clean(self.path)
        if reason:
            raise ConfigError(f"overwrite_output_dir: will not empty '{self.path}' because {reason}; "
                              "pick a dedicated output_dir")
        shown = ", ".join(entry.name for entry in entries[:6]) + (" ..." if len(entries) > 6 else "")
        self.notes.append(f"overwrite_output_dir: replacing the finished run in {self.path} ({shown})")
        self._clean = True

    def _plan_unfinished(self, last: Path) -> None:
        """An interrupted run: resumed when its settings are these, else kept aside (overwrite) or refused."""
        saved, _ = _saved_config(last)
        differences = config_differences(saved, self.cfg.model_dump(mode="json")) if saved is not None else []
        if 0 < self.cfg.max_steps < checkpoint_step(last):  # resuming would call a later checkpoint the end
            differences.append(f"max_steps {self.cfg.max_steps} is below its {last.name}")
        if saved is not None and not differences:
            self.resume, self.resume_step = str(last), checkpoint_step(last)
            self.notes.append(f"{self.path} holds an unfinished run with these settings: continuing it from "
                              f"{last.name} instead of starting over (delete the folder to start over)")
            return
        if not self.cfg.overwrite_output_dir:
            raise ConfigError(f"output_dir '{self.path}' holds an unfinished run (last checkpoint {last.name}) with "
                              f"other settings ({'; '.join(differences) or 'its config is missing'}); use another "
                              "output_dir, set overwrite_output_dir: true to keep that run aside and start anew, or "
                              "resume it with its own settings")
        reason = _unsafe_to_clean(self.path)
        if reason:
            raise ConfigError(f"output_dir '{self.path}' holds an unfinished run of other settings and will not be "
                              f"moved aside because {reason}; pick a dedicated output_dir")
        folder = self.path.resolve()
        self._aside = _free_name(folder.with_name(f"{folder.name}.unfinished-{checkpoint_step(last)}"))
        self.notes.append(f"{self.path} holds an unfinished run (last checkpoint {last.name}) trained with other "
                          f"settings ({'; '.join(differences) or 'its config is missing'}): moving it to "
                          f"{self._aside} and starting a new run")

    def _plan_resume(self, value: str) -> None:
        if value in ("last", "true", "True"):
            found = last_checkpoint(self.path)
            if found is None:
                if not self._holds_a_run():
                    self.notes.append(f"resume_from_checkpoint: last, but {self.path} holds no run yet; "
                                      "starting a new one")
                    return
                raise ConfigError(f"resume_from_checkpoint: last, but '{self.path}' has no complete checkpoint-* "
                                  "folder to resume from (checkpoints are written every save_steps)")
        else:
            found = Path(value)
            if not (found / "trainer_state.json").is_file():
                raise ConfigError(f"resume_from_checkpoint: '{value}' is not a checkpoint folder "
                                  "(no trainer_state.json in it)")
        saved, source = _saved_config(found)
        if saved is None:
            self.notes.append(f"{found} has no saved config to compare with; assuming the same settings")
        else:
            differences = config_differences(saved, self.cfg.model_dump(mode="json"))
            if differences:
                raise ConfigError(f"cannot resume {found}: it was trained with other settings ({source}): "
                                  + "; ".join(differences) + ". Resume with the same settings (only "
                                  "max_steps, num_train_epochs, save/logging/eval steps and reporting may change), "
                                  "or start a new run in another output_dir")
        self.resume, self.resume_step = str(found), checkpoint_step(found)

    # --- writes ---------------------------------------------------------------------------------

    def start(self, data_report: dict[str, Any] | None = None) -> None:
        """Write the run's config snapshot and data report (main process only)."""
        if not self.is_main:
            return
        if self._aside is not None:
            shutil.move(str(self.path), str(self._aside))
        if self._clean and self.path.is_dir():
            for entry in self._entries():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        for note in self.notes:
            console.print(f"[bold]run[/bold] {note}")
        (self.path / CONFIG_FILE).write_text(self.cfg.to_yaml(), encoding="utf-8")
        if data_report is not None:
            (self.path / REPORT_FILE).write_text(json.dumps(data_report, indent=2, ensure_ascii=False),
                                                 encoding="utf-8")
        if self.resume:
            console.print(f"[bold]run[/bold] resuming from {self.resume} (step {self.resume_step})")
            self._trim_metrics(self.resume_step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()

    def _trim_metrics(self, step: int) -> None:
        """Forget metrics logged after the checkpoint, so the resumed curve continues the saved one."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.metrics_path.write_text("".join(f"{line}\n" for line in kept))


def _free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the first that does not exist."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
