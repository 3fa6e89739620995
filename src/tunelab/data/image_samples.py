"""Conversations with images as training samples for a vision-language model: the template writes one pad token
per image, and each pad becomes as many tokens as the processor makes of that image (``tokenizer.image_tokens``,
set by ``models/vision.py`` when the model reads images). Image tokens never carry loss, and ``cutoff_len`` never
cuts through them: such a sample is dropped and counted, since a model given part of an image's tokens fails
("image features and image tokens do not match")."""

from __future__ import annotations

from typing import Any

import numpy as np

from tunelab.data.images import ImageError, image_refs, template_messages, with_placeholders
from tunelab.data.masking import IGNORE_INDEX, Encoded, MaskingError, encode_conversation


def encode_with_images(tokenizer: Any, row: dict, policy: str = "assistant", cutoff_len: int | None = None
                       ) -> Encoded:
    """A row of LLaMA-Factory's form (``<image>`` placeholders, an ``images`` list) as one training sample."""
    image_tokens = image_tokens_of(tokenizer, row["images"])
    messages = with_placeholders(row["messages"], row["images"])
    return encode_image_conversation(tokenizer, messages, row.get("tools"), image_tokens, policy, cutoff_len)


def image_tokens_of(tokenizer: Any, images: list[str]) -> Any:
    """The tokenizer's ImageTokens, or the error of image data on a text-only model."""
    image_tokens = getattr(tokenizer, "image_tokens", None)
    if image_tokens is None:
        raise MaskingError(f"the record has {len(images)} image(s) but the model reads text only; train a "
                           "vision-language model (Qwen2-VL, Qwen2.5-VL) on image data")
    return image_tokens


def encode_image_pair(tokenizer: Any, row: dict, cutoff_len: int | None = None) -> tuple[Encoded, Encoded]:
    """A preference pair whose prompt has images: (chosen, rejected), each trained on its answer only."""
    image_tokens = image_tokens_of(tokenizer, row["images"])
    prompt = with_placeholders(row["prompt"], row["images"])
    return tuple(encode_image_conversation(tokenizer, prompt + row[side], row.get("tools"), image_tokens,
                                           cutoff_len=cutoff_len, train_from=len(prompt))
                 for side in ("chosen", "rejected"))  # type: ignore[return-value]


def encode_image_conversation(tokenizer: Any, messages: list[dict], tools: Any, image_tokens: Any,
                              policy: str = "assistant", cutoff_len: int | None = None, train_from: int = 0
                              ) -> Encoded:
    """Messages with image parts: rendered, masked, and each image's pad expanded to its tokens, none trained."""
    encoded = encode_conversation(tokenizer, template_messages(messages), tools, policy, None, train_from)
    try:
        counts = image_tokens.counts(image_refs(messages))
    except ImageError as error:
        raise MaskingError(str(error)) from None
    pad = image_tokens.pad_id
    if encoded.input_ids.count(pad) != len(counts):
        raise MaskingError(f"the chat template wrote {encoded.input_ids.count(pad)} image placeholder(s) for "
                           f"{len(counts)} image(s); use a template with image parts (Qwen2-VL's)")
    ids, labels, repeats, pending = [], [], [], list(counts)
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        times = pending.pop(0) if token == pad else 1
        ids += [token] * times
        labels += [IGNORE_INDEX] * times if token == pad else [label]
        repeats.append(times)
    offsets = encoded.offsets_of
    expanded = Encoded(ids, labels, encoded.text, full_length=len(ids), image_tokens=list(counts),
                       offsets_of=lambda: np.repeat(offsets(), repeats, axis=0))
    if cutoff_len is None or len(ids) <= cutoff_len:
        return expanded
    last_image = len(ids) - ids[::-1].index(pad)
    if last_image > cutoff_len:
        expanded.dropped = (f"cutoff_len {cutoff_len} would cut through an image's tokens (they end at "
                            f"{last_image}); raise cutoff_len or use smaller images (max_pixels)")
        return expanded
    expanded.input_ids, expanded.labels, expanded.truncated = ids[:cutoff_len], labels[:cutoff_len], True
    return expanded
