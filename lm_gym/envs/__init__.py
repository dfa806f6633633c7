"""The token-level environment core, registration and wrappers."""

from lm_gym.envs.core import EpisodeError, RenderModeError, TextEnv
from lm_gym.envs.registration import (
    ENV_ENTRIES,
    EnvEntry,
    default_tokenizer,
    env_kwargs_for_model,
    list_envs,
    register_envs,
)

__all__ = [
    "ENV_ENTRIES",
    "EnvEntry",
    "EpisodeError",
    "RenderModeError",
    "TextEnv",
    "default_tokenizer",
    "env_kwargs_for_model",
    "list_envs",
    "register_envs",
]
