"""Deterministic train/validation/test assignment by a stable hash.

Python's built-in :func:`hash` is salted per process for strings, so it cannot decide a split. These
helpers use SHA-256 instead: the same key lands in the same split on every machine, in every process
and with every Python version, and identical keys (for instance two rows with the same prompt) can
never end up in two different splits.
"""

from __future__ import annotations

import difflib
import hashlib

from lm_gym.data.base import SPLITS

#: Fractions (train, validation, test) used whenever a data set has no splits of its own.
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def stable_fraction(key: str) -> float:
    """Map a string to a number in [0, 1), identically on every machine and process.

    :param key: any string (usually a prompt).
    :return: the first 8 bytes of the key's SHA-256 digest, read as a fraction of 2**64.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(key: str) -> str:
    """The split a key belongs to: 80 % "train", 10 % "validation", 10 % "test".

    :param key: the string the assignment is based on (a prompt, a source sentence).
    :return: one of :data:`~lm_gym.data.base.SPLITS`.
    """
    u = stable_fraction(key)
    train, validation, _ = SPLIT_FRACTIONS
    if u < train:
        return "train"
    if u < train + validation:
        return "validation"
    return "test"


def check_split(split: object) -> str:
    """Validate a split name.

    :param split: the requested split.
    :return: the split, unchanged, when it is one of :data:`~lm_gym.data.base.SPLITS`.
    :raises ValueError: naming the valid splits (and the closest one, if any) otherwise.
    """
    if isinstance(split, str) and split in SPLITS:
        return split
    hint = ""
    if isinstance(split, str):
        close = difflib.get_close_matches(split, SPLITS, n=1, cutoff=0.5)
        if not close and split.lower().startswith(("dev", "val")):
            close = ["validation"]
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    raise ValueError(f"unknown split {split!r}{hint}; expected one of: {', '.join(SPLITS)}")
