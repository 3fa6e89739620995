"""`tunelab config` and the key list at the end of `tunelab train --help`: the stages and every config key,
read from the registries and the schema."""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING, Any

from tunelab.console import stdout

if TYPE_CHECKING:
    from tunelab.config import KeyInfo


def shown(value: Any) -> str:
    return "none" if value is None else json.dumps(value) if not isinstance(value, str) else value


def stage_lines() -> list[str]:
    from tunelab.stage_registry import all_stages

    return [f"{name} ({stage.kind} rows): {stage.summary}" for name, stage in all_stages().items()]


def owners(key: KeyInfo) -> str:
    """'stages dpo, orpo' / 'finetuning_type lora' for a stage's or a method's own key; '' for a common key."""
    if key.stages:
        return f"stage{'s' if len(key.stages) > 1 else ''} {', '.join(key.stages)}"
    return f"finetuning_type {', '.join(key.methods)}" if key.methods else ""


def keys_epilog() -> str:
    from tunelab.config import describe_keys

    keys = [f"{key.key} ({key.type}, default {shown(key.default)}{f'; {owners(key)}' if owners(key) else ''}): "
            f"{key.help}" for key in describe_keys()]
    return ("Stages (key `stage`):\n\n" + "\n\n".join(stage_lines())
            + "\n\nConfig keys (YAML, key=value or --key value):\n\n" + "\n\n".join(keys))


def print_keys(as_json: bool) -> None:
    """Stages and keys as wrapped text on stdout, or as one JSON list."""
    from tunelab.config import describe_keys

    rows = describe_keys()
    if as_json:
        print(json.dumps([row._asdict() for row in rows], indent=2))
        return
    width = max(40, min(stdout.width, 100))
    stdout.print("[bold]stages[/bold] (key `stage`)")
    for line in stage_lines():
        stdout.print(textwrap.fill(line, width, initial_indent="    ", subsequent_indent="      "), markup=False)
    for key in rows:
        only = f" ({owners(key)})" if owners(key) else ""
        stdout.print(textwrap.fill(f"{key.key}: {key.type} = {shown(key.default)}{only}", width,
                                   subsequent_indent="      "), markup=False, style="bold")
        stdout.print(textwrap.fill(key.help, width, initial_indent="    ", subsequent_indent="    "), markup=False)
