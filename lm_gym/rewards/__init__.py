"""Text scorers: the rewards of lm-gym tasks, and metrics for benchmarks.

A scorer maps a batch of generated texts (with optional prompts and per-text references) to one
float per text; see :class:`~lm_gym.rewards.base.Scorer`. Scorers are made by name so that
environment kwargs stay JSON-serialisable::

    from lm_gym.rewards import make_scorer

    bleu = make_scorer("bleu")
    bleu(["the cat sat on the mat"], references=[["the cat sat on the mat"]])  # [100.0]

Built-in names (see :func:`list_scorers`):

- ``"sentiment"`` / ``"sentiment-vader"``: VADER polarity in ``[0, 1]`` (offline).
- ``"sentiment-classifier"``: probability of a label under any Hugging Face classifier.
- ``"bleu"``, ``"chrf"`` (``[0, 100]``), ``"ter"`` (lower is better): sentence-level sacrebleu.
- ``"rouge1"``, ``"rouge2"``, ``"rougeL"``, ``"rougeLsum"``: rouge-score F-measure in ``[0, 1]``.
- ``"similarity"``: embedding cosine similarity to the best reference (or the prompt).
- ``"length-penalty"``, ``"repetition-penalty"``: ``<= 0``, 0 is best.
- ``"distinct-1"``, ``"distinct-2"``: per-text distinct-n in ``[0, 1]``.

Third-party scorers join with :func:`register_scorer`; any callable
``f(texts, prompts, references) -> list[float]`` can also be passed to :func:`make_scorer`, or named
as a string (which keeps env kwargs serialisable): ``"package.module:function"`` or
``"path/to/file.py:function"`` (see :func:`import_reward`).
Importing this package imports neither torch nor transformers; the model-based scorers load them
when built.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard, cast

from lm_gym.rewards.base import CallableScorer, ScoreFn, Scorer
from lm_gym.rewards.overlap import ROUGE_TYPES, BLEUScorer, CHRFScorer, RougeScorer, TERScorer
from lm_gym.rewards.sentiment import ClassifierScorer, VaderSentimentScorer
from lm_gym.rewards.similarity import SimilarityScorer
from lm_gym.rewards.text_stats import (
    DistinctNScorer,
    LengthPenaltyScorer,
    RepetitionPenaltyScorer,
    corpus_distinct_n,
    distinct_n,
)

_REGISTRY: dict[str, Callable[..., Scorer]] = {}
#: shareable scorers built by :func:`shared_scorer`, by name and keyword arguments
_SHARED: dict[str, Scorer] = {}


def register_scorer(name: str, factory: Callable[..., Scorer], *, overwrite: bool = False) -> None:
    """Register a scorer factory under a name, for :func:`make_scorer`.

    :param name: the registry name (a non-empty string).
    :param factory: a callable returning a :class:`Scorer` when called with the keyword
        arguments given to :func:`make_scorer` (a ``Scorer`` subclass, a ``functools.partial``,
        a function).
    :param overwrite: replace an existing registration of ``name`` instead of raising.
    :raises ValueError: if ``name`` is already registered and ``overwrite`` is false.
    :raises TypeError: if ``name`` is not a non-empty string or ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"scorer name must be a non-empty string, got {name!r}.")
    if not callable(factory):
        raise TypeError(f"scorer factory for {name!r} must be callable, got {factory!r}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"a scorer named {name!r} is already registered; pass overwrite=True to replace it."
        )
    _REGISTRY[name] = factory
    for key in [k for k in _SHARED if json.loads(k)[0] == name]:  # built by a replaced factory
        del _SHARED[key]


def list_scorers() -> list[str]:
    """Names of all registered scorers, sorted.

    :return: the names :func:`make_scorer` accepts.
    """
    return sorted(_REGISTRY)


def names_import(spec: Any) -> bool:
    """Whether ``spec`` has the form of a callable to import: ``"module:function"`` or
    ``"file.py:function"``."""
    if not isinstance(spec, str):
        return False
    module, sep, attr = spec.rpartition(":")
    return bool(sep and module and attr.isidentifier())


def is_import_spec(spec: Any) -> TypeGuard[str]:
    """Whether ``spec`` names a reward function to import: ``"module:function"`` or
    ``"file.py:function"`` (not a registered scorer name)."""
    return names_import(spec) and spec not in _REGISTRY


def import_reward(spec: str) -> Callable[..., Any]:
    """The reward function (or :class:`Scorer` class) that ``spec`` names (see
    :func:`import_callable`)."""
    return import_callable(spec, "reward")


