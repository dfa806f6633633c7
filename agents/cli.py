"""The ``lm-gym`` command: list envs and agents, train, resume, evaluate, generate, benchmark.

::

    lm-gym envs                                   # table of env ids
    lm-gym agents                                 # table of agents (zoo and plug-ins)
    lm-gym agents ppo                             # its options: defaults and docs
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
import re
import signal
import sys
import textwrap
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

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


def cmd_agent_options(name: str, as_json: bool) -> int:
    """Print one agent's options: name, default and doc (``lm-gym agents NAME``)."""
    from agents.registry import agent_spec

    spec = agent_spec(name)
    options = spec.describe_options()
    if as_json:
        rows = None
        if options is not None:
            rows = [
                {"name": o.name, "default": None if o.required else o.default, "doc": o.doc}
                for o in options
            ]
        print(json.dumps({"name": name, "summary": spec.summary, "options": rows}, default=repr))
        return 0
    print(f"{name}: {spec.summary}")
    if options is None:
        print("Its factory takes any keyword: see its documentation.")
        return 0
    rows_: list[tuple[str, str, str]] = []
    for o in options:
        doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", o.doc).replace("``", "")  # reST roles, literals
        lines = textwrap.wrap(doc, 72) or [""]
        rows_.append((o.name, "(required)" if o.required else repr(o.default), lines[0]))
        rows_.extend(("", "", line) for line in lines[1:])
    print(_table(rows_, ["option", "default", "doc"]))
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    """Print the registered agents, plug-ins included; with a name, that agent's options."""
    from agents.registry import agent_spec, discover_agents, list_agents, unavailable_agents

    if args.name:
        return cmd_agent_options(args.name, args.json)
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


