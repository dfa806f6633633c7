"""Multi-turn envs: token faithfulness across turns, partners, per-turn rewards, checkers, vector
envs, pickling, the guessing game's exact optimum and the dialogue tasks."""

from __future__ import annotations

import contextlib
import itertools
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import lm_gym
from lm_gym.envs.multiturn import (
    END_REASONS,
    MultiTurnEnv,
    PartnerReply,
    ScriptedPartner,
    make_partner,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _entry_class(env_id: str) -> type:
    import importlib

    module, name = str(gym.spec(env_id).entry_point).split(":")
    return getattr(importlib.import_module(module), name)


MULTI_TURN_IDS = [
    e.id
    for e in lm_gym.list_envs(include_online=False)
    if issubclass(_entry_class(e.id), MultiTurnEnv)
]


#: options that keep the generic tests fast (a tiny partner instead of SmolLM2-135M)
FAST_KWARGS = {
    "LMTargetWord-v0": {
        "tokenizer": "tiny-llama",
        "partner_kwargs": {"model": "tiny-llama", "max_new_tokens": 8},
    }
}


def play(env: gym.Env, seed: int, policy=None, max_steps: int = 10_000):
    """One episode with seeded random actions (or ``policy(obs, rng)``): actions, rewards, infos,
    observations."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions, rewards, infos, observations = [], [], [], [obs]
    for _ in range(max_steps):
        a = int(rng.integers(env.action_space.n)) if policy is None else int(policy(obs, rng))
        obs, r, term, trunc, info = env.step(a)
        actions.append(a)
        rewards.append(r)
        infos.append(info)
        observations.append(obs)
        if term or trunc:
            return actions, rewards, infos, observations
    raise AssertionError("episode did not end")


def echo_partner(messages, sample):
    """Repeats the agent's turn back in capitals; ends after 3 agent turns."""
    n = sum(m["role"] == "assistant" for m in messages)
    return PartnerReply(f"You said {messages[-1]['content'].strip()!r}.", done=n >= 3)


def small_chat(**kwargs) -> MultiTurnEnv:
    cfg = dict(
        partner=echo_partner,
        reward="distinct-1",
        max_turns=5,
        max_turn_tokens=6,
        max_prompt_tokens=16,
        max_new_tokens=96,
    )
    cfg.update(kwargs)
    return MultiTurnEnv(**cfg)


# -- the core ---------------------------------------------------------------------------------------


def test_multi_turn_ids_are_registered() -> None:
    assert {"LMGuessNumber-v0", "LMGuessNumberWords-v0", "LMDialogue-v0"} <= set(MULTI_TURN_IDS)


@pytest.mark.parametrize("env_id", MULTI_TURN_IDS)
def test_checkers_pass_without_warnings(env_id: str) -> None:
    env = gym.make(env_id, **FAST_KWARGS.get(env_id, {})).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


@pytest.mark.parametrize("env_id", MULTI_TURN_IDS)
def test_agent_ids_are_exactly_the_actions_across_turns(env_id: str) -> None:
    env = gym.make(env_id, **FAST_KWARGS.get(env_id, {})).unwrapped
    for seed in range(3):
        actions, rewards, infos, observations = play(env, seed)
        last = observations[-1]
        agent = env.agent_token_mask()
        np.testing.assert_array_equal(last["input_ids"][agent], actions)
        assert (last["attention_mask"][agent] == 1).all()
        # every observation is the previous one plus the new ids (nothing re-tokenised)
        for before, after in itertools.pairwise(observations):
            n_before = int(before["attention_mask"].sum())
            n_after = int(after["attention_mask"].sum())
            assert n_after > n_before
            np.testing.assert_array_equal(
                after["input_ids"][-n_after:][:n_before], before["input_ids"][-n_before:]
            )
        assert infos[-1]["end_reason"] in END_REASONS
        assert infos[-1]["num_new_tokens"] == len(actions)
        assert all(type(r) is float for r in rewards)
        assert sum(rewards) == pytest.approx(infos[-1]["metrics"]["return"])


def test_turns_end_on_stop_string_eos_and_budget() -> None:
    env = small_chat()
    tok = env.tokenizer
    env.reset(seed=0, options={"prompt": "Hello there"})
    # a turn ending with a newline
    ids = tok.encode(" Hi friend\n")
    out = [env.step(t) for t in ids]
    assert [o[4] != {} for o in out] == [False] * (len(ids) - 1) + [True]
    info = out[-1][4]
    assert info["turn"] == 0 and info["turn_text"] == " Hi friend"
    assert info["reply"] == "You said 'Hi friend'."
    assert out[-1][1] == pytest.approx(info["turn_reward"])
    assert info["turn_reward"] == info["turn_metrics"]["distinct-1"] == 1.0
    # a turn ending with EOS
    env.step(tok.encode(" ok")[0])
    _, _, term, trunc, info = env.step(tok.eos_token_id)
    assert info["turn"] == 1 and info["turn_text"] == " ok" and not (term or trunc)
    # a turn cut by the per-turn budget (6 tokens), which also ends the conversation (3 turns)
    for t in tok.encode(" one two three four five six seven")[:6]:
        obs, _, term, trunc, info = env.step(t)
    assert term and not trunc
    assert info["turn_text"] == " one two three four five six"
    assert info["end_reason"] == "partner_end"
    assert [t["text"] for t in info["turns"]] == [
        " Hi friend",
        " ok",
        " one two three four five six",
    ]
    text = env.tokenizer.decode(obs["input_ids"][obs["attention_mask"] == 1])
    assert text == (
        "User: Hello there\nAssistant: Hi friend\nUser: You said 'Hi friend'.\nAssistant: ok"
        "<|endoftext|>\nUser: You said 'ok'.\nAssistant: one two three four five six"
    )
    assert [m["role"] for m in info["conversation"]] == ["user", "assistant"] * 3 + ["user"]


def test_turn_limit_and_window_full() -> None:
    env = small_chat(partner=lambda m, s: "go on", max_turns=2)
    env.reset(seed=0, options={"prompt": "Hi"})
    nl = env.tokenizer.encode("\n")[0]
    assert env.step(nl)[2:4] == (False, False)
    _, _, term, trunc, info = env.step(nl)
    assert term and not trunc and info["end_reason"] == "turn_limit"
    assert not info["token_budget_reached"]

    env = small_chat(partner=lambda m, s: "go on", max_new_tokens=12)
    env.reset(seed=0, options={"prompt": "Hi"})
    steps = 0
    while True:
        _, _, term, trunc, info = env.step(11)  # "," : never ends a turn before its budget
        steps += 1
        if term or trunc:
            break
    assert trunc and not term and info["end_reason"] == "window_full"
    assert info["token_budget_reached"]
    assert steps == 6  # one 6-token turn; the reply and one more token would not fit


def test_determinism_and_pickling() -> None:
    env = gym.make("LMGuessNumber-v0").unwrapped
    a = play(env, seed=5)
    b = play(env, seed=5)
    assert a[0] == b[0] and a[1] == b[1]
    np.testing.assert_array_equal(a[3][-1]["input_ids"], b[3][-1]["input_ids"])

    env.reset(seed=7)
    tok = env.tokenizer
    for t in tok.encode(" 50\n 2"):
        env.step(t)
    clone = pickle.loads(pickle.dumps(env))
    for t in tok.encode("5\n"):
        x, y = env.step(t), clone.step(t)
        np.testing.assert_array_equal(x[0]["input_ids"], y[0]["input_ids"])
        assert x[1:4] == y[1:4]
    np.testing.assert_array_equal(env.agent_token_mask(), clone.agent_token_mask())


@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_sb3_vec_envs(vec_cls) -> None:
    # (DummyVecEnv: Gymnasium warns about the "rgb_array" try; README examples pass
    # render_mode=None to avoid it. SubprocVecEnv warns in its workers.)
    quiet = vec_cls is DummyVecEnv
    with pytest.warns(UserWarning, match="rgb_array") if quiet else contextlib.nullcontext():
        venv = make_vec_env("lm_gym:LMGuessNumberWords-v0", n_envs=2, seed=0, vec_env_cls=vec_cls)
    try:
        obs = venv.reset()
        assert obs["input_ids"].shape == (2, 7)
        finished = 0
        for _ in range(9):
            obs, _, dones, infos = venv.step(np.array([0, 1]))  # always "1" / "2"
            for done, info in zip(dones, infos):
                if done:
                    finished += 1
                    assert "terminal_observation" in info and info["end_reason"] in END_REASONS
        assert finished >= 2
    finally:
        venv.close()


@pytest.mark.parametrize("async_", [False, True])
def test_gymnasium_vector_envs(async_: bool) -> None:
    venv = gym.make_vec(
        "lm_gym:LMGuessNumberWords-v0", num_envs=2, vectorization_mode="async" if async_ else "sync"
    )
    try:
        obs, _ = venv.reset(seed=0)
        assert obs["input_ids"].shape == (2, 7)
        for _ in range(3):
            obs, _, term, trunc, _ = venv.step(np.array([11, 11]))  # <eos>: empty turns
        assert term.all() and not trunc.any()
    finally:
        venv.close()


def test_partners_and_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="Unknown partner"):
        make_partner("no-such-partner")
    assert isinstance(make_partner(echo_partner), ScriptedPartner)
    # named as rewards are: "module:function" or "file.py:function"
    assert isinstance(make_partner("tests.lm_gym.test_multiturn:echo_partner"), ScriptedPartner)
    (tmp_path / "mine.py").write_text("def say_hi(messages, sample):\n    return 'hi'\n")
    assert isinstance(make_partner(f"{tmp_path / 'mine.py'}:say_hi"), ScriptedPartner)
    with pytest.raises(ValueError, match=r"partner .*has no 'say_hello'.*'say_hi'"):
        make_partner(f"{tmp_path / 'mine.py'}:say_hello")
    with pytest.raises(ValueError, match="needs a partner"):
        MultiTurnEnv(reward="distinct-1")
    env = small_chat(partner=lambda m, s: 3)
    env.reset(seed=0, options={"prompt": "Hi"})
    with pytest.raises(TypeError, match="returned int"):
        env.step(env.tokenizer.eos_token_id)


