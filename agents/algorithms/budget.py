"""Value bootstrapping at the token budget: the state an lm-gym episode reaches there is terminal.

stable-baselines3 reads a truncated episode (``info["TimeLimit.truncated"]``, which its vector envs
set from Gymnasium's ``truncated``) as one cut by a time limit that the task does not know about,
and bootstraps it: the on-policy algorithms (PPO, A2C, sb3-contrib's TRPO and MaskablePPO) add
``gamma * V(terminal_observation)`` to the last reward, one extra value forward per such episode,
and DQN's replay buffer keeps the transition non-terminal (its target bootstraps ``max Q``).

An lm-gym episode is truncated when it reaches ``max_new_tokens``. That budget is part of the task:
the text has just been scored and nothing can follow, so the state reached is terminal and its
value is 0; bootstrapping it adds a value the critic has never been trained on (terminal windows
are never in the buffer) to the return, and costs a forward. lm-gym's envs mark it:
``info["token_budget_reached"]`` (:data:`lm_gym.envs.core.TOKEN_BUDGET_KEY`) on the episode's last
step. The flag is a plain ``info`` entry, so it reaches the agent through Gymnasium wrappers and
SB3's ``DummyVecEnv``/``SubprocVecEnv`` unchanged.

Measured on the toy ``LMCountUp-v0`` (tiny random GPT-2, EpisodePPO, lr 3e-3, clip 0.4, 4096
steps, 5 seeds): the bootstrap is not neutral. The critic's value of the terminal window tends to
follow the reward, so ``gamma * V(s_T)`` acts as a learned shaping bonus, and with SB3's
per-minibatch advantage normalisation it kept PPO stable once every episode scored 1, where
without it the advantages shrink to noise that normalisation scales up (3 of 5 seeds collapsed
after reaching 1.0); with ``normalize_advantage=False`` both settings held 1.0 in 3 of 3 seeds.
The bias is the critic's own extrapolation to states it is never trained on, which the actor can
learn to exploit; TRL's PPO, too, takes the value after the last generated token as 0.

The agents here treat such a truncation as terminal; any other truncation (a ``TimeLimit`` wrapper
shorter than the budget) keeps SB3's bootstrap:

* :class:`agents.algorithms.ppo.EpisodePPO` by default (``bootstrap_at_budget=False``; ``True``
  restores SB3's behaviour).
* any other SB3 algorithm on a vector env wrapped in :class:`TerminalAtBudgetVecEnv`, which sets
  ``info["TimeLimit.truncated"] = False`` at the budget (the zoo's ``a2c``, ``trpo``, ``nlpo`` and
  ``dqn`` agents do this unless made with ``bootstrap_at_budget=True``)::

      from stable_baselines3 import A2C
      from agents.algorithms.budget import TerminalAtBudgetVecEnv
      from agents.networks.policies import LMActorCriticPolicy

      model = A2C(LMActorCriticPolicy, TerminalAtBudgetVecEnv(venv), ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from lm_gym.envs.core import TOKEN_BUDGET_KEY

__all__ = ["TOKEN_BUDGET_KEY", "TerminalAtBudgetVecEnv", "bootstraps", "reached_token_budget"]

#: SB3's info key of a truncation that it bootstraps
TIME_LIMIT_KEY = "TimeLimit.truncated"


def reached_token_budget(info: Mapping[str, Any]) -> bool:
    """Whether an episode-end ``info`` says that the episode used its whole token budget.

    :param info: one env's ``info`` of a step.
    """
    return bool(info.get(TOKEN_BUDGET_KEY, False))


def bootstraps(info: Mapping[str, Any], done: bool, bootstrap_at_budget: bool = False) -> bool:
    """Whether the step of one env ends a truncated episode whose last reward gets
    ``gamma * V(terminal_observation)``: SB3's rule (done, a terminal observation and
    ``info["TimeLimit.truncated"]``), except at the token budget unless ``bootstrap_at_budget``.

    :param info: the env's ``info`` of the step (from an SB3 vector env).
    :param done: the env's ``done`` of the step.
    :param bootstrap_at_budget: bootstrap at the token budget too (SB3's behaviour).
    """
    if not (
        done and info.get("terminal_observation") is not None and info.get(TIME_LIMIT_KEY, False)
    ):
        return False
    return bootstrap_at_budget or not reached_token_budget(info)


class TerminalAtBudgetVecEnv(VecEnvWrapper):
    """Makes any SB3 algorithm treat an lm-gym episode that reached its token budget as terminal.

    At such an episode end it sets ``info["TimeLimit.truncated"] = False``, the key SB3 reads to
    bootstrap (on-policy ``collect_rollouts``, DQN's replay buffer); the observation, reward,
    ``done``, ``info["terminal_observation"]`` and ``info["token_budget_reached"]`` are unchanged,
    and other truncations keep their bootstrap. Put it anywhere in the chain of vector wrappers.

    :param venv: the vector env of lm-gym envs.
    """

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)

    def reset(self) -> Any:
        """Reset every env."""
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        """Step the envs; clear ``TimeLimit.truncated`` of the episodes that reached the budget."""
        obs, rewards, dones, infos = self.venv.step_wait()
        for i in np.flatnonzero(dones):
            if infos[i].get(TIME_LIMIT_KEY) and reached_token_budget(infos[i]):
                infos[i][TIME_LIMIT_KEY] = False
        return obs, rewards, dones, infos
