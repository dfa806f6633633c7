"""Any causal LM, not only GPT-2: the built-in tiny Llama (rotary positions, 4 query / 2 key-value
heads, SmolLM2's 49152-token vocabulary, tied head) through the parts that are not already run with
it by the ``tiny_lm`` parametrizations of ``test_kv_cache.py``, ``test_policies.py`` and
``test_episode_ppo.py``: the network's parts found by role, a model given as a folder, the error
that names the tokenizer to use, NLPO masks the Gymnasium way, and export to a Hugging Face folder
(a KL reference given by name: ``tests/agents/algorithms/test_kl.py``). Offline, a few seconds each.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.algorithms.nlpo import NLPOActionMaskWrapper, NLPORolloutBuffer, TopPMasker
from agents.export import export_pretrained
from agents.networks.actor_critic import CausalLMActorCritic, RolloutKVCache
from agents.networks.policies import LMActorCriticPolicy, MaskableLMActorCriticPolicy
from lm_gym.models import model_folder
from lm_gym.tasks.verifiable import CountUpEnv

LLAMA = "tiny-llama"
VOCAB = 49152

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env(n_envs: int = 2, tokenizer: str = LLAMA, **kwargs) -> DummyVecEnv:
    kwargs.setdefault("max_new_tokens", 4)
    env = DummyVecEnv([lambda: CountUpEnv(tokenizer=tokenizer, **kwargs) for _ in range(n_envs)])
    env.seed(0)
    return env


def test_network_finds_the_llama_parts_by_role() -> None:
    """Trunk, LM head, widths and the frozen copy come from the model's own accessors, not from
    GPT-2's attribute names (``transformer``, ``wte``)."""
    net = CausalLMActorCritic(LLAMA)
    lm = net.lm
    assert lm.config.model_type == "llama"
    assert net.trunk is lm.model and net.lm_head is lm.lm_head
    assert net.lm_head.weight is lm.get_input_embeddings().weight  # tied
    assert (net.vocab_size, net.hidden_size) == (VOCAB, 64)
    assert net.value_head is not None and net.value_head.in_features == 64
    frozen = net.frozen_lm_copy()
    assert frozen.value_head is None and not any(p.requires_grad for p in frozen.parameters())
    ids = torch.tensor([[0, 0, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    with torch.no_grad():
        logits, values = net(ids, mask)
        frozen_logits, _ = frozen(ids, mask, RolloutKVCache())
    assert logits.shape == (1, VOCAB) and values.shape == (1,)
    assert torch.allclose(logits, frozen_logits, atol=1e-5)


def test_a_llama_folder_names_its_own_tokenizer() -> None:
    """A model given as a folder: on an env of another vocabulary the error names the folder as
    the tokenizer to use; on an env built with that tokenizer the policy acts."""
    folder = model_folder(LLAMA)
    assert folder is not None
    with pytest.raises(ValueError, match="does not match") as err:
        PPO(LMActorCriticPolicy, _env(1, tokenizer="gpt2"), policy_kwargs={"model": folder})
    assert f"gym.make(<env id>, tokenizer={folder!r})" in str(err.value)
    env = _env(2, tokenizer=folder)
    assert env.action_space.n == VOCAB
    model = PPO(LMActorCriticPolicy, env, n_steps=4, batch_size=8, policy_kwargs={"model": folder})
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (2,)


def test_nlpo_env_masks_from_a_llama_masker() -> None:
    """``NLPOActionMaskWrapper`` over a Llama masker: masks of the Llama vocabulary that follow the
    observation, and MaskablePPO learning with them (stored bit-packed)."""
    masker = TopPMasker.from_model(LLAMA, top_p=0.5)
    wrapped = NLPOActionMaskWrapper(CountUpEnv(tokenizer=LLAMA, max_new_tokens=3), masker)
    obs, info = wrapped.reset(seed=0)
    assert info["action_mask"].shape == (VOCAB,)
    assert 0 < info["action_mask"].sum() < VOCAB
    action = int(np.flatnonzero(wrapped.action_masks())[0])
    obs, _, _, _, info = wrapped.step(action)
    ids = torch.as_tensor(obs["input_ids"])[None]
    expected = masker(ids, torch.as_tensor(obs["attention_mask"])[None])[0].numpy()
    np.testing.assert_array_equal(info["action_mask"].astype(bool), expected)

    env = DummyVecEnv(
        [lambda: NLPOActionMaskWrapper(CountUpEnv(tokenizer=LLAMA, max_new_tokens=4), masker)] * 2
    )
    model = MaskablePPO(
        MaskableLMActorCriticPolicy,
        env,
        n_steps=8,
        batch_size=16,
        n_epochs=1,
        rollout_buffer_class=NLPORolloutBuffer,
        policy_kwargs={"model": LLAMA, "nlpo_top_p": None},
        seed=0,
    )
    model.learn(16)
    assert model.rollout_buffer.packed_masks is not None
    assert model.rollout_buffer.packed_masks.shape[-1] == -(-VOCAB // 8)


def test_llama_policy_exports_to_a_hf_folder(tmp_path) -> None:
    """A trained Llama policy exports as a Hugging Face folder (with SmolLM2's tokenizer) that
    ``AutoModelForCausalLM`` loads as a Llama giving the policy's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PPO(
        LMActorCriticPolicy,
        _env(2),
        n_steps=8,
        batch_size=16,
        n_epochs=1,
        learning_rate=1e-3,
        seed=0,
        policy_kwargs={"model": LLAMA},
    )
    model.learn(16)
    folder = export_pretrained(model, tmp_path / "hf", tokenizer=LLAMA)
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert lm.config.model_type == "llama" and len(tok) == VOCAB
    ids = tok("Write 5 increasing numbers", return_tensors="pt").input_ids
    with torch.no_grad():
        expected, _ = model.policy.net(ids, torch.ones_like(ids))
        assert torch.allclose(lm(ids).logits[:, -1], expected, atol=1e-4)
    out = lm.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1 and ids.shape[1] < out.shape[1] <= ids.shape[1] + 3
    assert not any("value_head" in k for k in lm.state_dict())
