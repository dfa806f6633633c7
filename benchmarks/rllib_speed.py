"""Sampled env steps per second: RLlib env runners against the single-process SB3 path, same model.

Four figures, all in one run, on one env id and one model (default ``LMCountUp-v0``, 12 new
tokens, and the built-in tiny GPT-2):

* ``sb3``: stock SB3 ``PPO`` with :class:`agents.networks.policies.LMActorCriticPolicy` (KV-cached)
  collecting rollouts (``collect_rollouts``) from ``--envs`` envs in this process: the reference.
* ``rllib R runners``: RLlib PPO's sampling step (``synchronous_parallel_sample``, episodes shipped
  back to the driver) with :class:`agents.rllib.LMRLModule` on ``R`` env runners of ``--envs``
  envs each, for each ``R`` of ``--runners`` (default 1 and 2): the ratio to ``sb3`` and the
  scaling with runners. ``rllib 1 runner, no KV cache`` shows what the cache is worth there.
* steps per CPU-second of each path (the driver's and the runners' CPU time): what the machine's
  load does not change, and what one core of an idle cluster node delivers.
* bytes per weight sync (what RLlib sends to the env runners after every update) for each model of
  ``--sync-models``, with and without the tied copy of GPT-2's embedding.

Rounds alternate between the paths (``--rounds``, median reported) so that machine noise hits them
alike. The Ray cluster is local and on the loopback address only.

Scaling model for a cluster (printed with the figures): an iteration of ``B`` env steps costs

    T_iter = B / (R * s_runner) + T_sync + B * epochs / (L * s_learner) + T_allreduce

with ``s_runner`` the steps/s of one runner (measured here), ``R`` runners, ``L`` learners,
``T_sync = W * (1 + nodes) / bandwidth`` (``W`` bytes per sync: the first learner's state goes to
the driver once, then once to each node that hosts runners, not to each runner) and ``T_allreduce`` about ``2 W_grad (L-1)/L / bandwidth`` per minibatch (ring
all-reduce of the gradients, ``W_grad`` about ``W``). Sampling scales linearly with ``R`` while each
runner has its own core(s); on this 2-core machine the runners, the driver and Ray's own processes
share two cores, so a ratio near 1 is what to expect. Figures measured here are in
``agents/README_rllib.md``.

Usage::

    python benchmarks/rllib_speed.py [--env LMCountUp-v0] [--model tiny-gpt2] [--envs 8]
        [--steps 1024] [--runners 1 2] [--rounds 3] [--sync-models tiny-gpt2 gpt2-12l-768]
        [--update | --update-only] [--update-batch 512] [--update-minibatch 128]

``--update`` adds (``--update-only`` runs only) the learner's side: two PPO algorithms in this
process (a local env runner and a local learner each), one whose module evaluates training batches
with one trunk forward per episode (``episode_forward=True``, the default) and one with one
full-window forward per transition, alternating iterations; it reports the learner-update seconds
(advantage value pass + minibatch epochs), the whole iteration's seconds, their ratios, and the
token positions the trunk ran per transition.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gymnasium as gym
import torch

import lm_gym  # noqa: F401  (registers the ids)


def sb3_sampler(env_id: str, model: str, n_envs: int, steps: int, seed: int = 0) -> Any:
    """A function that collects ``steps`` env steps with SB3 PPO and returns ``(steps, seconds,
    CPU seconds)``.

    :param env_id: lm-gym id.
    :param model: causal LM name.
    :param n_envs: envs of the ``DummyVecEnv``.
    :param steps: env steps per call (rounded to whole vec-env steps).
    :param seed: seed of the envs and the policy.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.networks.policies import LMActorCriticPolicy
    from agents.rllib import qualified_env_id
    from lm_gym.envs import env_kwargs_for_model

    kwargs = env_kwargs_for_model(qualified_env_id(env_id), model)
    venv = DummyVecEnv(
        [lambda: gym.make(qualified_env_id(env_id), **kwargs) for _ in range(n_envs)]
    )
    n_steps = max(1, steps // n_envs)
    algo = PPO(
        LMActorCriticPolicy,
        venv,
        n_steps=n_steps,
        batch_size=n_steps * n_envs,
        policy_kwargs={"model": model},
        seed=seed,
        device="cpu",
    )
    _, callback = algo._setup_learn(10**9, None)
    callback.on_training_start(locals(), globals())

    def sample() -> tuple[int, float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        algo.collect_rollouts(algo.env, callback, algo.rollout_buffer, n_rollout_steps=n_steps)
        return n_steps * n_envs, time.perf_counter() - t0, time.process_time() - c0

    return sample


def rllib_sampler(
    env_id: str, model: str, n_envs: int, runners: int, steps: int, kv_cache: bool = True
) -> Any:
    """A function that samples ``steps`` env steps with RLlib env runners, returning ``(steps,
    seconds, CPU seconds of the driver and the runners)``, and a function that stops the algorithm.

    :param env_id: lm-gym id.
    :param model: causal LM name.
    :param n_envs: envs per runner.
    :param runners: env runners.
    :param steps: env steps per call, over all runners.
    :param kv_cache: the module's KV cache.
    """
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample

    from agents.rllib import build_ppo_config

    config = build_ppo_config(
        env_id,
        num_env_runners=runners,
        num_envs_per_env_runner=n_envs,
        num_learners=0,
        model=model,
        train_batch_size=steps,
        minibatch_size=min(128, steps),
        kv_cache=kv_cache,
    )
    algo = config.build_algo()

    def runner_cpu() -> float:
        times = algo.env_runner_group.foreach_env_runner(
            lambda runner: time.process_time(), local_env_runner=False
        )
        return float(sum(times))

    def sample() -> tuple[int, float, float]:
        cpu0 = runner_cpu()
        c0, t0 = time.process_time(), time.perf_counter()
        episodes = synchronous_parallel_sample(
            worker_set=algo.env_runner_group,
            max_env_steps=steps,
            concat=True,
            _uses_new_env_runners=True,
        )
        seconds, driver = time.perf_counter() - t0, time.process_time() - c0
        return sum(len(e) for e in episodes), seconds, driver + runner_cpu() - cpu0

    return sample, algo.stop


def update_trainer(
    env_id: str,
    model: str,
    n_envs: int,
    batch: int,
    minibatch: int,
    epochs: int,
    episode_forward: bool,
) -> tuple[Any, Any, Any]:
    """A PPO algorithm sampling and learning in this process (a local env runner and a local
    learner), and a function that runs one iteration (``algo.train()``) and returns ``(iteration
    seconds, learner-update seconds)``: the update is the learner connector (the value pass of the
    advantage estimation over the whole batch) and ``epochs`` passes of minibatch steps.

    :param env_id: lm-gym id.
    :param model: causal LM name.
    :param n_envs: envs of the env runner.
    :param batch: env steps per iteration.
    :param minibatch: transitions per gradient step.
    :param epochs: passes over the batch.
    :param episode_forward: the learner's module evaluates batches with one forward per episode.
    :return: the iteration function, a function returning the learner module's
        ``train_forward_stats`` (token positions run), and the algorithm's ``stop``.
    """
    from agents.rllib import build_ppo_config

    config = build_ppo_config(
        env_id,
        num_env_runners=0,
        num_envs_per_env_runner=n_envs,
        num_learners=0,
        model=model,
        train_batch_size=batch,
        minibatch_size=minibatch,
        num_epochs=epochs,
        learning_rate=1e-4,
        episode_forward=episode_forward,
    )
    algo = config.build_algo()
    group = algo.learner_group
    update = group.update
    spent = [0.0]

    def timed_update(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return update(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    group.update = timed_update

    def iterate() -> tuple[float, float]:
        spent[0] = 0.0
        t0 = time.perf_counter()
        algo.train()
        return time.perf_counter() - t0, spent[0]

    def stats() -> dict[str, int]:
        results = group.foreach_learner(
            lambda learner: dict(learner.module["default_policy"].unwrapped().train_forward_stats)
        )
        return next(iter(results)).get()

    return iterate, stats, algo.stop


def update_comparison(args: argparse.Namespace) -> dict[str, Any]:
    """Learner-update and iteration seconds with one trunk forward per episode against one per
    transition, rounds alternating between the two algorithms (median reported)."""
    paths, stops = {}, []
    try:
        for name, flag in (("per transition", False), ("per episode", True)):
            iterate, stats, stop = update_trainer(
                args.env,
                args.model,
                args.envs,
                args.update_batch,
                args.update_minibatch,
                args.update_epochs,
                flag,
            )
            paths[name] = (iterate, stats)
            stops.append(stop)
        for iterate, _ in paths.values():  # warm-up
            iterate()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, (iterate, _) in paths.items():
                times[name].append(iterate())
        positions = {name: stats() for name, (_, stats) in paths.items()}
    finally:
        for stop in stops:
            stop()
    out: dict[str, Any] = {"rounds": times, "positions": positions}
    print(
        f"\nLearner update, {args.env}, model {args.model}: batches of {args.update_batch} steps, "
        f"minibatches of {args.update_minibatch}, {args.update_epochs} epochs, 1 local learner, "
        f"{args.rounds} rounds (median)"
    )
    print(f"{'forward':16s} {'update s':>9s} {'iteration s':>12s} {'positions run':>14s}")
    for name, rows in times.items():
        upd = statistics.median(r[1] for r in rows)
        it = statistics.median(r[0] for r in rows)
        pos = positions[name]
        out[name] = {"update_s": upd, "iteration_s": it}
        print(
            f"{name:16s} {upd:9.2f} {it:12.2f} {pos['positions'] / max(1, pos['rows']):10.1f}/row"
        )
    before, after = out["per transition"], out["per episode"]
    out["update_speedup"] = before["update_s"] / after["update_s"]
    out["iteration_speedup"] = before["iteration_s"] / after["iteration_s"]
    print(
        f"per episode vs per transition: update {out['update_speedup']:.2f}x faster, "
        f"iteration {out['iteration_speedup']:.2f}x faster"
    )
    return out


def sync_sizes(model: str, env_id: str) -> dict[str, int]:
    """:func:`agents.rllib.weight_sync_bytes` of a module built on ``env_id``'s spaces."""
    from agents.rllib import LMRLModule, weight_sync_bytes
    from lm_gym.envs import env_kwargs_for_model

    env = gym.make(env_id, **env_kwargs_for_model(env_id, model))
    module = LMRLModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"model": model},
    )
    return weight_sync_bytes(module)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--env", default="LMCountUp-v0")
    parser.add_argument("--model", default="tiny-gpt2")
    parser.add_argument("--envs", type=int, default=8, help="envs per runner (and for SB3)")
    parser.add_argument("--steps", type=int, default=1024, help="env steps per timed sample")
    parser.add_argument("--runners", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-cache-run", action="store_true", help="skip the no-KV-cache run")
    parser.add_argument("--sync-models", nargs="*", default=["tiny-gpt2", "gpt2-12l-768"])
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--update",
        action="store_true",
        help="also time the learner update: one forward per episode against one per transition",
    )
    parser.add_argument("--update-only", action="store_true", help="only the update comparison")
    parser.add_argument("--update-batch", type=int, default=512)
    parser.add_argument("--update-minibatch", type=int, default=128)
    parser.add_argument("--update-epochs", type=int, default=2)
    args = parser.parse_args()

    import ray

    from agents.rllib import loopback_ray_init_kwargs

    torch.set_num_threads(1)
    ray.init(**loopback_ray_init_kwargs(num_cpus=max(4, max(args.runners) + 2)))
    if args.update_only:
        try:
            figures = update_comparison(args)
        finally:
            ray.shutdown()
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"update": figures}, f, indent=2)
        return
    samplers: dict[str, Any] = {}
    stops = []
    try:
        samplers["sb3"] = sb3_sampler(args.env, args.model, args.envs, args.steps)
        for r in args.runners:
            steps = args.steps * r  # every runner does the same work as the SB3 process
            sample, stop = rllib_sampler(args.env, args.model, args.envs, r, steps)
            samplers[f"rllib {r} runner{'s' if r > 1 else ''}"] = sample
            stops.append(stop)
        if not args.no_cache_run:
            sample, stop = rllib_sampler(args.env, args.model, args.envs, 1, args.steps, False)
            samplers["rllib 1 runner, no KV cache"] = sample
            stops.append(stop)
        for sample in samplers.values():  # warm-up: models built, envs reset, caches filled
            sample()
        rates: dict[str, list[float]] = {name: [] for name in samplers}
        cpu_rates: dict[str, list[float]] = {name: [] for name in samplers}
        for _ in range(args.rounds):
            for name, sample in samplers.items():
                steps, seconds, cpu = sample()
                rates[name].append(steps / seconds)
                cpu_rates[name].append(steps / cpu)
        update = update_comparison(args) if args.update else None
    finally:
        for stop in stops:
            stop()
        ray.shutdown()

    median = {name: statistics.median(v) for name, v in rates.items()}
    per_cpu = {name: statistics.median(v) for name, v in cpu_rates.items()}
    ref = median["sb3"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{args.env}, model {args.model}, {args.envs} envs per runner, {args.steps} steps per "
        f"runner per sample, {args.rounds} rounds (median); {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} CPUs, load average {load:.1f}, torch {torch.__version__}, ray "
        f"{ray.__version__}\n"
    )
    print(f"{'path':32s} {'steps/s':>10s} {'vs sb3':>8s} {'steps/CPU-s':>12s} {'vs sb3':>8s}")
    for name, rate in median.items():
        print(
            f"{name:32s} {rate:10.1f} {rate / ref:8.2f}x {per_cpu[name]:12.1f} "
            f"{per_cpu[name] / per_cpu['sb3']:8.2f}x"
        )
    one = median.get("rllib 1 runner")
    if one:
        for r in args.runners:
            key = f"rllib {r} runner{'s' if r > 1 else ''}"
            print(f"scaling {key}: {median[key] / one:.2f}x of 1 runner (ideal {r}x)")

    sync = {m: sync_sizes(m, args.env) for m in args.sync_models}
    print(f"\n{'model':16s} {'MB per sync':>12s} {'with tied copy':>15s} {'pickled MB':>11s}")
    for m, s in sync.items():
        print(
            f"{m:16s} {s['state'] / 1e6:12.1f} {s['state_with_tied'] / 1e6:15.1f} "
            f"{s['pickled'] / 1e6:11.1f}"
        )
    if one:
        w = (
            sync[args.model]["pickled"]
            if args.model in sync
            else sync_sizes(args.model, args.env)["pickled"]
        )
        idle = per_cpu["rllib 1 runner"]
        print(
            "\nScaling model: T_iter = B/(R*s_runner) + W*(1+nodes)/bandwidth + "
            "B*epochs/(L*s_learner) + allreduce"
            f"\n  s_runner: {one:.0f} steps/s measured here (1 runner, {args.envs} envs, this load); "
            f"{idle:.0f} steps per CPU-second, so about {idle:.0f} steps/s per runner with a core of "
            "its own"
            f"\n  W = {w / 1e6:.1f} MB per sync: {w / 1e9 * 1e3:.0f} ms per node at 1 GB/s, the time "
            f"one runner needs for {idle * w / 1e9:.0f} steps"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "steps_per_s": median,
                    "steps_per_cpu_s": per_cpu,
                    "all": rates,
                    "sync_bytes": sync,
                    "load_average": load,
                    "update": update,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
