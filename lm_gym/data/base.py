"""The sample type shared by every data set, and the data set registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One task input.

    :param prompt: the raw input text (a review opening, a source sentence, a document). Tasks wrap it
        in their own prompt template.
    :param references: reference outputs (translations, summaries), possibly empty.
    :param meta: anything else the data set knows (labels, ids); JSON-serialisable values.
    """

    prompt: str
    references: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


#: A loader takes a split name and keyword options and returns the samples of that split.
Loader = Callable[..., list[Sample]]

SPLITS = ("train", "validation", "test")
