"""`tunelab score`: a reward model's score of one (prompt, response), or its pair accuracy on preference data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.commands.flags import ModelFlags, at_least, output_file
from tunelab.console import console, stdout
from tunelab.data.registry import SKIP_HINT, load_dataset_rows
from tunelab.errors import TunelabError


def score_command(dataset: str | None, prompt: str | None, response: str | None, flags: ModelFlags, *,
                  dataset_dir: str, max_samples: int | None, skip_invalid: bool, output: str | None,
                  as_json: bool) -> None:
    """Flags, paths and data checked before the reward model loads; then the score, or the pairs' accuracy and
    margin (per-pair scores in ``output`` when given)."""
    if (prompt is None) != (response is None):
        raise TunelabError("--prompt and --response go together")
    if (dataset is None) == (prompt is None):
        raise TunelabError("give a preference DATASET, or --prompt and --response")
    if prompt is not None and not (prompt.strip() and str(response).strip()):
        raise TunelabError("--prompt and --response must not be empty")
    at_least(1, max_samples=max_samples)
    target = output_file(output, "--output") if output else None
    options = flags.check(use="score")
    model, adapter, template = flags.model, flags.adapter, flags.template
    rows = None
    if dataset is not None:
        rows = load_dataset_rows(dataset, dataset_dir, "preference", max_samples, skip_invalid=skip_invalid,
                                 skip_hint=SKIP_HINT).rows
    from tunelab.inference.reward import RewardScorer

    with console.status("loading the reward model ..."):
        scorer = RewardScorer(model, adapter, template, options=options)
    if rows is None:
        value = scorer(prompt, response)
        print(json.dumps({"score": value}) if as_json else f"{value:.4f}")
        return
    chosen = scorer.score_batch([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = scorer.score_batch([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    if target is not None:
        _write_scores(target, rows, chosen, rejected)
    accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows)
    summary = {"num_pairs": len(rows), "accuracy": accuracy,
               "mean_margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(rows)}
    if as_json:
        print(json.dumps(summary))
    else:
        stdout.print(f"[bold]pairs[/bold] {len(rows)}: chosen scored above rejected in {accuracy:.1%}, mean margin "
                     f"{summary['mean_margin']:.4f}" + (f"; scores in {target}" if target else ""))


def _write_scores(target: Path, rows: list[dict[str, Any]], chosen: list[float], rejected: list[float]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as handle:
        for row, good, bad in zip(rows, chosen, rejected, strict=True):
            handle.write(json.dumps({"prompt": row["prompt"], "chosen_score": good, "rejected_score": bad},
                                    ensure_ascii=False) + "\n")
