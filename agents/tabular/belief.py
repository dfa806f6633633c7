"""Exact models of small envs with a hidden start state (a partner's secret), for the solvers of
:mod:`agents.tabular.mdp`.

A multi-turn game such as ``LMGuessNumberWords-v0`` hides part of its state (the number the partner
thinks of) but shows the agent the whole history. An observation-based policy then faces an MDP
over observations whose transitions are stochastic: after a guess, the reply depends on the hidden
number, with the probability of the hidden starts still consistent with the history (the belief
is a function of the observation). :meth:`BeliefMDP.from_env` builds this MDP exactly by driving the
env from every hidden start (``env.hidden_starts()``: ``[(reset options, probability), ...]``) and
trying every action in every reachable state. :class:`BeliefMDP` is a
:class:`~agents.tabular.mdp.TabularMDP` with several outcomes per ``(state, action)``, so
:func:`agents.tabular.mdp.value_iteration`, :func:`~agents.tabular.mdp.policy_iteration`
(``method="iterative"``) and the policy checks apply as they are::

    from agents.tabular.belief import BeliefMDP
    from agents.tabular.mdp import value_iteration

    mdp = BeliefMDP.from_env("LMGuessNumberWords-v0")
    value_iteration(mdp).start_value   # 1 - 0.1 * 17/7: binary search
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

import gymnasium as gym
import numpy as np

from agents.tabular.mdp import StateKey, TabularMDP, _make_env, state_key


@dataclass
class BeliefMDP(TabularMDP):
    """A :class:`~agents.tabular.mdp.TabularMDP` whose ``(state, action)`` pairs have up to ``K``
    outcomes.

    :param outcomes: ``(S, A, K)`` int array: the next state of each outcome, ``-1`` for the
        episode's end or an unused outcome slot.
    :param probs: ``(S, A, K)`` float array: the outcomes' probabilities (summing to 1 over ``K``).

    ``next_state`` and ``done`` hold the most likely outcome (for code that wants one); ``reward``
    is the expected reward.
    """

    outcomes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.int64))
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))

    def q_values(self, values: np.ndarray, gamma: float | None = None) -> np.ndarray:
        """``Q[s, a] = E[r] + gamma * sum_k p_k V[s'_k]`` (``V = 0`` at the episode's end)."""
        g = self.gamma if gamma is None else gamma
        cont = np.where(self.outcomes >= 0, values[np.maximum(self.outcomes, 0)], 0.0)
        return self.reward + g * (self.probs * cont).sum(axis=2)

    def policy_value(
        self,
        policy: np.ndarray,
        gamma: float | None = None,
        method: str = "iterative",
        tol: float = 1e-13,
        max_sweeps: int = 100_000,
    ) -> np.ndarray:
        """Exact state values of a policy (iterative sweeps; ``"linear"`` is not offered here)."""
        if method != "iterative":
            raise ValueError("BeliefMDP.policy_value supports method='iterative' only.")
        return super().policy_value(policy, gamma, "iterative", tol, max_sweeps)

    def reachable(self, policy: np.ndarray) -> np.ndarray:
        """``(S,)`` bool: the states visited with positive probability under ``policy``."""
        policy = self._check_policy(policy)
        seen = self.start > 0
        frontier = np.flatnonzero(seen)
        while frontier.size:
            taken = (policy[frontier] > 0)[:, :, None] & (self.probs[frontier] > 0)
            nxt = self.outcomes[frontier][taken]
            nxt = np.unique(nxt[nxt >= 0])
            nxt = nxt[~seen[nxt]]
            seen[nxt] = True
            frontier = nxt
        return seen

    @classmethod
    def from_env(  # type: ignore[override]
        cls,
        env: str | gym.Env,
        hidden_starts: list[tuple[dict[str, Any], float]] | None = None,
        *,
        max_states: int = 200_000,
    ) -> BeliefMDP:
        """Enumerate the observation MDP of an env with hidden start states.

        :param env: an env id or instance whose ``reset(options=o)`` starts from hidden start
            ``o`` and whose transitions are deterministic given it.
        :param hidden_starts: ``[(reset options, probability), ...]``; default: the env's
            ``hidden_starts()``.
        :param max_states: refuse to go beyond this many observation states.
        :raises ValueError: too many states, or probabilities that do not sum to 1.
        """
        base = _make_env(env).unwrapped
        if hidden_starts is None:
            if not hasattr(base, "hidden_starts"):
                raise ValueError(f"{type(base).__name__} has no hidden_starts(); pass them.")
            hidden_starts = base.hidden_starts()
        n_actions = int(cast(gym.spaces.Discrete, base.action_space).n)
        index: dict[StateKey, int] = {}
        keys: list[StateKey] = []
        obs_ids: list[np.ndarray] = []
        obs_mask: list[np.ndarray] = []
        weight: dict[int, float] = defaultdict(float)  # P(reach state) summed over hidden starts
        # (state, action) -> {next state or -1: probability mass}, and the reward mass
        mass: dict[tuple[int, int], dict[int, float]] = defaultdict(lambda: defaultdict(float))
        reward_mass: dict[tuple[int, int], float] = defaultdict(float)
        start: dict[int, float] = defaultdict(float)

        def add(obs: dict[str, np.ndarray]) -> int:
            key = state_key(obs)
            if key not in index:
                if len(keys) >= max_states:
                    raise ValueError(f"More than max_states={max_states} states: not enumerable.")
                index[key] = len(keys)
                keys.append(key)
                obs_ids.append(np.asarray(obs["input_ids"], dtype=np.int64).copy())
                obs_mask.append(np.asarray(obs["attention_mask"], dtype=np.int64).copy())
            return index[key]

        for options, prob in hidden_starts:
            obs, _ = base.reset(options=dict(options))
            s0 = add(obs)
            start[s0] += float(prob)
            stack: list[tuple[int, tuple[int, ...]]] = [(s0, ())]
            while stack:
                s, tokens = stack.pop()
                weight[s] += float(prob)
                for a in range(n_actions):
                    base.reset(options=dict(options))
                    for t in tokens:
                        base.step(t)
                    obs, r, terminated, truncated, _ = base.step(a)
                    reward_mass[(s, a)] += float(prob) * float(r)
                    if terminated or truncated:
                        mass[(s, a)][-1] += float(prob)
                    else:
                        s2 = add(obs)
                        mass[(s, a)][s2] += float(prob)
                        stack.append((s2, (*tokens, a)))

        n = len(keys)
        k_max = max(len(m) for m in mass.values()) if mass else 1
        outcomes = np.full((n, n_actions, k_max), -1, dtype=np.int64)
        probs = np.zeros((n, n_actions, k_max))
        reward = np.zeros((n, n_actions))
        for (s, a), targets in mass.items():
            w = weight[s]
            for k, (s2, p) in enumerate(sorted(targets.items())):
                outcomes[s, a, k] = s2
                probs[s, a, k] = p / w
            reward[s, a] = reward_mass[(s, a)] / w
        best = np.argmax(probs, axis=2)
        next_state = np.take_along_axis(outcomes, best[..., None], axis=2)[..., 0]
        start_arr = np.zeros(n)
        for i, p in start.items():
            start_arr[i] = p
        if not np.isclose(start_arr.sum(), 1.0):
            raise ValueError(f"Start probabilities sum to {start_arr.sum()}, not 1.")
        return cls(
            states=keys,
            n_actions=n_actions,
            next_state=next_state,
            reward=reward,
            done=next_state < 0,
            start=start_arr,
            observations={"input_ids": np.stack(obs_ids), "attention_mask": np.stack(obs_mask)},
            gamma=float(getattr(base, "gamma", 1.0)),
            outcomes=outcomes,
            probs=probs,
        )
