"""Data throughput: rows/s to read, convert and tokenize real data with tunelab's data layer, and peak memory;
compared in the same run with LLaMA-Factory's preprocessing of the same file when it is installed.

Run from the repository root::

    .venv/bin/python benchmarks/data_throughput.py                    # alpaca_5000 + a 200k-row JSONL, with LF
    .venv/bin/python benchmarks/data_throughput.py --no-llamafactory  # tunelab only
    .venv/bin/python benchmarks/data_throughput.py --tokenize-limit 0 # tokenize all 200k rows (minutes)
    .venv/bin/python benchmarks/data_throughput.py --json             # results as JSON on stdout

What is measured, and why this way:

* Inputs: ``shared/data/alpaca/alpaca_5000.json`` (a one-line JSON array, 2 of its records have an empty
  answer) and a 200k-row JSON Lines file made from it in a temporary folder (the 5000 records cycled, an
  index appended to each instruction so rows are distinct; the empty answers stay, 80 of them).
* Stages, each timed on its own: ``read`` (``read_records``: text decoding + JSON parsing), ``read+convert``
  (``iter_rows``: records to canonical ``messages`` rows, invalid ones skipped and counted),
  ``convert→jsonl`` (``convert_dataset``: the same, written to a JSONL file on disk), ``tokenize``
  (``tokenize_rows``: chat template rendering, tokenization with offsets and loss masks, stories260K
  tokenizer with the ``alpaca`` template, cutoff_len 1024). The tokenize clock covers ``tokenize_rows``
  only; the rows it gets were read and converted first in the same process, and that time is reported too.
* Each stage runs in a fresh Python subprocess so its peak RSS (``VmHWM`` from ``/proc/self/status`` at
  the end) is its own and not inherited from an earlier stage. The RSS just before the timed work
  (interpreter + imports + setup) is shown next to it, so the growth caused by the stage is visible:
  a streaming stage must show the same peak for 5k and 200k rows.
* Wall time and the process's CPU time are both reported, as well as the CPU time every *other* process on
  the machine used during the timed window (``/proc/stat``). This is a 2-core machine shared with other
  work: when "others" is large, wall-clock rows/s is pessimistic and the CPU-time rate is the fairer one.
* LLaMA-Factory (separate venv, from ``shared/tools/llamafactory-venv``): ``llamafactory-cli train`` on
  the same file with ``tokenized_path`` set, ``preprocessing_num_workers: 1`` (tunelab's data layer is
  single-process too) and a fresh Hugging Face datasets cache. LLaMA-Factory 0.9.5 does *not* exit after
  saving the tokenized dataset (``data/loader.py`` saves it and returns; ``train/sft/workflow.py`` then
  loads the model and trains), so this script stops the process as soon as it logs "Tokenized dataset is
  saved" (``max_steps: 1`` is set only as a safety net). Its output is timestamped line by line as it
  arrives, which splits the run into start-up (imports, argument parsing, tokenizer), loading the JSON
  into Arrow, format conversion, the tokenizer ``map`` and saving. Its peak RSS is the child's ``VmHWM``
  read just before it is stopped (a kernel high-water mark, so nothing is missed between polls).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (the shared harness, a sibling module)
    MIB,
    REPO_ROOT,
    add_worker_args,
    cpu_count,
    cpu_model,
    machine_busy_seconds,
    run_worker,
    table,
    to_json,
)

SHARED = REPO_ROOT.parent / "shared"
DEFAULT_DATA = SHARED / "data" / "alpaca" / "alpaca_5000.json"
LF_TOOL = SHARED / "tools" / "llamafactory-venv"
EMBEDDED_MODEL_DIR = REPO_ROOT / "src" / "tunelab" / "assets" / "stories260K"
STAGES = ("read", "read+convert", "convert→jsonl", "tokenize")
CUTOFF_LEN = 1024
TEMPLATE = "alpaca"
LF_TIMEOUT_S = 300


@dataclass
class TokenizerSpec:
    """The tokenizer both sides use: tunelab's name for it and template, LF's model folder and template."""

    name: str
    template: str | None
    folder: str
    lf_template: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TokenizerSpec:
        if args.tokenizer == "stories260K":
            return cls("stories260K", args.template or TEMPLATE, str(EMBEDDED_MODEL_DIR), args.lf_template or TEMPLATE)
        folder = Path(args.tokenizer).resolve()
        if not (folder / "tokenizer_config.json").is_file():
            raise SystemExit(f"--tokenizer {args.tokenizer}: no tokenizer_config.json in {folder}")
        # chatml renders the closest text to a ChatML template's (qwen adds a default system prompt)
        default_lf = "llama3" if "<|eot_id|>" in (folder / "tokenizer_config.json").read_text() else "chatml"
        return cls(str(folder), args.template, str(folder), args.lf_template or default_lf)


# --- measurements shared by both sides ------------------------------------------------------------------

def proc_status_kb(key: str, pid: int | str = "self") -> int:
    """A ``kB`` field (VmHWM, VmRSS) of /proc/<pid>/status; 0 when unreadable (process gone, no procfs)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of another process (all its threads), from /proc/<pid>/stat; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            after_name = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


