"""KV-cached rollouts give the same actions, log-probabilities and values as a full recompute.

Every test runs with each built-in tiny model (``tiny_lm``: GPT-2, and Llama with rotary positions
and grouped key/value heads). Rollouts mix episode ends: every env stops on any token whose text
contains an "e" (about a third of the vocabulary), so envs restart at different steps, and two
window layouts are mixed.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.networks.actor_critic import (
    MIN_SHARED_PREFIX,
    CausalLMActorCritic,
    RolloutKVCache,
    pack_real_tokens,
    packed_hidden,
    position_ids_from_mask,
    shared_prefixes,
)
from agents.networks.policies import LMActorCriticPolicy, LMDQNPolicy
from lm_gym.models import tokenizer_name_for_model
from lm_gym.tasks.verifiable import CountUpEnv

ATOL = 1e-4
#: The id of padding columns in hand-made windows (masked out: any id in both vocabularies).
PAD = 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net(tiny_lm: str) -> CausalLMActorCritic:
    torch.manual_seed(0)
    return CausalLMActorCritic(tiny_lm).eval()


def _mixed_env(n_envs: int = 4, model: str = "tiny-gpt2") -> DummyVecEnv:
    """Envs that end at different steps (stop strings), with two prompt/new-token splits, in the
    vocabulary of ``model``."""
    tokenizer = tokenizer_name_for_model(model)

    def make(i: int):
        def _f():
            split = (14, 10) if i % 2 else (16, 8)  # same window (24), different budgets
            return CountUpEnv(
                max_prompt_tokens=split[0],
                max_new_tokens=split[1],
                stop_strings=["e"],
                tokenizer=tokenizer,
            )

        return _f

    env = DummyVecEnv([make(i) for i in range(n_envs)])
    env.seed(123)
    return env


def _random_windows(rng: np.random.Generator, batch: int, length: int, vocab: int):
    ids = np.full((batch, length), PAD)
    mask = np.zeros((batch, length), dtype=np.int64)
    for i in range(batch):
        n = int(rng.integers(1, length // 2))
        ids[i, -n:] = rng.integers(0, vocab, n)
        mask[i, -n:] = 1
    return ids, mask


def test_position_ids_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_left_padding_matches_unpadded(net: CausalLMActorCritic):
    ids = torch.tensor([[464, 3290, 318, 257]])
    logits, value = net(ids, torch.ones_like(ids))
    padded = torch.cat([torch.full((1, 5), PAD), ids], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(ids)], 1)
    logits_p, value_p = net(padded, mask)
    assert torch.allclose(logits, logits_p, atol=ATOL)
    assert torch.allclose(value, value_p, atol=ATOL)


def test_cache_matches_full_recompute_with_resets(net: CausalLMActorCritic):
    """Random episodes of random lengths: every step's logits and values equal the full forward."""
    rng = np.random.default_rng(0)
    batch, length = 5, 20
    ids, mask = _random_windows(rng, batch, length, net.vocab_size)
    left = rng.integers(1, 9, batch)
    cache = RolloutKVCache()
    with torch.no_grad():
        for _ in range(40):
            # float32 inputs, as SB3 hands them over
            ids_t, mask_t = torch.tensor(ids, dtype=torch.float32), torch.tensor(mask).float()
            logits_c, values_c = net(ids_t, mask_t, cache)
            logits_f, values_f = net(ids_t.long(), mask_t.long())
            assert torch.isfinite(logits_c).all()
            assert torch.allclose(logits_c, logits_f, atol=ATOL)
            assert torch.allclose(values_c, values_f, atol=ATOL)
            actions = torch.distributions.Categorical(logits=logits_f).sample().numpy()
            for i in range(batch):
                if left[i] == 0:  # new episode in this row
                    new_ids, new_mask = _random_windows(rng, 1, length, net.vocab_size)
                    ids[i], mask[i], left[i] = new_ids[0], new_mask[0], rng.integers(1, 9)
                else:
                    ids[i] = np.r_[ids[i, 1:], actions[i]]
                    mask[i] = np.r_[mask[i, 1:], 1]
                    left[i] -= 1
    assert cache.stats["incremental"] > 3 * cache.stats["full"] > 0