# -- the guessing game ------------------------------------------------------------------------------


def test_guess_number_rewards_and_secret_option() -> None:
    env = gym.make("LMGuessNumber-v0").unwrapped
    tok = env.tokenizer
    env.reset(options={"secret": 30})
    rewards, infos = [], []
    for guess in (" 50\n", " 25\n", " hello\n", " 30\n"):
        for t in tok.encode(guess):
            _, r, term, trunc, info = env.step(t)
        rewards.append(r)
        infos.append(info)
    assert [i["reply"] for i in infos] == [
        "Lower.",
        "Higher.",
        "Please answer with a whole number from 1 to 100.",
        "Correct!",
    ]
    assert rewards == pytest.approx([-0.1, -0.1, -0.1, 0.9])
    assert term and not trunc and infos[-1]["end_reason"] == "goal"
    assert infos[-1]["metrics"]["win"] == 1.0 and infos[-1]["metrics"]["turns"] == 4
    with pytest.raises(ValueError, match="outside"):
        env.reset(options={"secret": 101})
    secrets = {env.reset(seed=s)[0]["input_ids"].sum() for s in range(3)}
    assert len(secrets) == 1  # the number is hidden: the observation does not depend on it
    assert len({env.reset(seed=s) and env.sample.meta["secret"] for s in range(10)}) > 3


