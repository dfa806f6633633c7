"""The agent zoo: every built-in agent name, its factory and its defaults.

=================  ==========================================================================
name               agent
=================  ==========================================================================
``random``         uniformly random tokens (:class:`agents.decoding.RandomAgent`)
``greedy``         the untrained LM, greedy decoding (:class:`agents.decoding.LMDecodingAgent`)
``sample``         the untrained LM, sampling with temperature, top-k, top-p
``beam``           the untrained LM, token-level beam search (:class:`agents.decoding.BeamSearchAgent`)
``supervised``     fine-tuning on the task's references (:class:`agents.algorithms.supervised.SupervisedAgent`)
``tabular-q``      tabular Q-learning, epsilon-greedy or softmax (:class:`agents.tabular.learning.QLearning`)
``tabular-reinforce``  tabular REINFORCE with/without baseline (:class:`agents.tabular.learning.Reinforce`)
``reinforce``      REINFORCE with a causal-LM policy, with/without baseline (:class:`agents.algorithms.reinforce.LMReinforce`)
``ppo``            PPO (episode-level updates, :class:`agents.algorithms.ppo.EpisodePPO`) + LM actor-critic
``a2c``            A2C + LM actor-critic
``trpo``           sb3-contrib TRPO + LM actor-critic
``nlpo``           sb3-contrib MaskablePPO + LM with NLPO top-p masking
``dqn``            DQN + LM Q-network
=================  ==========================================================================

Every LM agent takes ``model`` (a causal LM name or folder; ``"gpt2"`` offline falls back to the
built-in tiny GPT-2) and ``warm_start`` (``True`` or options of
:func:`agents.algorithms.supervised.warm_start`: the model is first fine-tuned on the task's
references, RL4LMs' supervised + RL). A learning rate of ``"auto"`` picks 1e-3 for a randomly
initialised built-in model (tests, CPU examples) and 1e-5 for a pretrained one (SB3's 3e-4 is far
above LM fine-tuning practice). The SB3 agents take every option of their algorithm (``n_steps``,
``batch_size``, ...) plus ``policy_kwargs``, ``n_envs`` and a KL penalty to the starting model
(``kl_coef``, ``kl_target``, ``kl_horizon``, ``kl_min_coef``:
:class:`agents.algorithms.kl.KLPenaltyCallback` after each rollout,
:class:`agents.algorithms.kl.KLPenaltyVecEnv` in the env for DQN; ``lm-gym train --resume``
continues its adaptive coefficient) and ``reward_scale`` (the training envs' rewards are multiplied
by it, a Gymnasium ``TransformReward`` around SB3's ``Monitor``, so logged episode rewards and every
evaluation stay in the task's units: 0.01 puts chrF's 0-100 on the 0-1 scale that a recipe's KL
coefficient and a critic sharing the LM's trunk expect). An episode that reaches the env's token
budget ends in a terminal state for every SB3 agent: no ``gamma * V`` bootstrap as after a time
limit (:mod:`agents.algorithms.budget`; ``bootstrap_at_budget=True`` restores SB3's behaviour). The
GPT-2 policies are imported inside the factories, so this module imports without them.

Tabular agents act over a restricted action set on GPT-2-vocabulary envs: ``actions="auto"`` takes
the stop tokens and the ``max_actions`` most frequent tokens of the task's demonstrations (the whole
vocabulary when it has at most ``max_actions`` tokens).
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import gymnasium as gym

from agents.common.base import SB3Agent, fresh_env, model_for_env, stop_ids
from agents.common.errors import UnknownOptionError
from lm_gym.models import resolve_device

__all__ = ["SB3_ALGORITHMS", "auto_learning_rate", "builtin_agents", "restricted_actions"]

#: Learning rate of ``"auto"`` for randomly initialised built-in models.
LR_RANDOM_INIT = 1e-3
#: Learning rate of ``"auto"`` for pretrained models (RL); supervised uses 5x this.
LR_PRETRAINED = 1e-5


def is_random_init(model: str) -> bool:
    """Whether ``model`` resolves to a randomly initialised built-in GPT-2 (or a warm start of one).

    :param model: a model name or folder.
    """
    from agents.algorithms.supervised import base_model_name
    from lm_gym.models import GPT2_TOKENIZER_NAMES, hub_reachable, is_builtin_random

    base = base_model_name(model)
    if is_builtin_random(base) or "-vocab" in Path(base).name:
        return True
    if base in GPT2_TOKENIZER_NAMES and not Path(base).is_dir():
        return not hub_reachable()  # offline, "gpt2" falls back to the built-in tiny GPT-2
    return False


def auto_learning_rate(
    learning_rate: float | str, model: str | Any, supervised: bool = False
) -> float:
    """Resolve ``"auto"`` (see the module docstring); numbers pass through.

    :param learning_rate: a number or ``"auto"``.
    :param model: the model name or folder (an object counts as pretrained).
    :param supervised: the supervised rate (5x the RL rate for pretrained models).
    :raises ValueError: another string.
    """
    if isinstance(learning_rate, str):
        if learning_rate != "auto":
            raise ValueError(f"learning_rate must be a number or 'auto', not {learning_rate!r}.")
        if isinstance(model, str) and is_random_init(model):
            return LR_RANDOM_INIT
        return LR_PRETRAINED * (5 if supervised else 1)
    return float(learning_rate)


def _resolve_model(
    model: str, env: gym.Env, warm_start: bool | Mapping[str, Any] | None, seed: int | None
) -> str:
    from agents.algorithms.supervised import warm_start as run_warm_start
    from agents.algorithms.supervised import warm_start_options

    options = warm_start_options(warm_start)
    model = model_for_env(model, env)
    if options is not None:
        options.setdefault("seed", seed or 0)
        model = run_warm_start(model, env, **options)
    return model


def restricted_actions(env: gym.Env, max_actions: int = 32) -> list[int]:
    """The action set of a tabular agent on a large vocabulary.

    :param env: an lm-gym env.
    :param max_actions: the size of the set (the whole vocabulary when it is not larger).
    :return: the stop tokens, then the most frequent tokens of the task's demonstrations.
    """
    from agents.algorithms.supervised import demonstrations

    n = int(cast(gym.spaces.Discrete, env.action_space).n)
    if n <= max_actions:
        return list(range(n))
    actions = list(stop_ids(env))[: max(1, max_actions // 4)]
    counts: Counter[int] = Counter()
    for demo in demonstrations(env, max_samples=512):
        counts.update(demo.target_ids)
    for token, _ in counts.most_common():
        if len(actions) >= max_actions:
            break
        if token not in actions:
            actions.append(int(token))
    return actions


def _make_lm_agent(
    cls_path: str, options: dict[str, Any], *, supervised: bool = False, **fixed: Any
) -> Any:
    """The body of an LM agent's factory: ``cls(env, model, **options)`` on the factory's arguments.

    Each factory spells out its options in its signature (the registry checks config keys
    against it) and passes its ``locals()`` here, so the options reach the agent under the same
    names. The model is resolved for the env (:func:`agents.common.base.model_for_env`) and
    warm-started when ``warm_start`` asks; an ``"auto"`` learning rate is resolved for it.

    :param cls_path: ``"module.Class"`` of the agent (imported here, not at module import).
    :param options: the factory's ``locals()``: ``env``, ``model``, maybe ``warm_start``, and the
        agent's keyword options.
    :param supervised: the supervised ``"auto"`` learning rate (see :func:`auto_learning_rate`).
    :param fixed: options the factory fixes (``greedy=True``).
    """
    import importlib

    module, name = cls_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    options = dict(options)
    env, model = options.pop("env"), options.pop("model")
    model = _resolve_model(model, env, options.pop("warm_start", None), options["seed"])
    if "learning_rate" in options:
        options["learning_rate"] = auto_learning_rate(
            options["learning_rate"], model, supervised=supervised
        )
    return cls(env, model, **options, **fixed)


# -- baselines ------------------------------------------------------------------------------------


def make_random(env: gym.Env, seed: int | None = None, verbose: int = 0) -> Any:
    """Uniformly random tokens.

    :param env: the env.
    :param seed: seeds the draws.
    :param verbose: unused.
    """
    from agents.decoding import RandomAgent

    return RandomAgent(env, seed=seed, verbose=verbose)


def make_greedy(
    env: gym.Env,
    model: str = "gpt2",
    device: str = "auto",
    warm_start: bool | Mapping[str, Any] | None = None,
    seed: int | None = None,
    verbose: int = 0,
) -> Any:
    """The untrained LM, greedy decoding.

    :param env: an lm-gym env.
    :param model: causal LM name or folder.
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param warm_start: fine-tune on the task's references first.
    :param seed: recorded.
    :param verbose: unused.
    """
    return _make_lm_agent("agents.decoding.LMDecodingAgent", locals(), greedy=True)


def make_sample(
    env: gym.Env,
    model: str = "gpt2",
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    device: str = "auto",
    warm_start: bool | Mapping[str, Any] | None = None,
    seed: int | None = None,
    verbose: int = 0,
) -> Any:
    """The untrained LM, sampling with temperature, top-k and top-p.

    :param env: an lm-gym env.
    :param model: causal LM name or folder.
    :param temperature: sampling temperature.
    :param top_k: top-k (0: off).
    :param top_p: nucleus threshold (1.0: off).
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param warm_start: fine-tune on the task's references first.
    :param seed: seeds the sampling.
    :param verbose: unused.
    """
    return _make_lm_agent("agents.decoding.LMDecodingAgent", locals())


def make_beam(
    env: gym.Env,
    model: str = "gpt2",
    num_beams: int = 4,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    device: str = "auto",
    warm_start: bool | Mapping[str, Any] | None = None,
    seed: int | None = None,
    verbose: int = 0,
) -> Any:
    """The untrained LM, token-level beam search.

    :param env: an lm-gym env.
    :param model: causal LM name or folder.
    :param num_beams: beam width.
    :param length_penalty: HF's length penalty.
    :param no_repeat_ngram_size: forbid repeated n-grams (0: off).
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param warm_start: fine-tune on the task's references first.
    :param seed: recorded.
    :param verbose: unused.
    """
    return _make_lm_agent("agents.decoding.BeamSearchAgent", locals())


def make_supervised(
    env: gym.Env,
    model: str = "gpt2",
    learning_rate: float | str = "auto",
    batch_size: int = 8,
    max_samples: int | None = None,
    greedy: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    device: str = "auto",
    seed: int | None = None,
    verbose: int = 0,
) -> Any:
    """Supervised fine-tuning on the task's references, then greedy (or sampled) decoding.

    :param env: an lm-gym env.
    :param model: causal LM name or folder.
    :param learning_rate: Adam step size or ``"auto"``.
    :param batch_size: examples per step.
    :param max_samples: cap on the examples.
    :param greedy: greedy decoding (otherwise sampling).
    :param temperature: sampling temperature.
    :param top_k: top-k (0: off).
    :param top_p: nucleus threshold (1.0: off).
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param seed: seeds the example order and the sampling.
    :param verbose: 1 prints the loss.
    """
    return _make_lm_agent("agents.algorithms.supervised.SupervisedAgent", locals(), supervised=True)


# -- tabular --------------------------------------------------------------------------------------


def _tabular_class(base: type) -> type:
    """A subclass whose ``learn`` continues the step count (the zoo protocol: n *more* steps)."""

    class Continuing(base):
        def learn(
            self, total_timesteps: int, callback: Any = None, reset_num_timesteps: bool = False
        ) -> Any:
            return super().learn(total_timesteps, callback, reset_num_timesteps)

    Continuing.__name__ = Continuing.__qualname__ = f"Zoo{base.__name__}"
    Continuing.__doc__ = base.__doc__
    return Continuing


_TABULAR_CLASSES: dict[str, type] = {}


def _tabular(name: str) -> type:
    if name not in _TABULAR_CLASSES:
        from agents.tabular import learning as tabular

        _TABULAR_CLASSES[name] = _tabular_class(getattr(tabular, name))
    return _TABULAR_CLASSES[name]


def _actions(
    env: gym.Env, actions: Sequence[int] | str | None, max_actions: int
) -> list[int] | None:
    if actions is None:
        return None
    if isinstance(actions, str):
        if actions != "auto":
            raise ValueError(
                f"actions must be 'auto', None or a list of token ids, not {actions!r}."
            )
        return restricted_actions(env, max_actions)
    return [int(a) for a in actions]


def _make_tabular_agent(name: str, options: dict[str, Any]) -> Any:
    """The body of a tabular factory: the zoo's class of ``agents.tabular.learning.<name>`` built
    from the factory's ``locals()`` (``actions`` resolved with ``max_actions``; ``verbose`` is
    unused).

    :param name: ``"QLearning"`` or ``"Reinforce"``.
    :param options: the factory's ``locals()``.
    """
    options = dict(options)
    env, max_actions = options.pop("env"), options.pop("max_actions")
    del options["verbose"]
    options["actions"] = _actions(env, options["actions"], max_actions)
    return _tabular(name)(env, **options)


def make_tabular_q(
    env: gym.Env,
    learning_rate: float = 0.5,
    gamma: float = 1.0,
    exploration: str = "epsilon",
    exploration_initial: float = 1.0,
    exploration_final: float = 0.05,
    exploration_fraction: float = 0.5,
    initial_q: float = 0.0,
    actions: Sequence[int] | str | None = "auto",
    max_actions: int = 32,
    seed: int | None = None,
    verbose: int = 0,
) -> Any:
    """Tabular Q-learning with epsilon-greedy or softmax exploration over a restricted action set.

    :param env: an lm-gym env.
    :param learning_rate: step size in (0, 1].
    :param gamma: discount.
    :param exploration: ``"epsilon"`` or ``"softmax"``.
    :param exploration_initial: initial epsilon or temperature.
    :param exploration_final: final epsilon or temperature.
    :param exploration_fraction: fraction of each ``learn`` call over which it decays.
    :param initial_q: value of unseen state-action pairs.
    :param actions: ``"auto"`` (see :func:`restricted_actions`), ``None`` (whole vocabulary) or ids.
    :param max_actions: size of the ``"auto"`` set.
    :param seed: random seed.
    :param verbose: unused.
    """
    return _make_tabular_agent("QLearning", locals())


def make_tabular_reinforce(
    env: gym.Env,
    learning_rate: float = 0.5,
    gamma: float = 1.0,
    baseline: bool = True,
    baseline_learning_rate: float = 0.2,
    actions: Sequence[int] | str | None = "auto",
    max_actions: int = 32,
    seed: int | None = None,
    verbose: int = 0,
) -> Any:
    """Tabular REINFORCE (softmax policy), with or without a state-value baseline.

    :param env: an lm-gym env.
    :param learning_rate: policy step size.
    :param gamma: discount.
    :param baseline: subtract a learned state value.
    :param baseline_learning_rate: step size of the baseline.
    :param actions: ``"auto"``, ``None`` or ids (see :func:`make_tabular_q`).
    :param max_actions: size of the ``"auto"`` set.
    :param seed: random seed.
    :param verbose: unused.
    """
    return _make_tabular_agent("Reinforce", locals())


def make_reinforce(
    env: gym.Env,
    model: str = "gpt2",
    baseline: bool = True,
    learning_rate: float | str = "auto",
    batch_episodes: int = 8,
    gamma: float = 1.0,
    ent_coef: float = 0.0,
    vf_coef: float = 0.5,
    max_grad_norm: float = 1.0,
    normalize_advantage: bool = False,
    device: str = "auto",
    warm_start: bool | Mapping[str, Any] | None = None,
    seed: int | None = None,
    verbose: int = 0,
) -> Any:
    """REINFORCE with a causal-LM policy, with or without a learned value baseline.

    :param env: an lm-gym env.
    :param model: causal LM name or folder.
    :param baseline: subtract a learned state value.
    :param learning_rate: Adam step size or ``"auto"``.
    :param batch_episodes: episodes per update.
    :param gamma: discount.
    :param ent_coef: entropy bonus.
    :param vf_coef: value-loss weight.
    :param max_grad_norm: gradient clipping.
    :param normalize_advantage: standardise advantages per batch.
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param warm_start: fine-tune on the task's references first.
    :param seed: random seed.
    :param verbose: 1 prints a line per update.
    """
    return _make_lm_agent("agents.algorithms.reinforce.LMReinforce", locals())


# -- stable-baselines3 ----------------------------------------------------------------------------


def _algo_class(name: str) -> type[Any]:
    if name == "ppo":
        from agents.algorithms.ppo import EpisodePPO

        return EpisodePPO
    if name in GROUP_ALGORITHMS:
        from agents.algorithms.grpo import GroupRelativePPO

        return GroupRelativePPO
    if name == "a2c":
        from stable_baselines3 import A2C

        return A2C
    if name == "dqn":
        from stable_baselines3 import DQN

        return DQN
    if name == "trpo":
        from sb3_contrib import TRPO

        return TRPO
    if name == "nlpo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    raise KeyError(name)


def _policy_class(name: str) -> type:
    from agents.networks import policies

    if name == "dqn":
        return policies.LMDQNPolicy
    if name == "nlpo":
        return policies.MaskableLMActorCriticPolicy
    return policies.LMActorCriticPolicy


#: Options of the SB3 factories besides the algorithm's own.
SB3_COMMON_OPTIONS = (
    "model",
    "learning_rate",
    "policy_kwargs",
    "kl_coef",
    "kl_target",
    "kl_horizon",
    "kl_min_coef",
    "n_envs",
    "reward_scale",
    "bootstrap_at_budget",
    "warm_start",
    "device",
    "seed",
    "verbose",
)
#: Algorithm arguments the factories set themselves.
_MANAGED = {"self", "policy", "env", "tensorboard_log", "_init_setup_model"}
#: Extra options per algorithm.
_EXTRA_OPTIONS = {
    "nlpo": ("nlpo_top_p", "mask_update_every"),
    "ppo": ("episode_eval", "episode_minibatches"),
    "grpo": ("episode_eval", "episode_minibatches"),
    "rloo": ("episode_eval", "episode_minibatches"),
}
#: The group-relative, critic-free agents (agents.algorithms.grpo.GroupRelativePPO) and their
#: advantage.
GROUP_ALGORITHMS = {"grpo": "grpo", "rloo": "rloo"}


def algo_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a zoo SB3 agent's algorithm, with their defaults (EpisodePPO
    and GroupRelativePPO forward SB3's PPO's: both sets, theirs winning), less those the factory
    sets itself.

    :param name: a key of :data:`SB3_ALGORITHMS`.
    """
    cls = _algo_class(name)
    params = dict(inspect.signature(cls.__init__).parameters)
    if name == "ppo" or name in GROUP_ALGORITHMS:  # they forward **kwargs to SB3's PPO
        from stable_baselines3 import PPO

        params = {**inspect.signature(PPO.__init__).parameters, **params}
        params.pop("advantage", None)  # fixed by the agent's name
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return {k: p for k, p in params.items() if k not in _MANAGED and p.kind not in variadic}


