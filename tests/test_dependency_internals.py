"""The private parts of dependencies that lm-gym still relies on, one test per dependency.

Each is used because no public way exists (or, for SB3, because the subclass extends the
algorithm's own loop, as SB3's contrib algorithms do). An upgrade that changes one fails here, by
name, instead of as a wrong number in a learning test:

* stable-baselines3: ``OnPolicyAlgorithm._last_obs`` / ``_last_episode_starts`` /
  ``_update_info_buffer`` / ``_setup_learn`` (EpisodePPO's rollout loop, GRPO's group resets, the
  KL callback's look at the next observation) and ``RolloutBuffer._get_samples`` (whole-episode
  minibatches, NLPO's mask buffer).
* torch: ``Tensor._version``, the in-place modification counter behind
  ``CausalLMActorCritic.param_version`` (the policies' KV caches go stale when it moves).
* Gymnasium: ``VectorEnv._add_info``, which writes one env's info into the vector infos in
  Gymnasium's own format (``DeferredRewardVectorWrapper``).
"""

from __future__ import annotations

import inspect

import gymnasium as gym
import numpy as np
import torch


def test_sb3_on_policy_loop_internals():
    from stable_baselines3 import PPO
    from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, device="cpu")
    model._setup_learn(8)
    assert isinstance(model._last_obs, np.ndarray) and model._last_obs.shape == (1, 4)
    assert model._last_episode_starts is not None and model._last_episode_starts.shape == (1,)
    assert list(inspect.signature(model._update_info_buffer).parameters) == ["infos", "dones"]
    for buffer in (RolloutBuffer, DictRolloutBuffer):
        assert list(inspect.signature(buffer._get_samples).parameters) == [
            "self",
            "batch_inds",
            "env",
        ]
    buf = model.rollout_buffer
    model.collect_rollouts(model.env, _NoCallback(), buf, n_rollout_steps=8)
    samples = buf._get_samples(np.arange(4))
    assert len(samples.observations) == 4 and len(samples.actions) == 4


class _NoCallback:
    """The least of SB3's callback protocol that ``collect_rollouts`` calls."""

    def on_rollout_start(self) -> None: ...

    def on_rollout_end(self) -> None: ...

    def update_locals(self, locals_: dict) -> None: ...

    def on_step(self) -> bool:
        return True


def test_torch_version_counter_moves_on_in_place_writes():
    param = torch.nn.Parameter(torch.zeros(3))
    before = param._version
    with torch.no_grad():
        param.add_(1.0)
    assert param._version > before
    optimizer = torch.optim.SGD([param], lr=0.1)
    param.grad = torch.ones(3)
    before = param._version
    optimizer.step()
    assert param._version > before


def test_gymnasium_vector_add_info_format():
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    try:
        infos = envs._add_info({}, {"metrics": {"bleu": 0.5}}, 1)
        assert infos["metrics"]["bleu"][1] == 0.5 and list(infos["metrics"]["_bleu"]) == [
            False,
            True,
        ]
        assert list(infos["_metrics"]) == [False, True]
    finally:
        envs.close()
