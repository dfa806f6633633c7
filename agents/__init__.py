"""lm-gym's agent zoo: causal-LM policies (GPT-2, Llama, ...) for stable-baselines3, algorithms,
baselines.

Names are imported lazily, so ``import agents`` stays cheap (no torch or SB3 import).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CausalLMActorCritic": "agents.network",
    "LMActorCriticPolicy": "agents.policies",
    "MaskableLMActorCriticPolicy": "agents.policies",
    "LMDQNPolicy": "agents.policies",
    # former names (aliases of the above)
    "GPT2ActorCritic": "agents.network",
    "GPT2ActorCriticPolicy": "agents.policies",
    "MaskableGPT2ActorCriticPolicy": "agents.policies",
    "GPT2DQNPolicy": "agents.policies",
    "KLPenaltyVecEnv": "agents.kl",
    "KLPenaltyCallback": "agents.kl",
    "KLPenaltyVecEnvCallback": "agents.kl",
    "GroupRelativePPO": "agents.grpo",
    "GroupedResetVecEnv": "agents.grpo",
    "TerminalAtBudgetVecEnv": "agents.budget",
    "NLPORolloutBuffer": "agents.nlpo",
    "NLPOMaskUpdateCallback": "agents.nlpo",
    "NLPOActionMaskWrapper": "agents.nlpo",
    "export_pretrained": "agents.export",
    "EpisodePPO": "agents.ppo",
    "list_agents": "agents.registry",
    "make_agent": "agents.registry",
    "register_agent": "agents.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