@pytest.fixture(scope="module")
def guess_words_solution():
    from agents.tabular.belief import BeliefMDP
    from agents.tabular.mdp import value_iteration

    mdp = BeliefMDP.from_env("LMGuessNumberWords-v0")
    return mdp, value_iteration(mdp)


def test_small_guessing_game_optimum_is_binary_search(guess_words_solution) -> None:
    from agents.tabular.mdp import policy_iteration, state_key

    mdp, solution = guess_words_solution
    env = gym.make("LMGuessNumberWords-v0").unwrapped
    tok = env.tokenizer

    def best(words: list[str]) -> str:
        key = tuple(tok.convert_tokens_to_ids(w) for w in ["guess", *words])
        q = solution.q_values[mdp.index[key]]
        assert (q >= q.max() - 1e-9).sum() == 1  # a unique optimal action
        return tok.convert_ids_to_tokens(int(q.argmax()))

    assert best([]) == "4"
    assert best(["4", "lower"]) == "2" and best(["4", "higher"]) == "6"
    assert best(["4", "lower", "2", "lower"]) == "1"
    assert best(["4", "lower", "2", "higher"]) == "3"
    assert best(["4", "higher", "6", "lower"]) == "5"
    assert best(["4", "higher", "6", "higher"]) == "7"
    # binary search: 1 guess for one number, 2 for two, 3 for four; 0.1 per guess, 1 for the win
    assert solution.start_value == pytest.approx(1 - 0.1 * 17 / 7)
    assert policy_iteration(mdp, method="iterative").start_value == pytest.approx(
        solution.start_value
    )
    # the env itself agrees: playing the optimal policy from every number
    returns = []
    for secret in range(1, 8):
        obs, _ = env.reset(options={"secret": secret})
        total, done = 0.0, False
        while not done:
            action = int(solution.policy[mdp.index[state_key(obs)]].argmax())
            obs, r, term, trunc, info = env.step(action)
            total, done = total + r, term or trunc
        assert info["end_reason"] == "goal"
        returns.append(total)
    assert np.mean(returns) == pytest.approx(solution.start_value)
    # a uniform random policy is far below
    uniform = mdp.policy_value(mdp.uniform_policy())
    assert mdp.start_value(uniform) < 0.0


