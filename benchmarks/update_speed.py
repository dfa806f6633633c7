"""Wall time of one PPO update: EpisodePPO (one forward per episode) vs SB3's PPO.train.

One rollout is collected with the GPT-2 policy; then the same update (same rollout, same initial
parameters and optimizer state, same epochs and minibatch order) is run with SB3's stock
``PPO.train`` (one full-window forward per transition) and with :class:`agents.ppo.EpisodePPO`,
alternately, ``--repeats`` times each. The ratio of the medians is printed with the peak memory of
each update (RSS on CPU, allocated CUDA memory on GPU). Target: at least 10x at 48-token episodes.

Usage::

    python benchmarks/update_speed.py                  # 6L/384, LMText-v0, 8 envs x 48 tokens
    python benchmarks/update_speed.py --batch-size 384 # one minibatch per epoch
    python benchmarks/update_speed.py --episode-minibatches  # minibatches of whole episodes
    python benchmarks/update_speed.py --device cuda
    python benchmarks/update_speed.py --quick          # smoke run
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import numpy as np
from bench_common import (
    Timings,
    bench_parser,
    collect,
    parse_bench_args,
    peak_memory,
    print_header,
    setup_ppo,
    start_rollouts,
    timed_cpu,
)
from stable_baselines3 import PPO

from agents.ppo import EpisodePPO

TARGET = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring).

    :param argv: arguments; ``None`` reads ``sys.argv``.
    """
    parser = bench_parser(__doc__)
    parser.add_argument("--n-steps", type=int, default=0, help="rollout steps (0: --new-tokens)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed updates of each kind")
    parser.add_argument(
        "--episode-minibatches",
        action="store_true",
        help="EpisodePPO draws minibatches of whole episodes (not SB3's composition)",
    )
    quick = {"model": "tiny-gpt2", "n_envs": 2, "new_tokens": 6}
    args = parse_bench_args(parser, argv, {**quick, "epochs": 1, "batch_size": 6, "repeats": 2})
    if args.n_steps <= 0:
        args.n_steps = args.new_tokens
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, and return the figures.

    :param argv: command-line arguments; ``None`` reads ``sys.argv``.
    :return: ``{"stock_s", "episode_s", "speedup", "stock_peak_mib", "episode_peak_mib", ...}``.
    """
    args = parse_args(argv)
    device, model = setup_ppo(
        args, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.epochs
    )
    model.episode_minibatches = args.episode_minibatches
    collect(model, start_rollouts(model))
    buffer = copy.deepcopy(model.rollout_buffer)
    policy_state = copy.deepcopy(model.policy.state_dict())
    optim_state = copy.deepcopy(model.policy.optimizer.state_dict())
    episodes = int(buffer.episode_starts.sum())
    transitions = args.n_envs * args.n_steps
    window = buffer.observations["input_ids"].shape[-1]

    updates = {"stock": PPO.train, "episode": EpisodePPO.train}
    times, peaks = Timings(), {}

    def prepare() -> None:
        """The same starting point for every update: parameters, optimizer, buffer, RNG."""
        model.policy.load_state_dict(policy_state)
        model.policy.optimizer.load_state_dict(optim_state)
        model.rollout_buffer = copy.deepcopy(buffer)
        np.random.seed(args.seed)  # the same minibatch order for both

    prepare()
    updates["episode"](model)  # warm-up (allocator, kernels), untimed
    for rep in range(args.repeats):
        for kind in ("stock", "episode") if rep % 2 == 0 else ("episode", "stock"):
            prepare()
            with peak_memory(device) as peak:
                seconds, cpu, _ = timed_cpu(lambda kind=kind: updates[kind](model), device)
            times.add(kind, seconds)
            times.add(kind + "_cpu", cpu)
            if kind not in peaks or peak.peak_mib > peaks[kind].peak_mib:
                peaks[kind] = peak
    index = model.last_episode_index
    stock_s, episode_s = times.median("stock"), times.median("episode")
    speedup = stock_s / episode_s
    n_mb = -(-transitions // args.batch_size)

    print_header(
        "update_speed: one PPO update, EpisodePPO vs SB3 PPO.train (same rollout and order)"
    )
    print(
        f"model {args.model}, {args.env}, {args.n_envs} envs x {args.n_steps} steps "
        f"(max_new_tokens {args.new_tokens}, window {window}), {transitions} transitions, "
        f"{index.n_segments if index else '?'} episode segments ({episodes} episode starts), "
        f"{args.epochs} epochs x {n_mb} minibatches of {args.batch_size}"
        f"{' (EpisodePPO: whole-episode minibatches)' if args.episode_minibatches else ''}, "
        f"device {device}"
    )
    print(f"{'update':<18} {'wall s':>8} {'CPU s':>8} {'runs':>5} {'transitions/s':>14}  memory")
    for kind, label in (("stock", "SB3 PPO.train"), ("episode", "EpisodePPO.train")):
        med = times.median(kind)
        rate = transitions * args.epochs / med
        print(
            f"{label:<18} {med:>8.2f} {times.median(kind + '_cpu'):>8.2f} "
            f"{len(times.values[kind]):>5} {rate:>14,.0f}  {peaks[kind]}"
        )
    cpu_speedup = times.median("stock_cpu") / times.median("episode_cpu")
    flag = "ok" if speedup >= TARGET else "BELOW TARGET"
    print(
        f"speed-up: {speedup:.1f}x wall, {cpu_speedup:.1f}x CPU time "
        f"(target >= {TARGET:.0f}x at 48-token episodes): {flag}"
    )
    return {
        "stock_s": stock_s,
        "episode_s": episode_s,
        "speedup": speedup,
        "cpu_speedup": cpu_speedup,
        "stock_peak_mib": peaks["stock"].peak_mib,
        "episode_peak_mib": peaks["episode"].peak_mib,
        "memory_kind": peaks["episode"].kind,
        "segments": index.n_segments if index else None,
    }


if __name__ == "__main__":
    main()
