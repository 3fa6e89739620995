"""SFT throughput: tunelab's recipe against a plain TRL ``SFTTrainer``, same model, data and settings.

Run from the repository root::

    .venv/bin/python benchmarks/sft_throughput.py            # random small Qwen2 + real tokenizer
    .venv/bin/python benchmarks/sft_throughput.py --model /path/to/local/model --device cuda --steps 50
    .venv/bin/python benchmarks/sft_throughput.py --json      # results as JSON on stdout

What is compared, and why it is fair (how both sides are run, timed and measured is ``harness.py``'s):

* tunelab runs its public recipe ``tunelab.stages.sft.run_sft(TrainConfig(...))`` as a user would;
  TRL runs ``SFTTrainer(model=<path>, args=SFTConfig(...), train_dataset=..., peft_config=...)``
  with TRL's defaults except the settings both sides must share (LoRA rank/alpha/targets or full,
  batch size, accumulation, learning rate, steps, max length, seed, precision, gradient checkpointing).
  Settings each framework picks for itself (optimizer, scheduler) stay at each one's default and are listed
  in the output: they are part of what is being compared.
* ``--trl-data tokenized`` (the default) hands TRL the very samples tunelab encodes (``input_ids`` with
  assistant-only ``labels``), so both sides train the same loss on the same batches and their losses must
  agree; ``--trl-data messages`` gives TRL the conversations instead (TRL's default: loss on every token).
* MFU: the useful FLOPs of each step over the step time, against the fp32 matmul peak measured in the same
  run at the same thread count. Useful: the decoder body on every token (forward 2 x its parameters, the
  backward's input gradients as much again, and its weight gradients too for full fine-tuning) and the output
  layer (2 x hidden x vocabulary per position, three times with its gradients) only at the positions that carry
  loss, on both sides alike: what TRL computes beyond that is not counted.
* Both sides read the same first ``--rows`` records of the same alpaca file and load the same weights
  from the same folder (a random model is built once and saved before either side starts).
* Each side runs in its own fresh Python process; with ``--repeats`` > 1 the order alternates (A B B A ...)
  and medians over repeats are reported.
* Throughput is trained (non-padding) tokens/s, measured identically on both sides by one small
  ``TrainerCallback`` (the harness's ``StepClock``) from the end of step ``--warmup`` to the end of the last
  step. (tunelab's own ``metrics.jsonl`` is read as a cross-check of the token count.)
* Shared machines: besides the plain tokens/s (median over runs) the table shows two estimates of the speed
  on an idle machine: best of runs (needs ``--repeats`` >= 2) and undisturbed steps only, and the median
  step-by-step ratio over the same batches. ``--threads 1`` on 2 cores makes runs far more repeatable.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the growth of the process's resident set
  over its value when training begins, sampled every few milliseconds.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (the shared harness, a sibling module)
    MIB,
    REPO_ROOT,
    SIDES,
    Comparison,
    SideResult,
    SideSpec,
    add_llamafactory_args,
    compare,
    differing_settings,
    fastest_step_seconds,
    fmt_ratio,
    lf_template_for,
    llamafactory_peers,
    machine_lines,
    make_step_clock,
    matmul_peak_flops,
    matmul_peak_name,
    median_of,
    paired_step_ratio,
    ratio,
    side_by_side_parser,
    side_worker,
    summarize,
    table,
    to_json,
    trl_lora,
    undisturbed,
    window_start,
)

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"
DEFAULT_TOKENIZER = REPO_ROOT.parent / "shared" / "tokenizers" / "minimind"


@dataclass
class Spec(SideSpec):
    """What both SFT workers must agree on besides SideSpec's fields."""

    cutoff_len: int
    full: bool
    lora_rank: int
    lora_alpha: int
    lora_target: str
    logging_steps: int
    trl_data: str = "tokenized"
    lf_template: str = "llama3"


# --------------------------------------------------------------------------------------------------
# The two sides (each runs in its own worker process)
# --------------------------------------------------------------------------------------------------

