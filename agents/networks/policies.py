"""Stable-baselines3 policies backed by any causal LM (GPT-2 by default, Llama, ...): thin adapters
over one network.

* :class:`LMActorCriticPolicy` for ``PPO``, ``A2C`` (and sb3-contrib ``TRPO``): the actor is the
  LM head (a categorical distribution over the vocabulary), the critic a value head on the same
  trunk's last hidden state.
* :class:`MaskableLMActorCriticPolicy` for sb3-contrib ``MaskablePPO``, with NLPO masking (the
  top-p tokens of a lagged copy of the policy, see :mod:`agents.algorithms.nlpo`).
* :class:`LMDQNPolicy` for ``DQN``: Q(x, v) over the vocabulary is the LM head's output.

All share :class:`agents.networks.actor_critic.CausalLMActorCritic` (one trunk; logits for the last
position only) and its :class:`~agents.networks.actor_critic.RolloutKVCache`: in no-grad calls in
eval mode (SB3's rollouts and ``predict``) each env's keys and values are kept across steps and only
the new token is computed. Training-time calls (``evaluate_actions``, TRPO's and DQN's losses: SB3
puts the policy in training mode for them) run the full window.

``policy_kwargs``:

* ``model``: causal LM name or folder (default ``"gpt2"``; offline, the built-in tiny GPT-2 with a
  warning; ``"tiny-llama"``, ``"smollm2-135m"``, any hub causal LM), or a ``PreTrainedModel``. The
  env's vocabulary must be the model's: build the env with
  ``tokenizer=lm_gym.models.tokenizer_name_for_model(model)``.
* ``value_hidden`` (0: linear value head), ``bf16`` (autocast on CUDA), ``kv_cache`` (True),
  ``dropout`` (False: dropout off, so PPO's ratio starts at 1), ``device`` (a strict device
  request: ``"cuda"`` raises when CUDA is missing, see :func:`lm_gym.models.resolve_device`),
  ``attn_implementation`` (``"eager"`` for sb3-contrib's TRPO, which takes second derivatives).
* ``ortho_init`` is forced to ``False``: SB3's orthogonal init would wipe the pretrained LM head
  (tied to the token embedding in GPT-2 and SmolLM2).

Learning rate: SB3's default 3e-4 is far too high for a pretrained LM; use 1e-6 to 1e-5 for a real
GPT-2 or SmolLM2 (RL4LMs and TRL use about 1e-6 to 1.4e-5). A randomly initialised tiny model
(tests, CPU examples) learns with 1e-3 to 3e-3.

The former names (``GPT2ActorCriticPolicy``, ``MaskableGPT2ActorCriticPolicy``, ``GPT2DQNPolicy``,
``GPT2QNetwork``, ``GPT2PolicyMixin``, ``gpt2_network``) are aliases of these classes.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.dqn.policies import DQNPolicy
from torch import nn

from agents.algorithms.nlpo import TopPMasker
from agents.networks.actor_critic import (
    CausalLMActorCritic,
    RolloutKVCache,
    check_lm_spaces,
    check_model_fits,
)
from lm_gym.models import resolve_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "GPT2ActorCriticPolicy",
    "GPT2DQNPolicy",
    "GPT2PolicyMixin",
    "GPT2QNetwork",
    "LMActorCriticPolicy",
    "LMDQNPolicy",
    "LMPolicyMixin",
    "LMQNetwork",
    "MaskableGPT2ActorCriticPolicy",
    "MaskableLMActorCriticPolicy",
    "check_lm_spaces",
    "gpt2_network",
    "lm_network",
]


def _split_obs(obs: PyTorchObs) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask as long tensors (SB3 hands Box observations over as float32: exact < 2^24)."""
    if not isinstance(obs, dict):
        raise TypeError(
            "lm-gym policies take dict observations {'input_ids', 'attention_mask'}, "
            f"got {type(obs).__name__}."
        )
    return obs["input_ids"].long(), obs["attention_mask"].long()


