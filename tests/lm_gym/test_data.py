"""Tests of lm_gym.data: built-in offline data sets, the cache, user files, online loaders on local data."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import lm_gym.data as data
from lm_gym.data import (
    SPLITS,
    Sample,
    builtin,
    cache,
    dataset_info,
    list_datasets,
    load_dataset,
    register_dataset,
    registry,
)
from lm_gym.data.splits import split_of

# name -> (smallest sensible total, largest sensible total)
BUILTIN_SIZES = {
    "movie-reviews": (200, 200),
    "stdlib-docstrings": (300, 900),
    "wiki-leads": (60, 110),
    **{f"django-en-{lang}": (500, 1000) for lang in builtin.DJANGO_LANGUAGES},
}
ONLINE = ("imdb", "wmt16-de-en", "iwslt2017-en-de", "cnn_dailymail", "xsum")


@pytest.fixture(scope="module", autouse=True)
def data_cache(tmp_path_factory):
    """One fresh cache folder for this module (built-ins are prepared once, not per test)."""
    root = tmp_path_factory.mktemp("lm_gym_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache.CACHE_ENV, str(root))
        yield root


# --------------------------------------------------------------------------------------------------
# registry


def test_registry_lists_builtin_and_online_names():
    names = list_datasets()
    assert names == sorted(names)
    for name in [*BUILTIN_SIZES, *ONLINE]:
        assert name in names
        info = dataset_info(name)
        assert info and "\n" not in info


def test_register_dataset_custom_and_overwrite():
    def tiny(split="train", *, max_samples=None):
        """A tiny test data set."""
        return [Sample(prompt=f"{split} prompt")]

    register_dataset("tiny-test", tiny)
    try:
        assert dataset_info("tiny-test") == "A tiny test data set."
        assert load_dataset("tiny-test", "validation") == [Sample(prompt="validation prompt")]
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("tiny-test", tiny)
        register_dataset("tiny-test", tiny, overwrite=True, description="replaced")
        assert dataset_info("tiny-test") == "replaced"
        with pytest.raises(TypeError, match="callable"):
            register_dataset("tiny-test-2", "not a function")  # type: ignore[arg-type]
    finally:
        registry._REGISTRY.pop("tiny-test", None)


def test_unknown_name_lists_known_and_suggests():
    with pytest.raises(
        ValueError, match=r"unknown data set 'movie-review' \(did you mean 'movie-reviews'\?\)"
    ):
        load_dataset("movie-review")
    with pytest.raises(ValueError, match=r"Known data sets: .*stdlib-docstrings"):
        load_dataset("no-such-thing")
    with pytest.raises(ValueError, match="did you mean 'django-en-de'"):
        dataset_info("django-en-dee")


def test_bad_split():
    with pytest.raises(
        ValueError,
        match=r"unknown split 'dev' \(did you mean 'validation'\?\); expected one of: train, validation, test",
    ):
        load_dataset("movie-reviews", "dev")
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        load_dataset([{"prompt": "x"}], "valid")


def test_import_is_light():
    code = (
        "import sys, lm_gym; before = set(sys.modules); import lm_gym.data; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "heavy = new & {'torch', 'datasets', 'gensim', 'django', 'transformers', 'pandas'}; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# --------------------------------------------------------------------------------------------------
# built-in data sets


@pytest.mark.parametrize("name", sorted(BUILTIN_SIZES))
def test_builtin_splits(name):
    splits = {s: load_dataset(name, s) for s in SPLITS}
    sizes = {s: len(v) for s, v in splits.items()}
    low, high = BUILTIN_SIZES[name]
    assert low <= sum(sizes.values()) <= high, sizes
    assert sizes["train"] > sizes["validation"] > 0 and sizes["train"] > sizes["test"] > 0, sizes
    prompts = {s: {x.prompt for x in v} for s, v in splits.items()}
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    for split, samples in splits.items():
        for sample in samples:
            assert isinstance(sample, Sample)
            assert sample.prompt.strip() and sample.prompt == sample.prompt.strip()
            assert len(sample.references) == 1 and sample.references[0].strip()
            assert split_of(sample.prompt) == split  # fixed by the stable hash
        assert load_dataset(name, split) == samples  # stable
    assert load_dataset(name, "train", max_samples=5) == splits["train"][:5]


def test_movie_reviews_content():
    samples = [s for split in SPLITS for s in load_dataset("movie-reviews", split)]
    labels = [s.meta["label"] for s in samples]
    assert labels.count("pos") == labels.count("neg") == 100
    for s in samples:
        words, full = s.prompt.split(), s.references[0].split()
        assert full[: len(words)] == words and len(words) < len(full)
        assert len(words) == builtin.prompt_words(len(full))
        assert " ," not in s.references[0] and not s.references[0].endswith(" .")
    assert builtin.prompt_words(30) == 10 and builtin.prompt_words(10) == 4
    assert builtin.prompt_words(5) == 3 and builtin.prompt_words(2) == 1
    assert builtin.detokenize('a " great " film , ( really ) .') == 'a "great" film, (really).'


def test_django_content():
    samples = [s for split in SPLITS for s in load_dataset("django-en-de", split)]
    sources = [s.prompt for s in samples]
    assert len(sources) == len(set(sources))
    by_source = {s.prompt: s.references[0] for s in samples}
    assert by_source["Monday"] == "Montag"
    for s in samples:
        assert "\x04" not in s.prompt and builtin.has_words(s.prompt)
        assert len(s.prompt) <= builtin.DJANGO_MAX_CHARS
        assert s.meta["target_lang"] == "de"
    assert not builtin.has_words("%(value)s: %s {} {name}")
    assert builtin.has_words("Enter %(count)d items.")


def test_stdlib_docstrings_content():
    samples = [s for split in SPLITS for s in load_dataset("stdlib-docstrings", split)]
    assert {s.meta["module"] for s in samples} <= set(builtin.STDLIB_MODULES)
    for s in samples:
        assert 15 <= len(s.prompt.split()) <= builtin.STDLIB_MAX_WORDS
        assert len(s.prompt) <= builtin.STDLIB_MAX_CHARS
        summary = s.references[0]
        assert 4 <= len(summary.split()) <= 30 and summary.endswith(".") and "\n" not in summary
    doc = "Return the thing you asked for.\n\n" + "word " * 200
    summary, body = builtin.split_docstring(doc)
    assert summary == "Return the thing you asked for." and len(body.split()) == 150
    summary, body = builtin.split_docstring(
        "Return the thing you asked for.\n\n" + "abcdefghi " * 100
    )
    assert len(body) == 799 and body.endswith("abcdefghi")  # 80 words, cut at a word boundary
    assert builtin.split_docstring("Too short.\n\n" + "word " * 20) is None
    assert builtin.split_docstring("Return a long thing that\nwraps.\n\n" + "word " * 20) is None
    assert builtin.split_docstring("Return the thing you asked for.\n\nToo short body.") is None


def test_wiki_leads_content():
    samples = [s for split in SPLITS for s in load_dataset("wiki-leads", split)]
    titles = [s.meta["title"] for s in samples]
    assert len(titles) == len(set(titles)) and "Anarchism" in titles
    for s in samples:
        assert len(s.prompt.split()) <= builtin.WIKI_MAX_WORDS
        assert len(s.references[0].split()) >= 5
        assert s.references[0] not in s.prompt
    assert (
        builtin.strip_file_links("a [[File:x.png|thumb|A [[cat]] here]] b [[link]]")
        == "a  b [[link]]"
    )
    assert builtin.sentences("Mr. A. Smith went home. He slept.") == [
        "Mr. A. Smith went home.",
        "He slept.",
    ]


# --------------------------------------------------------------------------------------------------
# the cache


def test_builtin_cache_file_written_and_reused(data_cache, monkeypatch):
    load_dataset("movie-reviews")
    path = cache.cache_path(
        "movie-reviews", builtin.MOVIE_REVIEWS_VERSION, "gensim" + builtin._version("gensim")
    )
    assert path.parent == data_cache / "data" and path.is_file()
    assert f"-v{builtin.MOVIE_REVIEWS_VERSION}" in path.name
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 200 and {r["split"] for r in rows} == set(SPLITS)
    before = load_dataset("movie-reviews", "test")
    # from the file, not prepared again, once the in-process memo is gone
    cache.clear_memo()
    monkeypatch.setattr(builtin, "_gensim_test_file", lambda *a: pytest.fail("prepared again"))
    assert load_dataset("movie-reviews", "test") == before
    assert not list(path.parent.glob("*.tmp"))


def test_cached_splits_memo_file_version_and_corruption(data_cache):
    calls = []

    def build():
        calls.append(1)
        return [("train", Sample("a", ("b",), {"k": 1})), ("test", Sample("c"))]

    first = cache.cached_splits("unit", 1, build)
    assert first["train"] == [Sample("a", ("b",), {"k": 1})] and first["validation"] == []
    assert cache.cached_splits("unit", 1, build) is first and len(calls) == 1  # memo
    cache.clear_memo()
    assert cache.cached_splits("unit", 1, build) == first and len(calls) == 1  # file
    cache.cached_splits("unit", 2, build)  # a new version is a new file
    assert len(calls) == 2
    assert sorted(p.name for p in (data_cache / "data").glob("unit-*")) == [
        "unit-v1.jsonl",
        "unit-v2.jsonl",
    ]
    cache.cache_path("unit", 1).write_text("{not json\n", encoding="utf-8")
    cache.clear_memo()
    with pytest.warns(UserWarning, match="unreadable cache file"):
        assert cache.cached_splits("unit", 1, build) == first
    assert len(calls) == 3
    cache.clear_memo()
    assert cache.cached_splits("unit", 1, build) == first and len(calls) == 3  # repaired


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    assert cache.cache_dir() == Path("~/.cache/lm_gym/data").expanduser()


# --------------------------------------------------------------------------------------------------
# user files and lists


def _rows(n=60):
    return [{"prompt": f"prompt number {i}", "references": [f"ref {i}"], "id": i} for i in range(n)]


def test_list_of_dicts_hash_split_and_meta():
    rows = _rows()
    rows[0] = {
        "prompt": "own split",
        "references": "one ref",
        "split": "test",
        "meta": {"x": 1},
        "y": 2,
    }
    splits = {s: load_dataset(rows, s) for s in SPLITS}
    assert sum(map(len, splits.values())) == len(rows)
    assert Sample("own split", ("one ref",), {"x": 1, "y": 2}) in splits["test"]
    for split, samples in splits.items():
        for s in samples:
            if s.prompt != "own split":
                assert split_of(s.prompt) == split and s.references == (f"ref {s.meta['id']}",)
    assert load_dataset(rows, "train") == splits["train"]  # stable
    assert load_dataset(rows, "train", max_samples=3) == splits["train"][:3]
    assert load_dataset([Sample("p", ("r",))] * 3, split_of("p")) == [Sample("p", ("r",))] * 3


def test_jsonl_and_json_files(tmp_path):
    rows = _rows()
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    js = tmp_path / "data.json"
    js.write_text(json.dumps(rows), encoding="utf-8")
    for split in SPLITS:
        expected = load_dataset(rows, split)
        assert load_dataset(str(jsonl), split) == expected
        assert load_dataset(jsonl, split) == expected  # a pathlib.Path works too
        assert load_dataset(str(js), split) == expected


def test_empty_split_warns():
    rows = [{"prompt": "only one", "split": "train"}]
    with pytest.warns(UserWarning, match="split 'test' of the given list is empty"):
        assert load_dataset(rows, "test") == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset(rows, "train")) == 1


def test_user_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data file not found: .*missing\.jsonl"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n\n{"prompt": oops}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad JSON in .*bad.jsonl.* at line 3"):
        load_dataset(str(bad))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[\n{"prompt": "a"},\n{"prompt": }\n]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad JSON in .*bad.json.* at line 3"):
        load_dataset(str(bad_json))
    not_list = tmp_path / "obj.json"
    not_list.write_text('{"prompt": "a"}', encoding="utf-8")
    with pytest.raises(ValueError, match="must hold a JSON array"):
        load_dataset(str(not_list))
    no_prompt = tmp_path / "noprompt.jsonl"
    no_prompt.write_text('{"prompt": "a"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"noprompt.jsonl line 2: missing 'prompt' field"):
        load_dataset(str(no_prompt))
    with pytest.raises(ValueError, match=r"rows\[1\]: empty 'prompt' field"):
        load_dataset([{"prompt": "a"}, {"prompt": "  "}])
    with pytest.raises(ValueError, match=r"rows\[0\]: 'prompt' must be a string"):
        load_dataset([{"prompt": 3}])
    with pytest.raises(
        ValueError, match=r"rows\[0\]: 'references' must be a string or a list of strings"
    ):
        load_dataset([{"prompt": "a", "references": ["ok", 2]}])
    with pytest.raises(ValueError, match=r"rows\[0\]: 'split' is 'dev'"):
        load_dataset([{"prompt": "a", "split": "dev"}])
    with pytest.raises(ValueError, match=r"rows\[0\]: a row must be an object"):
        load_dataset(["just a string"])
    with pytest.raises(ValueError, match="no rows in the given list"):
        load_dataset([])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no rows in .*empty\.jsonl"):
        load_dataset(str(empty))
    csv = tmp_path / "data.csv"
    csv.write_text("prompt\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported data file type '\.csv'"):
        load_dataset(str(csv))
    with pytest.raises(ValueError, match="max_samples must be a positive integer"):
        load_dataset([{"prompt": "a"}], split_of("a"), max_samples=0)
    with pytest.raises(TypeError, match="source must be"):
        load_dataset({"prompt": "a"})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# online loaders, on local data only (never the hub)


@pytest.fixture(scope="module")
def hf():
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    return datasets


def _reviews(n, offset=0):
    return [
        f"Review {i} was a film <br /><br />I watched with some friends."
        for i in range(offset, offset + n)
    ]


def test_imdb_datasetdict_carves_validation(hf, tmp_path):
    features = hf.Features(
        {"text": hf.Value("string"), "label": hf.ClassLabel(names=["neg", "pos"])}
    )
    dd = hf.DatasetDict(
        train=hf.Dataset.from_dict(
            {"text": _reviews(200), "label": [i % 2 for i in range(200)]}, features=features
        ),
        test=hf.Dataset.from_dict(
            {"text": _reviews(30, 1000), "label": [1] * 30}, features=features
        ),
    )
    dd.save_to_disk(tmp_path / "imdb")
    splits = {s: load_dataset("imdb", s, path=str(tmp_path / "imdb")) for s in SPLITS}
    assert len(splits["train"]) + len(splits["validation"]) == 200 and len(splits["test"]) == 30
    assert 5 <= len(splits["validation"]) <= 40
    assert not {s.references for s in splits["train"]} & {
        s.references for s in splits["validation"]
    }
    first = splits["train"][0]
    assert first.prompt == "Review 0 was a film I watched with some friends."[: len(first.prompt)]
    assert len(first.prompt.split()) == 10 and "<br" not in first.references[0]
    assert {s.meta["label"] for s in splits["train"]} == {"neg", "pos"}
    assert {s.meta["label"] for s in splits["test"]} == {"pos"}
    short = load_dataset("imdb", "test", path=tmp_path / "imdb", prompt_words=3, max_samples=4)
    assert len(short) == 4 and short[0].prompt == "Review 1000 was"
    assert load_dataset("imdb", "validation", path=str(tmp_path / "imdb")) == splits["validation"]


def test_translation_single_dataset_hash_split(hf, tmp_path):
    pairs = [{"en": f"Hello number {i}.", "de": f"Hallo Nummer {i}."} for i in range(100)]
    hf.Dataset.from_dict({"translation": pairs}).save_to_disk(tmp_path / "wmt")
    splits = {s: load_dataset("wmt16-de-en", s, path=str(tmp_path / "wmt")) for s in SPLITS}
    assert sum(map(len, splits.values())) == 100 and all(splits.values())
    for split, samples in splits.items():
        for s in samples:
            assert split_of(s.prompt) == split
            assert s.prompt.startswith("Hello") and s.references[0].startswith("Hallo")
            assert s.prompt.split()[-1] == s.references[0].split()[-1]
    reverse = load_dataset(
        "wmt16-de-en", "train", path=tmp_path / "wmt", source_lang="de", target_lang="en"
    )
    assert reverse and reverse[0].prompt.startswith("Hallo")
    with pytest.raises(ValueError, match="translates between 'en' and 'de'"):
        load_dataset("wmt16-de-en", path=tmp_path / "wmt", target_lang="fr")


def test_translation_and_summary_data_files(hf, tmp_path):
    jsonl = tmp_path / "iwslt.jsonl"
    rows = [{"translation": {"en": f"Talk {i}.", "de": f"Vortrag {i}."}} for i in range(40)]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    kw = {"load_kwargs": {"cache_dir": str(tmp_path / "hf_cache")}}
    iwslt = [
        s for split in SPLITS for s in load_dataset("iwslt2017-en-de", split, path=jsonl, **kw)
    ]
    assert len(iwslt) == 40 and {s.prompt for s in iwslt} == {f"Talk {i}." for i in range(40)}

    cnn = tmp_path / "cnn.jsonl"
    cnn_rows = [
        {"article": f"Article {i} body text.", "highlights": f"Sum {i}.\nMore.", "id": f"x{i}"}
        for i in range(40)
    ]
    cnn.write_text("\n".join(json.dumps(r) for r in cnn_rows), encoding="utf-8")
    got = load_dataset("cnn_dailymail", "train", path=str(cnn), max_samples=5, **kw)
    assert (
        len(got) == 5
        and got[0].references[0].startswith("Sum ")
        and got[0].meta["id"].startswith("x")
    )

    ds = hf.Dataset.from_dict(
        {
            "document": [f"Document {i} text." for i in range(40)],
            "summary": [f"S {i}." for i in range(40)],
        }
    )
    ds.to_csv(str(tmp_path / "xsum.csv"))
    ds.to_parquet(str(tmp_path / "xsum.parquet"))
    from_csv = load_dataset("xsum", "test", path=tmp_path / "xsum.csv", **kw)
    assert from_csv == load_dataset("xsum", "test", path=tmp_path / "xsum.parquet", **kw)
    assert from_csv and all(s.prompt.startswith("Document") for s in from_csv)


def test_online_errors(hf, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="local data set not found"):
        load_dataset("xsum", path=tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported data file type '\.txt'"):
        load_dataset("xsum", path=tmp_path / "x.txt")
    hf.DatasetDict(
        train=hf.Dataset.from_dict({"document": ["d"], "summary": ["s"]}),
        validation=hf.Dataset.from_dict({"document": ["e"], "summary": ["t"]}),
    ).save_to_disk(tmp_path / "dd")
    with pytest.raises(ValueError, match=r"has no 'test' split .*train, validation"):
        load_dataset("xsum", "test", path=tmp_path / "dd")
    assert load_dataset("xsum", "validation", path=tmp_path / "dd") == [Sample("e", ("t",), {})]
    with pytest.raises(ValueError, match="prompt_words must be a positive integer"):
        load_dataset("imdb", prompt_words=0, path=tmp_path / "dd")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install lm-gym\[online\]"):
        load_dataset("imdb", path=tmp_path / "dd")


def test_public_names():
    for name in data.__all__:
        assert getattr(data, name) is not None


def test_unexpected_options():
    with pytest.raises(
        TypeError, match=r"data set 'movie-reviews': .*'foo' \(it takes: max_samples\)"
    ):
        load_dataset("movie-reviews", foo=1)
    with pytest.raises(TypeError, match="files and lists of rows take max_samples only"):
        load_dataset([{"prompt": "a"}], foo=1)


def test_hub_path_calls(hf, monkeypatch):
    """With path=None the loaders ask the hub (faked here) for the right data set, config and split."""
    calls = []
    reviews = hf.Dataset.from_dict({"text": _reviews(100), "label": [0] * 100})

    def fake_load_dataset(hub_id, config=None, *, split, **kwargs):
        calls.append((hub_id, config, split, kwargs))
        if hub_id == "stanfordnlp/imdb":
            return reviews
        if hub_id == "wmt/wmt16":
            return hf.Dataset.from_dict({"translation": [{"en": "Hi.", "de": "Hallo."}]})
        return hf.Dataset.from_dict({"article": ["A b c."], "highlights": ["A."], "id": ["1"]})

    monkeypatch.setattr(hf, "load_dataset", fake_load_dataset)
    train = load_dataset("imdb", "train", load_kwargs={"revision": "main"})
    validation = load_dataset("imdb", "validation")
    assert len(train) + len(validation) == 100 and validation  # validation carved out of "train"
    load_dataset("imdb", "test")
    assert load_dataset("wmt16-de-en", "validation") == [
        Sample("Hi.", ("Hallo.",), {"source_lang": "en", "target_lang": "de"})
    ]
    assert load_dataset("cnn_dailymail", "test")[0].references == ("A.",)
    assert calls == [
        ("stanfordnlp/imdb", None, "train", {"revision": "main"}),
        ("stanfordnlp/imdb", None, "train", {}),
        ("stanfordnlp/imdb", None, "test", {}),
        ("wmt/wmt16", "de-en", "validation", {}),
        ("abisee/cnn_dailymail", "3.0.0", "test", {}),
    ]


def test_lm_gym_offline_puts_datasets_offline(tmp_path) -> None:
    """``LM_GYM_OFFLINE=1`` alone (no ``HF_HUB_OFFLINE``) switches ``datasets`` to offline mode, even
    when it was imported first: a hub data set not in the cache fails at once, naming the
    variable, with no hub retries."""
    import os

    pytest.importorskip("datasets")
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    env.update(LM_GYM_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), LM_GYM_CACHE=str(tmp_path / "c"))
    code = (
        "import datasets\n"
        "from lm_gym.data.online import import_datasets, load_imdb\n"
        "import_datasets()\n"
        "print('offline', datasets.config.HF_HUB_OFFLINE)\n"
        "try:\n"
        "    load_imdb('test', max_samples=1)\n"
        "except ConnectionError as exc:\n"
        "    print('error', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "offline True" in out.stdout, out.stderr
    assert "error 'stanfordnlp/imdb' is not in the local `datasets` cache" in out.stdout
    assert "LM_GYM_OFFLINE=1" in out.stdout and "Retrying" not in out.stderr
