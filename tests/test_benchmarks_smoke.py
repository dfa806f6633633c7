"""Smoke runs of the speed benchmarks: each script's ``main`` with its ``--quick`` settings.

Timings are never asserted (machines are noisy); only that each script runs and reports figures.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench() -> Iterator[ModuleType]:
    """Import benchmark scripts as modules (their folder on ``sys.path``); keep torch threads."""
    threads = torch.get_num_threads()
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield importlib
    finally:
        sys.path.remove(str(BENCH_DIR))
        torch.set_num_threads(threads)


QUICK = ["--quick", "--threads", "1"]


def test_update_speed_quick(bench, capsys) -> None:
    mod = bench.import_module("update_speed")
    # whole-episode minibatches by default (the zoo's ppo), SB3's composition on request
    assert mod.parse_args([]).episode_minibatches
    assert not mod.parse_args(["--sb3-minibatches"]).episode_minibatches
    out = mod.main(QUICK)
    assert out["stock_s"] > 0 and out["episode_s"] > 0 and out["speedup"] > 0
    assert out["stock_peak_mib"] > 0 and out["episode_peak_mib"] > 0
    assert out["segments"] == 2  # 2 envs x one 6-token episode
    assert "speed-up:" in capsys.readouterr().out


def test_rollout_speed_quick(bench, capsys) -> None:
    out = bench.import_module("rollout_speed").main([*QUICK, "--profile"])
    assert set(out["tokens_per_s"]) == {"generate", "episode", "cached", "full"}
    assert all(v > 0 for v in out["tokens_per_s"].values())
    assert out["ratio_to_generate"]["generate"] == 1.0
    text = capsys.readouterr().out
    assert "x generate" in text and "KV-cached rollout:" in text
    for loop in ("episode", "stock"):  # the profile's groups add up to the rollout's time
        groups = out["profile"][loop]
        assert groups["transformer trunk"] > 0 and groups["sampling the action"] > 0
        parts = sum(v for k, v in groups.items() if k != "total")
        assert parts == pytest.approx(groups["total"], rel=1e-6)
    assert "where one rollout's time goes" in text


def test_update_speed_learning_quick(bench, capsys, tmp_path: Path) -> None:
    out = bench.import_module("update_speed").main(
        [*QUICK, "--learning", "--learning-out", str(tmp_path)]
    )
    runs = out["learning"]["LMWordSort-v0"]
    assert set(runs) == {"SB3 minibatches", "episode minibatches"}
    for data in runs.values():
        (run,) = data["runs"]
        assert run["steps"] == [0, 128, 256] and len(run["reward"]) == 3
    assert (tmp_path / "learning.json").exists() and (tmp_path / "learning_curves.png").exists()
    assert "final mean" in capsys.readouterr().out


def test_learning_equivalence(bench) -> None:
    """The paired comparison behind "equal learning" (no training: made-up curves)."""
    mod = bench.import_module("update_speed")
    same = mod.paired_difference([0.5, 0.7, 0.9], [0.5, 0.7, 0.9], margin=0.01)
    assert same["mean"] == 0 and same["ci95"] == [0, 0] and same["equal"]
    shifted = mod.paired_difference([0.5, 0.7, 0.9, 0.6], [0.7, 0.8, 1.0, 0.8], margin=0.05)
    assert shifted["mean"] == pytest.approx(0.15) and not shifted["equal"]
    assert shifted["test_level"] == pytest.approx(0.9)
    assert 0.1 <= shifted["ci95"][0] <= shifted["ci_test"][0] <= shifted["ci_test"][1] <= 0.2
    # a stricter level widens the interval the test uses (a repeated look at the same question)
    strict = mod.paired_difference([0.5, 0.7, 0.9, 0.6], [0.7, 0.8, 1.0, 0.8], 0.05, alpha=0.01)
    assert strict["ci_test"][0] <= shifted["ci_test"][0] <= shifted["ci_test"][1]
    assert shifted["ci_test"][1] <= strict["ci_test"][1]
    with pytest.raises(ValueError, match="alpha"):
        mod.paired_difference([0.5], [0.5], 0.05, alpha=0.5)

    def runs(finals: list[float]) -> dict:
        return {"runs": [{"reward": [0.0, f / 2, f]} for f in finals]}

    per_env = {
        "SB3 minibatches": runs([1.0, 0.8, 0.9]),
        "episode minibatches": runs([1.0, 0.8, 0.9]),
    }
    result = mod.learning_equivalence(per_env, margin_fraction=0.1)
    assert result["final"]["margin"] == pytest.approx(0.09)  # 10% of the mean gain 0.9
    assert result["final"]["equal"] and result["curve_mean"]["equal"]
    per_env["episode minibatches"] = runs([0.5, 0.4, 0.45])
    result = mod.learning_equivalence(per_env, margin_fraction=0.1)
    assert result["final"]["mean"] == pytest.approx(-0.45) and not result["final"]["equal"]


def test_scaling_recipe_rollout(bench) -> None:
    """``--rollout-steps`` longer than an episode and ``--batch-size`` in transitions (the real
    recipe's shape): episodes cut at the rollout's end, the iteration's steps counted."""
    mod = bench.import_module("scaling")
    args = mod.parse_args([*QUICK, "--rollout-steps", "10", "--batch-size", "5"])
    point = mod.measure_point(args, 2, 4)
    assert point["seconds"] > 0 and point["generate_tokens_per_s"] > 0
    # 2 envs x 10 steps against generate()'s 2 x 4 tokens, in generate()'s time for 20 tokens
    assert point["tokens_per_s"] == pytest.approx(20 / point["seconds"])
    assert point["generate_seconds"] == pytest.approx(20 / point["generate_tokens_per_s"])


def test_scaling_quick(bench, capsys, tmp_path: Path) -> None:
    points = bench.import_module("scaling").main([*QUICK, "--out", str(tmp_path)])
    assert [(p["n_envs"], p["new_tokens"]) for p in points] == [(2, 4), (2, 6)]
    for p in points:
        split = p["split_mib"]
        assert p["tokens_per_s"] > 0 and p["generate_tokens_per_s"] > 0 and p["peak_mib"] > 0
        # the reference: a frozen copy of the LM (the policy also has its value head)
        assert 0.9 * split["weights"] < split["reference"] <= split["weights"]
        assert split["optimizer"] == pytest.approx(2 * split["gradients"], rel=0.01)  # Adam
        assert split["kv_cache"] > 0
        phases = p["phase_seconds"]
        assert all(phases[k] > 0 for k in ("rollout", "kl", "update"))
        assert sum(phases.values()) <= p["seconds"]
    assert (tmp_path / "scaling.png").exists() and "train tok/s" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed")
def test_vs_trl_quick(bench, capsys) -> None:
    out = bench.import_module("vs_trl").main(QUICK)
    assert [r["agent"] for r in out["results"]] == ["ppo", "grpo"]
    for result in out["results"]:
        assert result["lm_gym_tok_s"] > 0 and result["trl_tok_s"] > 0
        assert result["lm_gym_peak"].peak_mib > 0 and result["trl_peak"].peak_mib > 0
    assert "lm-gym / TRL" in capsys.readouterr().out


def test_kl_speed_quick(bench, capsys) -> None:
    out = bench.import_module("kl_speed").main(QUICK)
    assert out["speedup"] > 0 and out["cpu_speedup"] > 0
    assert "after" in capsys.readouterr().out


def test_eval_speed_quick(bench, capsys) -> None:
    out = bench.import_module("eval_speed").main(QUICK)
    assert out["one"]["tokens"] > 0 and out["batched"]["n_envs"] == 2
    assert out["speedup"]["total"] > 0 and math.isfinite(out["one"]["perplexity"])
    assert "speed-up of n_envs=2" in capsys.readouterr().out


def test_shared_prefix_quick(bench, capsys) -> None:
    out = bench.import_module("shared_prefix").main(QUICK)
    assert out["prompt_tokens"] > 1
    for work in ("update", "first step"):
        assert out[work]["plain_s"] > 0 and out[work]["shared_s"] > 0
    assert "speed-up" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["rollout_speed", "scaling", "update_speed", "vs_trl"])
