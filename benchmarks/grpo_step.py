"""GRPO step time: tunelab's ``grpo`` stage against a plain TRL ``GRPOTrainer``, same model, prompts and rewards.

Run from the repository root::

    .venv/bin/python benchmarks/grpo_step.py --threads 1                  # random small Qwen2 + real tokenizer
    .venv/bin/python benchmarks/grpo_step.py --device cuda --model /path/to/model --steps 30 --bf16

What is compared, and why it is fair (how both sides are run, timed and measured is ``harness.py``'s):

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
  One ``TrainerCallback`` times every optimizer step on both sides (the harness's ``make_step_clock``):
  seconds per step is the mean over steps ``--warmup``+1 .. ``--steps``; setup (imports, data, model) and
  saving are outside the window. Tokens per step are TRL's own count (prompt + completion tokens,
  ``num_input_tokens_seen``), to show both sides did the same work (a random model rarely samples its end
  token, so completions run to ``--max-completion-length``).
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

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (the shared harness, a sibling module)
    FIXTURES,
    MIB,
    Comparison,
    Runner,
    SideResult,
    SideSpec,
    compare,
    differing_settings,
    fastest_step_seconds,
    fmt_ratio,
    make_step_clock,
    median_of,
    paired_step_ratio,
    ratio,
    side_by_side_parser,
    side_worker,
    summarize,
    table,
    to_json,
    trl_lora,
    window_start,
)

DEFAULT_DATA = FIXTURES / "data" / "gsm8k" / "train.jsonl"
DEFAULT_TOKENIZER = FIXTURES / "tokenizers" / "minimind"
REWARDS = ["correctness", "int", "strict_format", "soft_format", "xmlcount"]
DATASET_NAME = "gsm8k_bench"
# The GRPO settings recorded from each trainer (next to the harness's RECORDED_ARGS), so that a difference
# between the two sides is printed instead of discovered later.
GRPO_ARGS = ("beta", "loss_type", "num_generations", "max_completion_length", "temperature", "top_p", "top_k",
             "epsilon", "epsilon_high", "num_iterations", "scale_rewards", "importance_sampling_level",
             "generation_batch_size", "steps_per_generation", "mask_truncated_completions", "reward_weights",
             "disable_dropout", "log_completions", "shuffle_dataset", "use_vllm", "remove_unused_columns")
# TRL's profiling_context names -> the phase columns of the table.
PHASES = ("generate", "rewards", "prepare_other", "loss_forward", "other")


@dataclass
class Spec(SideSpec):
    num_generations: int
    max_completion_length: int
    temperature: float
    beta: float
    loss_type: str
    lora_rank: int
    logging_steps: int
    profile: str | None = None  # a folder: each worker's cProfile statistics go there (slows both sides)


def gsm8k_prompts(path: str, rows: int, system_prompt: str) -> list[dict]:
    """TRL's conversational prompts: the R1 system prompt, the question, and the gold number as ``answer``."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": r["question"]}],
             "answer": r["answer"].rsplit("####", 1)[-1].strip()} for r in records[:rows]]


# --------------------------------------------------------------------------------------------------
# Measurement additions (inside the workers): TRL's own phase timings, cProfile
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


