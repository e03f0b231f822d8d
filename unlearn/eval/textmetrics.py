"""Scores of generated text against references, and a detector of degenerate output.

The one implementation of ROUGE-L and BLEU in the project:
- ROUGE-L (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"): the longest common
  subsequence of words, from Google's rouge-score (`rouge_scorer.RougeScorer(["rougeL"])`), the package
  MUSE, TOFU and open-unlearning call. Stemming is each caller's convention (`stemmer`): MUSE's
  KnowMem/VerbMem unstemmed, TOFU's and open-unlearning's recall Porter-stemmed.
- BLEU (Papineni et al. 2002): sacrebleu's sentence BLEU (Post 2018) with exponential smoothing.
- degeneration_reason: our own rules (no reference), for answers that say nothing ("!!!!").
"""

from __future__ import annotations

import re
from collections import Counter


def rouge_l(predictions: list[str], references: list[str], kind: str = "fmeasure",
            stemmer: bool = False) -> list[float]:
    """Per-pair ROUGE-L (F1 by default; `kind` = precision | recall | fmeasure), in [0, 1], from
    Google's rouge-score. `stemmer`: Porter-stem words first, as TOFU's and open-unlearning's answer
    recall do (rouge_scorer.RougeScorer(..., use_stemmer=True))."""
    return [getattr(s, kind) for s in rouge_l_scores(predictions, references, stemmer)]


def rouge_l_scores(predictions: list[str], references: list[str], stemmer: bool = False) -> list:
    """Per-pair ROUGE-L as rouge-score's Score (precision, recall, fmeasure): every kind from one scoring."""
    from rouge_score import rouge_scorer  # rouge-score: only when text is scored

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)
    return [scorer.score(ref, pred)["rougeL"] for pred, ref in zip(predictions, references)]


def bleu(predictions: list[str], references: list[str]) -> list[float]:
    """Per-pair sentence BLEU (sacrebleu, exponential smoothing), rescaled from 0-100 to [0, 1]."""
    from sacrebleu.metrics import BLEU  # sacrebleu: only when text is scored

    metric = BLEU(effective_order=True)
    return [min(1.0, metric.sentence_score(pred, [ref]).score / 100.0) for pred, ref in zip(predictions, references)]


_RUN_OF_SYMBOLS = re.compile(r"([^\w\s])\1{3,}")  # "!!!!", "????", "...." : 4+ of one symbol
_WORD = re.compile(r"\w+|[^\w\s]")


def degeneration_reason(text: str, min_tokens: int = 8, max_repeat_share: float = 0.5,
                        max_same_in_a_row: int = 4) -> str:
    """Why `text` is degenerate ('' when it is not): empty, a run of one symbol, or repetition.

    Repetition: a word/symbol repeated `max_same_in_a_row` times in a row, or (for answers of at
    least `min_tokens` words) one word/symbol making up more than `max_repeat_share` of the answer.
    """
    stripped = text.strip()
    if not stripped:
        return "empty"
    if _RUN_OF_SYMBOLS.search(stripped):
        return "symbol_run"
    words = [w.lower() for w in _WORD.findall(stripped)]
    if not any(w[0].isalnum() for w in words):
        return "no_words"
    streak = 1
    for prev, cur in zip(words, words[1:]):
        streak = streak + 1 if cur == prev else 1
        if streak >= max_same_in_a_row:
            return "repeated_token"
    if len(words) >= min_tokens and Counter(words).most_common(1)[0][1] > max_repeat_share * len(words):
        return "repeated_token"
    return ""
