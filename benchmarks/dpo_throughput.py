"""DPO, KTO and reward-model throughput: tunelab's ``dpo`` (``kto``, ``rm``) stage against a plain TRL ``DPOTrainer``
(``KTOTrainer``, ``RewardTrainer``), same model, examples and settings.

Run from the repository root::

    .venv/bin/python benchmarks/dpo_throughput.py                 # random small Qwen2 + real tokenizer
    .venv/bin/python benchmarks/dpo_throughput.py --stage kto     # kto_en_demo: one answer per row, labelled good/bad
    .venv/bin/python benchmarks/dpo_throughput.py --stage rm      # the same pairs, a score head (Bradley-Terry)
    .venv/bin/python benchmarks/dpo_throughput.py --device cuda --model /path/to/model --steps 50 --bf16

What is compared, and why it is fair (how both sides are run, timed and measured is ``harness.py``'s):

* tunelab runs its public recipe ``tunelab.stages.dpo.run_dpo(TrainConfig(stage="dpo", ...))``; TRL runs
  ``DPOTrainer(model=<path>, args=DPOConfig(...), train_dataset=<conversational pairs>, peft_config=...)``.
  Both use LoRA with the same rank, alpha and targets (the reference is the base with the adapter
  disabled on both sides), the same beta, batch, accumulation, learning rate, steps, seed and precision.
* Both read the first ``--rows`` pairs of LLaMA-Factory's ``dpo_en_demo`` (ShareGPT prompt + chosen /
  rejected turns), or with ``--stage kto`` of ``kto_en_demo`` (messages + a good/bad label; TRL gets them as
  prompt / completion / label), and load the same saved weights; each side runs in its own fresh process, the order
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

import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (the shared harness, a sibling module)
    FIXTURES,
    MIB,
    Comparison,
    SideResult,
    SideSpec,
    add_llamafactory_args,
    compare,
    fmt_ratio,
    lf_template_for,
    llamafactory_peers,
    make_step_clock,
    matmul_peak_flops,
    matmul_peak_name,
    median_of,
    ratio,
    side_by_side_parser,
    side_worker,
    summarize,
    table,
    to_json,
    trl_lora,
    window_start,
)

DEFAULT_DATA = {"dpo": FIXTURES / "data" / "llamafactory" / "dpo_en_demo.json",
                "kto": FIXTURES / "data" / "llamafactory" / "kto_en_demo.json",
                "rm": FIXTURES / "data" / "llamafactory" / "dpo_en_demo.json"}
DEFAULT_TOKENIZER = FIXTURES / "tokenizers" / "minimind"
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


@dataclass
class Spec(SideSpec):
    cutoff_len: int
    lora_rank: int
    beta: float
    lf_template: str = "qwen"
    stage: str = "dpo"


def run_tunelab(spec: Spec, started: float, run_dir: Path) -> SideResult:
    from tunelab.config import TrainConfig
    from tunelab.stages.dpo import run_dpo
    from tunelab.stages.kto import run_kto
    from tunelab.stages.rm import run_rm

    cfg = TrainConfig(**spec.training_args(run_dir), stage=spec.stage, model_name_or_path=spec.model, dataset=spec.data,
                      dataset_dir=str(Path(spec.data).parent), cutoff_len=spec.cutoff_len, max_samples=spec.rows,
                      overwrite_output_dir=True, logging_steps=1, lora_rank=spec.lora_rank, lora_target="all",
                      report_to="none", plot_loss=False, pref_beta=spec.beta)
    clock = make_step_clock(started)
    {"dpo": run_dpo, "kto": run_kto, "rm": run_rm}[spec.stage](cfg, callbacks=[clock])
    result = summarize("tunelab", clock, spec.warmup, "answer content + end marker (tunelab masks)")
    if spec.stage == "dpo":
        result.labelled_fraction = _answer_fraction(cfg)
    elif spec.stage == "rm":  # every token fed goes through the body (MFU: dpo_step_flops)
        result.labelled_fraction = 1.0
    return result


def _answer_fraction(cfg: object) -> float:
    """Answer tokens (the positions scored) over all tokens fed, in tunelab's encoded pairs: each pair is two
    sequences, the shared prompt plus one answer."""
    from tunelab.data.pipeline import build_datasets
    from tunelab.models.loading import load_tokenizer

    train, _, _ = build_datasets(cfg, cfg.row_kind, load_tokenizer(cfg.model_name_or_path, None), cfg.seed)
    answers = sum(sum(mask) for side in ("chosen", "rejected") for mask in train[f"{side}_mask"])
    fed = sum(2 * len(prompt) for prompt in train["prompt_ids"]) + sum(
        len(ids) for side in ("chosen", "rejected") for ids in train[f"{side}_ids"])
    return answers / fed


def dpo_step_flops(model: dict, tokens: float, answer_fraction: float, stage: str = "dpo") -> float:
    """Useful FLOPs of one LoRA DPO step over ``tokens`` fed positions: the policy's forward and the backward to
    its activations (2 + 2 per body parameter and token) and the reference forward (2), plus the output layer at
    the answer positions only (forward, backward to the hidden states, reference forward: 3 x 2hV). A reward model
    has no reference and no output layer (its one-output score head is negligible): 4 per body parameter."""
    if stage == "rm":
        return 4 * model["body_params"] * tokens
    head = 6 * model["hidden_size"] * model["vocab_size"]
    return 6 * model["body_params"] * tokens + head * answer_fraction * tokens


def _pairs(path: str, rows: int) -> list[dict]:
    def turn(message: dict) -> dict:
        return {"role": ROLES[message["from"]], "content": message["value"]}

    records = json.loads(Path(path).read_text(encoding="utf-8"))[:rows]
    return [{"prompt": [turn(m) for m in r["conversations"]], "chosen": [turn(r["chosen"])],
             "rejected": [turn(r["rejected"])]} for r in records]


def _labelled_answers(path: str, rows: int) -> list[dict]:
    """kto_en_demo's rows in TRL's unpaired format: the conversation before the last message, the last one, its
    label."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))[:rows]
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:], "label": r["label"]} for r in records]


