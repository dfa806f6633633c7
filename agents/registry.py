"""The agent registry: names to factories, and third-party agents discovered through entry points.

Every agent of the zoo (see :mod:`agents.zoo`) and every plug-in is a *factory*: a callable
``factory(env, **kwargs)`` that returns an object meeting the :class:`agents.common.base.Agent`
protocol (``learn``, ``predict``, ``save``, ``load``)::

    from agents.registry import list_agents, make_agent, register_agent

    list_agents()                      # ['a2c', 'beam', 'dqn', 'greedy', ...]
    agent = make_agent("ppo", "LMCountUp-v0", model="tiny-gpt2", learning_rate=1e-4)
    agent.learn(2048)

Third-party packages join without any import on the user's side: declare an entry point in the
group ``lm_gym.agents`` whose name is the agent name and whose object is the factory::

    # setup.cfg of the plug-in
    [options.entry_points]
    lm_gym.agents =
        my-agent = my_package.agent:make_my_agent

Discovery runs once, the first time the registry is listed or asked for a name it does not know
(:func:`discover_agents` re-runs it). A plug-in that fails to load is reported with a warning and
skipped; it never breaks the zoo. A plug-in whose module imports but needs an optional dependency
that is not installed (its import raises ``ModuleNotFoundError`` for a module other than its own)
is not an error: it is skipped quietly and listed by :func:`unavailable_agents` with what it needs
(``lm-gym agents`` shows it as unavailable). A plug-in may declare its registration options in the
module attribute ``lm_gym_agents`` (:data:`PLUGIN_INFO`), e.g. ``lm_gym_agents = {"my-agent":
{"tags": ("rl",), "summary": "..."}}`` beside the factory. lm-gym declares its own optional agent
``rllib-ppo`` through this group too, its only registration: its module imports without Ray (it
loads and runs trained networks), and only its ``learn`` needs the ``ray`` extra.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents.common.errors import UnknownAgentError, UnknownOptionError
from agents.common.options import AgentOption, describe, keyword_parameters, param_docs

if TYPE_CHECKING:
    import gymnasium as gym

    from agents.common.base import Agent

#: The entry point group that third-party agents use.
ENTRY_POINT_GROUP = "lm_gym.agents"

AgentFactory = Callable[..., "Agent"]


@dataclass
class AgentSpec:
    """One registered agent.

    :param name: the registry name (``"ppo"``).
    :param factory: ``factory(env, **kwargs) -> Agent``.
    :param summary: one line for tables (default: the first line of the factory's docstring).
    :param source: ``"zoo"``, ``"user"`` or the distribution that declared the entry point.
    :param defaults: keyword arguments applied before the caller's (tested defaults).
    :param tags: free-form labels (``"baseline"``, ``"sb3"``, ``"tabular"``, ...).
    :param options: for a factory taking ``**kwargs``: a callable listing the option names it
        accepts (so that unknown options are still caught early); ``None``: read the signature.
    """

    name: str
    factory: AgentFactory
    summary: str = ""
    source: str = "user"
    defaults: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    options: Callable[[], Iterable[str]] | None = None

    def option_names(self) -> list[str] | None:
        """The options the factory accepts, sorted; ``None`` when any keyword is accepted."""
        if self.options is not None:
            return sorted(set(self.options()))
        params = self.parameters()
        return None if params is None else sorted(params)

    def parameters(self) -> dict[str, inspect.Parameter] | None:
        """The keyword parameters of the factory's signature, or ``None`` when it takes
        ``**kwargs``. The first positional parameter (the env) is left out.
        """
        try:
            sig = inspect.signature(self.factory)
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
            return None
        params = keyword_parameters(self.factory)
        return dict(list(params.items())[1:])

    def describe_options(self) -> list[AgentOption] | None:
        """Each option with its default and doc, in the factory's order (``lm-gym agents NAME``):
        the factory's ``option_docs()`` when it has one (the zoo's), else the ``:param`` lines of
        its docstring; ``None`` when any keyword is accepted and no option list is declared."""
        params = self.parameters()
        docs_of = getattr(self.factory, "option_docs", None)
        docs = docs_of() if callable(docs_of) else param_docs(self.factory)
        if params is not None:
            return describe(params, docs)
        if self.options is not None:
            return [
                AgentOption(name, doc=docs.get(name, "")) for name in sorted(set(self.options()))
            ]
        return None

    def check_kwargs(self, kwargs: Mapping[str, Any]) -> None:
        """Raise a clear error for keyword arguments the factory does not take.

        :param kwargs: the arguments to check.
        :raises UnknownOptionError: a name is not a parameter of the factory.
        """
        params = self.option_names()
        if params is None:
            return
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, list(params), n=1, cutoff=0.6)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise UnknownOptionError(
                f"Agent {self.name!r} has no option {', '.join(hints)}. "
                f"Its options: {', '.join(sorted(params))}."
            )


#: The module attribute where a plug-in's entry-point module may declare, per agent name, the
#: keyword options of :func:`register_agent` (``summary``, ``tags``, ``defaults``, ``options``)
#: applied when the entry point is discovered.
PLUGIN_INFO = "lm_gym_agents"

_REGISTRY: dict[str, AgentSpec] = {}
_DISCOVERED = False
_PLUGIN_ERRORS: dict[str, str] = {}
_UNAVAILABLE: dict[str, str] = {}


def register_agent(
    name: str,
    factory: AgentFactory,
    *,
    summary: str = "",
    defaults: Mapping[str, Any] | None = None,
    tags: tuple[str, ...] = (),
    source: str = "user",
    options: Callable[[], Iterable[str]] | None = None,
    overwrite: bool = False,
) -> AgentSpec:
    """Register an agent factory under a name.

    :param name: the registry name, a non-empty string without whitespace.
    :param factory: ``factory(env, **kwargs)`` returning an :class:`~agents.common.base.Agent`;
        a class whose constructor takes the env first works as is.
    :param summary: one line for ``lm-gym agents`` (default: the factory's docstring, first line).
    :param defaults: keyword arguments applied before the caller's.
    :param tags: free-form labels.
    :param source: where the registration comes from (shown by ``lm-gym agents``).
    :param options: for a factory taking ``**kwargs``, a callable returning the accepted option
        names (see :class:`AgentSpec`).
    :param overwrite: replace an existing registration instead of raising.
    :return: the new spec.
    :raises TypeError: the name is not a non-empty string or the factory is not callable.
    :raises ValueError: the name is taken and ``overwrite`` is false.
    """
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise TypeError(f"agent name must be a non-empty string without spaces, got {name!r}.")
    if not callable(factory):
        raise TypeError(f"agent factory for {name!r} must be callable, got {factory!r}.")
    _ensure_zoo()  # a name of the zoo is taken even before anything was listed
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"an agent named {name!r} is already registered (by {_REGISTRY[name].source}); "
            "pass overwrite=True to replace it."
        )
    if not summary:
        doc = inspect.getdoc(factory) or ""
        summary = doc.strip().splitlines()[0] if doc.strip() else ""
    spec = AgentSpec(name, factory, summary, source, dict(defaults or {}), tuple(tags), options)
    _REGISTRY[name] = spec
    return spec


def unregister_agent(name: str) -> None:
    """Remove a registration (tests, or a plug-in replacing itself).

    :param name: a registered name.
    :raises UnknownAgentError: the name is not registered.
    """
    if name not in _REGISTRY:
        raise UnknownAgentError(f"No agent named {name!r} is registered.")
    del _REGISTRY[name]


def discover_agents(*, refresh: bool = False) -> dict[str, str]:
    """Load the agents that installed distributions declare in the ``lm_gym.agents`` group.

    An entry point's name is the agent name and its object the factory. A name already registered
    by the zoo or by code is not replaced (registered code wins over discovery).

    :param refresh: look again even if discovery already ran (after installing a plug-in).
    :return: the plug-ins that failed to load: ``{entry point name: error message}``.
    """
    global _DISCOVERED
    if _DISCOVERED and not refresh:
        return dict(_PLUGIN_ERRORS)
    _DISCOVERED = True
    _PLUGIN_ERRORS.clear()
    _UNAVAILABLE.clear()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        taken = _REGISTRY.get(ep.name)
        if taken is not None and _same_object(ep, taken.factory):
            continue  # registered already by the plug-in's own import (with its options and tags)
        if taken is not None and not taken.source.startswith("plugin:"):
            warnings.warn(
                f"lm-gym: the agent plug-in {ep.name!r} ({ep.value}) is ignored: the name is "
                f"taken by {taken.source}.",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        try:
            factory = ep.load()
        except Exception as exc:  # a broken plug-in must not break the zoo
            missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
            if missing and not _is_own_module(ep, missing):  # an optional dependency is missing
                _UNAVAILABLE[ep.name] = f"needs the module {missing!r}, which is not installed"
                continue
            _PLUGIN_ERRORS[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"lm-gym: the agent plug-in {ep.name!r} ({ep.value}) failed to load: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if not callable(factory):
            _PLUGIN_ERRORS[ep.name] = f"{ep.value} is not callable"
            warnings.warn(
                f"lm-gym: the agent plug-in {ep.name!r} points to {ep.value}, which is not callable.",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        taken = _REGISTRY.get(ep.name)
        if taken is not None and taken.factory is factory:
            continue  # the plug-in's own import registered it (with register_agent)
        declared = getattr(sys.modules.get(ep.module), PLUGIN_INFO, None) or {}
        info = dict(declared.get(ep.name, {}))
        tags = ("plugin", *info.pop("tags", ()))
        register_agent(
            ep.name, factory, source=f"plugin:{_dist_name(ep)}", tags=tags, overwrite=True, **info
        )
    return dict(_PLUGIN_ERRORS)


def unavailable_agents() -> dict[str, str]:
    """Plug-ins declared by installed distributions that cannot load here because an optional
    dependency is missing: ``{agent name: what it needs}`` (runs discovery first)."""
    discover_agents()
    return dict(_UNAVAILABLE)


def _same_object(ep: importlib.metadata.EntryPoint, obj: Any) -> bool:
    """Whether the entry point names ``obj`` (compared by module and qualified name, no import)."""
    module, _, attr = ep.value.partition(":")
    name = getattr(obj, "__qualname__", None)
    return getattr(obj, "__module__", None) == module.strip() and name == attr.strip()


def _is_own_module(ep: importlib.metadata.EntryPoint, missing: str) -> bool:
    """Whether the missing module is the entry point's own module or one of its packages (a
    broken or uninstalled plug-in) rather than a dependency of it."""
    module = ep.value.partition(":")[0].strip()
    return module == missing or module.startswith(missing + ".")


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or ep.value.partition(":")[0].partition(".")[0]


_ZOO_REGISTERED = False


def _ensure_zoo() -> None:
    """Register the zoo's built-in agents, once (the zoo itself does not import the registry)."""
    global _ZOO_REGISTERED
    if _ZOO_REGISTERED:
        return
    _ZOO_REGISTERED = True  # before registering: register_agent calls back here
    try:
        from agents.zoo import builtin_agents

        for name, factory, options in builtin_agents():
            register_agent(name, factory, source="zoo", overwrite=True, **options)
    except BaseException:
        _ZOO_REGISTERED = False
        raise


