"""An agent's options, read from their one declaration: a signature and its ``:param`` docs.

Every option of a zoo agent is declared once, as a keyword parameter of the agent class's
constructor (or of the algorithm's, for the stable-baselines3 agents), documented by a
``:param name:`` line of that class's docstring. Everything else reads it from there:

- the factory's signature (:class:`ClassFactory`, :class:`OptionFactory`), which the registry
  checks options against (:meth:`agents.registry.AgentSpec.check_kwargs`): a YAML config, ``--set`` and
  :func:`agents.registry.make_agent` all go through that check;
- what an agent records when it saves (:func:`constructor_options`);
- ``lm-gym agents NAME``, the table of options with their defaults and docs
  (:meth:`agents.registry.AgentSpec.describe_options`).

Options the zoo adds to every agent of a kind (``warm_start``, an ``"auto"`` learning rate) are
declared once in :mod:`agents.zoo` as :class:`inspect.Parameter` objects with a doc each.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import gymnasium as gym

__all__ = [
    "AgentOption",
    "ClassFactory",
    "OptionFactory",
    "constructor_options",
    "describe",
    "forwarded_parameters",
    "keyword_parameters",
    "param_docs",
]

_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_PARAM_LINE = re.compile(r"^(\s*):param\s+(?:[^:]*\s)?(\w+):\s*(.*)$")


@dataclass(frozen=True)
class AgentOption:
    """One option of an agent, as ``lm-gym agents NAME`` lists it.

    :param name: the keyword.
    :param default: its default (:attr:`inspect.Parameter.empty` when it has none).
    :param doc: its ``:param`` doc, on one line (empty when undocumented).
    """

    name: str
    default: Any = inspect.Parameter.empty
    doc: str = ""

    @property
    def required(self) -> bool:
        """Whether the option has no default."""
        return self.default is inspect.Parameter.empty


def keyword_parameters(
    func: Callable[..., Any], skip: Collection[str] = ()
) -> dict[str, inspect.Parameter]:
    """The parameters of ``func`` that a keyword can set, in order, without ``self``, ``*args``,
    ``**kwargs`` and the names in ``skip``.

    :param func: a function, a class (its constructor) or a callable.
    :param skip: names to leave out (``env``, ``seed``, ...).
    """
    params = inspect.signature(func).parameters.values()
    return {
        p.name: p
        for p in params
        if p.kind not in _VARIADIC
        and p.kind is not inspect.Parameter.POSITIONAL_ONLY
        and p.name != "self"
        and p.name not in skip
    }


def forwarded_parameters(cls: type, skip: Collection[str] = ()) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a class's constructor and of those it forwards ``**kwargs`` to:
    each ``__init__`` up the method resolution order while the one before takes ``**kwargs``
    (a subclass's parameter wins over its base's).

    :param cls: the class.
    :param skip: names to leave out.
    """
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        for name, param in keyword_parameters(init, skip).items():
            params.setdefault(name, param)
        kinds = {p.kind for p in inspect.signature(init).parameters.values()}
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            break
    return params


def constructor_options(cls: type, skip: Collection[str] = ()) -> tuple[str, ...]:
    """The names of a class's constructor keywords, in order (what its instances record).

    :param cls: the class.
    :param skip: names to leave out.
    """
    return tuple(keyword_parameters(cls, skip))


def param_docs(*objects: Any) -> dict[str, str]:
    """The ``:param name: text`` entries of the objects' docstrings, each on one line; an earlier
    object's entry wins over a later one's (a subclass documents an option over its base).

    :param objects: classes, functions or any object with a docstring; a class also contributes
        its ``__init__``'s docstring and its bases' (in method resolution order).
    """
    docs: dict[str, str] = {}
    for obj in _with_bases(objects):
        for name, text in _parse_params(inspect.getdoc(obj) or "").items():
            docs.setdefault(name, text)
    return docs


def _with_bases(objects: Iterable[Any]) -> Iterable[Any]:
    for obj in objects:
        if isinstance(obj, type):
            for klass in obj.__mro__:
                if klass is not object:
                    yield klass
                    if "__init__" in vars(klass):
                        yield vars(klass)["__init__"]
        else:
            yield obj


def _parse_params(doc: str) -> dict[str, str]:
    """``{name: text}`` of a reST docstring's ``:param`` fields, continuation lines joined."""
    out: dict[str, str] = {}
    current: str | None = None
    indent = 0
    for line in doc.splitlines():
        match = _PARAM_LINE.match(line)
        if match:
            indent = len(match.group(1))
            current = match.group(2)
            out[current] = match.group(3).strip()
        elif current is not None and line.strip() and len(line) - len(line.lstrip()) > indent:
            out[current] = f"{out[current]} {line.strip()}".strip()
        else:
            current = None
    return out


