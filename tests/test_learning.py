"""Learning tests: each algorithm, with the GPT-2 policy, ends clearly above the untrained policy.

The model is the built-in tiny GPT-2 (2 layers, 128 wide, random init) over GPT-2's real
vocabulary of 50257 tokens, so learning rates are those of a small random network (3e-3), not of
LM fine-tuning (1e-5). The verifiable task is ``LMCountUp-v0`` with one target number and two new
tokens (``COUNT_UP``): the reward is 1 when the text holds an integer above the prompt's start. An
untrained policy samples almost uniformly over the vocabulary and scores about 0.06.

Training and evaluation envs use different seeds (held-out prompts); everything is seeded, and
torch runs on one thread (deterministic, and much faster than two threads on a busy 2-core box).
Each test states its steps and the margin it asserts.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from agents.algorithms.kl import KLPenaltyCallback
from agents.algorithms.nlpo import NLPOMaskUpdateCallback, NLPORolloutBuffer
from agents.networks.policies import LMActorCriticPolicy, LMDQNPolicy, MaskableLMActorCriticPolicy
from lm_gym.tasks.text_generation import TextGenerationEnv
from lm_gym.tasks.verifiable import CountUpEnv

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

COUNT_UP = {"max_new_tokens": 2, "target": 1}
TINY = {"model": "tiny-gpt2"}
TRAIN_SEED, EVAL_SEED = 0, 10_000
N_ENVS, EVAL_EPISODES = 8, 64


def count_up_env(seed: int, n_envs: int = N_ENVS) -> VecEnv:
    env = DummyVecEnv([lambda: CountUpEnv(**COUNT_UP) for _ in range(n_envs)])
    env.seed(seed)
    return env


def text_env(seed: int, n_envs: int = N_ENVS) -> VecEnv:
    env = DummyVecEnv([lambda: TextGenerationEnv(max_new_tokens=2) for _ in range(n_envs)])
    env.seed(seed)
    return env


def mean_reward(model: BaseAlgorithm, env: VecEnv, deterministic: bool = False) -> float:
    """Mean task reward of the first ``EVAL_EPISODES`` episodes on a held-out-seed env."""
    obs = env.reset()
    rewards: list[float] = []
    while len(rewards) < EVAL_EPISODES:
        actions, _ = model.predict(obs, deterministic=deterministic)
        obs, reward, done, _ = env.step(actions)
        rewards += [float(r) for r, d in zip(reward, done) if d]
    return float(np.mean(rewards[:EVAL_EPISODES]))


def train_and_compare(
    model: BaseAlgorithm,
    eval_env_fn,
    steps: int,
    deterministic: bool = False,
    **learn_kwargs,
) -> tuple[float, float]:
    before = mean_reward(model, eval_env_fn(EVAL_SEED), deterministic)
    model.learn(steps, **learn_kwargs)
    after = mean_reward(model, eval_env_fn(EVAL_SEED), deterministic)
    print(f"{type(model).__name__}: {before:.3f} -> {after:.3f} in {steps} steps")
    return before, after


def test_ppo_learns_count_up():
    """PPO, 3072 steps (24 updates of 128 steps, 384 gradient steps), clip range 0.4: mean reward
    rises by at least 0.4. PPO's ratio clip is what slows a near-uniform policy over 50257 tokens
    (each update may raise a rewarded token's probability by only ~20% at clip 0.2). The take-off
    is sudden and its timing varies with the seed: at 2048 steps seeds 1, 2, 3 reached 1.00 and
    seeds 0 and 4 were still at 0.14 and 0.09; at 3072 steps seed 0 reached 0.92, seed 4 1.00."""
    set_random_seed(TRAIN_SEED)
    model = PPO(
        LMActorCriticPolicy,
        count_up_env(TRAIN_SEED),
        n_steps=16,
        batch_size=32,
        n_epochs=4,
        clip_range=0.4,
        learning_rate=3e-3,
        policy_kwargs=TINY,
        seed=TRAIN_SEED,
    )
    before, after = train_and_compare(model, count_up_env, 3072)
    assert after >= before + 0.4


def test_a2c_learns_count_up():
    """A2C (SB3's RMSprop), 2048 steps (64 updates of 32): mean reward rises by at least 0.5."""
    set_random_seed(TRAIN_SEED)
    model = A2C(
        LMActorCriticPolicy,
        count_up_env(TRAIN_SEED),
        n_steps=4,
        learning_rate=3e-3,
        policy_kwargs=TINY,
        seed=TRAIN_SEED,
    )
    before, after = train_and_compare(model, count_up_env, 2048)
    assert after >= before + 0.5


def test_maskable_ppo_nlpo_learns_word_sort():
    """MaskablePPO with NLPO masks (top-p 0.9 of a lagged copy refreshed every 2 rollouts) on
    ``LMWordSort-v0`` (tiny GPT-2 over its 5-word vocabulary, exact optimum 1.0, uniform policy
    0.163), 2048 steps: mean reward rises by at least 0.25 over the untrained policy's.

    (On the 50257-token count-up task NLPO did not learn in 2048 steps here while PPO did: 0.09 ->
    0.11; that gap is open, see the issue notes.)
    """
    from lm_gym.models import load_causal_lm
    from lm_gym.tasks.toy import LMWordSortEnv

    def sort_env(seed: int, n_envs: int = N_ENVS) -> VecEnv:
        env = DummyVecEnv([LMWordSortEnv for _ in range(n_envs)])
        env.seed(seed)
        return env

    set_random_seed(TRAIN_SEED)
    model = MaskablePPO(
        MaskableLMActorCriticPolicy,
        sort_env(TRAIN_SEED),
        n_steps=32,
        batch_size=64,
        n_epochs=4,
        learning_rate=1e-3,
        gamma=1.0,
        rollout_buffer_class=NLPORolloutBuffer,
        policy_kwargs={"model": load_causal_lm("tiny-gpt2", vocab_size=5), "nlpo_top_p": 0.9},
        seed=TRAIN_SEED,
    )
    before, after = train_and_compare(
        model,
        sort_env,
        2048,
        use_masking=False,
        callback=NLPOMaskUpdateCallback(update_every=2),
    )
    assert after >= before + 0.25


def test_dqn_learns_count_up():
    """DQN (greedy evaluation), 1024 steps (448 gradient steps): mean reward rises by at least
    0.5. The untrained greedy policy scores 0 (its arg-max token is not a number)."""
    set_random_seed(TRAIN_SEED)
    model = DQN(
        LMDQNPolicy,
        count_up_env(TRAIN_SEED),
        learning_rate=1e-3,
        learning_starts=128,
        buffer_size=10_000,
        batch_size=32,
        train_freq=2,
        target_update_interval=128,
        exploration_fraction=0.5,
        policy_kwargs=TINY,
        seed=TRAIN_SEED,
    )
    before, after = train_and_compare(model, count_up_env, 1024, deterministic=True)
    assert after >= before + 0.5


def test_ppo_learns_sentiment_with_bounded_kl():
    """PPO on LMText-v0 (2 new tokens, VADER sentiment in [0, 1]) with an adaptive KL penalty to
    the initial policy (coef 0.02, target 4 nats per episode, horizon 256 steps: at most 10% per
    rollout of 128 steps), 3072 steps, lr 3e-3, clip range 0.4. Asserted: the task reward rises by
    at least 0.15; every rollout's coefficient is the controller's exact step for that rollout's
    64 episodes (up while KL > target, down while below); the mean KL of the last 4 rollouts stays
    below a collapsed policy's (one token per step: 2 x ln(50257) = 21.6 nats).

    The controller does not hold the KL near 4 nats in a run this short, and this test does not
    claim it (its tracking is tested on a closed loop in tests/agents/algorithms/test_kl.py).
    Measured with this random-init tiny GPT-2: the policy barely moves for ~15 rollouts (KL < 1.5, so the
    coefficient winds down), then its KL jumps past 10 within one update, with the reward gain; a
    coefficient that rises by at most 10-20% a rollout cannot catch up, and a collapsed policy
    gives no gradient to pull back. Target 8 with a floor (min_coef=coef, horizon 128) kept the
    last-4 KL at 8-9.5 nats, but the reward gain varied from 0.03 to 0.15 with the seed; target 4
    with the floor held the KL (4.1, 2.4) and lost the gain (0.488 -> 0.515)."""
    set_random_seed(TRAIN_SEED)
    coef, target, horizon = 0.02, 4.0, 256
    model = PPO(
        LMActorCriticPolicy,
        text_env(TRAIN_SEED),
        n_steps=16,
        batch_size=32,
        n_epochs=4,
        learning_rate=3e-3,
        clip_range=0.4,
        policy_kwargs=TINY,
        seed=TRAIN_SEED,
    )
    callback = KLPenaltyCallback(coef=coef, target_kl=target, horizon=horizon)
    before, after = train_and_compare(model, text_env, 3072, callback=callback)
    kls = np.array([h["kl"] for h in callback.history])
    coefs = np.array([coef] + [h["kl_coef"] for h in callback.history])
    print("KL per episode:", np.round(kls, 2).tolist())
    print("KL coef:", np.round(coefs, 4).tolist())
    assert len(kls) == 24 and all(h["episodes"] == 64 for h in callback.history)
    steps = 1 + np.clip(kls / target - 1, -0.2, 0.2) * 128 / horizon
    np.testing.assert_allclose(coefs[1:], coefs[:-1] * steps, rtol=1e-9)
    assert after >= before + 0.15
    assert np.mean(kls[-4:]) < 2 * np.log(50257)
