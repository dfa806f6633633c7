"""Vector-level reward batching (lm_gym.envs.vector): the same rewards and infos as per-env scoring."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from lm_gym.envs.vector import DeferredRewardVecEnv
from lm_gym.models import load_tokenizer
from lm_gym.tasks.text_generation import TextGenerationEnv
from lm_gym.tasks.translation import TranslationEnv

WORDS = [" good", " great", " bad", " awful", " movie", " the", " and", " not", ".", " love"]


def _actions() -> np.ndarray:
    tok = load_tokenizer("gpt2")
    ids = [tok.encode(w)[0] for w in WORDS]
    return np.array([*ids, tok.eos_token_id])  # EOS ends some episodes early


def _rollout(venv: Any, steps: int, seed: int = 0) -> list[tuple]:
    """Seeded random rollout; per step the rewards, dones and infos (terminal obs as lists)."""
    rng = np.random.default_rng(seed)
    actions = _actions()
    venv.seed(seed)
    venv.reset()
    out = []
    for _ in range(steps):
        # EOS rarely, so that episodes end both at the budget (together) and early (alone)
        probs = np.r_[np.full(len(actions) - 1, 0.95 / (len(actions) - 1)), 0.05]
        _, rewards, dones, infos = venv.step(rng.choice(actions, venv.num_envs, p=probs))
        clean = []
        for info in infos:
            info = dict(info)
            term = info.pop("terminal_observation", None)
            if term is not None:
                info["terminal_observation"] = {k: v.tolist() for k, v in term.items()}
            if "episode" in info:
                info["episode"] = {k: v for k, v in info["episode"].items() if k != "t"}
            clean.append(info)
        out.append((rewards.copy(), dones.copy(), clean))
    return out


def _assert_same(per_env: list[tuple], batched: list[tuple], atol: float = 0.0) -> int:
    ends = 0
    for (r1, d1, i1), (r2, d2, i2) in zip(per_env, batched):
        np.testing.assert_array_equal(d1, d2)
        assert r1.dtype == r2.dtype
        if atol:
            np.testing.assert_allclose(r1, r2, atol=atol, rtol=0)
        else:
            np.testing.assert_array_equal(r1, r2)
        for a, b in zip(i1, i2):
            if atol:
                assert set(a) == set(b)
                assert a.get("metrics", {}) == pytest.approx(b.get("metrics", {}), abs=atol)
                assert a.get("episode", {}) == pytest.approx(b.get("episode", {}), abs=atol)
                a = {k: v for k, v in a.items() if k not in ("metrics", "episode")}
                b = {k: v for k, v in b.items() if k not in ("metrics", "episode")}
            assert a == b
        ends += int(d1.sum())
    return ends


def _make(env_cls, n: int, defer: bool, **kwargs) -> Any:
    venv = make_vec_env(env_cls, n_envs=n, env_kwargs={"defer_reward": defer, **kwargs})
    return DeferredRewardVecEnv(venv) if defer else venv


def test_vader_rewards_and_infos_equal_per_env_scoring():
    steps, n = 30, 6
    per_env = _rollout(_make(TextGenerationEnv, n, False, max_new_tokens=5), steps)
    venv = _make(TextGenerationEnv, n, True, max_new_tokens=5)
    batched = _rollout(venv, steps)
    ends = _assert_same(per_env, batched)  # exactly, Monitor's episode returns included
    assert ends > 2 * n and venv.scored_batches < ends
    rewards = np.concatenate([r for r, d, _ in batched])
    assert len(set(rewards.round(6))) > 3  # the texts' scores differ
    assert all("episode" in info for _, d, infos in batched for info, e in zip(infos, d) if e)


def test_overlap_reward_and_metrics_with_references_equal_per_env_scoring():
    """chrF reward with BLEU and TER metrics against references; envs with different budgets
    end at different steps."""
    per_env, batched = [], []
    for defer, out in ((False, per_env), (True, batched)):
        fns = [  # the same window, different budgets
            partial(TranslationEnv, defer_reward=defer, max_new_tokens=b, max_prompt_tokens=71 - b)
            for b in (4, 4, 4, 7)
        ]
        venv = DummyVecEnv(fns)
        out.extend(_rollout(DeferredRewardVecEnv(venv) if defer else venv, 20, seed=1))
    assert _assert_same(per_env, batched) > 6
    metrics = [i["metrics"] for _, d, infos in batched for i, e in zip(infos, d) if e]
    assert {"chrf", "bleu", "ter"} <= set(metrics[0])


def test_classifier_reward_batched_equals_per_env_scoring(tiny_classifier, monkeypatch):
    from lm_gym.rewards.sentiment import ClassifierScorer

    kwargs = {
        "max_new_tokens": 5,
        "reward": "sentiment-classifier",
        "reward_kwargs": {"model": str(tiny_classifier)},
    }
    steps, n = 20, 8
    per_env = _rollout(_make(TextGenerationEnv, n, False, **kwargs), steps)
    sizes: list[int] = []
    score = ClassifierScorer._score
    monkeypatch.setattr(
        ClassifierScorer, "_score", lambda self, t, *a: sizes.append(len(t)) or score(self, t, *a)
    )
    venv = _make(TextGenerationEnv, n, True, **kwargs)
    batched = _rollout(venv, steps)
    # the same up to float rounding (texts padded together in a batch; Monitor rounds to 1e-6)
    ends = _assert_same(per_env, batched, atol=2e-6)
    assert sum(sizes) == ends and max(sizes) > n // 2 and len(sizes) == venv.scored_batches < ends
    rewards = np.concatenate([r for r, d, _ in batched])
    assert len(set(rewards.round(6))) > 3


def test_subproc_vec_env_scores_in_one_worker():
    runs = []
    for defer in (False, True):
        fns = [partial(TextGenerationEnv, defer_reward=defer, max_new_tokens=3)] * 2
        venv = SubprocVecEnv(fns, start_method="fork")
        venv = DeferredRewardVecEnv(venv) if defer else venv
        try:
            runs.append(_rollout(venv, 7))
        finally:
            venv.close()
    assert _assert_same(*runs) >= 4


def test_deferring_env_without_batcher_raises():
    env = TextGenerationEnv(defer_reward=True, max_new_tokens=2)
    env.reset(seed=0)
    env.step(262)
    with pytest.raises(RuntimeError, match="DeferredRewardVecEnv"):
        env.step(262)
    venv = DummyVecEnv([lambda: TextGenerationEnv(defer_reward=True, max_new_tokens=2)])
    venv.reset()
    venv.step(np.array([262]))
    with pytest.raises(RuntimeError, match="defer_reward=True"):
        venv.step(np.array([262]))


def test_wrapper_without_deferring_envs_warns_and_passes_through():
    with pytest.warns(UserWarning, match="no env defers"):
        venv = DeferredRewardVecEnv(DummyVecEnv([lambda: TextGenerationEnv(max_new_tokens=2)]))
    per_env = _rollout(DummyVecEnv([lambda: TextGenerationEnv(max_new_tokens=2)]), 4)
    assert _assert_same(per_env, _rollout(venv, 4)) == 2


def test_monitor_file_inside_warns(tmp_path):
    with pytest.warns(UserWarning, match="VecMonitor"):
        DeferredRewardVecEnv(
            make_vec_env(
                TextGenerationEnv,
                n_envs=2,
                env_kwargs={"defer_reward": True},
                monitor_dir=str(tmp_path),
            )
        )


def test_defer_refused_when_step_reward_is_overridden():
    class PerToken(TextGenerationEnv):
        def _step_reward(self, token: int, score: float) -> float:
            return 2.0 * score

    with pytest.raises(ValueError, match="defer_reward=True is refused"):
        PerToken(defer_reward=True)

    class Additive(PerToken):
        deferred_reward_ok = True

        def _step_reward(self, token: int, score: float) -> float:
            return 0.01 + score

    Additive(defer_reward=True)
    assert PerToken().defer_reward is False


def test_reward_wrappers_inside_are_refused():
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    for outer in (VecMonitor, VecNormalize):
        venv = outer(DummyVecEnv([partial(TextGenerationEnv, defer_reward=True)]))
        with pytest.raises(ValueError, match="Wrap the other way round"):
            DeferredRewardVecEnv(venv)
    venv = VecMonitor(
        DeferredRewardVecEnv(DummyVecEnv([partial(TextGenerationEnv, defer_reward=True)]))
    )
    assert venv.num_envs == 1


def test_reward_batching_benchmark_quick(capsys):
    import importlib.util

    import torch

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "reward_batching.py"
    spec = importlib.util.spec_from_file_location("reward_batching", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        out = module.main(["--quick", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert out[2]["scoring"] > 0 and out[2]["rollout"] > 0 and out[2]["max_abs_diff"] < 1e-5
    assert "per-env" in capsys.readouterr().out


def _gym_rollout(venv: Any, steps: int, seed: int = 0) -> list[tuple]:
    """Seeded random rollout of a Gymnasium vector env: rewards, dones and infos per step."""
    rng = np.random.default_rng(seed)
    actions = _actions()
    venv.reset(seed=seed)
    probs = np.r_[np.full(len(actions) - 1, 0.95 / (len(actions) - 1)), 0.05]
    out = []
    for _ in range(steps):
        _, rewards, term, trunc, infos = venv.step(rng.choice(actions, venv.num_envs, p=probs))
        out.append((rewards.copy(), term | trunc, infos))
    return out


def _assert_same_infos(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            if key not in ("t", "_t", "final_obs"):  # wall-clock times, observations
                _assert_same_infos(a[key], b[key])
    elif isinstance(a, np.ndarray) and a.dtype != object:
        np.testing.assert_array_equal(a, b)
    else:
        assert list(a) == list(b)


def _recorded(defer: bool) -> Any:
    from gymnasium.wrappers import RecordEpisodeStatistics

    return RecordEpisodeStatistics(TextGenerationEnv(defer_reward=defer, max_new_tokens=4))


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_gymnasium_sync_vector_env_equals_per_env_scoring(mode):
    import gymnasium as gym

    from lm_gym.envs.vector import DeferredRewardVectorWrapper

    runs = []
    for defer in (False, True):
        fns = [partial(_recorded, defer)] * 4
        venv = gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
        venv = DeferredRewardVectorWrapper(venv) if defer else venv
        runs.append(_gym_rollout(venv, 14))
    ends = 0
    for (r1, d1, i1), (r2, d2, i2) in zip(*runs):
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(d1, d2)
        _assert_same_infos(i1, i2)
        ends += int(d1.sum())
    assert ends > 8 and len({round(float(r), 6) for r, _, _ in runs[1] for r in r}) > 2


def test_gymnasium_async_vector_env_refused():
    import gymnasium as gym

    from lm_gym.envs.vector import DeferredRewardVectorWrapper

    venv = gym.vector.AsyncVectorEnv([partial(TextGenerationEnv, defer_reward=True)])
    try:
        with pytest.raises(TypeError, match="SyncVectorEnv"):
            DeferredRewardVectorWrapper(venv)
    finally:
        venv.close()
