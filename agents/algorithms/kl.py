"""Per-token KL penalty to a frozen reference model: ``r_t -= coef * (log pi(a_t|s_t) - log
pi_ref(a_t|s_t))``, the per-token KL estimate of Ziegler et al., RL4LMs and TRL, with a fixed or
adaptive coefficient.

Two ways to apply it, with the same maths, controller, statistics and checkpointed state:

* :class:`KLPenaltyCallback`, for SB3's on-policy algorithms
  (:class:`agents.algorithms.ppo.EpisodePPO`, ``PPO``, ``A2C``, sb3-contrib ``TRPO`` and
  ``MaskablePPO``/NLPO). Forward only: after each rollout it reads the rollout buffer (observations,
  actions, episode starts, the policy's own log-probabilities), computes the reference's
  log-probabilities of the rollout's actions in batched full-sequence forwards, one per episode
  segment, packed as in EpisodePPO's update (:func:`episode_action_log_probs`), subtracts the
  penalty from ``rollout_buffer.rewards`` and recomputes the advantages and returns with SB3's own
  ``compute_returns_and_advantage``, all before ``collect_rollouts`` returns. The envs never see the
  policy, and the reference runs once per episode instead of once per token. ``log pi`` is the
  buffer's log-probability of the action (the LM head's softmax); for ``MaskablePPO`` the buffer
  holds the *masked* log-probabilities, so the unmasked ones are recomputed the same batched way.
* :class:`KLPenaltyVecEnv`, a ``VecEnvWrapper`` that shapes each step's reward in the env chain,
  for agents outside SB3's on-policy loop (DQN in the zoo, users' own loops): it runs the policy's
  network (``pi`` is its LM head's softmax: for DQN the softmax of the Q-values) and the reference
  itself, one KV-cached token step each per env step. Give it the policy with
  :meth:`KLPenaltyVecEnv.attach` (or pass :class:`KLPenaltyVecEnvCallback` to SB3's ``learn``,
  which also logs and adapts the coefficient).

The reference is one frozen model shared by all envs (by default a copy of the policy's initial
LM, made once when training starts), never copied per env.

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
:func:`agents.common.training.train_run` keep the coefficient (``state_dict``, found with
:func:`kl_penalty_of`) and a resumed run continues with it.

Usage::

    model = PPO(LMActorCriticPolicy, env, policy_kwargs={"model": "gpt2"}, learning_rate=1e-5)
    model.learn(100_000, callback=KLPenaltyCallback(coef=0.05, target_kl=2.0))

    # DQN or your own loop over an SB3 vec env: the env-side wrapper
    env = KLPenaltyVecEnv(make_vec_env(...), coef=0.05, target_kl=2.0)
    model = DQN(LMDQNPolicy, env, policy_kwargs={"model": "gpt2"})
    model.learn(100_000, callback=KLPenaltyVecEnvCallback())

Both callbacks log ``rollout/kl`` (per episode), ``rollout/kl_per_token``, ``rollout/task_reward``
(per episode, before the penalty) and ``train/kl_coef`` after every rollout in which episodes
finished. The task reward also stays in SB3's ``rollout/ep_rew_mean`` when the envs are wrapped in
``Monitor`` (``make_vec_env`` does it): the penalty is applied outside them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, cast

import numpy as np
import torch
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from agents.algorithms.ppo import (
    IDS_KEY,
    MASK_KEY,
    EpisodeIndex,
    build_episode_index,
    episode_hidden_states,
    last_values,
)
from agents.networks.actor_critic import CausalLMActorCritic, RolloutKVCache
from agents.networks.policies import lm_network

__all__ = [
    "AdaptiveKLController",
    "EpisodeKLStats",
    "KLPenaltyCallback",
    "KLPenaltyVecEnv",
    "KLPenaltyVecEnvCallback",
    "buffer_holds_unmasked_log_probs",
    "episode_action_log_probs",
    "find_kl_wrapper",
    "kl_penalty_of",
    "kl_wrapper_of",
    "rollout_token_kl",
]

#: Tokens (segments x longest segment) of one packed forward in :func:`episode_action_log_probs`.
MAX_BATCH_TOKENS = 8192
#: Vocabulary logits materialised at once (rows x vocabulary; 2^24 floats: 64 MiB).
MAX_LOGIT_ELEMENTS = 2**24


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


class EpisodeKLStats:
    """Each env's running KL, task reward and length of its current episode, and the totals of
    the episodes finished since the last :meth:`pop`.

    :param stats_window: finished episodes kept in :attr:`episode_kl`, :attr:`episode_task_reward`
        and :attr:`episode_tokens` (a recent window for plots; :meth:`pop` counts every episode).
    """

    def __init__(self, stats_window: int = 100) -> None:
        self.kl = np.zeros(0)
        self.task = np.zeros(0)
        self.tokens = np.zeros(0, dtype=np.int64)
        self.episode_kl: deque[float] = deque(maxlen=stats_window)
        self.episode_task_reward: deque[float] = deque(maxlen=stats_window)
        self.episode_tokens: deque[int] = deque(maxlen=stats_window)
        # sums over the episodes finished since the last pop: KL, task reward, tokens, episodes
        self._since_pop = np.zeros(4)

    def resize(self, n_envs: int) -> None:
        """Track ``n_envs`` envs (their running sums restart when the number changes)."""
        if len(self.kl) != n_envs:
            self.kl = np.zeros(n_envs)
            self.task = np.zeros(n_envs)
            self.tokens = np.zeros(n_envs, dtype=np.int64)

    def restart(self, envs: np.ndarray | slice = slice(None)) -> None:
        """Drop the running sums of ``envs`` (a new episode starts there; default: all)."""
        self.kl[envs] = 0.0
        self.task[envs] = 0.0
        self.tokens[envs] = 0

    def step(
        self, kl: np.ndarray, task_reward: np.ndarray, dones: np.ndarray
    ) -> list[tuple[int, float, float]]:
        """Add one step of every env; close the episodes that ended with it.

        :param kl: ``(n_envs,)`` token KL of the step's actions.
        :param task_reward: ``(n_envs,)`` the env's reward (before the penalty).
        :param dones: ``(n_envs,)`` episode ends.
        :return: ``(env, episode KL, episode task reward)`` of each episode that ended.
        """
        self.kl += kl
        self.task += task_reward
        self.tokens += 1
        ended = []
        for i in np.flatnonzero(dones):
            kl_i, task_i, tokens_i = float(self.kl[i]), float(self.task[i]), int(self.tokens[i])
            self.episode_kl.append(kl_i)
            self.episode_task_reward.append(task_i)
            self.episode_tokens.append(tokens_i)
            self._since_pop += (kl_i, task_i, tokens_i, 1.0)
            ended.append((int(i), kl_i, task_i))
        self.restart(np.flatnonzero(dones))
        return ended

    def pop(self) -> dict[str, float]:
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


def _frozen_reference(reference: Any) -> CausalLMActorCritic | None:
    """``None``, or the reference as a frozen :class:`CausalLMActorCritic` in eval mode."""
    if reference is None:
        return None
    net = (
        reference
        if isinstance(reference, CausalLMActorCritic)
        else CausalLMActorCritic(reference, value_head=False)
    )
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


class _KLPenalty:
    """What both ways of applying the penalty hold: the coefficient's controller, the frozen
    reference, the episode statistics and the env steps since the last update of the coefficient.
    """

    controller: AdaptiveKLController
    reference: CausalLMActorCritic | None
    stats: EpisodeKLStats
    steps_since_update: int

    def _init_penalty(
        self,
        coef: float,
        target_kl: float | None,
        horizon: int,
        min_coef: float,
        reference: Any,
        stats_window: int,
    ) -> None:
        self.controller = AdaptiveKLController(coef, target_kl, horizon, min_coef)
        self.reference = _frozen_reference(reference)
        self.stats = EpisodeKLStats(stats_window)
        self.steps_since_update = 0

    @property
    def coef(self) -> float:
        """The current KL coefficient."""
        return self.controller.value

    @property
    def episode_kl(self) -> deque[float]:
        """KL of the last ``stats_window`` finished episodes (each summed over its tokens)."""
        return self.stats.episode_kl

    @property
    def episode_task_reward(self) -> deque[float]:
        """Task reward (before the penalty) of the last ``stats_window`` finished episodes."""
        return self.stats.episode_task_reward

    @property
    def episode_tokens(self) -> deque[int]:
        """Lengths of the last ``stats_window`` finished episodes."""
        return self.stats.episode_tokens

    def attach(self, policy: torch.nn.Module) -> None:
        """Make the reference from ``policy`` if there is none yet (its
        :meth:`~agents.networks.actor_critic.CausalLMActorCritic.reference_lm`: a frozen copy of its
        LM, made once, so call it with the *starting* policy; with LoRA the same LM with its
        adapters off, no copy), move it to the policy's device and check that both have the same
        vocabulary.

        :param policy: a policy of :mod:`agents.networks.policies` (or a
            :class:`CausalLMActorCritic`).
        :raises ValueError: the vocabularies differ.
        """
        net = lm_network(policy)
        device = next(net.parameters()).device
        if self.reference is None:
            self.reference = net.reference_lm()
        self.reference.to(device)
        if self.reference.vocab_size != net.vocab_size:
            raise ValueError(
                f"Reference vocabulary ({self.reference.vocab_size}) differs from the policy's "
                f"({net.vocab_size})."
            )

    def pop_episode_stats(self) -> dict[str, float]:
        """See :meth:`EpisodeKLStats.pop`."""
        return self.stats.pop()

    def update_coef(self, episode_kl: float) -> float:
        """Adapt the coefficient with the mean episode KL since the last update (see
        :class:`AdaptiveKLController`)."""
        value = self.controller.update(episode_kl, self.steps_since_update)
        self.steps_since_update = 0
        return value

    def state_dict(self) -> dict[str, Any]:
        """The KL controller's state (coefficient, target, horizon), JSON-serialisable: what a
        checkpoint keeps (``state.json`` of :func:`agents.common.training.train_run`)."""
        return self.controller.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue with the coefficient of :meth:`state_dict` (see
        :meth:`AdaptiveKLController.load_state_dict`)."""
        self.controller.load_state_dict(state)
        self.steps_since_update = 0


