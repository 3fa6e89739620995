"""Every flag of every command is checked before a model loads: a bad value of each one exits 2 with one error line
and no model loaded (loading one would fail this test). The table must name every flag that takes a value, so a
new flag without its check fails here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tunelab.cli import app

REPO = Path(__file__).resolve().parents[1]
DATA = str(REPO / "examples" / "data")
PROMPTS = ["demo_stories", "--dataset-dir", DATA]

# command -> (a valid invocation that would load a model, {flag: (a bad value, what the error says[, another valid
# invocation, for a flag that another mode of the command reads])})
BAD_FLAGS: dict[str, tuple[list[str], dict[str, tuple]]] = {
    "chat": (["chat", "--query", "hi"], {
        "--image": ("{tmp}/no.jpg", "image '{tmp}/no.jpg' does not exist"),
        "--model": ("{tmp}/no_model", "model folder '{tmp}/no_model' does not exist"),
        "--adapter": ("{tmp}/no_adapter", "adapter folder '{tmp}/no_adapter' does not exist"),
        "--template": ("chatmll", "'chatmll' is not a built-in template"),
        "--max-new-tokens": ("0", "--max-new-tokens must be at least 1"),
        "--temperature": ("-1", "--temperature must be at least 0"),
        "--top-p": ("1.5", "--top-p must be in (0, 1]"),
        "--max-thinking-tokens": ("-1", "--max-thinking-tokens: max_thinking_tokens must be 0 or more"),
        "--min-thinking-tokens": ("-2", "--min-thinking-tokens: min_thinking_tokens must be 0 or more"),
        "--num-wait": ("-1", "--num-wait: num_wait must be 0 or more"),
        "--wait-text": (" ", "--wait-text: wait_text must not be empty"),
        "--max-answer-tokens": ("0", "--max-answer-tokens: max_answer_tokens must be at least 1"),
        "--rag-db": ("{tmp}/no_db", "--rag-db '{tmp}/no_db' does not exist; build one with: tunelab rag index"),
        "--rag-collection": ("a", "--rag-collection 'a' is not a collection name"),
        "--rag-top-k": ("0", "--rag-top-k must be at least 1"),
        "--rag-max-distance": ("3", "--rag-max-distance is a cosine distance, between 0 and 2"),
        "--rag-template": ("{{question}}", "--rag-template must contain {{context}}"),
        "--attn": ("flash", "--attn 'flash' is not one of"),
    }),
    "predict": (["predict", *PROMPTS, "--output", "{tmp}/out.jsonl"], {
        "--output": ("{empty}", "is a folder; give a file path"),
        "--dataset-dir": ("{tmp}/no_data", "no_data"),
        "--model": ("{tmp}/no_model", "model folder '{tmp}/no_model' does not exist"),
        "--adapter": ("{tmp}/no_adapter", "adapter folder '{tmp}/no_adapter' does not exist"),
        "--template": ("chatmll", "'chatmll' is not a built-in template"),
        "--batch-size": ("0", "--batch-size must be at least 1"),
        "--max-samples": ("0", "--max-samples must be at least 1"),
        "--max-new-tokens": ("0", "--max-new-tokens must be at least 1"),
        "--temperature": ("-1", "--temperature must be at least 0"),
        "--top-p": ("0", "--top-p must be in (0, 1]"),
        "--max-thinking-tokens": ("-1", "--max-thinking-tokens: max_thinking_tokens must be 0 or more"),
        "--min-thinking-tokens": ("-2", "--min-thinking-tokens: min_thinking_tokens must be 0 or more"),
        "--num-wait": ("-1", "--num-wait: num_wait must be 0 or more"),
        "--wait-text": (" ", "--wait-text: wait_text must not be empty"),
        "--max-answer-tokens": ("0", "--max-answer-tokens: max_answer_tokens must be at least 1"),
        "--rag-db": ("{tmp}/no_db", "--rag-db '{tmp}/no_db' does not exist; build one with: tunelab rag index"),
        "--rag-collection": ("a", "--rag-collection 'a' is not a collection name"),
        "--rag-top-k": ("0", "--rag-top-k must be at least 1"),
        "--rag-max-distance": ("3", "--rag-max-distance is a cosine distance, between 0 and 2"),
        "--rag-template": ("{{question}}", "--rag-template must contain {{context}}"),
        "--attn": ("flash", "--attn 'flash' is not one of"),
    }),
    "eval": (["eval", *PROMPTS, "--output-dir", "{tmp}/eval"], {
        "--predictions": ("{tmp}/no_predictions.jsonl", "--predictions '{tmp}/no_predictions.jsonl' is not a file",
                          ["eval", "--output-dir", "{tmp}/eval"]),
        "--dataset-dir": ("{tmp}/no_data", "no_data"),
        "--model": ("{tmp}/no_model", "model folder '{tmp}/no_model' does not exist"),
        "--adapter": ("{tmp}/no_adapter", "adapter folder '{tmp}/no_adapter' does not exist"),
        "--template": ("chatmll", "'chatmll' is not a built-in template"),
        "--metrics": ("bleu-5", "bleu-5"),
        "--task": ("algebra", "--task 'algebra'"),
        "--language": ("fr", "--language: language 'fr' is not one of"),
        "--output-dir": ("{file}", "--output-dir '{file}' is a file"),
        "--batch-size": ("0", "--batch-size must be at least 1"),
        "--max-samples": ("0", "--max-samples must be at least 1"),
        "--max-new-tokens": ("0", "--max-new-tokens must be at least 1"),
        "--temperature": ("-1", "--temperature must be at least 0"),
        "--top-p": ("0", "--top-p must be in (0, 1]"),
        "--max-thinking-tokens": ("-1", "--max-thinking-tokens: max_thinking_tokens must be 0 or more"),
        "--min-thinking-tokens": ("-2", "--min-thinking-tokens: min_thinking_tokens must be 0 or more"),
        "--num-wait": ("-1", "--num-wait: num_wait must be 0 or more"),
        "--wait-text": (" ", "--wait-text: wait_text must not be empty"),
        "--max-answer-tokens": ("0", "--max-answer-tokens: max_answer_tokens must be at least 1"),
        "--rag-db": ("{tmp}/no_db", "--rag-db '{tmp}/no_db' does not exist; build one with: tunelab rag index"),
        "--rag-collection": ("a", "--rag-collection 'a' is not a collection name"),
        "--rag-top-k": ("0", "--rag-top-k must be at least 1"),
        "--rag-max-distance": ("3", "--rag-max-distance is a cosine distance, between 0 and 2"),
        "--rag-template": ("{{question}}", "--rag-template must contain {{context}}"),
        "--cutoff-len": ("0", "--cutoff-len must be at least 1"),
        "--attn": ("flash", "--attn 'flash' is not one of"),
    }),
    "score": (["score", "--prompt", "Hi", "--response", "Hello", "--adapter", "{rm}"], {
        "--prompt": ("", "--prompt and --response must not be empty"),
        "--response": ("", "--prompt and --response must not be empty"),
        "--model": ("{tmp}/no_model", "model folder '{tmp}/no_model' does not exist"),
        "--adapter": ("{tmp}/no_adapter", "adapter folder '{tmp}/no_adapter' does not exist"),
        "--template": ("chatmll", "'chatmll' is not a built-in template"),
        "--dataset-dir": ("{tmp}/no_data", "no_data", ["score", "demo_preferences", "--adapter", "{rm}"]),
        "--max-samples": ("0", "--max-samples must be at least 1"),
        "--output": ("{empty}", "is a folder; give a file path"),
        "--attn": ("flash", "--attn 'flash' is not one of"),
    }),
    "export": (["export", "--adapter", "{adapter}", "--output", "{tmp}/export"], {
        "--model": ("{tmp}/no_model", "no_model"),
        "--adapter": ("{tmp}/no_adapter", "no_adapter"),
        "--output": ("{file}", "is a file"),
        "--format": ("onnx", "onnx"),
        "--dtype": ("float8", "float8"),
        "--quantization": ("q3_k", "q3_k"),
        "--template": ("chatmll", "'chatmll' is not a built-in template"),
        "--shard-size": ("-1", "export_size"),
        "--device": ("tpu", "tpu"),
    }),
    "serve": (["serve"], {
        "--model": ("{tmp}/no_model", "model folder '{tmp}/no_model' does not exist"),
        "--adapter": ("{tmp}/no_adapter", "no_adapter"),
        "--template": ("chatmll", "'chatmll' is not a built-in template"),
        "--engine": ("tgi", "tgi"),
        "--host": ("not a host", "not a host"),
        "--port": ("70000", "port"),
        "--max-concurrency": ("0", "max_concurrency"),
        "--max-queue": ("-1", "max_queue"),
        "--attn": ("flash", "flash"),
        "--rag-db": ("{tmp}/no_db", "--rag-db '{tmp}/no_db' does not exist"),
        "--rag-collection": ("a", "--rag-collection 'a' is not a collection name"),
        "--rag-top-k": ("0", "rag_top_k"),
        "--rag-max-distance": ("3", "rag_max_distance"),
        "--rag-template": ("{{question}}", "--rag-template must contain {{context}}"),
    }),
    "rag index": (["rag", "index", "{tmp}/docs.jsonl", "--db", "{tmp}/db_new", "--field", "text"], {
        "--db": ("{file}", "--db '{file}' is a file"),
        "--collection": ("a", "--collection 'a' is not a collection name"),
        "--embedding-model": ("{tmp}/no_model", "--embedding-model: folder '{tmp}/no_model' does not exist"),
        "--chunk-size": ("0", "--chunk-size must be at least 1"),
        "--chunk-overlap": ("-1", "--chunk-overlap must be at least 0"),
        "--field": ("body", "docs.jsonl, line 1: no field 'body' (this record has: text)"),
        "--encoding": ("utf-99", "utf-99"),
    }),
    "rag query": (["rag", "query", "a question", "--db", "{db}"], {
        "--db": ("{tmp}/no_db", "--db '{tmp}/no_db' does not exist"),
        "--questions": ("{tmp}/no_questions.jsonl", "no_questions.jsonl"),
        "--question-field": ("body", "expected a text field 'body'",
                             ["rag", "query", "--db", "{db}", "--questions", "{tmp}/docs.jsonl"]),
        "--collection": ("other", "--db '{db}' has no collection 'other' (it has: tunelab)"),
        "--top-k": ("0", "--top-k must be at least 1"),
    }),
    "webui": (["webui"], {
        "--host": ("not a host", "--host not a host makes the page reachable from other machines"),
        "--port": ("70000", "--port must be in 1..65535"),
        "--password": (" ", "--password is empty"),
        "--outputs": ("{file}", "is a file; give the folder that holds"),
    }),
    "demo": (["demo"], {
        "--output-dir": ("{file}", "is a file"),
    }),
    "data inspect": (["data", "inspect", *PROMPTS], {
        "--dataset-dir": ("{tmp}/no_data", "no_data"),
        "--model": ("{tmp}/no_model", "no_model"),
        "--template": ("chatmll", "'chatmll' is not a built-in template"),
        "--stage": ("dop", "--stage 'dop' is neither a stage"),
        "--cutoff-len": ("0", "--cutoff-len must be at least 1"),
        "--num-samples": ("-1", "--num-samples at least 0"),
        "--encoding": ("utf-99", "utf-99"),
        "--plot-dir": ("{file}", "--plot-dir '{file}' is a file"),
    }),
    "data convert": (["data", "convert", *PROMPTS[:1], "{tmp}/out.jsonl", "--dataset-dir", DATA], {
        "--to": ("csv", "--to 'csv' is not supported"),
        "--dataset-dir": ("{tmp}/no_data", "no_data"),
        "--stage": ("dop", "--stage 'dop' is neither a stage"),
        "--encoding": ("utf-99", "utf-99"),
    }),
    "rewards score": (["rewards", "score", "{tmp}/answers.jsonl", "--reward-funcs", "length"], {
        "--reward-funcs": ("lenght", "lenght"),
        "--reward-weights": ("heavy", "heavy"),
        "--reward-model": ("{tmp}/no_model", "no_model"),
        "--set": ("length_target=4", "length_target"),
    }),
}
# Flags whose every value is legitimate to tunelab (text passed on as it is); the reason is part of the table.
FREE_TEXT = {
    ("chat", "--query"): "the question itself",
    ("chat", "--system"): "the system prompt itself",
    ("chat", "--revision"): "a hub branch, tag or commit, asked of the hub only for a hub id",
    ("predict", "--revision"): "likewise",
    ("eval", "--revision"): "likewise",
    ("score", "--revision"): "likewise",
    ("serve", "--revision"): "likewise",
    ("serve", "--api-key"): "any string is a key",
    ("serve", "--served-model-name"): "any name",
    ("webui", "--user"): "any user name",
}


def _value_flags() -> set[tuple[str, str]]:
    """(command, flag) for every option of every command that takes a value."""
    found: set[tuple[str, str]] = set()

    def walk(command: object, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        for param in getattr(command, "params", []) if not hasattr(command, "commands") else []:
            if param.param_type_name == "option" and not param.is_flag:
                found.add((" ".join(path), param.opts[0]))

    walk(typer.main.get_command(app), [])
    return found


def test_every_flag_that_takes_a_value_has_a_bad_value_case():
    covered = {(command, flag) for command, (_, flags) in BAD_FLAGS.items() for flag in flags} | set(FREE_TEXT)
    assert _value_flags() - covered == set(), "add a bad-value case (or a FREE_TEXT reason) for these flags"
    assert covered - _value_flags() == set(), "cases for flags that no longer exist"


CASES = [(command, flag) for command, (_, flags) in BAD_FLAGS.items() for flag in flags]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("flags")
    (tmp / "file").write_text("not a folder")
    (tmp / "empty").mkdir()
    for name, task in (("adapter", "CAUSAL_LM"), ("rm", "SEQ_CLS")):
        (tmp / name).mkdir()
        (tmp / name / "adapter_config.json").write_text(json.dumps(
            {"base_model_name_or_path": "stories260K", "peft_type": "LORA", "task_type": task}))
    (tmp / "answers.jsonl").write_text('{"prompt": "How many?", "completion": "18"}\n')
    (tmp / "docs.jsonl").write_text('{"text": "The office opens at nine."}\n')
    db = tmp / "db"
    if importlib.util.find_spec("chromadb"):  # an empty index (no model needed to make one)
        from tunelab.inference.rag.store import client

        client(db).create_collection("tunelab", embedding_function=None)
    return {"tmp": str(tmp), "file": str(tmp / "file"), "empty": str(tmp / "empty"), "adapter": str(tmp / "adapter"),
            "rm": str(tmp / "rm"), "db": str(db)}


@pytest.fixture
def loaded_models(monkeypatch) -> list[str]:
    """Every attempt to load a transformers model is recorded (and stopped): the flag must be refused first."""
    from transformers import PreTrainedModel

    attempts: list[str] = []

    def refuse(cls, *args, **kwargs):
        attempts.append(str(args[0]) if args else cls.__name__)
        raise RuntimeError("a model was loaded before the bad flag was refused")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    return attempts


@pytest.mark.parametrize(("command", "flag"), CASES, ids=[f"{c} {f}" for c, f in CASES])
def test_a_bad_flag_exits_2_before_any_model_loads(command, flag, scratch, loaded_models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(scratch["tmp"])
    base, flags = BAD_FLAGS[command]
    value, expected, *other = flags[flag]
    args = [arg.format(**scratch) for arg in [*(other[0] if other else base), flag, value]]
    result = CliRunner().invoke(app, args)
    assert not loaded_models, result.output
    assert result.exit_code == 2, (result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected.format(**scratch) in errors[0], result.output
