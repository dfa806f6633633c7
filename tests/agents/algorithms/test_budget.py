"""Value bootstrapping at the token budget (:mod:`agents.algorithms.budget`).

An lm-gym episode that reaches ``max_new_tokens`` ends in a terminal state: by default no
``gamma * V(terminal_observation)`` is added to its last reward and no value forward is run for
it; ``bootstrap_at_budget=True`` restores SB3's bootstrap, and a user's ``TimeLimit`` truncation
is bootstrapped either way.

Set-up: tiny GPT-2 on ``LMCountUp-v0`` with 3 new tokens and ``stop_strings=["k"]`` (about 5% of
the vocabulary), so most episodes reach the budget and a few stop early. The value head's bias is
set to 1, so a bootstrap adds about ``gamma`` to a reward and cannot go unnoticed.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.wrappers import RecordEpisodeStatistics, TimeLimit
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

from agents.algorithms.budget import TerminalAtBudgetVecEnv, bootstraps
from agents.algorithms.ppo import EpisodePPO, find_network
from agents.networks.policies import LMActorCriticPolicy
from agents.registry import make_agent
from lm_gym.envs.core import TOKEN_BUDGET_KEY
from lm_gym.tasks.verifiable import CountUpEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ENVS, N_STEPS, BUDGET = 2, 12, 3
ENV_KWARGS = {"max_new_tokens": BUDGET, "stop_strings": ["k"], "render_mode": None}
TOL = 1e-5


def _venv(time_limit: int | None = None, seed: int = 0, **env_kwargs: Any) -> VecEnv:
    """The vector env; with ``time_limit``, each env inside a ``TimeLimit`` of that many steps;
    ``env_kwargs`` over :data:`ENV_KWARGS`."""
    return make_vec_env(
        "lm_gym:LMCountUp-v0",
        n_envs=N_ENVS,
        seed=seed,
        env_kwargs={**ENV_KWARGS, **env_kwargs},
        wrapper_class=None if time_limit is None else TimeLimit,
        wrapper_kwargs=None if time_limit is None else {"max_episode_steps": time_limit},
    )


class Rollout:
    """One rollout of ``model`` with every env step (task rewards before the algorithm adds any
    bootstrap) and every ``predict_values`` batch recorded."""

    def __init__(self, model: OnPolicyAlgorithm) -> None:
        self.steps: list[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]] = []
        self.value_calls: list[np.ndarray] = []
        base = model.env
        while isinstance(base, VecEnvWrapper):
            base = base.venv
        inner_wait = base.step_wait
        inner_values = model.policy.predict_values

        def step_wait() -> Any:
            obs, rewards, dones, infos = inner_wait()
            self.steps.append((np.array(rewards, copy=True), np.array(dones), infos))
            return obs, rewards, dones, infos

        def predict_values(obs: Any) -> th.Tensor:
            self.value_calls.append(np.asarray(obs["input_ids"].cpu()))
            return inner_values(obs)

        base.step_wait = step_wait
        model.policy.predict_values = predict_values
        _, callback = model._setup_learn(N_STEPS * N_ENVS, None)
        callback.on_training_start(locals(), globals())
        self.steps.clear()  # the reset is no step
        assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
        model.policy.predict_values = inner_values
        self.buffer = model.rollout_buffer
        self.model = model
        assert len(self.steps) == N_STEPS

    def ends(self, budget: bool) -> list[tuple[int, int, dict[str, Any]]]:
        """``(step, env, info)`` of the truncated episode ends, at the budget or not."""
        return [
            (t, i, infos[i])
            for t, (_, dones, infos) in enumerate(self.steps)
            for i in np.flatnonzero(dones)
            if infos[i].get("terminal_observation") is not None
            and bool(infos[i].get(TOKEN_BUDGET_KEY)) == budget
            and (budget or infos[i].get("TimeLimit.truncated"))
        ]

    def assert_returns_as_with_every_value(self) -> None:
        """The buffer's returns equal those bootstrapped with the policy's values of every env's
        observation after the rollout (however many of them the rollout's end computed)."""
        obs = obs_as_tensor(self.model._last_obs, self.model.device)
        with th.no_grad():
            values = self.model.policy.predict_values(obs)
        returns = self.buffer.returns.copy()
        self.buffer.compute_returns_and_advantage(last_values=values, dones=self.steps[-1][1])
        np.testing.assert_allclose(self.buffer.returns, returns, atol=TOL)

    def terminal_value(self, info: dict[str, Any]) -> float:
        """The policy's value of an episode's terminal observation (computed here, batch 1)."""
        obs = {k: v[None] for k, v in info["terminal_observation"].items()}
        with th.no_grad():
            return float(self.model.policy.predict_values(obs_as_tensor(obs, self.model.device)))

    def terminal_calls(self) -> int:
        """``predict_values`` rows that held one of the rollout's terminal observations."""
        terminal = [
            info["terminal_observation"]["input_ids"]
            for _, dones, infos in self.steps
            for info, done in zip(infos, dones)
            if done
        ]
        return sum(
            any((row == ids).all() for ids in terminal)
            for batch in self.value_calls
            for row in batch
        )


def _raise_value_bias(model: OnPolicyAlgorithm) -> None:
    """Set the value head's output bias to 1, so that ``V`` is about 1 everywhere."""
    net = find_network(model.policy)
    assert net is not None and net.value_head is not None
    last = [m for m in net.value_head.modules() if isinstance(m, th.nn.Linear)][-1]
    with th.no_grad():
        last.bias.fill_(1.0)


def _model(algo: type[OnPolicyAlgorithm], env: VecEnv, **kwargs: Any) -> OnPolicyAlgorithm:
    params: dict[str, Any] = dict(n_steps=N_STEPS, seed=0, policy_kwargs={"model": "tiny-gpt2"})
    if algo is not A2C:
        params["batch_size"] = N_STEPS * N_ENVS
    model = algo(LMActorCriticPolicy, env, **params, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    _raise_value_bias(model)
    return model


# -- the env's flag -------------------------------------------------------------------------------


def test_env_flags_budget_end_only() -> None:
    """``info["token_budget_reached"]`` is True at the budget, False at a stop token, and passes
    Gymnasium wrappers and SB3's DummyVecEnv."""
    env = RecordEpisodeStatistics(gym.make("lm_gym:LMCountUp-v0", **ENV_KWARGS))
    word = env.unwrapped.tokenizer.encode(" 7", add_special_tokens=False)[0]  # no stop token
    env.reset(seed=0)
    infos = [env.step(word)[-1] for _ in range(BUDGET - 1)]
    assert all(TOKEN_BUDGET_KEY not in info for info in infos)
    *_, terminated, truncated, info = env.step(word)
    assert truncated and not terminated and info[TOKEN_BUDGET_KEY] is True

    env.reset(seed=0)
    *_, terminated, truncated, info = env.step(env.unwrapped.eos_token_id)
    assert terminated and not truncated and info[TOKEN_BUDGET_KEY] is False

    venv = DummyVecEnv([lambda: CountUpEnv(**ENV_KWARGS)])
    venv.reset()
    for _ in range(BUDGET):
        _, _, dones, vinfos = venv.step(np.array([word]))
    assert dones[0] and vinfos[0][TOKEN_BUDGET_KEY] is True and vinfos[0]["TimeLimit.truncated"]


def test_bootstraps_rule() -> None:
    """SB3's rule, minus the budget unless asked."""
    obs = {"input_ids": np.zeros(2)}
    budget = {"terminal_observation": obs, "TimeLimit.truncated": True, TOKEN_BUDGET_KEY: True}
    user = {"terminal_observation": obs, "TimeLimit.truncated": True}
    assert not bootstraps(budget, True)
    assert bootstraps(budget, True, bootstrap_at_budget=True)
    assert bootstraps(user, True)
    assert not bootstraps(user, False)
    assert not bootstraps({**user, "TimeLimit.truncated": False}, True, bootstrap_at_budget=True)


# -- EpisodePPO -----------------------------------------------------------------------------------


def test_episode_ppo_does_not_bootstrap_at_budget() -> None:
    """Default: the buffer's reward at a budget end is the task reward, and no terminal
    observation goes through ``predict_values``."""
    run = Rollout(_model(EpisodePPO, _venv()))
    ends = run.ends(budget=True)
    assert len(ends) >= 4
    for t, i, _ in ends:
        assert run.buffer.rewards[t, i] == pytest.approx(run.steps[t][0][i], abs=TOL)
    assert run.terminal_calls() == 0
    # at most one call: the rollout's end, unless every env's episode ended with the rollout
    assert len(run.value_calls) == int(not np.all(run.steps[-1][1]))


def test_episode_ppo_bootstrap_at_budget_restores_sb3() -> None:
    """``bootstrap_at_budget=True``: reward + gamma * V(terminal observation), as SB3 does."""
    run = Rollout(_model(EpisodePPO, _venv(), bootstrap_at_budget=True))
    ends = run.ends(budget=True)
    assert len(ends) >= 4
    for t, i, info in ends:
        value = run.terminal_value(info)
        assert abs(value) > 0.5  # the raised bias: a bootstrap is visible
        expected = run.steps[t][0][i] + run.model.gamma * value
        assert run.buffer.rewards[t, i] == pytest.approx(expected, abs=TOL)
    assert run.terminal_calls() >= 1


def test_no_value_forward_when_every_episode_ends_with_the_rollout() -> None:
    """Episodes of exactly ``BUDGET`` tokens and ``N_STEPS`` a multiple of it: every env is done
    on the rollout's last step, so the rollout's end computes no value (the buffer would multiply
    it by 0) and the returns are those that the policy's values give."""
    run = Rollout(_model(EpisodePPO, _venv(stop_strings=[])))
    assert np.all(run.steps[-1][1]) and run.value_calls == []
    run.assert_returns_as_with_every_value()


def test_rollout_end_values_only_for_episodes_that_go_on() -> None:
    """Two envs with episodes of 3 tokens end with the 12-step rollout, two of 5 tokens go on
    (the same window: 16 + 3 and 14 + 5 columns): only the latter are evaluated (extending the
    KV cache's rows by one token), and the returns equal those from the values of every env."""

    def make(budget: int) -> Any:
        return lambda: gym.make(
            "lm_gym:LMCountUp-v0",
            max_new_tokens=budget,
            max_prompt_tokens=19 - budget,
            stop_strings=[],
            render_mode=None,
        )

    venv = DummyVecEnv([make(3), make(5), make(3), make(5)])
    venv.seed(0)
    run = Rollout(_model(EpisodePPO, venv))
    dones = run.steps[-1][1]
    assert list(dones) == [True, False, True, False]
    (rows,) = run.value_calls
    assert len(rows) == int((~dones).sum())
    run.assert_returns_as_with_every_value()


def test_time_limit_truncation_still_bootstraps() -> None:
    """A user's ``TimeLimit`` (2 steps, budget 3) cuts episodes without the flag: bootstrapped."""
    run = Rollout(_model(EpisodePPO, _venv(time_limit=BUDGET - 1)))
    ends = run.ends(budget=False)
    assert len(ends) >= 4
    for t, i, info in ends:
        expected = run.steps[t][0][i] + run.model.gamma * run.terminal_value(info)
        assert run.buffer.rewards[t, i] == pytest.approx(expected, abs=TOL)
    assert not run.ends(budget=True)


# -- stock SB3 algorithms -------------------------------------------------------------------------


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_terminal_at_budget_vec_env_for_stock_algorithms(algo: type[OnPolicyAlgorithm]) -> None:
    """Stock PPO/A2C bootstrap at the budget; wrapped in TerminalAtBudgetVecEnv they do not."""
    stock = Rollout(_model(algo, _venv()))
    assert stock.terminal_calls() >= 1
    for t, i, info in stock.ends(budget=True):
        expected = stock.steps[t][0][i] + stock.model.gamma * stock.terminal_value(info)
        assert stock.buffer.rewards[t, i] == pytest.approx(expected, abs=TOL)

    run = Rollout(_model(algo, TerminalAtBudgetVecEnv(_venv())))
    ends = run.ends(budget=True)
    assert len(ends) >= 4
    for t, i, info in ends:
        assert run.buffer.rewards[t, i] == pytest.approx(run.steps[t][0][i], abs=TOL)
        assert info["TimeLimit.truncated"] is False
    assert run.terminal_calls() == 0


def test_zoo_option() -> None:
    """The zoo's SB3 agents: EpisodePPO gets the option, the others the wrapper (unless True)."""
    env = gym.make("lm_gym:LMCountUp-v0", max_new_tokens=BUDGET)
    assert make_agent("ppo", env, model="tiny-gpt2").model.bootstrap_at_budget is False
    ppo = make_agent("ppo", env, model="tiny-gpt2", bootstrap_at_budget=True)
    assert ppo.model.bootstrap_at_budget is True
    assert isinstance(make_agent("a2c", env, model="tiny-gpt2").model.env, TerminalAtBudgetVecEnv)
    a2c = make_agent("a2c", env, model="tiny-gpt2", bootstrap_at_budget=True)
    assert not isinstance(a2c.model.env, TerminalAtBudgetVecEnv)