def test_identical_new_rows_are_computed_once(net: CausalLMActorCritic):
    """A GRPO group's envs start the same prompt: its window is computed once, copied to every
    row, and each row then goes on from its copy as from its own computation."""
    rng = np.random.default_rng(3)
    ids = torch.full((2, 16), PAD)
    mask = torch.zeros((2, 16), dtype=torch.long)
    for row, n in enumerate((MIN_SHARED_PREFIX, MIN_SHARED_PREFIX + 3)):
        ids[row, -n:] = torch.as_tensor(rng.integers(0, net.vocab_size, n))
        mask[row, -n:] = 1
    ids, mask = ids[[0, 1, 0, 0, 1]], mask[[0, 1, 0, 0, 1]]  # two prompts, three and two copies
    cache = RolloutKVCache()
    with torch.no_grad():
        for step in range(4):
            logits_c, values_c = net(ids, mask, cache)
            logits_f, values_f = net(ids, mask)
            assert torch.allclose(logits_c, logits_f, atol=ATOL), step
            assert torch.allclose(values_c, values_f, atol=ATOL), step
            # the copies part ways: each row samples its own next token
            tokens = torch.arange(5) + 7 * step + 11
            ids = torch.cat([ids[:, 1:], tokens[:, None]], 1)
            mask = torch.cat([mask[:, 1:], torch.ones_like(mask[:, :1])], 1)
    assert cache.stats["full"] == 5 and cache.stats["shared"] == 3
    assert cache.stats["incremental"] == 3 * 5
    # shorter prompts are computed row by row, as before (nothing worth sharing)
    short = RolloutKVCache()
    with torch.no_grad():
        net(ids[:, -(MIN_SHARED_PREFIX - 1) :].clone(), mask[:, -(MIN_SHARED_PREFIX - 1) :], short)
    assert short.stats["full"] == 5 and short.stats["shared"] == 0


def test_cache_reuses_unchanged_rows_and_notices_parameter_changes(net: CausalLMActorCritic):
    rng = np.random.default_rng(1)
    ids, mask = (torch.tensor(a) for a in _random_windows(rng, 3, 12, net.vocab_size))
    cache = RolloutKVCache()
    with torch.no_grad():
        first, _ = net(ids, mask, cache)
        again, _ = net(ids, mask, cache)
        assert cache.stats["reused"] == 3 and torch.equal(first, again)
        net_copy = net.frozen_lm_copy()
        cache2 = RolloutKVCache()
        net_copy(ids, mask, cache2)
        net_copy.lm.get_input_embeddings().weight.mul_(1.5)  # in place, as optimizers do
        ids2 = torch.cat([ids[:, 1:], ids[:, :1]], 1)
        mask2 = torch.cat([mask[:, 1:], torch.ones_like(mask[:, :1])], 1)
        logits_c, _ = net_copy(ids2, mask2, cache2)
        logits_f, _ = net_copy(ids2, mask2)
    assert cache2.stats["full"] == 6  # stale after the parameter change: recomputed
    assert torch.allclose(logits_c, logits_f, atol=ATOL)


def test_param_version_notices_replaced_and_added_parameters(net: CausalLMActorCritic):
    """The parameter list behind ``param_version`` is kept between calls: replacing parameters
    (``load_state_dict(assign=True)``, a new submodule) must still move the version."""
    copy_ = net.frozen_lm_copy()
    version = copy_.param_version()
    assert copy_.param_version() == version  # nothing changed
    with torch.no_grad():
        copy_.lm.lm_head.weight.add_(0.0)  # an in-place write, as an optimizer step
    assert copy_.param_version() != version
    version = copy_.param_version()
    state = {k: v.clone() for k, v in copy_.state_dict().items()}
    copy_.load_state_dict(state, assign=True)  # new tensors, same values
    assert copy_.param_version() != version
    extra = torch.nn.Linear(2, 2)  # built before the next version is taken
    version = copy_.param_version()
    before = tuple(copy_.parameters())
    copy_.extra = extra  # a new submodule: more parameters
    assert len(tuple(copy_.parameters())) == len(before) + 2
    assert copy_.param_version() != version
    # forwards (transformers builds throwaway module containers in them) keep the list
    version, listed = copy_.param_version(), copy_.__dict__["_param_list"]
    ids = torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        copy_(ids, torch.ones_like(ids))
    assert copy_.param_version() == version and copy_.__dict__["_param_list"] is listed
    # a deep copy lists its own parameters, and notices what is set on its modules
    twin = copy.deepcopy(copy_)
    version = twin.param_version()
    twin.lm.extra = torch.nn.Linear(2, 2)
    assert twin.param_version() != version