def _algo_option_names(name: str) -> list[str]:
    own = set(algo_parameters(name))
    return sorted(own | set(SB3_COMMON_OPTIONS) | set(_EXTRA_OPTIONS.get(name, ())))


def _vec_env(env: gym.Env, n_envs: int, reward_scale: float = 1.0) -> Any:
    """``n_envs`` copies of ``env`` under SB3's ``Monitor`` in a ``DummyVecEnv``; a
    ``reward_scale`` other than 1 multiplies the rewards the algorithm sees (``TransformReward``
    outside the ``Monitor``, which keeps logging the task's own rewards)."""
    from stable_baselines3.common.env_util import is_wrapped
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    scale = float(reward_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"reward_scale must be a finite number > 0, got {reward_scale!r}.")
    if n_envs > 1 and fresh_env(env) is None:
        raise ValueError("n_envs > 1 needs an env made with gymnasium.make (it is copied).")

    def scaled(e: gym.Env) -> gym.Env:
        monitored = e if is_wrapped(e, Monitor) else Monitor(e)
        if scale == 1.0:
            return monitored
        return gym.wrappers.TransformReward(monitored, functools.partial(operator.mul, scale))

    first = scaled(env)
    makers: list[Callable[[], gym.Env]] = [lambda: first]
    for _ in range(n_envs - 1):
        makers.append(lambda: scaled(cast(gym.Env, fresh_env(env))))  # not None: checked above
    return DummyVecEnv(makers)


