"""A Hugging Face model folder (an hf export) as one GGUF file for llama.cpp and Ollama, written with the
``gguf`` package: architecture metadata, tensors under llama.cpp's names, the tokenizer and the chat template.

Supported architectures: ``SUPPORTED`` (Llama, including Llama-3.x and the embedded model, and Qwen2/Qwen2.5).
What llama.cpp expects, and where it differs from the Hugging Face layout:

- Llama's query and key projections are stored with the rotary halves interleaved (llama.cpp rotates adjacent
  pairs; Hugging Face rotates the two halves), so their rows are permuted; Qwen2 uses the halves layout
  natively (NEOX rope) and is written as it is.
- 1-D tensors, norms and biases stay F32; every other weight takes the requested type. A weight whose rows do
  not split into the type's blocks (e.g. 172 columns for q8_0's blocks of 32) falls back to F16, as llama.cpp's
  own converter does.
- Llama-3.1's ``llama3`` rope scaling becomes a ``rope_freqs`` tensor; linear and YaRN scaling become metadata.
- Tokenizer: a SentencePiece model (``tokenizer.model``; llama.cpp's ``llama`` tokenizer, with scores and token
  types), or a byte-level BPE (``gpt2``: tokens, merges, the pre-tokenizer by name), plus the special token ids,
  the add-bos/eos flags and the chat template.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import TunelabError

# requested type -> (GGML tensor type, llama.cpp file type)
_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
          "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1"), "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
          "q4_1": ("Q4_1", "MOSTLY_Q4_1"), "q4_0": ("Q4_0", "MOSTLY_Q4_0")}


@dataclass(frozen=True)
class Architecture:
    gguf_name: str  # gguf.MODEL_ARCH member
    permute_qk: bool  # llama.cpp's rope on adjacent pairs (Llama) vs halves (Qwen2, NEOX)
    # head sizes, rope dimensions and vocabulary size written out (llama.cpp derives them for Qwen2)
    explicit_sizes: bool


SUPPORTED = {"llama": Architecture("LLAMA", True, True), "qwen2": Architecture("QWEN2", False, False)}
_ROPE_TYPES = (None, "default", "linear", "yarn", "llama3")

# Byte-level BPE pre-tokenizers llama.cpp implements, known by the regular expression of the tokenizer's Split
# step (llama.cpp itself knows them by a hash of sample output, so it cannot tell a renamed copy).
_PRE_TOKENIZERS = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama-bpe",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+": "qwen2",
}


def architecture_of(config: dict[str, Any]) -> Architecture:
    """The architecture's GGUF layout; a model GGUF export cannot write is refused, with what to do instead."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise TunelabError(f"GGUF export supports the architectures {', '.join(SUPPORTED)}; this model is "
                           f"'{model_type}' ({', '.join(config.get('architectures') or [])}); export it with "
                           "--format hf and convert that with llama.cpp's convert_hf_to_gguf.py")
    if any(name.endswith("ForSequenceClassification") for name in config.get("architectures") or []):
        raise TunelabError("GGUF export writes causal language models; a reward model (score head) exports with "
                           "--format hf")
    kind = _rope(config).get("rope_type")
    if kind not in _ROPE_TYPES:
        raise TunelabError(f"rope scaling '{kind}' is not supported by tunelab's GGUF export (supported: "
                           f"{', '.join(str(k) for k in _ROPE_TYPES if k)})")
    return SUPPORTED[model_type]


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("rope_parameters") or config.get("rope_scaling") or {}


