"""Training algorithms beyond stock stable-baselines3, each in a module of its own.

* :mod:`agents.algorithms.ppo`: ``EpisodePPO`` (PPO with one forward per episode and whole-episode
  minibatches) and the fast rollout loop.
* :mod:`agents.algorithms.grpo`: ``GroupRelativePPO`` (GRPO and RLOO: group-relative advantages,
  no critic).
* :mod:`agents.algorithms.nlpo`: NLPO's top-p action masks for sb3-contrib's MaskablePPO.
* :mod:`agents.algorithms.kl`: the KL penalty to a frozen reference model (from the rollout, after
  it), its adaptive controller, and a Gymnasium-side KL reward.
* :mod:`agents.algorithms.budget`: the token budget as a terminal state (no value bootstrap).
* :mod:`agents.algorithms.reinforce`: REINFORCE with a causal LM policy.
* :mod:`agents.algorithms.supervised`: demonstrations, supervised fine-tuning and warm starts.

Plain SB3 algorithms (PPO, A2C, DQN, sb3-contrib's TRPO) need no module here: the zoo pairs them
with the policies of :mod:`agents.networks.policies`.
"""