# -- templates and partners -------------------------------------------------------------------------


def test_chat_template_replies_are_the_templates_ids() -> None:
    env = small_chat(
        tokenizer="tiny-llama", prompt_template="chat", max_prompt_tokens=48, max_new_tokens=128
    )
    tok = env.tokenizer
    env.reset(seed=0, options={"prompt": "Hello there"})
    for t in [*tok.encode(" Hi friend", add_special_tokens=False), tok.eos_token_id]:
        obs, *_ = env.step(t)  # the agent ends its turn with <|im_end|>
    for t in tok.encode(" one two three four five six", add_special_tokens=False)[:6]:
        obs, *_ = env.step(t)  # this turn ends on the budget: the reply brings <|im_end|>
    window = tok.decode(obs["input_ids"][obs["attention_mask"] == 1])
    expected = tok.apply_chat_template(env.messages, add_generation_prompt=True, tokenize=False)
    assert window == expected
    assert window.count("<|im_end|>") == expected.count("<|im_end|>")
    np.testing.assert_array_equal(
        obs["input_ids"][env.agent_token_mask()],
        [
            *tok.encode(" Hi friend", add_special_tokens=False),
            tok.eos_token_id,
            *tok.encode(" one two three four five six", add_special_tokens=False)[:6],
        ],
    )


