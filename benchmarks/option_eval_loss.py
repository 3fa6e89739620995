"""Options that change the numbers or the batches (bf16, group_by_length) against tunelab's defaults: the eval loss
after the same trained tokens.

Each variant runs tunelab's SFT recipe (``run_sft``) in its own fresh process, on the same model, rows, held-out
split and seed, for whole epochs. Every variant therefore trains on exactly the same tokens (the script checks the
count); only the precision, or which samples share a batch, differs. The held-out rows are scored at the end of
every epoch (``eval_strategy: epoch``), always in the variant's own precision.

Reported per variant: the eval loss after each epoch and its difference from the default, the trained tokens, the
trained tokens per second (from the end of step ``--warmup`` to the end of the last step; evaluation is outside)
and the last logged training loss.

    .venv/bin/python benchmarks/option_eval_loss.py --threads 1
    .venv/bin/python benchmarks/option_eval_loss.py --model stories260K --template default   # the real tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    REPO_ROOT,
    add_model_args,
    add_worker_args,
    machine_description,
    machine_lines,
    make_step_clock,
    prepare_model,
    resolve_device,
    run_worker,
    summarize,
    table,
    to_json,
    worker_env,
)

DATA = REPO_ROOT / "tests" / "fixtures" / "data" / "llamafactory" / "alpaca_en_demo.json"
TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "tokenizers" / "minimind"

# Each variant's keys on top of the shared config; "default" is tunelab's own settings.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "bf16": {"bf16": True},
    "group_by_length": {"group_by_length": True},
}


@dataclass
class Spec:
    model: str
    data: str
    template: str | None
    rows: int
    val_rows: int
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    cutoff_len: int
    full: bool
    warmup: int
    options: dict[str, Any] = field(default_factory=dict)


def run_variant(spec: Spec, started: float, run_dir: Path) -> dict[str, Any]:
    """One variant: tunelab's SFT recipe with the shared config plus the variant's keys."""
    from tunelab.config import TrainConfig
    from tunelab.runs import read_metrics
    from tunelab.stages.sft import run_sft

    cfg = TrainConfig(
        output_dir=str(run_dir), overwrite_output_dir=True, model_name_or_path=spec.model, dataset=spec.data,
        dataset_dir=str(Path(spec.data).parent), template=spec.template, cutoff_len=spec.cutoff_len,
        max_samples=spec.rows, val_size=spec.val_rows, eval_strategy="epoch", num_train_epochs=spec.epochs,
        per_device_train_batch_size=spec.batch_size, per_device_eval_batch_size=spec.batch_size,
        learning_rate=spec.learning_rate, seed=spec.seed, finetuning_type="full" if spec.full else "lora",
        logging_steps=1, save_steps=10**6, plot_loss=False, **spec.options,
    )
    clock = make_step_clock(started)
    run_sft(cfg, callbacks=[clock])
    timed = summarize("tunelab", clock, spec.warmup, "assistant replies")
    metrics = read_metrics(run_dir)
    return {"eval_losses": [record["eval_loss"] for record in metrics if "eval_loss" in record],
            "tokens": timed.total_tokens, "tokens_per_second": timed.tokens_per_second, "steps": timed.steps,
            "final_loss": timed.final_loss, "peak_memory_bytes": timed.peak_memory_bytes}


def format_report(results: dict[str, dict[str, Any]], model: dict[str, Any], machine: dict[str, str],
                  spec: Spec) -> str:
    default = results["default"]
    epochs = len(default["eval_losses"])
    header = ["variant", *(f"eval loss, epoch {e + 1}" for e in range(epochs)), "vs default (last)",
              "trained tokens", "tokens/s", "last train loss"]
    rows = []
    for name, result in results.items():
        last = result["eval_losses"][-1]
        rows.append([name, *(f"{loss:.4f}" for loss in result["eval_losses"]),
                     f"{last - default['eval_losses'][-1]:+.5f}", f"{result['tokens']:,}",
                     f"{result['tokens_per_second']:.0f}", f"{result['final_loss']:.4f}"])
    same = len({result["tokens"] for result in results.values()}) == 1
    lines = [
        f"model: {model['name']}",
        f"data: first {spec.rows} rows of {Path(spec.data).name}, {spec.val_rows} held out; {spec.epochs} epoch(s), "
        f"batch {spec.batch_size}, lr {spec.learning_rate}, {'full' if spec.full else 'LoRA r8'}, seed {spec.seed}",
        *machine_lines(machine),
        "",
        *table(header, rows),
        "",
        "every variant trained on the same tokens" if same else "WARNING: the variants trained different token counts",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(parser, TOKENIZER)
    parser.add_argument("--data", default=str(DATA), help="the data file every variant reads")
    parser.add_argument("--template", default=None, help="chat template (default: the tokenizer's own)")
    parser.add_argument("--rows", type=int, default=256, help="records used (the first N), held-out ones included")
    parser.add_argument("--val-rows", type=int, default=64, help="of those, held out for the eval loss")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cutoff", type=int, default=512, help="max tokens per sample")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--verbose", action="store_true", help="show the workers' own output")
    add_worker_args(parser, ("variant",))
    args = parser.parse_args(argv)

    if args.worker:
        started = time.perf_counter()
        spec = Spec(**json.loads(Path(args.spec).read_text()))
        Path(args.result).write_text(to_json(run_variant(spec, started, Path(args.result).with_suffix(""))))
        return 0
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or "default" not in names:
        parser.error(f"--variants: {', '.join(unknown) or 'default is missing'}; choose from {', '.join(VARIANTS)} "
                     "(default always runs)")

    with tempfile.TemporaryDirectory(prefix="option_eval_loss-") as tmp:
        workdir = Path(tmp)
        model_path = args.model
        if model_path and not Path(model_path).exists():  # an embedded model's name (stories260K)
            from tunelab.models.loading import resolve_model_path

            model_path = str(resolve_model_path(model_path))
        path, model = prepare_model(model_path, workdir / "model", args.tokenizer, args.hidden_size, args.layers,
                                    args.seed, args.arch)
        env = worker_env("cpu", args.threads)
        results = {}
        for index, name in enumerate(names, 1):
            print(f"[{index}/{len(names)}] training with {name} ...", file=sys.stderr, flush=True)
            spec = Spec(model=path, data=args.data, template=args.template, rows=args.rows, val_rows=args.val_rows,
                        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                        cutoff_len=args.cutoff, full=args.full, warmup=args.warmup, options=VARIANTS[name])
            results[name] = run_worker(__file__, "variant", asdict(spec), workdir, name, env=env,
                                       verbose=args.verbose, cwd=REPO_ROOT)
    machine = machine_description(resolve_device("cpu"), args.threads)
    if args.json:
        print(to_json({"model": model, "machine": machine, "results": results}))
    else:
        print(format_report(results, model, machine, spec))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
