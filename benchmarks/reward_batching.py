"""Per-env vs vector-batched episode-end scoring with a model-based reward (a classifier).

``n`` envs generate fixed-length texts (no stop token), so all their episodes end at the same
step. Two ways to score them, in the same run, alternately, ``--repeats`` times each:

* per env: each :class:`~lm_gym.envs.core.TextEnv` scores its own text at episode end (``n``
  batch-of-1 classifier forwards);
* batched: the envs are made with ``defer_reward=True`` under
  :class:`lm_gym.envs.vector.DeferredRewardVecEnv`, which scores the ``n`` texts in one call.

Printed for each ``n``: the time of the scoring alone (the finished episodes' texts scored per
episode vs in one batch) and of whole rollouts (SB3 ``DummyVecEnv`` steps with random tokens,
scoring included), with the per-env / batched ratio (above 1: batching is faster), and whether the
batched rewards equal the per-env ones. The default classifier is a tiny random GPT-2 classifier
(2 layers, 32 wide) built in a temporary folder, so the script runs offline; ``--model`` takes a
real one (hub id or folder).

Usage::

    python benchmarks/reward_batching.py                      # tiny classifier, n = 8, 16
    python benchmarks/reward_batching.py --model lvwerra/distilbert-imdb --n-envs 8 16 32
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from lm_gym.envs.vector import DeferredRewardVecEnv
from lm_gym.models import load_tokenizer, save_tiny_classifier
from lm_gym.tasks.text_generation import TextGenerationEnv

WORDS = [" good", " great", " bad", " awful", " movie", " the", " and", " not", ".", " love"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring).

    :param argv: arguments; ``None`` reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="classifier hub id or folder (tiny: None)")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--new-tokens", type=int, default=16, help="fixed episode length")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per env per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: n = 2, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_envs, args.new_tokens, args.episodes, args.repeats = [2], 4, 1, 1
    return args


def make_venv(model: str, n: int, new_tokens: int, defer: bool) -> Any:
    """``n`` fixed-length envs with the classifier reward, deferred (and wrapped) or not."""
    kwargs = {
        "reward": "sentiment-classifier",
        "reward_kwargs": {"model": model},
        "max_new_tokens": new_tokens,
        "stop_on_eos": False,
        "defer_reward": defer,
    }
    venv = DummyVecEnv([lambda: TextGenerationEnv(**kwargs)] * n)
    return DeferredRewardVecEnv(venv) if defer else venv


def rollout(venv: Any, steps: int, seed: int, actions: np.ndarray) -> tuple[float, list]:
    """Seconds of ``steps`` vector steps with seeded random tokens; the rewards of the ends."""
    rng = np.random.default_rng(seed)
    venv.seed(seed)
    venv.reset()
    ends = []
    start = time.perf_counter()
    for _ in range(steps):
        _, rewards, dones, infos = venv.step(rng.choice(actions, venv.num_envs))
        if dones.any():
            ends.append((rewards[dones].tolist(), [i["text"] for i in infos if "text" in i]))
    return time.perf_counter() - start, ends


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    """Run the benchmark, print the table, and return the ratios per ``n``.

    :param argv: command-line arguments; ``None`` reads ``sys.argv``.
    :return: ``{n: {"scoring": ratio, "rollout": ratio, "max_abs_diff": float}}``.
    """
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer("gpt2")
    actions = np.array([tok.encode(w)[0] for w in WORDS])
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(save_tiny_classifier(tmp))
        label = args.model or "tiny random GPT-2 classifier (2 layers, 32 wide)"
        print("reward_batching: episode-end classifier scoring, per env vs one batch per step")
        print(
            f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); classifier: {label}; "
            f"{args.new_tokens} tokens per episode, {args.episodes} episodes per env per run"
        )
        print(
            f"{'n_envs':>6} {'scoring per-env':>16} {'batched':>9} {'ratio':>6}   "
            f"{'rollout per-env':>16} {'batched':>9} {'ratio':>6}   rewards batched vs per-env"
        )
        for n in args.n_envs:
            per_env, batched = (make_venv(model, n, args.new_tokens, d) for d in (False, True))
            scorer_env = per_env.envs[0]
            steps = args.new_tokens * args.episodes
            times: dict[str, list[float]] = {k: [] for k in ("s1", "sb", "r1", "rb")}
            diff = 0.0
            for rep in range(args.repeats + 1):  # the first round warms up, untimed
                order = [(per_env, "r1"), (batched, "rb")]
                rounds = {}
                for venv, key in order if rep % 2 else order[::-1]:
                    seconds, ends = rollout(venv, steps, args.seed + rep, actions)
                    rounds[key] = ends
                    if rep:
                        times[key].append(seconds)
                a = np.concatenate([r for r, _ in rounds["r1"]])
                b = np.concatenate([r for r, _ in rounds["rb"]])
                diff = max(diff, float(np.abs(a - b).max()))
                texts = rounds["r1"][0][1]
                samples = [scorer_env.sample] * len(texts)
                prompts = ["p"] * len(texts)
                t0 = time.perf_counter()
                for t, s, p in zip(texts, samples, prompts):
                    scorer_env.score_episodes([t], [s], [p])
                t1 = time.perf_counter()
                scorer_env.score_episodes(texts, samples, prompts)
                t2 = time.perf_counter()
                if rep:
                    times["s1"].append(t1 - t0)
                    times["sb"].append(t2 - t1)
            med = {k: statistics.median(v) for k, v in times.items()}
            ratios = {"scoring": med["s1"] / med["sb"], "rollout": med["r1"] / med["rb"]}
            results[n] = {**ratios, "max_abs_diff": diff}
            print(
                f"{n:>6} {1e3 * med['s1']:>13.1f} ms {1e3 * med['sb']:>6.1f} ms "
                f"{ratios['scoring']:>5.2f}x   {med['r1']:>14.3f} s {med['rb']:>7.3f} s "
                f"{ratios['rollout']:>5.2f}x   max |diff| {diff:.1e}"
            )
    print(json.dumps({str(k): v for k, v in results.items()}))
    return results


if __name__ == "__main__":
    main()