def list_agents(*, tag: str | None = None) -> list[str]:
    """The registered agent names, sorted (the zoo and discovered plug-ins).

    :param tag: only the agents carrying this tag.
    """
    _ensure_zoo()
    discover_agents()
    return sorted(n for n, s in _REGISTRY.items() if tag is None or tag in s.tags)


def agent_spec(name: str) -> AgentSpec:
    """The registration of ``name``.

    :param name: a registered or discoverable agent name.
    :raises UnknownAgentError: no such agent (the message lists the known ones and the closest).
    """
    _ensure_zoo()
    if name not in _REGISTRY:
        discover_agents()
    if name not in _REGISTRY:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        if name in _UNAVAILABLE:
            raise UnknownAgentError(
                f"Agent {name!r} is not available here: it {_UNAVAILABLE[name]}. Install the "
                "package or extra that provides it."
            )
        broken = (
            f" (plug-in {name!r} failed to load: {_PLUGIN_ERRORS[name]})"
            if name in _PLUGIN_ERRORS
            else ""
        )
        raise UnknownAgentError(
            f"Unknown agent {name!r}{broken}.{hint} Known agents: {', '.join(known)}."
        )
    return _REGISTRY[name]


def make_agent(name: str, env: str | gym.Env, **kwargs: Any) -> Agent:
    """Build a registered agent on an env.

    :param name: the agent name (see :func:`list_agents`).
    :param env: an env id (made with ``gymnasium.make``) or an env instance.
    :param kwargs: the agent's options, over its registered defaults.
    :return: the agent.
    :raises UnknownAgentError: unknown name.
    :raises UnknownOptionError: an option the agent does not take.
    """
    spec = agent_spec(name)
    options = {**spec.defaults, **kwargs}
    spec.check_kwargs(options)
    if isinstance(env, str):
        import gymnasium as gym

        import lm_gym  # noqa: F401  (registers the ids)

        env = gym.make(env)
    return spec.factory(env, **options)
