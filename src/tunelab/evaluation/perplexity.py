"""Perplexity of a model on reference answers, with the loss masks training uses: each conversation is encoded
by ``data.masking.encode_conversation`` (the assistant turns carry loss, the prompt is context), so the number
is exp of the mean per-token loss that training would report on the same data."""

from __future__ import annotations

import math
from typing import Any

import torch

from tunelab.data.image_samples import encode_image_conversation
from tunelab.data.images import image_refs
from tunelab.data.masking import IGNORE_INDEX, encode_conversation

MAX_BATCH = 4


def conversation_losses(model: Any, tokenizer: Any, conversations: list[tuple[list[dict], Any]], *,
                        cutoff_len: int = 2048, batch_size: int = 4, vision: Any = None) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, trained tokens) per conversation; (0.0, 0) when none is left after
    ``cutoff_len``. Batches of at most ``MAX_BATCH``: the model's own logits are batch x length x vocabulary.
    ``vision`` (a vision-language model's ImageTokens): the images of the messages are read as in training."""
    batch_size = max(1, min(batch_size, MAX_BATCH))
    encoded = [_encode(tokenizer, messages, tools, cutoff_len, vision) for messages, tools in conversations]
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
        images = _image_inputs(vision, conversations[start:start + batch_size], batch, ids, device)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **images).logits
        logits = logits[:, -width:]  # prompt tuning and P-tuning put their virtual tokens in front
        for row in range(len(batch)):  # one row at a time in fp32: a full batch of vocabulary-wide fp32
            targets = labels[row, 1:].to(logits.device)  # logits would be many GB for a large vocabulary
            losses = torch.nn.functional.cross_entropy(logits[row, :-1].float(), targets, reduction="sum",
                                                       ignore_index=IGNORE_INDEX)
            results.append((float(losses), int((targets != IGNORE_INDEX).sum())))
        del logits
    return results


def _encode(tokenizer: Any, messages: list[dict], tools: Any, cutoff_len: int, vision: Any) -> Any:
    if vision is None or not image_refs(messages):
        return encode_conversation(tokenizer, messages, tools, "assistant", cutoff_len)
    encoded = encode_image_conversation(tokenizer, messages, tools, vision, "assistant", cutoff_len)
    if encoded.dropped:  # cutoff_len through an image: nothing can be scored
        encoded.input_ids, encoded.labels = encoded.input_ids[:1], [IGNORE_INDEX]
    return encoded


def _image_inputs(vision: Any, conversations: list[tuple[list[dict], Any]], batch: list[Any], ids: torch.Tensor,
                  device: Any) -> dict[str, Any]:
    """The images of the conversations whose samples kept them (a dropped sample has none left)."""
    if vision is None:
        return {}
    refs = [ref for (messages, _), item in zip(conversations, batch, strict=True) if vision.pad_id in item.input_ids
            for ref in image_refs(messages)]
    if not refs:
        return {}
    pixel_values, grids = vision.load(refs)
    return {"pixel_values": pixel_values.to(device), "image_grid_thw": grids.to(device),
            "mm_token_type_ids": vision.token_types(ids).to(device)}


def perplexity(losses: list[tuple[float, int]]) -> tuple[float | None, float | None]:
    """(perplexity, mean token loss) over all trained tokens; (None, None) when there are none."""
    tokens = sum(count for _, count in losses)
    if not tokens:
        return None, None
    mean = sum(total for total, _ in losses) / tokens
    return math.exp(mean), mean
