"""EpisodePPO: its update equals stock SB3 PPO's per-transition computation.

Set-up: each built-in tiny model (``tiny_lm``: a GPT-2, 2 layers, 128 wide, and a Llama, 2 layers,
64 wide, each with its real tokenizer) on ``LMCountUp-v0`` (12 new tokens) with
``stop_strings=["k"]``: a few percent of the vocabulary contains a "k", so many episodes stop early
and lengths are mixed. ``n_steps=20`` is not a multiple of the episode length, so the buffer holds
episodes cut at the rollout boundary at both ends (the second rollout starts mid-episode).
"""

from __future__ import annotations

import copy
import io

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger

from agents.algorithms.ppo import EpisodePPO, build_episode_index, evaluate_episode_actions
from agents.networks.policies import LMActorCriticPolicy
from lm_gym.models import tokenizer_name_for_model

N_ENVS = 4
N_STEPS = 20
TOL = 1e-5


def _make_env(seed: int = 0, model: str = "tiny-gpt2"):
    return make_vec_env(
        "lm_gym:LMCountUp-v0",
        n_envs=N_ENVS,
        seed=seed,
        env_kwargs={
            "stop_strings": ["k"],
            "render_mode": None,
            "tokenizer": tokenizer_name_for_model(model),
        },
    )


def _make_model(algo: type[PPO] = EpisodePPO, lm: str = "tiny-gpt2", **kwargs) -> PPO:
    params = dict(
        n_steps=N_STEPS,
        batch_size=16,
        n_epochs=2,
        learning_rate=1e-2,
        seed=0,
        policy_kwargs={"model": lm, "optimizer_class": th.optim.SGD},
    )
    params.update(kwargs)
    model = algo(LMActorCriticPolicy, _make_env(model=lm), **params)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def _collect(model: PPO, rollouts: int) -> None:
    """Collect ``rollouts`` rollouts in a row (the buffer keeps the last one)."""
    _, callback = model._setup_learn(rollouts * N_STEPS * N_ENVS, None)
    callback.on_training_start(locals(), globals())
    for _ in range(rollouts):
        assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


def _lm(model: PPO) -> str:
    """The model name a fixture's model was built with."""
    return model.policy_kwargs["model"]


@pytest.fixture(scope="module")
def rollouts(tiny_lm: str) -> list[tuple[EpisodePPO, object]]:
    """A model and a copy of its buffer after the first and after the second rollout."""
    model = _make_model(lm=tiny_lm)
    out = []
    _, callback = model._setup_learn(2 * N_STEPS * N_ENVS, None)
    callback.on_training_start(locals(), globals())
    for _ in range(2):
        model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
        out.append(copy.deepcopy(model.rollout_buffer))
    return [(model, buf) for buf in out]


def _setup(model: EpisodePPO, buffer) -> tuple:
    model.rollout_buffer = copy.deepcopy(buffer)
    model._flatten_buffer()
    setup = model._episode_setup()
    assert setup is not None
    return setup


def test_rollout_has_mixed_and_cut_episodes(rollouts) -> None:
    for k, (model, buf) in enumerate(rollouts):
        starts = buf.episode_starts.astype(bool)
        # Episode lengths inside the buffer differ (EOS-like stops), and a segment is cut at
        # the end of the buffer in every env (the last step is never an episode's last step
        # for all envs at once with these settings).
        lengths = set()
        for env in range(N_ENVS):
            idx = np.flatnonzero(starts[:, env])
            lengths.update(np.diff(idx).tolist())
        assert len(lengths) >= 3, lengths
        if k == 1:
            # The second rollout starts mid-episode in at least one env.
            assert not starts[0].all()
        _, index, _ = _setup(model, buf)
        assert index.n_unmatched == 0
        assert index.n_segments == starts.sum() + (~starts[0]).sum()


