"""Tool calls read back from a model's text, for the templates that define them (real templates: minimind's
Qwen-style one from tests/fixtures, Llama 3.1's), and the streaming hold-back that keeps calls out of content."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.inference.tools import ToolParser, messages_for_template, tool_parser_for

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizers"


def test_the_parser_is_chosen_from_the_template_text(minimind_tokenizer, stories_tokenizer) -> None:
    assert tool_parser_for(minimind_tokenizer.chat_template) == ToolParser("hermes")
    llama31 = (FIXTURES / "llama3" / "chat_template_llama3.1.jinja").read_text(encoding="utf-8")
    assert tool_parser_for(llama31) == ToolParser("llama3")
    assert tool_parser_for("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert tool_parser_for(None) is None


def test_hermes_calls_and_the_text_around_them() -> None:
    parser = ToolParser("hermes")
    text = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')
    content, calls = parser.split(text)
    assert content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                                   ("get_time", {"zone": "CET"})]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    broken = "<tool_call>\n{not json}\n</tool_call>"
    assert parser.split(broken) == (broken, [])  # not a call after all: the text stays as written
    assert parser.split("no calls here") == ("no calls here", [])


def test_llama31_json_calls() -> None:
    parser = ToolParser("llama3")
    content, calls = parser.split('{"name": "get_weather", "parameters": {"city": "Paris"}}')
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather",
                                                                                      {"city": "Paris"})]
    assert parser.split("It is sunny.") == ("It is sunny.", [])


def test_streaming_holds_back_what_may_start_a_call() -> None:
    hermes, llama = ToolParser("hermes"), ToolParser("llama3")
    assert hermes.held_from("Sure. <tool") == len("Sure. ")
    assert hermes.held_from("Sure. <tool_call>\n{") == len("Sure. ")
    assert hermes.held_from("Sure, it is 5 < 6.") == len("Sure, it is 5 < 6.")
    assert llama.held_from('{"name": "f"') == 0 and llama.held_from("It is sunny.") == len("It is sunny.")


def test_openai_messages_reach_templates_as_they_expect(llama3_tokenizer) -> None:
    llama31 = (FIXTURES / "llama3" / "chat_template_llama3.1.jinja").read_text(encoding="utf-8")
    messages = messages_for_template([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}])
    assert messages[1]["content"] == "" and messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    text = llama3_tokenizer.apply_chat_template(messages, chat_template=llama31, tokenize=False,
                                                add_generation_prompt=True)
    call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert f"<|end_header_id|>\n\n{call}<|eot_id|>" in text  # the call as Llama 3.1 writes it...
    (parsed,) = ToolParser("llama3").split(call)[1]  # ...is the call read back
    assert (parsed.name, json.loads(parsed.arguments)) == ("get_weather", {"city": "Paris"})
