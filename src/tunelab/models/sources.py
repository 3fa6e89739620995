"""Where a model, tokenizer or adapter comes from, checked before anything heavy is imported.

A wrong path should be reported as a wrong path within a second, not as "the hub is unreachable"
after torch and transformers have loaded, nor as a library message about a missing package. No
import of torch or transformers here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tunelab.config import EMBEDDED_MODEL
from tunelab.errors import ConfigError
from tunelab.hub import go_offline, hub_offline, hub_unreachable

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# The embedded model is a base model without a chat template; this built-in is its default.
EMBEDDED_TEMPLATE = "default"
MODEL_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")
ADAPTER_FILE = "adapter_config.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_embedded(name: str) -> bool:
    return name == EMBEDDED_MODEL and not Path(name).exists()


def resolve_model_path(name: str) -> str:
    """``stories260K`` means the embedded model unless a folder of that name exists here; ``~`` is the home
    folder (the libraries underneath would take it for a hub id)."""
    if is_embedded(name):
        return str(ASSETS / EMBEDDED_MODEL)
    return str(Path(name).expanduser()) if name.startswith("~") else name


def default_template(model: str, template: str | None) -> str | None:
    """The template to use when none is set: the embedded base model's built-in, else the tokenizer's own."""
    return EMBEDDED_TEMPLATE if template is None and is_embedded(model) else template


def _looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name``, and not written as a path: no ./, ~ or /, and no first folder that exists here
    (``outputs/run`` with an ``outputs`` folder present is a path to a run that is not there)."""
    if not _HUB_ID.match(name) or name.startswith("."):
        return False
    return "/" not in name or not Path(name.split("/", 1)[0]).is_dir()


def _in_hub_cache(name: str, what: str, cache_dir: str | None = None, revision: str | None = None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, ADAPTER_FILE if what == "adapter" else "config.json",
                                       cache_dir=cache_dir, revision=revision)
    except Exception:  # a name the hub's own validation refuses is simply not cached
        return False
    return isinstance(found, str)


def _check_hub_id(name: str, what: str, key: str, cache_dir: str | None = None, revision: str | None = None) -> None:
    """A name that is no local path: a hub id, which works offline only from the local cache."""
    local = Path(name).expanduser().absolute()
    if not _looks_like_hub_id(name):
        raise ConfigError(f"{key}: {what} folder '{name}' does not exist (looked for {local})")
    if _in_hub_cache(name, what, cache_dir, revision):
        if not hub_offline() and hub_unreachable():
            go_offline()  # load it from the cache without the libraries' retries
        return
    if hub_offline():
        raise ConfigError(f"{key}: '{name}' is not a local folder (checked {local}), and as a "
                          "Hugging Face hub id it is not in the local cache while HF_HUB_OFFLINE=1")
    reason = hub_unreachable()
    if reason:
        article = "an" if what == "adapter" else "a"
        raise ConfigError(f"{key}: '{name}' does not exist locally (checked {local}), and the Hugging Face hub, "
                          f"where it would be {article} {what} id, cannot be reached ({reason}); check the path, "
                          "or download it where there is network and pass its folder")


def check_model_source(name: str, key: str = "model_name_or_path", *, need_weights: bool = True,
                       cache_dir: str | None = None, revision: str | None = None) -> None:
    """A local model folder must hold a config and tokenizer files; anything else must be a hub id."""
    path = Path(resolve_model_path(name)).expanduser()
    if not path.exists():
        _check_hub_id(name, "model", key, cache_dir, revision)
        return
    if not path.is_dir():
        raise ConfigError(f"{key}: '{name}' is a file; expected a model folder (with config.json and tokenizer "
                          "files) or a Hugging Face model id")
    files = {child.name for child in path.iterdir()}
    if need_weights and ADAPTER_FILE in files and "config.json" not in files:
        base = adapter_base(str(path))
        raise ConfigError(f"{key}: '{name}' is a PEFT adapter, not a model; load it as adapter "
                          f"(adapter_name_or_path / --adapter) on its base model{f' {base!r}' if base else ''}")
    missing = []
    if need_weights and not files.intersection(MODEL_FILES):
        missing.append("config.json")
    if not files.intersection(TOKENIZER_FILES):
        missing.append(f"tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    if missing:
        raise ConfigError(f"{key}: folder '{name}' holds no model: missing {' and '.join(missing)}")


def check_adapter_source(name: str, key: str = "adapter_name_or_path") -> None:
    path = Path(name).expanduser()
    if not path.exists():
        _check_hub_id(name, "adapter", key)
        return
    if not path.is_dir():
        raise ConfigError(f"{key}: '{name}' is a file; expected an adapter folder (with {ADAPTER_FILE})")
    if not (path / ADAPTER_FILE).is_file():
        hint = " (a full model: pass it as the model instead)" if (path / "config.json").is_file() else ""
        raise ConfigError(f"{key}: folder '{name}' holds no PEFT adapter (no {ADAPTER_FILE}){hint}")


def check_quantization_backend(bits: int | None) -> None:
    """A 4/8-bit base needs bitsandbytes: said before anything is read or written."""
    import importlib.util

    if bits and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"quantization_bit {bits} needs bitsandbytes: pip install 'tunelab[gpu]' (or pip install "
                          "bitsandbytes; it also runs on CPUs)")


def adapter_setting(adapter: str, key: str) -> str | None:
    config = Path(adapter).expanduser() / ADAPTER_FILE
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get(key)
    except (OSError, json.JSONDecodeError):
        return None


def model_config(model: str) -> dict[str, Any] | None:
    """A local model's config.json (None for a hub id not at hand)."""
    path = Path(resolve_model_path(model)) / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def is_reward_model(model: str, adapter: str | None) -> bool:
    """A stage-rm result: a SEQ_CLS adapter, or a model saved with a sequence-classification head."""
    if adapter is not None:
        return adapter_setting(adapter, "task_type") == "SEQ_CLS"
    architectures = (model_config(model) or {}).get("architectures") or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def adapter_base(adapter: str) -> str | None:
    """The base model an adapter folder was trained on (``base_model_name_or_path``), if recorded."""
    return adapter_setting(adapter, "base_model_name_or_path")


def check_adapter_method(adapter: str, finetuning_type: str) -> None:
    """Continuing an adapter trains it with the method that made it: another finetuning_type is refused."""
    from tunelab.method_registry import method, method_of_adapter

    peft_type = adapter_setting(adapter, "peft_type")
    made_by = method_of_adapter(peft_type) if peft_type else None
    chosen = method(finetuning_type)
    if peft_type and (made_by is None or made_by.name != chosen.name):
        made = made_by.name if made_by else f"PEFT type {peft_type}"
        raise ConfigError(f"adapter_name_or_path '{adapter}' is a {made} adapter but finetuning_type is "
                          f"{chosen.name}; set finetuning_type: {made_by.name if made_by else '...'} to continue it, "
                          "or leave adapter_name_or_path out to start a new adapter")


def portable_base_name(name: str) -> str:
    """What an adapter should record as its base: the embedded model by name, not its install path."""
    return EMBEDDED_MODEL if Path(name).resolve() == (ASSETS / EMBEDDED_MODEL).resolve() else name