@pytest.mark.parametrize("which", [0, 1])
def test_evaluation_equals_stock(rollouts, which: int) -> None:
    """Values, log-probs and entropies of every transition equal ``evaluate_actions``'s."""
    model, buf = rollouts[which]
    network, index, ids = _setup(model, buf)
    n = N_STEPS * N_ENVS
    rng = np.random.default_rng(which)
    model.policy.set_training_mode(True)
    for batch_inds in (np.arange(n), rng.permutation(n)[:16], rng.permutation(n)[:1]):
        data = model.rollout_buffer._get_samples(batch_inds)
        actions = data.actions.long().flatten()
        with th.no_grad():
            v0, lp0, ent0 = model.policy.evaluate_actions(data.observations, actions)
            v1, lp1, ent1 = evaluate_episode_actions(network, index, ids, batch_inds, actions)
        assert v0.flatten() == pytest.approx(v1, abs=TOL)
        assert lp0 == pytest.approx(lp1, abs=TOL)
        assert ent0 == pytest.approx(ent1, abs=TOL)
        # And both equal what the (KV-cached) rollout stored.
        assert lp1 == pytest.approx(data.old_log_prob, abs=TOL)
        assert v1 == pytest.approx(data.old_values, abs=TOL)


@pytest.mark.parametrize(("which", "ent_coef"), [(0, 0.0), (1, 0.01)])
def test_loss_and_gradients_equal_stock(rollouts, which: int, ent_coef: float) -> None:
    """One minibatch's loss and the gradient of every parameter equal the stock computation
    (with ``ent_coef=0`` EpisodePPO computes the entropy without a graph: same gradients)."""
    model, buf = rollouts[which]
    model.ent_coef = ent_coef
    setup = _setup(model, buf)
    model.policy.set_training_mode(True)
    n = N_STEPS * N_ENVS
    batch_inds = np.random.default_rng(which).permutation(n)[:32]
    data = model.rollout_buffer._get_samples(batch_inds)
    actions = data.actions.long().flatten()
    # Perturb the policy so that ratios differ from 1 and clipping is active for some samples
    # (restored at the end: the fixture's model is shared).
    saved = copy.deepcopy(model.policy.state_dict())
    th.manual_seed(which)
    with th.no_grad():
        for p in model.policy.parameters():
            p.add_(th.randn_like(p) * 0.02)

    results = []
    for episode in (False, True):
        model.policy.optimizer.zero_grad()
        values, log_prob, entropy = model.evaluate_minibatch(
            setup if episode else None, batch_inds, data, actions
        )
        loss, stats = model.minibatch_loss(data, values, log_prob, entropy, 0.2, 0.5)
        loss.backward()
        grads = {
            name: p.grad.detach().clone()
            for name, p in model.policy.named_parameters()
            if p.grad is not None
        }
        results.append((loss.item(), stats, grads))
    model.policy.load_state_dict(saved)
    model.ent_coef = 0.0
    (loss0, stats0, grads0), (loss1, stats1, grads1) = results
    assert stats0["clip_fraction"] > 0
    assert loss1 == pytest.approx(loss0, abs=TOL)
    for key in stats0:
        assert stats1[key] == pytest.approx(stats0[key], abs=TOL), key
    assert grads0.keys() == grads1.keys()
    assert len(grads0) == len(list(model.policy.parameters()))
    for name, g0 in grads0.items():
        diff = (grads1[name] - g0).abs().max().item()
        assert diff <= TOL, f"{name}: max |grad difference| {diff:.3g}"
    assert any(g.abs().max() > 1e-3 for g in grads0.values())


