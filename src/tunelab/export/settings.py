"""What ``tunelab export`` is asked to do: LLaMA-Factory's export keys (so its ``merge_lora/*.yaml`` run here)
plus tunelab's format keys, from a YAML file and/or flags. Checked without torch, so a mistake is one line at
once."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunelab.config import read_yaml_mapping
from tunelab.data.templates import TemplateName
from tunelab.errors import ConfigError

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
DTYPES = ("auto", "float32", "float16", "bfloat16")
_DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16", "half": "float16",
                  "bf16": "bfloat16"}
# LLaMA-Factory keys that a merge config carries and that mean nothing to an export (accepted, unused).
_IGNORED = ("stage", "do_train", "quantization_method", "infer_backend", "export_hub_model_id", "image_max_pixels",
            "video_max_pixels", "print_param_status")


class ExportSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name_or_path: str | None = Field(None, description="Base model (default: the adapter's recorded base).")
    adapter_name_or_path: str | None = Field(None, description="Adapter folder to merge (a training output_dir).")
    template: TemplateName = Field(None, description="Chat template to write (default: the adapter's saved one).")
    finetuning_type: str | None = Field(None, description="Accepted for LLaMA-Factory configs; read from the adapter.")
    trust_remote_code: bool = False
    export_dir: str = Field(..., description="Output folder (written through a temporary folder, then moved).")
    export_format: Literal["hf", "gguf"] = Field("hf", description="hf: safetensors shards; gguf: llama.cpp.")
    export_size: float = Field(5, gt=0, description="Largest safetensors shard, in GB.")
    export_device: Literal["cpu", "auto"] = Field("cpu", description="Where the merge runs (auto: a GPU if any).")
    export_legacy_format: bool = Field(False, description="Save .bin (pickle) files instead of safetensors.")
    export_dtype: str = Field("auto", description="Weights of an hf export: auto (the base's own), float32, "
                              "float16, bfloat16.")
    export_quantization_bit: Literal[4, 8] | None = Field(None, description="Save the merged model in 4 or 8 bits "
                                                          "(bitsandbytes); reloads with from_pretrained.")
    export_gguf_type: Literal[GGUF_TYPES] = Field("f16", description="GGUF tensor type: " + ", ".join(GGUF_TYPES))
    export_ollama: bool = Field(False, description="With gguf: also write an Ollama Modelfile.")
    export_overwrite: bool = Field(False, description="Replace an export_dir that holds an earlier export.")

    @field_validator("export_dtype", mode="before")
    @classmethod
    def _dtype(cls, value: Any) -> str:
        value = _DTYPE_ALIASES.get(str(value), str(value))
        if value not in DTYPES:
            raise ValueError(f"expected one of {', '.join(DTYPES)}, got {value!r}")
        return value

    @field_validator("export_gguf_type", mode="before")
    @classmethod
    def _gguf_type(cls, value: Any) -> str:
        value = str(value).lower()
        if value in ("q4_k", "q4_k_m", "q5_k", "q5_k_m", "q6_k", "q2_k", "q3_k", "q3_k_m"):
            raise ValueError(f"{value}: the gguf package writes no k-quants (it can only read them); write f16 here "
                             "and run llama.cpp's llama-quantize on it, or use one of " + ", ".join(GGUF_TYPES))
        return value


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(ExportSettings.model_fields), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def load_export_settings(config: str | None, flags: dict[str, Any]) -> ExportSettings:
    """The YAML file's keys (if any), with the flags that were given winning."""
    values: dict[str, Any] = {}
    where = "command line"
    if config is not None:
        values = {key: value for key, value in read_yaml_mapping(config).items() if key not in _IGNORED}
        where = config
    values.update({key: value for key, value in flags.items() if value is not None})
    unknown = [key for key in values if key not in ExportSettings.model_fields]
    if unknown:
        raise ConfigError(f"{where}: " + "; ".join(f"unknown export key '{key}'{_suggest(key)}" for key in unknown))
    if not values.get("export_dir"):
        raise ConfigError(f"{where}: no output folder; set export_dir (or --output)")
    try:
        settings = ExportSettings(**values)
    except ValidationError as error:
        raise ConfigError(f"{where}: " + "; ".join(f"key '{'.'.join(map(str, e['loc']))}': {e['msg']} (got "
                                                   f"{e.get('input')!r})" for e in error.errors())) from None
    if settings.export_quantization_bit and settings.export_format == "gguf":
        raise ConfigError("export_quantization_bit is bitsandbytes quantization for an hf export; a GGUF file is "
                          "quantized with export_gguf_type (--quantization q8_0, ...)")
    if not settings.model_name_or_path and not settings.adapter_name_or_path:
        raise ConfigError(f"{where}: nothing to export; set model_name_or_path (--model) and/or "
                          "adapter_name_or_path (--adapter)")
    return settings
