"""The token-level text environment that every lm-gym task builds on.

One step is one token. The observation is the token ids so far (prompt, then the generated tokens),
right-aligned in a fixed-length window of ``max_prompt_tokens + max_new_tokens`` ids with padding
on the left, and an attention mask. The prompt is the task's plain text (for base models) or the
tokenizer's chat template around the task's system and user messages (for instruct models), see
``prompt_template``. The action is a vocabulary index. The episode terminates on
a stop token (EOS by default, or any token containing one of the task's stop strings) and is
truncated after ``max_new_tokens`` tokens. The task reward scores the decoded text once, at the
end of the episode: intermediate rewards are 0.0.

The token budget is part of the task, not a time limit put on it: the episode's last ``info``
holds ``info["token_budget_reached"]`` (:data:`TOKEN_BUDGET_KEY`), ``True`` when the episode used
all ``max_new_tokens`` tokens. Such a truncation ends the MDP: the text has been scored and no
further reward can come, so the value of the state reached is 0 and an agent should not bootstrap
``V(s_T)`` there as it does after a time limit (:mod:`agents.algorithms.budget`). An episode cut
earlier by anything else (a ``TimeLimit`` wrapper, for instance) has the flag ``False`` or no flag
at all.

Text is decoded only at episode end (and in :meth:`TextEnv.render`), never per step.
"""

from __future__ import annotations

import difflib
import functools
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lm_gym.data import Sample, load_dataset
from lm_gym.models import load_tokenizer
from lm_gym.rewards import Scorer, shared_scorer

ObsType = dict[str, np.ndarray]

#: key of the episode-end ``info``: whether the episode used its whole token budget
#: (``max_new_tokens``), which makes the state reached terminal (see the module docstring)
TOKEN_BUDGET_KEY = "token_budget_reached"

#: the named prompt styles of ``prompt_template`` (any other value is a format string with
#: ``{prompt}``, a plain prompt of one's own)
PROMPT_STYLES = ("plain", "chat")


class EpisodeError(RuntimeError):
    """``step()`` called before ``reset()`` or after the episode ended."""


class RenderModeError(TypeError, ValueError):
    """An unsupported ``render_mode``.

    Also a ``TypeError`` so that SB3's ``make_vec_env``, which first tries
    ``render_mode="rgb_array"`` and retries without it on ``TypeError``, works unchanged.
    """


@functools.lru_cache(maxsize=32)
def stop_token_ids(tokenizer_name: str, stop_strings: tuple[str, ...]) -> frozenset[int]:
    """Ids of every token whose text contains one of ``stop_strings`` (computed once per tokenizer).

    :param tokenizer_name: as accepted by :func:`lm_gym.models.load_tokenizer`.
    :param stop_strings: e.g. ``("\\n",)``.
    """
    if not stop_strings:
        return frozenset()
    tok = load_tokenizer(tokenizer_name)
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    return frozenset(i for i, t in enumerate(texts) if any(s in t for s in stop_strings))


