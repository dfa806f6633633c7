"""Make the partner say a target word: goal-directed dialogue with a model partner.

Description
    The partner is a frozen causal LM (:class:`lm_gym.envs.multiturn.ModelPartner`,
    ``smollm2-135m`` by default, one instance per process) that chats with the agent. The agent
    reads a target word in its first line (the partner does not: it sees only its opener) and
    steers the conversation so that the partner says the word, without saying it itself.

Observation
    ``Dict(input_ids, attention_mask)``: the goal and the partner's opener, then the agent's turns
    and the partner's replies as ids (see :mod:`lm_gym.envs.multiturn`). The default tokenizer and
    template are the partner's (``smollm2-135m``, ``"chat"``), so a SmolLM2 policy plays it.

Action
    ``Discrete(V)``: the next token of the agent's turn (its end-of-turn token ends the turn).

Reward
    At each turn end: ``-turn_cost`` (0.05), ``+win_reward`` (1.0) when the partner's reply holds
    the target word (whole word, any case; the conversation then ends with ``end_reason="goal"``),
    ``-said_penalty`` (0.5) when the agent's own turn holds it. ``info["turn_metrics"]``:
    ``partner_said``, ``agent_said``; the episode's ``info["metrics"]``: ``win``.

Episode end
    Terminated when the partner says the word (``"goal"``) or after ``max_turns`` (4) turns;
    truncated when the window is full.

Arguments
    Every :class:`lm_gym.envs.multiturn.MultiTurnEnv` option, ``words`` (the targets),
    ``opener`` (the partner's first line), ``win_reward``, ``turn_cost``, ``said_penalty``;
    ``partner_kwargs`` as for :class:`~lm_gym.envs.multiturn.ModelPartner` (``{"model":
    "tiny-gpt2"}`` with ``tokenizer="gpt2", prompt_template="plain"`` in tests).

Registered ids
    ``LMTargetWord-v0``.

Version history
    v0: first release.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from lm_gym.data import Sample
from lm_gym.envs.multiturn import Messages, MultiTurnEnv, PartnerReply, Turn


def says_word(text: str, word: str) -> bool:
    """Whether ``text`` holds ``word`` as a whole word, in any case.

    :param text: the text.
    :param word: the word.
    """
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE) is not None


class LMTargetWordEnv(MultiTurnEnv):
    """Make the model partner say the target word (see the module docstring)."""

    goal = 'Goal: make the user say the word "{word}". {opener}'

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            tokenizer="smollm2-135m",
            prompt_template="chat",
            partner="model",
            partner_kwargs={"model": "smollm2-135m", "max_new_tokens": 32},
            reward=None,
            words=["blue", "pizza", "cat", "happy", "rain", "music", "London", "seven"],
            opener="Hi! What would you like to talk about?",
            win_reward=1.0,
            turn_cost=0.05,
            said_penalty=0.5,
            max_turns=4,
            max_turn_tokens=24,
            max_reply_tokens=32,
            max_prompt_tokens=40,
            max_new_tokens=256,
            stop_strings=[],
        )
        return cfg

    def __init__(
        self,
        render_mode: str | None = None,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(render_mode, config, **kwargs)
        self.words = [str(w) for w in self.config["words"]]
        if not self.words:
            raise ValueError("words must not be empty.")
        self.win_reward = float(self.config["win_reward"])
        self.turn_cost = float(self.config["turn_cost"])
        self.said_penalty = float(self.config["said_penalty"])

    def draw_sample(self) -> Sample:
        word = self.words[int(self.np_random.integers(len(self.words)))]
        opener = str(self.config["opener"])
        return Sample(self.goal.format(word=word, opener=opener), meta={"word": word})

    def _word(self) -> str:
        assert self._sample is not None
        word = self._sample.meta.get("word") if self._sample.meta else None
        if word is None:  # a prompt given in reset(options=...): the word in quotes
            match = re.search(r'"([^"]+)"', self._sample.prompt)
            word = match.group(1) if match else self._sample.prompt
        return str(word)

    def partner_messages(self) -> Messages:
        """The partner sees its opener, not the agent's goal."""
        first = {"role": self.messages[0]["role"], "content": str(self.config["opener"])}
        return [first, *self.messages[1:]]

    def judge_reply(self, reply: PartnerReply) -> PartnerReply:
        said = says_word(reply.text, self._word())
        return PartnerReply(reply.text, done=said, goal=said, info={"said": said})

    def score_turn(self, turn: Turn) -> tuple[float, dict[str, float]]:
        partner_said = float(bool(turn.reply.info.get("said")))
        agent_said = float(says_word(turn.text, self._word()))
        reward = -self.turn_cost + self.win_reward * partner_said - self.said_penalty * agent_said
        return reward, {"partner_said": partner_said, "agent_said": agent_said}

    def episode_reward(
        self, turns: Sequence[Turn], end_reason: str
    ) -> tuple[float, dict[str, float]]:
        return 0.0, {"win": float(end_reason == "goal")}
