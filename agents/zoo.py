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

Each option is declared once (:mod:`agents.common.options`): the factories are made from the agent
classes (:class:`~agents.common.options.ClassFactory`) and, for the SB3 agents, from the algorithm's
signature plus :func:`_sb3_options` (:class:`SB3Factory`); what the zoo adds or widens is
:data:`ZOO_OPTIONS`. ``lm-gym agents NAME`` prints the result.
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
from agents.common.options import (
    ClassFactory,
    OptionFactory,
    forwarded_parameters,
    keyword_parameters,
    param_docs,
)
from lm_gym.models import resolve_device

__all__ = [
    "SB3_ALGORITHMS",
    "ZOO_OPTIONS",
    "SB3Factory",
    "auto_learning_rate",
    "builtin_agents",
    "restricted_actions",
]

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


# -- factories made from a declaration -------------------------------------------------------------


def _option(
    name: str, default: Any, annotation: Any = inspect.Parameter.empty
) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


#: Options the zoo adds to the agents of a kind, or whose meaning it widens, each declared here
#: once: ``{name: (parameter, doc)}``.
ZOO_OPTIONS: dict[str, tuple[inspect.Parameter, str]] = {
    "warm_start": (
        _option("warm_start", None, "bool | Mapping[str, Any] | None"),
        "fine-tune on the task's references first: ``True``, or options of "
        ":func:`agents.algorithms.supervised.warm_start` (RL4LMs' supervised + RL)",
    ),
    "learning_rate": (
        _option("learning_rate", "auto", "float | str"),
        'the step size, or ``"auto"``: 1e-3 for a randomly initialised built-in model, 1e-5 for a '
        "pretrained one (5e-5 for supervised fine-tuning)",
    ),
    "actions": (
        _option("actions", "auto", "Sequence[int] | str | None"),
        '``"auto"`` (the stop tokens and the task\'s most frequent demonstration tokens, see '
        ":func:`restricted_actions`), ``None`` (the whole vocabulary) or token ids",
    ),
    "max_actions": (_option("max_actions", 32, "int"), 'size of the ``"auto"`` action set'),
    "verbose": (_option("verbose", 0, "int"), "unused"),
}


def _build_lm_agent(cls: type, env: gym.Env, options: dict[str, Any]) -> Any:
    """An LM agent: its model resolved for the env (:func:`agents.common.base.model_for_env`),
    warm-started when ``warm_start`` asks, an ``"auto"`` learning rate resolved for it."""
    from agents.algorithms.supervised import SupervisedAgent

    model = _resolve_model(
        options.pop("model"), env, options.pop("warm_start", None), options["seed"]
    )
    if "learning_rate" in options:
        supervised = issubclass(cls, SupervisedAgent)
        options["learning_rate"] = auto_learning_rate(options["learning_rate"], model, supervised)
    return cls(env, model, **options)


def _build_tabular_agent(cls: type, env: gym.Env, options: dict[str, Any]) -> Any:
    """A tabular agent of the zoo's class (``learn`` continues the step count), its ``"auto"``
    action set resolved; ``verbose`` is dropped (tabular agents print nothing)."""
    del options["verbose"]
    options["actions"] = _actions(env, options["actions"], options.pop("max_actions"))
    return _continuing(cls)(env, **options)


def _continuing(base: type) -> type:
    """A subclass whose ``learn`` continues the step count (the zoo protocol: n *more* steps)."""
    if base not in _CONTINUING:

        class Continuing(base):
            def learn(
                self, total_timesteps: int, callback: Any = None, reset_num_timesteps: bool = False
            ) -> Any:
                return super().learn(total_timesteps, callback, reset_num_timesteps)

        Continuing.__name__ = Continuing.__qualname__ = f"Zoo{base.__name__}"
        Continuing.__doc__ = base.__doc__
        _CONTINUING[base] = Continuing
    return _CONTINUING[base]


_CONTINUING: dict[type, type] = {}


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


_TABULAR = ("actions", "max_actions", "verbose")


def _lm_factory(
    cls_path: str,
    summary: str,
    *,
    learning_rate: bool = False,
    warm_start: bool = True,
    **kwargs: Any,
) -> ClassFactory:
    """The factory of an LM agent class: its options, plus the zoo's ``"auto"`` learning rate
    and ``warm_start`` where they apply."""
    zoo_options = ("learning_rate",) * learning_rate + ("warm_start",) * warm_start
    extra = {name: ZOO_OPTIONS[name] for name in zoo_options}
    return ClassFactory(cls_path, summary, extra=extra, build=_build_lm_agent, **kwargs)


def _tabular_factory(cls_name: str, summary: str) -> ClassFactory:
    return ClassFactory(
        f"agents.tabular.learning.{cls_name}",
        summary,
        extra={name: ZOO_OPTIONS[name] for name in _TABULAR},
        build=_build_tabular_agent,
    )


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


