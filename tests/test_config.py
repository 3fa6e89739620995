"""Configuration: YAML + key=value overrides, readable errors, and LLaMA-Factory YAML compatibility."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import TrainConfig, build_config, describe_keys, load_config, parse_overrides
from tunelab.errors import ConfigError
from tunelab.method_registry import LoraKeys

# The keys and values of LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml, with the model path
# pointing at a local folder instead of a hub id.
LLAMAFACTORY_SFT_YAML = """\
### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""


def write_yaml(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- YAML and overrides ---------------------------------------------------------------------------

def test_yaml_values_are_typed(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "lora_rank: 16\nlearning_rate: 2.0e-5\nbf16: true\nnum_train_epochs: 1\n"
                                "dataset: alpaca_en_demo\n")
    cfg = load_config(path)
    assert cfg.lora_rank == 16 and isinstance(cfg.lora_rank, int)
    assert cfg.learning_rate == pytest.approx(2e-5)
    assert cfg.bf16 is True
    assert cfg.num_train_epochs == 1.0
    assert cfg.dataset == ["alpaca_en_demo"]
    # Untouched keys keep their defaults.
    assert cfg.lora_dropout == LoraKeys.model_fields["lora_dropout"].default
    assert cfg.fp16 is False


def test_override_wins_over_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "lora_rank: 8\nlearning_rate: 1.0e-4\nbf16: true\noutput_dir: out/a\n")
    cfg = load_config(path, ["lora_rank=32", "bf16=false", "learning_rate=3.0e-5", "output_dir=out/b"])
    assert cfg.lora_rank == 32
    assert cfg.bf16 is False
    assert cfg.learning_rate == pytest.approx(3e-5)
    assert cfg.output_dir == "out/b"


def test_override_without_yaml_file() -> None:
    cfg = load_config(None, ["finetuning_type=full", "max_samples=50", "dataset=identity"])
    assert cfg.finetuning_type == "full"
    assert cfg.max_samples == 50
    assert cfg.dataset == ["identity"]


def test_parse_overrides_reads_values_as_yaml() -> None:
    parsed = parse_overrides(["lora_rank=16", "bf16=true", "learning_rate=1.0e-4",
                              "report_to=[wandb, tensorboard]", "lora_target=q_proj,v_proj", "cache_dir=",
                              "adapter_name_or_path=null", " template = llama3", "fsdp=full_shard auto_wrap",
                              "output_dir=a=b"])
    assert parsed == {
        "lora_rank": 16,
        "bf16": True,
        "learning_rate": 1e-4,
        "report_to": ["wandb", "tensorboard"],
        "lora_target": "q_proj,v_proj",
        "cache_dir": None,
        "adapter_name_or_path": None,
        "template": "llama3",
        "fsdp": "full_shard auto_wrap",
        "output_dir": "a=b",
    }
    assert isinstance(parsed["lora_rank"], int) and isinstance(parsed["learning_rate"], float)


@pytest.mark.parametrize("bad", ["lora_rank", "=3", "lora_rank: 3"])
def test_malformed_override_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="not of the form key=value") as info:
        parse_overrides([bad])
    assert bad in str(info.value)


def test_yaml_float_without_dot_still_validates(tmp_path: Path) -> None:
    # PyYAML reads `1e-4` as the string "1e-4" (YAML 1.1); the schema still has to accept it as a float.
    path = write_yaml(tmp_path, "learning_rate: 1e-4\n")
    assert yaml.safe_load(path.read_text())["learning_rate"] == "1e-4"
    assert load_config(path).learning_rate == pytest.approx(1e-4)
    assert load_config(None, ["learning_rate=5e-5"]).learning_rate == pytest.approx(5e-5)


def test_dataset_comma_string_becomes_list() -> None:
    assert build_config({"dataset": "identity, alpaca_en_demo,,glaive_toolcall_en_demo"}).dataset == [
        "identity", "alpaca_en_demo", "glaive_toolcall_en_demo"]
    assert build_config({"dataset": ["a", "b"]}).dataset == ["a", "b"]
    assert build_config({"eval_dataset": "x,y", "val_size": 0}).eval_dataset == ["x", "y"]
    assert build_config({}).dataset is None