def make_probe() -> Any:
    """A callback after the clock: snapshots of the phase totals when training begins and at each step end."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.snapshots: list[dict[str, float]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.snapshots.append(dict(PHASE_TOTALS))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.snapshots.append(dict(PHASE_TOTALS))

    return Probe()


def phase_seconds(probe: Any, clock: Any, warmup: int) -> dict[str, float]:
    """Seconds per step in each phase over the timed window (snapshots[k] is taken at the end of step k)."""
    steps = len(probe.snapshots) - 1
    start = window_start(warmup, steps)
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


def instrumented(run: Runner) -> Runner:
    """``run`` recording TRL's phase timings, and under cProfile when the spec names a ``--profile`` folder: the
    whole worker, setup included (read the training part with pstats)."""
    def run_instrumented(spec: Spec, started: float, run_dir: Path) -> SideResult:
        record_trl_phases()
        if not spec.profile:
            return run(spec, started, run_dir)
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(run, spec, started, run_dir)
        profiler.dump_stats(str(Path(spec.profile) / f"{run_dir.name}.prof"))
        return result

    return run_instrumented


# --------------------------------------------------------------------------------------------------
# The two sides (each runs in its own worker process)
# --------------------------------------------------------------------------------------------------

def run_tunelab(spec: Spec, started: float, run_dir: Path) -> SideResult:
    from tunelab.config import load_config
    from tunelab.rewards.r1 import R1_SYSTEM_PROMPT
    from tunelab.stage_registry import all_stages

    overrides = {
        **spec.training_args(run_dir), "stage": "grpo", "model_name_or_path": spec.model, "dataset": DATASET_NAME,
        "dataset_dir": str(Path(spec.workdir) / "data"), "max_samples": spec.rows,
        "reward_funcs": ",".join(REWARDS), "system_prompt": R1_SYSTEM_PROMPT,
        "num_generations": spec.num_generations, "max_completion_length": spec.max_completion_length,
        "temperature": spec.temperature, "beta": spec.beta, "loss_type": spec.loss_type,
        "lora_rank": spec.lora_rank, "lora_target": "all", "logging_steps": spec.logging_steps,
        "overwrite_output_dir": True, "report_to": "none", "plot_loss": False,
    }
    # key=value overrides are read as YAML: a JSON string keeps the system prompt's newlines
    cfg = load_config(None, [f"{key}={json.dumps(value)}" for key, value in overrides.items()])
    if cfg.system_prompt != R1_SYSTEM_PROMPT or not cfg.log_completions:
        raise SystemExit("tunelab config: system_prompt or log_completions not as intended")
    clock = make_step_clock(started, GRPO_ARGS)
    probe = make_probe()
    all_stages()["grpo"].run()(cfg, callbacks=[clock, probe])
    result = summarize("tunelab", clock, spec.warmup, "completion tokens (GRPO)")
    result.settings["phases"] = phase_seconds(probe, clock, spec.warmup)
    samples = run_dir / "completions.jsonl"
    result.settings["completions_logged"] = len(samples.read_text().splitlines()) if samples.is_file() else 0
    return result


def run_trl(spec: Spec, started: float, run_dir: Path) -> SideResult:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from tunelab.rewards.r1 import R1_SYSTEM_PROMPT
    from tunelab.rewards.registry import load_rewards
    from tunelab.rewards.settings import RewardSettings

    rewards = load_rewards(REWARDS, RewardSettings(reward_funcs=REWARDS))
    dataset = Dataset.from_list(gsm8k_prompts(spec.data, spec.rows, R1_SYSTEM_PROMPT))
    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    args = GRPOConfig(
        **spec.trl_args(run_dir),  # bf16 and gradient checkpointing as on tunelab's side (TRL's defaults: on)
        report_to="none", num_generations=spec.num_generations, max_completion_length=spec.max_completion_length,
        temperature=spec.temperature,
        beta=spec.beta,  # TRL's default is 0.0 (no reference pass), tunelab's 0.04: set on both
        loss_type=spec.loss_type,
        # what tunelab's training_arguments sets for every stage, set alike here
        logging_steps=spec.logging_steps, logging_first_step=True, lr_scheduler_type="cosine", data_seed=spec.seed,
    )
    clock = make_step_clock(started, GRPO_ARGS)
    probe = make_probe()
    trainer = GRPOTrainer(model=spec.model, reward_funcs=rewards, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=trl_lora(spec.lora_rank), callbacks=[clock, probe])
    trainer.train()
    result = summarize("trl", clock, spec.warmup, "completion tokens (GRPO)")
    result.settings["phases"] = phase_seconds(probe, clock, spec.warmup)
    return result


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

def seconds_per_step(run: SideResult, warmup: int) -> float:
    return run.window_seconds / (run.steps - window_start(warmup, run.steps))


def cpu_seconds_per_step(run: SideResult, warmup: int) -> float:
    """Process CPU time per timed step (all its threads): less sensitive than wall time to other processes
    taking the core away, though not to their sharing caches and memory bandwidth."""
    timed = run.step_cpu_seconds[window_start(warmup, run.steps):]
    return sum(timed) / len(timed)


def side_rows(spec: Spec, results: dict[str, list[SideResult]]) -> dict[str, dict[str, Any]]:
    rows = {}
    for side, runs in results.items():
        start = window_start(spec.warmup, runs[0].steps)
        fastest = fastest_step_seconds(runs, start)  # an estimate for a quiet machine
        rows[side] = {
            "s/step": median_of(runs, lambda r: seconds_per_step(r, spec.warmup)),
            "CPU s/step": median_of(runs, lambda r: cpu_seconds_per_step(r, spec.warmup)),
            "best s/step": sum(fastest) / len(fastest) if fastest else None,
            "per run": [seconds_per_step(r, spec.warmup) for r in runs],
            "peak MiB": median_of(runs, "peak_memory_bytes") / MIB,
            "peak per run": [r.peak_memory_bytes / MIB for r in runs],
            "tokens/step": statistics.median(r.window_tokens / (runs[0].steps - start) for r in runs),
            "phases": {name: statistics.median(r.settings["phases"][name] for r in runs)
                       for name in runs[0].settings["phases"]},
            "final loss": runs[-1].final_loss, "trainable": runs[-1].trainable_params,
            "setup s": median_of(runs, "setup_seconds"),
            "other cores": [round(r.other_cpu_cores, 2) for r in runs],
        }
    return rows


def report(run: Comparison) -> str:
    info, model, spec, results = run.info, run.model, run.spec, run.results
    rows = side_rows(spec, results)
    t, p = rows["tunelab"], rows["trl"]
    body = [[side, f"{row['s/step']:.3f}", f"{row['peak MiB']:.1f}", f"{row['CPU s/step']:.3f}",
             "-" if row["best s/step"] is None else f"{row['best s/step']:.3f}", f"{row['tokens/step']:.1f}",
             f"{row['final loss'] or 0:.3g}", f"{row['trainable']:,}", f"{row['setup s']:.1f}"]
            for side, row in rows.items()]
    body.append(["ratio", *(fmt_ratio(ratio(t[key], p[key]))
                            for key in ("s/step", "peak MiB", "CPU s/step", "best s/step", "tokens/step"))])
    phases = [[side, *(f"{row['phases'][name]:.3f}" for name in PHASES)] for side, row in rows.items()]
    phases.append(["ratio", *(fmt_ratio(ratio(t["phases"][n], p["phases"][n])) for n in PHASES)])
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
             *table(["", "s/step", "peak MiB", "CPU s/step", "best s/step", "tokens/step", "final loss", "trainable",
                     "setup s"], body, widths=[10, 9, 10, 12, 13, 13, 12, 11, 9], gap="")]
    lines[-1] += "   (tunelab / TRL; time above 1: tunelab slower)"
    paired, count = paired_step_ratio(results["tunelab"], results["trl"], spec.warmup)
    lines.append("step by step (same prompts and tokens per step on both sides), median tunelab/TRL step-time "
                 f"ratio: {paired:.2f} over {count} steps" if paired is not None else
                 "note: the sides did not process the same tokens per step; no step-by-step ratio")
    lines += ["", "seconds per step by phase (TRL's own profiling_context timings, medians over runs):",
              *table(["", *PHASES], phases, widths=[10, *[15] * len(PHASES)], gap="")]
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
    diff = differing_settings(results["tunelab"][0], results["trl"][0], skip=("phases", "completions_logged"))
    if diff:
        lines.append("settings the two trainers ended up with differently:")
        lines += [f"  {key}: tunelab={a!r}  TRL={b!r}" for key, (a, b) in diff.items()]
    return "\n".join(lines)


def json_report(run: Comparison) -> dict[str, Any]:
    rows = side_rows(run.spec, run.results)
    t, p = rows["tunelab"], rows["trl"]
    return {"machine": run.info, "model": run.model, "spec": run.spec, "summary": rows,
            "ratio": {"seconds_per_step": ratio(t["s/step"], p["s/step"]),
                      "peak_memory": ratio(t["peak MiB"], p["peak MiB"]),
                      "cpu_seconds_per_step": ratio(t["CPU s/step"], p["CPU s/step"]),
                      "best_seconds_per_step": ratio(t["best s/step"], p["best s/step"]),
                      "paired_step_time": paired_step_ratio(run.results["tunelab"], run.results["trl"],
                                                            run.spec.warmup)[0]},
            "results": run.results}


def main(argv: list[str] | None = None) -> int:
    parser = side_by_side_parser(__doc__, data=DEFAULT_DATA, tokenizer=DEFAULT_TOKENIZER, rows=64, steps=8,
                                 batch_size=8, lr=1e-5)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (TRL's default is 0.0)")
    parser.add_argument("--loss-type", default="dapo")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--profile", metavar="DIR", help="write each worker's cProfile statistics to DIR/<side>-<n>"
                        ".prof (e.g. python -m pstats); profiling slows both sides, so timings are then not the "
                        "result")
    args = parser.parse_args(argv)
    if args.worker:
        side_worker(Spec, {"tunelab": instrumented(run_tunelab), "trl": instrumented(run_trl)}, args)
        return 0
    if (args.batch_size * args.grad_accum) % args.num_generations:
        parser.error("--batch-size x --grad-accum must be a multiple of --num-generations")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)

    def make_spec(**shared: Any) -> Spec:
        """The spec, and the dataset_info.json through which tunelab reads the GSM8K file itself."""
        (Path(shared["workdir"]) / "data").mkdir()
        (Path(shared["workdir"]) / "data" / "dataset_info.json").write_text(json.dumps(
            {DATASET_NAME: {"file_name": shared["data"], "options": {"extract_answer": "gsm8k"}}}))
        return Spec(**shared, num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                    temperature=args.temperature, beta=args.beta, loss_type=args.loss_type, lora_rank=args.lora_rank,
                    logging_steps=args.logging_steps,
                    profile=str(Path(args.profile).resolve()) if args.profile else None)

    run = compare(__file__, args, "GRPO", make_spec)
    print(to_json(json_report(run)) if args.json else report(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
