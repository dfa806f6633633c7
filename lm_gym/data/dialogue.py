"""Dialogue data sets: recorded conversations for the multi-turn tasks.

A dialogue sample is a conversation: ``meta["conversation"]`` holds its lines, alternating between
the partner (first) and the answer the agent is compared with; ``prompt`` is the first line and
``references`` the first answer, so single-turn code reads it like any other sample.

=====================  ==========================================================================
name                   content
=====================  ==========================================================================
chatterbot-XX          offline: the ``chatterbot-corpus`` package's conversations (BSD-3), about
                       2,000 English ones (20 topics; mostly question/answer pairs, 80 with 3 or
                       more lines); XX in en, de, es, fr, it, nl, pt, ru, zh and more
daily_dialog           online (``datasets``): DailyDialog, about 13,000 daily-life conversations
                       (hub ``li2017dailydialog/daily_dialog``, column ``dialog``), or local data
                       with a ``dialog`` column of lists of lines
=====================  ==========================================================================

The built-in sets are prepared once, cached as JSONL and split 80/10/10 by a stable hash of the
first line (conversations that open alike stay in one split).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lm_gym.data.base import Sample
from lm_gym.data.builtin import _builtin_loader, _version, package_dir
from lm_gym.data.online import load_hf_split
from lm_gym.data.registry import register_dataset

CHATTERBOT_VERSION = 1

#: ``chatterbot-<code>`` -> the corpus folder of that language
CHATTERBOT_LANGUAGES = {
    "en": "english",
    "de": "german",
    "es": "spanish",
    "fr": "french",
    "it": "italian",
    "nl": "dutch",
    "pt": "portuguese",
    "ru": "russian",
    "zh": "chinese",
    "ja": "japanese",
    "ko": "korean",
    "tr": "turkish",
}


def _line(value: Any) -> str:
    return " ".join(str(value if value is not None else "").split())


def dialogue_sample(lines: list[str], meta: Mapping[str, Any] | None = None) -> Sample | None:
    """A dialogue sample from a conversation's lines (``None`` if it has no partner line with an
    answer).

    :param lines: the lines, the partner's first.
    :param meta: further meta data (the conversation is added as ``"conversation"``).
    """
    lines = [_line(x) for x in lines]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) < 2 or not all(lines):
        return None
    return Sample(lines[0], (lines[1],), {**dict(meta or {}), "conversation": lines})


def chatterbot_folder(language: str = "english") -> Path:
    """The folder of one language of the ``chatterbot-corpus`` package (without importing it).

    :param language: the folder name (``"english"``).
    :raises ImportError: the package is not installed.
    """
    folder = package_dir("chatterbot_corpus", "the chatterbot dialogue data") / "data" / language
    if not folder.is_dir():
        raise FileNotFoundError(f"chatterbot-corpus has no {language!r} folder ({folder}).")
    return folder


def _build_chatterbot(language: str) -> Iterator[Sample]:
    import yaml

    for path in sorted(chatterbot_folder(language).glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace")) or {}
        for i, conversation in enumerate(data.get("conversations") or []):
            if not isinstance(conversation, list):
                continue
            sample = dialogue_sample(conversation, {"topic": path.stem, "index": i})
            if sample is not None:
                yield sample


for _code, _language in CHATTERBOT_LANGUAGES.items():
    register_dataset(
        f"chatterbot-{_code}",
        _builtin_loader(
            f"chatterbot-{_code}",
            CHATTERBOT_VERSION,
            functools.partial(_build_chatterbot, _language),
            lambda: "chatterbot" + _version("chatterbot-corpus"),
        ),
        overwrite=True,
        description=(
            f"chatterbot-corpus {_language} conversations (BSD-3): first line -> first answer, "
            "meta conversation = every line (multi-turn dialogue, offline)"
        ),
    )


def load_daily_dialog(
    split: str = "train",
    *,
    path: str | os.PathLike[str] | None = None,
    max_samples: int | None = None,
    hub_id: str = "li2017dailydialog/daily_dialog",
    column: str = "dialog",
    load_kwargs: Mapping[str, Any] | None = None,
) -> list[Sample]:
    """DailyDialog conversations through ``datasets`` (hub, or local data with the same column).

    :param split: "train", "validation" or "test".
    :param path: local data instead of the hub (a ``save_to_disk`` folder or a data file).
    :param max_samples: stop after this many samples.
    :param hub_id: the hub repository.
    :param column: the column holding each conversation's list of lines.
    :param load_kwargs: extra keyword arguments for ``datasets.load_dataset``.
    :return: dialogue samples (see the module docstring).
    """

    def lines(row: Mapping[str, Any]) -> list[str]:
        value = row.get(column) or []
        if isinstance(value, str):  # some exports keep the "__eou__" separators
            value = value.split("__eou__")
        return [re.sub(r"\s+([,.!?;:'])", r"\1", _line(x)) for x in value]

    def convert(row: Mapping[str, Any], features: Any) -> Sample | None:
        return dialogue_sample(lines(row))

    return load_hf_split(
        hub_id,
        None,
        split,
        key=lambda row: (lines(row) or [""])[0],
        convert=convert,
        path=path,
        max_samples=max_samples,
        load_kwargs=load_kwargs,
    )


register_dataset(
    "daily_dialog",
    load_daily_dialog,
    overwrite=True,
    description="DailyDialog conversations (datasets; hub or local data with a 'dialog' column)",
)
