"""LM policies for SB3: construction, weights, errors, devices, save/load, export, NLPO (the KL
penalty: tests/agents/algorithms/test_kl.py).

Tests that take ``tiny_lm`` run with each built-in tiny model (GPT-2 and Llama), each on an env
with the model's tokenizer."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

from gymnasium import spaces
from sb3_contrib import TRPO, MaskablePPO
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.algorithms.nlpo import (
    NLPOActionMaskWrapper,
    NLPOMaskUpdateCallback,
    NLPORolloutBuffer,
    TopPMasker,
    top_p_mask,
)
from agents.algorithms.ppo import EpisodePPO
from agents.export import export_pretrained
from agents.networks.actor_critic import position_ids_from_mask
from agents.networks.policies import (
    LMActorCriticPolicy,
    LMDQNPolicy,
    MaskableLMActorCriticPolicy,
)
from lm_gym.models import load_causal_lm, resolve_device, tokenizer_name_for_model
from lm_gym.tasks.verifiable import CountUpEnv

TINY = {"model": "tiny-gpt2"}
ALGOS = {
    "PPO": (PPO, LMActorCriticPolicy, {"n_steps": 8, "batch_size": 16, "n_epochs": 1}),
    "A2C": (A2C, LMActorCriticPolicy, {"n_steps": 4}),
    "MaskablePPO": (
        MaskablePPO,
        MaskableLMActorCriticPolicy,
        {"n_steps": 8, "batch_size": 16, "n_epochs": 1, "rollout_buffer_class": NLPORolloutBuffer},
    ),
    "DQN": (DQN, LMDQNPolicy, {"learning_starts": 8, "buffer_size": 64, "batch_size": 8}),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_env(n_envs: int = 2, model: str = "tiny-gpt2", **kwargs) -> DummyVecEnv:
    """``n_envs`` ``CountUpEnv`` in the vocabulary of ``model``."""
    kwargs.setdefault("max_new_tokens", 4)
    kwargs.setdefault("tokenizer", tokenizer_name_for_model(model))
    env = DummyVecEnv([lambda: CountUpEnv(**kwargs) for _ in range(n_envs)])
    env.seed(0)
    return env


def build(name: str, env=None, model: str = "tiny-gpt2", **policy_kwargs):
    algo, policy, kwargs = ALGOS[name]
    return algo(
        policy,
        env or make_env(model=model),
        policy_kwargs={**TINY, "model": model, **policy_kwargs},
        learning_rate=1e-3,
        seed=0,
        **kwargs,
    )


def learn(model, steps: int = 16):
    if isinstance(model, MaskablePPO):
        return model.learn(steps, use_masking=False)
    return model.learn(steps)


def lm_state(model) -> dict[str, torch.Tensor]:
    policy = getattr(model, "policy", model)
    net = policy.q_net.net if isinstance(policy, LMDQNPolicy) else policy.net
    return net.lm.state_dict()


# -- construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALGOS))
def test_pretrained_weights_unchanged_after_construction(name, tiny_lm):
    reference = load_causal_lm(tiny_lm).state_dict()
    model = build(name, model=tiny_lm)
    state = lm_state(model)
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


def test_ortho_init_is_refused_with_a_warning():
    reference = load_causal_lm("tiny-gpt2").state_dict()
    with pytest.warns(UserWarning, match="ortho_init"):
        model = build("PPO", ortho_init=True)
    assert all(torch.equal(lm_state(model)[k], v) for k, v in reference.items())


def test_one_trunk_shared_and_model_object_used_as_is(tiny_lm):
    lm = load_causal_lm(tiny_lm)
    model = PPO(LMActorCriticPolicy, make_env(model=tiny_lm), policy_kwargs={"model": lm})
    net = model.policy.net
    assert net.lm is lm
    assert net.trunk is lm.base_model
    # tied, not wiped
    assert net.lm_head.weight is lm.get_input_embeddings().weight
    n_lm = sum(p.numel() for p in lm.parameters())
    n_policy = sum(p.numel() for p in model.policy.parameters())
    assert n_policy == n_lm + sum(p.numel() for p in net.value_head.parameters())
    optimised = sum(p.numel() for g in model.policy.optimizer.param_groups for p in g["params"])
    assert optimised == n_policy


def test_detach_value_trains_the_value_head_only():
    """With ``detach_value`` the value loss has no gradient in the LM; without it, it has."""
    env = make_env()
    obs = env.reset()
    for detach in (False, True):
        model = PPO(LMActorCriticPolicy, env, policy_kwargs={**TINY, "detach_value": detach})
        policy = model.policy
        values = policy.predict_values(policy.obs_to_tensor(obs)[0])
        values.sum().backward()
        lm_grads = [p.grad for p in policy.net.lm.parameters() if p.grad is not None]
        assert all(p.grad is not None for p in policy.net.value_head.parameters())
        if detach:
            assert lm_grads == []
        else:
            assert any(g.abs().sum() > 0 for g in lm_grads)


def test_policy_without_value_head_gives_zero_values_and_trains(tmp_path):
    env = DummyVecEnv([lambda: gym.make("LMText-v0", max_new_tokens=4) for _ in range(2)])
    env.seed(0)
    model = EpisodePPO(
        LMActorCriticPolicy,
        env,
        policy_kwargs={**TINY, "value_head": False},
        n_steps=32,
        batch_size=64,
        n_epochs=1,
        vf_coef=0.0,
        seed=0,
    )
    assert model.policy.net.value_head is None
    before = {k: v.clone() for k, v in lm_state(model).items()}
    model.learn(64)
    assert np.all(model.rollout_buffer.values == 0)
    assert model.rollout_buffer.rewards.std() > 0  # a learning signal to move the LM
    assert model.last_episode_index is not None  # the episode-level update ran
    assert any(not torch.equal(before[k], v) for k, v in lm_state(model).items())
    model.save(tmp_path / "m.zip")
    loaded = EpisodePPO.load(tmp_path / "m.zip")
    assert loaded.policy.net.value_head is None


def test_dqn_q_values_are_lm_logits_and_target_is_a_copy(tiny_lm):
    model = build("DQN", model=tiny_lm)
    q_net, target = model.policy.q_net, model.policy.q_net_target
    obs = make_env(1, model=tiny_lm).reset()
    obs_t = {k: torch.as_tensor(v).float() for k, v in obs.items()}
    ids, mask = obs_t["input_ids"].long(), obs_t["attention_mask"].long()
    with torch.no_grad():
        lm_logits = q_net.net.lm(
            ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
        ).logits[:, -1]
        assert torch.allclose(q_net(obs_t), lm_logits, atol=1e-4)
        assert torch.allclose(target(obs_t), lm_logits, atol=1e-4)
    online = {id(p) for p in q_net.parameters()}
    assert not online & {id(p) for p in target.parameters()}
    assert {id(p) for g in model.policy.optimizer.param_groups for p in g["params"]} == online


def test_trpo_runs():
    """TRPO needs second derivatives: eager attention (PyTorch's CPU SDPA has no double backward)."""
    model = TRPO(
        LMActorCriticPolicy,
        make_env(),
        n_steps=4,
        batch_size=8,
        cg_max_steps=3,
        n_critic_updates=1,
        line_search_max_iter=3,
        policy_kwargs={**TINY, "attn_implementation": "eager"},
        seed=0,
    )
    model.learn(8)


# -- construction errors --------------------------------------------------------------------------


def test_vocabulary_mismatch_is_a_clear_error():
    small = load_causal_lm("tiny-gpt2", vocab_size=1000)
    with pytest.raises(ValueError, match=r"vocabulary \(1000 tokens\).*Discrete\(50257\)") as err:
        PPO(LMActorCriticPolicy, make_env(), policy_kwargs={"model": small})
    # a model object without a name: no tokenizer to name (and not GPT-2's for 1000 tokens)
    assert "tokenizer=<the model's name or folder>" in str(err.value)


@pytest.mark.parametrize(
    ("model", "env_model", "expected"),
    [
        ("tiny-llama", "tiny-gpt2", "gym.make(<env id>, tokenizer='tiny-llama')"),
        ("tiny-gpt2", "tiny-llama", "gym.make(<env id>, tokenizer='gpt2')"),
    ],
)
@pytest.mark.parametrize("name", ["PPO", "DQN"])
def test_vocabulary_mismatch_names_the_models_tokenizer(name, model, env_model, expected):
    """The error says which ``tokenizer=`` builds an env that the model can act on."""
    algo, policy, _ = ALGOS[name]
    vocab = {"tiny-gpt2": 50257, "tiny-llama": 49152}
    with pytest.raises(ValueError) as err:
        algo(policy, make_env(1, model=env_model), policy_kwargs={"model": model})
    message = str(err.value)
    assert f"vocabulary ({vocab[model]} tokens)" in message
    assert f"action space Discrete({vocab[env_model]})" in message
    assert expected in message


def test_vocabulary_mismatch_on_a_word_level_env_names_model_for_env():
    """The README's SB3 pattern on ``LMWordSort-v0`` (5 words) with a GPT-2 model: the fix is
    ``model_for_env``, which builds the model with the env's vocabulary, and it works."""
    from agents.common.base import model_for_env
    from lm_gym.tasks.toy import LMWordSortEnv

    env = DummyVecEnv([LMWordSortEnv])
    with pytest.raises(ValueError, match=r"Discrete\(5\): a word-level env.*model_for_env"):
        PPO(LMActorCriticPolicy, env, policy_kwargs={"model": "tiny-gpt2"})
    model = PPO(
        LMActorCriticPolicy, env, policy_kwargs={"model": model_for_env("tiny-gpt2", env.envs[0])}
    )
    assert model.policy.net.vocab_size == 5


def test_wrong_observation_space_is_a_clear_error():
    obs_space = spaces.Box(0, 50256, (16,), dtype=np.int64)
    for policy in (LMActorCriticPolicy, MaskableLMActorCriticPolicy, LMDQNPolicy):
        with pytest.raises(ValueError, match="lm_gym observation space"):
            policy(obs_space, spaces.Discrete(50257), lambda _: 1e-3, **TINY)
    with pytest.raises(ValueError, match="Discrete"):
        env = make_env(1)
        LMActorCriticPolicy(env.observation_space, spaces.Box(-1, 1, (2,)), lambda _: 1e-3)


def test_unknown_model_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LM_GYM_OFFLINE", "1")
    with pytest.raises(ValueError, match="Cannot load causal LM 'no-such-model-xyz'"):
        PPO(LMActorCriticPolicy, make_env(), policy_kwargs={"model": "no-such-model-xyz"})


def test_window_longer_than_model_context():
    env = make_env(1, max_prompt_tokens=1000, max_new_tokens=100)
    with pytest.raises(ValueError, match="longer than the model's context"):
        PPO(LMActorCriticPolicy, env, policy_kwargs=TINY)


# -- devices --------------------------------------------------------------------------------------


def test_auto_device_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    model = build("PPO")
    assert model.policy.device.type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_an_error():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        build("PPO", device="cuda")
    # the scorers of the envs resolve devices the same way (one resolution for all of lm-gym)
    from lm_gym.rewards.sentiment import ClassifierScorer

    with pytest.raises(RuntimeError, match="CUDA is not available"):
        ClassifierScorer("any-folder", device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bf16_on_cpu_warns():
    with pytest.warns(UserWarning, match="bf16"):
        build("PPO", bf16=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_rollout():
    model = build("PPO", bf16=True)
    assert model.policy.device.type == "cuda"
    learn(model, 16)


# -- save / load / export -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALGOS))
def test_save_load_gives_identical_actions(name, tiny_lm, tmp_path):
    algo = ALGOS[name][0]
    model = build(name, model=tiny_lm)
    learn(model, 16)
    model.save(tmp_path / "model.zip")
    loaded = algo.load(tmp_path / "model.zip")
    obs = make_env(3, model=tiny_lm).reset()
    kwargs = {"action_masks": None} if name == "MaskablePPO" else {}
    for deterministic in (True, False):
        actions = []
        for m in (model, loaded):
            torch.manual_seed(3)
            actions.append(m.predict(obs, deterministic=deterministic, **kwargs)[0])
        np.testing.assert_array_equal(*actions)
        assert actions[0].shape == (3,)
        assert ((actions[0] >= 0) & (actions[0] < model.action_space.n)).all()
    for key, value in lm_state(model).items():
        assert torch.equal(lm_state(loaded)[key], value), key


def test_export_pretrained_loads_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = build("PPO")
    learn(model, 16)
    folder = export_pretrained(model, tmp_path / "hf", tokenizer="gpt2")
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("Write 5 increasing numbers", return_tensors="pt").input_ids
    out = lm.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 5)
    with torch.no_grad():
        expected, _ = model.policy.net(ids, torch.ones_like(ids))
        assert torch.allclose(lm(ids).logits[:, -1], expected, atol=1e-4)
    assert not any("value_head" in k for k in lm.state_dict())


# -- NLPO -----------------------------------------------------------------------------------------


def test_top_p_mask():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]]))
    assert top_p_mask(logits, 0.7).tolist() == [[True, True, False, False], [True] + [False] * 3]
    assert top_p_mask(logits, 0.9).tolist()[0] == [True, True, True, False]
    assert top_p_mask(logits, 1.0).all()


