"""PPO with the GPT-2 RLModule on a Ray cluster: config, run folder, checkpoints, resume.

:func:`train_rllib` is the entry point; :class:`PPOOptions` documents every hyperparameter (SB3's
names where SB3 has one); :func:`build_ppo_config` turns them into RLlib's ``PPOConfig`` for use
with RLlib's own tools (Tune, ``algo.train()`` loops).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pickle
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.rllib.checkpoint import (
    CHECKPOINT_DIR,
    DEFAULT_MODEL,
    MODULE_ID,
    evaluate_policy,
    load_policy,
    qualified_env_id,
    state_nbytes,
    tied_state_keys,
)
from agents.rllib.module import LMRLModule
from agents.rllib.options import PPOOptions
from lm_gym.models import write_folder_atomically

__all__ = [
    "PROGRESS_COLUMNS",
    "RESUME_FIXED",
    "RLlibRunResult",
    "build_ppo_config",
    "code_runtime_env",
    "loopback_ray_init_kwargs",
    "synced_state_bytes",
    "train_rllib",
]

#: Column names of ``progress.csv``: SB3's logger keys, so the same readers plot both.
PROGRESS_COLUMNS = (
    "time/iterations",
    "time/total_timesteps",
    "time/time_elapsed",
    "time/fps",
    "rollout/ep_rew_mean",
    "rollout/ep_len_mean",
    "rollout/episodes",
    "train/policy_gradient_loss",
    "train/value_loss",
    "train/entropy_loss",
    "train/learning_rate",
)

#: Options that must not change when a run resumes (they define the network, the task, the
#: learners' sharding of the optimizer state).
RESUME_FIXED = ("env_id", "model", "env_kwargs", "value_hidden", "num_learners")


def build_ppo_config(
    env_id: str,
    *,
    num_env_runners: int = 2,
    num_learners: int = 0,
    model: str = DEFAULT_MODEL,
    seed: int = 0,
    options: PPOOptions | None = None,
    **kwargs: Any,
) -> Any:
    """RLlib's ``PPOConfig`` for an lm-gym env with :class:`~agents.rllib.LMRLModule`.

    :param env_id: lm-gym id (passed on as ``"lm_gym:<id>"``).
    :param num_env_runners: sampling processes (0: sample in the driver). With remote runners the
        driver builds no env runner (nor module) of its own.
    :param num_learners: update processes (0: update in the driver; 2 or more: torch DDP, gloo on
        CPU, NCCL on GPUs).
    :param model: causal LM name or folder (every node must be able to load it).
    :param seed: seeds the runners' envs and every process's torch.
    :param options: the other options (default :class:`PPOOptions`).
    :param kwargs: :class:`PPOOptions` fields overriding ``options``.
    :return: the ``PPOConfig``.
    :raises ValueError: batch sizes that do not divide among the learners.
    """
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    opts = dataclasses.replace(options or PPOOptions(), **kwargs)
    learners = max(1, num_learners)
    if opts.train_batch_size % learners:
        raise ValueError(
            f"train_batch_size ({opts.train_batch_size}) must be a multiple of num_learners "
            f"({learners})."
        )
    per_learner = opts.train_batch_size // learners
    if opts.minibatch_size > per_learner:
        raise ValueError(
            f"minibatch_size ({opts.minibatch_size}) is larger than each learner's share of the "
            f"train batch ({per_learner})."
        )
    model_config = {
        "model": model,
        "value_hidden": opts.value_hidden,
        "kv_cache": opts.kv_cache,
        "episode_forward": opts.episode_forward,
    }
    return (
        PPOConfig()
        .environment(qualified_env_id(env_id), env_config=dict(opts.env_kwargs))
        .framework("torch")
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=opts.num_envs_per_env_runner,
            num_cpus_per_env_runner=opts.num_cpus_per_env_runner,
            rollout_fragment_length="auto",
            gym_env_vectorize_mode="sync",
            create_local_env_runner=num_env_runners == 0,
        )
        .learners(
            num_learners=num_learners,
            num_cpus_per_learner=opts.num_cpus_per_learner,
            num_gpus_per_learner=opts.num_gpus_per_learner,
        )
        .training(
            lr=opts.learning_rate,
            train_batch_size_per_learner=per_learner,
            minibatch_size=opts.minibatch_size,
            num_epochs=opts.num_epochs,
            gamma=opts.gamma,
            lambda_=opts.gae_lambda,
            clip_param=opts.clip_range,
            entropy_coeff=opts.ent_coef,
            vf_loss_coeff=opts.vf_coef,
            grad_clip=opts.max_grad_norm,
            grad_clip_by="global_norm",
            use_kl_loss=False,
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=LMRLModule, model_config=model_config))
        .debugging(seed=seed)
        .reporting(metrics_num_episodes_for_smoothing=100)
    )


# -- Ray ------------------------------------------------------------------------------------------


def loopback_ray_init_kwargs(num_cpus: int | None = None) -> dict[str, Any]:
    """``ray.init`` arguments for a local cluster on the loopback address only.

    Ray otherwise advertises the machine's external address. Sets
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and ``RAY_USAGE_STATS_ENABLED=0`` in this process's
    environment when unset (call it before ``ray.init``).

    :param num_cpus: logical CPUs of the local node (default: Ray counts them).
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    return kwargs


