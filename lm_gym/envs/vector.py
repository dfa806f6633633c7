"""Vector-level reward batching: score every episode that ends in a vector step with one call.

A :class:`~lm_gym.envs.core.TextEnv` scores its own text at episode end, one text at a time. With
a model-based reward (a sentiment classifier, sentence embeddings) and ``n`` envs that end at the
same step (common with fixed-length generation), that is ``n`` batch-of-1 forwards. Made with
``defer_reward=True``, the envs leave the scoring to :class:`DeferredRewardVecEnv`, a
stable-baselines3 ``VecEnvWrapper`` that scores all the texts of a step with one batched call per
scorer and writes the rewards and ``info["metrics"]`` back::

    from stable_baselines3.common.env_util import make_vec_env
    from lm_gym.envs.vector import DeferredRewardVecEnv

    venv = DeferredRewardVecEnv(
        make_vec_env("lm_gym:LMText-v0", n_envs=16, env_kwargs={"defer_reward": True})
    )

Gymnasium's own ``SyncVectorEnv`` takes :class:`DeferredRewardVectorWrapper` instead
(``DeferredRewardVectorWrapper(gym.make_vec("lm_gym:LMText-v0", 16, "sync", defer_reward=True))``).

Rewards and infos are those the envs give without deferring: the same for scorers that score each
text on its own (VADER, BLEU, ROUGE, ...); for model-based scorers up to float rounding (a batch
pads texts together: about 1e-7).

Safety: a deferring env that no batcher has claimed (:meth:`TextEnv.attach_reward_batcher`, which
this wrapper calls on every env) raises a ``RuntimeError`` at its first episode end rather than
return a reward without its text score. Wrappers that read rewards go outside this one
(``VecNormalize``, ``VecMonitor``): a ``Monitor`` inside the vector env (``make_vec_env`` adds
one) sees the episode end before the score is known; this wrapper corrects the
``info["episode"]["r"]`` it reports (what SB3 logs as ``ep_rew_mean``), but not its CSV file nor
``get_episode_rewards()``, and warns when such a file is written.

This module imports stable-baselines3 (``pip install lm-gym[agents]``); the rest of ``lm_gym``
does not. :func:`apply_deferred_rewards` is the framework-free core, for other vector loops.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv as GymVectorEnv
from gymnasium.vector import VectorWrapper

try:
    from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
except ImportError:  # pragma: no cover - lm_gym does not need SB3; only this wrapper does
    VecEnv = Any  # type: ignore[misc,assignment]
    VecEnvWrapper = object  # type: ignore[misc,assignment]
    _SB3 = False
else:
    _SB3 = True

__all__ = [
    "DEFERRED_KEYS",
    "DeferredRewardVecEnv",
    "DeferredRewardVectorWrapper",
    "apply_deferred_rewards",
]

#: the keys a deferring env adds to the info of an episode end (removed once scored)
DEFERRED_KEYS = ("reward_deferred", "deferred_sample", "score_group")

#: ``score(env_index, texts, samples, prompts) -> [(score, metrics), ...]``
ScoreCall = Callable[[int, list[str], list[Any], list[str]], Sequence[tuple[float, dict]]]


def apply_deferred_rewards(
    rewards: np.ndarray,
    infos: Sequence[dict[str, Any]],
    score: ScoreCall,
    round_episode: int | None = 6,
) -> list[int]:
    """Score the deferred episode ends of one vector step in place, one call per score group.

    For each env ``i`` whose ``infos[i]`` has ``reward_deferred``: ``rewards[i]`` gets the text
    score added (the env returned only the step's own reward), ``infos[i]["metrics"]`` is set, the
    deferral keys are removed, and an ``infos[i]["episode"]["r"]`` written by a Monitor-like
    wrapper inside the env gets the score added too.

    :param rewards: the step's rewards, one per env (modified in place).
    :param infos: the step's infos, one dict per env (modified in place).
    :param score: ``score(i, texts, samples, prompts)`` scores the episodes of one group with env
        ``i``'s :meth:`~lm_gym.envs.core.TextEnv.score_episodes` (``i`` is one of the group).
    :param round_episode: digits of ``info["episode"]["r"]`` (SB3's Monitor rounds to 6;
        ``None`` for Gymnasium's ``RecordEpisodeStatistics``, which does not round).
    :return: the indices of the envs whose reward was completed.
    """
    groups: dict[str, list[int]] = {}
    for i, info in enumerate(infos):
        if info.get("reward_deferred"):
            groups.setdefault(info["score_group"], []).append(i)
    done: list[int] = []
    for envs in groups.values():
        results = score(
            envs[0],
            [infos[i]["text"] for i in envs],
            [infos[i]["deferred_sample"] for i in envs],
            [infos[i]["prompt"] for i in envs],
        )
        if len(results) != len(envs):
            raise RuntimeError(f"score_episodes returned {len(results)} results for {len(envs)}.")
        for i, (value, metrics) in zip(envs, results):
            info = infos[i]
            for key in DEFERRED_KEYS:
                info.pop(key, None)
            info["metrics"] = metrics
            rewards[i] = float(rewards[i]) + float(value)
            episode = info.get("episode")
            if isinstance(episode, dict) and "r" in episode:
                total = float(episode["r"]) + float(value)
                episode["r"] = total if round_episode is None else round(total, round_episode)
            done.append(i)
    return done


def _scorer_envs(groups: Sequence[str]) -> list[int]:
    """For each env, the first env of its score group: one env scores all of a group's episodes
    (the same scorer instance every time, in the same worker process under ``SubprocVecEnv``)."""
    first: dict[str, int] = {}
    return [first.setdefault(group, i) for i, group in enumerate(groups)]


class DeferredRewardVecEnv(VecEnvWrapper):
    """Scores the episodes of ``defer_reward=True`` envs that end in the same step in one batch.

    Every env of ``venv`` must be an lm-gym :class:`~lm_gym.envs.core.TextEnv` (under any
    Gymnasium wrappers); envs made without ``defer_reward`` pass through unchanged. Envs whose
    reward configuration is the same (task class, reward, reward kwargs, metrics: their
    ``score_group``) share one batched :meth:`~lm_gym.envs.core.TextEnv.score_episodes` call,
    made on one of them (in its worker process under ``SubprocVecEnv``).

    :param venv: the SB3 vector env of lm-gym envs.
    :raises TypeError: an env of ``venv`` is not an lm-gym TextEnv.
    :raises ValueError: ``venv`` is wrapped in a ``VecNormalize`` or ``VecMonitor`` (they belong
        outside this wrapper, where the rewards are complete).
    :raises ImportError: stable-baselines3 is not installed.
    """

    def __init__(self, venv: VecEnv) -> None:
        if not _SB3:
            raise ImportError(
                "DeferredRewardVecEnv is a stable-baselines3 VecEnvWrapper: "
                "pip install lm-gym[agents] (or use apply_deferred_rewards in your own loop)."
            )
        inner = venv
        while isinstance(inner, VecEnvWrapper):
            if type(inner).__name__ in ("VecNormalize", "VecMonitor"):
                raise ValueError(
                    f"{type(inner).__name__} is inside {type(self).__name__}: it would see the "
                    "rewards before the deferred text scores are added. Wrap the other way "
                    f"round: {type(inner).__name__}({type(self).__name__}(venv), ...)."
                )
            inner = inner.venv
        super().__init__(venv)
        try:
            deferring = venv.env_method("attach_reward_batcher", type(self).__name__)
        except AttributeError as err:
            raise TypeError(
                f"{type(self).__name__} needs lm-gym TextEnvs (with attach_reward_batcher); "
                f"got an env without it: {err}"
            ) from err
        #: per env, whether it defers its episode-end reward to this wrapper
        self.deferring = [bool(d) for d in deferring]
        if not any(self.deferring):
            warnings.warn(
                f"{type(self).__name__}: no env defers its reward (make them with "
                "defer_reward=True); this wrapper changes nothing.",
                stacklevel=2,
            )
        self._warn_monitor_files()
        self.scored_batches = 0  #: batched scoring calls made (statistics)
        self._scorer_env = _scorer_envs(venv.get_attr("score_group"))

    def _warn_monitor_files(self) -> None:
        from stable_baselines3.common.monitor import Monitor

        wrapped = [i for i, w in enumerate(self.venv.env_is_wrapped(Monitor)) if w]
        wrapped = [i for i in wrapped if self.deferring[i]]
        if not wrapped:
            return
        writers = self.venv.get_attr("results_writer", indices=wrapped)
        if any(w is not None for w in writers):
            warnings.warn(
                "A Monitor inside the vector env writes episode returns to a file before the "
                "deferred text score is known: its file (and get_episode_rewards()) miss the "
                "episode-end reward. Log with VecMonitor(DeferredRewardVecEnv(venv), filename) "
                "instead.",
                stacklevel=3,
            )

    def _score(
        self, env: int, texts: list[str], samples: list[Any], prompts: list[str]
    ) -> Sequence[tuple[float, dict]]:
        self.scored_batches += 1
        env = self._scorer_env[env]
        return self.venv.env_method("score_episodes", texts, samples, prompts, indices=[env])[0]

    def reset(self) -> Any:
        """Reset every env (nothing is scored at a reset)."""
        return self.venv.reset()

    def step_wait(self) -> Any:
        """Step the envs and complete the rewards and infos of deferred episode ends."""
        obs, rewards, dones, infos = self.venv.step_wait()
        if any(info.get("reward_deferred") for info in infos):
            rewards = np.array(rewards, copy=True)
            apply_deferred_rewards(rewards, infos, self._score)
        return obs, rewards, dones, infos


class DeferredRewardVectorWrapper(VectorWrapper):
    """The same for Gymnasium vector envs: a ``SyncVectorEnv`` of lm-gym envs (any autoreset mode;
    with ``SAME_STEP`` the episode ends' infos are under ``infos["final_info"]``).

    Infos are Gymnasium's dicts of arrays with ``_key`` masks: a scored env's ``reward_deferred``,
    ``deferred_sample`` and ``score_group`` entries are masked out (the keys removed when no env
    has them) and ``infos["metrics"]`` gets its metrics, as the vector env adds them without
    deferring. A ``RecordEpisodeStatistics`` inside the envs gets the score added to its
    ``info["episode"]["r"]``; the vector version (``gymnasium.wrappers.vector``) goes outside.

    :param env: a ``gymnasium.vector.SyncVectorEnv`` of lm-gym envs (possibly wrapped).
    :raises TypeError: ``env`` keeps its envs in other processes (``AsyncVectorEnv``: use SB3's
        ``SubprocVecEnv`` with :class:`DeferredRewardVecEnv`), or an env is not an lm-gym TextEnv.
    """

    def __init__(self, env: GymVectorEnv) -> None:
        super().__init__(env)
        base = env.unwrapped
        envs = getattr(base, "envs", None)
        if envs is None:
            raise TypeError(
                f"{type(self).__name__} needs a gymnasium SyncVectorEnv (its envs in this "
                f"process), got {type(base).__name__}; with worker processes use SB3's "
                "SubprocVecEnv and DeferredRewardVecEnv."
            )
        self._base = base
        self._envs: list[gym.Env] = list(envs)
        try:
            self.deferring = [
                bool(e.get_wrapper_attr("attach_reward_batcher")(type(self).__name__))
                for e in self._envs
            ]
        except AttributeError as err:
            raise TypeError(f"{type(self).__name__} needs lm-gym TextEnvs: {err}") from err
        if not any(self.deferring):
            warnings.warn(
                f"{type(self).__name__}: no env defers its reward (make them with "
                "defer_reward=True); this wrapper changes nothing.",
                stacklevel=2,
            )
        self.scored_batches = 0  #: batched scoring calls made (statistics)
        self._scorer_env = _scorer_envs([e.get_wrapper_attr("score_group") for e in self._envs])

    def _score(
        self, env: int, texts: list[str], samples: list[Any], prompts: list[str]
    ) -> Sequence[tuple[float, dict]]:
        self.scored_batches += 1
        return self._envs[self._scorer_env[env]].get_wrapper_attr("score_episodes")(
            texts, samples, prompts
        )

    def _complete(self, rewards: np.ndarray, infos: dict[str, Any]) -> None:
        """Score the deferred episode ends recorded in one level of dict-of-arrays infos."""
        mask = infos.get("_reward_deferred")
        if mask is None or not np.any(mask):
            return
        rows = [int(i) for i in np.flatnonzero(mask)]
        per_env: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        episode: Any = infos.get("episode")
        has_r = isinstance(episode, dict) and "_r" in episode
        for i in rows:
            per_env[i] = {key: infos[key][i] for key in ("text", "prompt", *DEFERRED_KEYS)}
            if has_r and episode["_r"][i]:
                per_env[i]["episode"] = {"r": episode["r"][i]}
        apply_deferred_rewards(rewards, per_env, self._score, round_episode=None)
        for key in DEFERRED_KEYS:
            infos[f"_{key}"][rows] = False
            if not infos[f"_{key}"].any():
                del infos[key], infos[f"_{key}"]
        for i in rows:
            if "episode" in per_env[i]:
                episode["r"][i] = per_env[i]["episode"]["r"]
            self._base._add_info(infos, {"metrics": per_env[i]["metrics"]}, i)

    def step(self, actions: Any) -> Any:
        """Step the envs and complete the rewards and infos of deferred episode ends."""
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        deferred = "_reward_deferred" in infos or "_reward_deferred" in infos.get("final_info", {})
        if deferred:
            rewards = np.array(rewards, copy=True)
            self._complete(rewards, infos)
            if isinstance(infos.get("final_info"), dict):
                self._complete(rewards, infos["final_info"])
        return obs, rewards, terminations, truncations, infos
