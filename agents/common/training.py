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

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.common.base import load_agent
from agents.common.config import RunConfig
from agents.registry import agent_spec, make_agent
from lm_gym.models import write_folder_atomically

__all__ = [
    "RunFolderError",
    "RunSetupError",
    "TrainOutcome",
    "absolute_paths",
    "latest_checkpoint",
    "load_run",
    "make_run_env",
    "train_run",
]

CONFIG_FILE = "config.yaml"
STATE_FILE = "state.json"


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (exists already, no checkpoint to resume, ...)."""


class RunSetupError(ValueError):
    """The set-up of a run fails (the env, the agent, one of its options, the model, the device or
    the folder): nothing was written to the run folder. The original error is its ``__cause__``."""


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
    :param stop_signal: the signal that interrupted training (``signal.SIGINT`` or
        ``signal.SIGTERM``), ``None`` for a ``KeyboardInterrupt`` raised otherwise or no interrupt.
    """

    out_dir: Path
    num_timesteps: int
    resumed_from: int | None
    train_time: float
    episode_rewards: list[float]
    interrupted: bool = False
    reported_reward: float | None = None
    stop_signal: int | None = None


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
    options = _hyperparams(config, out_dir)
    names = agent_spec(config.agent).option_names()
    if names is None or "seed" in names:  # a plug-in factory need not take a seed
        options["seed"] = config.seed
    return make_agent(config.agent, env, **options)


_STEP_FOLDER = re.compile(r"step_(\d+)")


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    folder = out_dir / "checkpoints"
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            match = _STEP_FOLDER.fullmatch(child.name)  # not a half-written ``step_N.tmp``
            if match and (child / STATE_FILE).exists():
                found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> tuple[int, Path] | None:
    """``(step, folder)`` of the newest complete checkpoint of a run, or ``None``."""
    found = _checkpoints(Path(out_dir))
    return found[-1] if found else None


def _resume_candidates(out: Path) -> list[tuple[int, Path]]:
    """The run's saved agents, newest first: the checkpoints, and ``final/`` (after the
    checkpoints of its step)."""
    found = [(step, folder, 1) for step, folder in _checkpoints(out)]
    final = out / "final"
    if (final / STATE_FILE).exists():
        try:
            step = int(
                json.loads((final / STATE_FILE).read_text(encoding="utf-8"))["num_timesteps"]
            )
        except (ValueError, KeyError, TypeError, OSError):
            step = -1  # an unreadable state: tried last (and reported if it fails)
        found.append((step, final, 0))
    found.sort(key=lambda item: (item[0], item[2]), reverse=True)
    return [(step, folder) for step, folder, _ in found]


def _kl_penalty(agent: Any) -> Any:
    """The agent's KL penalty (:class:`agents.algorithms.kl.KLPenaltyCallback` or
    :class:`agents.algorithms.kl.KLPenaltyVecEnv`), whose coefficient checkpoints keep; ``None`` if
    it has none. None exists unless ``agents.algorithms.kl`` was imported, so agents without one
    never import it."""
    kl = sys.modules.get("agents.algorithms.kl")
    return None if kl is None else kl.kl_penalty_of(agent)


