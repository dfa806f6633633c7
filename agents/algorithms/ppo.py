"""Episode-level PPO: SB3's PPO update with one forward pass per episode instead of one per token.

Stock :class:`stable_baselines3.PPO` evaluates every transition of a minibatch with its own
full-context forward pass (``policy.evaluate_actions``): a 48-token episode in an 80-token window
costs 48 forwards of 80 positions. In an lm-gym rollout the transitions of one episode are nested:
the window is right-aligned with left padding and each step shifts it by one token, so the *last*
observation of an episode in the buffer holds the whole sequence, and the distribution of every
earlier step is the causal LM's output at an earlier position of that same sequence.

:class:`EpisodePPO` keeps everything of SB3's PPO (hyperparameters, logger keys, callbacks,
``save``/``load``, the minibatch order drawn from NumPy's global RNG) and changes only how a
minibatch's values, log-probabilities and entropies are computed:

1. Once per update, :func:`build_episode_index` groups the buffer's transitions into *segments*:
   the runs of consecutive steps of one env inside one episode (``episode_starts`` splits them).
   A segment may be cut by the rollout boundary at either end (an episode that began in the last
   rollout, or is still running); that is fine, because the segment's last observation contains
   every earlier observation of the segment. Each transition is checked against its successor
   (same real tokens plus one); a transition that does not fit (a non-lm_gym env, a window that
   overflowed, a hand-made buffer) is evaluated the stock way.
2. For each minibatch (same indices as SB3's ``RolloutBuffer.get``), the segments it touches are
   packed, real tokens only, into one right-padded batch, cut after the last position the
   minibatch needs, and run through the trunk *once* (:func:`evaluate_episode_actions`). The
   hidden state of each transition is read at its position; the LM head and the value head run
   only there, and the log-probabilities and entropies come from one log-softmax
   (:func:`categorical_log_prob_entropy`).
3. The PPO loss (:meth:`EpisodePPO.minibatch_loss`), clipping, early stopping, gradient clipping
   and logging are SB3's code, unchanged.

Within a minibatch the maths is the stock per-transition computation (causal attention, positions
``0..n-1`` for the real tokens in both), equal to it up to floating-point rounding; see
``tests/agents/algorithms/test_episode_ppo.py``. The cost: a minibatch runs each episode it
touches once instead of each of its transitions. SB3's random minibatches touch most episodes of
the buffer, so the gain grows with the minibatch size; ``episode_minibatches=True`` draws
minibatches of whole episodes instead (as TRL and RL4LMs do), so that each episode runs once per
epoch.

Rollouts are SB3's loop too, with two changes to its value bootstraps of truncated episodes
(SB3 adds ``gamma * V(terminal_observation)`` to the last reward of every truncated episode):

* An episode that reached its token budget (``max_new_tokens``: lm-gym's envs say so in
  ``info["token_budget_reached"]``) is not bootstrapped: the budget is part of the task, the text
  has just been scored, and the state reached is terminal with value 0
  (:mod:`agents.algorithms.budget`). The return target is then the task reward alone, and the
  rollout saves the extra value forward (1.7% of the rollout's CPU time with ``gpt2-6l-384``, 8 envs
  x 48 tokens on ``LMText-v0``; 16% on ``LMCountUp-v0`` with 12 tokens and episodes of mixed
  lengths). Other truncations (a user's ``TimeLimit``) are bootstrapped;
  ``bootstrap_at_budget=True`` restores SB3's behaviour.
* The bootstraps that remain are made in one batched call through the KV cache
  (:meth:`EpisodePPO.truncation_values`) instead of SB3's ``predict_values`` per truncated env (a
  batch-1 full-window forward that also resets the policy's batched KV cache).

Usage (any policy built on :class:`agents.networks.actor_critic.CausalLMActorCritic`)::

    from agents.algorithms.ppo import EpisodePPO
    from agents.networks.policies import LMActorCriticPolicy

    model = EpisodePPO(LMActorCriticPolicy, env, policy_kwargs={"model": "tiny-gpt2"})
    model.learn(10_000)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from agents.algorithms.budget import TerminalAtBudgetVecEnv, bootstraps
from agents.networks.actor_critic import CausalLMActorCritic, left_padded_rows, packed_hidden
from agents.networks.policies import LMActorCriticPolicy

__all__ = [
    "EpisodeIndex",
    "EpisodePPO",
    "build_episode_index",
    "categorical_log_prob_entropy",
    "episode_hidden_states",
    "evaluate_episode_actions",
    "find_network",
    "last_values",
    "segment_groups",
]

#: Observation keys of every lm-gym env.
IDS_KEY = "input_ids"
MASK_KEY = "attention_mask"


def last_values(policy: Any, obs: Any, dones: np.ndarray, device: th.device) -> th.Tensor:
    """The values that ``RolloutBuffer.compute_returns_and_advantage`` bootstraps a rollout's
    unfinished episodes with: the policy's values of the observations after the last step.

    The buffer multiplies them by ``1 - done``, so only the envs whose episode goes on are
    computed; the others get 0. An env that has just finished shows the next episode's prompt,
    whose value would cost a prefill: when every episode ended with the rollout, that was a
    forward of all the next prompts for nothing (0.76 s of a 5.7 s ``smollm2-135m`` rollout of
    8 episodes x 20 tokens, one thread). The rows that go on extend the rows of the policy's KV
    cache by one token.

    :param policy: the SB3 policy (``predict_values``).
    :param obs: the vector env's observations after the last step (an array, or a dict of them).
    :param dones: ``(n_envs,)`` the last step's dones.
    :param device: the policy's device.
    :return: ``(n_envs, 1)`` values.
    """
    going = ~np.asarray(dones, dtype=bool).reshape(-1)
    values = th.zeros((len(going), 1), device=device)
    if going.any():
        rows = {k: v[going] for k, v in obs.items()} if isinstance(obs, dict) else obs[going]
        with th.no_grad():
            values[th.as_tensor(going, device=device)] = policy.predict_values(
                obs_as_tensor(rows, device)
            ).to(values.dtype)
    return values


@dataclass
class EpisodeIndex:
    """Where each transition of a flattened rollout buffer sits in its episode segment.

    Flat indices are SB3's order after ``RolloutBuffer.get`` flattens the buffer: env-major,
    ``flat = env * n_steps + step``.

    :param segment: ``(n,)`` segment id of each transition, ``-1`` for a transition evaluated the
        stock way.
    :param offset: ``(n,)`` steps from the transition to its segment's last transition.
    :param context: ``(n_segments,)`` flat index of each segment's last transition, whose
        observation is the segment's token context.
    :param n_real: ``(n_segments,)`` real (unpadded) tokens in each context observation.
    """

    segment: np.ndarray
    offset: np.ndarray
    context: np.ndarray
    n_real: np.ndarray

    @property
    def n_segments(self) -> int:
        """Number of segments (episodes, or their parts inside the buffer)."""
        return len(self.context)

    @property
    def n_unmatched(self) -> int:
        """Transitions evaluated the stock way (one forward each)."""
        return int((self.segment < 0).sum())


def build_episode_index(
    input_ids: np.ndarray, attention_mask: np.ndarray, episode_starts: np.ndarray
) -> EpisodeIndex:
    """Group a rollout's transitions into episode segments and check that they nest.

    Segments are runs of consecutive steps of one env with no episode start inside. Within a run,
    transition ``i`` continues into ``i + 1`` when both windows are left-padded (``mask = [0, ...,
    0, 1, ..., 1]`` with at least one real token), ``i + 1`` has exactly one more real token, and
    ``i``'s real tokens are the first ones of ``i + 1``'s; a transition that does not continue ends
    its segment (the next one up starts another). A transition whose own window is not left-padded
    gets no segment (``-1``: evaluated the stock way). Each segment's context is its last window,
    which then contains every window of the segment.

    :param input_ids: ``(n, W)`` flattened observation ids (env-major, see :class:`EpisodeIndex`).
    :param attention_mask: ``(n, W)`` flattened attention masks.
    :param episode_starts: ``(n_steps, n_envs)`` SB3's ``episode_starts`` (never flattened by SB3).
    :return: the index.
    """
    n_steps, n_envs = episode_starts.shape
    n = input_ids.shape[0]
    if n != n_steps * n_envs:
        raise ValueError(f"{n} observations for {n_steps} steps x {n_envs} envs.")
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask) != 0
    n_real, left_padded = left_padded_rows(mask)

    # A transition continues the next one in the same env when the next step is no episode start.
    starts = np.asarray(episode_starts, dtype=bool).T.reshape(-1)  # env-major like the flat obs
    step = np.tile(np.arange(n_steps), n_envs)
    nxt = np.arange(n) + 1
    same_episode = np.zeros(n, dtype=bool)
    inner = step < n_steps - 1
    same_episode[inner] = ~starts[nxt[inner]]

    # Check each transition against its immediate successor: one new real token, same prefix.
    # Nesting is transitive, so chaining successor checks validates against the segment's end.
    follows = np.zeros(n, dtype=bool)
    cand = np.flatnonzero(same_episode & left_padded)
    cand = cand[left_padded[cand + 1] & (n_real[cand + 1] == n_real[cand] + 1)]
    if len(cand):
        # Window i shifted left by one equals window i+1 without its newest token.
        shift_ok = (ids[cand, 1:] == ids[cand + 1, :-1]) | ~mask[cand, 1:]
        follows[cand[shift_ok.all(1)]] = True

    # Walk each env backwards: a transition that does not follow its successor ends a segment.
    segment = np.full(n, -1, dtype=np.int64)
    offset = np.zeros(n, dtype=np.int64)
    context: list[int] = []
    for env in range(n_envs):
        base = env * n_steps
        current, k = -1, 0
        for s in range(n_steps - 1, -1, -1):
            i = base + s
            if current >= 0 and follows[i]:
                k += 1
            elif left_padded[i]:
                current, k = len(context), 0
                context.append(i)
            else:
                current, k = -1, 0
                continue
            segment[i], offset[i] = current, k
    ctx = np.asarray(context, dtype=np.int64)
    return EpisodeIndex(segment, offset, ctx, n_real[ctx] if len(ctx) else ctx)


def segment_groups(index: EpisodeIndex, max_size: int) -> list[np.ndarray]:
    """Flat indices of each segment in step order, cut into chunks of at most ``max_size``
    consecutive transitions; each unmatched transition is a group of its own.

    :param index: the episode index.
    :param max_size: the largest group.
    """
    order = np.lexsort((-index.offset, index.segment))  # by segment, then by step
    seg_sorted = index.segment[order]
    groups = [np.array([i]) for i in order[seg_sorted < 0]]
    matched = order[seg_sorted >= 0]
    if len(matched):
        bounds = np.flatnonzero(np.diff(index.segment[matched])) + 1
        for run in np.split(matched, bounds):
            groups.extend(np.array_split(run, -(-len(run) // max(1, max_size))))
    return groups


def find_network(policy: th.nn.Module) -> CausalLMActorCritic | None:
    """The actor-critic network of a policy whose ``evaluate_actions`` EpisodePPO can reproduce.

    That is :class:`agents.networks.policies.LMActorCriticPolicy` or a subclass that keeps its
    ``evaluate_actions`` (logits = the network's LM head on the last hidden state, values = its
    value head or zeros without one, a plain categorical distribution); ``None`` for any other policy.

    :param policy: an SB3 policy.
    """
    if not isinstance(policy, LMActorCriticPolicy):
        return None
    if type(policy).evaluate_actions is not LMActorCriticPolicy.evaluate_actions:
        return None
    net = getattr(policy, "net", None)
    if not isinstance(net, CausalLMActorCritic):
        return None
    return net


def categorical_log_prob_entropy(
    logits: th.Tensor, actions: th.Tensor, entropy_grad: bool = True
) -> tuple[th.Tensor, th.Tensor]:
    """Log-probabilities of ``actions`` and entropies of ``Categorical(logits=logits)``.

    The values of SB3's ``CategoricalDistribution`` (``torch.distributions.Categorical``) in fewer
    passes over the vocabulary: one log-softmax, no argument validation, and optionally no graph
    for the entropy. With a 50257-token vocabulary these element-wise passes, not the matrix
    products, dominate a small model's update.

    :param logits: ``(m, V)`` float logits.
    :param actions: ``(m,)`` integer actions.
    :param entropy_grad: whether the entropy needs a gradient.
    :return: log-probabilities ``(m,)`` and entropies ``(m,)``.
    """
    logp = th.log_softmax(logits, dim=-1)
    log_prob = logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    with th.set_grad_enabled(entropy_grad and th.is_grad_enabled()):
        entropy = -(logp.exp() * logp).sum(-1)
    return log_prob, entropy


def episode_hidden_states(
    network: CausalLMActorCritic,
    index: EpisodeIndex,
    input_ids: th.Tensor,
    batch_inds: np.ndarray,
) -> th.Tensor:
    """The trunk's hidden state at each matched transition's position, one forward per segment.

    The segments touched by ``batch_inds`` are packed (real tokens only, cut after the last
    position needed) and run through the trunk once, with positions ``0..L-1``; each transition's
    hidden state is read at its own position (that of its window's newest token). The same hidden
    states as ``network.last_hidden`` on each transition's window, up to float rounding. Shared by
    the update (:func:`evaluate_episode_actions`) and the KL penalty
    (:func:`agents.algorithms.kl.episode_action_log_probs`).

    :param network: the network whose trunk runs.
    :param index: the buffer's episode index; every ``batch_inds`` entry must be matched.
    :param input_ids: ``(n, W)`` long ids of the flattened buffer, on the network's device.
    :param batch_inds: flat indices of the transitions.
    :return: ``(len(batch_inds), hidden)``.
    """
    seg = index.segment[batch_inds]
    offset = index.offset[batch_inds]
    uniq, inverse = np.unique(seg, return_inverse=True)
    min_offset = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(min_offset, inverse, offset)
    n_real = index.n_real[uniq]
    lengths = n_real - min_offset
    positions = n_real[inverse] - 1 - offset

    device = input_ids.device
    return packed_hidden(
        network,
        input_ids,
        th.as_tensor(index.context[uniq], device=device),
        th.as_tensor(n_real, device=device),
        th.as_tensor(lengths, device=device),
        th.as_tensor(inverse, device=device),
        th.as_tensor(positions, device=device),
    )


def evaluate_episode_actions(
    network: CausalLMActorCritic,
    index: EpisodeIndex,
    input_ids: th.Tensor,
    batch_inds: np.ndarray,
    actions: th.Tensor,
    entropy_grad: bool = True,
) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """Values, log-probabilities and entropies of matched transitions, one forward per segment.

    The same quantities as ``policy.evaluate_actions`` on those transitions' observations: the
    trunk runs once over the packed segments (:func:`episode_hidden_states`), and the actor and
    value heads run on the hidden states of the transitions' positions only.

    :param network: the policy's actor-critic network (see :func:`find_network`).
    :param index: the buffer's episode index; every ``batch_inds`` entry must be matched.
    :param input_ids: ``(n, W)`` long ids of the flattened buffer, on the policy's device.
    :param batch_inds: flat indices of the transitions.
    :param actions: ``(len(batch_inds),)`` long actions.
    :param entropy_grad: record the entropy's graph (``False`` when the entropy coefficient is 0:
        the entropy is then only logged, and the gradients are the same).
    :return: values ``(m,)``, log-probabilities ``(m,)`` and entropies ``(m,)``.
    """
    latent = episode_hidden_states(network, index, input_ids, batch_inds)
    logits = network.logits_from_hidden(latent)
    if network.value_head is None:  # critic-free: the policy's values are zeros
        values = th.zeros(latent.shape[0], device=latent.device)
    else:
        values = network.value_from_hidden(latent)
    log_prob, entropy = categorical_log_prob_entropy(logits, actions, entropy_grad)
    return values, log_prob, entropy


class EpisodePPO(PPO):
    """SB3's PPO whose update evaluates each episode of the rollout in one forward pass.

    Every argument of :class:`stable_baselines3.PPO` is accepted and means the same; the losses,
    minibatches (drawn as ``RolloutBuffer.get`` draws them, from NumPy's global RNG), logging and
    early stopping are SB3's. Only the evaluation of a minibatch differs (see the module docstring):
    the values, log-probabilities and entropies equal ``policy.evaluate_actions``'s up to float
    rounding, at a fraction of the cost. Needs a policy built on
    :class:`agents.networks.actor_critic.CausalLMActorCritic` and lm-gym's ``Dict(input_ids,
    attention_mask)`` observations; otherwise (or with ``episode_eval=False``) it is stock PPO.

    :param args: positional arguments of :class:`stable_baselines3.PPO` (policy, env).
    :param episode_eval: use the episode-level evaluation (``False``: stock per-transition
        evaluation, for comparisons).
    :param episode_minibatches: draw minibatches of whole episode segments instead of SB3's
        random transitions (segments longer than ``batch_size`` are cut into consecutive chunks),
        as sequence-level LM trainers (TRL, RL4LMs) do: each segment is then run once per epoch
        instead of once per minibatch that touches it. Not SB3's minibatch composition, so off
        by default here (the class stays SB3's PPO update for update); the zoo's ``ppo`` turns it
        on (learning shown equal: ``benchmarks/README.md``). With one minibatch
        (``batch_size >= n_steps * n_envs``) both are the same.
    :param bootstrap_at_budget: bootstrap the value of an episode that reached its token budget
        (``info["token_budget_reached"]``) as SB3 does after a time limit. ``False`` (default):
        that state is terminal (see the module docstring); other truncations are bootstrapped
        either way.
    :param kwargs: keyword arguments of :class:`stable_baselines3.PPO`.
    """

    def __init__(
        self,
        *args: Any,
        episode_eval: bool = True,
        episode_minibatches: bool = False,
        bootstrap_at_budget: bool = False,
        **kwargs: Any,
    ) -> None:
        self.episode_eval = bool(episode_eval)
        self.episode_minibatches = bool(episode_minibatches)
        self.bootstrap_at_budget = bool(bootstrap_at_budget)
        self._budget_env: TerminalAtBudgetVecEnv | None = None
        #: the episode index of the last update (``None``: stock evaluation)
        self.last_episode_index: EpisodeIndex | None = None
        self._warned_stock = False
        super().__init__(*args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "last_episode_index", "_budget_env"]

    # -- rollouts: SB3's collect_rollouts with batched truncation bootstraps ---------------------

    def truncation_values(self, infos: list[dict[str, Any]], dones: np.ndarray) -> dict[int, float]:
        """Values of the terminal observations of the envs whose episode was truncated this step,
        by a time limit or, with ``bootstrap_at_budget``, by the token budget
        (:func:`agents.algorithms.budget.bootstraps`).

        SB3 bootstraps each truncated episode with its own ``predict_values`` call (batch 1: a
        full-window forward each, which also invalidates a batched KV cache). Here one call
        serves them all: with the LM policy's KV cache, the batch holds every env's current
        window (what the cache holds: reused) with the truncated envs' terminal windows in their
        rows (one new token each: one-position forwards); without a cache, the terminal windows
        only. The values are the same up to float rounding.

        :param infos: the vector env's infos of this step.
        :param dones: the vector env's dones of this step.
        :return: ``{env index: value}`` for the truncated envs.
        """
        envs = [
            i
            for i, done in enumerate(dones)
            if bootstraps(infos[i], bool(done), self.bootstrap_at_budget)
        ]
        if not envs:
            return {}
        terminal = [infos[i]["terminal_observation"] for i in envs]
        if getattr(self.policy, "kv_cache", None) is not None and isinstance(self._last_obs, dict):
            batch = {key: np.array(value, copy=True) for key, value in self._last_obs.items()}
            for row, obs in zip(envs, terminal):
                for key in batch:
                    batch[key][row] = obs[key]
            rows = envs
        else:
            batch = {key: np.stack([obs[key] for obs in terminal]) for key in terminal[0]}
            rows = list(range(len(envs)))
        with th.no_grad():
            values = self.policy.predict_values(obs_as_tensor(batch, self.device))
        values_np = values.flatten().cpu().numpy()
        return {i: float(values_np[row]) for i, row in zip(envs, rows)}

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """SB3's ``OnPolicyAlgorithm.collect_rollouts``; with the LM policy the truncated
        episodes of a step are bootstrapped in one batched call (:meth:`truncation_values`), and
        with any policy, unless ``bootstrap_at_budget``, not at the token budget.

        :param env: the training environment.
        :param callback: called at each step and at the start and end of the rollout.
        :param rollout_buffer: the buffer to fill.
        :param n_rollout_steps: experiences to collect per env.
        :return: ``False`` if a callback stopped the rollout early.
        """
        if find_network(self.policy) is None or not isinstance(self._last_obs, dict):
            if not self.bootstrap_at_budget:
                if self._budget_env is None or self._budget_env.venv is not env:
                    self._budget_env = TerminalAtBudgetVecEnv(env)
                env = self._budget_env
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        assert self._last_obs is not None, "No previous observation was provided"
        # Switch to eval mode (this affects batch norm / dropout)
        self.policy.set_training_mode(False)

        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()

        while n_steps < n_rollout_steps:
            with th.no_grad():
                # Convert to pytorch tensor or to TensorDict
                assert self._last_obs is not None
                obs_tensor = obs_as_tensor(self._last_obs, self.device)
                actions, values, log_probs = self.policy(obs_tensor)
            actions = actions.cpu().numpy()

            new_obs, rewards, dones, infos = env.step(actions)

            self.num_timesteps += env.num_envs

            # Give access to local variables
            callback.update_locals(locals())
            if not callback.on_step():
                return False

            self._update_info_buffer(infos, dones)
            n_steps += 1

            # Reshape in case of discrete action
            actions = actions.reshape(-1, 1)

            # Handle timeout by bootstrapping with value function (SB3 issue #633), batched
            for idx, terminal_value in self.truncation_values(infos, dones).items():
                rewards[idx] += self.gamma * terminal_value

            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones

        # the value for the last timestep (none computed when every episode just ended)
        values = last_values(self.policy, new_obs, dones, self.device)

        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

        callback.update_locals(locals())

        callback.on_rollout_end()

        return True

    # -- buffer preparation -----------------------------------------------------------------------

    def _flatten_buffer(self) -> None:
        """Flatten the rollout buffer the way ``RolloutBuffer.get`` does (once per rollout)."""
        buf = self.rollout_buffer
        if buf.generator_ready:
            return
        if isinstance(buf, DictRolloutBuffer):
            for key, obs in buf.observations.items():
                buf.observations[key] = buf.swap_and_flatten(obs)
        else:
            buf.observations = buf.swap_and_flatten(buf.observations)
        for name in ("actions", "values", "log_probs", "advantages", "returns"):
            setattr(buf, name, buf.swap_and_flatten(getattr(buf, name)))
        buf.generator_ready = True

    def _episode_setup(self) -> tuple[CausalLMActorCritic, EpisodeIndex, th.Tensor] | None:
        """The network, episode index and ids tensor for this update; ``None`` for stock PPO."""
        if not self.episode_eval:
            return None
        network = find_network(self.policy)
        buf = self.rollout_buffer
        obs = getattr(buf, "observations", None)
        if (
            network is None
            or not isinstance(obs, dict)
            or IDS_KEY not in obs
            or MASK_KEY not in obs
            or not isinstance(self.action_space, spaces.Discrete)
        ):
            if not self._warned_stock:
                warnings.warn(
                    "EpisodePPO needs an LMActorCriticPolicy (evaluate_actions not overridden), "
                    "Dict(input_ids, attention_mask) observations and a Discrete action space; "
                    "using the stock PPO update.",
                    stacklevel=3,
                )
                self._warned_stock = True
            return None
        ids = obs[IDS_KEY].reshape(buf.buffer_size * buf.n_envs, -1)
        mask = obs[MASK_KEY].reshape(buf.buffer_size * buf.n_envs, -1)
        index = build_episode_index(ids, mask, buf.episode_starts)
        ids_t = th.as_tensor(ids, device=self.device).long()
        return network, index, ids_t

    def _minibatches(self, batch_size: int | None) -> Any:
        """``(batch indices, samples)`` pairs, drawn exactly as ``RolloutBuffer.get`` draws them.

        :param batch_size: minibatch size; ``None`` for the whole buffer.
        """
        buf = self.rollout_buffer
        assert buf.full, ""
        total = buf.buffer_size * buf.n_envs
        indices = np.random.permutation(total)
        self._flatten_buffer()
        if batch_size is None:
            batch_size = total
        for start in range(0, total, batch_size):
            batch_inds = indices[start : start + batch_size]
            yield batch_inds, buf._get_samples(batch_inds)

    def _segment_minibatches(self, index: EpisodeIndex, batch_size: int | None) -> Any:
        """``(batch indices, samples)`` pairs of whole segments (see ``episode_minibatches``).

        Segments (chunks of at most ``batch_size`` consecutive transitions) are shuffled with
        NumPy's global RNG and packed in that order into minibatches of about ``batch_size``.

        :param index: the buffer's episode index.
        :param batch_size: target minibatch size; ``None`` for the whole buffer.
        """
        buf = self.rollout_buffer
        total = buf.buffer_size * buf.n_envs
        size = total if batch_size is None else batch_size
        groups = segment_groups(index, size)
        current: list[np.ndarray] = []
        count = 0
        for g in np.random.permutation(len(groups)):
            current.append(groups[g])
            count += len(groups[g])
            if count >= size:
                batch_inds = np.concatenate(current)
                yield batch_inds, buf._get_samples(batch_inds)
                current, count = [], 0
        if current:
            batch_inds = np.concatenate(current)
            yield batch_inds, buf._get_samples(batch_inds)

    def evaluate_minibatch(
        self,
        setup: tuple[CausalLMActorCritic, EpisodeIndex, th.Tensor] | None,
        batch_inds: np.ndarray,
        rollout_data: DictRolloutBufferSamples,
        actions: th.Tensor,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """Values, log-probabilities and entropies of one minibatch (what ``evaluate_actions``
        returns), episode-level for matched transitions and stock for the rest.

        :param setup: from :meth:`_episode_setup`; ``None`` for the stock evaluation.
        :param batch_inds: the minibatch's flat buffer indices.
        :param rollout_data: the minibatch samples.
        :param actions: the minibatch actions, as the policy takes them.
        """
        if setup is None:
            return self.policy.evaluate_actions(rollout_data.observations, actions)
        network, index, ids = setup
        matched = index.segment[batch_inds] >= 0
        entropy_grad = self.ent_coef != 0
        if matched.all():
            return evaluate_episode_actions(network, index, ids, batch_inds, actions, entropy_grad)
        values = th.empty(len(batch_inds), device=self.device)
        log_prob = th.empty(len(batch_inds), device=self.device)
        entropy = th.empty(len(batch_inds), device=self.device)
        rest = np.flatnonzero(~matched)
        rest_t = th.as_tensor(rest, device=self.device)
        obs = {k: v[rest_t] for k, v in rollout_data.observations.items()}
        v, lp, ent = self.policy.evaluate_actions(obs, actions[rest_t])
        assert ent is not None
        values, log_prob, entropy = (
            values.index_put((rest_t,), v.flatten()),
            log_prob.index_put((rest_t,), lp),
            entropy.index_put((rest_t,), ent),
        )
        if matched.any():
            hit = np.flatnonzero(matched)
            hit_t = th.as_tensor(hit, device=self.device)
            v, lp, ent = evaluate_episode_actions(
                network, index, ids, batch_inds[hit], actions[hit_t], entropy_grad
            )
            values = values.index_put((hit_t,), v)
            log_prob = log_prob.index_put((hit_t,), lp)
            entropy = entropy.index_put((hit_t,), ent)
        return values, log_prob, entropy

    def minibatch_loss(
        self,
        rollout_data: DictRolloutBufferSamples,
        values: th.Tensor,
        log_prob: th.Tensor,
        entropy: th.Tensor | None,
        clip_range: float,
        clip_range_vf: float | None,
    ) -> tuple[th.Tensor, dict[str, float]]:
        """SB3's PPO loss of one minibatch (clipped surrogate, value and entropy terms).

        :param rollout_data: the minibatch samples (old log-probs and values, advantages, returns).
        :param values: current values ``(m,)`` or ``(m, 1)``.
        :param log_prob: current log-probabilities of the taken actions ``(m,)``.
        :param entropy: current entropies ``(m,)``, or ``None``.
        :param clip_range: the policy clip range.
        :param clip_range_vf: the value clip range, or ``None``.
        :return: the loss and the logged terms (``policy_gradient_loss``, ``clip_fraction``,
            ``value_loss``, ``entropy_loss``).
        """
        values = values.flatten()
        # Normalize advantage
        advantages = rollout_data.advantages
        # Normalization does not make sense if mini batchsize == 1, see GH issue #325
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        # ratio between old and new policy, should be one at the first iteration
        ratio = th.exp(log_prob - rollout_data.old_log_prob)

        # clipped surrogate loss
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
        clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()).item()

        if clip_range_vf is None:
            # No clipping
            values_pred = values
        else:
            # Clip the difference between old and new value
            # NOTE: this depends on the reward scaling
            values_pred = rollout_data.old_values + th.clamp(
                values - rollout_data.old_values, -clip_range_vf, clip_range_vf
            )
        # Value loss using the TD(gae_lambda) target
        value_loss = F.mse_loss(rollout_data.returns, values_pred)

        # Entropy loss favor exploration
        if entropy is None:
            # Approximate entropy when no analytical form
            entropy_loss = -th.mean(-log_prob)
        else:
            entropy_loss = -th.mean(entropy)

        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        stats = {
            "policy_gradient_loss": policy_loss.item(),
            "clip_fraction": clip_fraction,
            "value_loss": value_loss.item(),
            "entropy_loss": entropy_loss.item(),
        }
        return loss, stats

    # -- the update: SB3 2.x PPO.train with the evaluation swapped --------------------------------

    def train(self) -> None:
        """Update the policy using the rollout buffer (SB3's ``PPO.train``, episode-level)."""
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        # Compute current clip range
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        # Optional: clip range for the value function
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        entropy_losses = []
        pg_losses, value_losses = [], []
        clip_fractions = []

        self._flatten_buffer()
        setup = self._episode_setup()
        self.last_episode_index = setup[1] if setup is not None else None

        continue_training = True
        # train for n_epochs epochs
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # Do a complete pass on the rollout buffer
            if self.episode_minibatches and setup is not None:
                minibatches = self._segment_minibatches(setup[1], self.batch_size)
            else:
                minibatches = self._minibatches(self.batch_size)
            for batch_inds, rollout_data in minibatches:
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    # Convert discrete action from float to long
                    actions = rollout_data.actions.long().flatten()

                values, log_prob, entropy = self.evaluate_minibatch(
                    setup, batch_inds, rollout_data, actions
                )
                loss, stats = self.minibatch_loss(
                    rollout_data, values, log_prob, entropy, clip_range, clip_range_vf
                )
                pg_losses.append(stats["policy_gradient_loss"])
                clip_fractions.append(stats["clip_fraction"])
                value_losses.append(stats["value_loss"])
                entropy_losses.append(stats["entropy_loss"])

                # Approximate reverse KL for early stopping (SB3 issue #417, PR #419)
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(
                            f"Early stopping at step {epoch} due to reaching max kl: "
                            f"{approx_kl_div:.2f}"
                        )
                    break

                # Optimization step
                self.policy.optimizer.zero_grad()
                loss.backward()
                # Clip grad norm
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(
            self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()
        )

        # Logs
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        if setup is not None:
            self.logger.record("train/episode_segments", setup[1].n_segments)
