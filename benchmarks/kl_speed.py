"""Rollout + KL penalty time: the per-step penalty (in the env chain) vs the after-rollout one.

Four ways to collect one PPO rollout (``n_envs x new_tokens`` sampled tokens) with the same
policy (one object, shared), in the same run, alternately, ``--repeats`` times each:

* no KL: :class:`agents.algorithms.ppo.EpisodePPO`'s rollout alone (the policy's KV-cached steps,
  the env, the buffer): the rollout's own cost.
* per-step KL, before: the penalty as SB3's on-policy algorithms applied it before the
  after-rollout penalty: a :class:`agents.algorithms.kl.KLPenaltyVecEnv` that reuses the logits of
  the policy's rollout forward for ``log pi`` (that side channel is gone from the library; this
  script captures the logits itself) and runs one KV-cached token step of the reference per env
  step.
* after-rollout KL, now: :class:`agents.algorithms.kl.KLPenaltyCallback`: after the rollout, the
  reference's log-probabilities of the rollout's actions in packed full-sequence forwards (one per
  episode segment), ``log pi`` from the buffer, the penalty subtracted from the buffer's rewards and
  the advantages recomputed.
* per-step KL, env-side: :class:`agents.algorithms.kl.KLPenaltyVecEnv` as it is now (for DQN and
  users' own loops): a KV-cached token step of the policy's network *and* of the reference per env
  step.

All use one frozen reference (a copy of the policy's starting LM, made once) and the same
coefficient. Printed: tokens/s of each (wall and CPU time of the process), seconds per rollout,
the time inside the KL code (the wrappers' per-step forwards; the callback's after-rollout
computation), the KL's cost over the rollout alone, peak memory, and the speed-up of the
after-rollout penalty: the (rollout + KL) time of "per-step, before" over that of "after-rollout".

Usage::

    python benchmarks/kl_speed.py                        # gpt2-6l-384, LMText-v0, 8 envs x 32
    python benchmarks/kl_speed.py --model smollm2-135m
    python benchmarks/kl_speed.py --quick                # smoke run
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from bench_common import (
    Timings,
    bench_parser,
    fmt_rate,
    make_ppo,
    make_vec_env,
    parse_bench_args,
    peak_memory,
    print_header,
    setup_torch,
    timed,
    timed_cpu,
)

from agents.algorithms.kl import KLPenaltyCallback, KLPenaltyVecEnv, KLPenaltyVecEnvCallback
from agents.networks.actor_critic import CausalLMActorCritic

KINDS = ("none", "before", "after", "env")
LABELS = {
    "none": "rollout, no KL",
    "before": "+ per-step KL, before",
    "after": "+ after-rollout KL, now",
    "env": "+ per-step KL, env-side",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring).

    :param argv: arguments; ``None`` reads ``sys.argv``.
    """
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts of each kind")
    parser.add_argument("--coef", type=float, default=0.05, help="the KL coefficient")
    parser.set_defaults(new_tokens=32, threads=1)
    quick = {"model": "tiny-gpt2", "n_envs": 2, "new_tokens": 6, "repeats": 1}
    return parse_bench_args(parser, argv, quick)