def _sb3_factory(name: str, summary: str) -> Callable[..., SB3Agent]:
    def factory(
        env: gym.Env,
        model: str = "gpt2",
        learning_rate: float | str = "auto",
        policy_kwargs: Mapping[str, Any] | None = None,
        kl_coef: float = 0.0,
        kl_target: float | None = None,
        kl_horizon: int = 10_000,
        kl_min_coef: float = 0.0,
        n_envs: int = 1,
        reward_scale: float = 1.0,
        bootstrap_at_budget: bool = False,
        warm_start: bool | Mapping[str, Any] | None = None,
        device: str = "auto",
        seed: int | None = None,
        verbose: int = 0,
        **algo_kwargs: Any,
    ) -> SB3Agent:
        allowed = set(_algo_option_names(name))
        unknown = sorted(set(algo_kwargs) - allowed)
        if unknown:
            raise UnknownOptionError(
                f"Agent {name!r} has no option {', '.join(map(repr, unknown))}. "
                f"Its options: {', '.join(sorted(allowed))}."
            )
        extra = {k: algo_kwargs.pop(k) for k in _EXTRA_OPTIONS.get(name, ()) if k in algo_kwargs}
        model = _resolve_model(model, env, warm_start, seed)
        pk = {"model": model, **dict(policy_kwargs or {})}
        if name == "trpo":
            # TRPO differentiates twice (Hessian-vector products); PyTorch's fused CPU attention
            # kernels have no double backward, so the policy's LM uses eager attention. A policy
            # option, so that the saved policy (and a resumed run) keeps it.
            pk.setdefault("attn_implementation", "eager")
        if name == "nlpo" and "nlpo_top_p" in extra:
            pk["nlpo_top_p"] = extra["nlpo_top_p"]
        venv = _vec_env(env, int(n_envs), reward_scale)
        if name in GROUP_ALGORITHMS:
            from agents.algorithms.grpo import GroupedResetVecEnv

            pk.setdefault("value_head", False)  # critic-free
            algo_kwargs["advantage"] = GROUP_ALGORITHMS[name]
            if isinstance(model, str) and not pk.get("lora"):
                # a resumed run keeps the starting model as reference (with LoRA the policy's
                # LM with its adapters off is that model already, without a second copy)
                algo_kwargs.setdefault("kl_reference", model)
            group_size = int(algo_kwargs.setdefault("group_size", 4))
            venv = GroupedResetVecEnv(venv, group_size)  # innermost: see agents.algorithms.grpo
        if name == "ppo" or name in GROUP_ALGORITHMS:  # EpisodePPO decides it itself
            algo_kwargs["bootstrap_at_budget"] = bool(bootstrap_at_budget)
        elif not bootstrap_at_budget:
            from agents.algorithms.budget import TerminalAtBudgetVecEnv

            venv = TerminalAtBudgetVecEnv(venv)
        callbacks: list[Any] = []
        if kl_coef > 0 or kl_target is not None:
            from agents.algorithms import kl

            kl_kwargs: dict[str, Any] = {
                "coef": kl_coef,
                "target_kl": kl_target,
                "horizon": kl_horizon,
                "min_coef": kl_min_coef,
            }
            if name == "dqn":  # off-policy: the env-side penalty, step by step
                venv = kl.KLPenaltyVecEnv(venv, **kl_kwargs)
                callbacks.append(kl.KLPenaltyVecEnvCallback())
            else:  # on-policy: from each rollout's buffer, after the rollout
                callbacks.append(kl.KLPenaltyCallback(**kl_kwargs))
        learn_kwargs: dict[str, Any] = {}
        if name == "nlpo":
            from agents.algorithms.nlpo import NLPOMaskUpdateCallback, NLPORolloutBuffer

            algo_kwargs.setdefault("rollout_buffer_class", NLPORolloutBuffer)
            callbacks.append(NLPOMaskUpdateCallback(int(extra.get("mask_update_every", 4))))
            learn_kwargs["use_masking"] = False  # the policy masks itself (NLPO top-p)
        if name == "ppo" or name in GROUP_ALGORITHMS:
            for option in ("episode_eval", "episode_minibatches"):
                if option in extra:
                    algo_kwargs[option] = bool(extra[option])
        if callbacks:
            learn_kwargs["callback"] = callbacks
        algo = _algo_class(name)(
            _policy_class(name),
            venv,
            learning_rate=auto_learning_rate(learning_rate, model),
            policy_kwargs=pk,
            device=resolve_device(device),  # SB3 itself falls back to the CPU without a word
            seed=seed,
            verbose=verbose,
            **algo_kwargs,
        )
        return SB3Agent(algo, learn_kwargs)

    factory.__doc__ = summary
    factory.__name__ = f"make_{name}"
    return factory


