"""Bad input, case by case: the env, the ``lm-gym`` command and the Python API.

Each case asserts the error type (or the exit code of the command), a message that names the
problem, and that nothing already written was lost or changed: a command that fails leaves no new
run folder behind, and a run folder that was there keeps every file byte for byte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

import lm_gym  # noqa: F401  (registers the ids)
from agents.cli import main
from agents.common import training
from agents.common.config import ConfigError, RunConfig, parse_overrides, resolve_run_config
from agents.registry import (
    UnknownAgentError,
    UnknownOptionError,
    make_agent,
    register_agent,
    unregister_agent,
)
from lm_gym.envs.core import EpisodeError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = "LMToy-v0"
TINY = ["--model", "tiny-gpt2", "--set", "n_steps=8", "--set", "batch_size=8"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (the random agent on the toy MDP), with checkpoints."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    config = resolve_run_config(ENV, "random", n_timesteps=16, overrides={"checkpoint_freq": 8})
    training.train_run(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def word_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on the word-level sort task (vocabulary: ant, bee, cat, dog)."""
    out = tmp_path_factory.mktemp("bad-input-words") / "run"
    config = resolve_run_config("LMWordSort-v0", "random", n_timesteps=0)
    training.train_run(config, out, progress=False)
    return out


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Bad input files: a broken JSONL data set, a YAML list, broken YAML, a reward module."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{not json\n')
    as_list = tmp_path / "list.yaml"
    as_list.write_text("- a\n- b\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("key: [unclosed\n")
    reward = tmp_path / "my_reward.py"
    reward.write_text("def score(texts, prompts, references):\n    return [1.0 for _ in texts]\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    other = tmp_path / "other.yaml"
    RunConfig("LMCountUp-v0", "random").save(other)
    return {
        "broken": str(broken),
        "list": str(as_list),
        "bad_yaml": str(bad_yaml),
        "reward": str(reward),
        "a_file": str(a_file),
        "other_config": str(other),
        "missing": str(tmp_path / "missing.jsonl"),
    }


# -- the command: a new run that must not be written ----------------------------------------------

#: (case id, arguments after ``train ENV --out OUT``, text the one-line error must hold)
TRAIN_CASES: list[tuple[str, list[str], str]] = [
    ("unknown-agent", ["--agent", "ppq"], "Unknown agent 'ppq'"),
    ("agent-option-typo", ["--agent", "ppo", "--set", "lerning_rate=1e-3"], "'learning_rate'"),
    ("env-option-via-set", ["--agent", "ppo", "--set", "dataset=x.jsonl"], "--env-set dataset="),
    (
        "env-set-typo",
        ["--agent", "random", "--env-set", "max_new_token=3"],
        "mean 'max_new_tokens'",
    ),
    ("env-set-no-equals", ["--agent", "random", "--env-set", "length"], "key=value"),
    ("set-no-equals", ["--agent", "random", "--set", "seed"], "key=value"),
    ("set-bad-yaml", ["--agent", "random", "--set", "x=[1"], "not valid YAML"),
    ("n-steps-not-a-number", ["--agent", "ppo", *TINY, "--set", "n_steps=abc"], "n_steps"),
    ("negative-learning-rate", ["--agent", "ppo", *TINY, "--set", "learning_rate=-1"], "-1"),
    ("unknown-model", ["--agent", "ppo", "--model", "no-such-model"], "'no-such-model'"),
    ("missing-dataset", ["--agent", "random", "--env-set", "dataset={missing}"], "missing.jsonl"),
    ("broken-dataset", ["--agent", "random", "--env-set", "dataset={broken}"], "broken.jsonl"),
    ("unknown-reward", ["--agent", "random", "--reward", "sentimnt"], "'sentiment'"),
    ("reward-module-missing", ["--agent", "random", "--reward", "no_such_mod:f"], "no_such_mod"),
    ("reward-function-missing", ["--agent", "random", "--reward", "{reward}:scor"], "'score'"),
    ("config-missing", ["--agent", "random", "--config", "{missing}"], "does not exist"),
    ("config-not-mapping", ["--agent", "random", "--config", "{list}"], "mapping"),
    ("config-bad-yaml", ["--agent", "random", "--config", "{bad_yaml}"], "not valid YAML"),
    ("config-other-run", ["--agent", "random", "--config", "{other_config}"], "LMCountUp-v0"),
    ("checkpoint-without-resume", ["--agent", "random", "--checkpoint", "x"], "--resume"),
    ("resume-with-set", ["--resume", "--set", "seed=1"], "only --steps may change"),
    ("resume-nothing", ["--resume"], "no run to resume"),
]
if not __import__("torch").cuda.is_available():
    TRAIN_CASES.append(
        ("cuda-without-cuda", ["--agent", "ppo", *TINY, "--set", "device=cuda"], "CUDA")
    )


@pytest.mark.parametrize(
    ("args", "expected"), [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES]
)
def test_train_refuses_bad_input_and_writes_nothing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    files: dict[str, str],
    args: list[str],
    expected: str,
) -> None:
    out = tmp_path / "new-run"
    args = [a.format(**files) for a in args]
    code = main(["train", ENV, *args, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("lm-gym train: error:")]
    assert len(lines) == 1 and expected.format(**files) in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written: the corrected command runs as is


#: (case id, arguments, text of argparse's message): exit 2 before anything runs
ARGPARSE_CASES: list[tuple[str, list[str], str]] = [
    ("negative-steps", ["train", ENV, "--agent", "random", "--steps", "-5"], "--steps"),
    ("steps-not-int", ["train", ENV, "--agent", "random", "--steps", "abc"], "--steps"),
    ("negative-ckpt-freq", ["train", ENV, "--agent", "random", "--checkpoint-freq", "-1"], "freq"),
    ("zero-threads", ["train", ENV, "--agent", "random", "--threads", "0"], "--threads"),
    ("eval-zero-episodes", ["eval", "RUN", "--episodes", "0"], "--episodes"),
    ("eval-zero-n-envs", ["eval", "RUN", "--n-envs", "0"], "--n-envs"),
    ("unknown-command", ["trian"], "invalid choice"),
]


@pytest.mark.parametrize(
    ("args", "expected"), [c[1:] for c in ARGPARSE_CASES], ids=[c[0] for c in ARGPARSE_CASES]
)
def test_arguments_out_of_range_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], expected: str
) -> None:
    out = tmp_path / "new-run"
    with pytest.raises(SystemExit) as exc:
        main(
            [a.replace("RUN", str(out)) for a in args]
            + (["--out", str(out)] if "train" in args else [])
        )
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


# -- the command: an existing run that must stay as it is ----------------------------------------


def test_existing_run_is_kept(capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    before = snapshot(run_dir)
    cases: list[tuple[list[str], str]] = [
        (["train", ENV, "--agent", "random", "--out", str(run_dir)], "already holds a run"),
        (["train", "LMCountUp-v0", "--agent", "random", "--resume", "--out", str(run_dir)], "is a run of"),
        (["train", "--resume", "--checkpoint", str(run_dir / "nope"), "--out", str(run_dir)], "not a checkpoint"),
        (["eval", str(run_dir), "--checkpoint", str(run_dir / "nope")], "not a checkpoint"),
        (["eval", str(run_dir), "--reference", "no-such-lm", "--no-progress"], "'no-such-lm'"),
        (["generate", str(run_dir / "checkpoints"), "--prompt", "x1"], "holds no run"),
    ]  # fmt: skip
    for args, expected in cases:
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "Traceback" not in err, (args, err)
    assert snapshot(run_dir) == before


def test_out_that_is_a_file(capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> None:
    before = Path(files["a_file"]).read_bytes()
    for out in (files["a_file"], os.path.join(files["a_file"], "run")):
        code = main(["train", ENV, "--agent", "random", "--out", out])
        err = capsys.readouterr().err
        assert code == 2 and "is a file, not a folder" in err
    assert Path(files["a_file"]).read_bytes() == before


def test_generate_word_outside_the_vocabulary(
    capsys: pytest.CaptureFixture[str], word_run: Path
) -> None:
    before = snapshot(word_run)
    code = main(["generate", str(word_run), "--prompt", "dog zebra ant"])
    err = capsys.readouterr().err
    assert code == 2 and "'zebra'" in err and "ant, bee, cat, dog" in err
    assert "Traceback" not in err and "[UNK]" not in err
    assert snapshot(word_run) == before


def test_eval_results_printed_when_the_write_fails(
    capsys: pytest.CaptureFixture[str], run_dir: Path
) -> None:
    """The JSON cannot be written (a folder is in the way; a read-only folder for a non-root user):
    the summary is printed all the same, with a warning, and nothing is lost."""
    blocker = run_dir / "eval_validation.json"
    blocker.mkdir()
    try:
        before = snapshot(run_dir)
        args = ["eval", str(run_dir), "--split", "validation", "--episodes", "2", "--no-reference"]
        code = main([*args, "--no-progress"])
        out, err = capsys.readouterr()
        assert code == 0 and "mean_reward" in out
        assert "warning: the results are printed above but not written" in err
        assert snapshot(run_dir) == before
    finally:
        blocker.rmdir()


# -- the env --------------------------------------------------------------------------------------


def make_quietly(env_id: str, **kwargs: Any) -> Any:
    """``gym.make`` that expects Gymnasium's own render-mode warning (ours is the error)."""
    with pytest.warns(UserWarning, match="render_mode"):
        return gym.make(env_id, **kwargs)


ENV_CASES: list[tuple[str, Callable[[], Any], type[BaseException], str]] = [
    ("option-typo", lambda: gym.make("LMWordSort-v0", lenght=3), TypeError, "did you mean 'length'"),
    ("bad-truncation", lambda: gym.make(ENV, truncation="right"), ValueError, "truncation"),
    ("bad-render-mode", lambda: make_quietly(ENV, render_mode="human"), ValueError, "render_mode"),
    ("bad-prompt-template", lambda: gym.make(ENV, prompt_template="chta"), ValueError, "chat"),
    ("zero-new-tokens", lambda: gym.make(ENV, max_new_tokens=0), ValueError, "max_new_tokens"),
    ("unknown-scorer", lambda: gym.make(ENV, reward="bleuu"), ValueError, "'bleu'"),
    ("reward-no-module", lambda: gym.make(ENV, reward="nope_mod.x:f"), ValueError, "nope_mod"),
    ("reward-no-file", lambda: gym.make(ENV, reward="/nope/r.py:f"), ValueError, "does not exist"),
    ("missing-data-file", lambda: gym.make("LMText-v0", dataset="/nope/d.jsonl"), FileNotFoundError, "d.jsonl"),
    ("unknown-dataset", lambda: gym.make("LMText-v0", dataset="movie-reviewz"), ValueError, "movie-reviews"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "error", "expected"), [c[1:] for c in ENV_CASES], ids=[c[0] for c in ENV_CASES]
)
def test_env_construction_errors(
    make: Callable[[], Any], error: type[BaseException], expected: str
) -> None:
    with pytest.raises(error, match=None) as exc:
        make()
    assert expected in str(exc.value)


def test_env_step_errors() -> None:
    env = gym.make("LMWordSort-v0").unwrapped
    with pytest.raises(EpisodeError, match="reset"):
        env.step(0)
    with pytest.raises(ValueError, match="'zebra'"):
        env.reset(options={"prompt": "dog zebra ant"})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step(99)
    with pytest.raises(TypeError):
        env.step("ant")
    env.reset(seed=0)  # the env is still usable after refused input
    assert env.step(0)[0]["input_ids"].shape[0] > 0


# -- the Python API -------------------------------------------------------------------------------


def test_api_errors(tmp_path: Path, run_dir: Path) -> None:
    before = snapshot(run_dir)
    with pytest.raises(UnknownAgentError, match="'ppo'"):
        make_agent("ppq", ENV)
    with pytest.raises(UnknownOptionError, match="learning_rate"):
        make_agent("ppo", ENV, lerning_rate=1e-3)
    with pytest.raises(ConfigError, match="Unknown env id 'LMToyy-v0'"):
        resolve_run_config("LMToyy-v0", "random")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])
    with pytest.raises(TypeError, match="non-empty string"):
        register_agent("two words", lambda env: None)
    with pytest.raises(training.RunFolderError, match="already holds a run"):
        training.train_run(RunConfig(ENV, "random"), run_dir, progress=False)
    with pytest.raises(training.RunFolderError, match="holds no run"):
        training.load_run(tmp_path / "nothing")
    out = tmp_path / "new"
    with pytest.raises(training.RunSetupError, match="n_timesteps"):
        training.train_run(RunConfig(ENV, "random", n_timesteps=-5), out, progress=False)
    for agent in ("ppo", "grpo"):  # GRPO's SB3 options are PPO's: the same check
        config = RunConfig(ENV, agent, hyperparams={"model": "tiny-gpt2", "n_steps": "abc"})
        with pytest.raises(training.RunSetupError, match="n_steps='abc' is not a number"):
            training.train_run(config, out, progress=False)
    config = RunConfig(ENV, "ppo", hyperparams={"model": "tiny-gpt2", "learning_rate": -1.0})
    with pytest.raises(training.RunSetupError, match="agent 'ppo' cannot be built"):
        training.train_run(config, out, progress=False)
    assert not out.exists()
    assert snapshot(run_dir) == before


def test_plugin_without_seed_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plug-in factory need not take ``seed``: ``lm-gym train`` does not pass one to it."""
    from agents.decoding import RandomAgent

    def make_seedless(env: gym.Env) -> RandomAgent:
        """A factory without a seed option."""
        return RandomAgent(env)

    register_agent("seedless-test", make_seedless)
    try:
        out = tmp_path / "run"
        code = main(["train", ENV, "--agent", "seedless-test", "--steps", "8", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        assert "num_timesteps" in json.loads((out / "final" / "state.json").read_text())
    finally:
        unregister_agent("seedless-test")
