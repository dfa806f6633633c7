"""Guess the number: a goal-directed multi-turn game with a scripted partner.

Description
    The partner thinks of a whole number between ``low`` and ``high`` (drawn uniformly with the
    env's seed; hidden from the agent) and says so in its first line. Each agent turn is a guess;
    the partner answers ``"Higher."``, ``"Lower."`` or ``"Correct!"`` (a turn without a number in
    range gets a request for one), and the game ends when the guess is correct or after
    ``max_turns`` guesses. The best strategy is binary search.

    * ``LMGuessNumber-v0``: GPT-2's tokenizer and the plain ``"User:/Assistant:"`` template; numbers
      1 to 100, 7 guesses (binary search always wins in 7). The agent writes its guess (``" 50"``)
      and ends its turn with a newline or EOS, or after 4 tokens.
    * ``LMGuessNumberWords-v0``: the small-vocabulary variant whose exact optimum is known. A
      word-level tokenizer (:mod:`lm_gym.tasks.word_tokenizer`) with the words ``1`` to ``7``,
      ``higher``, ``lower``, ``correct``, ``guess`` and ``<eos>`` (V = 12); the prompt is the single
      word ``guess``, each agent turn is one token, each reply one word; 3 guesses. The observation
      holds the whole history, so the game is an MDP over observations whose transitions depend
      on the hidden number: :func:`agents.tabular.belief.BeliefMDP.from_env` builds it exactly (the
      belief over the number is a function of the history) and the existing value iteration of
      :mod:`agents.tabular.mdp` solves it: binary search (4, then 2 or 6, then the remaining
      number), with optimal expected return ``1 - 0.1 * 17/7 = 0.757...``.

Observation
    ``Dict(input_ids, attention_mask)`` of ``max_prompt_tokens + max_new_tokens`` ids, as for every
    lm-gym env: the partner's first line, then the agent's guesses and the partner's replies, as
    ids, right-aligned (see :mod:`lm_gym.envs.multiturn`).

Action
    ``Discrete(V)``: the next token of the agent's turn.

Reward
    At each turn end: ``-turn_cost`` (0.1), plus ``win_reward`` (1.0) on the correct guess; 0.0 on
    every other step. ``info["turn_metrics"]`` has ``valid`` (the turn named a number in range)
    and ``correct``; the episode's ``info["metrics"]`` has ``win``, ``turns`` and ``return``.

Episode end
    Terminated on the correct guess (``end_reason="goal"``) or after ``max_turns`` turns
    (``"turn_limit"``); truncated if the window is full (``"window_full"``; not reachable with the
    defaults).

Arguments
    Every :class:`lm_gym.envs.multiturn.MultiTurnEnv` option, and ``low``, ``high`` (the range),
    ``win_reward``, ``turn_cost`` and ``replies`` (the partner's words for ``higher``, ``lower``,
    ``correct`` and ``invalid``). ``reset(options={"secret": k})`` fixes the number.

Registered ids
    ``LMGuessNumber-v0``, ``LMGuessNumberWords-v0``.

Version history
    v0: first release.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from lm_gym.data import Sample
from lm_gym.envs.core import ObsType
from lm_gym.envs.multiturn import MultiTurnEnv, Partner, PartnerReply, Turn
from lm_gym.tasks.word_tokenizer import register_word_tokenizer

#: the words of ``LMGuessNumberWords-v0``'s tokenizer ``"lm-guess-words"`` (``<eos>`` appended)
GUESS_WORDS = ("1", "2", "3", "4", "5", "6", "7", "higher", "lower", "correct", "guess")
register_word_tokenizer("lm-guess-words", GUESS_WORDS, overwrite=True)

_NUMBER = re.compile(r"-?\d+")


def verdict(text: str, secret: int, low: int, high: int) -> str:
    """The partner's verdict on a guess: ``"correct"``, ``"higher"`` (the number is higher),
    ``"lower"`` or ``"invalid"`` (no whole number in ``[low, high]`` in the text; the first
    number written counts).

    :param text: the agent's turn.
    :param secret: the hidden number.
    :param low: the smallest allowed number.
    :param high: the largest allowed number.
    """
    match = _NUMBER.search(text)
    if match is None:
        return "invalid"
    guess = int(match.group())
    if not low <= guess <= high:
        return "invalid"
    if guess == secret:
        return "correct"
    return "higher" if secret > guess else "lower"


class GuessNumberPartner(Partner):
    """The scripted partner of the guessing game: it knows ``sample.meta["secret"]``.

    :param low: the smallest allowed number.
    :param high: the largest allowed number.
    :param replies: its words for ``correct``, ``higher``, ``lower`` and ``invalid``.
    """

    name = "guess-number"

    def __init__(self, low: int, high: int, replies: Mapping[str, str]) -> None:
        self.low, self.high, self.replies = int(low), int(high), dict(replies)

    def reply(self, messages: Sequence[Mapping[str, str]], sample: Sample) -> PartnerReply:
        said = verdict(messages[-1]["content"], int(sample.meta["secret"]), self.low, self.high)
        done = said == "correct"
        return PartnerReply(self.replies[said], done=done, goal=done, info={"verdict": said})


class LMGuessNumberEnv(MultiTurnEnv):
    """Guess the partner's hidden number (see the module docstring)."""

    intro = "I am thinking of a whole number from {low} to {high}. Guess it!"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            tokenizer="gpt2",
            reward=None,
            low=1,
            high=100,
            win_reward=1.0,
            turn_cost=0.1,
            replies={
                "correct": "Correct!",
                "higher": "Higher.",
                "lower": "Lower.",
                "invalid": "Please answer with a whole number from {low} to {high}.",
            },
            max_turns=7,
            max_turn_tokens=4,
            max_reply_tokens=24,
            max_prompt_tokens=32,
            max_new_tokens=176,
            stop_strings=["\n"],
        )
        return cfg

    def __init__(
        self,
        render_mode: str | None = None,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        cfg = {**self.default_config(), **(config or {}), **kwargs}
        self.low, self.high = int(cfg["low"]), int(cfg["high"])
        if self.low > self.high:
            raise ValueError(f"low={self.low} is above high={self.high}.")
        self.win_reward = float(cfg["win_reward"])
        self.turn_cost = float(cfg["turn_cost"])
        super().__init__(render_mode, config, **kwargs)

    def make_partner(self) -> Partner:
        if self.config["partner"] is not None:
            return super().make_partner()
        replies = {
            k: str(v).format(low=self.low, high=self.high)
            for k, v in self.config["replies"].items()
        }
        missing = {"correct", "higher", "lower", "invalid"} - set(replies)
        if missing:
            raise ValueError(f"replies lacks {sorted(missing)}.")
        return GuessNumberPartner(self.low, self.high, replies)

    def draw_sample(self) -> Sample:
        secret = getattr(self, "_pending_secret", None)
        if secret is None:
            secret = int(self.np_random.integers(self.low, self.high + 1))
        return self._sample_for(int(secret))

    def _sample_for(self, secret: int) -> Sample:
        if not self.low <= secret <= self.high:
            raise ValueError(f"secret {secret} is outside [{self.low}, {self.high}].")
        return Sample(self.intro.format(low=self.low, high=self.high), meta={"secret": secret})

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsType, dict[str, Any]]:
        """Start a game; ``options={"secret": k}`` fixes the hidden number (otherwise drawn with
        the env's seed)."""
        options = dict(options or {})
        if "prompt" in options or "index" in options:
            raise ValueError("LMGuessNumber draws its games: use options={'secret': k}.")
        self._pending_secret = options.pop("secret", None)
        try:
            return super().reset(seed=seed, options=options or None)
        finally:
            self._pending_secret = None

    def hidden_starts(self) -> list[tuple[dict[str, Any], float]]:
        """The hidden start states and their probabilities: ``[({"secret": k}, 1/n), ...]`` (for
        :class:`agents.tabular.belief.BeliefMDP`)."""
        n = self.high - self.low + 1
        return [({"secret": k}, 1.0 / n) for k in range(self.low, self.high + 1)]

    def score_turn(self, turn: Turn) -> tuple[float, dict[str, float]]:
        said = turn.reply.info.get("verdict", "invalid")
        correct = float(said == "correct")
        reward = -self.turn_cost + self.win_reward * correct
        return reward, {"valid": float(said != "invalid"), "correct": correct}

    def episode_reward(
        self, turns: Sequence[Turn], end_reason: str
    ) -> tuple[float, dict[str, float]]:
        return 0.0, {"win": float(end_reason == "goal")}


class LMGuessNumberWordsEnv(LMGuessNumberEnv):
    """The small-vocabulary guessing game with an exact optimum (see the module docstring)."""

    intro = "guess"
    plain_prompt = "{prompt}"
    plain_user_turn = "{text}"
    plain_separator = " "

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            tokenizer="lm-guess-words",
            low=1,
            high=7,
            replies={
                "correct": "correct",
                "higher": "higher",
                "lower": "lower",
                "invalid": "guess",
            },
            max_turns=3,
            max_turn_tokens=1,
            max_reply_tokens=1,
            max_prompt_tokens=1,
            max_new_tokens=6,
            stop_strings=[],
        )
        return cfg
