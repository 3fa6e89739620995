"""The one configuration schema: every key with its type, default and help, plus YAML loading.

Key names follow LLaMA-Factory's (and Hugging Face ``TrainingArguments``') where they mean the same,
so an existing LLaMA-Factory SFT YAML runs here with at most the model path changed.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.errors import ConfigError

EMBEDDED_MODEL = "stories260K"  # the real small model that ships in tunelab/assets (see models/sources.py)


class TrainConfig(BaseModel):
    """Everything a `tunelab train` run reads. Unknown keys are errors."""

    # Keys of the stages (declared in each stage's module, see stage_registry.py) are the only extras: the
    # "before" validator checks them against the selected stage and fills that stage's defaults.
    model_config = ConfigDict(extra="allow", validate_assignment=True, coerce_numbers_to_str=True)

    # --- model -------------------------------------------------------------------------------
    model_name_or_path: str = Field(
        EMBEDDED_MODEL,
        description="Hugging Face model id or local folder. 'stories260K' is the embedded offline model.",
    )
    adapter_name_or_path: str | None = Field(None, description="PEFT adapter to load on top of the model.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (ChatGLM, etc.).")
    model_revision: str = Field("main", description="Branch, tag or commit of a hub model.")
    cache_dir: str | None = Field(None, description="Where hub downloads are cached.")
    flash_attn: Literal["auto", "disabled", "sdpa", "fa2", "eager"] = Field(
        "auto", description="Attention implementation: auto (transformers' choice), sdpa, fa2, eager."
    )
    # --- method ------------------------------------------------------------------------------
    stage: str = Field("sft", description="Training stage (`tunelab config` lists them): sft, pt, rm, dpo, ...")
    do_train: bool = Field(True, description="Run training (tunelab train requires true).")
    finetuning_type: str = Field(
        "lora", description="How the model trains: lora (use_dora, use_rslora, pissa_init, loraplus_lr_ratio), "
        "adalora, ia3, prefix (P-Tuning v2; alias ptuning_v2), ptuning, prompt, bitfit, freeze or full.")
    lora_rank: int = Field(8, gt=0, description="LoRA rank r.")
    lora_alpha: int | None = Field(None, gt=0, description="LoRA alpha; default 2 x lora_rank.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    lora_target: str = Field(
        "all", description="Comma-separated module names to adapt, or 'all' for every linear layer."
    )
    additional_target: str | None = Field(
        None, description="Comma-separated extra modules trained in full next to LoRA (e.g. embed_tokens)."
    )
    use_dora: bool = Field(False, description="LoRA: weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="LoRA: rank-stabilised scaling alpha / sqrt(r).")
    pissa_init: bool = Field(False, description="LoRA: initialise from the principal singular vectors (PiSSA); the "
                             "saved adapter is converted to plain LoRA so it applies to the original base.")
    pissa_iter: int = Field(16, ge=-1, description="PiSSA: iterations of fast SVD (-1 = exact SVD).")
    loraplus_lr_ratio: float | None = Field(None, gt=0, description="LoRA+: learning rate of the B matrices = "
                                            "learning_rate x this ratio (e.g. 16).")
    loraplus_lr_embedding: float = Field(1e-6, gt=0, description="LoRA+: learning rate of LoRA on embeddings.")
    adalora_init_r: int = Field(12, gt=0, description="AdaLoRA: initial rank of every adapted matrix.")
    adalora_target_r: int = Field(8, gt=0, description="AdaLoRA: average rank the budget shrinks to.")
    adalora_tinit: int = Field(0, ge=0, description="AdaLoRA: steps of warmup before ranks are pruned.")
    adalora_tfinal: int = Field(0, ge=0, description="AdaLoRA: final steps with the ranks fixed.")
    adalora_delta_t: int = Field(1, gt=0, description="AdaLoRA: steps between two budget re-allocations.")
    num_virtual_tokens: int = Field(16, gt=0, description="Prompt learning (prefix, ptuning, prompt): virtual tokens.")
    pre_seq_len: int | None = Field(None, gt=0, description="ChatGLM's P-Tuning v2 name for num_virtual_tokens.")
    prefix_projection: bool = Field(False, description="Prefix tuning: produce the prefixes through a two-layer "
                                    "MLP (ChatGLM's prefix_projection) instead of training them directly.")
    prompt_encoder_hidden_size: int | None = Field(None, gt=0, description="Hidden size of the prefix projection or "
                                                   "the P-tuning prompt encoder (default: the model's).")
    prompt_tuning_init_text: str | None = Field(None, description="Prompt tuning: initialise the virtual tokens from "
                                                "this text's embeddings (default: random).")
    quantization_bit: Literal[4, 8] | None = Field(None, description="Load the base in 4 or 8 bits (bitsandbytes) "
                                                   "and train an adapter on it (QLoRA).")
    quantization_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quantization: bool = Field(True, description="4-bit: quantize the quantization constants too.")
    quantization_compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype of the 4-bit matmuls (auto: bfloat16 with bf16, float16 with fp16, else float32).")
    freeze_trainable_layers: int = Field(
        2, description="Freeze tuning: train the last N layers (negative: the first |N| layers)."
    )
    freeze_trainable_modules: str = Field(
        "all", description="Freeze tuning: comma-separated module names inside the trained layers, or 'all'."
    )
    freeze_extra_modules: str | None = Field(
        None, description="Freeze tuning: extra top-level modules to train (e.g. embed_tokens,lm_head)."
    )
    # --- dataset -----------------------------------------------------------------------------
    dataset: str | list[str] | None = Field(
        None, description="Comma-separated dataset names from dataset_info.json, or file paths."
    )
    eval_dataset: str | list[str] | None = Field(None, description="Datasets for evaluation.")
    dataset_dir: str = Field("data", description="Folder holding dataset_info.json and the data files.")
    template: str | None = Field(
        None, description="Chat template: none = the tokenizer's own; or alpaca, chatml, qwen, llama3, default."
    )
    cutoff_len: int = Field(2048, gt=0, description="Maximum tokens per sample after templating.")
    max_samples: int | None = Field(None, gt=0, description="Use at most this many records per dataset.")
    val_size: float = Field(0.0, ge=0.0, description="Held-out fraction (<1) or count (>=1) for evaluation.")
    train_on_prompt: bool = Field(False, description="Also train on prompt tokens (loss on every token).")
    mask_history: bool = Field(False, description="Train only on the last assistant turn.")
    cutoff_policy: Literal["truncate", "drop"] = Field(
        "truncate", description="A sample longer than cutoff_len: truncate it, or drop it (counted either way)."
    )
    skip_invalid: bool = Field(
        False, description="Skip unusable records (counted and reported with examples) instead of stopping."
    )
    dedup: bool = Field(False, description="Drop exact duplicate records (counted and reported).")
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = Field(
        "concat", description="Combine several datasets: concat, or interleave until the first (under) / "
        "last (over) one runs out."
    )
    interleave_probs: str | list[float] | None = Field(
        None, description="Sampling ratio per dataset for interleave_*, e.g. '0.7,0.3'."
    )
    packing: bool = Field(False, description="Pack several samples into one sequence of cutoff_len.")
    overwrite_cache: bool = Field(False, description="Accepted for LLaMA-Factory compatibility (no cache).")
    preprocessing_num_workers: int | None = Field(
        None, description="Processes for TRL's dataset packing (tunelab tokenizes in one process)."
    )
    # --- output ------------------------------------------------------------------------------
    output_dir: str = Field("outputs/run", description="Run directory: config, metrics, checkpoints, model.")
    overwrite_output_dir: bool = Field(False, description="Allow writing into a non-empty output_dir.")
    logging_steps: int = Field(10, gt=0, description="Log (console and metrics.jsonl) every N steps.")
    save_steps: int = Field(500, gt=0, description="Save a checkpoint every N steps.")
    save_total_limit: int | None = Field(None, description="Keep at most this many checkpoints.")
    save_only_model: bool = Field(False, description="Checkpoints without optimizer state (cannot resume).")
    plot_loss: bool = Field(True, description="Write a loss-curve PNG at the end.")
    report_to: str | list[str] = Field("none", description="none, tensorboard, wandb, ...")
    # --- train -------------------------------------------------------------------------------
    per_device_train_batch_size: int = Field(1, gt=0, description="Batch size per device.")
    per_device_eval_batch_size: int = Field(1, gt=0, description="Eval batch size per device.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Steps to accumulate before an update.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, description="Gradient clipping norm.")
    num_train_epochs: float = Field(3.0, gt=0, description="Epochs to train.")
    max_steps: int = Field(-1, description="If > 0, stop after this many optimizer steps.")
    lr_scheduler_type: str = Field("cosine", description="linear, cosine, constant, constant_with_warmup, ...")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Fraction of steps for linear warmup.")
    warmup_steps: int = Field(0, ge=0, description="Warmup steps (overrides warmup_ratio when > 0).")
    optim: str = Field("adamw_torch_fused", description="Optimizer name as in transformers (fused AdamW by default).")
    bf16: bool = Field(False, description="Train in bfloat16 mixed precision.")
    fp16: bool = Field(False, description="Train in float16 mixed precision.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    seed: int = Field(42, description="Random seed (data split, shuffling, init).")
    dataloader_num_workers: int = Field(0, ge=0, description="Data loader worker processes.")
    ddp_timeout: int = Field(1800, description="Seconds before a distributed collective times out.")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config path (under accelerate/torchrun).")
    fsdp: str | None = Field(None, description="FSDP options, e.g. 'full_shard auto_wrap'.")
    fsdp_config: str | dict[str, Any] | None = Field(None, description="FSDP config dict or JSON path.")
    resume_from_checkpoint: str | None = Field(
        None, description="Checkpoint folder to resume from, or 'last' for the newest in output_dir."
    )
    # --- eval --------------------------------------------------------------------------------
    eval_strategy: Literal["no", "steps", "epoch"] = Field("no", description="When to evaluate.")
    eval_steps: int | None = Field(None, description="Evaluate every N steps (eval_strategy: steps).")

    @model_validator(mode="before")
    @classmethod
    def _stage_keys(cls, values: Any) -> Any:
        """A stage's own keys are validated only when that stage runs; set for another stage, they are an
        error that says which stages they belong to (the YAML stays flat, as LLaMA-Factory's)."""
        if not isinstance(values, dict):
            return values
        from tunelab.stage_registry import all_stages, stage_keys

        declared = stage_keys()
        unknown = [key for key in values if key not in cls.model_fields and key not in declared]
        if unknown:
            known = [*cls.model_fields, *declared]
            raise ValueError("; ".join(f"unknown key '{key}'{_suggest(key, known)}" for key in unknown))
        name = values.get("stage", "sft")
        stage = all_stages().get(name)
        if stage is None:
            return {key: value for key, value in values.items() if key not in declared}  # the stage field says why
        foreign = [key for key in values if key in declared and key not in stage.keys.model_fields
                   and values[key] != declared[key][0].default]
        if foreign:
            raise ValueError("; ".join(f"`{key}` applies to stage{'s' if len(declared[key][1]) > 1 else ''} "
                                       f"{', '.join(declared[key][1])}; this run is `{name}`" for key in foreign))
        own = {**stage.presets, **{key: values[key] for key in values if key in stage.keys.model_fields}}
        try:
            checked = stage.keys(**own).model_dump(mode="json")
        except ValidationError as error:
            raise ValueError("; ".join(f"key '{'.'.join(map(str, item['loc']))}': {item['msg']} (got "
                                       f"{item.get('input')!r})" for item in error.errors())) from None
        return {**{key: value for key, value in values.items() if key not in declared}, **checked}

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        from tunelab.stage_registry import stage_names

        if value not in stage_names():
            raise ValueError(f"unknown stage '{value}'{_suggest(value, stage_names())} (stages: "
                             f"{', '.join(stage_names())})")
        return value

    @field_validator("finetuning_type")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from tunelab.method_registry import ALIASES, canonical_name, method_names

        name = canonical_name(value)
        if name == "qlora":
            raise ValueError("finetuning_type 'qlora' is LoRA on a quantized base: set finetuning_type: lora and "
                             "quantization_bit: 4")
        if name not in method_names():
            raise ValueError(f"unknown finetuning_type '{value}'{_suggest(value, [*method_names(), *ALIASES])} "
                             f"(methods: {', '.join(method_names())})")
        return name

    @property
    def row_kind(self) -> str:
        """The kind of canonical row the stage trains on (sft, pt, preference, kto, rl)."""
        from tunelab.stage_registry import all_stages

        return all_stages()[self.stage].kind

    @field_validator("model_name_or_path", "adapter_name_or_path", "output_dir", "dataset_dir", "cache_dir",
                     mode="before")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        """``~/runs/x`` means the home folder for every library underneath, not only for tunelab's checks."""
        return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value

    @field_validator("dataset", "eval_dataset", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("interleave_probs", mode="before")
    @classmethod
    def _split_probs(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return [float(part) for part in value.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"expected comma-separated numbers, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _check_contradictions(self) -> TrainConfig:
        problems = []
        if self.bf16 and self.fp16:
            problems.append("bf16 and fp16 are both true; choose one precision")
        if self.train_on_prompt and self.mask_history:
            problems.append("train_on_prompt and mask_history are both true; training on the prompt "
                            "contradicts training only on the last turn")
        if self.stage == "pt" and (self.train_on_prompt or self.mask_history):
            problems.append("stage pt trains on every token; train_on_prompt/mask_history apply to sft only")
        if self.stage != "sft" and self.stage != "pt" and (self.train_on_prompt or self.mask_history):
            problems.append(f"train_on_prompt/mask_history apply to stage sft; stage {self.stage} trains on the "
                            "answers of its rows")
        if self.eval_strategy != "no" and not self.val_size and not self.eval_dataset:
            problems.append(f"eval_strategy is '{self.eval_strategy}' but there is nothing to evaluate "
                            "on; set val_size or eval_dataset")
        if self.eval_strategy == "steps" and self.eval_steps is None:
            problems.append("eval_strategy is 'steps' but eval_steps is not set")
        if self.save_only_model and self.resume_from_checkpoint:
            problems.append("save_only_model checkpoints hold no optimizer state; they cannot be resumed")
        if self.interleave_probs is not None:
            if self.mix_strategy == "concat":
                problems.append("interleave_probs is set but mix_strategy is 'concat'; use interleave_under or "
                                "interleave_over")
            elif self.dataset and len(self.interleave_probs) != len(self.dataset):
                problems.append(f"interleave_probs has {len(self.interleave_probs)} values for "
                                f"{len(self.dataset)} datasets")
            elif any(p < 0 for p in self.interleave_probs) or not sum(self.interleave_probs):
                problems.append("interleave_probs must be non-negative and not all zero")
        problems += self._method_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _method_problems(self) -> list[str]:
        """Settings that contradict the fine-tuning method, found before any model loads."""
        from tunelab.method_registry import keys_of_other_methods, method, method_names

        chosen = method(self.finetuning_type)
        problems = [f"`{key}` applies to finetuning_type {', '.join(names)}; this run is `{chosen.name}`"
                    for key, names in keys_of_other_methods(chosen.name).items()
                    if key in self.model_fields_set and getattr(self, key) != type(self).model_fields[key].default]
        if self.packing and chosen.is_prompt_learning:
            problems.append(f"packing with finetuning_type {chosen.name}: its virtual tokens would be shared by every "
                            "sample packed into a sequence, and attention would cross samples; turn packing off")
        if self.quantization_bit and not chosen.quantizable:
            problems.append(f"quantization_bit {self.quantization_bit} with finetuning_type {chosen.name}: the "
                            "quantized base weights cannot train; use an adapter ("
                            f"{', '.join(method_names(lambda m: m.is_peft and m.quantizable))}) on the quantized "
                            "base, or drop quantization_bit")
        if self.quantization_bit and self.pissa_init:
            problems.append("pissa_init with quantization_bit: PiSSA rewrites the base weights from their singular "
                            "vectors, which a quantized base cannot hold; train PiSSA in 16/32 bits")
        if chosen.name == "prefix" and self.prefix_projection and (self.resume_from_checkpoint or
                                                                  self.adapter_name_or_path):
            problems.append("prefix_projection cannot continue training: PEFT saves a projected prefix as the "
                            "computed prefix itself, without its projection MLP; retrain, or use prefix tuning "
                            "without prefix_projection to resume")
        if self.pre_seq_len and "num_virtual_tokens" in self.model_fields_set and \
                self.pre_seq_len != self.num_virtual_tokens:
            problems.append(f"pre_seq_len {self.pre_seq_len} and num_virtual_tokens {self.num_virtual_tokens} are "
                            "the same setting; give one")
        return problems

    @property
    def virtual_tokens(self) -> int:
        """Prompt learning's number of virtual tokens: pre_seq_len (ChatGLM's name) or num_virtual_tokens."""
        return self.pre_seq_len or self.num_virtual_tokens

    @property
    def loss_policy(self) -> str:
        """Which tokens carry loss: 'all' (train_on_prompt), 'last' (mask_history) or 'assistant'."""
        if self.train_on_prompt:
            return "all"
        return "last" if self.mask_history else "assistant"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# Keys a resumed run may set differently from the run it continues: they change how long it trains or
# what it reports, not what the saved state means. Any other difference makes a resume refuse.
RESUME_MAY_CHANGE = frozenset({
    "max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps", "eval_steps",
    "eval_strategy", "per_device_eval_batch_size", "output_dir", "overwrite_output_dir", "resume_from_checkpoint",
    "report_to", "plot_loss", "dataloader_num_workers", "ddp_timeout", "preprocessing_num_workers",
    "overwrite_cache", "cache_dir", "do_train",
})


def _split_flag_pairs(args: list[str]) -> list[str]:
    """Hugging Face-style ``--key value`` and ``--key=value`` become ``key=value``."""
    pairs, index = [], 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("--") and "=" not in arg:
            if index + 1 >= len(args) or args[index + 1].startswith("--"):
                raise ConfigError(f"override '{arg}' has no value; write {arg} VALUE or {arg[2:]}=VALUE")
            arg, index = f"{arg[2:]}={args[index + 1]}", index + 1
        pairs.append(arg.removeprefix("--"))
        index += 1
    return pairs


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``key=value`` (or ``--key value``, ``--key=value``) strings into a dict; values are read as
    YAML (numbers, booleans, lists)."""
    result: dict[str, Any] = {}
    for pair in _split_flag_pairs(pairs):
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{pair}' is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        result[key.strip()] = value
    return result


def _suggest(key: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean '{matches[0]}'?" if matches else "; run `tunelab config` to list every key"


def _format_validation_error(error: ValidationError, sources: dict[str, str], default: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "config"
        source = sources.get(str(item["loc"][0]) if item["loc"] else "", default)
        given = item.get("input")
        if item["type"] == "value_error" and not item["loc"]:
            lines.append(f"{default}: {item['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{source}: key '{key}': {item['msg']} (got {given!r})")
    return "\n".join(lines)


def build_config(values: dict[str, Any], source: str = "config",
                 sources: dict[str, str] | None = None) -> TrainConfig:
    """Validate a dict of settings; every problem becomes one readable ConfigError naming where the key
    came from (``sources``: key -> the file or "command line"; ``source`` for the rest)."""
    from tunelab.stage_registry import stage_keys

    sources = sources or {}
    known = [*TrainConfig.model_fields, *stage_keys()]
    unknown = [key for key in values if key not in known]
    if unknown:
        raise ConfigError("\n".join(
            f"{sources.get(key, source)}: unknown key '{key}'{_suggest(key, known)}" for key in unknown
        ))
    try:
        return TrainConfig(**values)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, sources, source)) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file of ``key: value`` pairs (train, export and serve configs), or one error saying what is wrong."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a folder; expected a YAML file (see examples/)")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected UTF-8 YAML)") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(loaded).__name__}")
    return loaded or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (optional) and apply ``key=value`` overrides on top of it."""
    values: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        source = str(path)
        values.update(read_yaml_mapping(path))
    given = parse_overrides(overrides or [])
    values.update(given)
    return build_config(values, source, {key: "command line" for key in given})


def _type_name(annotation: Any) -> str:
    """``int``, ``str | None``; a Literal as its choices joined by '|'."""
    from typing import get_args, get_origin

    if get_origin(annotation) is Literal:
        return "|".join(str(choice) for choice in get_args(annotation))
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def describe_keys() -> list[tuple[str, str, Any, str, list[str]]]:
    """(key, type, default value, help, stages) for every setting: the common keys in schema order (stages
    empty: every stage reads them), then each stage's own keys; used by `tunelab config` and `--help`."""
    from tunelab.stage_registry import stage_keys

    rows = [(name, _type_name(field.annotation), field.default, field.description or "", [])
            for name, field in TrainConfig.model_fields.items()]
    rows += [(name, _type_name(field.annotation), field.default, field.description or "", stages)
             for name, (field, stages) in stage_keys().items()]
    return rows
