"""The options of an RLlib PPO run (plain data: importable without Ray)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PPOOptions"]


@dataclass
class PPOOptions:
    """PPO and cluster options of :func:`agents.rllib.train_rllib` beyond its main arguments.

    :param num_envs_per_env_runner: envs each runner steps as one batch (one forward per step).
    :param env_kwargs: keyword arguments for every env (``gymnasium.make_vec(id, **env_kwargs)``).
    :param learning_rate: Adam's learning rate: 1e-3 to 1e-2 for the random-init tiny GPT-2,
        1e-6 to 1e-5 for a pretrained GPT-2.
    :param train_batch_size: env steps per update, over all learners (each takes an equal share).
    :param minibatch_size: transitions per gradient step, per learner (with ``L`` learners, DDP
        averages ``L`` of them: the effective minibatch is ``L * minibatch_size``).
    :param num_epochs: passes over the train batch per update.
    :param gamma: discount (1.0: lm-gym's rewards come at the end of the episode).
    :param gae_lambda: GAE lambda.
    :param clip_range: PPO's ratio clip.
    :param ent_coef: entropy bonus coefficient.
    :param vf_coef: value loss coefficient.
    :param max_grad_norm: global gradient-norm clip.
    :param value_hidden: width of the value head's hidden layer (0: linear).
    :param kv_cache: KV cache in the env runners' module.
    :param episode_forward: the learners evaluate a batch with one trunk forward per episode
        instead of one full-window forward per transition (same numbers; see
        :func:`agents.rllib.module.episode_last_hidden`).
    :param num_cpus_per_env_runner: Ray CPUs reserved per env runner.
    :param num_cpus_per_learner: Ray CPUs reserved per learner.
    :param num_gpus_per_learner: GPUs per learner (then DDP uses NCCL).
    :param checkpoint_every: iterations between checkpoints (one is also written at the end).
    :param eval_episodes: episodes of the final evaluation in the driver (0: none).
    :param eval_seed: first seed of the evaluation episodes (held out from training's seeds).
    """

    num_envs_per_env_runner: int = 8
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = 1e-3
    train_batch_size: int = 512
    minibatch_size: int = 128
    num_epochs: int = 4
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    value_hidden: int = 0
    kv_cache: bool = True
    episode_forward: bool = True
    num_cpus_per_env_runner: float = 1
    num_cpus_per_learner: float = 1
    num_gpus_per_learner: float = 0
    checkpoint_every: int = 1
    eval_episodes: int = 32
    eval_seed: int = 1_000_000

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> PPOOptions:
        """Build from keyword arguments, with a clear error for an unknown name.

        :raises TypeError: a name that is not an option.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"Unknown option(s) {unknown}; known: {sorted(names)}.")
        if kwargs.get("env_kwargs") is None:
            kwargs.pop("env_kwargs", None)
        else:
            kwargs["env_kwargs"] = dict(kwargs["env_kwargs"])
        return cls(**kwargs)