def run_trl(spec: Spec, started: float, run_dir: Path) -> SideResult:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    if spec.stage == "rm":  # the same pairs; TRL loads the model with a one-output score head
        # TRL's reward trainer drops pairs longer than max_length where tunelab cuts them: run with a --cutoff
        # that keeps every pair whole, and TRL without a limit, so both train on the same pairs
        args = RewardConfig(**spec.trl_args(run_dir), logging_steps=1, max_length=None, report_to="none")
        clock = make_step_clock(started)
        RewardTrainer(model=spec.model, args=args, train_dataset=Dataset.from_list(_pairs(spec.data, spec.rows)),
                      processing_class=tokenizer, peft_config=trl_lora(spec.lora_rank, task_type="SEQ_CLS"),
                      callbacks=[clock]).train()
        return summarize("trl", clock, spec.warmup, "prompt + answer (TRL)")
    kto = spec.stage == "kto"
    # trl_args sets gradient checkpointing as on tunelab's side (both configs turn it on by default)
    args = (KTOConfig if kto else DPOConfig)(**spec.trl_args(run_dir), logging_steps=1, beta=spec.beta,
                                             max_length=spec.cutoff_len, report_to="none")
    rows = (_labelled_answers if kto else _pairs)(spec.data, spec.rows)
    clock = make_step_clock(started)
    trainer = (KTOTrainer if kto else DPOTrainer)(
        model=spec.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=trl_lora(spec.lora_rank), callbacks=[clock])
    trainer.train()
    return summarize("trl", clock, spec.warmup, "everything after the prompt (TRL)")