# --- child side: one stage of tunelab's data layer in this fresh process --------------------------------

class Clock:
    """Started right before the timed work: notes RSS (the baseline: interpreter, imports, setup), wall, own CPU
    and everyone's CPU; ``stop`` gives the deltas for the timed window."""

    def __init__(self) -> None:
        self.base_rss_kb = proc_status_kb("VmRSS")
        self.wall, self.cpu, self.busy = time.perf_counter(), time.process_time(), machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        others = max(0.0, machine_busy_seconds() - self.busy - cpu)
        return {"seconds": wall, "cpu_seconds": cpu, "others_cpu_seconds": others, "base_rss_kb": self.base_rss_kb}


def _stage_read(path: Path, limit: int) -> dict[str, Any]:
    from tunelab.data.readers import InvalidRecord, read_records

    clock, rows, invalid = Clock(), 0, 0
    for _file, _line, record in read_records(path):
        rows += 1
        invalid += isinstance(record, InvalidRecord)
    return {"rows": rows, **clock.stop(), "notes": f"{invalid} unparsable" if invalid else ""}


def _stage_convert(path: Path, limit: int) -> dict[str, Any]:
    from tunelab.data.registry import Skipped, iter_rows, resolve_dataset

    skipped = Skipped()
    clock = Clock()
    rows = sum(1 for _ in iter_rows(resolve_dataset(str(path), "."), "sft", skip_invalid=True, skipped=skipped))
    return {"rows": rows, **clock.stop(), "skipped": skipped.total,
            "notes": f"{skipped.total} skipped ({', '.join(skipped.counts)})" if skipped.total else ""}


def _stage_convert_jsonl(path: Path, limit: int) -> dict[str, Any]:
    import contextlib
    import io

    from tunelab.commands.convert import convert_dataset

    out = Path.cwd() / f"{path.stem}.converted.jsonl"
    clock = Clock()
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines: console output is not what is timed
        written, skipped = convert_dataset(str(path), out, dataset_dir=".", stage="sft", skip_invalid=True)
    timing = clock.stop()
    size_mb = out.stat().st_size / MIB
    out.unlink()
    return {"rows": written, **timing, "skipped": skipped.total,
            "notes": f"{skipped.total} skipped; wrote {size_mb:.0f} MB"}


def _stage_tokenize(path: Path, limit: int, tokenizer_name: str, template: str | None) -> dict[str, Any]:
    from tunelab.config import build_config
    from tunelab.data.pipeline import DataReport, tokenize_rows
    from tunelab.data.registry import iter_rows, resolve_dataset
    from tunelab.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name, template)
    cfg = build_config({"cutoff_len": CUTOFF_LEN})
    prep = Clock()
    canonical = iter_rows(resolve_dataset(str(path), "."), "sft", skip_invalid=True)
    rows = [row for _fmt, _line, row in itertools.islice(canonical, limit or None)]
    prep_timing = prep.stop()
    capped = bool(limit) and len(rows) == limit and next(canonical, None) is not None

    report = DataReport()
    clock = Clock()
    samples = tokenize_rows(rows, tokenizer, cfg, "sft", report, "train")
    timing = clock.stop()
    notes = [f"first {limit:,} rows only (--tokenize-limit)"] if capped else []
    if report.truncated:
        notes.append(f"{report.truncated} truncated")
    if report.skipped.total:
        notes.append(f"{report.skipped.total} dropped")
    return {"rows": len(samples), **timing, "capped": capped,
            "input_rows": len(rows), "prep_seconds": prep_timing["seconds"],
            "prep_cpu_seconds": prep_timing["cpu_seconds"],
            "tokens": sum(len(sample["input_ids"]) for sample in samples), "trained_tokens": report.trained_tokens,
            "truncated": report.truncated, "notes": "; ".join(notes)}


