"""The agent protocol of the zoo, a base class for agents written here, and the SB3 adapter.

Every agent, whatever its origin (a stable-baselines3 model, a tabular learner, an LM decoding
baseline, a third-party plug-in), meets one small protocol, a subset of SB3's:

* ``learn(total_timesteps, callback=None)``: train for ``total_timesteps`` more env steps and return
  the agent. ``callback`` follows SB3's function-callback convention, ``callback(locals_, globals_)``,
  called at least once per episode; returning ``False`` stops training. An agent that has nothing
  to learn (a decoding baseline) returns at once.
* ``predict(observation, deterministic=False)``: ``(action, state)`` for one observation (a token
  id) or a batch (an array), as SB3's ``predict``.
* ``save(path)``: write the agent to ``path`` (a file or a folder, the agent's choice).
* ``load(path)``: read it back and *return* the loaded agent. SB3's classmethods (which return a
  new model) and in-place loaders both qualify: callers always use the returned object
  (:func:`load_agent` passes ``env=`` where the loader takes it).

Optional capabilities, used where present: ``num_timesteps`` (env steps learned so far),
``set_logger(logger)`` (an SB3 :class:`~stable_baselines3.common.logger.Logger`, for TensorBoard),
and ``action_log_probs(observations)`` (the log-probabilities the agent gives every action of a
batch of observations: the benchmark's KL to the reference LM needs it). An agent whose ``predict``
cannot take a batch sets ``supports_batch_predict = False``: the evaluation then plays one episode at
a time instead of one batched ``predict`` for all its parallel episodes.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import gymnasium as gym
import numpy as np

from agents.common.options import constructor_options
from lm_gym.models import resolve_device

if TYPE_CHECKING:
    import torch
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.logger import Logger
    from transformers import PreTrainedModel

    from lm_gym.envs.core import TextEnv

#: SB3's function callback: ``callback(locals_, globals_) -> bool | None``; ``False`` stops.
Callback = Callable[[dict[str, Any], dict[str, Any]], Any]

ObsDict = dict[str, np.ndarray]


@runtime_checkable
class Agent(Protocol):
    """What every agent of the zoo provides (see the module docstring)."""

    def learn(self, total_timesteps: int, callback: Any = None) -> Any:
        """Train for ``total_timesteps`` more env steps; return the agent."""
        ...

    def predict(self, observation: Any, *, deterministic: bool = False) -> tuple[Any, Any]:
        """``(action, state)`` for an observation or a batch of observations."""
        ...

    def save(self, path: str | Path) -> None:
        """Write the agent to ``path``."""
        ...

    def load(self, path: str | Path) -> Any:
        """Read an agent written by :meth:`save` and return it."""
        ...


def load_agent(agent: Any, path: str | Path, env: gym.Env | None = None) -> Any:
    """Load the state saved at ``path`` with ``agent``'s loader and return the loaded agent.

    :param agent: an agent of the kind that wrote ``path`` (built on the same env and options).
    :param path: what ``agent.save`` wrote.
    :param env: passed as ``env=`` when the loader takes it (SB3 models, tabular agents).
    :return: the loaded agent (the same object for in-place loaders).
    """
    loader = agent.load
    try:
        takes_env = "env" in inspect.signature(loader).parameters
    except (TypeError, ValueError):
        takes_env = False
    loaded = loader(path, env=env) if takes_env and env is not None else loader(path)
    return agent if loaded is None else loaded


def call_callback(callback: Callback | None, locals_: dict[str, Any]) -> bool:
    """Call an SB3 function callback; ``True`` means go on.

    :param callback: ``callback(locals_, globals_)`` or ``None``.
    :param locals_: the caller's locals (``locals_["self"]`` is the agent).
    """
    if callback is None:
        return True
    return callback(locals_, globals()) is not False


# -- env helpers ----------------------------------------------------------------------------------


def text_env(env: gym.Env) -> TextEnv:
    """The lm-gym :class:`~lm_gym.envs.core.TextEnv` inside ``env`` (wrappers removed).

    :raises TypeError: ``env`` is not an lm-gym text env.
    """
    from lm_gym.envs.core import TextEnv

    inner = getattr(env, "unwrapped", env)
    if not isinstance(inner, TextEnv):
        raise TypeError(f"Expected an lm-gym text env, got {type(inner).__name__}.")
    return inner


def env_id_of(env: gym.Env) -> str | None:
    """The registered id of ``env`` (``None`` for an env made without ``gymnasium.make``)."""
    spec = getattr(env, "spec", None) or getattr(getattr(env, "unwrapped", None), "spec", None)
    return getattr(spec, "id", None)


def fresh_env(env: gym.Env) -> gym.Env | None:
    """A new instance of ``env``'s registered env with the same options, without its wrappers
    (``None`` for an env made without ``gymnasium.make``).

    :param env: an env made with ``gymnasium.make`` (possibly wrapped since, e.g. in ``Monitor``).
    """
    import dataclasses

    spec = getattr(getattr(env, "unwrapped", env), "spec", None)
    if spec is None:
        return None
    return gym.make(dataclasses.replace(spec, additional_wrappers=()))


def stop_ids(env: gym.Env) -> list[int]:
    """The token ids that end an episode of ``env`` (EOS and the task's stop strings), sorted."""
    from lm_gym.envs.core import stop_token_ids

    inner = text_env(env)
    cfg = inner.config
    ids = set(stop_token_ids(cfg["tokenizer"], tuple(cfg["stop_strings"])))
    if cfg["stop_on_eos"]:
        ids.add(int(inner.eos_token_id))
    return sorted(ids)


def real_tokens(observation: Mapping[str, np.ndarray]) -> list[int]:
    """The real token ids of one observation (where the attention mask is 1)."""
    ids = np.asarray(observation["input_ids"]).reshape(-1)
    mask = np.asarray(observation["attention_mask"]).reshape(-1)
    return [int(i) for i in ids[mask > 0.5]]


def batch_obs(observation: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
    """``(batched observation, was_single)``: adds a leading axis to a single observation."""
    ids = np.asarray(observation["input_ids"])
    mask = np.asarray(observation["attention_mask"])
    if ids.ndim == 1:
        return {"input_ids": ids[None], "attention_mask": mask[None]}, True
    return {"input_ids": ids, "attention_mask": mask}, False


# -- models ---------------------------------------------------------------------------------------


def model_for_env(model: str, env: gym.Env) -> str:
    """A model name or folder whose vocabulary matches ``env``'s action space.

    GPT-2-vocabulary envs take any name as is. For a small vocabulary (the word-level envs), a
    built-in name (``"tiny-gpt2"``, ...) is built with that vocabulary and written once to a folder
    in the lm-gym cache, whose path is returned: a JSON-serialisable name that every policy and
    ``load_causal_lm`` resolves. ``"gpt2"`` and its family map to ``"tiny-gpt2"`` there (a
    pretrained GPT-2 cannot act on a vocabulary of a few words).

    :param model: a causal LM name or folder.
    :param env: the env the model will act on.
    :raises ValueError: the env's vocabulary is not GPT-2's and ``model`` is neither a built-in
        GPT-2 name, a folder, nor a model whose tokenizer has the env's vocabulary.
    """
    from lm_gym.models import (
        BUILTIN_LMS,
        GPT2_TOKENIZER_NAMES,
        GPT2_VOCAB_SIZE,
        tokenizer_name_for_model,
    )

    vocab = int(cast(gym.spaces.Discrete, env.action_space).n)
    if vocab == GPT2_VOCAB_SIZE or Path(model).is_dir():
        return model
    if model in GPT2_TOKENIZER_NAMES:
        model = "tiny-gpt2"
    if model not in BUILTIN_LMS:
        # a model with its own tokenizer (smollm2-135m, tiny-llama, a hub id) acts on envs made
        # with that tokenizer
        if _tokenizer_size(tokenizer_name_for_model(model)) == vocab:
            return model
        raise ValueError(
            f"The env's vocabulary has {vocab} tokens; model {model!r} cannot act on it. Use a "
            f"built-in name ({', '.join(sorted(BUILTIN_LMS))}), built with the env's vocabulary, "
            "or a model whose tokenizer is the env's."
        )
    from lm_gym.data.cache import cache_root
    from lm_gym.models import load_causal_lm, write_folder_atomically

    folder = cache_root() / "models" / f"{model}-vocab{vocab}"
    if not (folder / "config.json").exists():
        write_folder_atomically(folder, load_causal_lm(model, vocab_size=vocab).save_pretrained)
    return str(folder)


def _tokenizer_size(name: str) -> int | None:
    """The vocabulary size of tokenizer ``name``, or ``None`` when it cannot be loaded."""
    from lm_gym.models import load_tokenizer

    try:
        return len(load_tokenizer(name))
    except (OSError, ValueError, ImportError):
        return None


def load_lm_for_env(model: str | PreTrainedModel, env: gym.Env) -> PreTrainedModel:
    """A causal LM (eval mode, CPU) whose vocabulary matches ``env``'s action space.

    :param model: a name or folder (see :func:`model_for_env`) or a model object (checked).
    :param env: the env.
    :raises ValueError: the vocabulary does not match.
    """
    from lm_gym.models import load_causal_lm

    lm = load_causal_lm(model_for_env(model, env)) if isinstance(model, str) else model
    vocab = int(lm.get_output_embeddings().weight.shape[0])
    if vocab != int(cast(gym.spaces.Discrete, env.action_space).n):
        raise ValueError(
            f"The model's vocabulary ({vocab}) does not match the env's action space "
            f"Discrete({cast(gym.spaces.Discrete, env.action_space).n})."
        )
    return lm


# -- agents written in this package ---------------------------------------------------------------


class BaseAgent:
    """Shared machinery of the zoo's own agents: env, seed, step counter, logger, save and load.

    Subclasses implement :meth:`_predict_batch` (or :meth:`predict` itself), and :meth:`learn`
    when they learn; they keep each constructor option in an attribute of the same name, so that
    :meth:`save` records them (:meth:`hyperparameters`), and keep any learned state in
    :meth:`_save_state` / :meth:`_load_state`.

    :param env: the env the agent acts (and learns) on.
    :param seed: seeds the agent's own random draws.
    :param verbose: 0 silent, 1 progress messages.
    """

    def __init__(self, env: gym.Env, seed: int | None = None, verbose: int = 0) -> None:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise TypeError(f"{type(self).__name__} needs a Discrete action space.")
        self.env = env
        self.seed = seed
        self.verbose = verbose
        self.num_timesteps = 0
        self.rng = np.random.default_rng(seed)
        self.logger: Logger | None = None

    @property
    def n_actions(self) -> int:
        """The size of the action space (the vocabulary)."""
        return int(cast(gym.spaces.Discrete, self.env.action_space).n)

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor options (JSON-serialisable), as :meth:`save` records them."""
        names = constructor_options(type(self), skip=("env", "verbose"))
        missing = [name for name in names if not hasattr(self, name)]
        if missing:
            raise AttributeError(
                f"{type(self).__name__} keeps no attribute {', '.join(missing)}: save() records "
                "each constructor option from the attribute of the same name."
            )
        return {name: getattr(self, name) for name in names}

    def get_env(self) -> gym.Env:
        """The env the agent acts on."""
        return self.env

    def set_logger(self, logger: Logger) -> None:
        """Log training metrics (TensorBoard, CSV) to an SB3 logger."""
        self.logger = logger

    def record(self, key: str, value: float) -> None:
        """Record a metric for the next :meth:`dump` (no-op without a logger)."""
        if self.logger is not None:
            self.logger.record(key, value)

    def dump(self) -> None:
        """Write the recorded metrics at the current step."""
        if self.logger is not None:
            self.logger.dump(self.num_timesteps)

    def learn(self, total_timesteps: int, callback: Callback | None = None) -> BaseAgent:
        """Nothing to learn: return at once (decoding baselines).

        :param total_timesteps: ignored.
        :param callback: called once.
        """
        call_callback(callback, {"self": self})
        return self

    def predict(
        self,
        observation: Mapping[str, Any],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Any, None]:
        """``(action, None)`` for an observation or a batch (subclasses implement
        :meth:`_predict_batch`).

        :param observation: one observation or a batch (a leading batch axis).
        :param state: unused (SB3's recurrent state).
        :param episode_start: unused.
        :param deterministic: passed to :meth:`_predict_batch` (agents may ignore it).
        :return: ``(token id, None)``, or ``(int64 array of ids, None)`` for a batch.
        """
        obs, single = batch_obs(observation)
        actions = np.asarray(self._predict_batch(obs, deterministic)).astype(np.int64)
        return (int(actions[0]) if single else actions), None

    def _predict_batch(self, obs: ObsDict, deterministic: bool) -> np.ndarray:
        """Hook: the actions ``(batch,)`` for a batch of observations ``(batch, L)``."""
        raise NotImplementedError

    # -- persistence ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the agent to the folder ``path``: ``agent.json`` plus the learned state.

        :param path: a folder (created).
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "hyperparameters": self.hyperparameters(),
            "num_timesteps": self.num_timesteps,
            "env_id": env_id_of(self.env),
        }
        self._save_state(folder)
        (folder / "agent.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    def load(self, path: str | Path) -> BaseAgent:
        """Load what :meth:`save` wrote into this agent (built with the same options) and return it.

        :param path: the folder.
        :raises FileNotFoundError: no ``agent.json`` there.
        :raises ValueError: it was written by another kind of agent.
        """
        folder = Path(path)
        meta_file = folder / "agent.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{folder} holds no saved agent (agent.json missing).")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        expected = f"{type(self).__module__}:{type(self).__qualname__}"
        if meta["class"] != expected:
            raise ValueError(f"{folder} holds a {meta['class']}, not a {expected}.")
        self.num_timesteps = int(meta["num_timesteps"])
        self._load_state(folder)
        return self

    def _save_state(self, folder: Path) -> None:
        """Hook: write learned state into ``folder``."""

    def _load_state(self, folder: Path) -> None:
        """Hook: read learned state from ``folder``."""


class LMAgent(BaseAgent):
    """Base of the agents whose policy is a causal LM acting one token per step.

    It owns the network (:class:`agents.networks.actor_critic.CausalLMActorCritic`), a per-env KV
    cache (:class:`agents.networks.actor_critic.RolloutKVCache`: a step computes only the new token)
    and a torch generator seeded from the agent's ``rng``, for sampling. Subclasses check their own
    options, then call :meth:`_init_lm`.

    :param env: the env.
    :param seed: seeds the agent's draws.
    :param verbose: 0 silent, 1 progress messages.
    """

    def _init_lm(
        self,
        model: str | PreTrainedModel,
        device: str,
        *,
        value_head: bool = False,
        seeded_init: bool = False,
    ) -> None:
        """Build the network, the KV cache and the sampling generator.

        :param model: causal LM name or folder (see :func:`model_for_env`) or a model.
        :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        :param value_head: build a value head on the trunk.
        :param seeded_init: build the network with torch's global RNG seeded from the agent's
            ``rng`` (one draw, before the generator's), leaving the global RNG as it was: a
            learner's value head is then a function of the seed.
        """
        import torch

        from agents.networks.actor_critic import CausalLMActorCritic, RolloutKVCache

        self.model = model if isinstance(model, str) else "<object>"
        self.device = device
        self._device = resolve_device(device)
        lm = load_lm_for_env(model, self.env)
        if seeded_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.rng.integers(2**31)))
                self.net = CausalLMActorCritic(lm, value_head=value_head).to(self._device)
        else:
            self.net = CausalLMActorCritic(lm, value_head=value_head).to(self._device)
        self.net.eval()  # dropout is off in the network; eval mode keeps rollouts and updates equal
        self.cache = RolloutKVCache()
        self._generator = torch.Generator(device=self._device)
        self._generator.manual_seed(int(self.rng.integers(2**62)))

    @property
    def lm(self) -> PreTrainedModel:
        """The causal LM."""
        return self.net.lm

    def _logits(self, observation: Mapping[str, Any]) -> torch.Tensor:
        """The next-token logits ``(batch, V)`` of one observation or a batch (no gradient, through
        the KV cache)."""
        import torch

        obs, _ = batch_obs(observation)
        ids = torch.as_tensor(obs["input_ids"], device=self._device).long()
        mask = torch.as_tensor(obs["attention_mask"], device=self._device).long()
        with torch.no_grad():
            logits, _ = self.net(ids, mask, cache=self.cache)
        return logits

    def _choose(self, scores: torch.Tensor, greedy: bool, *, log_probs: bool = False) -> np.ndarray:
        """Token ids ``(batch,)``: the argmax of ``scores``, or a draw with the seeded generator.

        :param scores: ``(batch, V)`` logits, or log-probabilities when ``log_probs``.
        :param greedy: take the argmax.
        :param log_probs: ``scores`` are log-probabilities (the draw uses their ``exp``, not a
            softmax).
        """
        import torch

        if greedy:
            actions = scores.argmax(1)
        else:
            probs = scores.exp() if log_probs else torch.softmax(scores, -1)
            actions = torch.multinomial(probs, 1, generator=self._generator).squeeze(1)
        return actions.cpu().numpy()


# -- stable-baselines3 ----------------------------------------------------------------------------


class _FunctionCallback:
    """Turns a function callback into an SB3 ``BaseCallback`` whose locals name the adapter."""

    def __new__(cls, fn: Callback, agent: SB3Agent) -> Any:
        from stable_baselines3.common.callbacks import BaseCallback

        class FunctionCallback(BaseCallback):
            def _on_step(self) -> bool:
                local = dict(self.locals)
                local["self"] = agent
                local["model"] = self.model
                return fn(local, self.globals) is not False

        return FunctionCallback()


class SB3Agent:
    """Adapter giving any stable-baselines3 model the zoo's protocol.

    ``learn`` continues the step count across calls (SB3's ``reset_num_timesteps=False``), so that
    ``learn(n)`` always means *n more steps* and a resumed run continues its TensorBoard curves.

    :param model: an SB3 (or sb3-contrib) model.
    :param learn_kwargs: extra keyword arguments of every ``model.learn`` call (``log_interval``,
        ``use_masking``, a fixed SB3 callback under ``"callback"``).
    """

    def __init__(self, model: BaseAlgorithm, learn_kwargs: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.learn_kwargs = dict(learn_kwargs or {})
        self._logger: Logger | None = None  # set by set_logger, kept across load

    @property
    def num_timesteps(self) -> int:
        """Env steps learned so far."""
        return int(self.model.num_timesteps)

    @property
    def policy(self) -> Any:
        """The SB3 policy."""
        return self.model.policy

    def get_env(self) -> Any:
        """The model's (vectorised) env."""
        return self.model.get_env()

    def set_logger(self, logger: Logger) -> None:
        """Use an SB3 logger (TensorBoard, CSV) for the model's training metrics."""
        self._logger = logger
        self.model.set_logger(logger)

    def learn(self, total_timesteps: int, callback: Any = None) -> SB3Agent:
        """Train for ``total_timesteps`` more steps.

        :param total_timesteps: env steps (over all envs of the vec env).
        :param callback: a function callback ``f(locals_, globals_)`` (its ``locals_["self"]`` is
            this adapter), an SB3 ``BaseCallback`` or a list of them.
        """
        from stable_baselines3.common.callbacks import BaseCallback, CallbackList

        callbacks = []
        fixed = self.learn_kwargs.get("callback")
        for cb in (fixed, callback):
            if cb is None:
                continue
            if isinstance(cb, list):
                callbacks.extend(cb)
            elif isinstance(cb, BaseCallback):
                callbacks.append(cb)
            else:
                callbacks.append(_FunctionCallback(cb, self))
        kwargs = {k: v for k, v in self.learn_kwargs.items() if k != "callback"}
        self.model.learn(
            int(total_timesteps),
            callback=CallbackList(callbacks) if callbacks else None,
            reset_num_timesteps=False,
            **kwargs,
        )
        return self

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Any, Any]:
        """SB3's ``model.predict``."""
        return self.model.predict(
            observation, state=state, episode_start=episode_start, deterministic=deterministic
        )

    def action_log_probs(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """Log-probabilities of every action, ``(batch, n_actions)``, under the stochastic policy.

        Policies without a distribution (DQN) give the one-hot of their greedy action.

        :param observations: a batch ``{"input_ids": (B, L), "attention_mask": (B, L)}``.
        """
        import torch

        policy = self.model.policy
        obs, _ = batch_obs(observations)
        n = int(cast(gym.spaces.Discrete, self.model.action_space).n)
        if hasattr(policy, "get_distribution"):
            obs_t, _ = policy.obs_to_tensor(obs)
            with torch.no_grad():
                # SB3 types the policy as a BasePolicy: torch types its other attributes as
                # Tensor | Module
                dist = policy.get_distribution(obs_t)  # type: ignore[operator]
                logits = dist.distribution.logits
            return torch.log_softmax(logits.float(), -1).cpu().numpy()
        actions, _ = self.model.predict(obs, deterministic=True)
        out = np.full((len(actions), n), -np.inf, dtype=np.float32)
        out[np.arange(len(actions)), np.asarray(actions).reshape(-1)] = 0.0
        return out

    def save(self, path: str | Path) -> None:
        """``model.save(path)`` (SB3 writes ``path`` + ``.zip``)."""
        self.model.save(str(path))

    def load(self, path: str | Path, env: Any = None) -> SB3Agent:
        """Replace the model by the one saved at ``path`` (same algorithm class) and return self.

        :param path: what :meth:`save` wrote.
        :param env: a vec env to continue on; anything else keeps the current model's vec env
            (with the wrappers its factory added).
        """
        from stable_baselines3.common.vec_env import VecEnv

        logger = self._logger
        # keep the vec env the factory built (Monitor, KL wrapper) unless a vec env is given
        env = env if isinstance(env, VecEnv) else self.model.get_env()
        self.model = type(self.model).load(str(path), env=env, device=self.model.device)
        if logger is not None:
            self.model.set_logger(logger)
        return self
