"""lm-gym's agent zoo: causal-LM policies (GPT-2, Llama, ...) for stable-baselines3, algorithms,
decoding baselines, tabular agents and solvers.

Layout (one concept per package; see README, "Layout"):

* :mod:`agents.registry`, :mod:`agents.zoo`: agent names -> factories (plug-ins by entry point).
* :mod:`agents.cli`, :mod:`agents.export`, :mod:`agents.demo`: ``lm-gym``, export, ``make demo``.
* :mod:`agents.decoding`: random, greedy, sampling and beam-search agents over a causal LM.
* :mod:`agents.networks`: the causal-LM actor-critic, its KV cache and the SB3 policies over it.
* :mod:`agents.algorithms`: EpisodePPO, GRPO/RLOO, NLPO masks, the KL penalty, REINFORCE,
  supervised fine-tuning.
* :mod:`agents.tabular`: tabular learners and exact MDP solvers.
* :mod:`agents.common`: the agent protocol and base classes, configs, run folders, evaluation.
* :mod:`agents.rllib`: the Ray RLlib front end.

Names are imported lazily, so ``import agents`` stays cheap (no torch or SB3 import). The module
paths of the flat layout before (``agents.ppo``, ``agents.policies``, ...) still import, as aliases
of the modules that hold their code now (:data:`MOVED`): user code and models saved before the move
(pickles name classes by module) keep working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: Former module path -> the module that holds its code now.
MOVED = {
    "agents.base": "agents.common.base",
    "agents.evaluation": "agents.common.evaluation",
    "agents.training": "agents.common.training",
    "agents.hyperparams": "agents.common.config",
    "agents.budget": "agents.algorithms.budget",
    "agents.ppo": "agents.algorithms.ppo",
    "agents.grpo": "agents.algorithms.grpo",
    "agents.nlpo": "agents.algorithms.nlpo",
    "agents.kl": "agents.algorithms.kl",
    "agents.reinforce": "agents.algorithms.reinforce",
    "agents.supervised": "agents.algorithms.supervised",
    "agents.baselines": "agents.decoding",
    "agents.network": "agents.networks.actor_critic",
    "agents.policies": "agents.networks.policies",
    "agents.mdp": "agents.tabular.mdp",
    "agents.belief": "agents.tabular.belief",
    "agents.rllib.policy": "agents.rllib.checkpoint",
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a former module path (:data:`MOVED`) as the very module object of its new path."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import machinery has just set the alias's spec on the shared module: give its own back
        alias = module.__spec__.name if module.__spec__ is not None else ""
        module.__spec__ = self._specs.pop(alias, module.__spec__)


if not any(isinstance(finder, _MovedModule) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModule())

_EXPORTS = {
    "CausalLMActorCritic": "agents.networks.actor_critic",
    "LMActorCriticPolicy": "agents.networks.policies",
    "MaskableLMActorCriticPolicy": "agents.networks.policies",
    "LMDQNPolicy": "agents.networks.policies",
    # former names (aliases of the above)
    "GPT2ActorCritic": "agents.networks.actor_critic",
    "GPT2ActorCriticPolicy": "agents.networks.policies",
    "MaskableGPT2ActorCriticPolicy": "agents.networks.policies",
    "GPT2DQNPolicy": "agents.networks.policies",
    "KLPenaltyVecEnv": "agents.algorithms.kl",
    "KLPenaltyCallback": "agents.algorithms.kl",
    "KLPenaltyVecEnvCallback": "agents.algorithms.kl",
    "GroupRelativePPO": "agents.algorithms.grpo",
    "GroupedResetVecEnv": "agents.algorithms.grpo",
    "TerminalAtBudgetVecEnv": "agents.algorithms.budget",
    "NLPORolloutBuffer": "agents.algorithms.nlpo",
    "NLPOMaskUpdateCallback": "agents.algorithms.nlpo",
    "NLPOActionMaskWrapper": "agents.algorithms.nlpo",
    "export_pretrained": "agents.export",
    "EpisodePPO": "agents.algorithms.ppo",
    "list_agents": "agents.registry",
    "make_agent": "agents.registry",
    "register_agent": "agents.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
