"""The preference stages (rm, dpo, orpo, simpo, kto) on the embedded model: they learn, resume on the same
curve, and what they save reloads to the same outputs; LLaMA-Factory's own YAMLs for them run.

The data is the project's own preference set (``examples/data/demo_preferences*.json``): chosen tells the
story about the requested name, rejected about another; held-out pairs use unseen name/animal pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunelab.config import load_config
from tunelab.errors import ConfigError, DataError
from tunelab.runs import read_metrics
from tunelab.stage_registry import all_stages, stage_names

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "examples" / "data"
FIXTURES = REPO / "tests" / "fixtures"

pytestmark = pytest.mark.slow


def _cfg(stage: str, out: Path, *overrides: str):
    base = [f"stage={stage}", f"output_dir={out}", f"dataset_dir={DEMO_DATA}", "dataset=demo_preferences",
            "logging_steps=1", "save_steps=1000", "plot_loss=false", "per_device_train_batch_size=8",
            "learning_rate=5e-3", "report_to=none"]
    return load_config(None, [*base, *overrides])


def _train(cfg, callbacks=None):
    return all_stages()[cfg.stage].run()(cfg, callbacks=callbacks)


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out) if "loss" in r]


@pytest.fixture(scope="module")
def held_out():
    """The held-out pairs, encoded as training encodes them, and their tokenizer."""
    from tunelab.training.lifecycle import prepare_data

    tokenizer, pairs, _, _ = prepare_data(_cfg("dpo", Path("unused"), "dataset=demo_preferences_heldout"))
    return tokenizer, list(pairs)


def _answer_logps(model, tokenizer, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each chosen and rejected answer (its trained tokens) under ``model``."""
    from tunelab.training.collate import PairCollator

    batch = PairCollator(tokenizer.pad_token_id)(pairs)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    chosen, rejected = (token_logps * batch["completion_mask"][:, 1:]).sum(1).chunk(2)
    return chosen, rejected


# --- the registry and its keys ----------------------------------------------------------------------

def test_every_stage_is_registered_with_its_row_kind():
    kinds = {name: stage.kind for name, stage in all_stages().items()}
    assert kinds == {"sft": "sft", "pt": "pt", "rm": "preference", "dpo": "preference", "orpo": "preference",
                     "simpo": "preference", "kto": "kto", "ppo": "rl", "grpo": "rl", "rloo": "rl"}
    assert stage_names()[:2] == ["sft", "pt"]


@pytest.mark.parametrize("how", ["run", "dry run"])
def test_stage_keys_are_checked_before_anything_loads(tmp_path, how):
    """The run and `train --dry-run` refuse the same mistakes (the dry run runs every check of the run)."""
    from tunelab.training.dry_run import dry_run

    start = _train if how == "run" else dry_run
    with pytest.raises(ConfigError, match=r"`kto_chosen_weight` applies to stage kto; this run is `dpo`"):
        _cfg("dpo", tmp_path, "kto_chosen_weight=2")
    with pytest.raises(ConfigError, match="stage orpo trains with pref_loss orpo"):
        start(_cfg("orpo", tmp_path / "o", "pref_loss=sigmoid"))
    with pytest.raises(ConfigError, match="ref_model: model folder .* does not exist"):
        start(_cfg("dpo", tmp_path / "d", f"ref_model={tmp_path / 'missing'}"))
    with pytest.raises(ConfigError, match="ref_model: model folder .* does not exist"):
        start(_cfg("kto", tmp_path / "k", "dataset=demo_kto", f"ref_model={tmp_path / 'missing'}"))
    with pytest.raises(DataError, match="use stage: sft"):  # SFT data for a preference stage
        start(_cfg("dpo", tmp_path / "d", "dataset=demo_stories"))
    assert not any(tmp_path.iterdir())  # nothing written by a start that failed its checks


def test_kto_pairs_each_prompt_with_another_rows_answer_across_the_dataset():
    """The KL term's mismatched answers come from the row before, across chunks, so batch size 1 works."""
    from datasets import Dataset

    from tunelab.stages.kto import KL_CHUNK, with_kl_completions

    rows = KL_CHUNK * 2 + 5
    dataset = Dataset.from_dict({"prompt_ids": [[i] for i in range(rows)],
                                 "completion_ids": [[i, i] for i in range(rows)],
                                 "completion_mask": [[1, i % 2] for i in range(rows)]})
    paired = with_kl_completions(dataset)
    assert paired["KL_completion_ids"] == [[(i - 1) % rows] * 2 for i in range(rows)]
    assert paired["KL_completion_mask"] == [[1, (i - 1) % rows % 2] for i in range(rows)]


# --- learning -------------------------------------------------------------------------------------

