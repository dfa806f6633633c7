"""The scorer interface: a batched, deterministic score of generated text.

Every reward in lm-gym is a :class:`Scorer`. A scorer takes a batch of generated texts, optionally
the prompts they answer and, per text, a list of reference texts, and returns one Python float per
text. :meth:`Scorer.score` validates the inputs and the outputs once for every scorer; subclasses
only implement :meth:`Scorer._score`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

#: A user reward function: ``f(texts, prompts, references) -> list[float]``.
ScoreFn = Callable[
    [Sequence[str], "Sequence[str] | None", "Sequence[Sequence[str]] | None"], Sequence[float]
]


class Scorer(ABC):
    """Base class of every text scorer.

    Subclasses set the class attributes and implement :meth:`_score`; callers use :meth:`score`
    (or call the scorer itself), which validates the batch before and the scores after.

    :cvar name: the registry name of the scorer (``"bleu"``, ``"sentiment"``, ...).
    :cvar higher_is_better: ``False`` for error-like metrics such as TER; an RL reward should then
        use the negated score.
    :cvar needs_references: ``True`` when every text must come with at least one reference.
    :cvar shareable: ``True`` when one instance may serve every env of a process (no state that
        changes while scoring; set on the model-based scorers, whose model is costly to hold
        once per env): see :func:`lm_gym.rewards.shared_scorer`.
    """

    name: str = "scorer"
    higher_is_better: bool = True
    needs_references: bool = False
    shareable: bool = False

    def score(
        self,
        texts: Sequence[str],
        prompts: Sequence[str] | None = None,
        references: Sequence[Sequence[str]] | None = None,
    ) -> list[float]:
        """Score a batch of texts.

        :param texts: the generated texts, one score each.
        :param prompts: the prompt of each text, or ``None``.
        :param references: the references of each text (a sequence of strings per text; a single
            string is taken as a one-reference list), or ``None``.
        :return: one finite Python float per text, in the order of ``texts``.
        :raises TypeError: if ``texts``, ``prompts`` or ``references`` are not sequences of strings.
        :raises ValueError: if the lengths differ, if references are needed but missing or empty,
            or if the scorer produced the wrong number of scores or a non-finite score.
        """
        texts_list = _as_str_list(texts, "texts")
        prompts_list = None if prompts is None else _as_str_list(prompts, "prompts")
        refs_list = None if references is None else _as_references(references)
        n = len(texts_list)
        if prompts_list is not None and len(prompts_list) != n:
            raise ValueError(
                f"{self.name}: got {n} texts but {len(prompts_list)} prompts; "
                "pass one prompt per text (or prompts=None)."
            )
        if refs_list is not None and len(refs_list) != n:
            raise ValueError(
                f"{self.name}: got {n} texts but {len(refs_list)} reference lists; "
                "pass one list of references per text (or references=None)."
            )
        if self.needs_references:
            if refs_list is None:
                raise ValueError(
                    f"{self.name} needs references: pass references=[[ref, ...], ...], "
                    "one list per text."
                )
            empty = [i for i, refs in enumerate(refs_list) if not refs]
            if empty:
                raise ValueError(
                    f"{self.name} needs at least one reference per text; the reference lists at "
                    f"positions {empty[:10]} are empty."
                )
        if n == 0:
            return []
        scores = self._score(texts_list, prompts_list, refs_list)
        return _check_scores(scores, n, self.name)

    __call__ = score

    @abstractmethod
    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> Sequence[float]:
        """Score a validated, non-empty batch.

        :param texts: the texts, at least one.
        :param prompts: one prompt per text, or ``None``.
        :param references: one tuple of references per text, or ``None``; never empty tuples when
            :attr:`needs_references` is set.
        :return: one number per text.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class CallableScorer(Scorer):
    """Wrap a plain reward function as a :class:`Scorer`.

    The function is called as ``fn(texts, prompts, references)`` (positionally, with the validated
    lists) and must return one finite number per text; anything else raises a clear error.

    :param fn: the reward function.
    :param name: the scorer name; defaults to the function's ``__name__``.
    :param higher_is_better: whether a larger value is a better text.
    :param needs_references: whether the function requires references for every text.
    """

    def __init__(
        self,
        fn: ScoreFn,
        name: str | None = None,
        higher_is_better: bool = True,
        needs_references: bool = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"CallableScorer needs a callable, got {type(fn).__name__}.")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.higher_is_better = bool(higher_is_better)
        self.needs_references = bool(needs_references)

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> Sequence[float]:
        return self.fn(texts, prompts, references)

    def __repr__(self) -> str:
        return f"CallableScorer({self.fn!r}, name={self.name!r})"


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Yield consecutive slices of ``items`` of at most ``size`` elements.

    :param items: the sequence to cut.
    :param size: the slice length, at least 1.
    :return: an iterator over the slices.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}.")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _as_str_list(values: Sequence[str], what: str) -> list[str]:
    """Check that ``values`` is a sequence of strings and return it as a list."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of strings, not a single string; wrap it: [s].")
    try:
        out = list(values)
    except TypeError:
        raise TypeError(
            f"{what} must be a sequence of strings, got {type(values).__name__}."
        ) from None
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(v).__name__}.")
    return out


def _as_references(references: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Normalise references to one tuple of strings per text (a bare string is one reference)."""
    if isinstance(references, (str, bytes)):
        raise TypeError(
            "references must hold one sequence of reference strings per text, not a single "
            "string; e.g. references=[['ref a', 'ref b'], ['ref c']]."
        )
    out: list[tuple[str, ...]] = []
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            out.append((refs,))
            continue
        refs_t = tuple(_as_str_list(refs, f"references[{i}]"))
        out.append(refs_t)
    return out


def _check_scores(scores: Any, n: int, name: str) -> list[float]:
    """Check that ``scores`` holds ``n`` finite numbers and return them as Python floats."""
    try:
        values = list(scores)
    except TypeError:
        raise TypeError(
            f"scorer {name!r} must return a sequence of {n} numbers, got {type(scores).__name__}."
        ) from None
    if len(values) != n:
        raise ValueError(f"scorer {name!r} returned {len(values)} scores for {n} texts.")
    out = []
    for i, v in enumerate(values):
        # numpy / torch scalars and bools (1.0 / 0.0) convert through float(); strings do not count
        try:
            if isinstance(v, (str, bytes)):
                raise TypeError
            f = float(v)
        except (TypeError, ValueError):
            raise TypeError(
                f"scorer {name!r} returned a non-number at position {i}: {v!r}."
            ) from None
        if not math.isfinite(f):
            raise ValueError(f"scorer {name!r} returned a non-finite score at position {i}: {f}.")
        out.append(f)
    return out
