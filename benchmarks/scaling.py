"""How the cost of a PPO iteration grows with the number of envs and the episode length.

One model, one env; for every point of ``--envs`` (at ``--new-tokens-at``) and of ``--new-tokens``
(at ``--envs-at``), a fresh process runs one warm-up iteration and one timed iteration of the
zoo's PPO update path (:class:`agents.algorithms.ppo.EpisodePPO`, whole-episode minibatches,
rollouts of one episode length per env unless ``--rollout-steps``) with the after-rollout KL
penalty to a frozen reference (:class:`agents.algorithms.kl.KLPenaltyCallback`): rollout + KL +
update. Printed per point:

* training tokens/s (the iteration's env steps over its wall time) and, measured in the same
  process just before and just after it (the mean of the two times), HF ``generate()``'s
  tokens/s on the same prompts: their ratio;
* peak memory (RSS on CPU, allocated CUDA memory on GPU) and its split: weights (the policy's
  parameters), reference (the frozen reference's own parameters: 0 when it shares the policy's,
  as a LoRA policy's adapters-off view does), optimizer state (Adam's moments), gradients,
  the rollout KV cache (its largest size during the rollout) and activations (the rest of the
  timed iteration's peak growth over the memory held before it, that is over the weights, the
  reference and the optimizer state).

The reference is built once per process and shared by every env (never copied per env). The
table goes to stdout and, with ``--out``, to ``scaling.json``, ``scaling.md`` and ``scaling.png``.

Usage::

    python benchmarks/scaling.py --threads 1                     # gpt2-6l-384, LMText-v0
    python benchmarks/scaling.py --model smollm2-135m --envs 8 16 --new-tokens 16 48
    python benchmarks/scaling.py --lora                          # LoRA: no second weight copy
    python benchmarks/scaling.py --quick                         # smoke run
    # ppo.yaml's smollm2-135m recipe for LMText-v0: 8 envs x 64 steps of 20-token episodes,
    # one epoch in minibatches of 32 transitions, LoRA
    python benchmarks/scaling.py --model smollm2-135m --lora --envs 8 --new-tokens-at 20 \
        --new-tokens-list 20 --rollout-steps 64 --batch-size 32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring).

    :param argv: arguments; ``None`` reads ``sys.argv``.
    """
    from bench_common import add_bf16_arg, bench_parser, parse_bench_args

    parser = bench_parser(__doc__)
    add_bf16_arg(parser)
    parser.add_argument("--envs", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--new-tokens-at", type=int, default=48, help="episode length of --envs")
    parser.add_argument("--new-tokens-list", nargs="+", type=int, default=[16, 48, 128])
    parser.add_argument("--envs-at", type=int, default=8, help="envs of --new-tokens-list")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--minibatch-episodes", type=int, default=8)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="minibatch size in transitions (whole episodes of about that many); "
        "0: --minibatch-episodes episodes",
    )
    parser.add_argument(
        "--rollout-steps",
        type=int,
        default=0,
        help="rollout steps per env (n_steps); 0: the episode length, one episode per env",
    )
    parser.add_argument("--lora", action="store_true", help="LoRA adapters (r 16, alpha 32)")
    parser.add_argument("--out", help="folder for scaling.json / .md / .png")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: one point, JSON out
    quick = {
        "model": "tiny-gpt2",
        "envs": [2],
        "new_tokens_at": 4,
        "new_tokens_list": [4, 6],
        "envs_at": 2,
    }
    return parse_bench_args(parser, argv, quick)


