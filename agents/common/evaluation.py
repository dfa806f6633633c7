"""Evaluate any agent of the zoo on an env's held-out split: reward, task metrics, and LM metrics.

:func:`evaluate_agent` plays episodes with ``agent.predict`` and reports, RL Zoo style, the mean and
standard deviation of the episode return, plus (see :meth:`EvalResult.summary`):

* every task metric of ``info["metrics"]`` (sentiment, chrF/BLEU/TER, ROUGE, ...) averaged over the
  episodes, as ``metric/<name>``. A task scored by distinct-n reports the *per-text* score, averaged:
  ``metric/distinct-1``;
* ``corpus_distinct-1`` and ``corpus_distinct-2``: the distinct n-grams of all the generated texts
  pooled (a *corpus* measure: it also falls when episodes repeat each other);
* ``perplexity``: of the generated tokens under a reference LM (the agent's starting model);
* ``kl``: the KL divergence of the agent's policy to that reference along the visited states,
  ``sum_t KL(pi(.|s_t) || p_ref(.|s_t))`` per episode, averaged, for agents that expose
  ``action_log_probs`` (SB3 GPT-2 policies, the LM baselines, REINFORCE);
* the number of generated tokens per second of wall time (acting only, metrics excluded).

``perplexity`` and ``kl`` are in the summary only when computed: both need a reference LM, ``kl``
also an agent with ``action_log_probs``.

Episodes run ``n_envs`` at a time, each in its own copy of the env, with one batched
``agent.predict`` per step for all of them (one LM forward for the batch). Episode ``i`` is always
the same: data-set tasks are evaluated on their samples in order (``reset(seed=seed + i,
options={"index": i})``), so every agent sees the same prompts; procedural tasks on seeds
``seed, seed + 1, ...``. A slot whose episode ends starts the next episode not yet started; a slot
with none left repeats its last observation (its action is discarded; an agent with a KV cache
serves it from the cache), so the batch keeps its shape. A deterministic agent plays the same
episodes for every ``n_envs``, up to the float rounding of batched forwards. An agent whose
``predict`` takes one observation at a time (attribute ``supports_batch_predict = False``) plays one
episode at a time.

The reference metrics are computed after play, ``n_envs`` episodes at a time: one left-padded
forward of the reference LM (explicit ``position_ids``) over the episodes' final windows gives every
generated token's reference log-probability, and the agent's ``action_log_probs`` is called on the
episodes' observations step by step, batched across the episodes (so an agent with a KV cache
computes one new token per row and call, as when it acted).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from agents.common.base import ObsDict, load_lm_for_env, text_env
from lm_gym.models import resolve_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["EpisodeRecord", "EvalResult", "copy_env", "evaluate_agent", "make_eval_env"]


@dataclass
class EpisodeRecord:
    """One evaluation episode.

    :param reward: the episode's return.
    :param length: tokens generated.
    :param text: the generated text.
    :param prompt: the prompt text.
    :param references: the references, if any.
    :param metrics: the task metrics of ``info["metrics"]``.
    :param ref_nll: summed negative log-likelihood of the generated tokens under the reference LM
        (``nan`` without one).
    :param kl: ``sum_t KL(pi(.|s_t) || p_ref(.|s_t))`` (``nan`` when not computable).
    """

    reward: float
    length: int
    text: str
    prompt: str
    references: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    ref_nll: float = math.nan
    kl: float = math.nan


@dataclass
class EvalResult:
    """The episodes of one evaluation and their summary.

    :param env_id: the env evaluated on.
    :param split: the data split.
    :param episodes: the episodes.
    :param act_time: seconds spent acting (``predict`` and ``step``).
    :param wall_time: seconds in total (reference LM metrics included).
    """

    env_id: str | None
    split: str
    episodes: list[EpisodeRecord]
    act_time: float
    wall_time: float

    @property
    def rewards(self) -> np.ndarray:
        """The episode returns."""
        return np.array([e.reward for e in self.episodes], dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        """Mean reward, its std, episodes, task metrics (``metric/<name>``) and LM metrics.

        Keys: ``mean_reward``, ``std_reward``, ``eval_episodes``, ``mean_length``, every
        ``metric/<name>`` (the task's metric, averaged over episodes), ``corpus_distinct-1`` and
        ``corpus_distinct-2`` (distinct n-grams of all texts pooled, not an average over texts),
        ``perplexity`` and ``kl`` (only when computed: a reference LM was given, and for ``kl`` the
        agent has ``action_log_probs``), ``eval_tokens_per_s`` and ``eval_time_s``.
        """
        from lm_gym.rewards import corpus_distinct_n

        rewards = self.rewards
        texts = [e.text for e in self.episodes]
        tokens = sum(e.length for e in self.episodes)
        out: dict[str, Any] = {
            "mean_reward": float(rewards.mean()) if len(rewards) else math.nan,
            "std_reward": float(rewards.std()) if len(rewards) else math.nan,
            "eval_episodes": len(self.episodes),
            "mean_length": tokens / max(1, len(self.episodes)),
        }
        names = sorted({k for e in self.episodes for k in e.metrics})
        for name in names:
            values = [e.metrics[name] for e in self.episodes if name in e.metrics]
            out[f"metric/{name}"] = float(np.mean(values))
        out["corpus_distinct-1"] = corpus_distinct_n(texts, 1)
        out["corpus_distinct-2"] = corpus_distinct_n(texts, 2)
        nll = [e.ref_nll for e in self.episodes]
        if tokens and not any(math.isnan(x) for x in nll):
            out["perplexity"] = float(math.exp(min(700.0, sum(nll) / tokens)))
        kls = [e.kl for e in self.episodes]
        if kls and not any(math.isnan(k) for k in kls):
            out["kl"] = float(np.mean(kls))
        out["eval_tokens_per_s"] = tokens / self.act_time if self.act_time > 0 else math.nan
        out["eval_time_s"] = self.wall_time
        return out

    def to_dict(self) -> dict[str, Any]:
        """The summary and every episode, JSON-serialisable."""
        return {
            "env_id": self.env_id,
            "split": self.split,
            "summary": self.summary(),
            "episodes": [asdict(e) for e in self.episodes],
        }


def make_eval_env(
    env_id: str, split: str = "test", env_kwargs: Mapping[str, Any] | None = None
) -> gym.Env:
    """The env of ``env_id`` on a given split (procedural tasks ignore the split).

    :param env_id: a registered id.
    :param split: ``"train"``, ``"validation"`` or ``"test"``.
    :param env_kwargs: other options of the env.
    """
    import lm_gym  # noqa: F401  (registers the ids)

    return gym.make(env_id, **{**dict(env_kwargs or {}), "split": split})


def _wrapper_types(env: gym.Env) -> list[type]:
    """The classes of ``env``'s wrappers, outermost first, then the base env's."""
    out = [type(env)]
    while isinstance(env, gym.Wrapper):
        env = env.env
        out.append(type(env))
    return out


def _shared_parts(env: gym.Env) -> dict[int, Any]:
    """The parts of ``env`` that its copies share instead of copying: the text env's tokenizer,
    reward and metric scorers and data samples, and every torch module held by the env or a
    wrapper (read-only in an evaluation), as a ``copy.deepcopy`` memo."""
    import torch

    inner = text_env(env)
    shared: list[Any] = [getattr(inner, k, None) for k in ("tokenizer", "reward_scorer", "samples")]
    shared += list((getattr(inner, "metric_scorers", None) or {}).values())
    level: Any = env
    while True:
        attrs = getattr(level, "__dict__", {})
        shared += [v for v in attrs.values() if isinstance(v, torch.nn.Module)]
        if not isinstance(level, gym.Wrapper):
            break
        level = level.env
    return {id(obj): obj for obj in shared if obj is not None}


def copy_env(env: gym.Env) -> gym.Env:
    """An independent copy of ``env`` (another evaluation slot), wrappers included.

    ``copy.deepcopy(env)``, sharing what is read-only and costly to copy (tokenizer, reward
    scorers and their models, data samples, torch modules; see :func:`_shared_parts`): the copy is
    the instance as it is, made with ``gymnasium.make`` or not, however wrapped. An env that cannot
    be deep-copied is rebuilt with ``gymnasium.make(env.spec)`` (the registered env with the same
    options and the wrappers the spec records) if that gives the same stack of wrappers.

    :param env: the env to copy (possibly wrapped).
    :raises TypeError: neither way works.
    """
    try:
        return copy.deepcopy(env, _shared_parts(env))
    except Exception as err:  # something in the env cannot be copied: rebuild from the spec
        copy_error = err
    try:
        spec = env.spec
        made = gym.make(spec) if spec is not None else None
    except Exception:  # e.g. a wrapper without recorded constructor arguments
        made = None
    if made is not None:
        if _wrapper_types(made) == _wrapper_types(env):
            return made
        made.close()
    raise TypeError(
        f"Cannot copy the env {env} (deepcopy: {copy_error}) nor rebuild it from its spec."
    )


def _stack(observations: Sequence[Mapping[str, np.ndarray]]) -> ObsDict:
    """One batched observation (a leading batch axis) from single ones."""
    return {k: np.stack([np.asarray(o[k]) for o in observations]) for k in observations[0]}


def _own(observation: Mapping[str, Any]) -> ObsDict:
    """A copy of an observation that the env cannot change in place later."""
    return {k: np.array(v, copy=True) for k, v in observation.items()}


def _predict(
    agent: Any, observations: Sequence[ObsDict], deterministic: bool, batched: bool
) -> np.ndarray:
    """The agent's actions ``(len(observations),)``: one batched ``predict`` call, or one call per
    observation for an agent that cannot batch.

    :raises ValueError: a batched call returned another number of actions.
    """
    if not batched:
        return np.array(
            [
                np.asarray(agent.predict(o, deterministic=deterministic)[0]).reshape(-1)[0]
                for o in observations
            ]
        )
    actions, _ = agent.predict(_stack(observations), deterministic=deterministic)
    actions = np.asarray(actions).reshape(-1)
    if len(actions) != len(observations):
        raise ValueError(
            f"{type(agent).__name__}.predict returned {len(actions)} actions for a batch of "
            f"{len(observations)} observations; set supports_batch_predict = False on agents that "
            "predict one observation at a time."
        )
    return actions


@dataclass
class _Running:
    """An episode being played in a slot."""

    index: int
    reward: float = 0.0
    steps: int = 0


def _reset(env: gym.Env, i: int, seed: int, indexed: bool) -> ObsDict:
    """Start episode ``i`` (data-set tasks: sample ``i``; seed ``seed + i``)."""
    options = {"index": i} if indexed else None
    obs, _ = env.reset(seed=seed + i, options=options)
    return _own(obs)


def _record(episode: _Running, info: Mapping[str, Any]) -> EpisodeRecord:
    return EpisodeRecord(
        reward=episode.reward,
        length=episode.steps,
        text=str(info.get("text", "")),
        prompt=str(info.get("prompt", "")),
        references=list(info.get("references", [])),
        metrics={k: float(v) for k, v in info.get("metrics", {}).items()},
    )


def _play(
    agent: Any,
    envs: Sequence[gym.Env],
    n: int,
    *,
    seed: int,
    indexed: bool,
    deterministic: bool,
    batched: bool,
    keep_observations: bool,
    progress: Any,
) -> tuple[list[EpisodeRecord], list[ObsDict], list[list[ObsDict]]]:
    """Play episodes ``0 .. n - 1`` in ``len(envs)`` slots with one ``predict`` call per step.

    :return: per episode (in order): its record, its final observation, and (with
        ``keep_observations``) the observations it acted on.
    """
    records: list[EpisodeRecord | None] = [None] * n
    finals: list[ObsDict | None] = [None] * n
    trajectories: list[list[ObsDict]] = [[] for _ in range(n)]
    slots: list[_Running | None] = [None] * len(envs)
    current: list[ObsDict] = []
    for s, slot_env in enumerate(envs):
        current.append(_reset(slot_env, s, seed, indexed))
        slots[s] = _Running(s)
    started = len(envs)
    while any(slot is not None for slot in slots):
        actions = _predict(agent, current, deterministic, batched)
        for s, episode in enumerate(slots):
            if episode is None:  # nothing left to start: the row repeats its last input
                continue
            if keep_observations:
                trajectories[episode.index].append(current[s])
            obs, reward, terminated, truncated, info = envs[s].step(int(actions[s]))
            episode.reward += float(reward)
            episode.steps += 1
            if not (terminated or truncated):
                current[s] = _own(obs)
                continue
            records[episode.index] = _record(episode, info)
            finals[episode.index] = _own(obs)
            progress.update(1)
            if started < n:
                current[s] = _reset(envs[s], started, seed, indexed)
                slots[s] = _Running(started)
                started += 1
            else:
                slots[s] = None
    assert all(r is not None for r in records) and all(f is not None for f in finals)
    return records, finals, trajectories  # type: ignore[return-value]


def _reference_scores(
    ref: PreTrainedModel,
    finals: Sequence[Mapping[str, np.ndarray]],
    lengths: Sequence[int],
    trajectories: Sequence[Sequence[ObsDict]] | None,
    kl_fn: Any,
) -> list[tuple[float, float]]:
    """(NLL of the generated tokens under ``ref``, summed KL of the agent's policy to ``ref``) of a
    group of episodes.

    One forward of ``ref`` over the final windows, left-padded, with the policies' position ids
    (:func:`~agents.networks.actor_critic.position_ids_from_mask`), the columns that every row has
    as padding cut off. The KL calls ``kl_fn`` (the agent's
    ``action_log_probs``) once per step on the group's observations of that step (an episode
    already over repeats its last one, so the batch keeps its shape for a KV cache).

    :param ref: the reference causal LM.
    :param finals: the episodes' final observations (the generated tokens end each window).
    :param lengths: the tokens each episode generated.
    :param trajectories: each episode's observations, one per step (``None``: no KL).
    :param kl_fn: ``action_log_probs`` of the agent, or ``None``.
    :return: ``(nll, kl)`` per episode (``kl`` is ``nan`` without ``kl_fn``).
    """
    import torch

    from agents.networks.actor_critic import position_ids_from_mask

    device = next(ref.parameters()).device
    ids = torch.as_tensor(np.stack([np.asarray(f["input_ids"]) for f in finals])).long()
    mask = torch.as_tensor(np.stack([np.asarray(f["attention_mask"]) for f in finals])).long()
    leading = int((mask.cumsum(1) == 0).sum(1).min())  # columns that are padding in every row
    ids, mask = ids[:, leading:].to(device), mask[:, leading:].to(device)
    width = ids.shape[1]
    pos = position_ids_from_mask(mask)
    # the positions that predict each row's generated tokens (its last ``lengths[b]`` columns)
    rows = torch.cat([torch.full((n,), b) for b, n in enumerate(lengths)]).to(device)
    cols = torch.cat([torch.arange(width - n - 1, width - 1) for n in lengths]).to(device)
    with torch.no_grad():
        hidden = ref.base_model(input_ids=ids, attention_mask=mask, position_ids=pos)[0]
        logq = torch.log_softmax(ref.get_output_embeddings()(hidden[rows, cols]).float(), -1)
    token_nll = -logq.gather(1, ids[rows, cols + 1][:, None]).squeeze(1)
    nll = [float(part.sum()) for part in token_nll.split(list(lengths))]
    if kl_fn is None or trajectories is None:
        return [(x, math.nan) for x in nll]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    kl = [0.0] * len(lengths)
    for t in range(max(lengths)):
        batch = [traj[min(t, len(traj) - 1)] for traj in trajectories]
        logp = torch.as_tensor(np.asarray(kl_fn(_stack(batch))), device=device).float()
        live = [b for b, n in enumerate(lengths) if t < n]
        p_rows = logp[live]
        q_rows = logq[torch.as_tensor(offsets[live] + t, device=device)]
        p = p_rows.exp()
        terms = torch.where(p > 0, p * (p_rows - q_rows), torch.zeros_like(p)).sum(-1)
        for b, value in zip(live, terms.tolist()):
            kl[b] += value
    return [(x, max(0.0, k)) for x, k in zip(nll, kl)]  # >= 0; float rounding can dip below


def evaluate_agent(
    agent: Any,
    env: str | gym.Env,
    *,
    n_episodes: int = 20,
    split: str = "test",
    seed: int = 10_000,
    deterministic: bool = True,
    env_kwargs: Mapping[str, Any] | None = None,
    reference: str | PreTrainedModel | None = None,
    reference_device: str = "auto",
    compute_kl: bool = True,
    n_envs: int = 8,
    progress: bool = False,
) -> EvalResult:
    """Play ``n_episodes`` evaluation episodes, ``n_envs`` at a time, and collect rewards, texts
    and metrics.

    :param agent: any agent with ``predict(obs, deterministic=...)`` taking a batch of
        observations (or with ``supports_batch_predict = False``: then one episode at a time).
    :param env: an env id (made on ``split``) or an env instance (used as is for the first slot;
        the other slots get copies, see :func:`copy_env`).
    :param n_episodes: episodes (data sets: the first ``n_episodes`` samples of the split, fewer if
        the split is smaller).
    :param split: the split for an env id.
    :param seed: first seed (episode ``i`` is reset with seed ``seed + i``).
    :param deterministic: passed to ``predict``.
    :param env_kwargs: options of an env made from an id.
    :param reference: the reference LM (name, folder or model) for perplexity and KL; ``None``
        skips both.
    :param reference_device: where the reference LM runs (``"auto"``: CUDA when present).
    :param compute_kl: compute the KL when the agent exposes ``action_log_probs``.
    :param n_envs: episodes played at once (one batched ``predict`` per step), at most
        ``n_episodes``; lowered so that the episodes split evenly into rounds (20 episodes with
        ``n_envs=8``: 3 rounds of 7).
    :param progress: show a progress bar over episodes (tqdm, on stderr).
    :return: the result (see :meth:`EvalResult.summary`).
    :raises ValueError: ``n_envs < 1``.
    """
    from tqdm import tqdm

    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}.")
    start = time.perf_counter()
    env_id = env if isinstance(env, str) else getattr(getattr(env, "spec", None), "id", None)
    if isinstance(env, str):
        env = make_eval_env(env, split, env_kwargs)
    inner = text_env(env)
    ref = None
    if reference is not None:
        # transformers wraps PreTrainedModel.to with functools.wraps(nn.Module.to): its type takes
        # the module as the first argument
        ref = (
            load_lm_for_env(reference, env)
            .to(resolve_device(reference_device))  # type: ignore[arg-type]
            .eval()
        )
    kl_fn = getattr(agent, "action_log_probs", None) if compute_kl and ref is not None else None
    n = min(n_episodes, len(inner.samples)) if inner.samples else n_episodes
    if n <= 0:
        return EvalResult(env_id, split, [], 0.0, time.perf_counter() - start)
    batched = bool(getattr(agent, "supports_batch_predict", True))
    n_envs = min(n_envs, n) if batched else 1
    n_envs = -(-n // -(-n // n_envs))  # the same rounds, as even as they can be
    envs = [env]
    try:
        envs += [copy_env(env) for _ in range(n_envs - 1)]
    except TypeError as err:
        warnings.warn(f"{err}; evaluating one episode at a time.", stacklevel=2)
        for extra in envs[1:]:
            extra.close()
        envs = [env]

    with tqdm(total=n, desc="evaluating", unit="episode", disable=not progress) as bar:
        t0 = time.perf_counter()
        try:
            records, finals, trajectories = _play(
                agent,
                envs,
                n,
                seed=seed,
                indexed=bool(inner.samples),
                deterministic=deterministic,
                batched=batched,
                keep_observations=kl_fn is not None,
                progress=bar,
            )
        finally:
            for extra in envs[1:]:
                extra.close()
        act_time = time.perf_counter() - t0
    if ref is not None:
        with tqdm(total=n, desc="reference LM", unit="episode", disable=not progress) as bar:
            for lo in range(0, n, len(envs)):
                group = range(lo, min(n, lo + len(envs)))
                scores = _reference_scores(
                    ref,
                    [finals[i] for i in group],
                    [records[i].length for i in group],
                    [trajectories[i] for i in group] if kl_fn is not None else None,
                    kl_fn,
                )
                for i, (nll, kl) in zip(group, scores):
                    records[i].ref_nll, records[i].kl = nll, kl
                bar.update(len(group))
    return EvalResult(env_id, split, records, act_time, time.perf_counter() - start)
