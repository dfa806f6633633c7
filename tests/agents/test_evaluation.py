"""Batched evaluation (agents.common.evaluation): n_envs episodes at once give the episodes that one
at a time gives, the reference metrics of the batched forwards match an unpadded forward, env
copies, agents that cannot batch, and the summary's keys."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import lm_gym  # noqa: F401  (registers the ids)
from agents.common.base import batch_obs, real_tokens
from agents.common.evaluation import EvalResult, copy_env, evaluate_agent
from agents.registry import make_agent
from lm_gym.models import load_causal_lm, tokenizer_name_for_model

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Prompt of .* cut from the left"),
]

TEXT = {"max_prompt_tokens": 16, "max_new_tokens": 6, "split": "test"}
MARK = 31  # the token the scripted agent writes ("@")


class ScriptedAgent:
    """Writes ``MARK`` tokens, then EOS after a prompt-dependent count (1 to 4 tokens): episodes of
    different lengths. Its policy is a point mass, so its KL to a reference is the reference NLL.

    :param eos: the EOS id.
    :param vocab: the action space size.
    :param batch: accept batches (otherwise ``predict`` refuses them, like a single-obs agent).
    """

    def __init__(self, eos: int, vocab: int, batch: bool = True) -> None:
        self.eos, self.vocab = eos, vocab
        self.supports_batch_predict = batch
        self.calls: list[int] = []

    def _act(self, row: Mapping[str, np.ndarray]) -> int:
        tokens = real_tokens(row)
        steps = 0
        while steps < len(tokens) and tokens[-1 - steps] == MARK:
            steps += 1
        prompt = tokens[: len(tokens) - steps]
        target = 1 + sum(prompt) % 4
        return self.eos if steps + 1 >= target else MARK

    def predict(self, observation: Any, deterministic: bool = True) -> tuple[Any, None]:
        obs, single = batch_obs(observation)
        if not single and not self.supports_batch_predict:
            raise AssertionError("a batch was given to an agent that cannot batch")
        self.calls.append(len(obs["input_ids"]))
        actions = np.array(
            [self._act({"input_ids": i, "attention_mask": m}) for i, m in zip(*obs.values())]
        )
        return (int(actions[0]) if single else actions), None

    def action_log_probs(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        actions, _ = self.predict(observations)
        actions = np.atleast_1d(actions)
        out = np.full((len(actions), self.vocab), -np.inf, dtype=np.float32)
        out[np.arange(len(actions)), actions] = 0.0
        return out


def assert_same_episodes(a: EvalResult, b: EvalResult) -> None:
    assert len(a.episodes) == len(b.episodes)
    for x, y in zip(a.episodes, b.episodes):
        assert (x.prompt, x.text, x.length, x.references) == (
            y.prompt,
            y.text,
            y.length,
            y.references,
        )
        assert x.reward == pytest.approx(y.reward, abs=1e-9) and x.metrics == y.metrics
        assert x.ref_nll == pytest.approx(y.ref_nll, rel=1e-5, nan_ok=True)
        assert x.kl == pytest.approx(y.kl, rel=1e-5, abs=1e-5, nan_ok=True)


def test_greedy_batched_equals_one_at_a_time() -> None:
    """Procedural task (seeds): 5 episodes in 3 slots (one idles in the second round)."""
    agent = make_agent("greedy", "LMCountUp-v0", model="tiny-gpt2")
    kwargs = {"n_episodes": 5, "reference": "tiny-gpt2", "seed": 7}
    one = evaluate_agent(agent, "LMCountUp-v0", n_envs=1, **kwargs)
    four = evaluate_agent(agent, "LMCountUp-v0", n_envs=4, **kwargs)
    assert_same_episodes(one, four)
    assert len({e.prompt for e in one.episodes}) > 1
    for e in four.episodes:  # KL(point mass || p_ref) = -log p_ref(token)
        assert e.kl == pytest.approx(e.ref_nll, rel=1e-4)


def test_sb3_ppo_batched_equals_one_at_a_time() -> None:
    """An untrained SB3 PPO policy (KV-cached), deterministic, on a data-set task."""
    env = gym.make("LMText-v0", **TEXT)
    agent = make_agent("ppo", env, model="tiny-gpt2", seed=0, n_steps=8, batch_size=8)
    kwargs = {"n_episodes": 5, "reference": "tiny-gpt2", "env_kwargs": TEXT}
    one = evaluate_agent(agent, "LMText-v0", n_envs=1, **kwargs)
    four = evaluate_agent(agent, "LMText-v0", n_envs=4, **kwargs)
    assert_same_episodes(one, four)
    summary = four.summary()
    assert summary["kl"] > 0 and math.isfinite(summary["perplexity"])


def play(agent: Any, env: gym.Env, index: int, seed: int) -> tuple[list[int], int, str]:
    """Episode ``index`` played by hand: (its final real token ids, its length, its text)."""
    obs, _ = env.reset(seed=seed + index, options={"index": index})
    steps, info = 0, {}
    while True:
        action, _ = agent.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
        if terminated or truncated:
            return real_tokens(obs), steps, info["text"]


def test_variable_length_episodes_map_to_their_prompts() -> None:
    """Episodes that end at different steps: each is the episode played by hand on its sample,
    and its KL is its NLL (a point-mass policy), which checks the batched KL's per-episode
    offsets."""
    env = gym.make("LMText-v0", **TEXT)
    agent = ScriptedAgent(env.unwrapped.eos_token_id, int(env.action_space.n))
    kwargs = {"n_episodes": 7, "reference": "tiny-gpt2", "env_kwargs": TEXT, "seed": 3}
    one = evaluate_agent(agent, "LMText-v0", n_envs=1, **kwargs)
    batched = evaluate_agent(agent, "LMText-v0", n_envs=3, **kwargs)
    assert max(agent.calls) == 3
    assert_same_episodes(one, batched)
    assert len({e.length for e in batched.episodes}) > 1
    for i, e in enumerate(batched.episodes):
        _, length, text = play(agent, env, i, seed=3)
        assert (e.length, e.text) == (length, text)
        assert e.kl == pytest.approx(e.ref_nll, rel=1e-4)


def test_reference_nll_matches_an_unpadded_forward(tiny_lm: str) -> None:
    """The left-padded batched forward over episodes of different lengths (GPT-2's learned
    positions, Llama's rotary ones) gives each episode the NLL of a forward over its real tokens
    alone."""
    env = gym.make("LMText-v0", **TEXT, tokenizer=tokenizer_name_for_model(tiny_lm))
    agent = ScriptedAgent(env.unwrapped.eos_token_id, int(env.action_space.n))
    result = evaluate_agent(agent, env, n_episodes=4, reference=tiny_lm, n_envs=4, seed=0)
    assert len({e.length for e in result.episodes}) > 1
    ref = load_causal_lm(tiny_lm).eval()
    for i, e in enumerate(result.episodes):
        tokens, n, _ = play(agent, env, i, seed=0)
        ids = torch.tensor([tokens])
        with torch.no_grad():
            logq = torch.log_softmax(ref(ids).logits[0].float(), -1)
        cols = torch.arange(len(tokens) - n - 1, len(tokens) - 1)
        nll = -logq[cols, ids[0, cols + 1]].sum()
        assert e.ref_nll == pytest.approx(float(nll), rel=1e-4)


def test_env_instances_wrapped_or_not_are_copied() -> None:
    """An env made without gymnasium.make and one in a wrapper that records no arguments: the
    slots get copies (wrappers included) that play what the instance itself plays."""
    from lm_gym.tasks.verifiable import CountUpEnv

    class Bonus(gym.Wrapper):  # no recorded constructor args: cannot be rebuilt from a spec
        def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = self.env.step(action)
            return obs, float(reward) + 1.0, terminated, truncated, info

    base = CountUpEnv()
    for env in (base, Bonus(gym.make("LMCountUp-v0"))):
        copy = copy_env(env)
        assert type(copy) is type(env) and copy.unwrapped is not env.unwrapped
        agent = ScriptedAgent(env.unwrapped.eos_token_id, int(env.action_space.n))
        one = evaluate_agent(agent, env, n_episodes=4, n_envs=1)
        many = evaluate_agent(agent, env, n_episodes=4, n_envs=4)
        assert_same_episodes(one, many)
        assert len({e.prompt for e in many.episodes}) > 1
        if isinstance(env, Bonus):
            assert all(e.reward >= e.length for e in many.episodes)  # the wrapper's bonus


def test_agent_that_cannot_batch_plays_one_episode_at_a_time() -> None:
    env = gym.make("LMCountUp-v0")
    agent = ScriptedAgent(env.unwrapped.eos_token_id, int(env.action_space.n), batch=False)
    result = evaluate_agent(agent, env, n_episodes=3, n_envs=8)
    assert len(result.episodes) == 3 and set(agent.calls) == {1}


def test_a_batch_predict_that_returns_one_action_is_refused() -> None:
    class OneAction:
        def predict(self, observation: Any, deterministic: bool = True) -> tuple[int, None]:
            return 0, None

    with pytest.raises(ValueError, match="supports_batch_predict"):
        evaluate_agent(OneAction(), "LMCountUp-v0", n_episodes=2, n_envs=2)


def test_summary_keys_say_what_was_computed() -> None:
    env = gym.make("LMCountUp-v0")
    agent = ScriptedAgent(env.unwrapped.eos_token_id, int(env.action_space.n))
    summary = evaluate_agent(agent, env, n_episodes=2).summary()
    assert "perplexity" not in summary and "kl" not in summary  # no reference LM
    assert {"corpus_distinct-1", "corpus_distinct-2"} <= set(summary)
    assert "distinct-1" not in summary
    plain = SimpleNamespace(predict=agent.predict)  # no action_log_probs: no KL
    summary = evaluate_agent(plain, env, n_episodes=2, reference="tiny-gpt2").summary()
    assert math.isfinite(summary["perplexity"]) and "kl" not in summary
