"""Training runs on disk: a run folder with config, logs, checkpoints and resume.

A run folder (``lm-gym train ... --out DIR``) holds::

    DIR/config.yaml              the run configuration (reproduces the run with --config)
    DIR/train.monitor.csv        every training episode: reward, length, time (the learning curve)
    DIR/tb/                      TensorBoard logs (the agent's own metrics and episode rewards)
    DIR/progress.csv             the agent's own metrics (agents with set_logger)
    DIR/checkpoints/step_N/      periodic checkpoints: agent/ (what agent.save wrote), state.json
                                 (step count; the adaptive KL coefficient of a KL-penalised agent)
    DIR/final/                   the trained agent, same layout
    DIR/warm_start/              the supervised warm-start model, when the run asked for one

:func:`train_run` trains (or resumes) a run; :func:`load_run` rebuilds the agent of a run folder
for evaluation or generation. Both work for every agent of the registry, plug-ins included: the
step count comes from ``agent.num_timesteps`` when the agent keeps one, and from the training env's
``Monitor`` otherwise. A resumed run with a KL penalty (``kl_coef``/``kl_target``) continues with the
adaptive coefficient of its checkpoint, and its KL reference stays the run's starting model (not
the checkpoint's policy).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.base import load_agent
from agents.hyperparams import RunConfig
from agents.registry import make_agent

__all__ = ["TrainOutcome", "latest_checkpoint", "load_run", "make_run_env", "train_run"]

CONFIG_FILE = "config.yaml"
STATE_FILE = "state.json"


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (exists already, no checkpoint to resume, ...)."""


@dataclass
class TrainOutcome:
    """What :func:`train_run` did.

    :param out_dir: the run folder.
    :param num_timesteps: env steps trained in total (resumed ones included).
    :param resumed_from: the step of the checkpoint the run resumed from, or ``None``.
    :param train_time: seconds of this call's training.
    :param episode_rewards: rewards of the training episodes of this call.
    :param interrupted: whether training stopped on ``KeyboardInterrupt``.
    :param reported_reward: the mean training episode reward the agent itself last reported, for
        agents whose episodes run elsewhere (``rllib-ppo``: in Ray's env runners, so
        ``episode_rewards`` stays empty): its callbacks' ``row["rollout/ep_rew_mean"]``.
    """

    out_dir: Path
    num_timesteps: int
    resumed_from: int | None
    train_time: float
    episode_rewards: list[float]
    interrupted: bool = False
    reported_reward: float | None = None


def make_run_env(config: RunConfig, split: str | None = None) -> gym.Env:
    """The env of a run config (its ``env_kwargs``), on ``split`` when given.

    :param config: the run config.
    :param split: the data split (``None``: the config's).
    """
    import lm_gym  # noqa: F401  (registers the ids)

    kwargs = dict(config.env_kwargs)
    if split is not None:
        kwargs["split"] = split
    return gym.make(config.env_id, **kwargs)


def _hyperparams(config: RunConfig, out_dir: Path | None) -> dict[str, Any]:
    """The factory options, with a warm start saved inside the run folder."""
    options = dict(config.hyperparams)
    warm = options.get("warm_start")
    if out_dir is not None and warm:
        warm = {} if warm is True else dict(warm)
        warm.setdefault("out_dir", str(out_dir / "warm_start"))
        options["warm_start"] = warm
    return options


def build_agent(config: RunConfig, env: gym.Env, out_dir: Path | None = None) -> Any:
    """The agent of a run config, on ``env``.

    :param config: the run config.
    :param env: the env to act on.
    :param out_dir: the run folder (a warm start is saved in it).
    """
    return make_agent(config.agent, env, seed=config.seed, **_hyperparams(config, out_dir))


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    folder = out_dir / "checkpoints"
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            if child.name.startswith("step_") and (child / STATE_FILE).exists():
                found.append((int(child.name[5:]), child))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> tuple[int, Path] | None:
    """``(step, folder)`` of the newest complete checkpoint of a run, or ``None``."""
    found = _checkpoints(Path(out_dir))
    return found[-1] if found else None


def _kl_wrapper(agent: Any) -> Any:
    """The agent's :class:`agents.kl.KLPenaltyVecEnv`, if any (none exists unless ``agents.kl``
    was imported, so other agents do not pay for importing it)."""
    kl = sys.modules.get("agents.kl")
    return None if kl is None else kl.kl_wrapper_of(agent)


