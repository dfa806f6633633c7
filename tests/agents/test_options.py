"""Each agent option declared once (agents.common.options): the factories, the option check, the
listing and the YAML configs all read the one declaration."""

from __future__ import annotations

import inspect
import json

import pytest

from agents.cli import main
from agents.common.config import CONFIG_DIR, RUN_KEYS, _read_yaml
from agents.common.options import (
    ClassFactory,
    OptionFactory,
    constructor_options,
    forwarded_parameters,
    param_docs,
)
from agents.registry import agent_spec, list_agents, make_agent


class _Base:
    """A base.

    :param alpha: the base's alpha,
        over two lines.
    :param int beta: typed field.
    """

    def __init__(self, env: object, alpha: int = 1, beta: int = 2, **kwargs: object) -> None:
        self.env, self.alpha, self.beta = env, alpha, beta


class _Child(_Base):
    """A child.

    :param alpha: the child's alpha.
    :param gamma: the child's own.
    """

    def __init__(self, env: object, gamma: float = 0.5, **kwargs: object) -> None:
        super().__init__(env, **kwargs)  # type: ignore[arg-type]
        self.gamma = gamma


def test_param_docs_join_lines_and_let_the_subclass_win() -> None:
    docs = param_docs(_Child)
    assert docs == {
        "alpha": "the child's alpha.",
        "gamma": "the child's own.",
        "beta": "typed field.",
    }
    assert param_docs(_Base)["alpha"] == "the base's alpha, over two lines."


def test_forwarded_parameters_follow_kwargs_up_the_bases() -> None:
    assert list(forwarded_parameters(_Child, skip=("env",))) == ["gamma", "alpha", "beta"]
    assert constructor_options(_Child, skip=("env",)) == ("gamma",)
    from agents.zoo import algo_parameters

    grpo = algo_parameters("grpo")  # GroupRelativePPO -> EpisodePPO -> SB3's PPO
    assert {"group_size", "episode_minibatches", "n_steps", "clip_range"} <= set(grpo)
    assert grpo["n_steps"].default == 2048  # SB3's own default, not restated anywhere here
    assert not {"policy", "env", "advantage"} & set(grpo)  # set by the factory


def test_class_factory_reads_the_constructor() -> None:
    factory = ClassFactory(
        f"{__name__}._Child", "A child.", defaults={"gamma": 0.25}, hidden=("beta",)
    )
    sig = inspect.signature(factory)
    assert list(sig.parameters) == ["env", "gamma", "alpha"]  # and what it forwards to _Base
    assert sig.parameters["gamma"].default == 0.25
    assert factory.option_docs() == {"gamma": "the child's own.", "alpha": "the child's alpha."}
    agent = factory("env", alpha=3)
    assert (agent.env, agent.gamma, agent.alpha, agent.beta) == ("env", 0.25, 3, 2)
    with pytest.raises(TypeError):
        factory("env", gamma_=1.0)
    # the factory class itself keeps an ordinary signature (the lazy one is per instance)
    assert "summary" in inspect.signature(OptionFactory).parameters


ZOO = [name for name in list_agents() if agent_spec(name).source in ("zoo", "plugin:lm-gym")]


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_option_has_a_default_and_a_doc(name: str) -> None:
    spec = agent_spec(name)
    options = spec.describe_options()
    assert options is not None, "a zoo factory declares its options"
    assert [o.name for o in options] == list(spec.parameters() or {})
    assert sorted(o.name for o in options) == spec.option_names()
    undocumented = [o.name for o in options if not o.doc.strip()]
    assert not undocumented, f"{name}: options without a :param doc: {undocumented}"
    assert not [o.name for o in options if o.required], "every option has a default"


