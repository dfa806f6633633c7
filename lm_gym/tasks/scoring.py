"""A base class for the task scorers that check each text against its own prompt.

The procedural tasks (:mod:`lm_gym.tasks.verifiable`, :mod:`lm_gym.tasks.toy`) put their target
in the prompt (the start of a count, a letter, the words to sort), so their scorers need the
prompts and score each text alone: :class:`PromptScorer` checks for the prompts once and maps
:meth:`PromptScorer.score_one` over the batch.
"""

from __future__ import annotations

from abc import abstractmethod

from lm_gym.rewards import Scorer

__all__ = ["PromptScorer"]


class PromptScorer(Scorer):
    """A scorer of each text against its prompt, which holds the task's target.

    Subclasses set :attr:`name` and :attr:`prompt_holds` and implement :meth:`score_one`.

    :cvar prompt_holds: what the prompts hold, for the error message when they are missing.
    """

    prompt_holds: str = "the target"

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> list[float]:
        if prompts is None:
            raise ValueError(f"{self.name} needs the prompts ({self.prompt_holds}).")
        return [self.score_one(text, prompt) for text, prompt in zip(texts, prompts)]

    @abstractmethod
    def score_one(self, text: str, prompt: str) -> float:
        """The score of one text.

        :param text: the generated text.
        :param prompt: its prompt.
        :raises ValueError: the prompt does not hold what the task needs.
        """
