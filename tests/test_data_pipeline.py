"""The data layer end to end: every shared folder through a registry, skipping, dedup, mixing, cutoff, CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import DataSettings, build_config
from tunelab.data.pipeline import DataReport, load_rows, tokenize_rows
from tunelab.data.registry import load_dataset_rows
from tunelab.errors import DataError
from tunelab.models.loading import load_tokenizer

SHARED = Path(__file__).resolve().parent / "fixtures"
DATA = SHARED / "data"


def count_lines(path: Path) -> int:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    return sum(1 for line in raw.split(b"\n") if line.strip())


# Every folder of tests/fixtures/data, each in the format it really has: (entry, kind, expected rows).
REGISTRY = {
    "alpaca_5000": {"file_name": str(DATA / "alpaca" / "alpaca_5000.json")},
    "advertisegen": {"file_name": str(DATA / "advertisegen" / "dev.json")},
    "chatglm6b": {"file_name": str(DATA / "chatglm6b" / "data_sample.jsonl")},
    "belle_eval": {"file_name": str(DATA / "belle" / "eval_set.json"),
                   "columns": {"prompt": "question", "response": "std_answer"}},
    "belle_seed": {"file_name": str(DATA / "belle" / "zh_seed_tasks.json")},
    "gsm8k_sft": {"file_name": str(DATA / "gsm8k" / "train.jsonl")},
    "gsm8k_rl": {"file_name": str(DATA / "gsm8k" / "test.jsonl"), "options": {"extract_answer": "gsm8k"}},
    "hh_rlhf": {"file_name": str(DATA / "hh-rlhf" / "test.jsonl.gz"), "ranking": True},
    "medical_csv": {"file_name": str(DATA / "medical" / "medical_sample.csv"),
                    "columns": {"prompt": "title", "query": "ask", "response": "answer"}},
    "medical_txt": {"file_name": str(DATA / "medical" / "medical_sample.txt"), "text_split": "paragraph"},
    "limo_math": {"file_name": str(DATA / "limo" / "math" / "test.jsonl")},
    "limo_all": {"file_name": str(DATA / "limo")},
    "lf_alpaca": {"file_name": str(DATA / "llamafactory" / "alpaca_en_demo.json")},
    "lf_dpo": {"file_name": str(DATA / "llamafactory" / "dpo_en_demo.json"), "ranking": True,
               "formatting": "sharegpt", "columns": {"messages": "conversations", "chosen": "chosen",
                                                     "rejected": "rejected"}},
    "lf_c4": {"file_name": str(DATA / "llamafactory" / "c4_demo.jsonl"), "columns": {"prompt": "text"}},
}


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("registry")
    (folder / "dataset_info.json").write_text(json.dumps(REGISTRY, ensure_ascii=False))
    return folder


@pytest.mark.parametrize(("name", "kind", "expected"), [
    ("advertisegen", "sft", 1070),
    ("chatglm6b", "sft", 100),
    ("belle_seed", "sft", 175),
    ("gsm8k_sft", "sft", 1000),
    ("gsm8k_rl", "rl", 1319),
    ("medical_csv", "sft", 1000),
    ("medical_txt", "pt", 1000),
    ("limo_math", "rl", None),
    ("lf_alpaca", "sft", 999),
    ("lf_dpo", "preference", 300),
    ("lf_c4", "pt", 300),
])
def test_every_shared_folder_loads_with_its_real_count(registry_dir, name, kind, expected):
    loaded = load_dataset_rows(name, registry_dir, kind)
    if expected is None:
        expected = count_lines(Path(REGISTRY[name]["file_name"]))
    assert len(loaded.rows) == expected and loaded.skipped.total == 0


def test_hh_rlhf_pairs_with_an_empty_answer_are_named_or_counted(registry_dir):
    """4 of the 2312 HH pairs end in an empty assistant turn: no preference to learn, so an error by default,
    and with skip_invalid a counted skip; the rest all load."""
    with pytest.raises(DataError, match="line 87, field 'chosen': the answer is empty"):
        load_dataset_rows("hh_rlhf", registry_dir, "preference")
    loaded = load_dataset_rows("hh_rlhf", registry_dir, "preference", skip_invalid=True)
    assert len(loaded.rows) == 2308 and loaded.skipped.counts == {"empty answer": 4}


def test_one_line_json_array_names_the_record(registry_dir):
    """alpaca_5000 is a single-line JSON array with two empty answers: the record number says which."""
    with pytest.raises(DataError) as error:
        load_dataset_rows("alpaca_5000", registry_dir, "sft")
    assert error.value.line == 1 and error.value.record > 1 and f"(record {error.value.record})" in str(error.value)
    loaded = load_dataset_rows("alpaca_5000", registry_dir, "sft", skip_invalid=True)
    assert len(loaded.rows) + loaded.skipped.total == 5000 and loaded.skipped.counts == {"empty answer": 2}
    first = loaded.rows[0]["messages"]
    record = json.loads((DATA / "alpaca" / "alpaca_5000.json").read_text())[0]
    assert first[-1]["content"] == record["output"] and first[0]["content"].startswith(record["instruction"])


def test_known_records_convert_to_the_right_content(registry_dir):
    medical = load_dataset_rows("medical_csv", registry_dir, "sft", max_samples=1).rows[0]["messages"]
    question = "高血压患者能吃党参吗？\n我有高血压这两天女婿来的时候给我拿了些党参泡水喝，您好高血压可以吃党参吗？"
    assert medical[0] == {"role": "user", "content": question}
    assert medical[1]["content"].startswith("高血压病人可以口服党参的。")

    rl = load_dataset_rows("gsm8k_rl", registry_dir, "rl", max_samples=1).rows[0]
    assert rl["answer"] == "18" and rl["prompt"][0]["content"].startswith("Janet’s ducks lay 16 eggs")

    hh = load_dataset_rows("hh_rlhf", registry_dir, "preference", max_samples=1).rows[0]
    assert hh["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert hh["prompt"][-1]["role"] == "user" and len(hh["chosen"]) == len(hh["rejected"]) == 1
    assert hh["chosen"][0]["role"] == "assistant" and hh["chosen"] != hh["rejected"]

    ad = load_dataset_rows("advertisegen", registry_dir, "sft", max_samples=1).rows[0]["messages"]
    assert ad[0]["content"].startswith("类型#") and ad[1]["role"] == "assistant"


def test_folder_of_subfolders_reads_every_file(registry_dir):
    loaded = load_dataset_rows("limo_all", registry_dir, "rl")
    expected = sum(count_lines(path) for path in (DATA / "limo").rglob("*.jsonl"))
    assert len(loaded.rows) == expected


def test_belle_empty_answers_are_skipped_and_counted(registry_dir):
    with pytest.raises(DataError) as error:
        load_dataset_rows("belle_eval", registry_dir, "sft")
    assert "eval_set.json" in str(error.value) and "std_answer" in str(error.value) and "line" in str(error.value)

    loaded = load_dataset_rows("belle_eval", registry_dir, "sft", skip_invalid=True)
    assert len(loaded.rows) + loaded.skipped.total == count_lines(DATA / "belle" / "eval_set.json")
    assert loaded.skipped.counts["empty answer"] == loaded.skipped.total > 0
    assert all("eval_set.json, line" in example for example in loaded.skipped.examples["empty answer"])


def test_malformed_records_are_counted_by_reason(tmp_path):
    lines = [
        json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi!"}),
        '{"instruction": "broken", ',
        json.dumps({"instruction": "No answer.", "input": ""}),
        json.dumps({"instruction": "Empty answer.", "input": "", "output": "  "}),
        json.dumps({"instruction": "Number answer.", "input": "", "output": 42}),
        json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi!"}),
        json.dumps({"instruction": "Say bye.", "input": "", "output": "Bye!"}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(DataError) as error:
        load_dataset_rows(str(path), tmp_path, "sft")
    assert error.value.line == 2 and "mixed.jsonl" in str(error.value)

    loaded = load_dataset_rows(str(path), tmp_path, "sft", skip_invalid=True, dedup=True)
    assert [row["messages"][1]["content"] for row in loaded.rows] == ["Hi!", "Bye!"]
    counts = loaded.skipped.counts
    assert counts["invalid JSON"] == 1 and counts["missing field"] == 1 and counts["empty answer"] == 1
    assert counts["wrong type"] == 1 and counts["duplicate record"] == 1
    assert len(loaded.rows) + loaded.skipped.total == len(lines)
    assert "line 3" in loaded.skipped.examples["missing field"][0]
    assert "same as line 1" in loaded.skipped.examples["duplicate record"][0]


def _cfg(**values):
    return build_config({"dataset_dir": str(DATA / "llamafactory"), **values})


def test_mixing_and_validation_split_are_deterministic():
    cfg = _cfg(dataset="identity,alpaca_en_demo", mix_strategy="interleave_under", interleave_probs="0.5,0.5",
               val_size=0.1, seed=3)
    train, held_out, report = load_rows(cfg, "sft", cfg.seed)
    again_train, _, _ = load_rows(cfg, "sft", cfg.seed)
    assert train == again_train
    identity = {json.dumps(r) for r in load_dataset_rows("identity", DATA / "llamafactory", "sft").rows}
    mixed = train + held_out
    from_identity = sum(json.dumps(r) in identity for r in mixed)
    assert from_identity == 91  # under-sampling stops when the smaller dataset runs out
    assert 40 < len(mixed) - from_identity < 160 and len(held_out) == round(len(mixed) * 0.1)
    assert [d["rows"] for d in report.datasets] == [91, 999]


def test_cutoff_truncates_or_drops_and_counts():
    """The data layer reads only the data settings: a DataSettings alone drives it, no training config."""
    def _cfg(**values):
        return DataSettings(dataset_dir=str(DATA / "llamafactory"), **values)

    tokenizer = load_tokenizer("stories260K", "default")
    rows = load_dataset_rows("alpaca_en_demo", DATA / "llamafactory", "sft", max_samples=40).rows
    truncate = DataReport()
    kept = tokenize_rows(rows, tokenizer, _cfg(cutoff_len=300), "sft", truncate, "train")
    assert truncate.truncated > 0 and all(len(sample["input_ids"]) <= 300 for sample in kept)
    assert len(kept) + truncate.skipped.total == len(rows)

    drop = DataReport()
    short = tokenize_rows(rows, tokenizer, _cfg(cutoff_len=300, cutoff_policy="drop"), "sft", drop, "train")
    assert len(short) == len(rows) - truncate.truncated - truncate.skipped.total
    assert sum(drop.skipped.counts.values()) == len(rows) - len(short) and drop.truncated == 0

    tiny = DataReport()
    left = tokenize_rows(rows, tokenizer, _cfg(cutoff_len=60), "sft", tiny, "train")
    reason = "no trained token left after truncation to cutoff_len 60"
    assert tiny.skipped.counts[reason] == len(rows) - len(left) > 0 and left
    with pytest.raises(DataError, match="every train sample was dropped"):
        tokenize_rows(rows, tokenizer, _cfg(cutoff_len=20), "sft", DataReport(), "train")


runner = CliRunner()


def _inspect(*args: str) -> dict:
    result = runner.invoke(app, ["data", "inspect", *args, "--json", "-n", "1"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_inspect_shows_every_kind_of_row(tmp_path):
    lf = ["--dataset-dir", str(DATA / "llamafactory"), "--plot-dir", str(tmp_path)]
    sft = _inspect("alpaca_en_demo", *lf)
    assert sft["format"] == "alpaca" and sft["num_rows"] == 999 and Path(sft["histogram_png"]).is_file()
    sample = sft["samples"][0]
    assert any(s["trained"] for s in sample["segments"]) and any(not s["trained"] for s in sample["segments"])

    dpo = _inspect("dpo_en_demo", "--stage", "dpo", *lf)
    pair = dpo["samples"][0]
    assert dpo["num_rows"] == 300 and "rejected_segments" in pair
    chosen = "".join(s["text"] for s in pair["segments"] if s["trained"])
    rejected = "".join(s["text"] for s in pair["rejected_segments"] if s["trained"])
    assert chosen and rejected and chosen != rejected

    kto = _inspect("kto_en_demo", "--stage", "kto", *lf)
    assert kto["num_rows"] == 300 and isinstance(kto["samples"][0]["label"], bool)

    pt = _inspect("c4_demo", "--stage", "pt", *lf)
    assert pt["num_rows"] == 300 and all(s["trained"] for s in pt["samples"][0]["segments"])


def test_inspect_skip_invalid_reports_reasons(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    failed = runner.invoke(app, ["data", "inspect", str(path), "--json"])
    assert failed.exit_code == 2 and "bad.jsonl, line 2" in failed.output and "Traceback" not in failed.output
    result = _inspect(str(path), "--skip-invalid", "--plot-dir", str(tmp_path))
    assert result["num_rows"] == 1 and result["skipped"]["missing field"]["count"] == 1


def test_convert_writes_canonical_rows(tmp_path):
    out = tmp_path / "hh.jsonl"
    result = runner.invoke(app, ["data", "convert", str(DATA / "hh-rlhf" / "test.jsonl.gz"), str(out),
                                 "--stage", "dpo", "--skip-invalid"])
    assert result.exit_code == 0, result.output
    assert "skipped 4: empty answer" in result.output  # HH pairs that end in an empty reply
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2308 and set(rows[0]) >= {"prompt", "chosen", "rejected"}
    # canonical rows read back as the messages-based preference format
    again = load_dataset_rows(str(out), tmp_path, "preference")
    assert again.rows == rows


def test_hub_dataset_without_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # `make test` sets it too; the hub is unreachable here anyway
    with pytest.raises(DataError) as error:
        load_dataset_rows("tatsu-lab/alpaca", tmp_path, "sft")
    message = str(error.value)
    assert "could not load 'tatsu-lab/alpaca' from the Hugging Face hub" in message and "local copy" in message


@pytest.mark.parametrize(("kind", "entry"), [("sft", "lf_alpaca"), ("preference", "lf_dpo"), ("pt", "lf_c4")])
def test_rows_tokenized_in_batches_equal_one_by_one_in_order(monkeypatch, registry_dir, minimind_tokenizer, kind: str,
                                                            entry: str):
    """The pipeline hands rows to the tokenizer in batches: every sample is the one
    that encoding its row alone gives, in the rows' order."""
    from tunelab.data import pipeline
    from tunelab.data.row_kinds import row_kind

    monkeypatch.setattr(pipeline, "ENCODE_BATCH_ROWS", 7)
    tokenizer = minimind_tokenizer
    rows = load_dataset_rows(entry, registry_dir, kind, max_samples=40).rows
    samples = tokenize_rows(rows, tokenizer, DataSettings(cutoff_len=4096), kind, DataReport(), "train")
    rules = row_kind(kind)
    alone = [rules.inputs(encodings, row)
             for row in rows for encodings in rules.encode(row, tokenizer, "assistant", 4096)]
    assert samples == alone and len(samples) >= len(rows)


