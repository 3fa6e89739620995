"""Load the tokenizer (with its chat template) and the model, with dtype and attention choices."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.data.templates import BUILTIN_TEMPLATES, apply_template
from tunelab.errors import ConfigError, TunelabError, shorten
from tunelab.models.sources import check_model_source, model_config, resolve_model_path

_ATTENTION = {"auto": None, "disabled": "eager", "eager": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}


def _load_error(kind: str, name: str, error: Exception) -> TunelabError:
    return TunelabError(f"could not load {kind} '{name}': {type(error).__name__}: {shorten(str(error))}")


def _quiet_transformers() -> None:
    """transformers' per-load 'Loading weights' bar and info chatter say nothing a user can act on."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from datasets.utils.logging import disable_progress_bar as quiet_maps

    quiet_maps()  # the small dataset maps of the preference stages: tunelab reports the data itself


def load_tokenizer(model_name_or_path: str, template: str | None = None, *, trust_remote_code: bool = False,
                   revision: str = "main", cache_dir: str | None = None, require_template: bool = False) -> Any:
    """Tokenizer with the chat template installed and a pad token (eos when the model has none).

    ``require_template``: a tokenizer without a chat template (a base model) is an error naming the
    built-ins, instead of a failure deep inside the first chat rendering.
    """
    check_model_source(model_name_or_path, need_weights=False)
    from transformers import AutoTokenizer

    _quiet_transformers()
    path = resolve_model_path(model_name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision,
                                                  cache_dir=cache_dir)
    except Exception as error:  # OSError, ValueError, HTTP errors: report them the same way
        raise _load_error("tokenizer", model_name_or_path, error) from None
    if template is not None or getattr(tokenizer, "chat_template", None):
        apply_template(tokenizer, template)
    elif require_template:
        raise ConfigError(f"'{model_name_or_path}' has no chat template (a base model?); set template to one of "
                          f"{', '.join(BUILTIN_TEMPLATES)} or a .jinja file")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def training_dtype(bf16: bool, fp16: bool, full: bool) -> torch.dtype:
    """Adapters train on half-precision weights; full fine-tuning keeps fp32 master weights (AMP)."""
    if full:
        return torch.float32
    if bf16:
        return torch.bfloat16
    return torch.float16 if fp16 else torch.float32


def quantization_config(cfg: Any) -> Any | None:
    """bitsandbytes settings of the quantization_* keys, or None for a 16/32-bit base."""
    if not cfg.quantization_bit:
        return None
    from transformers import BitsAndBytesConfig  # bitsandbytes itself was checked by models.sources

    if cfg.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    names = {"auto": "bfloat16" if cfg.bf16 else "float16" if cfg.fp16 else "float32"}
    compute = getattr(torch, names.get(cfg.quantization_compute_dtype, cfg.quantization_compute_dtype))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quantization_type,
                              bnb_4bit_use_double_quant=cfg.double_quantization, bnb_4bit_compute_dtype=compute)


def keep_cpu_4bit_layers_trainable(model: Any) -> None:
    """bitsandbytes repacks a 4-bit weight in place for a faster CPU kernel the first time a layer runs in eval
    mode without gradients (on CPUs with AVX512-BF16). The repacked weight fails the next training forward
    (and any layer whose width is not a multiple of 32 fails at once), so a QLoRA run with periodic evaluation
    or generation would break: the repacking is turned off on each layer of this model (an instance attribute,
    no library code changed); the ordinary 4-bit kernel still runs."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_model(model_name_or_path: str, tokenizer: Any, *, dtype: torch.dtype = torch.float32,
               flash_attn: str = "auto", trust_remote_code: bool = False, revision: str = "main",
               cache_dir: str | None = None, head: str = "causal_lm", quantization: Any = None) -> Any:
    """A causal LM, or with ``head="score"`` the same model with a one-output score head (a reward model);
    embeddings grow when the template added special tokens; ``quantization``: a BitsAndBytesConfig."""
    check_model_source(model_name_or_path)
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSequenceClassification

    _quiet_transformers()
    path = resolve_model_path(model_name_or_path)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code, "revision": revision,
                              "cache_dir": cache_dir}
    if _ATTENTION[flash_attn]:
        kwargs["attn_implementation"] = _ATTENTION[flash_attn]
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    try:
        if head == "score":
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
        elif "vision_config" in (model_config(model_name_or_path) or {}):  # Qwen2-VL and kin: images and text
            model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as error:
        raise _load_error("model", model_name_or_path, error) from None
    if quantization is not None:
        keep_cpu_4bit_layers_trainable(model)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # a score head reads the last non-pad token
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
