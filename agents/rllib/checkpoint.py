"""The policy of an RLlib run without Ray: env ids, tied weights, evaluation, loading a checkpoint.

Nothing here imports Ray: a run folder written by :func:`agents.rllib.train_rllib` is evaluated and
exported with lm-gym's own code (:class:`agents.networks.actor_critic.CausalLMActorCritic`).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from agents.networks.actor_critic import CausalLMActorCritic, RolloutKVCache

if TYPE_CHECKING:
    from agents.rllib.module import LMRLModule

__all__ = [
    "CHECKPOINT_DIR",
    "DEFAULT_MODEL",
    "MODULE_ID",
    "evaluate_policy",
    "load_policy",
    "qualified_env_id",
    "state_nbytes",
    "tied_state_keys",
]

#: The model used when none is given: the built-in 2-layer GPT-2 (random init, no download).
DEFAULT_MODEL = "tiny-gpt2"
#: The checkpoint folder inside a run folder.
CHECKPOINT_DIR = "checkpoint"
#: RLlib's id of the single module.
MODULE_ID = "default_policy"


def qualified_env_id(env_id: str) -> str:
    """The id that env runners must pass to ``gymnasium.make_vec``: ``"lm_gym:<id>"`` for lm-gym ids.

    An env runner makes its envs in its own process, where only the ``module:`` prefix makes
    Gymnasium import (and so register) lm-gym. An id that already names a module or is not an
    lm-gym id is returned as is.

    :param env_id: ``"LMCountUp-v0"`` or ``"lm_gym:LMCountUp-v0"``.
    """
    if ":" in env_id:
        return env_id
    from lm_gym.envs.registration import ENV_ENTRIES

    return f"lm_gym:{env_id}" if any(e.id == env_id for e in ENV_ENTRIES) else env_id


def tied_state_keys(module: torch.nn.Module) -> list[str]:
    """Keys of ``module.state_dict()`` whose tensor is the same memory as an earlier key's.

    For GPT-2 this is the LM head's weight (tied to the token embedding ``wte``): a state without
    these keys holds the matrix once, and loading it restores both, because the two parameters are
    one tensor.

    :param module: any module.
    :return: the later key of each tied pair, in ``state_dict`` order.
    """
    seen: set[tuple[int, int, tuple[int, ...], torch.dtype]] = set()
    tied = []
    for key, tensor in module.state_dict(keep_vars=True).items():
        if tensor.numel() == 0:
            continue
        ident = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.dtype,
        )
        if ident in seen:
            tied.append(key)
        else:
            seen.add(ident)
    return tied


def state_nbytes(state: Mapping[str, Any]) -> int:
    """Bytes of the arrays and tensors in a (nested) state dict.

    :param state: a module state as RLlib passes it around (NumPy arrays or tensors, nested dicts).
    """
    total = 0
    for value in state.values():
        if isinstance(value, Mapping):
            total += state_nbytes(value)
        elif isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total


def evaluate_policy(
    net: CausalLMActorCritic | LMRLModule,
    env_id: str,
    *,
    episodes: int = 32,
    seed: int = 10_000,
    env_kwargs: Mapping[str, Any] | None = None,
    deterministic: bool = False,
    batch_size: int = 16,
) -> list[float]:
    """Episode returns of the network's policy, one episode per seed ``seed, seed+1, ...``.

    Runs in this process (no Ray), ``batch_size`` envs at a time, with a KV cache. Actions are
    sampled from the logits (``deterministic=False``: the policy PPO trains) with a generator
    seeded by ``seed``, or the argmax.

    :param net: the network, or a :class:`~agents.rllib.LMRLModule` (its network is used).
    :param env_id: an lm-gym id.
    :param episodes: number of episodes (use seeds that training did not draw).
    :param seed: the first env seed.
    :param env_kwargs: keyword arguments for ``gymnasium.make``.
    :param deterministic: greedy actions instead of samples.
    :param batch_size: envs stepped together.
    :return: one return per episode, in seed order.
    """
    if not isinstance(net, CausalLMActorCritic):
        net = net.net
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    returns: list[float] = []
    try:
        for start in range(0, episodes, batch_size):
            n = min(batch_size, episodes - start)
            envs = [gym.make(qualified_env_id(env_id), **dict(env_kwargs or {})) for _ in range(n)]
            obs = [env.reset(seed=seed + start + i)[0] for i, env in enumerate(envs)]
            totals, done = [0.0] * n, [False] * n
            cache = RolloutKVCache()
            while not all(done):
                ids = torch.as_tensor(np.stack([o["input_ids"] for o in obs]), device=device)
                mask = torch.as_tensor(np.stack([o["attention_mask"] for o in obs]), device=device)
                with torch.no_grad():
                    logits, _ = net(ids, mask, cache)
                if deterministic:
                    actions = logits.argmax(-1)
                else:
                    probs = torch.softmax(logits.double(), -1)
                    actions = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                for i, env in enumerate(envs):
                    if done[i]:
                        continue
                    obs[i], reward, terminated, truncated, _ = env.step(int(actions[i]))
                    totals[i] += float(reward)
                    done[i] = bool(terminated or truncated)
            returns.extend(totals)
            for env in envs:
                env.close()
    finally:
        net.train(was_training)
    return returns


def load_policy(
    run_dir: str | os.PathLike[str], *, checkpoint: str | os.PathLike[str] | None = None
) -> CausalLMActorCritic:
    """The trained network of a :func:`~agents.rllib.train_rllib` run folder, in this process.

    Reads the module state of the checkpoint (a pickle of NumPy arrays) without Ray.

    :param run_dir: the run folder (its ``config.json`` names the model).
    :param checkpoint: a checkpoint folder (default ``run_dir/checkpoint``).
    :return: a :class:`~agents.networks.actor_critic.CausalLMActorCritic` in eval mode, on CPU.
    :raises FileNotFoundError: no config or no module state.
    :raises ValueError: the state does not fit the model the config names.
    """
    run = Path(run_dir)
    ckpt = Path(checkpoint) if checkpoint is not None else run / CHECKPOINT_DIR
    options = json.loads((run / "config.json").read_text())
    state_file = ckpt / "learner_group" / "learner" / "rl_module" / MODULE_ID / "module_state.pkl"
    if not state_file.exists():
        raise FileNotFoundError(f"No RLModule state at {state_file}.")
    with state_file.open("rb") as f:
        state = pickle.load(f)
    net = CausalLMActorCritic(
        options.get("model", DEFAULT_MODEL), value_hidden=int(options.get("value_hidden", 0))
    )
    prefix = "net."
    weights = {
        k[len(prefix) :]: torch.from_numpy(np.array(v))
        for k, v in state.items()
        if k.startswith(prefix)
    }
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k not in tied_state_keys(net)]
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint {ckpt} does not fit model {options.get('model')!r}: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}."
        )
    return net.eval()