class PerStepReusingLogits(KLPenaltyVecEnv):
    """The per-step penalty as it ran before the after-rollout one: ``log pi`` from the logits of
    the policy's own rollout forward (captured from its network's LM head), the reference one
    KV-cached token step per env step.

    :param venv: the vector env.
    :param net: the policy's network (its ``logits_from_hidden`` is wrapped to keep the output).
    :param kwargs: :class:`agents.algorithms.kl.KLPenaltyVecEnv`'s options.
    """

    def __init__(self, venv: Any, net: CausalLMActorCritic, **kwargs: Any) -> None:
        super().__init__(venv, **kwargs)
        self._logits: torch.Tensor | None = None
        inner = net.logits_from_hidden

        def capture(hidden: torch.Tensor) -> torch.Tensor:
            self._logits = inner(hidden)
            return self._logits

        net.logits_from_hidden = capture  # type: ignore[method-assign]

    @torch.no_grad()
    def token_kl(self, obs: dict[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
        assert self.reference is not None and self._logits is not None
        logits = self._logits
        if logits.shape[0] != self.num_envs:
            raise RuntimeError("The captured logits are not those of the step's observations.")
        ids = torch.as_tensor(obs["input_ids"], device=logits.device).long()
        mask = torch.as_tensor(obs["attention_mask"], device=logits.device).long()
        ref_logits, _ = self.reference(ids, mask, self._ref_cache)
        a = torch.as_tensor(np.asarray(actions).reshape(-1), device=logits.device).long()[:, None]
        logp = torch.log_softmax(logits.float(), -1).gather(1, a).squeeze(1)
        logp_ref = torch.log_softmax(ref_logits.float(), -1).gather(1, a).squeeze(1)
        return (logp - logp_ref).cpu().numpy().astype(np.float64)


class _Timer:
    """Adds the wall time of an instance's method calls to a total (device synchronised)."""

    def __init__(self, obj: Any, method: str, device: Any) -> None:
        self.seconds = 0.0
        inner = getattr(obj, method)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seconds, out = timed(lambda: inner(*args, **kwargs), device)
            self.seconds += seconds
            return out

        setattr(obj, method, wrapper)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, and return the figures.

    :param argv: command-line arguments; ``None`` reads ``sys.argv``.
    :return: tokens/s per kind, the KL's cost over the rollout, and ``speedup`` (rollout + KL
        time of the per-step penalty before over the after-rollout one, wall; ``cpu_speedup`` in
        CPU time).
    """
    args = parse_args(argv)
    device = setup_torch(args)
    steps, n_envs = args.new_tokens, args.n_envs

    def env() -> Any:
        return make_vec_env(
            args.env, n_envs, args.seed, model=args.model, max_new_tokens=args.new_tokens
        )

    def ppo(vec_env: Any) -> Any:
        return make_ppo(
            vec_env,
            args.model,
            n_steps=steps,
            batch_size=n_envs * steps,
            n_epochs=1,
            device=device,
            seed=args.seed,
        )

    # One algorithm object per kind (own env, buffer and callbacks), one policy.
    models = {kind: ppo(env()) for kind in KINDS}
    policy = models["none"].policy
    for model in models.values():
        model.policy = policy
    reference = policy.net.frozen_lm_copy()  # one reference for all
    kl = {"coef": args.coef, "reference": reference}
    models["before"].env = PerStepReusingLogits(models["before"].env, policy.net, **kl)
    models["env"].env = KLPenaltyVecEnv(models["env"].env, **kl)
    after = KLPenaltyCallback(**kl)
    callbacks: dict[str, Any] = {
        "none": None,
        "before": KLPenaltyVecEnvCallback(),
        "after": after,
        "env": KLPenaltyVecEnvCallback(),
    }
    for kind, model in models.items():
        _, cb = model._setup_learn(10**9, callbacks[kind], reset_num_timesteps=True)
        cb.on_training_start(locals(), globals())
        callbacks[kind] = cb
    kl_timers = {
        "before": _Timer(models["before"].env, "token_kl", device),
        "after": _Timer(after, "penalise", device),
        "env": _Timer(models["env"].env, "token_kl", device),
    }

    tokens = n_envs * steps
    times, peaks, kl_seconds = Timings(), {}, {}

    def rollout(kind: str) -> None:
        model = models[kind]
        if not model.collect_rollouts(model.env, callbacks[kind], model.rollout_buffer, steps):
            raise RuntimeError("collect_rollouts was stopped by a callback.")

    def run(kind: str) -> None:
        timer = kl_timers.get(kind)
        before = timer.seconds if timer else 0.0
        with peak_memory(device) as peak:
            seconds, cpu, _ = timed_cpu(lambda: rollout(kind), device)
        times.add(kind, tokens / seconds)
        times.add(kind + "_cpu", tokens / cpu)
        times.add(kind + "_s", seconds)
        times.add(kind + "_cpu_s", cpu)
        if timer:
            times.add(kind + "_kl_s", timer.seconds - before)
        peaks[kind] = peak

    for kind in KINDS:  # warm-up (allocator, kernels, first-call overheads), untimed
        rollout(kind)
    for rep in range(args.repeats):
        for kind in KINDS[rep % 4 :] + KINDS[: rep % 4]:
            run(kind)

    rates = {kind: times.median(kind) for kind in KINDS}
    cpu_rates = {kind: times.median(kind + "_cpu") for kind in KINDS}
    wall = {kind: times.median(kind + "_s") for kind in KINDS}
    cpu = {kind: times.median(kind + "_cpu_s") for kind in KINDS}
    for kind in kl_timers:
        kl_seconds[kind] = times.median(kind + "_kl_s")
    speedup = wall["before"] / wall["after"]
    cpu_speedup = cpu["before"] / cpu["after"]
    overhead = {k: wall[k] / wall["none"] - 1 for k in kl_timers}

    window = models["none"].observation_space["input_ids"].shape[0]
    print_header("kl_speed: PPO rollout + KL penalty, per-step (env) vs after the rollout")
    print(
        f"model {args.model}, {args.env}, {n_envs} envs x {steps} new tokens (window {window}), "
        f"device {device}, coef {args.coef}, median of {args.repeats} rollouts each"
    )
    print(
        f"{'':<26} {'tokens/s':>9} {'per CPU s':>10} {'s/rollout':>10} {'KL code s':>10} "
        f"{'KL cost':>8}  memory"
    )
    for kind in KINDS:
        kl_s = f"{kl_seconds[kind]:.2f}" if kind in kl_seconds else "-"
        cost = f"{100 * overhead[kind]:+.0f}%" if kind in overhead else "-"
        print(
            f"{LABELS[kind]:<26} {fmt_rate(rates[kind]):>9} {fmt_rate(cpu_rates[kind]):>10} "
            f"{wall[kind]:>10.2f} {kl_s:>10} {cost:>8}  {peaks[kind]}"
        )
    print(
        f"after-rollout KL: rollout + KL {speedup:.2f}x faster than per-step before (wall), "
        f"{cpu_speedup:.2f}x (CPU time); the KL code itself "
        f"{kl_seconds['before'] / max(kl_seconds['after'], 1e-9):.1f}x faster"
    )
    return {
        "tokens_per_s": rates,
        "cpu_tokens_per_s": cpu_rates,
        "seconds": wall,
        "kl_seconds": kl_seconds,
        "kl_overhead": overhead,
        "speedup": speedup,
        "cpu_speedup": cpu_speedup,
        "peak_mib": {k: p.peak_mib for k, p in peaks.items()},
    }


if __name__ == "__main__":
    main()
