"""Small-vocabulary text MDPs: the envs, their exact models and solvers, and agents checked on them.

``LMToy-v0`` (5 states) and ``LMWordSort-v0`` (504 states) are solved exactly by value iteration
and policy iteration; Monte Carlo evaluation by running the env must agree with the exact value of
the same policy; and the tabular agents must reach the *exact* optimal policy (every action they
take from the start distribution is optimal), Q-learning also the exact optimal Q values. The GPT-2
PPO test (marked slow) checks that the LM policy's greedy decoding reaches the optimal return.

Tolerances: Monte Carlo estimates within 4 standard errors *and* an absolute bound stated per test;
Q values within ``Q_TOL``. Agents are checked on several seeds each; every step budget is at least
1.4 times the steps the tested seeds needed, and all budgets passed on 10 seeds when measured (see
lm_gym/tasks/README_toy.md).
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import lm_gym  # noqa: F401  (registers the ids)
from agents.tabular.learning import QLearning, Reinforce
from agents.tabular.mdp import (
    TabularMDP,
    is_enumerable,
    monte_carlo_evaluation,
    optimal_return,
    policy_iteration,
    solve,
    state_key,
    value_iteration,
)
from lm_gym.models import load_tokenizer
from lm_gym.tasks.toy import LMToyEnv, LMWordSortEnv, WordSortScorer
from lm_gym.tasks.word_tokenizer import build_word_tokenizer

TOY, SORT = "LMToy-v0", "LMWordSort-v0"
X1, X2, V1, V2, EOS = range(5)  # the ids of the toy vocabulary
ANT, BEE, CAT, DOG = range(4)  # the ids of the sort vocabulary
Q_TOL = 1e-6
SEEDS = (0, 1, 2)  # toy; the sort task uses the first two (plain REINFORCE: the first)


@pytest.fixture(scope="module")
def toy() -> tuple[TabularMDP, object]:
    return solve(TOY)


@pytest.fixture(scope="module")
def sort() -> tuple[TabularMDP, object]:
    return solve(SORT)


# -- tokenizer ------------------------------------------------------------------------------------


def test_word_tokenizer_is_small_and_exact() -> None:
    tok = load_tokenizer("lm-toy-words")
    assert len(tok) == 5
    assert tok.eos_token_id == tok.pad_token_id == EOS
    assert tok.encode("x1 v2 v1", add_special_tokens=False) == [X1, V2, V1]
    assert tok.decode([X1, V2, EOS], skip_special_tokens=True) == "x1 v2"
    with pytest.raises(Exception, match=r"(?i)unk"):
        tok.encode("x1 unknown", add_special_tokens=False)
    sort_tok = load_tokenizer("lm-sort-words")
    assert sort_tok.convert_ids_to_tokens(list(range(5))) == ["ant", "bee", "cat", "dog", "<eos>"]


@pytest.mark.parametrize("words", [[], ["a", "a"], ["a b"], ["<eos>"]])
def test_word_tokenizer_rejects_bad_vocabularies(words: list[str]) -> None:
    with pytest.raises(ValueError):
        build_word_tokenizer(words)


# -- envs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", [TOY, SORT])
def test_checkers_pass_with_warnings_as_errors(env_id: str) -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id)
        gym_check_env(env.unwrapped)
        sb3_check_env(gym.make(env_id).unwrapped)
        assert env.action_space.n == 5


def run(env: gym.Env, actions: list[int], **reset_options: str) -> list[tuple]:
    env.reset(seed=0, options=reset_options or None)
    return [env.step(a)[1:] for a in actions]


def test_toy_rules() -> None:
    env = gym.make(TOY)
    obs, info = env.reset(seed=0)
    assert state_key(obs) == (X1,) and info["context"] == "x1"
    (r1, t1, u1, _), (r2, t2, u2, info) = run(env, [V2, V2])
    assert (r1, t1, u1, r2, t2, u2) == (2.0, False, False, 2.0, True, False)
    assert info["metrics"]["word-rewards"] == 4.0 and info["text"] == "v2 v2"
    # Context tokens are actions that earn 0 and move on; v1 earns 1.
    assert [s[:3] for s in run(env, [X2, V1])] == [(0.0, False, False), (1.0, True, False)]
    # EOS ends the episode at once in either context, with reward 0.
    assert [s[:3] for s in run(env, [EOS])] == [(0.0, True, False)]
    assert [s[:3] for s in run(env, [V1, EOS])] == [(1.0, False, False), (0.0, True, False)]
    # Starting in x2: a one-step episode.
    assert [s[:3] for s in run(env, [V2], prompt="x2")] == [(2.0, True, False)]
    with pytest.raises(ValueError, match="contexts"):
        env.reset(options={"prompt": "v1"})


def test_toy_options() -> None:
    env = LMToyEnv(contexts=["x1", "x2", "v1"], reward_kwargs={"word_rewards": {"v2": 5.0}})
    assert env.max_new_tokens == 3
    env.reset(seed=0)
    steps = [env.step(V2)[1:3] for _ in range(3)]
    assert steps == [(5.0, False), (5.0, False), (5.0, True)]
    with pytest.raises(ValueError, match="one token"):
        LMToyEnv(reward_kwargs={"word_rewards": {"v1 v2": 1.0}})
    with pytest.raises(ValueError, match="start"):
        LMToyEnv(start="v1")


def test_word_sort_rules() -> None:
    env = LMWordSortEnv()
    starts = env.start_distribution()
    assert len(starts) == 24 and np.isclose(sum(p for _, p in starts), 1.0)
    steps = run(env, [ANT, CAT, DOG], prompt="dog ant cat")
    assert [s[:3] for s in steps] == [(0.0, False, False), (0.0, False, False), (1.0, True, False)]
    assert steps[-1][3]["text"] == "ant cat dog"
    # Partial credit, and EOS ends early.
    assert run(env, [ANT, DOG, CAT], prompt="dog ant cat")[-1][0] == pytest.approx(1 / 3)
    assert run(env, [ANT, CAT, EOS], prompt="dog ant cat")[-1][:3] == (
        pytest.approx(2 / 3),
        True,
        False,
    )
    assert run(env, [EOS], prompt="dog ant cat")[-1][:3] == (0.0, True, False)
    # The start draw covers the 24 prompts.
    prompts = {env.reset(seed=s)[1]["prompt"] for s in range(400)}
    assert prompts == {p for p, _ in starts}


def test_word_sort_scorer() -> None:
    scorer = WordSortScorer()
    scores = scorer(["a b c", "b a c", "a b c d", ""], ["c a b"] * 4)
    assert scores == [1.0, pytest.approx(1 / 3), pytest.approx(3 / 4), 0.0]


# -- exact model and solvers ----------------------------------------------------------------------


def test_toy_model_matches_the_worked_example(toy) -> None:
    mdp, solution = toy
    assert mdp.states == [(X1,), (X1, X1), (X1, X2), (X1, V1), (X1, V2)]
    q_x1 = solution.q_values[mdp.index[(X1,)]]
    np.testing.assert_allclose(q_x1, [2.0, 2.0, 3.0, 4.0, 0.0])
    for s in range(1, 5):  # every observation of context x2
        np.testing.assert_allclose(solution.q_values[s], [0.0, 0.0, 1.0, 2.0, 0.0])
    np.testing.assert_allclose(solution.values, [4.0, 2.0, 2.0, 2.0, 2.0])
    assert solution.start_value == 4.0
    assert np.argmax(solution.policy, axis=1).tolist() == [V2] * 5
    # Discounted: V*(x1) = 2 + gamma * 2.
    assert value_iteration(mdp, gamma=0.5).start_value == pytest.approx(3.0)


def test_word_sort_model(sort) -> None:
    mdp, solution = sort
    assert mdp.n_states == 504 and mdp.n_actions == 5
    assert np.count_nonzero(mdp.start) == 24
    np.testing.assert_allclose(solution.values[mdp.start > 0], 1.0)
    # A unique optimal action in every state.
    assert (mdp.optimal_actions(solution.q_values).sum(axis=1) == 1).all()
    s = mdp.index[(DOG, ANT, CAT)]
    assert np.argmax(solution.q_values[s]) == ANT
    with pytest.raises(ValueError, match="max_states"):
        TabularMDP.from_env(SORT, max_states=100)


@pytest.mark.parametrize("env_id", [TOY, SORT])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_value_and_policy_iteration_agree(env_id: str, gamma: float, toy, sort) -> None:
    mdp = (toy if env_id == TOY else sort)[0]
    vi = value_iteration(mdp, gamma=gamma)
    for method in ("linear", "iterative"):
        pi = policy_iteration(mdp, gamma=gamma, method=method)
        np.testing.assert_allclose(pi.values, vi.values, atol=1e-10)
        np.testing.assert_allclose(pi.q_values, vi.q_values, atol=1e-10)
        # Each solver's policy is optimal by the other's values.
        assert mdp.is_optimal(pi.policy, vi.q_values) and mdp.is_optimal(vi.policy, pi.q_values)
    # The exact evaluation of the optimal policy gives V*; the uniform policy is worse.
    np.testing.assert_allclose(mdp.policy_value(vi.policy, gamma), vi.values, atol=1e-10)
    assert mdp.start_value(mdp.policy_value(mdp.uniform_policy(), gamma)) < vi.start_value - 0.5


@pytest.mark.parametrize(
    ("env_id", "exact", "tol", "half_range"),
    # Uniform random policy: on the toy V(x2) = 3/5 and V(x1) = (0.6 + 0.6 + 1.6 + 2.6 + 0) / 5.
    [(TOY, 1.08, 0.1, 2.0), (SORT, None, 0.02, 0.5)],
)
def test_monte_carlo_matches_exact_value(
    env_id: str, exact: float | None, tol: float, half_range: float, toy, sort
) -> None:
    mdp = (toy if env_id == TOY else sort)[0]
    policy = mdp.uniform_policy()
    values = mdp.policy_value(policy)
    if exact is not None:
        assert mdp.start_value(values) == pytest.approx(exact)
    mc = monte_carlo_evaluation(env_id, mdp, policy, n_episodes=3000, seed=0)
    error = abs(mc.start_value - mdp.start_value(values))
    assert error <= 4 * mc.start_stderr and error <= tol
    # Per state, visited at least 100 times: within 4 standard errors, the standard deviation of a
    # return being at most half its range (returns lie in [0, 4] on the toy, [0, 1] on the sort).
    often = mc.counts >= 100
    assert often.sum() >= 5
    bound = 4 * half_range / np.sqrt(mc.counts[often])
    assert (np.abs(mc.values[often] - values[often]) <= bound).all()


def test_monte_carlo_detects_a_wrong_policy(sort) -> None:
    mdp, solution = sort
    mc = monte_carlo_evaluation(SORT, mdp, solution.policy, n_episodes=200, seed=1)
    assert mc.start_value == 1.0 and mc.start_stderr == 0.0
    uniform = mdp.start_value(mdp.policy_value(mdp.uniform_policy()))
    assert abs(mc.start_value - uniform) > 0.5


def test_optimal_return_and_enumerability() -> None:
    assert optimal_return(TOY) == 4.0
    assert optimal_return(SORT) == pytest.approx(1.0)
    assert optimal_return(LMToyEnv(), gamma=0.5) == pytest.approx(3.0)
    assert is_enumerable(TOY) and is_enumerable(gym.make(SORT))
    assert not is_enumerable("LMCountUp-v0")


# -- tabular agents -------------------------------------------------------------------------------

#: (agent class, hyperparameters, steps on the toy, steps on the sort task)
AGENTS = {
    "q-epsilon": (QLearning, {"learning_rate": 1.0, "exploration": "epsilon"}, 500, 25_000),
    "q-softmax": (
        QLearning,
        {
            "learning_rate": 1.0,
            "exploration": "softmax",
            "exploration_initial": 0.5,
            "exploration_final": 0.05,
        },
        500,
        15_000,
    ),
    "reinforce-baseline": (
        Reinforce,
        {"baseline": True, "learning_rate": 0.5, "baseline_learning_rate": 0.5},
        None,
        15_000,
    ),
    "reinforce": (Reinforce, {"baseline": False, "learning_rate": 0.1}, None, 60_000),
}
#: REINFORCE on the toy: its returns are up to 4, so smaller steps than on the sort task.
TOY_REINFORCE = {
    "reinforce-baseline": {"baseline": True, "learning_rate": 0.05, "baseline_learning_rate": 0.2},
    "reinforce": {"baseline": False, "learning_rate": 0.02},
}


def make_agent(name: str, env_id: str, mdp: TabularMDP, solution, seed: int):
    cls, kwargs, toy_steps, sort_steps = AGENTS[name]
    kwargs = dict(kwargs)
    if env_id == TOY and name in TOY_REINFORCE:
        kwargs = TOY_REINFORCE[name]
    if cls is QLearning:
        kwargs["initial_q"] = float(solution.values.max())  # optimistic: the largest return
    steps = (toy_steps or 2000) if env_id == TOY else sort_steps
    return cls(env_id, seed=seed, **kwargs), steps


def check_optimal(agent, mdp: TabularMDP, solution) -> None:
    policy = mdp.policy_of(agent)
    assert mdp.is_optimal(policy, solution.q_values)
    assert mdp.start_value(mdp.policy_value(policy)) == pytest.approx(solution.start_value)


@pytest.mark.parametrize("name", list(AGENTS))
def test_agents_reach_the_optimal_policy_on_the_toy(name: str, toy) -> None:
    mdp, solution = toy
    for seed in SEEDS:
        agent, steps = make_agent(name, TOY, mdp, solution, seed)
        assert not mdp.is_optimal(mdp.policy_of(agent), solution.q_values)  # untrained
        agent.learn(steps)
        check_optimal(agent, mdp, solution)
        if isinstance(agent, QLearning):
            np.testing.assert_allclose(agent.q_table(mdp.states), solution.q_values, atol=Q_TOL)


@pytest.mark.parametrize("name", list(AGENTS))
def test_agents_reach_the_optimal_policy_on_word_sort(name: str, sort) -> None:
    mdp, solution = sort
    seeds = SEEDS[:2] if name != "reinforce" else SEEDS[:1]  # plain REINFORCE is the slow one
    for seed in seeds:
        agent, steps = make_agent(name, SORT, mdp, solution, seed)
        start = mdp.start_value(mdp.policy_value(mdp.policy_of(agent)))
        assert start < 0.5  # untrained
        agent.learn(steps)
        check_optimal(agent, mdp, solution)
        if isinstance(agent, QLearning):
            # Every state-action pair, not only those on the optimal path.
            np.testing.assert_allclose(agent.q_table(mdp.states), solution.q_values, atol=Q_TOL)


def test_restricted_actions_exclude_eos(sort) -> None:
    mdp, solution = sort
    agent = QLearning(SORT, learning_rate=1.0, initial_q=1.0, actions=[ANT, BEE, CAT, DOG], seed=0)
    agent.learn(15_000)
    check_optimal(agent, mdp, solution)
    q = agent.q_table(mdp.states)
    assert np.isnan(q[:, EOS]).all()
    np.testing.assert_allclose(q[:, :EOS], solution.q_values[:, :EOS], atol=Q_TOL)
    obs = {k: v for k, v in mdp.observations.items()}
    actions, _ = agent.predict(obs)  # a batch, sampled
    assert actions.shape == (mdp.n_states,) and EOS not in actions


def test_agent_protocol_save_load_callback(tmp_path, toy) -> None:
    mdp, _ = toy
    agent = QLearning(TOY, learning_rate=1.0, initial_q=4.0, exploration="softmax", seed=0)
    calls = []
    agent.learn(
        1000, callback=lambda loc, glob: calls.append(loc["self"].num_timesteps) or len(calls) < 300
    )
    assert agent.num_timesteps == 300 and calls[-1] == 300
    agent.learn(1000, reset_num_timesteps=False)
    assert agent.num_timesteps == 1300 and len(agent.episode_returns) >= 600
    agent.save(tmp_path / "q.pkl")
    loaded = QLearning.load(tmp_path / "q.pkl")
    assert loaded.num_timesteps == 1300 and loaded.hyperparameters() == agent.hyperparameters()
    np.testing.assert_array_equal(loaded.q_table(mdp.states), agent.q_table(mdp.states))
    np.testing.assert_array_equal(mdp.policy_of(loaded), mdp.policy_of(agent))
    with pytest.raises(ValueError, match="QLearning"):
        Reinforce.load(tmp_path / "q.pkl")
    reinforce = Reinforce(TOY, seed=0).learn(200)
    reinforce.save(tmp_path / "r.pkl")
    again = Reinforce.load(tmp_path / "r.pkl", env=gym.make(TOY))
    np.testing.assert_array_equal(mdp.policy_of(again), mdp.policy_of(reinforce))
    action, state = again.predict(
        {k: v[0] for k, v in mdp.observations.items()}, deterministic=True
    )
    assert isinstance(action, int) and state is None


# -- GPT-2 policy ---------------------------------------------------------------------------------


def check_lm_policy_reaches_the_sort_optimum(make_model, sort, value_head: bool = True) -> None:
    """Build ``make_model(env, policy_kwargs)`` on 8 seeded ``LMWordSort-v0`` envs with the GPT-2
    policy (2 layers, 128 wide, random init, 5 words), train 8192 steps on one torch thread with
    a learning rate decaying linearly from 1e-3 (the policy settles: with a constant rate it
    reaches the optimum and drifts off it again), and check that the greedy policy is optimal."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.vec_env import DummyVecEnv

    from lm_gym.models import load_causal_lm

    mdp, solution = sort
    env = DummyVecEnv([LMWordSortEnv for _ in range(8)])
    env.seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy_kwargs = {"model": load_causal_lm("tiny-gpt2", vocab_size=5)}
        if not value_head:
            policy_kwargs["value_head"] = False
        model = make_model(env, policy_kwargs)
        untrained = mdp.start_value(mdp.policy_value(mdp.policy_of(model)))
        model.learn(8192)
        policy = mdp.policy_of(model)
    finally:
        torch.set_num_threads(threads)
    assert untrained < 0.5
    assert mdp.is_optimal(policy, solution.q_values)
    assert mdp.start_value(mdp.policy_value(policy)) == pytest.approx(solution.start_value)


