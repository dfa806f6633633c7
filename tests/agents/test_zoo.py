"""The agent zoo: registry, every agent on every task family, save/load, plug-ins, baselines.

Every registered agent trains for a few steps and is evaluated on one env per task family (text,
translation, summarisation, verifiable, and the word-level toy MDP), with the built-in tiny GPT-2
and windows cut short so that the whole matrix runs in about a minute. Learning itself is asserted
only for the cheap agents on the toy MDPs (REINFORCE with and without baseline, supervised), where
the exact optimum is known; the SB3 algorithms' learning tests live with the policies.
"""

from __future__ import annotations

import importlib.metadata
import math
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import lm_gym
from agents.algorithms.supervised import demonstrations, warm_start
from agents.common.base import Agent, SB3Agent, load_agent, model_for_env, real_tokens
from agents.common.evaluation import evaluate_agent
from agents.decoding import BeamSearchAgent, LMDecodingAgent, warp_logits
from agents.registry import (
    UnknownAgentError,
    UnknownOptionError,
    agent_spec,
    discover_agents,
    list_agents,
    make_agent,
    register_agent,
    unregister_agent,
)
from agents.zoo import restricted_actions

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "third_party_agent"

ZOO = {
    "random",
    "greedy",
    "sample",
    "beam",
    "supervised",
    "tabular-q",
    "tabular-reinforce",
    "reinforce",
    "ppo",
    "a2c",
    "nlpo",
    "dqn",
    "trpo",
    "grpo",
    "rloo",
}

#: One env per task family, with short windows (the test budget, not the task, sets them).
FAMILIES = {
    "LMText-v0": {"max_prompt_tokens": 16, "max_new_tokens": 6},
    "LMTranslate-v0": {"max_prompt_tokens": 32, "max_new_tokens": 6},
    "LMSummarize-v0": {"max_prompt_tokens": 48, "max_new_tokens": 6},
    "LMCountUp-v0": {"max_new_tokens": 6},
}
if "LMToy-v0" in gym.registry:
    FAMILIES["LMToy-v0"] = {}
#: a multi-turn env (partner turns appended between the agent's tokens; 12-word vocabulary)
FAMILIES["LMGuessNumberWords-v0"] = {}

#: Tiny budgets: a couple of updates each.
TINY = {
    "ppo": {"n_steps": 8, "batch_size": 8, "n_epochs": 1},
    "nlpo": {"n_steps": 8, "batch_size": 8, "n_epochs": 1},
    "a2c": {"n_steps": 4},
    "grpo": {"n_envs": 2, "group_size": 2, "n_steps": 6, "batch_size": 12, "n_epochs": 1},
    "rloo": {"n_envs": 2, "group_size": 2, "n_steps": 6, "batch_size": 12},
    "trpo": {
        "n_steps": 8,
        "batch_size": 8,
        "cg_max_steps": 2,
        "n_critic_updates": 1,
        "line_search_max_iter": 2,
    },
    "dqn": {"learning_starts": 4, "buffer_size": 64, "batch_size": 4, "train_freq": 4},
    "reinforce": {"batch_episodes": 2},
    "supervised": {"batch_size": 2, "max_samples": 8},
    "beam": {"num_beams": 2},
    "tabular-q": {"max_actions": 8},
    "tabular-reinforce": {"max_actions": 8},
}
NO_MODEL = {"random", "tabular-q", "tabular-reinforce"}
#: Agents that learn from (or take their action set from) the task's references
NEEDS_REFERENCES = {"supervised", "tabular-q", "tabular-reinforce"}
#: Agents whose deterministic prediction is not a function of the saved state.
STOCHASTIC = {"random", "sample"}
STEPS = 16
#: TRPO's Hessian-vector products through the LM are the costliest: one update only.
STEPS_OF = {"trpo": 8}

pytestmark = pytest.mark.filterwarnings("ignore:Prompt of .* cut from the left")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and deterministic
    yield
    torch.set_num_threads(threads)


def options(name: str) -> dict:
    out = dict(TINY.get(name, {}))
    if name not in NO_MODEL:
        out["model"] = "tiny-gpt2"
    return out


def test_registry_has_every_zoo_name() -> None:
    assert set(list_agents()) >= ZOO
    for name in ZOO:
        spec = agent_spec(name)
        assert spec.source == "zoo" and spec.summary
        assert spec.option_names() is not None, "zoo factories declare their options"