def test_nlpo_buffer_memory_within_2x_of_ppo():
    env = CountUpEnv(max_prompt_tokens=64, max_new_tokens=48)  # LMText-v0's window (112)
    args = (2048, env.observation_space, env.action_space)
    plain = DictRolloutBuffer(*args, n_envs=8)
    nlpo = NLPORolloutBuffer(*args, n_envs=8)
    plain_bytes = sum(o.nbytes for o in plain.observations.values()) + sum(
        getattr(plain, k).nbytes
        for k in ("actions", "rewards", "returns", "episode_starts", "values", "log_probs")
    )
    plain_bytes += plain.advantages.nbytes
    assert nlpo.nbytes() <= 2 * plain_bytes
    assert nlpo.nbytes() == plain_bytes  # NLPO masks are recomputed, not stored
    # sb3-contrib's own buffer: float32 masks of vocabulary size per step (3.3 GB at 2048 x 8)
    mask_bytes = 2048 * 8 * env.action_space.n * 4
    assert mask_bytes > 3.2e9
    assert MaskableDictRolloutBuffer.reset is not NLPORolloutBuffer.reset


def test_nlpo_buffer_packs_env_masks():
    env = make_env(2)
    buf = NLPORolloutBuffer(4, env.observation_space, env.action_space, n_envs=2)
    rng = np.random.default_rng(0)
    masks = rng.random((4, 2, 50257)) < 0.3
    obs = env.reset()
    for t in range(4):
        buf.add(
            obs,
            np.zeros((2, 1)),
            np.zeros(2),
            np.zeros(2, bool),
            torch.zeros(2),
            torch.zeros(2),
            action_masks=masks[t],
        )
    assert buf.packed_masks.nbytes == 4 * 2 * 6283
    buf.compute_returns_and_advantage(torch.zeros(2), np.zeros(2))
    next(buf.get())  # flattens the buffer (env-major order)
    sample = buf._get_samples(np.arange(8))
    flat = masks.swapaxes(0, 1).reshape(-1, 50257)
    assert torch.equal(sample.action_masks, torch.as_tensor(flat))