def run_tunelab(spec: Spec, started: float, run_dir: Path) -> SideResult:
    """tunelab's public recipe with a TrainConfig, as a user would call it."""
    from tunelab.config import TrainConfig
    from tunelab.runs import read_metrics
    from tunelab.stages.sft import run_sft

    cfg = TrainConfig(
        **spec.training_args(run_dir),
        model_name_or_path=spec.model,
        dataset=spec.data,
        dataset_dir=str(Path(spec.data).parent),
        template=None,  # the tokenizer's own chat template, which TRL uses too
        cutoff_len=spec.cutoff_len,
        max_samples=spec.rows,
        overwrite_output_dir=True,
        logging_steps=spec.logging_steps,
        finetuning_type="full" if spec.full else "lora",
        lora_rank=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_target=spec.lora_target,
        plot_loss=False,  # drawn after training, outside the window; skipped only to save wall time
    )
    clock = make_step_clock(started)
    run_sft(cfg, callbacks=[clock])
    result = summarize("tunelab", clock, spec.warmup, "assistant replies (tunelab default)")
    tokens = [r["tokens_seen"] for r in read_metrics(run_dir) if "tokens_seen" in r]
    result.metrics_jsonl_tokens = tokens[-1] if tokens else None
    samples = tunelab_samples(spec)
    labelled = sum(sum(label != -100 for label in labels[1:]) for labels in samples["labels"])
    result.labelled_fraction = labelled / sum(len(ids) for ids in samples["input_ids"])
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
    from trl import SFTConfig, SFTTrainer

    if spec.trl_data == "tokenized":
        dataset = tunelab_samples(spec)
    else:
        records = json.loads(Path(spec.data).read_text(encoding="utf-8"))[: spec.rows]
        dataset = Dataset.from_list([alpaca_to_messages(r) for r in records])
    # TRL defaults to bf16=True and gradient_checkpointing=True. Both change speed and memory far more than any
    # framework overhead, so both are shared (tunelab's defaults: fp32, no checkpointing): trl_args sets them.
    args = SFTConfig(**spec.trl_args(run_dir), max_length=spec.cutoff_len, logging_steps=spec.logging_steps)
    peft_config = None if spec.full else trl_lora(spec.lora_rank, spec.lora_alpha, spec.lora_target)
    clock = make_step_clock(started)
    trainer = SFTTrainer(model=spec.model, args=args, train_dataset=dataset, peft_config=peft_config,
                         callbacks=[clock])
    trainer.train()
    loss_tokens = "assistant replies (tunelab default)" if spec.trl_data == "tokenized" else \
        "all tokens (TRL default for messages)"
    return summarize("trl", clock, spec.warmup, loss_tokens)


def tunelab_samples(spec: Spec) -> Any:
    """The samples tunelab's pipeline encodes for the same rows: input_ids and assistant-only labels."""
    from tunelab.config import DataSettings
    from tunelab.data.pipeline import build_datasets
    from tunelab.models.loading import load_tokenizer

    data = DataSettings(dataset=spec.data, dataset_dir=str(Path(spec.data).parent), cutoff_len=spec.cutoff_len,
                        max_samples=spec.rows)
    train, _, _ = build_datasets(data, "sft", load_tokenizer(spec.model, None), spec.seed)
    return train


