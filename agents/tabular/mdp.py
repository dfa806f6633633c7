"""Exact models of small text envs: enumeration, value and policy iteration, Monte Carlo evaluation.

An env whose start distribution is finite (:class:`lm_gym.tasks.toy.FiniteTextEnv`, e.g.
``LMToy-v0`` and ``LMWordSort-v0``) and whose vocabulary is small has an explicit tabular model.
:meth:`TabularMDP.from_env` builds it by *driving the env itself*: from every start prompt it tries
every token in every reachable state (replaying the state's tokens from a reset), so the model
cannot drift from the env's rules. The solvers then give the ground truth that learning agents are
checked against::

    from agents.tabular.mdp import TabularMDP, value_iteration, optimal_return

    mdp = TabularMDP.from_env("LMToy-v0")
    result = value_iteration(mdp)
    result.start_value        # 4.0: the optimal expected return from the start distribution
    optimal_return("LMWordSort-v0")  # 1.0

States are the tuples of real token ids of the observation (the ids where ``attention_mask == 1``),
the same keys the tabular agents of :mod:`agents.tabular.learning` use. The observation window of
these envs holds the whole episode, so the key is the full (Markov) state. Transitions are
deterministic (the env's only randomness is the start prompt); an episode's end, terminated or
truncated, is absorbing with value 0 (the token count is part of the state, so a truncation is
exact, not a time limit hidden from the state).

Policies are arrays ``pi[s, a]`` of action probabilities over the model's states (rows sum to 1).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import gymnasium as gym
import numpy as np

#: A state key: the real token ids of an observation.
StateKey = tuple[int, ...]


def state_key(obs: dict[str, np.ndarray]) -> StateKey:
    """The real token ids of a single observation (where ``attention_mask == 1``), as a tuple.

    :param obs: ``{"input_ids": (L,), "attention_mask": (L,)}`` arrays (any numeric dtype).
    """
    ids = np.asarray(obs["input_ids"]).reshape(-1)
    mask = np.asarray(obs["attention_mask"]).reshape(-1)
    return tuple(int(i) for i in ids[mask > 0.5])


def _make_env(env: str | gym.Env) -> gym.Env:
    if isinstance(env, str):
        import lm_gym  # noqa: F401  (registers the ids)

        return gym.make(env)
    return env


@dataclass
class TabularMDP:
    """An explicit deterministic MDP over token sequences.

    :param states: state keys; state ``s`` is ``states[s]``.
    :param n_actions: A, the vocabulary size.
    :param next_state: ``(S, A)`` int array: the next state's index, ``-1`` when the episode ends.
    :param reward: ``(S, A)`` float array: the reward of the transition.
    :param done: ``(S, A)`` bool array: whether the transition ends the episode.
    :param start: ``(S,)`` float array: the start distribution.
    :param observations: ``(S, L)`` ids and masks of one observation of each state (for agents'
        ``predict``).
    :param gamma: the env's discount (solvers take it as their default).
    """

    states: list[StateKey]
    n_actions: int
    next_state: np.ndarray
    reward: np.ndarray
    done: np.ndarray
    start: np.ndarray
    observations: dict[str, np.ndarray]
    gamma: float = 1.0
    index: dict[StateKey, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {key: i for i, key in enumerate(self.states)}

    @property
    def n_states(self) -> int:
        """S, the number of non-terminal states."""
        return len(self.states)

    @classmethod
    def from_env(
        cls,
        env: str | gym.Env,
        start_prompts: Sequence[tuple[str, float]] | None = None,
        *,
        max_states: int = 200_000,
    ) -> TabularMDP:
        """Enumerate the reachable states of an env by trying every action in every state.

        :param env: an env id or instance whose ``reset(options={"prompt": p})`` starts from prompt
            ``p`` and whose transitions are deterministic given the prompt.
        :param start_prompts: ``[(prompt, probability), ...]``; default: the env's
            ``start_distribution()``.
        :param max_states: refuse to go beyond this many states (the vocabulary may be too big).
        :return: the model, states in breadth-first order from the starts.
        :raises ValueError: too many states, or two different histories show the same observation
            (the observation would not be a Markov state).
        """
        base = _make_env(env).unwrapped
        if start_prompts is None:
            if not hasattr(base, "start_distribution"):
                raise ValueError(
                    f"{type(base).__name__} has no start_distribution(); pass start_prompts."
                )
            start_prompts = base.start_distribution()
        n_actions = int(cast(gym.spaces.Discrete, base.action_space).n)
        keys: list[StateKey] = []
        index: dict[StateKey, int] = {}
        origin: list[tuple[str, tuple[int, ...]]] = []  # (prompt, tokens) reaching each state
        obs_ids: list[np.ndarray] = []
        obs_mask: list[np.ndarray] = []
        start: dict[int, float] = {}

        def add(obs: dict[str, np.ndarray], prompt: str, tokens: tuple[int, ...]) -> int:
            key = state_key(obs)
            if key in index:
                i = index[key]
                if origin[i] != (prompt, tokens):
                    raise ValueError(
                        f"State aliasing: prompt {origin[i][0]!r} + {origin[i][1]} and prompt "
                        f"{prompt!r} + {tokens} give the same observation {key}."
                    )
                return i
            if len(keys) >= max_states:
                raise ValueError(f"More than max_states={max_states} states: not enumerable.")
            index[key] = len(keys)
            keys.append(key)
            origin.append((prompt, tokens))
            obs_ids.append(np.asarray(obs["input_ids"], dtype=np.int64).copy())
            obs_mask.append(np.asarray(obs["attention_mask"], dtype=np.int64).copy())
            queue.append(index[key])
            return index[key]

        queue: deque[int] = deque()
        for prompt, prob in start_prompts:
            obs, _ = base.reset(options={"prompt": prompt})
            i = add(obs, prompt, ())
            start[i] = start.get(i, 0.0) + float(prob)

        rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        while queue:
            s = queue.popleft()
            prompt, tokens = origin[s]
            nxt = np.full(n_actions, -1, dtype=np.int64)
            rew = np.zeros(n_actions, dtype=np.float64)
            don = np.zeros(n_actions, dtype=bool)
            for a in range(n_actions):
                base.reset(options={"prompt": prompt})
                for t in tokens:
                    base.step(t)
                obs, r, terminated, truncated, _ = base.step(a)
                rew[a] = float(r)
                don[a] = bool(terminated or truncated)
                if not don[a]:
                    nxt[a] = add(obs, prompt, (*tokens, a))
            rows[s] = (nxt, rew, don)

        n = len(keys)
        start_arr = np.zeros(n)
        for i, p in start.items():
            start_arr[i] = p
        if not np.isclose(start_arr.sum(), 1.0):
            raise ValueError(f"Start probabilities sum to {start_arr.sum()}, not 1.")
        return cls(
            states=keys,
            n_actions=n_actions,
            next_state=np.stack([rows[s][0] for s in range(n)]),
            reward=np.stack([rows[s][1] for s in range(n)]),
            done=np.stack([rows[s][2] for s in range(n)]),
            start=start_arr,
            observations={"input_ids": np.stack(obs_ids), "attention_mask": np.stack(obs_mask)},
            gamma=float(getattr(base, "gamma", 1.0)),
        )

    # -- values -----------------------------------------------------------------------------------

    def q_values(self, values: np.ndarray, gamma: float | None = None) -> np.ndarray:
        """``Q[s, a] = r(s, a) + gamma * V[s']`` (``V[s'] = 0`` at the episode's end).

        :param values: ``(S,)`` state values.
        :param gamma: discount (default: the model's).
        """
        g = self.gamma if gamma is None else gamma
        cont = np.where(self.done, 0.0, values[np.maximum(self.next_state, 0)])
        return self.reward + g * cont

    def start_value(self, values: np.ndarray) -> float:
        """The expected value under the start distribution, ``sum_s start[s] V[s]``."""
        return float(self.start @ values)

    def policy_value(
        self,
        policy: np.ndarray,
        gamma: float | None = None,
        method: str = "linear",
        tol: float = 1e-13,
        max_sweeps: int = 100_000,
    ) -> np.ndarray:
        """Exact state values of a policy.

        :param policy: ``(S, A)`` action probabilities.
        :param gamma: discount (default: the model's).
        :param method: ``"linear"`` solves ``(I - gamma P_pi) V = r_pi`` (dense, up to 5000
            states); ``"iterative"`` sweeps the Bellman expectation backup until it stops changing
            (exact after as many sweeps as the longest episode, since token sequences only grow).
        :param tol: ``"iterative"`` stops when the largest change is at most this.
        :param max_sweeps: ``"iterative"`` raises ``RuntimeError`` after this many sweeps.
        :return: ``(S,)`` values.
        """
        g = self.gamma if gamma is None else gamma
        policy = self._check_policy(policy)
        r_pi = (policy * self.reward).sum(axis=1)
        if method == "linear":
            if self.n_states > 5000:
                raise ValueError("method='linear' is limited to 5000 states; use 'iterative'.")
            p_pi = np.zeros((self.n_states, self.n_states))
            rows, cols = np.nonzero(~self.done)
            np.add.at(p_pi, (rows, self.next_state[rows, cols]), policy[rows, cols])
            return np.linalg.solve(np.eye(self.n_states) - g * p_pi, r_pi)
        if method == "iterative":
            values = np.zeros(self.n_states)
            for _ in range(max_sweeps):
                new = (policy * self.q_values(values, g)).sum(axis=1)
                if np.array_equal(new, values) or np.max(np.abs(new - values)) <= tol:
                    return new
                values = new
            raise RuntimeError(
                f"Iterative policy evaluation did not converge in {max_sweeps} sweeps."
            )
        raise ValueError(f"method must be 'linear' or 'iterative', not {method!r}.")

    # -- policies ---------------------------------------------------------------------------------

    def uniform_policy(self, actions: Sequence[int] | None = None) -> np.ndarray:
        """The uniform random policy over ``actions`` (default: the whole vocabulary)."""
        pi = np.zeros((self.n_states, self.n_actions))
        pi[:, list(range(self.n_actions)) if actions is None else list(actions)] = 1.0
        return pi / pi.sum(axis=1, keepdims=True)

    def deterministic_policy(self, actions: Sequence[int] | np.ndarray) -> np.ndarray:
        """The one-hot policy of an action per state.

        :param actions: ``(S,)`` action ids.
        """
        pi = np.zeros((self.n_states, self.n_actions))
        pi[np.arange(self.n_states), np.asarray(actions, dtype=np.int64)] = 1.0
        return pi

    def greedy_policy(self, q: np.ndarray) -> np.ndarray:
        """The deterministic policy of ``argmax_a Q[s, a]`` (lowest id on ties)."""
        return self.deterministic_policy(np.argmax(q, axis=1))

    def policy_of(self, predict: Callable[[dict[str, np.ndarray]], int] | Any) -> np.ndarray:
        """The deterministic policy an agent follows, asked for every state.

        :param predict: an agent with ``predict(obs, deterministic=True) -> (action, state)`` (a
            tabular agent, an SB3 model), asked once with the batch of all states'
            observations; or a function ``obs -> action``, asked state by state.
        :return: ``(S, A)`` one-hot policy.
        """
        if hasattr(predict, "predict"):
            batch = {k: v.copy() for k, v in self.observations.items()}
            actions, _ = predict.predict(batch, deterministic=True)
            actions = np.asarray(actions, dtype=np.int64).reshape(-1)
        else:
            actions = np.array(
                [
                    int(np.asarray(predict({k: v[s].copy() for k, v in self.observations.items()})))
                    for s in range(self.n_states)
                ],
                dtype=np.int64,
            )
        if actions.shape != (self.n_states,):
            raise ValueError(f"Expected {self.n_states} actions, got shape {actions.shape}.")
        return self.deterministic_policy(actions)

    def reachable(self, policy: np.ndarray) -> np.ndarray:
        """``(S,)`` bool: the states visited with positive probability under ``policy``."""
        policy = self._check_policy(policy)
        seen = self.start > 0
        frontier = np.flatnonzero(seen)
        while frontier.size:
            taken = (policy[frontier] > 0) & ~self.done[frontier]
            nxt = np.unique(self.next_state[frontier][taken])
            nxt = nxt[~seen[nxt]]
            seen[nxt] = True
            frontier = nxt
        return seen

    def optimal_actions(self, q_star: np.ndarray, atol: float = 1e-9) -> np.ndarray:
        """``(S, A)`` bool: the actions within ``atol`` of ``max_a Q*[s, a]``."""
        return q_star >= q_star.max(axis=1, keepdims=True) - atol

    def is_optimal(self, policy: np.ndarray, q_star: np.ndarray, atol: float = 1e-9) -> bool:
        """Whether ``policy`` takes only optimal actions in every state it reaches.

        Such a policy attains the optimal value from every start state.

        :param policy: ``(S, A)`` action probabilities.
        :param q_star: ``(S, A)`` optimal action values.
        :param atol: tolerance on Q-value ties.
        """
        policy = self._check_policy(policy)
        reached = self.reachable(policy)
        bad = (policy[reached] > 0) & ~self.optimal_actions(q_star, atol)[reached]
        return not bad.any()

    def _check_policy(self, policy: np.ndarray) -> np.ndarray:
        policy = np.asarray(policy, dtype=np.float64)
        if policy.shape != (self.n_states, self.n_actions):
            raise ValueError(
                f"A policy is an ({self.n_states}, {self.n_actions}) array, got {policy.shape}."
            )
        if np.any(policy < 0) or not np.allclose(policy.sum(axis=1), 1.0):
            raise ValueError("Policy rows must be probabilities summing to 1.")
        return policy


@dataclass(frozen=True)
class Solution:
    """The result of an exact solver.

    :param values: ``(S,)`` optimal state values.
    :param q_values: ``(S, A)`` optimal action values.
    :param policy: ``(S, A)`` a deterministic optimal policy.
    :param start_value: the optimal expected return from the start distribution.
    :param iterations: sweeps (value iteration) or improvement steps (policy iteration).
    """

    values: np.ndarray
    q_values: np.ndarray
    policy: np.ndarray
    start_value: float
    iterations: int


def value_iteration(
    mdp: TabularMDP, gamma: float | None = None, tol: float = 1e-12, max_iterations: int = 100_000
) -> Solution:
    """Bellman optimality backups ``V <- max_a r + gamma V'`` until the largest change is ``<= tol``.

    :param mdp: the model.
    :param gamma: discount in (0, 1] (default: the model's); 1 is fine because every episode ends.
    :param tol: stopping threshold on the sup-norm change.
    :param max_iterations: give up (``RuntimeError``) after this many sweeps.
    """
    g = mdp.gamma if gamma is None else gamma
    values = np.zeros(mdp.n_states)
    for sweep in range(1, max_iterations + 1):
        q = mdp.q_values(values, g)
        new = q.max(axis=1)
        delta = float(np.max(np.abs(new - values))) if mdp.n_states else 0.0
        values = new
        if delta <= tol:
            q = mdp.q_values(values, g)
            return Solution(values, q, mdp.greedy_policy(q), mdp.start_value(values), sweep)
    raise RuntimeError(f"value_iteration did not converge in {max_iterations} sweeps.")


def policy_iteration(
    mdp: TabularMDP,
    gamma: float | None = None,
    method: str = "linear",
    max_iterations: int = 10_000,
    atol: float = 1e-12,
) -> Solution:
    """Exact policy evaluation then greedy improvement, until the policy is stable.

    Starts from the policy that always takes action 0. An action is changed only when another is
    better by more than ``atol``, so ties cannot make it cycle.

    :param mdp: the model.
    :param gamma: discount in (0, 1] (default: the model's).
    :param method: policy evaluation method (see :meth:`TabularMDP.policy_value`).
    :param max_iterations: give up (``RuntimeError``) after this many improvements.
    :param atol: an improvement must gain more than this.
    """
    g = mdp.gamma if gamma is None else gamma
    actions = np.zeros(mdp.n_states, dtype=np.int64)
    rows = np.arange(mdp.n_states)
    for step in range(1, max_iterations + 1):
        values = mdp.policy_value(mdp.deterministic_policy(actions), g, method)
        q = mdp.q_values(values, g)
        best = np.argmax(q, axis=1)
        improve = q[rows, best] > q[rows, actions] + atol
        if not improve.any():
            return Solution(
                values, q, mdp.deterministic_policy(actions), mdp.start_value(values), step
            )
        actions = np.where(improve, best, actions)
    raise RuntimeError(f"policy_iteration did not converge in {max_iterations} improvements.")


@dataclass(frozen=True)
class MonteCarloEstimate:
    """The result of :func:`monte_carlo_evaluation`.

    :param values: ``(S,)`` first-visit mean return from each state (``nan`` where never visited).
    :param counts: ``(S,)`` number of episodes that visited each state.
    :param start_value: mean episode return (the estimate of the start value).
    :param start_stderr: its standard error.
    :param episodes: number of episodes run.
    """

    values: np.ndarray
    counts: np.ndarray
    start_value: float
    start_stderr: float
    episodes: int


def monte_carlo_evaluation(
    env: str | gym.Env,
    mdp: TabularMDP,
    policy: np.ndarray,
    n_episodes: int = 1000,
    gamma: float | None = None,
    seed: int | None = None,
) -> MonteCarloEstimate:
    """First-visit Monte Carlo evaluation of a policy by running the env itself.

    Episodes start from the env's own ``reset`` (its start distribution); actions are drawn from
    ``policy[s]`` for the state ``s`` of each observation. The estimates converge to
    :meth:`TabularMDP.policy_value` at rate ``1/sqrt(visits)``.

    :param env: env id or instance (the one the model was built from, or an equal one).
    :param mdp: its model (maps observations to states).
    :param policy: ``(S, A)`` action probabilities.
    :param n_episodes: episodes to run.
    :param gamma: discount (default: the model's).
    :param seed: seeds the env's first reset and the action draws.
    :raises KeyError: the env reached a state the model does not have (the model is stale).
    """
    g = mdp.gamma if gamma is None else gamma
    policy = mdp._check_policy(policy)
    env = _make_env(env)
    rng = np.random.default_rng(seed)
    sums = np.zeros(mdp.n_states)
    counts = np.zeros(mdp.n_states, dtype=np.int64)
    returns = np.empty(n_episodes)
    for episode in range(n_episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        visited: list[int] = []
        rewards: list[float] = []
        done = False
        while not done:
            s = mdp.index[state_key(obs)]
            visited.append(s)
            action = int(rng.choice(mdp.n_actions, p=policy[s]))
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(float(reward))
            done = terminated or truncated
        ret = 0.0
        seen: dict[int, float] = {}
        for s, r in zip(reversed(visited), reversed(rewards)):
            ret = r + g * ret
            seen[s] = ret  # overwritten going backwards: the first visit's return stays
        for s, value in seen.items():
            sums[s] += value
            counts[s] += 1
        returns[episode] = ret
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    stderr = float(returns.std(ddof=1) / np.sqrt(n_episodes)) if n_episodes > 1 else float("nan")
    return MonteCarloEstimate(values, counts, float(returns.mean()), stderr, n_episodes)


@functools.lru_cache(maxsize=32)
def _solve_id(env_id: str, gamma: float | None) -> Solution:
    mdp = TabularMDP.from_env(env_id)
    return value_iteration(mdp, gamma)


def solve(env: str | gym.Env, gamma: float | None = None) -> tuple[TabularMDP, Solution]:
    """Build the model of an env and solve it by value iteration.

    :param env: env id or instance.
    :param gamma: discount (default: the env's).
    """
    mdp = TabularMDP.from_env(env)
    return mdp, value_iteration(mdp, gamma)


def optimal_return(env: str | gym.Env, gamma: float | None = None) -> float:
    """The exact optimal expected return from the env's start distribution.

    The benchmark runner divides an agent's mean return by this number. Results for env ids are
    cached per process.

    :param env: env id (``"LMToy-v0"``) or instance of an enumerable env.
    :param gamma: discount (default: the env's, 1 for the lm-gym toy envs: the plain return).
    """
    if isinstance(env, str):
        return _solve_id(env, gamma).start_value
    return solve(env, gamma)[1].start_value


def is_enumerable(env: str | gym.Env) -> bool:
    """Whether an env declares a finite start distribution (so :func:`optimal_return` applies).

    :param env: env id or instance.
    """
    if isinstance(env, str):
        import lm_gym  # noqa: F401

        spec = gym.spec(env)
        entry = spec.entry_point
        if callable(entry):
            return hasattr(entry, "start_distribution")
        module, _, name = str(entry).partition(":")
        import importlib

        return hasattr(getattr(importlib.import_module(module), name), "start_distribution")
    return hasattr(env.unwrapped, "start_distribution")