@pytest.mark.parametrize(
    ("batch_size", "episode_minibatches", "frozen"),
    [(40, False, False), (80, True, False), (40, False, True)],
)
def test_train_equals_stock_ppo_train(
    rollouts, batch_size: int, episode_minibatches: bool, frozen: bool
) -> None:
    """A whole update (2 epochs, SGD, value clipping) of EpisodePPO and of SB3's PPO.train on the
    same rollout gives the same parameters and the same logged losses: with SB3's minibatches
    (2 per epoch, same order), and with episode minibatches when one minibatch holds the buffer.
    ``frozen``: the first half of the parameters do not train (as a LoRA policy's base), so the
    gradient clipping sees only the rest, in both."""
    model, buf = rollouts[1]
    kwargs = dict(clip_range_vf=0.5, batch_size=batch_size, learning_rate=0.05, lm=_lm(model))
    fast = _make_model(EpisodePPO, episode_minibatches=episode_minibatches, **kwargs)
    stock = _make_model(PPO, **kwargs)
    stock.policy.load_state_dict(fast.policy.state_dict())
    if frozen:
        for m in (fast, stock):
            params = list(m.policy.parameters())
            for p in params[: len(params) // 2]:
                p.requires_grad_(False)
    before = {k: v.clone() for k, v in fast.policy.state_dict().items()}
    logs = []
    for model in (stock, fast):
        model.rollout_buffer = copy.deepcopy(buf)
        np.random.seed(123)  # the minibatch order: RolloutBuffer.get draws it from NumPy
        model.train()
        logs.append(dict(model.logger.name_to_value))
    after_stock, after_fast = stock.policy.state_dict(), fast.policy.state_dict()
    moved = max((after_stock[k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-3  # the update did something
    for key in before:
        diff = (after_fast[key] - after_stock[key]).abs().max().item()
        assert diff <= TOL, f"{key}: {diff:.3g}"
    for key in ("train/loss", "train/value_loss", "train/policy_gradient_loss"):
        assert logs[1][key] == pytest.approx(logs[0][key], abs=TOL), key
    assert logs[1]["train/entropy_loss"] == pytest.approx(logs[0]["train/entropy_loss"], abs=1e-4)
    assert logs[1]["train/clip_fraction"] == logs[0]["train/clip_fraction"]
    assert fast.last_episode_index is not None and fast.last_episode_index.n_unmatched == 0


def test_episode_minibatches_hold_whole_segments(rollouts) -> None:
    """episode_minibatches: every transition once per epoch, segments cut only into chunks."""
    model, buf = rollouts[1]
    _, index, _ = _setup(model, buf)
    batches = [inds for inds, _ in model._segment_minibatches(index, 16)]
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(N_STEPS * N_ENVS))
    for inds in batches:
        for seg in np.unique(index.segment[inds]):
            offsets = np.sort(index.offset[inds][index.segment[inds] == seg])
            # a chunk is a run of consecutive steps of one segment
            assert (np.diff(offsets) == 1).all()
    assert len(batches) <= 2 * -(-(N_STEPS * N_ENVS) // 16)
    trained = _make_model(EpisodePPO, lm=_lm(model), episode_minibatches=True, n_epochs=1)
    trained.rollout_buffer = copy.deepcopy(buf)
    trained.train()
    assert trained.logger.name_to_value["train/episode_segments"] == index.n_segments


def test_collect_rollouts_equals_stock(tiny_lm: str) -> None:
    """EpisodePPO's rollout with ``bootstrap_at_budget=True`` (batched truncation bootstraps
    through the KV cache) fills the buffer as SB3's collect_rollouts does: same actions, and
    rewards, values, log-probs and returns equal within float tolerance; the batched bootstrap
    did run. (The default, no bootstrap at the budget, is tested in tests/agents/algorithms/test_budget.py.)"""
    fast = _make_model(EpisodePPO, lm=tiny_lm, bootstrap_at_budget=True)
    stock = _make_model(PPO, lm=tiny_lm)
    stock.policy.load_state_dict(fast.policy.state_dict())
    calls = []
    inner = fast.truncation_values

    def counting(infos, dones):
        out = inner(infos, dones)
        calls.append(len(out))
        return out

    fast.truncation_values = counting
    buffers = []
    for model in (stock, fast):
        th.manual_seed(7)
        _collect(model, 2)
        buffers.append(model.rollout_buffer)
    s, f = buffers
    assert sum(calls) >= 2  # truncated episodes were bootstrapped
    assert (s.actions == f.actions).all()
    assert (s.episode_starts == f.episode_starts).all()
    for name in ("rewards", "values", "log_probs", "returns", "advantages"):
        np.testing.assert_allclose(getattr(f, name), getattr(s, name), atol=TOL, err_msg=name)


def test_unmatched_transitions_fall_back_to_stock(rollouts) -> None:
    """A window that is not left-padded (here: a hole in its mask) is evaluated the stock way."""
    model, buf = rollouts[1]
    tampered = copy.deepcopy(buf)
    width = tampered.observations["attention_mask"].shape[-1]
    tampered.observations["attention_mask"][5, 2, width - 3] = 0  # mid-episode transition
    network, index, ids = _setup(model, tampered)
    assert index.n_unmatched == 1
    n = N_STEPS * N_ENVS
    batch_inds = np.arange(n)
    data = model.rollout_buffer._get_samples(batch_inds)
    actions = data.actions.long().flatten()
    with th.no_grad():
        v0, lp0, ent0 = model.policy.evaluate_actions(data.observations, actions)
        v1, lp1, ent1 = model.evaluate_minibatch((network, index, ids), batch_inds, data, actions)
    assert v0.flatten() == pytest.approx(v1, abs=TOL)
    assert lp0 == pytest.approx(lp1, abs=TOL)
    assert ent0 == pytest.approx(ent1, abs=TOL)


def test_build_episode_index_segments() -> None:
    """Segments split at episode starts and at windows that do not nest; offsets count back."""
    width, n_steps, n_envs = 6, 5, 2
    pad = 0
    ids = np.full((n_envs * n_steps, width), pad)
    mask = np.zeros_like(ids)
    starts = np.zeros((n_steps, n_envs))
    # env 0: an episode cut at the start (prompt [7, 8] + 1 token before the buffer), then a new
    # episode at step 3 (prompt [9]).
    seqs0 = [[7, 8, 1], [7, 8, 1, 2], [7, 8, 1, 2, 3], [9], [9, 4]]
    starts[3, 0] = 1
    # env 1: one episode over the whole buffer, prompt [5].
    seqs1 = [[5], [5, 1], [5, 1, 2], [5, 1, 2, 3], [5, 1, 2, 3, 4]]
    starts[0, 1] = 1
    for env, seqs in enumerate((seqs0, seqs1)):
        for step, seq in enumerate(seqs):
            row = env * n_steps + step
            ids[row, width - len(seq) :] = seq
            mask[row, width - len(seq) :] = 1
    index = build_episode_index(ids, mask, starts)
    assert index.n_segments == 3
    assert index.offset.tolist() == [2, 1, 0, 1, 0, 4, 3, 2, 1, 0]
    assert index.context[index.segment].tolist() == [2, 2, 2, 4, 4, 9, 9, 9, 9, 9]
    assert index.n_real[index.segment].tolist() == [5, 5, 5, 2, 2, 5, 5, 5, 5, 5]
    # A token that changes inside an episode breaks the chain there.
    ids[1, -1] = 42
    index = build_episode_index(ids, mask, starts)
    assert index.n_segments == 4
    assert index.offset[:3].tolist() == [1, 0, 0]


def test_save_load_and_learn(tiny_lm: str, tmp_path) -> None:
    """learn() runs through SB3's loop; save/load keeps the class and its option."""
    model = _make_model(EpisodePPO, lm=tiny_lm, episode_eval=True, n_epochs=1)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(N_STEPS * N_ENVS)
    assert model._n_updates == 1
    assert model.last_episode_index is not None and model.last_episode_index.n_unmatched == 0
    assert any(not th.equal(v, model.policy.state_dict()[k]) for k, v in before.items())
    path = tmp_path / "episode_ppo.zip"
    model.save(path)
    loaded = EpisodePPO.load(path, env=_make_env(model=tiny_lm))
    assert isinstance(loaded, EpisodePPO) and loaded.episode_eval
    assert loaded.last_episode_index is None
    obs = model.env.reset()
    a0, _ = model.predict(obs, deterministic=True)
    a1, _ = loaded.predict(obs, deterministic=True)
    assert (a0 == a1).all()


def test_other_policies_use_the_stock_update() -> None:
    """Without an LM policy EpisodePPO warns once and is SB3's PPO."""
    env = gym.make("CartPole-v1")
    model = EpisodePPO("MlpPolicy", env, n_steps=32, batch_size=16, n_epochs=1, seed=0)
    with pytest.warns(UserWarning, match="stock PPO update"):
        model.learn(32)
    assert model.last_episode_index is None
    buf = io.BytesIO()
    model.save(buf)
