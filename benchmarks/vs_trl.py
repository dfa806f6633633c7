"""End-to-end training throughput: lm-gym's PPO and GRPO vs TRL's ``GRPOTrainer`` on the same model.

Generated tokens per second, updates included, for each model (built-in GPT-2 shapes built from
their config with the real GPT-2 tokenizer), in the same process, alternating one iteration of
each, ``--iterations`` timed iterations per side after ``--warmup`` untimed ones. Same work per
iteration:

* lm-gym (``--agents``, both by default): ``ppo`` is :class:`agents.algorithms.ppo.EpisodePPO` with
  :class:`agents.networks.policies.LMActorCriticPolicy` (KV-cached rollouts, value head); ``grpo``
  is :class:`agents.algorithms.grpo.GroupRelativePPO` with one group of ``n`` envs (the same prompt
  for all, as TRL's group) and no value head; ``grpo-lora`` the same training LoRA adapters (r 16)
  only. On ``LMText-v0``: ``n`` envs x ``new_tokens`` steps, 1 epoch, 1 minibatch, one optimizer
  step. One iteration is one ``learn()`` of ``n x new_tokens`` steps.
* TRL: ``GRPOTrainer`` with ``num_generations=n``, ``per_device_train_batch_size=n``,
  ``max_completion_length=new_tokens`` (``min_new_tokens`` too, so every completion has exactly
  ``new_tokens`` tokens, as the lm-gym episodes do: their envs stop on no string and not at EOS,
  :data:`FIXED_LENGTH`), ``beta=0`` (no reference model), bf16 and
  gradient checkpointing off, one optimizer step per step. The prompts are the ones the lm-gym env
  draws (its data, template and left truncation to ``max_prompt_tokens``) and the reward is the
  env's reward scorer (VADER sentiment offline). A TRL step is timed from the trainer's
  ``on_step_begin`` to ``on_step_end`` (generation, reward, loss, backward and optimizer step).

Printed per model and lm-gym agent: tokens/s of each side, the ratio lm-gym / TRL (target >= 1.5x),
lm-gym's rollout/update split, and the peak memory of one iteration of each (RSS on CPU: the whole
process, every model included; the "+" figure is the iteration's growth; allocated CUDA memory on
GPU).

TRL is a benchmark extra (``pip install -e ".[bench]"``); without it the script says so and exits.
It runs offline: the model object, tokenizer and an in-memory ``datasets.Dataset`` are passed in.

Usage::

    python benchmarks/vs_trl.py                          # tiny-gpt2 and gpt2-6l-384, 8 x 48
    python benchmarks/vs_trl.py --models gpt2-6l-384 --iterations 5
    python benchmarks/vs_trl.py --models smollm2-135m --agents grpo --new-tokens 20
    python benchmarks/vs_trl.py --device cuda
    python benchmarks/vs_trl.py --quick                  # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from bench_common import (
    PeakMemory,
    Timings,
    add_bf16_arg,
    bench_parser,
    fmt_rate,
    make_ppo,
    make_vec_env,
    parse_bench_args,
    print_header,
    setup_torch,
    start_peak,
    stop_peak,
    synchronize,
)
from stable_baselines3.common.callbacks import BaseCallback

TARGET = 1.5
#: lm-gym sides: (GRPO, LoRA options)
AGENTS: dict[str, tuple[bool, dict[str, Any] | None]] = {
    "ppo": (False, None),
    "grpo": (True, None),
    "grpo-lora": (True, {"r": 16, "alpha": 32}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring).

    :param argv: arguments; ``None`` reads ``sys.argv``.
    """
    parser = bench_parser(__doc__, workload=False)
    add_bf16_arg(parser)
    parser.add_argument("--models", nargs="+", default=["tiny-gpt2", "gpt2-6l-384"])
    parser.add_argument("--env", default="LMText-v0")
    parser.add_argument(
        "--agents",
        nargs="+",
        choices=list(AGENTS),
        default=["ppo", "grpo"],
        help="lm-gym side (grpo-lora: GRPO training LoRA adapters, r 16)",
    )
    parser.add_argument("--n", type=int, default=8, help="envs = completions per iteration")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per side")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--prompts", type=int, default=64, help="prompts in TRL's data set")
    quick = {"models": ["tiny-gpt2"], "n": 2, "new_tokens": 4}
    return parse_bench_args(parser, argv, {**quick, "iterations": 1, "warmup": 0, "prompts": 4})


