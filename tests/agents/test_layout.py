"""The layout of ``agents/``: the modules of the former flat layout still import, as aliases."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import agents

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("old", sorted(agents.MOVED))
def test_a_former_module_path_is_the_module_that_holds_its_code_now(old):
    new = agents.MOVED[old]
    assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), f"{old} is a file again"
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert sys.modules[old] is module
    # the alias leaves the module's own identity alone (pickle and tracebacks use it)
    assert module.__name__ == new
    assert module.__spec__ is not None and module.__spec__.name == new


def test_objects_pickled_under_a_former_path_load():
    """SB3 and the tabular agents pickle classes by module and name: models saved before the move
    name ``agents.policies`` and ``agents.tabular``."""
    from agents.networks.policies import LMActorCriticPolicy
    from agents.tabular.learning import QLearning

    for old_module, obj in (
        ("agents.policies", LMActorCriticPolicy),
        ("agents.tabular", QLearning),
    ):
        data = pickle.dumps(obj, protocol=2).replace(obj.__module__.encode(), old_module.encode())
        assert old_module.encode() in data
        assert pickle.loads(data) is obj


def test_import_agents_stays_cheap():
    """``import agents`` (and with it the alias finder) imports neither torch nor SB3."""
    code = (
        "import sys, agents\n"
        "assert agents.MOVED\n"
        "heavy = [m for m in ('torch', 'stable_baselines3', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
