"""TRL's ``GRPOTrainer`` on the real-model quality protocol, side by side with lm-gym's GRPO.

Trains the pretrained model (default ``smollm2-135m``) with TRL's ``GRPOTrainer`` on the same
task as ``benchmarks/real_model_quality.py --agent grpo`` (``LMText-v0``: continue a movie-review
opening, VADER sentiment reward), with lm-gym's GRPO recipe for that model
(``agents/configs/grpo.yaml``, ``models: smollm2-135m``) translated to TRL's options:

* data: every prompt of the env's train split, as the token ids the env's observation holds (its
  template and left truncation to ``max_prompt_tokens``); the script checks that TRL's own
  tokenisation of each prompt gives exactly those ids;
* reward: the env's reward scorer on the decoded completion, with the env's plain prompt text and
  the sample's references (:func:`vs_trl.env_reward_func`);
* sampling: ``num_generations`` 4 (lm-gym's ``group_size``), ``max_completion_length`` 20
  (``max_new_tokens``), temperature 1, no top-k/top-p, the env's EOS (and only it) ends a
  completion early;
* LoRA: ``peft`` r 16, alpha 32, dropout 0, ``all-linear`` target modules (lm-gym's
  ``agents.networks.actor_critic.LORA_DEFAULTS``); the KL reference is the model with the adapters
  off;
* optimisation: lr 2e-4 constant, Adam (weight decay 0, eps 1e-5 as SB3), gradient norm clip
  0.5, clip range 0.2 (``epsilon``), group-normalised advantages (``scale_rewards="group"``),
  token-level loss (``loss_type="dapo"``: the mean over the minibatch's tokens, as lm-gym's PPO
  loss), k3 KL in the loss with ``beta`` 0.05 (lm-gym's ``kl_loss_coef``), dropout off;
* batches: 24 completions per generation batch (lm-gym's 8 envs x 60 steps = 480 tokens = 24
  episodes of 20), split into 4 minibatches of 6 completions (lm-gym's 120-token minibatches),
  ``num_iterations`` 2 (lm-gym's ``n_epochs``): 8 optimizer steps per generation batch; 600
  completions in all (lm-gym's 12,000 env steps / 20), i.e. 25 generation batches and 200
  optimizer steps. TRL's activation checkpointing stays off.

After training the adapters are merged and the model is saved to ``--work-dir`` (not to
``--out``); the starting model and the trained one are evaluated with lm-gym's protocol
(:func:`real_model_quality.evaluate` on the held-out splits, the starting model as the reference of
the perplexity and the KL). Written to ``--out``: ``quality.json`` (the report in
``real_model_quality``'s format plus TRL's settings, train wall time, tokens/s and its training
log), ``quality.md`` (the table and examples, and the side-by-side table with the lm-gym run given
by ``--lm-gym-result`` when it exists) and ``learning_curve.png``.

Usage::

    python benchmarks/trl_quality.py --out benchmarks/results/real_model_quality/trl-grpo
    python benchmarks/trl_quality.py --quick --out /tmp/trl_quick   # smoke run: tiny-llama
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

#: lm-gym's GRPO run on the same protocol (``real_model_quality.py --agent grpo``)
LM_GYM_RESULT = (
    BENCH_DIR / "results/real_model_quality/grpo-lora16-lr2e-4-ep2-klloss0.05-12k/quality.json"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="LMText-v0")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-tokens", type=int, default=20, help="max_completion_length")
    parser.add_argument("--completions", type=int, default=600, help="training budget")
    parser.add_argument(
        "--generation-batch", type=int, default=24, help="completions per generation batch"
    )
    parser.add_argument("--group", type=int, default=4, help="num_generations")
    parser.add_argument(
        "--minibatches", type=int, default=4, help="optimizer steps per pass over a batch"
    )
    parser.add_argument("--iterations", type=int, default=2, help="num_iterations (epochs)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--beta", type=float, default=0.05, help="k3 KL coefficient")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--max-grad-norm", type=float, default=0.5)
    parser.add_argument("--clip", type=float, default=0.2, help="epsilon (clip range)")
    parser.add_argument("--adam-eps", type=float, default=1e-5)
    parser.add_argument("--eval-splits", nargs="+", default=["validation", "test"])
    parser.add_argument("--eval-repeats", type=int, default=2, help="samples per prompt")
    parser.add_argument("--target-gain", type=float, default=0.15)
    parser.add_argument("--max-ppl-ratio", type=float, default=1.2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/trl_quality")
    parser.add_argument(
        "--work-dir", help="TRL's output and the merged model (default: a new folder in /tmp)"
    )
    parser.add_argument("--lm-gym-result", default=str(LM_GYM_RESULT))
    parser.add_argument("--examples", type=int, default=4, help="example texts per phase")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny-llama, 8 completions, few episodes"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.new_tokens, args.completions = "tiny-llama", 4, 8
        args.generation_batch, args.minibatches = 8, 2
        args.eval_splits, args.eval_repeats = ["test"], 1
        args.no_progress = True
    if args.generation_batch % args.group or args.generation_batch % args.minibatches:
        parser.error("--generation-batch must be a multiple of --group and of --minibatches.")
    if args.completions % args.generation_batch:
        parser.error("--completions must be a multiple of --generation-batch.")
    return args


def train_prompts(env: Any) -> list[dict[str, Any]]:
    """Every sample of the env's split as a TRL data set row.

    ``prompt`` is the decoded text of the env's prompt ids (its template and truncation),
    ``prompt_ids`` those ids, ``reward_prompt`` the plain prompt text the env's reward reads and
    ``references`` the sample's references.

    :param env: the lm-gym env (unwrapped).
    :raises ValueError: TRL's tokenisation of a prompt text would not give the env's ids.
    """
    rows = []
    tok = env.tokenizer
    for sample in env.samples:
        ids = env.encode_prompt(sample.prompt, warn=False).tolist()
        text = tok.decode(ids)
        again = tok(text=[text])["input_ids"][0]  # what GRPOTrainer does with a text prompt
        if list(again) != ids:
            raise ValueError(
                f"TRL would encode the prompt {text!r} as {list(again)}, not the env's {ids}."
            )
        rows.append(
            {
                "prompt": text,
                "prompt_ids": ids,
                "reward_prompt": env.prompt_text(sample.prompt),
                "references": list(sample.references),
            }
        )
    return rows


def trl_options(args: argparse.Namespace, eos_id: int) -> dict[str, Any]:
    """``GRPOConfig`` options of the run (the module docstring says how they map lm-gym's)."""
    import torch
    from vs_trl import trl_checkpointing_off

    per_step = args.generation_batch // args.minibatches
    batches = args.completions // args.generation_batch
    return {
        "per_device_train_batch_size": per_step,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": args.minibatches,
        "num_generations": args.group,
        "num_iterations": args.iterations,
        "max_steps": batches * args.minibatches * args.iterations,
        "max_completion_length": args.new_tokens,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "generation_kwargs": {"eos_token_id": [eos_id]},
        "learning_rate": args.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "optim": "adamw_torch",
        "weight_decay": 0.0,
        "adam_epsilon": args.adam_eps,
        "max_grad_norm": args.max_grad_norm,
        "epsilon": args.clip,
        "beta": args.beta,
        "loss_type": "dapo",
        "scale_rewards": "group",
        "disable_dropout": True,
        "bf16": False,
        "fp16": False,
        **trl_checkpointing_off(),
        "use_cpu": not torch.cuda.is_available(),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": args.no_progress,
        "dataloader_num_workers": 0,
        "seed": args.seed,
    }


class _RewardLog:
    """Wraps the reward function: records each completion's reward and token count (EOS included,
    as the env counts it as a step) in generation order."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.rewards: list[float] = []
        self.tokens: list[int] = []
        self.__name__ = "env_reward"

    def __call__(self, prompts: list[str], completions: list[str], **kw: Any) -> list[float]:
        out = self.func(prompts, completions, **kw)
        self.rewards.extend(out)
        self.tokens.extend(len(ids) for ids in kw["completion_ids"])  # EOS included
        return out


def train_trl(args: argparse.Namespace, env: Any, model_dir: Path, work_dir: Path) -> dict:
    """Train with ``GRPOTrainer``; merge the adapters and save the model to ``model_dir``.

    :return: ``{"train_time_s", "completions", "completion_tokens", "tokens_per_s",
        "trl_options", "log_history", "rewards", "tokens"}``.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer
    from vs_trl import env_reward_func

    from agents.networks.actor_critic import LORA_DEFAULTS
    from lm_gym.models import load_causal_lm

    rows = train_prompts(env)
    dataset = Dataset.from_list([{k: v for k, v in r.items() if k != "prompt_ids"} for r in rows])
    options = trl_options(args, env.eos_token_id)
    config = GRPOConfig(output_dir=str(work_dir / "trl"), **options)
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=float(LORA_DEFAULTS["dropout"]),
        target_modules=LORA_DEFAULTS["target_modules"],
        task_type="CAUSAL_LM",
    )
    model = load_causal_lm(args.model)
    # the env's EOS, and only it, ends a completion (TRL adds the generation config's EOS ids)
    model.generation_config.eos_token_id = env.eos_token_id
    reward = _RewardLog(env_reward_func(env))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=env.tokenizer,
        peft_config=lora,
    )
    t0 = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - t0
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(model_dir)
    env.tokenizer.save_pretrained(model_dir)
    tokens = int(sum(reward.tokens))
    return {
        "train_time_s": train_time,
        "completions": len(reward.rewards),
        "completion_tokens": tokens,
        "tokens_per_s": tokens / max(train_time, 1e-9),
        "optimizer_steps": int(trainer.state.global_step),
        "trl_options": {**options, "lora": lora.to_dict()},
        "log_history": trainer.state.log_history,
        "rewards": reward.rewards,
        "tokens": reward.tokens,
    }