def test_dpo_learns_to_prefer_the_requested_story(tmp_path, held_out):
    from tunelab.models.loading import load_model

    tokenizer, pairs = held_out
    reference = load_model("stories260K", tokenizer).eval()
    ref_chosen, ref_rejected = _answer_logps(reference, tokenizer, pairs)
    result = _train(_cfg("dpo", tmp_path / "dpo", "max_steps=30", "eval_dataset=demo_preferences_heldout",
                         "eval_strategy=steps", "eval_steps=15", "per_device_eval_batch_size=8"))
    chosen, rejected = _answer_logps(result.model.eval(), tokenizer, pairs)
    # The implicit reward beta * log(pi / pi_ref): tied (chance) before training, chosen above rejected after.
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    assert (margin > 0).float().mean() >= 0.9
    assert (chosen > rejected).float().mean() > (ref_chosen > ref_rejected).float().mean()
    records = read_metrics(tmp_path / "dpo")
    evaluations = [r for r in records if "eval_rewards/accuracies" in r]
    assert len(evaluations) == 2 and evaluations[-1]["eval_rewards/accuracies"] >= 0.9
    last_train = [r for r in records if "loss" in r][-1]  # every number TRL logs reaches metrics.jsonl
    assert all(key in last_train for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"))
    losses = _losses(tmp_path / "dpo")
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def test_reward_model_learns_and_reloads_as_sequence_classifier(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tunelab.data.registry import load_dataset_rows
    from tunelab.inference.reward import RewardScorer
    from tunelab.models.sources import resolve_model_path

    rows = load_dataset_rows("demo_preferences_heldout", DEMO_DATA, "preference").rows

    def accuracy(scorer) -> float:
        chosen = scorer.score_batch([r["prompt"] for r in rows], [r["chosen"] for r in rows])
        rejected = scorer.score_batch([r["prompt"] for r in rows], [r["rejected"] for r in rows])
        return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows)

    torch.manual_seed(0)
    before = accuracy(RewardScorer("stories260K", device="cpu"))  # an untrained score head
    out = tmp_path / "rm"
    result = _train(_cfg("rm", out, "max_steps=40", "logging_steps=5"))
    from tunelab.training.token_loss import causal_lm

    assert "forward" in vars(causal_lm(result.model))  # trained padding-free (training/padding_free.py)
    scorer = RewardScorer(adapter=str(out), device="cpu")
    after = accuracy(scorer)
    assert before <= 0.65 and after >= 0.7

    # The adapter (score head included) loads into plain transformers + peft to the same scores.
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model_path("stories260K"), num_labels=1)
    base.config.pad_token_id = scorer.tokenizer.pad_token_id
    plain = PeftModel.from_pretrained(base, str(out)).eval()
    ids = torch.tensor([scorer.sequence(rows[0]["prompt"], rows[0]["chosen"])])
    with torch.no_grad():
        expected = result.model.eval()(input_ids=ids).logits
        torch.testing.assert_close(plain(input_ids=ids).logits, expected)
    assert scorer(rows[0]["prompt"], rows[0]["chosen"]) == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize(("stage", "extra"), [("orpo", []), ("simpo", []), ("kto", ["dataset=demo_kto"])])
def test_reference_free_and_kto_stages_train_with_falling_loss(tmp_path, stage, extra):
    _train(_cfg(stage, tmp_path / stage, "max_steps=24", *extra))
    losses = _losses(tmp_path / stage)
    assert len(losses) == 24 and sum(losses[-4:]) < sum(losses[:4])


# --- resume and reload ------------------------------------------------------------------------------

STAGE_DATA = {"rm": [], "dpo": [], "orpo": [], "simpo": [], "kto": ["dataset=demo_kto"]}