def test_a_row_that_cannot_be_masked_is_named_from_its_batch(monkeypatch):
    from tunelab.data import pipeline

    monkeypatch.setattr(pipeline, "ENCODE_BATCH_ROWS", 4)
    tokenizer = load_tokenizer("stories260K", "default")
    tokenizer.chat_template = tokenizer.chat_template.replace("Assistant: {{ m.content }}", "Assistant: (hidden)")
    rows = load_dataset_rows("alpaca_en_demo", DATA / "llamafactory", "sft", max_samples=12).rows
    rows = [{**row, "messages": row["messages"][:1]} if index != 9 else row for index, row in enumerate(rows)]
    with pytest.raises(DataError, match=r"^train sample 10: the chat template does not render assistant turn 1"):
        tokenize_rows(rows, tokenizer, DataSettings(cutoff_len=256), "sft", DataReport(), "train")


def test_tokenizing_leaves_older_objects_to_the_collector_afterwards(minimind_tokenizer):
    """While samples are made, the cycle collector walks only objects made since (a full collection of the process
    cost a tenth of tokenizing); the objects from before are handed back to it when the samples are done, also when
    the samples are abandoned part way."""
    import gc

    from tunelab.data.pipeline import iter_samples
    from tunelab.data.row_kinds import row_kind

    rows = load_dataset_rows("alpaca_en_demo", DATA / "llamafactory", "sft", max_samples=6).rows
    settings = DataSettings(cutoff_len=256)
    frozen_while_tokenizing = []
    for _sample in iter_samples(rows, minimind_tokenizer, settings, row_kind("sft"), DataReport(), "train"):
        frozen_while_tokenizing.append(gc.get_freeze_count())
    assert len(frozen_while_tokenizing) == 6 and min(frozen_while_tokenizing) > 0
    assert gc.get_freeze_count() == 0

    samples = iter_samples(rows, minimind_tokenizer, settings, row_kind("sft"), DataReport(), "train")
    next(samples)
    assert gc.get_freeze_count() > 0
    samples.close()
    assert gc.get_freeze_count() == 0
