"""A GRPO group's shared prompt, computed once: the episode forward and the rollout's first step.

A group of ``G`` episodes starts from one prompt. Two places run it once instead of ``G`` times,
with the same numbers up to float rounding (tests/agents/networks/test_kv_cache.py):

* the update's episode forward (:func:`agents.networks.actor_critic.packed_hidden`): the shared
  prefix in one forward, each episode's rest attending to its keys and values, gradients through
  both; timed forward + backward (logits of every action position, a log-sum-exp loss) against the
  plain forward over all ``G`` sequences (``share_prefixes=False``), in the same run, alternately;
* the rollout's first step (:class:`agents.networks.actor_critic.RolloutKVCache`): identical new
  windows computed once and copied, against the trunk over all ``G`` windows (what it ran before).

The prompts are the env's own (its data, template and truncation); the completions are random
tokens (their values change no cost). Printed: seconds of each and the speed-up (plain / shared).

Usage::

    python benchmarks/shared_prefix.py                         # gpt2-6l-384, LMSummarize-v0
    python benchmarks/shared_prefix.py --env LMText-v0 --new-tokens 48
    python benchmarks/shared_prefix.py --model smollm2-135m --new-tokens 20
    python benchmarks/shared_prefix.py --quick                 # smoke run
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import numpy as np
import torch
from bench_common import (
    Timings,
    bench_parser,
    parse_bench_args,
    print_header,
    setup_torch,
    timed_cpu,
)

from agents.common.base import load_lm_for_env
from agents.networks.actor_critic import CausalLMActorCritic, RolloutKVCache, packed_hidden
from lm_gym.envs import env_kwargs_for_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring).

    :param argv: arguments; ``None`` reads ``sys.argv``.
    """
    parser = bench_parser(__doc__)
    parser.set_defaults(env="LMSummarize-v0", new_tokens=32)
    parser.add_argument("--group-size", type=int, default=8, help="episodes per prompt (G)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind")
    quick = {"model": "tiny-gpt2", "group_size": 4, "new_tokens": 6, "repeats": 1}
    return parse_bench_args(parser, argv, quick)


def group_windows(
    env_id: str, model: str, group_size: int, new_tokens: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, int, CausalLMActorCritic]:
    """``G`` final windows of one group: the prompt of median length among the env's first 32
    samples (resets ``seed, seed + 1, ...``), then random completions.

    :return: left-padded ids and mask ``(G, W)``, the prompt's length, and the network.
    """
    import gymnasium as gym

    import lm_gym  # noqa: F401  (registers the ids)

    env = gym.make(env_id, **env_kwargs_for_model(env_id, model, {"max_new_tokens": new_tokens}))
    prompts = []
    for i in range(32):
        obs, _ = env.reset(seed=seed + i)
        prompts.append(obs["input_ids"][obs["attention_mask"] == 1])
    prompt = sorted(prompts, key=len)[len(prompts) // 2]
    net = CausalLMActorCritic(load_lm_for_env(model, env), value_head=False)
    rng = np.random.default_rng(seed)
    width = len(obs["input_ids"])
    ids = np.zeros((group_size, width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row in range(group_size):
        episode = np.r_[prompt, rng.integers(0, net.vocab_size, new_tokens - 1)]
        ids[row, width - len(episode) :] = episode
        mask[row, width - len(episode) :] = 1
    env.close()
    return torch.as_tensor(ids), torch.as_tensor(mask), len(prompt), net


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print its table.

    :param argv: arguments; ``None`` reads ``sys.argv``.
    :return: seconds and speed-ups (for tests).
    """
    args = parse_args(argv)
    setup_torch(args)
    ids, mask, prompt_len, net = group_windows(
        args.env, args.model, args.group_size, args.new_tokens, args.seed
    )
    group = args.group_size
    n_real = mask.sum(1)
    contexts = torch.arange(group)
    actions = args.new_tokens - 1  # the final window holds all but the last action's token
    rows = torch.arange(group).repeat_interleave(actions)
    positions = (prompt_len - 1 + torch.arange(actions)).repeat(group)
    prompt_ids, prompt_mask = ids[:, : ids.shape[1] - actions], mask[:, : ids.shape[1] - actions]

    def update(share: bool) -> None:
        net.zero_grad(set_to_none=True)
        hidden = packed_hidden(
            net, ids, contexts, n_real, n_real, rows, positions, share_prefixes=share
        )
        net.logits_from_hidden(hidden).logsumexp(-1).mean().backward()

    def first_step(share: bool) -> None:
        with torch.no_grad():
            if share:
                RolloutKVCache().last_hidden(net, prompt_ids, prompt_mask)
            else:  # as the cache ran new rows before: every row, from the first real column
                first = RolloutKVCache._first_real(prompt_mask)
                net.run_trunk(prompt_ids[:, first:], prompt_mask[:, first:], use_cache=True)

    times = Timings()
    for work, fn in (("update", update), ("first step", first_step)):
        for share in (False, True):  # warm-up
            fn(share)
        for _ in range(args.repeats):
            for share in (False, True):
                wall, cpu, _ = timed_cpu(functools.partial(fn, share))
                times.add(f"{work} {'shared' if share else 'plain'}", wall)
                times.add(f"{work} {'shared' if share else 'plain'} cpu", cpu)

    print_header("shared_prefix: a GRPO group's prompt computed once vs once per episode")
    print(
        f"{args.model}, {args.env}: a group of {group} episodes, prompt {prompt_len} tokens + "
        f"{args.new_tokens} new, {args.repeats} timed runs each (medians)"
    )
    out: dict[str, Any] = {"prompt_tokens": prompt_len}
    for work in ("update", "first step"):
        plain, shared = times.median(f"{work} plain"), times.median(f"{work} shared")
        cpu = times.median(f"{work} plain cpu") / times.median(f"{work} shared cpu")
        what = "forward + backward" if work == "update" else "prefill"
        print(
            f"{work:10s} ({what}): plain {plain:.3f} s, shared {shared:.3f} s, "
            f"speed-up {plain / shared:.2f}x (CPU time {cpu:.2f}x)"
        )
        out[work] = {"plain_s": plain, "shared_s": shared, "speedup": plain / shared}
    return out


if __name__ == "__main__":
    main()
