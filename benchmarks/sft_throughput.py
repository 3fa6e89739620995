"""SFT throughput: tunelab's recipe against a plain TRL ``SFTTrainer``, same model, data and settings.

Run from the repository root::

    .venv/bin/python benchmarks/sft_throughput.py            # random small Qwen2 + real tokenizer
    .venv/bin/python benchmarks/sft_throughput.py --model /path/to/local/model --device cuda --steps 50
    .venv/bin/python benchmarks/sft_throughput.py --json      # results as JSON on stdout

What is compared, and why it is fair:

* tunelab runs its public recipe ``tunelab.stages.sft.run_sft(TrainConfig(...))`` as a user would;
  TRL runs ``SFTTrainer(model=<path>, args=SFTConfig(...), train_dataset=<messages>, peft_config=...)``
  with TRL's defaults except the settings both sides must share (LoRA rank/alpha/targets or full,
  batch size, accumulation, learning rate, steps, max length, seed, precision, gradient checkpointing).
  Settings each framework picks for itself (optimizer, scheduler, which tokens carry loss) stay at each
  one's default and are listed in the output: they are part of what is being compared.
* Both sides read the same first ``--rows`` records of the same alpaca file and load the same weights
  from the same folder (a random model is built once and saved before either side starts).
* Each side runs in its own fresh Python process, so neither inherits the other's allocator state or
  warm caches, and peak memory is per side. With ``--repeats`` > 1 the order alternates (A B B A ...)
  so that drifting machine load hits both sides alike; medians over repeats are reported.
* Throughput is measured identically on both sides by one small ``TrainerCallback`` (``StepClock``):
  the time and the trainer's own non-padding token count (``include_num_input_tokens_seen=
  "non_padding"``, the attention-mask sum) are recorded at the end of every optimizer step; tokens/s
  is taken from the end of step ``--warmup`` to the end of the last step. Data preparation, model
  loading, the final checkpoint and saving are outside that window. A callback is needed because
  tunelab's run_sft also loads, tokenizes and saves: a clock around the call would time those too.
  (tunelab's own ``metrics.jsonl`` is read as a cross-check of the token count.)
* Shared machines: on a 2-core machine one busy neighbour makes a 2-thread torch step several times
  slower, so the CPU time used by everything else (``/proc/stat`` minus this process) is recorded per
  step. Besides the plain tokens/s (median over runs) the table shows two estimates of the speed on an
  idle machine: best of runs (the fastest time of each step over a side's runs, valid because all
  runs train on identical batches; needs ``--repeats`` >= 2) and undisturbed steps only (steps during
  which other processes used no more than the cores torch leaves free, see ``undisturbed``). With
  ``--threads 1`` on 2 cores one busy neighbour costs little, which makes runs far more repeatable.
* Both sides see the same batches in the same order (same seed, same sampler), so their step times
  can also be compared pairwise, step by step; the median of those ratios is robust to a busy machine.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset when training begins); on CPU the
  growth of the process's resident set size over its value when training begins, sampled every few
  milliseconds from ``/proc/self/statm`` by a background thread (tracemalloc does not see torch's
  allocations, and ``ru_maxrss`` would include model loading and data preparation).
"""

from __future__ import annotations

import argparse
import datetime
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"
DEFAULT_TOKENIZER = REPO_ROOT.parent / "shared" / "tokenizers" / "minimind"
SIDES = ("tunelab", "trl")
MIB = 1024 * 1024
QUIET_CORES = 0.1  # undisturbed: other processes used less than this beyond the cores torch leaves free

# Training arguments recorded from each trainer, so that settings the two sides do NOT share are shown
# next to the numbers instead of being discovered later.
RECORDED_ARGS = (
    "optim", "lr_scheduler_type", "learning_rate", "warmup_steps", "weight_decay", "max_grad_norm",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "seed", "data_seed", "bf16",
    "fp16", "gradient_checkpointing", "max_length", "packing", "padding_free", "logging_steps",
    "logging_first_step", "save_strategy", "save_steps", "dataloader_num_workers", "torch_compile",
    "group_by_length", "assistant_only_loss", "completion_only_loss", "report_to", "disable_tqdm",
    "dataloader_pin_memory", "use_cpu",
)


