"""Every example config validates, and the CPU ones build their datasets (so `tunelab train` on them works)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.data.pipeline import build_datasets, load_rows
from tunelab.demo.dataset import build
from tunelab.models.loading import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_there_are_examples_for_each_finetuning_type_and_stage():
    configs = [load_config(path) for path in EXAMPLES]
    from tunelab.method_registry import method_names

    assert {c.finetuning_type for c in configs} == set(method_names())  # every fine-tuning method has one
    assert any(c.quantization_bit for c in configs)
    from tunelab.stage_registry import stage_names

    assert {c.stage for c in configs} == set(stage_names())  # every stage has a runnable example
    gpu = {c.stage for c in configs if c.model_name_or_path.startswith("Qwen/")}
    assert gpu >= set(stage_names()) - {"pt"}  # and a GPU recipe (pt: see stories_pt.yaml)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_is_valid_and_its_data_builds(path, monkeypatch):
    monkeypatch.chdir(REPO)  # paths in examples (data, user reward functions) are relative to the repository
    cfg = load_config(path)
    if cfg.model_name_or_path != "stories260K":
        # GPU recipes name hub models (no tokenizer offline): their data, shipped in the repository, must read.
        train_rows, _, _ = load_rows(cfg, cfg.row_kind, cfg.seed)
        assert train_rows
        return
    train, _, report = build_datasets(cfg, cfg.row_kind, load_tokenizer(cfg.model_name_or_path, cfg.template),
                                      cfg.seed)
    assert len(train) > 0
    if cfg.row_kind == "rl":  # prompts only: what trains is sampled later
        assert isinstance(train[0]["prompt"], list) and train[0]["prompt"][-1]["role"] == "user"
    else:
        assert report.trained_tokens > 0


def test_committed_demo_data_matches_its_generator():
    import json

    from tunelab.demo.dataset import build_rl_prompts

    train, held_out = build()
    data = REPO / "examples" / "data"
    rl_train, rl_held_out = build_rl_prompts()
    assert json.loads((data / "demo_rl_prompts.json").read_text()) == rl_train
    assert json.loads((data / "demo_rl_prompts_heldout.json").read_text()) == rl_held_out
    assert json.loads((data / "demo_stories.json").read_text()) == train
    assert json.loads((data / "demo_stories_heldout.json").read_text()) == held_out
    train_pairs = {r["instruction"] for r in train}
    assert not train_pairs & {r["instruction"] for r in held_out}