class _Signals:
    """SIGINT and SIGTERM during training: both stop it as ``KeyboardInterrupt`` does, but never in
    the middle of a checkpoint write (the signal waits until the write is complete)."""

    def __init__(self) -> None:
        self.critical = 0
        self.pending: int | None = None
        self.received: int | None = None

    def handler(self, signum: int, frame: Any) -> None:
        """The signal handler: raise ``KeyboardInterrupt`` now, or after the current write."""
        self.received = signum
        if self.critical:
            self.pending = signum
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        """Handle SIGINT and SIGTERM while the block runs (main thread only), then restore."""
        self.critical, self.pending, self.received = 0, None, None
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self.handler)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a signal does not cut: the interrupt comes at its end."""
        self.critical += 1
        try:
            yield
        finally:
            self.critical -= 1
            if not self.critical and self.pending is not None:
                self.pending = None
                raise KeyboardInterrupt


#: the signal guard of the running :func:`train_run` (a no-op one outside it)
_SIGNALS = _Signals()


def _save_checkpoint(agent: Any, folder: Path, steps: int, extra: dict[str, Any]) -> None:
    """Write ``agent.save`` and the state file atomically (a tmp folder renamed at the end); a
    SIGINT or SIGTERM waits until the folder is complete."""
    state = {"num_timesteps": int(steps), "time": time.time(), **extra}
    wrapper = _kl_penalty(agent)
    if wrapper is not None:
        state["kl_controller"] = wrapper.state_dict()

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        agent.save(tmp / "agent")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")

    with _SIGNALS.deferred():  # final/ is replaced: the old one stays whole until the new one is in
        write_folder_atomically(folder, write, replace=True)


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
        rows_start: int = 0,
    ) -> None:
        from tqdm.auto import tqdm

        self.agent = agent
        self.monitor = monitor
        self.out_dir = out_dir
        self.start = start
        self.target = target
        self.freq = checkpoint_freq
        self.keep = keep_checkpoints
        self.rows_start = rows_start
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
        self.episodes_start = self.episodes_logged  # episodes before the monitor file was open
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
        _save_checkpoint(self.agent, folder, steps, self.state())
        for _, old in _checkpoints(self.out_dir)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def state(self) -> dict[str, Any]:
        """What a checkpoint's ``state.json`` records besides the step: the episodes of this call
        and the rows of ``train.monitor.csv`` (a resume cuts the file back to them)."""
        episodes = len(self.monitor.get_episode_rewards())
        return {
            "episodes": episodes,
            "monitor_rows": self.rows_start + episodes - self.episodes_start,
        }

    def close(self) -> None:
        """Close the bar and the TensorBoard writer."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _appending_csv(filename: str) -> Any:
    """SB3's CSV log format, appending to an existing ``progress.csv`` (a resumed run) instead of
    rewriting it: the columns already in its header are kept, new ones are added as SB3 does.

    :param filename: the CSV file.
    """
    from stable_baselines3.common.logger import CSVOutputFormat

    class AppendingCSV(CSVOutputFormat):
        def __init__(self, filename: str) -> None:
            exists = os.path.exists(filename) and os.path.getsize(filename) > 0
            # r+: SB3 rewrites the file from its start when a column is added (w+ would empty it)
            self.file = open(filename, "r+" if exists else "w+")  # noqa: SIM115 (close())
            header = self.file.readline().rstrip("\n") if exists else ""
            self.keys: list[str] = header.split(",") if header else []
            self.file.seek(0, os.SEEK_END)
            self.separator = ","
            self.quotechar = '"'

    return AppendingCSV(filename)


def _configure_logger(agent: Any, out_dir: Path, verbose: int) -> None:
    if not hasattr(agent, "set_logger"):
        return
    from stable_baselines3.common.logger import Logger, make_output_format

    folder = out_dir / "tb"
    folder.mkdir(parents=True, exist_ok=True)
    formats: list[Any] = [_appending_csv(str(folder / "progress.csv"))]
    with contextlib.suppress(ImportError, AssertionError):  # no tensorboard: the CSV remains
        formats.append(make_output_format("tensorboard", str(folder)))
    if verbose:
        formats.append(make_output_format("stdout", str(folder)))
    agent.set_logger(Logger(str(folder), formats))


#: env options and agent options that may name a local file or folder (stored absolute)
_PATH_OPTIONS = ("dataset", "tokenizer", "model", "path", "data_files")


def _absolute(value: Any) -> Any:
    """``value`` made absolute when it is a relative path to an existing file or folder."""
    if isinstance(value, str) and value and not os.path.isabs(value):
        path = Path(value).expanduser()
        if path.exists():
            return str(path.resolve())
    return value


