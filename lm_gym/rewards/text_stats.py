"""Surface statistics of the text itself: length and repetition penalties, distinct-n.

Words are the whitespace-separated tokens of the text (``str.split()``), case and punctuation kept,
so ``"good"`` and ``"good."`` are different words. None of these scorers needs a model or
references.
"""

from __future__ import annotations

from collections.abc import Iterable

from lm_gym.rewards.base import Scorer


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """Return the word n-grams of ``text`` in order (empty when it has fewer than ``n`` words).

    :param text: the text, split on whitespace.
    :param n: the n-gram order, at least 1.
    :return: the list of n-gram tuples, repeats included.
    """
    _check_n(n)
    words = text.split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(text: str, n: int = 1) -> float:
    """Distinct-n of one text: number of distinct word n-grams over the number of n-grams.

    :param text: the text.
    :param n: the n-gram order.
    :return: a value in ``[0, 1]``; ``0.0`` when the text has fewer than ``n`` words.
    """
    grams = word_ngrams(text, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def corpus_distinct_n(texts: Iterable[str], n: int = 1) -> float:
    """Distinct-n of a whole set of texts (Li et al., 2016): distinct n-grams across all texts
    over the total number of n-grams in all texts.

    A diversity measure of a policy's samples: a policy that always writes the same sentence has
    a low corpus distinct-n even when each sentence alone has no repeats.

    :param texts: the texts; n-grams never span two texts.
    :param n: the n-gram order.
    :return: a value in ``[0, 1]``; ``0.0`` when there are no n-grams at all.
    """
    if isinstance(texts, str):
        raise TypeError("corpus_distinct_n takes a collection of texts, not a single string.")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = word_ngrams(text, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


class DistinctNScorer(Scorer):
    """Per-text distinct-n (registered as ``"distinct-1"`` and ``"distinct-2"``).

    :param n: the n-gram order.
    """

    def __init__(self, n: int = 1) -> None:
        _check_n(n)
        self.n = n
        self.name = f"distinct-{n}"

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> list[float]:
        return [distinct_n(t, self.n) for t in texts]


class RepetitionPenaltyScorer(Scorer):
    """Minus the fraction of repeated word n-grams (registered as ``"repetition-penalty"``).

    An n-gram counts as repeated when it already occurred earlier in the same text, so the score
    is ``-(total - distinct) / total``: ``0.0`` for no repetition (and for texts shorter than
    ``n`` words), approaching ``-1.0`` for a text that loops on one n-gram.

    :param n: the n-gram order.
    """

    name = "repetition-penalty"

    def __init__(self, n: int = 2) -> None:
        _check_n(n)
        self.n = n

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> list[float]:
        out = []
        for text in texts:
            grams = word_ngrams(text, self.n)
            out.append(-(len(grams) - len(set(grams))) / len(grams) if grams else 0.0)
        return out


class LengthPenaltyScorer(Scorer):
    """Relative distance of the word count to a target (registered as ``"length-penalty"``).

    The score is ``-abs(n_words - target_words) / target_words``: ``0.0`` at the target, ``-1.0``
    for an empty text, and unbounded below for texts longer than twice the target.

    :param target_words: the desired number of words, at least 1.
    """

    name = "length-penalty"

    def __init__(self, target_words: int) -> None:
        if isinstance(target_words, bool) or not isinstance(target_words, int) or target_words < 1:
            raise ValueError(f"target_words must be a positive integer, got {target_words!r}.")
        self.target_words = target_words

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> list[float]:
        t = self.target_words
        return [-abs(len(text.split()) - t) / t for text in texts]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n-gram order n must be a positive integer, got {n!r}.")


__all__ = [
    "DistinctNScorer",
    "LengthPenaltyScorer",
    "RepetitionPenaltyScorer",
    "corpus_distinct_n",
    "distinct_n",
    "word_ngrams",
]
