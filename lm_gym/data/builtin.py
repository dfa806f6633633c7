"""Built-in offline data sets, read from files that ship inside installed packages.

Nothing here needs a network: the texts come from gensim's test data, Django's message catalogues and
Python's own standard library. Each data set is prepared once, cached as JSONL (see
:mod:`lm_gym.data.cache`) and split 80/10/10 into train/validation/test by a stable hash of the
prompt (see :mod:`lm_gym.data.splits`), so the splits are fixed and disjoint.

=====================  ==========================================================================
name                   content
=====================  ==========================================================================
movie-reviews          200 movie-review sentences (100 pos / 100 neg, Pang & Lee), the offline
                       stand-in for IMDB: prompt = the opening words, reference = the sentence
django-en-XX           Django's English UI strings and their translations (about 700 per
                       language; XX in de, es, fr, it, ja, nl, pl, pt, ru)
stdlib-docstrings      about 550 (docstring body -> one-line summary) pairs from the standard library
wiki-leads             about 90 Wikipedia articles (body -> lead sentences) from gensim's test dump
=====================  ==========================================================================
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lm_gym.data.base import Sample
from lm_gym.data.cache import cached_splits
from lm_gym.data.registry import register_dataset, take
from lm_gym.data.splits import split_of

# --------------------------------------------------------------------------------------------------
# shared helpers


def package_dir(package: str, purpose: str) -> Path:
    """Locate an installed package's folder without importing it.

    :param package: the importable name (``"gensim"``, ``"django"``).
    :param purpose: what the package is needed for, for the error message.
    :return: the package folder.
    :raises ImportError: when the package is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"{purpose} needs the {package!r} package, which is not installed "
            f"(pip install {package}); it is a dependency of lm-gym"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _builtin_loader(
    name: str, version: int, build: Callable[[], Iterator[Sample]], tag: Callable[[], str]
) -> Callable[..., list[Sample]]:
    """Wrap a preparation function into a cached, split-aware loader."""

    def pairs() -> Iterator[tuple[str, Sample]]:
        for sample in build():
            yield split_of(sample.prompt), sample

    def loader(split: str = "train", *, max_samples: int | None = None) -> list[Sample]:
        return take(cached_splits(name, version, pairs, tag())[split], max_samples)

    loader.__name__ = "load_" + re.sub(r"\W", "_", name)
    loader.__doc__ = f"""Load a split of the built-in {name!r} data set (prepared once, then cached).

    :param split: "train", "validation" or "test".
    :param max_samples: keep only the first ``max_samples`` samples of the split.
    :return: the samples, in a fixed order.
    """
    return loader


def _gensim_test_file(filename: str, purpose: str) -> Path:
    path = package_dir("gensim", purpose) / "test" / "test_data" / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{purpose} reads {filename!r} from gensim's test data, but {str(path)!r} is missing "
            f"(gensim {_version('gensim')}); reinstall gensim>=4.3 from a wheel"
        )
    return path


# --------------------------------------------------------------------------------------------------
# movie-reviews: Pang & Lee polarity sentences from gensim's test data

MOVIE_REVIEWS_VERSION = 1
MOVIE_REVIEWS_FILE = "pang_lee_polarity.cor"


def detokenize(text: str) -> str:
    """Undo PTB-style spacing around punctuation (``"dull , but fun ."`` -> ``"dull, but fun."``).

    :param text: a tokenised sentence.
    :return: the sentence with ordinary spacing.
    """
    text = _normalise(text)
    text = re.sub(r'" (.*?) "', r'"\1"', text)
    text = re.sub(r"([(\[]) ", r"\1", text)
    text = re.sub(r" ([,.!?;:)\]])", r"\1", text)
    return text


def prompt_words(n_words: int) -> int:
    """How many opening words of an ``n_words``-word sentence make its prompt.

    40 % of the words, at least 3 and at most 10, and always fewer than the whole sentence.

    :param n_words: the sentence length in words.
    :return: the prompt length in words.
    """
    return max(1, min(10, max(3, int(0.4 * n_words)), n_words - 1))