def decaying_lr(progress_remaining: float) -> float:
    """1e-3 at the start, linearly down to 0."""
    return 1e-3 * progress_remaining


@pytest.mark.slow
def test_sb3_ppo_with_gpt2_policy_reaches_the_optimal_return(sort) -> None:
    """Stock SB3 PPO, GPT-2 actor-critic, normalised advantages, 10 epochs."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    from agents.networks.policies import LMActorCriticPolicy

    def make(env, policy_kwargs):
        return PPO(
            LMActorCriticPolicy,
            env,
            n_steps=64,
            batch_size=128,
            n_epochs=10,
            learning_rate=decaying_lr,
            gamma=1.0,
            policy_kwargs=policy_kwargs,
            seed=0,
        )

    check_lm_policy_reaches_the_sort_optimum(make, sort)


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["grpo", "rloo"])
def test_group_relative_agents_reach_the_optimal_policy_on_word_sort(advantage: str, sort) -> None:
    """GRPO and RLOO (agents.algorithms.grpo), GPT-2 policy without value head, 8 envs in groups of
    4, 10 (GRPO) or 4 (RLOO) epochs. Measured before: GRPO with 4 epochs stopped at 0.958 of the
    optimum; RLOO with one epoch (lr 1e-2) at 0.611."""
    pytest.importorskip("stable_baselines3")
    from agents.algorithms.grpo import GroupRelativePPO
    from agents.networks.policies import LMActorCriticPolicy

    def make(env, policy_kwargs):
        return GroupRelativePPO(
            LMActorCriticPolicy,
            env,
            group_size=4,
            advantage=advantage,
            n_steps=64,
            batch_size=128,
            n_epochs=10 if advantage == "grpo" else 4,
            learning_rate=decaying_lr,
            policy_kwargs=policy_kwargs,
            seed=0,
        )

    check_lm_policy_reaches_the_sort_optimum(make, sort, value_head=False)
