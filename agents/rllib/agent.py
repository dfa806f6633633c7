"""``rllib-ppo``: the zoo's agent protocol over :func:`agents.rllib.train_rllib`.

Each ``learn`` call trains on Ray (a local loopback cluster, or ``address=``) and resumes from the
agent's run folder, so ``learn(n)`` means *n more env steps*, as for the SB3 agents; ``predict``,
``action_log_probs``, ``save`` and ``load`` run in this process without Ray, on the trained
network (:func:`agents.rllib.load_policy`).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import inspect
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.common.base import batch_obs, call_callback, env_id_of, model_for_env
from agents.common.options import OptionFactory, keyword_parameters, param_docs
from agents.networks.actor_critic import CausalLMActorCritic, RolloutKVCache
from agents.rllib.checkpoint import load_policy
from agents.rllib.options import PPOOptions

__all__ = ["RLlibPPOAgent", "RLlibPPOFactory", "make_rllib_ppo"]

_RUN_FILES = ("config.json", "progress.csv", "metrics.json")


class RLlibPPOAgent:
    """PPO on Ray RLlib with the GPT-2 actor-critic, behind the zoo's protocol.

    :param env: an lm-gym env made with ``gymnasium.make`` (its id and keyword arguments are sent
        to the env runners, which make their own envs).
    :param model: causal LM name or folder (``"gpt2"`` offline: the built-in tiny GPT-2).
    :param learning_rate: Adam's rate, or ``"auto"`` (1e-3 for a random-init built-in model,
        1e-5 for a pretrained one).
    :param num_env_runners: env runners.
    :param num_learners: learners (2 or more: DDP).
    :param address: Ray cluster address (``None``: a local loopback cluster per ``learn`` call).
    :param out_dir: the run folder (default: a new temporary folder).
    :param seed: seed of the run.
    :param verbose: 0 silent, 1 one line per PPO iteration.
    :param options: further :class:`agents.rllib.PPOOptions` fields.
    :raises ValueError: the env was not made from a registered id.
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        model: str = "gpt2",
        learning_rate: float | str = "auto",
        num_env_runners: int = 2,
        num_learners: int = 0,
        address: str | None = None,
        out_dir: str | Path | None = None,
        seed: int | None = None,
        verbose: int = 0,
        **options: Any,
    ) -> None:
        from agents.zoo import auto_learning_rate

        env_id = env_id_of(env)
        if env_id is None:
            raise ValueError("rllib-ppo needs an env made from a registered id (gymnasium.make).")
        self.env = env
        self.env_id = env_id
        spec_kwargs = dict(getattr(env.spec, "kwargs", {}) or {})
        spec_kwargs.pop("render_mode", None)
        self.model = model_for_env(model, env)
        self.options: dict[str, Any] = {
            "env_kwargs": {**spec_kwargs, **dict(options.pop("env_kwargs", None) or {})},
            "learning_rate": auto_learning_rate(learning_rate, self.model),
            "eval_episodes": 0,
            **options,
        }
        self.num_env_runners = num_env_runners
        self.num_learners = num_learners
        self.address = address
        self.seed = 0 if seed is None else int(seed)
        self.verbose = verbose
        self.run_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="rllib-ppo-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.num_timesteps = 0
        self._net: CausalLMActorCritic | None = None
        self._cache = RolloutKVCache()
        self._generator = torch.Generator().manual_seed(self.seed)

    @property
    def net(self) -> CausalLMActorCritic:
        """The policy network: the trained one after ``learn``/``load``, else the untrained LM."""
        if self._net is None:
            self._net = CausalLMActorCritic(self.model).eval()
        return self._net

    def learn(self, total_timesteps: int, callback: Any = None) -> RLlibPPOAgent:
        """Train for ``total_timesteps`` more env steps (resuming from the run folder).

        :param total_timesteps: env steps to add.
        :param callback: ``callback(locals_, globals_)`` after each PPO iteration (``locals_`` has
            ``self`` and ``row``, the ``progress.csv`` row); ``False`` stops.
        """
        try:
            from agents.rllib.train import train_rllib
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.partition(".")[0] != "ray":
                raise
            raise ModuleNotFoundError(
                "rllib-ppo trains on Ray RLlib, which is not installed here: "
                "pip install 'lm-gym[ray]' (predict, save, load and evaluation work without it).",
                name=exc.name,
            ) from exc

        def on_iteration(row: dict[str, float]) -> bool:
            self.num_timesteps = int(row["time/total_timesteps"])
            if self.verbose:
                print(
                    f"rllib-ppo {self.env_id}: {self.num_timesteps} steps, "
                    f"ep_rew_mean {row['rollout/ep_rew_mean']:.3f}"
                )
            return call_callback(callback, {"self": self, "row": row})

        result = train_rllib(
            self.env_id,
            num_env_runners=self.num_env_runners,
            num_learners=self.num_learners,
            address=self.address,
            steps=self.num_timesteps + int(total_timesteps),
            seed=self.seed,
            out_dir=self.run_dir,
            model=self.model,
            callback=on_iteration,
            **self.options,
        )
        self.num_timesteps = result.timesteps
        self._net = load_policy(self.run_dir)
        self._cache = RolloutKVCache()
        return self

    def action_log_probs(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """Log-probabilities of every action, ``(batch, vocab)``.

        :param observations: a batch ``{"input_ids": (B, L), "attention_mask": (B, L)}``.
        """
        obs, _ = batch_obs(observations)
        with torch.no_grad():
            logits, _ = self.net(
                torch.as_tensor(obs["input_ids"]), torch.as_tensor(obs["attention_mask"])
            )
        return torch.log_softmax(logits, -1).numpy()

    def predict(
        self,
        observation: Mapping[str, Any],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Any, None]:
        """``(action, None)`` for one observation or a batch: a sample of the policy, or its argmax.

        :param observation: ``{"input_ids", "attention_mask"}``, single or batched.
        :param state: unused (SB3 signature).
        :param episode_start: unused.
        :param deterministic: the most likely token instead of a sample.
        """
        obs, single = batch_obs(observation)
        ids = torch.as_tensor(obs["input_ids"]).long()
        mask = torch.as_tensor(obs["attention_mask"]).long()
        with torch.no_grad():
            logits, _ = self.net(ids, mask, self._cache)
        if deterministic:
            actions = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.double(), -1)
            actions = torch.multinomial(probs, 1, generator=self._generator).squeeze(-1)
        out = actions.numpy()
        return (out[0] if single else out), None

    def save(self, path: str | Path) -> None:
        """Copy the run (config, progress, metrics, checkpoint) to the folder ``path``.

        :param path: a folder (created; a previous checkpoint there is replaced).
        :raises FileNotFoundError: nothing learned yet (no checkpoint).
        """
        folder = Path(path)
        checkpoint = self.run_dir / "checkpoint"
        if not checkpoint.is_dir():
            raise FileNotFoundError("rllib-ppo has no checkpoint to save: call learn() first.")
        folder.mkdir(parents=True, exist_ok=True)
        if folder.resolve() != self.run_dir.resolve():
            for name in _RUN_FILES:
                if (self.run_dir / name).exists():
                    shutil.copy2(self.run_dir / name, folder / name)
            shutil.rmtree(folder / "checkpoint", ignore_errors=True)
            shutil.copytree(checkpoint, folder / "checkpoint")
        meta = {
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "env_id": self.env_id,
            "model": self.model,
            "num_timesteps": self.num_timesteps,
        }
        (folder / "agent.json").write_text(json.dumps(meta, indent=2) + "\n")

    def load(self, path: str | Path) -> RLlibPPOAgent:
        """Load a run saved by :meth:`save` (or any :func:`~agents.rllib.train_rllib` folder) into
        this agent, which then continues that run in its own run folder; returns the agent.

        :param path: the folder.
        :raises FileNotFoundError: no checkpoint there.
        """
        folder = Path(path)
        if not (folder / "checkpoint").is_dir():
            raise FileNotFoundError(f"{folder} holds no rllib-ppo run (checkpoint/ missing).")
        if folder.resolve() != self.run_dir.resolve():
            for name in _RUN_FILES:
                if (folder / name).exists():
                    shutil.copy2(folder / name, self.run_dir / name)
            shutil.rmtree(self.run_dir / "checkpoint", ignore_errors=True)
            shutil.copytree(folder / "checkpoint", self.run_dir / "checkpoint")
        config = json.loads((self.run_dir / "config.json").read_text())
        self.model = config["model"]
        self.num_timesteps = int(_saved_timesteps(folder, self.run_dir))
        self._net = load_policy(self.run_dir)
        self._cache = RolloutKVCache()
        return self


