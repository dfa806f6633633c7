"""``prompt_template="chat"``: instruct models see their own chat template around the task text."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from test_envs import run_episode

from lm_gym.envs import TextEnv

CHAT = {"tokenizer": "tiny-llama", "prompt_template": "chat"}
#: every offline id whose tokenizer may be swapped (the toy MDPs have word-level tokenizers),
#: with the start of the user message its task defines
INSTRUCTIONS = {
    "LMText-v0": "Continue this movie review positively:",
    "LMTranslate-v0": "Translate to German:",
    "LMSummarize-v0": "Summarise the following text in one sentence.",
    "LMCountUp-v0": "Write 5 increasing numbers, starting above ",
    "LMAlliteration-v0": "Write words that start with the letter ",
}
SENTINEL = "\x00TASK-TEXT\x00"


def real_ids(obs: dict[str, np.ndarray]) -> list[int]:
    """The ids under the attention mask (the prompt and the tokens so far)."""
    return [int(i) for i in obs["input_ids"][obs["attention_mask"] == 1]]


def messages(env: TextEnv, task_text: str) -> list[dict[str, str]]:
    """The task's chat messages, written from its class attributes (not from the env's method)."""
    cls = type(env)
    user = {"role": "user", "content": cls.chat_user.format(prompt=task_text)}
    return [{"role": "system", "content": cls.chat_system}, user] if cls.chat_system else [user]


def template_ids(env: TextEnv, task_text: str) -> list[int]:
    return list(
        env.tokenizer.apply_chat_template(
            messages(env, task_text), add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


@pytest.mark.parametrize("env_id", sorted(INSTRUCTIONS))
def test_observation_is_the_chat_template_of_the_task_messages(env_id: str) -> None:
    env: TextEnv = gym.make(env_id, **CHAT).unwrapped
    plain: TextEnv = gym.make(env_id, tokenizer="tiny-llama").unwrapped
    obs, info = env.reset(seed=5)
    sample = env.sample
    assert sample is not None
    user = messages(env, sample.prompt)[-1]["content"]
    assert user.startswith(INSTRUCTIONS[env_id]) and user.endswith(sample.prompt)
    ids = real_ids(obs)
    assert ids == template_ids(env, sample.prompt)
    assert info["prompt_tokens"] == len(ids)
    assert env.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    # info["prompt"] (what rewards read) is the plain prompt text, the same in both styles
    plain_obs, plain_info = plain.reset(seed=5)
    assert plain.sample == sample and plain_info["prompt"] == info["prompt"]
    assert real_ids(plain_obs) == plain.tokenizer.encode(info["prompt"], add_special_tokens=False)
    # the window grew by the template's own tokens: the task text keeps its plain budget
    assert env.max_prompt_tokens == plain.max_prompt_tokens + len(template_ids(env, ""))
    assert env.config["max_prompt_tokens"] == env.max_prompt_tokens  # a rebuild gets the same


def test_episode_terminates_on_the_end_of_turn_token() -> None:
    env: TextEnv = gym.make("LMSummarize-v0", **CHAT).unwrapped
    tok = env.tokenizer
    assert tok.eos_token == "<|im_end|>" and env.eos_token_id == 2
    env.reset(seed=0, options={"prompt": "A long text.", "references": ["The main thread."]})
    for t in tok.encode("The main thread.", add_special_tokens=False):
        _, r, term, trunc, _ = env.step(t)
        assert (r, term, trunc) == (0.0, False, False)
    _, r, term, trunc, info = env.step(tok.eos_token_id)
    assert term and not trunc
    assert info["text"] == "The main thread." and r == pytest.approx(1.0)
    assert info["prompt"] == "A long text.\nTL;DR:"


def test_newline_still_ends_translation_with_chat() -> None:
    env: TextEnv = gym.make("LMTranslate-v0", **CHAT).unwrapped
    env.reset(seed=0)
    hallo = env.tokenizer.encode("Hallo", add_special_tokens=False)
    for t in hallo:
        assert not env.step(t)[2]
    _, _, term, _, info = env.step(env.tokenizer.encode("\n", add_special_tokens=False)[0])
    assert term and info["text"] == "Hallo"


def test_truncation_cuts_the_task_text_and_keeps_the_template_whole() -> None:
    probe: TextEnv = gym.make("LMSummarize-v0", **CHAT).unwrapped
    budget = len(template_ids(probe, "")) + 12
    env: TextEnv = gym.make("LMSummarize-v0", max_prompt_tokens=budget, **CHAT).unwrapped
    text = " ".join(f"word{i}" for i in range(60)) + " and the very end."
    with pytest.warns(UserWarning, match="task text cut from the left"):
        obs, info = env.reset(options={"prompt": text})
    assert info["prompt"] == text + "\nTL;DR:"  # the reward still reads the whole text
    ids = real_ids(obs)
    assert budget - 3 <= len(ids) <= budget
    shown = env.tokenizer.decode(ids)
    rendered = env.tokenizer.apply_chat_template(
        messages(env, SENTINEL), add_generation_prompt=True, tokenize=False
    )
    head, tail = rendered.split(SENTINEL)
    assert shown.startswith(head) and shown.endswith(tail)
    kept = shown[len(head) : len(shown) - len(tail)]
    assert kept and kept.endswith("the very end.") and text.endswith(kept) and kept != text
    assert ids == template_ids(env, kept)  # the ids are the template's, not spliced pieces
    strict = gym.make("LMSummarize-v0", max_prompt_tokens=budget, truncation="error", **CHAT)
    with pytest.raises(ValueError, match="more than max_prompt_tokens"):
        strict.unwrapped.reset(options={"prompt": text})
    with pytest.raises(ValueError, match="empty task text"):
        gym.make("LMSummarize-v0", max_prompt_tokens=budget - 13, **CHAT)


def test_chat_needs_a_tokenizer_with_a_chat_template() -> None:
    with pytest.raises(ValueError, match=r"(?s)chat template.*'gpt2'.*prompt_template='plain'"):
        gym.make("LMSummarize-v0", prompt_template="chat")
    with pytest.raises(ValueError, match="has none"):
        gym.make("LMWordSort-v0", prompt_template="chat")


def test_unknown_prompt_template_suggests_the_close_name() -> None:
    with pytest.raises(ValueError, match="Did you mean 'chat'"):
        gym.make("LMTranslate-v0", prompt_template="caht")
    with pytest.raises(ValueError, match="Unknown prompt_template"):
        gym.make("LMTranslate-v0", prompt_template="Translate: {source}")


def test_a_format_string_is_still_a_plain_prompt() -> None:
    env: TextEnv = gym.make(
        "LMTranslate-v0", prompt_template="English: {prompt}\nGerman:"
    ).unwrapped
    obs, info = env.reset(options={"prompt": "Hello"})
    assert info["prompt"] == "English: Hello\nGerman:"
    assert real_ids(obs) == env.tokenizer.encode(info["prompt"])


@pytest.mark.parametrize("env_id", sorted(INSTRUCTIONS))
def test_chat_envs_pass_the_checkers_without_warnings(env_id: str) -> None:
    env = gym.make(env_id, **CHAT).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


def test_chat_episodes_are_deterministic_and_pickle() -> None:
    env = gym.make("LMCountUp-v0", render_mode="ansi", **CHAT)
    obs_a, rew_a, info_a = run_episode(env, seed=3)
    obs_b, rew_b, info_b = run_episode(env, seed=3)
    for x, y in zip(obs_a, obs_b):
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
    assert rew_a == rew_b and info_a["text"] == info_b["text"]
    assert env.render().startswith(info_a["prompt"] + " | ")

    inner: TextEnv = env.unwrapped
    inner.reset(seed=4)
    inner.step(7)
    clone = pickle.loads(pickle.dumps(inner))
    a, b = inner.step(8), clone.step(8)
    np.testing.assert_array_equal(a[0]["input_ids"], b[0]["input_ids"])
    assert clone.prompt_style == "chat"


def test_demonstrations_use_the_chat_prompt() -> None:
    from agents.algorithms.supervised import demonstrations

    env = gym.make("LMTranslate-v0", **CHAT)
    inner: TextEnv = env.unwrapped
    demo = demonstrations(env, max_samples=1)[0]
    sample = inner.samples[0]
    assert list(demo.prompt_ids) == template_ids(inner, sample.prompt)
    target = inner.tokenizer.encode(sample.references[0], add_special_tokens=False)
    assert list(demo.target_ids) == [*target, inner.eos_token_id]  # no space after the header
