"""Helpers shared by the speed benchmarks: timing, peak memory, models, envs and the machine.

The scripts import it as a sibling module (``python benchmarks/<script>.py`` puts this folder on
``sys.path``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("LM_GYM_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_LIBC: Any = None


def _status_kib(key: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float:
    """The process's resident set size now, in MiB (``ru_maxrss`` where ``/proc`` is missing)."""
    kib = _status_kib("VmRSS")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


@dataclass
class PeakMemory:
    """Peak memory of a phase (see :func:`peak_memory`).

    :param kind: ``"RSS"`` (CPU: peak resident set size of the process) or ``"CUDA"`` (peak
        memory allocated by PyTorch on the device).
    :param before_mib: memory at the start of the phase (CPU: after freed heap memory is given
        back to the OS).
    :param peak_mib: peak during the phase.
    :param exact: ``False`` when the CPU peak could not be reset (no ``/proc/self/clear_refs``):
        then ``peak_mib`` is the peak since the process started.
    """

    kind: str = "RSS"
    before_mib: float = 0.0
    peak_mib: float = 0.0
    exact: bool = True

    @property
    def delta_mib(self) -> float:
        """The phase's growth over its starting memory."""
        return self.peak_mib - self.before_mib

    def __str__(self) -> str:
        note = "" if self.exact else " (process peak: reset unsupported)"
        return f"peak {self.kind} {self.peak_mib:,.0f} MiB ({self.delta_mib:+,.0f}){note}"


def _release_free_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so that the RSS left by an
    earlier, larger phase does not hide the next phase's peak. No-op elsewhere."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def start_peak(device: torch.device | str = "cpu") -> PeakMemory:
    """Start measuring peak memory (see :func:`peak_memory`); finish with :func:`stop_peak`.

    :param device: the device the phase runs on.
    """
    device = torch.device(device)
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result.kind = "CUDA"
        result.before_mib = torch.cuda.memory_allocated(device) / 2**20
        return result
    gc.collect()
    _release_free_heap()
    result.before_mib = rss_mib()
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        result.exact = False
    return result


def stop_peak(result: PeakMemory, device: torch.device | str = "cpu") -> PeakMemory:
    """Read the peak since :func:`start_peak` into ``result`` and return it.

    :param result: from :func:`start_peak`.
    :param device: the same device.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        result.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        return result
    hwm = _status_kib("VmHWM")
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result.exact = False
    result.peak_mib = hwm / 1024
    return result


@contextmanager
def peak_memory(device: torch.device | str = "cpu") -> Iterator[PeakMemory]:
    """Measure the peak memory of the ``with`` block.

    On CPU, the kernel's peak-RSS counter (``VmHWM``) is reset by writing ``5`` to
    ``/proc/self/clear_refs`` and read at the end (no psutil needed); the figure is the whole
    process's resident memory (models, buffers and libraries included). On CUDA,
    ``torch.cuda.reset_peak_memory_stats`` and ``max_memory_allocated``.

    :param device: the device the phase runs on.
    """
    result = start_peak(device)
    yield result
    stop_peak(result, device)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock timings are complete."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[float, Any]:
    """Run ``fn`` once; return its wall time in seconds (device synchronised) and its result.

    :param fn: the work.
    :param device: synchronised before and after.
    """
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def timed_cpu(
    fn: Callable[[], Any], device: torch.device | str = "cpu"
) -> tuple[float, float, Any]:
    """Run ``fn`` once; return its wall time, the process's CPU time (all threads) and its result.

    On a machine shared with other work, CPU time measures the work done and is less disturbed
    by the load than wall time; wall time is what a user waits for.

    :param fn: the work.
    :param device: synchronised before and after.
    """
    synchronize(device)
    cpu = time.process_time()
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu, out


@dataclass
class Timings:
    """Named lists of repeated measurements."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        """Append a measurement."""
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        """The median of a name's measurements."""
        return statistics.median(self.values[name])


