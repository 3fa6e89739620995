"""`tunelab config` and the key list at the end of `tunelab train --help`: the stages and every config key,
read from the registries and the schema."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from tunelab.console import stdout


def shown(value: Any) -> str:
    return "none" if value is None else json.dumps(value) if not isinstance(value, str) else value


def stage_lines() -> list[str]:
    from tunelab.stage_registry import all_stages

    return [f"{name} ({stage.kind} rows): {stage.summary}" for name, stage in all_stages().items()]


def keys_epilog() -> str:
    from tunelab.config import describe_keys

    keys = [f"{name} ({kind}, default {shown(default)}{f'; stages {chr(44).join(stages)}' if stages else ''}): "
            f"{help_text}" for name, kind, default, help_text, stages in describe_keys()]
    return ("Stages (key `stage`):\n\n" + "\n\n".join(stage_lines())
            + "\n\nConfig keys (YAML, key=value or --key value):\n\n" + "\n\n".join(keys))


def print_keys(as_json: bool) -> None:
    """Stages and keys as wrapped text on stdout, or as one JSON list."""
    from tunelab.config import describe_keys

    rows = describe_keys()
    if as_json:
        print(json.dumps([dict(zip(("key", "type", "default", "help", "stages"), row, strict=True)) for row in rows],
                         indent=2))
        return
    width = max(40, min(stdout.width, 100))
    stdout.print("[bold]stages[/bold] (key `stage`)")
    for line in stage_lines():
        stdout.print(textwrap.fill(line, width, initial_indent="    ", subsequent_indent="      "), markup=False)
    for name, kind, default, help_text, stages in rows:
        only = f" (stage{'s' if len(stages) > 1 else ''} {', '.join(stages)})" if stages else ""
        stdout.print(textwrap.fill(f"{name}: {kind} = {shown(default)}{only}", width, subsequent_indent="      "),
                     markup=False, style="bold")
        stdout.print(textwrap.fill(help_text, width, initial_indent="    ", subsequent_indent="    "), markup=False)
