"""lm-gym on Ray RLlib: the causal-LM actor-critic as an RLlib ``RLModule``, and PPO on a Ray
cluster.

The multi-machine front end of :class:`agents.networks.actor_critic.CausalLMActorCritic`, the same
network that the SB3 policies of :mod:`agents.networks.policies` adapt: RLlib's env runners sample
the registered lm-gym envs in their own processes (on any node of a Ray cluster) and its learners
update the network with PPO, data-parallel (torch DDP) when there are several. Needs the ``ray``
extra (``pip install "lm-gym[ray]"``); ``agents/README_rllib.md`` explains clusters.

* :class:`LMRLModule` (:mod:`agents.rllib.module`): ``TorchRLModule`` + ``ValueFunctionAPI``;
  logits from the LM head at the last real token, values from the value head on the shared trunk,
  a KV cache on the env runners, the tied embedding/LM-head matrix sent once per weight sync.
  ``GPT2RLModule`` is its former name (an alias).
* :func:`train_rllib` (:mod:`agents.rllib.train`): PPO with a run folder like the other agents'
  (``config.json``, ``progress.csv`` with SB3's columns, ``metrics.json``, ``checkpoint/``), resumed
  from its checkpoint by the next call.
* :func:`evaluate_policy`, :func:`load_policy` (:mod:`agents.rllib.checkpoint`): evaluation and the
  trained network of a run folder, without Ray.
* :class:`RLlibPPOAgent`, :func:`make_rllib_ppo` (:mod:`agents.rllib.agent`): the agent protocol of
  the zoo (``learn``/``predict``/``save``/``load``), registered as ``"rllib-ppo"``.

Example (a local loopback cluster; 2 env runners, 2 DDP learners)::

    from agents.rllib import train_rllib

    result = train_rllib(
        "LMCountUp-v0", num_env_runners=2, num_learners=2, steps=20_000, seed=0,
        out_dir="runs/countup-rllib", model="tiny-gpt2", learning_rate=1e-3,
    )
    print(result.mean_reward, result.checkpoint)

Names are imported on first use: ``import agents.rllib`` and the ``checkpoint`` and ``agent`` modules
work without Ray; the module and training need it. The ``lm_gym.agents`` entry point of the installed
package (``setup.cfg``) lets ``lm-gym agents``/``make_agent("rllib-ppo", ...)`` find the agent with
nothing imported first.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DEFAULT_MODEL",
    "GPT2RLModule",
    "LMRLModule",
    "PPOOptions",
    "RLlibPPOAgent",
    "RLlibRunResult",
    "build_ppo_config",
    "code_runtime_env",
    "evaluate_policy",
    "load_policy",
    "loopback_ray_init_kwargs",
    "make_rllib_ppo",
    "qualified_env_id",
    "state_nbytes",
    "synced_state_bytes",
    "tied_state_keys",
    "train_rllib",
    "weight_sync_bytes",
]

_WHERE = {
    "DEFAULT_MODEL": "checkpoint",
    "evaluate_policy": "checkpoint",
    "load_policy": "checkpoint",
    "qualified_env_id": "checkpoint",
    "state_nbytes": "checkpoint",
    "tied_state_keys": "checkpoint",
    "LMRLModule": "module",
    "GPT2RLModule": "module",
    "weight_sync_bytes": "module",
    "PPOOptions": "options",
    "RLlibRunResult": "train",
    "build_ppo_config": "train",
    "code_runtime_env": "train",
    "loopback_ray_init_kwargs": "train",
    "synced_state_bytes": "train",
    "train_rllib": "train",
    "RLlibPPOAgent": "agent",
    "make_rllib_ppo": "agent",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'agents.rllib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"agents.rllib.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
