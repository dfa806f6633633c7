"""Hyperparameters per agent and env id, RL Zoo style, and the run configuration of ``lm-gym train``.

``agents/configs/<agent>.yaml`` holds a ``default`` section and one section per env id; the env's
section overrides the default::

    # agents/configs/ppo.yaml
    default:
      n_timesteps: 8192
      model: gpt2
      learning_rate: auto
    LMCountUp-v0:
      n_timesteps: 4096
      n_steps: 256

Keys are the agent factory's options (``lm-gym agents NAME`` lists them with their defaults; see
:mod:`agents.common.options`), plus the run keys of :data:`RUN_KEYS` (``n_timesteps``,
``env_kwargs``, ``eval_episodes``, ``checkpoint_freq``). A file sets only what differs from the
agent's defaults: the defaults are declared once, in the agent's signature.
A run's configuration (:class:`RunConfig`) merges, in order: the agent's file, a user ``--config``
file, and command-line overrides. It is written into the run folder as ``config.yaml``; passing that
file back with ``--config`` reproduces the run.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.registry import agent_spec

#: The folder of the built-in hyperparameter files.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: Keys of a config that describe the run rather than the agent.
RUN_KEYS = ("n_timesteps", "env_kwargs", "eval_episodes", "checkpoint_freq", "seed")

#: Defaults of the run keys.
RUN_DEFAULTS: dict[str, Any] = {
    "n_timesteps": 2048,
    "env_kwargs": {},
    "eval_episodes": 20,
    "checkpoint_freq": 0,
    "seed": 0,
}


class ConfigError(ValueError):
    """A configuration file or key that cannot be used."""


class _YAMLLoader(yaml.SafeLoader):
    """YAML's safe loader that also reads ``1e-5`` as a float (YAML 1.1 wants ``1.0e-5``)."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`_YAMLLoader`."""
    return yaml.load(text, Loader=_YAMLLoader)  # a SafeLoader subclass


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping, not {type(data).__name__}.")
    return data


def agent_config_file(agent: str) -> Path:
    """The built-in hyperparameter file of an agent (it may not exist for plug-ins)."""
    return CONFIG_DIR / f"{agent}.yaml"


def load_hyperparams(agent: str, env_id: str, model: str | None = None) -> dict[str, Any]:
    """The built-in hyperparameters of ``agent`` on ``env_id`` with ``model``.

    Sections are applied in this order, later ones winning: ``default``, the env id's section,
    then, when ``model`` is given and the file has a ``models:`` mapping with an entry for it, that
    model's ``default`` and env-id sections (a recipe tuned for one pretrained model; a folder made
    by :func:`agents.algorithms.supervised.warm_start` uses the recipe of the model it was
    fine-tuned from)::

        default: {n_steps: 256}
        LMText-v0: {kl_coef: 0.05}
        models:
          smollm2-135m:
            default: {learning_rate: 1.0e-5}
            LMText-v0: {kl_target: 2.0}

    :param agent: an agent name.
    :param env_id: an env id.
    :param model: the model name the agent will use (``None``: no model section).
    :return: a new dict (empty when the agent has no file).
    :raises ConfigError: a ``models`` entry that is not a mapping.
    """
    path = agent_config_file(agent)
    if not path.exists():
        return {}
    data = _read_yaml(path)
    out: dict[str, Any] = {}
    merge_options(out, copy.deepcopy(data.get("default") or {}))
    merge_options(out, copy.deepcopy(data.get(env_id) or {}))
    models = data.get("models") or {}
    if model is not None and model not in models:
        from agents.algorithms.supervised import base_model_name

        model = base_model_name(model)
    if model is not None and model in models:
        section = models[model]
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: models.{model} must be a mapping of sections.")
        merge_options(out, copy.deepcopy(section.get("default") or {}))
        merge_options(out, copy.deepcopy(section.get(env_id) or {}))
    return out