def code_runtime_env(
    env_vars: Mapping[str, str] | None = None, pip: Sequence[str] | None = None
) -> dict[str, Any]:
    """A Ray ``runtime_env`` that ships this checkout's ``lm_gym`` and ``agents`` packages to every
    worker (``py_modules``), for clusters whose nodes have the dependencies but not this code.

    :param env_vars: environment variables for the workers; ``LM_GYM_OFFLINE`` and
        ``HF_HUB_OFFLINE`` of this process are passed on when set.
    :param pip: packages every node should install for the job (Ray caches them per node).
    """
    import agents
    import lm_gym

    variables = {k: os.environ[k] for k in ("LM_GYM_OFFLINE", "HF_HUB_OFFLINE") if k in os.environ}
    variables.update(env_vars or {})
    runtime_env: dict[str, Any] = {
        "py_modules": [str(Path(lm_gym.__file__).parent), str(Path(agents.__file__).parent)],
        "env_vars": variables,
    }
    if pip:
        runtime_env["pip"] = list(pip)
    return runtime_env


def synced_state_bytes(algo: Any) -> dict[str, int]:
    """Bytes of one weight sync of a running algorithm, measured on what RLlib sends.

    After every update RLlib takes the module state from the first learner (``inference_only``),
    puts it once into Ray's object store, and each node that hosts env runners fetches it once.

    :param algo: a built RLlib ``Algorithm`` using :class:`~agents.rllib.LMRLModule`.
    :return: ``{"state": bytes of the arrays, "pickled": bytes of the pickled state,
        "tied_dropped": bytes of the tied copies left out (what a stock module would add)}``.
    """
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE

    component = f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{MODULE_ID}"
    state = algo.learner_group.get_state(components=component, inference_only=True)
    module_state = state[COMPONENT_LEARNER][COMPONENT_RL_MODULE][MODULE_ID]
    results = algo.learner_group.foreach_learner(
        lambda learner: _tied_bytes(learner.module[MODULE_ID].unwrapped())
    )
    tied = [int(r.get()) for r in results if r.ok]
    return {
        "state": state_nbytes(module_state),
        "pickled": len(pickle.dumps(module_state, protocol=5)),
        "tied_dropped": tied[0] if tied else 0,
    }