def _env_class(env_id: str) -> Any:
    """The class (or creator) registered for an env id, without building the env; ``None`` for
    an unknown id (the config check reports it)."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    import lm_gym  # noqa: F401  (registers the ids)

    try:
        spec = gym.spec(env_id)
        return load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else None
    except Exception:
        return None


def _env_options(env_id: str) -> list[str] | None:
    """The option names of a registered env's class (``default_config``), without building it;
    ``None`` when the class does not list them."""
    default_config = getattr(_env_class(env_id), "default_config", None)
    return sorted(default_config()) if callable(default_config) else None


def _check_env_options(env_id: str, options: dict[str, Any]) -> None:
    """Refuse ``--env-set`` keys the env does not take, with the closest name (the env's own
    check, :meth:`lm_gym.envs.core.TextEnv.check_options`)."""
    check = getattr(_env_class(env_id), "check_options", None)
    if check is None:
        return
    try:
        check(options)
    except TypeError as exc:
        raise CLIError(f"--env-set: the env {env_id}: {exc}") from None


def _agent_option_hint(exc: Exception, env_id: str | None) -> Exception:
    """An unknown agent option that is an env option gets the way to set it (``--env-set``)."""
    if env_id is None:
        return exc
    known = _env_options(env_id) or []
    keys = re.findall(r"no option '([^']+)'", str(exc)) + re.findall(r", '([^']+)'", str(exc))
    env_keys = [k for k in keys if k in known]
    if not env_keys:
        return exc
    key = env_keys[0]
    return CLIError(
        f"{exc} {key!r} is an option of the env {env_id}, not of the agent: use --env-set "
        f"{key}=VALUE (e.g. --env-set dataset=my_data.jsonl; --reward for the reward)."
    )


def _parse_env_sets(items: list[str] | None) -> dict[str, Any]:
    from agents.common.config import ConfigError, parse_overrides

    try:
        return parse_overrides(items)
    except ConfigError as exc:
        raise CLIError(str(exc).replace("Override", "--env-set")) from None


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) a run folder."""
    from agents.common.config import parse_overrides, resolve_run_config
    from agents.common.training import train_run
    from agents.registry import UnknownOptionError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    env_sets = _parse_env_sets(args.env_set)
    if args.reward is not None:
        env_sets["reward"] = args.reward
    if args.checkpoint_freq is not None:
        overrides["checkpoint_freq"] = args.checkpoint_freq
    for option in ("num_env_runners", "num_learners", "address"):
        if getattr(args, option) is not None:  # the agent's options: others refuse them by name
            overrides[option] = getattr(args, option)
    if args.warm_start:
        overrides.setdefault("warm_start", True)
    if args.checkpoint is not None and not args.resume:
        raise CLIError("--checkpoint picks the checkpoint that --resume continues from.")
    if args.resume:
        if args.config or overrides or env_sets or args.model or args.seed is not None:
            raise CLIError("--resume continues the saved config.yaml: only --steps may change.")
        config = None
        if args.env and args.agent:  # checked against the saved config
            config = resolve_run_config(args.env, args.agent)
        outcome = train_run(
            config,
            args.out,
            resume=True,
            n_timesteps=args.steps,
            progress=not args.no_progress,
            checkpoint=args.checkpoint,
        )
    else:
        if args.env is None and args.config is None:
            raise CLIError(
                "Give an env id (see `lm-gym envs`), or --config with a run's config.yaml."
            )
        if args.env is not None and env_sets:
            _check_env_options(args.env, env_sets)
        try:
            config = resolve_run_config(
                args.env,
                args.agent,
                config_file=args.config,
                overrides=overrides,
                seed=args.seed,
                n_timesteps=args.steps,
                model=args.model,
            )
        except UnknownOptionError as exc:
            raise _agent_option_hint(exc, args.env) from exc
        if env_sets:
            _check_env_options(config.env_id, env_sets)
            config.env_kwargs = {**config.env_kwargs, **env_sets}
        outcome = train_run(
            config, args.out, progress=not args.no_progress, overwrite=args.overwrite
        )
    if outcome.interrupted:
        from agents.common.training import latest_checkpoint

        found = latest_checkpoint(outcome.out_dir)
        where = f"the checkpoint at step {found[0]}" if found else "the start (no checkpoint yet)"
        print(
            f"interrupted at step {outcome.num_timesteps}; `lm-gym train --resume --out "
            f"{outcome.out_dir}` continues from {where}.",
            file=sys.stderr,
        )
        return 128 + int(outcome.stop_signal or signal.SIGINT)
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
    from agents.algorithms.supervised import base_model_name

    model = config.hyperparams.get("model", "gpt2")
    return base_model_name(model) if isinstance(model, str) else "gpt2"


#: what the summary's less obvious keys mean (printed under the table)
SUMMARY_NOTES = {
    "corpus_distinct-1": "corpus_distinct-n: distinct n-grams of all the texts pooled",
    "metric/distinct-1": "metric/distinct-n: the task's own score, per text, averaged",
}