def test_nlpo_masks_recomputed_in_update_match_rollout(tiny_lm):
    model = build("MaskablePPO", model=tiny_lm, nlpo_top_p=0.5)
    model.learn(16, use_masking=False)  # one rollout (8 steps x 2 envs), then an update
    policy = model.policy
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    _, callback = model._setup_learn(16, None, reset_num_timesteps=False)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, 8, use_masking=False)
    buf = model.rollout_buffer
    assert buf.packed_masks is None  # nothing of vocabulary size stored
    (batch,) = buf.get()
    assert batch.action_masks is None
    with torch.no_grad():
        _, log_prob, _ = policy.evaluate_actions(batch.observations, batch.actions.flatten())
        masks = policy.masker(batch.observations["input_ids"], batch.observations["attention_mask"])
    assert torch.allclose(log_prob, batch.old_log_prob, atol=1e-4)
    assert masks.shape[1] == model.action_space.n
    assert masks.sum(1).max() < model.action_space.n  # the masks really restrict the vocabulary
    assert masks[torch.arange(len(masks)), batch.actions.long().flatten()].all()
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())


def test_nlpo_mask_update_callback_refreshes_the_lagged_model():
    model = build("MaskablePPO", nlpo_top_p=0.9)
    callback = NLPOMaskUpdateCallback(update_every=1)
    model.learn(32, use_masking=False, callback=callback)  # 2 rollouts: 1 refresh
    assert callback.refreshes == 1
    masker_state = model.policy.masker.net.lm.state_dict()
    policy_state = model.policy.net.lm.state_dict()
    initial = load_causal_lm("tiny-gpt2").state_dict()
    key = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(masker_state[key], initial[key])
    assert masker_state.keys() == policy_state.keys()
    assert not any(p.requires_grad for p in model.policy.masker.parameters())


