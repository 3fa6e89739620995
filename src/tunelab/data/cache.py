"""The tokenized-data cache: a second run on the same data, tokenizer, template and data keys starts from the encoded
datasets of the first instead of reading and tokenizing again.

The key is a hash of everything the encoded samples depend on: the data settings that shape them (datasets,
cutoff, masking policy, mixing, split, limits), the row kind and the seed, the system prompt of prompt rows, each
local data file's size and modification time plus its dataset_info.json entry, the tokenizer's files and the
chosen template, and tunelab's version and data-layer code. Any change makes another key; ``overwrite_cache:
true`` rebuilds. Data from the hub (no local file to fingerprint) is never cached. Entries are written to a
temporary folder and renamed into place, so an interrupted write leaves nothing half-made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tunelab.config.concerns import DataSettings
from tunelab.data.registry import DatasetSource, Skipped, resolve_dataset

# The data settings the encoded samples depend on (output-only and reader-tuning keys are left out).
KEYED_SETTINGS = ("dataset", "eval_dataset", "cutoff_len", "max_samples", "val_size", "train_on_prompt",
                  "mask_history", "cutoff_policy", "skip_invalid", "dedup", "mix_strategy", "interleave_probs",
                  "template")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def cache_root() -> Path:
    """``$TUNELAB_CACHE/tokenized``, by default under ``~/.cache/tunelab``."""
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab")).expanduser() / "tokenized"


def _file_stamp(path: Path) -> list[Any]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _source_stamp(source: DatasetSource) -> list[Any] | None:
    if source.path is None:
        return None  # a hub dataset: nothing local to fingerprint
    spec = dataclasses.asdict(source.spec)
    return [_file_stamp(source.path), spec, source.read_options]


def _tokenizer_stamp(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _code_stamp() -> str:
    """The data layer's own code: an encoder changed in a checkout invalidates what the old one wrote."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(data: DataSettings, kind: str, seed: int, tokenizer_folder: Path | None,
              system_prompt: str | None = None) -> str | None:
    """The entry's name, or None when something cannot be fingerprinted (hub data, a tokenizer not on disk)."""
    from tunelab import __version__

    if tokenizer_folder is None or not Path(tokenizer_folder).is_dir():
        return None
    sources = [_source_stamp(resolve_dataset(name, data.dataset_dir)) for name in [*(data.dataset or []),
                                                                                   *(data.eval_dataset or [])]]
    if not sources or any(stamp is None for stamp in sources):
        return None
    described = {"settings": {key: getattr(data, key) for key in KEYED_SETTINGS}, "kind": kind, "seed": seed,
                 "system_prompt": system_prompt, "sources": sources, "version": __version__, "code": _code_stamp(),
                 "tokenizer": _tokenizer_stamp(Path(tokenizer_folder))}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cache_folder(key: str) -> Path:
    return cache_root() / key


def load_cached(key: str) -> tuple[Any, Any, dict[str, Any]] | None:
    """(train, eval or None, the data report's fields) of a complete entry, else None."""
    from datasets import load_from_disk

    folder = cache_folder(key)
    report = folder / "report.json"
    if not report.is_file():
        return None
    evaluation = load_from_disk(str(folder / "eval")) if (folder / "eval").is_dir() else None
    return load_from_disk(str(folder / "train")), evaluation, json.loads(report.read_text(encoding="utf-8"))


def save_cached(key: str, train: Any, evaluation: Any, report: dict[str, Any]) -> Path:
    """Write the entry into a temporary folder, then rename it into place (a concurrent writer's copy wins)."""
    folder = cache_folder(key)
    partial = folder.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        train.save_to_disk(str(partial / "train"))
        if evaluation is not None:
            evaluation.save_to_disk(str(partial / "eval"))
        (partial / "report.json").write_text(json.dumps(report, ensure_ascii=False, default=str), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def skipped_from(fields: dict[str, Any]) -> Skipped:
    """The Skipped counts of a cached report (``Skipped.as_dict``'s shape)."""
    skipped = Skipped()
    for reason, info in fields.items():
        skipped.counts[reason] = info["count"]
        skipped.examples[reason] = list(info["examples"])
    return skipped
