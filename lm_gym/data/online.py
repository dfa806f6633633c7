"""Online data sets through Hugging Face ``datasets`` (``pip install lm-gym[online]``).

Each loader reads from the Hugging Face hub (``path=None``, needs a network) or from local data:
a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a ``.json``,
``.jsonl``, ``.csv`` or ``.parquet`` file with the same columns as the hub data set.

Splits:

- hub data and a saved ``DatasetDict`` use their own splits; when "validation" is missing (imdb), it
  is carved deterministically out of "train": the rows whose stable hash of the source text falls in
  the top 10 % (see :mod:`lm_gym.data.splits`), and "train" is the rest;
- a single saved ``Dataset`` or a data file is split 80/10/10 by a stable hash of the source text.

``datasets`` is imported only when a loader runs, so ``import lm_gym.data`` stays light.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lm_gym.data.base import Sample
from lm_gym.data.registry import register_dataset, take
from lm_gym.data.splits import split_of, stable_fraction

#: Local data file suffixes -> the ``datasets`` builder that reads them.
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

#: Fraction of "train" carved out as "validation" when a data set has no validation split.
VALIDATION_FRACTION = 0.1

#: A row converter: ``(row, features) -> Sample`` or ``None`` to skip the row.
RowConverter = Callable[[Mapping[str, Any], Any], "Sample | None"]


def import_datasets() -> Any:
    """Import Hugging Face ``datasets``; with ``LM_GYM_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) in
    its offline mode, so that a hub id not in the local cache fails at once instead of retrying.

    :return: the ``datasets`` module.
    :raises ImportError: with the install command when it is missing.
    """
    if _lm_gym_offline():  # before the import: ``datasets`` reads its offline flag once
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "the online data sets need Hugging Face `datasets`: pip install lm-gym[online] "
            "(or pip install datasets)"
        ) from err
    if _lm_gym_offline():  # imported earlier, without the flag: no hub requests, no retries
        datasets.config.HF_HUB_OFFLINE = True
        datasets.config.HF_DATASETS_OFFLINE = True
        try:
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = True
        except ImportError:  # pragma: no cover (a dependency of datasets)
            pass
    return datasets


def _lm_gym_offline() -> bool:
    from lm_gym.models import is_offline

    return is_offline()


def _open_local(
    datasets: Any, path: str | os.PathLike[str], load_kwargs: Mapping[str, Any] | None = None
) -> Any:
    """A ``Dataset`` or ``DatasetDict`` from a saved folder or a data file."""
    p = Path(path).expanduser()
    if p.is_dir():
        try:
            return datasets.load_from_disk(str(p))
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{str(p)!r} is not a folder written by Dataset.save_to_disk or "
                f"DatasetDict.save_to_disk ({err})"
            ) from None
    if not p.is_file():
        raise FileNotFoundError(f"local data set not found: {str(p)!r}")
    builder = DATA_FILE_BUILDERS.get(p.suffix.lower())
    if builder is None:
        raise ValueError(
            f"unsupported data file type {p.suffix or '(none)'!r} for {str(p)!r}: use a folder saved "
            f"with save_to_disk or one of {', '.join(DATA_FILE_BUILDERS)}"
        )
    kwargs = dict(load_kwargs or {})
    return datasets.load_dataset(builder, data_files=str(p), split="train", **kwargs)


def _rows(
    data: Any,
    split: str,
    key: Callable[[Mapping[str, Any]], str],
    source: str,
    available: Iterable[str] | None = None,
) -> tuple[Iterable[Mapping[str, Any]], Any, Callable[[Mapping[str, Any]], bool]]:
    """Pick the rows of ``split``: (rows to scan, their features, a row filter).

    ``data`` is one ``Dataset`` (split by hash) or a mapping of split name -> ``Dataset``;
    ``available`` names the splits the data set has (default: the mapping's keys).
    """
    if not hasattr(data, "keys"):  # one Dataset: stable-hash 80/10/10
        return data, data.features, lambda row: split_of(key(row)) == split
    available = list(data.keys() if available is None else available)
    if split in ("train", "validation") and "train" in available and "validation" not in available:
        want_validation = split == "validation"

        def carve(row: Mapping[str, Any]) -> bool:
            return (stable_fraction(key(row)) >= 1 - VALIDATION_FRACTION) == want_validation

        return data["train"], data["train"].features, carve
    if split in available:
        return data[split], data[split].features, lambda row: True
    raise ValueError(f"{source} has no {split!r} split (it has: {', '.join(available)})")


def load_hf_split(
    hub_id: str,
    config: str | None,
    split: str,
    *,
    key: Callable[[Mapping[str, Any]], str],
    convert: RowConverter,
    path: str | os.PathLike[str] | None = None,
    max_samples: int | None = None,
    hub_splits: tuple[str, ...] = ("train", "validation", "test"),
    load_kwargs: Mapping[str, Any] | None = None,
) -> list[Sample]:
    """Load one split of a Hugging Face data set (from the hub or local data) as samples.

    :param hub_id: the hub repository (``"stanfordnlp/imdb"``).
    :param config: the hub configuration name, or ``None``.
    :param split: "train", "validation" or "test".
    :param key: the text a row's hash split is based on (its source text).
    :param convert: turns a row (and the split's features) into a sample, or ``None`` to skip it.
    :param path: local data instead of the hub: a ``save_to_disk`` folder or a data file.
    :param max_samples: stop after this many samples.
    :param hub_splits: the splits the hub data set has ("validation" is carved from "train" when
        missing).
    :param load_kwargs: extra keyword arguments for ``datasets.load_dataset`` (the hub, or a local
        data file), such as ``revision`` or ``cache_dir``.
    :return: the samples, in the data set's order.
    :raises ImportError: when ``datasets`` is not installed.
    :raises ConnectionError: offline (``LM_GYM_OFFLINE=1``) and the hub data set is not cached.
    :raises FileNotFoundError: when ``path`` does not exist.
    :raises ValueError: for an unsupported file type or a split the data lacks.
    """
    take([], max_samples)  # validates max_samples before any loading
    datasets = import_datasets()
    if path is not None:
        data, source, available = (
            _open_local(datasets, path, load_kwargs),
            repr(os.fspath(path)),
            None,
        )
    else:
        source = repr(hub_id) + (f" ({config})" if config else "")
        # a split the hub lacks ("validation" of imdb) is carved out of "train"
        wanted = split if split in hub_splits else "train"
        try:
            ds = datasets.load_dataset(hub_id, config, split=wanted, **dict(load_kwargs or {}))
        except (ConnectionError, OSError, ValueError) as err:
            if not _lm_gym_offline():
                raise
            raise ConnectionError(
                f"{source} is not in the local `datasets` cache, and LM_GYM_OFFLINE=1 (or "
                "HF_HUB_OFFLINE=1) forbids the hub: unset it to download the data set once, or "
                f"pass local data (path=...). ({type(err).__name__}: {' '.join(str(err).split())})"
            ) from err
        data, available = {wanted: ds}, hub_splits
    rows, features, keep = _rows(data, split, key, source, available)
    return list(_convert(rows, features, keep, convert, max_samples))


def _convert(
    rows: Iterable[Mapping[str, Any]],
    features: Any,
    keep: Callable[[Mapping[str, Any]], bool],
    convert: RowConverter,
    max_samples: int | None,
) -> Iterator[Sample]:
    n = 0
    for row in rows:
        if max_samples is not None and n >= max_samples:
            return
        if not keep(row):
            continue
        sample = convert(row, features)
        if sample is not None and sample.prompt.strip():
            n += 1
            yield sample


def _text(value: Any) -> str:
    return " ".join(str(value or "").split())


# --------------------------------------------------------------------------------------------------
# imdb


def clean_review(text: str) -> str:
    """IMDB review text with its ``<br />`` tags turned into spaces and whitespace normalised.

    :param text: a raw review.
    :return: the cleaned review.
    """
    return _text(re.sub(r"<br\s*/?>", " ", text or ""))


def load_imdb(
    split: str = "train",
    *,
    prompt_words: int = 10,
    path: str | os.PathLike[str] | None = None,
    max_samples: int | None = None,
    hub_id: str = "stanfordnlp/imdb",
    load_kwargs: Mapping[str, Any] | None = None,
) -> list[Sample]:
    """IMDB movie reviews (hub stanfordnlp/imdb): prompt = the review's first words, meta label.

    The reference is the whole (cleaned) review; ``meta["label"]`` is "neg" or "pos". IMDB has no
    validation split: 10 % of "train" is carved out deterministically.

    :param split: "train", "validation" or "test".
    :param prompt_words: how many opening words make the prompt.
    :param path: local data instead of the hub (a ``save_to_disk`` folder or a data file) with
        "text" and "label" columns.
    :param max_samples: stop after this many samples.
    :param hub_id: the hub repository.
    :param load_kwargs: extra keyword arguments for ``datasets.load_dataset``.
    :return: the samples.
    """
    if isinstance(prompt_words, bool) or not isinstance(prompt_words, int) or prompt_words < 1:
        raise ValueError(f"prompt_words must be a positive integer, got {prompt_words!r}")

    def convert(row: Mapping[str, Any], features: Any) -> Sample | None:
        text = clean_review(row.get("text", ""))
        if not text:
            return None
        meta: dict[str, Any] = {}
        label = row.get("label")
        names = getattr(features.get("label") if features else None, "names", None) or [
            "neg",
            "pos",
        ]
        if isinstance(label, int) and 0 <= label < len(names):
            meta["label"] = names[label]
        elif isinstance(label, str) and label:
            meta["label"] = label
        prompt = " ".join(text.split()[:prompt_words])
        return Sample(prompt=prompt, references=(text,), meta=meta)

    return load_hf_split(
        hub_id,
        None,
        split,
        key=lambda row: clean_review(row.get("text", "")),
        convert=convert,
        path=path,
        max_samples=max_samples,
        hub_splits=("train", "test"),
        load_kwargs=load_kwargs,
    )


# --------------------------------------------------------------------------------------------------
# translation: wmt16, iwslt2017


def _translation_loader(
    name: str, hub_id: str, config: str, pair: tuple[str, str], description: str
) -> Callable[..., list[Sample]]:
    default_source, default_target = pair

    def loader(
        split: str = "train",
        *,
        source_lang: str = default_source,
        target_lang: str = default_target,
        path: str | os.PathLike[str] | None = None,
        max_samples: int | None = None,
        hub_id: str = hub_id,
        load_kwargs: Mapping[str, Any] | None = None,
    ) -> list[Sample]:
        if {source_lang, target_lang} != set(pair):
            raise ValueError(
                f"{name} translates between {pair[0]!r} and {pair[1]!r}, "
                f"not {source_lang!r} -> {target_lang!r}"
            )

        def side(row: Mapping[str, Any], lang: str) -> str:
            pairs = row.get("translation")
            if isinstance(pairs, Mapping):
                return _text(pairs.get(lang))
            return _text(row.get(lang))  # flat columns, e.g. from a CSV file

        def convert(row: Mapping[str, Any], features: Any) -> Sample | None:
            source, target = side(row, source_lang), side(row, target_lang)
            if not source or not target:
                return None
            meta = {"source_lang": source_lang, "target_lang": target_lang}
            return Sample(prompt=source, references=(target,), meta=meta)

        return load_hf_split(
            hub_id,
            config,
            split,
            key=lambda row: side(row, source_lang),
            convert=convert,
            path=path,
            max_samples=max_samples,
            load_kwargs=load_kwargs,
        )

    loader.__name__ = "load_" + re.sub(r"\W", "_", name)
    loader.__doc__ = f"""{description}

    :param split: "train", "validation" or "test".
    :param source_lang: the prompt's language (default {default_source!r}).
    :param target_lang: the references' language (default {default_target!r}).
    :param path: local data instead of the hub (a ``save_to_disk`` folder or a data file) with a
        "translation" column of ``{{lang: text}}`` objects, or one column per language.
    :param max_samples: stop after this many samples.
    :param hub_id: the hub repository (default {hub_id!r}, configuration {config!r}).
    :param load_kwargs: extra keyword arguments for ``datasets.load_dataset``.
    :return: the samples: prompt = source sentence, references = (translation,).
    """
    return loader


load_wmt16_de_en = _translation_loader(
    "wmt16-de-en",
    "wmt/wmt16",
    "de-en",
    ("en", "de"),
    "WMT16 news translation, English -> German (hub wmt/wmt16, config de-en; about 4.5M pairs).",
)
load_iwslt2017_en_de = _translation_loader(
    "iwslt2017-en-de",
    "IWSLT/iwslt2017",
    "iwslt2017-en-de",
    ("en", "de"),
    "IWSLT 2017 TED talk translation, English -> German (hub IWSLT/iwslt2017, about 200k pairs).",
)

# --------------------------------------------------------------------------------------------------
# summarisation: cnn_dailymail, xsum


def _summary_loader(
    name: str,
    hub_id: str,
    config: str | None,
    document: str,
    summary: str,
    description: str,
) -> Callable[..., list[Sample]]:
    def loader(
        split: str = "train",
        *,
        path: str | os.PathLike[str] | None = None,
        max_samples: int | None = None,
        hub_id: str = hub_id,
        load_kwargs: Mapping[str, Any] | None = None,
    ) -> list[Sample]:
        def convert(row: Mapping[str, Any], features: Any) -> Sample | None:
            doc, ref = _text(row.get(document)), str(row.get(summary) or "").strip()
            if not doc or not ref:
                return None
            meta = {"id": str(row["id"])} if row.get("id") is not None else {}
            return Sample(prompt=doc, references=(ref,), meta=meta)

        return load_hf_split(
            hub_id,
            config,
            split,
            key=lambda row: _text(row.get(document)),
            convert=convert,
            path=path,
            max_samples=max_samples,
            load_kwargs=load_kwargs,
        )

    loader.__name__ = "load_" + re.sub(r"\W", "_", name)
    loader.__doc__ = f"""{description}

    :param split: "train", "validation" or "test".
    :param path: local data instead of the hub (a ``save_to_disk`` folder or a data file) with
        {document!r} and {summary!r} columns.
    :param max_samples: stop after this many samples.
    :param hub_id: the hub repository (default {hub_id!r}{f", configuration {config!r}" if config else ""}).
    :param load_kwargs: extra keyword arguments for ``datasets.load_dataset``.
    :return: the samples: prompt = the {document}, references = (the {summary},).
    """
    return loader


load_cnn_dailymail = _summary_loader(
    "cnn_dailymail",
    "abisee/cnn_dailymail",
    "3.0.0",
    "article",
    "highlights",
    "CNN/DailyMail news summarisation: article -> highlights (hub abisee/cnn_dailymail, 3.0.0).",
)
load_xsum = _summary_loader(
    "xsum",
    "EdinburghNLP/xsum",
    None,
    "document",
    "summary",
    "XSum BBC news summarisation: document -> one-sentence summary (hub EdinburghNLP/xsum).",
)

register_dataset("imdb", load_imdb)
register_dataset("wmt16-de-en", load_wmt16_de_en)
register_dataset("iwslt2017-en-de", load_iwslt2017_en_de)
register_dataset("cnn_dailymail", load_cnn_dailymail)
register_dataset("xsum", load_xsum)
