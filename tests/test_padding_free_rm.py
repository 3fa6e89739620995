"""The reward trainer's batches run padding-free (training/padding_free.py): the same rewards and gradients as
TRL's padded batch of chosen and rejected sequences, and the padding is never computed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _score_model(arch: str, pad_token_id: int):
    from transformers import AutoModelForSequenceClassification, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    config = (Qwen2Config if arch == "qwen2" else LlamaConfig)(
        vocab_size=6400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, num_labels=1, pad_token_id=pad_token_id)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa").float()


def _pair_batch(tokenizer, pairs: int = 3) -> dict[str, torch.Tensor]:
    """Real DPO pairs through tunelab's encoder, scored as the rm stage scores them (prompt + answer, to the
    answer's end marker), batched by TRL's reward collator (chosen rows, then rejected rows, padded right)."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from tunelab.config import DataSettings
    from tunelab.data.pipeline import DataReport, tokenize_rows
    from tunelab.data.registry import load_dataset_rows

    rows = load_dataset_rows("dpo_en_demo", str(FIXTURES / "data" / "llamafactory"), "preference",
                             max_samples=pairs).rows
    samples = tokenize_rows(rows, tokenizer, DataSettings(cutoff_len=200), "preference", DataReport(), "train")
    scored = [{"chosen_ids": s["prompt_ids"] + s["chosen_ids"], "rejected_ids": s["prompt_ids"] + s["rejected_ids"]}
              for s in samples]
    return DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(scored)


def _rewards_and_gradients(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    rewards = model(**batch, use_cache=False).logits.squeeze(-1)
    chosen, rejected = rewards.chunk(2)
    (-torch.nn.functional.logsigmoid(chosen - rejected).mean()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return rewards.detach(), grads


@pytest.mark.parametrize("pad", ["pad token", "end marker"])
@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_padding_free_rewards_and_gradients_equal_the_padded_batch(minimind_tokenizer, arch, method, pad):
    """With the end marker as padding, transformers scores each row at the token before it; so does the packed
    forward."""
    from tunelab.training.padding_free import pack_reward_forward
    from tunelab.training.token_loss import causal_lm

    tokenizer = minimind_tokenizer
    pad_id = tokenizer.pad_token_id if pad == "pad token" else tokenizer.convert_tokens_to_ids("<|im_end|>")
    batch = _pair_batch(tokenizer)
    batch["input_ids"][batch["attention_mask"] == 0] = pad_id
    assert (batch["attention_mask"] == 0).any()  # the batch has padding to leave out
    results, bodies = [], []
    for packed in (False, True):
        model = _score_model(arch, pad_id)
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(0)
            model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules="all-linear",
                                                     init_lora_weights=False))
        if packed:
            pack_reward_forward(type("Trainer", (), {"model": model}))
        body = getattr(causal_lm(model), causal_lm(model).base_model_prefix)
        body.register_forward_pre_hook(
            lambda _m, args, kwargs, seen=bodies: seen.append((args[0] if args else kwargs["input_ids"]).shape),
            with_kwargs=True)
        results.append(_rewards_and_gradients(model.train(), batch))
    (stock_rewards, stock_grads), (packed_rewards, packed_grads) = results
    assert bodies == [batch["input_ids"].shape, (1, int(batch["attention_mask"].sum()))]
    torch.testing.assert_close(packed_rewards, stock_rewards, rtol=1e-5, atol=1e-6)
    assert packed_grads.keys() == stock_grads.keys() and stock_grads
    for name, grad in stock_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_single_rows_and_unpadded_calls_are_left_alone(minimind_tokenizer):
    """Scoring one sequence (tunelab score, the RL stages) or ids without a mask runs the model's own forward."""
    from tunelab.training.padding_free import pack_score_forward

    model = _score_model("qwen2", minimind_tokenizer.pad_token_id)
    batch = _pair_batch(minimind_tokenizer, pairs=2)
    with torch.no_grad():
        expected = [model(input_ids=batch["input_ids"][:1]).logits, model(input_ids=batch["input_ids"]).logits]
        pack_score_forward(model)
        got = [model(input_ids=batch["input_ids"][:1]).logits, model(input_ids=batch["input_ids"]).logits]
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want)