@pytest.mark.parametrize("env_id", list(FAMILIES))
@pytest.mark.parametrize("name", sorted(ZOO))
def test_agent_trains_and_evaluates(name: str, env_id: str, tmp_path: Path) -> None:
    kwargs = FAMILIES[env_id]
    env = gym.make(env_id, **kwargs)
    if env_id == "LMGuessNumberWords-v0" and name in NEEDS_REFERENCES:
        # a game: no reference answers and no demonstrator, so nothing to imitate or to take
        # the tabular agents' action set from
        with pytest.raises(ValueError, match="no references to learn from"):
            make_agent(name, env, seed=0, **options(name)).learn(STEPS)
        return
    agent = make_agent(name, env, seed=0, **options(name))
    assert isinstance(agent, Agent)
    budget = STEPS_OF.get(name, STEPS)
    returned = agent.learn(budget)
    assert returned is agent
    steps = getattr(agent, "num_timesteps", 0)
    if name in {"random", "greedy", "sample", "beam"}:
        assert steps == 0  # nothing to learn
    else:
        assert steps >= budget

    result = evaluate_agent(
        agent, env_id, n_episodes=2, env_kwargs=kwargs, reference="tiny-gpt2", seed=5
    )
    summary = result.summary()
    assert summary["eval_episodes"] == 2
    assert math.isfinite(summary["mean_reward"]) and math.isfinite(summary["perplexity"])
    assert all(e.length >= 1 for e in result.episodes)
    if hasattr(agent, "action_log_probs"):
        assert math.isfinite(summary["kl"]) and summary["kl"] >= -1e-4
    else:
        assert "kl" not in summary  # not computable: left out

    # save, then load into a freshly built agent: same deterministic actions
    obs, _ = gym.make(env_id, **kwargs).reset(seed=3)
    path = tmp_path / "agent"
    agent.save(path)
    fresh_env = gym.make(env_id, **kwargs)
    fresh = make_agent(name, fresh_env, seed=1, **options(name))
    loaded = load_agent(fresh, path, env=fresh_env)
    if name not in STOCHASTIC:
        a1, _ = agent.predict(obs, deterministic=True)
        a2, _ = loaded.predict(obs, deterministic=True)
        assert int(np.asarray(a1)) == int(np.asarray(a2))
    assert getattr(loaded, "num_timesteps", 0) == steps


def test_unknown_agent_and_option_are_clear() -> None:
    with pytest.raises(UnknownAgentError, match=r"Did you mean 'ppo'"):
        make_agent("ppx", "LMCountUp-v0")
    with pytest.raises(UnknownOptionError, match=r"n_step.*did you mean 'n_steps'"):
        make_agent("ppo", "LMCountUp-v0", model="tiny-gpt2", n_step=8)
    with pytest.raises(UnknownOptionError, match="temprature"):
        make_agent("sample", "LMCountUp-v0", temprature=0.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["ppo", "dqn", "greedy", "reinforce"])
def test_cuda_asked_for_without_cuda_is_an_error(name: str) -> None:
    """SB3 alone would fall back to the CPU without a word; the zoo's agents refuse."""
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        make_agent(name, "LMCountUp-v0", model="tiny-gpt2", device="cuda")


def test_register_agent_rules() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_agent("ppo", lambda env: None)
    with pytest.raises(TypeError):
        register_agent("bad name", lambda env: None)
    with pytest.raises(TypeError):
        register_agent("not-callable", 3)  # type: ignore[arg-type]

    def make_const(env: gym.Env, token: int = 0):
        """Always the same token."""
        from agents.decoding import RandomAgent

        agent = RandomAgent(env)
        agent.predict = lambda obs, deterministic=False: (token, None)  # type: ignore[method-assign]
        return agent

    register_agent("const-test", make_const)
    try:
        assert "const-test" in list_agents()
        assert agent_spec("const-test").summary == "Always the same token."
        agent = make_agent("const-test", "LMCountUp-v0", token=3)
        assert agent.predict({})[0] == 3
        with pytest.raises(UnknownOptionError):
            make_agent("const-test", "LMCountUp-v0", tokn=3)
    finally:
        unregister_agent("const-test")
    assert "const-test" not in list_agents()