@functools.lru_cache(maxsize=64)
def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """The callable that ``spec`` names: a reward function, a multi-turn env's scripted
    partner, ...

    ``"package.module:function"`` imports the module (from the current folder too, as
    ``python -m`` would); ``"path/to/file.py:function"`` runs the file as a module.

    :param spec: ``"module:function"`` or ``"file.py:function"``.
    :param what: what it is for, in error messages (``"reward"``, ``"partner"``).
    :return: the callable.
    :raises ValueError: the module or file is not found, or has no such name (with the closest).
    :raises TypeError: the name is not callable.
    """
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise ValueError(f"{what} {spec!r}: the file {module_name!r} does not exist.")
        unique = f"lm_gym_reward_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(unique, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"{what} {spec!r}: {module_name!r} cannot be imported.")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[unique] = module
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name) or "" in sys.path:
                raise ValueError(f"{what} {spec!r}: {exc}") from exc
            sys.path.insert(0, os.getcwd())  # the current folder, as ``python -m`` has it
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as again:
                raise ValueError(
                    f"{what} {spec!r}: {again} (looked in the current folder too; set PYTHONPATH "
                    "or install the package)"
                ) from again
            finally:
                sys.path.remove(os.getcwd())
    fn = getattr(module, attr, None)
    if fn is None:
        names = [n for n in vars(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{what} {spec!r}: {module_name!r} has no {attr!r}.{hint}")
    if not callable(fn):
        raise TypeError(f"{what} {spec!r}: {attr!r} is a {type(fn).__name__}, not a function.")
    return fn


def make_scorer(spec: str | Callable[..., Any] | Scorer, **kwargs: Any) -> Scorer:
    """Build a scorer from a name, a scorer, a scorer class or a reward function.

    :param spec: a registered name (built with ``factory(**kwargs)``); ``"module:function"`` or
        ``"file.py:function"`` (a function imported by :func:`import_reward`); a :class:`Scorer`
        instance (returned as is); a ``Scorer`` subclass (instantiated with ``kwargs``); or any
        callable ``f(texts, prompts, references) -> list[float]``, wrapped in a
        :class:`CallableScorer` (``kwargs``: ``name``, ``higher_is_better``,
        ``needs_references``).
    :param kwargs: keyword arguments of the factory.
    :return: the scorer.
    :raises ValueError: for an unknown name (the message lists the known names and suggests the
        closest), or kwargs given with a ready scorer instance.
    :raises TypeError: if ``spec`` is none of the above or the factory does not return a Scorer.
    """
    if isinstance(spec, Scorer):
        if kwargs:
            raise ValueError(
                f"make_scorer got a ready scorer {spec!r} and keyword arguments "
                f"{sorted(kwargs)}; build the scorer with them instead."
            )
        return spec
    if is_import_spec(spec):
        fn = import_reward(spec)
        if isinstance(fn, type) and issubclass(fn, Scorer):
            return fn(**kwargs)
        return CallableScorer(cast(ScoreFn, fn), **kwargs)
    if isinstance(spec, str):
        factory = _REGISTRY.get(spec)
        if factory is None:
            close = difflib.get_close_matches(spec, list(_REGISTRY), n=3, cutoff=0.5)
            if not close:
                lowered = {name.lower(): name for name in _REGISTRY}
                close = [lowered[m] for m in difflib.get_close_matches(spec.lower(), lowered)]
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"unknown scorer {spec!r}.{hint} Known scorers: {', '.join(list_scorers())}."
            )
        scorer = factory(**kwargs)
        if not isinstance(scorer, Scorer):
            raise TypeError(
                f"the factory registered as {spec!r} returned {type(scorer).__name__}, "
                "not a Scorer."
            )
        return scorer
    if isinstance(spec, type) and issubclass(spec, Scorer):
        return spec(**kwargs)
    if callable(spec):
        return CallableScorer(cast(ScoreFn, spec), **kwargs)
    raise TypeError(
        "make_scorer takes a scorer name, a Scorer, a Scorer class or a callable "
        f"f(texts, prompts, references); got {type(spec).__name__}."
    )


def shared_scorer(spec: str | Callable[..., Any] | Scorer, **kwargs: Any) -> Scorer:
    """:func:`make_scorer`, but a scorer built by name whose class is :attr:`Scorer.shareable`
    (the model-based ones: a classifier, sentence embeddings) is built once per process and
    reused for the same name and keyword arguments: 16 envs of a ``DummyVecEnv`` with a classifier
    reward hold one classifier, not 16. Environments build their scorers with it.

    :param spec: as for :func:`make_scorer`.
    :param kwargs: as for :func:`make_scorer`.
    :return: the scorer (shared, or new for specs that are not names or not shareable).
    """
    if not isinstance(spec, str):
        return make_scorer(spec, **kwargs)
    key = json.dumps([spec, kwargs], sort_keys=True, default=repr)
    scorer = _SHARED.get(key)
    if scorer is None:
        scorer = make_scorer(spec, **kwargs)
        if scorer.shareable:
            _SHARED[key] = scorer
    return scorer


def _register_builtins() -> None:
    builtins: dict[str, Callable[..., Scorer]] = {
        "sentiment": VaderSentimentScorer,
        "sentiment-vader": VaderSentimentScorer,
        "sentiment-classifier": ClassifierScorer,
        "bleu": BLEUScorer,
        "chrf": CHRFScorer,
        "ter": TERScorer,
        "similarity": SimilarityScorer,
        "length-penalty": LengthPenaltyScorer,
        "repetition-penalty": RepetitionPenaltyScorer,
        "distinct-1": functools.partial(DistinctNScorer, n=1),
        "distinct-2": functools.partial(DistinctNScorer, n=2),
    }
    for rouge_type in ROUGE_TYPES:
        builtins[rouge_type] = functools.partial(RougeScorer, rouge_type)
    for name, factory in builtins.items():
        register_scorer(name, factory, overwrite=True)


_register_builtins()

__all__ = [
    "BLEUScorer",
    "CHRFScorer",
    "CallableScorer",
    "ClassifierScorer",
    "DistinctNScorer",
    "LengthPenaltyScorer",
    "RepetitionPenaltyScorer",
    "RougeScorer",
    "ScoreFn",
    "Scorer",
    "SimilarityScorer",
    "TERScorer",
    "VaderSentimentScorer",
    "corpus_distinct_n",
    "distinct_n",
    "import_callable",
    "import_reward",
    "list_scorers",
    "make_scorer",
    "register_scorer",
    "shared_scorer",
]
