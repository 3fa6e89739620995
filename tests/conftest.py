"""Shared fixtures: the real data, templates and tokenizers under ``../shared`` and the embedded model.

Tokenizers are loaded once per session (the Llama-3 one takes about a second) and handed out as deep
copies by ``load_tokenizer``, so a test may install a template or add special tokens without
affecting any other test.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
STORIES_DIR = REPO_ROOT / "src" / "tunelab" / "assets" / "stories260K"

TOKENIZER_DIRS = {
    "minimind": SHARED_DIR / "tokenizers" / "minimind",
    "llama3": SHARED_DIR / "tokenizers" / "llama3",
    "stories260K": STORIES_DIR,
}


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED_DIR.is_dir(), f"the shared material is missing: {SHARED_DIR} (see ../shared/README.md)"
    return SHARED_DIR


@pytest.fixture(scope="session")
def llamafactory_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "llamafactory"
    assert (path / "dataset_info.json").is_file()
    return path


@pytest.fixture(scope="session")
def templates_dir(shared_dir: Path) -> Path:
    return shared_dir / "templates"


@pytest.fixture(scope="session")
def alpaca_records(llamafactory_dir: Path) -> list[dict[str, Any]]:
    """The raw records of LLaMA-Factory's alpaca_en_demo.json (999 of them)."""
    return json.loads((llamafactory_dir / "alpaca_en_demo.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def _tokenizer_cache() -> dict[str, Any]:
    return {}


def _load(cache: dict[str, Any], name: str) -> Any:
    from transformers import AutoTokenizer

    if name not in cache:
        path = TOKENIZER_DIRS[name]
        assert path.is_dir(), f"tokenizer folder missing: {path}"
        cache[name] = AutoTokenizer.from_pretrained(str(path))
    return cache[name]


@pytest.fixture
def load_tokenizer(_tokenizer_cache: dict[str, Any]) -> Callable[[str], Any]:
    """Factory: ``load_tokenizer("minimind" | "llama3" | "stories260K")`` gives a fresh, mutable copy."""

    def factory(name: str) -> Any:
        return copy.deepcopy(_load(_tokenizer_cache, name))

    return factory


# Read-only session tokenizers, for tests that never change the template or the vocabulary.
@pytest.fixture(scope="session")
def minimind_tokenizer(_tokenizer_cache: dict[str, Any]) -> Any:
    return _load(_tokenizer_cache, "minimind")


@pytest.fixture(scope="session")
def llama3_tokenizer(_tokenizer_cache: dict[str, Any]) -> Any:
    return _load(_tokenizer_cache, "llama3")


@pytest.fixture(scope="session")
def stories_tokenizer(_tokenizer_cache: dict[str, Any]) -> Any:
    return _load(_tokenizer_cache, "stories260K")
