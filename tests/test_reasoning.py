"""A <think> block apart from the answer (the server's reasoning_content), streamed and whole, with the real
stories260K tokenizer decoding token by token as the engine does."""

from __future__ import annotations

from typing import Any

import pytest

from tunelab.inference.engines.decoding import Row
from tunelab.inference.engines.types import Completion, Request, Sampling, Sink
from tunelab.inference.reasoning import opens_in_prompt, split_reasoning


class Record(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.answer: list[str] = []
        self.thoughts: list[str] = []

    def text(self, piece: str) -> None:
        self.answer.append(piece)

    def reasoning(self, piece: str) -> None:
        self.thoughts.append(piece)


def _decode(tokenizer: Any, text: str, mode: str | None) -> tuple[Completion, Record]:
    """Feed ``text``'s tokens to a row one at a time, as a batch step would."""
    sink = Record()
    request = Request(messages=[{"role": "user", "content": "hi"}], sampling=Sampling(max_tokens=500),
                      parse_reasoning=mode is not None)
    row = Row(request, [1, 2, 3], frozenset(), tokenizer, sink, reasoning=mode)
    for token in tokenizer(text, add_special_tokens=False).input_ids:
        row.add(token)
    return row.finish("stop"), sink


@pytest.mark.parametrize("mode,text", [
    ("answer", "<think>\nThe cat is small, so the story is short.\n</think>\n\nOnce upon a time, a cat sat."),
    ("prompt", "The cat is small, so the story is short.\n</think>\n\nOnce upon a time, a cat sat."),
])
def test_a_think_block_is_the_reasoning(stories_tokenizer: Any, mode: str, text: str) -> None:
    completion, sink = _decode(stories_tokenizer, text, mode)
    assert completion.reasoning == "The cat is small, so the story is short."
    assert completion.text == "Once upon a time, a cat sat."
    assert "".join(sink.thoughts) == completion.reasoning and "".join(sink.answer) == completion.text
    assert not any("<" in piece for piece in sink.thoughts + sink.answer)  # no marker leaks, even in halves


def test_without_a_block_or_without_asking_the_text_is_as_written(stories_tokenizer: Any) -> None:
    plain, sink = _decode(stories_tokenizer, "Once upon a time, a cat sat.", "answer")
    assert (plain.reasoning, plain.text, sink.thoughts) == ("", "Once upon a time, a cat sat.", [])
    raw, _ = _decode(stories_tokenizer, "<think>\nShort.\n</think>\n\nOnce.", None)
    assert raw.reasoning is None and raw.text.startswith("<think>") and raw.text.endswith("Once.")


def test_split_rules() -> None:
    assert split_reasoning("<thi", inside=False, final=False) == ("", "", False)  # may open a block: wait
    assert split_reasoning("Still thinking </thi", inside=True, final=False) == ("Still thinking", "", True)
    assert split_reasoning("Never closed", inside=True, final=True) == ("Never closed", "", True)
    assert opens_in_prompt("<|im_start|>assistant\n<think>\n") and not opens_in_prompt("<think>\n\n</think>\n\n")
