"""On-disk (JSONL) and in-process caches for the built-in data sets.

A built-in data set is prepared once (parsing a corpus, reading a message catalogue, importing modules)
and written to ``<cache>/data/<name>-v<version>[-<source tag>].jsonl``, where ``<cache>`` is the
``LM_GYM_CACHE`` environment variable or ``~/.cache/lm_gym``. The version number in the file name
changes whenever the preparation changes, and the source tag names what the data was read from (a
package version, the Python version), so a stale file is never read. Files are written atomically
(a temporary file in the same folder, then :func:`os.replace`), so concurrent processes at worst
prepare the same data twice. Each line is one sample:
``{"split": ..., "prompt": ..., "references": [...], "meta": {...}}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lm_gym.data.base import SPLITS, Sample

#: The environment variable naming lm-gym's cache folder.
CACHE_ENV = "LM_GYM_CACHE"

#: Prepared splits: ``{split: [Sample, ...]}``.
SplitMap = dict[str, list[Sample]]

_MEMO: dict[str, SplitMap] = {}
_LOCK = threading.RLock()


def cache_root() -> Path:
    """lm-gym's cache folder (it may not exist yet): data sets, tokenizers and converted models.

    :return: ``$LM_GYM_CACHE`` (when set and not empty) or ``~/.cache/lm_gym``.
    """
    root = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "lm_gym")
    return Path(root).expanduser()


def cache_dir() -> Path:
    """The folder where prepared built-in data sets are cached (it may not exist yet).

    :return: ``$LM_GYM_CACHE/data`` or ``~/.cache/lm_gym/data``.
    """
    return cache_root() / "data"


def cache_path(name: str, version: int, tag: str = "") -> Path:
    """The cache file of one prepared data set.

    :param name: the registered data set name.
    :param version: the preparation's version number; bump it whenever the preparation changes.
    :param tag: what the data was read from (a package version, the Python version), if it matters.
    :return: the path of the JSONL file (it may not exist yet).
    """
    stem = f"{name}-v{version}" + (f"-{tag}" if tag else "")
    return cache_dir() / (re.sub(r"[^A-Za-z0-9._-]+", "_", stem) + ".jsonl")


def clear_memo() -> None:
    """Forget the data sets held in memory (the files on disk stay)."""
    with _LOCK:
        _MEMO.clear()


def cached_splits(
    name: str,
    version: int,
    build: Callable[[], Iterable[tuple[str, Sample]]],
    tag: str = "",
) -> SplitMap:
    """Return a built-in data set's splits, preparing and caching them on first use.

    Lookup order: this process's memory, then the JSONL file, then ``build()`` (whose result is
    written to the file). A file that cannot be read is prepared again; a cache folder that cannot be
    written only costs a warning (the data is still returned and kept in memory).

    :param name: the registered data set name.
    :param version: the preparation's version number (part of the file name).
    :param build: prepares the data: an iterable of ``(split, sample)`` pairs, in a deterministic
        order, each split one of :data:`~lm_gym.data.base.SPLITS`.
    :param tag: what the data was read from (part of the file name), see :func:`cache_path`.
    :return: ``{split: [Sample, ...]}`` with every split present (possibly empty). Callers must not
        modify the lists (copy them).
    """
    path = cache_path(name, version, tag)
    key = str(path)
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        splits = _read(path) if path.is_file() else None
        if splits is None:
            pairs = list(build())
            splits = _group(pairs)
            _write(path, pairs)
        _MEMO[key] = splits
        return splits


def _group(pairs: Iterable[tuple[str, Sample]]) -> SplitMap:
    splits: SplitMap = {s: [] for s in SPLITS}
    for split, sample in pairs:
        splits[split].append(sample)
    return splits


def _read(path: Path) -> SplitMap | None:
    try:
        pairs = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    sample = Sample(
                        prompt=row["prompt"],
                        references=tuple(row["references"]),
                        meta=dict(row["meta"]),
                    )
                    if row["split"] not in SPLITS:
                        raise ValueError(f"bad split {row['split']!r}")
                    pairs.append((row["split"], sample))
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(
            f"ignoring unreadable cache file {path} ({err}); preparing it again", stacklevel=3
        )
        return None
    return _group(pairs)


def _write(path: Path, pairs: list[tuple[str, Sample]]) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for split, s in pairs:
                row: dict[str, Any] = {
                    "split": split,
                    "prompt": s.prompt,
                    "references": list(s.references),
                }
                row["meta"] = dict(s.meta)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        warnings.warn(
            f"could not write the data cache {path} ({err}); keeping it in memory only",
            stacklevel=3,
        )
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
