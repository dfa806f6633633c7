"""Quality of RL on a real pretrained model: before/after tables with guards against reward hacking.

A GRUE-style protocol (held-out prompts, sampled decoding) on one env with one pretrained model,
by default ``LMText-v0`` (continue a movie-review opening; VADER sentiment reward) with
``smollm2-135m`` (the offline SmolLM2-135M-Instruct). It

1. evaluates the starting model (the untrained agent: its policy *is* the pretrained LM),
2. trains the agent as an ``lm-gym train`` run folder (:func:`agents.common.training.train_run`)
  with the
   recipe of ``agents/configs/<agent>.yaml`` for that model (its ``models:`` section) plus
   ``--set`` overrides,
3. evaluates the trained agent the same way,

and reports, before and after: the task reward, the perplexity of the outputs under the reference
model (the starting model), the KL of the policy to it per episode, corpus distinct-1/2, the mean
length and example texts. A gain in reward with perplexity and KL far above the start is reward
hacking, not learning: the targets are a reward gain of at least ``--target-gain`` (0.15) with a
perplexity of at most ``--max-ppl-ratio`` (1.2) times the start's.

With ``--warm-start`` (RL4LMs' "supervised + PPO" protocol, for ``LMSummarize-v0`` and
``LMTranslate-v0``) the model is first fine-tuned on the train split's references
(:func:`agents.algorithms.supervised.warm_start`, saved in ``--out``/``warm_start``); that model is
evaluated as a phase of its own and the RL agent starts from it (its KL reference is the warm start;
the perplexity and KL columns stay against the starting model). ``--greedy`` adds a greedy
evaluation of every phase (zero-shot greedy is the usual baseline of those tasks). The table gives
every metric the task reports (``metric/...``: ROUGE-1/2/L/Lsum, chrF/BLEU/TER), so that a gain on
the optimised metric that lowers the others is visible.

Evaluation: every prompt of the ``--eval-splits`` (default ``validation`` and ``test``: prompts
never trained on), ``--eval-repeats`` samples each (different sampling seeds), ``predict`` with
``deterministic=False``. Outputs in ``--out``: ``quality.json`` (summaries, settings, every
episode), ``quality.md`` (the table, the examples), ``learning_curve.png`` (training episode
reward and, when logged, the KL per episode, against env steps) and the run folder ``run/``.

Usage::

    python benchmarks/real_model_quality.py --threads 1 --out benchmarks/results/quality-smollm2
    python benchmarks/real_model_quality.py --steps 16384 --set learning_rate=2e-5 --out /tmp/q
    python benchmarks/real_model_quality.py --quick      # smoke run: tiny-llama, a few steps
    python benchmarks/real_model_quality.py --env LMSummarize-v0 --warm-start --greedy \
        --steps 4096 --out benchmarks/results/real_model_quality/summarize-ppo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: The columns of the table: (summary key, header).
COLUMNS = (
    ("mean_reward", "reward"),
    ("std_reward", "std"),
    ("perplexity", "perplexity"),
    ("ppl_ratio", "ppl / start"),
    ("kl", "KL / episode"),
    ("corpus_distinct-1", "distinct-1"),
    ("corpus_distinct-2", "distinct-2"),
    ("mean_length", "length"),
    ("eval_episodes", "episodes"),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="LMText-v0")
    parser.add_argument("--agent", default="ppo")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, help="env steps of training (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe option"
    )
    parser.add_argument(
        "--new-tokens", type=int, help="the env's max_new_tokens (default: the recipe's or env's)"
    )
    parser.add_argument("--eval-splits", nargs="+", default=["validation", "test"])
    parser.add_argument("--eval-repeats", type=int, default=2, help="samples per prompt")
    parser.add_argument(
        "--eval-max", type=int, help="evaluate only the first N prompts of each split (cost)"
    )
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="supervised fine-tuning on the train split's references first; RL starts from it",
    )
    parser.add_argument("--warm-start-epochs", type=float, default=2.0)
    parser.add_argument("--warm-start-lr", type=float, default=5e-5)
    parser.add_argument(
        "--warm-start-samples", type=int, help="fine-tune on the first N train references only"
    )
    parser.add_argument(
        "--greedy", action="store_true", help="also evaluate every phase with greedy decoding"
    )
    parser.add_argument(
        "--target-gain",
        type=float,
        help="reward gain the verdict asks for (default: 0.15 on LMText-v0, none elsewhere)",
    )
    parser.add_argument("--max-ppl-ratio", type=float, default=1.2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/quality")
    parser.add_argument("--examples", type=int, default=4, help="example texts per phase")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny-llama, 64 steps, few episodes"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.steps, args.new_tokens = "tiny-llama", 64, 4
        args.eval_splits, args.eval_repeats = ["test"], 1
        args.set = ["n_steps=16", "batch_size=16", "n_epochs=1", *args.set]
    return args


def evaluate(
    agent: Any,
    config: Any,
    args: argparse.Namespace,
    *,
    deterministic: bool = False,
    reference: str | None = None,
) -> dict[str, Any]:
    """Evaluation on every prompt of the held-out splits: sampled ``--eval-repeats`` times, or
    greedy once.

    :param agent: the agent (anything with ``predict``).
    :param config: the run config (env id and options).
    :param args: the command line (splits, repeats, seed, progress).
    :param deterministic: greedy decoding (one pass) instead of sampling.
    :param reference: the reference LM of the perplexity and the KL (default: the recipe's model,
        i.e. the starting model).
    :return: ``{"summary": ..., "episodes": [...]}`` (episodes as dicts).
    """
    import torch

    from agents.common.evaluation import EvalResult, evaluate_agent
    from agents.common.training import make_run_env

    episodes = []
    act_time = wall_time = 0.0
    for split in args.eval_splits:
        env = make_run_env(config, split)
        for repeat in range(1 if deterministic else args.eval_repeats):
            torch.manual_seed(args.seed * 1000 + repeat)  # the policy's sampling
            result = evaluate_agent(
                agent,
                env,
                n_episodes=args.eval_max or 10**6,  # default: every prompt of the split
                split=split,
                deterministic=deterministic,
                reference=reference or config.hyperparams.get("model", args.model),
                n_envs=8,
                progress=not args.no_progress,
            )
            episodes.extend(result.episodes)
            act_time += result.act_time
            wall_time += result.wall_time
        env.close()
    merged = EvalResult(config.env_id, "+".join(args.eval_splits), episodes, act_time, wall_time)
    return merged.to_dict()


def read_curve(run_dir: Path) -> dict[str, list[float]]:
    """Per rollout, from the run's ``tb/progress.csv``: the mean task reward of the episodes that
    ended in it (``rollout/task_reward``, before any KL penalty; ``rollout/ep_rew_mean`` when no
    KL is logged) and the mean KL per episode (``rollout/kl``), against env steps of all envs."""
    import csv

    curve: dict[str, list[float]] = {"steps": [], "reward": [], "kl_steps": [], "kl": []}
    progress = run_dir / "tb" / "progress.csv"
    if not progress.exists():
        return curve
    with progress.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = row.get("time/total_timesteps", "")
            reward = row.get("rollout/task_reward") or row.get("rollout/ep_rew_mean", "")
            if step and reward:
                curve["steps"].append(float(step))
                curve["reward"].append(float(reward))
            if step and row.get("rollout/kl"):
                curve["kl_steps"].append(float(step))
                curve["kl"].append(float(row["rollout/kl"]))
    return curve


def plot_curve(
    curve: dict[str, list[float]], before: float, after: float, title: str, path: Path
) -> None:
    """Training task reward and KL per episode (per rollout) against env steps, with the held-out
    rewards before and after training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if curve["reward"]:
        ax.plot(curve["steps"], curve["reward"], label="training task reward (per rollout)")
    ax.axhline(before, color="grey", ls="--", label="held-out eval, start")
    ax.axhline(after, color="black", ls=":", label="held-out eval, trained")
    ax.set_xlabel("env steps (tokens)")
    ax.set_ylabel("episode reward")
    if curve["kl"]:
        ax2 = ax.twinx()
        ax2.plot(curve["kl_steps"], curve["kl"], color="tab:red", alpha=0.6, label="KL / episode")
        ax2.set_ylabel("KL to the start (nats / episode)")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def phase_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluated phases of a report, in order: ``{"phase", "decoding", "summary", "episodes"}``
    (a report without ``phases``, such as a TRL run's, gives its ``before`` and ``after``)."""
    if report.get("phases"):
        return list(report["phases"])
    return [
        {"phase": name, "decoding": "sampled", **report[name]}
        for name in ("before", "after")
        if name in report
    ]


def markdown(report: dict[str, Any]) -> str:
    """The table (every phase and decoding, every task metric) and examples of a report."""
    rows = phase_rows(report)
    metrics = sorted({k for r in rows for k in r["summary"] if k.startswith("metric/")})
    headers = {h for _, h in COLUMNS}
    columns = [*COLUMNS]
    for key in metrics:  # the task's own metrics, averaged per episode
        name = key.removeprefix("metric/")
        columns.append((key, f"{name} (per text)" if name in headers else name))
    lines = [
        f"## {report['agent']} on {report['env_id']} with {report['model']}",
        "",
        f"Settings: {json.dumps(report['settings'])}",
        "",
        "| phase | decoding | " + " | ".join(h for _, h in columns) + " |",
        "| --- | --- |" + " --- |" * len(columns),
    ]
    for row in rows:
        summary = row["summary"]
        cells = " | ".join(_fmt(summary.get(k)) for k, _ in columns)
        lines.append(f"| {row['phase']} | {row['decoding']} | {cells} |")
    lines += ["", f"Verdict: {report['verdict']}", ""]
    for row in rows:
        lines.append(f"Examples, {row['phase']} ({row['decoding']}):")
        for ep in row["episodes"][: report["settings"]["examples"]]:
            lines.append(f"- [{ep['reward']:.3f}] {ep['prompt']!r} -> {ep['text']!r}")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the protocol; print and write the report.

    :return: the report (``phases``; ``before`` and ``after``, the sampled evaluations of the
        starting and the trained model; ``verdict``, settings, timings).
    """
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from agents.common.config import parse_overrides, resolve_run_config
    from agents.common.training import build_agent, load_run, make_run_env, train_run

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = parse_overrides(args.set)
    if args.new_tokens is not None:  # over the recipe's env options, which merge key by key
        overrides["env_kwargs"] = {
            "max_new_tokens": args.new_tokens,
            **overrides.get("env_kwargs", {}),
        }

    def run_config(model: str) -> Any:
        return resolve_run_config(
            args.env,
            args.agent,
            overrides=overrides,
            seed=args.seed,
            n_timesteps=args.steps,
            model=model,
        )

    config = start_config = run_config(args.model)
    print(f"recipe: {json.dumps(config.hyperparams)}; env {config.env_kwargs}", flush=True)
    phases: list[dict[str, Any]] = []

    def evaluate_phase(name: str, agent: Any) -> dict[str, Any]:
        sampled: dict[str, Any] = {}
        for greedy in (False, True) if args.greedy else (False,):
            result = evaluate(agent, start_config, args, deterministic=greedy, reference=args.model)
            decoding = "greedy" if greedy else "sampled"
            phases.append({"phase": name, "decoding": decoding, **result})
            print(f"{name} ({decoding}): {json.dumps(result['summary'])}", flush=True)
            sampled = sampled or result
        return sampled

    t0 = time.perf_counter()
    before = evaluate_phase("zero-shot", build_agent(config, make_run_env(config)))
    eval_time = time.perf_counter() - t0
    rl_start = before
    warm_time = 0.0
    if args.warm_start:
        from agents.algorithms.supervised import warm_start

        t1 = time.perf_counter()
        folder = warm_start(
            args.model,
            make_run_env(config, "train"),
            out / "warm_start",
            epochs=args.warm_start_epochs,
            learning_rate=args.warm_start_lr,
            max_samples=args.warm_start_samples,
            seed=args.seed,
        )
        warm_time = time.perf_counter() - t1
        print(f"warm start: {folder} ({warm_time:.0f} s)", flush=True)
        config = run_config(folder)
        rl_start = evaluate_phase("warm start", build_agent(config, make_run_env(config)))

    run_dir = out / "run"
    outcome = train_run(config, run_dir, progress=not args.no_progress, overwrite=True)
    _, trained, _ = load_run(run_dir)
    after = evaluate_phase(f"{config.agent}", trained)

    start_ppl = before["summary"]["perplexity"]
    for row in phases:
        row["summary"]["ppl_ratio"] = row["summary"]["perplexity"] / start_ppl
    gain = after["summary"]["mean_reward"] - rl_start["summary"]["mean_reward"]
    ratio = after["summary"]["ppl_ratio"]
    target = args.target_gain
    if target is None and config.env_id == "LMText-v0":
        target = 0.15
    over = "the warm start" if args.warm_start else "the start"
    verdict = f"reward {gain:+.3f} over {over}, perplexity {ratio:.2f}x the start's"
    met = None
    if target is not None:
        met = gain >= target and ratio <= args.max_ppl_ratio
        verdict += (
            f" (targets >= {target:+.2f} and <= {args.max_ppl_ratio:.2f}x): "
            f"{'MET' if met else 'NOT MET'}"
        )
    report = {
        "env_id": config.env_id,
        "agent": config.agent,
        "model": args.model,
        "settings": {
            "recipe": config.hyperparams,
            "env_kwargs": config.env_kwargs,
            "n_timesteps": outcome.num_timesteps,
            "seed": args.seed,
            "warm_start": (
                {
                    "epochs": args.warm_start_epochs,
                    "learning_rate": args.warm_start_lr,
                    "max_samples": args.warm_start_samples,
                }
                if args.warm_start
                else None
            ),
            "eval_splits": args.eval_splits,
            "eval_repeats": args.eval_repeats,
            "eval_max": args.eval_max,
            "threads": args.threads,
            "examples": args.examples,
        },
        "train_time_s": outcome.train_time,
        "warm_start_time_s": warm_time,
        "eval_time_s": eval_time,
        "train_tokens_per_s": outcome.num_timesteps / max(outcome.train_time, 1e-9),
        "gain": gain,
        "ppl_ratio": ratio,
        "target_met": met,
        "verdict": verdict,
        "phases": phases,
        "before": before,
        "after": after,
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    text = markdown(report)
    (out / "quality.md").write_text(text, encoding="utf-8")
    plot_curve(
        read_curve(run_dir),
        rl_start["summary"]["mean_reward"],
        after["summary"]["mean_reward"],
        f"{config.agent} on {config.env_id}, {args.model}",
        out / "learning_curve.png",
    )
    print(text)
    print(
        f"train {outcome.train_time:.0f} s ({report['train_tokens_per_s']:.1f} tok/s); written to "
        f"{out}"
    )
    return report


if __name__ == "__main__":
    main()
