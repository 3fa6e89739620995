"""Formats: detection and conversion to canonical rows of every kind, on the real datasets under
``../shared/data`` (checked on known records, not only counted) and on every FieldError path."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tunelab.data.formats import (
    DATASET_REASONS,
    FORMATS,
    KINDS,
    REASONS,
    ColumnSpec,
    FieldError,
    check_conversation,
    detect_format,
)

# --- helpers --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


def read_jsonl(path: Path) -> list[Any]:
    """JSON Lines, plain or gzipped; split on "\\n" only (GPQA has U+2028 inside strings)."""
    text = gzip.open(path, "rt", encoding="utf-8").read() if path.suffix == ".gz" else path.read_text("utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def read_json(path: Path) -> list[Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def lf_spec(llamafactory_dir: Path, name: str) -> ColumnSpec:
    """The ColumnSpec the registry builds from LLaMA-Factory's real dataset_info.json entry."""
    entry = read_json(llamafactory_dir / "dataset_info.json")[name]
    return ColumnSpec(entry.get("formatting"), dict(entry.get("columns") or {}), dict(entry.get("tags") or {}),
                      ranking=bool(entry.get("ranking")))


def convert_all(records: list[Any], kind: str, spec: ColumnSpec | None = None) -> tuple[str, list[dict], Counter]:
    """(format name, rows, skipped reasons): the format is detected from the first record, as the loader does."""
    spec = spec or ColumnSpec()
    fmt = detect_format(records[0], spec, kind)
    rows, skipped = [], Counter()
    for record in records:
        try:
            rows += fmt.convert(record, spec)
        except FieldError as error:
            skipped[error.reason] += 1
    return fmt.name, rows, skipped


def convert_one(record: Any, kind: str = "sft", spec: ColumnSpec | None = None) -> list[dict]:
    spec = spec or ColumnSpec()
    return detect_format(record, spec, kind).convert(record, spec)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# --- supervised: real data --------------------------------------------------------------------------------

def test_alpaca_5000_placeholder_input_and_empty_outputs(data_dir: Path) -> None:
    records = read_json(data_dir / "alpaca" / "alpaca_5000.json")
    name, rows, skipped = convert_all(records, "sft")
    assert name == "alpaca"
    # Two records have an empty output: nothing to train on, counted under a stable reason.
    assert len(rows) == 4998 and skipped == {"empty answer": 2}
    first = records[0]
    assert rows[0] == {"messages": [user(first["instruction"] + "\n" + first["input"]), assistant(first["output"])],
                       "tools": None}
    # "<No Input>" is the generator's placeholder for "no input": dropped, not shown to the model.
    placeholder = [r for r in records if r["input"] == "<No Input>"]
    assert len(placeholder) == 2
    for record in placeholder:
        [row] = convert_one(record)
        assert row["messages"] == [user(record["instruction"]), assistant(record["output"])]


def test_llamafactory_alpaca_identity_glaive(llamafactory_dir: Path) -> None:
    alpaca = read_json(llamafactory_dir / "alpaca_zh_demo.json")
    name, rows, skipped = convert_all(alpaca, "sft", lf_spec(llamafactory_dir, "alpaca_zh_demo"))
    assert (name, len(rows), skipped) == ("alpaca", 1000, Counter())
    assert rows[0]["messages"][-1] == assistant(alpaca[0]["output"])

    identity = read_json(llamafactory_dir / "identity.json")
    name, rows, _ = convert_all(identity, "sft", lf_spec(llamafactory_dir, "identity"))
    assert name == "alpaca" and len(rows) == 91
    assert rows[0]["messages"] == [user("hi"), assistant(identity[0]["output"])]
    assert "{{name}}" in rows[0]["messages"][1]["content"]  # placeholders are the user's to fill, kept as is

    glaive = read_json(llamafactory_dir / "glaive_toolcall_zh_demo.json")
    name, rows, skipped = convert_all(glaive, "sft", lf_spec(llamafactory_dir, "glaive_toolcall_zh_demo"))
    assert (name, len(rows), skipped) == ("sharegpt", 300, Counter())
    for row, record in zip(rows, glaive, strict=True):
        calls = [turn for turn in record["conversations"] if turn["from"] == "function_call"]
        made = [m for m in row["messages"] if "tool_calls" in m]
        assert [m["tool_calls"][0]["function"]["name"] for m in made] == [json.loads(c["value"])["name"]
                                                                         for c in calls]
        tools = json.loads(record["tools"] or "[]")
        assert (row["tools"] or []) == [{"type": "function", "function": tool} for tool in tools]