def _tied_bytes(module: Any) -> int:
    state = module.state_dict()
    return sum(state[k].numel() * state[k].element_size() for k in tied_state_keys(module))


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class RLlibRunResult:
    """What :func:`train_rllib` did.

    :param out_dir: the run folder.
    :param checkpoint: the checkpoint folder.
    :param timesteps: env steps sampled in total (over every resume).
    :param iterations: PPO iterations in total.
    :param resumed_from: env steps of the checkpoint this call resumed from (``None``: new run).
    :param mean_reward: mean return of the evaluation episodes (NaN without evaluation).
    :param std_reward: their standard deviation.
    :param eval_episodes: number of evaluation episodes.
    :param train_ep_rew_mean: RLlib's smoothed training return at the end.
    :param wall_time_s: wall time of this call.
    :param steps_per_s: env steps per second of this call, updates and start-up included.
    :param weight_sync_bytes: see :func:`synced_state_bytes`.
    :param history: this call's ``progress.csv`` rows.
    """

    out_dir: Path
    checkpoint: Path
    timesteps: int
    iterations: int
    resumed_from: int | None
    mean_reward: float
    std_reward: float
    eval_episodes: int
    train_ep_rew_mean: float
    wall_time_s: float
    steps_per_s: float
    weight_sync_bytes: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def train_rllib(
    env_id: str,
    *,
    num_env_runners: int = 2,
    num_learners: int = 0,
    address: str | None = None,
    steps: int = 10_000,
    seed: int = 0,
    out_dir: str | os.PathLike[str] = "runs/rllib-ppo",
    model: str = DEFAULT_MODEL,
    resume: bool = True,
    runtime_env: Mapping[str, Any] | None = None,
    ray_init_kwargs: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, float]], bool | None] | None = None,
    **options: Any,
) -> RLlibRunResult:
    """Train PPO with :class:`~agents.rllib.LMRLModule` on an lm-gym env with Ray RLlib, resuming
    from the run folder's checkpoint when there is one.

    Ray: when Ray is already initialised in this process, that cluster is used as is. Otherwise
    ``address=None`` starts a local cluster on the loopback address (stopped at the end; its
    logical CPUs are at least what the runners and learners reserve), and an
    address (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``) joins an existing cluster, with
    ``runtime_env`` (see :func:`code_runtime_env`) applied to the job.

    Run folder ``out_dir``: ``config.json`` (the options of the run), ``progress.csv`` (one row
    per PPO iteration, SB3's column names), ``checkpoint/`` (the algorithm: weights, optimizer,
    connector states, counters; rewritten every ``checkpoint_every`` iterations and at the end,
    through a temporary folder so that an interruption leaves the previous one intact), and
    ``metrics.json`` (the final evaluation with RL Zoo's fields, throughput, bytes per weight
    sync). Calling again with the same folder resumes from the checkpoint and trains until
    ``steps`` env steps in total; :data:`RESUME_FIXED` options must be unchanged.

    :param env_id: lm-gym id (``"LMCountUp-v0"``).
    :param num_env_runners: sampling processes.
    :param num_learners: update processes; 2 or more train with torch DDP.
    :param address: Ray cluster address, or ``None`` for a local loopback cluster.
    :param steps: total env steps of the run (RLlib samples whole train batches: the last one may
        overshoot by less than ``train_batch_size``).
    :param seed: seed of the envs and of torch in every process.
    :param out_dir: the run folder.
    :param model: causal LM name or folder (every node must be able to load it).
    :param resume: resume from ``out_dir/checkpoint`` when it exists (``False``: start over,
        replacing the folder's checkpoint and progress).
    :param runtime_env: Ray runtime environment when this call connects to or starts Ray.
    :param ray_init_kwargs: further ``ray.init`` arguments when this call starts Ray.
    :param callback: called with each iteration's ``progress.csv`` row; returning ``False`` stops
        after a checkpoint.
    :param options: :class:`PPOOptions` fields (``learning_rate``, ``train_batch_size``, ...).
    :return: the :class:`RLlibRunResult`.
    :raises TypeError: an unknown option.
    :raises ValueError: a resumed run whose fixed options changed, or bad batch sizes.
    """
    import ray

    opts = PPOOptions.from_kwargs(**options)
    out = Path(out_dir)
    record = {
        "agent": "rllib-ppo",
        "env_id": env_id,
        "model": model,
        "num_env_runners": num_env_runners,
        "num_learners": num_learners,
        "steps": steps,
        "seed": seed,
        **dataclasses.asdict(opts),
    }
    checkpoint = out / CHECKPOINT_DIR
    resuming = _prepare_run_folder(out, record, resume)
    config = build_ppo_config(
        env_id,
        num_env_runners=num_env_runners,
        num_learners=num_learners,
        model=model,
        seed=seed,
        options=opts,
    )
    started_ray = False
    if not ray.is_initialized():
        init: dict[str, Any] = {}
        if address is None:  # enough logical CPUs for every actor, even on a small machine
            needed = (
                num_env_runners * opts.num_cpus_per_env_runner
                + num_learners * opts.num_cpus_per_learner
            )
            init = loopback_ray_init_kwargs(num_cpus=max(os.cpu_count() or 1, math.ceil(needed)))
        init.update(ray_init_kwargs or {})
        if address is not None:
            init["address"] = address
        if runtime_env is not None:
            init["runtime_env"] = dict(runtime_env)
        ray.init(**init)
        started_ray = True

    algo = None
    t0 = time.perf_counter()
    try:
        algo = config.build_algo()
        resumed_from = None
        if resuming:
            algo.restore_from_path(str(checkpoint.resolve()))
            resumed_from = int(_lifetime_steps(algo))
            _trim_progress(out / "progress.csv", int(algo.iteration))
        sync_bytes = synced_state_bytes(algo)
        history = _train_loop(algo, out, steps, opts.checkpoint_every, callback, t0)
        timesteps = int(_lifetime_steps(algo))
        iterations = int(algo.iteration)
    finally:
        if algo is not None:
            algo.stop()
        if started_ray:
            ray.shutdown()
    wall = time.perf_counter() - t0

    rewards: list[float] = []
    if opts.eval_episodes > 0:
        net = load_policy(out)
        rewards = evaluate_policy(
            net,
            env_id,
            episodes=opts.eval_episodes,
            seed=opts.eval_seed,
            env_kwargs=opts.env_kwargs,
        )
    run = RLlibRunResult(
        out_dir=out,
        checkpoint=checkpoint,
        timesteps=timesteps,
        iterations=iterations,
        resumed_from=resumed_from,
        mean_reward=float(np.mean(rewards)) if rewards else math.nan,
        std_reward=float(np.std(rewards)) if rewards else math.nan,
        eval_episodes=len(rewards),
        train_ep_rew_mean=history[-1]["rollout/ep_rew_mean"] if history else math.nan,
        wall_time_s=wall,
        steps_per_s=(timesteps - (resumed_from or 0)) / wall if wall > 0 else math.nan,
        weight_sync_bytes=sync_bytes,
        history=history,
    )
    _write_metrics(run, env_id, num_env_runners, num_learners)
    return run