def _build_movie_reviews() -> Iterator[Sample]:
    path = _gensim_test_file(MOVIE_REVIEWS_FILE, "the 'movie-reviews' data set")
    seen: set[str] = set()
    with open(path, encoding="latin-1") as f:
        for lineno, line in enumerate(f, start=1):
            label, _, text = line.strip().partition(" ")
            if not label.startswith("__label__") or not text.strip():
                continue
            sentence = detokenize(text)
            if sentence in seen:
                continue
            seen.add(sentence)
            words = sentence.split()
            yield Sample(
                prompt=" ".join(words[: prompt_words(len(words))]),
                references=(sentence,),
                meta={"label": label.removeprefix("__label__"), "line": lineno},
            )


load_movie_reviews = _builtin_loader(
    "movie-reviews",
    MOVIE_REVIEWS_VERSION,
    _build_movie_reviews,
    lambda: "gensim" + _version("gensim"),
)

# --------------------------------------------------------------------------------------------------
# django-en-XX: Django's message catalogues

DJANGO_VERSION = 2

#: Longest English source string (in characters) kept: every prompt then fits
#: ``LMTranslate-v0``'s 64 prompt tokens with GPT-2's and SmolLM2's tokenizers (at most 55 with
#: Django 5.2's catalogues), so the env never cuts or warns on its own data. The longer strings
#: (9 of 580 English ones for German with Django 5.2, mostly help texts with HTML) are left out.
DJANGO_MAX_CHARS = 140

#: Target languages registered as ``django-en-<code>`` (Django locale code -> language name).
DJANGO_LANGUAGES = {
    "de": "German",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "ja": "Japanese",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
}

_PLACEHOLDER = re.compile(
    r"%\([^)]*\)[-#0 +]*\d*(?:\.\d+)?[a-zA-Z]|%[-#0 +]*\d*(?:\.\d+)?[sdifrxc%]|\{[^{}]*\}"
)


def has_words(text: str) -> bool:
    """Whether a UI string has any letters once its placeholders (``%(name)s``, ``%s``, ``{x}``) are
    removed, i.e. is not just placeholders and punctuation.

    :param text: a message string.
    :return: True when something translatable is left.
    """
    return any(ch.isalpha() for ch in _PLACEHOLDER.sub("", text))


def django_catalogs(lang: str) -> list[tuple[str, Path]]:
    """The compiled Django message catalogues of one language: core first, then contrib apps.

    :param lang: a Django locale code (``"de"``, ``"pt_BR"``).
    :return: ``(app, path)`` pairs; ``app`` is ``"core"`` or the contrib app's name.
    :raises ImportError: when Django is not installed.
    :raises FileNotFoundError: when Django has no catalogue for the language.
    """
    root = package_dir("django", f"the 'django-en-{lang}' data set")
    core = root / "conf" / "locale" / lang / "LC_MESSAGES" / "django.mo"
    if not core.is_file():
        raise FileNotFoundError(
            f"Django {_version('Django')} has no message catalogue {str(core)!r}"
        )
    found = [("core", core)]
    for mo in sorted((root / "contrib").glob(f"*/locale/{lang}/LC_MESSAGES/django.mo")):
        found.append((mo.relative_to(root / "contrib").parts[0], mo))
    return found