def _sb3_options(
    model: str = "gpt2",
    policy_kwargs: Mapping[str, Any] | None = None,
    kl_coef: float = 0.0,
    kl_target: float | None = None,
    kl_horizon: int = 10_000,
    kl_min_coef: float = 0.0,
    n_envs: int = 1,
    reward_scale: float = 1.0,
    bootstrap_at_budget: bool = False,
    device: str = "auto",
    seed: int | None = None,
    verbose: int = 0,
) -> None:
    """The options every zoo SB3 agent takes besides its algorithm's (their declaration).

    :param model: causal LM name or folder (``"gpt2"`` offline: the built-in tiny GPT-2).
    :param policy_kwargs: options of the policy (:class:`agents.networks.policies.LMActorCriticPolicy`:
        ``lora``, ``value_hidden``, ...).
    :param kl_coef: coefficient of the KL penalty to the starting model (0: off).
    :param kl_target: a target KL per episode: the coefficient adapts to it (``None``: fixed).
    :param kl_horizon: env steps over which the adaptive coefficient moves.
    :param kl_min_coef: the adaptive coefficient's floor.
    :param n_envs: copies of the env stepped together (one batched forward per step).
    :param reward_scale: multiplies the training envs' rewards (logs and evaluations keep the
        task's units).
    :param bootstrap_at_budget: SB3's ``gamma * V`` bootstrap when an episode reaches the token
        budget (default: a terminal state).
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param seed: random seed.
    :param verbose: SB3's verbosity.
    """


#: The options of :func:`_sb3_options` and the zoo's that SB3 agents take too.
_SB3_ZOO_OPTIONS = ("learning_rate", "warm_start")
#: Algorithm arguments the factories set themselves.
_MANAGED = {"self", "policy", "env", "tensorboard_log", "_init_setup_model", "advantage"}
#: The group-relative, critic-free agents (agents.algorithms.grpo.GroupRelativePPO) and their
#: advantage.
GROUP_ALGORITHMS = {"grpo": "grpo", "rloo": "rloo"}


def _nlpo_parameters() -> tuple[dict[str, inspect.Parameter], dict[str, str]]:
    """NLPO's options beyond MaskablePPO's, read from where they are declared: the policy's
    ``nlpo_top_p`` and the mask callback's ``update_every`` (as ``mask_update_every``)."""
    from agents.algorithms.nlpo import NLPOMaskUpdateCallback
    from agents.networks.policies import MaskableLMActorCriticPolicy

    top_p = keyword_parameters(MaskableLMActorCriticPolicy)["nlpo_top_p"]
    every = keyword_parameters(NLPOMaskUpdateCallback)["update_every"]
    params = {"nlpo_top_p": top_p, "mask_update_every": every.replace(name="mask_update_every")}
    docs = {
        "nlpo_top_p": param_docs(MaskableLMActorCriticPolicy)["nlpo_top_p"],
        "mask_update_every": param_docs(NLPOMaskUpdateCallback)["update_every"],
    }
    return params, docs


