"""Build a tiny randomly initialised Llama with a real Chinese-capable tokenizer (minimind's 6,400-token BPE,
Apache-2.0, in tests/fixtures/tokenizers/minimind), for the CPU version of the P-Tuning v2 recipe: the embedded
stories260K cannot read Chinese.

    python examples/make_tiny_chinese_model.py            # -> outputs/tiny-zh-llama
    tunelab train examples/advertisegen_ptuning_v2_cpu.yaml
    python examples/make_tiny_chinese_model.py qwen2      # -> outputs/tiny-zh-qwen2 (attention with biases)
    tunelab train examples/advertisegen_bitfit_cpu.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

REPO = Path(__file__).resolve().parents[1]


def build(target: Path, arch: str = "llama") -> Path:
    """``arch`` llama, or qwen2 (whose attention has bias terms, for BitFit)."""
    tokenizer = AutoTokenizer.from_pretrained(REPO / "tests" / "fixtures" / "tokenizers" / "minimind")
    torch.manual_seed(0)
    config_class = Qwen2Config if arch == "qwen2" else LlamaConfig
    config = config_class(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


if __name__ == "__main__":
    arch = sys.argv[1] if len(sys.argv) > 1 else "llama"
    print(build(Path(f"outputs/tiny-zh-{arch}"), arch))
