"""Batched generation against one-by-one generation, on the same prompts, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/predict_throughput.py                      # embedded model, 48 prompts
    .venv/bin/python benchmarks/predict_throughput.py --batch-sizes 16,32 --max-new-tokens 64
    .venv/bin/python benchmarks/predict_throughput.py --model /path/to/model --adapter /path/to/adapter --device cuda

``tunelab predict`` and ``tunelab eval`` generate through ``Predictor.generate_batch`` (left-padded batches);
this script times that path at batch size 1 (one prompt after another, as a naive loop does) and at each
``--batch-sizes``, greedy, on the held-out demo prompts repeated to ``--prompts``. It prints samples/s and
generated tokens/s per batch size, the ratio to one-by-one, and how many answers are token-for-token the same
as one-by-one's (left padding changes float rounding, which can flip a greedy choice on a near tie).
Each setting is timed ``--repeats`` times after one warm-up batch; the best time counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO_ROOT, machine_description, resolve_device, table, to_json  # noqa: E402  (a sibling module)

HELD_OUT = REPO_ROOT / "examples" / "data" / "demo_stories_heldout.json"


def _prompts(count: int) -> list[list[dict]]:
    records = json.loads(HELD_OUT.read_text(encoding="utf-8"))
    prompts = [[{"role": "user", "content": r["instruction"]}] for r in records]
    return [prompts[i % len(prompts)] for i in range(count)]


def _timed(predictor, prompts: list[list[dict]], batch_size: int, repeats: int) -> tuple[float, list[str]]:
    predictor.generate_batch(prompts[:batch_size])  # warm-up: allocations, kernels
    best, answers = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        answers = []
        for start in range(0, len(prompts), batch_size):
            answers += predictor.generate_batch(prompts[start:start + batch_size])
        best = min(best, time.perf_counter() - started)
    return best, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="stories260K")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--template", default="default")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--batch-sizes", default="16,32")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from tunelab.inference.predictor import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    predictor = Predictor(args.model, adapter=args.adapter, template=args.template,
                          max_new_tokens=args.max_new_tokens, device=device)
    prompts = _prompts(args.prompts)
    single_seconds, single_answers = _timed(predictor, prompts, 1, args.repeats)
    rows = [{"batch_size": 1, "seconds": single_seconds, "same_as_one_by_one": len(prompts)}]
    answers_by_size = {1: single_answers}
    for size in [int(s) for s in args.batch_sizes.split(",") if s.strip()]:
        seconds, answers = _timed(predictor, prompts, size, args.repeats)
        answers_by_size[size] = answers
        rows.append({"batch_size": size, "seconds": seconds,
                     "same_as_one_by_one": sum(a == b for a, b in zip(answers, single_answers, strict=True))})
    tokenizer = predictor.tokenizer
    for row in rows:
        answers = answers_by_size[row["batch_size"]]
        tokens = sum(len(tokenizer(a, add_special_tokens=False).input_ids) for a in answers)
        row.update(samples_per_second=len(prompts) / row["seconds"], tokens_per_second=tokens / row["seconds"],
                   speedup=single_seconds / row["seconds"])
    report = {"machine": machine_description(device, args.threads), "model": args.model, "adapter": args.adapter,
              "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "rows": rows}
    if args.json:
        print(to_json(report))
        return
    print(f"{report['machine']}\nmodel {args.model}" + (f" + {args.adapter}" if args.adapter else "")
          + f", {len(prompts)} prompts, greedy, up to {args.max_new_tokens} new tokens, best of {args.repeats}")
    body = [[str(row["batch_size"]), f"{row['seconds']:.2f}", f"{row['samples_per_second']:.1f}",
             f"{row['tokens_per_second']:.0f}", f"{row['speedup']:.1f}x", f"{row['same_as_one_by_one']}/{len(prompts)}"]
            for row in rows]
    print("\n".join(table(["batch", "seconds", "samples/s", "tokens/s", "vs 1-by-1", "same answers"], body,
                          widths=[5, 8, 10, 9, 9], align=">>>>><")))


if __name__ == "__main__":
    main()