def _head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def write_metadata(writer: Any, folder: Path, config: dict[str, Any], arch: Architecture, name: str,
                   file_type: str, parameters: int) -> None:
    """General metadata (name, size label, and the base model, tags and licence of the folder's model card, read
    by the gguf package's own ``Metadata``), then the architecture's hyperparameters."""
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    metadata = gguf.Metadata.load(None, folder, name, parameters)
    if metadata.size_label is None and parameters:
        metadata.size_label = gguf.size_label(parameters, 0, 0, 0)
    metadata.set_gguf_meta_model(writer)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    rope = _rope(config)
    theta = rope.get("rope_theta", config.get("rope_theta"))
    if theta is not None:
        writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if arch.explicit_sizes:
        writer.add_key_length(_head_dim(config))
        writer.add_value_length(_head_dim(config))
    writer.add_file_type(getattr(gguf.LlamaFileType, file_type))
    if arch.explicit_sizes:
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(_head_dim(config))
    kind, factor = rope.get("rope_type"), rope.get("factor")
    if kind == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif kind == "yarn" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def llama3_rope_factors(config: dict[str, Any]) -> np.ndarray:
    """Llama-3.1's frequency-dependent rope scaling as the per-frequency factors llama.cpp reads (rope_freqs)."""
    rope, dim = _rope(config), _head_dim(config)
    base = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    original = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelength = 2 * math.pi / freq
        if wavelength < original / high:
            factors.append(1.0)
        elif wavelength > original / low:
            factors.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def interleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a query/key projection from Hugging Face's rotary halves to llama.cpp's adjacent pairs."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _shards(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TunelabError(f"'{folder}' holds no .safetensors weights (export with export_legacy_format false)")
    return files


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the file: where it comes from (None: computed), its llama.cpp name, shape and type."""

    source: str | None
    name: str
    shape: tuple[int, ...]
    type_name: str


def tensor_type(name: str, shape: tuple[int, ...], requested: str) -> str:
    """llama.cpp's rule: 1-D tensors, norms and non-weights (biases) in F32, the rest in the requested type, F16
    when a row does not split into the type's blocks."""
    import gguf

    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return "F32"
    chosen = _TYPES[requested][0]
    block = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, chosen)][0]
    return chosen if shape[-1] % block == 0 else "F16"


def plan_tensors(folder: Path, config: dict[str, Any], arch: Architecture, requested: str) -> list[PlannedTensor]:
    """Every tensor the file will hold, from the shards' headers (no weights read)."""
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf_name), config["num_hidden_layers"])
    planned = []
    for file in _shards(folder):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                if key.endswith(".rotary_emb.inv_freq"):
                    continue
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise TunelabError(f"tensor '{key}' has no llama.cpp name for architecture "
                                       f"{arch.gguf_name.lower()}")
                shape = tuple(handle.get_slice(key).get_shape())
                planned.append(PlannedTensor(f"{file.name}:{key}", name, shape, tensor_type(name, shape, requested)))
    if _rope(config).get("rope_type") == "llama3":
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        planned.append(PlannedTensor(None, name, (_head_dim(config) // 2,), "F32"))
    return planned


def tensor_data(folder: Path, tensor: PlannedTensor, config: dict[str, Any], arch: Architecture) -> np.ndarray:
    """The tensor's values in float32, Llama's q/k rows interleaved."""
    if tensor.source is None:
        return llama3_rope_factors(config)
    from safetensors import safe_open

    file, key = tensor.source.split(":", 1)
    with safe_open(folder / file, framework="pt") as handle:
        data = handle.get_tensor(key).float().numpy()
    if arch.permute_qk and key.endswith(("q_proj.weight", "q_proj.bias")):  # biases (attention_bias) too
        data = interleave_rotary(data, config["num_attention_heads"])
    elif arch.permute_qk and key.endswith(("k_proj.weight", "k_proj.bias")):
        data = interleave_rotary(data, config.get("num_key_value_heads") or config["num_attention_heads"])
    return data


def encode_tensor(data: np.ndarray, type_name: str) -> np.ndarray:
    """The tensor's bytes in ``type_name``: float arrays for F32/F16, raw bytes for BF16 and the quantized types."""
    import gguf

    if type_name == "F32":
        return data.astype(np.float32)
    if type_name == "F16":
        return data.astype(np.float16)
    return gguf.quants.quantize(data, getattr(gguf.GGMLQuantizationType, type_name))


def _declare(writer: Any, tensor: PlannedTensor) -> None:
    """Announce a tensor (name, shape, type, size) before any data is written, so tensors can stream."""
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, tensor.type_name)
    if tensor.type_name in ("F32", "F16"):
        dtype = np.dtype(np.float32 if tensor.type_name == "F32" else np.float16)
        writer.add_tensor_info(tensor.name, tensor.shape, dtype, int(np.prod(tensor.shape)) * dtype.itemsize, qtype)
        return
    byte_shape = gguf.quant_shape_to_byte_shape(tensor.shape, qtype)
    writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), qtype)