def _record(callback: BaseCallback, holder: _KLPenalty, history: list[dict[str, float]]) -> None:
    """After a rollout: pop the episode statistics, adapt the coefficient, log both."""
    stats = holder.pop_episode_stats()
    if not stats:
        return
    stats["kl_coef"] = holder.update_coef(stats["kl"])
    history.append(stats)
    callback.logger.record("rollout/kl", stats["kl"])
    callback.logger.record("rollout/kl_per_token", stats["kl_per_token"])
    callback.logger.record("rollout/task_reward", stats["task_reward"])
    callback.logger.record("train/kl_coef", stats["kl_coef"])


# -- after the rollout: batched forwards over the rollout buffer ----------------------------------


def _log_probs_at(
    network: CausalLMActorCritic, hidden: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """``log_softmax(LM head(hidden))[action]`` row by row, a bounded number of rows at a time."""
    rows = max(1, MAX_LOGIT_ELEMENTS // max(1, network.vocab_size))
    out = torch.empty(hidden.shape[0], device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        logits = network.logits_from_hidden(hidden[start : start + rows])
        logp = torch.log_softmax(logits.float(), -1)
        out[start : start + rows] = logp.gather(1, actions[start : start + rows, None]).squeeze(1)
    return out


@torch.no_grad()
def episode_action_log_probs(
    network: CausalLMActorCritic,
    index: EpisodeIndex,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    actions: torch.Tensor,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
) -> torch.Tensor:
    """``log p(a|s)`` under ``network``'s LM head (unmasked softmax) for every transition of a
    flattened rollout, one trunk forward per episode segment.

    Segments are packed by length into forwards of at most ``max_batch_tokens`` tokens (one
    segment longer than that runs alone) through
    :func:`agents.algorithms.ppo.episode_hidden_states`, the function EpisodePPO's update uses;
    transitions the index could not match run on their own windows (``network.last_hidden``). The LM
    head runs only at the transitions' positions, on a bounded number of rows at a time.

    :param network: the model (the reference, or the policy's network).
    :param index: :func:`agents.algorithms.ppo.build_episode_index` of the flattened rollout.
    :param input_ids: ``(n, W)`` long ids of the flattened rollout, on ``network``'s device.
    :param attention_mask: ``(n, W)`` its attention masks.
    :param actions: ``(n,)`` long actions.
    :param max_batch_tokens: segments x longest segment of one forward.
    :return: ``(n,)`` float32 log-probabilities.
    """
    n = input_ids.shape[0]
    out = torch.empty(n, device=input_ids.device)
    matched = np.flatnonzero(index.segment >= 0)
    by_segment = matched[np.argsort(index.segment[matched], kind="stable")]
    bounds = np.searchsorted(index.segment[by_segment], np.arange(index.n_segments + 1))

    def run(segments: list[int]) -> None:
        inds = np.concatenate([by_segment[bounds[s] : bounds[s + 1]] for s in segments])
        hidden = episode_hidden_states(network, index, input_ids, inds)
        rows = torch.as_tensor(inds, device=input_ids.device)
        out[rows] = _log_probs_at(network, hidden, actions[rows])

    with network.scoring():
        chunk: list[int] = []
        for s in np.argsort(index.n_real, kind="stable"):  # shortest first: little padding
            if chunk and (len(chunk) + 1) * int(index.n_real[s]) > max_batch_tokens:
                run(chunk)
                chunk = []
            chunk.append(int(s))
        if chunk:
            run(chunk)

        rest = np.flatnonzero(index.segment < 0)
        width = max(1, input_ids.shape[1])
        for start in range(0, len(rest), max(1, max_batch_tokens // width)):
            rows = torch.as_tensor(rest[start : start + max(1, max_batch_tokens // width)])
            rows = rows.to(input_ids.device)
            hidden = network.last_hidden(input_ids[rows], attention_mask[rows])
            out[rows] = _log_probs_at(network, hidden, actions[rows])
    return out


def buffer_holds_unmasked_log_probs(policy: torch.nn.Module) -> bool:
    """Whether the rollout buffer's log-probabilities are the LM head's unmasked softmax: true
    for :class:`agents.networks.policies.LMActorCriticPolicy`, false for a ``MaskablePPO`` policy
    (NLPO's top-p mask or env masks renormalise the distribution)."""
    return not isinstance(policy, MaskableActorCriticPolicy)


@torch.no_grad()
def rollout_token_kl(
    policy: torch.nn.Module,
    reference: CausalLMActorCritic,
    rollout_buffer: RolloutBuffer,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
) -> np.ndarray:
    """``log pi(a|s) - log pi_ref(a|s)`` of every transition of a full, unflattened rollout buffer.

    ``log pi_ref`` comes from batched full-sequence forwards of the reference over the rollout's
    episode segments (:func:`episode_action_log_probs`); ``log pi`` from the buffer's own
    log-probabilities when they are the LM head's unmasked softmax, otherwise (``MaskablePPO``)
    from the same batched forwards of the policy's network, with the weights of the rollout.

    :param policy: the policy that collected the rollout (its weights unchanged since).
    :param reference: the frozen reference.
    :param rollout_buffer: SB3's (dict) rollout buffer of lm-gym observations, before
        ``get()`` flattens it.
    :param max_batch_tokens: see :func:`episode_action_log_probs`.
    :return: ``(n_steps, n_envs)`` float64, in the buffer's layout.
    """
    obs = rollout_buffer.observations
    if not isinstance(obs, dict) or IDS_KEY not in obs or MASK_KEY not in obs:
        raise TypeError(
            "The KL penalty needs lm-gym's {'input_ids', 'attention_mask'} observations."
        )
    if rollout_buffer.generator_ready:
        raise RuntimeError("The rollout buffer was already flattened (get() was called).")
    net = lm_network(policy)
    n_steps, n_envs = rollout_buffer.buffer_size, rollout_buffer.n_envs
    # SB3's flat env-major order, as RolloutBuffer.get() flattens the buffer
    flat = RolloutBuffer.swap_and_flatten
    ids, mask = flat(obs[IDS_KEY]), flat(obs[MASK_KEY])
    index = build_episode_index(ids, mask, rollout_buffer.episode_starts)
    device = next(net.parameters()).device
    ids_t = torch.as_tensor(ids, device=device).long()
    mask_t = torch.as_tensor(mask, device=device).long()
    actions = torch.as_tensor(flat(rollout_buffer.actions).reshape(-1), device=device).long()
    logp_ref = episode_action_log_probs(reference, index, ids_t, mask_t, actions, max_batch_tokens)
    if buffer_holds_unmasked_log_probs(policy):
        logp = flat(rollout_buffer.log_probs).reshape(-1)
    else:
        logp = (
            episode_action_log_probs(net, index, ids_t, mask_t, actions, max_batch_tokens)
            .cpu()
            .numpy()
        )
    kl = logp.astype(np.float64) - logp_ref.cpu().numpy().astype(np.float64)
    return kl.reshape(n_envs, n_steps).T.copy()


class KLPenaltyCallback(_KLPenalty, BaseCallback):
    """The KL penalty of SB3's on-policy algorithms, computed from each rollout after it.

    At the end of each rollout (inside ``collect_rollouts``, before it returns):

    1. the token KL of every transition of ``rollout_buffer`` (:func:`rollout_token_kl`: batched
       reference forwards, one per episode segment);
    2. ``rollout_buffer.rewards -= coef * kl`` (the coefficient of the rollout);
    3. the advantages and returns are recomputed with SB3's
       ``rollout_buffer.compute_returns_and_advantage`` from the penalised rewards (the last
       values from ``policy.predict_values`` of the last observation, as the algorithm made them);
    4. the episode statistics are logged and the adaptive coefficient updated.

    The same penalty, up to float rounding, as :class:`KLPenaltyVecEnv` applied at every step
    (tested within 1e-5). A subclass of an algorithm that computes its own advantages after
    ``collect_rollouts`` reads the penalised rewards from ``rollout_buffer.rewards``.

    The task reward of each step is read from the rollout loop's ``rewards`` at each step (before
    SB3 adds value bootstraps to it); episode ends from its ``dones``. The penalty is subtracted
    from the buffer's rewards as they are (after any ``VecNormalize`` reward scaling).

    :param coef: initial (or fixed) KL coefficient.
    :param target_kl: target KL per episode for the adaptive coefficient; ``None``: fixed.
    :param horizon: the adaptive controller's horizon in env steps (see
        :class:`AdaptiveKLController`: fit it to the run's length).
    :param min_coef: the adaptive coefficient's floor (default 0).
    :param reference: the frozen reference: ``None`` (a copy of the policy's LM when training
        starts, made once), a model name/folder/``PreTrainedModel`` (any causal LM with the
        policy's vocabulary), or a :class:`CausalLMActorCritic`.
    :param stats_window: finished episodes kept in :attr:`episode_kl` and its siblings.
    :param max_batch_tokens: tokens of one packed reference forward
        (:func:`episode_action_log_probs`).
    :param verbose: SB3 verbosity.
    """

    def __init__(
        self,
        coef: float = 0.1,
        target_kl: float | None = None,
        horizon: int = 10_000,
        min_coef: float = 0.0,
        reference: Any = None,
        stats_window: int = 100,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        verbose: int = 0,
    ) -> None:
        BaseCallback.__init__(self, verbose)
        self._init_penalty(coef, target_kl, horizon, min_coef, reference, stats_window)
        self.max_batch_tokens = int(max_batch_tokens)
        #: one dict per rollout in which episodes finished (``kl``, ``kl_per_token``,
        #: ``task_reward``, ``episodes``, ``kl_coef``)
        self.history: list[dict[str, float]] = []
        #: ``(n_steps, n_envs)`` token KL of the last rollout, and the coefficient applied to it
        self.last_token_kl: np.ndarray | None = None
        self.last_coef: float | None = None
        self._task: list[np.ndarray] = []
        self._dones: list[np.ndarray] = []

    def _on_training_start(self) -> None:
        if not isinstance(self.model, OnPolicyAlgorithm):
            raise TypeError(
                "KLPenaltyCallback penalises the rollouts of on-policy algorithms (PPO, A2C, "
                f"TRPO, MaskablePPO), not {type(self.model).__name__}: wrap the vec env in "
                "KLPenaltyVecEnv and pass KLPenaltyVecEnvCallback() instead."
            )
        if find_kl_wrapper(self.model.get_env()) is not None:
            raise ValueError(
                "The model's env is wrapped in KLPenaltyVecEnv, which already penalises every "
                "step: drop the wrapper (KLPenaltyCallback computes the penalty after each "
                "rollout), or keep it and pass KLPenaltyVecEnvCallback() instead."
            )
        self.attach(self.model.policy)
        self.stats.resize(self.model.n_envs)

    def _on_rollout_start(self) -> None:
        self._task, self._dones = [], []

    def _on_step(self) -> bool:
        # copies: SB3 adds value bootstraps to ``rewards`` in place after this call
        self._task.append(np.array(self.locals["rewards"], dtype=np.float64).reshape(-1))
        self._dones.append(np.array(self.locals["dones"], dtype=bool).reshape(-1))
        return True

    def _on_rollout_end(self) -> None:
        model = cast(OnPolicyAlgorithm, self.model)
        buffer = self.locals.get("rollout_buffer", model.rollout_buffer)
        self.penalise(buffer)
        _record(self, self, self.history)

    def penalise(self, rollout_buffer: RolloutBuffer) -> np.ndarray:
        """Apply the penalty to a rollout that has just been collected (steps 1-3 of the class
        docstring) and add its episodes to the statistics.

        :param rollout_buffer: the full rollout buffer, before ``get()``.
        :return: ``(n_steps, n_envs)`` the token KL.
        """
        assert self.reference is not None, "attach() first"
        n_steps, n_envs = rollout_buffer.buffer_size, rollout_buffer.n_envs
        if len(self._task) != n_steps or not rollout_buffer.full:
            raise RuntimeError(
                f"KLPenaltyCallback saw {len(self._task)} steps of a {n_steps}-step rollout: it "
                "must be passed to learn() (it reads each step's rewards)."
            )
        policy = cast(OnPolicyAlgorithm, self.model).policy
        kl = rollout_token_kl(policy, self.reference, rollout_buffer, self.max_batch_tokens)
        coef = self.coef
        rollout_buffer.rewards -= (coef * kl).astype(np.float32)
        dones = self._dones[-1]
        values = last_values(policy, self.model._last_obs, dones, self.model.device)
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        self.last_token_kl, self.last_coef = kl, coef

        self.stats.resize(n_envs)
        starts = np.asarray(rollout_buffer.episode_starts) > 0
        for t in range(n_steps):
            self.stats.restart(np.flatnonzero(starts[t]))  # after env.reset() at learn()
            self.stats.step(kl[t], self._task[t], self._dones[t])
        self.steps_since_update += n_steps * n_envs
        return kl


# -- in the env chain: step by step ---------------------------------------------------------------


class KLPenaltyVecEnv(_KLPenalty, VecEnvWrapper):
    """Subtract ``coef * (log pi(a|s) - log pi_ref(a|s))`` from every step's reward, in the env.

    For agents outside SB3's on-policy loop (DQN, users' own loops); SB3's on-policy algorithms
    get the same penalty far cheaper from :class:`KLPenaltyCallback`. At each step the wrapper
    runs the attached policy's network and the reference on the observation the action was
    taken on, one KV-cached token step each (caches of its own), and adds ``info["kl"]`` and
    ``info["task_reward"]`` (sums over the episode) to the infos of finished episodes. ``pi`` is
    the network's LM-head softmax, unmasked (for DQN: the softmax of the Q-values).

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
        VecEnvWrapper.__init__(self, venv)
        self._init_penalty(coef, target_kl, horizon, min_coef, reference, stats_window)
        self.stats.resize(self.num_envs)
        self.policy: torch.nn.Module | None = None
        self._ref_cache = RolloutKVCache()
        self._pi_cache = RolloutKVCache()
        self._obs: dict[str, np.ndarray] | None = None
        self._kl = np.zeros(self.num_envs)

    def attach(self, policy: torch.nn.Module) -> None:
        """Use ``policy``'s network for ``log pi``; make the reference (a frozen copy of its LM)
        if none yet (see :meth:`_KLPenalty.attach`).

        :param policy: a policy of :mod:`agents.networks.policies` (or a
            :class:`CausalLMActorCritic`).
        """
        super().attach(policy)
        self.policy = policy

    def reset_policy_cache(self) -> None:
        """Drop the wrapper's KV cache of the policy (it also resets itself when the policy's
        parameters change)."""
        self._pi_cache.reset()

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._obs = obs  # type: ignore[assignment]
        self.stats.restart()
        return obs

    @torch.no_grad()
    def token_kl(self, obs: dict[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
        """``log pi(a|s) - log pi_ref(a|s)`` for each env.

        :param obs: the batch of observations the actions were taken on.
        :param actions: ``(n_envs,)`` token ids.
        """
        if self.policy is None or self.reference is None:
            raise RuntimeError(
                "KLPenaltyVecEnv has no policy: call env.attach(policy) first, or pass "
                "callback=KLPenaltyVecEnvCallback() to learn()."
            )
        net = lm_network(self.policy)
        device = next(net.parameters()).device
        ids = torch.as_tensor(obs[IDS_KEY], device=device).long()
        mask = torch.as_tensor(obs[MASK_KEY], device=device).long()
        logits = net.logits_from_hidden(net.last_hidden(ids, mask, self._pi_cache))
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
        self.steps_since_update += self.num_envs
        shaped = (rewards - self.coef * self._kl).astype(np.float32)
        for i, kl, task in self.stats.step(self._kl, rewards, dones):
            infos[i]["kl"] = kl
            infos[i]["task_reward"] = task
        self._obs = obs  # type: ignore[assignment]
        return obs, shaped, dones, infos


class KLPenaltyVecEnvCallback(BaseCallback):
    """Attach the policy to the :class:`KLPenaltyVecEnv` of the model's env, log KL and task
    reward, and adapt the coefficient after every rollout (any SB3 algorithm, DQN included).

    Logs the keys of :class:`KLPenaltyCallback`; the values are also kept in :attr:`history`.

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
                "KLPenaltyVecEnvCallback: the model's env is not wrapped in KLPenaltyVecEnv."
            )
        self.wrapper.attach(self.model.policy)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        assert self.wrapper is not None
        self.wrapper.reset_policy_cache()  # an update follows: the policy's weights will change
        _record(self, self.wrapper, self.history)


# -- finding the penalty of a model, env or agent -------------------------------------------------


def find_kl_wrapper(env: VecEnv | None) -> KLPenaltyVecEnv | None:
    """The :class:`KLPenaltyVecEnv` in a chain of ``VecEnvWrapper``, if any."""
    while env is not None:
        if isinstance(env, KLPenaltyVecEnv):
            return env
        env = getattr(env, "venv", None)
    return None


def _callbacks(callback: Any) -> Iterator[Any]:
    """The callbacks inside a callback, a ``CallbackList`` or a list of them."""
    if isinstance(callback, CallbackList):
        for cb in callback.callbacks:
            yield from _callbacks(cb)
    elif isinstance(callback, (list, tuple)):
        for cb in callback:
            yield from _callbacks(cb)
    elif callback is not None:
        yield callback


def kl_penalty_of(obj: Any) -> KLPenaltyCallback | KLPenaltyVecEnv | None:
    """The KL penalty of a zoo agent (its :class:`KLPenaltyCallback` among the callbacks of every
    ``learn``, or the :class:`KLPenaltyVecEnv` of its env), an SB3 model or a vec env (their
    :class:`KLPenaltyVecEnv`), if any. Both kinds have ``coef``, ``reference``,
    ``attach(policy)``, ``state_dict()`` and ``load_state_dict()``.

    :param obj: an agent, an SB3 model or a vec env.
    """
    if not isinstance(obj, VecEnv):
        learn_kwargs = getattr(obj, "learn_kwargs", None)
        if isinstance(learn_kwargs, Mapping):
            for cb in _callbacks(learn_kwargs.get("callback")):
                if isinstance(cb, KLPenaltyCallback):
                    return cb
        get_env = getattr(obj, "get_env", None)
        obj = get_env() if callable(get_env) else None
    return find_kl_wrapper(obj) if isinstance(obj, VecEnv) else None


#: The former name of :func:`kl_penalty_of` (:mod:`agents.common.training` calls it).
kl_wrapper_of = kl_penalty_of
