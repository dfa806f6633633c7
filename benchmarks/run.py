"""Benchmark agents x env ids x seeds: JSON, CSV, Markdown tables (RL Zoo columns) and learning curves.

Every (agent, env id, seed) is a training run folder (:func:`agents.common.training.train_run`, the
same as ``lm-gym train``) followed by an evaluation on the env's test split
(:func:`agents.common.evaluation.evaluate_agent`). The tables have RL Zoo's columns (algo, env_id,
mean_reward, std_reward, n_timesteps, eval_episodes), then each task's metrics (sentiment, chrF,
BLEU, ROUGE, ...), the perplexity of the outputs under the reference LM (the agent's starting
model), the KL of the policy to it, ``corpus_distinct-1``/``-2`` (distinct n-grams of all the texts
pooled; a task's own ``distinct-1`` column is the per-text score averaged), wall time and tokens per
second. For envs with an exact solution (``LMToy-v0``, ``LMWordSort-v0``), ``optimum`` is the mean
return as a fraction of the exact optimal return (:func:`agents.tabular.mdp.optimal_return`).

Usage::

    python benchmarks/run.py --quick                      # CPU, under 10 minutes
    python benchmarks/run.py --full --out results/full    # GPU: every agent, env and 3 seeds
    python benchmarks/run.py --agents ppo reinforce my-agent --envs LMCountUp-v0 --seeds 0 1
    lm-gym bench --quick                                  # the same through the CLI

Outputs in ``--out``: ``results.json`` (every run and the aggregated rows), ``results.csv``,
``results.md`` (one table per env id), ``learning_curves.png``; the run folders go to
``--runs-dir`` (default ``OUT/runs``).
Budgets come from ``agents/configs/<agent>.yaml``; ``--quick`` caps them per env (see
:data:`QUICK_BUDGETS`) and uses the tiny GPT-2 and 10 evaluation episodes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: (agents, env ids, seeds, model, eval episodes) of the quick CPU suite.
QUICK_AGENTS = (
    "random",
    "greedy",
    "sample",
    "beam",
    "supervised",
    "tabular-q",
    "reinforce",
    "ppo",
    "a2c",
    "nlpo",
    "dqn",
    "trpo",
)
QUICK_ENVS = ("LMToy-v0", "LMWordSort-v0", "LMCountUp-v0", "LMTranslate-v0")
#: The agents of the quick suite on the GPT-2-vocabulary envs (the others are run on the toy MDPs
#: only: with 50257 actions their few hundred steps change nothing and cost the most).
QUICK_ENV_AGENTS = {
    "LMCountUp-v0": ("random", "greedy", "sample", "beam", "supervised", "reinforce", "ppo"),
    "LMTranslate-v0": ("random", "greedy", "sample", "beam", "supervised", "ppo"),
}
#: Training budget caps of the quick suite, per env id.
QUICK_BUDGETS = {"LMToy-v0": 256, "LMWordSort-v0": 1024, "LMCountUp-v0": 768, "LMTranslate-v0": 256}
#: Budget caps of the quick suite for agents whose timestep is cheap (supervised: one target token).
QUICK_AGENT_BUDGETS = {"supervised": 4096}
#: Lower budget caps of the quick suite for the costliest agents (TRPO: Hessian-vector products).
QUICK_AGENT_CAPS = {"trpo": 512}
#: Hyperparameter overrides of the quick suite (small rollouts for small budgets).
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 128, "batch_size": 64},
    "nlpo": {"n_steps": 128, "batch_size": 64},
    "a2c": {"n_steps": 16},
    "trpo": {
        "n_steps": 128,
        "batch_size": 128,
        "cg_max_steps": 3,
        "n_critic_updates": 1,
        "line_search_max_iter": 3,
    },
    "dqn": {"learning_starts": 64, "buffer_size": 2048},
}
FULL_SEEDS = (0, 1, 2)

RL_ZOO_COLUMNS = ("algo", "env_id", "mean_reward", "std_reward", "n_timesteps", "eval_episodes")
LM_COLUMNS = (
    "perplexity",
    "kl",
    "corpus_distinct-1",
    "corpus_distinct-2",
    "optimum",
    "wall_time_s",
    "train_tokens_per_s",
    "eval_tokens_per_s",
)


def _quick_cap(agent: str, env_id: str) -> int | None:
    """The quick suite's training budget cap of one (agent, env id)."""
    cap = QUICK_AGENT_BUDGETS.get(agent, QUICK_BUDGETS.get(env_id))
    if agent in QUICK_AGENT_CAPS:
        cap = min(QUICK_AGENT_CAPS[agent], cap) if cap is not None else QUICK_AGENT_CAPS[agent]
    return cap


