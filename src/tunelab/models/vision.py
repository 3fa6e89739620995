"""Vision-language models (Qwen2-VL, Qwen2.5-VL and their kin): which configs they are, and turning images into
what the model reads. A chat template writes one ``<|image_pad|>`` per image; the processor's rules resize the
image and cut it into patches, and the pad is repeated once per merged patch, as ``AutoProcessor`` does. Built
from the image processor and the tokenizer alone, so it works without torchvision (the video half of
``AutoProcessor`` needs it, and its CUDA wheel does not load beside a CPU torch).
"""

from __future__ import annotations

from typing import Any

from tunelab.data.images import ImageError, ImageRef, image_size, load_image

IMAGE_PAD = "<|image_pad|>"


def is_vision_config(config: Any) -> bool:
    return getattr(config, "vision_config", None) is not None


def is_vision_model(model: str) -> bool:
    """A local model folder whose config has a vision tower (read from config.json, nothing loaded)."""
    from tunelab.models.sources import model_config

    return "vision_config" in (model_config(model) or {})


class ImageTokens:
    """The image processor of a vision-language model, and how many pad tokens each image becomes."""

    def __init__(self, folder: str, tokenizer: Any, image_token_id: int | None = None) -> None:
        import warnings

        from transformers import AutoImageProcessor

        with warnings.catch_warnings():  # "requires torchvision, falling back to the PIL backend": expected here
            warnings.simplefilter("ignore")
            self.processor = AutoImageProcessor.from_pretrained(folder)
        self.pad_id = image_token_id if image_token_id is not None else tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.merge = int(getattr(self.processor, "merge_size", 2))
        # a fixed size is rounded to whole merged patches (Qwen2-VL: 14 x 2 = 28 pixels)
        self.factor = int(getattr(self.processor, "patch_size", 14)) * self.merge

    def pixels(self, images: list[Any], refs: list[ImageRef]) -> tuple[Any, Any]:
        """(pixel_values, image_grid_thw) for the images in order, each resized by its own part's settings."""
        import torch

        values, grids = [], []
        for image, ref in zip(images, refs, strict=True):
            fixed, settings = self._settings(ref)
            if fixed:
                image = image.resize((fixed[1], fixed[0]))
            try:
                out = self.processor(images=[image], return_tensors="pt", **settings)
            except (ValueError, TypeError) as error:
                raise ImageError(f"image '{ref.shown()}': {error}") from None
            values.append(out["pixel_values"])
            grids.append(out["image_grid_thw"])
        return torch.cat(values), torch.cat(grids)

    def _settings(self, ref: ImageRef) -> tuple[tuple[int, int] | None, dict[str, Any]]:
        """(the fixed (height, width) a part asks for, or None; the processor's size settings for the image)."""
        low, high, fixed = ref.min_pixels, ref.max_pixels, None
        if ref.resized_height and ref.resized_width:  # a fixed size: rounded to whole merged patches, kept
            fixed = (max(self.factor, round(ref.resized_height / self.factor) * self.factor),
                     max(self.factor, round(ref.resized_width / self.factor) * self.factor))
            low = high = fixed[0] * fixed[1]
        if not (low or high):
            return fixed, {}
        return fixed, {"size": {"shortest_edge": low or self._size("shortest_edge"),
                                "longest_edge": high or self._size("longest_edge")}}

    def _size(self, edge: str) -> int:
        size = self.processor.size
        return int(size[edge] if isinstance(size, dict) else getattr(size, edge))

    def tokens_per_image(self, grids: Any) -> list[int]:
        return [int(grid.prod()) // (self.merge ** 2) for grid in grids]

    def load(self, refs: list[ImageRef]) -> tuple[Any, Any]:
        """(pixel_values, image_grid_thw) of images given by reference (paths, file:// or data URLs)."""
        return self.pixels([load_image(ref.source) for ref in refs], refs)

    def counts(self, refs: list[ImageRef]) -> list[int]:
        """Tokens each image becomes, as the model will read it: from its size alone (the processor's own count,
        as vLLM uses it) where the processor offers one, so encoding data decodes no pixels."""
        patches = getattr(self.processor, "get_number_of_image_patches", None)
        if patches is None:
            return self.tokens_per_image(self.load(refs)[1]) if refs else []
        counts = []
        for ref in refs:
            fixed, settings = self._settings(ref)
            height, width = fixed or image_size(ref.source)
            try:
                counts.append(patches(height, width, settings) // (self.merge ** 2))
            except (ValueError, TypeError) as error:
                raise ImageError(f"image '{ref.shown()}': {error}") from None
        return counts

    def expand(self, ids: list[int], grids: Any) -> list[int]:
        """Each image's single pad repeated as the model expects; the count of pads must be the count of images."""
        counts = self.tokens_per_image(grids)
        pads = ids.count(self.pad_id)
        if pads != len(counts):
            raise ImageError(f"the rendered prompt has {pads} image placeholder(s) for {len(counts)} image(s)")
        expanded: list[int] = []
        for token in ids:
            expanded += [token] * counts.pop(0) if token == self.pad_id else [token]
        return expanded

    def token_types(self, ids: Any) -> Any:
        """``mm_token_type_ids``: 1 on image pads (Qwen2-VL's M-RoPE reads them), else 0."""
        return (ids == self.pad_id).long()


def attach_image_tokens(tokenizer: Any, model: str) -> bool:
    """Give ``tokenizer`` the model's ImageTokens (``tokenizer.image_tokens``) when the model reads images, so the
    data layer can expand image placeholders before the model loads; False for a text-only model."""
    from tunelab.models.sources import model_config, resolve_model_path

    if not is_vision_model(model):
        return False
    config = model_config(model) or {}
    tokenizer.image_tokens = ImageTokens(str(resolve_model_path(model)), tokenizer, config.get("image_token_id"))
    return True
