"""What the benchmarks share, so that each benchmark file holds only what it measures.

The scripts import this file as a sibling module (run them from the repository root:
``.venv/bin/python benchmarks/<name>.py``). How they measure, and why it is fair, once for all of them:

* **Fresh processes.** Each side or configuration runs in its own Python subprocess (``run_worker``), so none
  inherits another's allocator state or warm caches, and peak memory is its own. The parent writes the spec as
  JSON, the worker writes its result as JSON; the worker's output goes to a log shown only when it fails.
* **Alternating order.** With repeats the two sides run A B, B A, A B, ... (``run_order``), so that drifting
  machine load hits both alike; medians over the repeats are reported.
* **One clock for both sides.** The same ``TrainerCallback`` (``make_step_clock``) records the time, this
  process's CPU time and the trainer's own non-padding token count (``include_num_input_tokens_seen=
  "non_padding"``, the attention-mask sum) at the end of every optimizer step. Rates run from the end of step
  ``--warmup`` to the end of the last step (the first steps pay one-off costs a long run amortizes); model
  loading, data preparation and saving are outside that window. A callback is needed because tunelab's recipes
  also load, tokenize and save: a clock around the call would time those too.
* **Memory.** On CUDA ``torch.cuda.max_memory_allocated`` (reset when training begins). On CPU the growth of the
  resident set over its value when training begins, sampled every 5 ms from ``/proc/self/statm`` by a thread
  (``RssSampler``): tracemalloc does not see torch's allocations, and ``ru_maxrss`` cannot be reset and would
  include model loading and data preparation.
* **Shared machines.** On a 2-core machine one busy neighbour makes a 2-thread torch step several times slower,
  so the CPU time every other process used (``/proc/stat`` minus this process) is recorded per step. Two
  estimates of the speed on an idle machine follow: best of runs (each step's fastest time over a side's runs,
  valid because all runs train on identical batches) and undisturbed steps (during which other processes used no
  more than the cores torch leaves free). Both sides see the same batches in the same order, so their step times
  also compare step by step (``paired_step_ratio``), which is robust to a busy machine. ``--threads 1`` on 2
  cores leaves a neighbour a core of its own and makes runs far more repeatable.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
MIB = 1024 * 1024
SIDES = ("tunelab", "trl")
QUIET_CORES = 0.1  # undisturbed: other processes used less than this beyond the cores torch leaves free

# Training arguments recorded from each trainer, so that settings the two sides do NOT share are shown next to
# the numbers instead of being discovered later.
RECORDED_ARGS = (
    "optim", "lr_scheduler_type", "learning_rate", "warmup_steps", "weight_decay", "max_grad_norm",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "seed", "data_seed", "bf16",
    "fp16", "gradient_checkpointing", "max_length", "packing", "padding_free", "logging_steps",
    "logging_first_step", "save_strategy", "save_steps", "dataloader_num_workers", "torch_compile",
    "group_by_length", "assistant_only_loss", "completion_only_loss", "report_to", "disable_tqdm",
    "dataloader_pin_memory", "use_cpu",
)


# --------------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo (and lscpu) give it, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """Cores this process may run on (its affinity): what torch sizes its thread pool by."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(requested: str) -> str:
    """``auto`` becomes ``cuda`` where torch sees a GPU, else ``cpu``."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine_description(device: str, threads: int | None) -> dict[str, str]:
    """CPU model and cores (or GPU name), library versions and date, for a report's header."""
    import peft
    import torch
    import transformers
    import trl

    info = {"cpu": f"{cpu_model()}, {cpu_count()} cores (torch threads {threads or torch.get_num_threads()})",
            "device": device,
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_lines(info: dict[str, str]) -> list[str]:
    """A report header's machine and software lines, from ``machine_description``."""
    software = ", ".join(f"{name} {info[name]}" for name in
                         ("torch", "transformers", "trl", "peft", "bitsandbytes", "python") if name in info)
    return [f"machine   {info['cpu']}" + (f"; GPU {info['gpu']}" if "gpu" in info else ""), f"software  {software}"]


# --------------------------------------------------------------------------------------------------
# CPU and memory from /proc (inside the workers)
# --------------------------------------------------------------------------------------------------

def rss_bytes(anonymous: bool = False) -> int:
    """Resident set size now, from /proc/self/statm; ``anonymous`` leaves out file-backed pages (weights that
    safetensors left memory-mapped, libraries). 0 where /proc is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            fields = handle.read().split()
        pages = int(fields[1]) - (int(fields[2]) if anonymous else 0)
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (user, nice, system, irq, softirq, steal), from /proc/stat;
    0 where it is missing. The difference over a window, minus this process's CPU time, is what others used."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def heap_in_use_bytes() -> int:
    """Bytes glibc's malloc holds for the program now (``mallinfo2``: in-use chunks of every arena plus mmapped
    blocks), freed memory it keeps for reuse left out; 0 without glibc. The resident set also counts what the
    allocator kept: how much that is depends on the order of allocations more than on the framework."""
    libc = _glibc()
    if libc is None:
        return 0
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


@functools.cache
def _glibc() -> Any:
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    return libc


class RssSampler:
    """A thread keeping the highest resident set (and malloc's in-use bytes) seen between ``start`` and ``stop``.
    torch's CPU allocations are invisible to tracemalloc and ``ru_maxrss`` cannot be reset, so sampling is how to
    get a per-phase peak."""

    def __init__(self, anonymous: bool = False, interval: float = 0.005, heap_interval: float = 0.25) -> None:
        self.anonymous = anonymous
        self.interval = interval
        # mallinfo2 walks every arena under its lock, stalling the allocations of the threads being measured: every
        # 5 ms it doubled a 2-thread training step (0.95 -> 1.8 s) and cost 15 % at 1 thread, so it runs rarely
        self.heap_every = max(round(heap_interval / interval), 1)
        self.peak = 0
        self.heap_peak = 0
        self.heap_base = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        samples = 0
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.anonymous))
            if samples % self.heap_every == 0:
                self.heap_peak = max(self.heap_peak, heap_in_use_bytes())
            samples += 1
            self._stop.wait(self.interval)

    def start(self) -> int:
        """Start sampling; returns the resident set now (the baseline)."""
        self.peak = rss_bytes(self.anonymous)
        self.heap_base = self.heap_peak = heap_in_use_bytes()
        self._thread.start()
        return self.peak

    def stop(self) -> int:
        """Stop sampling (a second call changes nothing); returns the peak."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes(self.anonymous))
            self.heap_peak = max(self.heap_peak, heap_in_use_bytes())
        return self.peak


# --------------------------------------------------------------------------------------------------
# The per-step clock and what a worker reports
# --------------------------------------------------------------------------------------------------

@dataclass
class SideResult:
    """What one worker measured in one run; the parent turns these into the table."""

    side: str
    tokens_per_second: float
    cpu_tokens_per_second: float  # per second of process CPU time (all threads)
    window_tokens: int
    window_seconds: float
    step_seconds: list[float]  # every step, including warm-up ones
    step_cpu_seconds: list[float]
    other_cpu_cores: float  # average CPU cores used by other processes (and the host) in the window
    step_other_cores: list[float]  # the same, per step
    step_tokens: list[int]
    total_tokens: int
    steps: int
    peak_memory_bytes: int
    memory_kind: str
    process_max_rss_bytes: int
    final_loss: float | None
    losses: list[float]
    trainable_params: int
    loss_tokens: str
    setup_seconds: float
    load_average: float = 0.0  # 1-minute load average when the worker started: is the machine busy?
    settings: dict[str, Any] = field(default_factory=dict)
    metrics_jsonl_tokens: int | None = None
    labelled_fraction: float | None = None  # tokens that carry loss / tokens seen, over the run's data
    heap_peak_bytes: int = 0  # CPU: growth of malloc's in-use bytes during training (the RSS also counts its reserve)


def plain(value: Any) -> Any:
    """JSON-friendly form of a TrainingArguments value (enums become their string value)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(getattr(value, "value", value))


def make_step_clock(started: float, extra_args: Sequence[str] = ()) -> Any:
    """The one callback every side gets (``started``: when the worker began, to report setup time; ``extra_args``:
    training arguments to record besides RECORDED_ARGS). Defined inside a function so that the parent process
    never imports transformers or torch."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Time and cumulative non-padding tokens at the end of each optimizer step, peak memory over the
        training steps, the logged losses and the training arguments actually in effect."""

        def __init__(self) -> None:
            # (wall, process CPU time, machine busy CPU time, step, tokens seen)
            self.marks: list[tuple[float, float, float, int, int]] = []
            self.losses: list[float] = []
            self.settings: dict[str, Any] = {}
            self.trainable_params = 0
            self.memory_base = 0
            self.memory_peak = 0
            self.heap_peak = 0
            self.setup_seconds = 0.0
            self.cuda = torch.cuda.is_available()
            self._sampler: RssSampler | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.setup_seconds = time.perf_counter() - started
            self.settings = {key: plain(getattr(args, key, None)) for key in (*RECORDED_ARGS, *extra_args)}
            model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
            if model is not None:
                self.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
                self.settings["total_params"] = sum(p.numel() for p in model.parameters())
                self.settings["model_dtype"] = str(next(model.parameters()).dtype)
                self.settings["attention"] = getattr(model.config, "_attn_implementation", None)
            self.settings["torch_threads"] = torch.get_num_threads()
            self.settings["cpus"] = cpu_count()
            if optimizer is not None:
                inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
                self.settings["optimizer_class"] = type(inner).__name__
                self.settings["optimizer_fused"] = inner.defaults.get("fused")
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.memory_base = torch.cuda.memory_allocated()
            else:
                self._sampler = RssSampler()
                self.memory_base = self._sampler.start()
            self._mark(state)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.cuda:
                torch.cuda.synchronize()  # CUDA runs ahead of Python: time the finished work
            self._mark(state)
            if state.global_step >= state.max_steps:  # stop before the final checkpoint is written
                self._finish_memory()

        def _mark(self, state: Any) -> None:
            self.marks.append((time.perf_counter(), time.process_time(), machine_busy_seconds(),
                               state.global_step, state.num_input_tokens_seen))

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._finish_memory()

        def _finish_memory(self) -> None:
            if self.memory_peak:
                return
            if self.cuda:
                self.memory_peak = torch.cuda.max_memory_allocated()
            elif self._sampler is not None:
                self.memory_peak = self._sampler.stop() - self.memory_base
                self.heap_peak = self._sampler.heap_peak - self._sampler.heap_base

    return StepClock()


def window_start(warmup: int, steps: int) -> int:
    """The step whose end opens the timed window: ``warmup``, but at least one step stays in the window."""
    return min(warmup, max(steps - 1, 0))


def summarize(side: str, clock: Any, warmup: int, loss_tokens: str) -> SideResult:
    """A SideResult from a StepClock's marks, rates over the window from the end of step ``warmup`` to the end
    of the last step (``loss_tokens``: in words, which tokens this side's loss is computed on)."""
    marks = clock.marks  # marks[0] is on_train_begin, marks[k] the end of step k
    steps = marks[-1][3]
    (t0, c0, b0, _, tok0), (t1, c1, b1, _, tok1) = marks[window_start(warmup, steps)], marks[-1]
    pairs = list(zip(marks, marks[1:], strict=False))
    return SideResult(
        side=side,
        tokens_per_second=(tok1 - tok0) / (t1 - t0) if t1 > t0 else 0.0,
        cpu_tokens_per_second=(tok1 - tok0) / (c1 - c0) if c1 > c0 else 0.0,
        window_tokens=int(tok1 - tok0),
        window_seconds=t1 - t0,
        step_seconds=[b[0] - a[0] for a, b in pairs],
        step_cpu_seconds=[b[1] - a[1] for a, b in pairs],
        other_cpu_cores=max((b1 - b0) - (c1 - c0), 0.0) / (t1 - t0) if t1 > t0 else 0.0,
        step_other_cores=[max((b[2] - a[2]) - (b[1] - a[1]), 0.0) / (b[0] - a[0]) if b[0] > a[0] else 0.0
                          for a, b in pairs],
        step_tokens=[int(b[4] - a[4]) for a, b in pairs],
        total_tokens=int(marks[-1][4]),
        steps=steps,
        peak_memory_bytes=int(clock.memory_peak),
        memory_kind="CUDA max_memory_allocated" if clock.cuda else "RSS growth during training",
        process_max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
        final_loss=clock.losses[-1] if clock.losses else None,
        losses=clock.losses,
        trainable_params=clock.trainable_params,
        loss_tokens=loss_tokens,
        setup_seconds=clock.setup_seconds,
        settings=clock.settings,
        heap_peak_bytes=int(clock.heap_peak),
    )


# --------------------------------------------------------------------------------------------------
# What both sides are given
# --------------------------------------------------------------------------------------------------

@dataclass
class SideSpec:
    """What both sides of a comparison agree on; each benchmark's Spec adds its own fields. The parent writes
    it as JSON, every worker reads it back."""

    model: str
    data: str
    rows: int
    steps: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    seed: int
    warmup: int
    device: str
    bf16: bool
    gradient_checkpointing: bool
    threads: int | None
    workdir: str

    def training_args(self, run_dir: Path) -> dict[str, Any]:
        """The training arguments both sides get under the same names (tunelab's TrainConfig, TRL's configs)."""
        return {"output_dir": str(run_dir), "max_steps": self.steps, "per_device_train_batch_size": self.batch_size,
                "gradient_accumulation_steps": self.grad_accum, "learning_rate": self.learning_rate,
                "seed": self.seed, "bf16": self.bf16, "gradient_checkpointing": self.gradient_checkpointing,
                "save_steps": max(self.steps, 500)}  # no checkpoint inside the timed window (TRL: every 500)

    def trl_args(self, run_dir: Path) -> dict[str, Any]:
        """``training_args`` plus what only TRL's configs need: the token count the clock reads, and ``use_cpu``
        (TrainingArguments refuses bf16 on CPU without it)."""
        return {**self.training_args(run_dir), "include_num_input_tokens_seen": "non_padding",
                "use_cpu": self.device == "cpu"}


def trl_lora(rank: int, alpha: int | None = None, target: str = "all", task_type: str = "CAUSAL_LM") -> Any:
    """tunelab's LoRA (alpha 2 x rank, dropout 0; ``all``: every linear layer) as TRL's ``peft_config``
    (``SEQ_CLS`` for a reward model: its score head trains too)."""
    from peft import LoraConfig

    targets = "all-linear" if target == "all" else [t.strip() for t in target.split(",")]
    return LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, target_modules=targets,
                      task_type=task_type)


def build_random_model(tokenizer_path: Path, out_dir: Path, hidden: int, layers: int, seed: int,
                       arch: str = "qwen2") -> dict[str, Any]:
    """A small Qwen2- (or Llama-) shaped model with random weights and the real tokenizer, saved once so that
    every side loads identical weights. Realistic layout (grouped-query attention, SwiGLU MLP, RMSNorm, RoPE;
    Qwen2: tied embeddings and attention biases; Llama: an untied output layer) at a size a 2-core CPU trains in a
    few seconds per step. The Llama-3 tokenizer goes with ``llama``: saved beside a Qwen2 config, transformers
    would load it as a Qwen2 tokenizer that adds a token the embeddings lack."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    heads = max(hidden // 64, 1)
    config_class, model_class = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config,
                                                                                        Qwen2ForCausalLM)
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=max(hidden * 8 // 3 // 64 * 64, 64),
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1),
        max_position_embeddings=4096, tie_word_embeddings=arch != "llama", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    shape = "Llama" if arch == "llama" else "Qwen2"
    embeddings = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2)
    return {"hidden_size": hidden, "vocab_size": config.vocab_size, "body_params": sum(
                p.numel() for p in model.parameters()) - embeddings,
            "name": f"random {shape} (hidden {hidden}, {layers} layers, {heads} heads / "
                    f"{config.num_key_value_heads} kv, intermediate {config.intermediate_size}, "
                    f"vocab {config.vocab_size}, fp32) + tokenizer {tokenizer_path.name}",
            "params": sum(p.numel() for p in model.parameters())}


def prepare_model(path: str | None, out_dir: Path, tokenizer: str | Path, hidden: int, layers: int,
                  seed: int, arch: str = "qwen2") -> tuple[str, dict[str, Any]]:
    """The model folder and its description: ``path`` if given (parameters 0: the workers count them), else a
    random Qwen2 built into ``out_dir``."""
    if path:
        resolved = str(Path(path).resolve())
        return resolved, {"name": resolved, "params": 0}
    return str(out_dir), build_random_model(Path(tokenizer), out_dir, hidden, layers, seed, arch)


# --------------------------------------------------------------------------------------------------
# Workers: each run in a fresh interpreter
# --------------------------------------------------------------------------------------------------

class WorkerFailed(RuntimeError):
    """A worker exited with an error or wrote no result; the message ends with the last lines of its log."""


def worker_env(device: str, threads: int | None, **extra: str) -> dict[str, str]:
    """A training worker's environment: offline, ``threads`` set before torch starts its thread pools, and on
    CPU no visible GPU (tunelab has no device key; hiding GPUs treats every side alike)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_worker(script: str, role: str, spec: Any, workdir: Path, name: str, *, env: Mapping[str, str] | None = None,
               verbose: bool = False, cwd: Path | None = None, tail: int = 40, python: str = sys.executable) -> Any:
    """Run ``script --worker role --spec S --result R`` once in a fresh interpreter; returns the JSON it wrote.

    ``spec`` (a dataclass or plain data) is written to ``workdir/<name>.spec.json``; the worker writes its result
    to ``workdir/<name>.json``. Its output goes to ``<name>.log`` (to the terminal with ``verbose``). ``python``:
    another interpreter, for a peer installed in its own environment (LLaMA-Factory)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    spec_path, result_path, log_path = (workdir / f"{slug}{suffix}" for suffix in (".spec.json", ".json", ".log"))
    spec_path.write_text(to_json(spec))
    command = [python, str(Path(script).resolve()), "--worker", role, "--spec", str(spec_path),
               "--result", str(result_path)]
    with log_path.open("w") as log:
        done = subprocess.run(command, env=env, cwd=cwd, stdout=None if verbose else log,
                              stderr=None if verbose else subprocess.STDOUT, check=False)
    if done.returncode != 0 or not result_path.is_file():
        lines = [] if verbose else log_path.read_text(errors="replace").splitlines()[-tail:]
        raise WorkerFailed("\n".join([f"{role} worker {name} failed (exit {done.returncode})", *lines]))
    return json.loads(result_path.read_text())


def run_order(first: Sequence[str], repeats: int) -> list[str]:
    """A B, B A, A B, ...: alternating which side goes first cancels a steady drift in machine load."""
    order: list[str] = []
    for index in range(repeats):
        order += first if index % 2 == 0 else first[::-1]
    return order


def run_sides(script: str, spec: SideSpec, repeats: int, label: str, first: str = "trl",
              verbose: bool = False) -> dict[str, list[SideResult]]:
    """Each side ``repeats`` times, every run a fresh worker of ``script``, ``first`` first and then alternating."""
    env = worker_env(spec.device, spec.threads)
    results: dict[str, list[SideResult]] = {side: [] for side in SIDES}
    for index, side in enumerate(run_order([first, *(s for s in SIDES if s != first)], repeats)):
        print(f"[{index + 1}/{2 * repeats}] {label} with {side} ...", file=sys.stderr, flush=True)
        try:
            raw = run_worker(script, side, spec, Path(spec.workdir), f"{side}-{index}", env=env, verbose=verbose)
        except WorkerFailed as error:
            raise SystemExit(str(error)) from None
        results[side].append(SideResult(**raw))
    return results


Runner = Callable[[Any, float, Path], SideResult]


def side_worker(spec_type: Callable[..., Any], runs: Mapping[str, Runner], args: argparse.Namespace) -> None:
    """A side's worker process: read the spec, run ``runs[args.worker](spec, started, run_dir)`` once (``started``:
    when the worker began, for the setup time; ``run_dir``: a fresh output folder), write its SideResult."""
    started, load = time.perf_counter(), os.getloadavg()[0]
    spec = spec_type(**json.loads(Path(args.spec).read_text()))
    result_path = Path(args.result)
    result = runs[args.worker](spec, started, result_path.with_suffix(""))
    result.load_average = load
    result_path.write_text(to_json(result))


LF_TOOL = REPO_ROOT.parent / "shared" / "tools" / "llamafactory-venv"


def lf_template_for(tokenizer: str | Path) -> str:
    """LLaMA-Factory's template name matching a tokenizer's own chat template."""
    return "llama3" if "llama3" in str(tokenizer) else "qwen"


def add_llamafactory_args(parser: argparse.ArgumentParser, what: str) -> None:
    """--llamafactory and --lf-template, for a benchmark that can run LLaMA-Factory as a third side."""
    parser.add_argument("--llamafactory", action="store_true", help="also run LLaMA-Factory 0.9.5 (built by "
                        f"../shared/tools/llamafactory-venv) on the same model, {what} and settings")
    parser.add_argument("--lf-template", default=None, help="LLaMA-Factory's template name matching the "
                        "tokenizer's own (default: llama3 for a Llama-3 tokenizer, else qwen)")


def llamafactory_peers(args: argparse.Namespace) -> dict[str, str]:
    """``compare``'s peers for --llamafactory: its interpreter, or a clear stop when it cannot be built."""
    if not args.llamafactory:
        return {}
    python = llamafactory_python()
    if python is None:
        raise SystemExit(f"LLaMA-Factory is not available ({LF_TOOL} could not build its environment)")
    return {"llamafactory": python}