def _save_checkpoint(agent: Any, folder: Path, steps: int, extra: dict[str, Any]) -> None:
    """Write ``agent.save`` and the state file atomically (a tmp folder renamed at the end)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    agent.save(tmp / "agent")
    state = {"num_timesteps": int(steps), "time": time.time(), **extra}
    wrapper = _kl_wrapper(agent)
    if wrapper is not None:
        state["kl_controller"] = wrapper.state_dict()
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


class _Progress:
    """The training callback of a run: progress bar, checkpoints, episode rewards to TensorBoard."""

    def __init__(
        self,
        agent: Any,
        monitor: Any,
        out_dir: Path,
        start: int,
        target: int,
        checkpoint_freq: int,
        keep_checkpoints: int,
        progress: bool,
    ) -> None:
        from tqdm.auto import tqdm

        self.agent = agent
        self.monitor = monitor
        self.out_dir = out_dir
        self.start = start
        self.target = target
        self.freq = checkpoint_freq
        self.keep = keep_checkpoints
        self.agent_start = self._agent_steps()
        self.monitor_start = monitor.get_total_steps()
        self.next_checkpoint = (start // self.freq + 1) * self.freq if self.freq > 0 else None
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=target,
            initial=start,
            desc="train",
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
            mininterval=0.1 if tty else 10.0,  # a log file gets a line every 10 s
            file=sys.stderr,
        )
        self.episodes_logged = len(monitor.get_episode_rewards())
        self.reported_reward: float | None = None
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tb" / "episodes"))
        except ImportError:  # tensorboard missing: the CSV files remain
            self.writer = None
        self.steps = start

    def _agent_steps(self) -> int | None:
        steps = getattr(self.agent, "num_timesteps", None)
        return int(steps) if isinstance(steps, (int, np.integer)) else None

    def current(self) -> int:
        """Env steps trained so far (resumed ones included)."""
        agent_steps = self._agent_steps()
        if agent_steps is not None and self.agent_start is not None:
            return self.start + agent_steps - self.agent_start
        return self.start + self.monitor.get_total_steps() - self.monitor_start

    def __call__(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> bool:
        self.steps = self.current()
        self.bar.update(max(0, min(self.steps, self.target) - self.bar.n))
        rewards = self.monitor.get_episode_rewards()
        if len(rewards) > self.episodes_logged:
            lengths = self.monitor.get_episode_lengths()
            for r, n in zip(rewards[self.episodes_logged :], lengths[self.episodes_logged :]):
                if self.writer is not None:
                    self.writer.add_scalar("episode/reward", r, self.steps)
                    self.writer.add_scalar("episode/length", n, self.steps)
            recent = rewards[-20:]
            self.bar.set_postfix(reward=f"{np.mean(recent):.3g}", refresh=False)
            self.episodes_logged = len(rewards)
        row = locals_.get("row")  # agents whose episodes run elsewhere report their own mean
        reported = row.get("rollout/ep_rew_mean") if isinstance(row, dict) else None
        if isinstance(reported, (int, float)) and np.isfinite(reported):
            self.reported_reward = float(reported)
            self.bar.set_postfix(reward=f"{self.reported_reward:.3g}", refresh=False)
            if self.writer is not None:
                self.writer.add_scalar("episode/reward_mean", self.reported_reward, self.steps)
        if self.next_checkpoint is not None and self.steps >= self.next_checkpoint:
            self.checkpoint()
            while self.next_checkpoint <= self.steps:
                self.next_checkpoint += self.freq
        return True

    def checkpoint(self) -> None:
        """Save a checkpoint at the current step and drop the oldest beyond ``keep``."""
        steps = self.current()
        folder = self.out_dir / "checkpoints" / f"step_{steps:09d}"
        _save_checkpoint(self.agent, folder, steps, {"episodes": self.episodes_logged})
        for _, old in _checkpoints(self.out_dir)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        """Close the bar and the TensorBoard writer."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _configure_logger(agent: Any, out_dir: Path, verbose: int) -> None:
    if not hasattr(agent, "set_logger"):
        return
    from stable_baselines3.common.logger import configure

    formats = ["csv", "tensorboard"] + (["stdout"] if verbose else [])
    try:
        logger = configure(str(out_dir / "tb"), formats)
    except (ImportError, AssertionError):  # tensorboard missing
        logger = configure(str(out_dir / "tb"), ["csv"])
    agent.set_logger(logger)