def test_cache_batch_size_change(net: CausalLMActorCritic):
    rng = np.random.default_rng(2)
    cache = RolloutKVCache()
    with torch.no_grad():
        for batch in (4, 1, 4):
            ids, mask = (torch.tensor(a) for a in _random_windows(rng, batch, 10, net.vocab_size))
            assert torch.allclose(net(ids, mask, cache)[0], net(ids, mask)[0], atol=ATOL)


def _collect(model: PPO) -> None:
    _, callback = model._setup_learn(model.n_steps * model.n_envs, None)
    callback.on_training_start(locals(), globals())
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


def _count_batch_of_one_values(policy: LMActorCriticPolicy) -> list[int]:
    """Count the policy's ``predict_values`` calls on one observation (SB3's bootstraps of
    truncated episodes): the returned list grows by one per call."""
    calls: list[int] = []
    inner = policy.predict_values

    def counting(obs):
        if len(obs["input_ids"]) == 1:
            calls.append(1)
        return inner(obs)

    policy.predict_values = counting
    return calls


def test_sb3_value_bootstraps_come_from_the_cache(tiny_lm: str):
    """Stock PPO bootstraps ``V(terminal obs)`` with a batch of one at every truncated episode:
    the cache answers it from that env's row (one more token) and keeps the batch for the next
    step, so new episodes are the only full recomputes (before: the batch of one and then every
    row of the next step), and the rollout, bootstraps included, equals a full recompute. The
    three envs' episodes end together: the first bootstrap of a step runs its row alone, the
    others come from one batched forward of every row plus its sampled token (before: one forward
    per bootstrap)."""
    tokenizer = tokenizer_name_for_model(tiny_lm)

    def make() -> CountUpEnv:
        return CountUpEnv(max_prompt_tokens=12, max_new_tokens=5, tokenizer=tokenizer)

    buffers = []
    for kv_cache in (True, False):
        env = DummyVecEnv([make] * 3)
        env.seed(5)
        model = PPO(
            LMActorCriticPolicy,
            env,
            n_steps=12,
            batch_size=36,
            seed=3,
            policy_kwargs={"model": tiny_lm, "kv_cache": kv_cache},
        )
        bootstraps = _count_batch_of_one_values(model.policy)
        _collect(model)
        if kv_cache:
            stats, n_bootstraps = dict(model.policy.kv_cache.stats), len(bootstraps)
        buffers.append(model.rollout_buffer)
    cached, full = buffers
    assert n_bootstraps >= 6
    # the episodes started in the rollout, plus those started by its last step (final values)
    assert stats["full"] <= cached.episode_starts.sum() + 3
    assert stats["incremental"] >= n_bootstraps
    truncation_steps = n_bootstraps // 3  # the three envs' episodes end in the same steps
    assert stats["side_forwards"] == 2 * truncation_steps
    np.testing.assert_array_equal(cached.actions, full.actions)
    np.testing.assert_allclose(cached.rewards, full.rewards, atol=ATOL)  # bootstraps included
    np.testing.assert_allclose(cached.values, full.values, atol=ATOL)


def test_sb3_rollouts_match_full_recompute(tiny_lm: str):
    """Two PPO models, same weights and seeds, with and without the KV cache: same rollout."""
    buffers = []
    for kv_cache in (True, False):
        model = PPO(
            LMActorCriticPolicy,
            _mixed_env(model=tiny_lm),
            n_steps=30,
            batch_size=30,
            seed=7,
            policy_kwargs={"model": tiny_lm, "kv_cache": kv_cache},
        )
        _collect(model)
        if kv_cache:
            stats = dict(model.policy.kv_cache.stats)
        buffers.append(model.rollout_buffer)
    cached, full = buffers
    assert stats["incremental"] > stats["full"] > 4  # resets at mixed steps
    starts = cached.episode_starts[1:]
    assert (starts.any(axis=1) & ~starts.all(axis=1)).any()  # episodes end at different steps
    np.testing.assert_array_equal(cached.actions, full.actions)
    np.testing.assert_allclose(cached.log_probs, full.log_probs, atol=ATOL)
    np.testing.assert_allclose(cached.values, full.values, atol=ATOL)
    np.testing.assert_array_equal(cached.episode_starts, full.episode_starts)