CHILD_STAGES = {"read": _stage_read, "read+convert": _stage_convert, "convert→jsonl": _stage_convert_jsonl,
                "tokenize": _stage_tokenize}


def worker_main(args: argparse.Namespace) -> None:
    """Run one stage (``args.worker``) on the spec's file and write its result (read by ``run_stage``)."""
    spec = json.loads(Path(args.spec).read_text())
    stage = CHILD_STAGES[args.worker]
    if stage is _stage_tokenize:
        result = stage(Path(spec["input"]), spec["limit"], spec["tokenizer"], spec["template"])
    else:
        result = stage(Path(spec["input"]), spec["limit"])
    result["peak_rss_kb"] = proc_status_kb("VmHWM")
    Path(args.result).write_text(to_json(result))


# --- parent side: tunelab stages ------------------------------------------------------------------------

@dataclass
class StageResult:
    """One stage on one file, as measured in its own process."""

    stage: str
    file: str
    rows: int
    seconds: float
    cpu_seconds: float
    others_cpu_seconds: float
    peak_rss_mb: float
    base_rss_mb: float
    process_seconds: float  # the child from launch to exit: interpreter, imports, setup, work
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def rows_per_cpu_s(self) -> float:
        return self.rows / self.cpu_seconds if self.cpu_seconds else 0.0


def make_large_jsonl(source: Path, dest: Path, rows: int) -> Path:
    """``rows`` JSON Lines cycling the source records; instructions get an index so rows are distinct."""
    records = json.loads(source.read_text(encoding="utf-8"))
    with dest.open("w", encoding="utf-8") as handle:
        for index, record in zip(range(rows), itertools.cycle(records)):
            row = dict(record, instruction=f"{record.get('instruction', '')} (#{index})")
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return dest


def run_stage(stage: str, path: Path, limit: int, workdir: Path, tokenizer: TokenizerSpec) -> StageResult:
    """The stage in a fresh interpreter (cwd: an empty folder, so no local dataset_info.json or model
    folder changes what names resolve to)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    spec = {"input": str(path), "limit": limit, "tokenizer": tokenizer.name, "template": tokenizer.template}
    result = run_worker(__file__, stage, spec, workdir, f"{stage}-{path.name}",
                        env=env, cwd=workdir / "cwd")
    process_seconds = time.perf_counter() - started
    main_keys = ("rows", "seconds", "cpu_seconds", "others_cpu_seconds", "peak_rss_kb", "base_rss_kb", "notes")
    return StageResult(stage, path.name, result["rows"], result["seconds"], result["cpu_seconds"],
                       result["others_cpu_seconds"], result["peak_rss_kb"] / 1024, result["base_rss_kb"] / 1024,
                       process_seconds, result.get("notes", ""),
                       {key: value for key, value in result.items() if key not in main_keys})


# --- parent side: LLaMA-Factory -------------------------------------------------------------------------

@dataclass
class LfResult:
    """LLaMA-Factory's preprocessing of the same file, or why it was skipped."""

    available: bool
    note: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    rows: int = 0  # rows in the tokenized dataset it saved
    tokens: int = 0
    trained_tokens: int = 0
    cli_seconds: float = 0.0  # launch → "Tokenized dataset is saved"
    startup_seconds: float = 0.0  # launch → "Loading dataset": imports, argument parsing, tokenizer + template
    preprocess_seconds: float = 0.0  # "Loading dataset" → saved: JSON → Arrow, convert, tokenize, save
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per phase, from the timestamped log
    preprocess_cpu_seconds: float = 0.0
    preprocess_others_cpu_seconds: float = 0.0
    tokenize_cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    stopped_early: bool = False
    yaml: str = ""
    log: str = ""