def train_run(
    config: RunConfig | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    n_timesteps: int | None = None,
    progress: bool = True,
    keep_checkpoints: int = 3,
    overwrite: bool = False,
    callback: Any = None,
) -> TrainOutcome:
    """Train an agent as a run folder (see the module docstring), or resume one.

    :param config: the run config; ``None`` with ``resume`` (read from the folder).
    :param out_dir: the run folder.
    :param resume: continue from the newest checkpoint (at most one checkpoint interval is lost).
    :param n_timesteps: with ``resume``: a new total budget (default: the config's).
    :param progress: show a progress bar.
    :param keep_checkpoints: checkpoints kept (the oldest are removed).
    :param overwrite: reuse a folder that already holds a run (its files are replaced).
    :param callback: an extra ``callback(locals_, globals_)`` called with the run's own.
    :return: what was done.
    :raises RunFolderError: the folder holds a run and neither ``resume`` nor ``overwrite`` is
        set, or ``resume`` finds no run.
    """
    from stable_baselines3.common.monitor import Monitor

    out = Path(out_dir)
    config_path = out / CONFIG_FILE
    resumed_from: int | None = None
    if resume:
        if not config_path.exists():
            raise RunFolderError(f"{out} holds no run to resume ({CONFIG_FILE} missing).")
        saved = RunConfig.load(config_path)
        if config is not None and (config.env_id, config.agent) != (saved.env_id, saved.agent):
            raise RunFolderError(
                f"{out} is a run of {saved.agent} on {saved.env_id}, not {config.agent} on "
                f"{config.env_id}."
            )
        config = saved
        if n_timesteps is not None and n_timesteps != config.n_timesteps:
            config.n_timesteps = int(n_timesteps)
            config.save(config_path)
    else:
        if config is None:
            raise ValueError("train_run needs a config (or resume=True).")
        if config_path.exists() and not overwrite:
            raise RunFolderError(
                f"{out} already holds a run; resume it with --resume, or choose another --out."
            )
        if overwrite:
            for name in ("checkpoints", "final", "tb"):
                shutil.rmtree(out / name, ignore_errors=True)
            (out / "train.monitor.csv").unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        config.save(config_path)

    env = Monitor(make_run_env(config), str(out / "train"), override_existing=not resume)
    agent = build_agent(config, env, out)
    start = 0
    if resume:
        found = latest_checkpoint(out)
        if found is None and (out / "final" / STATE_FILE).exists():
            found = (
                json.loads((out / "final" / STATE_FILE).read_text())["num_timesteps"],
                out / "final",
            )
        if found is not None:
            start, folder = found
            wrapper = _kl_wrapper(agent)
            if wrapper is not None and wrapper.reference is None and hasattr(agent, "policy"):
                wrapper.attach(agent.policy)  # the KL reference: the starting model, as at first
            agent = load_agent(agent, folder / "agent", env=env)
            resumed_from = start
            saved_state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            wrapper = _kl_wrapper(agent)
            if wrapper is not None and "kl_controller" in saved_state:
                wrapper.load_state_dict(saved_state["kl_controller"])
    _configure_logger(agent, out, verbose=int(config.hyperparams.get("verbose", 0) or 0))
    tracker = _Progress(
        agent,
        env,
        out,
        start,
        config.n_timesteps,
        config.checkpoint_freq,
        keep_checkpoints,
        progress,
    )

    def run_callback(locals_: dict[str, Any], globals_: dict[str, Any]) -> bool:
        go_on = tracker(locals_, globals_)
        if callback is not None and callback(locals_, globals_) is False:
            return False
        return go_on

    t0 = time.perf_counter()
    interrupted = False
    episodes_before = len(env.get_episode_rewards())
    try:
        remaining = config.n_timesteps - start
        if remaining > 0:
            agent.learn(remaining, callback=run_callback)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        tracker.close()
    train_time = time.perf_counter() - t0
    steps = tracker.current()
    if not interrupted:
        tracker.checkpoint()
        _save_checkpoint(agent, out / "final", steps, {"episodes": len(env.get_episode_rewards())})
    env.close()
    return TrainOutcome(
        out,
        steps,
        resumed_from,
        train_time,
        [float(r) for r in env.get_episode_rewards()[episodes_before:]],
        interrupted,
        tracker.reported_reward,
    )


def load_run(
    out_dir: str | Path,
    *,
    split: str | None = None,
    checkpoint: str | Path | None = None,
) -> tuple[RunConfig, Any, gym.Env]:
    """Rebuild the trained agent of a run folder on a fresh env.

    :param out_dir: the run folder.
    :param split: the data split of the env (``None``: the config's).
    :param checkpoint: a checkpoint folder (default: ``final/``, else the newest checkpoint).
    :return: ``(config, agent, env)``.
    :raises RunFolderError: no run or no saved agent in the folder.
    """
    out = Path(out_dir)
    if not (out / CONFIG_FILE).exists():
        raise RunFolderError(f"{out} holds no run ({CONFIG_FILE} missing).")
    config = RunConfig.load(out / CONFIG_FILE)
    if checkpoint is None:
        if (out / "final" / STATE_FILE).exists():
            checkpoint = out / "final"
        else:
            found = latest_checkpoint(out)
            if found is None:
                raise RunFolderError(f"{out} has no trained agent yet (no final/ or checkpoint).")
            checkpoint = found[1]
    env = make_run_env(config, split)
    agent = build_agent(config, env, out)
    agent = load_agent(agent, Path(checkpoint) / "agent", env=env)
    return config, agent, env
