"""lm-gym: token-level reinforcement learning on language models, as Gymnasium environments.

``import lm_gym`` registers every environment (idempotently)::

    import gymnasium as gym
    env = gym.make("lm_gym:LMText-v0")   # works with nothing imported first

See :func:`lm_gym.envs.list_envs` for the ids. This package never imports stable-baselines3.
"""

from lm_gym.envs.registration import ENV_ENTRIES, list_envs, register_envs

# the task modules that register their own scorers: every scorer name is known after import lm_gym
from lm_gym.tasks import toy as _toy  # noqa: F401
from lm_gym.tasks import verifiable as _verifiable  # noqa: F401

__version__ = "0.1.0"

register_envs()

__all__ = ["ENV_ENTRIES", "__version__", "list_envs", "register_envs"]
