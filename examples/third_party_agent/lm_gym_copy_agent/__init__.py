"""A third-party lm-gym agent: copy the prompt back, token by token, then stop.

Registered with lm-gym through the entry point ``copy-prompt`` of the group ``lm_gym.agents``
(see ``pyproject.toml``); nothing here imports lm-gym. The agent meets the zoo's protocol:
``learn``, ``predict``, ``save``, ``load``; it also keeps ``num_timesteps``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CopyPromptAgent", "make_copy_agent"]


class CopyPromptAgent:
    """Write the prompt's tokens again, then the EOS token.

    The agent sees only observations. It recognises the next step of an episode as an observation
    it acted on plus the token it chose; any other observation starts a new episode whose prompt is
    the observation's real tokens. It keeps that per context, not per call, so a batch of
    observations from several episodes at once (a vectorised evaluation) is acted on correctly.

    :param env: an lm-gym env (its ``eos_token_id`` ends the copy).
    :param max_tokens: copy at most this many prompt tokens (``None``: all), counted from the end
        of the prompt when ``from_end`` is set.
    :param from_end: copy the last ``max_tokens`` tokens instead of the first ones.
    :param seed: unused; accepted like every zoo agent.
    """

    def __init__(
        self,
        env: Any,
        max_tokens: int | None = None,
        from_end: bool = False,
        seed: int | None = None,
    ) -> None:
        self.env = env
        self.eos = int(env.unwrapped.eos_token_id)
        self.max_tokens = max_tokens
        self.from_end = bool(from_end)
        self.seed = seed
        self.num_timesteps = 0
        #: context after an action of this agent -> (the prompt being copied, tokens written)
        self._next: dict[tuple[int, ...], tuple[tuple[int, ...], int]] = {}

    def learn(self, total_timesteps: int, callback: Any = None) -> CopyPromptAgent:
        """Nothing to learn."""
        if callback is not None:
            callback({"self": self}, {})
        return self

    def _act(self, ids: np.ndarray, mask: np.ndarray) -> int:
        context = tuple(int(i) for i in ids[mask > 0.5])
        state = self._next.get(context)
        if state is None:  # a new episode
            prompt = context
            if self.max_tokens is not None:
                prompt = prompt[-self.max_tokens :] if self.from_end else prompt[: self.max_tokens]
            state = (prompt, 0)
        prompt, written = state
        action = int(prompt[written]) if written < len(prompt) else self.eos
        if len(self._next) > 100_000:
            self._next.clear()
        self._next[(*context, action)] = (prompt, written + 1)
        return action

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Any, None]:
        """The next token of the copy, for one observation (or a batch of one)."""
        ids = np.asarray(observation["input_ids"])
        mask = np.asarray(observation["attention_mask"])
        if ids.ndim == 2:
            return np.array([self._act(i, m) for i, m in zip(ids, mask)]), None
        return self._act(ids, mask), None

    def save(self, path: str | Path) -> None:
        """Write the options as JSON."""
        data = {"max_tokens": self.max_tokens, "from_end": self.from_end, "seed": self.seed}
        Path(path).write_text(json.dumps(data), encoding="utf-8")

    def load(self, path: str | Path) -> CopyPromptAgent:
        """Read the options back into this agent."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        self.max_tokens, self.from_end = data["max_tokens"], data["from_end"]
        return self


def make_copy_agent(
    env: Any, max_tokens: int | None = None, from_end: bool = False, seed: int | None = None
) -> CopyPromptAgent:
    """Copy the prompt back, token by token, then stop (a third-party plug-in example).

    :param env: an lm-gym env.
    :param max_tokens: copy at most this many prompt tokens.
    :param from_end: copy the last ``max_tokens`` tokens.
    :param seed: unused.
    """
    return CopyPromptAgent(env, max_tokens=max_tokens, from_end=from_end, seed=seed)
