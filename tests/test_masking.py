"""Loss masking on real chat templates and tokenizers.

The contract: for every assistant turn, the tokens that carry loss are exactly the turn's content
followed by the template's end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``, ``</s>``); nothing of
the system prompt, the user turns or the template's headers is trained. Labels are the input ids
where trained and -100 elsewhere, and the text is what ``apply_chat_template`` renders for inference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tunelab.data.masking import (
    IGNORE_INDEX,
    Encoded,
    MaskingError,
    encode_conversation,
    encode_text,
    segments,
    trained_char_spans,
)
from tunelab.data.registry import load_dataset_rows
from tunelab.data.templates import BUILTIN_TEMPLATES, apply_template, render

BUILTIN_MARKERS = {"chatml": "<|im_end|>", "qwen": "<|im_end|>", "llama3": "<|eot_id|>"}
BUILTIN_SPECIAL_TOKENS = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "qwen": ["<|im_start|>", "<|im_end|>"],
    "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}

# (id, tokenizer, template passed to apply_template: None = the tokenizer's own, a built-in name or a
#  .jinja path relative to ../shared, end-of-turn marker; None = the tokenizer's eos token)
REAL_TEMPLATES = [
    ("minimind-own", "minimind", None, "<|im_end|>"),
    ("llama3-own", "llama3", None, "<|eot_id|>"),
    ("llama3.1-file", "llama3", "tokenizers/llama3/chat_template_llama3.1.jinja", "<|eot_id|>"),
    ("qwen3-file-on-minimind", "minimind", "templates/qwen3_chat_template.jinja", "<|im_end|>"),
] + [
    (f"builtin-{name}", "stories260K", name, BUILTIN_MARKERS.get(name)) for name in BUILTIN_TEMPLATES
]


# --- helpers --------------------------------------------------------------------------------------

def trained_runs(encoded: Encoded) -> list[list[int]]:
    """Maximal runs of consecutive token ids that carry loss."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        trained = label != IGNORE_INDEX
        if trained:
            if previous:
                runs[-1].append(token)
            else:
                runs.append([token])
        previous = trained
    return runs


def decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def trained_texts(encoded: Encoded) -> list[str]:
    return [segment["text"] for segment in segments(encoded) if segment["trained"]]


def assert_labels_consistent(encoded: Encoded) -> None:
    assert len(encoded.labels) == len(encoded.input_ids) == len(encoded.offsets)
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        assert label in (token, IGNORE_INDEX)


def setup_template(load_tokenizer: Callable[[str], Any], shared_dir: Path, tokenizer_name: str,
                   template: str | None, marker: str | None) -> tuple[Any, str]:
    tokenizer = load_tokenizer(tokenizer_name)
    if template is not None and template.endswith(".jinja"):
        template = str(shared_dir / template)
    apply_template(tokenizer, template)
    return tokenizer, marker if marker is not None else tokenizer.eos_token


