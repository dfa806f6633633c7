"""Tabular agents for small-vocabulary text envs: Q-learning and REINFORCE.

The state of a tabular agent is the tuple of real token ids of the observation (the ids where
``attention_mask == 1``, see :func:`agents.tabular.mdp.state_key`); its actions are the whole
vocabulary or a restricted set of token ids (``actions=[...]``). Tables grow as states are met, so
no model of the env is needed; on the envs of :mod:`lm_gym.tasks.toy` the results can be checked
against the exact solution of :mod:`agents.tabular.mdp`.

Every agent follows the protocol of the agent zoo (a subset of stable-baselines3's)::

    agent = QLearning("LMToy-v0", exploration="softmax", seed=0)
    agent.learn(total_timesteps=2_000)
    action, _ = agent.predict(obs, deterministic=True)
    agent.save("q.pkl")
    agent = QLearning.load("q.pkl")

``learn`` takes an optional ``callback(locals_, globals_) -> bool`` (stable-baselines3's function
callback convention), called after every env step; returning ``False`` stops training.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.common.options import constructor_options
from agents.tabular.mdp import StateKey, state_key

#: A function callback: ``callback(locals_, globals_) -> bool | None``; ``False`` stops learning.
Callback = Callable[[dict[str, Any], dict[str, Any]], Any]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def _linear(start: float, end: float, fraction: float, progress: float) -> float:
    """``start`` moving linearly to ``end`` over the first ``fraction`` of training."""
    if fraction <= 0:
        return end
    return start + (end - start) * min(1.0, progress / fraction)


class TabularAgent:
    """Shared machinery: the env loop, state keys, restricted actions, saving and loading.

    :param env: env id or instance with the lm-gym observation (``input_ids``, ``attention_mask``)
        and a ``Discrete`` action space; ``None`` only for a loaded agent used to predict.
    :param gamma: discount factor.
    :param actions: the token ids the agent may choose (default: the whole vocabulary).
    :param seed: seeds the agent's random draws and the env's first reset.
    """

    def __init__(
        self,
        env: str | gym.Env | None,
        gamma: float = 1.0,
        actions: Sequence[int] | None = None,
        seed: int | None = None,
        n_actions: int | None = None,
    ) -> None:
        if isinstance(env, str):
            import lm_gym  # noqa: F401  (registers the ids)

            env = gym.make(env)
        self.env = env
        if env is not None:
            if not isinstance(env.action_space, gym.spaces.Discrete):
                raise TypeError(f"{type(self).__name__} needs a Discrete action space.")
            n_actions = int(env.action_space.n)
        if n_actions is None:
            raise ValueError("Give an env (or n_actions for a loaded agent).")
        self.n_actions = n_actions
        self.actions = np.arange(n_actions) if actions is None else np.asarray(actions, np.int64)
        if self.actions.ndim != 1 or self.actions.size == 0:
            raise ValueError("actions must be a non-empty list of token ids.")
        if self.actions.min() < 0 or self.actions.max() >= n_actions:
            raise ValueError(f"actions must be token ids in [0, {n_actions}).")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}.")
        self.gamma = float(gamma)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.num_timesteps = 0
        #: Return and length of every finished training episode, in order.
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self._total_timesteps = 1
        self._progress_steps = 0
        self._reset_seed = seed

    # -- the agent's rule (subclasses) ------------------------------------------------------------

    def action_probabilities(self, key: StateKey, explore: bool = True) -> np.ndarray:
        """The probabilities of the agent's actions (indices into ``self.actions``) in a state.

        :param key: the state.
        :param explore: the behaviour policy (``True``) or the deterministic-evaluation one.
        """
        raise NotImplementedError

    def greedy_index(self, key: StateKey) -> int:
        """The index into ``self.actions`` of the agent's best action (lowest on ties)."""
        raise NotImplementedError

    def _observe(
        self, key: StateKey, index: int, reward: float, next_key: StateKey | None, done: bool
    ) -> None:
        """Learn from one transition (``next_key`` is ``None`` when ``done``)."""
        raise NotImplementedError

    def _tables(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_tables(self, tables: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- protocol ---------------------------------------------------------------------------------

    @property
    def progress(self) -> float:
        """The fraction of the current ``learn`` call's timesteps done, in [0, 1]."""
        return min(1.0, self._progress_steps / self._total_timesteps)

    def learn(
        self,
        total_timesteps: int,
        callback: Callback | None = None,
        reset_num_timesteps: bool = True,
    ) -> TabularAgent:
        """Run the env for ``total_timesteps`` steps, learning as it goes.

        An episode cut by the end of training is dropped (REINFORCE learns from whole episodes).

        :param total_timesteps: env steps to run.
        :param callback: ``callback(locals_, globals_)`` after each step; ``False`` stops.
        :param reset_num_timesteps: restart :attr:`num_timesteps` at 0.
        :return: the agent.
        """
        if self.env is None:
            raise ValueError("This agent has no env: pass one to load(path, env=...).")
        if reset_num_timesteps:
            self.num_timesteps = 0
        self._total_timesteps = max(1, int(total_timesteps))
        self._progress_steps = 0
        obs, _ = self.env.reset(seed=self._reset_seed)
        self._reset_seed = None
        key = state_key(obs)
        episode_return, episode_length = 0.0, 0
        for _ in range(int(total_timesteps)):
            probs = self.action_probabilities(key, explore=True)
            index = int(self.rng.choice(len(probs), p=probs))
            obs, reward, terminated, truncated, info = self.env.step(int(self.actions[index]))
            done = bool(terminated or truncated)
            next_key = None if done else state_key(obs)
            self._observe(key, index, float(reward), next_key, done)
            self.num_timesteps += 1
            self._progress_steps += 1
            episode_return += float(reward)
            episode_length += 1
            if done:
                self.episode_returns.append(episode_return)
                self.episode_lengths.append(episode_length)
                episode_return, episode_length = 0.0, 0
                obs, _ = self.env.reset()
                next_key = state_key(obs)
            if callback is not None and callback(locals(), globals()) is False:
                break
            assert next_key is not None
            key = next_key
        self._end_of_learning()
        return self

    def _end_of_learning(self) -> None:
        """Hook at the end of ``learn`` (drop an unfinished episode)."""

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Any, None]:
        """The action for an observation (or a batch, with a leading batch axis).

        :param observation: ``{"input_ids", "attention_mask"}`` of one env or a batch.
        :param state: unused (stable-baselines3's recurrent state).
        :param episode_start: unused.
        :param deterministic: the agent's best action instead of a draw from its policy.
        :return: ``(action, None)``: an ``int`` token id, or an ``(n,)`` array for a batch.
        """
        ids = np.asarray(observation["input_ids"])
        if ids.ndim == 2:
            mask = np.asarray(observation["attention_mask"])
            acts = [
                self._act({"input_ids": i, "attention_mask": m}, deterministic)
                for i, m in zip(ids, mask)
            ]
            return np.asarray(acts, dtype=np.int64), None
        return self._act(observation, deterministic), None

    def _act(self, observation: dict[str, np.ndarray], deterministic: bool) -> int:
        key = state_key(observation)
        if deterministic:
            return int(self.actions[self.greedy_index(key)])
        probs = self.action_probabilities(key, explore=False)
        return int(self.actions[self.rng.choice(len(probs), p=probs)])

    def get_env(self) -> gym.Env | None:
        """The env the agent learns on."""
        return self.env

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments (without the env), from the attributes of the same names."""
        names = constructor_options(type(self), skip=("env", "n_actions"))
        out = {name: getattr(self, name) for name in names}
        out["actions"] = [int(a) for a in self.actions]
        return out

    def save(self, path: str | Path) -> None:
        """Write the hyperparameters and tables to ``path`` (a pickle).

        :param path: the file to write.
        """
        data = {
            "class": self._kind(),
            "hyperparameters": self.hyperparameters(),
            "n_actions": self.n_actions,
            "num_timesteps": self.num_timesteps,
            "tables": self._tables(),
            "env_id": getattr(getattr(self.env, "spec", None), "id", None),
        }
        Path(path).write_bytes(pickle.dumps(data))

    @classmethod
    def _kind(cls) -> str:
        """The agent class of this module that ``cls`` is (subclasses elsewhere share its files)."""
        for klass in cls.__mro__:
            if klass.__module__ == __name__ and klass is not TabularAgent:
                return klass.__name__
        return cls.__name__

    @classmethod
    def load(cls, path: str | Path, env: str | gym.Env | None = None) -> TabularAgent:
        """Read an agent written by :meth:`save`.

        Only load files you trust: the format is a pickle.

        :param path: the file.
        :param env: the env to continue learning on; default: the saved env id, if any.
        """
        data = pickle.loads(Path(path).read_bytes())
        if data["class"] != cls._kind():
            raise ValueError(f"{path} holds a {data['class']}, not a {cls._kind()}.")
        if env is None:
            env = data["env_id"]
        agent = cls(env, n_actions=data["n_actions"], **data["hyperparameters"])
        agent._set_tables(data["tables"])
        agent.num_timesteps = int(data["num_timesteps"])
        return agent


class QLearning(TabularAgent):
    """Tabular Q-learning with epsilon-greedy or softmax (Boltzmann) exploration.

    Update: ``Q(s, a) += lr * (r + gamma * max_a' Q(s', a') - Q(s, a))`` (no bootstrap at the end).
    The exploration rate (epsilon, or the softmax temperature) moves linearly from its initial to
    its final value over the first ``exploration_fraction`` of each ``learn`` call.

    :param env: env id or instance.
    :param learning_rate: step size in (0, 1]; 1 is exact for deterministic envs.
    :param gamma: discount factor.
    :param exploration: ``"epsilon"`` (epsilon-greedy, ties broken at random) or ``"softmax"``
        (actions drawn with probability proportional to ``exp(Q / temperature)``).
    :param exploration_initial: initial epsilon or temperature.
    :param exploration_final: final epsilon or temperature (also used by
        ``predict(deterministic=False)``).
    :param exploration_fraction: fraction of training over which it decays.
    :param initial_q: the value of unseen state-action pairs.
    :param actions: restrict the agent to these token ids.
    :param seed: random seed.
    """

    def __init__(
        self,
        env: str | gym.Env | None,
        learning_rate: float = 0.5,
        gamma: float = 1.0,
        exploration: str = "epsilon",
        exploration_initial: float = 1.0,
        exploration_final: float = 0.05,
        exploration_fraction: float = 0.5,
        initial_q: float = 0.0,
        actions: Sequence[int] | None = None,
        seed: int | None = None,
        n_actions: int | None = None,
    ) -> None:
        super().__init__(env, gamma=gamma, actions=actions, seed=seed, n_actions=n_actions)
        if exploration not in ("epsilon", "softmax"):
            raise ValueError(f"exploration must be 'epsilon' or 'softmax', not {exploration!r}.")
        if not 0.0 < learning_rate <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate}.")
        if exploration_initial < 0 or exploration_final < 0:
            raise ValueError("Exploration rates must be non-negative.")
        if exploration == "softmax" and min(exploration_initial, exploration_final) <= 0:
            raise ValueError("Softmax temperatures must be positive.")
        self.learning_rate = float(learning_rate)
        self.exploration = exploration
        self.exploration_initial = float(exploration_initial)
        self.exploration_final = float(exploration_final)
        self.exploration_fraction = float(exploration_fraction)
        self.initial_q = float(initial_q)
        self.q: dict[StateKey, np.ndarray] = {}

    @property
    def exploration_rate(self) -> float:
        """The current epsilon or temperature."""
        return _linear(
            self.exploration_initial,
            self.exploration_final,
            self.exploration_fraction,
            self.progress,
        )

    def q_values(self, key: StateKey) -> np.ndarray:
        """The Q values of the agent's actions in a state (a view into the table).

        :param key: the state.
        """
        row = self.q.get(key)
        if row is None:
            row = self.q[key] = np.full(len(self.actions), self.initial_q)
        return row

    def action_probabilities(self, key: StateKey, explore: bool = True) -> np.ndarray:
        rate = self.exploration_rate if explore else self.exploration_final
        q = self.q_values(key)
        if self.exploration == "softmax":
            return _softmax(q / rate)
        best = np.flatnonzero(q == q.max())
        probs = np.full(len(q), rate / len(q))
        probs[best] += (1.0 - rate) / len(best)
        return probs

    def greedy_index(self, key: StateKey) -> int:
        return int(np.argmax(self.q_values(key)))

    def _observe(
        self, key: StateKey, index: int, reward: float, next_key: StateKey | None, done: bool
    ) -> None:
        if done:
            target = reward
        else:
            assert next_key is not None
            target = reward + self.gamma * float(self.q_values(next_key).max())
        row = self.q_values(key)
        row[index] += self.learning_rate * (target - row[index])

    def q_table(self, states: Sequence[StateKey]) -> np.ndarray:
        """``(len(states), V)`` Q values over the whole vocabulary (``nan`` outside ``actions``).

        :param states: state keys (e.g. ``TabularMDP.states``).
        """
        out = np.full((len(states), self.n_actions), np.nan)
        for i, key in enumerate(states):
            out[i, self.actions] = self.q.get(key, np.full(len(self.actions), self.initial_q))
        return out

    def _tables(self) -> dict[str, Any]:
        return {"q": {k: v.copy() for k, v in self.q.items()}}

    def _set_tables(self, tables: dict[str, Any]) -> None:
        self.q = {tuple(k): np.asarray(v, dtype=np.float64) for k, v in tables["q"].items()}


class Reinforce(TabularAgent):
    """REINFORCE (Monte Carlo policy gradient) with a tabular softmax policy.

    The policy is ``pi(a | s) = softmax(theta[s])``. After each episode, for every step ``t``:
    ``theta[s_t] += lr * gamma**t * (G_t - b(s_t)) * (onehot(a_t) - pi(. | s_t))``, where ``G_t`` is
    the return from step ``t``. With ``baseline=True``, ``b`` is a tabular state-value estimate
    updated by ``b(s_t) += baseline_learning_rate * (G_t - b(s_t))`` (Sutton and Barto, 13.4);
    without it, ``b = 0``.

    :param env: env id or instance.
    :param learning_rate: policy step size.
    :param gamma: discount factor.
    :param baseline: subtract a learned state-value baseline.
    :param baseline_learning_rate: step size of the baseline.
    :param actions: restrict the agent to these token ids.
    :param seed: random seed.
    """

    def __init__(
        self,
        env: str | gym.Env | None,
        learning_rate: float = 0.5,
        gamma: float = 1.0,
        baseline: bool = True,
        baseline_learning_rate: float = 0.2,
        actions: Sequence[int] | None = None,
        seed: int | None = None,
        n_actions: int | None = None,
    ) -> None:
        super().__init__(env, gamma=gamma, actions=actions, seed=seed, n_actions=n_actions)
        if learning_rate <= 0 or baseline_learning_rate <= 0:
            raise ValueError("Learning rates must be positive.")
        self.learning_rate = float(learning_rate)
        self.baseline = bool(baseline)
        self.baseline_learning_rate = float(baseline_learning_rate)
        self.theta: dict[StateKey, np.ndarray] = {}
        self.values: dict[StateKey, float] = {}
        self._episode: list[tuple[StateKey, int, float]] = []

    def logits(self, key: StateKey) -> np.ndarray:
        """The policy's logits over the agent's actions in a state (a view into the table).

        :param key: the state.
        """
        row = self.theta.get(key)
        if row is None:
            row = self.theta[key] = np.zeros(len(self.actions))
        return row

    def action_probabilities(self, key: StateKey, explore: bool = True) -> np.ndarray:
        return _softmax(self.logits(key))

    def greedy_index(self, key: StateKey) -> int:
        return int(np.argmax(self.logits(key)))

    def _observe(
        self, key: StateKey, index: int, reward: float, next_key: StateKey | None, done: bool
    ) -> None:
        self._episode.append((key, index, reward))
        if not done:
            return
        ret = 0.0
        returns = []
        for _, _, r in reversed(self._episode):
            ret = r + self.gamma * ret
            returns.append(ret)
        returns.reverse()
        for t, ((s, a, _), g_t) in enumerate(zip(self._episode, returns)):
            advantage = g_t
            if self.baseline:
                b = self.values.get(s, 0.0)
                advantage = g_t - b
                self.values[s] = b + self.baseline_learning_rate * (g_t - b)
            logits = self.logits(s)
            grad = -_softmax(logits)
            grad[a] += 1.0
            logits += self.learning_rate * self.gamma**t * advantage * grad
        self._episode = []

    def _end_of_learning(self) -> None:
        self._episode = []

    def _tables(self) -> dict[str, Any]:
        return {"theta": {k: v.copy() for k, v in self.theta.items()}, "values": dict(self.values)}

    def _set_tables(self, tables: dict[str, Any]) -> None:
        self.theta = {tuple(k): np.asarray(v, dtype=np.float64) for k, v in tables["theta"].items()}
        self.values = {tuple(k): float(v) for k, v in tables["values"].items()}
