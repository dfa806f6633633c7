"""The ``lm-gym`` command: list envs and agents, train, resume, evaluate, generate, benchmark.

::

    lm-gym envs                                   # table of env ids
    lm-gym agents                                 # table of agents (zoo and plug-ins)
    lm-gym train LMCountUp-v0 --agent ppo --model tiny-gpt2 --steps 4096 --out runs/ppo
    lm-gym train --resume --out runs/ppo          # after an interruption
    lm-gym eval runs/ppo                          # metrics over the test split
    lm-gym generate runs/ppo --prompt "Write 5 increasing numbers, starting above 7:"
    lm-gym bench --quick                          # benchmarks/run.py

``train`` takes the agent's hyperparameters from ``agents/configs/<agent>.yaml`` (default and
per-env sections), then ``--config FILE``, then ``--set key=value`` overrides, then ``--model``,
``--steps`` and ``--seed``. Unknown env ids, agents and config keys are reported with the closest
names and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


class CLIError(Exception):
    """A user error reported as ``error: ...`` with exit code 2."""


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join([line.rstrip(), rule, *body])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


# -- subcommands ----------------------------------------------------------------------------------


def cmd_envs(args: argparse.Namespace) -> int:
    """Print the registered env ids."""
    import lm_gym

    entries = lm_gym.list_envs(include_online=not args.offline)
    if args.json:
        print(
            json.dumps(
                [{"id": e.id, "online": e.online, "summary": e.summary} for e in entries], indent=2
            )
        )
        return 0
    rows = [(e.id, "online" if e.online else "offline", e.summary) for e in entries]
    print(_table(rows, ["env id", "data", "task"]))
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    """Print the registered agents, plug-ins included."""
    from agents.registry import agent_spec, discover_agents, list_agents, unavailable_agents

    errors = discover_agents(refresh=True)
    names = list_agents()
    missing = unavailable_agents()
    if args.json:
        out = []
        for name in names:
            spec = agent_spec(name)
            out.append(
                {
                    "name": name,
                    "source": spec.source,
                    "tags": list(spec.tags),
                    "summary": spec.summary,
                    "available": True,
                }
            )
        for name, reason in sorted(missing.items()):
            out.append({"name": name, "available": False, "summary": f"unavailable: {reason}"})
        print(json.dumps(out, indent=2))
        return 0
    rows = []
    for name in names:
        spec = agent_spec(name)
        rows.append((name, spec.source, ",".join(spec.tags), spec.summary))
    print(_table(rows, ["agent", "source", "tags", "summary"]))
    for name, reason in sorted(missing.items()):
        print(f"unavailable here: {name} ({reason})")
    for name, error in errors.items():
        print(f"warning: plug-in {name!r} failed to load: {error}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) a run folder."""
    from agents.hyperparams import parse_overrides, resolve_run_config
    from agents.training import train_run

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    if args.checkpoint_freq is not None:
        overrides["checkpoint_freq"] = args.checkpoint_freq
    for option in ("num_env_runners", "num_learners", "address"):
        if getattr(args, option) is not None:  # the agent's options: others refuse them by name
            overrides[option] = getattr(args, option)
    if args.warm_start:
        overrides.setdefault("warm_start", True)
    if args.resume:
        if args.config or overrides or args.model or args.seed is not None:
            raise CLIError("--resume continues the saved config.yaml: only --steps may change.")
        config = None
        if args.env and args.agent:  # checked against the saved config
            config = resolve_run_config(args.env, args.agent)
        outcome = train_run(
            config, args.out, resume=True, n_timesteps=args.steps, progress=not args.no_progress
        )
    else:
        if args.env is None and args.config is None:
            raise CLIError(
                "Give an env id (see `lm-gym envs`), or --config with a run's config.yaml."
            )
        config = resolve_run_config(
            args.env,
            args.agent,
            config_file=args.config,
            overrides=overrides,
            seed=args.seed,
            n_timesteps=args.steps,
            model=args.model,
        )
        outcome = train_run(
            config, args.out, progress=not args.no_progress, overwrite=args.overwrite
        )
    if outcome.interrupted:
        from agents.training import latest_checkpoint

        found = latest_checkpoint(outcome.out_dir)
        where = f"the checkpoint at step {found[0]}" if found else "the start (no checkpoint yet)"
        print(
            f"interrupted at step {outcome.num_timesteps}; `lm-gym train --resume --out "
            f"{outcome.out_dir}` continues from {where}.",
            file=sys.stderr,
        )
        return 130
    rewards = outcome.episode_rewards
    if rewards:
        recent = (
            f", mean reward of the last {min(20, len(rewards))} training episodes "
            f"{sum(rewards[-20:]) / len(rewards[-20:]):.4g}"
        )
    elif outcome.reported_reward is not None:
        recent = f", mean training episode reward {outcome.reported_reward:.4g} (agent's report)"
    else:
        recent = ", no training episode finished"
    resumed = (
        f" (resumed from step {outcome.resumed_from})" if outcome.resumed_from is not None else ""
    )
    print(
        f"trained to step {outcome.num_timesteps}{resumed} in {outcome.train_time:.1f} s"
        f"{recent}; saved in {outcome.out_dir}"
    )
    return 0


