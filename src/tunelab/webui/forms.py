"""The Train form, generated from the config schema: which keys a stage and method show, how a field's text
becomes a config value, the YAML and command line they make, and where each config error belongs.

No Gradio here: the page (``app.py``) draws what this module decides, and tests read it directly, so the form
never falls behind the schema (every key of every stage and method is a field).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from tunelab.config.files import KeyInfo, build_config, describe_keys
from tunelab.errors import ConfigError

# Shown open at the top of the form, in this order; every other key of the stage and method is folded below.
BASIC_KEYS = ("model_name_or_path", "template", "dataset", "dataset_dir", "output_dir", "num_train_epochs",
              "max_steps", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
              "cutoff_len", "lora_rank", "lora_alpha", "lora_target", "logging_steps", "save_steps")
CHOSEN_BY_SELECTORS = ("stage", "finetuning_type")  # drawn as the two dropdowns that decide the other fields
_KEY_IN_ERROR = re.compile(r"key '([A-Za-z0-9_.]+)'|`([A-Za-z0-9_]+)`|'([A-Za-z0-9_]+)' applies to")


@dataclass(frozen=True)
class Field:
    """One config key as a form field."""

    key: str
    kind: str  # "bool", "choice" or "text" (a YAML scalar or list, read like `key=value` on the command line)
    default: Any
    help: str
    stages: tuple[str, ...]  # empty: every stage
    methods: tuple[str, ...]  # empty: every method
    choices: tuple[str, ...] = ()
    type: str = "str"  # the schema's type, as `tunelab config` shows it

    @property
    def basic(self) -> bool:
        return self.key in BASIC_KEYS

    def shown_for(self, stage: str, method: str) -> bool:
        return (not self.stages or stage in self.stages) and (not self.methods or method in self.methods)

    def initial(self) -> Any:
        """What the empty form holds: the default (as text for text fields)."""
        if self.kind in ("bool", "choice"):
            return self.default
        return "" if self.default is None else _as_text(self.default)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _field(info: KeyInfo) -> Field:
    choices = tuple(info.type.split("|")) if re.fullmatch(r"[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)+", info.type) else ()
    kind = "bool" if info.type == "bool" else "choice" if choices else "text"
    return Field(info.key, kind, info.default, info.help, tuple(info.stages), tuple(info.methods), choices,
                 info.type)


def form_fields() -> list[Field]:
    """Every config key once, basic keys first (in ``BASIC_KEYS`` order), then the rest in the schema's order."""
    fields = [_field(info) for info in describe_keys() if info.key not in CHOSEN_BY_SELECTORS]
    order = {key: index for index, key in enumerate(BASIC_KEYS)}
    return sorted(fields, key=lambda f: (0, order[f.key]) if f.basic else (1, 0))


def stage_names() -> list[str]:
    from tunelab.stage_registry import stage_names as names

    return list(names())


def method_names() -> list[str]:
    from tunelab.method_registry import method_names as names

    return list(names())


def parse_value(field: Field, raw: Any) -> Any:
    """A field's value as the config reads it; text is YAML, as in `key=value` on the command line."""
    if field.kind != "text":
        return raw
    text = "" if raw is None else str(raw).strip()
    if not text:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and "float" in field.type:  # YAML 1.1 reads 2e-4 as text; the schema says a number
        try:
            return float(value)
        except ValueError:
            return value
    return value


def config_values(stage: str, method: str, fields: list[Field], raw_values: list[Any]) -> dict[str, Any]:
    """The settings the form holds for this stage and method: the keys set away from their defaults."""
    values: dict[str, Any] = {"stage": stage, "finetuning_type": method}
    for field, raw in zip(fields, raw_values, strict=True):
        if not field.shown_for(stage, method):
            continue
        value = parse_value(field, raw)
        if value is not None and value != field.default:
            values[field.key] = value
    return values


def to_yaml(values: dict[str, Any]) -> str:
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def command_line(values: dict[str, Any], config_path: str = "config.yaml") -> str:
    """The same run from a terminal: the YAML file, or every key as an override when there is no file."""
    overrides = " ".join(shlex.quote(f"{key}={_as_text(value)}") for key, value in values.items())
    return f"tunelab train {config_path}\n# or, without a file:\ntunelab train {overrides}"


def check(values: dict[str, Any]) -> dict[str, str]:
    """Config errors by the field they belong to (``""``: the form as a whole), with the CLI's own text."""
    try:
        build_config(values, source="form")
    except ConfigError as error:
        return errors_by_key(str(error), set(values) | {f.key for f in form_fields()})
    return {}


def errors_by_key(message: str, keys: set[str]) -> dict[str, str]:
    placed: dict[str, list[str]] = {}
    for line in message.splitlines():
        found = next((name for match in _KEY_IN_ERROR.finditer(line) for name in match.groups()
                      if name and name.split(".")[0] in keys), "")
        placed.setdefault(found.split(".")[0], []).append(line.removeprefix("form: "))
    return {key: "\n".join(lines) for key, lines in placed.items()}
