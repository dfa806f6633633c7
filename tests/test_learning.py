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
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from agents.kl import KLPenaltyCallback, KLPenaltyVecEnv
from agents.nlpo import NLPOMaskUpdateCallback, NLPORolloutBuffer
from agents.policies import GPT2ActorCriticPolicy, GPT2DQNPolicy, MaskableGPT2ActorCriticPolicy
from lm_gym.tasks.text_generation import TextGenerationEnv
from lm_gym.tasks.verifiable import CountUpEnv

pytestmark = pytest.mark.slow

COUNT_UP = {"max_new_tokens": 2, "target": 1}
TINY = {"model": "tiny-gpt2"}
TRAIN_SEED, EVAL_SEED = 0, 10_000
N_ENVS, EVAL_EPISODES = 8, 64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    """PPO, 2048 steps (16 updates of 128 steps, 256 gradient steps), clip range 0.4: mean reward
    rises by at least 0.4. PPO's ratio clip is what slows a near-uniform policy over 50257 tokens
    (each update may raise a rewarded token's probability by only ~20% at clip 0.2); seen here
    with clip 0.4: 0.02 -> 1.00 (another seed); with clip 0.2: 0.06 -> 0.98 and 0.02 -> 0.38."""
    set_random_seed(TRAIN_SEED)
    model = PPO(
        GPT2ActorCriticPolicy,
        count_up_env(TRAIN_SEED),
        n_steps=16,
        batch_size=32,
        n_epochs=4,
        clip_range=0.4,
        learning_rate=3e-3,
        policy_kwargs=TINY,
        seed=TRAIN_SEED,
    )
    before, after = train_and_compare(model, count_up_env, 2048)
    assert after >= before + 0.4


def test_a2c_learns_count_up():
    """A2C (SB3's RMSprop), 2048 steps (64 updates of 32): mean reward rises by at least 0.5."""
    set_random_seed(TRAIN_SEED)
    model = A2C(
        GPT2ActorCriticPolicy,
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
        MaskableGPT2ActorCriticPolicy,
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
        GPT2DQNPolicy,
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
    the initial policy (target 4 nats per episode, horizon 256), 3072 steps, lr 3e-3, clip range
    0.4: the task reward rises by at least 0.15 (seen here with seeds 1 and 2: 0.488 -> 0.873,
    0.495 -> 0.881) and the mean KL of the last 4 rollouts stays below a collapsed policy's (one
    token per step: 2 x ln(50257) = 21.6 nats; seen: 19.2, 19.7). The controller does not hold
    the KL near its target here: a known gap, tracked in the issue notes."""
    set_random_seed(TRAIN_SEED)
    env = KLPenaltyVecEnv(text_env(TRAIN_SEED), coef=0.02, target_kl=4.0, horizon=256)
    model = PPO(
        GPT2ActorCriticPolicy,
        env,
        n_steps=16,
        batch_size=32,
        n_epochs=4,
        learning_rate=3e-3,
        clip_range=0.4,
        policy_kwargs=TINY,
        seed=TRAIN_SEED,
    )
    callback = KLPenaltyCallback()
    before, after = train_and_compare(model, text_env, 3072, callback=callback)
    kls = [h["kl"] for h in callback.history]
    print("KL per episode:", np.round(kls, 2).tolist())
    print("KL coef:", round(env.coef, 4))
    assert after >= before + 0.15
    assert np.mean(kls[-4:]) < 2 * np.log(50257)
    assert env.coef > 0