def algo_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a zoo SB3 agent's algorithm, with their defaults, less those the
    factory sets itself (see :func:`agents.common.options.forwarded_parameters`: GroupRelativePPO
    forwards ``**kwargs`` to EpisodePPO, which forwards them to SB3's PPO).

    :param name: a key of :data:`SB3_ALGORITHMS`.
    """
    return forwarded_parameters(_algo_class(name), _MANAGED)


class SB3Factory(OptionFactory):
    """The factory of a zoo SB3 agent: its algorithm's options (their declaration: the algorithm's
    signature and docstring), the zoo's (:func:`_sb3_options`), and NLPO's mask options.

    :param name: a key of :data:`SB3_ALGORITHMS`.
    :param summary: one line for ``lm-gym agents``.
    """

    def __init__(self, name: str, summary: str) -> None:
        super().__init__(summary)
        self.name = name
        self.__name__ = f"make_{name}"

    def own_parameters(self) -> tuple[dict[str, inspect.Parameter], dict[str, str]]:
        """The zoo's options, then the algorithm's (the zoo's winning, e.g. ``"auto"``)."""
        params = keyword_parameters(_sb3_options)
        docs = param_docs(_sb3_options)
        for name in _SB3_ZOO_OPTIONS:
            params[name], docs[name] = ZOO_OPTIONS[name]
        cls = _algo_class(self.name)
        algo = {k: p for k, p in algo_parameters(self.name).items() if k not in params}
        algo_docs = param_docs(cls)  # EpisodePPO's and SB3's PPO's, its base
        if self.name == "nlpo":
            extra, extra_docs = _nlpo_parameters()
            algo.update(extra)
            algo_docs.update(extra_docs)
        params.update(algo)
        docs.update({k: algo_docs.get(k, "") for k in algo})
        return params, docs

    def build(self, env: gym.Env, options: dict[str, Any], given: set[str]) -> SB3Agent:
        """The algorithm with the LM policy on ``n_envs`` copies of ``env``; the algorithm's own
        options are passed only when given (its defaults stay its own)."""
        name = self.name
        own = set(keyword_parameters(_sb3_options)) | set(_SB3_ZOO_OPTIONS)
        algo_kwargs = {k: v for k, v in options.items() if k not in own and k in given}
        extra = {
            k: algo_kwargs.pop(k) for k in ("nlpo_top_p", "mask_update_every") if k in algo_kwargs
        }
        seed = options["seed"]
        model = _resolve_model(options["model"], env, options["warm_start"], seed)
        pk = {"model": model, **dict(options["policy_kwargs"] or {})}
        if name == "trpo":
            # TRPO differentiates twice (Hessian-vector products); PyTorch's fused CPU attention
            # kernels have no double backward, so the policy's LM uses eager attention. A policy
            # option, so that the saved policy (and a resumed run) keeps it.
            pk.setdefault("attn_implementation", "eager")
        if "nlpo_top_p" in extra:
            pk["nlpo_top_p"] = extra["nlpo_top_p"]
        venv = _vec_env(env, int(options["n_envs"]), options["reward_scale"])
        if name in GROUP_ALGORITHMS:
            from agents.algorithms.grpo import GroupedResetVecEnv

            pk.setdefault("value_head", False)  # critic-free
            algo_kwargs["advantage"] = GROUP_ALGORITHMS[name]
            if isinstance(model, str) and not pk.get("lora"):
                # a resumed run keeps the starting model as reference (with LoRA the policy's
                # LM with its adapters off is that model already, without a second copy)
                algo_kwargs.setdefault("kl_reference", model)
            group_size = int(options["group_size"])
            algo_kwargs["group_size"] = group_size
            venv = GroupedResetVecEnv(venv, group_size)  # innermost: see agents.algorithms.grpo
        if name == "ppo" or name in GROUP_ALGORITHMS:  # EpisodePPO decides it itself
            algo_kwargs["bootstrap_at_budget"] = bool(options["bootstrap_at_budget"])
        elif not options["bootstrap_at_budget"]:
            from agents.algorithms.budget import TerminalAtBudgetVecEnv

            venv = TerminalAtBudgetVecEnv(venv)
        callbacks: list[Any] = []
        if options["kl_coef"] > 0 or options["kl_target"] is not None:
            from agents.algorithms import kl

            kl_kwargs: dict[str, Any] = {
                "coef": options["kl_coef"],
                "target_kl": options["kl_target"],
                "horizon": options["kl_horizon"],
                "min_coef": options["kl_min_coef"],
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
            callbacks.append(NLPOMaskUpdateCallback(int(options["mask_update_every"])))
            learn_kwargs["use_masking"] = False  # the policy masks itself (NLPO top-p)
        if callbacks:
            learn_kwargs["callback"] = callbacks
        algo = _algo_class(name)(
            _policy_class(name),
            venv,
            learning_rate=auto_learning_rate(options["learning_rate"], model),
            policy_kwargs=pk,
            device=resolve_device(options["device"]),  # SB3 itself falls back to the CPU silently
            seed=seed,
            verbose=options["verbose"],
            **algo_kwargs,
        )
        return SB3Agent(algo, learn_kwargs)


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
    lm = "agents.decoding.LMDecodingAgent"
    plain: Iterable[tuple[str, OptionFactory, tuple[str, ...]]] = (
        (
            "random",
            ClassFactory("agents.decoding.RandomAgent", "Uniformly random tokens."),
            ("baseline",),
        ),
        (
            "greedy",
            _lm_factory(
                lm,
                "The untrained LM, greedy decoding.",
                fixed={"greedy": True},
                hidden=("temperature", "top_k", "top_p"),
            ),
            ("baseline", "lm"),
        ),
        (
            "sample",
            _lm_factory(
                lm,
                "The untrained LM, sampling with temperature, top-k and top-p.",
                fixed={"greedy": False},
                defaults={"top_k": 50},
            ),
            ("baseline", "lm"),
        ),
        (
            "beam",
            _lm_factory(
                "agents.decoding.BeamSearchAgent", "The untrained LM, token-level beam search."
            ),
            ("baseline", "lm"),
        ),
        (
            "supervised",
            _lm_factory(
                "agents.algorithms.supervised.SupervisedAgent",
                "Supervised fine-tuning on the task's references, then greedy (or sampled) "
                "decoding.",
                learning_rate=True,
                warm_start=False,
            ),
            ("lm", "supervised"),
        ),
        (
            "tabular-q",
            _tabular_factory(
                "QLearning",
                "Tabular Q-learning with epsilon-greedy or softmax exploration over a "
                "restricted action set.",
            ),
            ("tabular",),
        ),
        (
            "tabular-reinforce",
            _tabular_factory(
                "Reinforce",
                "Tabular REINFORCE (softmax policy), with or without a state-value baseline.",
            ),
            ("tabular",),
        ),
        (
            "reinforce",
            _lm_factory(
                "agents.algorithms.reinforce.LMReinforce",
                "REINFORCE with a causal-LM policy, with or without a learned value baseline.",
                learning_rate=True,
            ),
            ("lm", "rl"),
        ),
    )
    agents: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
        (name, factory, {"tags": tags, "summary": factory.summary}) for name, factory, tags in plain
    ]
    for name, summary in SB3_ALGORITHMS.items():
        agents.append(
            (name, SB3Factory(name, summary), {"summary": summary, "tags": ("lm", "rl", "sb3")})
        )
    return agents
