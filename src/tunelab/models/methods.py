"""How each fine-tuning method of ``method_registry`` is built on a loaded model.

PEFT methods (LoRA and its variants, AdaLoRA, IA3, prefix / P-tuning / prompt tuning) are a PEFT config that
``attach`` wraps around the model, or that a TRL trainer wraps itself (so its reference model is the base with
the adapter disabled). Methods that train the base's own weights (full, freeze, BitFit) choose which
parameters train. ``prepare_trainer`` adds what a method needs from the trainer (LoRA+'s optimizer, AdaLoRA's
budget update after every optimizer step).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunelab.config import TrainConfig
from tunelab.errors import ConfigError
from tunelab.method_registry import method


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _task_type(cfg: TrainConfig) -> str:
    return "SEQ_CLS" if cfg.stage == "rm" else "CAUSAL_LM"  # SEQ_CLS saves the score head with the adapter


def _is_linear(module: Any, name: str) -> bool:
    """A linear layer an adapter may wrap: not the output layer or a score head."""
    import torch

    is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
    return is_linear and "lm_head" not in name and "score" not in name.split(".")[-1:]


def _linear_names(model: Any) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module, name)}


# Where a vision-language model keeps its vision encoder and its projector (Qwen2-VL: model.visual, visual.merger;
# LLaVA-style models: vision_tower, multi_modal_projector).
VISION_TOWER = re.compile(r"(^|\.)(visual|vision_tower|vision_model)(\.|$)")
PROJECTOR = re.compile(r"(^|\.)(merger|multi_modal_projector)(\.|$)")


def target_modules(model: Any, lora_target: str, vision_frozen: bool = True) -> str | list[str]:
    """``all`` -> every linear layer (of the language model only, in a vision-language model whose vision tower
    stays frozen); a regular expression (any of ``^$*+?[](|\\``) -> PEFT matches it against the full module
    names; else comma-separated module names, each checked against the model."""
    target = lora_target.strip()
    if target == "all":
        if vision_frozen and any(VISION_TOWER.search(name) for name, _ in model.named_modules()):
            language = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                        if _is_linear(module, name) and not VISION_TOWER.search(name)}
            return rf"^(?!.*(?:visual|vision_tower|vision_model)\.).*\.({'|'.join(sorted(language))})$"
        return "all-linear"
    if re.search(r"[\^$*+?\[\]()|\\]", target):
        pattern = re.compile(target)
        if not any(pattern.fullmatch(name) for name, _ in model.named_modules()):
            raise ConfigError(f"lora_target: the regular expression {target!r} matches no module name (names look "
                              f"like {next(n for n, _ in model.named_modules() if n.count('.') >= 3)!r})")
        return target
    targets = _split(target)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(f"lora_target: the model has no module named {missing}; linear layers here include "
                          f"{sorted(_linear_names(model))}")
    return targets


# --- PEFT configs ---------------------------------------------------------------------------------------

def lora_config(model: Any, cfg: TrainConfig) -> Any:
    """LoRA and its switches: DoRA, rsLoRA, PiSSA initialisation."""
    from peft import LoraConfig

    init: Any = True
    if cfg.pissa_init:
        init = "pissa" if cfg.pissa_iter == -1 else f"pissa_niter_{cfg.pissa_iter}"
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank, lora_dropout=cfg.lora_dropout,
                      target_modules=target_modules(model, cfg.lora_target, cfg.freeze_vision_tower),
                      modules_to_save=_split(cfg.additional_target) or None, use_dora=cfg.use_dora,
                      use_rslora=cfg.use_rslora, init_lora_weights=init, task_type=_task_type(cfg))


def adalora_config(model: Any, cfg: TrainConfig) -> Any:
    """AdaLoRA; total_step is the run's step count, set by ``prepare_trainer`` once the trainer knows it."""
    from peft import AdaLoraConfig

    return AdaLoraConfig(init_r=cfg.adalora_init_r, target_r=cfg.adalora_target_r, tinit=cfg.adalora_tinit,
                         tfinal=cfg.adalora_tfinal, deltaT=cfg.adalora_delta_t,
                         total_step=max(cfg.max_steps, cfg.adalora_tinit + cfg.adalora_tfinal + 1),
                         lora_alpha=cfg.lora_alpha or 2 * cfg.adalora_init_r, lora_dropout=cfg.lora_dropout,
                         target_modules=target_modules(model, cfg.lora_target, cfg.freeze_vision_tower),
                         modules_to_save=_split(cfg.additional_target) or None, task_type=_task_type(cfg))


def ia3_config(model: Any, cfg: TrainConfig) -> Any:
    """IA3 on PEFT's default modules for the architecture (keys, values and the feed-forward input)."""
    from peft import IA3Config

    return IA3Config(task_type=_task_type(cfg), modules_to_save=_split(cfg.additional_target) or None)


def _hidden_size(model: Any, cfg: TrainConfig) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return cfg.prompt_encoder_hidden_size or config.hidden_size


def prefix_config(model: Any, cfg: TrainConfig) -> Any:
    """P-Tuning v2 / prefix tuning: a trained key/value prefix of pre_seq_len positions in every layer."""
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(num_virtual_tokens=cfg.virtual_tokens, prefix_projection=cfg.prefix_projection,
                              encoder_hidden_size=_hidden_size(model, cfg), task_type=_task_type(cfg))


def ptuning_config(model: Any, cfg: TrainConfig) -> Any:
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(num_virtual_tokens=cfg.virtual_tokens, encoder_hidden_size=_hidden_size(model, cfg),
                               task_type=_task_type(cfg))


def prompt_tuning_config(model: Any, cfg: TrainConfig) -> Any:
    from peft import PromptTuningConfig

    from tunelab.models.sources import resolve_model_path

    text = cfg.prompt_tuning_init_text
    return PromptTuningConfig(num_virtual_tokens=cfg.virtual_tokens, prompt_tuning_init="TEXT" if text else "RANDOM",
                              prompt_tuning_init_text=text,
                              tokenizer_name_or_path=resolve_model_path(cfg.model_name_or_path) if text else None,
                              task_type=_task_type(cfg))


# --- methods that train the base's own weights ----------------------------------------------------------

def select_all(model: Any, cfg: TrainConfig) -> Any:
    for param in model.parameters():
        param.requires_grad = True
    return model


def select_biases(model: Any, cfg: TrainConfig) -> Any:
    """BitFit: the bias terms only (plus a reward model's score head, which must learn)."""
    trained = 0
    for name, param in model.named_parameters():
        param.requires_grad = name.endswith(".bias") or (cfg.stage == "rm" and name.startswith("score."))
        trained += param.requires_grad and name.endswith(".bias")
    if not trained:
        raise ConfigError(f"finetuning_type bitfit: {cfg.model_name_or_path} has no bias parameters to train "
                          "(Llama-style models have none; Qwen2's attention has); choose another method")
    return model


def select_layers(model: Any, cfg: TrainConfig) -> Any:
    """Freeze tuning: train only the last (or first) N decoder layers, optionally only some modules inside them."""
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


# --- attaching, and what the trainer needs ---------------------------------------------------------------

def peft_config(model: Any, cfg: TrainConfig) -> Any | None:
    """A new adapter's PEFT config (for a TRL trainer to wrap), or None for methods on the base's weights."""
    chosen = method(cfg.finetuning_type)
    return chosen.builder()(model, cfg) if chosen.is_peft else None


def attach(model: Any, cfg: TrainConfig) -> Any:
    """The model ready to train: an adapter continued (adapter_name_or_path) or created, or the base's own
    weights selected. A quantized base is first prepared for training (fp32 norms, input gradients)."""
    chosen = method(cfg.finetuning_type)
    if not chosen.is_peft:
        return freeze_vision(chosen.builder()(model, cfg), cfg)
    from peft import PeftModel, get_peft_model

    if getattr(model, "is_quantized", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.adapter_name_or_path:
        return PeftModel.from_pretrained(model, cfg.adapter_name_or_path, is_trainable=True)
    return get_peft_model(model, chosen.builder()(model, cfg))


def freeze_vision(model: Any, cfg: TrainConfig) -> Any:
    """A vision-language model's vision encoder and projector kept as they are, as the keys say
    (freeze_vision_tower, freeze_multi_modal_projector; train_mm_proj_only trains the projector alone); a text
    model has neither and is left alone."""
    for name, parameter in model.named_parameters():
        projector = bool(PROJECTOR.search(name))  # Qwen2-VL's merger sits inside its visual module
        tower = bool(VISION_TOWER.search(name)) and not projector
        if cfg.train_mm_proj_only:
            parameter.requires_grad_(projector)
        elif (tower and cfg.freeze_vision_tower) or (projector and cfg.freeze_multi_modal_projector):
            parameter.requires_grad_(False)
    return model


def prepare_trainer(trainer: Any, cfg: TrainConfig, total_steps: Callable[[], int | None]) -> None:
    """What the method needs from the trainer before training starts (see ``Method.prepare``); ``total_steps``
    counts the run's optimizer steps when asked (it builds a data loader)."""
    prepare = method(cfg.finetuning_type).hook("prepare")
    if prepare is not None:
        prepare(trainer, cfg, total_steps)


def finish(model: Any, cfg: TrainConfig) -> None:
    """What the method does to the saved output (see ``Method.finish``)."""
    done = method(cfg.finetuning_type).hook("finish")
    if done is not None:
        done(model, cfg)


PISSA_INIT_DIR = "pissa_init"  # in the run folder: the adapter as PiSSA initialised it, for the conversion


def prepare_lora(trainer: Any, cfg: TrainConfig, total_steps: Callable[[], int | None]) -> None:
    """LoRA+: a higher learning rate for the B matrices (its own optimizer). PiSSA: keep the adapter as
    initialised, so that the final one can be converted to plain LoRA on the unchanged base."""
    if cfg.loraplus_lr_ratio:
        import torch
        from peft.optimizers import create_loraplus_optimizer

        trainer.optimizer = create_loraplus_optimizer(
            trainer.model, torch.optim.AdamW, lr=cfg.learning_rate, loraplus_lr_ratio=cfg.loraplus_lr_ratio,
            loraplus_lr_embedding=cfg.loraplus_lr_embedding, weight_decay=cfg.weight_decay)
    if cfg.pissa_init and trainer.args.should_save:
        trainer.model.save_pretrained(str(Path(cfg.output_dir) / PISSA_INIT_DIR))


def finish_lora(model: Any, cfg: TrainConfig) -> None:
    """PiSSA moved the base's principal components into the adapter: the saved adapter becomes the plain LoRA
    difference (rank 2r) from the original base, so it loads on the base as it is on disk."""
    if cfg.pissa_init:
        model.save_pretrained(cfg.output_dir,
                              path_initial_model_for_weight_conversion=str(Path(cfg.output_dir) / PISSA_INIT_DIR))


def prepare_adalora(trainer: Any, cfg: TrainConfig, total_steps: Callable[[], int | None]) -> None:
    trainer.add_callback(AdaLoraBudget(trainer.model, total_steps()))


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA prunes and re-allocates ranks from the gradients' sensitivity: its update runs after each optimizer
    step, before the gradients are cleared (which transformers does right after this event)."""

    def __init__(self, model: Any, total_steps: int | None) -> None:
        self.model = model
        config = next(iter(model.peft_config.values()))
        if total_steps:
            config.total_step = total_steps  # the rank allocator reads it from this same object
        if config.tinit + config.tfinal >= config.total_step:
            raise ConfigError(f"adalora_tinit ({config.tinit}) + adalora_tfinal ({config.tfinal}) must stay below "
                              f"the run's {config.total_step} optimizer steps")

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.model.base_model.update_and_allocate(state.global_step)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