def _fake_distribution(root: Path, entry: str) -> None:
    """What ``pip install`` writes for the example: a dist-info folder with its entry points."""
    info = root / "lm_gym_copy_agent-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lm-gym-copy-agent\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(f"[lm_gym.agents]\n{entry}\n")


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The example package importable and declared by a distribution on ``sys.path``."""
    _fake_distribution(tmp_path, "copy-prompt = lm_gym_copy_agent:make_copy_agent")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop("lm_gym_copy_agent", None)
    if "copy-prompt" in list_agents():
        unregister_agent("copy-prompt")


def test_plugin_is_discovered_through_its_entry_point(plugin_path: Path) -> None:
    eps = importlib.metadata.entry_points(group="lm_gym.agents")
    assert "copy-prompt" in {ep.name for ep in eps}
    assert discover_agents(refresh=True) == {}
    assert "copy-prompt" in list_agents()
    spec = agent_spec("copy-prompt")
    assert spec.source == "plugin:lm-gym-copy-agent" and "plugin" in spec.tags
    agent = make_agent("copy-prompt", "LMCountUp-v0", max_tokens=5)
    result = evaluate_agent(agent, "LMCountUp-v0", n_episodes=2)
    for episode in result.episodes:
        assert episode.length == 6  # five copied tokens, then EOS
    with pytest.raises(UnknownOptionError, match="max_token"):
        make_agent("copy-prompt", "LMCountUp-v0", max_token=3)


def test_broken_plugin_warns_and_is_skipped(tmp_path: Path, monkeypatch) -> None:
    _fake_distribution(tmp_path, "broken-agent = no_such_module_xyz:factory")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.warns(RuntimeWarning, match="broken-agent"):
        errors = discover_agents(refresh=True)
    assert "broken-agent" in errors
    with pytest.raises(UnknownAgentError, match="failed to load"):
        agent_spec("broken-agent")


def test_plugin_with_a_missing_dependency_is_unavailable_quietly(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """A plug-in whose module imports but needs an uninstalled optional dependency (rllib-ppo
    without Ray is the case in point) is no error: no warning, ``lm-gym agents`` still works and
    lists it as unavailable, and asking for it says what it needs."""
    import warnings

    from agents.cli import main
    from agents.registry import unavailable_agents

    _fake_distribution(tmp_path, "needs-dep = lm_gym_needs_dep:factory")
    (tmp_path / "lm_gym_needs_dep.py").write_text(
        "import no_such_dependency_xyz  # noqa\n\ndef factory(env):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "needs-dep" not in discover_agents(refresh=True)
        assert "no_such_dependency_xyz" in unavailable_agents()["needs-dep"]
        assert "needs-dep" not in list_agents()
        with pytest.raises(UnknownAgentError, match=r"not available here.*no_such_dependency_xyz"):
            agent_spec("needs-dep")
        assert main(["agents"]) == 0
    out, err = capsys.readouterr()
    assert "unavailable here: needs-dep" in out and "ppo" in out
    assert "warning" not in err
    sys.modules.pop("lm_gym_needs_dep", None)
    discover_agents(refresh=True)


def test_rllib_ppo_is_found_through_its_entry_point() -> None:
    """``setup.cfg`` declares ``rllib-ppo`` in ``lm_gym.agents``: a fresh process finds it with
    nothing imported first and without a warning. Without Ray it still builds (it loads and runs
    trained networks) and ``learn`` says which extra to install."""
    import subprocess

    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="lm_gym.agents")}
    if "rllib-ppo" not in eps:
        pytest.skip("the installed lm-gym metadata predates the entry point: pip install -e .")
    assert eps["rllib-ppo"] == "agents.rllib.agent:make_rllib_ppo"
    code = textwrap.dedent(
        """
        import importlib.util, sys, warnings
        warnings.simplefilter("error", RuntimeWarning)
        from agents.registry import agent_spec, list_agents, make_agent, UnknownOptionError
        assert "rllib-ppo" in list_agents(), list_agents()
        spec = agent_spec("rllib-ppo")
        # one registration, the entry point's, with the options its module declares
        assert spec.source.startswith("plugin:"), spec.source
        assert "ray" in spec.tags and "num_learners" in spec.option_names()
        try:
            make_agent("rllib-ppo", "LMCountUp-v0", model="tiny-gpt2", num_learner=2)
        except UnknownOptionError as exc:
            assert "num_learners" in str(exc)
        else:
            sys.exit("the misspelt option was not caught")
        agent = make_agent("rllib-ppo", "LMCountUp-v0", model="tiny-gpt2")
        if importlib.util.find_spec("ray") is None:
            try:
                agent.learn(8)
            except ModuleNotFoundError as exc:
                assert "lm-gym[ray]" in str(exc), exc
            else:
                sys.exit("learn() without Ray did not fail")
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_decoding_baselines_follow_the_lm() -> None:
    env = gym.make("LMCountUp-v0")
    greedy = make_agent("greedy", env, model="tiny-gpt2")
    obs, _ = env.reset(seed=0)
    logits = greedy.net(
        torch.as_tensor(obs["input_ids"])[None], torch.as_tensor(obs["attention_mask"])[None]
    )[0]
    assert greedy.predict(obs)[0] == int(logits.argmax())
    # top-k 1 sampling is greedy; the warped distribution keeps exactly k tokens
    top1 = LMDecodingAgent(env, "tiny-gpt2", top_k=1, seed=0)
    assert top1.predict(obs)[0] == int(logits.argmax())
    logp = warp_logits(logits, temperature=0.7, top_k=5)
    assert int(torch.isfinite(logp).sum()) == 5
    nucleus = warp_logits(logits, top_p=0.5)
    assert 1 <= int(torch.isfinite(nucleus).sum()) < logits.shape[-1]
    with pytest.raises(ValueError):
        LMDecodingAgent(env, "tiny-gpt2", temperature=0)


