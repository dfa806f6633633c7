"""Wall time of one PPO update: EpisodePPO (one forward per episode) vs SB3's PPO.train.

One rollout is collected with the GPT-2 policy; then the same update (same rollout, same initial
parameters and optimizer state, same epochs and minibatch order) is run with SB3's stock
``PPO.train`` (one full-window forward per transition) and with
:class:`agents.algorithms.ppo.EpisodePPO`, alternately, ``--repeats`` times each. The ratio of the
medians is printed with the peak memory of each update (RSS on CPU, allocated CUDA memory on GPU).
EpisodePPO draws minibatches of whole episodes, as the zoo's ``ppo`` does by default
(``--sb3-minibatches``: SB3's composition of random transitions, the same for both updates).
Target: at least 10x at 48-token episodes.

Usage::

    python benchmarks/update_speed.py                  # 6L/384, LMText-v0, 8 envs x 48 tokens
    python benchmarks/update_speed.py --batch-size 384 # one minibatch per epoch
    python benchmarks/update_speed.py --sb3-minibatches  # SB3's composition, not whole episodes
    python benchmarks/update_speed.py --device cuda
    python benchmarks/update_speed.py --quick          # smoke run
    python benchmarks/update_speed.py --learning --learning-out benchmarks/results/update_learning

``--learning`` then trains the zoo's ``ppo`` (its YAML recipe per env) with SB3's minibatches and
with whole-episode minibatches, on ``--learning-envs`` x ``--learning-seeds``, evaluating the
greedy policy on the test split at ``--learning-points`` points of the budget: the learning curves
(mean, min and max over seeds), the final rewards and the training time of each, printed and, with
``--learning-out``, written as ``learning.json`` and ``learning_curves.png``. With several seeds
it also compares the two seed by seed (:func:`learning_equivalence`): the paired difference of the
final reward and of the mean reward over the evaluation points, with bootstrap intervals, and
whether they are equal within ``--learning-margin`` (a fraction of SB3 minibatches' gain over the
start; equal when the 90% interval lies inside, two one-sided tests at 5%, or at
``--learning-alpha``). Equal learning is what
allows whole-episode minibatches to be the default update.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import numpy as np
from bench_common import (
    Timings,
    add_bf16_arg,
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

from agents.algorithms.ppo import EpisodePPO

TARGET = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring).

    :param argv: arguments; ``None`` reads ``sys.argv``.
    """
    parser = bench_parser(__doc__)
    add_bf16_arg(parser)
    parser.add_argument("--n-steps", type=int, default=0, help="rollout steps (0: --new-tokens)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed updates of each kind")
    minibatches = parser.add_mutually_exclusive_group()
    minibatches.add_argument(
        "--episode-minibatches",
        dest="episode_minibatches",
        action="store_true",
        default=True,
        help="EpisodePPO draws minibatches of whole episodes (the default, as the zoo's ppo)",
    )
    minibatches.add_argument(
        "--sb3-minibatches",
        dest="episode_minibatches",
        action="store_false",
        help="EpisodePPO draws SB3's minibatches (random transitions, in PPO.train's order)",
    )
    parser.add_argument(
        "--learning", action="store_true", help="also compare learning curves (see the docstring)"
    )
    parser.add_argument("--learning-envs", nargs="+", default=["LMWordSort-v0", "LMCountUp-v0"])
    parser.add_argument("--learning-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--learning-model", default="tiny-gpt2")
    parser.add_argument(
        "--learning-steps", type=int, default=0, help="env steps per run (0: the recipe's)"
    )
    parser.add_argument("--learning-points", type=int, default=8, help="evaluations per run")
    parser.add_argument("--learning-episodes", type=int, default=32, help="episodes per evaluation")
    parser.add_argument("--learning-out", help="folder for learning.json and learning_curves.png")
    parser.add_argument(
        "--learning-margin",
        type=float,
        default=0.1,
        help="equivalence margin, as a fraction of SB3 minibatches' mean gain over the start",
    )
    parser.add_argument(
        "--learning-alpha",
        type=float,
        default=0.05,
        help="level of each one-sided equivalence test (the 1 - 2 alpha interval); lower it for "
        "a repeated look at the same question (e.g. 0.05 / looks)",
    )
    quick = {"model": "tiny-gpt2", "n_envs": 2, "new_tokens": 6}
    args = parse_bench_args(
        parser,
        argv,
        {
            **quick,
            "epochs": 1,
            "batch_size": 6,
            "repeats": 2,
            "learning_envs": ["LMWordSort-v0"],
            "learning_seeds": [0],
            "learning_steps": 256,
            "learning_points": 2,
            "learning_episodes": 4,
        },
    )
    if args.n_steps <= 0:
        args.n_steps = args.new_tokens
    return args