SB3_ALGORITHMS = {
    "ppo": "PPO with the causal-LM actor-critic policy (episode-level updates)",
    "a2c": "A2C with the causal-LM actor-critic policy",
    "trpo": "TRPO (sb3-contrib) with the causal-LM actor-critic policy",
    "nlpo": "NLPO: MaskablePPO with top-p masks from a lagged copy of the LM policy",
    "dqn": "DQN with a causal-LM Q-network over the vocabulary",
    "grpo": "GRPO: group-normalised episode advantages, clipped ratio, no critic",
    "rloo": "RLOO: leave-one-out group baseline policy gradient, no critic",
}


def builtin_agents() -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    """The zoo's agents as ``(name, factory, register_agent options)``, which
    :mod:`agents.registry` registers on first use."""
    plain: Iterable[tuple[str, Callable[..., Any], tuple[str, ...]]] = (
        ("random", make_random, ("baseline",)),
        ("greedy", make_greedy, ("baseline", "lm")),
        ("sample", make_sample, ("baseline", "lm")),
        ("beam", make_beam, ("baseline", "lm")),
        ("supervised", make_supervised, ("lm", "supervised")),
        ("tabular-q", make_tabular_q, ("tabular",)),
        ("tabular-reinforce", make_tabular_reinforce, ("tabular",)),
        ("reinforce", make_reinforce, ("lm", "rl")),
    )
    agents: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
        (name, factory, {"tags": tags}) for name, factory, tags in plain
    ]
    for name, summary in SB3_ALGORITHMS.items():
        options = {
            "summary": summary,
            "tags": ("lm", "rl", "sb3"),
            "options": functools.partial(_algo_option_names, name),
        }
        agents.append((name, _sb3_factory(name, summary), options))
    return agents
