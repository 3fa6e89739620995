"""End-to-end training: loss falls, what is saved reloads to the same outputs, resume continues the curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.config import load_config
from tunelab.errors import DataError
from tunelab.models.loading import load_tokenizer, resolve_model_path
from tunelab.runs import read_metrics
from tunelab.stages.sft import run_sft

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / "tests" / "fixtures"
DEMO_DATA = REPO / "examples" / "data"

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, *overrides: str, name: str = "run"):
    base = [f"output_dir={tmp_path / name}", f"dataset_dir={DEMO_DATA}", "max_samples=64", "logging_steps=1",
            "save_steps=1000", "report_to=none", "plot_loss=true", "num_train_epochs=1"]
    return load_config(REPO / "examples" / "demo_lora_sft.yaml", [*base, *overrides])


def _losses(output_dir: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(output_dir) if "loss" in record]


def _prompt_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Write a story about Tim and a frog."}],
                                         tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def test_lora_sft_learns_and_adapter_reloads_identically(tmp_path):
    cfg = _config(tmp_path, "max_steps=16")
    result = run_sft(cfg)
    losses = _losses(result.output_dir)
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4

    out = result.output_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "config.yaml",
                 "metrics.jsonl", "loss.png", "data_report.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"

    from peft import PeftModel

    tokenizer = load_tokenizer(str(out))  # the saved tokenizer carries the chat template
    ids = _prompt_ids(tokenizer)
    trained = result.model.eval()
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("stories260K"))
    reloaded = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        expected = trained.generate(ids, max_new_tokens=30, do_sample=False)
        actual = reloaded.generate(ids, max_new_tokens=30, do_sample=False)
        torch.testing.assert_close(reloaded(ids).logits, trained(ids).logits)
    assert torch.equal(expected, actual)
    plain = AutoModelForCausalLM.from_pretrained(resolve_model_path("stories260K"))
    assert not torch.equal(plain.generate(ids, max_new_tokens=30, do_sample=False), actual)


def test_resume_continues_the_same_loss_curve(tmp_path, stop_after):
    settings = ("max_steps=8", "save_steps=4", "per_device_train_batch_size=4")
    run_sft(_config(tmp_path, *settings, name="uninterrupted"))
    reference = _losses(tmp_path / "uninterrupted")

    interrupted = run_sft(_config(tmp_path, *settings, name="resumed"), callbacks=[stop_after(5)])
    assert interrupted.global_step == 5 and (tmp_path / "resumed" / "checkpoint-4").is_dir()
    run_sft(_config(tmp_path, *settings, "resume_from_checkpoint=last", name="resumed"))
    resumed = read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed if "loss" in r] == list(range(1, 9))
    assert _losses(tmp_path / "resumed") == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("grouped", [True, False])
def test_group_by_length_batches_samples_of_similar_length(tmp_path, grouped):
    """``group_by_length``: transformers' length-grouped sampler takes a random quarter of the 64 rows, sorts it
    longest first and cuts it into batches, so the first 4 steps train on fewer tokens each (batches of 4); without
    it the order is random (with this seed, not sorted)."""
    settings = ("max_steps=4", "per_device_train_batch_size=4", f"group_by_length={str(grouped).lower()}")
    result = run_sft(_config(tmp_path, *settings))
    seen = [record["tokens_seen"] for record in read_metrics(result.output_dir) if "loss" in record]
    per_step = [after - before for before, after in zip([0, *seen], seen, strict=False)]
    assert len(per_step) == 4 and (per_step == sorted(per_step, reverse=True)) == grouped, per_step


def test_full_and_freeze_tuning_train_the_right_parameters(tmp_path):
    original = AutoModelForCausalLM.from_pretrained(resolve_model_path("stories260K")).state_dict()
    full = run_sft(_config(tmp_path, "finetuning_type=full", "learning_rate=1e-3", "max_steps=10",
                           "additional_target=null", name="full"))
    assert (full.output_dir / "model.safetensors").is_file()
    losses = _losses(full.output_dir)
    assert losses[-1] < losses[0]

    freeze = run_sft(_config(tmp_path, "finetuning_type=freeze", "freeze_trainable_layers=2",
                             "additional_target=null", "learning_rate=1e-3", "max_steps=4", name="freeze"))
    tuned = AutoModelForCausalLM.from_pretrained(freeze.output_dir).state_dict()
    for name, tensor in original.items():
        changed = not torch.equal(tensor, tuned[name])
        assert changed == (".layers.3." in name or ".layers.4." in name), name


def test_pretraining_on_plain_text(tmp_path):
    cfg = _config(tmp_path, "stage=pt", "dataset=demo_stories_text", "template=null", "max_steps=12",
                  "additional_target=null", "learning_rate=5e-3", name="pt")
    result = run_sft(cfg)
    losses = _losses(result.output_dir)
    assert sum(losses[-3:]) < sum(losses[:3])
    report = json.loads((result.output_dir / "data_report.json").read_text())
    assert report["datasets"][0]["format"] == "text" and report["datasets"][0]["rows"] == 64


def test_llamafactory_yaml_runs_on_a_qwen2_model(tmp_path):
    """A LLaMA-Factory SFT YAML (their llama3 LoRA example) with only the model path changed."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(SHARED / "tokenizers" / "minimind")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    model_dir = tmp_path / "tiny-qwen2"
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    yaml_text = (REPO / "tests" / "data" / "llamafactory_llama3_lora_sft.yaml").read_text()
    (tmp_path / "lf.yaml").write_text(yaml_text.replace("meta-llama/Meta-Llama-3-8B-Instruct", str(model_dir)))
    cfg = load_config(tmp_path / "lf.yaml", [f"dataset_dir={SHARED / 'data' / 'llamafactory'}",
                                             f"output_dir={tmp_path / 'lf-out'}", "max_steps=3",
                                             "max_samples=8", "cutoff_len=256"])
    result = run_sft(cfg)
    assert result.global_step == 3
    assert (tmp_path / "lf-out" / "adapter_model.safetensors").is_file()


def test_bad_record_fails_before_the_model_loads(tmp_path, monkeypatch):
    records = json.loads((DEMO_DATA / "demo_stories.json").read_text())[:5]
    del records[3]["output"]
    data_file = tmp_path / "broken.json"
    data_file.write_text(json.dumps(records, indent=1))

    def fail(*args, **kwargs):
        raise AssertionError("the model must not be loaded for bad data")

    monkeypatch.setattr("tunelab.models.loading.load_model", fail)
    with pytest.raises(DataError) as error:
        run_sft(_config(tmp_path, f"dataset={data_file}"))
    message = str(error.value)
    assert "broken.json" in message and "line 17" in message and "'output'" in message
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started