def _build_django(lang: str) -> Iterator[Sample]:
    import gettext

    pairs: dict[str, tuple[str, str]] = {}
    for app, path in django_catalogs(lang):
        with open(path, "rb") as f:
            catalog: dict[Any, str] = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        for msgid, msgstr in catalog.items():
            # plural forms have (msgid, n) keys; "context\x04msgid" keys carry a msgctxt
            if not isinstance(msgid, str) or "\x04" in msgid:
                continue
            source, target = _normalise(msgid), _normalise(msgstr)
            if not source or not target or not has_words(source) or not has_words(target):
                continue
            if len(source) > DJANGO_MAX_CHARS:
                continue
            pairs.setdefault(source, (target, app))
    for source in sorted(pairs):
        target, app = pairs[source]
        yield Sample(
            prompt=source,
            references=(target,),
            meta={"source_lang": "en", "target_lang": lang, "app": app},
        )


for _lang, _language in DJANGO_LANGUAGES.items():
    register_dataset(
        f"django-en-{_lang}",
        _builtin_loader(
            f"django-en-{_lang}",
            DJANGO_VERSION,
            functools.partial(_build_django, _lang),
            lambda: "django" + _version("Django"),
        ),
        description=(
            f"Django UI strings, English -> {_language} (about 700 msgid -> msgstr pairs from "
            "Django's own and its contrib apps' catalogues; offline)"
        ),
    )

# --------------------------------------------------------------------------------------------------
# stdlib-docstrings: (docstring body -> one-line summary) pairs

STDLIB_DOCSTRINGS_VERSION = 3

#: The standard library modules whose docstrings make the data set (a fixed list: changing it
#: changes the data, so bump ``STDLIB_DOCSTRINGS_VERSION`` too).
STDLIB_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "codecs", "collections",
    "concurrent.futures", "configparser", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "doctest", "email.message", "email.utils", "enum", "fractions",
    "ftplib", "glob", "gzip", "heapq", "hmac", "html.parser", "http.client", "http.cookiejar",
    "imaplib", "inspect", "ipaddress", "json", "logging", "numbers", "pathlib", "pickle", "queue",
    "random", "sched", "selectors", "shutil", "smtplib", "socketserver", "statistics",
    "subprocess", "tempfile", "textwrap", "threading", "traceback", "typing", "unittest.case",
    "urllib.parse", "urllib.request", "warnings", "xml.etree.ElementTree", "zipfile",
)  # fmt: skip

#: Longest document (in words) kept; longer docstring bodies are cut.
STDLIB_MAX_WORDS = 150
#: Longest document (in characters) kept, cut at a word boundary: every prompt then fits
#: ``LMSummarize-v0``'s 256 prompt tokens with GPT-2's and SmolLM2's tokenizers (at most 233 with
#: Python 3.11's docstrings), so the env never cuts or warns on its own data.
STDLIB_MAX_CHARS = 800


def split_docstring(doc: str) -> tuple[str, str] | None:
    """Split a docstring into its one-line summary and its body, if it has both.

    The summary is the first paragraph, on one line, a sentence of 4 to 30 words (it starts with a
    capital letter and ends with "."). The body is the rest without doctest paragraphs (those that
    start with ``>>>``), whitespace-normalised, at least 15 words, cut to :data:`STDLIB_MAX_WORDS`
    words and then to :data:`STDLIB_MAX_CHARS` characters at a word boundary.

    :param doc: a cleaned docstring (:func:`inspect.getdoc`).
    :return: ``(summary, body)`` or ``None`` when the docstring does not qualify.
    """
    parts = re.split(r"\n[ \t]*\n", doc.strip(), maxsplit=1)
    if len(parts) < 2 or "\n" in parts[0].strip():
        return None
    summary = parts[0].strip()
    n = len(summary.split())
    if not (4 <= n <= 30 and summary[0].isupper() and summary.endswith(".")) or "->" in summary:
        return None
    paragraphs = re.split(r"\n[ \t]*\n", parts[1])
    words = " ".join(p for p in paragraphs if not p.lstrip().startswith(">>>")).split()
    if len(words) < 15:
        return None
    body = " ".join(words[:STDLIB_MAX_WORDS])
    if len(body) > STDLIB_MAX_CHARS:
        body = body[: STDLIB_MAX_CHARS + 1].rsplit(" ", 1)[0]
    return summary, body


