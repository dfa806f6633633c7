"""Batched vs one-at-a-time evaluation: :func:`agents.common.evaluation.evaluate_agent` with
``n_envs``.

The same agent kind (built afresh with the same seed for each timing) plays the same episodes of
``LMText-v0``'s train split (episode ``i`` is sample ``i``), sampled (``deterministic=False``),
with the reference metrics (perplexity, KL) under the same model:

* reference: ``n_envs=1``, one episode at a time (one ``predict`` per token);
* batched: ``n_envs=N`` episodes at once (one batched ``predict`` per step, the reference
  metrics ``N`` episodes per forward).

Printed for each: acting time (play only), total time (reference metrics included), process CPU
time, generated tokens; then the batched / one-at-a-time speed-ups. Sampled texts differ between the
two (the draws are made in another order); ``tests/agents/test_evaluation.py`` checks that a
deterministic agent plays the same episodes for every ``n_envs``.

Usage::

    python benchmarks/eval_speed.py --threads 1                                   # gpt2-6l-384
    python benchmarks/eval_speed.py --threads 1 --model smollm2-135m --episodes 16
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import gymnasium as gym
import torch

import lm_gym  # noqa: F401  (registers the ids)
from agents.common.evaluation import evaluate_agent
from agents.registry import make_agent
from lm_gym.models import tokenizer_name_for_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring).

    :param argv: arguments; ``None`` reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt2-6l-384", help="the agent's and reference LM")
    parser.add_argument("--agent", default="sample", help="a zoo agent name (sample, ppo, ...)")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--n-envs", type=int, default=8, help="episodes at once (batched run)")
    parser.add_argument("--new-tokens", type=int, default=None, help="max_new_tokens (env's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny-gpt2, 4 episodes")
    return parser.parse_args(argv)


def timed_eval(args: argparse.Namespace, n_envs: int) -> dict[str, Any]:
    """One evaluation with a freshly built agent.

    :param args: the command line.
    :param n_envs: episodes at once.
    :return: acting, total and CPU seconds, tokens, perplexity and KL.
    """
    env_kwargs: dict[str, Any] = {"tokenizer": tokenizer_name_for_model(args.model)}
    if args.new_tokens:
        env_kwargs["max_new_tokens"] = args.new_tokens
    env = gym.make("LMText-v0", split="train", **env_kwargs)
    agent = make_agent(args.agent, env, model=args.model, seed=args.seed)
    wall, cpu = time.perf_counter(), time.process_time()
    result = evaluate_agent(
        agent,
        env,
        n_episodes=args.episodes,
        split="train",
        deterministic=False,
        reference=args.model,
        n_envs=n_envs,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    summary = result.summary()
    return {
        "n_envs": n_envs,
        "act_s": result.act_time,
        "total_s": wall,
        "cpu_s": cpu,
        "tokens": sum(e.length for e in result.episodes),
        "perplexity": summary.get("perplexity"),
        "kl": summary.get("kl"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both evaluations and print the speed-ups.

    :param argv: arguments; ``None`` reads ``sys.argv``.
    :return: both timings and the ratios.
    """
    args = parse_args(argv)
    if args.quick:
        args.model, args.episodes, args.n_envs, args.new_tokens = "tiny-gpt2", 4, 2, 6
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(
        f"{args.agent} agent, {args.model}, LMText-v0 train split, {args.episodes} episodes, "
        f"sampled, reference {args.model}; torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s), {platform.processor() or platform.machine()}"
    )
    one = timed_eval(args, 1)
    batched = timed_eval(args, args.n_envs)
    for run in (one, batched):
        print(
            f"n_envs={run['n_envs']}: acting {run['act_s']:.1f} s "
            f"({run['tokens'] / run['act_s']:.1f} tokens/s), total {run['total_s']:.1f} s, "
            f"CPU {run['cpu_s']:.1f} s, {run['tokens']} tokens"
        )
    ratios = {
        "acting_tokens_per_s": (batched["tokens"] / batched["act_s"])
        / (one["tokens"] / one["act_s"]),
        "total": one["total_s"] / batched["total_s"],
        "cpu": one["cpu_s"] / batched["cpu_s"],
    }
    print(
        f"speed-up of n_envs={args.n_envs} over n_envs=1: total x{ratios['total']:.2f} "
        f"(CPU time x{ratios['cpu']:.2f}), acting tokens/s x{ratios['acting_tokens_per_s']:.2f}"
    )
    out = {"one": one, "batched": batched, "speedup": ratios}
    print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":
    main()