def _registered(env_ids: Sequence[str]) -> list[str]:
    import gymnasium as gym

    import lm_gym  # noqa: F401

    return [e for e in env_ids if e in gym.registry]


def _optimal(env_id: str) -> float | None:
    """The exact optimal return of an enumerable env, or ``None``."""
    try:
        from agents.tabular.mdp import is_enumerable, optimal_return
    except ImportError:
        return None
    try:
        return float(optimal_return(env_id)) if is_enumerable(env_id) else None
    except (ValueError, RuntimeError):
        return None


def run_one(
    agent: str,
    env_id: str,
    seed: int,
    out_dir: Path,
    *,
    n_timesteps: int | None,
    budget_cap: int | None,
    eval_episodes: int,
    model: str | None,
    overrides: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Train and evaluate one (agent, env, seed); return its row (per-seed).

    :param agent: agent name.
    :param env_id: env id.
    :param seed: seed.
    :param out_dir: the run folder.
    :param n_timesteps: the budget (default: the agent's config).
    :param budget_cap: an upper bound on the budget.
    :param eval_episodes: evaluation episodes.
    :param model: the ``model`` option (agents that take one).
    :param overrides: options over the config.
    :param progress: progress bars.
    """
    from agents.algorithms.supervised import base_model_name
    from agents.common.config import resolve_run_config
    from agents.common.evaluation import evaluate_agent
    from agents.common.training import train_run
    from agents.registry import agent_spec

    spec = agent_spec(agent)
    names = spec.option_names()
    options = {k: v for k, v in overrides.items() if names is None or k in names}
    takes_model = names is None or "model" in names
    config = resolve_run_config(
        env_id,
        agent,
        overrides=options,
        seed=seed,
        n_timesteps=n_timesteps,
        model=model if takes_model and names is not None else None,
    )
    if budget_cap is not None:
        config.n_timesteps = min(config.n_timesteps, budget_cap)
    config.eval_episodes = eval_episodes
    t0 = time.perf_counter()
    outcome = train_run(config, out_dir, progress=progress, overwrite=True)
    reference = config.hyperparams.get("model") or model or "gpt2"
    reference = base_model_name(reference) if isinstance(reference, str) else "gpt2"
    from agents.common.training import load_run

    _, trained, env = load_run(out_dir, split="test")
    result = evaluate_agent(trained, env, n_episodes=eval_episodes, reference=reference)
    wall = time.perf_counter() - t0
    summary = result.summary()
    row = {
        "algo": agent,
        "env_id": env_id,
        "seed": seed,
        "n_timesteps": outcome.num_timesteps,
        **summary,
        "train_time_s": outcome.train_time,
        "wall_time_s": wall,
        "train_tokens_per_s": (
            outcome.num_timesteps / outcome.train_time if outcome.num_timesteps else math.nan
        ),
        "reference": reference,
        "run_dir": str(out_dir),
        "sample_text": result.episodes[0].text if result.episodes else "",
    }
    (out_dir / "eval_test.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return row


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (algo, env_id): rewards pooled over seeds (mean, std), other numbers averaged.

    :param rows: per-seed rows of :func:`run_one`.
    """
    import numpy as np

    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["algo"], row["env_id"])].append(row)
    out = []
    for (algo, env_id), group in groups.items():
        rewards = []
        for row in group:
            data = json.loads((Path(row["run_dir"]) / "eval_test.json").read_text())
            rewards += [e["reward"] for e in data["episodes"]]
        agg: dict[str, Any] = {"algo": algo, "env_id": env_id, "seeds": len(group)}
        agg["mean_reward"] = float(np.mean(rewards)) if rewards else math.nan
        agg["std_reward"] = float(np.std(rewards)) if rewards else math.nan
        agg["n_timesteps"] = int(np.mean([r["n_timesteps"] for r in group]))
        agg["eval_episodes"] = len(rewards)
        keys = {k for r in group for k in r if k not in agg and k not in ("seed", "run_dir")}
        for key in sorted(keys):
            values = [r[key] for r in group if isinstance(r.get(key), (int, float))]
            if values:
                agg[key] = float(np.mean(values))
            elif key == "sample_text":
                agg[key] = group[0].get(key, "")
        out.append(agg)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) < 1e-9:
            return "0"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.2e}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(rows: list[dict[str, Any]], title: str = "") -> str:
    """Markdown tables, one per env id: RL Zoo columns, task metrics, LM metrics.

    :param rows: aggregated rows.
    :param title: a heading line.
    """
    lines = [f"# {title}", ""] if title else []
    by_env: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_env[row["env_id"]].append(row)
    for env_id, group in by_env.items():
        metrics = sorted({k for r in group for k in r if k.startswith("metric/")})
        columns = [*RL_ZOO_COLUMNS, *metrics, *LM_COLUMNS]
        columns = [c for c in columns if any(c in r for r in group)]
        lines += [f"## {env_id}", ""]
        lines.append("| " + " | ".join(c.removeprefix("metric/") for c in columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        for row in sorted(group, key=lambda r: -r.get("mean_reward", -math.inf)):
            lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """All aggregated rows as CSV (the union of their columns)."""
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def learning_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """``(cumulative steps, episode rewards)`` of a run's ``train.monitor.csv``."""
    path = run_dir / "train.monitor.csv"
    steps, rewards, total = [], [], 0
    if not path.exists():
        return steps, rewards
    with path.open(encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    for row in csv.DictReader(lines):
        total += int(float(row["l"]))
        steps.append(total)
        rewards.append(float(row["r"]))
    return steps, rewards


def plot_curves(rows: list[dict[str, Any]], path: Path, window: int = 20) -> Path | None:
    """Learning curves (rolling mean of training episode rewards vs steps), one panel per env.

    Agents that learn without playing episodes (``supervised``) have no curve.

    :param rows: per-seed rows (their ``run_dir`` holds the monitor file).
    :param path: the PNG to write.
    :param window: rolling-mean window in episodes.
    :return: the path, or ``None`` when matplotlib is missing or nothing learned.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return None
    by_env: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["n_timesteps"] > 0:
            by_env[row["env_id"]].append(row)
    if not by_env:
        return None
    n = len(by_env)
    cols = min(n, 2)
    fig, axes = plt.subplots(
        math.ceil(n / cols), cols, figsize=(6 * cols, 3.6 * math.ceil(n / cols)), squeeze=False
    )
    styles = ["-", "--", ":", "-."]
    for ax, (env_id, group) in zip(axes.flat, by_env.items()):
        for i, row in enumerate(group):
            steps, rewards = learning_curve(Path(row["run_dir"]))
            if len(rewards) < 2:
                continue
            w = max(1, min(window, len(rewards) // 4 or 1))
            smooth = np.convolve(rewards, np.ones(w) / w, mode="valid")
            label = row["algo"] if row.get("seed", 0) == 0 else None
            ax.plot(steps[w - 1 :], smooth, label=label, linewidth=1.3, linestyle=styles[i % 4])
        ax.set_title(env_id)
        ax.set_xlabel("env steps (tokens)")
        ax.set_ylabel("training episode reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of the benchmark runner."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    suite = parser.add_mutually_exclusive_group()
    suite.add_argument("--quick", action="store_true", help="the CPU suite (under 10 minutes)")
    suite.add_argument("--full", action="store_true", help="every agent and offline env, 3 seeds")
    parser.add_argument("--agents", nargs="+", help="agent names (default: the suite's)")
    parser.add_argument("--envs", nargs="+", help="env ids (default: the suite's)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0; full: 0 1 2)")
    parser.add_argument("--steps", type=int, help="training budget of every run")
    parser.add_argument("--eval-episodes", type=int, help="evaluation episodes (default 10/20)")
    parser.add_argument("--model", help="the model of the LM agents (quick: tiny-gpt2)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an option")
    parser.add_argument("--out", default="benchmarks/results/bench", help="output folder")
    parser.add_argument("--runs-dir", help="where the run folders go (default: OUT/runs)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--progress", action="store_true", help="progress bars per run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its outputs; print the Markdown tables.

    :param argv: command-line arguments.
    :return: exit code.
    """
    args = parse_args(argv)
    import lm_gym
    from agents.common.config import parse_overrides
    from agents.registry import list_agents

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.full:
        agents = args.agents or list_agents()
        envs = args.envs or [e.id for e in lm_gym.list_envs(include_online=False)]
        seeds = args.seeds or list(FULL_SEEDS)
        model = args.model or "gpt2"
        eval_episodes = args.eval_episodes or 50
    else:
        agents = args.agents or list(QUICK_AGENTS)
        envs = args.envs or _registered(QUICK_ENVS)
        seeds = args.seeds or [0]
        model = args.model or "tiny-gpt2"
        eval_episodes = args.eval_episodes or 10
    known = set(list_agents())
    unknown = [a for a in agents if a not in known]
    if unknown:
        print(f"unknown agent(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    overrides = parse_overrides(args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for env_id in envs:
        optimum = _optimal(env_id)
        env_agents = agents
        if not (args.full or args.agents) and env_id in QUICK_ENV_AGENTS:
            env_agents = [a for a in agents if a in QUICK_ENV_AGENTS[env_id]]
        for agent in env_agents:
            for seed in seeds:
                extra = dict(QUICK_OVERRIDES.get(agent, {})) if not args.full else {}
                extra.update(overrides)
                run_dir = runs_dir / f"{agent}__{env_id}__seed{seed}"
                t0 = time.perf_counter()
                try:
                    row = run_one(
                        agent,
                        env_id,
                        seed,
                        run_dir,
                        n_timesteps=args.steps,
                        budget_cap=None if args.full else _quick_cap(agent, env_id),
                        eval_episodes=eval_episodes,
                        model=model,
                        overrides=extra,
                        progress=args.progress,
                    )
                except Exception as exc:  # one failing run must not lose the others
                    print(f"FAILED {agent} on {env_id} seed {seed}: {exc!r}", file=sys.stderr)
                    continue
                if optimum:
                    row["optimum"] = row["mean_reward"] / optimum
                rows.append(row)
                print(
                    f"{agent:>18} {env_id:<16} seed {seed}: reward {row['mean_reward']:.4g} "
                    f"+- {row['std_reward']:.3g}  ({time.perf_counter() - t0:.1f} s)",
                    flush=True,
                )
    table = aggregate(rows)
    for row in table:
        optimum = _optimal(row["env_id"])
        if optimum:
            row["optimum"] = row["mean_reward"] / optimum
    suite = "full" if args.full else "quick"
    meta = {
        "suite": suite,
        "agents": agents,
        "envs": envs,
        "seeds": seeds,
        "model": model,
        "eval_episodes": eval_episodes,
        "total_time_s": time.perf_counter() - start,
        "torch_threads": __import__("torch").get_num_threads(),
    }
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "rows": table, "runs": rows}, indent=2, default=str)
    )
    write_csv(table, out / "results.csv")
    md = markdown(table, f"lm-gym benchmark ({suite}: model {model}, seeds {seeds})")
    (out / "results.md").write_text(md + "\n", encoding="utf-8")
    plot = plot_curves(rows, out / "learning_curves.png")
    print(md)
    print(
        f"total {meta['total_time_s']:.0f} s; written to {out}" + (f" and {plot}" if plot else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
