"""What a saved model or adapter says about itself: a portable base model and a true model card.

PEFT records the absolute path it loaded the base from (for the embedded model, a path inside the
install) and writes a card that names no base; a copied adapter should still find its base, and the
card should say what was trained on what, and how.
"""

from __future__ import annotations

import json
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


def _usage(cfg: TrainConfig, folder: Path) -> str:
    base = portable_base_name(cfg.model_name_or_path)
    if (folder / ADAPTER_FILE).is_file():
        source = (f"resolve_model_path(\"{base}\")  # the model embedded in tunelab" if base == EMBEDDED_MODEL
                  else f"\"{base}\"")
        extra = "from tunelab.models.sources import resolve_model_path\n" if base == EMBEDDED_MODEL else ""
        return (f"tunelab chat --adapter {folder}\n\n"
                f"from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n{extra}"
                f"base = AutoModelForCausalLM.from_pretrained({source})\n"
                f"model = PeftModel.from_pretrained(base, \"{folder}\")")
    return (f"tunelab chat --model {folder}\n\nfrom transformers import AutoModelForCausalLM\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"{folder}\")")


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

```
{_usage(cfg, folder)}
```
"""
    path = folder / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


def _link(base: str) -> str:
    if base == EMBEDDED_MODEL:
        return f"`{base}` (the model embedded in tunelab)"
    return f"[`{base}`](https://huggingface.co/{base})" if "/" in base and not Path(base).exists() else f"`{base}`"