def _reference_of(config: Any) -> str:
    from agents.supervised import base_model_name

    model = config.hyperparams.get("model", "gpt2")
    return base_model_name(model) if isinstance(model, str) else "gpt2"


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a run's agent on a split, ``--n-envs`` episodes at once; write the JSON."""
    from agents.evaluation import evaluate_agent
    from agents.training import load_run

    config, agent, env = load_run(args.run, split=args.split, checkpoint=args.checkpoint)
    reference = None if args.no_reference else (args.reference or _reference_of(config))
    result = evaluate_agent(
        agent,
        env,
        n_episodes=args.episodes or config.eval_episodes,
        split=args.split,
        deterministic=not args.stochastic,
        reference=reference,
        n_envs=args.n_envs,
        progress=not args.no_progress,
    )
    summary = result.summary()
    out_file = Path(args.run) / f"eval_{args.split}.json"
    out_file.write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    print(f"{config.agent} on {config.env_id}, {args.split} split, reference LM {reference}:")
    print(_table([(k, _fmt(v)) for k, v in summary.items()], ["metric", "value"]))
    if reference is None:
        print("perplexity and kl: not computed (--no-reference)")
    elif "kl" not in summary:
        print("kl: not computed (the agent gives no action_log_probs)")
    for episode in result.episodes[: args.show]:
        print(f"\n[{episode.reward:.4g}] {episode.prompt!r}\n  -> {episode.text!r}")
    print(f"\nwritten to {out_file}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a continuation of a prompt with a run's agent."""
    from agents.base import text_env
    from agents.training import load_run

    _, agent, env = load_run(args.run, checkpoint=args.checkpoint)
    obs, _ = env.reset(seed=args.seed, options={"prompt": args.prompt})
    info: dict[str, Any] = {}
    reward: float | None = None
    while True:
        action, _ = agent.predict(obs, deterministic=not args.sample)
        try:
            obs, r, terminated, truncated, info = env.step(action)
        except ValueError as exc:  # the task's scorer cannot read a free-form prompt
            print(f"(no reward: {exc})", file=sys.stderr)
            break
        reward = float(r) if reward is None else reward + float(r)
        if terminated or truncated:
            break
    text = info.get("text", text_env(env).generated_text())
    print(text)
    if reward is not None and info:
        print(
            f"reward {reward:.4g}  metrics {json.dumps(info.get('metrics', {}))}", file=sys.stderr
        )
    return 0


def _benchmark_script() -> Path:
    return Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``benchmarks/run.py`` with the remaining arguments."""
    import runpy

    script = _benchmark_script()
    if not script.exists():
        raise CLIError(
            f"{script} not found: `lm-gym bench` runs the benchmark script of a source checkout."
        )
    argv = sys.argv
    try:
        sys.argv = [str(script), *args.bench_args]
        module = runpy.run_path(str(script), run_name="lm_gym_bench")
        return int(module["main"](list(args.bench_args)) or 0)
    finally:
        sys.argv = argv


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lm-gym``."""
    parser = argparse.ArgumentParser(
        prog="lm-gym",
        description="Token-level RL on language models: envs, agents, training and benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("envs", help="list the env ids")
    p.add_argument("--offline", action="store_true", help="only the envs that need no hub")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_envs)

    p = sub.add_parser("agents", help="list the agents (zoo and plug-ins)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser("train", help="train an agent on an env into a run folder")
    p.add_argument("env", nargs="?", help="env id (see `lm-gym envs`)")
    p.add_argument("--agent", help="agent name (see `lm-gym agents`)")
    p.add_argument("--model", help="causal LM name or folder (the agent's `model` option)")
    p.add_argument("--steps", type=int, help="env steps to train for (n_timesteps)")
    p.add_argument("--seed", type=int, help="seed of the agent and env")
    p.add_argument("--config", help="YAML: a run's config.yaml, RL Zoo sections, or flat options")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override an option (repeatable)"
    )
    p.add_argument("--checkpoint-freq", type=int, help="env steps between checkpoints")
    ray = p.add_argument_group("distributed agents (rllib-ppo; the same as --set KEY=VALUE)")
    ray.add_argument("--num-env-runners", type=int, help="sampling processes (num_env_runners)")
    ray.add_argument("--num-learners", type=int, help="data-parallel learners (num_learners)")
    ray.add_argument("--address", help="Ray cluster address, e.g. HOST:6379 or auto (address)")
    p.add_argument("--warm-start", action="store_true", help="supervised warm start first")
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run on the test split")
    p.add_argument("run", help="the run folder")
    p.add_argument("--episodes", type=int, help="episodes (default: the config's eval_episodes)")
    p.add_argument("--split", default="test", help="data split (default: test)")
    p.add_argument("--checkpoint", help="a checkpoint folder instead of final/")
    p.add_argument("--stochastic", action="store_true", help="predict(deterministic=False)")
    p.add_argument("--reference", help="reference LM for perplexity and KL")
    p.add_argument("--no-reference", action="store_true", help="skip perplexity and KL")
    p.add_argument(
        "--n-envs", type=int, default=8, help="episodes played at once, one batched predict (8)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--show", type=int, default=3, help="episodes to print")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="continue a prompt with a run's agent")
    p.add_argument("run", help="the run folder")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--sample", action="store_true", help="predict(deterministic=False)")
    p.add_argument("--checkpoint", help="a checkpoint folder instead of final/")
    p.add_argument("--seed", type=int, default=0, help="seed of the env reset")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bench", help="run benchmarks/run.py (arguments passed on)", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lm-gym`` console script.

    :param argv: arguments (default: ``sys.argv[1:]``).
    :return: the exit code (0 ok, 2 user error, 130 interrupted).
    """
    from agents.hyperparams import ConfigError
    from agents.registry import UnknownAgentError, UnknownOptionError
    from agents.training import RunFolderError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to benchmarks/run.py
        args = argparse.Namespace(command="bench", func=cmd_bench, bench_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ConfigError, UnknownAgentError, UnknownOptionError, RunFolderError) as exc:
        print(f"lm-gym {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
