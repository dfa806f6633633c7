"""Reference-overlap metrics: sentence-level BLEU, chrF and TER (sacrebleu) and ROUGE (rouge-score).

All of them need at least one reference per text. The metric libraries are imported when a
scorer is built, not when this module is imported (rouge-score pulls in nltk, about 1.5 s).

Scales follow the libraries: BLEU and chrF in ``[0, 100]``, TER in ``[0, inf)`` (an edit rate
in percent, lower is better), ROUGE F-measures in ``[0, 1]``.
"""

from __future__ import annotations

import re
from typing import Any

from lm_gym.rewards.base import Scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class _SacreBLEUScorer(Scorer):
    """Shared machinery of the sacrebleu sentence-level scorers."""

    needs_references = True
    _metric_name: str = ""

    def __init__(self, **metric_kwargs: Any) -> None:
        from sacrebleu import metrics

        self.metric_kwargs = dict(metric_kwargs)
        self._metric = getattr(metrics, self._metric_name)(**self.metric_kwargs)

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> list[float]:
        assert references is not None  # guaranteed by Scorer.score (needs_references)
        return [
            float(self._metric.sentence_score(text, list(refs)).score)
            for text, refs in zip(texts, references)
        ]


class BLEUScorer(_SacreBLEUScorer):
    """Sentence-level BLEU, ``sacrebleu.metrics.BLEU(effective_order=True)`` (registered as
    ``"bleu"``), in ``[0, 100]``. An empty text scores 0.

    :param metric_kwargs: extra keyword arguments of ``sacrebleu.metrics.BLEU`` (``tokenize``,
        ``lowercase``, ``smooth_method``, ...); ``effective_order`` defaults to ``True``, as
        sentence-level BLEU needs.
    """

    name = "bleu"
    _metric_name = "BLEU"

    def __init__(self, **metric_kwargs: Any) -> None:
        metric_kwargs.setdefault("effective_order", True)
        super().__init__(**metric_kwargs)


class CHRFScorer(_SacreBLEUScorer):
    """Sentence-level chrF, ``sacrebleu.metrics.CHRF`` (registered as ``"chrf"``), in
    ``[0, 100]``. Pass ``word_order=2`` for chrF++.

    :param metric_kwargs: keyword arguments of ``sacrebleu.metrics.CHRF``.
    """

    name = "chrf"
    _metric_name = "CHRF"


class TERScorer(_SacreBLEUScorer):
    """Sentence-level translation edit rate, ``sacrebleu.metrics.TER`` (registered as ``"ter"``):
    edits per reference word, in percent. Lower is better (``higher_is_better = False``): use
    ``-score`` as a reward. Identical text scores 0.

    :param metric_kwargs: keyword arguments of ``sacrebleu.metrics.TER``.
    """

    name = "ter"
    higher_is_better = False
    _metric_name = "TER"


class RougeScorer(Scorer):
    """ROUGE F-measure from ``rouge-score`` with the Porter stemmer, maximised over references
    (registered as ``"rouge1"``, ``"rouge2"``, ``"rougeL"`` and ``"rougeLsum"``), in ``[0, 1]``.

    rouge-score's default tokenizer lower-cases and keeps only ``[a-z0-9]`` runs, so it is meant
    for English; text in other scripts scores 0. ``rougeLsum`` splits sentences on newlines.

    :param rouge_type: one of ``"rouge1"``, ``"rouge2"``, ``"rougeL"``, ``"rougeLsum"`` (any
        ``"rougeN"`` rouge-score accepts works too).
    :param use_stemmer: stem words with the Porter stemmer before matching.
    """

    needs_references = True

    def __init__(self, rouge_type: str = "rougeL", use_stemmer: bool = True) -> None:
        from rouge_score import rouge_scorer

        self.rouge_type = rouge_type
        self.use_stemmer = use_stemmer
        self.name = rouge_type
        if rouge_type not in ROUGE_TYPES and not re.fullmatch(r"rouge[1-9]", rouge_type):
            raise ValueError(
                f"unknown ROUGE type {rouge_type!r}; use one of {list(ROUGE_TYPES)} or 'rougeN'."
            )
        self._scorer = rouge_scorer.RougeScorer([rouge_type], use_stemmer=use_stemmer)

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> list[float]:
        assert references is not None  # guaranteed by Scorer.score (needs_references)
        rt = self.rouge_type
        return [
            max(float(self._scorer.score(ref, text)[rt].fmeasure) for ref in refs)
            for text, refs in zip(texts, references)
        ]


__all__ = ["ROUGE_TYPES", "BLEUScorer", "CHRFScorer", "RougeScorer", "TERScorer"]
