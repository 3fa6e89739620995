"""The fine-tuning methods: every ``finetuning_type``, described once with everything the rest of tunelab asks
about it.

What a method trains (an adapter beside the frozen base, virtual tokens in front of the input, or some of the
base's own weights), whether it can take a quantized base, whether it merges into the base, which config keys
are its own, and the functions that build it (``tunelab.models.methods``, named as ``module:function`` and
imported only when a model is built, like the stage recipes). Config validation, the trainers, saving and
inference read this table instead of comparing ``finetuning_type`` strings. This module imports nothing of
tunelab, so the config can ask it before torch is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ADAPTER, PROMPT, WEIGHTS = "adapter", "prompt", "weights"
_LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "additional_target")
_PROMPT_KEYS = ("num_virtual_tokens", "pre_seq_len")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    kind: str  # ADAPTER (PEFT weights beside the base), PROMPT (PEFT virtual tokens), WEIGHTS (the base's own)
    build: str  # "module:function": function(model, cfg) -> PEFT config (ADAPTER/PROMPT) or the model (WEIGHTS)
    keys: tuple[str, ...] = ()  # config keys that only this method reads (set for another method: an error)
    can_merge: bool = False  # the trained weights fold into the base (export as a standalone model)
    quantizable: bool = True  # trains on a 4/8-bit base (QLoRA-style): everything but the base's own weights
    aliases: tuple[str, ...] = ()
    peft_type: str | None = None  # PEFT's name for it in adapter_config.json ("LORA", "PREFIX_TUNING", ...)
    fp32_weights: bool = False  # trains the base in fp32 master weights under mixed precision (full tuning)
    # "module:function"s of what the method needs around training: prepare(trainer, cfg, total_steps) before it
    # (an optimizer, a callback), finish(model, cfg) after the final save (a conversion of what was saved)
    prepare: str | None = None
    finish: str | None = None

    @property
    def is_peft(self) -> bool:
        """Saved as a standard PEFT adapter (adapter_config.json), loaded with PeftModel."""
        return self.kind in (ADAPTER, PROMPT)

    @property
    def is_prompt_learning(self) -> bool:
        """Virtual tokens in front of every sequence: packed sequences would share them across samples."""
        return self.kind == PROMPT

    def builder(self) -> Callable[..., Any]:
        return _resolve(self.build)

    def hook(self, which: str) -> Callable[..., Any] | None:
        """The method's ``prepare`` or ``finish`` function, or None when it needs none."""
        target = getattr(self, which)
        return _resolve(target) if target else None


def _resolve(target: str) -> Callable[..., Any]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


_BUILD = "tunelab.models.methods"
METHODS: dict[str, Method] = {method.name: method for method in (
    Method("lora", "LoRA low-rank adapters (use_dora, use_rslora, pissa_init, loraplus_lr_ratio switch its variants)",
           ADAPTER, f"{_BUILD}:lora_config", (*_LORA_KEYS, "use_dora", "use_rslora", "pissa_init", "pissa_iter",
                                              "loraplus_lr_ratio", "loraplus_lr_embedding"), can_merge=True,
           prepare=f"{_BUILD}:prepare_lora", finish=f"{_BUILD}:finish_lora", peft_type="LORA"),
    Method("adalora", "AdaLoRA: LoRA whose rank budget is re-allocated between layers during training",
           ADAPTER, f"{_BUILD}:adalora_config", (*_LORA_KEYS, "adalora_init_r", "adalora_target_r", "adalora_tinit",
                                                 "adalora_tfinal", "adalora_delta_t"), can_merge=True,
           prepare=f"{_BUILD}:prepare_adalora", peft_type="ADALORA"),
    Method("ia3", "IA3: learned scaling vectors on attention keys/values and the feed-forward input",
           ADAPTER, f"{_BUILD}:ia3_config", can_merge=True, peft_type="IA3"),
    Method("prefix", "P-Tuning v2 / prefix tuning: trained key/value prefixes in every layer (pre_seq_len)",
           PROMPT, f"{_BUILD}:prefix_config", (*_PROMPT_KEYS, "prefix_projection", "prompt_encoder_hidden_size"),
           aliases=("ptuning_v2", "prefix_tuning", "p_tuning_v2"), peft_type="PREFIX_TUNING"),
    Method("ptuning", "P-tuning: virtual tokens produced by a small prompt encoder (MLP)",
           PROMPT, f"{_BUILD}:ptuning_config", (*_PROMPT_KEYS, "prompt_encoder_hidden_size"), aliases=("p_tuning",),
           peft_type="P_TUNING"),
    Method("prompt", "prompt tuning: trained virtual token embeddings, random or from a text",
           PROMPT, f"{_BUILD}:prompt_tuning_config", (*_PROMPT_KEYS, "prompt_tuning_init_text"),
           aliases=("prompt_tuning",), peft_type="PROMPT_TUNING"),
    Method("bitfit", "BitFit: only the bias terms of the base train", WEIGHTS, f"{_BUILD}:select_biases",
           quantizable=False, can_merge=True),
    Method("freeze", "freeze tuning: the last (or first) N layers train, the rest is frozen", WEIGHTS,
           f"{_BUILD}:select_layers", ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules"),
           quantizable=False, can_merge=True),
    Method("full", "full fine-tuning: every weight trains (fp32 master weights)", WEIGHTS, f"{_BUILD}:select_all",
           quantizable=False, can_merge=True, fp32_weights=True),
)}
ALIASES = {alias: method.name for method in METHODS.values() for alias in method.aliases}


def method_names(where: Callable[[Method], bool] | None = None) -> list[str]:
    """Every method's name, or those ``where`` holds for: lists in messages come from here, never by hand."""
    return [name for name, entry in METHODS.items() if where is None or where(entry)]


def canonical_name(name: str) -> str:
    """``ptuning_v2`` -> ``prefix``; an unknown name comes back unchanged (the config says what is wrong)."""
    return ALIASES.get(name, name)


def method(name: str) -> Method:
    return METHODS[canonical_name(name)]


# LoRA's basic keys sit in most YAML files (LLaMA-Factory's included): switching the method on the command line
# (finetuning_type=full) leaves them unread rather than refused. Every other method-specific key is refused.
UNREAD_ALLOWED = _LORA_KEYS


def keys_of_other_methods(name: str) -> dict[str, list[str]]:
    """Every method-specific key that ``name`` does not read -> the methods that do (LoRA's basic keys aside)."""
    own = set(method(name).keys) | set(UNREAD_ALLOWED)
    others: dict[str, list[str]] = {}
    for other in METHODS.values():
        for key in other.keys:
            if key not in own:
                others.setdefault(key, []).append(other.name)
    return others


def method_of_adapter(peft_type: str) -> Method | None:
    """The method that wrote an adapter, from its adapter_config.json's peft_type."""
    return next((m for m in METHODS.values() if m.peft_type == peft_type), None)
