"""Small verifiable tasks: rewards that a program checks exactly, learnable by a tiny GPT-2 on CPU.

Description
    Two procedurally generated tasks whose reward is an exact check of the text, with partial
    credit so that a randomly initialised policy over GPT-2's 50257 tokens gets a learning signal:

    * ``LMCountUp-v0``: the prompt ``"Write 5 increasing numbers, starting above 17:"`` (start drawn
      uniformly from 0..99). Each integer in the output that is strictly greater than the one before
      it (the first: greater than the start) earns a point; the reward is points / 5, capped at 1.
    * ``LMAlliteration-v0``: the prompt ``"Write words that start with the letter S:"`` (letter
      drawn from ``letters``). The reward is the number of words (runs of ASCII letters) that start
      with the letter, divided by ``max(number of words, 4)``: four or more words, all on the
      letter, score 1.

    Both scores are functions of the prompt and the text alone (the scorers parse the prompt), so
    they are also registered as reward scorers (``"count-up"``, ``"alliteration"``).

Observation
    ``Dict(input_ids=Box(0, V-1, (P+T,), int64), attention_mask=Box(0, 1, (P+T,), int64))``, as
    for every lm-gym env; P = 16.

Action
    ``Discrete(V)``: the next token id (V = 50257 with the default GPT-2 tokenizer).

Reward
    At episode end, the score above in [0, 1]; 0.0 at every other step.

Episode end
    Terminated on EOS; truncated after ``max_new_tokens`` tokens (12 for count-up, 8 for
    alliteration).

Arguments
    Every :class:`lm_gym.envs.core.TextEnv` option except the data set (prompts are drawn). Count-up
    adds ``target`` (numbers for a full score, 5) and ``max_start`` (99); alliteration adds
    ``letters`` (``"bcdmpst"``) and takes the words for a full score as
    ``reward_kwargs={"target": 4}``.

    The prompt is the instruction itself, so ``prompt_template="plain"`` (the default; base
    models such as GPT-2, and the tiny policies trained from scratch) shows it as it is, and
    ``prompt_template="chat"`` (instruct models such as ``smollm2-135m``) puts it in the user
    message of the tokenizer's chat template after the system message ``"Answer on one line,
    with the answer only."``; ``max_prompt_tokens`` then defaults to 16 plus the template's own
    tokens. The scorers read the instruction from ``info["prompt"]``, the same in both.

Registered ids
    ``LMCountUp-v0``, ``LMAlliteration-v0``.

Version history
    v0: first release; ``prompt_template="chat"`` added later (the default, ``"plain"``, is the
    first release's prompt).
"""

from __future__ import annotations

import re
from typing import Any

from lm_gym.data import Sample
from lm_gym.envs.core import TextEnv
from lm_gym.rewards import register_scorer
from lm_gym.tasks.scoring import PromptScorer

_INT = re.compile(r"\d+")
_WORD = re.compile(r"[A-Za-z]+")
_COUNT_PROMPT = re.compile(r"Write (\d+) increasing numbers, starting above (\d+):")
_LETTER_PROMPT = re.compile(r"Write words that start with the letter ([A-Za-z]):")


def _parse(pattern: re.Pattern[str], prompt: str, task: str) -> re.Match[str]:
    match = pattern.search(prompt)
    if match is None:
        raise ValueError(f"The {task} scorer cannot read its target from the prompt {prompt!r}.")
    return match


class CountUpScorer(PromptScorer):
    """Points for each integer greater than the one before it (the first: than the prompt's start).

    The prompt must contain ``"Write N increasing numbers, starting above S:"``; the score is
    points / N, capped at 1.
    """

    name = "count-up"
    prompt_holds = "they hold the start and the target"

    def score_one(self, text: str, prompt: str) -> float:
        match = _parse(_COUNT_PROMPT, prompt, "count-up")
        target, previous = int(match.group(1)), int(match.group(2))
        points = 0
        for number in map(int, _INT.findall(text)):
            if number > previous:
                points += 1
            previous = number
        return min(points, target) / target

    def demonstrate(self, prompt: str) -> str:
        """A correct answer to the prompt (the supervised warm start's demonstrations)."""
        match = _parse(_COUNT_PROMPT, prompt, "count-up")
        n, start = int(match.group(1)), int(match.group(2))
        return " " + " ".join(str(start + 1 + i) for i in range(n))


#: Words on each letter of the default ``letters``, for the alliteration demonstrations.
_WORDS_BY_LETTER = {
    "b": "big bright blue bears bake bread",
    "c": "cool cats can catch cold clams",
    "d": "dark dogs dig deep dry ditches",
    "m": "many mice make more music",
    "p": "pink pigs paint pretty pots",
    "s": "seven small snakes sing softly",
    "t": "tall trees touch the tiny tower",
}


class AlliterationScorer(PromptScorer):
    """Words starting with the prompt's letter over ``max(words, target)``.

    :param target: number of words needed for a full score.
    """

    name = "alliteration"
    prompt_holds = "they hold the letter"

    def __init__(self, target: int = 4) -> None:
        if target < 1:
            raise ValueError("target must be at least 1.")
        self.target = target

    def score_one(self, text: str, prompt: str) -> float:
        letter = _parse(_LETTER_PROMPT, prompt, "alliteration").group(1).lower()
        words = _WORD.findall(text)
        hits = sum(w[0].lower() == letter for w in words)
        return hits / max(len(words), self.target)

    def demonstrate(self, prompt: str) -> str:
        """A correct answer to the prompt (the supervised warm start's demonstrations)."""
        letter = _parse(_LETTER_PROMPT, prompt, "alliteration").group(1).lower()
        words = [w for w in _WORDS_BY_LETTER.get(letter, "").split() if w[0] == letter]
        return " " + " ".join((words or [letter + "a" * 2])[:4])


register_scorer("count-up", CountUpScorer, overwrite=True)
register_scorer("alliteration", AlliterationScorer, overwrite=True)


class CountUpEnv(TextEnv):
    """Write ``target`` increasing numbers above a drawn start."""

    chat_system = "Answer on one line, with the answer only."

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            reward="count-up",
            metrics=[],
            max_prompt_tokens=16,
            max_new_tokens=12,
            target=5,
            max_start=99,
        )
        return cfg

    def draw_sample(self) -> Sample:
        start = int(self.np_random.integers(0, int(self.config["max_start"]) + 1))
        target = int(self.config["target"])
        return Sample(f"Write {target} increasing numbers, starting above {start}:")


class AlliterationEnv(TextEnv):
    """Write words that all start with a drawn letter."""

    chat_system = "Answer on one line, with the answer only."

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            reward="alliteration",
            reward_kwargs={"target": 4},
            metrics=[],
            max_prompt_tokens=16,
            max_new_tokens=8,
            letters="bcdmpst",
        )
        return cfg

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(render_mode=render_mode, **kwargs)
        letters = str(self.config["letters"])
        if not letters or not letters.isalpha() or not letters.isascii():
            raise ValueError(f"letters must be ASCII letters, got {letters!r}.")
        self._letters = sorted(set(letters.upper()))

    def draw_sample(self) -> Sample:
        letter = self._letters[int(self.np_random.integers(len(self._letters)))]
        return Sample(f"Write words that start with the letter {letter}:")
