"""The ``lm-gym`` command: listing, train / interrupt / resume, eval, generate, errors, bench.

The commands run in-process through :func:`agents.cli.main` (one subprocess test checks the
console script itself), with tiny budgets on the toy MDP and the tiny GPT-2.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import yaml

from agents.cli import main
from agents.common import training
from agents.common.config import RunConfig, load_hyperparams, resolve_run_config

ENV = "LMToy-v0" if "LMToy-v0" in gym.registry else "LMCountUp-v0"
PPO_SMALL = ["--model", "tiny-gpt2", "--set", "n_steps=16", "--set", "batch_size=16"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_envs_and_agents_tables(capsys) -> None:
    code, out, _ = run(capsys, "envs")
    assert code == 0 and "LMCountUp-v0" in out and "LMTextIMDB-v0" in out
    code, out, _ = run(capsys, "envs", "--offline", "--json")
    ids = [e["id"] for e in json.loads(out)]
    assert "LMText-v0" in ids and "LMTextIMDB-v0" not in ids
    code, out, _ = run(capsys, "agents")
    assert code == 0
    for name in ("ppo", "nlpo", "dqn", "trpo", "reinforce", "tabular-q", "beam", "supervised"):
        assert f"\n{name} " in out
    code, out, _ = run(capsys, "agents", "--json")
    assert {"name": "random", "source": "zoo"}.items() <= json.loads(out)[0].items() or any(
        a["name"] == "random" for a in json.loads(out)
    )


def test_every_agent_has_a_config_file_that_resolves() -> None:
    from agents.common.config import CONFIG_DIR
    from agents.zoo import SB3_ALGORITHMS

    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert set(SB3_ALGORITHMS) | {"random", "greedy", "sample", "beam", "reinforce"} <= names
    import lm_gym

    for name in names:
        for entry in lm_gym.list_envs():
            config = resolve_run_config(entry.id, name)  # every key is an option of the agent
            assert config.n_timesteps >= 0
    assert load_hyperparams("ppo", "LMToy-v0")["n_steps"] == 64  # env section over default


def test_clear_errors(capsys, tmp_path: Path) -> None:
    code, _, err = run(
        capsys, "train", "LMCountUpp-v0", "--agent", "ppo", "--out", str(tmp_path / "a")
    )
    assert code == 2 and "Unknown env id 'LMCountUpp-v0'" in err and "LMCountUp-v0" in err
    code, _, err = run(capsys, "train", ENV, "--agent", "ppq", "--out", str(tmp_path / "a"))
    assert code == 2 and "Unknown agent 'ppq'" in err and "'ppo'" in err
    code, _, err = run(
        capsys,
        "train",
        ENV,
        "--agent",
        "ppo",
        "--set",
        "lerning_rate=1e-3",
        "--out",
        str(tmp_path / "a"),
    )
    assert code == 2 and "no option 'lerning_rate'" in err and "learning_rate" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"default:\n  n_steps: 16\n{ENV}:\n  clip_rnge: 0.1\n")
    code, _, err = run(
        capsys, "train", ENV, "--agent", "ppo", "--config", str(bad), "--out", str(tmp_path / "a")
    )
    assert code == 2 and "clip_rnge" in err and "clip_range" in err
    bad.write_text("- not a mapping\n")
    code, _, err = run(
        capsys, "train", ENV, "--agent", "ppo", "--config", str(bad), "--out", str(tmp_path / "a")
    )
    assert code == 2 and "mapping" in err
    code, _, err = run(capsys, "train", "--resume", "--out", str(tmp_path / "nothing"))
    assert code == 2 and "no run to resume" in err
    code, _, err = run(capsys, "eval", str(tmp_path / "nothing"))
    assert code == 2 and "holds no run" in err
    assert not (tmp_path / "a").exists()  # nothing written for a bad command


def test_train_interrupt_resume_eval_generate(capsys, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    # interrupt the first run after step 40: checkpoints every 16 steps, the last at 32
    original = training._Progress.__call__

    def interrupting(self, locals_, globals_):
        result = original(self, locals_, globals_)
        if self.steps >= 40:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(training._Progress, "__call__", interrupting)
    code, _, err = run(
        capsys,
        "train",
        ENV,
        "--agent",
        "ppo",
        *PPO_SMALL,
        "--steps",
        "96",
        "--checkpoint-freq",
        "16",
        "--seed",
        "3",
        "--out",
        str(out),
        "--no-progress",
    )
    assert code == 130 and "--resume" in err and "step 32" in err
    assert training.latest_checkpoint(out)[0] == 32
    assert not (out / "final").exists()
    monkeypatch.setattr(training._Progress, "__call__", original)

    # --resume continues from the checkpoint to the budget, TensorBoard and monitor appended
    code, stdout, _ = run(capsys, "train", "--resume", "--out", str(out), "--no-progress")
    assert code == 0 and "resumed from step 32" in stdout
    state = json.loads((out / "final" / "state.json").read_text())
    assert state["num_timesteps"] >= 96
    config = RunConfig.load(out / "config.yaml")
    assert (config.env_id, config.agent, config.seed, config.n_timesteps) == (ENV, "ppo", 3, 96)
    assert config.hyperparams["n_steps"] == 16 and config.checkpoint_freq == 16
    assert list((out / "tb").glob("events.out.tfevents.*"))
    with (out / "train.monitor.csv").open() as f:
        episodes = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert sum(int(e["l"]) for e in episodes) >= 96 - 16  # at most one interval lost
    # a second run in the same folder is refused; --resume with a larger budget continues
    code, _, err = run(capsys, "train", ENV, "--agent", "ppo", "--out", str(out))
    assert code == 2 and "already holds a run" in err
    code, stdout, _ = run(
        capsys, "train", "--resume", "--steps", "128", "--out", str(out), "--no-progress"
    )
    assert code == 0 and "trained to step 128" in stdout

    code, stdout, _ = run(capsys, "eval", str(out), "--episodes", "3", "--n-envs", "2")
    assert code == 0 and "mean_reward" in stdout and "perplexity" in stdout
    result = json.loads((out / "eval_test.json").read_text())
    assert result["summary"]["eval_episodes"] == 3 and len(result["episodes"]) == 3
    code, stdout, _ = run(
        capsys, "eval", str(out), "--episodes", "2", "--no-reference", "--no-progress"
    )
    assert code == 0 and "perplexity and kl: not computed (--no-reference)" in stdout
    summary = json.loads((out / "eval_test.json").read_text())["summary"]
    assert "perplexity" not in summary and "kl" not in summary

    prompt = "x1" if ENV == "LMToy-v0" else "Write 5 increasing numbers, starting above 7:"
    code, stdout, _ = run(capsys, "generate", str(out), "--prompt", prompt)
    assert code == 0 and stdout.strip()


def test_config_file_reproduces_a_run(capsys, tmp_path: Path) -> None:
    first = tmp_path / "first"
    code, *_ = run(
        capsys,
        "train",
        ENV,
        "--agent",
        "reinforce",
        "--model",
        "tiny-gpt2",
        "--steps",
        "24",
        "--set",
        "batch_episodes=4",
        "--seed",
        "7",
        "--out",
        str(first),
        "--no-progress",
    )
    assert code == 0
    second = tmp_path / "second"
    code, *_ = run(
        capsys,
        "train",
        "--config",
        str(first / "config.yaml"),
        "--out",
        str(second),
        "--no-progress",
    )
    assert code == 0
    a = yaml.safe_load((first / "config.yaml").read_text())
    b = yaml.safe_load((second / "config.yaml").read_text())
    assert a == b
    rewards = [
        [line.split(",")[0] for line in (d / "train.monitor.csv").read_text().splitlines()[2:]]
        for d in (first, second)
    ]
    assert rewards[0] == rewards[1]  # same config, same seed: the same training episodes


def test_warm_start_flag_saves_the_model_in_the_run(capsys, tmp_path: Path) -> None:
    out = tmp_path / "ws"
    code, *_ = run(
        capsys,
        "train",
        "LMCountUp-v0",
        "--agent",
        "greedy",
        "--model",
        "tiny-gpt2",
        "--warm-start",
        "--set",
        "warm_start={max_samples: 16}",
        "--out",
        str(out),
        "--no-progress",
    )
    assert code == 0
    assert (out / "warm_start" / "lm_gym_origin.json").exists()


def test_bench_writes_tables_and_curves(capsys, tmp_path: Path) -> None:
    code, _, _ = run(
        capsys,
        "bench",
        "--agents",
        "random",
        "tabular-q",
        "--envs",
        ENV,
        "--steps",
        "200",
        "--eval-episodes",
        "4",
        "--out",
        str(tmp_path / "bench"),
    )
    assert code == 0
    header = "| algo | env_id | mean_reward | std_reward | n_timesteps | eval_episodes |"
    md = (tmp_path / "bench" / "results.md").read_text()
    assert header in md and "perplexity" in md and "corpus_distinct-1" in md
    rows = list(csv.DictReader((tmp_path / "bench" / "results.csv").open()))
    assert {r["algo"] for r in rows} == {"random", "tabular-q"}
    data = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert data["meta"]["agents"] == ["random", "tabular-q"]
    if ENV == "LMToy-v0":
        assert all(0.0 <= r["optimum"] <= 1.0 + 1e-9 for r in data["rows"])
    assert (tmp_path / "bench" / "learning_curves.png").exists()


def test_console_script_runs() -> None:
    exe = Path(sys.executable).with_name("lm-gym")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agents.cli"]
    out = subprocess.run([*cmd, "agents"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ppo" in out.stdout


def test_agent_reported_reward_when_episodes_run_elsewhere(tmp_path: Path, capsys) -> None:
    """An agent whose episodes run outside the run's env (``rllib-ppo``: in Ray's env runners)
    reports its mean episode reward in the callback's ``row``; the run and ``train`` print it."""
    from agents.decoding import RandomAgent
    from agents.registry import register_agent, unregister_agent

    class Reporting(RandomAgent):
        def learn(self, total_timesteps: int, callback=None):
            for i in range(4):
                self.num_timesteps += total_timesteps // 4
                row = {"time/total_timesteps": self.num_timesteps, "rollout/ep_rew_mean": i / 4}
                if callback is not None and callback({"self": self, "row": row}, {}) is False:
                    break
            return self

    def make_reporting(env: gym.Env, seed: int | None = None) -> Reporting:
        """Reports rows as rllib-ppo does, never steps the env."""
        return Reporting(env, seed=seed)

    register_agent("report-test", make_reporting)
    try:
        config = RunConfig("LMCountUp-v0", "report-test", n_timesteps=64)
        outcome = training.train_run(config, tmp_path / "run", progress=False)
        assert outcome.episode_rewards == [] and outcome.reported_reward == 0.75
        assert outcome.num_timesteps == 64
        code, out, _ = run(
            capsys, "train", "LMCountUp-v0", "--agent", "report-test", "--steps", "64",
            "--out", str(tmp_path / "cli"),
        )  # fmt: skip
        assert code == 0 and "mean training episode reward 0.75 (agent's report)" in out
    finally:
        unregister_agent("report-test")