def test_dqn_greedy_rollout_matches_full_recompute(tiny_lm: str):
    env = _mixed_env(model=tiny_lm)
    vocab = int(env.action_space.n)
    policies = [
        LMDQNPolicy(
            env.observation_space, env.action_space, lambda _: 1e-3, model=tiny_lm, kv_cache=c
        )
        for c in (True, False)
    ]
    policies[1].load_state_dict(policies[0].state_dict())
    obs = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(30):
        greedy = [p.predict(obs, deterministic=True)[0] for p in policies]
        np.testing.assert_array_equal(greedy[0], greedy[1])
        # the Q-values of that step: each network on the same window again (the cached one
        # reuses the hidden state its predict() computed)
        ids, mask = torch.as_tensor(obs["input_ids"]), torch.as_tensor(obs["attention_mask"])
        with torch.no_grad():
            q = [p.q_net.net(ids, mask, p.q_net.kv_cache)[0].numpy() for p in policies]
        np.testing.assert_allclose(q[0], q[1], atol=ATOL)
        # explore, so that episodes do not all repeat the greedy token
        obs, *_ = env.step(np.where(rng.random(4) < 0.5, greedy[0], rng.integers(0, vocab, 4)))
    assert policies[0].q_net.kv_cache.stats["incremental"] > 0


def _window(tokens: list[int], length: int) -> tuple[list[int], list[int]]:
    pad = length - len(tokens)
    return [PAD] * pad + tokens, [0] * pad + [1] * len(tokens)


def _check_step(net: CausalLMActorCritic, cache: RolloutKVCache, ids, mask) -> None:
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
    logits_c, values_c = net(ids_t, mask_t, cache)
    logits_f, values_f = net(ids_t, mask_t)
    assert torch.allclose(logits_c, logits_f, atol=ATOL)
    assert torch.allclose(values_c, values_f, atol=ATOL)
    # the cache spans exactly the columns from the first real token of any row
    leading = int((mask_t.cumsum(1) == 0).sum(1).min())
    assert cache.width == ids_t.shape[1] - leading


def test_trimmed_cache_rows_of_different_lengths_restart_mid_rollout(net: CausalLMActorCritic):
    """Rows with prompts of 2, 3 and 5 tokens in a 16-wide window; mid-rollout, one row restarts
    with a prompt longer than the cache is wide, one with a 1-token prompt, one stays unchanged:
    reused, one-token and full rows of different cache widths in one batch."""
    length, rng = 16, np.random.default_rng(3)
    rows = [list(rng.integers(0, 5000, n)) for n in (2, 3, 5)]
    cache = RolloutKVCache()
    with torch.no_grad():
        for step in range(12):
            windows = [_window(r, length) for r in rows]
            _check_step(net, cache, [w[0] for w in windows], [w[1] for w in windows])
            if step == 0:
                assert cache.width == 5  # 11 all-padding columns neither computed nor cached
            if step == 3:
                rows[0] = list(rng.integers(0, 5000, 12))  # wider than the cache (8): restart
                rows[1] = [int(rng.integers(0, 5000))]  # narrower: restart
            else:  # row 2 stays unchanged at steps 3 and 4 (reused next to full / one-token rows)
                for r in rows[: 2 if step == 4 else 3]:
                    r.append(int(rng.integers(0, 5000)))
            rows = [r[-length:] for r in rows]
    # full: 3 at the start, 2 restarts, row 0 at steps 9-11 (its window dropped a real token)
    assert cache.stats["reused"] == 2 and cache.stats["full"] == 3 + 2 + 3
    assert cache.stats["incremental"] > 20