def _prepare_run_folder(out: Path, record: dict[str, Any], resume: bool) -> bool:
    """Create the folder, check a resumed run's fixed options, write ``config.json``.

    :return: whether the run resumes from a checkpoint.
    """
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, config_path = out / CHECKPOINT_DIR, out / "config.json"
    resuming = resume and checkpoint.is_dir()
    if resuming and config_path.exists():
        previous = json.loads(config_path.read_text())
        changed = [k for k in RESUME_FIXED if previous.get(k) != record[k]]
        if changed:
            raise ValueError(
                f"Cannot resume {out}: {', '.join(changed)} differ from the checkpoint's run "
                f"({', '.join(f'{k}={previous.get(k)!r}' for k in changed)}). Use another out_dir "
                "or resume=False."
            )
    if not resuming:
        shutil.rmtree(checkpoint, ignore_errors=True)
        (out / "progress.csv").unlink(missing_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)
    config_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return resuming


def _train_loop(
    algo: Any,
    out: Path,
    steps: int,
    checkpoint_every: int,
    callback: Callable[[dict[str, float]], bool | None] | None,
    t0: float,
) -> list[dict[str, float]]:
    """``algo.train()`` until ``steps`` env steps, a ``progress.csv`` row per iteration."""
    progress = out / "progress.csv"
    start = timesteps = int(_lifetime_steps(algo))
    history: list[dict[str, float]] = []
    new_file = not progress.exists()
    with progress.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PROGRESS_COLUMNS)
        if new_file:
            writer.writeheader()
        while timesteps < steps:
            result = algo.train()
            timesteps = int(_get(result, "num_env_steps_sampled_lifetime", default=timesteps))
            row = _progress_row(result, time.perf_counter() - t0, timesteps - start)
            history.append(row)
            writer.writerow(row)
            f.flush()
            due = timesteps >= steps or algo.iteration % max(1, checkpoint_every) == 0
            if due:  # before the callback, which may copy the checkpoint (the zoo's runs do)
                _save_checkpoint(algo, out / CHECKPOINT_DIR)
            if callback is not None and callback(row) is False:
                if not due:
                    _save_checkpoint(algo, out / CHECKPOINT_DIR)
                break
    if not (out / CHECKPOINT_DIR).is_dir():
        _save_checkpoint(algo, out / CHECKPOINT_DIR)
    return history


