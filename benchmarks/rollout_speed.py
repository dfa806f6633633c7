"""Tokens per second of SB3 rollout collection with the GPT-2 policy vs ``model.generate()``.

Four ways to produce ``n_envs x new_tokens`` sampled tokens with the same model, in the same run,
alternately, ``--repeats`` times each (the full recompute ``--full-repeats`` times):

* ``generate()``: Hugging Face ``model.generate`` with its KV cache, on the prompts the envs are
  about to start (left-padded batch), sampling from the full distribution (``top_k=0``) for exactly
  ``new_tokens`` tokens (``min_new_tokens``): the reference.
* EpisodePPO rollout, KV cache: lm-gym's PPO (:class:`agents.algorithms.ppo.EpisodePPO`): SB3's
  rollout loop (one step per token: policy forward, env step, reward at episode end, rollout buffer)
  with :class:`agents.networks.policies.LMActorCriticPolicy` keeping each env's ``past_key_values``
  across steps. At the token budget it bootstraps no value (the state is terminal,
  :mod:`agents.algorithms.budget`); with ``--bootstrap-at-budget`` it does, as SB3 does, batched
  through that cache: the difference between the two runs is what the bootstraps cost.
* SB3 PPO rollout, KV cache: the same policy under stock ``PPO.collect_rollouts`` (one batch-1,
  full-window ``predict_values`` per truncated episode, the budget's included).
* SB3 PPO rollout, no cache: the same policy with its cache switched off (``policy.kv_cache =
  None``): the whole window through GPT-2 at every token.

Printed: tokens/s of each (per wall-clock second and per CPU second of the process, the latter
less disturbed by other work on a shared machine), the ratios to ``generate()``, the peak memory of
each (RSS on CPU, allocated CUDA memory on GPU), the KV cache's use and where the EpisodePPO
rollout's time goes. Target on CPU, 6-layer 384-wide GPT-2, 8 envs, 48 new tokens: the KV-cached
rollout at least 0.8x ``generate()``.

Usage::

    python benchmarks/rollout_speed.py                 # gpt2-6l-384, LMText-v0, 8 envs x 48
    python benchmarks/rollout_speed.py --model tiny-gpt2 --device cuda
    python benchmarks/rollout_speed.py --quick         # smoke run
    python benchmarks/rollout_speed.py --bootstrap-at-budget  # EpisodePPO bootstraps at the budget
    python benchmarks/rollout_speed.py --model smollm2-135m --new-tokens 32 --profile

``--profile`` then runs one rollout of each loop under ``cProfile`` and prints where the time goes:
the transformer trunk, the LM head, the value head, the KV cache's bookkeeping, the parameter
version check, the distribution (set-up, sampling, log-prob), the env step, the rollout buffer and
the rest (SB3's loop).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from bench_common import (
    Timings,
    add_bf16_arg,
    autocast,
    bench_parser,
    fmt_rate,
    parse_bench_args,
    peak_memory,
    print_header,
    setup_ppo,
    start_rollouts,
    timed,
    timed_cpu,
)
from stable_baselines3 import PPO

from agents.algorithms.ppo import EpisodePPO

TARGET = 0.8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring).

    :param argv: arguments; ``None`` reads ``sys.argv``.
    """
    parser = bench_parser(__doc__)
    add_bf16_arg(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind")
    parser.add_argument(
        "--full-repeats", type=int, default=1, help="timed runs of the full-recompute rollout"
    )
    parser.add_argument(
        "--bootstrap-at-budget",
        action="store_true",
        help="EpisodePPO bootstraps V(s_T) at the token budget (SB3's behaviour)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then profile one rollout of each loop (cProfile): where the time goes",
    )
    quick = {"model": "tiny-gpt2", "n_envs": 2, "new_tokens": 6, "repeats": 2}
    return parse_bench_args(parser, argv, quick)


def generate_batch(
    lm: Any, obs: dict[str, Any], new_tokens: int, device: torch.device, bf16: bool = False
) -> int:
    """Sample ``new_tokens`` tokens per prompt with ``lm.generate`` (KV cache); return the count.

    :param lm: the causal LM (the policy's own, so the weights are the same).
    :param obs: the envs' observations (left-padded windows); the all-padding columns are cut.
    :param new_tokens: tokens to generate per row.
    :param device: the model's device.
    :param bf16: under bfloat16 autocast (``--bf16``, as the policy's trunk then runs).
    """
    ids = torch.as_tensor(obs["input_ids"], device=device).long()
    mask = torch.as_tensor(obs["attention_mask"], device=device).long()
    keep = int(mask.sum(1).max())
    ids, mask = ids[:, -keep:], mask[:, -keep:]
    eos = lm.config.eos_token_id
    with torch.no_grad(), autocast(device, bf16):
        out = lm.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=eos,
            use_cache=True,
        )
    generated = out.shape[1] - ids.shape[1]
    if generated != new_tokens:
        raise RuntimeError(f"generate() produced {generated} tokens, not {new_tokens}.")
    return ids.shape[0] * generated