def _public_members(module: Any) -> Iterator[tuple[str, Any]]:
    """Public functions and classes defined in a module, then each class's public methods."""
    modname = module.__name__
    names = getattr(module, "__all__", None) or list(vars(module))
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if name.startswith("_") or not (
            inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)
        ):
            continue
        owner = getattr(obj, "__module__", None) or ""
        if owner.lstrip("_") != modname and not owner.startswith(modname + "."):
            continue  # imported from elsewhere
        yield name, obj
        if inspect.isclass(obj):
            for attr, raw in sorted(vars(obj).items()):
                if attr.startswith("_"):
                    continue
                if isinstance(raw, (classmethod, staticmethod)):
                    raw = raw.__func__
                if (
                    inspect.isfunction(raw)
                    or inspect.ismethoddescriptor(raw)
                    or inspect.isbuiltin(raw)
                    or isinstance(raw, property)
                ):
                    yield f"{name}.{attr}", raw


def _build_stdlib_docstrings() -> Iterator[Sample]:
    seen: set[str] = set()
    for modname in STDLIB_MODULES:
        try:
            module = importlib.import_module(modname)
        except ImportError:  # pragma: no cover - a stripped-down Python
            continue
        for qualname, obj in _public_members(module):
            # the object's own docstring: inspect.getdoc would inherit a base class's
            own = (
                vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
            )
            doc = inspect.cleandoc(own) if isinstance(own, str) else None
            parts = split_docstring(doc) if doc else None
            if parts is None or parts[1] in seen:
                continue  # keep each body once
            summary, body = parts
            seen.add(body)
            yield Sample(
                prompt=body, references=(summary,), meta={"module": modname, "name": qualname}
            )


load_stdlib_docstrings = _builtin_loader(
    "stdlib-docstrings",
    STDLIB_DOCSTRINGS_VERSION,
    _build_stdlib_docstrings,
    lambda: "py{}.{}".format(*sys.version_info[:2]),
)

# --------------------------------------------------------------------------------------------------
# wiki-leads: shortened English Wikipedia dump from gensim's test data

WIKI_LEADS_VERSION = 1
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

#: Longest document (in words) kept; longer article bodies are cut.
WIKI_MAX_WORDS = 400

_HEADING = re.compile(r"^\s*(=+)\s*(.*?)\s*\1\s*$")
_SKIP_SECTIONS = {
    "references", "see also", "external links", "further reading", "notes", "bibliography",
    "sources", "citations", "footnotes",
}  # fmt: skip
_ABBREVIATION = re.compile(
    r"(?:\b[A-Z]|\b(?:e\.g|i\.e|etc|vs|Mr|Mrs|Ms|Dr|St|Jr|Sr|No|c|ca|approx|U\.S|U\.K))\.$"
)


def _wiki_paragraphs(lines: list[str]) -> list[str]:
    """Prose paragraphs of filtered wiki text: no lists, tables, captions or short fragments."""
    out = []
    for line in lines:
        line = _normalise(re.sub(r"'{2,}", "", line))
        line = re.sub(r"\(\s*[;,]?\s*\)", "", line)  # templates removed from "( ; born ...)"
        line = _normalise(re.sub(r"\(\s*[;,]\s*", "(", line).replace(" ,", ","))
        if not line or line[0] in "*#:;|{}!<" or len(line.split()) < 8:
            continue
        if line[-1] in ".!?\"')":
            out.append(line)
    return out


def sentences(text: str) -> list[str]:
    """Split prose into sentences (a simple rule: ., ! or ? then a capital, not after an initial).

    :param text: whitespace-normalised prose.
    :return: the sentences.
    """
    out: list[str] = []
    for part in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])", text):
        if out and _ABBREVIATION.search(out[-1]):
            out[-1] += " " + part
        else:
            out.append(part)
    return out