class TextEnv(gym.Env[ObsType, np.int64]):
    """Token-level text generation over a data set of prompts, scored at episode end.

    Tasks subclass it, set :meth:`default_config`, and may override :meth:`draw_sample` (procedural
    prompts), :meth:`compute_metrics` (task-specific scores), :meth:`task_done` (a task's own end)
    and :meth:`_step_reward` (per-token rewards). Every constructor argument is a
    JSON-serialisable name or number, so specs serialise and vector envs can rebuild envs; a
    ``config`` dict overrides the defaults as keyword arguments do.

    Base and instruct models. A task states its prompt twice: :attr:`plain_prompt`, text that a
    base model continues (``"{prompt}\\nTL;DR:"``), and :attr:`chat_system` / :attr:`chat_user`,
    the messages an instruct model answers (``"Summarise the following text in one
    sentence.\\n\\n{prompt}"``). ``prompt_template="plain"`` (the default) suits base models
    (GPT-2); ``"chat"`` suits instruct models (``smollm2-135m``): their chat template is applied
    with ``add_generation_prompt=True``, so the observation holds the template's ids (system and
    user turns, then the assistant header) and the agent's tokens are the assistant's reply. An
    instruct model answering a plain prompt often ends at once (SmolLM2-135M-Instruct writes a
    newline first on summarisation); a base model has no chat template to use. With ``"chat"`` the
    episode also terminates on the end-of-turn token when it is the tokenizer's EOS
    (``<|im_end|>`` for SmolLM2); a task's stop strings (a newline for translation and
    summarisation) still apply. ``info["prompt"]`` (and the prompt the reward reads) is the plain
    prompt text in both styles, so rewards do not change with the style.

    :param tokenizer: tokenizer name or folder (see :func:`lm_gym.models.load_tokenizer`).
    :param dataset: data set name, ``.jsonl``/``.json`` file, or list of ``{"prompt", "references"}``
        dicts (see :func:`lm_gym.data.load_dataset`).
    :param split: ``"train"``, ``"validation"`` or ``"test"``.
    :param dataset_kwargs: extra keyword arguments for the data set loader.
    :param reward: the name of the metric used as reward, a scorer name (see
        :func:`lm_gym.rewards.list_scorers`) or a callable ``f(texts, prompts, references)``.
    :param reward_kwargs: keyword arguments for the reward scorer.
    :param metrics: further scorer names computed at episode end and reported in ``info``.
    :param prompt_template: ``"plain"`` (default): the task's plain prompt :attr:`plain_prompt`
        applied to the sample's prompt, for base models; ``"chat"``: the tokenizer's own chat
        template applied to the task's :attr:`chat_system` and :attr:`chat_user` messages, for
        instruct models (a tokenizer without a chat template is a ``ValueError``); or a format
        string with ``{prompt}``: a plain prompt of one's own.
    :param max_prompt_tokens: P, the prompt part of the observation window. With
        ``prompt_template="chat"`` and P left at the task's default, P grows by the chat
        template's own tokens (the template with an empty task text), so the task text keeps the
        plain prompt's budget; a P that is given is the window as it stands.
    :param max_new_tokens: T, the episode's token budget (truncation after T steps, with
        ``info["token_budget_reached"] = True``: a terminal state, see the module docstring).
    :param truncation: a prompt longer than P is cut from the left with a warning (``"left"``) or
        refused with a ``ValueError`` (``"error"``). With ``prompt_template="chat"`` only the
        task text (the sample's prompt inside the user message) is cut, from the left, so the
        template's head (system turn, user header, instruction) and tail (end of turn, assistant
        header) stay whole; a P smaller than the template with an empty task text is a
        ``ValueError``.
    :param stop_strings: a token containing any of these strings also ends the episode.
    :param stop_on_eos: whether the EOS token ends the episode.
    :param defer_reward: leave the episode-end scoring to a vector-level batcher
        (:class:`lm_gym.envs.vector.DeferredRewardVecEnv` for SB3 vector envs,
        :class:`~lm_gym.envs.vector.DeferredRewardVectorWrapper` for Gymnasium's
        ``SyncVectorEnv``), which scores every episode that ended
        in the same vector step with one batched scorer call and adds the reward and
        ``info["metrics"]`` (the same values as without deferring). The env itself then ends
        episodes with a text reward of 0.0, ``info["reward_deferred"] = True`` and no metrics.
        Without a batcher attached (:meth:`attach_reward_batcher`), the first episode end raises
        a ``RuntimeError`` instead of returning a wrong reward.
    :param render_mode: ``None`` or ``"ansi"``.
    :param config: overrides, as a dict (HighwayEnv style).
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 30}
    #: a subclass that overrides ``step()`` or ``_step_reward()`` sets this when its episode-end
    #: reward is still ``_step_reward(token, 0.0)`` plus the text score, so that
    #: ``defer_reward=True`` is allowed
    deferred_reward_ok: ClassVar[bool] = False
    #: the task's plain prompt (``prompt_template="plain"``): a format string with ``{prompt}``,
    #: the sample's prompt
    plain_prompt: ClassVar[str] = "{prompt}"
    #: the system message of ``prompt_template="chat"`` (``None``: none, so the chat template's
    #: default system turn, if it has one)
    chat_system: ClassVar[str | None] = None
    #: the user message of ``prompt_template="chat"``: a format string with ``{prompt}``
    chat_user: ClassVar[str] = "{prompt}"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The task's defaults; subclasses update this dict."""
        return {
            "tokenizer": "gpt2",
            "dataset": None,
            "split": "train",
            "dataset_kwargs": {},
            "reward": None,
            "reward_kwargs": {},
            "metrics": [],
            "prompt_template": "plain",
            "max_prompt_tokens": 64,
            "max_new_tokens": 48,
            "truncation": "left",
            "stop_strings": [],
            "stop_on_eos": True,
            "defer_reward": False,
        }

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse option names the env does not take (:meth:`default_config`), each with the
        closest known name; used by the constructor and by ``lm-gym train --env-set`` before
        anything is built.

        :param options: option names (and values).
        :raises TypeError: an unknown name.
        """
        known = cls.default_config()
        unknown = set(options) - set(known)
        if unknown:
            hints = []
            for key in sorted(unknown):
                close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
                hints.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(
                f"{cls.__name__} got unknown option(s) {', '.join(hints)}; known: {sorted(known)}"
            )

    def __init__(
        self,
        render_mode: str | None = None,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        cfg = self.default_config()
        given = set(config or {}) | set(kwargs)
        for source in (config or {}, kwargs):
            self.check_options(source)
            cfg.update(source)
        self.config = cfg
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise RenderModeError(
                f"render_mode={render_mode!r} is not supported; use one of "
                f"{self.metadata['render_modes']} or None."
            )
        self.render_mode = render_mode

        if cfg["truncation"] not in ("left", "error"):
            raise ValueError(f"truncation must be 'left' or 'error', not {cfg['truncation']!r}.")
        #: ``"plain"`` or ``"chat"``
        self.prompt_style = self._check_prompt_template(cfg["prompt_template"])
        template = cfg["prompt_template"]
        #: the plain prompt's format string (also ``info["prompt"]`` with ``"chat"``)
        self.plain_format = template if template not in PROMPT_STYLES else self.plain_prompt

        self.tokenizer = load_tokenizer(cfg["tokenizer"])
        if self.prompt_style == "chat":
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(
                    f"prompt_template='chat' needs a tokenizer with a chat template, and "
                    f"tokenizer {cfg['tokenizer']!r} has none (a base model's). Use "
                    "prompt_template='plain' (the default) or a format string with '{prompt}', "
                    "or an instruct model's tokenizer such as 'smollm2-135m' ('tiny-llama' in "
                    "tests)."
                )
            head = len(self._chat_ids(""))
            if "max_prompt_tokens" not in given:
                cfg["max_prompt_tokens"] = int(cfg["max_prompt_tokens"]) + head
            elif int(cfg["max_prompt_tokens"]) < head:
                raise ValueError(
                    f"The chat template of tokenizer {cfg['tokenizer']!r} takes {head} tokens "
                    f"with an empty task text, more than max_prompt_tokens="
                    f"{cfg['max_prompt_tokens']}: raise max_prompt_tokens (or leave it at the "
                    "task's default, which counts the template's tokens)."
                )
        self.max_prompt_tokens = int(cfg["max_prompt_tokens"])
        self.max_new_tokens = int(cfg["max_new_tokens"])
        if self.max_prompt_tokens < 1 or self.max_new_tokens < 1:
            raise ValueError("max_prompt_tokens and max_new_tokens must be at least 1.")
        self.vocab_size = len(self.tokenizer)
        self.eos_token_id = self.tokenizer.eos_token_id
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.eos_token_id is None:
            raise ValueError(f"Tokenizer {cfg['tokenizer']!r} has no EOS token.")
        stops = set(stop_token_ids(cfg["tokenizer"], tuple(cfg["stop_strings"])))
        if cfg["stop_on_eos"]:
            stops.add(self.eos_token_id)
        self._stop_ids = frozenset(stops)

        self.samples: list[Sample] = self.load_samples()
        self.reward_name, self.reward_scorer = self._make_reward(
            cfg["reward"], cfg["reward_kwargs"]
        )
        self.metric_scorers: dict[str, Scorer] = {
            name: shared_scorer(name) for name in cfg["metrics"] if name != self.reward_name
        }
        self.defer_reward = bool(cfg["defer_reward"])
        self._reward_batcher: str | None = None
        if self.defer_reward and not self.supports_deferred_reward():
            raise ValueError(
                f"{type(self).__name__} overrides step() or _step_reward(), so its episode-end "
                "reward may not be the text score added to the step's own reward: "
                "defer_reward=True is refused. Set the class attribute deferred_reward_ok = True "
                "if it is."
            )
        #: envs with the same key score the same episode identically (one batched call serves them)
        self.score_group = json.dumps(
            [
                f"{type(self).__module__}.{type(self).__qualname__}",
                cfg["reward"],
                cfg["reward_kwargs"],
                cfg["metrics"],
            ],
            sort_keys=True,
            default=repr,
        )

        length = self.max_prompt_tokens + self.max_new_tokens
        # gymnasium types spaces.Dict as Space[dict[str, Space]], not as a space of dicts of samples
        self.observation_space = spaces.Dict(  # type: ignore[assignment]
            {
                "input_ids": spaces.Box(0, self.vocab_size - 1, (length,), dtype=np.int64),
                "attention_mask": spaces.Box(0, 1, (length,), dtype=np.int64),
            }
        )
        self.action_space = spaces.Discrete(self.vocab_size)

        self._ids = np.full(length, self.pad_token_id, dtype=np.int64)
        self._mask = np.zeros(length, dtype=np.int64)
        self._generated: list[int] = []
        self._sample: Sample | None = None
        self._prompt_text = ""
        self._done = True
        self._started = False
        self._prompt_cache: dict[str, np.ndarray] = {}

    @staticmethod
    def _check_prompt_template(template: Any) -> str:
        """The prompt style of a ``prompt_template`` value: ``"plain"`` or ``"chat"``.

        :param template: ``"plain"``, ``"chat"`` or a format string with ``{prompt}``.
        :raises ValueError: anything else, with the closest style name when there is one.
        """
        if template in PROMPT_STYLES:
            return str(template)
        if isinstance(template, str) and "{prompt}" in template:
            return "plain"
        close = difflib.get_close_matches(str(template).lower(), PROMPT_STYLES, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown prompt_template {template!r}: use 'plain' (base models), 'chat' (the "
            f"tokenizer's chat template, instruct models) or a format string with '{{prompt}}'."
            f"{hint}"
        )

    # -- task hooks -------------------------------------------------------------------------------

    def load_samples(self) -> list[Sample]:
        """The samples of the configured data set and split (procedural tasks return ``[]``)."""
        cfg = self.config
        if cfg["dataset"] is None:
            return []
        samples = load_dataset(cfg["dataset"], split=cfg["split"], **cfg["dataset_kwargs"])
        if not samples:
            raise ValueError(f"Data set {cfg['dataset']!r} split {cfg['split']!r} has no samples.")
        return samples

    def draw_sample(self) -> Sample:
        """Draw the next episode's sample with ``self.np_random`` (override for procedural tasks)."""
        return self.samples[int(self.np_random.integers(len(self.samples)))]

    def compute_metrics(self, text: str, sample: Sample, prompt: str) -> dict[str, float]:
        """Every metric of the finished text, the reward's included (override to add task scores).

        :param text: the decoded generated text (stop token excluded).
        :param sample: the episode's sample.
        :param prompt: the plain prompt text (:meth:`prompt_text`, also with ``"chat"``).
        """
        return self.compute_metrics_batch([text], [sample], [prompt])[0]

    def compute_metrics_batch(
        self, texts: Sequence[str], samples: Sequence[Sample], prompts: Sequence[str]
    ) -> list[dict[str, float]]:
        """:meth:`compute_metrics` of several finished episodes, one scorer call per metric.

        A subclass that overrides :meth:`compute_metrics` only gets it called once per episode.

        :param texts: the decoded generated texts.
        :param samples: each episode's sample.
        :param prompts: each episode's plain prompt text (:meth:`prompt_text`).
        :return: one metrics dict per episode, in order.
        """
        if type(self).compute_metrics is not TextEnv.compute_metrics:
            return [self.compute_metrics(*args) for args in zip(texts, samples, prompts)]
        texts, prompts = list(texts), list(prompts)
        refs = [list(sample.references) for sample in samples]
        rewards = self.reward_scorer.score(texts, prompts, refs)
        out: list[dict[str, float]] = [{self.reward_name: r} for r in rewards]
        for name, scorer in self.metric_scorers.items():
            rows = [i for i, s in enumerate(samples) if s.references or not scorer.needs_references]
            if not rows:
                continue
            scores = scorer.score(
                [texts[i] for i in rows], [prompts[i] for i in rows], [refs[i] for i in rows]
            )
            for i, value in zip(rows, scores):
                out[i][name] = value
        return [{k: float(v) for k, v in metrics.items()} for metrics in out]

    def score_episodes(
        self, texts: Sequence[str], samples: Sequence[Sample], prompts: Sequence[str]
    ) -> list[tuple[float, dict[str, float]]]:
        """The text score and metrics of finished episodes, batched: what this env adds at an
        episode's end without ``defer_reward`` (used by the vector-level batcher).

        :param texts: the decoded generated texts.
        :param samples: each episode's sample.
        :param prompts: each episode's plain prompt text (:meth:`prompt_text`).
        :return: ``(score, metrics)`` per episode, in order.
        """
        metrics = self.compute_metrics_batch(texts, samples, prompts)
        return [(float(m[self.reward_name]), m) for m in metrics]

    def supports_deferred_reward(self) -> bool:
        """Whether ``defer_reward=True`` is allowed: ``step()`` and ``_step_reward()`` are
        TextEnv's (the episode-end reward is the step's own reward plus the text score), or the
        class says so (:attr:`deferred_reward_ok`)."""
        cls = type(self)
        own = cls.step is TextEnv.step and cls._step_reward is TextEnv._step_reward
        return own or cls.deferred_reward_ok

    def attach_reward_batcher(self, name: str = "batcher") -> bool:
        """Declare that a vector-level batcher scores this env's deferred episodes.

        :class:`lm_gym.envs.vector.DeferredRewardVecEnv` calls it on every env. Call it yourself
        only if your own code adds :meth:`score_episodes`'s score to the reward of every
        ``info["reward_deferred"]`` episode end and puts the metrics in ``info["metrics"]``.

        :param name: who scores, for error messages.
        :return: whether this env defers its reward.
        """
        self._reward_batcher = str(name)
        return self.defer_reward

    def task_done(self, prompt: str, generated: Sequence[int]) -> bool:
        """Whether the task ends the episode after ``generated`` (terminated; the stop tokens are
        handled by the core). An episode whose task ends on its last budgeted token is terminated,
        not truncated. Default: never.

        :param prompt: the sample's prompt (before the template).
        :param generated: the token ids written so far, the last one included.
        """
        return False

    def chat_messages(self, prompt: str) -> list[dict[str, str]]:
        """The messages of ``prompt_template="chat"`` for a sample's prompt: the task's system
        message (if any) and its user message (:attr:`chat_user` applied to ``prompt``).

        :param prompt: the sample's prompt (the task text).
        """
        messages = [{"role": "user", "content": self.chat_user.format(prompt=prompt)}]
        if self.chat_system is not None:
            messages.insert(0, {"role": "system", "content": self.chat_system})
        return messages

    def _step_reward(self, token: int, score: float) -> float:
        """The reward of the step that appended ``token`` (override for per-token rewards).

        :param token: the token just appended.
        :param score: on the episode's last step, the reward scorer's score of the finished text
            (also in ``info["metrics"]``); 0.0 on every other step.
        :return: ``score``: by default the reward comes at episode end only.
        """
        return score

    def _make_reward(self, reward: Any, kwargs: Mapping[str, Any]) -> tuple[str, Scorer]:
        if reward is None:
            raise ValueError(f"{type(self).__name__} needs a reward (a scorer name or callable).")
        scorer = shared_scorer(reward, **kwargs)
        name = reward if isinstance(reward, str) else getattr(scorer, "name", "reward")
        return name, scorer

    # -- Gymnasium API ----------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsType, dict[str, Any]]:
        """Start an episode on a drawn sample.

        :param seed: seeds ``self.np_random`` (the sample draw).
        :param options: ``{"index": i}`` pins sample ``i`` of the split; ``{"prompt": str,
            "references": [str, ...]}`` uses a given prompt (the template is applied);
            ``{"sample": s}`` replays a :class:`~lm_gym.data.base.Sample` as it is (prompt,
            references and ``meta``, e.g. a game's hidden number: what :attr:`sample` returns), so
            that several envs can play exactly the same task (GRPO's groups).
        :return: the observation and ``{"prompt": the plain prompt text, "prompt_tokens": the
            number of real prompt ids}``.
        """
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"index", "prompt", "references", "sample"}
        if unknown:
            raise ValueError(
                f"Unknown reset option(s) {sorted(unknown)}: use index, prompt and references, "
                "or sample."
            )
        if "sample" in options:
            sample = options["sample"]
            if not isinstance(sample, Sample):
                raise TypeError(
                    f"options['sample'] must be an lm_gym Sample (env.sample), got "
                    f"{type(sample).__name__}."
                )
        elif "index" in options:
            if not self.samples:
                raise ValueError(
                    f"{type(self).__name__} draws its prompts: options['index'] does not apply."
                )
            idx = int(options["index"])
            if not 0 <= idx < len(self.samples):
                raise IndexError(f"options['index']={idx} outside 0..{len(self.samples) - 1}.")
            sample = self.samples[idx]
        elif "prompt" in options:
            refs = options.get("references", ())
            if isinstance(refs, str):
                refs = (refs,)
            sample = Sample(str(options["prompt"]), tuple(str(r) for r in refs))
        else:
            sample = self.draw_sample()
        self._sample = sample
        self._prompt_text = self.prompt_text(sample.prompt)
        prompt_ids = self.encode_prompt(sample.prompt)

        # Right-aligned: the window ends with the prompt; each new token shifts it left by one.
        n = len(prompt_ids)
        self._ids.fill(self.pad_token_id)
        self._mask.fill(0)
        self._ids[-n:] = prompt_ids
        self._mask[-n:] = 1
        self._generated = []
        self._done = False
        self._started = True
        return self._obs(), {"prompt": self._prompt_text, "prompt_tokens": n}

    def step(self, action: Any) -> tuple[ObsType, float, bool, bool, dict[str, Any]]:
        """Append token ``action``; score the text when the episode ends.

        :raises EpisodeError: before ``reset()`` or after the episode ended.
        :raises TypeError: the action is not an integer.
        :raises ValueError: the action is outside the vocabulary.
        """
        token = self._check_action(action)
        self._ids[:-1] = self._ids[1:]
        self._ids[-1] = token
        self._mask[:-1] = self._mask[1:]
        self._mask[-1] = 1
        self._generated.append(token)

        assert self._sample is not None
        terminated = token in self._stop_ids or self.task_done(self._sample.prompt, self._generated)
        truncated = not terminated and len(self._generated) >= self.max_new_tokens
        if not (terminated or truncated):
            return self._obs(), self._step_reward(token, 0.0), False, False, {}
        self._done = True
        return self._obs(), *self._finish(terminated, truncated)

    def _finish(
        self, terminated: bool, truncated: bool
    ) -> tuple[float, bool, bool, dict[str, Any]]:
        assert self._sample is not None
        text = self.generated_text()
        if self.defer_reward:
            return self._finish_deferred(text, terminated, truncated)
        metrics = self.compute_metrics(text, self._sample, self._prompt_text)
        info = {
            "text": text,
            "prompt": self._prompt_text,
            "references": list(self._sample.references),
            "metrics": metrics,
            "num_new_tokens": len(self._generated),
            TOKEN_BUDGET_KEY: len(self._generated) >= self.max_new_tokens,
        }
        reward = self._step_reward(self._generated[-1], float(metrics[self.reward_name]))
        return reward, bool(terminated), bool(truncated), info

    def _finish_deferred(
        self, text: str, terminated: bool, truncated: bool
    ) -> tuple[float, bool, bool, dict[str, Any]]:
        """The episode end with ``defer_reward``: the step's own reward (no text score) and what
        the batcher needs to score the text; it then adds the score and ``info["metrics"]``."""
        assert self._sample is not None
        if self._reward_batcher is None:
            raise RuntimeError(
                f"{type(self).__name__} was made with defer_reward=True, which leaves the "
                "episode-end reward to a vector-level batcher, but none is attached: this "
                "episode's reward would be missing. Wrap the vector env in "
                "lm_gym.envs.vector.DeferredRewardVecEnv, or make the env with "
                "defer_reward=False."
            )
        info = {
            "text": text,
            "prompt": self._prompt_text,
            "references": list(self._sample.references),
            "num_new_tokens": len(self._generated),
            TOKEN_BUDGET_KEY: len(self._generated) >= self.max_new_tokens,
            "reward_deferred": True,
            "deferred_sample": self._sample,
            "score_group": self.score_group,
        }
        reward = self._step_reward(self._generated[-1], 0.0)
        return reward, bool(terminated), bool(truncated), info

    def render(self) -> str | None:
        """With ``render_mode="ansi"``: the prompt and the text so far, separated by ``" | "``."""
        if self.render_mode != "ansi":
            return None
        return f"{self._prompt_text} | {self.generated_text()}"

    # -- helpers ----------------------------------------------------------------------------------

    def generated_text(self) -> str:
        """The text generated so far (a final stop token excluded, special tokens skipped)."""
        ids = self._generated
        if ids and ids[-1] in self._stop_ids and self._done:
            ids = ids[:-1]
        return cast(str, self.tokenizer.decode(ids, skip_special_tokens=True))

    @property
    def sample(self) -> Sample | None:
        """The current episode's sample."""
        return self._sample

    def _obs(self) -> ObsType:
        return {"input_ids": self._ids.copy(), "attention_mask": self._mask.copy()}

    def prompt_text(self, prompt: str) -> str:
        """The plain prompt text of a sample's prompt: ``info["prompt"]`` and the prompt that
        rewards read, whatever ``prompt_template`` (with ``"chat"``: what ``"plain"`` would show).

        :param prompt: the sample's prompt.
        """
        return self.plain_format.format(prompt=prompt)

    def encode_prompt(self, prompt: str, *, warn: bool = True) -> np.ndarray:
        """The real prompt ids of the observation for a sample's prompt, cut to
        ``max_prompt_tokens`` as ``truncation`` says (cached per prompt).

        :param prompt: the sample's prompt (before the template).
        :param warn: warn when the prompt is cut.
        :raises ValueError: the prompt is too long and ``truncation="error"``.
        """
        cached = self._prompt_cache.get(prompt)
        if cached is not None:
            return cached
        try:
            if self.prompt_style == "chat":
                ids = self._encode_chat(prompt, warn)
            else:
                ids = self._encode_plain(self.prompt_text(prompt), warn)
        except (ValueError, TypeError, UserWarning):
            raise
        except Exception as exc:  # the tokenizers library's own errors (a word-level vocabulary)
            raise ValueError(self._encode_error(prompt, exc)) from exc
        arr = np.asarray(ids, dtype=np.int64)
        if len(self._prompt_cache) < 100_000:
            self._prompt_cache[prompt] = arr
        return arr

    def _encode_error(self, prompt: str, exc: Exception) -> str:
        """What a prompt the tokenizer cannot encode gets: the words outside a word-level
        vocabulary by name, else the tokenizer's own message."""
        vocab = self.tokenizer.get_vocab()
        outside = [w for w in self.prompt_text(prompt).split() if w not in vocab]
        if outside and len(vocab) <= 1000:
            known = sorted(w for w in vocab if w not in self.tokenizer.all_special_tokens)
            return (
                f"The prompt {prompt!r} has word(s) outside the vocabulary of the env's tokenizer "
                f"{self.config['tokenizer']!r}: {', '.join(map(repr, outside))}. Its words: "
                f"{', '.join(known)}."
            )
        return f"The env's tokenizer {self.config['tokenizer']!r} cannot encode {prompt!r}: {exc}"

    def _encode_plain(self, text: str, warn: bool) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        if not ids:  # GPT-2 needs a token to condition on: start from BOS/EOS
            ids = [self.tokenizer.bos_token_id or self.eos_token_id]
        if len(ids) > self.max_prompt_tokens:
            self._too_long(len(ids), text)
            if warn:
                warnings.warn(
                    f"Prompt of {len(ids)} tokens cut from the left to max_prompt_tokens="
                    f"{self.max_prompt_tokens}.",
                    stacklevel=4,
                )
            ids = ids[-self.max_prompt_tokens :]
        return list(ids)

    def _chat_ids(self, prompt: str) -> list[int]:
        """The chat template's ids of :meth:`chat_messages`, ending with the assistant header."""
        ids = cast(
            "list[int]",
            self.tokenizer.apply_chat_template(
                self.chat_messages(prompt),
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            ),
        )
        return [int(i) for i in ids]

    def _encode_chat(self, prompt: str, warn: bool) -> list[int]:
        """The chat template's ids; too long, the task text is cut from the left (the largest
        suffix of its tokens that fits, found by bisection) so the template stays whole."""
        ids = self._chat_ids(prompt)
        if len(ids) <= self.max_prompt_tokens:
            return ids
        self._too_long(len(ids), prompt)
        task_ids = self.tokenizer.encode(prompt, add_special_tokens=False)

        def cut(keep: int) -> str:
            # a cut inside a multi-byte character decodes to U+FFFD: drop it
            text = (
                cast(str, self.tokenizer.decode(task_ids[len(task_ids) - keep :])) if keep else ""
            )
            return text.lstrip("\ufffd").lstrip()

        lo, hi, best = 0, len(task_ids) - 1, self._chat_ids("")  # 0 tokens fit (checked in init)
        while lo <= hi:  # the largest number of task tokens whose template fits
            mid = (lo + hi) // 2
            candidate = self._chat_ids(cut(mid))
            if len(candidate) <= self.max_prompt_tokens:
                lo, best = mid + 1, candidate
            else:
                hi = mid - 1
        if warn:
            warnings.warn(
                f"Chat prompt of {len(ids)} tokens: the task text cut from the left to "
                f"{lo - 1} of its {len(task_ids)} tokens to fit max_prompt_tokens="
                f"{self.max_prompt_tokens} (the chat template kept whole).",
                stacklevel=4,
            )
        return best

    def _too_long(self, n_tokens: int, text: str) -> None:
        if self.config["truncation"] == "error":
            raise ValueError(
                f"Prompt has {n_tokens} tokens, more than max_prompt_tokens="
                f"{self.max_prompt_tokens} (truncation='error'): {text[:80]!r}..."
            )

    def _check_action(self, action: Any) -> int:
        """The token id of a ``step`` action, in an episode that is running.

        :raises EpisodeError: before ``reset()`` or after the episode ended.
        :raises TypeError: the action is not an integer.
        :raises ValueError: the action is outside the vocabulary.
        """
        if self._done:
            raise EpisodeError(
                "step() called after the episode ended; call reset()."
                if self._started
                else "step() called before reset(); call reset() first."
            )
        if isinstance(action, np.ndarray):
            if action.shape not in ((), (1,)):
                raise ValueError(
                    f"Action must be a single token id, got an array of shape {action.shape}."
                )
            action = action.reshape(()).item() if action.dtype.kind in "iu" else action.reshape(())
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
            raise TypeError(
                f"Action must be an integer token id, got {type(action).__name__} {action!r}."
            )
        token = int(action)
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"Action {token} is outside the vocabulary [0, {self.vocab_size}).")
        return token