def test_rows_that_grow_by_several_tokens_at_once(net: CausalLMActorCritic):
    """A multi-turn env appends a partner's whole reply (k tokens) after the agent's token: rows
    that grow by 1, 3 and 6 tokens in the same step, one unchanged row, one restarting, and a row
    whose next turn no longer fits (real tokens leave the window): each k is one cached forward of
    k positions, equal to the full forward."""
    length, rng = 20, np.random.default_rng(6)
    rows = [list(rng.integers(0, 5000, n)) for n in (2, 3, 5, 4, 6)]
    growth = [1, 3, 6, 0, 1]  # row 3 unchanged; row 4 restarts at step 2
    cache = RolloutKVCache()
    with torch.no_grad():
        for step in range(4):
            windows = [_window(r, length) for r in rows]
            _check_step(net, cache, [w[0] for w in windows], [w[1] for w in windows])
            for r, g in zip(rows, growth):
                r.extend(int(t) for t in rng.integers(0, 5000, g))
            if step == 1:
                rows[4] = list(rng.integers(0, 5000, 3))
            rows = [r[-length:] for r in rows]
    # row 2 holds 5 + 6k tokens: at step 3 (23 > 20) it drops real tokens and is recomputed
    assert cache.stats["reused"] == 3
    assert cache.stats["full"] == 5 + 1 + 1
    assert cache.stats["incremental"] == 3 * 3 + 2 - 1


def test_multi_turn_rollout_recomputes_only_new_episodes():
    """On LMGuessNumber-v0 (turns of at most 4 tokens, then the partner's reply appended), the
    cached forward equals the full one at every step, and only episode starts are recomputed:
    a partner's turn is one cached forward of its tokens."""
    import gymnasium as gym

    net = CausalLMActorCritic("tiny-gpt2").eval()
    env = DummyVecEnv([lambda: gym.make("LMGuessNumber-v0") for _ in range(3)])
    env.seed(0)
    obs = env.reset()
    cache, rng, starts = RolloutKVCache(), np.random.default_rng(0), 3
    with torch.no_grad():
        for _ in range(24):
            ids = torch.as_tensor(obs["input_ids"])
            mask = torch.as_tensor(obs["attention_mask"])
            logits_c, _ = net(ids, mask, cache)
            logits_f, _ = net(ids, mask)
            assert torch.allclose(logits_c, logits_f, atol=ATOL)
            obs, _, dones, _ = env.step(rng.integers(0, 1000, 3))
            starts += int(dones.sum())
    assert cache.stats["full"] == starts - int(dones.sum())  # the last step's starts: not run
    assert cache.stats["incremental"] == 3 * 24 - cache.stats["full"]


def test_trimmed_cache_full_window_rows(net: CausalLMActorCritic):
    """A row whose window is all real tokens (the cache spans the whole window) next to rows that
    go on: the full row's next window drops a real token (recomputed), the others drop the
    window's first column from the cache."""
    length, rng = 8, np.random.default_rng(4)
    rows = [list(rng.integers(0, 5000, n)) for n in (8, 2, 6)]
    cache = RolloutKVCache()
    with torch.no_grad():
        for _ in range(6):
            windows = [_window(r, length) for r in rows]
            _check_step(net, cache, [w[0] for w in windows], [w[1] for w in windows])
            for r in rows:
                r.append(int(rng.integers(0, 5000)))
            rows = [r[-length:] for r in rows]
    assert cache.width == length
    assert cache.stats["incremental"] >= 5 and cache.stats["full"] > 3


def test_cache_keyword_and_output_cache_are_decided_in_one_place():
    """``lm_gym.models.cache_keyword``/``output_cache`` serve the policies' trunk and the
    multi-turn model partner: the keyword each model's forward takes, and the cache of an
    output under either name (a loud failure here means transformers moved its Cache API)."""
    from types import SimpleNamespace

    from lm_gym.models import cache_keyword, load_causal_lm, output_cache

    lm = load_causal_lm("tiny-gpt2")
    for module in (lm, lm.base_model):
        params = inspect.signature(type(module).forward).parameters
        assert cache_keyword(module) in params
        assert cache_keyword(module) == ("cache" if "cache" in params else "past_key_values")
    new, old = object(), object()
    assert output_cache(SimpleNamespace(cache=new, past_key_values=old)) is new
    assert output_cache(SimpleNamespace(past_key_values=old)) is old
    assert output_cache(SimpleNamespace(cache=None, past_key_values=None)) is None