def test_v1_sft_demo_content_parts(llamafactory_dir: Path) -> None:
    records = read_jsonl(llamafactory_dir / "v1_sft_demo.jsonl")
    name, rows, skipped = convert_all(records, "sft")
    assert (name, len(rows), skipped) == ("messages", 500, Counter())
    assert rows[0]["messages"] == [user("hi"), assistant(records[0]["messages"][1]["content"][0]["value"])]
    assert all("loss_weight" not in m for row in rows for m in row["messages"])


def test_advertisegen_content_summary(data_dir: Path) -> None:
    records = read_jsonl(data_dir / "advertisegen" / "dev.json")
    name, rows, skipped = convert_all(records, "sft")
    assert (name, len(rows), skipped) == ("content_summary", 1070, Counter())
    assert rows[0]["messages"][0] == user("类型#上衣*材质#牛仔布*颜色#白色*风格#简约*图案#刺绣*衣样式#外套*衣款式#破洞")
    assert rows[0]["messages"][1]["content"].startswith("简约而不简单的牛仔外套")
    # LLaMA-Factory's adgen entries map the same columns explicitly: same rows through the alpaca mapping.
    spec = ColumnSpec(columns={"prompt": "content", "response": "summary"})
    assert convert_all(records[:5], "sft", spec)[1] == rows[:5]


def test_chatglm6b_prompt_response(data_dir: Path) -> None:
    records = read_jsonl(data_dir / "chatglm6b" / "data_sample.jsonl")
    name, rows, skipped = convert_all(records, "sft")
    assert (name, len(rows), skipped) == ("prompt_response", 100, Counter())
    assert rows[0]["messages"][0]["content"].startswith("请根据以下标签为商品编写一段广告\n类型#裤")
    assert rows[0]["messages"][1] == assistant(records[0]["response"])


def test_belle_eval_set_by_mapping(data_dir: Path) -> None:
    records = read_jsonl(data_dir / "belle" / "eval_set.json")
    spec = ColumnSpec(columns={"prompt": "question", "response": "std_answer"})
    name, rows, skipped = convert_all(records, "sft", spec)
    # 369 of BELLE's eval questions have no standard answer: skipped as "empty answer", not trained on.
    assert name == "alpaca" and len(rows) == 631 and skipped == {"empty answer": 369}
    assert rows[0]["messages"] == [user(records[0]["question"]), assistant(records[0]["std_answer"])]
    with pytest.raises(FieldError) as info:
        FORMATS["alpaca"].convert(records[3], spec)
    assert (info.value.field, info.value.reason) == ("std_answer", "empty answer")


def test_belle_seed_tasks_one_row_per_instance(data_dir: Path) -> None:
    records = read_jsonl(data_dir / "belle" / "zh_seed_tasks.json")
    name, rows, skipped = convert_all(records, "sft")
    assert (name, len(rows), skipped) == ("seed_tasks", 175, Counter())  # every real task has one instance
    first = records[0]
    assert rows[0]["messages"] == [user(first["instruction"] + "\n" + first["instances"][0]["input"]),
                                   assistant(first["instances"][0]["output"])]
    assert rows[6]["messages"][0] == user("写一份问题列表来开始一场对话。")  # empty input: instruction alone
    task = {"instruction": "Translate.", "instances": [{"input": "chat", "output": "cat"},
                                                       {"input": "chien", "output": "dog"}]}
    assert [r["messages"][0]["content"] for r in convert_one(task)] == ["Translate.\nchat", "Translate.\nchien"]
    assert len(convert_one(task, spec=ColumnSpec(options={"instances": "first"}))) == 1


def test_gsm8k_as_sft(data_dir: Path) -> None:
    records = read_jsonl(data_dir / "gsm8k" / "train.jsonl")
    name, rows, skipped = convert_all(records, "sft")
    assert (name, len(rows), skipped) == ("question_answer", 1000, Counter())
    assert rows[0]["messages"] == [user(records[0]["question"]), assistant(records[0]["answer"])]


def test_medical_csv_by_mapping(data_dir: Path) -> None:
    raw = (data_dir / "medical" / "medical_sample.csv").read_bytes().decode("gb18030")
    records = list(csv.DictReader(io.StringIO(raw)))
    spec = ColumnSpec(columns={"prompt": "title", "query": "ask", "response": "answer"})
    name, rows, skipped = convert_all(records, "sft", spec)
    assert (name, len(rows), skipped) == ("alpaca", 1000, Counter())
    assert rows[0]["messages"] == [
        user("高血压患者能吃党参吗？\n我有高血压这两天女婿来的时候给我拿了些党参泡水喝，您好高血压可以吃党参吗？"),
        assistant(records[0]["answer"]),
    ]
    # Without a mapping the department,title,ask,answer layout is recognised, with the same rows.
    assert convert_all(records[:20], "sft") == ("title_ask_answer", rows[:20], Counter())
    # Mapping only the question body leaves the title out.
    [row] = convert_one(records[0], spec=ColumnSpec(columns={"prompt": "ask", "response": "answer"}))
    assert row["messages"][0] == user(records[0]["ask"])