@pytest.fixture(scope="module")
def conversation(alpaca_records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """System + three user/assistant turns from alpaca_en_demo (one user turn with an input, one
    multi-line answer with indentation)."""
    records = alpaca_records
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for index in (1, 5, 2):
        record = records[index]
        user = "\n".join(part for part in (record["instruction"], record["input"]) if part)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    assert records[5]["input"] and "\n " in records[5]["output"]
    return messages


def assistant_contents(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


# --- the real templates ---------------------------------------------------------------------------

@pytest.mark.parametrize(("tokenizer_name", "template", "marker"),
                         [case[1:] for case in REAL_TEMPLATES], ids=[case[0] for case in REAL_TEMPLATES])
def test_assistant_policy_trains_each_reply_and_marker(load_tokenizer, shared_dir, conversation,
                                                       tokenizer_name, template, marker) -> None:
    tokenizer, marker = setup_template(load_tokenizer, shared_dir, tokenizer_name, template, marker)
    encoded = encode_conversation(tokenizer, conversation, policy="assistant")
    expected = [content + marker for content in assistant_contents(conversation)]

    # What is trained is the rendered conversation, tokenized as at inference.
    assert encoded.text == tokenizer.apply_chat_template(conversation, tokenize=False)
    assert encoded.input_ids == tokenizer(encoded.text, add_special_tokens=False)["input_ids"]
    assert not encoded.truncated
    assert_labels_consistent(encoded)

    runs = trained_runs(encoded)
    assert [decode(tokenizer, run) for run in runs] == expected
    # The marker is one token and each run ends with it.
    marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    assert len(marker_ids) == 1
    assert all(run[-1] == marker_ids[0] for run in runs)
    assert encoded.num_trained == sum(len(run) for run in runs)

    # Nothing of the system prompt or the user turns is trained.
    trained = "\x00".join(trained_texts(encoded))
    for message in conversation:
        if message["role"] != "assistant":
            assert message["content"] not in trained

    # segments() re-assembles the text and its trained parts are the same strings.
    parts = segments(encoded)
    assert "".join(part["text"] for part in parts) == encoded.text
    texts = trained_texts(encoded)
    if template == "default":
        # "Assistant: {content}": with SentencePiece the separator space can share the first content
        # token ("▁The"), and segments() shows whole tokens.
        assert [text.removeprefix(" ") for text in texts] == expected
    else:
        assert texts == expected


@pytest.mark.parametrize(("tokenizer_name", "template", "marker"),
                         [case[1:] for case in REAL_TEMPLATES], ids=[case[0] for case in REAL_TEMPLATES])
def test_last_policy_trains_only_last_reply(load_tokenizer, shared_dir, conversation,
                                            tokenizer_name, template, marker) -> None:
    tokenizer, marker = setup_template(load_tokenizer, shared_dir, tokenizer_name, template, marker)
    every = encode_conversation(tokenizer, conversation, policy="assistant")
    last = encode_conversation(tokenizer, conversation, policy="last")
    assert last.input_ids == every.input_ids and last.text == every.text
    assert_labels_consistent(last)

    runs = trained_runs(last)
    assert [decode(tokenizer, run) for run in runs] == [conversation[-1]["content"] + marker]
    # The trained tokens are exactly the last run of the "assistant" policy, at the same positions.
    last_run_positions = [i for i, label in enumerate(every.labels) if label != IGNORE_INDEX][-len(runs[0]):]
    assert [i for i, label in enumerate(last.labels) if label != IGNORE_INDEX] == last_run_positions
    for content in assistant_contents(conversation)[:-1]:
        assert content not in "\x00".join(trained_texts(last))


@pytest.mark.parametrize(("tokenizer_name", "template", "marker"),
                         [case[1:] for case in REAL_TEMPLATES], ids=[case[0] for case in REAL_TEMPLATES])
def test_all_policy_trains_every_token(load_tokenizer, shared_dir, conversation,
                                       tokenizer_name, template, marker) -> None:
    tokenizer, _ = setup_template(load_tokenizer, shared_dir, tokenizer_name, template, marker)
    encoded = encode_conversation(tokenizer, conversation, policy="all")
    assert encoded.labels == encoded.input_ids
    assert encoded.num_trained == len(encoded.input_ids) > 0
    assert segments(encoded) == [{"text": encoded.text, "trained": True}]


@pytest.mark.parametrize(("tokenizer_name", "template", "marker"),
                         [case[1:] for case in REAL_TEMPLATES], ids=[case[0] for case in REAL_TEMPLATES])
def test_truncation_keeps_prefix(load_tokenizer, shared_dir, conversation,
                                 tokenizer_name, template, marker) -> None:
    tokenizer, _ = setup_template(load_tokenizer, shared_dir, tokenizer_name, template, marker)
    full = encode_conversation(tokenizer, conversation)
    trained = [label != IGNORE_INDEX for label in full.labels]
    run_starts = [i for i, flag in enumerate(trained) if flag and (i == 0 or not trained[i - 1])]
    assert len(run_starts) == 3
    cutoff = run_starts[1] + 3  # a few tokens into the second assistant reply

    cut = encode_conversation(tokenizer, conversation, cutoff_len=cutoff)
    assert cut.truncated
    assert len(cut.input_ids) == len(cut.labels) == len(cut.offsets) == cutoff
    assert cut.input_ids == full.input_ids[:cutoff]
    assert cut.labels == full.labels[:cutoff]
    assert cut.offsets.tolist() == full.offsets[:cutoff].tolist()
    assert len(trained_runs(cut)) == 2 and len(trained_runs(cut)[1]) == 3
    # segments() still covers the whole text; only the kept tokens can be trained.
    assert "".join(part["text"] for part in segments(cut)) == cut.text
    assert trained_texts(cut)[0] == trained_texts(full)[0]

    exact = encode_conversation(tokenizer, conversation, cutoff_len=len(full.input_ids))
    assert not exact.truncated and exact.input_ids == full.input_ids and exact.labels == full.labels


@pytest.mark.parametrize("name", list(BUILTIN_TEMPLATES))
def test_builtin_template_tokens(load_tokenizer, name: str) -> None:
    tokenizer = load_tokenizer("stories260K")
    size = len(tokenizer)
    assert not tokenizer.chat_template
    assert apply_template(tokenizer, name) == name
    assert tokenizer.chat_template == BUILTIN_TEMPLATES[name]
    added = BUILTIN_SPECIAL_TOKENS.get(name, [])
    assert len(tokenizer) == size + len(added)
    for token in added:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id]
    assert tokenizer.eos_token == BUILTIN_MARKERS.get(name, "</s>")
    # Installing twice adds nothing more.
    apply_template(tokenizer, name)
    assert len(tokenizer) == size + len(added)


def test_factory_gives_independent_copies(load_tokenizer) -> None:
    changed = load_tokenizer("stories260K")
    apply_template(changed, "chatml")
    fresh = load_tokenizer("stories260K")
    assert "<|im_end|>" not in fresh.get_vocab() and not fresh.chat_template and fresh.eos_token == "</s>"


def test_generation_prompt_matches_training_prefix(load_tokenizer, conversation) -> None:
    """The prompt the model sees at inference is exactly the untrained text before the last reply."""
    tokenizer = load_tokenizer("minimind")
    encoded = encode_conversation(tokenizer, conversation, policy="last")
    prompt = render(tokenizer, conversation[:-1], add_generation_prompt=True)
    parts = segments(encoded)
    assert parts[0]["trained"] is False and parts[1]["trained"] is True
    assert parts[0]["text"] == prompt
    assert encoded.text.startswith(parts[0]["text"] + conversation[-1]["content"])


# --- tool calls ---------------------------------------------------------------------------------------

TOOL_TEMPLATES = [
    ("minimind", None), ("llama3", "tokenizers/llama3/chat_template_llama3.1.jinja"),
    ("stories260K", "chatml"), ("stories260K", "qwen"), ("stories260K", "llama3"), ("stories260K", "alpaca"),
    ("stories260K", "default"),
]


@pytest.mark.parametrize(("tokenizer_name", "template"), TOOL_TEMPLATES,
                         ids=[f"{t}-{p or 'own'}".replace("/", "_") for t, p in TOOL_TEMPLATES])
def test_tool_call_turns_are_trained_and_observations_not(load_tokenizer, shared_dir, llamafactory_dir,
                                                          tokenizer_name, template) -> None:
    row = load_dataset_rows("glaive_toolcall_en_demo", llamafactory_dir, "sft", max_samples=1).rows[0]
    tokenizer, _ = setup_template(load_tokenizer, shared_dir, tokenizer_name, template, None)
    marker = tokenizer.eos_token  # the built-ins set eos to their end-of-turn marker
    assert marker in ("<|im_end|>", "<|eot_id|>", "</s>")
    encoded = encode_conversation(tokenizer, row["messages"], row["tools"])
    assert "search_recipes" in encoded.text and '"ingredients"' in encoded.text  # the tools are rendered
    texts = trained_texts(encoded)
    assistants = [m for m in row["messages"] if m["role"] == "assistant"]
    assert len(texts) == len(assistants)
    for text, message in zip(texts, assistants, strict=True):
        assert text.endswith(marker)
        if message.get("tool_calls"):
            assert "search_recipes" in text and "bell peppers" in text
        else:
            assert message["content"] in text
    trained = "\x00".join(texts)
    for message in row["messages"]:
        if message["role"] in ("user", "tool"):
            assert message["content"] not in trained
    assert '"description": "Search for recipes' not in trained  # tool definitions are prompt


# --- errors and pretraining text ----------------------------------------------------------------------

def test_unknown_policy_is_rejected(minimind_tokenizer, conversation) -> None:
    with pytest.raises(ValueError, match="unknown loss policy 'none'"):
        encode_conversation(minimind_tokenizer, conversation, policy="none")


def test_trained_char_spans_point_at_replies(minimind_tokenizer, conversation) -> None:
    text, spans = trained_char_spans(minimind_tokenizer, conversation, None, "assistant")
    expected = [content + "<|im_end|>" for content in assistant_contents(conversation)]
    assert [text[start:end] for start, end in spans] == expected
    assert spans == sorted(spans)


def test_template_that_hides_replies_raises(load_tokenizer) -> None:
    tokenizer = load_tokenizer("stories260K")
    # Re-renders history without earlier answers: an earlier turn cannot be located.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role == 'user' %}U: {{ m.content }}\n"
        "{% elif loop.last %}A: {{ m.content }}</s>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}A: {% endif %}")
    messages = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": "two"}, {"role": "assistant", "content": "second answer"}]
    with pytest.raises(MaskingError, match="assistant turn 1"):
        encode_conversation(tokenizer, messages)