def llamafactory_python() -> str | None:
    """The LLaMA-Factory environment's interpreter, built by the shared tool on first use; None if unavailable."""
    if not LF_TOOL.is_file():
        return None
    done = subprocess.run([str(LF_TOOL)], capture_output=True, text=True, timeout=1800)
    venv = Path(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else None
    return str(venv / "bin" / "python") if venv and (venv / "bin" / "llamafactory-cli").is_file() else None


@dataclass
class Comparison:
    """One tunelab-vs-TRL run, as a benchmark's report sees it."""

    info: dict[str, str]
    model: dict[str, Any]
    spec: Any
    results: dict[str, list[SideResult]]


def compare(script: str, args: argparse.Namespace, label: str, make_spec: Callable[..., SideSpec],
            peers: Mapping[str, str] | None = None) -> Comparison:
    """The parent's part of a side-by-side benchmark (flags of ``side_by_side_parser``): the model, the spec
    (``make_spec`` gets SideSpec's fields as keywords and adds its own), both sides' workers, the machine.
    ``peers``: further sides, each ``--repeats`` times after the two, in its own interpreter (name -> python)."""
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix=f"{Path(script).stem}-") as workdir:
        model_path, model = prepare_model(args.model, Path(workdir) / "model", args.tokenizer, args.hidden_size,
                                          args.layers, args.seed, args.arch)
        spec = make_spec(model=model_path, data=str(Path(args.data).resolve()), rows=args.rows, steps=args.steps,
                         batch_size=args.batch_size, grad_accum=args.grad_accum, learning_rate=args.lr,
                         seed=args.seed, warmup=args.warmup, device=device, bf16=args.bf16,
                         gradient_checkpointing=args.gradient_checkpointing, threads=args.threads, workdir=workdir)
        results = run_sides(script, spec, args.repeats, label, args.first, args.verbose)
        env = worker_env(spec.device, spec.threads)
        for peer, python in (peers or {}).items():
            results[peer] = []
            for index in range(args.repeats):
                print(f"[peer] {label} with {peer} ...", file=sys.stderr, flush=True)
                try:
                    raw = run_worker(script, peer, spec, Path(workdir), f"{peer}-{index}", env=env,
                                     verbose=args.verbose, python=python)
                except WorkerFailed as error:
                    raise SystemExit(str(error)) from None
                results[peer].append(SideResult(**raw))
    model["params"] = model["params"] or results["tunelab"][0].settings.get("total_params", 0)
    return Comparison(machine_description(device, args.threads), model, spec, results)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def add_model_args(parser: argparse.ArgumentParser, tokenizer: Path) -> None:
    """--model, or the random Qwen2's tokenizer and size."""
    parser.add_argument("--model", help="local model folder with its tokenizer; default: a random small Qwen2 "
                                        "with --tokenizer")
    parser.add_argument("--tokenizer", default=str(tokenizer), help="tokenizer of the random model")
    parser.add_argument("--hidden-size", type=int, default=256, help="random model: hidden size")
    parser.add_argument("--layers", type=int, default=4, help="random model: decoder layers")
    parser.add_argument("--arch", choices=("qwen2", "llama"), default="qwen2",
                        help="random model: its shape (llama for the Llama-3 tokenizer)")