def describe(params: Mapping[str, inspect.Parameter], docs: Mapping[str, str]) -> list[AgentOption]:
    """The options of a signature with their docs, in the signature's order.

    :param params: keyword parameters (see :func:`keyword_parameters`).
    :param docs: ``{name: doc}`` (see :func:`param_docs`).
    """
    return [AgentOption(name, p.default, docs.get(name, "")) for name, p in params.items()]


_KW = inspect.Parameter.KEYWORD_ONLY


class _SignatureOf:
    """``factory.__signature__``, built on first use (it imports the agent's class); ``None`` on
    the class itself, so that ``inspect.signature`` of the factory class is its own."""

    def __get__(self, obj: Any, objtype: type | None = None) -> inspect.Signature | None:
        return None if obj is None else obj.signature()


class OptionFactory:
    """An agent factory whose options are read from their one declaration, never restated.

    ``inspect.signature(factory)`` is ``(env, *, option=default, ...)`` (what the registry checks
    a config against), and :meth:`option_docs` gives each option's doc (what ``lm-gym agents
    NAME`` prints). Subclasses say where the options come from (:meth:`own_parameters`) and how
    the agent is built (:meth:`build`).

    :param summary: one line for ``lm-gym agents``.
    """

    __signature__ = _SignatureOf()

    def __init__(self, summary: str) -> None:
        self.summary = self.__doc__ = summary

    def own_parameters(self) -> tuple[dict[str, inspect.Parameter], dict[str, str]]:
        """``({name: parameter}, {name: doc})`` of the agent's options, in order."""
        raise NotImplementedError

    def build(self, env: gym.Env, options: dict[str, Any], given: set[str]) -> Any:
        """The agent on ``env``.

        :param env: the env.
        :param options: every option, the defaults filled in.
        :param given: the names of the options the caller gave.
        """
        raise NotImplementedError

    @functools.cached_property
    def _declared(self) -> tuple[dict[str, inspect.Parameter], dict[str, str]]:
        return self.own_parameters()

    def signature(self) -> inspect.Signature:
        """``(env, *, option=default, ...)``."""
        params = self._declared[0]
        env = inspect.Parameter("env", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return inspect.Signature([env, *(p.replace(kind=_KW) for p in params.values())])

    def option_docs(self) -> dict[str, str]:
        """``{name: doc}`` of every option."""
        return dict(self._declared[1])

    def __call__(self, env: gym.Env, **kwargs: Any) -> Any:
        bound = self.signature().bind(env, **kwargs)
        bound.apply_defaults()
        options = dict(bound.arguments)
        del options["env"]
        return self.build(env, options, set(kwargs))


class ClassFactory(OptionFactory):
    """The factory of an agent class: its options are the class constructor's keywords (and those
    it forwards ``**kwargs`` to, see :func:`forwarded_parameters`), and their docs the class
    docstring's ``:param`` lines.

    :param cls_path: ``"module.Class"`` (imported on first use, not when the zoo is).
    :param summary: one line for ``lm-gym agents``.
    :param fixed: options the factory sets itself (not options of the agent it makes).
    :param defaults: the factory's defaults over the class's.
    :param extra: ``{name: (parameter, doc)}``: options added to, or replacing, the class's.
    :param hidden: class options the factory does not offer (they keep the class's default).
    :param build: ``build(cls, env, options)``: the agent (default ``cls(env, **options)``).
    """

    def __init__(
        self,
        cls_path: str,
        summary: str,
        *,
        fixed: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        extra: Mapping[str, tuple[inspect.Parameter, str]] | None = None,
        hidden: Sequence[str] = (),
        build: Callable[[type, gym.Env, dict[str, Any]], Any] | None = None,
    ) -> None:
        super().__init__(summary)
        self.cls_path = cls_path
        self.fixed = dict(fixed or {})
        self.hidden = tuple(hidden)
        self.defaults = dict(defaults or {})
        self.extra = dict(extra or {})
        self._build = build

    @functools.cached_property
    def cls(self) -> type:
        """The agent class."""
        import importlib

        module, name = self.cls_path.rsplit(".", 1)
        return cast(type, getattr(importlib.import_module(module), name))

    def own_parameters(self) -> tuple[dict[str, inspect.Parameter], dict[str, str]]:
        """The class's constructor keywords (less ``env``, ``n_actions``, the fixed and the hidden
        ones) with the factory's defaults, then the extra options; docs from the class, the
        extra options' winning."""
        skip = {"env", "n_actions", *self.fixed, *self.hidden}
        params = forwarded_parameters(self.cls, skip)
        docs = param_docs(self.cls)
        for name, (param, doc) in self.extra.items():
            params[name], docs[name] = param, doc
        for name, value in self.defaults.items():
            params[name] = params[name].replace(default=value)
        return params, {name: docs.get(name, "") for name in params}

    def build(self, env: gym.Env, options: dict[str, Any], given: set[str]) -> Any:
        """``build(cls, env, options)``, or ``cls(env, **options, **fixed)``."""
        options = {**options, **self.fixed}
        if self._build is not None:
            return self._build(self.cls, env, options)
        return self.cls(env, **options)