_FILE_LINK = re.compile(r"\[\[\s*(?:file|image|media)\s*:", re.IGNORECASE)


def strip_file_links(markup: str) -> str:
    """Remove ``[[File:...]]`` / ``[[Image:...]]`` links, nested links in captions included.

    :param markup: wiki markup.
    :return: the markup without file links (their captions would otherwise read as prose).
    """
    out, pos = [], 0
    for match in _FILE_LINK.finditer(markup):
        if match.start() < pos:
            continue  # inside a link already removed
        out.append(markup[pos : match.start()])
        depth, i = 0, match.start()
        while i < len(markup):
            if markup.startswith("[[", i):
                depth, i = depth + 1, i + 2
            elif markup.startswith("]]", i):
                depth, i = depth - 1, i + 2
                if depth == 0:
                    break
            else:
                i += 1
        pos = i
    out.append(markup[pos:])
    return "".join(out)


def _wiki_pages(path: Path) -> Iterator[tuple[str, str]]:
    import bz2
    import xml.etree.ElementTree as ET

    with bz2.open(path) as f:
        for _, elem in ET.iterparse(f):
            if elem.tag.rsplit("}", 1)[-1] != "page":
                continue
            ns = elem.findtext("{*}ns")
            text = elem.findtext("{*}revision/{*}text") or ""
            if ns == "0" and elem.find("{*}redirect") is None:
                yield elem.findtext("{*}title") or "", text
            elem.clear()


def _build_wiki_leads() -> Iterator[Sample]:
    path = _gensim_test_file(WIKI_FILE, "the 'wiki-leads' data set")
    from gensim.corpora.wikicorpus import filter_wiki  # heavy: imported only to prepare the cache

    for title, markup in _wiki_pages(path):
        lead: list[str] = []
        body: list[str] = []
        current, skip = lead, False
        for line in filter_wiki(strip_file_links(markup)).splitlines():
            heading = _HEADING.match(line)
            if heading:
                current, skip = body, heading.group(2).strip().lower() in _SKIP_SECTIONS
            elif not skip:
                current.append(line)
        lead_paragraphs = _wiki_paragraphs(lead)
        # image captions can come before the lead proper, which names its subject
        first_word = title.split()[0].lower() if title.split() else ""
        for i, paragraph in enumerate(lead_paragraphs):
            if first_word and first_word in paragraph.lower():
                lead_paragraphs = lead_paragraphs[i:]
                break
        lead_text = " ".join(lead_paragraphs)
        body_words = " ".join(_wiki_paragraphs(body)).split()
        if len(lead_text.split()) < 30 or len(body_words) < 100:
            continue
        summary: list[str] = []
        for sentence in sentences(lead_text):
            summary.append(sentence)
            if len(" ".join(summary).split()) >= 20 or len(summary) == 3:
                break
        yield Sample(
            prompt=" ".join(body_words[:WIKI_MAX_WORDS]),
            references=(" ".join(summary),),
            meta={"title": title},
        )


load_wiki_leads = _builtin_loader(
    "wiki-leads", WIKI_LEADS_VERSION, _build_wiki_leads, lambda: "gensim" + _version("gensim")
)

register_dataset(
    "movie-reviews",
    load_movie_reviews,
    description=(
        "200 movie-review sentences (Pang & Lee, 100 pos / 100 neg, from gensim's test data): "
        "prompt = opening words, reference = the sentence, meta label; offline stand-in for imdb"
    ),
)
register_dataset(
    "stdlib-docstrings",
    load_stdlib_docstrings,
    description=(
        "about 550 Python standard library docstrings: body -> one-line summary "
        "(offline summarisation stand-in; the exact set depends on the Python version)"
    ),
)
register_dataset(
    "wiki-leads",
    load_wiki_leads,
    description=(
        "about 90 English Wikipedia articles (gensim's test dump): body (first 400 words) -> "
        "lead sentences (offline summarisation stand-in)"
    ),
)
