"""Word-level tokenizers with a handful of words, for tasks small enough to solve exactly.

A word-level tokenizer maps each whitespace-separated word to one id, so that the action space
``Discrete(V)`` of an env is the handful of words of the task (plus an end-of-sequence token) and
tabular agents act over the whole vocabulary. It is built with the ``tokenizers`` library (a
``WordLevel`` model with a whitespace pre-tokenizer) and wrapped as a
:class:`transformers.PreTrainedTokenizerFast`, so envs, reward scorers and GPT-2 policies use it
like any other tokenizer::

    from lm_gym.models import load_tokenizer
    import lm_gym.tasks.word_tokenizer  # registers the built-in names

    tok = load_tokenizer("lm-toy-words")
    len(tok)                                    # 5
    tok.encode("x1 v2", add_special_tokens=False)  # [0, 3]

The ids follow the order of the words; the EOS token (``"<eos>"``) comes last, id ``V - 1``, as
:func:`lm_gym.models.builtin_config` expects for a small vocabulary, and it is also the pad token.
There is no unknown-word token (it would be one more action): encoding a word outside the
vocabulary raises an ``Exception`` from ``tokenizers``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lm_gym.models import register_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

#: The EOS (and pad) token of every word-level tokenizer built here.
WORD_EOS = "<eos>"

#: Built-in word-level tokenizers: registered name -> words (the EOS token is appended).
WORD_VOCABULARIES: dict[str, tuple[str, ...]] = {
    "lm-toy-words": ("x1", "x2", "v1", "v2"),
    "lm-sort-words": ("ant", "bee", "cat", "dog"),
}


def build_word_tokenizer(
    words: Sequence[str], eos_token: str = WORD_EOS
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is ``words`` followed by ``eos_token``.

    :param words: distinct words without whitespace; word ``i`` gets id ``i``.
    :param eos_token: the end-of-sequence token, id ``len(words)``; also the pad token.
    :return: a fast tokenizer with ``len(tokenizer) == len(words) + 1``. Decoding joins the words
        with single spaces.
    :raises ValueError: the words are empty, repeated, contain whitespace, or include ``eos_token``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(words)
    if not words:
        raise ValueError("A word-level tokenizer needs at least one word.")
    if len(set(words)) != len(words):
        raise ValueError(f"Words must be distinct, got {words}.")
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise ValueError(f"Words must be non-empty and contain no whitespace: {bad}.")
    if eos_token in words:
        raise ValueError(f"{eos_token!r} is the EOS token; it cannot also be a word.")
    vocab = {w: i for i, w in enumerate([*words, eos_token])}
    # unk_token names a token that is not in the vocabulary: unknown words raise instead of
    # becoming an extra action.
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=eos_token, pad_token=eos_token, bos_token=eos_token
    )
    return tok


def register_word_tokenizer(name: str, words: Sequence[str], *, overwrite: bool = False) -> None:
    """Register a word-level tokenizer, so that ``tokenizer=name`` works in every env.

    :param name: the name envs use (see :func:`lm_gym.models.register_tokenizer`).
    :param words: the vocabulary, without the EOS token (appended as the last id).
    :param overwrite: replace an existing registration of ``name``.
    """
    register_tokenizer(
        name, functools.partial(build_word_tokenizer, tuple(words)), overwrite=overwrite
    )


for _name, _words in WORD_VOCABULARIES.items():
    register_word_tokenizer(_name, _words, overwrite=True)