def _saved_timesteps(saved: Path, run_dir: Path) -> int:
    """Env steps of a saved run: ``agent.json`` (:meth:`RLlibPPOAgent.save`), else the run's
    ``metrics.json``, else the last ``progress.csv`` row."""
    agent_file, metrics_file = saved / "agent.json", run_dir / "metrics.json"
    if agent_file.exists():
        return int(json.loads(agent_file.read_text())["num_timesteps"])
    if metrics_file.exists():
        return int(json.loads(metrics_file.read_text()).get("n_timesteps") or 0)
    progress = run_dir / "progress.csv"
    if progress.exists():
        with progress.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            return int(float(rows[-1]["time/total_timesteps"]))
    return 0


class RLlibPPOFactory(OptionFactory):
    """The factory of ``rllib-ppo``: its options are :class:`RLlibPPOAgent`'s keywords and the
    fields of :class:`agents.rllib.PPOOptions` (the agent's win where both have one, e.g. the
    ``"auto"`` learning rate), each with its doc from there.
    """

    def own_parameters(self) -> tuple[dict[str, inspect.Parameter], dict[str, str]]:
        """The agent's keywords, then the fields of :class:`PPOOptions`."""
        params = keyword_parameters(RLlibPPOAgent, skip=("env",))
        for f in dataclasses.fields(PPOOptions):
            if f.name not in params:
                default: Any = f.default
                if f.default_factory is not dataclasses.MISSING:
                    default = f.default_factory()
                params[f.name] = inspect.Parameter(
                    f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=f.type
                )
        docs = {**param_docs(PPOOptions), **param_docs(RLlibPPOAgent)}
        return params, {name: docs.get(name, "") for name in params}

    def build(self, env: gym.Env, options: dict[str, Any], given: set[str]) -> RLlibPPOAgent:
        """The agent with the options the caller gave (the others keep their defaults)."""
        return RLlibPPOAgent(env, **{k: v for k, v in options.items() if k in given})


_SUMMARY = "PPO on Ray RLlib (distributed env runners, DDP learners), causal-LM actor-critic"
#: ``make_rllib_ppo(env, **options)``: the agent (see :class:`RLlibPPOAgent`); the object of the
#: entry point ``rllib-ppo``.
make_rllib_ppo = RLlibPPOFactory(_SUMMARY)


def _summary() -> str:
    summary = _SUMMARY
    if importlib.util.find_spec("ray") is None:
        summary += " [ray not installed: learn() needs pip install 'lm-gym[ray]']"
    return summary


#: What the registry records when it discovers the ``lm_gym.agents`` entry point ``rllib-ppo``
#: (:data:`agents.registry.PLUGIN_INFO`): the agent's one registration.
lm_gym_agents: dict[str, dict[str, Any]] = {
    "rllib-ppo": {
        "summary": _summary(),
        "tags": ("lm", "rl", "ray"),
    }
}
