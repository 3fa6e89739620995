"""`tunelab demo` / `make demo`: the main job on the embedded model, offline, on a CPU.

Trains with the ordinary example config (examples/demo_lora_sft.yaml) through the same recipe as
any user's YAML, then shows answers to held-out prompts before and after, with a measured score:
how often the story uses both the requested name and the requested animal.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from rich.table import Table

from tunelab.config import load_config
from tunelab.console import console, stdout
from tunelab.errors import TunelabError

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO_CONFIG = REPO_ROOT / "examples" / "demo_lora_sft.yaml"
HELD_OUT = REPO_ROOT / "examples" / "data" / "demo_stories_heldout.json"
_REQUEST = re.compile(r"about (\w+) and an? (\w+)")


def follows_request(prompt: str, story: str) -> bool:
    """True when the story names both the requested character and animal."""
    match = _REQUEST.search(prompt)
    if match is None:
        raise ValueError(f"not a demo prompt: {prompt!r}")
    name, animal = match.groups()
    return re.search(rf"\b{name}\b", story) is not None and re.search(rf"\b{animal}\b", story) is not None


def score(prompts: list[str], stories: list[str]) -> float:
    return sum(follows_request(p, s) for p, s in zip(prompts, stories, strict=True)) / len(prompts)


def run_demo(output_dir: str = "outputs/demo") -> dict | None:
    """Train and score; None when training was interrupted (Ctrl-C)."""
    from tunelab.inference.predictor import Predictor
    from tunelab.stages.sft import run_sft

    if not DEMO_CONFIG.is_file():
        raise TunelabError(f"the demo needs the repository's examples folder ({DEMO_CONFIG} not found); "
                           "run it from a clone of tunelab")
    cfg = load_config(DEMO_CONFIG, [f"output_dir={output_dir}", "overwrite_output_dir=true",
                                    f"dataset_dir={DEMO_CONFIG.parent / 'data'}"])
    prompts = [record["instruction"] for record in json.loads(HELD_OUT.read_text(encoding="utf-8"))]
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]

    stdout.rule("1/3  the embedded model before training")
    with console.status(f"generating answers to {len(prompts)} held-out prompts with the untrained model ..."):
        before = Predictor(cfg.model_name_or_path, template=cfg.template, max_new_tokens=80)
        before_answers = before.generate_batch(conversations)
    stdout.print(f"answered {len(prompts)} held-out prompts (score {score(prompts, before_answers):.0%})")
    del before

    stdout.rule("2/3  LoRA SFT with examples/demo_lora_sft.yaml")
    if run_sft(cfg, command="tunelab demo").interrupted:
        return None

    stdout.rule("3/3  the fine-tuned model on held-out prompts")
    with console.status(f"generating answers to {len(prompts)} held-out prompts with the fine-tuned model ..."):
        after = Predictor(cfg.model_name_or_path, adapter=cfg.output_dir, max_new_tokens=80)
        after_answers = after.generate_batch(conversations)

    table = Table("held-out prompt", "before", "after", show_lines=True)
    for prompt, old, new in list(zip(prompts, before_answers, after_answers, strict=True))[:3]:
        table.add_row(prompt, old, new)
    stdout.print(table)
    report = {"prompts": len(prompts), "score_before": score(prompts, before_answers),
              "score_after": score(prompts, after_answers), "output_dir": cfg.output_dir,
              "samples": [{"prompt": p, "before": b, "after": a}
                          for p, b, a in zip(prompts, before_answers, after_answers, strict=True)]}
    report_path = Path(cfg.output_dir) / "demo_report.json"
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    stdout.print(f"[bold]score[/bold] (stories that use the requested name and animal, {len(prompts)} "
                 f"held-out prompts): before {report['score_before']:.0%}  ->  after "
                 f"{report['score_after']:.0%}")
    folder = shlex.quote(str(cfg.output_dir))
    stdout.print(f"demo report   {report_path}\ntry it         tunelab chat --adapter {folder} "
                 "--query \"Write a story about Tim and a frog.\"")
    return report