def test_dataset_override_on_command_line_splits(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "dataset: identity\n")
    assert load_config(path, ["dataset=alpaca_en_demo,identity"]).dataset == ["alpaca_en_demo", "identity"]


def test_loss_policy_follows_flags() -> None:
    assert build_config({}).loss_policy == "assistant"
    assert build_config({"train_on_prompt": True}).loss_policy == "all"
    assert build_config({"mask_history": True}).loss_policy == "last"


# --- errors ---------------------------------------------------------------------------------------

def test_unknown_key_names_key_and_suggests(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "lora_rnak: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'lora_rnak'" in message
    assert "did you mean 'lora_rank'" in message
    assert str(path) in message


def test_unknown_override_names_command_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["learning_rat=1e-4"])
    message = str(info.value)
    assert message.startswith("command line:")
    assert "'learning_rat'" in message and "did you mean 'learning_rate'" in message


def test_unknown_key_without_close_match_points_to_key_list() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"zzzqqq": 1})
    assert "'zzzqqq'" in str(info.value)
    assert "did you mean" not in str(info.value)
    assert "tunelab config" in str(info.value)


def test_every_unknown_key_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"lora_rnak": 8, "per_device_train_batchsize": 2, "lora_rank": 4})
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "lora_rnak" in lines[0] and "'lora_rank'" in lines[0]
    assert "per_device_train_batchsize" in lines[1] and "'per_device_train_batch_size'" in lines[1]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("lora_rank", "abc", "valid integer"),
        ("lora_rank", 0, "greater than 0"),
        ("learning_rate", "fast", "valid number"),
        ("finetuning_type", "qlora", "finetuning_type: lora and quantization_bit: 4"),
        ("stage", "dop", "did you mean 'dpo'?"),
        ("warmup_ratio", 1.5, "less than or equal to 1"),
    ],
)
def test_wrong_type_names_key_and_value(tmp_path: Path, key: str, value: object, expected: str) -> None:
    path = write_yaml(tmp_path, yaml.safe_dump({key: value}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"key '{key}'" in message
    assert expected in message
    assert repr(value) in message
    assert "Traceback" not in message and "pydantic" not in message.lower()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"bf16": True, "fp16": True}, "bf16 and fp16 are both true"),
        ({"train_on_prompt": True, "mask_history": True}, "train_on_prompt and mask_history are both true"),
        ({"stage": "pt", "mask_history": True}, "stage pt trains on every token"),
        ({"eval_strategy": "steps", "eval_steps": 10}, "nothing to evaluate"),
        ({"eval_strategy": "steps", "val_size": 0.1}, "eval_steps is not set"),
        ({"save_only_model": True, "resume_from_checkpoint": "last"}, "cannot be resumed"),
        ({"stage": "kto", "group_by_length": True}, "stage kto keeps TRL's own sampling"),
    ],
)
def test_contradictions_are_config_errors(values: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        build_config(values, "run.yaml")
    assert str(info.value).startswith("run.yaml: ")


def test_contradiction_across_yaml_and_override(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "bf16: true\n")
    with pytest.raises(ConfigError, match="bf16 and fp16"):
        load_config(path, ["fp16=true"])
    # ... and the override can also resolve it.
    assert load_config(path, ["fp16=true", "bf16=false"]).fp16 is True


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write_yaml(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write_yaml(tmp_path, "lora_rank: [1, 2\n", "broken.yaml"))
    # An empty file is an empty mapping: all defaults.
    assert load_config(write_yaml(tmp_path, "", "empty.yaml")) == TrainConfig()


def test_validate_assignment() -> None:
    cfg = build_config({})
    with pytest.raises(ValueError):
        cfg.lora_rank = "many"


# --- LLaMA-Factory compatibility --------------------------------------------------------------------

def test_llamafactory_lora_sft_yaml_validates(tmp_path: Path) -> None:
    model_dir = Path(__file__).resolve().parents[1] / "src" / "tunelab" / "assets" / "stories260K"
    path = write_yaml(tmp_path, LLAMAFACTORY_SFT_YAML.format(model=model_dir), "llama3_lora_sft.yaml")
    cfg = load_config(path)
    assert cfg.model_name_or_path == str(model_dir)
    assert cfg.trust_remote_code is True
    assert (cfg.stage, cfg.finetuning_type, cfg.lora_rank, cfg.lora_target) == ("sft", "lora", 8, "all")
    assert cfg.dataset == ["identity", "alpaca_en_demo"]
    assert cfg.template == "llama3"
    assert (cfg.cutoff_len, cfg.max_samples) == (2048, 1000)
    assert cfg.preprocessing_num_workers == 16 and cfg.dataloader_num_workers == 4
    assert cfg.output_dir == "saves/llama3-8b/lora/sft"
    assert cfg.report_to == "none"
    assert cfg.gradient_accumulation_steps == 8
    assert cfg.learning_rate == pytest.approx(1e-4)
    assert cfg.num_train_epochs == 3.0
    assert cfg.lr_scheduler_type == "cosine" and cfg.warmup_ratio == pytest.approx(0.1)
    assert cfg.bf16 is True and cfg.fp16 is False
    assert cfg.ddp_timeout == 180000000
    assert cfg.resume_from_checkpoint is None
    assert cfg.loss_policy == "assistant"
    # The dumped config loads back to the same settings.
    again = write_yaml(tmp_path, cfg.to_yaml(), "roundtrip.yaml")
    assert load_config(again) == cfg


def test_stage_keys_belong_to_their_stages(tmp_path: Path) -> None:
    """A stage's own key is validated only when that stage runs; set for another stage it is an error that
    names the stages it belongs to. Defaults of other stages (a dumped config) pass."""
    with pytest.raises(ConfigError, match=r"`pref_beta` applies to stages? dpo.*; this run is `sft`"):
        load_config(None, ["pref_beta=0.2"])
    assert not hasattr(load_config(None, ["pref_beta=0.1"]), "pref_beta")  # the default: harmless, dropped
    dpo = load_config(None, ["stage=dpo", "pref_beta=0.2"])
    assert dpo.pref_beta == 0.2 and dpo.pref_loss == "sigmoid"  # the stage's defaults are filled in
    with pytest.raises(ConfigError, match="pref_loss"):
        load_config(None, ["stage=dpo", "pref_loss=sigmoidd"])
    with pytest.raises(ConfigError, match="did you mean 'pref_beta'"):
        load_config(None, ["stage=dpo", "pref_betta=0.2"])
    again = write_yaml(tmp_path, dpo.to_yaml())  # the flat YAML of a dpo run loads back the same
    assert load_config(again) == dpo


def test_describe_keys_covers_schema() -> None:
    from tunelab.method_registry import method_keys
    from tunelab.stage_registry import stage_keys

    rows = describe_keys()
    names = [row.key for row in rows]
    assert names == [*TrainConfig.model_fields, *stage_keys(), *method_keys()]
    lora_rank = rows[names.index("lora_rank")]
    assert lora_rank.type == "int" and lora_rank.default == 8 and lora_rank.help and lora_rank.stages == []
    assert lora_rank.methods == ["lora", "adalora"]  # a method's own key names its methods
    assert rows[names.index("pref_beta")].stages[0] == "dpo"  # a stage's own key names its stages
    assert all(row.help for row in rows)


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_unknown_key_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "lora_rnak: 8\ndataset: identity\n")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    assert "lora_rnak" in lines[0] and "did you mean 'lora_rank'" in lines[0]
    assert "Traceback" not in result.output
    # The error was handled (typer.Exit), not an uncaught exception.
    assert isinstance(result.exception, SystemExit)


def test_cli_bad_override_exits_2(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "dataset: identity\n")
    result = CliRunner().invoke(app, ["train", str(path), "bf16=true", "fp16=true"])
    assert result.exit_code == 2, result.output
    assert "bf16 and fp16 are both true" in result.output
    assert "Traceback" not in result.output


def test_cli_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