def training_curve(trained: dict[str, Any], per_batch: int) -> dict[str, list[float]]:
    """Per generation batch: the mean training reward against completion tokens so far, and the
    KL per episode (TRL's logged k3 KL per token times the batch's mean length)."""
    rewards, tokens = trained["rewards"], trained["tokens"]
    curve: dict[str, list[float]] = {"steps": [], "reward": [], "kl_steps": [], "kl": []}
    kls = [h["kl"] for h in trained["log_history"] if "kl" in h]
    steps_per_batch = max(1, len(kls) // max(1, len(rewards) // per_batch))
    done = 0
    for b, i in enumerate(range(0, len(rewards), per_batch)):
        batch_tokens = tokens[i : i + per_batch]
        done += sum(batch_tokens)
        curve["steps"].append(float(done))
        curve["reward"].append(sum(rewards[i : i + per_batch]) / per_batch)
        batch_kl = kls[b * steps_per_batch : (b + 1) * steps_per_batch]
        if batch_kl and batch_tokens:
            curve["kl_steps"].append(float(done))
            mean_len = sum(batch_tokens) / len(batch_tokens)
            curve["kl"].append(sum(batch_kl) / len(batch_kl) * mean_len)
    return curve


def comparison(report: dict[str, Any], lm_gym: dict[str, Any] | None) -> str:
    """A markdown table of TRL's and lm-gym's runs side by side (lm-gym's when given)."""
    rows = [("TRL GRPOTrainer", report)]
    if lm_gym is not None:
        rows.append(("lm-gym GRPO", lm_gym))
    lines = [
        "| run | reward before | reward after | gain | ppl / start | KL / episode | "
        "distinct-1 | distinct-2 | length | train min | train tok/s |",
        "| --- |" + " --- |" * 10,
    ]
    for name, r in rows:
        b, a = r["before"]["summary"], r["after"]["summary"]
        lines.append(
            f"| {name} | {b['mean_reward']:.3f} | {a['mean_reward']:.3f} | {r['gain']:+.3f} | "
            f"{r['ppl_ratio']:.3f} | {a['kl']:.2f} | {a['corpus_distinct-1']:.3f} | "
            f"{a['corpus_distinct-2']:.3f} | {a['mean_length']:.2f} | "
            f"{r['train_time_s'] / 60:.1f} | {r['train_tokens_per_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train with TRL, evaluate before and after with lm-gym's protocol, write the report.

    :return: the report, or ``{"skipped": reason}`` without trl or peft.
    """
    args = parse_args(argv)
    missing = [m for m in ("trl", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed: pip install trl peft"
        print(f"trl_quality: skipped. {reason}")
        return {"skipped": reason}
    import torch
    import trl

    torch.set_num_threads(args.threads)
    from real_model_quality import evaluate, markdown, plot_curve

    from agents.common.config import resolve_run_config
    from agents.common.training import build_agent, make_run_env

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="trl_quality_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = work_dir / "merged"

    # the starting model's run config, as real_model_quality.main makes it for --agent grpo
    env_kwargs = {"max_new_tokens": args.new_tokens}
    start_config = resolve_run_config(
        args.env, "grpo", overrides={"env_kwargs": env_kwargs}, seed=args.seed, model=args.model
    )
    print(f"env {start_config.env_kwargs}", flush=True)
    t0 = time.perf_counter()
    start_agent = build_agent(start_config, make_run_env(start_config))
    before = evaluate(start_agent, start_config, args, reference=args.model)
    del start_agent
    eval_time = time.perf_counter() - t0
    print(f"before: {json.dumps(before['summary'])}", flush=True)

    torch.manual_seed(args.seed)
    train_env = make_run_env(start_config).unwrapped  # the train split, as lm-gym trains on
    trained = train_trl(args, train_env, model_dir, work_dir)
    train_env.close()
    print(
        f"trained: {trained['completions']} completions, {trained['completion_tokens']} tokens, "
        f"{trained['optimizer_steps']} optimizer steps in {trained['train_time_s']:.0f} s "
        f"({trained['tokens_per_s']:.2f} tok/s)",
        flush=True,
    )

    # the merged model, on the same env (the starting model's tokenizer), evaluated the same way
    after_config = resolve_run_config(
        args.env,
        "grpo",
        overrides={"env_kwargs": dict(start_config.env_kwargs)},
        seed=args.seed,
        model=str(model_dir),
    )
    trained_agent = build_agent(after_config, make_run_env(after_config))
    after = evaluate(trained_agent, after_config, args, reference=args.model)
    del trained_agent
    print(f"after: {json.dumps(after['summary'])}", flush=True)

    start_ppl = before["summary"]["perplexity"]
    for phase in (before, after):
        phase["summary"]["ppl_ratio"] = phase["summary"]["perplexity"] / start_ppl
    gain = after["summary"]["mean_reward"] - before["summary"]["mean_reward"]
    ratio = after["summary"]["ppl_ratio"]
    met = gain >= args.target_gain and ratio <= args.max_ppl_ratio
    verdict = (
        f"reward {gain:+.3f} (target >= {args.target_gain:+.2f}), perplexity {ratio:.2f}x the "
        f"start's (target <= {args.max_ppl_ratio:.2f}x): {'MET' if met else 'NOT MET'}"
    )
    options = {k: v for k, v in trained["trl_options"].items() if k != "lora"}
    report = {
        "env_id": start_config.env_id,
        "agent": "trl-grpo",
        "model": args.model,
        "settings": {
            "trl_version": trl.__version__,
            "trl": options,
            "lora": {
                "r": args.lora_r,
                "alpha": args.lora_alpha,
                "dropout": trained["trl_options"]["lora"]["lora_dropout"],
                "target_modules": "all-linear",
            },
            "env_kwargs": start_config.env_kwargs,
            "completions": trained["completions"],
            "optimizer_steps": trained["optimizer_steps"],
            "seed": args.seed,
            "eval_splits": args.eval_splits,
            "eval_repeats": args.eval_repeats,
            "threads": args.threads,
            "examples": args.examples,
        },
        "train_time_s": trained["train_time_s"],
        "eval_time_s": eval_time,
        "train_tokens_per_s": trained["tokens_per_s"],
        "train_completion_tokens": trained["completion_tokens"],
        "gain": gain,
        "ppl_ratio": ratio,
        "target_met": met,
        "verdict": verdict,
        "before": before,
        "after": after,
        "train_log": trained["log_history"],
        "train_rewards": trained["rewards"],
        "train_tokens": trained["tokens"],
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    lm_gym_path = Path(args.lm_gym_result)
    lm_gym = (
        json.loads(lm_gym_path.read_text()) if lm_gym_path.exists() and not args.quick else None
    )
    text = markdown(report)
    text += (
        "\nSide by side (held-out sampled eval; train time and tokens/s on a shared 2-core CPU, "
        "one torch thread, under different load for each run):\n\n" + comparison(report, lm_gym)
    )
    if lm_gym is not None:
        text += f"\n\nlm-gym's run: {lm_gym_path.parent.name}\n"
    (out / "quality.md").write_text(text, encoding="utf-8")
    plot_curve(
        training_curve(trained, args.generation_batch),
        before["summary"]["mean_reward"],
        after["summary"]["mean_reward"],
        f"TRL GRPOTrainer on {start_config.env_id}, {args.model}",
        out / "learning_curve.png",
    )
    print(text)
    print(f"merged model in {model_dir}; report written to {out}")
    return report


if __name__ == "__main__":
    main()
