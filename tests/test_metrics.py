"""Evaluation metrics: exact values by hand and from the reference libraries called directly, in English and
Chinese (real AdvertiseGen ad copy), several references, empty and identical texts; task accuracy on real
GSM8K, MATH500, AIME and GPQA answers with hand-written predictions."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from tunelab.errors import ConfigError
from tunelab.metrics import METRICS, parse_metrics
from tunelab.metrics.answers import check_choice, check_gsm8k, check_math, detect_task
from tunelab.metrics.scoring import score_predictions
from tunelab.metrics.text import TEXT_METRICS, detect_language
from tunelab.metrics.wordnet import find_wordnet, load_wordnet

DATA = Path(__file__).resolve().parent / "fixtures" / "data"
needs_wordnet = pytest.mark.skipif(find_wordnet() is None, reason="WordNet is not installed (make install does it)")


def _rows(path: Path, count: int) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(count), handle, strict=False)]


def _one(prediction: str, references: list[str], metrics=TEXT_METRICS, **kw) -> dict:
    return score_predictions([prediction], [references], list(metrics), **kw).samples[0]


def test_hand_computed_english_sentence() -> None:
    values = _one("the cat sat on the mat", ["the cat is on the mat"], [m for m in TEXT_METRICS if m != "meteor"])
    assert values["bleu-1"] == pytest.approx(5 / 6)  # 5 of 6 words match (clipped), same length: no penalty
    assert values["bleu-2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))  # 3 of 5 bigrams match
    assert values["rouge-1"] == pytest.approx(4 / 5, abs=1e-7)  # rouge-chinese counts distinct n-grams
    assert values["rouge-2"] == pytest.approx(3 / 5, abs=1e-7)
    assert values["rouge-l"] == pytest.approx(5 / 6, abs=1e-7)  # LCS "the cat on the mat"
    assert values["ter"] == pytest.approx(1 / 6)  # one substitution in six reference words
    assert values["exact_match"] == 0.0


def test_identical_and_empty_predictions() -> None:
    same = _one("The quick brown fox jumps over the lazy dog.", ["The quick brown fox jumps over the lazy dog."],
                [m for m in TEXT_METRICS if m != "meteor"])
    assert {k: round(v, 6) for k, v in same.items()} == {**{f"bleu-{n}": 1.0 for n in range(1, 5)},
                                                         **{f"rouge-{n}": 1.0 for n in range(1, 5)},
                                                         "rouge-l": 1.0, "ter": 0.0, "chrf": 1.0, "exact_match": 1.0}
    empty = _one("", ["a b c"], [m for m in TEXT_METRICS if m != "meteor"])
    assert empty == {**{f"bleu-{n}": 0.0 for n in range(1, 5)}, **{f"rouge-{n}": 0.0 for n in range(1, 5)},
                     "rouge-l": 0.0, "ter": 1.0, "chrf": 0.0, "exact_match": 0.0}
    assert _one("  a   b ", ["a b"], ["exact_match"])["exact_match"] == 1.0  # whitespace does not count


def test_several_references() -> None:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    values = _one("the cat sat on the mat", ["a dog ran", "the cat sat on the mat"], ["bleu-4", "rouge-l",
                                                                                        "exact_match"])
    assert values == {"bleu-4": pytest.approx(1.0), "rouge-l": pytest.approx(1.0), "exact_match": 1.0}
    partial = _one("the cat sat on a mat", ["the cat is on the mat", "a cat sat on a rug"], ["bleu-2"])
    refs = [r.split() for r in ("the cat is on the mat", "a cat sat on a rug")]
    expected = sentence_bleu(refs, "the cat sat on a mat".split(), weights=(0.5, 0.5),
                             smoothing_function=SmoothingFunction().method3)
    assert partial["bleu-2"] == pytest.approx(expected)


def _llamafactory_scores(prediction: str, reference: str) -> dict[str, float]:
    """LLaMA-Factory's ComputeSimilarity for one sample (x 100, rounded), written from its published formula."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    hypothesis, ref_words = list(jieba.cut(prediction)), list(jieba.cut(reference))
    scores = Rouge().get_scores(" ".join(hypothesis), " ".join(ref_words))[0]
    result = {name: round(scores[name]["f"] * 100, 4) for name in ("rouge-1", "rouge-2", "rouge-l")}
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)
    return {**result, "bleu-4": round(bleu * 100, 4)}


