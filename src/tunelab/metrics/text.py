"""Text-generation metrics, each from its reference library: per sample as the seed projects report them, and
corpus-level as sacrebleu reports them.

Per sample (means over samples, in [0, 1]):

- ``bleu-1`` .. ``bleu-4``: nltk ``sentence_bleu`` with uniform weights over 1..n-grams and smoothing
  ``method3`` (LLaMA-Factory's and the ChatGLM P-Tuning scripts' choice). Chinese is scored on characters, as
  they do; other text on the words jieba cuts (words and punctuation, case kept).
- ``rouge-1`` .. ``rouge-4``, ``rouge-l``: F1 from ``rouge-chinese`` on jieba words, exactly as LLaMA-Factory and
  the ChatGLM scripts compute ``rouge-1/2/l``; 0 when the prediction or reference has no word.
- ``meteor``: nltk ``meteor_score`` on the same words, with WordNet synonyms (metrics/wordnet.py).
- ``ter``: sacrebleu's sentence TER as an edit rate (edits / reference words; it can exceed 1); Chinese with
  ``normalized`` and ``asian_support``, so each character is a word.
- ``chrf``: sacrebleu's sentence chrF / 100.
- ``exact_match``: 1 when the prediction equals a reference after trimming and collapsing whitespace.

Several references: BLEU, METEOR, TER and chrF use them all as their libraries do; ROUGE takes the best one.

Corpus level (``corpus``, sacrebleu's usual 0-100 scales): BLEU (tokenizer ``zh`` for Chinese, else ``13a``),
chrF and TER (``normalized`` with ``asian_support`` for Chinese, so characters count as words).

LLaMA-Factory prints its numbers x 100 (``predict_bleu-4: 12.3``); tunelab's per-sample 0.123 is the same number.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

BLEU = tuple(f"bleu-{n}" for n in range(1, 5))
ROUGE = (*(f"rouge-{n}" for n in range(1, 5)), "rouge-l")
TEXT_METRICS = (*BLEU, *ROUGE, "meteor", "ter", "chrf", "exact_match")
LANGUAGES = ("auto", "en", "zh")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SPACE = re.compile(r"\s+")


def detect_language(texts: Sequence[str]) -> str:
    """zh when at least a fifth of the non-space characters are Chinese, else en."""
    joined = "".join(_SPACE.sub("", text) for text in texts)
    return "zh" if joined and len(_CJK.findall(joined)) / len(joined) >= 0.2 else "en"


@functools.cache
def _jieba() -> Any:
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its "Building prefix dict" lines
    return jieba


def words(text: str) -> list[str]:
    """jieba's words without the whitespace between them (for English: words and punctuation)."""
    return [word for word in _jieba().cut(text) if word.strip()]


def _bleu_tokens(text: str, language: str) -> list[str]:
    return list(text) if language == "zh" else words(text)


def sentence_bleu(prediction: str, references: list[str], n: int, language: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import sentence_bleu as nltk_bleu

    hypothesis = _bleu_tokens(prediction, language)
    if not hypothesis:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns about n-gram orders with no overlap; smoothing handles them
        return float(nltk_bleu([_bleu_tokens(ref, language) for ref in references], hypothesis,
                               weights=(1 / n,) * n, smoothing_function=SmoothingFunction().method3))


def sentence_rouge(prediction: str, references: list[str]) -> dict[str, float]:
    """ROUGE F1 per name in ROUGE, the best over the references."""
    from rouge_chinese import Rouge

    hypothesis = " ".join(words(prediction))
    best = dict.fromkeys(ROUGE, 0.0)
    for reference in references:
        reference_words = " ".join(words(reference))
        if not hypothesis or not reference_words:
            continue
        scores = Rouge(metrics=list(ROUGE)).get_scores(hypothesis, reference_words)[0]
        best = {name: max(best[name], scores[name]["f"]) for name in ROUGE}
    return best


def sentence_meteor(prediction: str, references: list[str], wordnet: Any) -> float:
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([words(ref) for ref in references], words(prediction), wordnet=wordnet))


def normalized(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def exact_match(prediction: str, references: list[str]) -> float:
    return float(any(normalized(prediction) == normalized(ref) for ref in references))


def sample_scores(prediction: str, references: list[str], metrics: Sequence[str], language: str,
                  wordnet: Any = None) -> dict[str, float | None]:
    """The per-sample value of each text metric in ``metrics`` (METEOR None without WordNet)."""
    import sacrebleu

    wanted = set(metrics)
    values: dict[str, float | None] = {}
    for n, name in enumerate(BLEU, start=1):
        if name in wanted:
            values[name] = sentence_bleu(prediction, references, n, language)
    if wanted & set(ROUGE):
        values.update({name: value for name, value in sentence_rouge(prediction, references).items()
                       if name in wanted})
    if "meteor" in wanted:
        values["meteor"] = sentence_meteor(prediction, references, wordnet) if wordnet is not None else None
    if "ter" in wanted:
        values["ter"] = sacrebleu.sentence_ter(prediction, references, **_ter_options(language)).score / 100
    if "chrf" in wanted:
        values["chrf"] = sacrebleu.sentence_chrf(prediction, references).score / 100
    if "exact_match" in wanted:
        values["exact_match"] = exact_match(prediction, references)
    return values


def _ter_options(language: str) -> dict[str, bool]:
    """sacrebleu splits Chinese characters for TER only with its normalisation on (asian_support alone does not)."""
    return {"asian_support": True, "normalized": True} if language == "zh" else {}


def corpus_scores(predictions: list[str], references: list[list[str]], metrics: Sequence[str],
                  language: str) -> dict[str, Any]:
    """sacrebleu's corpus BLEU, chrF and TER (0-100) with their signatures, for the ones ``metrics`` asks for."""
    import sacrebleu

    width = max((len(refs) for refs in references), default=1)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    wanted = set(metrics)
    scores: dict[str, Any] = {}
    signatures: dict[str, str] = {}
    if wanted & set(BLEU):
        bleu = sacrebleu.BLEU(tokenize="zh" if language == "zh" else "13a")
        scores["bleu"] = bleu.corpus_score(predictions, streams).score
        signatures["bleu"] = str(bleu.get_signature())
    if "chrf" in wanted:
        chrf = sacrebleu.CHRF()
        scores["chrf"] = chrf.corpus_score(predictions, streams).score
        signatures["chrf"] = str(chrf.get_signature())
    if "ter" in wanted:
        ter = sacrebleu.TER(**_ter_options(language))
        scores["ter"] = ter.corpus_score(predictions, streams).score
        signatures["ter"] = str(ter.get_signature())
    if signatures:
        scores["signatures"] = signatures
    return scores