#: The two updates compared for learning: EpisodePPO's ``episode_minibatches`` option.
LEARNING_VARIANTS = {"SB3 minibatches": False, "episode minibatches": True}


def learning_run(
    env_id: str, seed: int, episode_minibatches: bool, args: argparse.Namespace
) -> dict[str, Any]:
    """Train the zoo's ``ppo`` (its recipe for ``env_id``) and evaluate it along the way.

    :return: ``{"steps": [...], "reward": [...], "train_s": ...}`` (greedy mean reward on the
        test split at step 0 and after each chunk of the budget).
    """
    import time

    from agents.common.config import resolve_run_config
    from agents.common.evaluation import evaluate_agent
    from agents.common.training import build_agent, make_run_env

    config = resolve_run_config(
        env_id,
        "ppo",
        overrides={"episode_minibatches": episode_minibatches},
        seed=seed,
        n_timesteps=args.learning_steps or None,
        model=args.learning_model,
    )
    agent = build_agent(config, make_run_env(config))

    def score() -> float:
        result = evaluate_agent(
            agent,
            env_id,
            n_episodes=args.learning_episodes,
            split="test",
            deterministic=True,
            env_kwargs=config.env_kwargs,
            progress=False,
        )
        return float(result.summary()["mean_reward"])

    chunk = max(1, config.n_timesteps // args.learning_points)
    steps, rewards, train_s = [0], [score()], 0.0
    for point in range(1, args.learning_points + 1):
        t0 = time.perf_counter()
        agent.learn(chunk)
        train_s += time.perf_counter() - t0
        steps.append(point * chunk)
        rewards.append(score())
    return {"steps": steps, "reward": rewards, "train_s": train_s}


def paired_difference(
    a: Any, b: Any, margin: float, alpha: float = 0.05, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """The mean of the per-seed differences ``b - a`` with percentile-bootstrap intervals, and
    whether the two are equal within ``margin``: the ``1 - 2 alpha`` interval inside
    ``[-margin, margin]`` (two one-sided tests at level ``alpha``; 0.05 gives the 90% interval).

    :param a: one value per seed (the reference variant).
    :param b: the other variant's values, seed by seed.
    :param margin: the equivalence margin, in the values' units.
    :param alpha: the level of each one-sided test, in ``(0, 0.5)``.
    :param resamples: bootstrap resamples of the seeds.
    :param seed: the bootstrap's RNG seed.
    :return: ``{"mean", "ci95", "ci_test", "test_level", "margin", "equal"}``: ``ci_test`` is the
        ``test_level`` (``1 - 2 alpha``) interval the test uses.
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(1)
    ci95 = [float(x) for x in np.percentile(means, [2.5, 97.5])]
    ci_test = [float(x) for x in np.percentile(means, [100 * alpha, 100 * (1 - alpha)])]
    return {
        "mean": float(diff.mean()),
        "ci95": ci95,
        "ci_test": ci_test,
        "test_level": 1 - 2 * alpha,
        "margin": margin,
        "equal": bool(-margin <= ci_test[0] and ci_test[1] <= margin),
    }


def learning_equivalence(
    per_env: dict[str, Any], margin_fraction: float, alpha: float = 0.05
) -> dict[str, Any]:
    """Whole-episode minibatches against SB3's, seed by seed: the final reward and the mean
    reward over the evaluation points after the start (the area under the learning curve), with
    the margin ``margin_fraction`` x SB3 minibatches' mean gain over the start.

    :param per_env: one env's results of :func:`learning_comparison`.
    :param margin_fraction: see ``--learning-margin``.
    :param alpha: see ``--learning-alpha``.
    :return: ``{"final": ..., "curve_mean": ...}``, each from :func:`paired_difference`.
    """
    ref, other = (per_env[name]["runs"] for name in LEARNING_VARIANTS)
    gain = np.mean([r["reward"][-1] - r["reward"][0] for r in ref])
    margin = margin_fraction * abs(float(gain))
    return {
        "final": paired_difference(
            [r["reward"][-1] for r in ref], [r["reward"][-1] for r in other], margin, alpha
        ),
        "curve_mean": paired_difference(
            [np.mean(r["reward"][1:]) for r in ref],
            [np.mean(r["reward"][1:]) for r in other],
            margin,
            alpha,
        ),
    }


def learning_comparison(args: argparse.Namespace) -> dict[str, Any]:
    """Learning curves of SB3's minibatches vs whole-episode minibatches (see the docstring).

    :return: ``{env_id: {variant: {"runs": [...], "final": [...], "train_s": [...]}}}``.
    """
    import json
    from pathlib import Path

    import torch

    torch.set_num_threads(max(1, args.threads))
    results: dict[str, Any] = {}
    for env_id in args.learning_envs:
        per_env: dict[str, Any] = {}
        for variant, flag in LEARNING_VARIANTS.items():
            runs = [learning_run(env_id, seed, flag, args) for seed in args.learning_seeds]
            per_env[variant] = {
                "runs": runs,
                "final": [r["reward"][-1] for r in runs],
                "train_s": [r["train_s"] for r in runs],
            }
        results[env_id] = per_env
    print_header(
        f"learning: zoo ppo ({args.learning_model}), SB3 minibatches vs whole-episode "
        f"minibatches, seeds {args.learning_seeds}, greedy reward on the test split"
    )
    print(
        f"{'env':<16} {'update':<20} {'start':>7} {'final mean':>11} {'min':>7} {'max':>7}  train s"
    )
    for env_id, per_env in results.items():
        for variant, data in per_env.items():
            final = np.array(data["final"])
            start = np.mean([r["reward"][0] for r in data["runs"]])
            print(
                f"{env_id:<16} {variant:<20} {start:>7.3f} {final.mean():>11.3f} "
                f"{final.min():>7.3f} {final.max():>7.3f}  {np.mean(data['train_s']):.0f}"
            )
        for variant, data in per_env.items():
            curve = np.mean([r["reward"] for r in data["runs"]], axis=0)
            points = ", ".join(f"{v:.2f}" for v in curve)
            print(f"  {variant} curve (mean over seeds, {data['runs'][0]['steps']}): {points}")
        if len(args.learning_seeds) > 1:
            per_env["equivalence"] = learning_equivalence(
                per_env, args.learning_margin, args.learning_alpha
            )
            for metric, stats in per_env["equivalence"].items():
                lo, hi = stats["ci95"]
                print(
                    f"  episode - SB3, {metric}: {stats['mean']:+.3f} (95% CI {lo:+.3f} to "
                    f"{hi:+.3f}); equal within +-{stats['margin']:.3f}: "
                    f"{'yes' if stats['equal'] else 'no'} ({stats['test_level']:.1%} CI "
                    f"{stats['ci_test'][0]:+.3f} to {stats['ci_test'][1]:+.3f})"
                )
    if args.learning_out:
        out = Path(args.learning_out)
        out.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k.startswith("learning")}
        (out / "learning.json").write_text(
            json.dumps({"settings": settings, "results": results}, indent=2), encoding="utf-8"
        )
        plot_learning(results, out / "learning_curves.png")
        print(f"written to {out}")
    return results


def plot_learning(results: dict[str, Any], path: Any) -> None:
    """One panel per env: mean greedy reward over seeds (min-max band) per update."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (env_id, per_env) in zip(axes[0], results.items(), strict=True):
        for variant in LEARNING_VARIANTS:
            data = per_env[variant]
            steps = data["runs"][0]["steps"]
            curves = np.array([r["reward"] for r in data["runs"]])
            ax.plot(steps, curves.mean(axis=0), label=variant)
            ax.fill_between(steps, curves.min(axis=0), curves.max(axis=0), alpha=0.2)
        ax.set_title(env_id)
        ax.set_xlabel("env steps")
        ax.set_ylabel("greedy reward (test split)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    learning = learning_comparison(args) if args.learning else None
    return {
        "learning": learning,
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