def _token_text(tokenizer: Any, token_id: int, token: str) -> str:
    """Added tokens as llama.cpp expects them: pre-normalized (encoded and decoded back)."""
    added = tokenizer.added_tokens_decoder.get(token_id)
    if added is not None and not added.normalized:
        return tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
    return token


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name of a byte-level BPE tokenizer's pre-tokenizer, from its Split regex."""
    state = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    steps = state.get("pretokenizers") or [state]
    patterns = [step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"]
    if not patterns:
        if any(step.get("type") == "ByteLevel" and step.get("use_regex", True) for step in steps):
            return "gpt-2"
    elif patterns[0] in _PRE_TOKENIZERS:
        return _PRE_TOKENIZERS[patterns[0]]
    raise TunelabError(f"the tokenizer's pre-tokenizer ({patterns[0] if patterns else state.get('type')}) is not one "
                       f"llama.cpp implements under a name tunelab knows (llama-bpe for Llama 3, qwen2 for Qwen2, "
                       "gpt-2); export with --format hf and convert with llama.cpp's converter")


def write_tokenizer(writer: Any, folder: Path, tokenizer: Any, vocab_size: int) -> str:
    """The vocabulary, scores or merges, token types, special tokens and chat template; returns the tokenizer
    kind written (llama for SentencePiece, gpt2 for byte-level BPE)."""
    import gguf

    if (folder / "tokenizer.model").is_file():
        vocab = gguf.vocab.SentencePieceVocab(folder)
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        for index in range(len(tokens), vocab_size):  # rows the model has beyond the tokenizer
            tokens.append(f"[PAD{index}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        gguf.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
        return "llama"
    if not getattr(tokenizer, "is_fast", False) or json.loads(tokenizer.backend_tokenizer.to_str())["model"][
            "type"] != "BPE":
        raise TunelabError("GGUF export needs a SentencePiece tokenizer.model or a byte-level BPE tokenizer.json")
    pre = pre_tokenizer_name(tokenizer)
    by_id = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            special = tokenizer.added_tokens_decoder[index].special
            tokens.append(_token_text(tokenizer, index, token))
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
    return "gpt2"


def write_gguf(folder: Path, target: Path, requested: str, name: str, tokenizer: Any,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write ``target`` from the hf model in ``folder``, one tensor in memory at a time; returns what was written
    (architecture, tokenizer kind, tensor count per type)."""
    import gguf

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = architecture_of(config)
    planned = plan_tensors(folder, config, arch, requested)
    writer = gguf.GGUFWriter(target, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf_name)])
    parameters = sum(int(np.prod(tensor.shape)) for tensor in planned if tensor.source is not None)
    write_metadata(writer, folder, config, arch, name, _TYPES[requested][1], parameters)
    kind = write_tokenizer(writer, folder, tokenizer, config["vocab_size"])
    for tensor in planned:
        _declare(writer, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    counts: dict[str, int] = {}
    for index, tensor in enumerate(planned, start=1):
        writer.write_tensor_data(encode_tensor(tensor_data(folder, tensor, config, arch), tensor.type_name))
        counts[tensor.type_name] = counts.get(tensor.type_name, 0) + 1
        if progress is not None:
            progress(index, len(planned))
    writer.close()
    return {"architecture": config["model_type"], "tokenizer": kind, "tensors": len(planned), "types": counts}