def _fallback_of(caught: Sequence[warnings.WarningMessage], name: str) -> str | None:
    """The built-in model that replaced ``name`` (the "cannot load ... offline" warning)."""
    for w in caught:
        match = re.search(r"cannot load '([^']+)'.*using the built-in '([^']+)'", str(w.message))
        if match and match.group(1) == name:
            return match.group(2)
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a run's agent on a split, ``--n-envs`` episodes at once; print the summary, then
    write the JSON (a failed write is a warning: the results are printed already)."""
    from gymnasium import spaces

    from agents.common.base import load_lm_for_env, model_for_env
    from agents.common.evaluation import evaluate_agent
    from agents.common.training import load_run

    config, agent, env = load_run(args.run, split=args.split, checkpoint=args.checkpoint)
    reference = None if args.no_reference else (args.reference or _reference_of(config))
    ref_model, named = None, reference
    if reference is not None:  # loaded before play: a bad --reference costs no evaluation
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ref_model = load_lm_for_env(reference, env)
            except (ValueError, OSError) as exc:
                raise CLIError(f"--reference {reference}: {_one_line(exc)}") from exc
        fallback = _fallback_of(caught, reference)
        resolved = model_for_env(reference, env)
        if fallback is not None:  # say which model it really is
            named = f"{fallback} (random init: {reference!r} is not reachable offline)"
        elif resolved != reference:  # a word-level env: a built-in model with its vocabulary
            named = (
                f"{resolved} ({reference!r} with the env's "
                f"{cast(spaces.Discrete, env.action_space).n}-token vocabulary)"
            )
        for w in caught:
            if fallback is None or _fallback_of([w], reference) is None:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    result = evaluate_agent(
        agent,
        env,
        n_episodes=args.episodes or config.eval_episodes,
        split=args.split,
        deterministic=not args.stochastic,
        reference=ref_model,
        n_envs=args.n_envs,
        progress=not args.no_progress,
    )
    summary = result.summary()
    print(f"{config.agent} on {config.env_id}, {args.split} split, reference LM {named}:")
    print(_table([(k, _fmt(v)) for k, v in summary.items()], ["metric", "value"]))
    notes = [note for key, note in SUMMARY_NOTES.items() if key in summary]
    if any(isinstance(v, float) and math.isnan(v) for v in summary.values()):
        notes.append("n/a: not computable here (no episode, or no time measured)")
    if reference is None:
        notes.append("perplexity and kl: not computed (--no-reference)")
    elif "kl" not in summary:
        notes.append("kl: not computed (the agent gives no action_log_probs)")
    for note in notes:
        print(note)
    for episode in result.episodes[: args.show]:
        print(f"\n[{episode.reward:.4g}] {episode.prompt!r}\n  -> {episode.text!r}")
    out_file = Path(args.run) / f"eval_{args.split}.json"
    try:
        out_file.write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    except OSError as exc:
        print(
            f"lm-gym eval: warning: the results are printed above but not written: {exc}",
            file=sys.stderr,
        )
        return 0
    print(f"\nwritten to {out_file}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a continuation of a prompt with a run's agent."""
    from agents.common.base import text_env
    from agents.common.training import load_run

    _, agent, env = load_run(args.run, checkpoint=args.checkpoint)
    try:
        obs, _ = env.reset(seed=args.seed, options={"prompt": args.prompt})
    except ValueError as exc:  # a word outside a word-level vocabulary, a prompt too long
        raise CLIError(f"--prompt {args.prompt!r}: {_one_line(exc)}") from exc
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
        sys.argv = ["lm-gym bench", *args.bench_args]  # argparse's program name in --help
        module = runpy.run_path(str(script), run_name="lm_gym_bench")
        return int(module["main"](list(args.bench_args)) or 0)
    finally:
        sys.argv = argv


# -- parser ---------------------------------------------------------------------------------------