def test_model_partner_shared_cached_and_picklable() -> None:
    import torch

    kwargs = dict(
        partner="model",
        partner_kwargs={"model": "tiny-gpt2", "max_new_tokens": 6},
        max_turn_tokens=3,
        max_turns=3,
    )
    env_a, env_b = small_chat(**kwargs), small_chat(**kwargs)
    assert env_a.partner.model is env_b.partner.model  # one model per process
    actions = env_a.tokenizer.encode(" Fine thanks and you, good sir")[:6]
    replies = []
    for env in (env_a, env_b):
        env.reset(seed=1, options={"prompt": "How are you?"})
        infos = [env.step(t)[4] for t in actions]
        replies.append([i["reply"] for i in infos if "turn" in i])
    assert replies[0] == replies[1] and len(replies[0]) == 2
    messages = env_a.messages
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2 + ["user"]
    partner = env_a.partner
    prompt = partner.prompt_ids(messages[:4])
    # the second reply computed only the tokens new since the first one (its KV cache was kept)
    assert 0 < partner.last_prompt_computed < len(prompt) - 5
    # and it equals greedy decoding without any cache
    with torch.no_grad():
        plain = partner.model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            use_cache=False,
            pad_token_id=partner.tokenizer.eos_token_id,
            stop_strings=["\n"],
            tokenizer=partner.tokenizer,
        )
    text = partner.tokenizer.decode(plain[0, len(prompt) :]).split("\n")[0].strip()
    assert text == messages[4]["content"]
    clone = pickle.loads(pickle.dumps(env_a))
    assert clone.partner.model is partner.model
    assert len(pickle.dumps(env_a.partner)) < 10_000


# -- dialogue ---------------------------------------------------------------------------------------


def test_dialogue_data_partner_says_the_recorded_lines() -> None:
    env = gym.make("LMDialogue-v0").unwrapped
    index = next(i for i, s in enumerate(env.samples) if len(s.meta["conversation"]) >= 5)
    lines = env.samples[index].meta["conversation"]
    env.reset(options={"index": index})
    tok = env.tokenizer
    infos, rewards = [], []
    done = False
    while not done:
        for t in tok.encode(" " + lines[1] + "\n"):
            _, r, term, trunc, info = env.step(t)
            if "turn" in info:
                infos.append(info)
                rewards.append(r)
            done = term or trunc
            if done:
                break
    assert [i["reply"] for i in infos[:-1]] == lines[2 : 2 * len(infos) : 2]
    assert infos[-1]["end_reason"] in ("partner_end", "turn_limit")
    first = infos[0]["turn_metrics"]
    assert first["length"] == 0.0  # the first answer, word for word (up to its 32-token budget)
    for info in infos:
        m = info["turn_metrics"]
        assert info["turn_reward"] == pytest.approx(m["rougeL"] + 0.1 * m["length"])
    assert infos[-1]["metrics"]["turns"] == len(infos)


