"""Environment steps per second with random actions, per registered offline env id.

Two figures per id:

* ``step``: the step itself (append a token, build the observation), timed over every step that
  does not end an episode. Target: at least 20,000 steps/s on one core.
* ``with reward``: whole episodes, reset and end-of-episode scoring included, divided by steps.

Usage::

    python benchmarks/env_speed.py [--episodes 200] [--ids LMText-v0 LMCountUp-v0]
"""

from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym
import numpy as np

import lm_gym

TARGET_STEPS_PER_S = 20_000


def measure(env_id: str, episodes: int, seed: int = 0) -> tuple[float, float]:
    """Return ``(step-only steps/s, steps/s with reset and reward)`` over ``episodes`` episodes.

    :param env_id: a registered id.
    :param episodes: number of episodes to play.
    :param seed: seed of the env and of the random actions.
    """
    env = gym.make(env_id).unwrapped  # no wrappers: time the env itself
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)  # warm-up: data, tokenizer, scorers loaded before timing
    step_time, step_count, total_steps = 0.0, 0, 0
    start_all = time.perf_counter()
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        # Random tokens below the EOS id so that episodes run to max_new_tokens.
        actions = rng.integers(0, env.vocab_size - 1, size=env.max_new_tokens)
        for a in actions:
            t0 = time.perf_counter()
            _, _, term, trunc, _ = env.step(int(a))
            dt = time.perf_counter() - t0
            total_steps += 1
            if term or trunc:
                break
            step_time += dt
            step_count += 1
    total_time = time.perf_counter() - start_all
    return step_count / step_time, total_steps / total_time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--ids", nargs="*", default=[e.id for e in lm_gym.list_envs(False)])
    args = parser.parse_args()
    os.environ.setdefault("LM_GYM_OFFLINE", "1")
    print(
        f"{'env id':<22} {'step/s':>10} {'with reward/s':>14}  target {TARGET_STEPS_PER_S} step/s"
    )
    for env_id in args.ids:
        step_rate, full_rate = measure(env_id, args.episodes)
        flag = "ok" if step_rate >= TARGET_STEPS_PER_S else "BELOW TARGET"
        print(f"{env_id:<22} {step_rate:>10,.0f} {full_rate:>14,.0f}  {flag}")


if __name__ == "__main__":
    main()
