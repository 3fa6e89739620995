"""Reading a training config: a YAML file plus ``key=value`` overrides into one validated ``TrainConfig`` (or one
readable error naming where each bad key came from), and the key listing of `tunelab config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import ValidationError

from tunelab.config.suggest import suggest
from tunelab.config.train import TrainConfig
from tunelab.errors import ConfigError


def _split_flag_pairs(args: list[str]) -> list[str]:
    """Hugging Face-style ``--key value`` and ``--key=value`` become ``key=value``."""
    pairs, index = [], 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("--") and "=" not in arg:
            if index + 1 >= len(args) or args[index + 1].startswith("--"):
                raise ConfigError(f"override '{arg}' has no value; write {arg} VALUE or {arg[2:]}=VALUE")
            arg, index = f"{arg[2:]}={args[index + 1]}", index + 1
        pairs.append(arg.removeprefix("--"))
        index += 1
    return pairs


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``key=value`` (or ``--key value``, ``--key=value``) strings into a dict; values are read as
    YAML (numbers, booleans, lists)."""
    result: dict[str, Any] = {}
    for pair in _split_flag_pairs(pairs):
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{pair}' is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        result[key.strip()] = value
    return result


def _format_validation_error(error: ValidationError, sources: dict[str, str], default: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "config"
        source = sources.get(str(item["loc"][0]) if item["loc"] else "", default)
        given = item.get("input")
        if item["type"] == "value_error" and not item["loc"]:
            lines.append(f"{default}: {item['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{source}: key '{key}': {item['msg']} (got {given!r})")
    return "\n".join(lines)


def build_config(values: dict[str, Any], source: str = "config",
                 sources: dict[str, str] | None = None) -> TrainConfig:
    """Validate a dict of settings; every problem becomes one readable ConfigError naming where the key
    came from (``sources``: key -> the file or "command line"; ``source`` for the rest)."""
    sources = sources or {}
    known = every_key()
    unknown = [key for key in values if key not in known]
    if unknown:
        raise ConfigError("\n".join(
            f"{sources.get(key, source)}: unknown key '{key}'{suggest(key, known)}" for key in unknown
        ))
    try:
        return TrainConfig(**values)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, sources, source)) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file of ``key: value`` pairs (train, export and serve configs), or one error saying what is wrong."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a folder; expected a YAML file (see examples/)")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected UTF-8 YAML)") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(loaded).__name__}")
    return loaded or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (optional) and apply ``key=value`` overrides on top of it."""
    values: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        source = str(path)
        values.update(read_yaml_mapping(path))
    given = parse_overrides(overrides or [])
    values.update(given)
    return build_config(values, source, {key: "command line" for key in given})


def _type_name(annotation: Any) -> str:
    """``int``, ``str | None``; a Literal as its choices joined by '|'."""
    from typing import get_args, get_origin

    if get_origin(annotation) is Literal:
        return "|".join(str(choice) for choice in get_args(annotation))
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def every_key() -> list[str]:
    """The common keys, then every stage's and every method's own keys."""
    from tunelab.method_registry import method_keys
    from tunelab.stage_registry import stage_keys

    return [*TrainConfig.model_fields, *stage_keys(), *method_keys()]


class KeyInfo(NamedTuple):
    key: str
    type: str
    default: Any
    help: str
    stages: list[str]  # the stages that own it (empty: a common key)
    methods: list[str]  # the fine-tuning methods that own it (empty: a common key)


def describe_keys() -> list[KeyInfo]:
    """Every setting: the common keys per concern, then each stage's and each method's own keys; used by
    `tunelab config` and `--help`."""
    from tunelab.method_registry import method_keys
    from tunelab.stage_registry import stage_keys

    def info(name: str, field: Any, stages: list[str], methods: list[str]) -> KeyInfo:
        return KeyInfo(name, _type_name(field.annotation), field.default, field.description or "", stages, methods)

    return [*(info(name, field, [], []) for name, field in TrainConfig.model_fields.items()),
            *(info(name, field, stages, []) for name, (field, stages) in stage_keys().items()),
            *(info(name, field, [], methods) for name, (field, methods) in method_keys().items())]
