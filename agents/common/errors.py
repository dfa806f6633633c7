"""The errors of the agent registry, in a module of their own so that the registry and the zoo that
raises them need not import each other."""

from __future__ import annotations

__all__ = ["UnknownAgentError", "UnknownOptionError"]


class UnknownAgentError(KeyError):
    """An agent name that is neither registered nor declared by an installed plug-in."""

    def __str__(self) -> str:  # KeyError quotes its message: show it plainly
        return str(self.args[0]) if self.args else ""


class UnknownOptionError(TypeError):
    """A keyword argument (config key) that an agent factory does not take."""
