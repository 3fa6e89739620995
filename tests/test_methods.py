"""Every fine-tuning method trains (loss falls), saves in the standard format, and reloads to the same outputs;
prompt-learning methods generate the same with and without the KV cache; QLoRA trains with periodic evaluation
on this CPU; wrong combinations are refused before any model loads.

The embedded model has no bias terms, so BitFit runs on a small Qwen2 (its attention has biases) built from a
config with the real minimind tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.method_registry import METHODS
from tunelab.runs import read_metrics
from tunelab.stage_registry import all_stages

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "examples" / "data"
FIXTURES = REPO / "tests" / "fixtures"
PROMPT = "Human: Write a story about Tim and a frog.\nAssistant:"

pytestmark = pytest.mark.slow

# Each method with its own settings and a learning rate that suits it (prompt learning takes larger steps).
MATRIX = {
    "lora": [],
    "lora-dora": ["use_dora=true"],
    "lora-rslora": ["use_rslora=true", "learning_rate=1e-3"],
    "lora-pissa": ["pissa_init=true", "pissa_iter=-1", "learning_rate=1e-3"],
    "lora-plus": ["loraplus_lr_ratio=4", "learning_rate=1e-3"],
    "lora-regex": [r"lora_target=.*\.(q_proj|v_proj)"],
    "adalora": ["adalora_init_r=8", "adalora_target_r=4", "adalora_tinit=2", "adalora_tfinal=2"],
    "ia3": ["learning_rate=2e-2"],
    "prefix": ["pre_seq_len=8", "prefix_projection=true"],
    "ptuning": ["num_virtual_tokens=8", "learning_rate=1e-2"],
    "prompt": ["num_virtual_tokens=8", "prompt_tuning_init_text=Once upon a time", "learning_rate=3e-2"],
    "freeze": ["freeze_trainable_layers=2"],
    "full": ["learning_rate=1e-3"],
}


def _cfg(out: Path, method: str, *overrides: str, model: str = "stories260K", dataset: str = "demo_stories"):
    base = [f"output_dir={out}", f"model_name_or_path={model}", f"dataset_dir={DEMO_DATA}", f"dataset={dataset}",
            "template=default", f"finetuning_type={method.split('-')[0]}", "per_device_train_batch_size=8",
            "learning_rate=5e-3", "max_steps=12", "logging_steps=1", "save_steps=1000", "plot_loss=false",
            "report_to=none", "lr_scheduler_type=constant", "cutoff_len=128"]
    return load_config(None, [*base, *overrides])


def _train(cfg, callbacks=None):
    return all_stages()[cfg.stage].run()(cfg, callbacks=callbacks)


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out) if "loss" in r]


def _reload(out: Path, method_name: str, tokenizer):
    """What users load: the PEFT adapter on the base through plain peft, or the saved model itself."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.models.loading import load_model

    if METHODS[method_name].is_peft:
        return PeftModel.from_pretrained(load_model("stories260K", tokenizer), str(out)).eval()
    return AutoModelForCausalLM.from_pretrained(str(out)).eval()


def _greedy(model, tokenizer) -> list[int]:
    """tunelab's generation (chat, predict and PPO use it), with the KV cache."""
    from tunelab.models.generation import generate

    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        output = generate(model, **ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return output[0, ids["input_ids"].shape[1]:].tolist()


def _greedy_by_forward_passes(model, tokenizer, steps: int = 12) -> list[int]:
    """The same greedy decode without any cache: one full forward pass per new token."""
    sequence = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    start = sequence.shape[1]
    with torch.no_grad():
        for _ in range(steps):
            following = model(input_ids=sequence).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, following], dim=1)
    return sequence[0, start:].tolist()


@pytest.mark.parametrize("variant", list(MATRIX))
def test_every_method_trains_saves_and_reloads_to_the_same_outputs(tmp_path, variant):
    from tunelab.models.loading import load_tokenizer

    name = variant.split("-")[0]
    out = tmp_path / variant
    result = _train(_cfg(out, variant, *MATRIX[variant]))
    losses = _losses(out)
    # virtual tokens alone move a model less than weights do: they must still lower the loss clearly
    ratio = 0.92 if METHODS[name].is_prompt_learning else 0.8
    assert sum(losses[-3:]) < ratio * sum(losses[:3]), losses
    if name == "adalora":  # the budget callback ran: ranks were re-allocated after tinit
        assert next(iter(result.model.peft_config.values())).rank_pattern
    saved = "adapter_model.safetensors" if METHODS[name].is_peft else "model.safetensors"
    assert (out / saved).is_file()
    if METHODS[name].is_peft:
        peft_type = json.loads((out / "adapter_config.json").read_text())["peft_type"]
        assert peft_type == METHODS[name].peft_type
    tokenizer = load_tokenizer(str(out))
    trained = result.model.eval()
    reloaded = _reload(out, name, tokenizer)
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        # PiSSA's adapter is saved converted to plain LoRA (rank 2r) on the unchanged base: equal up to float error
        assert torch.allclose(reloaded(**ids).logits, trained(**ids).logits, atol=1e-4)
    assert _greedy(reloaded, tokenizer) == _greedy(trained, tokenizer)
    if METHODS[name].is_prompt_learning:  # virtual tokens and the KV cache: the same text as without a cache
        assert _greedy(reloaded, tokenizer) == _greedy_by_forward_passes(reloaded, tokenizer)


def test_pissa_is_saved_as_plain_lora_of_twice_the_rank(tmp_path):
    out = tmp_path / "pissa"
    _train(_cfg(out, "lora", "pissa_init=true", "max_steps=2", "lora_rank=4"))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True