def run_llamafactory(spec: Spec, started: float, run_dir: Path) -> SideResult:
    """LLaMA-Factory's own recipe (run_exp) with the same model, rows, template and settings, in its environment."""
    from llamafactory.train.tuner import run_exp

    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": spec.data}}))
    args = {
        "model_name_or_path": spec.model, "stage": "sft", "do_train": True,
        "finetuning_type": "full" if spec.full else "lora", "dataset": "bench", "dataset_dir": str(data_dir),
        "template": spec.lf_template, "cutoff_len": spec.cutoff_len, "max_samples": spec.rows,
        "overwrite_cache": True, "output_dir": str(run_dir / "out"), "overwrite_output_dir": True,
        "per_device_train_batch_size": spec.batch_size, "gradient_accumulation_steps": spec.grad_accum,
        "learning_rate": spec.learning_rate, "max_steps": spec.steps, "seed": spec.seed,
        "logging_steps": spec.logging_steps, "save_steps": max(spec.steps, 500), "bf16": spec.bf16,
        "gradient_checkpointing": spec.gradient_checkpointing, "report_to": "none", "plot_loss": False,
        "include_num_input_tokens_seen": "non_padding", "use_cpu": spec.device == "cpu",
        # LLaMA-Factory turns gradient checkpointing on by itself unless told not to (model_args), whatever the
        # trainer's own key says; the sides must match, so it follows --gradient-checkpointing like the others.
        "disable_gradient_checkpointing": not spec.gradient_checkpointing,
    }
    if not spec.full:
        args.update(lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_target=spec.lora_target)
    clock = make_step_clock(started)
    run_exp(args, callbacks=[clock])
    return summarize("llamafactory", clock, spec.warmup, "assistant replies (LLaMA-Factory default)")


def step_flops(model: dict[str, Any], tokens: float, labelled_fraction: float, full: bool) -> float:
    """Useful FLOPs of one optimizer step over ``tokens`` positions (see the module's docstring)."""
    passes = 2 + 2 + (2 if full else 0)
    head = 2 * model["hidden_size"] * model["vocab_size"] * (3 if full else 2)
    return passes * model["body_params"] * tokens + head * labelled_fraction * tokens


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
    heap_peak_bytes: float
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
    start = window_start(warmup, first.steps)
    fastest = fastest_step_seconds(runs, start)
    quiet_tokens_per_second, quiet_steps = quiet_rate(runs, start)
    return Summary(
        tokens_per_second=median_of(runs, "tokens_per_second"),
        cpu_tokens_per_second=median_of(runs, "cpu_tokens_per_second"),
        best_tokens_per_second=sum(first.step_tokens[start:]) / sum(fastest) if fastest and sum(fastest) else None,
        quiet_tokens_per_second=quiet_tokens_per_second,
        quiet_steps=quiet_steps,
        per_repeat=[r.tokens_per_second for r in runs],
        other_cpu_cores=[r.other_cpu_cores for r in runs],
        peak_memory_bytes=median_of(runs, "peak_memory_bytes"),
        heap_peak_bytes=median_of(runs, "heap_peak_bytes"),
        median_step_seconds=statistics.median(s for r in runs for s in r.step_seconds[start:]),
        final_loss=first.final_loss,
        window_tokens=first.window_tokens,
        window_steps=first.steps - start,
        total_tokens=first.total_tokens,
        trainable_params=first.trainable_params,
        process_max_rss_bytes=median_of(runs, "process_max_rss_bytes"),
        setup_seconds=median_of(runs, "setup_seconds"),
    )


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


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _row(name: str, a: float | None, b: float | None, show: Any = _rate) -> list[str]:
    return [name, show(a), show(b), fmt_ratio(ratio(a, b))]


