"""The tokenized-data cache: a second run on the same data, tokenizer, template and keys starts from the encoded
samples of the first; a change of any of them (a test for each) encodes again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.data import pipeline
from tunelab.training.lifecycle import prepare_data

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A copy of the demo data (so files can change), its own cache, and a count of real encodings."""
    data = tmp_path / "data"
    shutil.copytree(DATA, data, ignore=shutil.ignore_patterns("*.md"))
    info = json.loads((data / "dataset_info.json").read_text())
    for entry in info.values():  # the copy's relative paths into tests/fixtures point back into the repository
        if entry.get("file_name", "").startswith("../"):
            entry["file_name"] = str((DATA / entry["file_name"]).resolve())
    (data / "dataset_info.json").write_text(json.dumps(info))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    calls = []
    real = pipeline.encode_datasets

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "encode_datasets", counting)
    return {"data": data, "out": tmp_path / "out", "calls": calls}


def _prepare(workspace, *overrides: str):
    cfg = load_config(None, [f"dataset_dir={workspace['data']}", "dataset=demo_stories", "cutoff_len=96",
                             f"output_dir={workspace['out']}", *overrides])
    return prepare_data(cfg)


def test_the_second_run_reads_the_cache_and_gets_the_same_samples(workspace):
    _, train, _, report = _prepare(workspace, "val_size=4")
    assert len(workspace["calls"]) == 1 and report.cached is None
    _, again, evaluation, cached = _prepare(workspace, "val_size=4")
    assert len(workspace["calls"]) == 1, "encoded again instead of reading the cache"
    assert cached.cached and "from the cache" in cached.lines()[-1]
    assert again["input_ids"] == train["input_ids"] and again["labels"] == train["labels"]
    assert cached.as_dict() == report.as_dict() and cached.eval_rows == report.eval_rows
    assert len(evaluation) == 4
    _prepare(workspace, "val_size=4", "overwrite_cache=true")  # rebuilds
    assert len(workspace["calls"]) == 2


# Each change must encode again: a data key, the row kind, the seed, the template, the tokenizer, the data.
CHANGES = {
    "cutoff_len": ["cutoff_len=64"],
    "max_samples": ["max_samples=10"],
    "val_size": ["val_size=3"],
    "train_on_prompt": ["train_on_prompt=true"],
    "mask_history": ["mask_history=true"],
    "cutoff_policy": ["cutoff_policy=drop"],
    "skip_invalid": ["skip_invalid=true"],
    "dedup": ["dedup=true"],
    "mix_strategy": ["dataset=demo_stories,demo_stories_heldout", "mix_strategy=interleave_under"],
    "interleave_probs": ["dataset=demo_stories,demo_stories_heldout", "mix_strategy=interleave_under",
                         "interleave_probs=0.3,0.7"],
    "dataset": ["dataset=demo_stories_heldout"],
    "eval_dataset": ["eval_dataset=demo_stories_heldout"],
    "seed": ["seed=7", "val_size=4"],
    "template": ["template=chatml"],
    "stage": ["stage=pt", "dataset=demo_stories_text"],
}


@pytest.mark.parametrize("key", list(CHANGES))
def test_a_changed_key_encodes_again(workspace, key):
    base = ["val_size=4"] if key == "seed" else []
    if key == "interleave_probs":
        base = CHANGES["mix_strategy"]
    _prepare(workspace, *base)
    _prepare(workspace, *base)
    assert len(workspace["calls"]) == 1
    _prepare(workspace, *CHANGES[key])
    assert len(workspace["calls"]) == 2, f"a change of {key} read the old cache entry"


def test_a_changed_data_file_or_mapping_encodes_again(workspace):
    _prepare(workspace)
    stories = workspace["data"] / "demo_stories.json"
    records = json.loads(stories.read_text())
    stories.write_text(json.dumps(records[:-1]))
    _prepare(workspace)
    assert len(workspace["calls"]) == 2
    info_path = workspace["data"] / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["demo_stories"]["columns"] = {**info["demo_stories"].get("columns", {}), "system": "system"}
    info_path.write_text(json.dumps(info))
    _prepare(workspace)
    assert len(workspace["calls"]) == 3


def test_a_changed_tokenizer_encodes_again(workspace, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(REPO / "src" / "tunelab" / "assets" / "stories260K", model)
    _prepare(workspace, f"model_name_or_path={model}", "template=default")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["model_max_length"] = 12345
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    _prepare(workspace, f"model_name_or_path={model}", "template=default")
    assert len(workspace["calls"]) == 2


def test_a_system_prompt_of_rl_prompts_is_part_of_the_key(workspace):
    rl = ["stage=grpo", "dataset=demo_rl_prompts", "reward_funcs=[length]", "num_generations=2",
          "per_device_train_batch_size=2"]
    _prepare(workspace, *rl)
    _prepare(workspace, *rl, "system_prompt=Answer briefly.")
    assert len(workspace["calls"]) == 2


def test_a_damaged_entry_or_a_failed_write_never_stops_the_run(workspace, monkeypatch):
    from tunelab.data import cache

    _prepare(workspace)
    for entry in cache.cache_root().iterdir():
        (entry / "report.json").write_text("{not json")
    _, train, _, report = _prepare(workspace)  # read fails: encoded again, and the entry rewritten
    assert len(workspace["calls"]) == 2 and report.cached is None and len(train)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "save_cached", full_disk)
    _, train, _, _ = _prepare(workspace, "cutoff_len=80")
    assert len(train) and len(workspace["calls"]) == 3
