"""The GPU paths, where CUDA is present (skipped elsewhere; ``benchmarks/gpu_check.sh`` runs them on a lent GPU):
the labelled-positions loss with the lean layers, and per-sample attention in padding-free rows, in fp32 and under
bf16 autocast; bf16 LoRA training end to end. ``TUNELAB_TEST_DEVICE=cpu`` runs them on the CPU, to check the tests
themselves on a machine without a GPU."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from test_token_loss import _alpaca_samples, _close, _flat, _grads, _model, _ours, _padded, _plain_loss

DEVICE = os.environ.get("TUNELAB_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _on_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.to(DEVICE) for key, value in batch.items()}


def _similar(got: torch.Tensor, want: torch.Tensor) -> bool:
    """bf16 moves every element a little: the gradient's direction must stay (cosine similarity 0.99)."""
    return bool(torch.nn.functional.cosine_similarity(got.flatten().float(), want.flatten().float(), dim=0) > 0.99)


def _loss_and_gradients(lean: bool, method: str, bf16: bool, samples: list[dict]) -> tuple[float, dict]:
    """The stock model's own loss on a padded batch, or tunelab's lean layers and labelled loss on the padding-free
    row, as training runs them."""
    from tunelab.training.lean_mlp import use_lean_mlps
    from tunelab.training.lean_norms import use_lean_norm_weights, use_lean_norms
    from tunelab.training.packed_attention import use_per_sample_attention
    from tunelab.training.token_loss import causal_lm

    model = _model("qwen2")
    if lean:
        use_lean_mlps(model)
        use_lean_norms(model)
        use_lean_norm_weights(model)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    if lean:
        assert use_per_sample_attention(causal_lm(model))
    model.to(DEVICE).train()
    batch = _on_device(_flat(samples) if lean else _padded(samples))
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
        loss = (_ours if lean else _plain_loss)(model, batch)
    loss.backward()
    return loss.item(), _grads(model)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_lean_training_step_on_the_gpu_equals_the_models_own(method: str, bf16: bool) -> None:
    samples = _alpaca_samples()
    stock_loss, stock = _loss_and_gradients(False, method, bf16, samples)
    lean_loss, lean = _loss_and_gradients(True, method, bf16, samples)
    assert lean.keys() == stock.keys() and stock
    assert next(iter(lean.values())).device.type == DEVICE.split(":")[0]
    if bf16:
        assert abs(lean_loss - stock_loss) <= 1e-2 * abs(stock_loss)
        assert all(_similar(lean[name], stock[name]) for name in stock)
    else:
        assert abs(lean_loss - stock_loss) <= 1e-5 * abs(stock_loss)
        assert all(_close(lean[name], stock[name], 1e-4) for name in stock)


_ATTENTION = ["sdpa", "eager", "sdpa_per_sample"] + (
    ["flash_attention_2"] if DEVICE != "cpu" and importlib.util.find_spec("flash_attn") else [])


@pytest.mark.parametrize("attention", _ATTENTION)
def test_a_padding_free_row_keeps_its_samples_apart_on_the_gpu(attention: str) -> None:
    """Each sample's loss in a packed row equals the sample's alone; flash attention runs in bf16 (it has no fp32)."""
    from tunelab.training.packed_attention import use_per_sample_attention
    from tunelab.training.token_loss import labelled_token_loss

    model = _model(attention="sdpa" if attention == "sdpa_per_sample" else attention)
    if attention == "sdpa_per_sample":
        assert use_per_sample_attention(model)
    half = attention.startswith("flash")
    model.to(DEVICE, dtype=torch.bfloat16 if half else torch.float32)
    samples = _alpaca_samples(3)
    alone = sum(labelled_token_loss(model, _on_device(_padded([sample]))).loss_sum.item() for sample in samples)
    packed = _on_device(_flat(samples))
    together = labelled_token_loss(model, packed).loss_sum.item()
    crossed = labelled_token_loss(model, {"input_ids": packed["input_ids"], "labels": packed["labels"]}).loss_sum
    tolerance = 1e-2 if half else 1e-5
    assert abs(together - alone) <= tolerance * alone
    assert abs(crossed.item() - alone) > 10 * tolerance * alone  # the check can fail: one sequence crosses samples


def test_bf16_lora_sft_on_the_gpu_learns_and_its_adapter_reloads(tmp_path) -> None:
    from peft import PeftModel
    from test_training import _config, _losses, _prompt_ids
    from transformers import AutoModelForCausalLM

    from tunelab.models.loading import load_tokenizer, resolve_model_path
    from tunelab.stages.sft import run_sft

    result = run_sft(_config(tmp_path, "max_steps=16", "bf16=true"))
    assert next(result.model.parameters()).device.type == DEVICE.split(":")[0]
    losses = _losses(result.output_dir)
    assert len(losses) == 16 and sum(losses[-4:]) < 0.6 * sum(losses[:4])
    ids = _prompt_ids(load_tokenizer(str(result.output_dir))).to(DEVICE)
    # adapters train on bf16 base weights (models/loading.py: training_dtype); users load the base the same way
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("stories260K"), dtype=torch.bfloat16).to(DEVICE)
    reloaded = PeftModel.from_pretrained(base, str(result.output_dir)).eval()
    # the trained model's forward runs under the Trainer's bf16 autocast (accelerate wraps it); so does the reload
    with torch.no_grad(), torch.autocast(DEVICE.split(":")[0], dtype=torch.bfloat16):
        torch.testing.assert_close(reloaded(ids).logits.float(), result.model.eval()(ids).logits.float())