def absolute_paths(config: RunConfig) -> RunConfig:
    """A copy of ``config`` whose relative paths to existing files (a data set, a tokenizer or
    model folder, also inside ``dataset_kwargs``) are absolute, so that ``config.yaml`` works from
    any folder.

    :param config: the run config.
    """

    def fix(options: dict[str, Any]) -> dict[str, Any]:
        out = dict(options)
        for key in _PATH_OPTIONS:
            if key in out:
                out[key] = _absolute(out[key])
        reward = out.get("reward")
        if isinstance(reward, str) and ".py:" in reward:  # a reward function's file
            file, _, name = reward.rpartition(":")
            out["reward"] = f"{_absolute(file)}:{name}"
        for key in ("dataset_kwargs", "policy_kwargs"):
            if isinstance(out.get(key), dict):
                out[key] = fix(out[key])
        return out

    return replace(config, env_kwargs=fix(config.env_kwargs), hyperparams=fix(config.hyperparams))


def check_out_dir(out: Path) -> None:
    """Refuse a run folder that cannot be written: a file, or under a folder without write access.

    :param out: the run folder.
    :raises RunFolderError: it cannot be used.
    """
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder.")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RunFolderError(f"--out {out}: {parent} is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunFolderError(f"--out {out}: {parent} is not writable.")


def _option_defaults(agent: str) -> dict[str, Any]:
    """The default of each agent option that has one (the factory's signature)."""
    params = agent_spec(agent).parameters() or {}
    return {name: p.default for name, p in params.items() if p.default is not p.empty}


def check_option_types(config: RunConfig) -> None:
    """Refuse an agent option given as text where its default is a number (``n_steps=abc``),
    naming the option, before the agent is built.

    :param config: the run config.
    :raises RunSetupError: such an option.
    """
    defaults = _option_defaults(config.agent)
    for key, value in config.hyperparams.items():
        default = defaults.get(key)
        number = isinstance(default, (int, float)) and not isinstance(default, bool)
        if number and isinstance(value, str):
            raise RunSetupError(
                f"the agent option {key}={value!r} is not a number (its default: {default})."
            )


def _setup_failed(exc: BaseException, what: str) -> RunSetupError:
    first = " ".join(str(exc).split()) or type(exc).__name__
    return RunSetupError(f"{what}: {type(exc).__name__}: {first}")


def _monitor_file(out: Path) -> Path:
    return out / "train.monitor.csv"


def _cut_monitor(path: Path, rows: int | None) -> bool:
    """Cut ``train.monitor.csv`` back to its first ``rows`` episodes (those of the checkpoint a run
    resumes from: later ones are trained again); ``None`` keeps every row.

    :return: whether the file has its two header lines (else it is to be written anew).
    """
    if not path.exists():
        return False
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < 2 or not lines[0].startswith("#"):
        return False
    body = [line for line in lines[2:] if line.endswith("\n")]  # a torn last line is dropped
    if rows is not None:
        body = body[:rows]
    path.write_text("".join(lines[:2] + body), encoding="utf-8")
    return True


def _start_monitor_file(monitor: Any, path: Path, append: bool) -> None:
    """Let a ``Monitor`` built without a file write ``path`` from now on (after the set-up has been
    checked, so that a failed set-up writes nothing)."""
    from stable_baselines3.common.monitor import ResultsWriter

    spec = getattr(monitor.env, "spec", None)
    monitor.results_writer = ResultsWriter(
        str(path),
        header={"t_start": monitor.t_start, "env_id": str(spec.id if spec else None)},
        extra_keys=monitor.reset_keywords + monitor.info_keywords,
        override_existing=not append,
    )


