"""GRPO step time: tunelab's ``grpo`` stage against a plain TRL ``GRPOTrainer``, same model, prompts and rewards.

Run from the repository root::

    .venv/bin/python benchmarks/grpo_step.py --threads 1                  # random small Qwen2 + real tokenizer
    .venv/bin/python benchmarks/grpo_step.py --device cuda --model /path/to/model --steps 30 --bf16

What is compared, and why it is fair (the measurement helpers are those of ``sft_throughput.py``):

* tunelab runs its public recipe as ``tunelab train`` would: ``load_config(None, ["stage=grpo", ...])`` then
  ``all_stages()["grpo"].run()(cfg, callbacks=...)``. TRL runs ``GRPOTrainer(model=<path>, reward_funcs=...,
  args=GRPOConfig(...), train_dataset=<conversational prompts>, peft_config=LoraConfig(...))``.
* Same prompts: the first ``--rows`` GSM8K questions of ``tests/fixtures/data/gsm8k/train.jsonl``. tunelab reads
  the file itself through a ``dataset_info.json`` entry with ``extract_answer: gsm8k`` and puts the R1 recipe's
  system prompt (``tunelab.rewards.r1.R1_SYSTEM_PROMPT``) in front; TRL gets the same rows already built,
  ``{"prompt": [system, user], "answer": "<number after ####>"}``. Both shuffle them with the same seed.
* Same rewards: the five R1 rewards (correctness, int, strict_format, soft_format, xmlcount), the very same
  functions on both sides (``tunelab.rewards.registry.load_rewards``). tunelab additionally writes a few
  sampled completions with their rewards to ``completions.jsonl`` every logging step (``log_completions``, on
  by default): part of what tunelab does, so it stays on.
* Same model and method: the same saved weights, LoRA with the same rank, alpha (2 x rank), dropout 0 and
  targets (every linear layer) given to TRL as a ``peft_config`` on both sides, so the KL reference is the base
  with the adapter disabled on both. Same answers per step (``--batch-size`` = completions per device per
  step, as in TRL), ``--num-generations``, ``--max-completion-length``, temperature, beta, loss type,
  accumulation, learning rate, steps, seed, precision.
* TRL's ``GRPOConfig`` defaults that differ from tunelab's are set alike on the TRL side: ``bf16`` (TRL: on;
  tunelab: off unless asked), gradient checkpointing (TRL: on; tunelab: off; ``--gradient-checkpointing``
  sets it on both), ``beta`` (TRL: 0.0, no reference pass; tunelab: 0.04), ``learning_rate`` (TRL 1e-6),
  ``max_completion_length`` (TRL 512, tunelab 256), ``logging_steps`` (TRL 10), plus tunelab's
  ``lr_scheduler_type`` (cosine), ``logging_first_step`` and ``data_seed``. ``disable_dropout`` (False) and
  TRL's own ``log_completions`` (False; tunelab keeps it off and logs with its own writer) are alike already.
  The settings the two trainers end up with are recorded and any difference is printed.
* Each side runs in its own fresh process, the order alternating over ``--repeats``; medians are reported.
  One ``TrainerCallback`` times every optimizer step on both sides (``make_step_clock``): seconds per step is
  the mean over steps ``--warmup``+1 .. ``--steps``; setup (imports, data, model) and saving are outside the
  window. Tokens per step are TRL's own count (prompt + completion tokens, ``num_input_tokens_seen``), to
  show both sides did the same work (a random model rarely samples its end token, so completions run to
  ``--max-completion-length``).
* Where the time goes: TRL times its own phases (``profiling_context``: ``transformers.generate``,
  ``_calculate_rewards`` and each reward, ``_get_per_token_logps_and_entropies``, ``_prepare_inputs``,
  ``compute_loss``). The workers record those durations (on both sides alike) and the table splits a step
  into generation, rewards, the rest of the batch preparation (prompt templating and tokenizing, decoding,
  reference log-probs, advantages), the loss forward, and everything else (backward, optimizer, callbacks,
  logging).
* Peak memory: CUDA ``max_memory_allocated``, or on CPU the resident-set growth during training (a thread
  samples ``/proc/self/statm``), as in the SFT and DPO benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import (  # noqa: E402  (the shared measurement helpers)
    MIB,
    SideResult,
    build_random_model,
    machine_description,
    make_step_clock,
    paired_step_ratio,
    resolve_device,
    run_order,
    run_worker,
    summarize,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / "tests" / "fixtures" / "data" / "gsm8k" / "train.jsonl"
DEFAULT_TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "tokenizers" / "minimind"
SIDES = ("tunelab", "trl")
REWARDS = ["correctness", "int", "strict_format", "soft_format", "xmlcount"]
DATASET_NAME = "gsm8k_bench"
# The GRPO settings recorded from each trainer (next to sft_throughput's RECORDED_ARGS), so that a difference
# between the two sides is printed instead of discovered later.
GRPO_ARGS = ("beta", "loss_type", "num_generations", "max_completion_length", "temperature", "top_p", "top_k",
             "epsilon", "epsilon_high", "num_iterations", "scale_rewards", "importance_sampling_level",
             "generation_batch_size", "steps_per_generation", "mask_truncated_completions", "reward_weights",
             "disable_dropout", "log_completions", "shuffle_dataset", "use_vllm", "remove_unused_columns")
# TRL's profiling_context names -> the phase columns of the table.
PHASES = ("generate", "rewards", "prepare_other", "loss_forward", "other")


@dataclass
class Spec:
    model: str
    data: str
    rows: int
    steps: int
    batch_size: int
    grad_accum: int
    num_generations: int
    max_completion_length: int
    temperature: float
    beta: float
    loss_type: str
    learning_rate: float
    seed: int
    lora_rank: int
    logging_steps: int
    warmup: int
    device: str
    bf16: bool
    gradient_checkpointing: bool
    threads: int | None
    workdir: str
    profile: str | None = None  # a folder: each worker's cProfile statistics go there (slows both sides)


def gsm8k_prompts(path: str, rows: int, system_prompt: str) -> list[dict]:
    """TRL's conversational prompts: the R1 system prompt, the question, and the gold number as ``answer``."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": r["question"]}],
             "answer": r["answer"].rsplit("####", 1)[-1].strip()} for r in records[:rows]]


