"""``TrainConfig``: the concerns composed into one flat schema, plus the chosen stage's and method's own keys.

A stage's keys (declared in its module, see ``stage_registry``) and a method's keys (declared in its entry, see
``method_registry``) are validated only when that stage or method runs; set for another one they are an error
that names their owners. They sit on the config as flat attributes (``cfg.pref_beta``, ``cfg.lora_rank``) and,
typed, as ``cfg.stage_settings`` / ``cfg.method_settings``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tunelab.config.concerns import (
    DataSettings,
    EvalSettings,
    MethodSettings,
    ModelSettings,
    OutputSettings,
    TrainingSettings,
)
from tunelab.config.suggest import suggest

Keys = TypeVar("Keys", bound=BaseModel)


# Bases listed last-first: pydantic orders the fields of the last base first (model, method, data, ...).
class TrainConfig(EvalSettings, TrainingSettings, OutputSettings, DataSettings, MethodSettings, ModelSettings):
    """Everything a `tunelab train` run reads. Unknown keys are errors."""

    # The chosen stage's and method's own keys are the only extras: the "before" validator checks them against
    # the selection and fills their defaults.
    model_config = ConfigDict(extra="allow", validate_assignment=True, coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _owned_keys(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        from tunelab.method_registry import UNREAD_ALLOWED, canonical_name, method, method_keys, method_names
        from tunelab.stage_registry import all_stages, stage_keys

        stages, methods = stage_keys(), method_keys()
        unknown = [key for key in values if key not in cls.model_fields and key not in stages and key not in methods]
        if unknown:
            known = [*cls.model_fields, *stages, *methods]
            raise ValueError("; ".join(f"unknown key '{key}'{suggest(key, known)}" for key in unknown))
        problems: list[str] = []
        stage = all_stages().get(values.get("stage", "sft"))
        values = _select(values, stages, "stage", stage and stage.name, stage and stage.keys,
                         stage.presets if stage else {}, problems)
        name = canonical_name(str(values.get("finetuning_type", "lora")))
        chosen = method(name) if name in method_names() else None
        values = _select(values, methods, "finetuning_type", chosen and chosen.name, chosen and chosen.keys, {},
                         problems, unread_allowed=UNREAD_ALLOWED)
        if problems:
            raise ValueError("; ".join(problems))
        return values

    @model_validator(mode="after")
    def _check_contradictions(self) -> TrainConfig:
        problems = [*self.data_problems(), *self.training_problems(), *self.eval_problems()]
        if self.stage == "pt" and (self.train_on_prompt or self.mask_history):
            problems.append("stage pt trains on every token; train_on_prompt/mask_history apply to sft only")
        if self.stage not in ("sft", "pt") and (self.train_on_prompt or self.mask_history):
            problems.append(f"train_on_prompt/mask_history apply to stage sft; stage {self.stage} trains on the "
                            "answers of its rows")
        if self.eval_strategy != "no" and not self.val_size and not self.eval_dataset:
            problems.append(f"eval_strategy is '{self.eval_strategy}' but there is nothing to evaluate "
                            "on; set val_size or eval_dataset")
        if self.group_by_length and self.stage not in ("sft", "pt"):
            problems.append(f"group_by_length orders the one-sequence rows of stages sft and pt by length; stage "
                            f"{self.stage} keeps TRL's own sampling (its rows are pairs, prompts or KL-matched "
                            "examples)")
        if self.save_only_model and self.resume_from_checkpoint:
            problems.append("save_only_model checkpoints hold no optimizer state; they cannot be resumed")
        problems += self._method_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _method_problems(self) -> list[str]:
        """Settings that contradict the fine-tuning method, found before any model loads."""
        from tunelab.method_registry import method, method_names

        chosen = method(self.finetuning_type)
        own = self.method_settings
        problems = []
        if self.packing and chosen.is_prompt_learning:
            problems.append(f"packing with finetuning_type {chosen.name}: its virtual tokens would be shared by every "
                            "sample packed into a sequence, and attention would cross samples; turn packing off")
        if self.quantization_bit and not chosen.quantizable:
            problems.append(f"quantization_bit {self.quantization_bit} with finetuning_type {chosen.name}: the "
                            "quantized base weights cannot train; use an adapter ("
                            f"{', '.join(method_names(lambda m: m.is_peft and m.quantizable))}) on the quantized "
                            "base, or drop quantization_bit")
        if self.quantization_bit and getattr(own, "pissa_init", False):
            problems.append("pissa_init with quantization_bit: PiSSA rewrites the base weights from their singular "
                            "vectors, which a quantized base cannot hold; train PiSSA in 16/32 bits")
        if getattr(own, "prefix_projection", False) and (self.resume_from_checkpoint or self.adapter_name_or_path):
            problems.append("prefix_projection cannot continue training: PEFT saves a projected prefix as the "
                            "computed prefix itself, without its projection MLP; retrain, or use prefix tuning "
                            "without prefix_projection to resume")
        return problems

    @property
    def stage_settings(self) -> BaseModel:
        """The chosen stage's own keys as their typed model."""
        from tunelab.stage_registry import all_stages

        return self._owned(all_stages()[self.stage].keys)

    @property
    def method_settings(self) -> BaseModel:
        """The chosen method's own keys as their typed model."""
        from tunelab.method_registry import method

        return self._owned(method(self.finetuning_type).keys)

    def keys_of(self, model: type[Keys]) -> Keys | None:
        """The stage's or method's keys as ``model`` when the chosen stage or method declares them (its keys are
        ``model`` or extend it), else None: shared code reads an optional group of keys without guessing names."""
        for own in (self.stage_settings, self.method_settings):
            if isinstance(own, model):
                return own
        return None

    def _owned(self, model: type[Keys]) -> Keys:
        return model.model_construct(**{key: getattr(self, key) for key in model.model_fields})

    @property
    def row_kind(self) -> str:
        """The kind of canonical row the stage trains on (sft, pt, preference, kto, rl)."""
        from tunelab.stage_registry import all_stages

        return all_stages()[self.stage].kind

    @property
    def virtual_tokens(self) -> int:
        """Prompt learning's number of virtual tokens: pre_seq_len (ChatGLM's name) or num_virtual_tokens."""
        return self.method_settings.virtual_tokens  # type: ignore[attr-defined]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _select(values: dict[str, Any], declared: dict[str, tuple[Any, list[str]]], owner: str, name: str | None,
            keys: type[BaseModel] | None, presets: dict[str, Any], problems: list[str],
            unread_allowed: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``values`` with only the chosen owner's keys (checked, defaults filled in) among ``declared``: a key of
    another stage or method set to other than its default is a problem naming its owners; one at its default
    (a dumped config of another run) or in ``unread_allowed`` is left out. ``name`` None: the owner is unknown
    (its own field says why), so all its keys are left out."""
    rest = {key: value for key, value in values.items() if key not in declared}
    if name is None or keys is None:
        return rest
    for key in values:
        if key in declared and key not in keys.model_fields and key not in unread_allowed \
                and values[key] != declared[key][0].default:
            owners = declared[key][1]
            plural = "s" if owner == "stage" and len(owners) > 1 else ""
            problems.append(f"`{key}` applies to {owner}{plural} {', '.join(owners)}; this run is `{name}`")
    own = {**presets, **{key: values[key] for key in values if key in keys.model_fields}}
    try:
        checked = keys(**own).model_dump(mode="json")
    except ValidationError as error:
        problems.extend(_describe(error))
        return rest
    return {**rest, **checked}


def _describe(error: ValidationError) -> list[str]:
    return [f"key '{'.'.join(map(str, item['loc']))}': {item['msg']} (got {item.get('input')!r})" if item["loc"]
            else item["msg"].removeprefix("Value error, ") for item in error.errors()]


# Keys a resumed run may set differently from the run it continues: they change how long it trains or
# what it reports, not what the saved state means. Any other difference makes a resume refuse.
RESUME_MAY_CHANGE = frozenset({
    "max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps", "eval_steps",
    "eval_strategy", "per_device_eval_batch_size", "output_dir", "overwrite_output_dir", "resume_from_checkpoint",
    "report_to", "plot_loss", "dataloader_num_workers", "ddp_timeout", "preprocessing_num_workers",
    "overwrite_cache", "cache_dir", "do_train",
})