def test_bitfit_trains_only_the_biases_of_a_model_that_has_them(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model("qwen2")
    out = tmp_path / "bitfit"
    result = _train(_cfg(out, "bitfit", "learning_rate=5e-2", "max_steps=15", "template=null",
                         model=str(model_dir)))
    trained = {name for name, param in result.model.named_parameters() if param.requires_grad}
    assert trained and all(name.endswith(".bias") for name in trained)
    losses = _losses(out)
    assert sum(losses[-3:]) < sum(losses[:3])
    before = AutoModelForCausalLM.from_pretrained(model_dir)
    after = AutoModelForCausalLM.from_pretrained(out)
    changed = {name for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters(), strict=True)
               if not torch.equal(a, b)}
    assert changed and changed <= trained


def test_qlora_trains_with_periodic_evaluation_on_this_cpu(tmp_path):
    """bitsandbytes repacks 4-bit weights for its CPU kernel on the first eval-mode forward, which broke the next
    training step; tunelab turns that repacking off, so evaluation and training alternate."""
    out = tmp_path / "qlora"
    result = _train(_cfg(out, "lora", "quantization_bit=4", "max_steps=9", "eval_strategy=steps", "eval_steps=3",
                         "val_size=16", "per_device_eval_batch_size=8"))
    assert result.global_step == 9
    records = read_metrics(out)
    assert len([r for r in records if "eval_loss" in r]) == 3
    losses = _losses(out)
    assert sum(losses[-3:]) < sum(losses[:3])
    layer = result.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear4bit"
    # the adapter loads on the unquantized base, as users serve it
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "stories260K"


def test_prompt_learning_adapter_works_in_chat_predict_and_resume(tmp_path, stop_after):
    from tunelab.inference.predictor import Predictor

    out = tmp_path / "prefix"
    cfg = _cfg(out, "prefix", "pre_seq_len=8", "learning_rate=1e-2", "save_steps=4", "max_steps=8")
    first = _train(cfg, callbacks=[stop_after(6)])
    assert first.global_step == 6
    resumed = _train(cfg.model_copy(update={"resume_from_checkpoint": "last", "overwrite_output_dir": False}))
    assert resumed.global_step == 8
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps == list(range(1, 9))
    predictor = Predictor(adapter=str(out), max_new_tokens=12)
    direct = predictor.tokenizer.decode(_greedy(resumed.model.eval(), predictor.tokenizer), skip_special_tokens=True)
    assert predictor("Write a story about Tim and a frog.") == direct.strip() or \
        predictor("Write a story about Tim and a frog.") == direct


def test_dpo_trains_with_a_prompt_learning_method(tmp_path):
    """The preference stages use the same method layer: a new prompt-tuning adapter goes to TRL, whose reference
    is the base with the adapter disabled (unlike a new LoRA, random virtual tokens already change the policy, so
    the first loss is not log 2)."""
    out = tmp_path / "dpo-prompt"
    cfg = load_config(None, ["stage=dpo", f"output_dir={out}", f"dataset_dir={DEMO_DATA}", "dataset=demo_preferences",
                             "finetuning_type=prompt", "num_virtual_tokens=8", "learning_rate=3e-2", "max_steps=10",
                             "logging_steps=1", "per_device_train_batch_size=8", "plot_loss=false", "report_to=none",
                             "save_steps=1000"])
    _train(cfg)
    losses = _losses(out)
    assert sum(losses[-3:]) < sum(losses[:3])
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"


# --- wrong combinations, before any model loads ------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["finetuning_type=prefix", "packing=true"], "packing with finetuning_type prefix"),
    (["finetuning_type=full", "quantization_bit=4"], "quantized base weights cannot train"),
    (["finetuning_type=lora", "pissa_init=true", "quantization_bit=4"], "pissa_init with quantization_bit"),
    (["finetuning_type=prompt", "use_dora=true"], "`use_dora` applies to finetuning_type lora; this run is `prompt`"),
    (["finetuning_type=ia3", "adalora_init_r=4"], "`adalora_init_r` applies to finetuning_type adalora"),
    (["finetuning_type=lora", "pre_seq_len=8"], "`pre_seq_len` applies to finetuning_type prefix, ptuning, prompt"),
    (["finetuning_type=p-tuning"], "unknown finetuning_type 'p-tuning'; did you mean 'ptuning'?"),
    (["finetuning_type=prefix", "pre_seq_len=8", "num_virtual_tokens=4"], "the same setting"),
    (["finetuning_type=prefix", "prefix_projection=true", "resume_from_checkpoint=last"], "cannot continue training"),
])
def test_contradictions_are_config_errors(tmp_path, overrides, message):
    import re

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [f"output_dir={tmp_path}", "dataset=demo_stories", *overrides])


def test_an_adapter_of_another_method_is_refused_before_the_model_loads(tmp_path):
    lora = tmp_path / "lora"
    _train(_cfg(lora, "lora", "max_steps=1"))
    with pytest.raises(ConfigError, match="is a lora adapter but finetuning_type is prefix"):
        _train(_cfg(tmp_path / "prefix", "prefix", f"adapter_name_or_path={lora}"))
    assert not (tmp_path / "prefix").exists()


def test_aliases_name_the_same_method():
    assert load_config(None, ["finetuning_type=ptuning_v2"]).finetuning_type == "prefix"
    assert load_config(None, ["finetuning_type=prefix", "pre_seq_len=32"]).virtual_tokens == 32