# --------------------------------------------------------------------------------------------------
# Measurement additions (inside the workers): TRL's own phase timings and the GRPO settings in effect
# --------------------------------------------------------------------------------------------------

PHASE_TOTALS: dict[str, float] = {}


def record_trl_phases() -> None:
    """Keep every duration TRL's ``profiling_context`` measures (it only forwards them to wandb/mlflow/trackio
    when those are configured): the same instrumentation, already in TRL's code, on both sides."""
    from trl.extras.profiling import ProfilingContext

    original = ProfilingContext._log_metrics

    def log_metrics(self: Any, duration: float) -> None:
        name = self.name.split(".", 1)[1] if self.name.startswith("GRPOTrainer.") else self.name
        PHASE_TOTALS[name] = PHASE_TOTALS.get(name, 0.0) + duration
        original(self, duration)

    ProfilingContext._log_metrics = log_metrics


def make_probe(clock: Any) -> Any:
    """A callback after the clock: snapshots of the phase totals at each step end, GRPO settings at the start."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.snapshots: list[dict[str, float]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for key in GRPO_ARGS:
                value = getattr(args, key, None)
                clock.settings[key] = value if value is None or isinstance(value, bool | int | float | str) \
                    else str(value)
            self.snapshots.append(dict(PHASE_TOTALS))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.snapshots.append(dict(PHASE_TOTALS))

    return Probe()


def phase_seconds(probe: Any, clock: Any, warmup: int) -> dict[str, float]:
    """Seconds per step in each phase over the timed window (snapshots[k] is taken at the end of step k)."""
    steps = len(probe.snapshots) - 1
    start = min(warmup, max(steps - 1, 0))
    first, last = probe.snapshots[start], probe.snapshots[-1]

    def spent(*names: str) -> float:
        return sum(last.get(name, 0.0) - first.get(name, 0.0) for name in names) / (steps - start)

    window = (clock.marks[-1][0] - clock.marks[start][0]) / (steps - start)
    generate = spent("transformers.generate", "transformers.generate_batch", "vLLM.generate")
    rewards = spent("_calculate_rewards")
    prepare = spent("_prepare_inputs")
    loss = spent("compute_loss")
    per_reward = {f"reward:{name}": spent(name) for name in REWARDS}
    return {"generate": generate, "rewards": rewards, "prepare_other": prepare - generate - rewards,
            "loss_forward": loss, "other": window - prepare - loss, "logps_all": spent(
                "_get_per_token_logps_and_entropies"), **per_reward}


# --------------------------------------------------------------------------------------------------
# The two sides (each runs in its own worker process)
# --------------------------------------------------------------------------------------------------

def run_tunelab(spec: Spec, started: float, run_dir: Path) -> SideResult:
    from tunelab.config import load_config
    from tunelab.rewards.r1 import R1_SYSTEM_PROMPT
    from tunelab.stage_registry import all_stages

    overrides = {
        "stage": "grpo", "model_name_or_path": spec.model, "dataset": DATASET_NAME,
        "dataset_dir": str(Path(spec.workdir) / "data"), "max_samples": spec.rows,
        "reward_funcs": ",".join(REWARDS), "system_prompt": R1_SYSTEM_PROMPT,
        "num_generations": spec.num_generations, "max_completion_length": spec.max_completion_length,
        "temperature": spec.temperature, "beta": spec.beta, "loss_type": spec.loss_type,
        "per_device_train_batch_size": spec.batch_size, "gradient_accumulation_steps": spec.grad_accum,
        "learning_rate": spec.learning_rate, "max_steps": spec.steps, "lora_rank": spec.lora_rank,
        "lora_target": "all", "seed": spec.seed, "bf16": spec.bf16,
        "gradient_checkpointing": spec.gradient_checkpointing, "logging_steps": spec.logging_steps,
        "save_steps": max(spec.steps, 500), "output_dir": str(run_dir), "overwrite_output_dir": True,
        "report_to": "none", "plot_loss": False,
    }
    # key=value overrides are read as YAML: a JSON string keeps the system prompt's newlines
    cfg = load_config(None, [f"{key}={json.dumps(value)}" for key, value in overrides.items()])
    if cfg.system_prompt != R1_SYSTEM_PROMPT or not cfg.log_completions:
        raise SystemExit("tunelab config: system_prompt or log_completions not as intended")
    clock = make_step_clock(started)
    probe = make_probe(clock)
    all_stages()["grpo"].run()(cfg, callbacks=[clock, probe])
    result = summarize("tunelab", clock, spec.warmup, "completion tokens (GRPO)")
    result.settings["phases"] = phase_seconds(probe, clock, spec.warmup)
    samples = run_dir / "completions.jsonl"
    result.settings["completions_logged"] = len(samples.read_text().splitlines()) if samples.is_file() else 0
    return result


def run_trl(spec: Spec, started: float, run_dir: Path) -> SideResult:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from tunelab.rewards.r1 import R1_SYSTEM_PROMPT
    from tunelab.rewards.registry import load_rewards
    from tunelab.rewards.settings import RewardSettings

    rewards = load_rewards(REWARDS, RewardSettings(reward_funcs=REWARDS))
    dataset = Dataset.from_list(gsm8k_prompts(spec.data, spec.rows, R1_SYSTEM_PROMPT))
    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    args = GRPOConfig(
        output_dir=str(run_dir), max_steps=spec.steps, save_steps=max(spec.steps, 500), report_to="none",
        per_device_train_batch_size=spec.batch_size, gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate, seed=spec.seed, num_generations=spec.num_generations,
        max_completion_length=spec.max_completion_length, temperature=spec.temperature,
        beta=spec.beta,  # TRL's default is 0.0 (no reference pass), tunelab's 0.04: set on both
        loss_type=spec.loss_type,
        bf16=spec.bf16,  # TRL's default is on
        gradient_checkpointing=spec.gradient_checkpointing,  # TRL's default is on, tunelab's off
        use_cpu=spec.device == "cpu",
        # what tunelab's training_arguments sets for every stage, set alike here
        logging_steps=spec.logging_steps, logging_first_step=True, lr_scheduler_type="cosine",
        data_seed=spec.seed, include_num_input_tokens_seen="non_padding",
    )
    lora = LoraConfig(r=spec.lora_rank, lora_alpha=2 * spec.lora_rank, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    clock = make_step_clock(started)
    probe = make_probe(clock)
    trainer = GRPOTrainer(model=spec.model, reward_funcs=rewards, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora, callbacks=[clock, probe])
    trainer.train()
    result = summarize("trl", clock, spec.warmup, "completion tokens (GRPO)")
    result.settings["phases"] = phase_seconds(probe, clock, spec.warmup)
    return result


def worker_main(side: str, spec_path: Path, result_path: Path) -> None:
    started = time.perf_counter()
    load = os.getloadavg()[0]
    spec = Spec(**json.loads(spec_path.read_text()))
    record_trl_phases()
    run = run_tunelab if side == "tunelab" else run_trl
    if spec.profile:  # the whole worker, setup included: read the training part with pstats (see --profile)
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(run, spec, started, result_path.with_suffix(""))
        profiler.dump_stats(str(Path(spec.profile) / f"{result_path.stem}.prof"))
    else:
        result = run(spec, started, result_path.with_suffix(""))
    result.load_average = load
    result_path.write_text(json.dumps(asdict(result)))


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

def seconds_per_step(run: SideResult, warmup: int) -> float:
    return run.window_seconds / (run.steps - min(warmup, run.steps - 1))


def cpu_seconds_per_step(run: SideResult, warmup: int) -> float:
    """Process CPU time per timed step (all its threads): less sensitive than wall time to other processes
    taking the core away, though not to their sharing caches and memory bandwidth."""
    timed = run.step_cpu_seconds[min(warmup, run.steps - 1):]
    return sum(timed) / len(timed)


def best_seconds_per_step(runs: list[SideResult], warmup: int) -> float | None:
    """The fastest time of each timed step over a side's runs, averaged: an estimate for a quiet machine. Valid
    when all runs did the same work per step (same tokens per step), which is checked."""
    if len(runs) < 2 or any(r.step_tokens != runs[0].step_tokens for r in runs):
        return None
    start = min(warmup, runs[0].steps - 1)
    fastest = [min(times) for times in zip(*(r.step_seconds[start:] for r in runs), strict=True)]
    return sum(fastest) / len(fastest)


def side_rows(spec: Spec, results: dict[str, list[SideResult]]) -> dict[str, dict[str, Any]]:
    rows = {}
    for side, runs in results.items():
        window = runs[0].steps - min(spec.warmup, runs[0].steps - 1)
        rows[side] = {
            "s/step": statistics.median(seconds_per_step(r, spec.warmup) for r in runs),
            "CPU s/step": statistics.median(cpu_seconds_per_step(r, spec.warmup) for r in runs),
            "best s/step": best_seconds_per_step(runs, spec.warmup),
            "per run": [seconds_per_step(r, spec.warmup) for r in runs],
            "peak MiB": statistics.median(r.peak_memory_bytes for r in runs) / MIB,
            "peak per run": [r.peak_memory_bytes / MIB for r in runs],
            "tokens/step": statistics.median(r.window_tokens / window for r in runs),
            "phases": {name: statistics.median(r.settings["phases"][name] for r in runs)
                       for name in runs[0].settings["phases"]},
            "final loss": runs[-1].final_loss, "trainable": runs[-1].trainable_params,
            "setup s": statistics.median(r.setup_seconds for r in runs),
            "other cores": [round(r.other_cpu_cores, 2) for r in runs],
        }
    return rows


def ratio(a: float | None, b: float | None) -> float:
    return a / b if a is not None and b else float("nan")


def _num(value: float | None, width: int, digits: int = 3) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def report(info: dict, model: dict, spec: Spec, results: dict[str, list[SideResult]]) -> str:
    rows = side_rows(spec, results)
    t, p = rows["tunelab"], rows["trl"]
    lines = [f"GRPO step time, {info['date']}: {info['cpu']}" + (f", GPU {info['gpu']}" if "gpu" in info else ""),
             f"torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}, peft {info['peft']}",
             f"model: {model['name']} ({model['params']:,} parameters); first {spec.rows} GSM8K prompts + R1 system "
             f"prompt, rewards {', '.join(REWARDS)}; LoRA r{spec.lora_rank}; {spec.batch_size} answers/step "
             f"({spec.batch_size // spec.num_generations} prompts x {spec.num_generations} generations) x "
             f"{spec.grad_accum} accumulation, max completion {spec.max_completion_length}, temperature "
             f"{spec.temperature}, beta {spec.beta}, loss {spec.loss_type}, {spec.steps} steps (first {spec.warmup} "
             f"left out), gradient checkpointing {'on' if spec.gradient_checkpointing else 'off'}, "
             f"{'bf16' if spec.bf16 else 'fp32'}, {spec.device}; {len(results['trl'])} runs per side (medians)",
             "",
             f"{'':10}{'s/step':>9}{'peak MiB':>10}{'CPU s/step':>12}{'best s/step':>13}{'tokens/step':>13}"
             f"{'final loss':>12}{'trainable':>11}{'setup s':>9}"]
    for side, row in rows.items():
        lines.append(f"{side:10}{row['s/step']:>9.3f}{row['peak MiB']:>10.1f}{row['CPU s/step']:>12.3f}"
                     f"{_num(row['best s/step'], 13)}{row['tokens/step']:>13.1f}{row['final loss'] or 0:>12.3g}"
                     f"{row['trainable']:>11,}{row['setup s']:>9.1f}")
    lines.append(f"{'ratio':10}{ratio(t['s/step'], p['s/step']):>8.2f}x{ratio(t['peak MiB'], p['peak MiB']):>9.2f}x"
                 f"{ratio(t['CPU s/step'], p['CPU s/step']):>11.2f}x{ratio(t['best s/step'], p['best s/step']):>12.2f}x"
                 f"{ratio(t['tokens/step'], p['tokens/step']):>12.2f}x   (tunelab / TRL; time above 1: tunelab slower)")
    paired, count = paired_step_ratio(results["tunelab"], results["trl"], spec.warmup)
    lines.append("step by step (same prompts and tokens per step on both sides), median tunelab/TRL step-time "
                 f"ratio: {paired:.2f} over {count} steps" if paired is not None else
                 "note: the sides did not process the same tokens per step; no step-by-step ratio")
    lines += ["", "seconds per step by phase (TRL's own profiling_context timings, medians over runs):",
              f"{'':10}" + "".join(f"{name:>15}" for name in PHASES)]
    for side, row in rows.items():
        lines.append(f"{side:10}" + "".join(f"{row['phases'][name]:>15.3f}" for name in PHASES))
    lines.append(f"{'ratio':10}" + "".join(f"{ratio(t['phases'][n], p['phases'][n]):>14.2f}x" for n in PHASES))
    lines.append("rewards, s/step each: " + "; ".join(
        f"{name} {t['phases'][f'reward:{name}'] * 1e3:.2f} / {p['phases'][f'reward:{name}'] * 1e3:.2f} ms"
        for name in REWARDS) + " (tunelab / TRL)")
    lines += ["", f"s/step per run: tunelab {[round(x, 3) for x in t['per run']]}, "
                  f"TRL {[round(x, 3) for x in p['per run']]}",
              f"peak MiB per run: tunelab {[round(x) for x in t['peak per run']]}, "
              f"TRL {[round(x) for x in p['peak per run']]}",
              f"CPU cores used by other processes while timing, per run: tunelab {t['other cores']}, "
              f"TRL {p['other cores']}",
              f"tunelab wrote {results['tunelab'][0].settings.get('completions_logged', 0)} sampled completions to "
              "completions.jsonl per run"]
    first_t, first_p = results["tunelab"][0].settings, results["trl"][0].settings
    skip = {"phases", "completions_logged"}
    diff = {k: (first_t.get(k), first_p.get(k)) for k in sorted(set(first_t) | set(first_p))
            if k not in skip and first_t.get(k) != first_p.get(k)}
    if diff:
        lines.append("settings the two trainers ended up with differently:")
        lines += [f"  {key}: tunelab={a!r}  TRL={b!r}" for key, (a, b) in diff.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local model folder; default: a random small Qwen2 + minimind tokenizer")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="GSM8K JSONL (question, answer '... #### N')")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="answers per device per step (as in TRL)")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (TRL's default is 0.0)")
    parser.add_argument("--loss-type", default="dapo")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides (TRL's default)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", metavar="DIR", help="write each worker's cProfile statistics to DIR/<side>-<n>"
                        ".prof (e.g. python -m pstats); profiling slows both sides, so timings are then not the "
                        "result")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, Path(args.spec), Path(args.result))
        return 0
    if (args.batch_size * args.grad_accum) % args.num_generations:
        parser.error("--batch-size x --grad-accum must be a multiple of --num-generations")
    device = resolve_device(args.device)
    data = Path(args.data).resolve()
    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as workdir:
        if args.model:
            model, model_path = {"name": args.model, "params": 0}, str(Path(args.model).resolve())
        else:
            model_path = str(Path(workdir) / "model")
            model = build_random_model(DEFAULT_TOKENIZER, Path(model_path), args.hidden_size, args.layers, args.seed)
        (Path(workdir) / "data").mkdir()
        (Path(workdir) / "data" / "dataset_info.json").write_text(json.dumps(
            {DATASET_NAME: {"file_name": str(data), "options": {"extract_answer": "gsm8k"}}}))
        spec = Spec(model=model_path, data=str(data), rows=args.rows, steps=args.steps, batch_size=args.batch_size,
                    grad_accum=args.grad_accum, num_generations=args.num_generations,
                    max_completion_length=args.max_completion_length, temperature=args.temperature,
                    beta=args.beta, loss_type=args.loss_type, learning_rate=args.lr, seed=args.seed,
                    lora_rank=args.lora_rank, logging_steps=args.logging_steps, warmup=args.warmup, device=device,
                    bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing, threads=args.threads,
                    workdir=workdir, profile=str(Path(args.profile).resolve()) if args.profile else None)
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
        spec_path = Path(workdir) / "spec.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        results: dict[str, list[SideResult]] = {side: [] for side in SIDES}
        for index, side in enumerate(run_order(["trl", "tunelab"], args.repeats)):
            print(f"[{index + 1}/{2 * args.repeats}] GRPO with {side} ...", file=sys.stderr, flush=True)
            results[side].append(run_worker(side, index, spec, spec_path, script=__file__))
    info = machine_description(device, args.threads)
    if not model["params"]:
        model["params"] = results["tunelab"][0].settings.get("total_params", 0)
    if args.json:
        rows = side_rows(spec, results)
        print(json.dumps({"machine": info, "model": model, "spec": asdict(spec), "summary": rows,
                          "ratio": {"seconds_per_step": ratio(rows["tunelab"]["s/step"], rows["trl"]["s/step"]),
                                    "peak_memory": ratio(rows["tunelab"]["peak MiB"], rows["trl"]["peak MiB"]),
                                    "cpu_seconds_per_step": ratio(rows["tunelab"]["CPU s/step"],
                                                                  rows["trl"]["CPU s/step"]),
                                    "best_seconds_per_step": ratio(rows["tunelab"]["best s/step"],
                                                                   rows["trl"]["best s/step"]),
                                    "paired_step_time": paired_step_ratio(results["tunelab"], results["trl"],
                                                                          spec.warmup)[0]},
                          "results": {side: [asdict(r) for r in runs] for side, runs in results.items()}}))
    else:
        print(report(info, model, spec, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