def add_run_args(parser: argparse.ArgumentParser, *, rows: int, steps: int, warmup: int, batch_size: int,
                 lr: float) -> None:
    """How much to train and how, with each benchmark's defaults."""
    parser.add_argument("--rows", type=int, default=rows, help="records used (the first N)")
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=warmup, help="first steps left out of the timed window")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=42)


def add_machine_args(parser: argparse.ArgumentParser) -> None:
    """Device, threads and output of a training benchmark."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per worker (default: torch's choice, one per core); 1 is slower but "
                             "far less disturbed by other processes on a shared machine")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--verbose", action="store_true", help="show the workers' own output")


def add_worker_args(parser: argparse.ArgumentParser, roles: Sequence[str]) -> None:
    """The hidden flags a worker process is started with (``run_worker``)."""
    parser.add_argument("--worker", choices=roles, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def side_by_side_parser(doc: str, *, data: Path, tokenizer: Path, rows: int, steps: int, batch_size: int,
                        lr: float, peers: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The flags of every tunelab-vs-TRL benchmark (``compare`` reads them); each adds its own. ``peers``: the
    names of further sides a benchmark can run (``compare``'s peers)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(parser, tokenizer)
    parser.add_argument("--data", default=str(data), help="the data file both sides read")
    add_run_args(parser, rows=rows, steps=steps, warmup=2, batch_size=batch_size, lr=lr)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, order alternating")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision on both sides")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides (TRL's default)")
    parser.add_argument("--first", choices=SIDES, default="trl", help="side that runs first")
    add_machine_args(parser)
    add_worker_args(parser, (*SIDES, *peers))
    return parser


# --------------------------------------------------------------------------------------------------
# Medians, ratios, best of runs, step by step
# --------------------------------------------------------------------------------------------------

def median_of(runs: Iterable[Any], key: str | Callable[[Any], float]) -> float:
    """The median over runs of an attribute (by name) or of ``key(run)``."""
    get = key if callable(key) else (lambda run: getattr(run, key))
    return statistics.median(get(run) for run in runs)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where either is missing or b is 0."""
    return a / b if a is not None and b else None