def test_base_tokenizer_without_template_is_a_config_error(load_tokenizer) -> None:
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match="no chat template"):
        apply_template(load_tokenizer("stories260K"), None)
    with pytest.raises(ConfigError, match="did you mean 'chatml'"):
        apply_template(load_tokenizer("stories260K"), "chatm")


@pytest.mark.parametrize("name", ["stories260K", "minimind"])
def test_encode_text_chunks(load_tokenizer, llamafactory_dir, name: str) -> None:
    tokenizer = load_tokenizer(name)
    text = json.loads((llamafactory_dir / "c4_demo.jsonl").read_text("utf-8").split("\n", 1)[0])["text"]
    bos = tokenizer.bos_token if tokenizer.bos_token != tokenizer.eos_token else ""
    full_ids = tokenizer(f"{bos}{text}{tokenizer.eos_token}", add_special_tokens=False)["input_ids"]
    cutoff = next(c for c in range(64, 80) if len(full_ids) % c != 1)  # no 1-token tail to drop
    chunks = encode_text(tokenizer, text, cutoff)
    assert len(chunks) == -(-len(full_ids) // cutoff)
    assert all(len(chunk.input_ids) <= cutoff and chunk.labels == chunk.input_ids for chunk in chunks)
    assert [t for chunk in chunks for t in chunk.input_ids] == full_ids
    assert bos, "both tokenizers have a bos distinct from eos"
    assert chunks[0].input_ids[0] == tokenizer.convert_tokens_to_ids(bos)
    assert chunks[-1].input_ids[-1] == tokenizer.eos_token_id


# --- every real Hugging Face template that renders this conversation ------------------------------------

def test_hf_chat_templates_train_only_assistant_text(load_tokenizer, templates_dir, conversation) -> None:
    entries = json.loads((templates_dir / "hf_chat_templates.json").read_text(encoding="utf-8"))
    assert len(entries) == 37
    messages = conversation[:5]  # system, user, assistant, user, assistant
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    tokenizer = load_tokenizer("llama3")
    checked, skipped = [], []
    for index, entry in enumerate(entries):
        tokenizer.chat_template = entry["template"]
        try:
            tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:  # e.g. templates that reject a system role or require strict alternation
            skipped.append(entry["name"])
            continue
        label = f"#{index} {entry['name']}"
        encoded = encode_conversation(tokenizer, messages)
        assert_labels_consistent(encoded)
        texts = trained_texts(encoded)
        assert len(texts) == 2, label
        for text, content in zip(texts, assistant_contents(messages), strict=True):
            assert content in text, label
        trained = "\x00".join(texts)
        for message in messages:
            if message["role"] != "assistant":
                assert message["content"] not in trained, label
        assert "".join(part["text"] for part in segments(encoded)) == encoded.text
        checked.append(entry["name"])
    assert len(checked) >= 20, (checked, skipped)
    assert {"chatml", "llama3-instruct", "phi-3", "zephyr", "command-r"} <= set(checked)


# --- known defect (see the report): an end marker followed by a conversation-final eos ---------------------

def test_end_marker_trained_when_template_appends_final_eos(load_tokenizer, templates_dir,
                                                            conversation) -> None:
    entries = json.loads((templates_dir / "hf_chat_templates.json").read_text(encoding="utf-8"))
    # The real ChatML template that ends an assistant-final conversation with {{ eos_token }}.
    template = next(e["template"] for e in entries
                    if e["name"] == "chatml" and "elif messages[-1]['role'] == 'assistant'" in e["template"])
    tokenizer = load_tokenizer("minimind")
    tokenizer.chat_template = template
    encoded = encode_conversation(tokenizer, conversation)
    texts = trained_texts(encoded)
    contents = assistant_contents(conversation)
    assert texts[:-1] == [content + "<|im_end|>" for content in contents[:-1]]


# GLM-4's chat layout (THUDM/glm-4-9b-chat): no end-of-turn marker; the model stops by emitting the next
# role header (<|user|>, one of its eos ids), and its fine-tuning appends eos after the final answer.
GLM4_LAYOUT = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_template_without_end_marker_still_teaches_the_model_to_stop(load_tokenizer, conversation) -> None:
    tokenizer = load_tokenizer("minimind")
    tokenizer.add_special_tokens({"additional_special_tokens": ["[gMASK]", "<sop>", "<|system|>", "<|user|>",
                                                                "<|assistant|>"]})
    tokenizer.chat_template = GLM4_LAYOUT
    encoded = encode_conversation(tokenizer, conversation)
    contents = assistant_contents(conversation)
    assert trained_texts(encoded) == [c + "<|user|>" for c in contents[:-1]] + [contents[-1] + tokenizer.eos_token]
    assert encoded.text.endswith(contents[-1] + tokenizer.eos_token)
    assert_labels_consistent(encoded)


# --- preference pairs (rm, dpo, orpo, simpo) and KTO answers ---------------------------------------

@pytest.fixture(scope="module")
def dpo_pairs(llamafactory_dir: Path) -> list[dict[str, Any]]:
    """Real pairs of LLaMA-Factory's dpo_en_demo, the first multi-turn one among them."""
    from tunelab.data.registry import load_dataset_rows

    rows = load_dataset_rows("dpo_en_demo", llamafactory_dir, "preference", max_samples=40).rows
    multi = next(row for row in rows if len(row["prompt"]) > 1)
    return [rows[0], multi]


@pytest.mark.parametrize(("tokenizer_name", "template", "marker"),
                         [case[1:] for case in REAL_TEMPLATES], ids=[case[0] for case in REAL_TEMPLATES])
def test_preference_pairs_train_exactly_each_answer_and_marker(load_tokenizer, shared_dir, dpo_pairs,
                                                               tokenizer_name, template, marker) -> None:
    """What DPO/ORPO/SimPO train (the completion mask of pair_sample) is the chosen and the rejected answer's
    content plus the end marker; the shared prompt (earlier turns included) is context only."""
    from tunelab.data.encoders import encode_pair, pair_sample

    tokenizer, marker = setup_template(load_tokenizer, shared_dir, tokenizer_name, template, marker)
    for row in dpo_pairs:
        sample = pair_sample(*encode_pair(row, tokenizer))
        for side in ("chosen", "rejected"):
            ids, mask = sample[f"{side}_ids"], sample[f"{side}_mask"]
            trained = [token for token, flag in zip(ids, mask, strict=True) if flag]
            expected = row[side][-1]["content"] + marker
            text = decode(tokenizer, trained)
            assert (text.removeprefix(" ") if template == "default" else text) == expected
            assert mask[-1] == 1  # the sequence ends at the end marker: nothing after it is scored
        prompt_text = decode(tokenizer, sample["prompt_ids"])
        assert all(message["content"] in prompt_text for message in row["prompt"])


def test_kto_answer_mask_is_the_answer_and_marker(load_tokenizer, shared_dir, llamafactory_dir) -> None:
    from tunelab.data.encoders import completion_sample, encode_kto
    from tunelab.data.registry import load_dataset_rows

    tokenizer, marker = setup_template(load_tokenizer, shared_dir, "llama3", None, "<|eot_id|>")
    for row in load_dataset_rows("kto_en_demo", llamafactory_dir, "kto", max_samples=5).rows:
        sample = completion_sample(encode_kto(row, tokenizer))
        trained = [t for t, m in zip(sample["completion_ids"], sample["completion_mask"], strict=True) if m]
        assert decode(tokenizer, trained) == row["completion"][-1]["content"].strip() + marker


# --- the fast paths equal the plain computation ------------------------------------------------------------

def _real_conversations(llamafactory_dir: Path, conversation: list[dict]) -> list[list[dict]]:
    """The multi-turn conversation and real single-turn rows in English and Chinese (multi-byte characters,
    which byte-level tokenizers split into several tokens sharing one character's offsets)."""
    rows = []
    for name in ("alpaca_en_demo", "alpaca_zh_demo"):
        rows += load_dataset_rows(name, str(llamafactory_dir), "sft", max_samples=40).rows
    return [conversation] + [row["messages"] for row in rows]


def _two_render_spans(tokenizer: Any, messages: list[dict], policy: str = "assistant") -> tuple[str, list]:
    """``trained_char_spans`` with every turn located by rendering its prompt (no single-render shortcut)."""
    from unittest import mock

    with mock.patch("tunelab.data.masking._sole_final_reply", return_value=None):
        return trained_char_spans(tokenizer, messages, None, policy)


def _reference_labels(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Labels from every token's character offsets against the trained spans, rendered by apply_chat_template."""
    text, spans = _two_render_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(encoded["offset_mapping"]).reshape(-1, 2)
    starts, ends = offsets[:, 0], offsets[:, 1]
    trained = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        trained |= ((starts < end) & (ends > start)) | ((starts == ends) & (starts >= start) & (starts < end))
    return [token if flag else IGNORE_INDEX for token, flag in zip(encoded["input_ids"], trained, strict=True)]


@pytest.mark.parametrize(("tokenizer_name", "template", "marker"),
                         [entry[1:] for entry in REAL_TEMPLATES], ids=[entry[0] for entry in REAL_TEMPLATES])
def test_fast_render_and_labels_equal_the_plain_computation(load_tokenizer, shared_dir, llamafactory_dir,
                                                            conversation, tokenizer_name: str, template: str | None,
                                                            marker: str | None) -> None:
    tokenizer, _ = setup_template(load_tokenizer, shared_dir, tokenizer_name, template, marker)
    checked = 0
    for messages in _real_conversations(llamafactory_dir, conversation):
        for generation_prompt in (False, True):
            assert render(tokenizer, messages, add_generation_prompt=generation_prompt) == \
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        encoded = encode_conversation(tokenizer, messages)
        assert encoded.labels == _reference_labels(tokenizer, messages)
        assert encoded.offsets.tolist() == [list(pair) for pair in tokenizer(
            encoded.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
        checked += encoded.num_trained > 0
    assert checked == 81


def test_fast_labels_on_every_hf_template(load_tokenizer, templates_dir, llamafactory_dir, conversation) -> None:
    entries = json.loads((templates_dir / "hf_chat_templates.json").read_text(encoding="utf-8"))
    tokenizer = load_tokenizer("llama3")
    conversations = _real_conversations(llamafactory_dir, conversation)[:12]
    checked = set()
    for index, entry in enumerate(entries):
        tokenizer.chat_template = entry["template"]
        for messages in conversations:
            try:
                expected = _reference_labels(tokenizer, messages)
            except Exception:  # templates that reject a system role, or strict alternation
                continue
            assert render(tokenizer, messages) == tokenizer.apply_chat_template(messages, tokenize=False), entry["name"]
            assert encode_conversation(tokenizer, messages).labels == expected, entry["name"]
            checked.add(index)
    assert len(checked) == len(entries) == 37


@pytest.mark.parametrize("tokenizer_name", ["llama3", "minimind", "stories260K"])
def test_span_labels_equal_offset_overlap_for_any_span(load_tokenizer, llamafactory_dir, tokenizer_name: str) -> None:
    """Spans that start or end inside a token, on whitespace a tokenizer leaves out of every token, or inside a
    Chinese character that byte-level tokenizers split into pieces sharing its offsets: labels from the tokens'
    bytes (byte-level and Metaspace tokenizers), and from the encoding's offsets, equal the offsets' overlap."""
    import random

    from tunelab.data.masking import _byte_labels, _labels, _offset_labels, _token_flags, _tokenize
    from tunelab.data.token_bytes import token_bytes

    tokenizer = load_tokenizer(tokenizer_name)
    table = token_bytes(tokenizer)
    assert table is not None
    generator = random.Random(0)
    texts = [row["messages"][-1]["content"] for name in ("alpaca_en_demo", "alpaca_zh_demo")
             for row in load_dataset_rows(name, str(llamafactory_dir), "sft", max_samples=15).rows]
    decided_by_bytes = 0
    for text in texts:
        [(ids, encoding_of)] = _tokenize(tokenizer, [text])
        offsets = np.asarray(encoding_of().offsets).reshape(-1, 2)
        assert encoding_of().ids == ids
        for _ in range(20):
            spans = sorted(tuple(sorted(generator.sample(range(len(text) + 1), 2))) for _ in range(2))
            expected = np.where(_token_flags(offsets, spans), ids, IGNORE_INDEX).tolist()
            assert _labels(text, ids, spans, encoding_of, table) == expected, (text, spans)
            assert _offset_labels(encoding_of(), ids, spans) == expected, (text, spans)
            decided_by_bytes += _byte_labels(text, ids, spans, table) is not None
    assert decided_by_bytes > 300


# Replies that a search could find in the wrong place: template words, the question itself, the system prompt.
_AMBIGUOUS_REPLIES = ["assistant", "user", "system", "end", "im", "think", "Human", "Response", "###", "\n",
                      "<|im_end|>", "You are a helpful assistant.", "QUESTION", "QUESTION and more", "more", "A"]


def _ambiguous_conversations(llamafactory_dir: Path) -> list[list[dict]]:
    rows = load_dataset_rows("alpaca_en_demo", str(llamafactory_dir), "sft", max_samples=3).rows
    conversations = []
    for row in rows:
        question = row["messages"][0]["content"]
        for reply in _AMBIGUOUS_REPLIES:
            reply = reply.replace("QUESTION", question)
            conversations.append([{"role": "user", "content": question}, {"role": "assistant", "content": reply}])
            conversations.append([{"role": "system", "content": "You are a helpful assistant."},
                                  {"role": "user", "content": question + " A more"},
                                  {"role": "assistant", "content": reply}])
    return conversations


def _same_spans_with_one_render(tokenizer: Any, messages: list[dict]) -> bool:
    """Whether the shortcut and the two-render path agree (both failing counts as agreeing); False if it did not
    apply (the caller counts how often it does)."""
    try:
        expected = _two_render_spans(tokenizer, messages)
    except MaskingError:
        expected = None
    try:
        got = trained_char_spans(tokenizer, messages, None)
    except MaskingError:
        got = None
    assert got == expected, messages
    from tunelab.data.masking import _sole_final_reply

    content = messages[-1]["content"].strip()
    return expected is not None and _sole_final_reply(expected[0], messages, content, 0) is not None


@pytest.mark.parametrize(("tokenizer_name", "template", "marker"),
                         [entry[1:] for entry in REAL_TEMPLATES], ids=[entry[0] for entry in REAL_TEMPLATES])
def test_final_reply_found_with_one_render_is_where_two_renders_find_it(load_tokenizer, shared_dir, llamafactory_dir,
                                                                        conversation, tokenizer_name: str,
                                                                        template: str | None, marker: str | None):
    """Single-turn data renders once: the reply's place comes from the text alone when the reply occurs there once,
    after the question. Replies that are template words, the question, or part of it fall back, and every case
    gives the spans that rendering the prompt gives."""
    tokenizer, _ = setup_template(load_tokenizer, shared_dir, tokenizer_name, template, marker)
    conversations = _real_conversations(llamafactory_dir, conversation) + _ambiguous_conversations(llamafactory_dir)
    shortcut = sum(_same_spans_with_one_render(tokenizer, messages) for messages in conversations)
    assert shortcut >= 80  # the real rows take the shortcut


def test_final_reply_with_one_render_on_every_hf_template(load_tokenizer, templates_dir, llamafactory_dir) -> None:
    entries = json.loads((templates_dir / "hf_chat_templates.json").read_text(encoding="utf-8"))
    tokenizer = load_tokenizer("llama3")
    conversations = _ambiguous_conversations(llamafactory_dir)[:40]
    for entry in entries:
        tokenizer.chat_template = entry["template"]
        for messages in conversations:
            try:
                tokenizer.apply_chat_template(messages, tokenize=False)
            except Exception:  # templates that reject a system role, or strict alternation
                continue
            _same_spans_with_one_render(tokenizer, messages)


_HOSTILE_TEMPLATES = [
    "{{ messages[0].__class__.__mro__ }}",
    "{{ messages[0].content.__class__.__base__.__subclasses__() }}",
    "{{ messages[0].items.__self__ }}",
    "{{ messages[0].content.format_map(messages[0]) }}",
    "{{ messages[0].content.format.__globals__ }}",
    "{{ messages.append(1) }}{{ messages[0].update({'role': 'x'}) }}",
    "{{ messages[0]._private }}{{ messages[0].missing }}{{ messages[0].get('role') }}{{ messages[0].keys()|list }}",
    "{% for m in messages %}{{ m.role | upper }}{{ m.content.split(' ')[0].strip() }}{{ m['content'] }}{% endfor %}",
]


@pytest.mark.parametrize("template", _HOSTILE_TEMPLATES)
def test_the_quicker_sandbox_renders_and_refuses_as_transformers_does(minimind_tokenizer, template: str) -> None:
    """``render`` runs transformers' compiled template in a subclass of its sandbox that answers dict keys and str
    methods at once; the text, or the refusal, is what ``apply_chat_template`` gives."""
    messages = [{"role": "user", "content": "Hello {role} there"}]
    rendered, expected = _both_renders(_with_template(minimind_tokenizer, template), messages, False)
    assert rendered == expected
    assert "__" not in expected or "Error" in expected


# Contents that trip the questions chat templates ask of a content (its ends, reasoning and tool tags, emptiness,
# quotes and backslashes a JSON copy escapes, template syntax, its own role words and markers, other scripts).
_TRICKY_CONTENTS = ["plain words", "  spaced ends  ", "\nnewline first", "newline last\n", "", "</think>after",
                    "<think>why</think>\n\nanswer", "<tool_response>x</tool_response>", 'a "quote" and \\ slash',
                    "{{ messages }} {% if x %}", "assistant", "<|im_end|>", "<|eot_id|>", "UPPER lower", "中文内容",
                    "tab\tin", "x", "Mk", "\ue000"]


def _tricky_conversations() -> list[tuple[list[dict], bool]]:
    shapes = [["user", "assistant"], ["system", "user", "assistant"], ["user", "assistant", "user", "assistant"]]
    conversations = []
    for offset, content in enumerate(_TRICKY_CONTENTS):
        for roles in shapes:
            messages = [{"role": role, "content": content if i == len(roles) - 1 - offset % len(roles) else
                         f"{role} says {i}"} for i, role in enumerate(roles)]
            conversations += [(messages, False), (messages[:-1], True)]
    return conversations


def _outcome(call: Callable[..., str], *args: Any, **kwargs: Any) -> str:
    try:
        return call(*args, **kwargs)
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def _with_template(tokenizer: Any, template: str) -> Any:
    """A copy of ``tokenizer`` with this chat template (the fixture stays as it is)."""
    import copy

    tokenizer = copy.copy(tokenizer)
    tokenizer.chat_template = template
    return tokenizer


def _both_renders(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> tuple[str, str]:
    """``render``'s text (or error) and ``apply_chat_template``'s."""
    return (_outcome(render, tokenizer, messages, add_generation_prompt=generation_prompt),
            _outcome(tokenizer.apply_chat_template, messages, tokenize=False, add_generation_prompt=generation_prompt))


def test_the_skeleton_render_is_the_templates_own_on_every_template(load_tokenizer, shared_dir,
                                                                    templates_dir) -> None:
    """A plain conversation renders from its shape's skeleton with the contents filled in (``data/skeleton.py``),
    or as usual where a content answers one of the template's questions differently. Either way the text, or the
    refusal, is ``apply_chat_template``'s: on every real and Hugging Face template, with contents chosen to trip
    each question. Most plain conversations do take the skeleton."""
    from tunelab.data import skeleton
    from tunelab.data.templates import _plain_template_source

    cases = [setup_template(load_tokenizer, shared_dir, name, template, marker)[0]
             for _, name, template, marker in REAL_TEMPLATES]
    for entry in json.loads((templates_dir / "hf_chat_templates.json").read_text(encoding="utf-8")):
        tokenizer = load_tokenizer("llama3")
        tokenizer.chat_template = entry["template"]
        cases.append(tokenizer)
    filled = fallbacks = 0
    for case, tokenizer in enumerate(cases):
        for messages, generation_prompt in _tricky_conversations():
            rendered, expected = _both_renders(tokenizer, messages, generation_prompt)
            assert rendered == expected, (tokenizer.chat_template[:80], messages)
            source = _plain_template_source(tokenizer, messages)
            if source is not None and "Error: " not in expected:
                used = skeleton.render_by_skeleton(source, messages, generation_prompt,
                                                   dict(tokenizer.special_tokens_map)) is not None
                filled, fallbacks = filled + used, fallbacks + (not used)
                plain = all(message["content"] == "plain words" or " says " in message["content"]
                            for message in messages)
                assert used or not plain or case >= len(REAL_TEMPLATES), (REAL_TEMPLATES[case][0], messages)
    assert filled > 3 * fallbacks, (filled, fallbacks)


# Templates that work on text made from a content (joined, a macro's output, a set block, a filter's result) or read
# it where no question is recorded (a word count, a test of its case).
_DERIVED_TEXT_TEMPLATES = [
    "{% for m in messages %}{% set x = m.content ~ '' %}{{ x | trim }}|{{ x.startswith('<tool_response>') }}"
    "{% endfor %}",
    "{% macro show(c) %}{{ c }}{% endmacro %}{% for m in messages %}{{ show(m.content) | trim }}"
    "{% if '</think>' in show(m.content) %}R{% endif %}{% endfor %}",
    "{% for m in messages %}{% set block %}[{{ m.content }}]{% endset %}{{ block.strip('[] ') }}{% endfor %}",
    "{{ messages | map(attribute='content') | join('\\n') | trim }}",
    "{% for m in messages %}{{ m.content | wordcount }}{{ m.content is lower }}{{ m.content | indent(2) }}{% endfor %}",
    "{% for m in messages %}{{ m.content | replace('\\n', ' ') | trim }}{{ (m.content + '!') | length }}{% endfor %}",
]


@pytest.mark.parametrize("template", _DERIVED_TEXT_TEMPLATES)
def test_the_skeleton_traces_text_made_from_a_content(minimind_tokenizer, template: str) -> None:
    tokenizer = _with_template(minimind_tokenizer, template)
    for messages, generation_prompt in _tricky_conversations():
        rendered, expected = _both_renders(tokenizer, messages, generation_prompt)
        assert rendered == expected, messages
