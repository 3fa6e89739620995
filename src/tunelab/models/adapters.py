"""Fine-tuning methods by name: which parameters train (LoRA via peft, full, or freeze)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tunelab.config import TrainConfig
from tunelab.errors import ConfigError


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def apply_lora(model: Any, cfg: TrainConfig) -> Any:
    from peft import PeftModel, get_peft_model

    if cfg.adapter_name_or_path:
        return PeftModel.from_pretrained(model, cfg.adapter_name_or_path, is_trainable=True)
    return get_peft_model(model, lora_config(model, cfg))


def lora_config(model: Any, cfg: TrainConfig) -> Any:
    """The peft LoraConfig of the lora_* keys, its target modules checked against the model."""
    from peft import LoraConfig

    targets = "all-linear" if cfg.lora_target.strip() == "all" else _split(cfg.lora_target)
    if isinstance(targets, list):
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in targets if t not in names]
        if missing:
            raise ConfigError(f"lora_target: the model has no module named {missing}; "
                              f"linear layers here include {sorted(_linear_names(model))}")
    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        modules_to_save=_split(cfg.additional_target) or None,
        task_type="SEQ_CLS" if cfg.stage == "rm" else "CAUSAL_LM",  # SEQ_CLS saves the score head with it
    )


def _linear_names(model: Any) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and "lm_head" not in name}


def apply_freeze(model: Any, cfg: TrainConfig) -> Any:
    """Train only the last (or first) N decoder layers, optionally only some modules inside them."""
    num_layers = getattr(model.config, "num_hidden_layers", None)
    if not num_layers:
        raise ConfigError("freeze tuning needs a model whose config has num_hidden_layers")
    count = cfg.freeze_trainable_layers
    if count == 0 or abs(count) > num_layers:
        raise ConfigError(f"freeze_trainable_layers must be between -{num_layers} and {num_layers}, not 0; "
                          f"got {count}")
    layers = range(num_layers - count, num_layers) if count > 0 else range(-count)
    modules = _split(cfg.freeze_trainable_modules)
    extra = _split(cfg.freeze_extra_modules)
    layer_pattern = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
    trained = 0
    for name, param in model.named_parameters():
        match = layer_pattern.search(f".{name}")
        in_layer = match is not None and int(match.group(1)) in layers
        in_module = "all" in modules or any(f".{m}." in f".{name}" for m in modules)
        param.requires_grad = (in_layer and in_module) or any(f".{m}." in f".{name}" for m in extra)
        trained += param.requires_grad
    if not trained:
        raise ConfigError(f"freeze tuning selected no parameters (layers {list(layers)}, modules {modules})")
    return model


def apply_full(model: Any, cfg: TrainConfig) -> Any:
    for param in model.parameters():
        param.requires_grad = True
    return model


FINETUNING_METHODS: dict[str, Callable[[Any, TrainConfig], Any]] = {
    "lora": apply_lora,
    "freeze": apply_freeze,
    "full": apply_full,
}


def apply_finetuning(model: Any, cfg: TrainConfig) -> Any:
    return FINETUNING_METHODS[cfg.finetuning_type](model, cfg)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
