"""What a saved model or adapter says about itself: a portable base model and a true model card.

PEFT records the absolute path it loaded the base from (for the embedded model, a path inside the
install) and writes a card that names no base; a copied adapter should still find its base, and the
card should say what was trained on what, and how.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from tunelab.config import TrainConfig
from tunelab.models.sources import ADAPTER_FILE, EMBEDDED_MODEL, portable_base_name


def record_base_model(folder: str | Path, base: str) -> None:
    """Rewrite ``base_model_name_or_path`` of an adapter folder with the portable name of ``base``."""
    config_path = Path(folder) / ADAPTER_FILE
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = portable_base_name(base)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def usage_command(cfg: TrainConfig, folder: str | Path) -> str:
    """The tunelab command that uses a training output, runnable as printed from where training ran: a reward
    model scores (its training pairs), anything else chats."""
    flag = "--adapter" if (Path(folder) / ADAPTER_FILE).is_file() else "--model"
    if cfg.stage == "rm":  # its held-out pairs when it had some, else its training pairs
        names = cfg.eval_dataset or cfg.dataset or []
        dataset = (names.split(",") if isinstance(names, str) else names)[0]
        skip = " --skip-invalid" if cfg.skip_invalid else ""
        return (f"tunelab score {shlex.quote(dataset)} --dataset-dir {shlex.quote(str(cfg.dataset_dir))} "
                f"{flag} {shlex.quote(str(folder))} --max-samples 100{skip}")
    return f"tunelab chat {flag} {shlex.quote(str(folder))}"


def _loading_code(cfg: TrainConfig, folder: Path) -> str:
    """Python that loads the result with plain transformers/peft (a reward model with its score head)."""
    from tunelab.models.vision import is_vision_model

    reward = cfg.stage == "rm"
    auto = "AutoModelForSequenceClassification" if reward else \
        "AutoModelForImageTextToText" if is_vision_model(cfg.model_name_or_path) else "AutoModelForCausalLM"
    head = ", num_labels=1, pad_token_id=tokenizer.pad_token_id" if reward else ""
    lines = [f"from transformers import {auto}, AutoTokenizer"]
    if (folder / ADAPTER_FILE).is_file():
        base = portable_base_name(cfg.model_name_or_path)
        source = f"{base!r}"
        if base == EMBEDDED_MODEL:
            lines.append("from tunelab.models.sources import resolve_model_path  # where tunelab keeps its model")
            source = f"resolve_model_path({base!r})"
        lines[:0] = ["from peft import PeftModel"]
        lines += ["", f"tokenizer = AutoTokenizer.from_pretrained({str(folder)!r})",
                  f"base = {auto}.from_pretrained({source}{head})",
                  f"model = PeftModel.from_pretrained(base, {str(folder)!r})"]
    else:
        lines += ["", f"tokenizer = AutoTokenizer.from_pretrained({str(folder)!r})",
                  f"model = {auto}.from_pretrained({str(folder)!r}{head})"]
    if reward:
        lines += ["", "# or with the conversation rendered and cut exactly as in training:",
                  "from tunelab.inference.reward import RewardScorer",
                  f"scorer = RewardScorer({'adapter' if (folder / ADAPTER_FILE).is_file() else 'model'}="
                  f"{str(folder)!r})",
                  'print(scorer("Write a story about Tim.", "Once upon a time, Tim saw a frog."))']
    return "\n".join(lines)


def write_model_card(folder: str | Path, cfg: TrainConfig, data_report: dict[str, Any] | None,
                     final_loss: float | None, global_step: int, command: str | None = None) -> Path:
    """README.md naming the base model, the data, the method, the command and how to load the result."""
    folder = Path(folder)
    base = portable_base_name(cfg.model_name_or_path)
    datasets = (data_report or {}).get("datasets") or [{"name": name} for name in cfg.dataset or []]
    data_lines = "\n".join(f"- `{d['name']}`" + (f": {d['rows']} records ({d['format']} format) from "
                                                  f"`{d['source']}`" if "rows" in d else "") for d in datasets)
    card = f"""---
base_model: {base}
library_name: {"peft" if (folder / ADAPTER_FILE).is_file() else "transformers"}
tags: [tunelab, {cfg.stage}, {cfg.finetuning_type}]
---

# {folder.name}

A `{cfg.stage}` fine-tune of {_link(base)} with `{cfg.finetuning_type}` tuning, trained by tunelab
for {global_step} optimizer steps
(final training loss {f"{final_loss:.4f}" if final_loss is not None else "not logged"}).

## Data

{data_lines or "- (none recorded)"}

Template: `{cfg.template or "the tokenizer's own"}`; cutoff_len {cfg.cutoff_len}; loss on
{ {"all": "every token", "last": "the last assistant turn", "assistant": "assistant turns"}[cfg.loss_policy] }.

## Training

Command: `{command or "the Python API (tunelab.stages)"}`

Learning rate {cfg.learning_rate}, {cfg.lr_scheduler_type} schedule, batch size
{cfg.per_device_train_batch_size} x {cfg.gradient_accumulation_steps} accumulation, seed {cfg.seed}.
The full configuration is `config.yaml` beside this file; the loss curve is `metrics.jsonl` / `loss.png`.

## Use

{usage_blocks(usage_command(cfg, folder), _loading_code(cfg, folder))}
"""
    path = folder / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


def usage_blocks(shell: str, python: str) -> str:
    """A card's Use section: the commands and the Python apart, each in a fenced block a reader can run as is
    (tests compile every block and run the ones that work offline)."""
    blocks = [f"```bash\n{shell}\n```"] + ([f"```python\n{python}\n```"] if python else [])
    return "\n\n".join(blocks)


def _link(base: str) -> str:
    if base == EMBEDDED_MODEL:
        return f"`{base}` (the model embedded in tunelab)"
    return f"[`{base}`](https://huggingface.co/{base})" if "/" in base and not Path(base).exists() else f"`{base}`"