def measure_point(args: argparse.Namespace, n_envs: int, new_tokens: int) -> dict[str, Any]:
    """One point, in this process: see the module docstring.

    :return: tokens/s, generate()'s tokens/s, peak memory and its split, in MiB.
    """
    import torch
    from bench_common import make_ppo, make_vec_env, peak_memory, setup_torch, timed
    from rollout_speed import generate_batch

    from agents.algorithms.kl import KLPenaltyCallback

    device = setup_torch(args)
    n_steps = args.rollout_steps or new_tokens
    env = make_vec_env(args.env, n_envs, args.seed, model=args.model, max_new_tokens=new_tokens)
    model = make_ppo(
        env,
        args.model,
        n_steps=n_steps,
        batch_size=args.batch_size or args.minibatch_episodes * new_tokens,
        n_epochs=args.epochs,
        device=device,
        seed=args.seed,
        lora={"r": 16, "alpha": 32} if args.lora else None,
        bf16=args.bf16,
    )
    model.episode_minibatches = True
    policy = model.policy
    reference = policy.net.reference_lm()
    kl = KLPenaltyCallback(coef=0.05, reference=reference)

    cache_peak = [0]
    cache = policy.kv_cache
    inner = cache.last_hidden

    def tracking(*a: Any, **k: Any) -> Any:
        out = inner(*a, **k)
        cache_peak[0] = max(cache_peak[0], cache.nbytes())
        return out

    cache.last_hidden = tracking  # type: ignore[method-assign]
    # where the iteration's time goes: the update (train), the KL penalty (its reference forward,
    # inside collect_rollouts) and the rest of collect_rollouts (the rollout itself)
    phases = {"rollout": 0.0, "kl": 0.0, "update": 0.0}

    def phase(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            seconds, out = timed(lambda: fn(*a, **k), device)  # device-synchronised
            phases[name] += seconds
            return out

        return wrapper

    model.collect_rollouts = phase("rollout", model.collect_rollouts)  # type: ignore[method-assign]
    model.train = phase("update", model.train)  # type: ignore[method-assign]
    kl.penalise = phase("kl", kl.penalise)  # type: ignore[method-assign]
    steps = n_envs * n_steps
    model.learn(steps, callback=kl)  # warm-up iteration (allocator, optimizer state), untimed

    def generate_seconds() -> float:  # generate_batch raises unless every row got new_tokens
        seconds, _ = timed(
            lambda: generate_batch(policy.net.lm, model._last_obs, new_tokens, device, args.bf16),
            device,
        )
        return seconds

    before = generate_seconds()
    mib = 2.0**20
    phases.update(rollout=0.0, kl=0.0, update=0.0)
    with peak_memory(device) as peak:
        t0 = time.perf_counter()
        model.learn(steps, callback=kl, reset_num_timesteps=False)
        seconds = time.perf_counter() - t0
    # generate() before and after the timed iteration: the reference, under the same load
    gen = n_envs * new_tokens / ((before + generate_seconds()) / 2)

    def nbytes(tensors: Any) -> float:
        return sum(t.numel() * t.element_size() for t in tensors) / mib

    params = list(policy.parameters())
    ref_own = {id(p) for p in reference.parameters()} - {id(p) for p in params}
    state = [v for s in policy.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    split = {
        "weights": nbytes(params),
        "reference": nbytes(p for p in reference.parameters() if id(p) in ref_own),
        "optimizer": nbytes(state),
        "gradients": nbytes(p for p in params if p.requires_grad),
        "kv_cache": cache_peak[0] / mib,
    }
    # the iteration's peak growth over the weights, reference and optimizer state held before it:
    # the KV cache, the gradients and the rest (activations, buffers)
    split["activations"] = max(0.0, peak.delta_mib - split["gradients"] - split["kv_cache"])
    return {
        "n_envs": n_envs,
        "new_tokens": new_tokens,
        "tokens_per_s": steps / seconds,
        "generate_tokens_per_s": gen,
        "ratio": steps / seconds / gen,
        "seconds": seconds,
        "generate_seconds": steps / gen,
        # the KL penalty runs inside collect_rollouts: the rollout's own time is the difference
        "phase_seconds": {
            "rollout": phases["rollout"] - phases["kl"],
            "kl": phases["kl"],
            "update": phases["update"],
        },
        "peak_mib": peak.peak_mib,
        "memory_kind": peak.kind,
        "split_mib": split,
    }


def run_point(args: argparse.Namespace, argv: list[str], n_envs: int, new_tokens: int) -> dict:
    """:func:`measure_point` in a fresh process (a clean peak), its JSON read back."""
    cmd = [sys.executable, __file__, *argv, "--point", f"{n_envs},{new_tokens}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(
            f"point {n_envs} envs x {new_tokens} tokens failed:\n{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def table(points: list[dict[str, Any]]) -> str:
    """A markdown table of the points."""
    parts = ("weights", "reference", "optimizer", "gradients", "kv_cache", "activations")
    lines = [
        "| envs | new tokens | train tok/s | generate tok/s | ratio | "
        "rollout / KL / update s (generate s) | peak MiB | " + " | ".join(parts) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(parts),
    ]
    for p in points:
        split = " | ".join(f"{p['split_mib'][k]:,.0f}" for k in parts)
        times = " / ".join(f"{p['phase_seconds'][k]:.1f}" for k in ("rollout", "kl", "update"))
        lines.append(
            f"| {p['n_envs']} | {p['new_tokens']} | {p['tokens_per_s']:,.1f} | "
            f"{p['generate_tokens_per_s']:,.1f} | {p['ratio']:.2f} | "
            f"{times} ({p['generate_seconds']:.1f}) | {p['peak_mib']:,.0f} | {split} |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    """Tokens/s and peak memory against envs, and against new tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    series = (
        ("n_envs", [p for p in points if p["new_tokens"] == args.new_tokens_at], "envs"),
        ("new_tokens", [p for p in points if p["n_envs"] == args.envs_at], "new tokens"),
    )
    for ax, (key, pts, label) in zip(axes, series, strict=True):
        pts = sorted({p[key]: p for p in pts}.values(), key=lambda p: p[key])
        xs = [p[key] for p in pts]
        ax.plot(xs, [p["tokens_per_s"] for p in pts], "o-", label="training tokens/s")
        ax.plot(xs, [p["generate_tokens_per_s"] for p in pts], "s--", label="generate() tokens/s")
        ax.set_xlabel(label)
        ax.set_ylabel("tokens/s")
        ax2 = ax.twinx()
        ax2.plot(xs, [p["peak_mib"] for p in pts], "^:", color="tab:red", label="peak MiB")
        ax2.set_ylabel("peak memory (MiB)")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [x.get_label() for x in lines], loc="upper left", fontsize="small")
    fig.suptitle(f"{args.model}, {args.env}: one PPO iteration (rollout + KL + update)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every point in its own process, print the table and write the outputs.

    :param argv: command-line arguments; ``None`` reads ``sys.argv``.
    :return: the points.
    """
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if args.point:
        n_envs, new_tokens = (int(x) for x in args.point.split(","))
        print(json.dumps(measure_point(args, n_envs, new_tokens)), flush=True)
        return []
    import torch
    from bench_common import print_header
    from tqdm import tqdm

    if args.threads > 0:  # as the points' processes (the header prints it)
        torch.set_num_threads(args.threads)

    grid = [(n, args.new_tokens_at) for n in args.envs]
    grid += [(args.envs_at, t) for t in args.new_tokens_list if (args.envs_at, t) not in grid]
    points = [run_point(args, raw, n, t) for n, t in tqdm(grid, desc="points", unit="point")]
    print_header(
        f"scaling: one PPO iteration (rollout + after-rollout KL + update), {args.model}, "
        f"{args.env}, {args.epochs} epoch(s), {'LoRA' if args.lora else 'full fine-tuning'}"
    )
    text = table(points)
    print(text)
    print(
        f"memory: {points[0]['memory_kind']}; the reference is one frozen model shared by every "
        "env (0 MiB of its own with LoRA: the policy with its adapters off)"
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scaling.json").write_text(
            json.dumps({"settings": vars(args), "points": points}, indent=2), encoding="utf-8"
        )
        (out / "scaling.md").write_text(text + "\n", encoding="utf-8")
        plot(points, args, out / "scaling.png")
        print(f"written to {out}")
    return points


if __name__ == "__main__":
    main()