def test_nlpo_env_wrapper_gymnasium_way():
    masker = TopPMasker.from_model("tiny-gpt2", top_p=0.5)
    env = NLPOActionMaskWrapper(CountUpEnv(max_new_tokens=3), masker)
    obs, info = env.reset(seed=0)
    assert info["action_mask"].dtype == np.int8 and info["action_mask"].shape == (50257,)
    assert 0 < info["action_mask"].sum() < 50257
    np.testing.assert_array_equal(env.action_masks(), info["action_mask"].astype(bool))
    action = int(np.flatnonzero(env.action_masks())[0])
    obs, _, _, _, info = env.step(action)
    ids = torch.as_tensor(obs["input_ids"])[None]
    expected = masker(ids, torch.as_tensor(obs["attention_mask"])[None])[0].numpy()
    np.testing.assert_array_equal(info["action_mask"].astype(bool), expected)


def test_maskable_ppo_with_env_masks():
    masker = TopPMasker.from_model("tiny-gpt2", top_p=0.5)
    env = DummyVecEnv([lambda: NLPOActionMaskWrapper(CountUpEnv(max_new_tokens=4), masker)] * 2)
    model = MaskablePPO(
        MaskableLMActorCriticPolicy,
        env,
        n_steps=8,
        batch_size=16,
        n_epochs=1,
        rollout_buffer_class=NLPORolloutBuffer,
        policy_kwargs={**TINY, "nlpo_top_p": None},
        seed=0,
    )
    model.learn(16)  # use_masking=True: the env's masks, stored bit-packed
    assert model.rollout_buffer.packed_masks is not None


def test_former_gpt2_names_are_aliases():
    """The GPT-2 names stay importable: README-era code, and models saved before the rename (SB3
    pickles the policy class by its module and name, so loading looks the old name up)."""
    import agents
    from agents.networks import actor_critic as network
    from agents.networks import policies

    assert agents.GPT2ActorCritic is network.CausalLMActorCritic is network.GPT2ActorCritic
    pairs = {
        "GPT2ActorCriticPolicy": LMActorCriticPolicy,
        "MaskableGPT2ActorCriticPolicy": MaskableLMActorCriticPolicy,
        "GPT2DQNPolicy": LMDQNPolicy,
        "GPT2QNetwork": policies.LMQNetwork,
        "GPT2PolicyMixin": policies.LMPolicyMixin,
        "gpt2_network": policies.lm_network,
    }
    for old, new in pairs.items():
        assert getattr(policies, old) is new and old in policies.__all__, old
    assert set(policies.__all__) <= set(dir(policies))


def test_no_warnings_on_construction():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("PPO")
