"""Small-vocabulary text MDPs whose optimal values and policy are known exactly.

Description
    Two tasks over word-level tokenizers (see :mod:`lm_gym.tasks.word_tokenizer`) with a handful
    of words, so that ``Discrete(V)`` is small, every reachable state can be enumerated, and the
    exact solvers of :mod:`agents.tabular.mdp` (value iteration, policy iteration, Monte Carlo
    policy evaluation) give the ground truth that learning agents are checked against.

    * ``LMToy-v0``: the worked example of RL for language models. Vocabulary
      ``{x1, x2, v1, v2, <eos>}`` (ids 0..4, V = 5). There are two contexts, ``x1`` and ``x2``,
      and two words, ``v1`` and ``v2``, with rewards ``r(v1) = 1`` and ``r(v2) = 2``.

      - The episode starts in context ``x1``: the prompt is the single token ``x1``.
      - In context ``x1`` any token other than ``<eos>`` leads to context ``x2``: the observation
        becomes ``x1 a`` (context ``x2`` is "one word after ``x1``"; ``x1 v1`` and ``x1 v2`` are
        two observations of the same context, with equal values).
      - In context ``x2`` any token ends the episode (terminated).
      - ``<eos>`` ends the episode in either context, with reward 0.
      - The reward is received on choosing the token: ``r(v1) = 1``, ``r(v2) = 2``, and 0 for
        ``x1``, ``x2`` and ``<eos>`` (the context tokens are valid actions that earn nothing).
      - Discount ``gamma = 1`` (episodes last at most 2 steps; the return is the plain sum).

      So the optimal policy writes ``v2`` in both contexts: ``V*(x2) = 2``, ``V*(x1) = 4``,
      ``Q*(x1, v1) = 3``, ``Q*(x1, v2) = 4``, ``Q*(x1, x1) = Q*(x1, x2) = 2``,
      ``Q*(x1, <eos>) = 0``. ``reset(options={"prompt": "x2"})`` starts in context ``x2`` (a
      one-step episode). The contexts and rewards are options: ``contexts`` is a chain of any
      length (each token moves to the next context; after the last one the episode ends) and
      ``reward_kwargs={"word_rewards": {...}}`` sets the rewards.

    * ``LMWordSort-v0``: the prompt is 3 distinct words out of ``{ant, bee, cat, dog}`` in random
      order (all 24 orders equally likely), e.g. ``"dog ant cat"``; the agent writes them in
      alphabetical order (``"ant cat dog"``). Vocabulary ``{ant, bee, cat, dog, <eos>}`` (V = 5).
      The reward is the fraction of positions holding the right word:
      ``#{i : out[i] == sorted(prompt)[i]} / max(3, len(out))``, in ``{0, 1/3, 2/3, 1}``. It has
      504 non-terminal states (24 prompts times 1 + 4 + 16 prefixes) and a unique optimal action
      in every state; ``V* = 1`` from every prompt.

Observation
    ``Dict(input_ids=Box(0, V-1, (P+T,), int64), attention_mask=Box(0, 1, (P+T,), int64))``, as
    for every lm-gym env: the prompt then the tokens written so far, right-aligned, left-padded
    with ``<eos>`` (mask 0). ``LMToy-v0``: P = 1, T = 2; ``LMWordSort-v0``: P = T = 3.

Action
    ``Discrete(V)``, V = 5: the next token id (every word of the vocabulary and ``<eos>``).

Reward
    ``LMToy-v0``: per step, on choosing the token (the only lm-gym task whose reward is not given
    at episode end, because the worked example's MDP has rewards on each word); ``info["metrics"]``
    at episode end holds the text score (the sum of the word rewards, equal to the return).
    ``LMWordSort-v0``: at episode end, the score above; 0.0 at every other step.

Episode end
    Terminated by the task's rule (``LMToy-v0``: after the last context; ``LMWordSort-v0``: after
    3 words) or on ``<eos>``. The observation window always holds the whole episode, so the
    observation is the full state (a Markov state: the exact model of :mod:`agents.tabular.mdp` is
    keyed by the real tokens of the observation) and episodes are never truncated.

Arguments
    Every :class:`lm_gym.envs.core.TextEnv` option except the data set (prompts are drawn from the
    finite start distribution :meth:`FiniteTextEnv.start_distribution`). ``LMToy-v0`` adds
    ``contexts`` (``["x1", "x2"]``) and ``start`` (the first context), and takes the rewards as
    ``reward_kwargs={"word_rewards": {"v1": 1.0, "v2": 2.0}}``. ``LMWordSort-v0`` adds ``words``
    (``["ant", "bee", "cat", "dog"]``) and ``length`` (3). Any tokenizer works as long as every
    context and word is a single token of it (the exact solvers need a small vocabulary).
    ``prompt_template`` is ``"plain"`` (the prompt is the context or the words, as they are):
    the word-level tokenizers have no chat template, so ``"chat"`` is a ``ValueError``.

Registered ids
    ``LMToy-v0``, ``LMWordSort-v0``.

Version history
    v0: first release.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

import lm_gym.tasks.word_tokenizer  # noqa: F401  (registers the word-level tokenizers)
from lm_gym.data import Sample
from lm_gym.envs.core import ObsType, TextEnv
from lm_gym.rewards import Scorer, register_scorer
from lm_gym.tasks.scoring import PromptScorer


class WordRewardScorer(Scorer):
    """The sum of the rewards of the words of a text (whitespace-separated; other words earn 0).

    :param word_rewards: word -> reward.
    """

    name = "word-rewards"

    def __init__(self, word_rewards: Mapping[str, float] | None = None) -> None:
        rewards = {"v1": 1.0, "v2": 2.0} if word_rewards is None else dict(word_rewards)
        self.word_rewards = {str(w): float(r) for w, r in rewards.items()}

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> list[float]:
        return [sum(self.word_rewards.get(w, 0.0) for w in text.split()) for text in texts]


class WordSortScorer(PromptScorer):
    """Fraction of positions where the text has the prompt's words in sorted (alphabetical) order.

    The target is ``sorted(prompt.split())``; the score is
    ``#{i : out[i] == target[i]} / max(len(target), len(out))`` with ``out = text.split()``.
    """

    name = "word-sort"
    prompt_holds = "the words to sort"

    def score_one(self, text: str, prompt: str) -> float:
        target, words = sorted(prompt.split()), text.split()
        if not target:
            raise ValueError("word-sort needs a prompt with at least one word.")
        hits = sum(a == b for a, b in zip(words, target))
        return hits / max(len(target), len(words))


register_scorer("word-rewards", WordRewardScorer, overwrite=True)
register_scorer("word-sort", WordSortScorer, overwrite=True)


class FiniteTextEnv(TextEnv):
    """A :class:`TextEnv` with a finite start distribution and a task rule that ends episodes.

    Subclasses implement :meth:`start_distribution` (the prompts and their probabilities, which
    :meth:`draw_sample` draws from and which :func:`agents.tabular.mdp.TabularMDP.from_env`
    enumerates), :meth:`~lm_gym.envs.core.TextEnv.task_done` and :meth:`token_budget`. An episode
    that reaches the task's end is *terminated*, also when it coincides with the token budget.
    """

    #: The discount of the task's MDP (the return is the undiscounted sum).
    gamma: ClassVar[float] = 1.0

    def __init__(
        self,
        render_mode: str | None = None,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = {**(config or {}), **kwargs}
        prompt_tokens, new_tokens = self.token_budget({**self.default_config(), **options})
        options.setdefault("max_prompt_tokens", prompt_tokens)
        options.setdefault("max_new_tokens", new_tokens)
        super().__init__(render_mode=render_mode, **options)

    @classmethod
    def token_budget(cls, options: Mapping[str, Any]) -> tuple[int, int]:
        """The ``(max_prompt_tokens, max_new_tokens)`` the task derives from its options, used
        where they are not given.

        :param options: the default config updated with the given options.
        """
        return int(options["max_prompt_tokens"]), int(options["max_new_tokens"])

    def start_distribution(self) -> list[tuple[str, float]]:
        """The prompts an episode starts from and their probabilities (summing to 1)."""
        raise NotImplementedError

    def draw_sample(self) -> Sample:
        starts = self.start_distribution()
        probs = np.array([p for _, p in starts], dtype=np.float64)
        index = int(self.np_random.choice(len(starts), p=probs / probs.sum()))
        return Sample(starts[index][0])

    def _single_token(self, word: str, what: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"{type(self).__name__}: the {what} {word!r} must be one token of tokenizer "
                f"{self.config['tokenizer']!r}, got ids {ids}."
            )
        return int(ids[0])


class LMToyEnv(FiniteTextEnv):
    """The two-context, two-word worked example (see the module docstring for the exact rules)."""

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            tokenizer="lm-toy-words",
            reward="word-rewards",
            reward_kwargs={"word_rewards": {"v1": 1.0, "v2": 2.0}},
            metrics=[],
            max_prompt_tokens=1,
            max_new_tokens=2,
            contexts=["x1", "x2"],
            start=None,
        )
        return cfg

    def __init__(
        self,
        render_mode: str | None = None,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(render_mode, config, **kwargs)
        self.contexts = [str(c) for c in self.config["contexts"]]
        if not self.contexts or len(set(self.contexts)) != len(self.contexts):
            raise ValueError(f"contexts must be distinct and non-empty, got {self.contexts}.")
        start = self.config["start"]
        self.start = self.contexts[0] if start is None else str(start)
        if self.start not in self.contexts:
            raise ValueError(f"start {self.start!r} is not one of {self.contexts}.")
        for context in self.contexts:
            self._single_token(context, "context")
        # r(a) for every token id: the scorer's score of the token alone (0 for EOS).
        scorer = self.reward_scorer
        if not isinstance(scorer, WordRewardScorer):
            raise ValueError("LMToy-v0's reward must be 'word-rewards' (a per-word reward).")
        self.token_rewards = np.zeros(self.vocab_size, dtype=np.float64)
        for word, value in scorer.word_rewards.items():
            self.token_rewards[self._single_token(word, "word")] = value
        self.token_rewards[self.eos_token_id] = 0.0

    @classmethod
    def token_budget(cls, options: Mapping[str, Any]) -> tuple[int, int]:
        return 1, len(list(options["contexts"]))

    def start_distribution(self) -> list[tuple[str, float]]:
        return [(self.start, 1.0)]

    def context_index(self, prompt: str, n_generated: int) -> int:
        """The index in ``contexts`` of the current context (``len(contexts)``: past the last).

        :param prompt: the episode's prompt, one of the contexts.
        :param n_generated: tokens written so far.
        """
        return self.contexts.index(prompt) + n_generated

    def task_done(self, prompt: str, generated: Sequence[int]) -> bool:
        return self.context_index(prompt, len(generated)) >= len(self.contexts)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsType, dict[str, Any]]:
        """Start in context ``start`` (or ``options={"prompt": c}`` for a context ``c``)."""
        if options and "prompt" in options and str(options["prompt"]) not in self.contexts:
            raise ValueError(f"The prompt must be one of the contexts {self.contexts}.")
        obs, info = super().reset(seed=seed, options=options)
        info["context"] = self.sample.prompt if self.sample else None
        return obs, info

    def _step_reward(self, token: int, score: float) -> float:
        """The reward ``r(token)`` of the token, received at once (the text score is in ``info``)."""
        return float(self.token_rewards[token])


class LMWordSortEnv(FiniteTextEnv):
    """Write the prompt's words in alphabetical order (see the module docstring)."""

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            tokenizer="lm-sort-words",
            reward="word-sort",
            metrics=[],
            max_prompt_tokens=3,
            max_new_tokens=3,
            words=["ant", "bee", "cat", "dog"],
            length=3,
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
        self.length = int(self.config["length"])
        if len(set(self.words)) != len(self.words):
            raise ValueError(f"words must be distinct, got {self.words}.")
        if not 1 <= self.length <= len(self.words):
            raise ValueError(f"length must be in 1..{len(self.words)}, got {self.length}.")
        if self.max_prompt_tokens < self.length:
            raise ValueError(f"max_prompt_tokens must be at least length={self.length}.")
        for word in self.words:
            self._single_token(word, "word")
        self._starts = [" ".join(p) for p in itertools.permutations(self.words, self.length)]

    @classmethod
    def token_budget(cls, options: Mapping[str, Any]) -> tuple[int, int]:
        length = int(options["length"])
        return length, length

    def start_distribution(self) -> list[tuple[str, float]]:
        return [(prompt, 1.0 / len(self._starts)) for prompt in self._starts]

    def task_done(self, prompt: str, generated: Sequence[int]) -> bool:
        return len(generated) >= self.length