def test_daily_dialog_from_local_files(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [
        [f"Hello number {i} , how are you ?", "Fine , thanks .", "Good to hear .", "Bye ."]
        for i in range(40)
    ]
    datasets.Dataset.from_dict({"dialog": rows}).save_to_disk(str(tmp_path / "dd"))
    env = gym.make(
        "LMDialogueDailyDialog-v0", dataset_kwargs={"path": str(tmp_path / "dd")}
    ).unwrapped
    sample = env.samples[0]
    assert sample.meta["conversation"][1:] == ["Fine, thanks.", "Good to hear.", "Bye."]
    env.reset(options={"index": 0})
    tok = env.tokenizer
    for t in tok.encode(" Fine, thanks.\n"):
        _, r, term, _, info = env.step(t)
    assert info["reply"] == "Good to hear." and not term
    assert info["turn_metrics"]["rougeL"] == pytest.approx(1.0) and r == pytest.approx(1.0)


def test_target_word_goal_with_a_model_partner() -> None:
    from lm_gym.tasks.target_word import LMTargetWordEnv, says_word

    assert says_word("I love Blue skies", "blue") and not says_word("bluest", "blue")
    env = LMTargetWordEnv(
        tokenizer="gpt2",
        prompt_template="plain",
        stop_strings=["\n"],
        partner_kwargs={"model": "tiny-gpt2", "max_new_tokens": 4},
        max_turn_tokens=4,
    )
    info = env.reset(seed=0)[1]
    word = env.sample.meta["word"]
    assert f'"{word}"' in info["prompt"]
    assert env.partner_messages()[0]["content"] == env.config["opener"]  # the goal is hidden
    tok = env.tokenizer
    for t in tok.encode(f" {word}\n"):
        _, r, *_, info = env.step(t)
    assert info["turn_metrics"]["agent_said"] == 1.0
    said = info["turn_metrics"]["partner_said"]
    assert r == pytest.approx(-0.05 - 0.5 + said)
    # a partner that says the word ends the conversation with the goal reached
    env.judge_reply = lambda reply: type(reply)(reply.text, done=True, goal=True, info={"said": 1})
    for t in tok.encode(" Say it\n"):
        _, r, term, _, info = env.step(t)
    assert term and info["end_reason"] == "goal" and info["metrics"]["win"] == 1.0
    assert r == pytest.approx(-0.05 + 1.0)


# -- learning ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ppo_learns_the_small_guessing_game(guess_words_solution) -> None:
    """Plain SB3 PPO with the GPT-2 policy (tiny GPT-2 over the game's 12 words, random init) on
    ``LMGuessNumberWords-v0`` reaches the game's exact optimum (binary search, 0.757): its greedy
    policy takes only optimal actions in every state it reaches, from the untrained policy's
    -0.30, within 20,480 steps.

    The settings that make it reproducible: an entropy bonus (``ent_coef=0.05``), Monte Carlo
    advantages (``gae_lambda=1.0``) and larger rollouts (8 envs x 64 steps, batches of 128, 8
    epochs). Without them (``n_steps=32``, ``batch_size=64``, 4 epochs, no entropy bonus,
    ``gae_lambda=0.95``) PPO settles at 0.614: first guess 5 (or 3) then the best play after it,
    which loses one number; switching the first guess to 4 pays only once the rarely visited
    states after "4" have learnt their own best guesses (2 and 6), which the entropy bonus keeps
    exploring. Measured steps to the optimum (checked every 1,024 steps): seed 0: 12,288 and
    14,336 (two runs: the rollouts are not bit-identical from run to run);
    seed 1: 9,216; seed 2: 13,312; seed 3: 14,336."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import set_random_seed

    from agents.networks.policies import LMActorCriticPolicy
    from lm_gym.models import load_causal_lm
    from lm_gym.tasks.guess_number import LMGuessNumberWordsEnv

    mdp, solution = guess_words_solution
    set_random_seed(0)
    venv = DummyVecEnv([LMGuessNumberWordsEnv for _ in range(8)])
    venv.seed(0)
    model = PPO(
        LMActorCriticPolicy,
        venv,
        n_steps=64,
        batch_size=128,
        n_epochs=8,
        learning_rate=1e-3,
        gamma=1.0,
        gae_lambda=1.0,
        ent_coef=0.05,
        policy_kwargs={"model": load_causal_lm("tiny-gpt2", vocab_size=12)},
        seed=0,
    )
    before = mdp.start_value(mdp.policy_value(mdp.policy_of(model)))
    values, optimal = [], False
    while model.num_timesteps < 20480 and not optimal:
        model.learn(1024, reset_num_timesteps=False)
        policy = mdp.policy_of(model)
        values.append(mdp.start_value(mdp.policy_value(policy)))
        optimal = mdp.is_optimal(policy, solution.q_values)
    print(f"PPO greedy value {before:.3f} -> {values} in {model.num_timesteps} steps")
    assert before < 0.0
    assert optimal, f"not optimal after {model.num_timesteps} steps: {values}"
    assert values[-1] == pytest.approx(solution.start_value, abs=1e-6)