@dataclass
class Spec:
    """Everything both workers must agree on; written to JSON and read by each worker process."""

    model: str
    data: str
    rows: int
    steps: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    cutoff_len: int
    seed: int
    full: bool
    lora_rank: int
    lora_alpha: int
    lora_target: str
    logging_steps: int
    warmup: int
    device: str
    bf16: bool
    gradient_checkpointing: bool
    threads: int | None
    workdir: str


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


# --------------------------------------------------------------------------------------------------
# Measurement (runs inside the workers)
# --------------------------------------------------------------------------------------------------

def current_rss_bytes() -> int:
    """Resident set size now, from /proc (Linux); 0 where /proc is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (user, nice, system, irq, softirq, steal),
    from /proc/stat; 0 where it is missing. Minus this process's CPU time: what others used."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Background thread keeping the highest RSS seen. torch's CPU allocations are invisible to
    tracemalloc and ``ru_maxrss`` cannot be reset, so sampling is the way to get a per-phase peak."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            self._stop.wait(self.interval)

    def start(self) -> None:
        self.peak = current_rss_bytes()
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())
        return self.peak


def make_step_clock(started: float) -> Any:
    """The one callback both trainers get (``started``: when the worker began, to report setup time).
    Defined inside a function so that the parent process never imports transformers or torch."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Time and cumulative non-padding tokens at the end of each optimizer step, peak memory over
        the training steps, the logged losses and the training arguments actually in effect."""

        def __init__(self) -> None:
            # (wall, process CPU time, machine busy CPU time, step, tokens seen)
            self.marks: list[tuple[float, float, float, int, int]] = []
            self.losses: list[float] = []
            self.settings: dict[str, Any] = {}
            self.trainable_params = 0
            self.memory_base = 0
            self.memory_peak = 0
            self.setup_seconds = 0.0
            self.cuda = torch.cuda.is_available()
            self._sampler: RssSampler | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.setup_seconds = time.perf_counter() - started
            self.settings = {key: _plain(getattr(args, key, None)) for key in RECORDED_ARGS}
            model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
            if model is not None:
                self.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
                self.settings["total_params"] = sum(p.numel() for p in model.parameters())
                self.settings["model_dtype"] = str(next(model.parameters()).dtype)
                self.settings["attention"] = getattr(model.config, "_attn_implementation", None)
            self.settings["torch_threads"] = torch.get_num_threads()
            self.settings["cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            if optimizer is not None:
                inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
                self.settings["optimizer_class"] = type(inner).__name__
                self.settings["optimizer_fused"] = inner.defaults.get("fused")
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.memory_base = torch.cuda.memory_allocated()
            else:
                self.memory_base = current_rss_bytes()
                self._sampler = RssSampler()
                self._sampler.start()
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

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
                   **kwargs: Any) -> None:
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

    return StepClock()


def _plain(value: Any) -> Any:
    """JSON-friendly form of a TrainingArguments value (enums become their string value)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(getattr(value, "value", value))


def summarize(side: str, clock: Any, warmup: int, loss_tokens: str) -> SideResult:
    """Tokens/s from the end of step ``warmup`` to the end of the last step: the first steps pay
    one-off costs (lazy kernel selection, optimizer state allocation) that a long run amortizes."""
    marks = clock.marks  # marks[0] is on_train_begin, marks[k] the end of step k
    steps = marks[-1][3]
    start = min(warmup, max(steps - 1, 0))  # keep at least one step in the window
    (t0, c0, b0, _, tok0), (t1, c1, b1, _, tok1) = marks[start], marks[-1]
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
    )


# --------------------------------------------------------------------------------------------------
# The two sides (each runs in its own worker process)
# --------------------------------------------------------------------------------------------------

def run_tunelab(spec: Spec, started: float, run_dir: Path) -> SideResult:
    """tunelab's public recipe with a TrainConfig, as a user would call it."""
    from tunelab.config import TrainConfig
    from tunelab.runs import read_metrics
    from tunelab.stages.sft import run_sft

    cfg = TrainConfig(
        model_name_or_path=spec.model,
        dataset=spec.data,
        dataset_dir=str(Path(spec.data).parent),
        template=None,  # the tokenizer's own chat template, which TRL uses too
        cutoff_len=spec.cutoff_len,
        max_samples=spec.rows,
        output_dir=str(run_dir),
        overwrite_output_dir=True,
        max_steps=spec.steps,
        logging_steps=spec.logging_steps,
        save_steps=max(spec.steps, 500),  # no intermediate checkpoint inside the window (TRL: every 500)
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        finetuning_type="full" if spec.full else "lora",
        lora_rank=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_target=spec.lora_target,
        seed=spec.seed,
        bf16=spec.bf16,
        gradient_checkpointing=spec.gradient_checkpointing,
        plot_loss=False,  # drawn after training, outside the window; skipped only to save wall time
    )
    clock = make_step_clock(started)
    run_sft(cfg, callbacks=[clock])
    result = summarize("tunelab", clock, spec.warmup, "assistant replies (tunelab default)")
    tokens = [r["tokens_seen"] for r in read_metrics(run_dir) if "tokens_seen" in r]
    result.metrics_jsonl_tokens = tokens[-1] if tokens else None
    return result


