"""Tabular agents and exact solvers for the small envs of :mod:`lm_gym.tasks.toy`.

* :mod:`agents.tabular.learning`: tabular Q-learning and REINFORCE (``QLearning``, ``Reinforce``).
* :mod:`agents.tabular.mdp`: the env as an explicit MDP; value and policy iteration, Monte Carlo
  evaluation, the optimal return.
* :mod:`agents.tabular.belief`: the belief MDP of a multi-turn game with a hidden partner state.

The learners are re-exported here: ``from agents.tabular import QLearning`` (the path of the
former ``agents/tabular.py`` module, which agents saved before the move pickle).
"""

from agents.tabular.learning import QLearning, Reinforce, TabularAgent

__all__ = ["QLearning", "Reinforce", "TabularAgent"]
