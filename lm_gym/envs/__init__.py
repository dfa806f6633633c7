"""The token-level environment core, registration and wrappers."""

from lm_gym.envs.core import EpisodeError, RenderModeError, TextEnv
from lm_gym.envs.registration import ENV_ENTRIES, EnvEntry, list_envs, register_envs

__all__ = [
    "ENV_ENTRIES",
    "EnvEntry",
    "EpisodeError",
    "RenderModeError",
    "TextEnv",
    "list_envs",
    "register_envs",
]