def test_beam_plans_once_per_episode_and_replans_off_path() -> None:
    env = gym.make("LMCountUp-v0", max_new_tokens=5)
    beam = BeamSearchAgent(env, "tiny-gpt2", num_beams=3)
    # the plan is generate()'s beam output
    obs, _ = env.reset(seed=1)
    prompt = real_tokens(obs)
    expected = beam.lm.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        num_beams=3,
        max_new_tokens=5,
        do_sample=False,
        eos_token_id=[50256],
        pad_token_id=50256,
    )[0, len(prompt) :].tolist()
    taken = []
    for _ in range(2):
        obs, _ = env.reset(seed=1)
        taken = []
        while True:
            action, _ = beam.predict(obs)
            taken.append(action)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    assert taken == expected[: len(taken)]
    assert beam.plans_made == 1  # same prompt twice: one plan
    obs, _ = env.reset(seed=1)
    obs, *_ = env.step(11)  # off the plan
    beam.predict(obs)
    assert beam.plans_made == 2


def test_kl_to_itself_is_zero_and_greedy_kl_is_its_nll() -> None:
    sampler = make_agent("sample", "LMCountUp-v0", model="tiny-gpt2", top_k=0, seed=0)
    result = evaluate_agent(sampler, "LMCountUp-v0", n_episodes=2, reference="tiny-gpt2")
    assert abs(result.summary()["kl"]) < 1e-3
    greedy = make_agent("greedy", "LMCountUp-v0", model="tiny-gpt2")
    result = evaluate_agent(greedy, "LMCountUp-v0", n_episodes=2, reference="tiny-gpt2")
    for e in result.episodes:  # KL(point mass || p_ref) = -log p_ref(token)
        assert e.kl == pytest.approx(e.ref_nll, rel=1e-4)


def test_small_vocabulary_models_and_restricted_actions() -> None:
    toy = gym.make("LMToy-v0") if "LMToy-v0" in gym.registry else None
    if toy is not None:
        folder = model_for_env("tiny-gpt2", toy)
        assert Path(folder).is_dir() and model_for_env("gpt2", toy) == folder
        with pytest.raises(ValueError, match="cannot act on it"):
            model_for_env("distilbert-base-uncased", toy)
        assert restricted_actions(toy, 32) == list(range(5))
    count = gym.make("LMCountUp-v0")
    actions = restricted_actions(count, 16)
    assert len(actions) == 16 and 50256 in actions
    digits = [count.unwrapped.tokenizer.decode([a]).strip() for a in actions]
    assert sum(d.isdigit() for d in digits) >= 8  # count-up's demonstrations are numbers


def test_demonstrations_and_warm_start(tmp_path: Path) -> None:
    env = gym.make("LMTranslate-v0")
    demos = demonstrations(env, max_samples=4)
    tok = env.unwrapped.tokenizer
    assert len(demos) == 4 and demos[0].target_ids[-1] == tok.eos_token_id
    assert "German:" in tok.decode(demos[0].prompt_ids)
    text = demonstrations(gym.make("LMText-v0"), max_samples=2)[0]
    assert len(text.target_ids) >= 1  # the continuation of the review, not the prompt again
    count = demonstrations(gym.make("LMCountUp-v0"), max_samples=3)
    assert len(count) == 3 and tok.decode(count[0].target_ids[:-1]).strip().split()[0].isdigit()
    folder = warm_start(
        "tiny-gpt2", gym.make("LMCountUp-v0"), tmp_path / "ws", epochs=2, max_samples=32
    )
    origin = (Path(folder) / "lm_gym_origin.json").read_text()
    assert '"base": "tiny-gpt2"' in origin
    agent = make_agent("greedy", "LMCountUp-v0", model=folder)
    assert isinstance(agent, LMDecodingAgent)