def run_llamafactory(spec: Spec, started: float, run_dir: Path) -> SideResult:
    """LLaMA-Factory's own DPO recipe (run_exp) on the same model, pairs and settings, in its environment; with LoRA
    and no reference model given it uses the base with the adapter disabled, as the other two sides do."""
    from llamafactory.train.tuner import run_exp

    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    entry = {"file_name": spec.data, "ranking": True, "formatting": "sharegpt",
             "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}
    if spec.stage == "kto":
        entry = {"file_name": spec.data, "formatting": "sharegpt",
                 "columns": {"messages": "messages", "kto_tag": "label"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                          "assistant_tag": "assistant"}}
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench": entry}))
    args = {
        "model_name_or_path": spec.model, "stage": spec.stage, "do_train": True, "finetuning_type": "lora",
        "lora_rank": spec.lora_rank, "lora_alpha": 2 * spec.lora_rank, "lora_target": "all",
        "pref_beta": spec.beta, "pref_loss": "sigmoid", "dataset": "bench", "dataset_dir": str(data_dir),
        "template": spec.lf_template, "cutoff_len": spec.cutoff_len, "max_samples": spec.rows,
        "overwrite_cache": True, "output_dir": str(run_dir / "out"), "overwrite_output_dir": True,
        "per_device_train_batch_size": spec.batch_size, "gradient_accumulation_steps": spec.grad_accum,
        "learning_rate": spec.learning_rate, "max_steps": spec.steps, "seed": spec.seed, "logging_steps": 1,
        "save_steps": max(spec.steps, 500), "bf16": spec.bf16, "gradient_checkpointing": spec.gradient_checkpointing,
        "report_to": "none", "plot_loss": False, "include_num_input_tokens_seen": "non_padding",
        "use_cpu": spec.device == "cpu",
        # it turns checkpointing on by itself unless told not to; the sides must match
        "disable_gradient_checkpointing": not spec.gradient_checkpointing,
    }
    clock = make_step_clock(started)
    run_exp(args, callbacks=[clock])
    return summarize("llamafactory", clock, spec.warmup, "answers (LLaMA-Factory)")


def report(run: Comparison) -> str:
    info, model, spec = run.info, run.model, run.spec

    unit = "examples/s" if spec.stage == "kto" else "pairs/s"

    def examples_per_second(r: SideResult) -> float:
        return (r.steps - window_start(spec.warmup, r.steps)) * spec.batch_size * spec.grad_accum / r.window_seconds

    rows = {side: {unit: median_of(runs, examples_per_second), "tokens/s": median_of(runs, "tokens_per_second"),
                   "peak MiB": median_of(runs, "peak_memory_bytes") / MIB, "final loss": runs[-1].final_loss,
                   "trainable": runs[-1].trainable_params} for side, runs in run.results.items()}
    t, p = rows["tunelab"], rows["trl"]
    body = [[side, f"{row[unit]:.2f}", f"{row['tokens/s']:.0f}", f"{row['peak MiB']:.1f}",
             f"{row['final loss'] or 0:.4f}", f"{row['trainable']:,}"] for side, row in rows.items()]
    for name, other in (("vs TRL", p), ("vs LF", rows.get("llamafactory"))):
        if other is not None:
            body.append([name, *(fmt_ratio(ratio(t[key], other[key])) for key in (unit, "tokens/s", "peak MiB"))])
    data = f"{spec.rows} {Path(spec.data).stem} {'labelled answers' if spec.stage == 'kto' else 'pairs'}"
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    beta = "" if spec.stage == "rm" else f", beta {spec.beta}"  # a reward model's loss has none
    lines = [f"{spec.stage.upper()} throughput, {info['date']}: {info['cpu']}{gpu}",
             f"torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}, peft {info['peft']}",
             f"model: {model['name']} ({model['params']:,} parameters); {data}, LoRA r"
             f"{spec.lora_rank}, batch {spec.batch_size} x {spec.grad_accum}, {spec.steps} steps (first {spec.warmup} "
             f"left out), cutoff {spec.cutoff_len}{beta}, gradient checkpointing "
             f"{'on' if spec.gradient_checkpointing else 'off'} (both), {len(run.results['trl'])} runs per side "
             "(medians)", "",
             *table(["", unit, "tokens/s", "peak MiB", "final loss", "trainable"], body,
                    widths=[10, 10, 11, 10, 12, 11], gap="")]
    lines.append("ratios: tunelab / the other side" + (
        f"; LLaMA-Factory 0.9.5 tokenizes with its own template {spec.lf_template}" if "llamafactory" in rows else ""))
    peak, fraction = info.get("matmul_peak_flops"), run.results["tunelab"][-1].labelled_fraction
    if peak and fraction and "body_params" in model:
        mfu = {side: dpo_step_flops(model, row["tokens/s"], fraction, spec.stage) / peak for side, row in rows.items()}
        peak_name = matmul_peak_name(run.spec.device, run.spec.bf16)
        counted = "every token fed, no output layer" if spec.stage == "rm" else \
            f"{fraction:.0%} of tokens fed are answer tokens"
        lines.append(f"MFU (useful FLOPs per second / measured {peak_name} matmul peak {peak / 1e9:,.0f} GFLOP/s; "
                     f"{counted}): " + ", ".join(f"{side} {value:.1%}" for side, value in mfu.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = side_by_side_parser(__doc__, data=DEFAULT_DATA["dpo"], tokenizer=DEFAULT_TOKENIZER, rows=64, steps=12,
                                 batch_size=2, lr=5e-6, peers=("llamafactory",))
    parser.add_argument("--stage", choices=tuple(DEFAULT_DATA), default="dpo",
                        help="dpo (pairs), kto (labelled answers; --data defaults to kto_en_demo) or rm (pairs)")
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lora-rank", type=int, default=8)
    add_llamafactory_args(parser, "pairs")
    args = parser.parse_args(argv)
    if args.stage != "dpo" and args.data == str(DEFAULT_DATA["dpo"]):
        args.data = str(DEFAULT_DATA[args.stage])
    if args.worker:
        side_worker(Spec, {"tunelab": run_tunelab, "trl": run_trl, "llamafactory": run_llamafactory}, args)
        return 0
    peers = llamafactory_peers(args)
    run = compare(__file__, args, args.stage.upper(), lambda **shared: Spec(
        **shared, cutoff_len=args.cutoff, lora_rank=args.lora_rank, beta=args.beta, stage=args.stage,
        lf_template=args.lf_template or lf_template_for(args.tokenizer)), peers)
    run.info["matmul_peak_flops"] = matmul_peak_flops(args.threads, run.spec.device, run.spec.bf16)
    print(to_json({"machine": run.info, "model": run.model, "spec": run.spec, "results": run.results})
          if args.json else report(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
