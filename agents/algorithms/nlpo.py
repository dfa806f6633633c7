"""NLPO-style action masking (RL4LMs): valid tokens are the top-p tokens of a lagged policy copy.

* :class:`TopPMasker`: a frozen, lagged copy of the policy's LM and a top-p threshold; turns
  observations into boolean masks over the vocabulary (with its own KV cache in rollouts).
* :class:`NLPOMaskUpdateCallback`: copies the current policy into the lagged model every N rollouts
  (at the start of a rollout, so that a rollout and the update after it use the same masks).
* :class:`NLPORolloutBuffer`: sb3-contrib's ``MaskableDictRolloutBuffer`` without its float32
  ``(n_steps, n_envs, vocab)`` array (3.3 GB at 2048 x 8 x 50257). Masks that come from the policy's
  own NLPO masker are not stored at all: they are a deterministic function of the observation and
  the lagged model, so the update recomputes them (one extra no-grad forward per minibatch). Masks
  given by an env (``action_masks()``) are stored as packed bits (vocab / 8 bytes per step).
* :class:`NLPOActionMaskWrapper`: the Gymnasium way: ``info["action_mask"]`` (int8) and an
  ``action_masks()`` method, for agents outside SB3 or ``MaskablePPO(use_masking=True)``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import (
    MaskableDictRolloutBuffer,
    MaskableDictRolloutBufferSamples,
)
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from agents.networks.actor_critic import CausalLMActorCritic, RolloutKVCache

__all__ = [
    "NLPOActionMaskWrapper",
    "NLPOMaskUpdateCallback",
    "NLPORolloutBuffer",
    "TopPMasker",
    "top_p_mask",
]


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """The smallest set of most likely tokens whose probability reaches ``top_p`` (nucleus).

    :param logits: ``(batch, vocab)``.
    :param top_p: in (0, 1]; the most likely token is always kept.
    :return: ``(batch, vocab)`` bool mask.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the strictly more likely tokens
    keep = before < top_p
    keep[:, 0] = True
    return torch.zeros_like(keep).scatter_(1, order, keep)


class TopPMasker(nn.Module):
    """A lagged, frozen LM whose top-p tokens are the valid actions.

    :param net: the lagged network (e.g. ``policy.net.frozen_lm_copy()``); frozen here.
    :param top_p: nucleus threshold in (0, 1].
    """

    def __init__(self, net: CausalLMActorCritic, top_p: float = 0.9) -> None:
        super().__init__()
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.top_p = float(top_p)
        self.kv_cache = RolloutKVCache()

    @classmethod
    def from_model(cls, model: Any = "gpt2", top_p: float = 0.9) -> TopPMasker:
        """A masker over a model name/folder/object (see :class:`CausalLMActorCritic`)."""
        return cls(CausalLMActorCritic(model, value_head=False), top_p)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        use_cache: bool = False,
        cache: RolloutKVCache | None = None,
    ) -> torch.Tensor:
        """Boolean masks ``(batch, vocab)`` for a batch of windows.

        :param input_ids: ``(batch, length)``.
        :param attention_mask: ``(batch, length)``.
        :param use_cache: use the masker's own rollout KV cache.
        :param cache: use this cache instead (e.g. one per env wrapper).
        """
        if cache is None and use_cache:
            cache = self.kv_cache
        logits, _ = self.net(input_ids, attention_mask, cache)
        return top_p_mask(logits, self.top_p)

    @torch.no_grad()
    def refresh_from(self, net: CausalLMActorCritic) -> None:
        """Copy ``net``'s LM weights into the lagged model (the KV caches notice the change)."""
        self.net.lm.load_state_dict(net.lm.state_dict())
        self.kv_cache.reset()

    def train(self, mode: bool = True) -> TopPMasker:
        """The lagged model always stays in eval mode."""
        return super().train(False)


class NLPOMaskUpdateCallback(BaseCallback):
    """Refresh the NLPO mask model from the policy every ``update_every`` rollouts.

    The copy is made at the start of a rollout, so each rollout and the update that follows it
    see the same lagged model (the update recomputes the rollout's masks).

    :param update_every: rollouts between refreshes (RL4LMs' ``target_update_iterations``).
    :param verbose: SB3 verbosity.
    """

    def __init__(self, update_every: int = 4, verbose: int = 0) -> None:
        super().__init__(verbose)
        if update_every < 1:
            raise ValueError("update_every must be at least 1.")
        self.update_every = update_every
        self.rollouts = 0
        self.refreshes = 0

    def _on_rollout_start(self) -> None:
        if self.rollouts > 0 and self.rollouts % self.update_every == 0:
            refresh = getattr(self.model.policy, "refresh_mask_model", None)
            if refresh is None:
                raise TypeError("NLPOMaskUpdateCallback needs a MaskableLMActorCriticPolicy.")
            refresh()
            self.refreshes += 1
            self.logger.record("train/nlpo_mask_refreshes", self.refreshes)
        self.rollouts += 1

    def _on_step(self) -> bool:
        return True


