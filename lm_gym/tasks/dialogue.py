"""Dialogue: answer each line of a recorded conversation, scored turn by turn.

Description
    The partner is the data partner (:class:`lm_gym.envs.multiturn.DataPartner`): it says the
    recorded conversation's lines in turn, whatever the agent answers, and the agent answers each
    one. Each agent turn is compared with the recorded answer to the line it answers. The
    conversation ends after the last recorded (line, answer) pair.

    * ``LMDialogue-v0``: the English conversations of the ``chatterbot-corpus`` package (about
      2,000, 20 topics; offline), GPT-2's tokenizer, the plain ``"User:/Assistant:"`` template.
    * ``LMDialogueDailyDialog-v0``: DailyDialog through ``datasets`` (online; or local data with a
      ``dialog`` column, ``dataset_kwargs={"path": ...}``).

Observation
    ``Dict(input_ids, attention_mask)`` of ``max_prompt_tokens + max_new_tokens`` ids: the first
    line, then the agent's turns and the recorded lines as ids (see :mod:`lm_gym.envs.multiturn`).

Action
    ``Discrete(V)``: the next token of the agent's turn; a newline or EOS ends the turn.

Reward
    At each turn end: the reward scorer (ROUGE-L F1 by default; ``reward="similarity"`` for
    sentence-embedding similarity) of the turn against the recorded answer, plus ``length_weight``
    (0.1) times the length term ``-min(1, |words - answer words| / answer words)``; 0.0 on every
    other step. ``info["turn_metrics"]`` holds the scorer's value, ``chrf`` and ``length``.

Episode end
    Terminated after the last recorded answer (``end_reason="partner_end"``) or after
    ``max_turns`` turns (``"turn_limit"``); truncated if the window is full (``"window_full"``).

Arguments
    Every :class:`lm_gym.envs.multiturn.MultiTurnEnv` option and ``length_weight``.
    ``dataset`` takes any dialogue data set of :mod:`lm_gym.data.dialogue` (``"chatterbot-de"``,
    ...) or a JSONL file whose rows have ``meta.conversation`` lists.

Registered ids
    ``LMDialogue-v0``, ``LMDialogueDailyDialog-v0`` (online).

Version history
    v0: first release.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lm_gym.envs.multiturn import MultiTurnEnv, Turn


def length_term(text: str, references: tuple[str, ...]) -> float:
    """``-min(1, |words - reference words| / reference words)`` against the closest reference
    (0.0 without references).

    :param text: the agent's turn.
    :param references: the recorded answers.
    """
    if not references:
        return 0.0
    n = len(text.split())
    return max(-min(1.0, abs(n - len(r.split())) / max(1, len(r.split()))) for r in references)


class LMDialogueEnv(MultiTurnEnv):
    """Answer the lines of recorded conversations (see the module docstring)."""

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            tokenizer="gpt2",
            dataset="chatterbot-en",
            partner="data",
            reward="rougeL",
            metrics=["chrf"],
            length_weight=0.1,
            max_turns=6,
            max_turn_tokens=32,
            max_reply_tokens=48,
            max_prompt_tokens=48,
            max_new_tokens=320,
            stop_strings=["\n"],
        )
        return cfg

    def __init__(
        self,
        render_mode: str | None = None,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(render_mode, config, **kwargs)
        self.length_weight = float(self.config["length_weight"])

    def score_turn(self, turn: Turn) -> tuple[float, dict[str, float]]:
        reward, metrics = super().score_turn(turn)
        metrics["length"] = length_term(turn.text, self.turn_references(turn.index))
        return float(reward) + self.length_weight * metrics["length"], metrics
