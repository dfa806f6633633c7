"""LoRA adapters (``peft``) on the LM policies: only adapters (and the value head) train, the KL
reference is the same LM with its adapters off (no second copy of the weights), save/load and
a merged export work, for GPT-2 (Conv1D projections) and the tiny Llama."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("peft")

from stable_baselines3.common.vec_env import DummyVecEnv

from agents.algorithms.grpo import GroupRelativePPO
from agents.algorithms.ppo import EpisodePPO
from agents.export import export_pretrained
from agents.networks.actor_critic import CausalLMActorCritic
from agents.networks.policies import LMActorCriticPolicy
from lm_gym.models import load_causal_lm, tokenizer_name_for_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def text_env(model: str, n_envs: int = 2) -> DummyVecEnv:
    tok = tokenizer_name_for_model(model)
    env = DummyVecEnv(
        [lambda: gym.make("LMText-v0", max_new_tokens=3, tokenizer=tok) for _ in range(n_envs)]
    )
    env.seed(0)
    return env


def lora_ppo(model: str, **kwargs) -> EpisodePPO:
    return EpisodePPO(
        LMActorCriticPolicy,
        text_env(model),
        n_steps=6,
        batch_size=12,
        n_epochs=2,
        learning_rate=1e-2,
        policy_kwargs={"model": model, "lora": {"r": 4}},
        seed=0,
        **kwargs,
    )


def test_only_adapters_and_value_head_train(tiny_lm):
    model = lora_ppo(tiny_lm)
    net = model.policy.net
    assert net.lora
    base = {k: v.clone() for k, v in net.lm.state_dict().items() if "lora_" not in k}
    adapters = {k: v.clone() for k, v in net.lm.state_dict().items() if "lora_" in k}
    assert adapters, "no adapters were injected"
    optimised = {id(p) for g in model.policy.optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.policy.parameters() if p.requires_grad}
    assert optimised == trainable
    n_trainable = sum(p.numel() for p in model.policy.parameters() if p.requires_grad)
    assert n_trainable < 0.05 * sum(p.numel() for p in model.policy.parameters())
    model.learn(24)
    after = net.lm.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert any(not torch.equal(after[k], v) for k, v in adapters.items())


def test_reference_is_the_base_model_without_a_copy(tiny_lm):
    model = lora_ppo(tiny_lm)
    model.learn(24)
    net = model.policy.net
    ref = net.reference_lm()
    assert list(ref.parameters()) == []  # shares the policy's weights
    for p in ref.parameters():  # freezing "the reference" must not freeze the adapters
        p.requires_grad_(False)
    assert any(p.requires_grad for n, p in net.named_parameters() if "lora_" in n)
    ids = torch.randint(0, 200, (2, 7))
    mask = torch.ones_like(ids)
    fresh = CausalLMActorCritic(load_causal_lm(tiny_lm), value_head=False)
    with torch.no_grad():
        ref_logits, _ = ref(ids, mask)
        base_logits, _ = fresh(ids, mask)
        policy_logits, _ = net(ids, mask)
    torch.testing.assert_close(ref_logits, base_logits, atol=1e-5, rtol=1e-5)
    assert (policy_logits - base_logits).abs().max() > 1e-3  # the adapters did learn something
    # the adapters are back on after the reference's forward
    with torch.no_grad():
        again, _ = net(ids, mask)
    torch.testing.assert_close(again, policy_logits)
    # scoring(): the adapters switched off once for nested forwards, and on again after
    entered = []
    disable = net._peft.disable_adapter
    net._peft.disable_adapter = lambda: (entered.append(1), disable())[1]
    try:
        with torch.no_grad(), ref.scoring():
            hidden, _ = ref.run_trunk(ids, mask)
            nested = ref.logits_from_hidden(hidden[:, -1])
    finally:
        del net._peft.disable_adapter
    assert entered == [1]
    torch.testing.assert_close(nested, base_logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        again, _ = net(ids, mask)
    torch.testing.assert_close(again, policy_logits)


def test_save_load_and_merged_export(tiny_lm, tmp_path):
    model = lora_ppo(tiny_lm)
    model.learn(24)
    model.save(tmp_path / "m.zip")
    loaded = EpisodePPO.load(tmp_path / "m.zip")
    assert loaded.policy.net.lora
    obs = text_env(tiny_lm).reset()
    a1, _ = model.predict(obs, deterministic=True)
    a2, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)

    from transformers import AutoModelForCausalLM

    folder = export_pretrained(model, tmp_path / "export")
    plain = AutoModelForCausalLM.from_pretrained(folder)
    assert not any("lora" in k for k in plain.state_dict())
    real = obs["attention_mask"][0] == 1  # the prompt's real tokens: positions 0..n-1 in both
    ids = torch.as_tensor(obs["input_ids"][0][real]).long()[None]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected, _ = model.policy.net(ids, mask)
        got = plain(input_ids=ids, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert model.policy.net.lora  # exporting did not merge the policy's own adapters


def test_grpo_kl_loss_uses_the_adapters_off_reference():
    env = text_env("tiny-gpt2", n_envs=4)
    model = GroupRelativePPO(
        LMActorCriticPolicy,
        env,
        group_size=2,
        n_steps=6,
        batch_size=24,
        kl_loss_coef=0.1,
        policy_kwargs={"model": "tiny-gpt2", "value_head": False, "lora": {}},
        seed=0,
    )
    model.learn(24)
    ref = model.reference_network()
    assert list(ref.parameters()) == []


def test_lora_errors(monkeypatch):
    with pytest.raises(ValueError, match="Unknown LoRA option"):
        CausalLMActorCritic("tiny-gpt2", lora={"rank": 4})
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="pip install peft"):
        CausalLMActorCritic("tiny-gpt2", lora={})
