"""User data: rows from a ``.jsonl`` / ``.json`` file or from a list of dicts.

Row format (one JSON object per line in ``.jsonl``; a JSON array of objects in ``.json``)::

    {"prompt": "The movie was", "references": ["The movie was great."], "label": "pos"}

- ``prompt`` (required): a non-empty string.
- ``references`` (optional): a list of strings, or one string; missing or ``null`` means none.
- ``split`` (optional): ``"train"``, ``"validation"`` or ``"test"``. Rows without it are assigned
  deterministically, 80/10/10, by a stable hash of the prompt (see :mod:`lm_gym.data.splits`).
- ``meta`` (optional): an object whose fields are merged into :attr:`Sample.meta`.
- any other field goes to :attr:`Sample.meta` as it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lm_gym.data.base import SPLITS, Sample
from lm_gym.data.splits import split_of

#: File name suffixes :func:`read_rows` understands.
FILE_SUFFIXES = (".jsonl", ".json")


def read_rows(path: str | os.PathLike[str]) -> list[tuple[str, Any]]:
    """Read the rows of a ``.jsonl`` or ``.json`` file.

    :param path: the file.
    :return: ``(where, row)`` pairs, ``where`` naming the row in error messages ("data.jsonl line 3").
    :raises FileNotFoundError: when the file does not exist.
    :raises ValueError: on an unknown suffix or bad JSON (naming the line).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {str(p)!r}")
    suffix = p.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(
            f"unsupported data file type {suffix or '(none)'!r} for {str(p)!r}: use "
            + " or ".join(FILE_SUFFIXES)
        )
    text = p.read_text(encoding="utf-8-sig")
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{p.name} line {lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"bad JSON in {str(p)!r} at line {lineno}, column {err.colno}: {err.msg}"
                ) from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"bad JSON in {str(p)!r} at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(data, list):
        raise ValueError(
            f"{str(p)!r} must hold a JSON array of row objects, not a {type(data).__name__}"
        )
    return [(f"{p.name} item {i}", row) for i, row in enumerate(data)]


def row_to_sample(row: Any, where: str) -> tuple[str | None, Sample]:
    """Turn one row into a sample.

    :param row: a mapping with a ``prompt`` field (see the module docstring), or a :class:`Sample`.
    :param where: names the row in error messages.
    :return: the row's own split (``None`` when it has none) and the sample.
    :raises ValueError: when the row is not an object, its prompt is missing or empty, or its
        references or split are malformed.
    """
    if isinstance(row, Sample):
        return None, row
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: a row must be an object/dict, not {type(row).__name__}")
    if "prompt" not in row:
        raise ValueError(f"{where}: missing 'prompt' field (fields: {sorted(map(str, row))})")
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: 'prompt' must be a string, not {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{where}: empty 'prompt' field")
    refs = row.get("references")
    if refs is None:
        refs = ()
    elif isinstance(refs, str):
        refs = (refs,)
    elif isinstance(refs, (list, tuple)) and all(isinstance(r, str) for r in refs):
        refs = tuple(refs)
    else:
        raise ValueError(
            f"{where}: 'references' must be a string or a list of strings, got {refs!r:.80}"
        )
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise ValueError(f"{where}: 'split' is {split!r}; expected one of: {', '.join(SPLITS)}")
    meta: dict[str, Any] = {}
    extra = row.get("meta")
    if isinstance(extra, Mapping):
        meta.update(extra)
    for key, value in row.items():
        if key not in ("prompt", "references", "split") and not (
            key == "meta" and isinstance(value, Mapping)
        ):
            meta[key] = value
    return split, Sample(prompt=prompt, references=refs, meta=meta)


def samples_by_split(rows: Iterable[tuple[str, Any]], source: str) -> dict[str, list[Sample]]:
    """Validate rows and group them by split (their own, or the stable-hash one).

    :param rows: ``(where, row)`` pairs, as from :func:`read_rows`.
    :param source: names the data in the "no rows" error.
    :return: ``{split: [Sample, ...]}`` for every split (possibly empty), rows kept in input order.
    :raises ValueError: when there are no rows or a row is malformed.
    """
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    n = 0
    for where, row in rows:
        own, sample = row_to_sample(row, where)
        splits[own or split_of(sample.prompt)].append(sample)
        n += 1
    if n == 0:
        raise ValueError(f"no rows in {source}")
    return splits
