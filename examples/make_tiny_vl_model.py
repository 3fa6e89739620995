"""Build a tiny randomly initialised Qwen2-VL (a one-block vision tower, a two-layer language model) with a real
tokenizer that has Qwen2-VL's vision tokens (minimind's, Apache-2.0) and a real image processor config, for the
CPU image examples and tests. The same build is kept in tests/fixtures/models/tiny-qwen2-vl.

    python examples/make_tiny_vl_model.py                   # -> outputs/tiny-qwen2-vl
    python examples/make_tiny_vl_model.py outputs/tiny-qwen2.5-vl qwen2_5_vl
    tunelab chat --model outputs/tiny-qwen2-vl              # then: /image tests/fixtures/images/coffee.jpg
    tunelab train examples/tiny_vl_lora_sft.yaml

Its chat template writes Qwen2-VL's format: ``<|vision_start|><|image_pad|><|vision_end|>`` for each image part,
``<|im_start|>role ... <|im_end|>`` around each turn. Images are kept small (at most 112 x 112 pixels: 16 image
tokens), so a CPU step stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build(target: Path, arch: str = "qwen2_vl") -> Path:
    """``arch`` qwen2_vl, or qwen2_5_vl (windowed vision attention, a gated vision MLP)."""
    import warnings

    from transformers import (
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoTokenizer,
        Qwen2_5_VLConfig,
        Qwen2VLConfig,
    )

    tokenizer = AutoTokenizer.from_pretrained(REPO / "tests" / "fixtures" / "tokenizers" / "minimind")
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in
           ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")}
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    if arch == "qwen2_5_vl":
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64, "num_heads": 2,
                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
                  "window_size": 56, "fullatt_block_indexes": [1]}
    config = (Qwen2_5_VLConfig if arch == "qwen2_5_vl" else Qwen2VLConfig)(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "tie_word_embeddings": False,
                     **special},
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], **special)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    with warnings.catch_warnings():  # the PIL backend stands in for torchvision's
        warnings.simplefilter("ignore")
        processor = AutoImageProcessor.for_model("qwen2_vl") if hasattr(AutoImageProcessor, "for_model") else None
    if processor is None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        processor = Qwen2VLImageProcessorPil()
    processor.size = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    processor.save_pretrained(target)
    return target


if __name__ == "__main__":
    arch = sys.argv[2] if len(sys.argv) > 2 else "qwen2_vl"
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/tiny-qwen2-vl"), arch))