def merge_options(out: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Put a later layer of options over ``out``, in place: its values win, except ``env_kwargs``,
    which merge key by key (``--env-set prompt_template=chat`` keeps a recipe's
    ``max_new_tokens``)."""
    env_kwargs = layer.get("env_kwargs")
    previous = out.get("env_kwargs")
    out.update(layer)
    if isinstance(env_kwargs, Mapping) and isinstance(previous, Mapping):
        out["env_kwargs"] = {**previous, **env_kwargs}


@dataclass
class RunConfig:
    """Everything that defines a training run; ``config.yaml`` of a run folder.

    :param env_id: the env id.
    :param agent: the agent name.
    :param seed: the seed of the agent and the env.
    :param n_timesteps: env steps to train for.
    :param hyperparams: keyword arguments of the agent factory.
    :param env_kwargs: keyword arguments of ``gymnasium.make``.
    :param eval_episodes: episodes of ``lm-gym eval`` (and the benchmark).
    :param checkpoint_freq: env steps between checkpoints (0: only the final model).
    :param lm_gym_version: the version that wrote the config.
    """

    env_id: str
    agent: str
    seed: int = 0
    n_timesteps: int = 2048
    hyperparams: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_episodes: int = 20
    checkpoint_freq: int = 0
    lm_gym_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML-serialisable)."""
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML."""
        Path(path).write_text(
            "# lm-gym run configuration: `lm-gym train --config THIS_FILE --out DIR` reproduces it\n"
            + yaml.safe_dump(self.to_dict(), sort_keys=False),
            encoding="utf-8",
        )

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a config written by :meth:`save`."""
        data = _read_yaml(path)
        if not is_run_config(data):
            raise ConfigError(f"{path} is not a run configuration (no 'env_id' and 'agent').")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{path}: unknown run configuration key(s) {sorted(unknown)}.")
        return cls(**data)


def unknown_env_message(env_id: str) -> str:
    """A clear message for an env id that is not registered, with the closest lm-gym ids."""
    import difflib

    import lm_gym

    ids = [e.id for e in lm_gym.list_envs()]
    close = difflib.get_close_matches(env_id, ids, n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown env id {env_id!r}.{hint} lm-gym ids: {', '.join(ids)} (see `lm-gym envs`)."


def is_run_config(data: Mapping[str, Any]) -> bool:
    """Whether a mapping is a whole run configuration (as written by ``lm-gym train``)."""
    return "env_id" in data and "agent" in data


def _split_run_keys(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    run = {k: v for k, v in values.items() if k in RUN_KEYS}
    agent = {k: v for k, v in values.items() if k not in RUN_KEYS}
    return run, agent


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["learning_rate=1e-4", "policy_kwargs={value_hidden: 64}"]`` to a dict (values in YAML).

    :param items: ``key=value`` strings.
    :raises ConfigError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override {item!r} must look like key=value.")
        try:
            value = _load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"Override {item!r}: value is not valid YAML: {exc}") from exc
        out[key.strip()] = value
    return out


def resolve_run_config(
    env_id: str | None,
    agent: str | None,
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int | None = None,
    n_timesteps: int | None = None,
    model: str | None = None,
) -> RunConfig:
    """Merge the built-in hyperparameters, a config file and overrides into a checked run config.

    The config file may be a run's ``config.yaml`` (which then also gives the env id and agent when
    they are not passed), an RL Zoo style file (``default`` and env-id sections), or a flat mapping
    of options.

    :param env_id: the env id (may come from a run config file).
    :param agent: the agent name (may come from a run config file).
    :param config_file: a YAML file.
    :param overrides: options over everything else (``--set``).
    :param seed: the seed (over everything else).
    :param n_timesteps: the training budget (over everything else).
    :param model: the agent's ``model`` option (over everything else).
    :return: the run config.
    :raises ConfigError: no env id or agent, or an unreadable file.
    :raises agents.registry.UnknownAgentError: unknown agent.
    :raises agents.registry.UnknownOptionError: an option the agent does not take.
    """
    file_data: dict[str, Any] = _read_yaml(config_file) if config_file else {}
    base_run: dict[str, Any] = {}
    if file_data and is_run_config(file_data):
        env_id = env_id or file_data["env_id"]
        agent = agent or file_data["agent"]
        if env_id != file_data["env_id"] or agent != file_data["agent"]:
            raise ConfigError(
                f"{config_file} is the run config of {file_data['agent']} on "
                f"{file_data['env_id']}, not of {agent} on {env_id}."
            )
        file_values = dict(file_data.get("hyperparams") or {})
        for key in RUN_KEYS:
            if key in file_data:
                base_run[key] = file_data[key]
        use_builtin = False
    else:
        if env_id is not None and any(k in file_data for k in ("default", env_id)):
            file_values = dict(file_data.get("default") or {})
            file_values.update(file_data.get(env_id) or {})
        else:
            file_values = file_data
        use_builtin = True
    if env_id is None or agent is None:
        raise ConfigError("Give the env id and --agent (or a run's config.yaml with --config).")
    import gymnasium as gym

    import lm_gym  # noqa: F401  (registers the ids)

    if env_id not in gym.registry:
        raise ConfigError(unknown_env_message(env_id))
    spec = agent_spec(agent)
    merged: dict[str, Any] = {}
    if use_builtin:
        # the model decides the per-model recipe section: --model, else --set, else the file
        chosen = model
        for source in (overrides or {}, file_values):
            if chosen is None and isinstance(source.get("model"), str):
                chosen = source["model"]
        merged.update(load_hyperparams(agent, env_id, chosen))
    for layer in (base_run, file_values, overrides or {}):
        merge_options(merged, layer)
    if model is not None:
        merged["model"] = model
    run_values, agent_values = _split_run_keys(merged)
    spec.check_kwargs(agent_values)
    run = {**RUN_DEFAULTS, **run_values}
    if seed is not None:
        run["seed"] = seed
    if n_timesteps is not None:
        run["n_timesteps"] = n_timesteps
    from lm_gym import __version__
    from lm_gym.envs import env_kwargs_for_model

    # the env's tokenizer follows the model (SmolLM2's 49152 tokens, not GPT-2's 50257)
    env_kwargs = env_kwargs_for_model(env_id, agent_values.get("model"), run["env_kwargs"])

    return RunConfig(
        env_id=env_id,
        agent=agent,
        seed=int(run["seed"]),
        n_timesteps=int(run["n_timesteps"]),
        hyperparams=agent_values,
        env_kwargs=env_kwargs,
        eval_episodes=int(run["eval_episodes"]),
        checkpoint_freq=int(run["checkpoint_freq"]),
        lm_gym_version=__version__,
    )