#: Env options that make every lm-gym episode exactly ``--new-tokens`` long, as TRL's completions
#: are (``min_new_tokens``): no stop string, no stop at EOS. Without them a pretrained model that
#: writes a newline early (``LMSummarize-v0`` stops on one) plays more, shorter episodes than TRL's
#: completions, each with its own prompt: not the same work.
FIXED_LENGTH: dict[str, Any] = {"stop_strings": [], "stop_on_eos": False}


def env_prompts(
    env_id: str, count: int, new_tokens: int, seed: int, model: str | None = None
) -> tuple[list[dict[str, Any]], Any]:
    """The first ``count`` samples the lm-gym env draws, as TRL data set rows: ``prompt`` (the
    text of the env's observation window) and ``references`` (the sample's, for the reward).

    :param env_id: the lm-gym id.
    :param count: number of prompts.
    :param new_tokens: the env's ``max_new_tokens``.
    :param seed: seeds of the resets are ``seed, seed + 1, ...``.
    :param model: the model that acts: the env's tokenizer follows it.
    :return: the rows and the env (its tokenizer and reward scorer are reused).
    """
    from lm_gym.envs import env_kwargs_for_model

    env_id = f"lm_gym:{env_id}"
    kwargs = env_kwargs_for_model(env_id, model, {"max_new_tokens": new_tokens, **FIXED_LENGTH})
    env = gym.make(env_id, **kwargs).unwrapped
    rows = []
    for i in range(count):
        obs, _ = env.reset(seed=seed + i)
        ids = obs["input_ids"][obs["attention_mask"] == 1]
        references = list(env.sample.references) if env.sample is not None else []
        rows.append({"prompt": env.tokenizer.decode(ids.tolist()), "references": references})
    return rows, env


def env_reward_func(env: Any) -> Any:
    """A TRL reward function that scores completions with the lm-gym env's reward scorer.

    The prompts it passes to the scorer are the data set's ``reward_prompt`` column when there
    is one (the env's plain prompt text, before any truncation), else TRL's prompts; the
    references are the ``references`` column, else none.

    :param env: the lm-gym env (unwrapped) whose ``reward_scorer`` is used.
    """
    scorer = env.reward_scorer

    def reward(
        prompts: list[str],
        completions: list[str],
        reward_prompt: list[str] | None = None,
        references: list[list[str]] | None = None,
        **_: Any,
    ) -> list[float]:
        texts = list(reward_prompt) if reward_prompt is not None else list(prompts)
        refs = [list(r) for r in references] if references is not None else [[] for _ in texts]
        return [float(x) for x in scorer.score(list(completions), texts, refs)]

    return reward


def trl_checkpointing_off() -> dict[str, bool]:
    """``GRPOConfig`` keywords that turn activation (gradient) checkpointing off.

    TRL turns it on by default; lm-gym runs without it (transformers >= 5 renamed the option;
    the old name warns).
    """
    from trl import GRPOConfig

    fields = getattr(GRPOConfig, "__dataclass_fields__", {})
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    return {name: False}


class _IterationTimer(BaseCallback):
    """Times of lm-gym's rollout (rollout start to end) within ``learn()``."""

    def __init__(self) -> None:
        super().__init__()
        self.start = self.end = 0.0

    def _on_rollout_start(self) -> None:
        self.start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.end = time.perf_counter()

    def _on_step(self) -> bool:
        return True