def test_the_zoo_widens_and_fixes_class_options() -> None:
    greedy = agent_spec("greedy").parameters() or {}
    assert "greedy" not in greedy and "temperature" not in greedy  # fixed / hidden
    assert {"model", "device", "warm_start", "seed"} <= set(greedy)
    sample = agent_spec("sample").parameters() or {}
    assert sample["top_k"].default == 50  # the zoo's default over the class's 0
    assert sample["warm_start"].default is None
    assert (agent_spec("supervised").parameters() or {})["learning_rate"].default == "auto"
    assert "warm_start" not in (agent_spec("supervised").parameters() or {})
    tabular = agent_spec("tabular-q").parameters() or {}
    assert tabular["actions"].default == "auto" and tabular["max_actions"].default == 32
    ppo = agent_spec("ppo").parameters() or {}
    assert ppo["learning_rate"].default == "auto"  # the zoo's, over SB3's 3e-4
    nlpo = agent_spec("nlpo").parameters() or {}
    assert nlpo["nlpo_top_p"].default == 0.9 and nlpo["mask_update_every"].default == 4


def test_saved_hyperparameters_are_the_constructor_options() -> None:
    import gymnasium as gym

    import lm_gym  # noqa: F401

    env = gym.make("LMToy-v0")
    tabular = make_agent("tabular-reinforce", env, seed=3)
    assert set(tabular.hyperparameters()) == {  # type: ignore[attr-defined]
        "learning_rate",
        "gamma",
        "baseline",
        "baseline_learning_rate",
        "actions",
        "seed",
    }
    greedy = make_agent("random", env, seed=3)
    assert greedy.hyperparameters() == {"seed": 3}  # type: ignore[attr-defined]


def _inherited(section: str, key: str, data: dict, declared: dict) -> object:
    default = data.get("default") or {}
    if section != "default" and key in default:
        return default[key]
    return declared.get(key, inspect.Parameter.empty)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_configs_set_only_options_and_restate_no_default(path) -> None:
    """A config file is the record of what a recipe changes: every key is an option (the models'
    recipes too) and none repeats the value it would get anyway (its one declaration)."""
    spec = agent_spec(path.stem)
    params = spec.parameters() or {}
    declared = {k: p.default for k, p in params.items()}
    allowed = set(params) | set(RUN_KEYS)
    data = _read_yaml(path)
    sections = {k: v for k, v in data.items() if k != "models"}
    for model, recipe in (data.get("models") or {}).items():
        sections.update({f"models.{model}.{k}": v for k, v in recipe.items()})
    for section, values in sections.items():
        unknown = set(values or {}) - allowed
        assert not unknown, f"{path.name} [{section}]: not options of {path.stem}: {unknown}"
        if section.startswith("models."):
            continue  # a model's recipe is applied over an env's section: it may restore one
        for key, value in (values or {}).items():
            inherited = _inherited(section, key, data, declared)
            same = inherited == value and type(inherited) is type(value)
            assert not same, f"{path.name} [{section}] {key}: {value!r} is its default already"


def test_cli_lists_an_agents_options(capsys) -> None:
    assert main(["agents", "ppo"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ppo: ")
    rows = {line.split()[0]: line for line in out.splitlines()[3:] if line and line[0] != " "}
    assert "'auto'" in rows["learning_rate"] and "2048" in rows["n_steps"]
    assert "episode" in rows["episode_minibatches"]  # EpisodePPO's own doc
    assert main(["agents", "tabular-q", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    options = {o["name"]: o for o in data["options"]}
    assert options["max_actions"]["default"] == 32 and options["max_actions"]["doc"]
    assert main(["agents", "nope"]) == 2
    assert "Unknown agent 'nope'" in capsys.readouterr().err


def test_an_option_without_its_attribute_is_named_at_save(tmp_path) -> None:
    import gymnasium as gym

    import lm_gym  # noqa: F401
    from agents.decoding import RandomAgent

    class Forgetful(RandomAgent):
        def __init__(self, env: gym.Env, width: int = 3, seed: int | None = None) -> None:
            super().__init__(env, seed=seed)

    agent = Forgetful(gym.make("LMToy-v0"))
    with pytest.raises(AttributeError, match="no attribute width"):
        agent.save(tmp_path / "agent")