def machine() -> str:
    """One line: CPU model and cores, or the GPU, with torch's version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    try:
        load = os.getloadavg()[0]
        text += f", load avg {load:.1f}"
    except OSError:
        pass
    return text


def print_header(title: str, machine_note: str = "") -> None:
    """Print a script's title line and the ``machine:`` line (:func:`machine`).

    :param title: the first line.
    :param machine_note: appended to the machine line (e.g. a library's version).
    """
    print(title)
    print(f"machine: {machine()}{machine_note}")


def bench_parser(doc: str | None, *, workload: bool = True) -> argparse.ArgumentParser:
    """A script's parser, its module docstring as the help text.

    :param doc: the script's ``__doc__``.
    :param workload: add the PPO rollout workload: ``--model`` (``gpt2-6l-384``), ``--env``
        (``LMText-v0``), ``--n-envs`` (8) and ``--new-tokens`` (48).
    """
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if workload:
        parser.add_argument(
            "--model", default="gpt2-6l-384", help="built-in name, hub id or folder"
        )
        parser.add_argument("--env", default="LMText-v0")
        parser.add_argument("--n-envs", type=int, default=8)
        parser.add_argument("--new-tokens", type=int, default=48, help="the env's max_new_tokens")
    return parser


def add_bf16_arg(parser: argparse.ArgumentParser) -> None:
    """``--bf16``, for the scripts whose every side can run under bfloat16 autocast.

    :param parser: the script's parser.
    """
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast (CUDA only): the policy's trunk (its bf16 option) and the "
        "reference it is compared with (generate(), PPO.train, TRL's bf16)",
    )


def parse_bench_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, quick: Mapping[str, Any]
) -> argparse.Namespace:
    """Add the common options (:func:`add_common_args`), parse, apply the ``--quick`` settings.

    :param parser: the script's parser, with its own options.
    :param argv: arguments; ``None`` reads ``sys.argv``.
    :param quick: option name -> value for a ``--quick`` smoke run.
    """
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in quick.items():
            setattr(args, name, value)
    return args


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads``, ``--seed`` and ``--quick``.

    :param parser: the script's parser.
    """
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny model and sizes, one repeat"
    )