def make_trl_trainer(
    model_name: str,
    rows: list[dict[str, Any]],
    env: Any,
    args: argparse.Namespace,
    device: torch.device,
    out_dir: str,
) -> tuple[Any, Any]:
    """A ``GRPOTrainer`` on the model, with a callback that times each step and its memory.

    :param model_name: built-in name, hub id or folder (loaded by :func:`load_causal_lm`).
    :param rows: the data set's rows (:func:`env_prompts`).
    :param env: the lm-gym env whose tokenizer and reward scorer are used.
    :param args: the parsed command line.
    :param device: torch device.
    :param out_dir: TRL's output folder (nothing is saved there).
    :return: the trainer and its timing callback.
    """
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    from lm_gym.models import load_causal_lm

    reward = env_reward_func(env)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self.peaks: list[PeakMemory] = []
            self._t0 = self._cpu0 = 0.0
            self._peak = PeakMemory()

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            synchronize(device)
            self._peak = start_peak(device)
            self._cpu0 = time.process_time()
            self._t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            synchronize(device)
            self.seconds.append(time.perf_counter() - self._t0)
            self.cpu_seconds.append(time.process_time() - self._cpu0)
            self.peaks.append(stop_peak(self._peak, device))

    checkpointing_off = trl_checkpointing_off()
    config = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.n,
        num_generations=args.n,
        gradient_accumulation_steps=1,
        max_completion_length=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens},
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=0.0,
        num_iterations=1,
        learning_rate=args.lr,
        bf16=args.bf16,
        fp16=False,
        **checkpointing_off,
        use_cpu=device.type == "cpu",
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=load_causal_lm(model_name),
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=env.tokenizer,
        callbacks=[timer],
    )
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)  # no per-step log lines in the benchmark's output
    return trainer, timer


