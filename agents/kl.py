"""Per-token KL penalty to a frozen reference model, for every SB3 algorithm (PPO, A2C, MaskablePPO,
DQN): a ``VecEnvWrapper`` that shapes the reward, and a callback that logs and adapts it.

At each step the wrapper subtracts ``coef * (log pi(a|s) - log pi_ref(a|s))`` from the reward of
the action ``a`` taken in observation ``s`` (the per-token KL estimate of Ziegler et al., RL4LMs and
TRL). ``log pi`` comes from the policy's own rollout forward when it was made on the same
observation (:meth:`agents.policies.LMPolicyMixin.last_logits`), so no second policy forward is
run; otherwise (DQN's random exploration steps, for example) the wrapper runs the policy's network
itself, with a KV cache of its own. ``pi`` is the LM head's softmax: unmasked for MaskablePPO, the
softmax of the Q-values for DQN. The reference is one frozen model shared by all envs (by default a
copy of the policy's initial LM, made once), with its own KV cache.

The coefficient is fixed, or adaptive with a target KL (the proportional controller of Ziegler et
al. 2019, as in TRL's ``AdaptiveKLController`` and RL4LMs): after each rollout,
``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * min(n_steps / horizon, 1)``, ``kl`` being the
mean KL of all the episodes that finished during the rollout (each summed over its tokens) and
``n_steps`` the env steps of the rollout over all envs (TRL counts episodes in both). It moves the
coefficient by at most 20% per update and never the wrong way, so it tunes a coefficient that
starts near the one the task needs: over a run of ``T`` steps it can change it by at most
``1.2 ** (T / horizon)``. The default horizon (10,000 steps) suits runs of 10^5 steps and more;
short runs need a shorter horizon (a few rollouts) and a sensible initial ``coef``. It cannot undo
a collapse: a policy that samples one sequence gets the same penalty on every sample, so no
gradient back towards the reference, whatever the coefficient (see
``tests/test_learning.py::test_ppo_learns_sentiment_with_bounded_kl``). Checkpoints of
:func:`agents.training.train_run` keep the coefficient (:meth:`KLPenaltyVecEnv.state_dict`) and a
resumed run continues with it.

Usage::

    env = KLPenaltyVecEnv(make_vec_env(...), coef=0.05, target_kl=2.0)
    model = PPO(LMActorCriticPolicy, env, policy_kwargs={"model": "gpt2"}, learning_rate=1e-5)
    model.learn(100_000, callback=KLPenaltyCallback())

The callback attaches the policy to the wrapper and logs ``rollout/kl`` (per episode),
``rollout/kl_per_token``, ``rollout/task_reward`` (per episode, before the penalty) and
``train/kl_coef``. The task reward also stays in SB3's ``rollout/ep_rew_mean`` when the envs are
wrapped in ``Monitor`` (``make_vec_env`` does it), since the penalty is applied outside them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from agents.network import CausalLMActorCritic, RolloutKVCache
from agents.policies import lm_network

__all__ = [
    "AdaptiveKLController",
    "KLPenaltyCallback",
    "KLPenaltyVecEnv",
    "find_kl_wrapper",
    "kl_wrapper_of",
]


class AdaptiveKLController:
    """KL coefficient: fixed (``target=None``) or adapted towards a target KL per episode.

    After each rollout, ``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * min(n_steps / horizon, 1)``
    (Ziegler et al. 2019; TRL's ``AdaptiveKLController``, whose ``n_steps`` and ``horizon`` count
    episodes where these count env steps, i.e. tokens). The coefficient rises while the KL is above
    the target, falls while it is below, and moves by at most 20% per update: it stays positive
    (TRL's unbounded ``n_steps / horizon`` turns it negative once a rollout is longer than five
    horizons, and a negative coefficient then *falls* while the KL is above target).

    A proportional controller corrects the coefficient by a bounded factor per horizon of env
    steps (at most ``1.2 ** (steps / horizon)``): it tunes a coefficient that starts within a few
    times of the one the task needs, and cannot find one orders of magnitude away in a short run.
    Choose ``horizon`` to fit the run (a few rollouts for runs of a few thousand steps; the
    default 10,000 suits runs of 10^5 steps and more).

    While the policy has not moved yet (the first rollouts, KL near 0) the controller lowers the
    coefficient at its full rate, so when learning starts it may be several times below its start
    (measured: 0.02 -> 0.006 after 11 rollouts) and too weak to stop a fast policy from running
    away. ``min_coef`` bounds that wind-down (``min_coef=coef``: the coefficient only rises above
    its start).

    :param coef: the initial (or fixed) coefficient.
    :param target: target KL per episode (sum over its tokens); ``None`` keeps ``coef`` fixed.
    :param horizon: env steps over which the coefficient changes by at most 20%.
    :param min_coef: the adaptive coefficient's floor (default 0: none, as in TRL).
    """

    #: the largest relative change of one update (Ziegler et al.'s clip of the proportional error)
    max_error = 0.2

    def __init__(
        self,
        coef: float = 0.1,
        target: float | None = None,
        horizon: int = 10_000,
        min_coef: float = 0.0,
    ):
        if coef < 0:
            raise ValueError("coef must be non-negative.")
        if not 0 <= min_coef <= coef:
            raise ValueError("min_coef must be between 0 and coef.")
        if target is not None and target <= 0:
            raise ValueError("target KL must be positive.")
        if horizon <= 0:
            raise ValueError("horizon must be positive.")
        self.value = float(coef)
        self.target = target
        self.horizon = horizon
        self.min_coef = float(min_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adapt the coefficient after ``n_steps`` env steps with mean episode KL ``current_kl``.

        :param current_kl: the mean KL per episode of the rollout (NaN or inf: no change).
        :param n_steps: env steps since the last update, summed over the vector env's envs.
        :return: the new coefficient.
        """
        if self.target is not None and np.isfinite(current_kl) and n_steps > 0:
            error = float(np.clip(current_kl / self.target - 1.0, -self.max_error, self.max_error))
            step = 1.0 + error * min(n_steps / self.horizon, 1.0)
            self.value = max(self.value * step, self.min_coef)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """The controller's state (JSON-serialisable), for checkpoints."""
        return {
            "coef": self.value,
            "target": self.target,
            "horizon": self.horizon,
            "min_coef": self.min_coef,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the coefficient saved by :meth:`state_dict` (target, horizon and floor stay
        those of this controller, i.e. of the run's configuration)."""
        coef = float(state["coef"])
        if not np.isfinite(coef) or coef < 0:
            raise ValueError(f"Saved KL coefficient {coef} is not a non-negative number.")
        self.value = coef


class KLPenaltyVecEnv(VecEnvWrapper):
    """Subtract ``coef * (log pi(a|s) - log pi_ref(a|s))`` from every step's reward.

    :param venv: the vector env (lm-gym envs, usually inside ``Monitor``).
    :param coef: initial (or fixed) KL coefficient.
    :param target_kl: target KL per episode for the adaptive coefficient; ``None``: fixed.
    :param horizon: the adaptive controller's horizon in env steps (see
        :class:`AdaptiveKLController`: fit it to the run's length).
    :param min_coef: the adaptive coefficient's floor (default 0).
    :param reference: the frozen reference: ``None`` (a copy of the attached policy's initial LM,
        made once), a model name/folder/``PreTrainedModel`` (any causal LM with the policy's
        vocabulary), or a :class:`CausalLMActorCritic`. Never copied per env.
    :param stats_window: finished episodes kept in :attr:`episode_kl`, :attr:`episode_task_reward`
        and :attr:`episode_tokens` (a recent window for plots; the controller and
        :meth:`pop_episode_stats` use every episode finished since the last pop).
    """

    def __init__(
        self,
        venv: VecEnv,
        coef: float = 0.1,
        target_kl: float | None = None,
        horizon: int = 10_000,
        min_coef: float = 0.0,
        reference: Any = None,
        stats_window: int = 100,
    ) -> None:
        super().__init__(venv)
        self.controller = AdaptiveKLController(coef, target_kl, horizon, min_coef)
        self.reference: CausalLMActorCritic | None = None
        if reference is not None:
            self.reference = (
                reference
                if isinstance(reference, CausalLMActorCritic)
                else CausalLMActorCritic(reference, value_head=False)
            )
            for p in self.reference.parameters():
                p.requires_grad_(False)
            self.reference.eval()
        self.policy: torch.nn.Module | None = None
        self._ref_cache = RolloutKVCache()
        self._pi_cache = RolloutKVCache()
        self._obs: dict[str, np.ndarray] | None = None
        self._kl = np.zeros(self.num_envs)
        self._ep_kl = np.zeros(self.num_envs)
        self._ep_task = np.zeros(self.num_envs)
        self._ep_len = np.zeros(self.num_envs, dtype=np.int64)
        self.episode_kl: deque[float] = deque(maxlen=stats_window)
        self.episode_task_reward: deque[float] = deque(maxlen=stats_window)
        self.episode_tokens: deque[int] = deque(maxlen=stats_window)
        # sums over the episodes finished since the last pop: KL, task reward, tokens, episodes
        self._since_pop = np.zeros(4)
        self.steps_since_update = 0
        self.reused_policy_logits = 0
        self.recomputed_policy_logits = 0

    @property
    def coef(self) -> float:
        """The current KL coefficient."""
        return self.controller.value

    def attach(self, policy: torch.nn.Module) -> None:
        """Use ``policy`` for ``log pi``; make the reference (a frozen copy of its LM) if none yet.

        :param policy: a policy of :mod:`agents.policies` (or a :class:`CausalLMActorCritic`).
        """
        net = lm_network(policy)
        self.policy = policy
        device = next(net.parameters()).device
        if self.reference is None:
            self.reference = net.frozen_lm_copy()
        self.reference.to(device)
        if self.reference.vocab_size != net.vocab_size:
            raise ValueError(
                f"Reference vocabulary ({self.reference.vocab_size}) differs from the policy's "
                f"({net.vocab_size})."
            )

    def reset_policy_cache(self) -> None:
        """Drop the wrapper's own KV cache of the policy (used when the policy's logits of a step
        cannot be reused)."""
        self._pi_cache.reset()

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._obs = obs  # type: ignore[assignment]
        self._ep_kl[:] = 0.0
        self._ep_task[:] = 0.0
        self._ep_len[:] = 0
        return obs

    @torch.no_grad()
    def token_kl(self, obs: dict[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
        """``log pi(a|s) - log pi_ref(a|s)`` for each env.

        :param obs: the batch of observations the actions were taken on.
        :param actions: ``(n_envs,)`` token ids.
        """
        if self.policy is None or self.reference is None:
            raise RuntimeError(
                "KLPenaltyVecEnv has no policy: pass callback=KLPenaltyCallback() to learn(), or "
                "call env.attach(model.policy) first."
            )
        net = lm_network(self.policy)
        device = next(net.parameters()).device
        ids = torch.as_tensor(obs["input_ids"], device=device).long()
        mask = torch.as_tensor(obs["attention_mask"], device=device).long()
        last = getattr(self.policy, "last_logits", None)
        logits = last(ids) if last is not None else None
        if logits is None:
            self.recomputed_policy_logits += 1
            logits = net.logits_from_hidden(net.last_hidden(ids, mask, self._pi_cache))
        else:
            self.reused_policy_logits += 1
        ref_logits, _ = self.reference(ids, mask, self._ref_cache)
        a = torch.as_tensor(np.asarray(actions).reshape(-1), device=device).long().unsqueeze(1)
        logp = torch.log_softmax(logits.float(), -1).gather(1, a).squeeze(1)
        logp_ref = torch.log_softmax(ref_logits.float(), -1).gather(1, a).squeeze(1)
        return (logp - logp_ref).cpu().numpy().astype(np.float64)

    def step_async(self, actions: np.ndarray) -> None:
        assert self._obs is not None, "reset() must be called before step()"
        self._kl = self.token_kl(self._obs, actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        coef = self.coef
        self._ep_kl += self._kl
        self._ep_task += rewards
        self._ep_len += 1
        self.steps_since_update += self.num_envs
        shaped = (rewards - coef * self._kl).astype(np.float32)
        for i in np.flatnonzero(dones):
            infos[i]["kl"] = float(self._ep_kl[i])
            infos[i]["task_reward"] = float(self._ep_task[i])
            self.episode_kl.append(float(self._ep_kl[i]))
            self.episode_task_reward.append(float(self._ep_task[i]))
            self.episode_tokens.append(int(self._ep_len[i]))
            self._since_pop += (self._ep_kl[i], self._ep_task[i], self._ep_len[i], 1.0)
            self._ep_kl[i] = self._ep_task[i] = 0.0
            self._ep_len[i] = 0
        self._obs = obs  # type: ignore[assignment]
        return obs, shaped, dones, infos

    def pop_episode_stats(self) -> dict[str, float]:
        """Mean KL (per episode and per token) and task reward of all the episodes finished since
        the last call (however many: not only the last ``stats_window``); empty when none
        finished."""
        kl, task, tokens, episodes = self._since_pop
        if episodes == 0:
            return {}
        self._since_pop[:] = 0.0
        return {
            "kl": float(kl / episodes),
            "kl_per_token": float(kl / max(tokens, 1.0)),
            "task_reward": float(task / episodes),
            "episodes": float(episodes),
        }

    def update_coef(self, episode_kl: float) -> float:
        """Adapt the coefficient with the mean episode KL since the last update (see
        :class:`AdaptiveKLController`)."""
        value = self.controller.update(episode_kl, self.steps_since_update)
        self.steps_since_update = 0
        return value

    def state_dict(self) -> dict[str, Any]:
        """The KL controller's state (coefficient, target, horizon), JSON-serialisable: what a
        checkpoint keeps (``state.json`` of :func:`agents.training.train_run`)."""
        return self.controller.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue with the coefficient of :meth:`state_dict` (see
        :meth:`AdaptiveKLController.load_state_dict`)."""
        self.controller.load_state_dict(state)
        self.steps_since_update = 0


def find_kl_wrapper(env: VecEnv | None) -> KLPenaltyVecEnv | None:
    """The :class:`KLPenaltyVecEnv` in a chain of ``VecEnvWrapper``, if any."""
    while env is not None:
        if isinstance(env, KLPenaltyVecEnv):
            return env
        env = getattr(env, "venv", None)
    return None


def kl_wrapper_of(obj: Any) -> KLPenaltyVecEnv | None:
    """The :class:`KLPenaltyVecEnv` of a vec env, an SB3 model or a zoo agent (through its
    ``get_env()``), if any."""
    if not isinstance(obj, VecEnv):
        get_env = getattr(obj, "get_env", None)
        obj = get_env() if callable(get_env) else None
    return find_kl_wrapper(obj) if isinstance(obj, VecEnv) else None


class KLPenaltyCallback(BaseCallback):
    """Attach the policy to the :class:`KLPenaltyVecEnv`, log KL and task reward, adapt the coef.

    Logs, after every rollout in which episodes finished: ``rollout/kl`` (mean KL per episode),
    ``rollout/kl_per_token``, ``rollout/task_reward`` and ``train/kl_coef``. The last values are
    also kept in :attr:`history` (a list of dicts) for tests and plots.

    :param verbose: SB3 verbosity.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.wrapper: KLPenaltyVecEnv | None = None
        self.history: list[dict[str, float]] = []

    def _on_training_start(self) -> None:
        self.wrapper = find_kl_wrapper(self.model.get_env())
        if self.wrapper is None:
            raise ValueError(
                "KLPenaltyCallback: the model's env is not wrapped in KLPenaltyVecEnv."
            )
        self.wrapper.attach(self.model.policy)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        assert self.wrapper is not None
        self.wrapper.reset_policy_cache()  # an update follows: the policy's weights will change
        stats = self.wrapper.pop_episode_stats()
        if not stats:
            return
        stats["kl_coef"] = self.wrapper.update_coef(stats["kl"])
        self.history.append(stats)
        self.logger.record("rollout/kl", stats["kl"])
        self.logger.record("rollout/kl_per_token", stats["kl_per_token"])
        self.logger.record("rollout/task_reward", stats["task_reward"])
        self.logger.record("train/kl_coef", stats["kl_coef"])
