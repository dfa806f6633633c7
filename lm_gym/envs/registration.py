"""Registration of every lm-gym environment with Gymnasium (idempotent).

Entry points are strings and kwargs are JSON-serialisable, so ``gymnasium.make("lm_gym:LMText-v0")``
works in a fresh interpreter (Gymnasium imports ``lm_gym``, which calls :func:`register_envs`), in
subprocesses and in vector envs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym


@dataclass(frozen=True)
class EnvEntry:
    """One registered id.

    :param id: the Gymnasium id.
    :param entry_point: ``"module:Class"``.
    :param kwargs: JSON-serialisable defaults passed to the class.
    :param online: whether the env needs the hub (data or reward model) by default.
    :param summary: one line for tables.
    """

    id: str
    entry_point: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    online: bool = False
    summary: str = ""


_TG = "lm_gym.tasks.text_generation:TextGenerationEnv"
_TR = "lm_gym.tasks.translation:TranslationEnv"
_SU = "lm_gym.tasks.summarization:SummarizationEnv"

ENV_ENTRIES: tuple[EnvEntry, ...] = (
    EnvEntry(
        "LMText-v0", _TG, summary="continue a movie-review opening; reward: positive sentiment"
    ),
    EnvEntry(
        "LMTextIMDB-v0",
        _TG,
        {
            "dataset": "imdb",
            "reward": "sentiment-classifier",
            "reward_kwargs": {"model": "lvwerra/distilbert-imdb", "label": "POSITIVE"},
            "max_prompt_tokens": 64,
        },
        online=True,
        summary="IMDB openings (datasets); reward: DistilBERT-IMDB positive probability",
    ),
    EnvEntry("LMTranslate-v0", _TR, summary="English to German UI strings (Django); reward: chrF"),
    EnvEntry(
        "LMTranslateWMT16-v0",
        _TR,
        {"dataset": "wmt16-de-en", "max_prompt_tokens": 128, "max_new_tokens": 96},
        online=True,
        summary="WMT16 English to German (datasets); reward: chrF",
    ),
    EnvEntry(
        "LMTranslateIWSLT-v0",
        _TR,
        {"dataset": "iwslt2017-en-de", "max_prompt_tokens": 128, "max_new_tokens": 96},
        online=True,
        summary="IWSLT 2017 English to German (datasets); reward: chrF",
    ),
    EnvEntry(
        "LMSummarize-v0", _SU, summary="stdlib docstring to its summary line; reward: ROUGE-L"
    ),
    EnvEntry(
        "LMSummarizeCNN-v0",
        _SU,
        {"dataset": "cnn_dailymail", "max_prompt_tokens": 512, "max_new_tokens": 64},
        online=True,
        summary="CNN/DailyMail (datasets); reward: ROUGE-L",
    ),
    EnvEntry(
        "LMSummarizeXSum-v0",
        _SU,
        {"dataset": "xsum", "max_prompt_tokens": 512, "max_new_tokens": 48},
        online=True,
        summary="XSum (datasets); reward: ROUGE-L",
    ),
    EnvEntry(
        "LMCountUp-v0",
        "lm_gym.tasks.verifiable:CountUpEnv",
        summary="write 5 increasing numbers above a start; reward: exact check",
    ),
    EnvEntry(
        "LMAlliteration-v0",
        "lm_gym.tasks.verifiable:AlliterationEnv",
        summary="write words starting with a given letter; reward: exact check",
    ),
    EnvEntry(
        "LMToy-v0",
        "lm_gym.tasks.toy:LMToyEnv",
        summary="two contexts, two words (5-word vocabulary); per-step reward; exact solution",
    ),
    EnvEntry(
        "LMWordSort-v0",
        "lm_gym.tasks.toy:LMWordSortEnv",
        summary="write 3 words in alphabetical order (5-word vocabulary); exact solution",
    ),
    EnvEntry(
        "LMGuessNumber-v0",
        "lm_gym.tasks.guess_number:LMGuessNumberEnv",
        summary="multi-turn: guess a number 1-100, partner says higher/lower; win reward, turn cost",
    ),
    EnvEntry(
        "LMGuessNumberWords-v0",
        "lm_gym.tasks.guess_number:LMGuessNumberWordsEnv",
        summary="multi-turn: guess 1-7 in 3 turns (12-word vocabulary); exact optimum: binary search",
    ),
    EnvEntry(
        "LMDialogue-v0",
        "lm_gym.tasks.dialogue:LMDialogueEnv",
        summary="multi-turn: answer chatterbot-corpus conversations; per-turn ROUGE-L + length",
    ),
    EnvEntry(
        "LMDialogueDailyDialog-v0",
        "lm_gym.tasks.dialogue:LMDialogueEnv",
        {"dataset": "daily_dialog"},
        online=True,
        summary="multi-turn: answer DailyDialog conversations (datasets); per-turn ROUGE-L + length",
    ),
    EnvEntry(
        "LMTargetWord-v0",
        "lm_gym.tasks.target_word:LMTargetWordEnv",
        summary="multi-turn: make a SmolLM2-135M partner say a target word; win reward, turn cost",
    ),
)


def register_envs() -> list[str]:
    """Register every id of :data:`ENV_ENTRIES` that is not registered yet.

    :return: the ids registered by this call (empty when all were already there).
    """
    added = []
    for entry in ENV_ENTRIES:
        if entry.id in gym.registry:
            continue
        gym.register(id=entry.id, entry_point=entry.entry_point, kwargs=dict(entry.kwargs))
        added.append(entry.id)
    return added


def list_envs(include_online: bool = True) -> list[EnvEntry]:
    """The registered lm-gym environments, offline ones first.

    :param include_online: include the ids that need the hub.
    """
    return [e for e in ENV_ENTRIES if include_online or not e.online]


def default_tokenizer(env_id: str, env_kwargs: dict[str, Any] | None = None) -> str:
    """The tokenizer name that ``gymnasium.make(env_id, **env_kwargs)`` uses.

    :param env_id: a registered id (``"LMText-v0"`` or ``"lm_gym:LMText-v0"``).
    :param env_kwargs: keyword arguments of ``gymnasium.make``.
    :raises gymnasium.error.Error: the id is not registered.
    """
    if ":" in env_id:  # "module:EnvId", as gymnasium.make accepts: the module registers the id
        import importlib

        module, env_id = env_id.split(":", 1)
        importlib.import_module(module)
    spec = gym.spec(env_id)
    kwargs = {**spec.kwargs, **(env_kwargs or {})}
    if "tokenizer" in kwargs:
        return str(kwargs["tokenizer"])
    if "tokenizer" in dict(kwargs.get("config") or {}):
        return str(kwargs["config"]["tokenizer"])
    entry = spec.entry_point
    if isinstance(entry, str):
        import importlib

        module, name = entry.split(":")
        entry = getattr(importlib.import_module(module), name)
    default_config = getattr(entry, "default_config", None)
    return str(default_config().get("tokenizer", "gpt2")) if default_config else "gpt2"


def env_kwargs_for_model(
    env_id: str, model: Any, env_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``env_kwargs`` with the env's tokenizer set to ``model``'s, so that the action space is the
    model's vocabulary.

    Only envs that use GPT-2's tokenizer by default follow the model (the word-level envs keep
    their own small vocabulary: a built-in model is built for it, see
    ``agents.common.model_for_env``). A tokenizer that the caller already set is kept as given.

    :param env_id: a registered id.
    :param model: a model name, folder or ``.gguf`` path (anything else: ``env_kwargs`` unchanged).
    :param env_kwargs: keyword arguments of ``gymnasium.make``.
    :return: a new dict.
    """
    from lm_gym.models import tokenizer_name_for_model

    out = dict(env_kwargs or {})
    if not isinstance(model, str) or "tokenizer" in out:
        return out
    if default_tokenizer(env_id, out) != "gpt2":
        return out
    tokenizer = tokenizer_name_for_model(model)
    if tokenizer != "gpt2":
        out["tokenizer"] = tokenizer
    return out
