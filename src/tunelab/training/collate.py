"""Batches of tunelab-encoded samples for TRL's preference trainers: right-padded ids, attention, and a
``completion_mask`` that is exactly the tokens tunelab's masks train (never the text after an end marker)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def pad_masked(sequences: list[list[int]], masks: list[list[int]], pad_token_id: int) -> dict[str, Any]:
    """``input_ids``, ``attention_mask`` and ``completion_mask`` tensors, padded on the right."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    completion = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, mask) in enumerate(zip(sequences, masks, strict=True)):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention[row, :len(ids)] = 1
        completion[row, :len(mask)] = torch.tensor(mask)
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


@dataclass
class PairCollator:
    """Pairs (``prompt_ids``, ``chosen_ids``/``_mask``, ``rejected_ids``/``_mask``) into DPO's batch: the chosen
    rows, then the rejected rows."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        sequences, masks = [], []
        for side in ("chosen", "rejected"):
            for example in examples:
                sequences.append(example["prompt_ids"] + example[f"{side}_ids"])
                masks.append([0] * len(example["prompt_ids"]) + example[f"{side}_mask"])
        return pad_masked(sequences, masks, self.pad_token_id)


@dataclass
class UnpairedCollator:
    """KTO samples (``prompt_ids``, ``completion_ids``/``_mask``, ``label``, and the mismatched
    ``KL_completion_ids``/``_mask`` the KL estimate reads) into KTO's batch."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        output: dict[str, Any] = {}
        for prefix in ("", "KL_"):
            if f"{prefix}completion_ids" not in examples[0]:
                continue
            batch = pad_masked([e["prompt_ids"] + e[f"{prefix}completion_ids"] for e in examples],
                               [[0] * len(e["prompt_ids"]) + e[f"{prefix}completion_mask"] for e in examples],
                               self.pad_token_id)
            output.update({f"{prefix}{key}": value for key, value in batch.items()})
        output["label"] = torch.tensor([bool(e["label"]) for e in examples])
        return output


def _image_inputs(image_tokens: Any, paths: list[str], input_ids: Any) -> dict[str, Any]:
    """The batch's images opened and processed (in the order their tokens appear), checked against the tokens."""
    from tunelab.data.images import ImageRef

    if not paths:
        return {}
    pixel_values, grids = image_tokens.load([ImageRef(path) for path in paths])
    expected = sum(image_tokens.tokens_per_image(grids))
    found = int((input_ids == image_tokens.pad_id).sum())
    if found != expected:
        raise ValueError(f"the batch holds {found} image tokens but its images make {expected}; did an image change "
                         f"since the data was encoded? ({', '.join(paths)})")
    return {"pixel_values": pixel_values, "image_grid_thw": grids,
            "mm_token_type_ids": image_tokens.token_types(input_ids)}


@dataclass
class ImagePairCollator(PairCollator):
    """Preference pairs whose prompt has images: DPO's batch (chosen rows, then rejected rows), each row with its
    prompt's images."""

    image_tokens: Any = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(examples)
        paths = [path for _side in ("chosen", "rejected") for example in examples
                 for path in example.get("image_files") or []]
        return {**batch, **_image_inputs(self.image_tokens, paths, batch["input_ids"])}


@dataclass
class ImageCollator:
    """Supervised samples with images (``input_ids``, ``labels``, ``image_files``: not ``images``, which TRL takes for
    its own processor path) into a vision-language model's batch:
    right-padded ids, attention and labels, the images opened and processed by the model's own rules
    (``pixel_values``, ``image_grid_thw``) and ``mm_token_type_ids`` (1 on image tokens, which Qwen2-VL's rotary
    positions read). The image tokens were counted when the samples were encoded; a batch whose images now
    give another count (a file changed since) is an error naming the image files."""

    pad_token_id: int
    image_tokens: Any  # models/vision.py: ImageTokens

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for row, example in enumerate(examples):
            length = len(example["input_ids"])
            input_ids[row, :length] = torch.tensor(example["input_ids"])
            attention[row, :length] = 1
            labels[row, :length] = torch.tensor(example["labels"])
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        paths = [path for example in examples for path in example.get("image_files") or []]
        return {**batch, **_image_inputs(self.image_tokens, paths, input_ids)}
