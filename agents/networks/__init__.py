"""The neural side: one causal-LM actor-critic network and its adapters.

* :mod:`agents.networks.actor_critic`: ``CausalLMActorCritic`` (any ``transformers`` causal LM plus
  a value head; LoRA adapters as an option) and ``RolloutKVCache``, the KV cache of token-by-token
  rollouts. The only code of ``agents`` that handles transformers' cache objects (through
  :mod:`lm_gym.models`).
* :mod:`agents.networks.policies`: the stable-baselines3 policies over that network (actor-critic,
  maskable for NLPO, Q-network for DQN).
"""