def test_cached_steps_pass_the_cache_under_the_current_keyword(net: CausalLMActorCritic):
    """Cached steps hand the cache to the trunk under the keyword its ``forward`` takes
    (``cache`` in transformers 5, where ``past_key_values`` is deprecated): no deprecation
    warning, and the one-token step still matches the full forward."""
    ids, mask = (torch.tensor(a) for a in _random_windows(np.random.default_rng(5), 2, 8, 1000))
    cache = RolloutKVCache()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        net(ids, mask, cache)
        ids2 = torch.cat([ids[:, 1:], ids[:, -1:]], 1)
        mask2 = torch.cat([mask[:, 1:], torch.ones_like(mask[:, :1])], 1)
        logits_c, _ = net(ids2, mask2, cache)
    assert cache.stats["incremental"] == 2
    assert torch.allclose(logits_c, net(ids2, mask2)[0], atol=ATOL)


def _episodes(vocab: int, width: int = 40) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Left-padded final windows of seven episodes: a prompt of 12 tokens played four times, one
    of 9 tokens twice, and one of 15 tokens once (completions of 3 to 19 tokens)."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, vocab, 12), rng.integers(0, vocab, 9), rng.integers(0, vocab, 15)]
    episodes = [
        np.r_[prompts[g], rng.integers(0, vocab, int(rng.integers(3, 20)))]
        for g in (0, 0, 0, 1, 1, 2, 0)
    ]
    ids = np.full((len(episodes), width), PAD)
    mask = np.zeros((len(episodes), width), dtype=np.int64)
    for i, e in enumerate(episodes):
        ids[i, width - len(e) :], mask[i, width - len(e) :] = e, 1
    return torch.as_tensor(ids), torch.as_tensor(mask), [12, 12, 12, 9, 9, 15, 12]


def test_shared_prefixes_find_each_groups_prompt(net: CausalLMActorCritic):
    ids, mask, prompt_lengths = _episodes(net.vocab_size)
    n_real = mask.sum(1)
    packed = pack_real_tokens(ids, torch.arange(len(ids)), n_real, n_real)
    plan = shared_prefixes(packed, n_real)
    assert plan is not None
    cluster, prefix, first = plan
    assert len(prefix) == 3
    for row, length in enumerate(prompt_lengths):
        c = int(cluster[row])
        assert int(first[c]) == int((cluster == c).nonzero()[0])
        if length == 15:  # alone: a one-token prefix
            assert int(prefix[c]) == 1
        else:  # the prompt, or more where the completions happen to agree (never here)
            assert int(prefix[c]) == length
    assert shared_prefixes(packed[[0, 3, 5]], n_real[[0, 3, 5]]) is None  # nothing shared


def test_packed_hidden_with_shared_prefixes_matches_the_plain_forward(net: CausalLMActorCritic):
    """Hidden states and every parameter's gradient the same as one causal forward over all the
    sequences (GPT-2's learned positions and Llama's rotary ones)."""
    ids, mask, _ = _episodes(net.vocab_size)
    n_real = mask.sum(1)
    rows = torch.cat([torch.full((int(n),), i) for i, n in enumerate(n_real)])
    positions = torch.cat([torch.arange(int(n)) for n in n_real])
    results = []
    for share in (False, True):
        net.zero_grad()
        hidden = packed_hidden(
            net, ids, torch.arange(len(ids)), n_real, n_real, rows, positions, share_prefixes=share
        )
        loss = net.logits_from_hidden(hidden).logsumexp(-1).mean() + hidden.pow(2).mean()
        loss.backward()
        grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
        results.append((hidden.detach(), grads))
    net.zero_grad()
    (plain, plain_grads), (shared, shared_grads) = results
    assert torch.allclose(plain, shared, atol=1e-5)
    assert len(plain_grads) == len(shared_grads) > 0
    for a, b in zip(plain_grads, shared_grads):
        assert torch.allclose(a, b, atol=1e-5)