class Breakdown:
    """Wall time spent inside the policy's ``forward`` (one call per step), ``predict_values``
    (value bootstraps of truncated episodes, if any, and the value at the rollout's end)
    and the vector env's ``step``, measured by wrapping those methods on the instances.

    :param policy: the SB3 policy.
    :param env: the SB3 vector env.
    :param device: synchronised around each call (CUDA).
    """

    def __init__(self, policy: Any, env: Any, device: torch.device) -> None:
        self.seconds = {"policy forward": 0.0, "value bootstraps": 0.0, "env step": 0.0}
        self.calls = dict.fromkeys(self.seconds, 0)
        self.active = False
        self._wrap(policy, "forward", "policy forward", device)
        self._wrap(policy, "predict_values", "value bootstraps", device)
        self._wrap(env, "step", "env step", device)

    def _wrap(self, obj: Any, method: str, name: str, device: torch.device) -> None:
        inner = getattr(obj, method)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return inner(*args, **kwargs)
            seconds, out = timed(lambda: inner(*args, **kwargs), device)
            self.seconds[name] += seconds
            self.calls[name] += 1
            return out

        setattr(obj, method, wrapper)


def profile_groups() -> dict[str, Any]:
    """Profile groups: label -> function (each group's time is the cumulative time of its
    function, less the groups nested in it; see :func:`profile_rollouts`)."""
    from stable_baselines3.common.distributions import CategoricalDistribution, Distribution
    from stable_baselines3.common.vec_env import VecEnv

    from agents.networks.actor_critic import CausalLMActorCritic, RolloutKVCache

    return {
        "transformer trunk": CausalLMActorCritic.run_trunk,
        "LM head (logits)": CausalLMActorCritic.logits_from_hidden,
        "value head": CausalLMActorCritic.value_from_hidden,
        "KV cache bookkeeping": RolloutKVCache.last_hidden,
        "parameter version check": CausalLMActorCritic.param_version,
        "distribution set-up": CategoricalDistribution.proba_distribution,
        "sampling the action": Distribution.get_actions,
        "log-prob of the action": CategoricalDistribution.log_prob,
        "env step (vector env)": VecEnv.step,
    }


