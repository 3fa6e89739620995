"""Shared fixtures: the real data, templates and tokenizers in ``tests/fixtures`` and the embedded model.

``tests/fixtures`` holds real public material (subsets of the team's ``../shared``, each folder with its
licence and source; see its README), so the suite runs in a plain clone.

Tokenizers are loaded once per session (the Llama-3 one takes about a second) and handed out as deep
copies by ``load_tokenizer``, so a test may install a template or add special tokens without
affecting any other test.
"""

from __future__ import annotations

import copy
import json
import lzma
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
STORIES_DIR = REPO_ROOT / "src" / "tunelab" / "assets" / "stories260K"


def _unpacked_llama3() -> Path:
    """The Llama-3 tokenizer ships xz-compressed (17 MB -> 1.7 MB); unpack it once, beside the repository's
    ignored build outputs, and reuse it while the archive is unchanged."""
    packed = FIXTURES_DIR / "tokenizers" / "llama3"
    target = REPO_ROOT / ".pytest_cache" / "llama3_tokenizer"
    archive = packed / "tokenizer.json.xz"
    stamp = target / ".source_size"
    if not (stamp.is_file() and stamp.read_text() == str(archive.stat().st_size)):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(packed, target, ignore=shutil.ignore_patterns("*.xz"))
        (target / "tokenizer.json").write_bytes(lzma.decompress(archive.read_bytes()))
        stamp.write_text(str(archive.stat().st_size))
    return target


TOKENIZER_DIRS = {
    "minimind": lambda: FIXTURES_DIR / "tokenizers" / "minimind",
    "llama3": _unpacked_llama3,
    "stories260K": lambda: STORIES_DIR,
}


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The real public material the tests use (named after ``../shared``, of which it is a subset)."""
    assert FIXTURES_DIR.is_dir(), f"the test fixtures are missing: {FIXTURES_DIR}"
    return FIXTURES_DIR


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
        path = TOKENIZER_DIRS[name]()
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


@pytest.fixture
def stop_after() -> Callable[[int], Any]:
    """Factory of a trainer callback that simulates an interrupted run: training stops right after a step."""
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def __init__(self, step: int):
            self.step = step

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step == self.step:
                control.should_training_stop = True
            return control

    return StopAfter


@pytest.fixture
def tiny_model(tmp_path: Path) -> Callable[[str], Path]:
    """Factory: ``tiny_model("llama" | "qwen2")`` saves a small random model with the real minimind tokenizer
    (Qwen2's attention has bias terms) and returns its folder."""

    def factory(arch: str = "llama") -> Path:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

        tokenizer = AutoTokenizer.from_pretrained(FIXTURES_DIR / "tokenizers" / "minimind")
        torch.manual_seed(0)
        config = (Qwen2Config if arch == "qwen2" else LlamaConfig)(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
        folder = tmp_path / f"tiny-{arch}"
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    return factory


@pytest.fixture(scope="session")
def demo_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's LoRA run (examples/demo_lora_sft.yaml), also evaluated on the held-out demo prompts at the end of
    each epoch in one batch (its eval_loss is what perplexity must reproduce)."""
    from tunelab.config import load_config
    from tunelab.stages.sft import run_sft

    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = load_config(REPO_ROOT / "examples" / "demo_lora_sft.yaml", [
        f"output_dir={out}", f"dataset_dir={REPO_ROOT / 'examples' / 'data'}", "eval_dataset=demo_stories_heldout",
        "eval_strategy=epoch", "per_device_eval_batch_size=32", "plot_loss=false"])
    assert not run_sft(cfg).interrupted
    return out


@pytest.fixture(scope="session")
def rm_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward model (examples/stories_rm.yaml, a few steps): its card, hints and refusals are tested."""
    from tunelab.config import load_config
    from tunelab.stage_registry import all_stages

    out = tmp_path_factory.mktemp("rm") / "stories_rm"
    cfg = load_config(REPO_ROOT / "examples" / "stories_rm.yaml", [
        f"output_dir={out}", f"dataset_dir={REPO_ROOT / 'examples' / 'data'}", "max_steps=4", "plot_loss=false"])
    assert not all_stages()["rm"].run()(cfg, command="tunelab train examples/stories_rm.yaml").interrupted
    return out


@pytest.fixture(autouse=True, scope="session")
def _library_log(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The libraries' warnings (tunelab/quiet.py) go to a log in the test's own folder, not the user's cache."""
    os.environ.setdefault("TUNELAB_LOG_FILE", str(tmp_path_factory.mktemp("log") / "library.log"))
    os.environ["TUNELAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # tokenized data: never the user's cache