def test_chinese_matches_llamafactory_and_chatglm_numbers() -> None:
    rows = _rows(DATA / "advertisegen" / "dev.json", 6)
    predictions = [rows[i + 1]["summary"][:50] + rows[i]["summary"][20:60] for i in range(5)]
    references = [row["summary"] for row in rows[:5]]
    assert detect_language(references) == "zh"
    scores = score_predictions(predictions, [[r] for r in references], ["bleu-4", "rouge-1", "rouge-2", "rouge-l"])
    assert scores.settings["language"] == "zh"
    for values, prediction, reference in zip(scores.samples, predictions, references, strict=True):
        expected = _llamafactory_scores(prediction, reference)
        assert {name: round(values[name] * 100, 4) for name in expected} == expected
    assert 0 < scores.summary["bleu-4"] < 1 and 0 < scores.summary["rouge-l"] < 1
    # Chinese TER counts characters: not a whole-sentence substitution
    ter = _one(references[0][:-4] + "漂亮衣服", [references[0]], ["ter"])["ter"]
    assert ter == pytest.approx(4 / len(references[0]), abs=0.02)


def test_corpus_scores_are_sacrebleus() -> None:
    import sacrebleu

    predictions = ["the cat sat on the mat", "a quick brown fox", "hello there"]
    references = [["the cat is on the mat", "a cat sat on the mat"], ["the quick brown fox"], ["hello"]]
    summary = score_predictions(predictions, references, ["bleu-4", "chrf", "ter"]).summary
    streams = [[refs[0] for refs in references], [refs[1] if len(refs) > 1 else None for refs in references]]
    assert summary["corpus"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, streams).score)
    assert summary["corpus"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, streams).score)
    assert summary["corpus"]["ter"] == pytest.approx(sacrebleu.corpus_ter(predictions, streams).score)
    assert "tok:13a" in summary["corpus"]["signatures"]["bleu"]
    assert summary["num_samples"] == 3


@needs_wordnet
def test_meteor_uses_wordnet_synonyms() -> None:
    from nltk.translate.meteor_score import meteor_score

    same = _one("the cat sat on the mat", ["the cat sat on the mat"], ["meteor"])["meteor"]
    assert same == pytest.approx(1 - 0.5 * (1 / 6) ** 3)  # all matched in one chunk: the fragmentation penalty only
    synonym = _one("the hound ran", ["the dog ran"], ["meteor"])["meteor"]
    other = _one("the cat ran", ["the dog ran"], ["meteor"])["meteor"]
    assert synonym > 0.9 > 0.5 > other  # hound is a dog in WordNet; cat is not
    assert synonym == pytest.approx(meteor_score([["the", "dog", "ran"]], ["the", "hound", "ran"],
                                                 wordnet=load_wordnet()))


def test_meteor_without_wordnet_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab.metrics.scoring as scoring

    monkeypatch.setattr(scoring, "load_wordnet", lambda: None)
    scores = score_predictions(["a b"], [["a b"]], ["meteor", "bleu-1"])
    assert scores.summary["meteor"] is None and scores.samples[0]["meteor"] is None
    assert "WordNet" in scores.summary["notes"][0] and "wordnet-base" in scores.summary["notes"][0]
    assert scores.summary["bleu-1"] == 1.0


def test_metric_names() -> None:
    assert parse_metrics("bleu,rouge-l") == ["bleu-1", "bleu-2", "bleu-3", "bleu-4", "rouge-l"]
    assert parse_metrics(["rougeL", "bleu4", "em"]) == ["bleu-4", "rouge-l", "exact_match"]
    assert parse_metrics("all") == list(METRICS)
    with pytest.raises(ConfigError, match="did you mean 'meteor'"):
        parse_metrics("meteo")