@pytest.mark.parametrize("stage", list(STAGE_DATA))
def test_every_preference_stage_resumes_on_the_same_curve_and_reloads(tmp_path, stage, stop_after):
    settings = ["max_steps=6", "save_steps=3", "max_samples=48", *STAGE_DATA[stage]]
    whole = tmp_path / "whole"
    full = _train(_cfg(stage, whole, *settings))
    part = tmp_path / "part"
    _train(_cfg(stage, part, *settings), callbacks=[stop_after(3)])
    resumed = _train(_cfg(stage, part, *settings, "resume_from_checkpoint=last"))
    assert resumed.global_step == full.global_step == 6
    assert [r["step"] for r in read_metrics(part) if "loss" in r] == list(range(1, 7))
    assert _losses(part) == pytest.approx(_losses(whole), rel=1e-4)

    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

    config = json.loads((whole / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "stories260K"
    ids = torch.tensor([[1, 34, 278, 206, 29, 13, 100]])  # any ids below the 512-token vocabulary
    loader = AutoPeftModelForSequenceClassification if stage == "rm" else AutoPeftModelForCausalLM
    from tunelab.models.sources import resolve_model_path

    config["base_model_name_or_path"] = resolve_model_path("stories260K")  # plain peft needs a real path
    (whole / "adapter_config.json").write_text(json.dumps(config))
    kwargs = {"num_labels": 1} if stage == "rm" else {}
    reloaded = loader.from_pretrained(str(whole), **kwargs).eval()
    if stage == "rm":
        reloaded.config.pad_token_id = full.model.config.pad_token_id
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, full.model.eval()(input_ids=ids).logits)


# --- LLaMA-Factory's own YAMLs ------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "sizes"), [
    ("reward", []),
    ("dpo", []),
    ("kto", ["eval_steps=2", "val_size=4"]),  # batch size 1, as the file has it
])
def test_llamafactory_preference_yamls_run_with_the_model_path_changed(tmp_path, name, sizes, tiny_model):
    model_dir = tiny_model("llama")
    text = (REPO / "tests" / "data" / f"llamafactory_llama3_lora_{name}.yaml").read_text()
    (tmp_path / "lf.yaml").write_text(text.replace("meta-llama/Meta-Llama-3-8B-Instruct", str(model_dir)))
    cfg = load_config(tmp_path / "lf.yaml", [f"dataset_dir={FIXTURES / 'data' / 'llamafactory'}",
                                             f"output_dir={tmp_path / 'out'}", "max_steps=3", "max_samples=24",
                                             "cutoff_len=512", *sizes])
    assert cfg.template == "llama3"
    from tunelab.training.dry_run import dry_run

    dry_run(cfg)  # passes, as the run does (it once passed while the run refused batch size 1)
    result = _train(cfg)
    assert result.global_step == 3 and (tmp_path / "out" / "adapter_model.safetensors").is_file()
    if name == "kto":  # trained at the file's batch size 1, with a KL estimate from mismatched rows
        assert cfg.per_device_train_batch_size == 1
        assert any("kl" in record for record in read_metrics(tmp_path / "out"))


# --- bad pairs, and reporting ------------------------------------------------------------------------

def test_bad_pairs_are_named_or_counted_before_any_model_loads(tmp_path, monkeypatch):
    good = json.loads((DEMO_DATA / "demo_preferences.json").read_text())[:16]
    bad = [{**good[0], "rejected": good[0]["chosen"]},  # chosen equals rejected
           {k: v for k, v in good[1].items() if k != "rejected"},  # a missing side
           {**good[2], "chosen": ""}]  # an empty side
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good + bad))

    def fail(*args, **kwargs):
        raise AssertionError("no model may load for bad data")

    monkeypatch.setattr("tunelab.models.loading.load_model", fail)
    with pytest.raises(DataError) as error:
        _train(_cfg("dpo", tmp_path / "run", f"dataset={path}"))
    assert "pairs.jsonl, line 17" in str(error.value) and "skip_invalid" in str(error.value)
    monkeypatch.undo()
    _train(_cfg("dpo", tmp_path / "run", f"dataset={path}", "skip_invalid=true", "max_steps=2"))
    skipped = json.loads((tmp_path / "run" / "data_report.json").read_text())["skipped"]
    assert sum(info["count"] for info in skipped.values()) == 3

    labels = tmp_path / "labels.jsonl"
    rows = json.loads((DEMO_DATA / "demo_kto.json").read_text())[:4]
    labels.write_text("".join(json.dumps({**r, "label": "maybe"} if i == 2 else r) + "\n" for i, r in enumerate(rows)))
    with pytest.raises(DataError, match=r"labels.jsonl, line 3.*field 'label'.*boolean"):
        _train(_cfg("kto", tmp_path / "kto", f"dataset={labels}"))


def test_tensorboard_events_land_in_the_run_folder(tmp_path):
    pytest.importorskip("tensorboard")
    for name in ("one", "two"):  # each run writes into its own output_dir
        _train(_cfg("dpo", tmp_path / name, "max_steps=2", "report_to=tensorboard"))
        assert list((tmp_path / name / "runs").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize(("stage", "extra"), [("dpo", []), ("rm", []), ("kto", ["dataset=demo_kto"])])
def test_dry_run_of_a_preference_stage_writes_nothing(tmp_path, stage, extra):
    from tunelab.training.dry_run import dry_run

    report = dry_run(_cfg(stage, tmp_path / "run", "num_train_epochs=1", *extra))
    assert report["steps"] == -(-report["train_samples"] // 8) and report["tokens"] > 0
    assert not (tmp_path / "run").exists()
