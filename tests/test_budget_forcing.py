"""Budget forcing on the engine layer, token by token, on a tiny model with the real minimind tokenizer (its
template writes <think> sections): thinking never passes its budget and closes exactly there, "Wait" replaces an
early close exactly num_wait times, the answer stops at its own budget, and no budget leaves the output alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.inference.engines.budget import ThinkingBudget
from tunelab.inference.engines.types import RequestError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
QUESTION = "What is 12 + 30?"


@pytest.fixture(scope="module")
def tokenizer():
    from tunelab.models.loading import load_tokenizer

    return load_tokenizer(str(FIXTURES / "tokenizers" / "minimind"), None)


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id)
    return AutoModelForCausalLM.from_config(config).eval()


def _generate(model, tokenizer, prefer: list[int] | None = None, **settings) -> tuple[list[int], object]:
    """The tokens the row took and its completion; ``prefer``: tokens the model favours above all (in order of
    preference), to make it close its thinking early or never."""
    from tunelab.inference.engines.hf import HFEngine
    from tunelab.inference.predictor import Predictor

    engine = HFEngine.from_loaded(model, tokenizer, "tiny")
    predictor = Predictor(engine=engine, max_new_tokens=40)
    taken = []
    original = engine._rows

    def rows(served, jobs):
        made = original(served, jobs)
        taken.extend(made)
        return made

    engine._rows = rows
    bias = torch.zeros(len(tokenizer))
    for rank, token in enumerate(prefer or []):
        bias[token] = 100.0 - rank
    hook = model.lm_head.register_forward_hook(lambda module, args, output: output + bias)
    try:
        completion = predictor.complete([[{"role": "user", "content": QUESTION}]], **settings)[0]
    finally:
        hook.remove()
    return taken[0].tokens, completion


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _count(sequence: list[int], part: list[int]) -> int:
    return sum(sequence[i:i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


def test_thinking_closes_exactly_at_its_budget(model, tokenizer):
    letter = _ids(tokenizer, "a")[0]  # a model that would think forever
    tokens, completion = _generate(model, tokenizer, prefer=[letter], max_thinking_tokens=7, max_answer_tokens=5,
                                   answer_cue="Final Answer:")
    close = _ids(tokenizer, "\n</think>\n\n") + _ids(tokenizer, "Final Answer:")
    assert tokens[:7] == [letter] * 7  # the prompt opened thinking (enable_thinking on for a budget)
    assert tokens[7:7 + len(close)] == close
    assert tokens[7 + len(close):] == [letter] * 5 and completion.finish_reason == "length"


def test_an_early_close_becomes_wait_exactly_num_wait_times(model, tokenizer):
    end = _ids(tokenizer, "</think>")
    assert len(end) == 1
    letter = _ids(tokenizer, "a")[0]
    # the model closes thinking at once, every time it can
    tokens, _ = _generate(model, tokenizer, prefer=[end[0], letter], num_wait=3, max_answer_tokens=4)
    wait = _ids(tokenizer, "\nWait")
    assert _count(tokens, wait) == 3
    first_end = tokens.index(end[0])
    assert tokens[:first_end] == wait * 3  # each close it tried became "Wait", then the fourth went through
    assert len(tokens) - first_end - 1 == 4  # the answer's budget


def test_min_thinking_tokens_keep_it_thinking(model, tokenizer):
    end = _ids(tokenizer, "</think>")[0]
    letter = _ids(tokenizer, "a")[0]
    tokens, _ = _generate(model, tokenizer, prefer=[end, letter], min_thinking_tokens=6, max_answer_tokens=2)
    wait = _ids(tokenizer, "\nWait")
    first_end = tokens.index(end)
    assert first_end >= 6 and tokens[:first_end] == wait * (first_end // len(wait))


def test_a_stop_token_while_thinking_closes_thinking_first(model, tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    letter = _ids(tokenizer, "a")[0]
    tokens, completion = _generate(model, tokenizer, prefer=[eos, letter], max_thinking_tokens=50,
                                   max_answer_tokens=3)
    close = _ids(tokenizer, "\n</think>\n\n")
    assert tokens[:len(close)] == close and tokens[len(close)] == eos and completion.finish_reason == "stop"


def test_no_budget_leaves_the_output_alone(model, tokenizer):
    plain, plain_completion = _generate(model, tokenizer)
    inactive, inactive_completion = _generate(model, tokenizer, max_thinking_tokens=None)
    assert plain == inactive and plain_completion.text == inactive_completion.text


def test_bad_budgets_are_refused_with_the_setting_named():
    for settings, param in (({"max_thinking_tokens": -1}, "max_thinking_tokens"),
                            ({"min_thinking_tokens": 9, "max_thinking_tokens": 4}, "min_thinking_tokens"),
                            ({"wait_text": " "}, "wait_text"), ({"max_answer_tokens": 0}, "max_answer_tokens")):
        with pytest.raises(RequestError) as raised:
            ThinkingBudget(**settings).check()
        assert raised.value.param == param


def test_predict_writes_the_thinking_apart_and_scores_the_answer(model, tokenizer, tmp_path):
    import json

    from tunelab.inference.engines.hf import HFEngine
    from tunelab.inference.predict import write_predictions
    from tunelab.inference.predictor import Predictor

    letter = _ids(tokenizer, "a")[0]
    bias = torch.zeros(len(tokenizer))
    bias[letter] = 100.0
    predictor = Predictor(engine=HFEngine.from_loaded(model, tokenizer, "tiny"), max_new_tokens=20,
                          budget=ThinkingBudget(max_thinking_tokens=5, max_answer_tokens=3))
    samples = [([{"role": "user", "content": QUESTION}], "42", None), ([{"role": "user", "content": "Hi"}], "Hello",
                                                                         None)]
    hook = model.lm_head.register_forward_hook(lambda module, args, output: output + bias)
    try:
        path = write_predictions(predictor, samples, tmp_path / "predictions.jsonl")
    finally:
        hook.remove()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        assert row["thinking"] == "a" * 5 and row["prediction"] == "a" * 3, row
        assert "<think>" not in row["prediction"] and "</think>" not in row["prediction"]
    from tunelab.evaluation.run import read_predictions

    predictions, references, _ = read_predictions(str(path))
    assert predictions == ["aaa", "aaa"] and references == [["42"], ["Hello"]]


def test_the_serve_examples_set_a_default_budget_and_a_bad_one_is_refused_before_loading(tmp_path):
    from tunelab.commands.serve import check_serve
    from tunelab.errors import TunelabError
    from tunelab.serve.config import load_serve_config

    examples = Path(__file__).resolve().parents[1] / "examples" / "serve"
    for name, thinking in (("budget_forcing_cpu.yaml", 32), ("qwen3_8b_budget_forcing.yaml", 4000)):
        budget = load_serve_config(str(examples / name), {}).budget()
        assert budget.active and budget.max_thinking_tokens == thinking and budget.num_wait == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_thinking_tokens: 8\nmin_thinking_tokens: 20\n")
    with pytest.raises(TunelabError, match="min_thinking_tokens 20 is above max_thinking_tokens 8"):
        check_serve(load_serve_config(str(bad), {}))


def test_terminal_chat_shows_the_thinking_dimmed():
    import io

    from tunelab.inference.chat import DIM, RESET, run_chat

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    class Thinker:
        def stream(self, query, history, system):
            yield from ["<thi", "nk>\nadding", " up\n</th", "ink>\n\n42"]

    screen = Terminal()
    messages = run_chat(Thinker(), query="12 + 30?", output=screen)
    shown = screen.getvalue()
    assert shown.replace(DIM, "").replace(RESET, "") == "<think>\nadding up\n</think>\n\n42\n"
    assert shown.index(DIM) < shown.index("adding") < shown.index(RESET) < shown.index("42")
    assert messages[-1]["content"] == "<think>\nadding up\n</think>\n\n42"
    piped = io.StringIO()
    run_chat(Thinker(), query="12 + 30?", output=piped)
    assert DIM not in piped.getvalue()


def test_the_vllm_path_runs_s1s_passes_with_the_same_counts(tokenizer):
    """s1's algorithm in whole passes (as on vLLM), driven by a scripted model: it thinks 5 tokens and then
    tries to close; the answer is 6 tokens. Waits replace exactly num_wait closes, the thinking pass never asks
    for more than the budget left, a cut writes the answer cue, the answer stops at its own budget."""
    from tunelab.inference.engines.two_phase import PassResult, force_budgets

    think, answer = _ids(tokenizer, "x")[0], _ids(tokenizer, "a")[0]
    asked = []

    def model(passes):
        asked.extend(passes)
        results = []
        for one in passes:
            wants = 5 if "</think>" in one.stop else 6
            made = min(wants, one.max_tokens)
            results.append(PassResult([think if "</think>" in one.stop else answer] * made, made == wants))
        return results

    opened = ThinkingBudget(max_thinking_tokens=100, num_wait=2, max_answer_tokens=4)
    cut = ThinkingBudget(max_thinking_tokens=12, num_wait=3, answer_cue="Final Answer:")
    (natural, natural_stopped), (forced, forced_stopped) = force_budgets(
        model, [[1, 2], [1, 2]], [opened, cut], [200, 200], [(), ()], [True, False], tokenizer)
    wait, close = _ids(tokenizer, "\nWait"), _ids(tokenizer, "\n</think>\n\n")

    assert natural == [think] * 5 + wait + [think] * 5 + wait + [think] * 5 + close + [answer] * 4
    assert not natural_stopped  # the answer was cut at max_answer_tokens
    assert forced[:len(_ids(tokenizer, "<think>\n"))] == _ids(tokenizer, "<think>\n")  # the prompt did not open it
    thought = [t for t in forced if t == think]
    assert len(thought) + len(wait) * _count(forced, wait) == 12  # the budget, waits counted as thinking
    assert _count(forced, close + _ids(tokenizer, "Final Answer:")) == 1 and forced[-6:] == [answer] * 6
    assert forced_stopped
    thinking_asks = [one.max_tokens for one in asked if "</think>" in one.stop and one.row == 1]
    assert thinking_asks == [12, 12 - 5 - len(wait)]  # never more than the budget left
