"""Evaluate any agent of the zoo on an env's held-out split: reward, task metrics, and LM metrics.

:func:`evaluate_agent` plays episodes with ``agent.predict`` and reports, RL Zoo style, the mean and
standard deviation of the episode return, plus:

* every task metric of ``info["metrics"]`` (sentiment, chrF/BLEU/TER, ROUGE, ...), averaged;
* corpus distinct-1 and distinct-2 of the generated texts;
* the perplexity of the generated tokens under a reference LM (the agent's starting model);
* the KL divergence of the agent's policy to that reference along the visited states,
  ``sum_t KL(pi(.|s_t) || p_ref(.|s_t))`` per episode, for agents that expose
  ``action_log_probs`` (SB3 GPT-2 policies, the LM baselines, REINFORCE); ``nan`` for others;
* the number of generated tokens per second of wall time (acting only, metrics excluded).

Data-set tasks are evaluated on their samples in order (``reset(options={"index": i})``), so every
agent sees the same prompts; procedural tasks on seeds ``seed, seed + 1, ...``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from agents.base import load_lm_for_env, resolve_device, text_env

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["EpisodeRecord", "EvalResult", "evaluate_agent", "make_eval_env"]


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
        """Mean reward, its std, episodes, task metrics (``metric/<name>``) and LM metrics."""
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
        out["distinct-1"] = corpus_distinct_n(texts, 1)
        out["distinct-2"] = corpus_distinct_n(texts, 2)
        nll = [e.ref_nll for e in self.episodes]
        if tokens and not any(math.isnan(x) for x in nll):
            out["perplexity"] = float(math.exp(min(700.0, sum(nll) / tokens)))
        else:
            out["perplexity"] = math.nan
        kls = [e.kl for e in self.episodes]
        out["kl"] = float(np.mean(kls)) if kls and not any(math.isnan(k) for k in kls) else math.nan
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


def _reference_scores(
    ref: PreTrainedModel,
    final_obs: Mapping[str, np.ndarray],
    n_new: int,
    agent_logp: np.ndarray | None,
) -> tuple[float, float]:
    """(NLL of the generated tokens under ``ref``, summed KL of the agent's policy to ``ref``)."""
    import torch

    device = next(ref.parameters()).device
    ids = torch.as_tensor(np.asarray(final_obs["input_ids"]), device=device).long()[None]
    mask = torch.as_tensor(np.asarray(final_obs["attention_mask"]), device=device).long()[None]
    length = ids.shape[1]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = ref.base_model(input_ids=ids, attention_mask=mask, position_ids=pos)[0]
        cols = torch.arange(length - n_new - 1, length - 1, device=device)
        logq = torch.log_softmax(ref.get_output_embeddings()(hidden[0, cols]).float(), -1)
    tokens = ids[0, cols + 1]
    nll = float(-logq.gather(1, tokens[:, None]).sum())
    if agent_logp is None:
        return nll, math.nan
    logp = torch.as_tensor(agent_logp, device=device).float()
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return nll, max(0.0, float(terms.sum()))  # >= 0; float rounding can dip below


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
) -> EvalResult:
    """Play ``n_episodes`` evaluation episodes and collect rewards, texts and metrics.

    :param agent: any agent with ``predict(obs, deterministic=...)``.
    :param env: an env id (made on ``split``) or an env instance (used as is).
    :param n_episodes: episodes (data sets: the first ``n_episodes`` samples of the split, fewer if
        the split is smaller).
    :param split: the split for an env id.
    :param seed: first seed of procedural tasks.
    :param deterministic: passed to ``predict``.
    :param env_kwargs: options of an env made from an id.
    :param reference: the reference LM (name, folder or model) for perplexity and KL; ``None``
        skips both.
    :param reference_device: where the reference LM runs (``"auto"``: CUDA when present).
    :param compute_kl: compute the KL when the agent exposes ``action_log_probs``.
    :return: the result (see :meth:`EvalResult.summary`).
    """
    start = time.perf_counter()
    env_id = env if isinstance(env, str) else getattr(getattr(env, "spec", None), "id", None)
    if isinstance(env, str):
        env = make_eval_env(env, split, env_kwargs)
    inner = text_env(env)
    ref = None
    if reference is not None:
        ref = load_lm_for_env(reference, env).to(resolve_device(reference_device)).eval()
    kl_fn = getattr(agent, "action_log_probs", None) if compute_kl else None
    n = min(n_episodes, len(inner.samples)) if inner.samples else n_episodes
    episodes: list[EpisodeRecord] = []
    act_time = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        if inner.samples:
            obs, _ = env.reset(seed=seed + i, options={"index": i})
        else:
            obs, _ = env.reset(seed=seed + i)
        observations: list[dict[str, np.ndarray]] = []
        total, steps, info = 0.0, 0, {}
        while True:
            if kl_fn is not None and ref is not None:
                observations.append({k: np.array(v, copy=True) for k, v in obs.items()})
            action, _ = agent.predict(obs, deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            steps += 1
            if terminated or truncated:
                break
        act_time += time.perf_counter() - t0
        record = EpisodeRecord(
            reward=total,
            length=steps,
            text=str(info.get("text", "")),
            prompt=str(info.get("prompt", "")),
            references=list(info.get("references", [])),
            metrics={k: float(v) for k, v in info.get("metrics", {}).items()},
        )
        if ref is not None:
            agent_logp = None
            if kl_fn is not None and observations:
                stacked = {k: np.stack([o[k] for o in observations]) for k in observations[0]}
                agent_logp = np.asarray(kl_fn(stacked))
            record.ref_nll, record.kl = _reference_scores(ref, obs, steps, agent_logp)
        episodes.append(record)
    return EvalResult(env_id, split, episodes, act_time, time.perf_counter() - start)


def summarise(results: Sequence[EvalResult]) -> dict[str, Any]:
    """Mean of the summaries of several evaluations (e.g. one per seed), rewards pooled.

    :param results: evaluations of the same agent and env.
    """
    pooled = np.concatenate([r.rewards for r in results]) if results else np.array([])
    summaries = [r.summary() for r in results]
    out: dict[str, Any] = {}
    for key in summaries[0] if summaries else []:
        values = [s[key] for s in summaries if isinstance(s.get(key), (int, float))]
        out[key] = float(np.mean(values)) if values else math.nan
    out["mean_reward"] = float(pooled.mean()) if len(pooled) else math.nan
    out["std_reward"] = float(pooled.std()) if len(pooled) else math.nan
    out["eval_episodes"] = len(pooled)
    return out