class NLPORolloutBuffer(MaskableDictRolloutBuffer):
    """``MaskableDictRolloutBuffer`` that stores no float32 masks.

    Steps added without masks (the policy's own NLPO masks, recomputed in the update) store
    nothing; masks given by the env are stored bit-packed (``ceil(vocab / 8)`` bytes per step)
    and unpacked per minibatch. Pass it as ``MaskablePPO(..., rollout_buffer_class=NLPORolloutBuffer)``.

    :param args: as ``MaskableDictRolloutBuffer``.
    :param kwargs: as ``MaskableDictRolloutBuffer``.
    """

    packed_masks: np.ndarray | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def reset(self) -> None:
        if not isinstance(self.action_space, spaces.Discrete):
            raise ValueError("NLPORolloutBuffer supports Discrete action spaces only.")
        self.mask_dims = int(self.action_space.n)
        self.packed_masks = None
        self.action_masks = None  # type: ignore[assignment]
        DictRolloutBuffer.reset(self)

    def add(self, *args: Any, action_masks: np.ndarray | None = None, **kwargs: Any) -> None:
        if action_masks is not None:
            if self.packed_masks is None:
                if self.pos > 0:
                    raise ValueError("Masks must be given at every step of a rollout or never.")
                nbytes = (self.mask_dims + 7) // 8
                self.packed_masks = np.zeros((self.buffer_size, self.n_envs, nbytes), np.uint8)
            masks = np.asarray(action_masks).reshape(self.n_envs, self.mask_dims).astype(bool)
            self.packed_masks[self.pos] = np.packbits(masks, axis=-1)
        elif self.packed_masks is not None:
            raise ValueError("Masks must be given at every step of a rollout or never.")
        DictRolloutBuffer.add(self, *args, **kwargs)

    def get(  # type: ignore[override]
        self, batch_size: int | None = None
    ) -> Generator[MaskableDictRolloutBufferSamples, None, None]:
        assert self.full, ""
        indices = np.random.permutation(self.buffer_size * self.n_envs)
        if not self.generator_ready:
            for key, obs in self.observations.items():
                self.observations[key] = self.swap_and_flatten(obs)
            for name in ("actions", "values", "log_probs", "advantages", "returns"):
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            if self.packed_masks is not None:
                self.packed_masks = self.swap_and_flatten(self.packed_masks)
            self.generator_ready = True
        if batch_size is None:
            batch_size = self.buffer_size * self.n_envs
        start = 0
        while start < self.buffer_size * self.n_envs:
            yield self._get_samples(indices[start : start + batch_size])
            start += batch_size

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> MaskableDictRolloutBufferSamples:
        masks = None
        if self.packed_masks is not None:
            bits = np.unpackbits(self.packed_masks[batch_inds], axis=-1, count=self.mask_dims)
            masks = torch.as_tensor(bits.reshape(-1, self.mask_dims), device=self.device).bool()
        return MaskableDictRolloutBufferSamples(
            observations={k: self.to_torch(o[batch_inds]) for k, o in self.observations.items()},
            actions=self.to_torch(self.actions[batch_inds]),
            old_values=self.to_torch(self.values[batch_inds].flatten()),
            old_log_prob=self.to_torch(self.log_probs[batch_inds].flatten()),
            advantages=self.to_torch(self.advantages[batch_inds].flatten()),
            returns=self.to_torch(self.returns[batch_inds].flatten()),
            action_masks=masks,  # type: ignore[arg-type]
        )

    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays (observations, masks and the per-step scalars)."""
        total = sum(o.nbytes for o in self.observations.values())
        for name in ("actions", "rewards", "returns", "episode_starts", "values", "log_probs"):
            total += self.__dict__[name].nbytes
        total += self.advantages.nbytes
        if self.packed_masks is not None:
            total += self.packed_masks.nbytes
        return total


class NLPOActionMaskWrapper(gym.Wrapper):
    """Expose NLPO masks the Gymnasium way: ``info["action_mask"]`` (int8) and ``action_masks()``.

    The mask of the current observation is computed by a shared :class:`TopPMasker` (e.g.
    ``model.policy.masker``, or ``TopPMasker.from_model("gpt2")``), with this wrapper's own KV cache.
    Share one masker between envs of a ``DummyVecEnv``; with sub-process vector envs each process
    holds a copy, which a policy refresh does not reach.

    :param env: an lm-gym env.
    :param masker: the masker.
    """

    def __init__(self, env: gym.Env, masker: TopPMasker) -> None:
        super().__init__(env)
        self.masker = masker
        self._cache = RolloutKVCache()
        self._mask: np.ndarray | None = None

    def _compute(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        device = next(self.masker.parameters()).device
        ids = torch.as_tensor(obs["input_ids"], device=device).reshape(1, -1)
        mask = torch.as_tensor(obs["attention_mask"], device=device).reshape(1, -1)
        self._mask = self.masker(ids, mask, cache=self._cache)[0].cpu().numpy().astype(np.int8)
        return self._mask

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        info["action_mask"] = self._compute(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["action_mask"] = self._compute(obs)
        return obs, reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """The boolean mask of valid actions for the current observation."""
        if self._mask is None:
            raise RuntimeError("action_masks() called before reset().")
        return self._mask.astype(bool)
