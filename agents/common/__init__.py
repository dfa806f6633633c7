"""What every agent shares: the agent protocol and base classes, configs, run folders, evaluation.

* :mod:`agents.common.base`: the :class:`~agents.common.base.Agent` protocol, ``BaseAgent`` /
  ``LMAgent`` (agents of lm-gym's own), the SB3 adapter ``SB3Agent``, and the helpers that read an
  lm-gym env (its tokenizer, stop ids, real tokens) and fit a model to it.
* :mod:`agents.common.config`: the YAML recipes of ``agents/configs/`` (per env and per model),
  ``--set`` overrides and :class:`~agents.common.config.RunConfig`.
* :mod:`agents.common.training`: ``lm-gym train`` run folders (config, checkpoints, resume, logs).
* :mod:`agents.common.evaluation`: batched evaluation over a vector env, reference scoring.
"""