def _target_device(*args: Any, **kwargs: Any) -> torch.device | None:
    """The device of a ``Module.to(...)`` call (``to(device)``, ``to(tensor)``, ``to(device=...)``,
    ``to(device, dtype)``); ``None`` for a dtype-only call."""
    for arg in (kwargs.get("device"), kwargs.get("tensor"), *args):
        if isinstance(arg, torch.Tensor):
            return arg.device
        if isinstance(arg, (str, torch.device)):
            return torch.device(arg)
        if isinstance(arg, int) and not isinstance(arg, bool):  # a CUDA ordinal, as torch reads it
            return torch.device("cuda", arg)
    return None


def _strict_to(module: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
    """``nn.Module.to`` that refuses to leave the device required by ``module._required_device``."""
    target = _target_device(*args, **kwargs)
    required = getattr(module, "_required_device", None)
    if target is not None and required is not None and target.type != required.type:
        raise RuntimeError(
            f"The policy was built for device {required} (policy_kwargs['device']) but is being "
            f"moved to {target}: pass the same device to the algorithm (device=...); SB3 falls "
            "back to the CPU silently when CUDA is missing."
        )
    return nn.Module.to(module, *args, **kwargs)


def lm_network(policy: nn.Module) -> CausalLMActorCritic:
    """The :class:`CausalLMActorCritic` inside any policy of this module (DQN: the online
    Q-network).

    :param policy: a policy of this module, or a network itself.
    :raises TypeError: no causal-LM network inside.
    """
    if isinstance(policy, CausalLMActorCritic):
        return policy
    if isinstance(policy, LMDQNPolicy):
        return policy.q_net.net
    net = getattr(policy, "net", None)
    if isinstance(net, CausalLMActorCritic):
        return net
    raise TypeError(f"{type(policy).__name__} holds no CausalLMActorCritic network.")


class _LMPolicyBase:
    """What every LM policy of this module checks and builds the same way: lm-gym spaces, a
    strict device request, the network (checked against the action space and the window), and a
    ``to`` that refuses to leave the requested device.

    Subclasses call :meth:`_check_lm` and fill ``_lm_kwargs`` before their SB3 base
    ``__init__``, and build with :meth:`_new_lm_net` in ``_build``.
    """

    _lm_kwargs: dict[str, Any]

    def _check_lm(
        self, observation_space: spaces.Space, action_space: spaces.Space, device: str | None
    ) -> None:
        self._window = check_lm_spaces(observation_space, action_space)
        self._required_device = resolve_device(device) if device is not None else None

    def _new_lm_net(self, value_head: bool) -> CausalLMActorCritic:
        kw = self._lm_kwargs
        net = CausalLMActorCritic(
            kw["model"],
            value_head=value_head,
            value_hidden=kw.get("value_hidden", 0),
            detach_value=kw.get("detach_value", False),
            lora=kw.get("lora"),
            bf16=kw["bf16"],
            dropout=kw["dropout"],
            attn_implementation=kw.get("attn_implementation"),
        )
        action_space = self.action_space  # type: ignore[attr-defined]
        check_model_fits(net, action_space, self._window, kw["model"])
        return net

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """``nn.Module.to``, refusing to leave a device asked for with ``policy_kwargs["device"]``.

        SB3's algorithms fall back silently to the CPU when ``device="cuda"`` is not available; a
        policy built with ``device="cuda"`` raises instead.
        """
        return _strict_to(self, *args, **kwargs)  # type: ignore[arg-type]


class LMPolicyMixin(_LMPolicyBase):
    """The LM parts shared by the actor-critic policies (SB3's and sb3-contrib's base classes
    differ, so they are shared through this mixin rather than a common base class).

    It owns the constructor (its options are documented in :class:`LMActorCriticPolicy`), the
    build, the saved constructor parameters and SB3's forward methods. The action distribution is
    made by :meth:`_dist`, which :class:`MaskableLMActorCriticPolicy` overrides to mask it.
    """

    net: CausalLMActorCritic
    optimizer: torch.optim.Optimizer

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        model: str | PreTrainedModel = "gpt2",
        value_hidden: int = 0,
        value_head: bool = True,
        detach_value: bool = False,
        lora: dict[str, Any] | None = None,
        bf16: bool = False,
        kv_cache: bool = True,
        dropout: bool = False,
        device: str | None = None,
        attn_implementation: str | None = None,
        ortho_init: bool = False,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("use_sde"):
            raise ValueError("use_sde does not apply to a categorical (token) policy.")
        self._check_lm(observation_space, action_space, device)
        if ortho_init:
            warnings.warn(
                "ortho_init=True is ignored by lm-gym policies: SB3's orthogonal init would wipe "
                "the pretrained LM head and (tied) token embedding.",
                stacklevel=2,
            )
        if bf16 and not torch.cuda.is_available():
            warnings.warn(
                "bf16=True applies on CUDA only; running in float32 on CPU.", stacklevel=2
            )
        self._lm_kwargs = {
            "model": model,
            "value_hidden": value_hidden,
            "value_head": bool(value_head),
            "detach_value": bool(detach_value),
            "lora": None if lora is None else dict(lora),
            "bf16": bf16,
            "kv_cache": kv_cache,
            "dropout": dropout,
            "device": device,
            "attn_implementation": attn_implementation,
        }
        self.kv_cache = RolloutKVCache() if kv_cache else None
        super().__init__(  # type: ignore[call-arg]
            observation_space,
            action_space,
            lr_schedule,
            ortho_init=False,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            **kwargs,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        self.net = self._new_lm_net(value_head=self._lm_kwargs.get("value_head", True))
        self._build_extra()  # before the optimizer: frozen parts stay out of it
        params = [p for p in self.parameters() if p.requires_grad]  # type: ignore[attr-defined]
        self.optimizer = self.optimizer_class(  # type: ignore[attr-defined]
            params,
            lr=lr_schedule(1),
            **self.optimizer_kwargs,  # type: ignore[attr-defined]
        )

    def _build_extra(self) -> None:
        """Hook: build further modules after the network, before the optimizer."""

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        for key in ("net_arch", "activation_fn", "use_sde", "log_std_init", "full_std"):
            data.pop(key, None)
        for key in ("use_expln", "squash_output", "share_features_extractor"):
            data.pop(key, None)
        data.update(self._lm_kwargs)
        data["ortho_init"] = False
        return data

    # -- forward helpers --------------------------------------------------------------------------

    def _outputs(
        self, obs: PyTorchObs, *, with_value: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Ids, logits (batch, vocab) and values (batch, 1); KV-cached in no-grad eval-mode calls."""
        ids, h = self._hidden(obs)
        logits = self.net.logits_from_hidden(h)
        return ids, logits, self._values_from(h) if with_value else None

    def _in_rollout(self) -> bool:
        """A no-grad call in eval mode: a rollout step (the KV cache applies)."""
        return not torch.is_grad_enabled() and not self.training  # type: ignore[attr-defined]

    def _hidden(self, obs: PyTorchObs) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and the last hidden states (batch, hidden); KV-cached in no-grad eval-mode calls."""
        ids, mask = _split_obs(obs)
        cache = self.kv_cache if self._in_rollout() else None
        return ids, self.net.last_hidden(ids, mask, cache)

    def _values_from(self, h: torch.Tensor) -> torch.Tensor:
        """Values (batch, 1) from the last hidden states."""
        if self.net.value_head is None:  # a critic-free algorithm: values are never used
            return torch.zeros(h.shape[0], 1, device=h.device)
        return self.net.value_from_hidden(h).unsqueeze(-1)

    def _dist(
        self,
        ids: torch.Tensor,
        obs: PyTorchObs,
        logits: torch.Tensor,
        action_masks: np.ndarray | torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
    ) -> Distribution:
        """The categorical distribution over the vocabulary at ``logits``, masked by
        ``action_masks`` or else by :meth:`_default_masks` (the NLPO mask of the maskable policy).

        :param ids: the observations' ids (long).
        :param obs: the observations.
        :param logits: ``(batch, vocab)``.
        :param action_masks: masks given by the caller (only the maskable policy takes them).
        :param actions: the actions being evaluated (training), or ``None``.
        :raises TypeError: masks given to a policy whose distribution does not mask.
        """
        dist = self.action_dist.proba_distribution(action_logits=logits)  # type: ignore[attr-defined]
        masks = self._default_masks(ids, obs, actions) if action_masks is None else action_masks
        if masks is not None:
            if not hasattr(dist, "apply_masking"):
                raise TypeError(f"{type(self).__name__} takes no action masks.")
            dist.apply_masking(masks)
        return dist

    def _default_masks(
        self, ids: torch.Tensor, obs: PyTorchObs, actions: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Hook: the action masks when the caller gives none (``None``: no masking)."""
        return None

    # -- SB3's policy methods ---------------------------------------------------------------------

    def forward(
        self,
        obs: PyTorchObs,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions, values ``(batch, 1)`` and log-probabilities (KV-cached under no-grad)."""
        ids, logits, values = self._outputs(obs)
        dist = self._dist(ids, obs, logits, action_masks)
        actions = dist.get_actions(deterministic=deterministic)
        assert values is not None
        if self.kv_cache is not None and self._in_rollout():
            self.kv_cache.expect_next(actions)  # terminal values of truncations come in a batch
        return actions, values, dist.log_prob(actions)

    def evaluate_actions(
        self,
        obs: PyTorchObs,
        actions: torch.Tensor,
        action_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Values, log-probabilities and entropy for training (full forward, no cache)."""
        ids, logits, values = self._outputs(obs)
        dist = self._dist(ids, obs, logits, action_masks, actions)
        assert values is not None
        return values, dist.log_prob(actions), dist.entropy()

    def get_distribution(
        self, obs: PyTorchObs, action_masks: np.ndarray | None = None
    ) -> Distribution:
        """The (masked, for the maskable policy) categorical distribution over the vocabulary."""
        ids, logits, _ = self._outputs(obs, with_value=False)
        return self._dist(ids, obs, logits, action_masks)

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        """Values ``(batch, 1)`` (the LM head is not run)."""
        return self._values_from(self._hidden(obs)[1])

    def _predict(
        self,
        observation: PyTorchObs,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> torch.Tensor:
        dist = self.get_distribution(observation, action_masks)
        return dist.get_actions(deterministic=deterministic)

    # -- KV cache ---------------------------------------------------------------------------------

    def reset_kv_cache(self) -> None:
        """Drop the rollout KV cache (it also resets itself when parameters change)."""
        if self.kv_cache is not None:
            self.kv_cache.reset()

    def set_training_mode(self, mode: bool) -> None:
        """SB3's train/eval switch; entering training also drops the rollout KV cache.

        :param mode: True for training mode.
        """
        super().set_training_mode(mode)  # type: ignore[misc]
        if mode:
            self.reset_kv_cache()


class LMActorCriticPolicy(LMPolicyMixin, ActorCriticPolicy):
    """Actor-critic policy for ``PPO`` / ``A2C`` (and sb3-contrib ``TRPO``) with a causal-LM head.

    The constructor, build and forward methods are :class:`LMPolicyMixin`'s.

    :param observation_space: an lm-gym ``Dict(input_ids, attention_mask)`` space.
    :param action_space: ``Discrete(V)``, V the model's vocabulary.
    :param lr_schedule: SB3's learning-rate schedule.
    :param model: causal LM name, folder or object (default ``"gpt2"``; offline: tiny GPT-2;
        ``"tiny-llama"``, ``"smollm2-135m"``, any hub causal LM).
    :param value_hidden: hidden width of the value head; 0 for a linear head.
    :param value_head: build the value head; ``False`` for critic-free algorithms (GRPO, RLOO),
        whose values are then zeros.
    :param detach_value: the value loss trains the value head only, not the LM (see
        :class:`agents.networks.actor_critic.CausalLMActorCritic`).
    :param lora: train LoRA adapters (``peft``) instead of the whole LM: ``{}`` for the defaults
        or ``{"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}`` (see
        :class:`agents.networks.actor_critic.CausalLMActorCritic`); a KL reference is then the same
        LM with the adapters off.
    :param bf16: bfloat16 autocast of the trunk on CUDA.
    :param kv_cache: keep per-env KV caches across rollout steps.
    :param dropout: keep the model's dropout (off by default).
    :param device: optional strict device request (``"cuda"`` raises without CUDA).
    :param attn_implementation: the model's attention (``"eager"`` for sb3-contrib's TRPO, which
        takes second derivatives); ``None`` keeps the model's (SDPA).
    :param ortho_init: ignored (forced ``False``, with a warning when ``True``).
    :param optimizer_class: optimizer (default Adam, eps 1e-5 as SB3).
    :param optimizer_kwargs: optimizer keyword arguments.
    :param kwargs: other :class:`ActorCriticPolicy` arguments (``net_arch``, ``activation_fn``
        and the feature extractor are not used).
    :raises ValueError: wrong observation/action space, vocabulary mismatch, unknown model.
    """


# the mixin's get_distribution returns sb3-contrib's MaskableDistribution here, typed Distribution
class MaskableLMActorCriticPolicy(LMPolicyMixin, MaskableActorCriticPolicy):  # type: ignore[misc]
    """Causal-LM actor-critic policy for sb3-contrib ``MaskablePPO``, with NLPO masking.

    When no ``action_masks`` are passed (``MaskablePPO.learn(use_masking=False)``, or the
    update with :class:`agents.algorithms.nlpo.NLPORolloutBuffer`, which stores none), the valid
    actions are the top-p tokens of a lagged, frozen copy of the policy's LM (``masker``),
    computed from the observation: the same function in rollout and update, so nothing of
    vocabulary size is stored. Refresh the lagged copy with
    :class:`agents.algorithms.nlpo.NLPOMaskUpdateCallback` or :meth:`refresh_mask_model`. Masks
    given explicitly (by an env with ``action_masks()``) are used instead.

    :param nlpo_top_p: top-p of the NLPO mask; ``None`` switches internal masking off.
    :param kwargs: as :class:`LMActorCriticPolicy`.
    """

    def __init__(self, *args: Any, nlpo_top_p: float | None = 0.9, **kwargs: Any) -> None:
        if nlpo_top_p is not None and not 0.0 < nlpo_top_p <= 1.0:
            raise ValueError(f"nlpo_top_p must be in (0, 1], got {nlpo_top_p}.")
        self.nlpo_top_p = nlpo_top_p
        super().__init__(*args, **kwargs)

    def _build_extra(self) -> None:
        top_p = self.nlpo_top_p
        self.masker = TopPMasker(self.net.frozen_lm_copy(), top_p) if top_p is not None else None

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "nlpo_top_p": self.nlpo_top_p}

    def refresh_mask_model(self) -> None:
        """Copy the current policy LM into the lagged NLPO mask model."""
        if self.masker is not None:
            self.masker.refresh_from(self.net)

    def _default_masks(
        self, ids: torch.Tensor, obs: PyTorchObs, actions: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The NLPO mask (``None`` when internal masking is off)."""
        if self.masker is None:
            return None
        _, mask = _split_obs(obs)
        with torch.no_grad():
            masks = self.masker(ids, mask, use_cache=self._in_rollout())
        if actions is not None:
            # The taken action was valid at rollout time; float noise between the cached and
            # the batched forward must not make it invalid at the top-p boundary.
            masks[torch.arange(len(masks), device=masks.device), actions.long().flatten()] = True
        return masks

    def set_training_mode(self, mode: bool) -> None:
        """As :meth:`LMPolicyMixin.set_training_mode`; the mask model stays in eval mode."""
        super().set_training_mode(mode)
        if self.masker is not None:
            self.masker.eval()


class LMQNetwork(BasePolicy):
    """Q(x, v) for every token v: the LM head's logits at the last position.

    :param observation_space: an lm-gym observation space.
    :param action_space: ``Discrete(V)``.
    :param net: the network (built without value head).
    :param kv_cache: keep per-env KV caches in ``_predict`` (rollouts).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        net: CausalLMActorCritic,
        kv_cache: bool = True,
    ) -> None:
        super().__init__(observation_space, action_space)
        self.net = net
        self.kv_cache = RolloutKVCache() if kv_cache else None

    def forward(self, obs: PyTorchObs) -> torch.Tensor:
        """Q-values ``(batch, vocab)`` (full forward: replay batches)."""
        ids, mask = _split_obs(obs)
        return self.net.logits_from_hidden(self.net.last_hidden(ids, mask))

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> torch.Tensor:
        ids, mask = _split_obs(observation)
        with torch.no_grad():
            q = self.net.logits_from_hidden(self.net.last_hidden(ids, mask, self.kv_cache))
        return q.argmax(dim=1).reshape(-1)

    def set_training_mode(self, mode: bool) -> None:
        """Train/eval switch; training drops the KV cache."""
        super().set_training_mode(mode)
        if mode and self.kv_cache is not None:
            self.kv_cache.reset()


class LMDQNPolicy(_LMPolicyBase, DQNPolicy):
    """DQN policy whose Q-network is a causal LM: Q(x, v) over the vocabulary = LM-head outputs.

    As in every DQN, the target network ``q_net_target`` is a second, full copy of the network
    (made once by deep copy, then updated by SB3's Polyak/hard updates): it doubles the model's
    memory. Greedy actions are ``argmax_v Q(x, v)``; exploration is SB3's epsilon-greedy over the
    whole vocabulary.

    :param observation_space: an lm-gym observation space.
    :param action_space: ``Discrete(V)``.
    :param lr_schedule: learning-rate schedule.
    :param model: causal LM name, folder or object (default ``"gpt2"``).
    :param bf16: bfloat16 autocast of the trunk on CUDA.
    :param kv_cache: per-env KV caches in rollouts.
    :param dropout: keep the model's dropout (off by default).
    :param device: strict device request.
    :param optimizer_class: optimizer (default Adam).
    :param optimizer_kwargs: optimizer keyword arguments.
    :param kwargs: other :class:`DQNPolicy` arguments (``net_arch`` etc. are not used).
    """

    q_net: LMQNetwork  # type: ignore[assignment]
    q_net_target: LMQNetwork  # type: ignore[assignment]

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        model: str | PreTrainedModel = "gpt2",
        bf16: bool = False,
        kv_cache: bool = True,
        dropout: bool = False,
        device: str | None = None,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._check_lm(observation_space, action_space, device)
        self._lm_kwargs = {
            "model": model,
            "bf16": bf16,
            "kv_cache": kv_cache,
            "dropout": dropout,
            "device": device,
        }
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            **kwargs,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        kw = self._lm_kwargs
        net = self._new_lm_net(value_head=False)
        target = CausalLMActorCritic(
            net.frozen_lm_copy().lm, value_head=False, bf16=kw["bf16"], dropout=True
        )
        for p in target.parameters():
            p.requires_grad_(True)  # Polyak updates write into it; never in the optimizer
        action_space = cast(spaces.Discrete, self.action_space)
        self.q_net = LMQNetwork(self.observation_space, action_space, net, kw["kv_cache"])
        self.q_net_target = LMQNetwork(self.observation_space, action_space, target, kv_cache=False)
        self.q_net_target.set_training_mode(False)
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.q_net.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("net_arch", "activation_fn"):
            data.pop(key, None)
        data.update(self._lm_kwargs)
        return data

    @property
    def net(self) -> CausalLMActorCritic:
        """The online Q-network's causal-LM network."""
        return self.q_net.net


# -- former names, kept for existing imports and saved models (SB3 pickles the policy class) -----

GPT2ActorCriticPolicy = LMActorCriticPolicy
MaskableGPT2ActorCriticPolicy = MaskableLMActorCriticPolicy
GPT2DQNPolicy = LMDQNPolicy
GPT2QNetwork = LMQNetwork
GPT2PolicyMixin = LMPolicyMixin
gpt2_network = lm_network