# --- supervised: layouts and shapes ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("record", "name", "user_text", "answer"),
    [
        ({"instruction": "Sum.", "input": "1, 2", "output": "3", "task": "math"}, "alpaca", "Sum.\n1, 2", "3"),
        ({"instruction": "Who wrote it?", "context": "Dune is by Herbert.", "response": "Herbert.",
          "category": "closed_qa"}, "dolly", "Who wrote it?\nDune is by Herbert.", "Herbert."),
        ({"input_text": "translate: hi", "target_text": "salut"}, "input_target", "translate: hi", "salut"),
        ({"context": "tags", "target": "ad"}, "context_target", "tags", "ad"),
        ({"question": "2+2?", "answer": "4"}, "question_answer", "2+2?", "4"),
        ({"problem": "2+3?", "solution": "It is 5.", "answer": "5"}, "problem_solution", "2+3?", "It is 5."),
        ({"prompt": "p", "completion": "c"}, "prompt_completion", "p", "c"),
    ],
)
def test_pair_layouts(record: dict, name: str, user_text: str, answer: str) -> None:
    assert detect_format(record, ColumnSpec(), "sft").name == name
    assert convert_one(record) == [{"messages": [user(user_text), assistant(answer)], "tools": None}]


def test_dolly_without_context() -> None:
    [row] = convert_one({"instruction": "Name a color.", "context": "", "response": "Red.", "category": "brainstorm"})
    assert row["messages"][0] == user("Name a color.")