def _load_newest(
    agent: Any, env: Any, out: Path, checkpoint: str | Path | None
) -> tuple[Any, int, Path | None, dict[str, Any]]:
    """Load the newest saved agent of a run that loads (or ``checkpoint``), saying so when a newer
    one is skipped.

    :return: ``(agent, step, folder, state)``; ``folder`` is ``None`` when there is none (step 0).
    :raises RunFolderError: ``checkpoint`` does not load, or saved agents exist and none loads.
    """
    if checkpoint is not None:
        folder = Path(checkpoint)
        if not (folder / STATE_FILE).exists():
            raise RunFolderError(
                f"--checkpoint {folder} is not a checkpoint ({STATE_FILE} missing)."
            )
        candidates = [(-1, folder)]
    else:
        candidates = _resume_candidates(out)
    failures: list[str] = []
    wrapper = _kl_penalty(agent)
    if wrapper is not None and wrapper.reference is None and hasattr(agent, "policy"):
        wrapper.attach(agent.policy)  # the KL reference: the starting model, as at first
    for _, folder in candidates:
        try:
            state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            step = int(state["num_timesteps"])
            loaded = load_agent(agent, folder / "agent", env=env)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a damaged checkpoint: try the one before
            failures.append(f"{folder.name} ({type(exc).__name__}: {' '.join(str(exc).split())})")
            if checkpoint is not None:
                raise RunFolderError(
                    f"--checkpoint {folder} does not load: {failures[-1]}"
                ) from exc
            continue
        if failures:
            print(
                f"lm-gym: the newer checkpoint(s) {', '.join(failures)} do not load; resuming "
                f"from {folder} (step {step}).",
                file=sys.stderr,
            )
        return loaded, step, folder, state
    if failures:
        raise RunFolderError(
            f"{out}: no checkpoint loads ({'; '.join(failures)}); start again with --overwrite."
        )
    return agent, 0, None, {}


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
    checkpoint: str | Path | None = None,
) -> TrainOutcome:
    """Train an agent as a run folder (see the module docstring), or resume one.

    The whole set-up (the folder, the env, the agent with its options, model and device) is built
    before anything is written: a set-up that fails leaves the folder as it was. SIGINT and
    SIGTERM stop training as ``KeyboardInterrupt`` does (never in the middle of a checkpoint
    write); the run then resumes from its newest checkpoint.

    :param config: the run config; ``None`` with ``resume`` (read from the folder).
    :param out_dir: the run folder.
    :param resume: continue from the newest checkpoint that loads (at most one checkpoint interval
        is lost; a damaged newer checkpoint is skipped with a message).
    :param n_timesteps: with ``resume``: a new total budget (default: the config's).
    :param progress: show a progress bar.
    :param keep_checkpoints: checkpoints kept (the oldest are removed).
    :param overwrite: reuse a folder that already holds a run (its files are replaced).
    :param callback: an extra ``callback(locals_, globals_)`` called with the run's own.
    :param checkpoint: with ``resume``: the checkpoint folder to continue from (default: the newest
        that loads).
    :return: what was done.
    :raises RunFolderError: the folder holds a run and neither ``resume`` nor ``overwrite`` is
        set, ``resume`` finds no run, or the folder cannot be written.
    :raises RunSetupError: the env or the agent cannot be built (nothing was written).
    """
    from stable_baselines3.common.monitor import Monitor

    if n_timesteps is not None and int(n_timesteps) < 0:
        raise RunSetupError(f"n_timesteps must be at least 0, not {n_timesteps}.")
    out = Path(out_dir)
    check_out_dir(out)
    config_path = out / CONFIG_FILE
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
    else:
        if config is None:
            raise ValueError("train_run needs a config (or resume=True).")
        if checkpoint is not None:
            raise ValueError("checkpoint= continues a run: it needs resume=True.")
        if config_path.exists() and not overwrite:
            raise RunFolderError(
                f"{out} already holds a run; resume it with --resume, or choose another --out."
            )
        config = absolute_paths(config)
    if config.n_timesteps < 0:
        raise RunSetupError(f"n_timesteps must be at least 0, not {config.n_timesteps}.")

    # -- the set-up, checked before anything is written -------------------------------------------
    existed = out.exists()
    warm_existed = (out / "warm_start").exists()
    with _SIGNALS.installed():
        try:
            try:
                env = Monitor(make_run_env(config))
            except Exception as exc:
                raise _setup_failed(exc, f"the env {config.env_id} cannot be made") from exc
            check_option_types(config)
            try:
                agent = build_agent(config, env, out)
            except Exception as exc:
                raise _setup_failed(exc, f"the agent {config.agent!r} cannot be built") from exc
            state: dict[str, Any]
            start, state, loaded_from = 0, {}, None
            if resume:
                agent, start, loaded_from, state = _load_newest(agent, env, out, checkpoint)
                wrapper = _kl_penalty(agent)
                if wrapper is not None and "kl_controller" in state:
                    wrapper.load_state_dict(state["kl_controller"])
        except BaseException:
            if not resume:  # leave the folder as it was
                if not existed:
                    shutil.rmtree(out, ignore_errors=True)
                elif not warm_existed:
                    shutil.rmtree(out / "warm_start", ignore_errors=True)
            raise

        # -- the run's files ------------------------------------------------------------------------
        monitor_path = _monitor_file(out)
        with _SIGNALS.deferred():
            if resume:
                if n_timesteps is not None and n_timesteps != config.n_timesteps:
                    config.n_timesteps = int(n_timesteps)
                    config.save(config_path)
                rows = state.get("monitor_rows", 0 if not state else None)
                append = _cut_monitor(monitor_path, rows)
            else:
                if overwrite:
                    for name in ("checkpoints", "final", "tb"):
                        shutil.rmtree(out / name, ignore_errors=True)
                    monitor_path.unlink(missing_ok=True)
                out.mkdir(parents=True, exist_ok=True)
                config.save(config_path)
                append = False
            _start_monitor_file(env, monitor_path, append)
            rows_start = _count_rows(monitor_path)
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
            rows_start,
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
            try:
                remaining = config.n_timesteps - start
                if remaining > 0:
                    agent.learn(remaining, callback=run_callback)
            finally:
                tracker.close()
            steps = tracker.current()
            tracker.checkpoint()
            _save_checkpoint(agent, out / "final", steps, tracker.state())
        except KeyboardInterrupt:
            interrupted = True
        train_time = time.perf_counter() - t0
        steps = tracker.current()
        with contextlib.suppress(KeyboardInterrupt):
            env.close()
    return TrainOutcome(
        out,
        steps,
        start if loaded_from is not None else None,
        train_time,
        [float(r) for r in env.get_episode_rewards()[episodes_before:]],
        interrupted,
        tracker.reported_reward,
        _SIGNALS.received if interrupted else None,
    )


def _count_rows(path: Path) -> int:
    """The episode rows of a monitor file (its two header lines left out)."""
    if not path.exists():
        return 0
    with path.open(encoding="utf-8") as f:
        return max(0, sum(1 for _ in f) - 2)


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
    elif not (Path(checkpoint) / STATE_FILE).exists():
        raise RunFolderError(
            f"--checkpoint {checkpoint} is not a checkpoint ({STATE_FILE} missing)."
        )
    try:
        env = make_run_env(config, split)
    except Exception as exc:
        raise _setup_failed(exc, f"the env {config.env_id} cannot be made") from exc
    try:
        agent = build_agent(config, env, out)
    except Exception as exc:
        raise _setup_failed(exc, f"the agent {config.agent!r} cannot be built") from exc
    try:
        agent = load_agent(agent, Path(checkpoint) / "agent", env=env)
    except Exception as exc:
        raise RunFolderError(
            f"{checkpoint} does not load ({type(exc).__name__}: {' '.join(str(exc).split())}); "
            "pick another with --checkpoint."
        ) from exc
    return config, agent, env
