"""Bad invocations of every command: exit code 2, one `error:` line on stderr naming what is wrong, never a
traceback, nothing written.

``BAD_INVOCATIONS`` is a table: add a row for each mistake a user can make. Paths in a row are
templates filled from a small scratch tree, which is also the current folder (``{tmp}``: scratch folder,
``{file}``: a plain file, ``{empty}``: an empty folder, ``{adapter}``: a folder holding only an adapter config,
``{rm}``: the same for a reward model's adapter; ``outputs/`` exists there, as after a first training).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab import __version__
from tunelab.cli import app

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "examples" / "demo_lora_sft.yaml")
DATA = str(REPO / "examples" / "data")
STORIES = str(REPO / "examples" / "data" / "demo_stories.json")

BAD_INVOCATIONS = [
    # train: config file and overrides
    (["train", "{tmp}/missing.yaml"], "config file '{tmp}/missing.yaml' does not exist"),
    (["train", "{empty}"], "is a folder; expected a YAML file"),
    (["train", DEMO, "lora_rnak=4"], "command line: unknown key 'lora_rnak'; did you mean 'lora_rank'?"),
    (["train", DEMO, "--lora_rnak", "4"], "command line: unknown key 'lora_rnak'"),
    (["train", DEMO, "--max_steps"], "override '--max_steps' has no value"),
    (["train", DEMO, "learning_rate=-1"], "command line: key 'learning_rate'"),
    (["train", DEMO, "max_steps=many"], "command line: key 'max_steps'"),
    # train: paths
    (["train", DEMO, "output_dir={file}"], "output_dir '{file}' is a file"),
    (["train", DEMO, "adapter_name_or_path={tmp}/no_adapter"], "adapter folder '{tmp}/no_adapter' does not exist"),
    (["train", DEMO, "adapter_name_or_path={empty}"], "holds no PEFT adapter"),
    (["train", DEMO, "model_name_or_path={tmp}/no_model"], "model folder '{tmp}/no_model' does not exist"),
    (["train", DEMO, "model_name_or_path={empty}"], "holds no model: missing config.json and tokenizer files"),
    (["train", DEMO, "model_name_or_path={file}"], "is a file; expected a model folder"),
    (["train", DEMO, "model_name_or_path={adapter}"], "is a PEFT adapter, not a model"),
    (["train", DEMO, "model_name_or_path=nobody/no-such-model"], "not in the local cache while HF_HUB_OFFLINE=1"),
    # a relative path that is not there is a wrong path, not a hub id (outputs/ exists here)
    (["train", DEMO, "adapter_name_or_path=outputs/nope"], "adapter folder 'outputs/nope' does not exist (looked "
                                                           "for {tmp}/outputs/nope)"),
    (["train", DEMO, "adapter_name_or_path=./nope"], "adapter folder './nope' does not exist"),
    (["train", DEMO, "adapter_name_or_path=~/no-such-tunelab-adapter"],
     f"adapter folder '{Path.home() / 'no-such-tunelab-adapter'}' does not exist"),  # ~ is the home folder
    (["train", DEMO, "--dry-run", "adapter_name_or_path=outputs/nope"], "adapter folder 'outputs/nope' does not"),
    (["train", DEMO, f"dataset_dir={DATA}", "dataset=demo_storie"], "(did you mean 'demo_stories'?)"),
    # --dry-run runs the stage's own checks too
    (["train", DEMO, "--dry-run", f"dataset_dir={DATA}", "do_predict=true"],
     "do_predict: generating for the eval prompts needs eval data"),
    (["train", DEMO, "--dry-run", f"dataset_dir={DATA}", "stage=grpo", "dataset=demo_rl_prompts",
      "per_device_train_batch_size=3", "reward_funcs=[length]"], "not a multiple of num_generations"),
    (["train", DEMO, "--dry-run", f"dataset_dir={DATA}", "stage=ppo", "dataset=demo_rl_prompts",
      "reward_funcs=[length]", "eval_strategy=steps", "eval_steps=5", "val_size=4"],
     "stage ppo does not evaluate during training"),
    (["train", DEMO, "--dry-run", f"dataset_dir={DATA}", "stage=ppo", "dataset=demo_rl_prompts_heldout",
      "reward_funcs=[length]", "per_device_train_batch_size=64"], "fewer than one rollout of 64"),
    (["train", DEMO, "--dry-run", f"dataset_dir={DATA}", "stage=kto", "dataset=demo_kto", "ref_model=outputs/nope"],
     "ref_model: model folder 'outputs/nope' does not exist"),
    (["train", DEMO, "--dry-run", "stage=orpo", "pref_loss=sigmoid"], "stage orpo trains with pref_loss orpo"),
    (["train", DEMO, f"dataset_dir={DATA}", "dataset=nope"], "dataset 'nope' is neither a name"),
    (["train", DEMO, "dataset_dir=data", "dataset=nope"], "dataset_dir 'data' is relative to the current folder"),
    (["train", DEMO, f"dataset_dir={DATA}", "resume_from_checkpoint={empty}"], "is not a checkpoint folder"),
    # data
    (["data", "convert", STORIES, "{empty}"], "OUTPUT '{empty}' is a folder"),
    (["data", "convert", STORIES, "{file}/rows.jsonl"], "is a file, not a folder"),
    (["data", "convert", "{tmp}/bad.jsonl", "{tmp}/out.jsonl"], "pass --skip-invalid"),
    (["data", "inspect", "{tmp}/bad.jsonl"], "Unterminated string starting at column"),
    (["data", "inspect", "nope", "--dataset-dir", "{empty}"], "dataset 'nope' is neither a name"),
    (["data", "inspect", STORIES, "--stage", "ppx"], "--stage 'ppx' is neither a stage (sft, "),
    (["data", "inspect", STORIES, "--cutoff-len", "-1"], "--cutoff-len must be at least 1"),
    (["data", "inspect", STORIES, "--plot-dir", "{file}"], "--plot-dir '{file}' is a file"),
    (["data", "convert", STORIES, "{tmp}/o.jsonl", "--to", "csv"], "--to 'csv' is not supported"),
    # predict
    (["predict", STORIES, "--output", "{empty}"], "--output '{empty}' is a folder"),
    (["predict", STORIES, "--batch-size", "0"], "--batch-size must be at least 1"),
    (["predict", STORIES, "--max-samples", "-2"], "--max-samples must be at least 1"),
    (["predict", STORIES, "--adapter", "{tmp}/no_adapter"], "adapter folder '{tmp}/no_adapter' does not exist"),
    (["predict", STORIES, "--adapter", "outputs/no_such_adapter"], "adapter folder 'outputs/no_such_adapter' does "
                                                                   "not exist"),
    (["predict", STORIES, "--adapter", "{rm}"], "--adapter '{rm}' is a reward model (stage rm): it scores answers"),
    (["predict", "{tmp}/missing.json"], "neither a name"),
    # eval
    (["eval"], "give a DATASET to generate on, or --predictions FILE to score"),
    (["eval", STORIES, "--predictions", "{tmp}/answers.jsonl"], "(not both)"),
    (["eval", STORIES, "--metrics", "meteo"], "unknown metric 'meteo' (did you mean 'meteor'?)"),
    (["eval", STORIES, "--metrics", "accuracy"], "metric accuracy needs a task"),
    (["eval", STORIES, "--task", "mcq"], "task 'mcq' is not one of auto, gsm8k, math, choice"),
    (["eval", STORIES, "--language", "fr"], "language 'fr' is not one of auto, en, zh"),
    (["eval", STORIES, "--with-base"], "--with-base adds the base model beside adapters"),
    (["eval", STORIES, "--adapter", "{tmp}/no_adapter"], "adapter folder '{tmp}/no_adapter' does not exist"),
    (["eval", STORIES, "--adapter", "{rm}"], "--adapter '{rm}' is a reward model (stage rm)"),
    (["eval", STORIES, "--output-dir", "{file}"], "--output-dir '{file}' is a file"),
    (["eval", STORIES, "--adapter", "{adapter}", "--adapter", "{adapter}"], "--adapter {adapter} is given twice"),
    (["eval", "{tmp}/prompts.jsonl"], "has no reference answers to score against"),
    (["eval", "--predictions", "{tmp}/predictions.jsonl", "--predictions", "{tmp}/answers.jsonl"],
     "answers.jsonl, line 1, field 'prediction': missing"),
    (["eval", "--predictions", "{tmp}/missing.jsonl"], "--predictions '{tmp}/missing.jsonl' is not a file"),
    (["eval", "--predictions", "{tmp}/answers.jsonl"], "answers.jsonl, line 1, field 'prediction': missing"),
    (["eval", "--predictions", "{tmp}/predictions.jsonl", "--metrics", "perplexity"],
     "perplexity needs a model, not a predictions file"),
    (["eval", "--predictions", "{tmp}/predictions.jsonl", "--model", "stories260K"], "does not go with --model"),
    (["train", DEMO, "predict_with_generate=true"], "predict_with_generate: generating for the eval prompts needs "
     "eval data; set val_size or eval_dataset"),
    (["train", DEMO, f"dataset_dir={DATA}", "eval_dataset=demo_stories_heldout", "predict_with_generate=true"],
     "eval_strategy is 'no'"),
    (["train", DEMO, "generation_metrics=bleu-5"], "unknown metric 'bleu-5'"),
    (["train", DEMO, f"dataset_dir={DATA}", "val_size=4", "do_predict=true", "fsdp=full_shard"],
     "do_predict: generation runs on the main process, which under DeepSpeed/FSDP"),
    (["train", DEMO, f"dataset_dir={DATA}", "eval_dataset=demo_stories_heldout", "do_predict=true",
      "generation_metrics=accuracy", "output_dir={tmp}/run_accuracy"], "metric accuracy needs a task"),
    # serve: every flag is checked before a model loads
    (["serve", "--engine", "tgi"], "engine: Value error, 'tgi' is not an engine; use hf or vllm"),
    (["serve", "--engine", "vllm"], "engine vllm: vLLM is not installed"),
    (["serve", "--port", "70000"], "port: Input should be less than or equal to 65535"),
    (["serve", "--max-concurrency", "0"], "max_concurrency: Input should be greater than or equal to 1"),
    (["serve", "--max-queue", "-1"], "max_queue: Input should be greater than or equal to 0"),
    (["serve", "--attn", "flash"], "flash_attn 'flash' is not one of auto, sdpa, fa2, eager"),
    (["serve", "--adapter", "{tmp}/no_adapter"], "adapter folder '{tmp}/no_adapter' does not exist"),
    (["serve", "--adapter", "{rm}", "--adapter", "{adapter}"], "a reward model is served on its own"),
    (["serve", "--adapter", "stories260K={adapter}"], "an adapter is named 'stories260K' like the base model"),
    (["serve", "{tmp}/missing.yaml"], "config file '{tmp}/missing.yaml' does not exist"),
    # export
    (["export"], "no output folder; set export_dir (or --output)"),
    (["export", "--output", "{tmp}/out"], "nothing to export; set model_name_or_path (--model)"),
    (["export", "--adapter", "{tmp}/no_adapter", "--output", "{tmp}/out"], "adapter folder '{tmp}/no_adapter' does "
     "not exist"),
    (["export", "--adapter", "{tmp}/prefix", "--output", "{tmp}/out"], "is a prefix (PREFIX_TUNING) adapter: its "
     "virtual tokens are added at run time and cannot be merged"),
    (["export", "--adapter", "{tmp}/prefix", "--output", "{tmp}/out", "--format", "gguf"], "cannot become a GGUF file"),
    (["export", "--model", "stories260K", "--output", "{tmp}"], "export_dir '{tmp}' holds other files"),
    (["export", "--model", "stories260K", "--output", "{file}"], "export_dir '{file}' is a file"),
    (["export", "--adapter", "{adapter}", "--model", "{tmp}/other", "--output", "{tmp}/out"],
     "was trained on 'stories260K', which differs from the model '{tmp}/other' (hidden_size 64 vs 32"),
    (["export", "--model", "{tmp}/gpt2", "--output", "{tmp}/out", "--format", "gguf"],
     "GGUF export supports the architectures llama, qwen2; this model is 'gpt2'"),
    (["export", "--model", "stories260K", "--output", "{tmp}/out", "--quantization", "q4_k_m"],
     "the gguf package writes no k-quants"),
    (["export", "--model", "stories260K", "--output", "{tmp}/out", "--format", "gguf", "--quantization", "4"],
     "key 'export_gguf_type'"),
    (["export", "--model", "stories260K", "--output", "{tmp}/out", "--format", "hf", "--quantization", "q8_0"],
     "--quantization q8_0 with --format hf: an hf export quantizes to 4 or 8 bits"),
    (["export", "{tmp}/export.yaml"], "{tmp}/export.yaml: unknown export key 'export_dri'; did you mean 'export_dir'?"),
    (["export", "--model", "stories260K", "--output", "{tmp}/out", "--dtype", "fp8"], "key 'export_dtype'"),
    # chat
    (["chat", "--max-new-tokens", "-1", "--query", "hi"], "--max-new-tokens must be at least 1"),
    (["chat", "--temperature", "-1", "--query", "hi"], "--temperature must be at least 0 (0 = greedy)"),
    (["chat", "--top-p", "0", "--query", "hi"], "--top-p must be in (0, 1]"),
    (["chat", "--adapter", "{tmp}/no_adapter", "--query", "hi"], "adapter folder '{tmp}/no_adapter' does not exist"),
    (["chat", "--adapter", "outputs/no_such_adapter", "--query", "hi"], "adapter folder 'outputs/no_such_adapter' "
                                                                        "does not exist (looked for "
                                                                        "{tmp}/outputs/no_such_adapter)"),
    (["chat", "--adapter", "{rm}", "--query", "hi"], "is a reward model (stage rm): it scores answers and cannot "
                                                     "generate them; score with `tunelab score --adapter {rm}"),
    (["chat", "--adapter", "{empty}", "--query", "hi"], "holds no PEFT adapter"),
    (["chat", "--model", "{tmp}/no_model", "--query", "hi"], "model folder '{tmp}/no_model' does not exist"),
    (["chat", "--model", "{empty}", "--query", "hi"], "holds no model"),
    (["chat", "--model", "{adapter}", "--query", "hi"], "is a PEFT adapter, not a model"),
    (["chat", "--attn", "flash", "--query", "hi"], "--attn 'flash' is not one of"),
    # score (reward models)
    (["score"], "give a preference DATASET, or --prompt and --response"),
    (["score", "--prompt", "hi"], "--prompt and --response go together"),
    (["score", STORIES, "--adapter", "{tmp}/no_adapter"], "adapter folder '{tmp}/no_adapter' does not exist"),
    (["score", STORIES, "--adapter", "{rm}"], "use stage: sft"),  # an SFT dataset is no preference data
    (["score", STORIES], "--model 'stories260K' is not a reward model"),
    (["score", "--adapter", "{adapter}", "--prompt", "a", "--response", "b"], "is not a reward model (no score head"),
    # rewards
    (["rewards", "score", "{tmp}/answers.jsonl", "--reward-funcs", "corectness"],
     "unknown reward function 'corectness' (did you mean 'correctness'?)"),
    (["rewards", "score", "{tmp}/answers.jsonl"], "no reward: set reward_funcs"),
    (["rewards", "score", "{tmp}/answers.jsonl", "--reward-funcs", "int,xmlcount", "--reward-weights", "1"],
     "reward_weights has 1 value for 2 reward functions (int, xmlcount)"),
    (["rewards", "score", "{tmp}/answers.jsonl", "--reward-funcs", "int", "--reward-weights", "1,x"],
     "--reward-weights: Input should be a valid number"),
    (["rewards", "score", "{tmp}/answers.jsonl", "--reward-funcs", "int", "--set", "length_targt=9"],
     "--set: unknown key 'length_targt'; did you mean 'length_target_chars'?"),
    (["rewards", "score", "{tmp}/answers.jsonl", "--reward-funcs", "length", "--set", "length_target_chars=0"],
     "--set length_target_chars: Input should be greater than or equal to 1"),
    (["rewards", "score", "{tmp}/answers.jsonl", "--reward-funcs", "mine.py:score"], "file 'mine.py' does not exist"),
    (["rewards", "score", "{tmp}/answers.jsonl", "--reward-funcs", "int", "--reward-model", "{tmp}/no_model"],
     "reward_model: model folder '{tmp}/no_model' does not exist"),
    (["rewards", "score", "{tmp}/missing.jsonl", "--reward-funcs", "int"], "{tmp}/missing.jsonl: file does not exist"),
    (["rewards", "score", "{tmp}/bad.jsonl", "--reward-funcs", "int"],
     "bad.jsonl, line 1, field 'completion': missing"),
    (["rewards", "score", "{tmp}/answers.jsonl", "--reward-funcs", "correctness"],
     "answers.jsonl, line 1: reward function 'correctness' failed on sample 0 (completion: '18'): the rows need a "
     "column 'answer'"),
    # train: stages and their keys
    (["train", DEMO, "stage=dop"], "unknown stage 'dop'; did you mean 'dpo'?"),
    (["train", DEMO, "pref_beta=0.5"], "`pref_beta` applies to stages dpo, orpo, simpo, kto; this run is `sft`"),
    (["train", DEMO, "stage=dpo", "pref_loss=dpo"], "pref_loss"),
    (["train", DEMO, "stage=dpo", f"dataset_dir={DATA}", "ref_model={tmp}/no_model"], "ref_model: model folder"),
    (["train", DEMO, "stage=dpo", f"dataset_dir={DATA}"], "use stage: sft"),  # the demo's SFT data for dpo
]
# Mistakes that the command-line parser itself reports (a wrong type for a flag): exit 2, no traceback.
USAGE_ERRORS = [
    ["chat", "--max-new-tokens", "many"],
    ["predict", STORIES, "--batch-size", "1.5"],
    ["train"],
    ["data", "inspect"],
    ["rewards", "score"],
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "file").write_text("not a folder")
    (tmp / "empty").mkdir()
    (tmp / "adapter").mkdir()
    (tmp / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "stories260K"}))
    (tmp / "rm").mkdir()
    (tmp / "rm" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "stories260K",
                                                                "task_type": "SEQ_CLS", "peft_type": "LORA"}))
    (tmp / "outputs").mkdir()
    (tmp / "bad.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a\n')
    (tmp / "answers.jsonl").write_text('{"prompt": "How many?", "completion": "18"}\n')
    (tmp / "prefix").mkdir()
    (tmp / "prefix" / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING",
                                                                    "base_model_name_or_path": "stories260K"}))
    for name, config in (("other", {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 5,
                                    "vocab_size": 512}), ("gpt2", {"model_type": "gpt2"})):
        (tmp / name).mkdir()
        (tmp / name / "config.json").write_text(json.dumps(config))
        (tmp / name / "tokenizer_config.json").write_text("{}")
    (tmp / "export.yaml").write_text("model_name_or_path: stories260K\nexport_dri: out\n")
    (tmp / "prompts.jsonl").write_text('{"prompt": "Write a story about Tim."}\n')
    (tmp / "predictions.jsonl").write_text('{"prediction": "18", "reference": "#### 18"}\n')
    return {"tmp": str(tmp), "file": str(tmp / "file"), "empty": str(tmp / "empty"), "adapter": str(tmp / "adapter"),
            "rm": str(tmp / "rm")}


def _fill(text: str, scratch: dict[str, str]) -> str:
    return text.format(**scratch)


@pytest.mark.parametrize(("args", "expected"), BAD_INVOCATIONS, ids=[" ".join(a[:3]) for a, _ in BAD_INVOCATIONS])
def test_bad_invocation_is_one_clear_line(args, expected, scratch, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(scratch["tmp"])
    before = _tree(scratch["tmp"])
    result = CliRunner().invoke(app, [_fill(arg, scratch) for arg in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "error:" not in result.stdout, result.stdout  # stdout is for results only
    assert _fill(expected, scratch) in errors[0], result.output
    assert "at at" not in errors[0]
    assert _tree(scratch["tmp"]) == before  # a refused command writes nothing


def _tree(folder: str) -> set[str]:
    return {str(path.relative_to(folder)) for path in Path(folder).rglob("*")}


def test_a_hub_id_without_network_fails_at_once(scratch, monkeypatch):
    """HF_HUB_OFFLINE unset and no network: one connection attempt, then one error line (no library retries)."""
    import socket

    from tunelab import hub

    attempts = []

    def unreachable(address, timeout=None, *args):
        attempts.append((address, timeout))
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.chdir(scratch["tmp"])
    hub._probe.clear()
    try:
        for args in (["chat", "--model", "nobody/no-such-model", "--query", "hi"],
                     ["chat", "--adapter", "nobody/no-such-adapter", "--query", "hi"],
                     ["train", DEMO, "adapter_name_or_path=nobody/nope"]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 2, result.output
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "does not exist locally" in errors[0], result.output
            assert "cannot be reached (huggingface.co: Name or service not known)" in errors[0]
        assert attempts == [(("huggingface.co", 443), hub.CONNECT_TIMEOUT)]  # asked once, for a bounded time
    finally:
        hub._probe.clear()


def test_failed_convert_leaves_no_partial_file(scratch):
    out = Path(scratch["tmp"]) / "out.jsonl"
    CliRunner().invoke(app, ["data", "convert", f"{scratch['tmp']}/bad.jsonl", str(out)])
    assert not out.exists() and not out.with_name("out.jsonl.partial").exists()


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=[" ".join(a[:3]) for a in USAGE_ERRORS])
def test_usage_errors_exit_2_without_traceback(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_config_errors_do_not_import_torch(tmp_path):
    """A mistake that needs no model is reported before torch or transformers are imported (fast)."""
    for args in (["train", DEMO, f"dataset_dir={DATA}", "dataset=nope"], ["train", DEMO, "lora_rnak=1"],
                 ["train", str(tmp_path / "missing.yaml")], ["--help"], ["train", "--help"], ["rewards", "list"],
                 ["rewards", "score", "rows.jsonl", "--reward-funcs", "accuracy,similarity,corectness"]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "tunelab", *args],
                                capture_output=True, text=True, cwd=tmp_path)
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert result.returncode in (0, 2), result.stderr[-2000:]
        assert "torch" not in imported and "transformers" not in imported, args
        if "dataset=nope" not in args:  # only reading data needs numpy: the command line itself starts without it
            assert "numpy" not in imported, args


def test_version_help_and_key_listing():
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == f"tunelab {__version__}"
    assert "Train" in runner.invoke(app, ["train", "-h"]).output
    listing = runner.invoke(app, ["config"], env={"COLUMNS": "80"}).output
    assert "lora_rank" in listing and max(len(line) for line in listing.splitlines()) <= 80
    keys = {row["key"]: row for row in json.loads(runner.invoke(app, ["config", "--json"]).output)}
    assert keys["lora_rank"]["default"] == 8 and keys["stage"]["default"] == "sft"
    assert keys["adapter_name_or_path"]["default"] is None and keys["bf16"]["default"] is False
