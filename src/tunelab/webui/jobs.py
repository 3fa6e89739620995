"""Trainings started from the page: each one is `tunelab train` in its own process, so closing the browser does not
stop it and a crash of the run does not take the page down; and the runs a folder holds, with their state and
curves, read back from disk, so a reloaded page (or another browser) shows everything so far.

The page keeps its own files (the YAML it started, the log, the process id) in a state folder of its own
(``$TUNELAB_WEBUI_STATE``, default ``~/.cache/tunelab/webui``): ``output_dir`` stays the run's alone, as `tunelab
train` expects.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError
from tunelab.runs import CONFIG_FILE, checkpoints, holds_final_model, read_metrics

LOG_TAIL_CHARS = 20_000


def state_root() -> Path:
    return Path(os.environ.get("TUNELAB_WEBUI_STATE", "~/.cache/tunelab/webui")).expanduser()


def _slot(output_dir: Path) -> Path:
    """The page's files for one output folder."""
    resolved = str(output_dir.resolve())
    return state_root() / "runs" / hashlib.sha1(resolved.encode()).hexdigest()[:16]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a finished child not yet reaped is a zombie: not running
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class Run:
    """One output folder as the page shows it."""

    output_dir: Path
    state: str  # running, finished, interrupted, failed, stopped, started
    steps: int = 0
    last_loss: float | None = None
    log: Path | None = None
    points: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        loss = f", loss {self.last_loss:.4f}" if self.last_loss is not None else ""
        return f"{self.output_dir} [{self.state}, step {self.steps}{loss}]"


def _job(output_dir: Path) -> dict[str, Any] | None:
    path = _slot(output_dir) / "job.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def running(output_dir: Path) -> bool:
    job = _job(output_dir)
    return bool(job) and _alive(int(job["pid"])) and job.get("exit") is None


def start_training(values: dict[str, Any], workdir: Path) -> Run:
    """`tunelab train` on these settings in a new process; refused while another runs into the same folder."""
    import yaml

    output_dir = (workdir / str(values.get("output_dir") or "outputs/run")).resolve()
    if running(output_dir):
        raise ConfigError(f"output_dir '{output_dir}' already has a training running; stop it or pick another "
                          "output_dir")
    slot = _slot(output_dir)
    slot.mkdir(parents=True, exist_ok=True)
    config = slot / "train.yaml"
    config.write_text(yaml.safe_dump({**values, "output_dir": str(output_dir)}, sort_keys=False, allow_unicode=True))
    log = slot / "train.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("w", encoding="utf-8") as handle:
        process = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(config)], cwd=workdir, env=env,
                                   stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    (slot / "job.json").write_text(json.dumps({"pid": process.pid, "output_dir": str(output_dir),
                                               "started": time.time(), "exit": None}))
    _children[str(output_dir)] = process
    return Run(output_dir, "running", log=log)


_children: dict[str, subprocess.Popen] = {}  # started by this page process: reaped, and their exit code kept


def _exit_code(output_dir: Path) -> int | None:
    """The exit code of a training this page process started, once it ended (recorded for later pages)."""
    process = _children.get(str(output_dir))
    if process is None or process.poll() is None:
        return None
    slot = _slot(output_dir) / "job.json"
    job = _job(output_dir) or {}
    if job.get("exit") is None:
        slot.write_text(json.dumps({**job, "exit": process.returncode}))
    return process.returncode


def stop_training(output_dir: Path) -> bool:
    """Ask the run to stop as SIGTERM does (it finishes the step, saves a checkpoint and exits); whether one ran."""
    job = _job(output_dir)
    if not job or not _alive(int(job["pid"])):
        return False
    os.killpg(int(job["pid"]), signal.SIGTERM)
    return True


def describe(output_dir: Path) -> Run:
    """The run's state from its folder and the page's record of it."""
    output_dir = output_dir.resolve()
    points = [record for record in read_metrics(output_dir) if "loss" in record]
    job = _job(output_dir)
    code = _exit_code(output_dir)
    if job and code is None:
        code = job.get("exit")
    if running(output_dir) and code is None:
        state = "running"
    elif holds_final_model(output_dir):
        state = "finished"
    elif code in (143, 130):
        state = "stopped"
    elif checkpoints(output_dir):
        state = "interrupted"
    elif job and code is None:  # started by an earlier page process: its log tells how it ended
        state = "failed" if "error:" in _log_text(output_dir) else "ended"
    elif job:
        state = "failed" if code != 0 else "ended"
    else:
        state = "started"
    log = _slot(output_dir) / "train.log"
    return Run(output_dir, state, points[-1]["step"] if points else 0, points[-1]["loss"] if points else None,
               log if log.is_file() else None, points)


def list_runs(root: Path) -> list[Run]:
    """Every run under ``root`` (folders with a config snapshot or metrics), and those the page started anywhere."""
    folders = {path.parent.resolve() for pattern in (f"*/{CONFIG_FILE}", "*/metrics.jsonl")
               for path in root.glob(pattern)} if root.is_dir() else set()
    jobs = state_root() / "runs"
    for job in jobs.glob("*/job.json") if jobs.is_dir() else []:
        try:
            folders.add(Path(json.loads(job.read_text())["output_dir"]))
        except (OSError, ValueError, KeyError):
            continue
    return sorted((describe(folder) for folder in folders), key=lambda run: str(run.output_dir))


def _log_text(output_dir: Path) -> str:
    try:
        return (_slot(output_dir) / "train.log").read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return ""


def check_before_start(values: dict[str, Any], workdir: Path) -> str:
    """`tunelab train --dry-run` on these settings: config, paths, data, tokenizer and template checked as a run
    checks them, no model loaded. Returns its error lines ("" when it passes)."""
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, encoding="utf-8") as handle:
        yaml.safe_dump(values, handle, sort_keys=False, allow_unicode=True)
    try:
        done = subprocess.run([sys.executable, "-m", "tunelab", "train", handle.name, "--dry-run"], cwd=workdir,
                              capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              timeout=600)
    finally:
        Path(handle.name).unlink(missing_ok=True)
    if done.returncode == 0:
        return ""
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith("error:")]
    return "\n".join(line.replace(handle.name, "the form") for line in lines) or done.stderr[-2000:]


def log_tail(run: Run) -> str:
    if run.log is None:
        return ""
    text = run.log.read_text(encoding="utf-8", errors="replace")
    return text[-LOG_TAIL_CHARS:]
