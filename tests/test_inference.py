"""Inference on the embedded stories260K model: calls, streaming, batching, adapters, chat and predict."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from tunelab.commands.predict import run_predict
from tunelab.data.templates import BUILTIN_TEMPLATES, render
from tunelab.errors import TunelabError
from tunelab.inference.chat import run_chat
from tunelab.inference.predictor import Predictor
from tunelab.models.loading import load_model, load_tokenizer

MODEL = "stories260K"
SHARED = Path(__file__).resolve().parent / "fixtures"
ALPACA_DEMO = SHARED / "data" / "llamafactory" / "alpaca_en_demo.json"
PROMPTS = [
    "Once upon a time, there was a little girl named Lily.",
    "Tom had a red ball.",
    "One day, a big dog went to the park to play with his friends",
]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(MODEL, template="default", max_new_tokens=16, device="cpu")


def test_answer_is_nonempty_story_text(predictor: Predictor) -> None:
    answer = predictor(PROMPTS[0])
    assert isinstance(answer, str) and answer.strip() == answer and len(answer) > 5
    assert "Human:" not in answer  # only the new tokens come back, not the prompt


def test_greedy_is_deterministic_and_overrides_apply(predictor: Predictor) -> None:
    assert predictor(PROMPTS[1]) == predictor(PROMPTS[1])
    short = predictor(PROMPTS[1], max_new_tokens=3)
    assert short and len(predictor.tokenizer(short, add_special_tokens=False).input_ids) <= 4
    assert predictor.settings["max_new_tokens"] == 16  # an override lasts for one call only


def test_stream_joins_to_call(predictor: Predictor) -> None:
    for query in PROMPTS[:2]:
        pieces = list(predictor.stream(query))
        assert len(pieces) > 1  # really streamed, not one final string
        assert "".join(pieces) == predictor(query)


def test_stream_closed_early_stops_cleanly(predictor: Predictor) -> None:
    stream = predictor.stream(PROMPTS[0], max_new_tokens=64)
    first = next(stream)
    stream.close()  # the background generation must stop and the thread end
    assert first and predictor(PROMPTS[0], max_new_tokens=64).startswith(first)


def test_history_and_system_change_the_prompt(predictor: Predictor) -> None:
    history = [{"role": "user", "content": PROMPTS[1]}, {"role": "assistant", "content": "He liked it."}]
    messages = predictor.messages(PROMPTS[0], history, system="Tell a story.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    text = render(predictor.tokenizer, messages, add_generation_prompt=True)
    assert text.startswith("<s>System: Tell a story.\nHuman: Tom had a red ball.\n"
                           "Assistant: He liked it.</s>\n")
    assert text.endswith("Human: Once upon a time, there was a little girl named Lily.\nAssistant:")


def test_generate_batch_equals_single_calls(predictor: Predictor) -> None:
    conversations = [[{"role": "user", "content": query}] for query in PROMPTS]
    lengths = {len(predictor.tokenizer(render(predictor.tokenizer, c, add_generation_prompt=True),
                                       add_special_tokens=False).input_ids) for c in conversations}
    assert len(lengths) == len(PROMPTS)  # different lengths, so left padding is really exercised
    batched = predictor.generate_batch(conversations)
    assert batched == [predictor(query) for query in PROMPTS]
    assert predictor.tokenizer.padding_side == "left"
    assert predictor.generate_batch([]) == []


def test_complete_reports_counts_and_continues_an_answer_prefix(predictor: Predictor) -> None:
    messages = [{"role": "user", "content": "Tell me a story about a cat."}]
    (whole,) = predictor.complete([messages], max_new_tokens=30)
    rendered = render(predictor.tokenizer, messages, add_generation_prompt=True)
    assert whole.prompt_tokens == len(predictor.tokenizer(rendered, add_special_tokens=False).input_ids)
    assert whole.finish_reason in ("stop", "length") and 0 < whole.completion_tokens <= 30
    assert (whole.completion_tokens == 30) == (whole.finish_reason == "length")
    prefix = whole.text.split()[0]
    (rest,) = predictor.complete([messages], continue_from=prefix, max_new_tokens=10)
    assert rest.prompt_tokens > whole.prompt_tokens  # the prefix is part of the prompt, not of the answer
    # the continuation reads on from the prefix (its leading space kept), as the answer went on from there
    assert rest.text.startswith(" ") and (prefix + rest.text).split()[:4] == whole.text.split()[:4]


def test_missing_template_is_a_clear_error(tmp_path: Path) -> None:
    """A base model without a chat template (a copy of the embedded one, which alone defaults to the
    built-in 'default' template) says what to pass."""
    import shutil

    from tunelab.models.sources import resolve_model_path

    base = shutil.copytree(resolve_model_path(MODEL), tmp_path / "base-model")
    with pytest.raises(TunelabError, match="--template default"):
        Predictor(str(base), device="cpu")
    assert Predictor(MODEL, max_new_tokens=2, device="cpu").tokenizer.chat_template  # embedded: 'default'


def test_template_end_of_turn_token_stops_generation() -> None:
    chatml = Predictor(MODEL, template="chatml", max_new_tokens=4, device="cpu")
    im_end = chatml.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in chatml.stop_token_ids and 2 in chatml.stop_token_ids  # </s> of the model stays a stop
    assert chatml.model.get_input_embeddings().weight.shape[0] >= len(chatml.tokenizer)
    assert isinstance(chatml("Hi"), str)


def _greedy(model: torch.nn.Module, tokenizer, query: str, max_new_tokens: int = 16) -> str:
    """Reference generation written out by hand, independent of Predictor."""
    text = render(tokenizer, [{"role": "user", "content": query}], add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_lora_adapter_round_trip(tmp_path: Path, predictor: Predictor) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    tokenizer = load_tokenizer(MODEL, "default")
    base = load_model(MODEL, tokenizer)
    lora = LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, lora).eval()
    assert any(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)

    tuned = Predictor(MODEL, adapter=str(adapter), max_new_tokens=16, device="cpu")
    # The template came from the adapter folder: no template was passed.
    assert tuned.tokenizer.chat_template == BUILTIN_TEMPLATES["default"]
    assert type(tuned.model).__name__ == "PeftModelForCausalLM" and not tuned.model.training

    tuned_answers = [tuned(query) for query in PROMPTS]
    assert tuned_answers == [_greedy(peft_model, tokenizer, query) for query in PROMPTS]
    assert tuned_answers != [predictor(query) for query in PROMPTS]
    assert tuned.generate_batch([[{"role": "user", "content": q}] for q in PROMPTS]) == tuned_answers


def test_explicit_template_overrides_the_adapter_tokenizer(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tokenizer(MODEL, "default")
    peft_model = get_peft_model(load_model(MODEL, tokenizer), LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    alpaca = Predictor(MODEL, adapter=str(tmp_path), template="alpaca", max_new_tokens=4, device="cpu")
    assert alpaca.tokenizer.chat_template == BUILTIN_TEMPLATES["alpaca"]


def test_chat_multi_turn_clear_and_exit(predictor: Predictor) -> None:
    script = iter([PROMPTS[0], "  ", PROMPTS[1], "/clear", PROMPTS[2], "/exit", "never read"])
    prompts_seen: list[str] = []

    def input_fn(prompt: str) -> str:
        prompts_seen.append(prompt)
        return next(script)

    output = io.StringIO()
    history = run_chat(predictor, input_fn=input_fn, output=output)

    first = predictor(PROMPTS[0])
    second = predictor(PROMPTS[1], history=[{"role": "user", "content": PROMPTS[0]},
                                            {"role": "assistant", "content": first}])
    third = predictor(PROMPTS[2])  # after /clear the model sees no earlier turns
    assert history == [{"role": "user", "content": PROMPTS[2]}, {"role": "assistant", "content": third}]
    assert prompts_seen == ["User: "] * 6
    text = output.getvalue()
    assert f"Assistant: {first}\n" in text and f"Assistant: {second}\n" in text
    assert f"Assistant: {third}\n" in text and "History cleared" in text
    assert second != predictor(PROMPTS[1])  # the history reached the model


def test_chat_ends_on_eof_and_answers_one_shot(predictor: Predictor) -> None:
    def eof(prompt: str) -> str:
        raise EOFError

    assert run_chat(predictor, input_fn=eof, output=io.StringIO()) == []

    output = io.StringIO()
    history = run_chat(predictor, query=PROMPTS[1], system="Tell a story.", output=output)
    answer = predictor(PROMPTS[1], system="Tell a story.")
    assert history == [{"role": "user", "content": PROMPTS[1]}, {"role": "assistant", "content": answer}]
    assert output.getvalue() == answer + "\n"


def test_predict_writes_jsonl(tmp_path: Path, predictor: Predictor) -> None:
    records = json.loads(ALPACA_DEMO.read_text(encoding="utf-8"))
    chosen = [r for r in records if r["input"]][:2] + [r for r in records if not r["input"]][:3]
    data = tmp_path / "alpaca_small.json"
    data.write_text(json.dumps(chosen, ensure_ascii=False), encoding="utf-8")

    out = run_predict(predictor, str(data), dataset_dir=str(tmp_path), output=str(tmp_path / "a" / "p.jsonl"),
                      batch_size=2, max_samples=4)
    assert out == tmp_path / "a" / "p.jsonl"
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 4  # max_samples, across an uneven last batch
    for line, record in zip(lines, chosen, strict=False):
        assert set(line) == {"prompt", "messages", "prediction", "reference"}
        assert line["reference"] == record["output"]
        assert record["instruction"] in line["prompt"] and record["input"] in line["prompt"]
        assert line["messages"] == [{"role": "user", "content": line["prompt"]}]
        assert line["prediction"] == predictor(line["prompt"])


def test_predict_on_question_answer_and_prompt_only_data(tmp_path: Path, predictor: Predictor) -> None:
    """Prompt-only data (GSM8K questions, and a file with no answer at all) still predicts; the
    reference is the answer column where there is one."""
    lines = (SHARED / "data" / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    questions = tmp_path / "gsm8k.jsonl"
    questions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = run_predict(predictor, str(questions), dataset_dir=str(tmp_path), output=str(tmp_path / "p.jsonl"),
                      batch_size=2)
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    records = [json.loads(line) for line in lines]
    assert [w["prompt"] for w in written] == [r["question"] for r in records]
    assert [w["reference"] for w in written] == [r["answer"] for r in records]
    assert all(w["prediction"] for w in written)

    bare = tmp_path / "prompts.jsonl"
    bare.write_text(json.dumps({"prompt": "Write a story about a cat."}) + "\n", encoding="utf-8")
    [row] = [json.loads(line) for line in run_predict(predictor, str(bare), dataset_dir=str(tmp_path),
                                                      output=str(tmp_path / "b.jsonl")).read_text().splitlines()]
    assert row["prompt"] == "Write a story about a cat." and row["reference"] == "" and row["prediction"]


def test_a_home_relative_adapter_loads_and_is_checked(tmp_path, monkeypatch, demo_adapter, rm_adapter):
    """``~/...`` reaches the libraries expanded: they would take it for a hub id."""
    import shutil

    from tunelab.inference.loading import check_inference_sources

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(demo_adapter, tmp_path / "demo", ignore=shutil.ignore_patterns("checkpoint-*"))
    shutil.copytree(rm_adapter, tmp_path / "rm", ignore=shutil.ignore_patterns("checkpoint-*"))
    assert Predictor(adapter="~/demo", max_new_tokens=4, device="cpu")("Write a story about Tim.")
    with pytest.raises(TunelabError, match="is a reward model"):
        check_inference_sources(None, "~/rm", use="generate")
