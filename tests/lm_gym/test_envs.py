"""The environment core: API contract, checkers, determinism, vector envs, bad input."""

from __future__ import annotations

import contextlib
import json
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import lm_gym
from lm_gym.data import SPLITS
from lm_gym.envs import EpisodeError, TextEnv, list_envs
from lm_gym.envs.multiturn import MultiTurnEnv
from lm_gym.tasks.text_generation import TextGenerationEnv

OFFLINE_IDS = [e.id for e in list_envs(include_online=False)]
#: Options that keep the contract test fast: LMTargetWord-v0's default partner is SmolLM2-135M
#: (the checkers still run it as registered); tiny-llama has the same tokenizer.
FAST = {"LMTargetWord-v0": {"partner_kwargs": {"model": "tiny-llama"}}}
GPT2_EOS = 50256


def run_episode(env: gym.Env, seed: int, actions: list[int] | None = None):
    """Play an episode with fixed or seeded-random actions; return (obs list, rewards, last info)."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    observations, rewards, info, t = [obs], [], {}, 0
    while True:
        a = actions[t] if actions is not None else int(rng.integers(env.action_space.n))
        obs, r, term, trunc, info = env.step(a)
        observations.append(obs)
        rewards.append(r)
        t += 1
        if term or trunc:
            return observations, rewards, info


@pytest.mark.parametrize("env_id", OFFLINE_IDS)
def test_checkers_pass_without_warnings(env_id: str) -> None:
    env = gym.make(env_id).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


#: The offline envs that draw their prompts from a data set (the others make them as they go).
DATA_IDS = ["LMText-v0", "LMTranslate-v0", "LMSummarize-v0", "LMDialogue-v0"]


def test_data_ids_are_the_envs_with_data() -> None:
    with_data = [i for i in OFFLINE_IDS if gym.make(i, **FAST.get(i, {})).unwrapped.samples]
    assert with_data == DATA_IDS


@pytest.mark.parametrize("tokenizer", ["gpt2", "tiny-llama"])
@pytest.mark.parametrize("env_id", DATA_IDS)
def test_builtin_prompts_fit(env_id: str, tokenizer: str) -> None:
    """Every prompt of an env's own data (every split) fits its ``max_prompt_tokens`` with GPT-2's
    and SmolLM2's tokenizers, so no reset cuts a prompt or warns (the checkers' resets are
    unseeded: one long prompt would make them fail now and then)."""
    for split in SPLITS:
        env: TextEnv = gym.make(env_id, tokenizer=tokenizer, split=split).unwrapped
        assert env.samples
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for index in range(len(env.samples)):
                env.reset(seed=0, options={"index": index})


@pytest.mark.parametrize("env_id", OFFLINE_IDS)
def test_contract_and_determinism(env_id: str) -> None:
    env = gym.make(env_id, render_mode="ansi", **FAST.get(env_id, {}))
    inner: TextEnv = env.unwrapped
    p, t = inner.max_prompt_tokens, inner.max_new_tokens
    space = env.observation_space
    assert space["input_ids"].shape == (p + t,) and space["input_ids"].dtype == np.int64
    assert env.action_space.n == len(inner.tokenizer)

    obs_a, rew_a, info_a = run_episode(env, seed=3)
    obs_b, rew_b, info_b = run_episode(env, seed=3)
    for x, y in zip(obs_a, obs_b):
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
    assert rew_a == rew_b and info_a["text"] == info_b["text"]

    assert all(type(r) is float for r in rew_a)
    # multi-turn envs reward every turn: tests/lm_gym/test_multiturn.py
    if not isinstance(inner, MultiTurnEnv):
        assert all(r == 0.0 for r in rew_a[:-1])
        assert info_a["metrics"][inner.reward_name] == rew_a[-1]
    assert {"text", "prompt", "references", "metrics", "num_new_tokens"} <= set(info_a)
    assert info_a["num_new_tokens"] == len(rew_a) <= t
    # The window is right-aligned: real tokens at the end, padding on the left.
    last = obs_a[-1]
    mask = last["attention_mask"]
    n_real = int(mask.sum())
    assert mask[-n_real:].all() and not mask[:-n_real].any()
    assert env.render().startswith(info_a["prompt"] + " | ")
    assert obs_a[0]["input_ids"] in space["input_ids"]


def test_step_appends_and_shifts() -> None:
    env = gym.make("LMCountUp-v0").unwrapped
    obs0, _ = env.reset(seed=0)
    obs1, r, term, trunc, info = env.step(11)
    np.testing.assert_array_equal(obs1["input_ids"][:-1], obs0["input_ids"][1:])
    assert obs1["input_ids"][-1] == 11 and obs1["attention_mask"][-1] == 1
    assert (r, term, trunc, info) == (0.0, False, False, {})
    # Returned observations are copies: later steps do not change them.
    before = obs1["input_ids"].copy()
    env.step(12)
    np.testing.assert_array_equal(obs1["input_ids"], before)


def test_eos_terminates_and_is_not_in_text() -> None:
    env = gym.make("LMCountUp-v0").unwrapped
    env.reset(seed=0, options={"prompt": "Write 5 increasing numbers, starting above 3:"})
    tok = env.tokenizer
    for t in tok.encode(" 4 5 6"):
        env.step(t)
    _, r, term, trunc, info = env.step(GPT2_EOS)
    assert term and not trunc
    assert info["text"] == " 4 5 6"
    assert r == pytest.approx(3 / 5)


def test_truncation_at_max_new_tokens() -> None:
    env = gym.make("LMAlliteration-v0", max_new_tokens=3).unwrapped
    env.reset(seed=1, options={"prompt": "Write words that start with the letter S:"})
    ids = env.tokenizer.encode(" sun sea sky")
    assert len(ids) == 3
    out = [env.step(t) for t in ids]
    assert [o[3] for o in out] == [False, False, True]
    assert out[-1][1] == pytest.approx(3 / 4)  # 3 words on the letter, target 4


def test_stop_strings_end_translation() -> None:
    env = gym.make("LMTranslate-v0").unwrapped
    env.reset(seed=0)
    newline = env.tokenizer.encode("\n")[0]
    _, _, term, _, info = env.step(newline)
    assert term and info["text"] == ""


def test_reset_options_pin_sample() -> None:
    env = gym.make("LMTranslate-v0").unwrapped
    env.reset(seed=0, options={"index": 5})
    assert env.sample == env.samples[5]
    _, info = env.reset(options={"prompt": "Hello", "references": ["Hallo"]})
    assert info["prompt"].startswith("Translate English to German: Hello")
    for t in env.tokenizer.encode(" Hallo"):
        env.step(t)
    _, r, *_ = env.step(GPT2_EOS)
    assert r == pytest.approx(100.0)
    with pytest.raises(IndexError, match="outside"):
        env.reset(options={"index": 10**6})
    with pytest.raises(ValueError, match="Unknown reset option"):
        env.reset(options={"idx": 1})
    with pytest.raises(TypeError, match="must be an lm_gym Sample"):
        env.reset(options={"sample": "Hello"})


def test_reset_option_sample_replays_hidden_parts() -> None:
    """``options={"sample": other.sample}`` plays exactly the other env's task, meta included
    (a guessing game's hidden number is not in its prompt)."""
    a, b = gym.make("LMGuessNumber-v0").unwrapped, gym.make("LMGuessNumber-v0").unwrapped
    a.reset(seed=1)
    b.reset(seed=2)
    assert a.sample != b.sample
    obs_b, _ = b.reset(options={"sample": a.sample})
    assert b.sample == a.sample and b.sample.meta["secret"] == a.sample.meta["secret"]
    obs_a, _ = a.reset(options={"sample": a.sample})
    assert (obs_a["input_ids"] == obs_b["input_ids"]).all()


def test_seed_changes_sample_draw() -> None:
    env = gym.make("LMText-v0").unwrapped
    prompts = {env.reset(seed=s)[1]["prompt"] for s in range(10)}
    assert len(prompts) > 3


def test_bad_actions_and_episode_order() -> None:
    env = gym.make("LMCountUp-v0").unwrapped
    with pytest.raises(EpisodeError, match="before reset"):
        env.step(1)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step(50257)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step(-1)
    with pytest.raises(TypeError, match="integer"):
        env.step(1.5)
    with pytest.raises(TypeError, match="integer"):
        env.step(True)
    with pytest.raises(ValueError, match="single token"):
        env.step(np.array([1, 2]))
    env.step(np.int64(5))
    env.step(np.array(6))
    env.step(GPT2_EOS)
    with pytest.raises(EpisodeError, match="after the episode ended"):
        env.step(1)


def test_long_prompt_truncated_left_or_refused() -> None:
    env = gym.make("LMText-v0", max_prompt_tokens=4).unwrapped
    text = "one two three four five six seven"
    with pytest.warns(UserWarning, match="cut from the left"):
        obs, _ = env.reset(options={"prompt": text})
    kept = obs["input_ids"][obs["attention_mask"] == 1]
    assert env.tokenizer.decode(kept) == env.tokenizer.decode(env.tokenizer.encode(text)[-4:])
    strict = gym.make("LMText-v0", max_prompt_tokens=4, truncation="error").unwrapped
    with pytest.raises(ValueError, match="more than max_prompt_tokens"):
        strict.reset(options={"prompt": text})


def test_bad_configuration_errors() -> None:
    with pytest.raises(TypeError, match="unknown option"):
        gym.make("LMText-v0", max_new_token=3)
    with pytest.raises(ValueError, match=r"(?i)unknown"):
        gym.make("LMText-v0", reward="sentimnet")
    with pytest.raises(ValueError):
        gym.make("LMText-v0", dataset="no-such-data")
    with pytest.raises(ValueError, match="render_mode"):
        TextGenerationEnv(render_mode="human")
    with pytest.raises(ValueError, match="truncation"):
        gym.make("LMText-v0", truncation="right")


def test_user_data_and_callable_reward(tmp_path) -> None:
    rows = [{"prompt": f"Say hi {i}", "references": ["hi"]} for i in range(30)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))

    def shortness(texts, prompts, references):
        return [-float(len(t)) for t in texts]

    env = TextGenerationEnv(dataset=str(path), reward=shortness, max_new_tokens=2)
    env.reset(seed=0)
    assert env.sample.prompt.startswith("Say hi")
    env.step(GPT2_EOS)
    assert env.reward_name == "shortness"


