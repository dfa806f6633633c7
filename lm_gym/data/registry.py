"""The data set registry and :func:`load_dataset`, the one entry point tasks use."""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from lm_gym.data.base import Loader, Sample
from lm_gym.data.files import FILE_SUFFIXES, read_rows, samples_by_split
from lm_gym.data.splits import check_split

_REGISTRY: dict[str, tuple[Loader, str]] = {}


def register_dataset(
    name: str, loader: Loader, *, overwrite: bool = False, description: str | None = None
) -> None:
    """Register a data set under a name, for :func:`load_dataset` and task ``dataset=`` arguments.

    :param name: the name (for instance ``"my-reviews"``); lower case with dashes by convention.
    :param loader: ``loader(split, **kwargs) -> list[Sample]``; ``split`` is always one of
        :data:`~lm_gym.data.base.SPLITS` (checked before the call).
    :param overwrite: replace an existing registration of the same name instead of failing.
    :param description: a one-line description for :func:`dataset_info`; defaults to the first line
        of the loader's docstring.
    :raises ValueError: when the name is taken and ``overwrite`` is false, or the name is empty.
    :raises TypeError: when the loader is not callable.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a data set name must be a non-empty string, got {name!r}")
    if not callable(loader):
        raise TypeError(f"the loader of {name!r} must be callable, got {type(loader).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"data set {name!r} is already registered (pass overwrite=True to replace it)"
        )
    if description is None:
        doc = (getattr(loader, "__doc__", None) or "").strip()
        description = doc.splitlines()[0].strip() if doc else ""
    _REGISTRY[name] = (loader, " ".join(description.split()))


def list_datasets() -> list[str]:
    """The registered data set names.

    :return: the names, sorted.
    """
    return sorted(_REGISTRY)


def dataset_info(name: str) -> str:
    """A one-line description of a registered data set (for README and CLI tables).

    :param name: a registered name.
    :return: the description given at registration (possibly empty).
    :raises ValueError: for an unknown name, with the known names and a close match.
    """
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[Loader, str]:
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown data set {name!r}{hint}. Known data sets: {', '.join(list_datasets())}. "
        f"A path to a {' or '.join(FILE_SUFFIXES)} file or a list of dicts also works."
    ) from None


def _looks_like_path(source: str) -> bool:
    return (
        source.lower().endswith(FILE_SUFFIXES)
        or os.sep in source
        or (os.altsep is not None and os.altsep in source)
        or os.path.exists(source)
    )


def load_dataset(
    source: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    split: str = "train",
    **kwargs: Any,
) -> list[Sample]:
    """Load one split of a data set.

    :param source: a registered name (see :func:`list_datasets`), a path to a ``.jsonl`` / ``.json``
        file, or a list of dicts. Rows of files and lists have a ``prompt`` (required, non-empty
        string), optional ``references`` (a list of strings, or a string), an optional ``split``,
        and any other fields, which go to :attr:`Sample.meta` (see :mod:`lm_gym.data.files`). Rows
        without a ``split`` are split 80/10/10 by a stable hash of the prompt.
    :param split: ``"train"``, ``"validation"`` or ``"test"``.
    :param kwargs: passed to the registered loader (for instance ``max_samples``, or ``path`` for the
        online data sets). Files and lists accept ``max_samples`` only.
    :return: the samples of the split, in a deterministic order (a new list each call).
    :raises ValueError: for an unknown split or data set name, bad JSON, malformed rows, no rows.
    :raises FileNotFoundError: when a file path does not exist.
    :raises TypeError: for an option the data set does not take, or a source of another type.
    """
    check_split(split)
    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and source not in _REGISTRY and _looks_like_path(source)
    ):
        name = repr(os.fspath(source))
        splits = samples_by_split(read_rows(source), name)
        return _user_split(splits, split, name, **kwargs)
    if isinstance(source, str):
        loader, _ = _lookup(source)
        _check_arguments(source, loader, split, kwargs)
        return list(loader(split, **kwargs))
    if isinstance(source, (bytes, bytearray, Mapping)) or not isinstance(source, Sequence):
        raise TypeError(
            "source must be a data set name, a file path or a list of dicts, "
            f"not {type(source).__name__}"
        )
    rows = [(f"rows[{i}]", row) for i, row in enumerate(source)]
    return _user_split(samples_by_split(rows, "the given list"), split, "the given list", **kwargs)


def _check_arguments(name: str, loader: Loader, split: str, kwargs: Mapping[str, Any]) -> None:
    """Fail early, naming the data set, when a loader does not take the given keyword arguments."""
    try:
        signature = inspect.signature(loader)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    try:
        signature.bind(split, **kwargs)
    except TypeError as err:
        takes = [p for p in list(signature.parameters)[1:] if p not in ("args", "kwargs")]
        raise TypeError(
            f"data set {name!r}: {err} (it takes: {', '.join(takes) or 'no options'})"
        ) from None


def _user_split(
    splits: dict[str, list[Sample]], split: str, source: str, **kwargs: Any
) -> list[Sample]:
    unknown = sorted(set(kwargs) - {"max_samples"})
    if unknown:
        raise TypeError(
            f"unexpected option(s) {', '.join(unknown)} for {source}: files and lists of rows take "
            "max_samples only"
        )
    max_samples = kwargs.get("max_samples")
    samples = take(splits[split], max_samples)
    if not samples:
        total = sum(len(v) for v in splits.values())
        warnings.warn(
            f"split {split!r} of {source} is empty ({total} rows in all; rows without a 'split' "
            "field are split 80/10/10 by a hash of the prompt)",
            stacklevel=3,
        )
    return samples


def take(samples: Sequence[Sample], max_samples: int | None) -> list[Sample]:
    """The first ``max_samples`` samples (all of them when ``None``), as a new list.

    :param samples: the samples of a split.
    :param max_samples: how many to keep, a positive integer, or ``None`` for all.
    :return: a new list.
    :raises ValueError: when ``max_samples`` is not a positive integer or ``None``.
    """
    if max_samples is None:
        return list(samples)
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    return list(samples[:max_samples])


__all__ = ["dataset_info", "list_datasets", "load_dataset", "register_dataset", "take"]