def _lifetime_steps(algo: Any) -> float:
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    return float(algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))


def _get(result: Mapping[str, Any], *path: str, default: float = math.nan) -> float:
    node: Any = result
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    try:
        return float(node)
    except (TypeError, ValueError):
        return default


def _progress_row(result: Mapping[str, Any], elapsed: float, steps: float) -> dict[str, float]:
    learner = ("learners", MODULE_ID)
    return {
        "time/iterations": _get(result, "training_iteration"),
        "time/total_timesteps": _get(result, "num_env_steps_sampled_lifetime"),
        "time/time_elapsed": elapsed,
        "time/fps": steps / elapsed if elapsed > 0 else math.nan,
        "rollout/ep_rew_mean": _get(result, "env_runners", "episode_return_mean"),
        "rollout/ep_len_mean": _get(result, "env_runners", "episode_len_mean"),
        "rollout/episodes": _get(result, "env_runners", "num_episodes_lifetime"),
        "train/policy_gradient_loss": _get(result, *learner, "policy_loss"),
        "train/value_loss": _get(result, *learner, "vf_loss"),
        "train/entropy_loss": -_get(result, *learner, "entropy"),
        "train/learning_rate": _get(result, *learner, "default_optimizer_learning_rate"),
    }


def _trim_progress(path: Path, max_iteration: int) -> None:
    """Drop the rows written after the checkpoint being resumed (those iterations are redone)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if float(r["time/iterations"]) <= max_iteration]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PROGRESS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _save_checkpoint(algo: Any, checkpoint: Path) -> None:
    """Write the checkpoint beside the old one, then swap: an interruption keeps one intact."""
    write_folder_atomically(
        checkpoint, lambda tmp: algo.save_to_path(str(tmp.resolve())), replace=True
    )


def _write_metrics(run: RLlibRunResult, env_id: str, runners: int, learners: int) -> None:
    metrics = {
        "algo": "rllib-ppo",
        "env_id": env_id,
        "mean_reward": run.mean_reward,
        "std_reward": run.std_reward,
        "n_timesteps": run.timesteps,
        "eval_episodes": run.eval_episodes,
        "train_ep_rew_mean": run.train_ep_rew_mean,
        "iterations": run.iterations,
        "wall_time_s": run.wall_time_s,
        "steps_per_s": run.steps_per_s,
        "resumed_from": run.resumed_from,
        "num_env_runners": runners,
        "num_learners": learners,
        "weight_sync_bytes": run.weight_sync_bytes,
    }
    (run.out_dir / "metrics.json").write_text(
        json.dumps(_json_safe(metrics), indent=2, sort_keys=True) + "\n"
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    return value