def test_pickle_roundtrip_keeps_state() -> None:
    env = gym.make("LMCountUp-v0").unwrapped
    env.reset(seed=4)
    env.step(7)
    clone = pickle.loads(pickle.dumps(env))
    a = env.step(8)
    b = clone.step(8)
    np.testing.assert_array_equal(a[0]["input_ids"], b[0]["input_ids"])


def test_registration_is_idempotent_and_serialisable() -> None:
    assert lm_gym.register_envs() == []
    for entry in lm_gym.ENV_ENTRIES:
        spec = gym.spec(entry.id)
        json.dumps(spec.kwargs)  # names and numbers only
        assert isinstance(spec.entry_point, str)


def test_make_in_fresh_interpreter() -> None:
    code = (
        "import gymnasium as gym; e = gym.make('lm_gym:LMCountUp-v0'); o, _ = e.reset(seed=0);"
        "print(o['input_ids'].shape[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "28"


@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_sb3_vec_envs(vec_cls) -> None:
    # No env_kwargs: SB3 tries render_mode="rgb_array" first and falls back on TypeError.
    # (DummyVecEnv: Gymnasium warns about the "rgb_array" try; README examples pass
    # render_mode=None to avoid it. SubprocVecEnv warns in its workers.)
    quiet = vec_cls is DummyVecEnv
    with pytest.warns(UserWarning, match="rgb_array") if quiet else contextlib.nullcontext():
        venv = make_vec_env("lm_gym:LMAlliteration-v0", n_envs=2, seed=0, vec_env_cls=vec_cls)
    try:
        obs = venv.reset()
        assert obs["input_ids"].shape == (2, 24)
        finished = 0
        for _ in range(16):
            obs, _, dones, infos = venv.step(np.array([100, 200]))
            for done, info in zip(dones, infos):
                if done:
                    finished += 1
                    assert "text" in info and "terminal_observation" in info
        assert finished == 4  # 8-token episodes, 2 envs, 16 steps
    finally:
        venv.close()


@pytest.mark.parametrize("async_", [False, True])
def test_gymnasium_vector_envs(async_: bool) -> None:
    venv = gym.make_vec(
        "lm_gym:LMCountUp-v0", num_envs=2, vectorization_mode="async" if async_ else "sync"
    )
    try:
        obs, _ = venv.reset(seed=0)
        assert obs["input_ids"].shape == (2, 28)
        for _ in range(12):
            obs, _, _, trunc, _ = venv.step(np.array([1, 2]))
        assert trunc.all()
    finally:
        venv.close()
