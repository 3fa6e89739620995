"""The fine-tuning methods: every ``finetuning_type``, described once with everything the rest of tunelab asks
about it.

What a method trains (an adapter beside the frozen base, virtual tokens in front of the input, or some of the
base's own weights), whether it can take a quantized base, whether it merges into the base, which config keys
are its own, and the functions that build it (``tunelab.models.methods``, named as ``module:function`` and
imported only when a model is built, like the stage recipes). Config validation, the trainers, saving and
inference read this table instead of comparing ``finetuning_type`` strings. Each method declares its own config
keys as a pydantic model (like each stage, see ``stage_registry``): validated only when that method is chosen,
an error when set for another. This module imports nothing of tunelab and nothing heavy, so the config can ask
it before torch is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

ADAPTER, PROMPT, WEIGHTS = "adapter", "prompt", "weights"


class NoKeys(BaseModel):
    """A method without keys of its own."""

    model_config = ConfigDict(extra="forbid")


class AdditionalTargetKeys(NoKeys):
    additional_target: str | None = Field(
        None, description="Comma-separated extra modules trained in full next to the adapter (e.g. embed_tokens).")


class LowRankKeys(AdditionalTargetKeys):
    """What LoRA and AdaLoRA share."""

    lora_rank: int = Field(8, gt=0, description="LoRA rank r.")
    lora_alpha: int | None = Field(None, gt=0, description="LoRA alpha; default 2 x lora_rank.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    lora_target: str = Field("all", description="Comma-separated module names to adapt, or 'all' for every linear "
                             "layer.")


class LoraKeys(LowRankKeys):
    use_dora: bool = Field(False, description="LoRA: weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="LoRA: rank-stabilised scaling alpha / sqrt(r).")
    pissa_init: bool = Field(False, description="LoRA: initialise from the principal singular vectors (PiSSA); the "
                             "saved adapter is converted to plain LoRA so it applies to the original base.")
    pissa_iter: int = Field(16, ge=-1, description="PiSSA: iterations of fast SVD (-1 = exact SVD).")
    loraplus_lr_ratio: float | None = Field(None, gt=0, description="LoRA+: learning rate of the B matrices = "
                                            "learning_rate x this ratio (e.g. 16).")
    loraplus_lr_embedding: float = Field(1e-6, gt=0, description="LoRA+: learning rate of LoRA on embeddings.")


class AdaLoraKeys(LowRankKeys):
    adalora_init_r: int = Field(12, gt=0, description="AdaLoRA: initial rank of every adapted matrix.")
    adalora_target_r: int = Field(8, gt=0, description="AdaLoRA: average rank the budget shrinks to.")
    adalora_tinit: int = Field(0, ge=0, description="AdaLoRA: steps of warmup before ranks are pruned.")
    adalora_tfinal: int = Field(0, ge=0, description="AdaLoRA: final steps with the ranks fixed.")
    adalora_delta_t: int = Field(1, gt=0, description="AdaLoRA: steps between two budget re-allocations.")


class PromptLearningKeys(NoKeys):
    """What every virtual-token method shares."""

    num_virtual_tokens: int = Field(16, gt=0, description="Prompt learning (prefix, ptuning, prompt): virtual "
                                    "tokens.")
    pre_seq_len: int | None = Field(None, gt=0, description="ChatGLM's P-Tuning v2 name for num_virtual_tokens.")

    @model_validator(mode="after")
    def _one_length(self) -> PromptLearningKeys:
        if self.pre_seq_len and "num_virtual_tokens" in self.model_fields_set and \
                self.pre_seq_len != self.num_virtual_tokens:
            raise ValueError(f"pre_seq_len {self.pre_seq_len} and num_virtual_tokens {self.num_virtual_tokens} are "
                             "the same setting; give one")
        return self

    @property
    def virtual_tokens(self) -> int:
        """The number of virtual tokens: pre_seq_len (ChatGLM's name) or num_virtual_tokens."""
        return self.pre_seq_len or self.num_virtual_tokens


_ENCODER_SIZE = Field(None, gt=0, description="Hidden size of the prefix projection or the P-tuning prompt "
                      "encoder (default: the model's).")


class PrefixKeys(PromptLearningKeys):
    prefix_projection: bool = Field(False, description="Prefix tuning: produce the prefixes through a two-layer MLP "
                                    "(ChatGLM's prefix_projection) instead of training them directly.")
    prompt_encoder_hidden_size: int | None = _ENCODER_SIZE


class PtuningKeys(PromptLearningKeys):
    prompt_encoder_hidden_size: int | None = _ENCODER_SIZE


class PromptTuningKeys(PromptLearningKeys):
    prompt_tuning_init_text: str | None = Field(None, description="Prompt tuning: initialise the virtual tokens "
                                                "from this text's embeddings (default: random).")


class FreezeKeys(NoKeys):
    freeze_trainable_layers: int = Field(2, description="Freeze tuning: train the last N layers (negative: the first "
                                         "|N| layers).")
    freeze_trainable_modules: str = Field("all", description="Freeze tuning: comma-separated module names inside "
                                          "the trained layers, or 'all'.")
    freeze_extra_modules: str | None = Field(None, description="Freeze tuning: extra top-level modules to train "
                                             "(e.g. embed_tokens,lm_head).")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    kind: str  # ADAPTER (PEFT weights beside the base), PROMPT (PEFT virtual tokens), WEIGHTS (the base's own)
    build: str  # "module:function": function(model, cfg) -> PEFT config (ADAPTER/PROMPT) or the model (WEIGHTS)
    keys: type[BaseModel] = NoKeys  # config keys that only this method reads (set for another method: an error)
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
           ADAPTER, f"{_BUILD}:lora_config", LoraKeys, can_merge=True, prepare=f"{_BUILD}:prepare_lora",
           finish=f"{_BUILD}:finish_lora", peft_type="LORA"),
    Method("adalora", "AdaLoRA: LoRA whose rank budget is re-allocated between layers during training",
           ADAPTER, f"{_BUILD}:adalora_config", AdaLoraKeys, can_merge=True, prepare=f"{_BUILD}:prepare_adalora",
           peft_type="ADALORA"),
    Method("ia3", "IA3: learned scaling vectors on attention keys/values and the feed-forward input",
           ADAPTER, f"{_BUILD}:ia3_config", AdditionalTargetKeys, can_merge=True, peft_type="IA3"),
    Method("prefix", "P-Tuning v2 / prefix tuning: trained key/value prefixes in every layer (pre_seq_len)",
           PROMPT, f"{_BUILD}:prefix_config", PrefixKeys, aliases=("ptuning_v2", "prefix_tuning", "p_tuning_v2"),
           peft_type="PREFIX_TUNING"),
    Method("ptuning", "P-tuning: virtual tokens produced by a small prompt encoder (MLP)",
           PROMPT, f"{_BUILD}:ptuning_config", PtuningKeys, aliases=("p_tuning",), peft_type="P_TUNING"),
    Method("prompt", "prompt tuning: trained virtual token embeddings, random or from a text",
           PROMPT, f"{_BUILD}:prompt_tuning_config", PromptTuningKeys, aliases=("prompt_tuning",),
           peft_type="PROMPT_TUNING"),
    Method("bitfit", "BitFit: only the bias terms of the base train", WEIGHTS, f"{_BUILD}:select_biases",
           quantizable=False, can_merge=True),
    Method("freeze", "freeze tuning: the last (or first) N layers train, the rest is frozen", WEIGHTS,
           f"{_BUILD}:select_layers", FreezeKeys, quantizable=False, can_merge=True),
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
UNREAD_ALLOWED = frozenset(LowRankKeys.model_fields)


def method_keys() -> dict[str, tuple[Any, list[str]]]:
    """Every method's own key: (its pydantic field, the methods that declare it)."""
    keys: dict[str, tuple[Any, list[str]]] = {}
    for entry in METHODS.values():
        for key, info in entry.keys.model_fields.items():
            keys.setdefault(key, (info, []))[1].append(entry.name)
    return keys


def method_of_adapter(peft_type: str) -> Method | None:
    """The method that wrote an adapter, from its adapter_config.json's peft_type."""
    return next((m for m in METHODS.values() if m.peft_type == peft_type), None)