def test_distributed_flags_are_agent_options(tmp_path: Path, capsys) -> None:
    """``--num-env-runners`` / ``--num-learners`` / ``--address`` set the agent's options of those
    names: an agent without them refuses them by name (rllib-ppo's use: tests/agents/rllib/test_rllib.py)."""
    code, _, err = run(
        capsys, "train", "LMCountUp-v0", "--agent", "ppo", "--num-env-runners", "2",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code != 0 and "no option 'num_env_runners'" in err
    assert not (tmp_path / "run" / "final").exists()


# -- interruption, damaged checkpoints, logs ------------------------------------------------------

TOY_PPO = [
    "LMToy-v0", "--agent", "ppo", "--model", "tiny-gpt2", "--set", "n_steps=8", "--set",
    "batch_size=8", "--set", "n_epochs=1", "--checkpoint-freq", "8",
]  # fmt: skip


def monitor_rows(out: Path) -> list[dict[str, str]]:
    with (out / "train.monitor.csv").open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def progress_rows(out: Path) -> list[dict[str, str]]:
    with (out / "tb" / "progress.csv").open() as f:
        return list(csv.DictReader(f))


def test_signals_leave_a_resumable_run(tmp_path: Path) -> None:
    """SIGINT and SIGTERM sent to a real ``lm-gym train`` at random points (once while a checkpoint
    is being written) leave a run that resumes to the same final step, with every training episode
    in ``train.monitor.csv`` exactly once (fixed-length episodes: their lengths add up to the
    steps) and the agent's log appended, not rewritten."""
    import os
    import random
    import signal
    import time

    exe = Path(sys.executable).with_name("lm-gym")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agents.cli"]
    out = tmp_path / "run"
    first = [*cmd, "train", *TOY_PPO, "--env-set", "stop_on_eos=false", "--steps", "96"]
    resume = [*cmd, "train", "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(13)
    plan = [(signal.SIGINT, "checkpoint"), (signal.SIGTERM, "write")]
    interrupts = 0
    for i, (sig, moment) in enumerate(plan):
        args = (first if i == 0 else resume) + ["--no-progress", "--out", str(out)]
        done = {p.name for p in (out / "checkpoints").glob("step_*")} if out.exists() else set()
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            names = {p.name for p in (out / "checkpoints").glob("step_*")}
            if moment == "write" and any(n.endswith(".tmp") for n in names - done):
                break  # a checkpoint is being written now
            if moment == "write" and len(names - done) >= 4:
                break  # the writes were too quick to catch: any point will do
            if moment == "checkpoint" and any(not n.endswith(".tmp") for n in names - done):
                time.sleep(rng.uniform(0.0, 0.3))
                break
            time.sleep(0.005)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode in (0, 128 + sig), stderr.decode()
        assert b"Traceback" not in stderr, stderr.decode()
        interrupts += proc.returncode != 0
    proc = subprocess.run(
        [*resume, "--no-progress", "--out", str(out)], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert interrupts == 2
    assert json.loads((out / "final" / "state.json").read_text())["num_timesteps"] == 96
    episodes = monitor_rows(out)
    assert {e["l"] for e in episodes} == {"2"}  # stop_on_eos=false: every episode is 2 tokens
    assert sum(int(e["l"]) for e in episodes) == 96  # no episode lost, none twice
    steps = [int(r["time/total_timesteps"]) for r in progress_rows(out)]
    assert steps[0] == 8 and steps[-1] == 96  # appended: the first run's rows are still there
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.old"))  # no half-written folder


def test_resume_skips_a_damaged_checkpoint(capsys, tmp_path: Path) -> None:
    """A damaged newest checkpoint: ``--resume`` says so and continues from the one before;
    ``--checkpoint`` picks one; the logs of the earlier runs are kept."""
    out = tmp_path / "run"
    code, _, err = run(
        capsys, "train", *TOY_PPO, "--steps", "32", "--out", str(out), "--no-progress"
    )
    assert code == 0, err
    first_progress = progress_rows(out)
    newest = training.latest_checkpoint(out)[1]
    assert newest.name == "step_000000032"
    (newest / "agent.zip").write_bytes(b"not a zip file")
    (out / "final" / "agent.zip").write_bytes(b"")  # the same agent as step 32, damaged too
    code, stdout, err = run(
        capsys, "train", "--resume", "--steps", "40", "--out", str(out), "--no-progress"
    )
    assert code == 0, err
    assert "step_000000032" in err and "final" in err and "do not load" in err
    assert "resuming from" in err and "step_000000024" in err
    assert "resumed from step 24" in stdout and "trained to step 40" in stdout
    assert progress_rows(out)[: len(first_progress)] == first_progress  # appended
    assert sum(int(e["l"]) for e in monitor_rows(out)) <= 40
    # --checkpoint picks the one to continue from
    pick = out / "checkpoints" / "step_000000024"
    code, stdout, err = run(
        capsys, "train", "--resume", "--steps", "48", "--checkpoint", str(pick), "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    assert code == 0 and "resumed from step 24" in stdout and "trained to step 48" in stdout


def test_trpo_resumes(capsys, tmp_path: Path) -> None:
    """TRPO's eager attention is a saved policy option: the resumed policy keeps it (the fused
    attention kernel has no double backward)."""
    out = tmp_path / "trpo"
    code, _, err = run(
        capsys, "train", "LMToy-v0", "--agent", "trpo", "--model", "tiny-gpt2", "--steps", "8",
        "--set", "n_steps=8", "--set", "batch_size=8", "--set", "cg_max_steps=2",
        "--set", "n_critic_updates=1", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    code, stdout, err = run(
        capsys, "train", "--resume", "--steps", "16", "--out", str(out), "--no-progress"
    )
    assert code == 0 and "trained to step 16" in stdout, err


def test_eval_notes_interrupt_and_reference_name(capsys, tmp_path: Path, monkeypatch) -> None:
    """eval names the reference model it really used, explains the summary's keys, warns once
    about the offline fallback, and a Ctrl-C ends it without a traceback."""
    out = tmp_path / "run"
    code, *_ = run(
        capsys, "train", "LMCountUp-v0", "--agent", "random", "--steps", "8", "--out", str(out)
    )
    assert code == 0
    code, stdout, err = run(
        capsys, "eval", str(out), "--episodes", "2", "--reference", "gpt2", "--no-progress"
    )
    assert code == 0, err
    assert "reference LM tiny-gpt2 (random init: 'gpt2' is not reachable offline)" in stdout
    assert "corpus_distinct-n: distinct n-grams of all the texts pooled" in stdout
    assert err.count("cannot load 'gpt2'") <= 1

    import agents.common.evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(agents.common.evaluation, "evaluate_agent", interrupted)
    code, _, err = run(capsys, "eval", str(out), "--no-reference", "--no-progress")
    assert code == 130 and "lm-gym eval: interrupted" in err and "Traceback" not in err


def test_own_data_and_reward_from_another_folder(capsys, tmp_path: Path, monkeypatch) -> None:
    """The README's own-data example: a JSONL file and a reward function in a file, named with
    relative paths; config.yaml stores them absolute, so eval works from any folder."""
    work = tmp_path / "work"
    work.mkdir()
    rows = [{"prompt": f"Review {i}:", "references": [f"good film {i}"]} for i in range(40)]
    (work / "my_data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (work / "my_reward.py").write_text(
        "def brevity(texts, prompts, references):\n    return [1.0 / (1 + len(t)) for t in texts]\n"
    )
    monkeypatch.chdir(work)
    code, _, err = run(
        capsys, "train", "LMText-v0", "--agent", "random", "--env-set", "dataset=my_data.jsonl",
        "--env-set", "max_new_tokens=4", "--reward", "my_reward.py:brevity", "--steps", "16",
        "--out", "runs/own",
    )  # fmt: skip
    assert code == 0, err
    config = RunConfig.load(work / "runs" / "own" / "config.yaml")
    assert config.env_kwargs["dataset"] == str(work / "my_data.jsonl")
    assert config.env_kwargs["reward"] == f"{work / 'my_reward.py'}:brevity"
    assert all(0 < float(e["r"]) <= 1 for e in monitor_rows(work / "runs" / "own"))
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "eval", "work/runs/own", "--no-reference", "--no-progress")
    assert code == 0 and "mean_reward" in stdout, err


def test_small_cli_items(capsys) -> None:
    """bench --help names the command; the CLI hides transformers' weight-loading bars;
    ``envs --json | head`` ends quietly."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0 and "usage: lm-gym bench" in capsys.readouterr().out

    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    try:
        assert main(["envs", "--offline"]) == 0
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
    capsys.readouterr()

    exe = Path(sys.executable).with_name("lm-gym")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agents.cli"]
    proc = subprocess.Popen(
        [*cmd, "envs", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    assert proc.stdout.read(1) == b"["
    proc.stdout.close()  # `| head -c 1`
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"BrokenPipeError" not in stderr, stderr.decode()


def test_readme_make_vec_env_examples_pass_render_mode() -> None:
    """SB3's make_vec_env asks for render_mode="rgb_array" unless told: every README example passes
    render_mode=None, so none prints Gymnasium's render-mode warning."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    calls = re.findall(r"make_vec_env\((.*?)\)\n", readme, flags=re.S)
    assert calls
    for call in calls:
        assert '"render_mode": None' in call, call


def test_declared_floors_are_what_ci_runs() -> None:
    """Every floor in setup.cfg of a library pinned in .ci/oldest.txt is that pin (``make test``
    runs the suite's subset in a venv with those pins), and transformers is capped below 5.40, which
    removes ``past_key_values=``."""
    import re

    root = Path(__file__).resolve().parents[2]
    pins = dict(
        re.findall(r"^([\w-]+)==([\w.]+)$", (root / ".ci" / "oldest.txt").read_text(), flags=re.M)
    )
    setup = (root / "setup.cfg").read_text()
    assert {"transformers", "gymnasium", "stable-baselines3", "sb3-contrib", "torch"} <= set(pins)
    for name, version in pins.items():
        floors = re.findall(rf"^\s+{re.escape(name)}>=([\w.]+)", setup, flags=re.M)
        assert floors, name
        for floor in floors:
            assert version.startswith(floor) or floor == version, (name, floor, version)
    assert re.search(r"^\s+transformers>=[\w.]+,<5\.40$", setup, flags=re.M)
    makefile = (root / "Makefile").read_text()
    assert "test-oldest" in makefile.split("\ntest: ")[1].split("\n\n")[0]