def alpaca_to_messages(record: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """TRL's conversational format. The user turn is instruction and input joined by a newline,
    exactly as tunelab (and LLaMA-Factory) convert alpaca records, so both sides see the same text."""
    user = "\n".join(part for part in (record.get("instruction", ""), record.get("input", "")) if part)
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": record["output"]}]}


def run_trl(spec: Spec, started: float, run_dir: Path) -> SideResult:
    """Plain TRL: model given as a path, dataset as messages, defaults except the shared settings."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    records = json.loads(Path(spec.data).read_text(encoding="utf-8"))[: spec.rows]
    dataset = Dataset.from_list([alpaca_to_messages(r) for r in records])
    args = SFTConfig(
        output_dir=str(run_dir),
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        max_steps=spec.steps,
        max_length=spec.cutoff_len,
        seed=spec.seed,
        logging_steps=spec.logging_steps,
        save_steps=max(spec.steps, 500),
        # TRL defaults to bf16=True and gradient_checkpointing=True. Both change speed and memory far more
        # than any framework overhead, so both are shared (tunelab's defaults: fp32, no checkpointing).
        bf16=spec.bf16,
        gradient_checkpointing=spec.gradient_checkpointing,
        include_num_input_tokens_seen="non_padding",
        use_cpu=spec.device == "cpu",  # TrainingArguments refuses bf16 on CPU without it
    )
    peft_config = None
    if not spec.full:
        targets: str | list[str] = ("all-linear" if spec.lora_target == "all"
                                    else [t.strip() for t in spec.lora_target.split(",")])
        peft_config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_dropout=0.0,
                                 target_modules=targets, task_type="CAUSAL_LM")
    clock = make_step_clock(started)
    trainer = SFTTrainer(model=spec.model, args=args, train_dataset=dataset, peft_config=peft_config,
                         callbacks=[clock])
    trainer.train()
    return summarize("trl", clock, spec.warmup, "all tokens (TRL default for messages)")


def worker_main(side: str, spec_path: Path, result_path: Path) -> None:
    """Entry point of a worker process: run one side once, write its SideResult as JSON."""
    started = time.perf_counter()
    load = os.getloadavg()[0]
    spec = Spec(**json.loads(spec_path.read_text()))
    run_dir = result_path.with_suffix("")  # a fresh output_dir per run
    result = (run_tunelab if side == "tunelab" else run_trl)(spec, started, run_dir)
    result.load_average = load
    result_path.write_text(json.dumps(asdict(result)))


# --------------------------------------------------------------------------------------------------
# Orchestration (parent process): model, workers, table
# --------------------------------------------------------------------------------------------------

def build_random_model(tokenizer_path: Path, out_dir: Path, hidden: int, layers: int, seed: int) -> dict:
    """A small Qwen2-shaped model with random weights and the real tokenizer, saved once so that both
    sides load identical weights. Realistic layout (grouped-query attention, SwiGLU MLP, RMSNorm, RoPE,
    tied embeddings) at a size a 2-core CPU trains in a few seconds per step."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    heads = max(hidden // 64, 1)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=max(hidden * 8 // 3 // 64 * 64, 64),
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1),
        max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return {"name": f"random Qwen2 (hidden {hidden}, {layers} layers, {heads} heads / "
                    f"{config.num_key_value_heads} kv, intermediate {config.intermediate_size}, "
                    f"vocab {config.vocab_size}, fp32) + tokenizer {tokenizer_path.name}",
            "params": sum(p.numel() for p in model.parameters())}


def resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine_description(device: str, threads: int | None) -> dict[str, str]:
    """CPU model and cores (or GPU name), library versions and date, for the report header."""
    import peft
    import torch
    import transformers
    import trl

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": f"{cpu}, {cores} cores (torch threads {threads or torch.get_num_threads()})",
            "device": device,
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_worker(side: str, index: int, spec: Any, spec_path: Path, verbose: bool = False,
               script: str | None = None) -> SideResult:
    """One side, once, in a fresh interpreter running ``script`` (default: this file) with ``--worker side``; its
    output goes to a log file shown only on failure. The other benchmarks call it with their own script."""
    result_path = Path(spec.workdir) / f"{side}-{index}.json"
    log_path = result_path.with_suffix(".log")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if spec.threads:  # before torch starts its thread pools
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec.threads)
    if spec.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # tunelab has no device key; hiding GPUs treats both sides alike
    command = [sys.executable, str(Path(script or __file__).resolve()), "--worker", side, "--spec", str(spec_path),
               "--result", str(result_path)]
    with log_path.open("w") as log:
        completed = subprocess.run(command, env=env, stdout=None if verbose else log,
                                   stderr=None if verbose else subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        tail = "" if verbose else "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"{side} worker failed (exit {completed.returncode}):\n{tail}")
    return SideResult(**json.loads(result_path.read_text()))


def run_order(first: list[str], repeats: int) -> list[str]:
    """A B, B A, A B, ...: alternating which side goes first cancels a steady drift in machine load."""
    order: list[str] = []
    for index in range(repeats):
        order += first if index % 2 == 0 else first[::-1]
    return order


# --------------------------------------------------------------------------------------------------
# Aggregation and report
# --------------------------------------------------------------------------------------------------

@dataclass
class Summary:
    """Medians over repeats for one side, plus the per-repeat throughputs."""

    tokens_per_second: float
    cpu_tokens_per_second: float
    best_tokens_per_second: float | None
    quiet_tokens_per_second: float | None
    quiet_steps: int
    per_repeat: list[float]
    other_cpu_cores: list[float]
    peak_memory_bytes: float
    median_step_seconds: float
    final_loss: float | None
    window_tokens: int
    window_steps: int
    total_tokens: int
    trainable_params: int
    process_max_rss_bytes: float
    setup_seconds: float


def summarize_side(runs: list[SideResult], warmup: int) -> Summary:
    first = runs[0]
    start = min(warmup, max(first.steps - 1, 0))
    return Summary(
        tokens_per_second=statistics.median(r.tokens_per_second for r in runs),
        cpu_tokens_per_second=statistics.median(r.cpu_tokens_per_second for r in runs),
        best_tokens_per_second=best_of_runs(runs, start),
        quiet_tokens_per_second=quiet_rate(runs, start)[0],
        quiet_steps=quiet_rate(runs, start)[1],
        per_repeat=[r.tokens_per_second for r in runs],
        other_cpu_cores=[r.other_cpu_cores for r in runs],
        peak_memory_bytes=statistics.median(r.peak_memory_bytes for r in runs),
        median_step_seconds=statistics.median(s for r in runs for s in r.step_seconds[start:]),
        final_loss=first.final_loss,
        window_tokens=first.window_tokens,
        window_steps=first.steps - start,
        total_tokens=first.total_tokens,
        trainable_params=first.trainable_params,
        process_max_rss_bytes=statistics.median(r.process_max_rss_bytes for r in runs),
        setup_seconds=statistics.median(r.setup_seconds for r in runs),
    )


def best_of_runs(runs: list[SideResult], start: int) -> float | None:
    """Window tokens over the sum of each step's fastest time across runs: an estimate of the speed
    on a quiet machine. Needs two runs or more, all on identical batches."""
    if len(runs) < 2 or any(r.step_tokens != runs[0].step_tokens for r in runs):
        return None
    fastest = [min(times) for times in zip(*(r.step_seconds[start:] for r in runs), strict=True)]
    return sum(runs[0].step_tokens[start:]) / sum(fastest) if sum(fastest) > 0 else None


def undisturbed(run: SideResult, step: int) -> bool:
    """Whether other processes left torch's threads alone during ``step``: they used at most the cores
    torch does not use (none with one thread per core), plus QUIET_CORES."""
    cpus, threads = run.settings.get("cpus"), run.settings.get("torch_threads")
    free = max(cpus - threads, 0) if cpus and threads else 0
    return run.step_other_cores[step] < free + QUIET_CORES


def quiet_rate(runs: list[SideResult], start: int) -> tuple[float | None, int]:
    """Tokens/s over only the timed steps that were undisturbed (all runs of a side pooled), and how
    many such steps there were."""
    tokens = seconds = 0.0
    count = 0
    for run in runs:
        for k in range(start, run.steps):
            if undisturbed(run, k):
                tokens, seconds, count = tokens + run.step_tokens[k], seconds + run.step_seconds[k], count + 1
    return (tokens / seconds if seconds else None), count


def paired_step_ratio(tunelab: list[SideResult], trl: list[SideResult], warmup: int,
                      only_undisturbed: bool = False) -> tuple[float | None, int]:
    """Median over steps of tunelab's time for a step / TRL's time for the same step, and how many steps
    were compared. Each side's time for a step is the median over its runs (with ``only_undisturbed``,
    over the runs in which that step was undisturbed). Valid because both sides train on the same
    batches in the same order, which is checked (identical tokens per step)."""
    runs = [*tunelab, *trl]
    if any(r.step_tokens != runs[0].step_tokens for r in runs):
        return None, 0
    start = min(warmup, max(runs[0].steps - 1, 0))

    def step_time(side_runs: list[SideResult], k: int) -> float | None:
        times = [r.step_seconds[k] for r in side_runs if not only_undisturbed or undisturbed(r, k)]
        return statistics.median(times) if times else None

    ratios = []
    for k in range(start, runs[0].steps):
        a, b = step_time(tunelab, k), step_time(trl, k)
        if a is not None and b:
            ratios.append(a / b)
    return (statistics.median(ratios) if ratios else None), len(ratios)


def differing_settings(a: SideResult, b: SideResult) -> dict[str, tuple[Any, Any]]:
    keys = sorted(set(a.settings) | set(b.settings))
    diff = {k: (a.settings.get(k), b.settings.get(k)) for k in keys if a.settings.get(k) != b.settings.get(k)}
    if a.loss_tokens != b.loss_tokens:
        diff["loss computed on"] = (a.loss_tokens, b.loss_tokens)
    return diff


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_report(info: dict, model: dict, spec: Spec, repeats: int,
                  results: dict[str, list[SideResult]]) -> str:
    """The human-readable table, the settings the two sides did not share, and the ratio line."""
    tl, tr = summarize_side(results["tunelab"], spec.warmup), summarize_side(results["trl"], spec.warmup)
    first_tl, first_tr = results["tunelab"][0], results["trl"][0]
    method = "full fine-tuning" if spec.full else (
        f"LoRA r={spec.lora_rank} alpha={spec.lora_alpha} targets={spec.lora_target}")
    rows: list[tuple[str, str, str, str]] = [
        ("trained (non-padding) tokens/s", f"{tl.tokens_per_second:,.0f}", f"{tr.tokens_per_second:,.0f}",
         _ratio(tl.tokens_per_second, tr.tokens_per_second)),
        ("  best of runs (fastest time per step)", _rate(tl.best_tokens_per_second),
         _rate(tr.best_tokens_per_second), _ratio(tl.best_tokens_per_second, tr.best_tokens_per_second)),
        (f"  undisturbed steps only ({tl.quiet_steps} vs {tr.quiet_steps} steps)",
         _rate(tl.quiet_tokens_per_second), _rate(tr.quiet_tokens_per_second),
         _ratio(tl.quiet_tokens_per_second, tr.quiet_tokens_per_second)),
        (f"peak memory, MiB ({first_tl.memory_kind})", f"{tl.peak_memory_bytes / MIB:,.0f}",
         f"{tr.peak_memory_bytes / MIB:,.0f}", _ratio(tl.peak_memory_bytes, tr.peak_memory_bytes)),
        ("final logged loss", _loss(tl.final_loss), _loss(tr.final_loss),
         _ratio(tl.final_loss, tr.final_loss) if first_tl.loss_tokens == first_tr.loss_tokens
         else "n/a"),  # a mean over different tokens: not comparable
        ("median step time, s", f"{tl.median_step_seconds:.3f}", f"{tr.median_step_seconds:.3f}",
         _ratio(tl.median_step_seconds, tr.median_step_seconds)),
        ("tokens / steps in the timed window", f"{tl.window_tokens:,} / {tl.window_steps}",
         f"{tr.window_tokens:,} / {tr.window_steps}", _ratio(tl.window_tokens, tr.window_tokens)),
        ("tokens seen over all steps", f"{tl.total_tokens:,}", f"{tr.total_tokens:,}",
         _ratio(tl.total_tokens, tr.total_tokens)),
        ("trainable parameters", f"{tl.trainable_params:,}", f"{tr.trainable_params:,}",
         _ratio(tl.trainable_params, tr.trainable_params)),
        ("process peak RSS, MiB (whole worker)", f"{tl.process_max_rss_bytes / MIB:,.0f}",
         f"{tr.process_max_rss_bytes / MIB:,.0f}",
         _ratio(tl.process_max_rss_bytes, tr.process_max_rss_bytes)),
        ("setup before training, s (not timed)", f"{tl.setup_seconds:.1f}", f"{tr.setup_seconds:.1f}",
         _ratio(tl.setup_seconds, tr.setup_seconds)),
    ]
    width = max(len(r[0]) for r in rows)
    others = ", ".join(f"{side} {[round(c, 2) for c in s.other_cpu_cores]}"
                       for side, s in (("tunelab", tl), ("TRL", tr)))
    lines = [
        "SFT throughput: tunelab run_sft vs plain TRL SFTTrainer",
        f"machine   {info['cpu']}" + (f"; GPU {info['gpu']}" if "gpu" in info else ""),
        f"software  torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}, "
        f"peft {info['peft']}, python {info['python']}",
        f"date      {info['date']}",
        f"model     {model['name']}, {model['params']:,} parameters",
        f"data      {spec.data}: first {spec.rows} records, cutoff {spec.cutoff_len} tokens",
        f"training  {method}; batch {spec.batch_size} x accumulation {spec.grad_accum}, "
        f"lr {spec.learning_rate}, {spec.steps} steps, seed {spec.seed}, {spec.device}, "
        f"{'bf16' if spec.bf16 else 'fp32'}, "
        f"gradient checkpointing {'on' if spec.gradient_checkpointing else 'off'}",
        f"timing    steps {spec.warmup + 1}-{spec.steps} of each run; {repeats} run(s) per side, "
        f"medians shown",
        f"busy      CPU cores used by other processes while timing, per run: {others}",
        "",
        f"{'':<{width}}  {'tunelab':>16}  {'TRL':>16}  {'tunelab/TRL':>11}",
    ]
    lines += [f"{name:<{width}}  {a:>16}  {b:>16}  {r:>11}" for name, a, b, r in rows]
    if repeats > 1:
        lines.append(f"tokens/s per run: tunelab {[round(x) for x in tl.per_repeat]}, "
                     f"TRL {[round(x) for x in tr.per_repeat]}")
    paired, _ = paired_step_ratio(results["tunelab"], results["trl"], spec.warmup)
    quiet, count = paired_step_ratio(results["tunelab"], results["trl"], spec.warmup, only_undisturbed=True)
    if paired is not None:
        lines.append(f"step by step (same batches), median tunelab/TRL step-time ratio: {paired:.2f} over "
                     f"all timed steps, {'-' if quiet is None else f'{quiet:.2f}'} over {count} steps "
                     "undisturbed on both sides (below 1: tunelab faster)")
    else:
        lines.append("note: the two sides saw different tokens per step; no paired comparison")
    lines.append("")
    diff = differing_settings(first_tl, first_tr)
    if diff:
        lines.append("settings the two sides chose differently (each framework's own default):")
        lines += [f"  {key}: tunelab={a!r}  TRL={b!r}" for key, (a, b) in diff.items()]
    losses = {side: {r.final_loss for r in results[side]} for side in SIDES}
    if any(len(v) > 1 for v in losses.values()):
        lines.append(f"note: final loss differs between runs of one side: {losses}")
    timed = sum(r.steps - min(spec.warmup, max(r.steps - 1, 0)) for side in SIDES for r in results[side])
    if tl.quiet_steps + tr.quiet_steps < 0.8 * timed:
        lines.append(f"warning: only {tl.quiet_steps + tr.quiet_steps} of {timed} timed steps ran "
                     "undisturbed by other processes; plain tokens/s is unreliable: prefer the step-by-step "
                     "ratio and best of runs, rerun with --threads 1, or on an idle machine")
    lines.append("")
    lines.append(f"ratio: tunelab/TRL trained tokens per second = "
                 f"{tl.tokens_per_second / tr.tokens_per_second:.2f} "
                 f"({tl.tokens_per_second:,.0f} vs {tr.tokens_per_second:,.0f} tokens/s)")
    return "\n".join(lines)


def json_report(info: dict, model: dict, spec: Spec, results: dict[str, list[SideResult]]) -> str:
    tl, tr = summarize_side(results["tunelab"], spec.warmup), summarize_side(results["trl"], spec.warmup)
    return json.dumps({
        "machine": info,
        "model": model,
        "spec": {k: v for k, v in asdict(spec).items() if k != "workdir"},
        "summary": {"tunelab": asdict(tl), "trl": asdict(tr)},
        "ratio": {
            "tokens_per_second": tl.tokens_per_second / tr.tokens_per_second,
            "peak_memory": tl.peak_memory_bytes / tr.peak_memory_bytes if tr.peak_memory_bytes else None,
            "cpu_tokens_per_second": tl.cpu_tokens_per_second / tr.cpu_tokens_per_second,
            "quiet_tokens_per_second": (tl.quiet_tokens_per_second / tr.quiet_tokens_per_second
                                        if tl.quiet_tokens_per_second and tr.quiet_tokens_per_second
                                        else None),
            "best_tokens_per_second": (tl.best_tokens_per_second / tr.best_tokens_per_second
                                       if tl.best_tokens_per_second and tr.best_tokens_per_second else None),
            "paired_step_time": paired_step_ratio(results["tunelab"], results["trl"], spec.warmup)[0],
            "paired_undisturbed_step_time": paired_step_ratio(results["tunelab"], results["trl"], spec.warmup,
                                                              only_undisturbed=True)[0],
        },
        "differing_settings": {k: list(v) for k, v in
                               differing_settings(results["tunelab"][0], results["trl"][0]).items()},
        "runs": {side: [asdict(r) for r in runs] for side, runs in results.items()},
    }, indent=2)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="local model folder with its tokenizer; default: a random small "
                                        "Qwen2 with the minimind tokenizer")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="tokenizer for the random model")
    parser.add_argument("--hidden-size", type=int, default=256, help="random model: hidden size")
    parser.add_argument("--layers", type=int, default=4, help="random model: decoder layers")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="alpaca-format JSON file")
    parser.add_argument("--rows", type=int, default=200, help="records used (the first N)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, order alternating")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--cutoff", type=int, default=512, help="max tokens per sample (both sides)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=None, help="default: 2 x rank (tunelab's default)")
    parser.add_argument("--lora-target", default="all", help="'all' (every linear layer) or a comma list")
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision on both sides")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per worker (default: torch's choice, one per core); 1 is "
                             "slower but far less disturbed by other processes on a shared machine")
    parser.add_argument("--first", choices=SIDES, default="trl", help="side that runs first")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--verbose", action="store_true", help="show the workers' own output")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, Path(args.spec), Path(args.result))
        return 0
    device = resolve_device(args.device)
    first = [args.first, *(s for s in SIDES if s != args.first)]
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as workdir:
        if args.model:
            model = {"name": str(Path(args.model).resolve()), "params": 0}
            model_path = str(Path(args.model).resolve())
        else:
            model_path = str(Path(workdir) / "model")
            model = build_random_model(Path(args.tokenizer), Path(model_path), args.hidden_size, args.layers,
                                       args.seed)
        spec = Spec(
            model=model_path, data=str(Path(args.data).resolve()), rows=args.rows, steps=args.steps,
            batch_size=args.batch_size, grad_accum=args.grad_accum, learning_rate=args.lr,
            cutoff_len=args.cutoff, seed=args.seed, full=args.full, lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha or 2 * args.lora_rank, lora_target=args.lora_target,
            logging_steps=min(args.logging_steps, args.steps), warmup=args.warmup, device=device,
            bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing, threads=args.threads,
            workdir=workdir,
        )
        spec_path = Path(workdir) / "spec.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        info = machine_description(device, args.threads)
        results: dict[str, list[SideResult]] = {side: [] for side in SIDES}
        for index, side in enumerate(run_order(first, args.repeats)):
            print(f"[{index + 1}/{2 * args.repeats}] training with {side} ...", file=sys.stderr, flush=True)
            results[side].append(run_worker(side, index, spec, spec_path, args.verbose))
    if not model["params"]:
        model["params"] = results["tunelab"][0].settings.get("total_params", 0)
    print(json_report(info, model, spec, results) if args.json
          else format_report(info, model, spec, args.repeats, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