def format_report(run: Comparison, repeats: int) -> str:
    """The human-readable table, the settings the two sides did not share, and the ratio line."""
    info, model, spec, results = run.info, run.model, run.spec, run.results
    tl, tr = summarize_side(results["tunelab"], spec.warmup), summarize_side(results["trl"], spec.warmup)
    first_tl, first_tr = results["tunelab"][0], results["trl"][0]
    method = "full fine-tuning" if spec.full else (
        f"LoRA r={spec.lora_rank} alpha={spec.lora_alpha} targets={spec.lora_target}")
    loss_ratio = (fmt_ratio(ratio(tl.final_loss, tr.final_loss)) if first_tl.loss_tokens == first_tr.loss_tokens
                  else "n/a")  # a mean over different tokens: not comparable
    rows = [
        _row("trained (non-padding) tokens/s", tl.tokens_per_second, tr.tokens_per_second),
        _row("  best of runs (fastest time per step)", tl.best_tokens_per_second, tr.best_tokens_per_second),
        _row(f"  undisturbed steps only ({tl.quiet_steps} vs {tr.quiet_steps} steps)",
             tl.quiet_tokens_per_second, tr.quiet_tokens_per_second),
        _row(f"peak memory, MiB ({first_tl.memory_kind})", tl.peak_memory_bytes / MIB, tr.peak_memory_bytes / MIB),
        *([_row("  of it in use by malloc, MiB (glibc's in-use bytes)", tl.heap_peak_bytes / MIB,
                tr.heap_peak_bytes / MIB)] if tl.heap_peak_bytes else []),
        ["final logged loss", _loss(tl.final_loss), _loss(tr.final_loss), loss_ratio],
        _row("median step time, s", tl.median_step_seconds, tr.median_step_seconds, lambda v: f"{v:.3f}"),
        ["tokens / steps in the timed window", f"{tl.window_tokens:,} / {tl.window_steps}",
         f"{tr.window_tokens:,} / {tr.window_steps}", fmt_ratio(ratio(tl.window_tokens, tr.window_tokens))],
        _row("tokens seen over all steps", tl.total_tokens, tr.total_tokens, lambda v: f"{v:,}"),
        _row("trainable parameters", tl.trainable_params, tr.trainable_params, lambda v: f"{v:,}"),
        _row("process peak RSS, MiB (whole worker)", tl.process_max_rss_bytes / MIB, tr.process_max_rss_bytes / MIB),
        _row("setup before training, s (not timed)", tl.setup_seconds, tr.setup_seconds, lambda v: f"{v:.1f}"),
    ]
    others = ", ".join(f"{side} {[round(c, 2) for c in s.other_cpu_cores]}"
                       for side, s in (("tunelab", tl), ("TRL", tr)))
    lines = [
        "SFT throughput: tunelab run_sft vs plain TRL SFTTrainer",
        *machine_lines(info),
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
        *table(["", "tunelab", "TRL", "tunelab/TRL"], rows, widths=[0, 16, 16, 11]),
    ]
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
    timed = sum(r.steps - window_start(spec.warmup, r.steps) for side in SIDES for r in results[side])
    if tl.quiet_steps + tr.quiet_steps < 0.8 * timed:
        lines.append(f"warning: only {tl.quiet_steps + tr.quiet_steps} of {timed} timed steps ran "
                     "undisturbed by other processes; plain tokens/s is unreliable: prefer the step-by-step "
                     "ratio and best of runs, rerun with --threads 1, or on an idle machine")
    peak = run.info.get("matmul_peak_flops")
    fraction = first_tl.labelled_fraction
    if peak and fraction and "body_params" in model:
        mfu = {side: step_flops(model, s.window_tokens / max(s.window_steps, 1), fraction, spec.full)
               / s.median_step_seconds / peak for side, s in (("tunelab", tl), ("trl", tr))}
        lines.append(f"MFU (useful FLOPs / step time / measured {matmul_peak_name(spec.device, spec.bf16)} matmul peak "
                     f"{peak / 1e9:,.0f} GFLOP/s; "
                     f"{fraction:.0%} of tokens carry loss): tunelab {mfu['tunelab']:.1%}, TRL {mfu['trl']:.1%}")
    if "llamafactory" in results:
        lf = summarize_side(results["llamafactory"], spec.warmup)
        lines += ["", "LLaMA-Factory 0.9.5 on the same model, rows and settings (its own template and tokenization):",
                  *table(["", "tunelab", "LLaMA-Factory", "tunelab/LF"], [
                      _row("trained (non-padding) tokens/s", tl.tokens_per_second, lf.tokens_per_second),
                      _row(f"peak memory, MiB ({first_tl.memory_kind})", tl.peak_memory_bytes / MIB,
                           lf.peak_memory_bytes / MIB),
                      *([_row("  of it in use by malloc, MiB", tl.heap_peak_bytes / MIB, lf.heap_peak_bytes / MIB)]
                        if tl.heap_peak_bytes else []),
                      ["final logged loss", _loss(tl.final_loss), _loss(lf.final_loss), "n/a"],
                      _row("median step time, s", tl.median_step_seconds, lf.median_step_seconds,
                           lambda v: f"{v:.3f}"),
                      _row("tokens seen over all steps", tl.total_tokens, lf.total_tokens, lambda v: f"{v:,}")],
                      widths=[0, 16, 16, 11])]
    lines.append("")
    lines.append(f"ratio: tunelab/TRL trained tokens per second = "
                 f"{tl.tokens_per_second / tr.tokens_per_second:.2f} "
                 f"({tl.tokens_per_second:,.0f} vs {tr.tokens_per_second:,.0f} tokens/s)")
    return "\n".join(lines)