def setup_torch(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and ``--seed``; return the device (CUDA asked for and missing, or
    ``--bf16`` off CUDA: error).

    :param args: parsed arguments of :func:`add_common_args`.
    """
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine.")
    if getattr(args, "bf16", False) and device.type != "cuda":
        raise SystemExit(f"--bf16 needs a CUDA --device (got {args.device}).")
    return device


def autocast(device: torch.device, bf16: bool) -> Any:
    """``torch.autocast`` to bfloat16 on ``device`` when ``bf16``, else a context that does nothing.

    :param device: the device the work runs on.
    :param bf16: the ``--bf16`` option.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def make_vec_env(
    env_id: str, n_envs: int, seed: int, *, model: str | None = None, **env_kwargs: Any
) -> Any:
    """An SB3 ``DummyVecEnv`` of an lm-gym id (no ``render_mode``), seeded.

    :param env_id: e.g. ``"LMText-v0"`` (the ``lm_gym:`` prefix is added when missing).
    :param n_envs: number of envs.
    :param seed: seed of the first env (SB3 adds the env's rank).
    :param model: the model that will act on the envs: their tokenizer follows it
        (:func:`lm_gym.envs.env_kwargs_for_model`).
    :param env_kwargs: env options (``max_new_tokens`` ...).
    """
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env

    from lm_gym.envs import env_kwargs_for_model

    if ":" not in env_id:
        env_id = f"lm_gym:{env_id}"
    env_kwargs = env_kwargs_for_model(env_id, model, env_kwargs)
    return sb3_make_vec_env(
        env_id, n_envs=n_envs, seed=seed, env_kwargs={"render_mode": None, **env_kwargs}
    )


def make_ppo(
    env: Any,
    model_name: str,
    *,
    n_steps: int,
    batch_size: int,
    n_epochs: int,
    device: torch.device,
    seed: int,
    kv_cache: bool = True,
    learning_rate: float = 1e-5,
    episode_eval: bool = True,
    group_size: int = 0,
    lora: dict[str, Any] | None = None,
    bf16: bool = False,
) -> Any:
    """An :class:`agents.algorithms.ppo.EpisodePPO` with the GPT-2 policy, silent, logger without
    outputs; with ``group_size`` a :class:`agents.algorithms.grpo.GroupRelativePPO` (GRPO, no value
    head).

    :param env: the vector env.
    :param model_name: a built-in model name, hub id or folder.
    :param n_steps: rollout steps per env.
    :param batch_size: minibatch size.
    :param n_epochs: epochs per update.
    :param device: torch device.
    :param seed: seed.
    :param kv_cache: the policy's rollout KV cache.
    :param learning_rate: learning rate.
    :param episode_eval: EpisodePPO's episode-level update (False: stock evaluation).
    :param group_size: 0 for PPO; ``G >= 2`` for GRPO with groups of ``G`` envs (the envs are
        wrapped in :class:`agents.algorithms.grpo.GroupedResetVecEnv` when learning starts).
    :param lora: LoRA adapter options (``policy_kwargs["lora"]``), or ``None``.
    :param bf16: the policy's ``bf16`` option (autocast of its trunk on CUDA).
    """
    from stable_baselines3.common.logger import Logger

    from agents.algorithms.grpo import GroupRelativePPO
    from agents.algorithms.ppo import EpisodePPO
    from agents.networks.policies import LMActorCriticPolicy

    policy_kwargs: dict[str, Any] = {"model": model_name, "kv_cache": kv_cache}
    if bf16:
        policy_kwargs["bf16"] = True
    if lora is not None:
        policy_kwargs["lora"] = lora
    algo: Any = EpisodePPO
    extra: dict[str, Any] = {}
    if group_size:
        algo, extra = GroupRelativePPO, {"group_size": group_size}
        policy_kwargs["value_head"] = False
    model = algo(
        LMActorCriticPolicy,
        env,
        n_steps=n_steps,
        batch_size=batch_size,
        n_epochs=n_epochs,
        learning_rate=learning_rate,
        device=device,
        seed=seed,
        episode_eval=episode_eval,
        policy_kwargs=policy_kwargs,
        **extra,
    )
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def setup_ppo(
    args: argparse.Namespace, *, n_steps: int, batch_size: int, n_epochs: int
) -> tuple[torch.device, Any]:
    """:func:`setup_torch`, then :func:`make_ppo` of ``--model`` on :func:`make_vec_env` of the
    workload options of :func:`bench_parser` (``--n-envs`` envs of ``--env``, ``--new-tokens``).

    :param args: the parsed command line.
    :param n_steps: rollout steps per env.
    :param batch_size: minibatch size.
    :param n_epochs: epochs per update.
    :return: the device and the model.
    """
    device = setup_torch(args)
    env = make_vec_env(
        args.env, args.n_envs, args.seed, model=args.model, max_new_tokens=args.new_tokens
    )
    model = make_ppo(
        env,
        args.model,
        n_steps=n_steps,
        batch_size=batch_size,
        n_epochs=n_epochs,
        device=device,
        seed=args.seed,
        bf16=getattr(args, "bf16", False),
    )
    return device, model


def start_rollouts(model: Any) -> Any:
    """Reset the model's env and return the callback that ``collect_rollouts`` needs.

    :param model: an SB3 on-policy algorithm.
    """
    _, callback = model._setup_learn(10**9, None, reset_num_timesteps=True)
    callback.on_training_start(locals(), globals())
    return callback


def collect(model: Any, callback: Any) -> None:
    """One SB3 rollout (``n_steps`` per env) into the model's buffer.

    :param model: an SB3 on-policy algorithm after :func:`start_rollouts`.
    :param callback: from :func:`start_rollouts`.
    """
    ok = model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    if not ok:
        raise RuntimeError("collect_rollouts was stopped by a callback.")


def fmt_rate(value: float) -> str:
    """A rate with thousands separators."""
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
