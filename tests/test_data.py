"""Data layer: readers (line numbers, JSON Lines named .json, gzip, truncation, U+2028), formats and the
registry, against LLaMA-Factory's real dataset_info.json and demo datasets."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tunelab.data.formats import FORMATS, ColumnSpec, FieldError, detect_format
from tunelab.data.readers import InvalidRecord, read_records
from tunelab.data.registry import load_dataset_rows, resolve_dataset, split_rows
from tunelab.errors import DataError


def records_of(path: Path) -> list[tuple[int, Any]]:
    return [(line, record) for _, line, record in read_records(path)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# --- readers --------------------------------------------------------------------------------------

def test_json_array_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "data.json", (
        "\n"                                  # 1
        "[\n"                                 # 2
        '  {"a": 1},\n'                       # 3
        "  {\n"                               # 4
        '    "a": 2,\n'                       # 5
        '    "b": "x\\ny"\n'                  # 6  (an escaped newline is not a line break)
        '  }, {"a": 3},\n'                    # 7  two records on one line
        "\n"                                  # 8
        '  {"a": 4}]\n'                       # 9
    ))
    assert records_of(path) == [(3, {"a": 1}), (4, {"a": 2, "b": "x\ny"}), (7, {"a": 3}), (9, {"a": 4})]


def test_single_line_json_array_is_all_line_one(tmp_path: Path) -> None:
    path = write(tmp_path / "one.json", '[{"a": 1}, {"a": 2},{"a": 3}]')
    assert records_of(path) == [(1, {"a": 1}), (1, {"a": 2}), (1, {"a": 3})]


def test_real_json_array_line_numbers(llamafactory_dir: Path) -> None:
    path = llamafactory_dir / "alpaca_en_demo.json"
    text = path.read_text(encoding="utf-8")
    expected_lines = [number for number, line in enumerate(text.split("\n"), start=1) if line == "  {"]
    records = records_of(path)
    assert len(records) == 999
    assert [line for line, _ in records] == expected_lines
    assert [record for _, record in records] == json.loads(text)


def test_jsonl_named_json(shared_dir: Path) -> None:
    path = shared_dir / "data" / "advertisegen" / "dev.json"
    records = records_of(path)
    assert len(records) == 1070
    assert [line for line, _ in records] == list(range(1, 1071))
    first_line = path.read_text(encoding="utf-8").split("\n", 1)[0]
    assert records[0][1] == json.loads(first_line)
    assert all(set(record) == {"content", "summary"} for _, record in records)


def test_gzip_reads_like_plain(tmp_path: Path, llamafactory_dir: Path) -> None:
    for name in ("alpaca_en_demo.json", "c4_demo.jsonl", "wiki_demo.txt"):
        source = llamafactory_dir / name
        packed = tmp_path / (name + ".gz")
        with source.open("rb") as plain, gzip.open(packed, "wb") as compressed:
            shutil.copyfileobj(plain, compressed)
        assert records_of(packed) == records_of(source), name
    assert len(records_of(tmp_path / "c4_demo.jsonl.gz")) == 300


def test_truncated_json_array_names_file_and_line(tmp_path: Path, llamafactory_dir: Path) -> None:
    text = (llamafactory_dir / "alpaca_en_demo.json").read_text(encoding="utf-8")
    starts = [m.start() for m in re.finditer(r"\n  \{", text)]
    cut = text.index('"output"', starts[3]) + 20  # inside the 4th record's output string
    path = write(tmp_path / "cut.json", text[:cut])
    seen = []
    with pytest.raises(DataError) as info:
        for _, line, _record in read_records(path):
            seen.append(line)
    expected_line = text[:cut].count("\n") + 1  # the string that never ends starts on the last line
    assert len(seen) == 3
    assert info.value.file == str(path) and info.value.line == expected_line
    assert f"cut.json, line {expected_line}" in str(info.value)


def test_unclosed_json_array_names_last_line(tmp_path: Path) -> None:
    path = write(tmp_path / "open.json", '[\n  {"a": 1},\n  {"a": 2},\n')
    with pytest.raises(DataError, match="not closed") as info:
        list(read_records(path))
    assert info.value.line == 4
    assert "open.json, line 4" in str(info.value)


def test_invalid_jsonl_line_is_named_and_reading_goes_on(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"a": 1}\n\n{"a": 2}\n{"a": 3,\n{"a": 4}\n')
    records = records_of(path)
    assert [line for line, _ in records] == [1, 3, 4, 5]
    invalid = records[2][1]
    assert isinstance(invalid, InvalidRecord) and invalid.reason == "invalid JSON"
    assert records[3] == (5, {"a": 4})


def test_line_separator_inside_strings_does_not_split(tmp_path: Path) -> None:
    records = [{"q": "first\u2028second\u2029third\x85end", "a": "x"}, {"q": "plain", "a": "y"}]
    path = write_jsonl(tmp_path / "sep.jsonl", records)
    assert "\u2028" in path.read_text(encoding="utf-8")  # written raw, not escaped
    assert records_of(path) == [(1, records[0]), (2, records[1])]
    txt = write(tmp_path / "sep.txt", "one\u2028still one\ntwo\n")
    assert records_of(txt) == [(1, {"text": "one\u2028still one"}), (2, {"text": "two"})]


def test_real_gpqa_with_line_separator(shared_dir: Path) -> None:
    path = shared_dir / "data" / "limo" / "gpqa" / "test.jsonl"
    text = path.read_text(encoding="utf-8")
    assert "\u2028" in text
    assert len(text.splitlines()) != text.count("\n")  # str.splitlines would split a record
    records = records_of(path)
    assert len(records) == text.count("\n") == 198
    assert [line for line, _ in records] == list(range(1, 199))


def test_txt_skips_blank_lines_and_keeps_numbers(tmp_path: Path, llamafactory_dir: Path) -> None:
    path = write(tmp_path / "doc.txt", "first doc\r\n\nsecond doc\n   \nthird\n")
    assert records_of(path) == [(1, {"text": "first doc"}), (3, {"text": "second doc"}),
                                (5, {"text": "third"})]
    assert len(records_of(llamafactory_dir / "wiki_demo.txt")) == 30


def test_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"a": 1}]).encode())
    assert records_of(path) == [(1, {"a": 1})]


def test_wrong_explicit_encoding_names_line(shared_dir: Path) -> None:
    medical = (shared_dir / "data" / "medical" / "medical_sample.txt")  # GB18030-encoded
    with pytest.raises(DataError) as info:
        list(read_records(medical, encoding="utf-8"))
    assert info.value.file == str(medical) and info.value.line == 1 and "encoding" in str(info.value)


def test_folder_reads_data_files_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "b.jsonl", [{"n": 2}])
    write(folder / "a.json", '[{"n": 1}]')
    write(folder / "sub" / "c.txt", "three\n")
    write(folder / "notes.md", "ignored\n")
    got = [(file.name, record) for file, _, record in read_records(folder)]
    assert got == [("a.json", {"n": 1}), ("b.jsonl", {"n": 2}), ("c.txt", {"text": "three"})]


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(read_records(tmp_path / "missing.json"))
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        list(read_records(write(tmp_path / "x.xlsx", "a,b\n")))
    with pytest.raises(DataError, match="file is empty"):
        list(read_records(write(tmp_path / "empty.json", "  \n")))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no data files"):
        list(read_records(tmp_path / "nothing"))


# --- formats ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"instruction": "a", "input": "", "output": "b"}, "alpaca"),
        ({"conversations": [{"from": "human", "value": "a"}]}, "sharegpt"),
        ({"messages": [{"role": "user", "content": "a"}]}, "messages"),
        ({"prompt": "a", "completion": "b"}, "prompt_completion"),
    ],
)
def test_detect_format(record: dict, expected: str) -> None:
    assert detect_format(record, ColumnSpec(), "sft").name == expected
    assert detect_format(record, ColumnSpec(), "pt").name == "text"


def test_detect_format_errors() -> None:
    with pytest.raises(FieldError, match="use stage: pt"):
        detect_format({"text": "x"}, ColumnSpec(), "sft")
    with pytest.raises(FieldError, match="cannot tell the format") as info:
        detect_format({"foo": "q", "bar": "a"}, ColumnSpec(), "sft")
    assert info.value.field == "bar, foo"
    with pytest.raises(FieldError, match="unknown formatting"):
        detect_format({"a": 1}, ColumnSpec(formatting="openai"), "sft")
    assert detect_format([{"role": "user", "content": "x"}], ColumnSpec(), "sft").name == "message_list"


def test_alpaca_with_system_and_history() -> None:
    record = {"instruction": "Add them.", "input": "2 and 3", "output": "5", "system": "Be terse.",
              "history": [["Hi", "Hello."]]}
    [row] = FORMATS["alpaca"].convert(record, ColumnSpec())
    assert row["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Add them.\n2 and 3"}, {"role": "assistant", "content": "5"},
    ]
    assert row["tools"] is None


# --- registry: the real LLaMA-Factory dataset_info.json ------------------------------------------------

def test_alpaca_en_demo(llamafactory_dir: Path, alpaca_records: list[dict]) -> None:
    loaded = load_dataset_rows("alpaca_en_demo", llamafactory_dir, "sft")
    assert loaded.format == "alpaca"
    assert len(loaded.rows) == 999
    first = alpaca_records[0]
    assert first["input"] == ""
    assert loaded.rows[0]["messages"] == [
        {"role": "user", "content": first["instruction"]},
        {"role": "assistant", "content": first["output"]},
    ]
    with_input = next(i for i, r in enumerate(alpaca_records) if r["input"])
    assert loaded.rows[with_input]["messages"][0]["content"] == (
        alpaca_records[with_input]["instruction"] + "\n" + alpaca_records[with_input]["input"])
    for row, record in zip(loaded.rows, alpaca_records, strict=True):
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][1]["content"] == record["output"]
    assert loaded.lines[:2] == [2, 7]


def test_max_samples(llamafactory_dir: Path) -> None:
    loaded = load_dataset_rows("alpaca_en_demo", llamafactory_dir, "sft", max_samples=7)
    assert len(loaded.rows) == len(loaded.lines) == 7


def test_identity(llamafactory_dir: Path) -> None:
    loaded = load_dataset_rows("identity", llamafactory_dir, "sft")
    assert len(loaded.rows) == 91
    assert loaded.rows[0]["messages"][0] == {"role": "user", "content": "hi"}
    assert "{{name}}" in loaded.rows[0]["messages"][1]["content"]


def test_glaive_toolcall(llamafactory_dir: Path) -> None:
    raw = json.loads((llamafactory_dir / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    loaded = load_dataset_rows("glaive_toolcall_en_demo", llamafactory_dir, "sft")
    assert loaded.format == "sharegpt"
    assert len(loaded.rows) == 300

    first = loaded.rows[0]
    assert [m["role"] for m in first["messages"]] == [
        "user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
    call = first["messages"][3]
    assert call["role"] == "assistant" and call["content"] == ""
    assert call["tool_calls"] == [{"type": "function", "function": {
        "name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}}]
    assert first["messages"][4]["content"] == raw[0]["conversations"][4]["value"]
    assert isinstance(first["tools"], list)
    assert first["tools"][0]["type"] == "function"
    assert first["tools"][0]["function"]["name"] == "search_recipes"
    assert first["tools"][0]["function"]["parameters"]["required"] == ["ingredients"]

    for row, record in zip(loaded.rows, raw, strict=True):
        kinds = [turn["from"] for turn in record["conversations"]]
        assert sum("tool_calls" in m for m in row["messages"]) == kinds.count("function_call")
        assert [m["role"] for m in row["messages"]].count("tool") == kinds.count("observation")
        for message in row["messages"]:
            for tool_call in message.get("tool_calls", []):
                assert isinstance(tool_call["function"]["arguments"], dict)
        tools = json.loads(record["tools"]) if record["tools"] else []
        assert (row["tools"] or []) == [{"type": "function", "function": t} for t in tools]


def test_kto_en_demo_is_refused_for_sft_and_read_for_kto(llamafactory_dir: Path, tmp_path: Path) -> None:
    """SFT on KTO data would learn the answers labelled false as targets: refused, naming the stage it suits,
    whether it comes through its registry mapping or as a bare file."""
    for name in ("kto_en_demo", str(llamafactory_dir / "kto_en_demo.json")):
        with pytest.raises(DataError) as info:
            load_dataset_rows(name, llamafactory_dir, "sft")
        assert "kto_en_demo.json" in str(info.value) and "use stage: kto" in str(info.value)
    raw = json.loads((llamafactory_dir / "kto_en_demo.json").read_text(encoding="utf-8"))
    loaded = load_dataset_rows("kto_en_demo", llamafactory_dir, "kto")
    assert [row["label"] for row in loaded.rows] == [record["label"] for record in raw]
    assert loaded.rows[0]["completion"][0]["content"] == raw[0]["messages"][-1]["content"]
    # Mapped explicitly as a conversation (no kto_tag), the user chose SFT rows: allowed.
    (tmp_path / "dataset_info.json").write_text(json.dumps({"kto_as_sft": {
        "file_name": str(llamafactory_dir / "kto_en_demo.json"), "formatting": "sharegpt",
        "columns": {"messages": "messages"}, "tags": {"role_tag": "role", "content_tag": "content",
                                                       "user_tag": "user", "assistant_tag": "assistant"}}}))
    assert len(load_dataset_rows("kto_as_sft", tmp_path, "sft").rows) == 300


def test_sft_data_is_refused_for_preference_stages(llamafactory_dir: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset_rows("alpaca_en_demo", llamafactory_dir, "preference")
    assert "alpaca_en_demo.json" in str(info.value) and "use stage: sft" in str(info.value)


def test_dpo_en_demo_is_rejected_for_sft(llamafactory_dir: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset_rows("dpo_en_demo", llamafactory_dir, "sft")
    message = str(info.value)
    assert "dpo_en_demo" in message and "preference" in message and "'sft'" in message


def test_c4_demo_for_pretraining(llamafactory_dir: Path) -> None:
    loaded = load_dataset_rows("c4_demo", llamafactory_dir, "pt")
    assert loaded.format == "text"
    raw = [json.loads(line) for line in (llamafactory_dir / "c4_demo.jsonl").read_text("utf-8").splitlines()]
    assert loaded.rows == [{"text": r["text"]} for r in raw]
    assert len(loaded.rows) == 300
    wiki = load_dataset_rows("wiki_demo", llamafactory_dir, "pt")
    assert len(wiki.rows) == 30 and set(wiki.rows[0]) == {"text"}


def test_c4_demo_for_sft_says_use_pt(llamafactory_dir: Path) -> None:
    with pytest.raises(DataError, match="use stage: pt") as info:
        load_dataset_rows("c4_demo", llamafactory_dir, "sft")
    assert "c4_demo.jsonl" in str(info.value) and "line 1" in str(info.value)


def test_unknown_dataset_name_lists_known(llamafactory_dir: Path) -> None:
    with pytest.raises(DataError) as info:
        resolve_dataset("alpaca_en_dem", llamafactory_dir)
    message = str(info.value)
    assert "'alpaca_en_dem'" in message and "dataset_info.json" in message and "known names" in message


def test_resolve_by_registry_and_by_path(llamafactory_dir: Path, tmp_path: Path) -> None:
    source = resolve_dataset("glaive_toolcall_en_demo", llamafactory_dir)
    assert source.path == llamafactory_dir / "glaive_toolcall_en_demo.json"
    assert source.spec.formatting == "sharegpt" and source.spec.columns["tools"] == "tools"
    assert resolve_dataset("dpo_en_demo", llamafactory_dir).spec.ranking is True
    # A file name relative to dataset_dir that is not a registry name.
    assert resolve_dataset("c4_demo.jsonl", llamafactory_dir).path == llamafactory_dir / "c4_demo.jsonl"
    # An absolute path, and a dataset_dir without a registry.
    path = write(tmp_path / "mine.jsonl", "{}\n")
    assert resolve_dataset(str(path), tmp_path / "nowhere").path == path


def test_by_path_messages_file(tmp_path: Path) -> None:
    records = [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Capital of France?"},
                      {"role": "assistant", "content": "Paris."}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Two "}, {"type": "text",
                                                                                    "text": "parts"}]},
                      {"role": "assistant", "content": "Joined."}]},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    loaded = load_dataset_rows(str(path), tmp_path, "sft")
    assert loaded.format == "messages"
    assert loaded.rows[0]["messages"] == records[0]["messages"]
    assert loaded.rows[1]["messages"][0] == {"role": "user", "content": "Two parts"}
    assert loaded.lines == [1, 2]


def test_prompt_completion_file(tmp_path: Path) -> None:
    records = [
        {"prompt": "Name a primary color.", "completion": "Red."},
        {"prompt": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
         "completion": [{"role": "assistant", "content": "Bonjour"}]},
    ]
    path = write(tmp_path / "pc.json", json.dumps(records, indent=2))
    loaded = load_dataset_rows(str(path), tmp_path, "sft")
    assert loaded.format == "prompt_completion"
    assert loaded.rows[0]["messages"] == [{"role": "user", "content": "Name a primary color."},
                                          {"role": "assistant", "content": "Red."}]
    assert [m["role"] for m in loaded.rows[1]["messages"]] == ["system", "user", "assistant"]
    assert loaded.rows[1]["messages"][2]["content"] == "Bonjour"


# --- bad records: the message names file, line and field --------------------------------------------

def _error_for(tmp_path: Path, name: str, text: str) -> DataError:
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as info:
        load_dataset_rows(str(path), tmp_path, "sft")
    assert info.value.file == str(path)
    return info.value


def test_alpaca_missing_output(tmp_path: Path) -> None:
    error = _error_for(tmp_path, "alpaca_bad.json", (
        '[\n  {"instruction": "Say hi.", "input": "", "output": "Hi!"},\n'
        '  {"instruction": "Say bye.",\n   "input": ""}\n]\n'))
    message = str(error)
    assert "alpaca_bad.json" in message and "line 3" in message and "'output'" in message
    assert (error.line, error.field) == (3, "output")


def test_sharegpt_unknown_role(tmp_path: Path) -> None:
    good = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    bad = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hello"}]}
    error = _error_for(tmp_path, "share.jsonl", "\n".join(json.dumps(r) for r in (good, good, bad)) + "\n")
    message = str(error)
    assert "share.jsonl" in message and "line 3" in message
    assert "conversations[1].from" in message and "'bot'" in message


def test_conversation_starting_with_assistant(tmp_path: Path) -> None:
    bad = {"conversations": [{"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Hi"},
                             {"from": "gpt", "value": "Bye"}]}
    error = _error_for(tmp_path, "order.jsonl", json.dumps(bad) + "\n")
    message = str(error)
    assert "order.jsonl" in message and "line 1" in message and "'conversations'" in message
    assert "must start with a user turn" in message


@pytest.mark.parametrize(
    ("record", "field", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]},
         "messages[1].role", "unknown role"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]},
         "messages[1].content", "empty"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                       {"role": "assistant", "content": "c"}]}, "messages", "do not alternate"),
        ({"messages": [{"role": "user", "content": "a"}]}, "messages", "no assistant turn"),
    ],
)
def test_bad_messages_records(tmp_path: Path, record: dict, field: str, fragment: str) -> None:
    good = {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]}
    error = _error_for(tmp_path, "msgs.jsonl", json.dumps(good) + "\n" + json.dumps(record) + "\n")
    assert error.line == 2 and error.field == field
    assert f"msgs.jsonl, line 2, field '{field}'" in str(error) and fragment in str(error)


def test_glaive_function_call_not_json(tmp_path: Path) -> None:
    bad = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "call it"}],
           "tools": "[]"}
    error = _error_for(tmp_path, "tools.jsonl", json.dumps(bad) + "\n")
    assert error.field == "conversations[1].value" and "function_call" in str(error)


# --- split_rows ------------------------------------------------------------------------------------

def test_split_rows_deterministic_and_disjoint() -> None:
    rows = [{"id": i} for i in range(200)]
    train, val = split_rows(rows, 0.1, seed=42)
    train_again, val_again = split_rows(rows, 0.1, seed=42)
    assert (train, val) == (train_again, val_again)
    assert len(val) == 20 and len(train) == 180
    train_ids, val_ids = {r["id"] for r in train}, {r["id"] for r in val}
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(200))
    assert [r["id"] for r in train] == sorted(train_ids)  # original order kept
    assert val_ids != set(range(20))  # actually shuffled
    _, other_val = split_rows(rows, 0.1, seed=7)
    assert {r["id"] for r in other_val} != val_ids


def test_split_rows_counts_and_limits() -> None:
    rows = [{"id": i} for i in range(10)]
    assert split_rows(rows, 0, seed=1) == (rows, [])
    train, val = split_rows(rows, 3, seed=1)
    assert len(val) == 3 and len(train) == 7
    assert len(split_rows(rows, 0.01, seed=1)[1]) == 1  # at least one row held out
    with pytest.raises(DataError, match="leaves no training rows"):
        split_rows(rows, 10, seed=1)