def json_report(run: Comparison) -> dict[str, Any]:
    results, warmup = run.results, run.spec.warmup
    tl, tr = summarize_side(results["tunelab"], warmup), summarize_side(results["trl"], warmup)
    report = {
        "machine": run.info,
        "model": run.model,
        "spec": {k: v for k, v in asdict(run.spec).items() if k != "workdir"},
        "summary": {"tunelab": tl, "trl": tr},
        "ratio": {
            "tokens_per_second": tl.tokens_per_second / tr.tokens_per_second,
            "peak_memory": ratio(tl.peak_memory_bytes, tr.peak_memory_bytes),
            "heap_peak": ratio(tl.heap_peak_bytes, tr.heap_peak_bytes),
            "cpu_tokens_per_second": tl.cpu_tokens_per_second / tr.cpu_tokens_per_second,
            "quiet_tokens_per_second": ratio(tl.quiet_tokens_per_second, tr.quiet_tokens_per_second),
            "best_tokens_per_second": ratio(tl.best_tokens_per_second, tr.best_tokens_per_second),
            "paired_step_time": paired_step_ratio(results["tunelab"], results["trl"], warmup)[0],
            "paired_undisturbed_step_time": paired_step_ratio(results["tunelab"], results["trl"], warmup,
                                                              only_undisturbed=True)[0],
        },
        "differing_settings": {k: list(v) for k, v in differing_settings(results["tunelab"][0],
                                                                         results["trl"][0]).items()},
        "runs": results,
    }
    if "llamafactory" in results:
        lf = summarize_side(results["llamafactory"], warmup)
        report["summary"]["llamafactory"] = lf
        report["ratio"]["llamafactory_tokens_per_second"] = ratio(tl.tokens_per_second, lf.tokens_per_second)
        report["ratio"]["llamafactory_peak_memory"] = ratio(tl.peak_memory_bytes, lf.peak_memory_bytes)
        report["ratio"]["llamafactory_heap_peak"] = ratio(tl.heap_peak_bytes, lf.heap_peak_bytes)
    return report


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = side_by_side_parser(__doc__, data=DEFAULT_DATA, tokenizer=DEFAULT_TOKENIZER, rows=200, steps=10,
                                 batch_size=4, lr=1e-4, peers=("llamafactory",))
    parser.add_argument("--cutoff", type=int, default=512, help="max tokens per sample (both sides)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=None, help="default: 2 x rank (tunelab's default)")
    parser.add_argument("--lora-target", default="all", help="'all' (every linear layer) or a comma list")
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--trl-data", choices=("tokenized", "messages"), default="tokenized",
                        help="TRL trains tunelab's encoded samples (same loss), or the conversations (its default)")
    add_llamafactory_args(parser, "rows")
    args = parser.parse_args(argv)
    if args.worker:
        side_worker(Spec, {"tunelab": run_tunelab, "trl": run_trl, "llamafactory": run_llamafactory}, args)
        return 0
    peers = llamafactory_peers(args)
    lf_template = args.lf_template or lf_template_for(args.tokenizer)
    run = compare(__file__, args, "training", lambda **shared: Spec(
        **shared, cutoff_len=args.cutoff, full=args.full, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha or 2 * args.lora_rank, lora_target=args.lora_target,
        logging_steps=min(args.logging_steps, args.steps), trl_data=args.trl_data, lf_template=lf_template),
        peers)
    run.info["matmul_peak_flops"] = matmul_peak_flops(args.threads, run.spec.device, run.spec.bf16)
    print(to_json(json_report(run)) if args.json else format_report(run, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
