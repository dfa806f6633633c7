"""Group-relative, critic-free policy optimisation at the token level: GRPO and RLOO.

Both algorithms sample a *group* of ``G`` episodes from the same prompt and judge each episode
against the others of its group instead of against a learned value function:

* **GRPO** (Shao et al. 2024, TRL's ``GRPOTrainer``): advantage ``(R_i - mean(R)) / (std(R) +
  1e-4)`` over the group (``std`` with Bessel's correction, as TRL), or ``R_i - mean(R)`` with
  ``scale_rewards=False`` (Dr. GRPO); PPO's clipped ratio over ``n_epochs``.
* **RLOO** (Ahmadian et al. 2024): advantage ``R_i - mean_{j != i}(R_j)``, the leave-one-out
  baseline; by default one epoch over the whole rollout in one minibatch, where the clipped
  surrogate's gradient is exactly the plain policy gradient ``A_i * grad log pi``.

``R_i`` is the episode's undiscounted return (the task reward, minus the per-token KL penalty when
one is applied to the rewards); the advantage is given to every token of the episode. There is no
value head (``policy_kwargs={"value_head": False}``: less memory, no critic to warm up). A KL term
to the reference model can also go into the loss (``kl_loss_coef``, the ``k3`` estimator
``exp(d) - d - 1`` with ``d = log pi_ref - log pi`` per token, as in GRPO/TRL, clamped at
``K3_MAX`` = 10 per token), with the
reference's log-probabilities computed once per rollout in one forward per episode.

**Groups from a standard vector env.** :class:`GroupedResetVecEnv` wraps an SB3 ``VecEnv`` of
lm-gym envs whose envs ``g*G .. g*G+G-1`` form group ``g``. Each env numbers its episodes; the
``k``-th episodes of a group's envs form one group-episode. The first env of the group to start
its ``k``-th episode (the *leader*) draws the sample as the env always does (its own seeded RNG,
data set, split); the others are reset to that sample, prompt, references and hidden ``meta``
alike, through the envs' public reset option ``options={"sample": env.sample}``. Envs whose episodes end at different times
(early EOS) stay correct: they only wait for nothing, they follow the same sample sequence.

**Rollout boundaries.** SB3 collects a fixed number of steps per env, so an episode may begin in
one rollout and end in the next. A group is used only when each of its ``G`` episodes both began
and ended inside the rollout; the transitions of other episodes get zero weight in the loss (the
fraction used is logged as ``rollout/group_used_fraction``). With episodes of a fixed length ``T``
(the token budget) choose ``n_steps`` a multiple of ``T``: every group is then used.

Minibatch losses are token-level means over the used transitions (each token weighs the same, as
in DAPO; GRPO's original per-sequence mean weighs short answers more). Everything else (the
episode-level forward, minibatches, logging, ``save``/``load``) is
:class:`agents.algorithms.ppo.EpisodePPO`. A group's prompt is computed once, not ``G`` times: in
the rollout's first step (:class:`agents.networks.actor_critic.RolloutKVCache` computes identical
new windows once) and in the update and the KL reference
(:func:`agents.networks.actor_critic.packed_hidden` runs a shared prefix once).

Usage::

    from stable_baselines3.common.env_util import make_vec_env
    from agents.algorithms.grpo import GroupRelativePPO, GroupedResetVecEnv
    from agents.networks.policies import LMActorCriticPolicy

    env = GroupedResetVecEnv(make_vec_env("LMCountUp-v0", n_envs=8), group_size=4)
    model = GroupRelativePPO(
        LMActorCriticPolicy, env, group_size=4, n_steps=48,
        policy_kwargs={"model": "tiny-gpt2", "value_head": False},
    )
    model.learn(10_000)
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import Any, Literal, cast

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from agents.algorithms.ppo import EpisodeIndex, EpisodePPO
from agents.networks.actor_critic import CausalLMActorCritic

__all__ = [
    "ADVANTAGES",
    "GroupRelativePPO",
    "GroupedResetVecEnv",
    "find_grouped_env",
    "group_advantages",
]

#: The advantage estimators of :class:`GroupRelativePPO`.
ADVANTAGES = ("grpo", "rloo")
#: Largest per-token value of the ``k3`` KL term (see :meth:`GroupRelativePPO.minibatch_loss`).
K3_MAX = 10.0


def group_advantages(
    returns: np.ndarray,
    groups: np.ndarray,
    method: Literal["grpo", "rloo"] = "grpo",
    scale_rewards: bool = True,
) -> np.ndarray:
    """Each episode's advantage from the returns of its group.

    :param returns: ``(m,)`` episode returns.
    :param groups: ``(m,)`` group ids; every group has at least two episodes.
    :param method: ``"grpo"``: ``R - mean``, divided by ``std + 1e-4`` (Bessel-corrected) when
        ``scale_rewards``; ``"rloo"``: ``R_i`` minus the mean of the group's other returns.
    :param scale_rewards: GRPO only: divide by the group's standard deviation.
    :return: ``(m,)`` float64 advantages.
    :raises ValueError: unknown method, shapes differ, or a group of one episode.
    """
    if method not in ADVANTAGES:
        raise ValueError(f"Unknown advantage method {method!r}: use one of {ADVANTAGES}.")
    returns = np.asarray(returns, dtype=np.float64)
    groups = np.asarray(groups)
    if returns.shape != groups.shape or returns.ndim != 1:
        raise ValueError(f"returns {returns.shape} and groups {groups.shape} must be equal 1-D.")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(counts) and counts.min() < 2:
        raise ValueError("Every group needs at least two episodes.")
    sums = np.bincount(inverse, weights=returns)
    n = counts[inverse].astype(np.float64)
    if method == "rloo":
        return returns - (sums[inverse] - returns) / (n - 1)
    mean = sums[inverse] / n
    centred = returns - mean
    if not scale_rewards:
        return centred
    var = np.bincount(inverse, weights=centred**2)[inverse] / (n - 1)
    return centred / (np.sqrt(var) + 1e-4)


class GroupedResetVecEnv(VecEnvWrapper):
    """Make groups of ``group_size`` consecutive envs play the same samples (see the module
    docstring), and log which group-episode every transition belongs to.

    Put it directly around the vector env of lm-gym envs, inside any other wrapper (a KL penalty
    wrapper must see the observations of the re-reset envs).

    :param venv: an SB3 vector env whose envs are lm-gym :class:`lm_gym.envs.core.TextEnv`
        (possibly inside ``Monitor``); ``num_envs`` a multiple of ``group_size``.
    :param group_size: episodes per group (``G >= 2``).
    :param max_log: steps kept in :attr:`step_keys` and :attr:`step_dones` (at least a rollout).
    :raises ValueError: ``group_size < 2`` or ``num_envs`` not a multiple of it.
    :raises TypeError: the envs have no ``sample`` (not lm-gym envs).
    """

    def __init__(self, venv: VecEnv, group_size: int, max_log: int = 100_000) -> None:
        group_size = int(group_size)
        if group_size < 2:
            raise ValueError(f"group_size must be at least 2, got {group_size}.")
        if venv.num_envs % group_size:
            raise ValueError(
                f"The vector env has {venv.num_envs} envs, not a multiple of group_size="
                f"{group_size}: use n_envs = k * group_size."
            )
        try:
            venv.get_attr("sample", indices=[0])
        except AttributeError as err:
            raise TypeError(
                "GroupedResetVecEnv needs lm-gym envs (TextEnv: a `sample` property and "
                "reset(options={'sample': ...}))."
            ) from err
        super().__init__(venv)
        self.group_size = group_size
        self.n_groups = venv.num_envs // group_size
        n = venv.num_envs
        self._episode = np.zeros(n, dtype=np.int64)
        self._key = np.full(n, -1, dtype=np.int64)
        # per group: episode number -> [key, sample, members still to start it]
        self._open: list[dict[int, list[Any]]] = [{} for _ in range(self.n_groups)]
        self._next_key = 0
        #: the group-episode key of every env at each step since :meth:`clear_log` (the last
        #: ``max_log`` steps, so that an env used outside the algorithm does not grow forever)
        self.step_keys: deque[np.ndarray] = deque(maxlen=max_log)
        #: the dones of each step since :meth:`clear_log` (the last ``max_log``)
        self.step_dones: deque[np.ndarray] = deque(maxlen=max_log)
        #: re-resets made to put a follower on its leader's sample
        self.re_resets = 0

    def clear_log(self) -> None:
        """Forget the logged keys and dones (called at the start of each rollout)."""
        self.step_keys.clear()
        self.step_dones.clear()

    def _sample_of(self, env: int) -> Any:
        sample = self.venv.get_attr("sample", indices=[env])[0]
        if sample is None:
            raise RuntimeError(f"Env {env} has no current sample after its reset.")
        return sample

    def _start(self, env: int, obs: dict[str, np.ndarray]) -> None:
        """Env ``env`` has just started its next episode (``self._episode[env]``): lead its group
        on this episode, or follow the leader's sample (re-reset, ``obs`` row replaced)."""
        open_ = self._open[env // self.group_size]
        number = int(self._episode[env])
        entry = open_.get(number)
        if entry is None:  # the leader: its own draw is the group's sample
            open_[number] = [self._next_key, self._sample_of(env), self.group_size - 1]
            self._key[env] = self._next_key
            self._next_key += 1
            return
        key, sample, waiting = entry
        self._key[env] = key
        if self._sample_of(env) != sample:
            new_obs, _ = self.venv.env_method("reset", options={"sample": sample}, indices=[env])[0]
            for name in obs:
                obs[name][env] = new_obs[name]
            self.re_resets += 1
        if waiting <= 1:
            del open_[number]
        else:
            entry[2] = waiting - 1

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        if not isinstance(obs, dict):
            raise TypeError("GroupedResetVecEnv needs lm-gym's Dict observations.")
        obs = {k: np.array(v, copy=True) for k, v in obs.items()}
        self._episode[:] = 0
        self._open = [{} for _ in range(self.n_groups)]
        for env in range(self.num_envs):
            self._start(env, obs)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self.step_keys.append(self._key.copy())
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        self.step_dones.append(np.asarray(dones, dtype=bool).copy())
        if np.any(dones):
            assert isinstance(obs, dict)
            obs = {k: np.array(v, copy=True) for k, v in obs.items()}
            for env in np.flatnonzero(dones):
                self._episode[env] += 1
                self._start(int(env), obs)
        return obs, rewards, dones, infos


def find_grouped_env(env: VecEnv | None) -> GroupedResetVecEnv | None:
    """The :class:`GroupedResetVecEnv` in a chain of ``VecEnvWrapper``, if any."""
    while env is not None:
        if isinstance(env, GroupedResetVecEnv):
            return env
        env = getattr(env, "venv", None)
    return None


class GroupRelativePPO(EpisodePPO):
    """GRPO or RLOO (``advantage=``) on :class:`agents.algorithms.ppo.EpisodePPO` (see the module
    docstring).

    Defaults differ from PPO's where the algorithms differ: no advantage normalisation per
    minibatch (the group does it), ``vf_coef=0``, ``gamma=1``. A policy with a value head works
    (its values are ignored) but wastes memory: use ``policy_kwargs={"value_head": False}``.

    :param policy: the policy (class or name), as for SB3's PPO.
    :param env: the training env: a :class:`GroupedResetVecEnv`, a chain of wrappers holding one,
        or a plain ``VecEnv`` (wrapped at the start of :meth:`learn`). ``None`` when loading.
    :param group_size: episodes per prompt (``G >= 2``); ``n_envs`` must be a multiple of it.
    :param advantage: ``"grpo"`` or ``"rloo"``.
    :param scale_rewards: GRPO: divide by the group's standard deviation (``False``: Dr. GRPO).
    :param kl_loss_coef: weight of the per-token ``k3`` KL to the reference in the loss (0: none).
    :param kl_reference: the reference for ``kl_loss_coef``: a model name/folder (kept in saves),
        a ``PreTrainedModel``/:class:`CausalLMActorCritic` object, or ``None`` for the policy's
        :meth:`~agents.networks.actor_critic.CausalLMActorCritic.reference_lm` when learning starts:
        with LoRA the LM with its adapters off (always the starting model), else a frozen copy (a
        loaded, trained policy would then be its own reference: pass the starting model's name when
        resuming).
    :param kwargs: :class:`agents.algorithms.ppo.EpisodePPO` / :class:`stable_baselines3.PPO`
        arguments.
    :raises ValueError: a bad ``group_size``, ``advantage`` or ``kl_loss_coef``.
    """

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        group_size: int = 4,
        advantage: Literal["grpo", "rloo"] = "grpo",
        scale_rewards: bool = True,
        kl_loss_coef: float = 0.0,
        kl_reference: Any = None,
        **kwargs: Any,
    ) -> None:
        if advantage not in ADVANTAGES:
            raise ValueError(f"Unknown advantage {advantage!r}: use one of {ADVANTAGES}.")
        if int(group_size) < 2:
            raise ValueError(f"group_size must be at least 2, got {group_size}.")
        if not kl_loss_coef >= 0:
            raise ValueError(f"kl_loss_coef must be >= 0, got {kl_loss_coef}.")
        self.group_size = int(group_size)
        self.advantage = advantage
        self.scale_rewards = bool(scale_rewards)
        self.kl_loss_coef = float(kl_loss_coef)
        self.kl_reference = kl_reference
        self._reference: CausalLMActorCritic | None = None
        self._weights = np.zeros(0, dtype=np.float32)
        self._ref_log_prob: th.Tensor | None = None
        self._batch_inds: np.ndarray | None = None
        kwargs.setdefault("normalize_advantage", False)
        kwargs.setdefault("vf_coef", 0.0)
        kwargs.setdefault("gamma", 1.0)
        super().__init__(policy, env, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        excluded = ["_reference", "_weights", "_ref_log_prob", "_batch_inds"]
        if not isinstance(self.kl_reference, str):
            excluded.append("kl_reference")
        return [*super()._excluded_save_params(), *excluded]

    # -- set-up -----------------------------------------------------------------------------------

    def _grouped(self) -> GroupedResetVecEnv:
        """The training env's :class:`GroupedResetVecEnv`; wrap a plain vector env in one."""
        assert self.env is not None, "GroupRelativePPO needs an env to learn."
        grouped = find_grouped_env(self.env)
        if grouped is not None:
            if grouped.group_size != self.group_size:
                raise ValueError(
                    f"The env's GroupedResetVecEnv has group_size={grouped.group_size}, the "
                    f"algorithm {self.group_size}."
                )
            return grouped
        if isinstance(self.env, VecEnvWrapper):
            raise ValueError(
                "Put GroupedResetVecEnv(venv, group_size) directly around the vector env of "
                "lm-gym envs, inside the other wrappers: "
                f"{type(self.env).__name__} holds none."
            )
        self.env = GroupedResetVecEnv(self.env, self.group_size)
        self._last_obs = None  # groups start with a reset
        return self.env

    def _setup_learn(self, total_timesteps: int, *args: Any, **kwargs: Any) -> Any:
        self._grouped()
        return super()._setup_learn(total_timesteps, *args, **kwargs)

    def reference_network(self) -> CausalLMActorCritic:
        """The frozen KL reference of ``kl_loss_coef`` (made on first use)."""
        if self._reference is None:
            ref = self.kl_reference
            if ref is None:
                net = cast(CausalLMActorCritic, self.policy.net)
                self._reference = net.reference_lm()
            elif isinstance(ref, CausalLMActorCritic):
                self._reference = ref
            else:
                self._reference = CausalLMActorCritic(ref, value_head=False).eval()
            for p in self._reference.parameters():
                p.requires_grad_(False)
            self._reference.to(self.device)
        return self._reference

    # -- rollouts ---------------------------------------------------------------------------------

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """EpisodePPO's rollout, then the group advantages (:meth:`compute_group_advantages`).

        :param env: the training env (holding a :class:`GroupedResetVecEnv`).
        :param callback: SB3's callback.
        :param rollout_buffer: the buffer to fill.
        :param n_rollout_steps: experiences to collect per env.
        :return: ``False`` if a callback stopped the rollout early.
        """
        grouped = find_grouped_env(env)
        if grouped is None:
            raise ValueError("GroupRelativePPO's env holds no GroupedResetVecEnv.")
        grouped.clear_log()
        if not super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps):
            return False
        keys = np.stack(list(grouped.step_keys)[-n_rollout_steps:])
        dones = np.stack(list(grouped.step_dones)[-n_rollout_steps:])
        stats = self.compute_group_advantages(rollout_buffer, keys, dones)
        for key, value in stats.items():
            self.logger.record(f"rollout/{key}", value)
        return True

    def compute_group_advantages(
        self, rollout_buffer: RolloutBuffer, keys: np.ndarray, dones: np.ndarray
    ) -> dict[str, float]:
        """Overwrite the buffer's advantages (and returns) with the group advantages, and set
        each transition's loss weight (1 for the transitions of used groups, else 0).

        :param rollout_buffer: a full rollout buffer (rewards already include any KL penalty).
        :param keys: ``(n_steps, n_envs)`` group-episode key of each transition.
        :param dones: ``(n_steps, n_envs)`` the dones of each step.
        :return: statistics that :meth:`collect_rollouts` logs under ``rollout/``: the fraction of
            transitions used, the groups used, the mean spread (std) of their returns and the
            groups without signal (equal returns).
        """
        rewards = rollout_buffer.rewards
        starts = np.asarray(rollout_buffer.episode_starts, dtype=bool)
        n_steps, n_envs = rewards.shape
        episodes: dict[int, list[tuple[int, int, int, float]]] = {}  # key -> (env, t0, t1, R)
        for env in range(n_envs):
            t0 = 0
            for t in range(n_steps):
                last = t == n_steps - 1 or keys[t + 1, env] != keys[t, env] or dones[t, env]
                if not last:
                    continue
                if starts[t0, env] and dones[t, env]:  # began and ended inside the rollout
                    ret = float(rewards[t0 : t + 1, env].sum())
                    episodes.setdefault(int(keys[t, env]), []).append((env, t0, t, ret))
                t0 = t + 1
        advantages = np.zeros((n_steps, n_envs), dtype=np.float32)
        weights = np.zeros((n_steps, n_envs), dtype=np.float32)
        used = [(k, eps) for k, eps in episodes.items() if len(eps) == self.group_size]
        stds: list[float] = []
        if used:
            flat = [(k, *e) for k, eps in used for e in eps]
            returns = np.array([e[4] for e in flat])
            adv = group_advantages(
                returns, np.array([e[0] for e in flat]), self.advantage, self.scale_rewards
            )
            for (_, env, t0, t1, _), a in zip(flat, adv):
                advantages[t0 : t1 + 1, env] = a
                weights[t0 : t1 + 1, env] = 1.0
            stds = [float(np.std([e[3] for e in eps])) for _, eps in used]
        rollout_buffer.advantages = advantages
        rollout_buffer.returns = advantages + rollout_buffer.values
        # the flat order of RolloutBuffer.get (env-major), as the update indexes transitions
        self._weights = RolloutBuffer.swap_and_flatten(weights).reshape(-1)
        stats = {
            "group_used_fraction": float(weights.mean()),
            "groups": float(len(used)),
            "group_reward_std": float(np.mean(stds)) if stds else 0.0,
            "groups_without_signal": float(sum(s == 0 for s in stds)),
        }
        if used == [] and not getattr(self, "_warned_unused", False):
            warnings.warn(
                "No complete group in this rollout: every episode crossed a rollout boundary. "
                "Use n_steps of at least a few token budgets (a multiple of max_new_tokens).",
                stacklevel=2,
            )
            self._warned_unused = True
        return stats

    # -- the update -------------------------------------------------------------------------------

    def _reference_log_probs(
        self, setup: tuple[CausalLMActorCritic, EpisodeIndex, th.Tensor] | None
    ) -> th.Tensor:
        """Reference log-probabilities of every transition's action (flat buffer order), one
        reference forward per episode segment
        (:func:`agents.algorithms.kl.episode_action_log_probs`)."""
        from agents.algorithms.kl import episode_action_log_probs

        buf = self.rollout_buffer
        obs = buf.observations
        assert isinstance(obs, dict)
        n = buf.buffer_size * buf.n_envs
        ids = th.as_tensor(obs["input_ids"].reshape(n, -1), device=self.device).long()
        mask = th.as_tensor(obs["attention_mask"].reshape(n, -1), device=self.device).long()
        if setup is not None:
            index = setup[1]
        else:  # a policy EpisodePPO cannot evaluate by episode: every transition on its own
            index = EpisodeIndex(
                np.full(n, -1), np.zeros(n, dtype=np.int64), np.zeros(0, np.int64), np.zeros(0)
            )
        actions = th.as_tensor(buf.actions.reshape(-1), device=self.device).long()
        with th.no_grad():
            return episode_action_log_probs(self.reference_network(), index, ids, mask, actions)

    def train(self) -> None:
        """EpisodePPO's update with the group-relative loss (:meth:`minibatch_loss`)."""
        self._ref_log_prob = None
        if self.kl_loss_coef > 0:
            self._flatten_buffer()
            self._ref_log_prob = self._reference_log_probs(self._episode_setup())
        super().train()
        self._batch_inds = None

    def evaluate_minibatch(
        self,
        setup: tuple[CausalLMActorCritic, EpisodeIndex, th.Tensor] | None,
        batch_inds: np.ndarray,
        rollout_data: DictRolloutBufferSamples,
        actions: th.Tensor,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """EpisodePPO's evaluation; remembers the minibatch's indices for its loss weights."""
        self._batch_inds = batch_inds
        return super().evaluate_minibatch(setup, batch_inds, rollout_data, actions)

    def minibatch_loss(
        self,
        rollout_data: DictRolloutBufferSamples,
        values: th.Tensor,
        log_prob: th.Tensor,
        entropy: th.Tensor | None,
        clip_range: float,
        clip_range_vf: float | None,
    ) -> tuple[th.Tensor, dict[str, float]]:
        """The clipped surrogate (and the ``k3`` KL term) as token means over the used
        transitions; no value loss.

        :param rollout_data: the minibatch samples.
        :param values: ignored (no critic).
        :param log_prob: current log-probabilities of the taken actions ``(m,)``.
        :param entropy: current entropies ``(m,)`` or ``None``.
        :param clip_range: the ratio clip range.
        :param clip_range_vf: ignored.
        :return: the loss and the logged terms.
        """
        assert self._batch_inds is not None, "minibatch_loss before evaluate_minibatch"
        w = th.as_tensor(self._weights[self._batch_inds], device=log_prob.device)
        n = w.sum().clamp_min(1.0)
        advantages = rollout_data.advantages
        ratio = th.exp(log_prob - rollout_data.old_log_prob)
        surrogate = th.min(
            advantages * ratio, advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
        )
        policy_loss = -(w * surrogate).sum() / n
        clipped = ((ratio - 1).abs() > clip_range).float()
        ent = -log_prob if entropy is None else entropy
        entropy_loss = -(w * ent).sum() / n
        loss = policy_loss + self.ent_coef * entropy_loss
        stats = {
            "policy_gradient_loss": policy_loss.item(),
            "clip_fraction": float((w * clipped).sum() / n),
            "value_loss": 0.0,
            "entropy_loss": entropy_loss.item(),
        }
        if self._ref_log_prob is not None:
            d = self._ref_log_prob[th.as_tensor(self._batch_inds, device=log_prob.device)]
            d = d - log_prob
            # k3 grows as exp(d) where the policy has left a token the reference likes (d >> 0):
            # one such token can swamp the loss (seen: a minibatch mean of 4.8e4 on SmolLM2).
            # Clamped at K3_MAX like verl's low-variance KL; beyond it the token adds no gradient.
            kl = (w * (th.exp(d) - d - 1).clamp(max=K3_MAX)).sum() / n
            loss = loss + self.kl_loss_coef * kl
            self.logger.record_mean("train/kl_loss", kl.item())
        return loss, stats
