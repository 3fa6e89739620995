"""DPO throughput: tunelab's ``dpo`` stage against a plain TRL ``DPOTrainer``, same model, pairs and settings.

Run from the repository root::

    .venv/bin/python benchmarks/dpo_throughput.py                 # random small Qwen2 + real tokenizer
    .venv/bin/python benchmarks/dpo_throughput.py --device cuda --model /path/to/model --steps 50 --bf16

What is compared, and why it is fair (the measurement helpers are those of ``sft_throughput.py``):

* tunelab runs its public recipe ``tunelab.stages.dpo.run_dpo(TrainConfig(stage="dpo", ...))``; TRL runs
  ``DPOTrainer(model=<path>, args=DPOConfig(...), train_dataset=<conversational pairs>, peft_config=...)``.
  Both use LoRA with the same rank, alpha and targets (the reference is the base with the adapter
  disabled on both sides), the same beta, batch, accumulation, learning rate, steps, seed and precision.
* Both read the first ``--rows`` pairs of LLaMA-Factory's ``dpo_en_demo`` (ShareGPT prompt + chosen /
  rejected turns) and load the same saved weights; each side runs in its own fresh process, the order
  alternating over ``--repeats``.
* TRL's ``DPOConfig`` turns gradient checkpointing on by default; tunelab leaves it to the
  ``gradient_checkpointing`` key (off by default). The benchmark sets it alike on both sides
  (``--gradient-checkpointing``), since it trades speed for memory and would decide the comparison alone.
* One ``TrainerCallback`` times both sides from the end of step ``--warmup`` to the last step. Pairs/s is
  the headline (both train on the same pairs); tokens/s counts the non-padding tokens each side feeds
  the model (tunelab's sequences end at the answer's end marker, TRL's run to the end of the rendered
  text, so tunelab feeds slightly fewer tokens per pair). Peak memory: CUDA ``max_memory_allocated``, or
  on CPU the resident-set growth during training.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import (  # noqa: E402  (the shared measurement helpers)
    MIB,
    SideResult,
    build_random_model,
    machine_description,
    make_step_clock,
    resolve_device,
    run_order,
    run_worker,
    summarize,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / "tests" / "fixtures" / "data" / "llamafactory" / "dpo_en_demo.json"
DEFAULT_TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "tokenizers" / "minimind"
SIDES = ("tunelab", "trl")
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


@dataclass
class Spec:
    model: str
    data: str
    rows: int
    steps: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    cutoff_len: int
    seed: int
    lora_rank: int
    beta: float
    warmup: int
    device: str
    bf16: bool
    gradient_checkpointing: bool
    threads: int | None
    workdir: str


def run_tunelab(spec: Spec, started: float, run_dir: Path) -> SideResult:
    from tunelab.config import TrainConfig
    from tunelab.stages.dpo import run_dpo

    cfg = TrainConfig(stage="dpo", model_name_or_path=spec.model, dataset=spec.data,
                      dataset_dir=str(Path(spec.data).parent), cutoff_len=spec.cutoff_len, max_samples=spec.rows,
                      output_dir=str(run_dir), overwrite_output_dir=True, max_steps=spec.steps, logging_steps=1,
                      save_steps=max(spec.steps, 500), per_device_train_batch_size=spec.batch_size,
                      gradient_accumulation_steps=spec.grad_accum, learning_rate=spec.learning_rate,
                      lora_rank=spec.lora_rank, lora_target="all", seed=spec.seed, bf16=spec.bf16,
                      report_to="none", plot_loss=False, pref_beta=spec.beta,
                      gradient_checkpointing=spec.gradient_checkpointing)
    clock = make_step_clock(started)
    run_dpo(cfg, callbacks=[clock])
    return summarize("tunelab", clock, spec.warmup, "answer content + end marker (tunelab masks)")


def _pairs(path: str, rows: int) -> list[dict]:
    def turn(message: dict) -> dict:
        return {"role": ROLES[message["from"]], "content": message["value"]}

    records = json.loads(Path(path).read_text(encoding="utf-8"))[:rows]
    return [{"prompt": [turn(m) for m in r["conversations"]], "chosen": [turn(r["chosen"])],
             "rejected": [turn(r["rejected"])]} for r in records]


def run_trl(spec: Spec, started: float, run_dir: Path) -> SideResult:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    args = DPOConfig(output_dir=str(run_dir), max_steps=spec.steps, logging_steps=1,
                     save_steps=max(spec.steps, 500), per_device_train_batch_size=spec.batch_size,
                     gradient_accumulation_steps=spec.grad_accum, learning_rate=spec.learning_rate,
                     seed=spec.seed, bf16=spec.bf16, beta=spec.beta, max_length=spec.cutoff_len,
                     report_to="none", include_num_input_tokens_seen="non_padding",
                     use_cpu=spec.device == "cpu",
                     # TRL's DPOConfig turns this on by default; set on both sides alike (--gradient-checkpointing)
                     gradient_checkpointing=spec.gradient_checkpointing)
    lora = LoraConfig(r=spec.lora_rank, lora_alpha=2 * spec.lora_rank, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    clock = make_step_clock(started)
    trainer = DPOTrainer(model=spec.model, args=args, train_dataset=Dataset.from_list(_pairs(spec.data, spec.rows)),
                         processing_class=tokenizer, peft_config=lora, callbacks=[clock])
    trainer.train()
    return summarize("trl", clock, spec.warmup, "everything after the prompt (TRL)")


def worker_main(side: str, spec_path: Path, result_path: Path) -> None:
    started = time.perf_counter()
    spec = Spec(**json.loads(spec_path.read_text()))
    result = (run_tunelab if side == "tunelab" else run_trl)(spec, started, result_path.with_suffix(""))
    result.load_average = os.getloadavg()[0]
    result_path.write_text(json.dumps(asdict(result)))


def report(info: dict, model: dict, spec: Spec, results: dict[str, list[SideResult]]) -> str:
    def pairs_per_second(run: SideResult) -> float:
        window = run.steps - min(spec.warmup, run.steps - 1)
        return window * spec.batch_size * spec.grad_accum / run.window_seconds

    rows = {}
    for side, runs in results.items():
        rows[side] = {"pairs/s": statistics.median(pairs_per_second(r) for r in runs),
                      "tokens/s": statistics.median(r.tokens_per_second for r in runs),
                      "peak MiB": statistics.median(r.peak_memory_bytes for r in runs) / MIB,
                      "final loss": runs[-1].final_loss, "trainable": runs[-1].trainable_params}
    lines = [f"DPO throughput, {info['date']}: {info['cpu']}" + (f", GPU {info['gpu']}" if "gpu" in info else ""),
             f"torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}, peft {info['peft']}",
             f"model: {model['name']} ({model['params']:,} parameters); {spec.rows} dpo_en_demo pairs, LoRA r"
             f"{spec.lora_rank}, batch {spec.batch_size} x {spec.grad_accum}, {spec.steps} steps (first {spec.warmup} "
             f"left out), cutoff {spec.cutoff_len}, beta {spec.beta}, gradient checkpointing "
             f"{'on' if spec.gradient_checkpointing else 'off'} (both), {len(results['trl'])} runs per side (medians)",
             "", f"{'':10}{'pairs/s':>10}{'tokens/s':>11}{'peak MiB':>10}{'final loss':>12}{'trainable':>11}"]
    for side, row in rows.items():
        lines.append(f"{side:10}{row['pairs/s']:>10.2f}{row['tokens/s']:>11.0f}{row['peak MiB']:>10.1f}"
                     f"{row['final loss'] or 0:>12.4f}{row['trainable']:>11,}")
    t, p = rows["tunelab"], rows["trl"]
    lines.append(f"{'ratio':10}{t['pairs/s'] / p['pairs/s']:>9.2f}x{t['tokens/s'] / p['tokens/s']:>10.2f}x"
                 f"{t['peak MiB'] / p['peak MiB'] if p['peak MiB'] else float('nan'):>9.2f}x   (tunelab / TRL)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local model folder; default: a random small Qwen2 + minimind tokenizer")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides (TRL's default)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, Path(args.spec), Path(args.result))
        return 0
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as workdir:
        if args.model:
            model, model_path = {"name": args.model, "params": 0}, str(Path(args.model).resolve())
        else:
            model_path = str(Path(workdir) / "model")
            model = build_random_model(DEFAULT_TOKENIZER, Path(model_path), args.hidden_size, args.layers, args.seed)
        spec = Spec(model=model_path, data=str(Path(args.data).resolve()), rows=args.rows, steps=args.steps,
                    batch_size=args.batch_size, grad_accum=args.grad_accum, learning_rate=args.lr,
                    cutoff_len=args.cutoff, seed=args.seed, lora_rank=args.lora_rank, beta=args.beta,
                    warmup=args.warmup, device=device, bf16=args.bf16,
                    gradient_checkpointing=args.gradient_checkpointing, threads=args.threads, workdir=workdir)
        spec_path = Path(workdir) / "spec.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        results: dict[str, list[SideResult]] = {side: [] for side in SIDES}
        for index, side in enumerate(run_order(["trl", "tunelab"], args.repeats)):
            print(f"[{index + 1}/{2 * args.repeats}] DPO with {side} ...", file=sys.stderr, flush=True)
            results[side].append(run_worker(side, index, spec, spec_path, script=__file__))
    info = machine_description(device, args.threads)
    if not model["params"]:
        model["params"] = results["tunelab"][0].settings.get("total_params", 0)
    if args.json:
        print(json.dumps({"machine": info, "model": model, "spec": asdict(spec),
                          "results": {side: [asdict(r) for r in runs] for side, runs in results.items()}}))
    else:
        print(report(info, model, spec, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