@pytest.mark.skipif("LMToy-v0" not in gym.registry, reason="needs the toy MDPs")
@pytest.mark.parametrize("baseline", [True, False])
def test_reinforce_reaches_the_toy_optimum(baseline: bool) -> None:
    """GPT-2 REINFORCE, 800 steps on LMToy-v0 (optimum 4, untrained greedy 0): mean return >= 3.6."""
    agent = make_agent(
        "reinforce",
        "LMToy-v0",
        model="tiny-gpt2",
        baseline=baseline,
        seed=0,
        learning_rate=1e-3,
        batch_episodes=8,
    )
    agent.learn(800)
    result = evaluate_agent(agent, "LMToy-v0", n_episodes=40, deterministic=False)
    assert result.summary()["mean_reward"] >= 3.6


@pytest.mark.skipif("LMWordSort-v0" not in gym.registry, reason="needs the word-sort MDP")
def test_supervised_on_optimal_demonstrations_sorts_words() -> None:
    """Supervised learning on the exact optimal policy's episodes, 4000 tokens: mean score >= 0.9."""
    agent = make_agent("supervised", "LMWordSort-v0", model="tiny-gpt2", seed=0, batch_size=16)
    before = evaluate_agent(agent, "LMWordSort-v0", n_episodes=24).summary()["mean_reward"]
    agent.learn(4000)
    after = evaluate_agent(agent, "LMWordSort-v0", n_episodes=24).summary()["mean_reward"]
    assert before < 0.7 and after >= 0.9


def test_reward_scale_scales_training_rewards_not_the_logged_ones() -> None:
    """``reward_scale`` multiplies what the algorithm learns from; SB3's Monitor (episode logs,
    ``ep_rew_mean``) keeps the task's own rewards; a scale that is not > 0 is refused."""
    agent = make_agent("ppo", "LMCountUp-v0", model="tiny-gpt2", n_envs=2, reward_scale=0.25)
    venv = agent.model.get_env()
    venv.seed(0)
    venv.reset()
    returns = np.zeros(2)
    finished: list[tuple[float, float]] = []
    rng = np.random.default_rng(0)
    while len(finished) < 4:
        actions = rng.integers(0, venv.action_space.n, size=2)
        _, rewards, dones, infos = venv.step(actions)
        returns += rewards
        for i in np.flatnonzero(dones):
            finished.append((float(returns[i]), float(infos[i]["episode"]["r"])))
            returns[i] = 0.0
    assert any(logged != 0 for _, logged in finished)
    for seen, logged in finished:
        assert seen == pytest.approx(0.25 * logged, abs=1e-5)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="reward_scale"):
            make_agent("ppo", "LMCountUp-v0", model="tiny-gpt2", reward_scale=bad)


def test_sb3_adapter_continues_step_count() -> None:
    agent = make_agent("a2c", "LMToy-v0", model="tiny-gpt2", n_steps=4)
    assert isinstance(agent, SB3Agent)
    agent.learn(8)
    agent.learn(8)
    assert agent.num_timesteps == 16
    calls = []
    agent.learn(4, callback=lambda locals_, globals_: calls.append(locals_["self"]) or True)
    assert calls and calls[0] is agent


@pytest.mark.slow
def test_example_package_installs_and_registers(tmp_path: Path) -> None:
    """A real ``pip install`` of the example into a folder, then a fresh interpreter lists it."""
    import shutil
    import subprocess

    source = tmp_path / "src"  # build from a copy: pip leaves build/ and egg-info behind
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if pip.returncode != 0:
        pytest.skip(f"pip cannot build the example here: {pip.stderr[-300:]}")
    code = textwrap.dedent(
        """
        from agents.registry import list_agents, agent_spec
        assert "copy-prompt" in list_agents(), list_agents()
        print(agent_spec("copy-prompt").source)
        """
    )
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *sys.path])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "plugin:lm-gym-copy-agent" in out.stdout
    assert lm_gym.__version__