def _int_at_least(low: int) -> Any:
    """An argparse type: an integer of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    parse.__name__ = "integer"  # argparse's "invalid integer value" message
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lm-gym``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (and raise it)"
    )
    parser = argparse.ArgumentParser(
        prog="lm-gym",
        description="Token-level RL on language models: envs, agents, training and benchmarks.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    positive = _int_at_least(1)
    natural = _int_at_least(0)

    p = sub.add_parser("envs", help="list the env ids", parents=[common])
    p.add_argument("--offline", action="store_true", help="only the envs that need no hub")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_envs)

    p = sub.add_parser("agents", help="list the agents, or one agent's options", parents=[common])
    p.add_argument("name", nargs="?", help="an agent: list its options, defaults and docs")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser("train", help="train an agent on an env into a run folder", parents=[common])
    p.add_argument("env", nargs="?", help="env id (see `lm-gym envs`)")
    p.add_argument("--agent", help="agent name (see `lm-gym agents`)")
    p.add_argument("--model", help="causal LM name or folder (the agent's `model` option)")
    p.add_argument("--steps", type=natural, help="env steps to train for (n_timesteps)")
    p.add_argument("--seed", type=int, help="seed of the agent and env")
    p.add_argument("--config", help="YAML: a run's config.yaml, RL Zoo sections, or flat options")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override an agent option (repeatable)"
    )
    p.add_argument(
        "--env-set",
        action="append",
        metavar="KEY=VALUE",
        help="set an env option (repeatable), e.g. dataset=my_data.jsonl or max_new_tokens=32",
    )
    p.add_argument(
        "--reward",
        metavar="SPEC",
        help="the env's reward: a scorer name, package.module:function or file.py:function "
        "(a function f(texts, prompts, references) -> list of floats)",
    )
    p.add_argument("--checkpoint-freq", type=natural, help="env steps between checkpoints")
    ray = p.add_argument_group("distributed agents (rllib-ppo; the same as --set KEY=VALUE)")
    ray.add_argument("--num-env-runners", type=natural, help="sampling processes (num_env_runners)")
    ray.add_argument("--num-learners", type=natural, help="data-parallel learners (num_learners)")
    ray.add_argument("--address", help="Ray cluster address, e.g. HOST:6379 or auto (address)")
    p.add_argument("--warm-start", action="store_true", help="supervised warm start first")
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--checkpoint",
        help="with --resume: the checkpoint folder to continue from (default: the newest that "
        "loads)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=positive, help="torch CPU threads")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run on the test split", parents=[common])
    p.add_argument("run", help="the run folder")
    p.add_argument(
        "--episodes", type=positive, help="episodes (default: the config's eval_episodes)"
    )
    p.add_argument("--split", default="test", help="data split (default: test)")
    p.add_argument("--checkpoint", help="a checkpoint folder instead of final/")
    p.add_argument("--stochastic", action="store_true", help="predict(deterministic=False)")
    p.add_argument("--reference", help="reference LM for perplexity and KL")
    p.add_argument("--no-reference", action="store_true", help="skip perplexity and KL")
    p.add_argument(
        "--n-envs",
        type=positive,
        default=8,
        help="episodes played at once, one batched predict (8)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--show", type=natural, default=3, help="episodes to print")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="continue a prompt with a run's agent", parents=[common])
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


def _quiet_libraries() -> None:
    """What the CLI hides: transformers' weight-loading progress bars and its info chatter; the
    offline fallback warning prints once per process, not once per model load."""
    warnings.filterwarnings("once", message=r"lm_gym: cannot load .* using the built-in")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover (transformers is a dependency)
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a user can fix from the command line: one line, exit code 2."""
    from agents.common.config import ConfigError
    from agents.common.training import RunFolderError, RunSetupError
    from agents.registry import UnknownAgentError, UnknownOptionError
    from lm_gym.envs.core import EpisodeError

    return (
        CLIError,
        ConfigError,
        UnknownAgentError,
        UnknownOptionError,
        RunFolderError,
        RunSetupError,
        EpisodeError,
        FileNotFoundError,
        PermissionError,
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lm-gym`` console script.

    Errors the user can fix (unknown names, bad options, a set-up that fails, a run folder that
    cannot be used) print one line ``lm-gym <command>: error: ...`` and exit with 2; ``--debug``
    raises them with their traceback instead. Ctrl-C exits with 130 without a traceback (train
    first saves nothing half-written: see :func:`agents.common.training.train_run`).

    :param argv: arguments (default: ``sys.argv[1:]``).
    :return: the exit code (0 ok, 2 user error, 130 interrupted by SIGINT, 143 by SIGTERM).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to benchmarks/run.py
        args = argparse.Namespace(command="bench", func=cmd_bench, bench_args=argv[1:], debug=False)
    else:
        args = parser.parse_args(argv)
    _quiet_libraries()
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: Any) -> None:  # SIGTERM stops as Ctrl-C does
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"lm-gym {args.command}: interrupted", file=sys.stderr)
        return 128 + (terminated[0] if terminated else int(signal.SIGINT))
    except BrokenPipeError:  # `lm-gym envs --json | head`: the reader has gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except _user_errors() as exc:
        if args.debug:
            raise
        from agents.common.training import RunSetupError

        hint = " (--debug shows the traceback)" if isinstance(exc, RunSetupError) else ""
        print(f"lm-gym {args.command}: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