def fmt_ratio(value: float | None) -> str:
    """A ratio as the tables print it: ``1.23x``, ``-`` where there is none."""
    return "-" if value is None else f"{value:.2f}x"


def fastest_step_seconds(runs: Sequence[SideResult], start: int) -> list[float] | None:
    """Each step's fastest time over a side's runs, from step ``start`` on: an estimate for a quiet machine.
    None with fewer than two runs, or when the runs did not see the same tokens per step (not the same work)."""
    if len(runs) < 2 or any(r.step_tokens != runs[0].step_tokens for r in runs):
        return None
    return [min(times) for times in zip(*(r.step_seconds[start:] for r in runs), strict=True)]


def undisturbed(run: SideResult, step: int) -> bool:
    """Whether other processes left torch's threads alone during ``step``: they used at most the cores torch
    does not use (none with one thread per core), plus QUIET_CORES."""
    cpus, threads = run.settings.get("cpus"), run.settings.get("torch_threads")
    free = max(cpus - threads, 0) if cpus and threads else 0
    return run.step_other_cores[step] < free + QUIET_CORES


def paired_step_ratio(tunelab: list[SideResult], trl: list[SideResult], warmup: int,
                      only_undisturbed: bool = False) -> tuple[float | None, int]:
    """Median over steps of tunelab's time for a step / TRL's time for the same step, and how many steps were
    compared. Each side's time for a step is the median over its runs (with ``only_undisturbed``, over the runs
    in which that step was undisturbed). Valid because both sides train on the same batches in the same order,
    which is checked (identical tokens per step)."""
    runs = [*tunelab, *trl]
    if any(r.step_tokens != runs[0].step_tokens for r in runs):
        return None, 0

    def step_time(side_runs: list[SideResult], k: int) -> float | None:
        times = [r.step_seconds[k] for r in side_runs if not only_undisturbed or undisturbed(r, k)]
        return statistics.median(times) if times else None

    ratios = []
    for k in range(window_start(warmup, runs[0].steps), runs[0].steps):
        a, b = step_time(tunelab, k), step_time(trl, k)
        if a is not None and b:
            ratios.append(a / b)
    return (statistics.median(ratios) if ratios else None), len(ratios)