def test_bf16_needs_cuda(bench, script: str) -> None:
    """``--bf16`` (the GPU figures' autocast) is refused off CUDA, before any model is built."""
    if script == "vs_trl" and importlib.util.find_spec("trl") is None:
        pytest.skip("trl is not installed")
    with pytest.raises(SystemExit, match="--bf16 needs a CUDA"):
        bench.import_module(script).main([*QUICK, "--bf16"])


def test_generate_batch_bf16_autocast(bench, tiny_lm: str) -> None:
    """The reference ``generate()`` under ``--bf16`` runs in bfloat16 autocast (CPU autocast here,
    CUDA's on a GPU) and still returns every row's tokens."""
    from lm_gym.models import load_causal_lm

    mod = bench.import_module("rollout_speed")
    common = bench.import_module("bench_common")
    lm = load_causal_lm(tiny_lm).eval()
    obs = {
        "input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]),
        "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
    }
    dtypes: list[torch.dtype] = []
    head = lm.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    cpu = torch.device("cpu")
    try:
        assert mod.generate_batch(lm, obs, 3, cpu, bf16=True) == 6
        assert set(dtypes) == {torch.bfloat16}
        dtypes.clear()
        assert mod.generate_batch(lm, obs, 3, cpu) == 6
        assert set(dtypes) == {torch.float32}
    finally:
        hook.remove()
    with common.autocast(cpu, False):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("quick", [False, True])
def test_gpu_figures_steps_parse(bench, tmp_path: Path, quick: bool) -> None:
    """benchmarks/gpu_figures.sh (the GPU session's one device call): every step it runs is a
    command line its script accepts, on CUDA with ``--bf16`` and in the CPU smoke run. The steps
    are recorded by a stand-in interpreter, not run."""
    import os
    import shlex
    import subprocess

    log = tmp_path / "argv.txt"
    fake = tmp_path / "py"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(log))}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PY": str(fake), "OUT": str(tmp_path / "out")}
    env["DEVICE"] = "cpu" if quick else "cuda"
    if quick:
        env["QUICK"] = "1"
    script = BENCH_DIR / "gpu_figures.sh"
    done = subprocess.run(["bash", str(script)], cwd=BENCH_DIR.parent, env=env, check=False)
    assert done.returncode == 0
    calls = [line.split() for line in log.read_text().splitlines()]
    steps = [argv for argv in calls if argv[0].endswith(".py")]  # not `-c` or `-m pip`
    scripts = [Path(argv[0]).stem for argv in steps]
    assert scripts == ["rollout_speed", "rollout_speed", "scaling", "update_speed", "vs_trl"]
    for name, (_, *argv) in zip(scripts, steps):
        args = bench.import_module(name).parse_args(argv)
        assert args.device == env["DEVICE"] and args.bf16 is not quick and args.quick is quick
