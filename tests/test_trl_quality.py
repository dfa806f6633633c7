"""Smoke run of benchmarks/trl_quality.py: TRL's GRPOTrainer on the quality protocol, ``--quick``
(tiny-llama, 8 completions), end to end: training, merged model, evaluation, report files."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("trl") is None or importlib.util.find_spec("peft") is None,
    reason="trl_quality needs trl and peft (pip install trl peft)",
)


def test_trl_quality_quick(tmp_path: Path, capsys) -> None:
    threads = torch.get_num_threads()
    sys.path.insert(0, str(BENCH_DIR))
    try:
        module = importlib.import_module("trl_quality")
        out, work = tmp_path / "out", tmp_path / "work"
        report = module.main(["--quick", "--out", str(out), "--work-dir", str(work)])
    finally:
        sys.path.remove(str(BENCH_DIR))
        torch.set_num_threads(threads)

    options = report["settings"]["trl"]
    assert options["num_generations"] == 4 and options["num_iterations"] == 2
    assert options["beta"] == 0.05 and options["activation_checkpointing"] is False
    assert report["settings"]["completions"] == 8  # one generation batch of 8 completions
    assert report["settings"]["optimizer_steps"] == 4  # 2 minibatches x 2 iterations
    assert report["train_completion_tokens"] == 32 and report["train_tokens_per_s"] > 0
    for phase in ("before", "after"):
        summary = report[phase]["summary"]
        assert summary["eval_episodes"] > 0 and summary["perplexity"] > 0
    assert report["before"]["summary"]["ppl_ratio"] == 1.0
    assert (work / "merged" / "config.json").exists()  # the merged model, outside --out
    saved = json.loads((out / "quality.json").read_text())
    assert saved["agent"] == "trl-grpo" and len(saved["train_rewards"]) == 8
    assert "TRL GRPOTrainer" in (out / "quality.md").read_text()
    assert (out / "learning_curve.png").exists()
    assert "report written to" in capsys.readouterr().out


def test_train_prompts_are_the_env_ids() -> None:
    """The TRL data set's prompts tokenise to exactly the ids of the env's observations."""
    import gymnasium as gym

    sys.path.insert(0, str(BENCH_DIR))
    try:
        module = importlib.import_module("trl_quality")
    finally:
        sys.path.remove(str(BENCH_DIR))
    env = gym.make("lm_gym:LMText-v0", tokenizer="tiny-llama", max_prompt_tokens=8).unwrapped
    rows = module.train_prompts(env)
    assert len(rows) == len(env.samples)
    for row, sample in zip(rows, env.samples):
        ids = env.encode_prompt(sample.prompt, warn=False).tolist()
        assert row["prompt_ids"] == ids and len(ids) <= 8
        assert env.tokenizer(text=[row["prompt"]])["input_ids"][0] == ids
        assert row["reward_prompt"] == env.prompt_text(sample.prompt)  # before truncation
