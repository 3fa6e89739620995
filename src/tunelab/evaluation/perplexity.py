"""Perplexity of a model on reference answers, with the loss masks training uses: each conversation is encoded
by ``data.masking.encode_conversation`` (the assistant turns carry loss, the prompt is context), so the number
is exp of the mean per-token loss that training would report on the same data."""

from __future__ import annotations

import math
from typing import Any

import torch

from tunelab.data.masking import IGNORE_INDEX, encode_conversation


def conversation_losses(model: Any, tokenizer: Any, conversations: list[tuple[list[dict], Any]], *,
                        cutoff_len: int = 2048, batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, trained tokens) per conversation; (0.0, 0) when none is left after
    ``cutoff_len``."""
    encoded = [encode_conversation(tokenizer, messages, tools, "assistant", cutoff_len) for messages, tools in
               conversations]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[tuple[float, int]] = []
    model.eval()
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(len(item.input_ids) for item in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):  # right-padded: positions match the labels
            ids[row, :len(item.input_ids)] = torch.tensor(item.input_ids)
            labels[row, :len(item.labels)] = torch.tensor(item.labels)
            mask[row, :len(item.input_ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logits = logits[:, -width:].float()  # prompt tuning and P-tuning put their virtual tokens in front
        targets = labels[:, 1:].to(logits.device)
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none",
                                                   ignore_index=IGNORE_INDEX)
        counts = (targets != IGNORE_INDEX).sum(dim=1)
        results += [(float(total), int(count)) for total, count in zip(losses.sum(dim=1), counts, strict=True)]
    return results


def perplexity(losses: list[tuple[float, int]]) -> tuple[float | None, float | None]:
    """(perplexity, mean token loss) over all trained tokens; (None, None) when there are none."""
    tokens = sum(count for _, count in losses)
    if not tokens:
        return None, None
    mean = sum(total for total, _ in losses) / tokens
    return math.exp(mean), mean