def differing_settings(a: SideResult, b: SideResult, skip: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """The recorded settings (and loss tokens) in which two runs differ, but for the keys in ``skip``."""
    keys = sorted((set(a.settings) | set(b.settings)) - set(skip))
    diff = {k: (a.settings.get(k), b.settings.get(k)) for k in keys if a.settings.get(k) != b.settings.get(k)}
    if a.loss_tokens != b.loss_tokens:
        diff["loss computed on"] = (a.loss_tokens, b.loss_tokens)
    return diff


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[int] = (), align: str = "",
          gap: str = "  ") -> list[str]:
    """A plain-text table's lines. Each column is as wide as its widest cell, or ``widths[i]`` if that is more;
    ``align`` has one ``<`` or ``>`` per column (default: the first left, the others right). A row may have
    fewer cells than the header; trailing blanks are dropped."""
    count = len(header)
    align = align or "<" + ">" * (count - 1)
    minimum = [*widths, *[0] * (count - len(widths))]
    width = [max([minimum[i], *(len(row[i]) for row in [header, *rows] if i < len(row))]) for i in range(count)]

    def line(cells: Sequence[str]) -> str:
        return gap.join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, width, strict=False)).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(value: Any) -> str:
    """Results as JSON text: dataclasses become objects and paths strings; non-ASCII text stays readable."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=_jsonable)


def matmul_peak_flops(threads: int | None, device: str = "cpu", bf16: bool = False, size: int | None = None,
                      repeats: int = 10) -> float:
    """The matmul rate of this process (FLOP/s) on the sides' device, in the precision of their matmuls (bf16 under
    ``--bf16`` on a GPU; on a CPU fp32, as every CPU figure in docs/benchmarks.md was measured): MFU's denominator."""
    import time

    import torch

    if threads:
        torch.set_num_threads(threads)
    on_gpu = device == "cuda"
    dtype = torch.bfloat16 if bf16 and on_gpu else torch.float32
    size = size or (8192 if on_gpu else 1024)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    wait = torch.cuda.synchronize if on_gpu else (lambda: None)
    torch.mm(a, b)
    wait()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        wait()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def matmul_peak_name(device: str, bf16: bool) -> str:
    """What ``matmul_peak_flops`` measured, for the MFU line."""
    return "bf16" if bf16 and device == "cuda" else "fp32"