def profile_rollouts(model: Any, callback: Any) -> dict[str, dict[str, float]]:
    """Where a rollout's time goes, per loop (``episode``: EpisodePPO's, ``stock``: SB3's), under
    ``cProfile``: the groups of :func:`profile_groups` (a group's own share: the KV cache's
    bookkeeping is its ``last_hidden`` less the trunk and parameter check it calls), and the rest
    (SB3's loop, observation conversion, callbacks).

    :param model: the PPO model of the benchmark (its policy holds the KV cache).
    :param callback: from :func:`bench_common.start_rollouts`.
    :return: ``{loop: {group: seconds, ..., "total": seconds}}``.
    """
    import cProfile
    import pstats

    out: dict[str, dict[str, float]] = {}
    for loop, collect_fn in (
        ("episode", EpisodePPO.collect_rollouts),
        ("stock", PPO.collect_rollouts),
    ):
        profiler = cProfile.Profile()
        profiler.enable()
        collect_fn(model, model.env, callback, model.rollout_buffer, model.n_steps)
        profiler.disable()
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        total = max(ct for (_, _, _, ct, _) in stats.values())
        cum: dict[str, float] = {}
        for label, func in profile_groups().items():
            code = func.__code__
            key = (code.co_filename, code.co_firstlineno, code.co_name)
            cum[label] = stats[key][3] if key in stats else 0.0
        groups = dict(cum)
        # nested groups: the cache's bookkeeping calls the trunk and the version check
        nested = cum["transformer trunk"] + cum["parameter version check"]
        groups["KV cache bookkeeping"] = max(0.0, cum["KV cache bookkeeping"] - nested)
        groups["rest (SB3 loop, tensors, callbacks)"] = max(0.0, total - sum(groups.values()))
        groups["total"] = total
        out[loop] = groups
    print_header("rollout_speed --profile: where one rollout's time goes (cProfile, seconds)")
    labels = [k for k in out["episode"] if k != "total"]
    print(f"{'':<38} {'EpisodePPO':>11} {'share':>6} {'stock SB3':>10} {'share':>6}")
    for label in labels:
        e, s_ = out["episode"][label], out["stock"][label]
        print(
            f"{label:<38} {e:>11.2f} {100 * e / out['episode']['total']:>5.0f}% "
            f"{s_:>10.2f} {100 * s_ / out['stock']['total']:>5.0f}%"
        )
    print(f"{'total':<38} {out['episode']['total']:>11.2f} {'':>6} {out['stock']['total']:>10.2f}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, and return the figures.

    :param argv: command-line arguments; ``None`` reads ``sys.argv``.
    :return: tokens/s per kind (``generate``, ``cached``, ``full``) and the ratios to generate.
    """
    args = parse_args(argv)
    device, model = setup_ppo(
        args, n_steps=args.new_tokens, batch_size=args.n_envs * args.new_tokens, n_epochs=1
    )
    model.bootstrap_at_budget = args.bootstrap_at_budget
    policy = model.policy
    cache = policy.kv_cache
    if cache is None:
        raise SystemExit("The policy was built without a KV cache.")
    lm = policy.net.lm
    callback = start_rollouts(model)
    tokens = args.n_envs * args.new_tokens
    times, peaks = Timings(), {}
    breakdown = Breakdown(policy, model.env, device)
    # kind: (collect_rollouts implementation, KV cache on)
    kinds = {
        "episode": (EpisodePPO.collect_rollouts, True),
        "cached": (PPO.collect_rollouts, True),
        "full": (PPO.collect_rollouts, False),
    }
    episode_seconds = 0.0

    def rollout(kind: str) -> float:
        collect_fn, cached = kinds[kind]
        policy.kv_cache = cache if cached else None
        breakdown.active = kind == "episode"
        seconds, _ = timed(
            lambda: collect_fn(model, model.env, callback, model.rollout_buffer, model.n_steps),
            device,
        )
        breakdown.active = False
        return seconds

    def run(kind: str) -> None:
        nonlocal episode_seconds
        with peak_memory(device) as peak:
            if kind == "generate":
                seconds, cpu, n = timed_cpu(
                    lambda: generate_batch(lm, model._last_obs, args.new_tokens, device, args.bf16),
                    device,
                )
            else:
                seconds, cpu, _ = timed_cpu(lambda: rollout(kind), device)
                n = tokens
        if kind == "episode":
            episode_seconds += seconds
        times.add(kind, n / seconds)
        times.add(kind + "_cpu", n / cpu)
        peaks[kind] = peak

    # Warm-up (allocator, kernels, first-call overheads), untimed.
    generate_batch(lm, model._last_obs, args.new_tokens, device, args.bf16)
    rollout("episode")
    breakdown.seconds = dict.fromkeys(breakdown.seconds, 0.0)
    breakdown.calls = dict.fromkeys(breakdown.calls, 0)
    for rep in range(args.repeats):
        order = ["generate", "episode", "cached"]
        for kind in order[rep % 3 :] + order[: rep % 3]:
            before = dict(cache.stats)
            run(kind)
            if kind == "episode":
                for key, value in cache.stats.items():
                    times.add("rows_" + key, value - before[key])
        if rep < args.full_repeats:
            run("full")
    policy.kv_cache = cache
    cache_use = {key: int(sum(times.values["rows_" + key])) for key in cache.stats}

    gen = times.median("generate")
    names = tuple(k for k in ("generate", "episode", "cached", "full") if k in times.values)
    rates = {kind: times.median(kind) for kind in names}
    ratios = {kind: rate / gen for kind, rate in rates.items()}
    cpu_rates = {kind: times.median(kind + "_cpu") for kind in names}
    cpu_ratios = {kind: rate / cpu_rates["generate"] for kind, rate in cpu_rates.items()}
    window = model.observation_space["input_ids"].shape[0]
    print_header("rollout_speed: sampled tokens/s, SB3 rollout with the GPT-2 policy vs generate()")
    print(
        f"model {args.model}, {args.env}, {args.n_envs} envs x {args.new_tokens} new tokens "
        f"(window {window}), device {device}; EpisodePPO bootstraps at the token budget: "
        f"{'yes' if args.bootstrap_at_budget else 'no'}"
    )
    labels = {
        "generate": "HF generate() (KV cache)",
        "episode": "EpisodePPO rollout, KV cache",
        "cached": "SB3 PPO rollout, KV cache",
        "full": "SB3 PPO rollout, no cache",
    }
    print(
        f"{'':<30} {'tokens/s':>9} {'x generate':>10} {'per CPU s':>10} {'x generate':>10} "
        f"{'runs':>5}  memory"
    )
    for kind, label in labels.items():
        if kind not in rates:
            continue
        runs = len(times.values[kind])
        print(
            f"{label:<30} {fmt_rate(rates[kind]):>9} {ratios[kind]:>10.2f} "
            f"{fmt_rate(cpu_rates[kind]):>10} {cpu_ratios[kind]:>10.2f} {runs:>5}  {peaks[kind]}"
        )
    print(
        f"KV cache rows in the timed EpisodePPO rollouts: {cache_use['incremental']} incremental "
        f"(the new tokens only: one, or a multi-turn env's partner turn), "
        f"{cache_use['full']} full-window, {cache_use['reused']} reused"
    )
    parts = ", ".join(
        f"{name} {100 * sec / episode_seconds:.0f}% ({breakdown.calls[name]} calls)"
        for name, sec in breakdown.seconds.items()
    )
    rest = 100 * (1 - sum(breakdown.seconds.values()) / episode_seconds)
    print(f"EpisodePPO rollout time: {parts}, SB3 loop and buffer {rest:.0f}%")
    flag = "ok" if ratios["episode"] >= TARGET else "BELOW TARGET"
    print(
        f"KV-cached rollout: {ratios['episode']:.2f}x generate() wall, "
        f"{cpu_ratios['episode']:.2f}x CPU time (target >= {TARGET}x): {flag}"
        + (
            f"; {rates['episode'] / rates['full']:.1f}x the full-recompute rollout"
            if "full" in rates
            else ""
        )
    )
    profile = profile_rollouts(model, callback) if args.profile else None
    return {
        "tokens_per_s": rates,
        "ratio_to_generate": ratios,
        "cpu_ratio_to_generate": cpu_ratios,
        "peak_mib": {k: p.peak_mib for k, p in peaks.items()},
        "memory_kind": peaks["cached"].kind,
        "breakdown_s": dict(breakdown.seconds),
        "profile": profile,
    }


if __name__ == "__main__":
    main()