def find_llamafactory() -> tuple[Path | None, str]:
    """The LF venv from the shared tool (it only prints the path once built), or why there is none."""
    if not LF_TOOL.is_file():
        return None, f"{LF_TOOL} not found"
    try:
        done = subprocess.run([str(LF_TOOL)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{LF_TOOL} failed: {error}"
    venv = Path(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else None
    if venv is None or not (venv / "bin" / "llamafactory-cli").is_file():
        return None, f"{LF_TOOL} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    return venv, ""


def lf_yaml(data: Path, workdir: Path, tokenizer: TokenizerSpec) -> tuple[Path, str]:
    """The train config; ``dataset_info.json`` in its own folder maps the name to the absolute file path."""
    dataset_dir = workdir / "lf_data"
    dataset_dir.mkdir(exist_ok=True)
    (dataset_dir / "dataset_info.json").write_text(json.dumps({"alpaca_5000": {"file_name": str(data)}}))
    text = "\n".join([
        f"model_name_or_path: {tokenizer.folder}",
        "stage: sft",
        "do_train: true",
        "finetuning_type: lora",
        "dataset: alpaca_5000",
        f"dataset_dir: {dataset_dir}",
        f"template: {tokenizer.lf_template}",
        f"cutoff_len: {CUTOFF_LEN}",
        f"tokenized_path: {workdir / 'lf_tokenized'}",
        f"output_dir: {workdir / 'lf_out'}",
        "preprocessing_num_workers: 1",
        "overwrite_cache: true",
        "report_to: none",
        "max_steps: 1  # safety net only: the benchmark stops the run once the tokenized dataset is saved",
        "",
    ])
    path = workdir / "lf.yaml"
    path.write_text(text)
    return path, text


@dataclass
class LogLine:
    wall: float  # seconds since launch when the line arrived
    cpu: float  # LF process CPU seconds by then
    busy: float  # machine-wide busy CPU seconds by then
    text: str


def _stream_lines(proc: subprocess.Popen, started: float, on_line: Any) -> list[LogLine]:
    """Every stdout/stderr line (tqdm's ``\\r`` updates included) stamped on arrival; ``on_line`` returns
    True to stop reading."""
    lines: list[LogLine] = []
    pending = b""
    fd = proc.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        now, cpu, busy = time.perf_counter() - started, process_cpu_seconds(proc.pid), machine_busy_seconds()
        if not chunk:
            break
        parts = (pending + chunk).replace(b"\r", b"\n").split(b"\n")
        pending = parts.pop()
        for part in parts:
            if part.strip():
                lines.append(LogLine(now, cpu, busy, part.decode("utf-8", "replace")))
                if on_line(lines[-1]):
                    return lines
    if pending.strip():
        lines.append(LogLine(time.perf_counter() - started, 0.0, machine_busy_seconds(),
                             pending.decode("utf-8", "replace")))
    return lines


def _first(lines: list[LogLine], needle: str) -> LogLine | None:
    return next((line for line in lines if needle in line.text), None)


def _last(lines: list[LogLine], needle: str) -> LogLine | None:
    return next((line for line in reversed(lines) if needle in line.text), None)


def run_llamafactory(venv: Path, data: Path, workdir: Path, tokenizer: TokenizerSpec) -> LfResult:
    """Launch the CLI, timestamp its log, stop it once the tokenized dataset is on disk, count what it saved."""
    for previous in ("lf_tokenized", "hf_cache", "lf_out"):  # a fresh start: LF would load a saved dataset instead
        shutil.rmtree(workdir / previous, ignore_errors=True)
    yaml_path, yaml_text = lf_yaml(data, workdir, tokenizer)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", HF_DATASETS_CACHE=str(workdir / "hf_cache"))
    started = time.perf_counter()
    proc = subprocess.Popen([str(venv / "bin" / "llamafactory-cli"), "train", str(yaml_path)], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    peak_kb = [0]

    def saved(line: LogLine) -> bool:
        peak_kb[0] = max(peak_kb[0], proc_status_kb("VmHWM", proc.pid))
        return "Tokenized dataset is saved" in line.text

    try:
        lines = _stream_lines(proc, started, saved)
    finally:
        stopped_early = proc.poll() is None
        peak_kb[0] = max(peak_kb[0], proc_status_kb("VmHWM", proc.pid))
        if stopped_early:
            os.killpg(proc.pid, signal.SIGTERM)  # the process group this script created, nothing else
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    log = "\n".join(f"{line.wall:8.3f}s  {line.text}" for line in lines)
    (workdir / "lf.log").write_text(log)
    result = LfResult(True, yaml=yaml_text, log=log, stopped_early=stopped_early, peak_rss_mb=peak_kb[0] / 1024)
    end = _first(lines, "Tokenized dataset is saved")
    load = _first(lines, "Loading dataset")
    if end is None or load is None:
        result.available = False
        result.note = f"LLaMA-Factory did not save a tokenized dataset (exit {proc.returncode}); log tail:\n" + \
            "\n".join(line.text for line in lines[-15:])
        return result
    convert0, convert1 = _first(lines, "Converting format of dataset"), _last(lines, "Converting format of dataset")
    tok0, tok1 = _first(lines, "Running tokenizer on dataset"), _last(lines, "Running tokenizer on dataset")
    result.cli_seconds, result.startup_seconds = end.wall, load.wall
    result.preprocess_seconds = end.wall - load.wall
    result.preprocess_cpu_seconds = end.cpu - load.cpu
    result.preprocess_others_cpu_seconds = max(0.0, end.busy - load.busy - result.preprocess_cpu_seconds)
    if convert0 and convert1 and tok0 and tok1:
        result.phases = {"load JSON → Arrow": convert0.wall - load.wall,
                         "convert format": convert1.wall - convert0.wall,
                         "tokenize map": tok1.wall - tok0.wall,
                         "save to disk (+ example print)": end.wall - tok1.wall}
        result.tokenize_cpu_seconds = tok1.cpu - tok0.cpu
    result.versions, counts = lf_counts(venv, workdir / "lf_tokenized")
    result.rows, result.tokens, result.trained_tokens = counts["rows"], counts["tokens"], counts["trained_tokens"]
    return result


_LF_COUNT = """
import importlib.metadata as m, json, sys
import pyarrow.compute as pc
from datasets import load_from_disk
data = load_from_disk(sys.argv[1])
train = data["train"] if hasattr(data, "keys") else data
ids, labels = train.data.column("input_ids"), train.data.column("labels")
trained = pc.sum(pc.not_equal(pc.list_flatten(labels), -100)).as_py() or 0
versions = {name: m.version(name) for name in ("llamafactory", "transformers", "datasets", "tokenizers", "torch")}
print(json.dumps({"versions": versions, "rows": len(train), "tokens": pc.sum(pc.list_value_length(ids)).as_py(),
                  "trained_tokens": trained}))
"""


def lf_counts(venv: Path, tokenized: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Rows and tokens of LF's saved dataset, read with ``datasets.load_from_disk`` inside LF's own venv."""
    done = subprocess.run([str(venv / "bin" / "python"), "-c", _LF_COUNT, str(tokenized)], capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        return {}, {"rows": 0, "tokens": 0, "trained_tokens": 0}
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return info.pop("versions"), info


# --- report ---------------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """CPU model and cores, memory, load, library versions of tunelab's venv, date."""
    versions = {}
    for name in ("tunelab", "torch", "transformers", "tokenizers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"cpu": cpu_model(), "cores": cpu_count(), "memory_gb": round(mem_total_kb() / MIB, 1),
            "python": sys.version.split()[0], "versions": versions,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average_at_start": round(os.getloadavg()[0], 2)}


def mem_total_kb() -> int:
    """MemTotal in kB (0 where /proc/meminfo is missing)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            return int(handle.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def render_table(results: list[StageResult]) -> str:
    header = ["stage", "file", "rows", "wall s", "rows/s", "cpu s", "rows/cpu-s", "others cpu s", "peak RSS MB",
              "base RSS MB"]
    body = [[r.stage, r.file, f"{r.rows:,}", f"{r.seconds:.2f}", f"{r.rows_per_s:,.0f}", f"{r.cpu_seconds:.2f}",
             f"{r.rows_per_cpu_s:,.0f}", f"{r.others_cpu_seconds:.2f}", f"{r.peak_rss_mb:.0f}", f"{r.base_rss_mb:.0f}"]
            for r in results]
    lines = [f"{line}  {notes}".rstrip() for line, notes in zip(
        table(header, body, widths=[14, 22, 8, 7, 8, 7, 10, 12, 11, 11], align="<<>>>>>>>>", gap=" "),
        ["notes", *(r.notes for r in results)], strict=True)]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def comparison(results: list[StageResult], lf: LfResult, data_name: str) -> dict[str, Any]:
    """tunelab vs LF on the same file: tokenize-only, and read+convert+tokenize vs LF's whole preprocessing."""
    tok = next(r for r in results if r.stage == "tokenize" and r.file == data_name)
    tl_tok_rate, tl_tok_cpu_rate = tok.rows_per_s, tok.rows_per_cpu_s
    tl_e2e_s = tok.extra["prep_seconds"] + tok.seconds
    lf_tok_s = lf.phases.get("tokenize map", 0.0)
    out = {
        "tunelab_rows": tok.rows, "lf_rows": lf.rows,
        "tunelab_tokens": tok.extra["tokens"], "lf_tokens": lf.tokens,
        "tunelab_trained_tokens": tok.extra["trained_tokens"], "lf_trained_tokens": lf.trained_tokens,
        "tunelab_tokenize_rows_per_s": tl_tok_rate, "tunelab_tokenize_rows_per_cpu_s": tl_tok_cpu_rate,
        "lf_tokenize_rows_per_s": lf.rows / lf_tok_s if lf_tok_s else 0.0,
        "lf_tokenize_rows_per_cpu_s": lf.rows / lf.tokenize_cpu_seconds if lf.tokenize_cpu_seconds else 0.0,
        "tunelab_read_convert_tokenize_seconds": tl_e2e_s,
        "tunelab_tokenize_process_seconds": tok.process_seconds,
        "lf_preprocess_rows_per_s": lf.rows / lf.preprocess_seconds if lf.preprocess_seconds else 0.0,
        "tunelab_read_convert_tokenize_rows_per_s": tok.rows / tl_e2e_s if tl_e2e_s else 0.0,
    }
    out["ratio_tokenize"] = (tl_tok_rate / out["lf_tokenize_rows_per_s"]) if out["lf_tokenize_rows_per_s"] else None
    out["ratio_tokenize_cpu"] = (tl_tok_cpu_rate / out["lf_tokenize_rows_per_cpu_s"]
                                 if out["lf_tokenize_rows_per_cpu_s"] else None)
    out["ratio_preprocess"] = (out["tunelab_read_convert_tokenize_rows_per_s"] / out["lf_preprocess_rows_per_s"]
                               if out["lf_preprocess_rows_per_s"] else None)
    return out


def render_lf(lf: LfResult, cmp: dict[str, Any] | None, data_name: str, lf_template: str) -> str:
    if not lf.available:
        return f"LLaMA-Factory: skipped ({lf.note})"
    v = lf.versions
    lines = [f"LLaMA-Factory {v.get('llamafactory', '?')} (transformers {v.get('transformers', '?')}, datasets "
             f"{v.get('datasets', '?')}, torch {v.get('torch', '?')}) on {data_name}: template {lf_template}, "
             f"cutoff_len {CUTOFF_LEN}, preprocessing_num_workers 1, fresh datasets cache",
             f"  CLI launch → tokenized dataset saved: {lf.cli_seconds:6.2f} s  "
             f"({lf.rows / lf.cli_seconds:,.0f} rows/s)   peak RSS {lf.peak_rss_mb:,.0f} MB"
             + ("   [stopped there: 0.9.5 would go on to load the model and train]" if lf.stopped_early else ""),
             f"    start-up (imports, arguments, tokenizer):  {lf.startup_seconds:6.2f} s",
             f"    preprocessing (\"Loading dataset\" → saved): {lf.preprocess_seconds:6.2f} s  "
             f"({lf.rows / lf.preprocess_seconds:,.0f} rows/s; cpu {lf.preprocess_cpu_seconds:.2f} s, "
             f"others' cpu {lf.preprocess_others_cpu_seconds:.2f} s)"]
    for phase, seconds in lf.phases.items():
        lines.append(f"      {phase:<32} {seconds:6.2f} s")
    if lf.note:
        lines.append(f"  ({lf.note})")
    if cmp:
        lines += [
            f"  rows tokenized: tunelab {cmp['tunelab_rows']:,}, LLaMA-Factory {cmp['lf_rows']:,}; tokens: tunelab "
            f"{cmp['tunelab_tokens']:,} ({cmp['tunelab_trained_tokens']:,} trained), LLaMA-Factory "
            f"{cmp['lf_tokens']:,} ({cmp['lf_trained_tokens']:,} trained)",
            f"  tokenize only:  tunelab {cmp['tunelab_tokenize_rows_per_s']:,.0f} rows/s "
            f"({cmp['tunelab_tokenize_rows_per_cpu_s']:,.0f}/cpu-s), LLaMA-Factory "
            f"{cmp['lf_tokenize_rows_per_s']:,.0f} rows/s ({cmp['lf_tokenize_rows_per_cpu_s']:,.0f}/cpu-s)",
            f"  ratio tunelab tokenize rows/s ÷ LLaMA-Factory tokenize rows/s: {_ratio(cmp['ratio_tokenize'])} wall, "
            f"{_ratio(cmp['ratio_tokenize_cpu'])} CPU time",
            f"  read+convert+tokenize: tunelab {cmp['tunelab_read_convert_tokenize_seconds']:.2f} s "
            f"({cmp['tunelab_read_convert_tokenize_rows_per_s']:,.0f} rows/s, one process, in memory) vs "
            f"LLaMA-Factory preprocessing {lf.preprocess_seconds:.2f} s ({cmp['lf_preprocess_rows_per_s']:,.0f} "
            f"rows/s, incl. Arrow cache + save): ratio {_ratio(cmp['ratio_preprocess'])}",
            f"  whole process: tunelab tokenize child {cmp['tunelab_tokenize_process_seconds']:.2f} s launch→exit "
            f"(imports, tokenizer, read, convert, tokenize) vs LLaMA-Factory CLI {lf.cli_seconds:.2f} s launch→saved",
        ]
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value else "n/a"


def render_text(report: dict[str, Any], results: list[StageResult], lf: LfResult) -> str:
    m = report["machine"]
    v = m["versions"]
    head = [f"tunelab data throughput — {m['date']}",
            f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; python {m['python']}, tunelab "
            f"{v['tunelab']}, torch {v['torch']}, transformers {v['transformers']}, tokenizers {v['tokenizers']}; "
            f"load average at start {m['load_average_at_start']}",
            f"tokenizer: {report['tokenizer']['name']}, template {report['tokenizer']['template'] or 'its own'}, "
            f"cutoff_len {CUTOFF_LEN}; each stage in a fresh "
            "process; rows/s from wall time; 'others cpu s' = CPU used by other processes during the timed window",
            ""]
    lf_text = render_lf(lf, report.get("comparison"), report["data"], report["tokenizer"]["lf_template"])
    return "\n".join(head + [render_table(results), "", lf_text])


# --- main -----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the alpaca file (default: %(default)s)")
    parser.add_argument("--large-rows", type=int, default=200_000, help="rows of the generated JSONL (0: skip it)")
    parser.add_argument("--tokenize-limit", type=int, default=20_000,
                        help="tokenize at most this many rows per file (0: all); 200k rows take minutes here")
    parser.add_argument("--no-llamafactory", action="store_true", help="skip the LLaMA-Factory comparison")
    parser.add_argument("--workdir", type=Path, help="keep the generated files and LF's log here (default: temp)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the tokenize stage and LLaMA-Factory this many times, alternating, and report each "
                             "side's median (default: %(default)s)")
    parser.add_argument("--tokenizer", default="stories260K",
                        help="tokenizer for the tokenize stage: stories260K (embedded) or a tokenizer folder, e.g. "
                             "../shared/tokenizers/llama3 (default: %(default)s)")
    parser.add_argument("--template", help="tunelab's template (default: alpaca for stories260K, else the "
                                           "tokenizer's own)")
    parser.add_argument("--lf-template", help="LLaMA-Factory's template for the same data (default: alpaca for "
                                              "stories260K; llama3 for a Llama-3 tokenizer; chatml otherwise)")
    add_worker_args(parser, STAGES)
    return parser.parse_args(argv)


def run_all(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[StageResult], LfResult]:
    data = args.data.resolve()
    if not data.is_file():
        raise SystemExit(f"data file not found: {data}")
    files = [data]
    tokenizer = TokenizerSpec.from_args(args)
    if args.large_rows:
        files.append(make_large_jsonl(data, workdir / f"alpaca_{args.large_rows // 1000}k.jsonl", args.large_rows))
    (workdir / "cwd").mkdir(exist_ok=True)
    results = []
    for stage in STAGES:
        for path in files:
            print(f"  {stage} {path.name} ...", file=sys.stderr, flush=True)
            results.append(run_stage(stage, path, args.tokenize_limit, workdir, tokenizer))
    if args.no_llamafactory:
        lf = LfResult(False, note="--no-llamafactory given")
    else:
        venv, why = find_llamafactory()
        if venv is None:
            lf = LfResult(False, note=f"LLaMA-Factory unavailable: {why}")
        else:
            print(f"  LLaMA-Factory on {data.name} ...", file=sys.stderr, flush=True)
            lf = run_llamafactory(venv, data, workdir, tokenizer)
            if args.repeats > 1:
                lf = _repeat_tokenize(args, venv, data, workdir, tokenizer, results, lf)
    report: dict[str, Any] = {"machine": machine_info(), "data": data.name, "tokenize_limit": args.tokenize_limit,
                              "tokenizer": asdict(tokenizer),
                              "stages": [dict(asdict(r), rows_per_s=r.rows_per_s, rows_per_cpu_s=r.rows_per_cpu_s)
                                         for r in results]}
    report["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    lf_dict = asdict(lf)
    lf_dict.pop("log")
    report["llamafactory"] = lf_dict
    report["comparison"] = comparison(results, lf, data.name) if lf.available else None
    return report, results, lf


def _median(runs: list[Any], seconds: Callable[[Any], float]) -> Any:
    return sorted(runs, key=seconds)[len(runs) // 2]


def _repeat_tokenize(args: argparse.Namespace, venv: Path, data: Path, workdir: Path, tokenizer: TokenizerSpec,
                     results: list[StageResult], lf: LfResult) -> LfResult:
    """--repeats: tunelab's tokenize stage and LLaMA-Factory again, alternating which goes first; each side's run of
    median tokenize time replaces its first one in ``results`` and is returned for LLaMA-Factory."""
    position = next(i for i, r in enumerate(results) if r.stage == "tokenize" and r.file == data.name)
    ours, theirs = [results[position]], [lf]
    for repeat in range(1, args.repeats):
        print(f"  repeat {repeat + 1} of {args.repeats} ...", file=sys.stderr, flush=True)
        for side in (("lf", "tunelab") if repeat % 2 else ("tunelab", "lf")):
            if side == "lf":
                theirs.append(run_llamafactory(venv, data, workdir, tokenizer))
            else:
                ours.append(run_stage("tokenize", data, args.tokenize_limit, workdir, tokenizer))
    results[position] = _median(ours, lambda r: r.seconds)
    results[position].notes += f"; median of {len(ours)} runs ({', '.join(f'{r.seconds:.2f}' for r in ours)} s)"
    chosen = _median(theirs, _lf_tokenize_seconds)
    chosen.note = (f"median of {len(theirs)} runs by tokenize map "
                   f"({', '.join(f'{_lf_tokenize_seconds(r):.2f}' for r in theirs)} s)")
    return chosen


def _lf_tokenize_seconds(lf: LfResult) -> float:
    return lf.phases.get("tokenize map", 0.0)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report, results, lf = run_all(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="tunelab-data-throughput-") as tmp:
            report, results, lf = run_all(args, Path(tmp))
    print(to_json(report) if args.json else render_text(report, results, lf))


if __name__ == "__main__":
    main()
