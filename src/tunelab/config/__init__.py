"""The configuration of a training run: per-concern key models (``concerns``), composed with the chosen stage's
and method's own keys into ``TrainConfig`` (``train``), read from YAML and overrides (``files``)."""

from tunelab.config.concerns import (
    CONCERNS,
    EMBEDDED_MODEL,
    DataSettings,
    EvalSettings,
    MethodSettings,
    ModelSettings,
    OutputSettings,
    SystemPromptKeys,
    TrainingSettings,
)
from tunelab.config.files import (
    KeyInfo,
    build_config,
    describe_keys,
    every_key,
    load_config,
    parse_overrides,
    read_yaml_mapping,
)
from tunelab.config.train import RESUME_MAY_CHANGE, TrainConfig

__all__ = [
    "CONCERNS", "EMBEDDED_MODEL", "RESUME_MAY_CHANGE", "DataSettings", "EvalSettings", "KeyInfo", "MethodSettings",
    "ModelSettings", "OutputSettings", "SystemPromptKeys", "TrainConfig", "TrainingSettings", "build_config",
    "describe_keys", "every_key", "load_config", "parse_overrides", "read_yaml_mapping",
]