def test_bare_list_of_messages() -> None:
    record = [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello.")]
    assert detect_format(record, ColumnSpec(), "sft").name == "message_list"
    assert convert_one(record) == [{"messages": record, "tools": None}]


def test_openai_messages_with_tool_calls() -> None:
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    record = {"messages": [user("Weather in Paris?"), {"role": "assistant", "content": None, "tool_calls": [call]},
                           {"role": "tool", "content": "sunny"}, assistant("Sunny.")], "tools": [tool]}
    [row] = convert_one(record)
    assert row["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert row["tools"] == [tool]


def test_role_content_turns_under_conversations() -> None:
    """Role/content turns in a 'conversations' column need no tags (and keep tool_calls)."""
    [row] = convert_one({"conversations": [user("a"), assistant("b")]})
    assert row["messages"] == [user("a"), assistant("b")]


def test_system_column_and_history() -> None:
    record = {"instruction": "Add them.", "input": "2 and 3", "output": "5", "system": "Be terse.",
              "history": [["Hi", "Hello."]]}
    [row] = FORMATS["alpaca"].convert(record, ColumnSpec())
    assert row["messages"] == [{"role": "system", "content": "Be terse."}, user("Hi"), assistant("Hello."),
                               user("Add them.\n2 and 3"), assistant("5")]


# --- preference ------------------------------------------------------------------------------------------------

def test_dpo_en_demo_sharegpt_ranking(llamafactory_dir: Path) -> None:
    records = read_json(llamafactory_dir / "dpo_en_demo.json")
    spec = lf_spec(llamafactory_dir, "dpo_en_demo")
    assert spec.ranking
    name, rows, skipped = convert_all(records, "preference", spec)
    assert (name, len(rows), skipped) == ("sharegpt_preference", 300, Counter())
    assert rows[0] == {"prompt": [user(records[0]["conversations"][0]["value"])],
                       "chosen": [assistant(records[0]["chosen"]["value"])],
                       "rejected": [assistant(records[0]["rejected"]["value"])]}
    with_system = next(i for i, r in enumerate(records) if r["conversations"][0]["from"] == "system")
    assert [m["role"] for m in rows[with_system]["prompt"]] == ["system", "user"]
    for row in rows:
        assert row["prompt"][-1]["role"] == "user"
    # The same file without a registry entry is recognised from its columns.
    assert convert_all(records[:10], "preference")[:2] == ("sharegpt_preference", rows[:10])


def test_dpo_en_demo_refused_for_sft(llamafactory_dir: Path) -> None:
    record = read_json(llamafactory_dir / "dpo_en_demo.json")[0]
    with pytest.raises(FieldError, match="preference.*'sft'") as info:
        detect_format(record, lf_spec(llamafactory_dir, "dpo_en_demo"), "sft")
    assert info.value.reason == "wrong stage" and info.value.dataset_level
    with pytest.raises(FieldError, match="use stage: rm, dpo, orpo or simpo") as info:
        detect_format(record, ColumnSpec(), "sft")  # no registry entry: told by its columns
    assert info.value.reason == "wrong stage"


def test_v1_dpo_demo_implicit_prompt(llamafactory_dir: Path) -> None:
    records = read_jsonl(llamafactory_dir / "v1_dpo_demo.jsonl")
    name, rows, skipped = convert_all(records, "preference")
    assert (name, len(rows), skipped) == ("preference", 10, Counter())
    assert [m["role"] for m in rows[0]["prompt"]] == ["system", "user"]
    assert rows[0]["chosen"] == [assistant(records[0]["chosen_messages"][2]["content"][0]["value"])]
    assert rows[0]["rejected"][0]["content"].startswith(" Abdulah Hasanagic is the proud owner of AS Company,")


def test_hh_rlhf_transcripts(data_dir: Path) -> None:
    records = read_jsonl(data_dir / "hh-rlhf" / "test.jsonl.gz")
    name, rows, skipped = convert_all(records, "preference")
    assert (name, len(rows), skipped) == ("preference", 2308, Counter({"empty answer": 4}))
    first = rows[0]
    assert first["prompt"] == [
        user("what are some pranks with a pen i can do?"), assistant("Are you looking for practical joke ideas?"),
        user("yep"), first["prompt"][3], user("okay some of these do not have anything to do with pens"),
    ]
    assert first["prompt"][3]["role"] == "assistant"
    assert first["prompt"][3]["content"].startswith("Ok, I’ll give you a couple examples")
    assert first["chosen"] == [assistant("No, sorry!  All of these involve a pen, the point is that you can get "
                                         "funny results by doing pranks with pens.")]
    assert first["rejected"] == [assistant(records[0]["rejected"].rsplit("\n\nAssistant: ", 1)[1])]
    for row in rows:
        assert row["prompt"][-1]["role"] == "user"
        assert len(row["chosen"]) == len(row["rejected"]) == 1
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    # The 4 pairs with an empty reply were counted (skipped) above: an empty side is no pair to learn from.
    assert all(row["chosen"][0]["content"].strip() and row["rejected"][0]["content"].strip() for row in rows)
    # Where a reply itself contains "\n\nAssistant:", the prompt is what both transcripts share.
    odd = next(row for row in rows if row["prompt"][-1] == user("Yes, please find me a serial."))
    assert odd["prompt"][-1] == user("Yes, please find me a serial.")
    assert odd["chosen"][0]["content"].startswith("Alrighty, I’ll do my best, here’s the key:\n\nAssistant:")


@pytest.mark.parametrize(
    ("record", "prompt"),
    [
        ({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}, [user("Capital of France?")]),
        ({"instruction": "Translate.", "input": "chat", "chosen": "cat", "rejected": "dog"},
         [user("Translate.\nchat")]),
        ({"question": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "system": "Be brief."},
         [{"role": "system", "content": "Be brief."}, user("Capital of France?")]),
        ({"prompt": [user("Capital of France?")], "chosen": [assistant("Paris.")], "rejected": [assistant("Lyon.")]},
         [user("Capital of France?")]),
    ],
)
def test_preference_explicit_prompt(record: dict, prompt: list[dict]) -> None:
    [row] = convert_one(record, "preference")
    assert row["prompt"] == prompt
    assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    assert row["chosen"] != row["rejected"]


def test_preference_implicit_prompt_multi_turn() -> None:
    shared = [user("Hi"), assistant("Hello!"), user("Capital of France?")]
    record = {"chosen": [*shared, assistant("Paris.")], "rejected": [*shared, assistant("Lyon.")]}
    assert convert_one(record, "preference") == [{"prompt": shared, "chosen": [assistant("Paris.")],
                                                  "rejected": [assistant("Lyon.")]}]
    # Answers that share a first reply and then differ keep the shared reply on both sides.
    record = {"chosen": [user("Q"), assistant("A"), user("more"), assistant("B")],
              "rejected": [user("Q"), assistant("A"), user("stop"), assistant("C")]}
    [row] = convert_one(record, "preference")
    assert row["prompt"] == [user("Q")] and row["chosen"][0] == row["rejected"][0] == assistant("A")


def test_preference_tools_column() -> None:
    record = {"prompt": "Weather?", "chosen": "Let me check.", "rejected": "No.",
              "tools": json.dumps([{"name": "weather", "parameters": {}}])}
    [row] = convert_one(record, "preference")
    assert row["tools"] == [{"type": "function", "function": {"name": "weather", "parameters": {}}}]


def test_gold_and_bad_answers() -> None:
    record = {"conversations": [{"from": "human", "value": "2+2?"}], "gold_answers": ["4", "four"],
              "bad_answers": ["5", "22", "fish"]}
    assert detect_format(record, ColumnSpec(), "preference").name == "gold_bad_answers"
    rows = convert_one(record, "preference")
    assert len(rows) == 6
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows[:3]] == [
        ("4", "5"), ("4", "22"), ("4", "fish")]
    assert all(r["prompt"] == [user("2+2?")] for r in rows)
    first = convert_one(record, "preference", ColumnSpec(options={"pairs": "first"}))
    assert first == [{"prompt": [user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}]
    # Answers may also be turn objects, and the prompt a plain question column.
    record = {"question": "2+2?", "gold_answers": [{"from": "gpt", "value": "4"}], "bad_answers": [
        {"role": "assistant", "content": "5"}]}
    assert convert_one(record, "preference")[0]["chosen"] == [assistant("4")]


# --- kto ----------------------------------------------------------------------------------------------------------

def test_kto_en_demo_by_tags(llamafactory_dir: Path) -> None:
    records = read_json(llamafactory_dir / "kto_en_demo.json")
    spec = lf_spec(llamafactory_dir, "kto_en_demo")
    name, rows, skipped = convert_all(records, "kto", spec)
    assert (name, len(rows), skipped) == ("kto_conversation", 300, Counter())
    assert Counter(row["label"] for row in rows) == {True: 150, False: 150}
    for row, record in zip(rows, records, strict=True):
        messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        assert row["prompt"] == messages[:-1] and row["completion"] == messages[-1:]
        assert row["label"] is record["label"]
    assert len(rows[1]["prompt"]) == 5  # a multi-turn record: only the last answer is labelled


@pytest.mark.parametrize(("value", "label"), [(True, True), (False, False), (1, True), (0, False),
                                              ("true", True), ("False", False)])
def test_kto_labels(value: Any, label: bool) -> None:
    [row] = convert_one({"prompt": "Hi", "completion": "Hello.", "label": value}, "kto")
    assert row == {"prompt": [user("Hi")], "completion": [assistant("Hello.")], "label": label}


def test_kto_llamafactory_alpaca_mapping() -> None:
    spec = ColumnSpec(columns={"prompt": "instruction", "response": "output", "kto_tag": "good"})
    [row] = convert_one({"instruction": "Hi", "input": "", "output": "Hello.", "good": 1}, "kto", spec)
    assert row["label"] is True and row["completion"] == [assistant("Hello.")]


# --- rl --------------------------------------------------------------------------------------------------------

def test_gsm8k_rl_extracts_final_answer(data_dir: Path) -> None:
    records = read_jsonl(data_dir / "gsm8k" / "test.jsonl")
    spec = ColumnSpec(options={"extract_answer": "gsm8k"})
    name, rows, skipped = convert_all(records, "rl", spec)
    assert (name, len(rows), skipped) == ("rl_prompt", 1319, Counter())
    assert records[0]["answer"].endswith("#### 18")
    assert rows[0] == {"prompt": [user(records[0]["question"])], "answer": "18"}
    assert records[146]["answer"].endswith("#### 2,125") and rows[146]["answer"] == "2125"
    assert convert_one(records[0], "rl", ColumnSpec(options={"extract_answer": "####"}))[0]["answer"] == "18"
    # Without the option the whole worked answer goes to the reward functions.
    assert convert_one(records[0], "rl")[0]["answer"] == records[0]["answer"]


@pytest.mark.parametrize(
    ("folder", "prompt_column", "count"),
    [("aime", "problem", 30), ("amc", "question", 40), ("cn_math_2024", "problem", 30), ("gaokao", "question", 79),
     ("gpqa", "question", 198), ("grade_school_math", "problem", 210), ("kaoyan", "problem", 199),
     ("math", "problem", 500), ("minerva", "question", 272), ("olympiadbench", "question", 675)],
)
def test_limo_rl_prompts(data_dir: Path, folder: str, prompt_column: str, count: int) -> None:
    records = read_jsonl(data_dir / "limo" / folder / "test.jsonl")
    name, rows, skipped = convert_all(records, "rl")
    assert (name, len(rows), skipped) == ("rl_prompt", count, Counter())
    for row, record in zip(rows, records, strict=True):
        assert row["prompt"] == [user(record[prompt_column])]
        assert row["answer"] == record["answer"]  # kept as is (numbers stay numbers) for the reward functions
        assert set(row) == {"prompt"} | (set(record) - {prompt_column})


def test_limo_known_records(data_dir: Path) -> None:
    [aime] = convert_one(read_jsonl(data_dir / "limo" / "aime" / "test.jsonl")[0], "rl")
    assert aime["answer"] == "204" and aime["id"] == 60
    assert aime["prompt"][0]["content"].startswith("Every morning Aya goes for a $9$-kilometer-long walk")
    [amc] = convert_one(read_jsonl(data_dir / "limo" / "amc" / "test.jsonl")[0], "rl")
    assert amc["answer"] == 27.0 and amc["problem"] == amc["prompt"][0]["content"]  # 'question' came first


def test_rl_prompt_shapes() -> None:
    messages = [{"role": "system", "content": "Think."}, user("2+2?")]
    assert convert_one({"prompt": messages, "answer": "4"}, "rl") == [{"prompt": messages, "answer": "4"}]
    assert convert_one({"instruction": "Add.", "input": "2 and 2", "answer": "4"}, "rl") == [
        {"prompt": [user("Add.\n2 and 2")], "answer": "4"}]
    spec = ColumnSpec(columns={"prompt": "query"})
    assert convert_one({"query": "2+2?", "prompt": "ignored template"}, "rl", spec) == [{"prompt": [user("2+2?")]}]


# --- pt ------------------------------------------------------------------------------------------------------

def test_pretraining_text(llamafactory_dir: Path) -> None:
    records = read_jsonl(llamafactory_dir / "c4_demo.jsonl")
    name, rows, _ = convert_all(records, "pt", lf_spec(llamafactory_dir, "c4_demo"))
    assert name == "text" and rows == [{"text": r["text"]} for r in records]
    spec = ColumnSpec(columns={"prompt": "content"})  # LLaMA-Factory's refinedweb/the_stack style
    assert convert_one({"content": "def f(): pass"}, "pt", spec) == [{"text": "def f(): pass"}]


# --- detection, kinds, options ----------------------------------------------------------------------------------

def test_stage_kinds() -> None:
    from tunelab.data.row_kinds import ROW_KINDS
    from tunelab.stage_registry import stage_kinds

    assert tuple(KINDS) == ROW_KINDS and set(stage_kinds().values()) <= set(KINDS)
    assert stage_kinds()["sft"] == "sft" and stage_kinds()["pt"] == "pt"
    with pytest.raises(ValueError, match="kind must be one of"):
        detect_format({"text": "x"}, ColumnSpec(), "dpo")  # a stage, not a kind


def test_formatting_family_picks_the_kind() -> None:
    spec = ColumnSpec(formatting="alpaca", columns={"prompt": "instruction", "chosen": "a", "rejected": "b"})
    assert detect_format({"instruction": "q", "a": "x", "b": "y"}, spec, "preference").name == "preference"
    kto = ColumnSpec(formatting="sharegpt", columns={"messages": "messages", "kto_tag": "label"})
    assert detect_format({"messages": [], "label": True}, kto, "kto").name == "kto_conversation"
    with pytest.raises(FieldError, match="use stage: kto"):  # KTO-mapped data is not SFT data
        detect_format({"messages": []}, kto, "sft")
    assert detect_format({"content": "c", "summary": "s"}, ColumnSpec(formatting="alpaca"), "sft").name == \
        "content_summary"
    assert detect_format({"a": 1}, ColumnSpec(formatting="dolly"), "sft").name == "dolly"


def test_every_pair_layout_is_an_alpaca_form() -> None:
    pairs = [fmt for fmt in FORMATS.values() if fmt.formatting == "alpaca" and fmt.kind == "sft"]
    assert {fmt.name for fmt in pairs} >= {"alpaca", "dolly", "content_summary", "question_answer"}


# --- every FieldError path, with its reason ---------------------------------------------------------------------

TURN_ERRORS = [
    # (kind, record, spec, field, reason, message fragment)
    ("sft", {"instruction": "Say hi.", "output": None}, None, "output", "missing field", "missing field 'output'"),
    ("sft", {"instruction": "Say hi.", "output": 3}, None, "output", "wrong type", "expected a string, got int"),
    ("sft", {"instruction": "Say hi.", "output": "  "}, None, "output", "empty answer", "empty"),
    ("sft", {"instruction": " ", "input": "", "output": "Hi"}, None, "instruction", "empty text", "empty"),
    ("sft", {"instruction": "a", "output": "b", "history": [["only one"]]}, None, "history[0]", "wrong type",
     "pair"),
    ("sft", {"messages": [user("a"), user("b"), assistant("c")]}, None, "messages", "turns do not alternate",
     "'user' followed by 'user'"),
    ("sft", {"messages": [assistant("a"), user("b"), assistant("c")]}, None, "messages",
     "turns do not alternate", "must start with a user turn"),
    ("sft", {"messages": [user("a"), {"role": "system", "content": "s"}, assistant("c")]}, None, "messages",
     "turns do not alternate", "system message may only come first"),
    ("sft", {"messages": [user("a")]}, None, "messages", "no assistant turn", "no assistant turn"),
    ("sft", {"messages": [user("a"), {"role": "robot", "content": "b"}]}, None, "messages[1].role",
     "unknown role", "unknown role 'robot'"),
    ("sft", {"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}, None,
     "conversations[1].from", "unknown role", "'bot'"),
    ("sft", {"messages": [user("a"), assistant(" ")]}, None, "messages[1].content", "empty answer", "empty"),
    ("sft", {"messages": "hello"}, None, "messages", "wrong type", "list"),
    ("sft", {"messages": [user([{"type": "audio", "url": "x"}]), assistant("b")]}, None, "messages[0].content",
     "wrong type", "only text and image content parts"),
    ("sft", {"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": "call"}]},
     None, "conversations[1].value", "malformed value", "function_call"),
    ("sft", {"messages": [user("a"), assistant("b")], "tools": "[oops"}, None, "tools", "malformed value",
     "JSON list of tool definitions"),
    ("sft", {"instruction": "t", "instances": []}, None, "instances", "missing field", "non-empty list"),
    ("sft", {"instruction": "t", "instances": [{"input": "", "output": ""}]}, None, "output", "empty answer",
     "empty"),
    ("preference", {"prompt": "q", "chosen": "same", "rejected": "same"}, None, "rejected",
     "chosen equals rejected", "the same"),
    ("preference", {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("a")]}, None,
     "rejected", "chosen equals rejected", "the same"),
    ("preference", {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: a"}, None,
     "rejected", "chosen equals rejected", "the same"),
    ("preference", {"conversations": [{"from": "human", "value": "q"}], "gold_answers": ["a"],
                    "bad_answers": ["a"]}, None, "bad_answers", "chosen equals rejected", "the same"),
    ("preference", {"chosen": "\n\nHuman: q\n\nA: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, None, "chosen",
     "no assistant turn", "\\n\\nAssistant:"),
    ("preference", {"chosen": "Q: q\n\nAssistant: a", "rejected": "Q: q\n\nAssistant: b"}, None, "chosen",
     "malformed value", "must start with 'Human:'"),
    ("preference", {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: r\n\nAssistant: a"}, None,
     "rejected", "prompts differ", "share no prompt"),
    ("preference", {"chosen": [user("q"), assistant("a")], "rejected": [user("r"), assistant("b")]}, None,
     "rejected", "prompts differ", "share no prompt"),
    ("preference", {"chosen": "\n\nHuman: q\n\nAssistant: a\n\nAssistant: b",
                    "rejected": "\n\nHuman: q\n\nAssistant: a\n\nAssistant: c"}, None, "chosen",
     "turns do not alternate", "must end with a user turn"),
    ("preference", {"prompt": "q", "chosen": 5, "rejected": "b"}, None, "chosen", "wrong type",
     "expected text or messages"),
    ("preference", {"prompt": "q", "chosen": [user("x")], "rejected": "b"}, None, "chosen",
     "turns do not alternate", "must start with an assistant turn"),
    ("preference", {"chosen": 1, "rejected": 2}, None, "chosen", "wrong type", "transcript string"),
    ("kto", {"prompt": "q", "completion": "a", "label": "yes"}, None, "label", "bad label", "'yes'"),
    ("kto", {"prompt": "q", "completion": "a", "label": 2}, None, "label", "bad label", "boolean label"),
    ("kto", {"prompt": "q", "completion": "a", "label": None}, None, "label", "missing field", "'label'"),
    ("kto", {"messages": [user("q")], "label": True}, None, "messages", "no assistant turn", "must end with"),
    ("kto", {"prompt": "q", "completion": "", "label": True}, None, "completion", "empty answer", "empty"),
    ("rl", {"question": "q", "answer": "no final line"}, ColumnSpec(options={"extract_answer": "gsm8k"}),
     "answer", "malformed value", "####"),
    ("rl", {"question": "q", "answer": "#### "}, ColumnSpec(options={"extract_answer": "gsm8k"}), "answer",
     "empty answer", "nothing after"),
    ("rl", {"prompt": [user("q"), assistant("a")]}, None, "prompt", "turns do not alternate",
     "must end with a user turn"),
    ("rl", {"prompt": 5}, None, "prompt", "wrong type", "expected a string"),
    ("pt", {"text": ""}, None, "text", "empty text", "empty"),
    ("pt", {"body": "x"}, None, "text", "missing field", "missing field 'text'"),
]


@pytest.mark.parametrize(("kind", "record", "spec", "field", "reason", "fragment"), TURN_ERRORS)
def test_field_errors(kind: str, record: dict, spec: ColumnSpec | None, field: str, reason: str,
                      fragment: str) -> None:
    with pytest.raises(FieldError) as info:
        convert_one(record, kind, spec)
    error = info.value
    assert (error.field, error.reason) == (field, reason), str(error)
    assert fragment in str(error)
    assert not error.dataset_level


DETECT_ERRORS = [
    # (kind, record, spec, field, reason, message fragment)
    ("sft", {"text": "x"}, ColumnSpec(), "text", "wrong stage", "use stage: pt"),
    ("preference", {"prompt": "q", "completion": "a", "label": True}, ColumnSpec(), "completion, label, prompt",
     "wrong stage", "use stage: kto"),
    ("kto", {"prompt": "q", "chosen": "a", "rejected": "b"}, ColumnSpec(), "chosen, prompt, rejected",
     "wrong stage", "use stage: rm, dpo, orpo or simpo"),
    ("sft", {"foo": 1, "bar": 2}, ColumnSpec(), "bar, foo", "unknown format", "cannot tell the format"),
    ("sft", {"question": "q", "std_answer": "a"}, ColumnSpec(), "question, std_answer", "unknown format",
     "map your columns"),
    ("sft", {"a": 1}, ColumnSpec(formatting="openai"), "formatting", "bad formatting", "unknown formatting"),
    ("rl", {"a": 1}, ColumnSpec(formatting="dolly"), "formatting", "bad formatting", "has no rl form"),
    ("sft", {"a": 1}, ColumnSpec(options={"pair": "first"}), "options.pair", "bad option", "did you mean 'pairs'"),
    ("sft", {"a": 1}, ColumnSpec(options={"extract_answer": "boxed"}), "options.extract_answer", "bad option",
     "must be one of"),
    ("sft", {"messages": []}, ColumnSpec(ranking=True), "ranking", "wrong stage", "ranking (preference)"),
    ("preference", [user("a"), assistant("b")], ColumnSpec(), "record", "wrong type", "bare list"),
    ("sft", "just text", ColumnSpec(), "record", "wrong type", "expected a JSON object"),
]


@pytest.mark.parametrize(("kind", "record", "spec", "field", "reason", "fragment"), DETECT_ERRORS)
def test_detect_errors(kind: str, record: Any, spec: ColumnSpec, field: str, reason: str, fragment: str) -> None:
    with pytest.raises(FieldError) as info:
        detect_format(record, spec, kind)
    error = info.value
    assert (error.field, error.reason) == (field, reason), str(error)
    assert fragment in str(error)
    assert error.dataset_level == (reason in DATASET_REASONS)


def test_missing_column_after_detection() -> None:
    """Later records are converted with the first record's format: an absent column is a missing field."""
    with pytest.raises(FieldError) as info:
        FORMATS["alpaca"].convert({"instruction": "Say hi.", "input": ""}, ColumnSpec())
    assert (info.value.field, info.value.reason) == ("output", "missing field")
    with pytest.raises(FieldError) as info:
        FORMATS["preference"].convert({"prompt": "q", "chosen": "a"}, ColumnSpec())
    assert (info.value.field, info.value.reason) == ("rejected", "missing field")
    with pytest.raises(FieldError) as info:
        FORMATS["rl_prompt"].convert({"answer": "4"}, ColumnSpec())
    assert (info.value.field, info.value.reason) == ("prompt", "missing field")


def test_converting_a_record_of_another_shape() -> None:
    """The format is fixed by the first record; a later list or string record fails on its own."""
    with pytest.raises(FieldError) as info:
        FORMATS["alpaca"].convert([user("a")], ColumnSpec())
    assert (info.value.field, info.value.reason) == ("record", "wrong type")
    with pytest.raises(FieldError) as info:
        FORMATS["message_list"].convert({"messages": []}, ColumnSpec())
    assert info.value.reason == "wrong type"


def test_reasons_are_a_closed_set() -> None:
    assert FieldError("x", "m").reason == "invalid record"
    assert DATASET_REASONS < set(REASONS)
    with pytest.raises(ValueError, match="unknown FieldError reason"):
        FieldError("x", "m", "made up")
    with pytest.raises(FieldError) as info:
        check_conversation([user("a")], "messages")
    assert info.value.reason == "no assistant turn"