def test_gsm8k_accuracy_on_real_answers() -> None:
    golds = [row["answer"] for row in _rows(DATA / "gsm8k" / "test.jsonl", 3)]  # 18, 3, 70000
    assert detect_task(golds) == "gsm8k"
    cases = [
        ("She sells 9 eggs at $2, so she makes 9 * 2 = $18 per day. The answer is 18.", golds[0], True, "answer is"),
        ("16 - 3 - 4 = 9 eggs; 9 * 2 = 18\n#### 18", golds[0], True, "after ####"),
        ("<reasoning>2 + 1</reasoning>\n<answer>\n3\n</answer>", golds[1], True, "<answer> tag"),
        ("The profit is $70,000.", golds[2], True, "last number"),
        ("The answer is 18, since 16 - 3 - 4 = 9 and 9 * 2 = 18.", golds[0], True, "answer is"),
        ("So the total is \\boxed{70000}", golds[2], True, "\\boxed{}"),
        ("The answer is 17.", golds[0], False, "answer is"),
        ("I do not know.", golds[1], False, "no answer found"),
    ]
    for completion, gold, correct, rule in cases:
        check = check_gsm8k(completion, gold)
        assert (check.correct, check.rule) == (correct, rule), completion
    profit = check_gsm8k(cases[3][0], golds[2])
    assert (profit.extracted, profit.gold) == ("70,000", "70000")


def test_math_accuracy_on_real_limo_answers() -> None:
    math500 = {row["answer"] for row in _rows(DATA / "limo" / "math" / "test.jsonl", 4)}
    assert {"\\frac{14}{3}", "9", "p - q"} <= math500
    assert check_math("so $x = \\boxed{\\dfrac{14}{3}}$", "\\frac{14}{3}").correct
    assert check_math("The final answer is $4.6666666666666667$... no: \\boxed{\\frac{28}{6}}", "\\frac{14}{3}").correct
    assert check_math("\\boxed{\\frac{1}{2}}", "0.5").correct  # equivalent forms
    assert check_math("\\boxed{0.5}", "\\frac{1}{2}").correct
    assert not check_math("\\boxed{\\frac{14}{5}}", "\\frac{14}{3}").correct
    assert check_math("we get \\boxed{p-q}", "p - q").correct
    polar = next(row["answer"] for row in _rows(DATA / "limo" / "math" / "test.jsonl", 1))
    assert check_math("The point is \\boxed{\\left(3, \\frac{\\pi}{2}\\right)}", polar).correct
    aime = _rows(DATA / "limo" / "aime" / "test.jsonl", 1)[0]["answer"]  # "204"
    assert check_math(f"Therefore the answer is $\\boxed{{{aime}}}$.", aime).correct
    missing = check_math("I could not solve it.", aime)
    assert (missing.correct, missing.extracted, missing.rule) == (False, None, "no answer found")


def test_choice_accuracy_on_real_gpqa_answers() -> None:
    rows = _rows(DATA / "limo" / "gpqa" / "test.jsonl", 3)
    assert detect_task([row["answer"] for row in rows]) == "choice"
    assert "\\boxed{}" in rows[0]["question"]  # GPQA asks for the letter in \boxed{}
    assert check_choice("The lifetimes give ... so \\boxed{A}", rows[0]["answer"]).rule == "\\boxed{}"
    assert check_choice("Therefore, the answer is (A).", "A").correct
    assert not check_choice("The answer is C", "A").correct
    assert check_choice("Answer: B", "B").correct and check_choice("The answer is **C**.", "C").correct
    subtle = check_choice("The answer is a bit subtle: energies must differ by more than the width, so (C)", "C")
    assert (subtle.correct, subtle.rule) == (True, "last lone letter")  # "a bit" names no choice
    assert check_choice("I would say D", "D").correct
    assert check_choice("no letter here", "A").rule == "no answer found"


def test_accuracy_summary_records_the_rule_per_sample() -> None:
    golds = [row["answer"] for row in _rows(DATA / "gsm8k" / "test.jsonl", 2)]
    scores = score_predictions(["The answer is 18.", "no idea"], [[g] for g in golds], ["accuracy"])
    assert scores.summary["accuracy"] == 0.5 and scores.settings["task"] == "gsm8k"
    assert scores.samples[0]["answer"] == {"correct": True, "extracted": "18", "rule": "answer is", "gold": "18"}
    with pytest.raises(ConfigError, match="needs a task"):
        score_predictions(["x"], [["a story"]], ["accuracy"])