def bench_model(
    model_name: str, args: argparse.Namespace, device: torch.device
) -> list[dict[str, Any]]:
    """Alternate the lm-gym agents' and TRL's iterations on one model; return their figures.

    :param model_name: the model.
    :param args: the parsed command line.
    :param device: torch device.
    :return: one dict per lm-gym agent, each against the same TRL iterations.
    """
    rows, env = env_prompts(args.env, args.prompts, args.new_tokens, args.seed, model_name)
    steps = args.n * args.new_tokens
    models = {}
    for agent in args.agents:
        vec_env = make_vec_env(
            args.env,
            args.n,
            args.seed,
            model=model_name,
            max_new_tokens=args.new_tokens,
            **FIXED_LENGTH,
        )
        models[agent] = make_ppo(
            vec_env,
            model_name,
            n_steps=args.new_tokens,
            batch_size=steps,
            n_epochs=1,
            device=device,
            seed=args.seed,
            learning_rate=args.lr,
            group_size=args.n if AGENTS[agent][0] else 0,
            lora=AGENTS[agent][1],
            bf16=args.bf16,
        )
    lm_timer = _IterationTimer()
    out_dir = tempfile.mkdtemp(prefix="lm_gym_vs_trl_")
    trainer, trl_timer = make_trl_trainer(model_name, rows, env, args, device, out_dir)

    times = Timings()
    peaks: dict[str, PeakMemory] = {}
    trl_tokens: list[float] = []

    def lm_gym_iteration(agent: str) -> tuple[float, float, PeakMemory]:
        peak = start_peak(device)
        synchronize(device)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        models[agent].learn(steps, callback=lm_timer, reset_num_timesteps=False)
        synchronize(device)
        end = time.perf_counter()
        cpu = time.process_time() - cpu0
        times.add(f"{agent}_rollout_tmp", lm_timer.end - lm_timer.start)
        times.add(f"{agent}_update_tmp", end - lm_timer.end)
        return end - t0, cpu, stop_peak(peak, device)

    def trl_iteration() -> tuple[float, float, PeakMemory]:
        trainer.train()
        logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
        length = logs[-1]["completions/mean_length"] if logs else args.new_tokens
        trl_tokens.append(args.n * float(length))
        return trl_timer.seconds[-1], trl_timer.cpu_seconds[-1], trl_timer.peaks[-1]

    sides = [*args.agents, "trl"]
    for rep in range(args.warmup + args.iterations):
        shift = rep % len(sides)  # rotate the order: no side always runs first
        for side in sides[shift:] + sides[:shift]:
            if side == "trl":
                seconds, cpu, peak = trl_iteration()
            else:
                seconds, cpu, peak = lm_gym_iteration(side)
            if rep < args.warmup:
                continue
            tokens = trl_tokens[-1] if side == "trl" else steps
            times.add(side, tokens / seconds)
            times.add(side + "_cpu", tokens / cpu)
            if side != "trl":
                times.add(f"{side}_rollout", times.values[f"{side}_rollout_tmp"][-1])
                times.add(f"{side}_update", times.values[f"{side}_update_tmp"][-1])
            if side not in peaks or peak.peak_mib > peaks[side].peak_mib:
                peaks[side] = peak
    trl_rate = times.median("trl")
    return [
        {
            "model": model_name,
            "agent": agent,
            "lm_gym_tok_s": times.median(agent),
            "trl_tok_s": trl_rate,
            "ratio": times.median(agent) / trl_rate,
            "cpu_ratio": times.median(f"{agent}_cpu") / times.median("trl_cpu"),
            "rollout_s": times.median(f"{agent}_rollout"),
            "update_s": times.median(f"{agent}_update"),
            "lm_gym_peak": peaks[agent],
            "trl_peak": peaks["trl"],
            "runs": len(times.values[agent]),
        }
        for agent in args.agents
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark for each model, print the table, and return the figures.

    :param argv: command-line arguments; ``None`` reads ``sys.argv``.
    :return: ``{"skipped": reason}`` without TRL, else ``{"results": [per-model dicts]}``.
    """
    args = parse_args(argv)
    if importlib.util.find_spec("trl") is None:
        reason = 'TRL is not installed: pip install -e ".[bench]" (or pip install trl).'
        print(f"vs_trl: skipped. {reason}")
        return {"skipped": reason}
    import trl

    device = setup_torch(args)
    np.random.seed(args.seed)
    results = [r for name in args.models for r in bench_model(name, args, device)]

    print_header(
        "vs_trl: end-to-end training throughput, lm-gym EpisodePPO / GRPO vs TRL GRPOTrainer",
        f", trl {trl.__version__}",
    )
    print(
        f"{args.env}, {args.n} completions x {args.new_tokens} tokens and one optimizer step per "
        f"iteration, {args.iterations} timed iterations per side (alternating), device {device}"
    )
    print(
        f"{'model':<14} {'agent':<9} {'lm-gym tok/s':>12} {'TRL tok/s':>10} {'ratio':>6} {'CPU-time ratio':>14}  "
        f"{'lm-gym rollout+update s':>23}  lm-gym memory / TRL memory"
    )
    for r in results:
        print(
            f"{r['model']:<14} {r['agent']:<9} {fmt_rate(r['lm_gym_tok_s']):>12} {fmt_rate(r['trl_tok_s']):>10} "
            f"{r['ratio']:>5.2f}x {r['cpu_ratio']:>13.2f}x  "
            f"{r['rollout_s']:>11.2f} + {r['update_s']:<9.2f}  "
            f"{r['lm_gym_peak']} / {r['trl_peak']}"
        )
    worst = min(r["ratio"] for r in results)
    flag = "ok" if worst >= TARGET else "BELOW TARGET"
    print(f"lowest ratio lm-gym / TRL: {worst:.2f}x (target >= {TARGET:.1f}x): {flag}")
    return {"results": results}


if __name__ == "__main__":
    main()
