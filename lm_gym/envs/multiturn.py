"""Multi-turn, token-faithful conversations: the agent writes its turns token by token, a partner
answers, and rewards come at every turn end.

One step is still one token of the agent. The agent's turn ends on a stop token (EOS, or a token
containing one of ``stop_strings``: a newline by default with the plain template) or after
``max_turn_tokens`` tokens. Then the partner's reply is **tokenised once**, in the conversation's
template, and appended to the window as ids; the agent writes its next turn after it. Nothing is
ever re-tokenised: the observation holds exactly the ids the agent sampled (see
:meth:`MultiTurnEnv.agent_token_mask`), so what a policy is trained on is what it produced
(text-level multi-turn trainers that re-tokenise the conversation between turns lose this).

Templates. ``prompt_template="plain"`` (base models such as GPT-2): the first partner line is
``"User: {text}\\nAssistant:"`` and every later one ``"User: {text}\\nAssistant:"`` too, preceded by
a newline when the agent's turn did not end with one. ``prompt_template="chat"`` (instruct models
such as ``smollm2-135m``): the first line is the tokenizer's chat template (with the assistant
header); a reply is the template's text between the end of an assistant message and the next
assistant header (``"<|im_end|>\\n<|im_start|>user\\n{text}<|im_end|>\\n<|im_start|>assistant\\n"``
for SmolLM2), without its leading end-of-turn token when the agent already wrote it.

Partners (see :func:`make_partner`): a scripted partner (a Python callable on the conversation so
far), the data partner (``"data"``: the next line of a recorded conversation) and a model partner
(``"model"``: a frozen causal LM, shared per process, generating with its KV cache).

The conversation ends when the partner says so (the goal is reached, or the recorded conversation
has no further line: ``info["end_reason"]`` is ``"goal"`` or ``"partner_end"``), after
``max_turns`` turns (``"turn_limit"``; both are *terminated*: the turn count is part of the
observed state), or when the window is full (``"window_full"``: *truncated*, with
``info["token_budget_reached"] = True`` as for :class:`~lm_gym.envs.core.TextEnv`'s token budget,
a terminal state, see :mod:`lm_gym.envs.core`).

Rewards: every turn end gets the turn's reward (:meth:`MultiTurnEnv.score_turn`), the last step
also the episode reward (:meth:`MultiTurnEnv.episode_reward`); other steps get 0.0. Rewards come
at different times, so a discount ``gamma < 1`` is meaningful. ``info`` at each turn end holds
``turn`` (its index), ``turn_text``, ``reply`` (the partner's text, ``None`` when the conversation
ended without one), ``turn_reward`` and ``turn_metrics``; at the episode end also ``text`` (the agent's
turns joined by newlines), ``turns`` (a record per turn), ``conversation`` (the messages),
``metrics`` (the episode's metrics: ``return``, ``turns`` and the per-turn metrics averaged),
``end_reason`` and ``num_new_tokens`` (the agent's tokens).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np

from lm_gym.data import Sample
from lm_gym.envs.core import TOKEN_BUDGET_KEY, ObsType, TextEnv
from lm_gym.models import cache_keyword, output_cache
from lm_gym.rewards import import_callable, names_import

#: the roles of :attr:`MultiTurnEnv.messages`: the partner speaks as "user", the agent as
#: "assistant"
PARTNER_ROLE, AGENT_ROLE = "user", "assistant"

#: ``info["end_reason"]`` values
END_REASONS = ("goal", "partner_end", "turn_limit", "window_full")

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PartnerReply:
    """What a partner says after an agent turn.

    :param text: the reply (the next "user" line).
    :param done: the partner ends the conversation after this reply (the goal is reached, or it
        has nothing more to say). The reply is then not appended.
    :param goal: with ``done``: whether the conversation ended because its goal was reached
        (``info["end_reason"] == "goal"``) rather than the partner running out of lines.
    :param info: anything the task reads when it scores the turn (for instance
        ``{"verdict": "lower"}``); JSON-serialisable values.
    """

    text: str
    done: bool = False
    goal: bool = False
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One finished agent turn.

    :param index: 0 for the first turn.
    :param ids: the agent's token ids of the turn (its final stop token included).
    :param text: the decoded turn (a final stop token excluded, special tokens skipped).
    :param user: the partner line the agent answered.
    :param reply: the partner's reply to the turn.
    """

    index: int
    ids: tuple[int, ...]
    text: str
    user: str
    reply: PartnerReply


# -- partners -------------------------------------------------------------------------------------


class Partner:
    """The other side of the conversation. One instance per env (it may keep per-episode state);
    heavy parts (a model) are shared per process.

    Subclasses implement :meth:`reply`, and :meth:`reset` if they keep state.
    """

    name: ClassVar[str] = "partner"

    def reset(self, sample: Sample, np_random: np.random.Generator) -> None:
        """Start a new conversation.

        :param sample: the episode's sample (its prompt is the partner's first line).
        :param np_random: the env's generator (for random partners).
        """

    def reply(self, messages: Sequence[Mapping[str, str]], sample: Sample) -> PartnerReply:
        """The partner's reply to the conversation so far (the agent's turn last).

        :param messages: ``{"role", "content"}`` dicts: the partner's lines as ``"user"``, the
            agent's as ``"assistant"``, starting with the first partner line.
        :param sample: the episode's sample.
        """
        raise NotImplementedError


class ScriptedPartner(Partner):
    """A partner given by a Python callable ``fn(messages, sample)``.

    :param fn: returns the reply as a string (the conversation goes on), a :class:`PartnerReply`,
        or a ``(text, done)`` pair.
    """

    name = "scripted"

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"A scripted partner needs a callable, got {type(fn).__name__}.")
        self.fn = fn

    def reply(self, messages: Sequence[Mapping[str, str]], sample: Sample) -> PartnerReply:
        out = self.fn(list(messages), sample)
        if isinstance(out, PartnerReply):
            return out
        if isinstance(out, str):
            return PartnerReply(out)
        if isinstance(out, tuple) and len(out) == 2:
            return PartnerReply(str(out[0]), done=bool(out[1]))
        raise TypeError(
            f"Scripted partner {self.fn!r} returned {type(out).__name__}; return a str, a "
            "PartnerReply or a (text, done) pair."
        )


class DataPartner(Partner):
    """The next partner line of a recorded conversation.

    The sample holds the conversation as ``meta["conversation"]``: alternating lines, the
    partner's first (``[user0, answer0, user1, answer1, ...]``). After the agent's ``k``-th turn
    (``k`` from 1) the partner says ``conversation[2k]``; the conversation ends (``done``) when no
    further (partner line, recorded answer) pair is left.
    """

    name = "data"

    def reply(self, messages: Sequence[Mapping[str, str]], sample: Sample) -> PartnerReply:
        lines = conversation_lines(sample)
        k = sum(m["role"] == AGENT_ROLE for m in messages)
        if 2 * k + 1 < len(lines):
            return PartnerReply(lines[2 * k])
        return PartnerReply("", done=True)


def conversation_lines(sample: Sample) -> list[str]:
    """The recorded lines of a dialogue sample (``meta["conversation"]``; else the prompt and its
    first reference).

    :param sample: a dialogue sample.
    """
    lines = sample.meta.get("conversation") if sample.meta else None
    if lines:
        return [str(line) for line in lines]
    return [sample.prompt, *sample.references[:1]]


#: model partners' models and tokenizers, shared per process: (model name, dtype) -> (model, tok)
_SHARED_MODELS: dict[tuple[str, str], tuple[Any, Any]] = {}
_SHARED_LOCK = threading.Lock()


def shared_partner_model(model: str, dtype: str = "float32") -> tuple[Any, Any]:
    """A frozen causal LM and its tokenizer, loaded once per process (like
    :func:`lm_gym.rewards.shared_scorer`'s model-based scorers): 16 envs with a model partner hold
    one model.

    :param model: a name :func:`lm_gym.models.load_causal_lm` accepts (``"tiny-gpt2"``,
        ``"smollm2-135m"``, a folder, a hub id).
    :param dtype: the torch dtype name of its weights.
    :return: ``(model, tokenizer)``, the model in eval mode with gradients off.
    """
    key = (str(model), str(dtype))
    with _SHARED_LOCK:
        if key not in _SHARED_MODELS:
            import torch

            from lm_gym.models import load_causal_lm, load_tokenizer, tokenizer_name_for_model

            lm = load_causal_lm(str(model))
            lm = lm.to(getattr(torch, dtype)).eval()
            lm.requires_grad_(False)
            _SHARED_MODELS[key] = (lm, load_tokenizer(tokenizer_name_for_model(str(model))))
        return _SHARED_MODELS[key]


class ModelPartner(Partner):
    """A frozen causal LM as the partner.

    The partner sees the conversation from its side: its own lines are the ``"assistant"`` turns
    and the agent's are ``"user"`` turns (so an instruct model answers the agent). With
    ``template="chat"`` the model's chat template renders it; with ``"plain"`` the text is
    ``"User: ...\\nAssistant: ..."`` lines (the agent as ``User``), ending with ``"Assistant:"``,
    and the reply ends at the first newline. The reply is generated with ``generate()`` and the
    model's KV cache, which is kept across the turns of a conversation: each reply computes only
    the tokens that are new since the last one.

    :param model: the model name (see :func:`shared_partner_model`); one instance per process.
    :param max_new_tokens: the reply's token budget.
    :param template: ``"chat"``, ``"plain"``, or ``"auto"`` (chat when the tokenizer has a chat
        template).
    :param do_sample: sample (with the env's seed) instead of greedy decoding.
    :param temperature: sampling temperature.
    :param system: a system message for the partner (chat template only).
    :param dtype: the weights' dtype name.
    """

    name = "model"

    def __init__(
        self,
        model: str = "tiny-gpt2",
        max_new_tokens: int = 24,
        template: str = "auto",
        do_sample: bool = False,
        temperature: float = 1.0,
        system: str | None = None,
        dtype: str = "float32",
    ) -> None:
        if template not in ("auto", "chat", "plain"):
            raise ValueError(f"template must be 'auto', 'chat' or 'plain', not {template!r}.")
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        self.spec: dict[str, Any] = {
            "model": str(model),
            "max_new_tokens": int(max_new_tokens),
            "template": template,
            "do_sample": bool(do_sample),
            "temperature": float(temperature),
            "system": system,
            "dtype": str(dtype),
        }
        self._load()

    def _load(self) -> None:
        self.model, self.tokenizer = shared_partner_model(self.spec["model"], self.spec["dtype"])
        template = self.spec["template"]
        if template == "auto":
            template = "chat" if getattr(self.tokenizer, "chat_template", None) else "plain"
        self.template = template
        #: the model's keyword for a KV cache (:func:`lm_gym.models.cache_keyword`)
        self._cache_kwarg = cache_keyword(self.model)
        self._cache: Any = None
        self._cached_ids: list[int] = []
        self._seed = 0
        #: tokens computed by the last reply's prompt forward (the rest came from the cache)
        self.last_prompt_computed = 0

    def __getstate__(self) -> dict[str, Any]:  # the shared model is not pickled
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec = state["spec"]
        self._load()

    def reset(self, sample: Sample, np_random: np.random.Generator) -> None:
        self._cache, self._cached_ids = None, []
        self._seed = int(np_random.integers(2**31 - 1))

    def prompt_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The partner's prompt ids for the conversation so far (roles swapped).

        :param messages: the env's messages (partner = ``"user"``, agent = ``"assistant"``).
        """
        swap = {PARTNER_ROLE: AGENT_ROLE, AGENT_ROLE: PARTNER_ROLE}
        mine = [{"role": swap[m["role"]], "content": m["content"]} for m in messages]
        if self.template == "chat":
            if self.spec["system"] is not None:
                mine.insert(0, {"role": "system", "content": self.spec["system"]})
            if mine and mine[0]["role"] == AGENT_ROLE:  # templates want a user turn first
                mine.insert(
                    0 if mine[0]["role"] != "system" else 1, {"role": "user", "content": ""}
                )
            ids = self.tokenizer.apply_chat_template(
                mine, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            return [int(i) for i in ids]
        names = {PARTNER_ROLE: "User", AGENT_ROLE: "Assistant"}
        text = "".join(f"{names[m['role']]}: {m['content'].strip()}\n" for m in mine)
        return self.tokenizer.encode(text + "Assistant:", add_special_tokens=False)

    def reply(self, messages: Sequence[Mapping[str, str]], sample: Sample) -> PartnerReply:
        import torch

        ids = self.prompt_ids(messages)
        # reuse the cache of the previous reply for the longest common prefix (at least one new
        # token is computed)
        common = 0
        for a, b in zip(self._cached_ids, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)
        cache = self._cache
        if cache is not None and common > 0:
            extra = int(cache.get_seq_length()) - common
            if extra > 0:  # a negative size removes that many tokens (transformers 4 and 5)
                cache.crop(-extra)
        else:
            cache, common = None, 0
        self.last_prompt_computed = len(ids) - common
        eos = self.tokenizer.eos_token_id
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.spec["max_new_tokens"],
            "do_sample": self.spec["do_sample"],
            "pad_token_id": self.tokenizer.pad_token_id or eos,
            "eos_token_id": eos,
            "use_cache": True,
            "return_dict_in_generate": True,
        }
        if self.spec["do_sample"]:
            kwargs["temperature"] = self.spec["temperature"]
            kwargs["top_k"] = 0
        else:  # greedy: no sampling options (no warnings)
            kwargs["temperature"] = None
            kwargs["top_p"] = None
            kwargs["top_k"] = None
        if self.template == "plain":
            kwargs["stop_strings"] = ["\n"]
            kwargs["tokenizer"] = self.tokenizer
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        generator_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(self._seed + len(messages))
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    **{self._cache_kwarg: cache},
                    **kwargs,
                )
        finally:
            torch.random.set_rng_state(generator_state)
        new = out.sequences[0, len(ids) :].tolist()
        self._cache = output_cache(out)
        self._cached_ids = [*ids, *new]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return PartnerReply(text.split("\n")[0].strip() if self.template == "plain" else text)


#: registered partner factories: name -> factory(**partner_kwargs)
_PARTNERS: dict[str, Callable[..., Partner]] = {"data": DataPartner, "model": ModelPartner}


def register_partner(
    name: str, factory: Callable[..., Partner], *, overwrite: bool = False
) -> None:
    """Make ``partner=name`` build a partner (tasks register their scripted partners).

    :param name: the name envs use (JSON-serialisable).
    :param factory: ``factory(**partner_kwargs)`` returns a :class:`Partner`.
    :param overwrite: replace an existing registration.
    :raises ValueError: the name is taken and ``overwrite`` is false.
    """
    if name in _PARTNERS and not overwrite:
        raise ValueError(f"A partner named {name!r} is already registered.")
    _PARTNERS[name] = factory


def list_partners() -> list[str]:
    """The registered partner names."""
    return sorted(_PARTNERS)


def make_partner(spec: Any, **kwargs: Any) -> Partner:
    """Build a partner.

    :param spec: a registered name (``"data"``, ``"model"``, a task's scripted partner), a
        ``"module:function"`` or ``"file.py:function"`` string naming a scripted partner's
        callable (:func:`lm_gym.rewards.import_callable`, as rewards are named), a :class:`Partner`
        (returned as is), or any callable ``fn(messages, sample)`` (a :class:`ScriptedPartner`).
    :param kwargs: the factory's keyword arguments (``model=...`` for ``"model"``).
    :raises ValueError: an unknown name.
    """
    if isinstance(spec, Partner):
        return spec
    if isinstance(spec, str):
        if spec in _PARTNERS:
            return _PARTNERS[spec](**kwargs)
        if names_import(spec):
            fn = import_callable(spec, "partner")
            return fn(**kwargs) if isinstance(fn, type) else ScriptedPartner(fn)
        raise ValueError(
            f"Unknown partner {spec!r}: use one of {list_partners()}, 'module:function' (a "
            "scripted partner) or a callable fn(messages, sample)."
        )
    if callable(spec):
        return ScriptedPartner(spec)
    raise TypeError(f"A partner is a name or a callable, not {type(spec).__name__}.")


# -- the environment ------------------------------------------------------------------------------


class MultiTurnEnv(TextEnv):
    """A conversation between the agent (token by token) and a partner, with per-turn rewards.

    Everything :class:`~lm_gym.envs.core.TextEnv` has (tokenizer, prompt templates and their
    truncation, data sets, reward scorers, the observation window, action checks) is reused; the
    differences are the ones in the module docstring. Tasks set :meth:`default_config` and may
    override :meth:`score_turn` (the turn's reward and metrics), :meth:`episode_reward` and
    :meth:`turn_references`.

    The window is ``max_prompt_tokens + max_new_tokens`` ids: the first partner line (the prompt,
    cut to ``max_prompt_tokens``) and then the whole conversation (the agent's tokens and the
    partner's replies) in ``max_new_tokens``.

    :param partner: see :func:`make_partner` (``None``: the task's default).
    :param partner_kwargs: keyword arguments of the partner's factory.
    :param max_turns: the conversation ends after this many agent turns.
    :param max_turn_tokens: the agent's token budget per turn.
    :param max_reply_tokens: a partner reply's text is cut to this many tokens (before the
        template).
    :param stop_strings: a token containing one of them ends the agent's *turn* (not the episode).
    :param stop_on_eos: whether EOS ends the agent's turn.
    :param kwargs: every other :class:`~lm_gym.envs.core.TextEnv` option (``max_new_tokens`` is the
        conversation's token budget after the prompt, the agent's and the partner's tokens
        together; ``reward`` may be ``None`` for a task that scores turns itself).
    """

    #: the plain template of a partner line (the first one is the prompt)
    plain_user_turn: ClassVar[str] = "User: {text}\nAssistant:"
    plain_prompt: ClassVar[str] = "User: {prompt}\nAssistant:"
    #: put before a plain partner line when the agent's turn did not end with a newline
    plain_separator: ClassVar[str] = "\n"
    #: the episode's discount, for tables and exact solvers (the env itself does not discount)
    gamma: ClassVar[float] = 1.0

    # set by _reset_conversation()
    _turn_ids: list[int]
    _used: int
    messages: Messages

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            partner=None,
            partner_kwargs={},
            max_turns=4,
            max_turn_tokens=32,
            max_reply_tokens=48,
            max_new_tokens=256,
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
        cfg = self.config
        self.max_turns = int(cfg["max_turns"])
        self.max_turn_tokens = int(cfg["max_turn_tokens"])
        self.max_reply_tokens = int(cfg["max_reply_tokens"])
        if min(self.max_turns, self.max_turn_tokens, self.max_reply_tokens) < 1:
            raise ValueError("max_turns, max_turn_tokens and max_reply_tokens must be at least 1.")
        self.partner = self.make_partner()
        self._reply_cache: dict[tuple[str, bool], np.ndarray] = {}
        self._reset_conversation()

    # -- task hooks -------------------------------------------------------------------------------

    def make_partner(self) -> Partner:
        """The partner of ``partner`` / ``partner_kwargs`` (a task overrides the default)."""
        spec = self.config["partner"]
        if spec is None:
            raise ValueError(f"{type(self).__name__} needs a partner (see make_partner).")
        return make_partner(spec, **dict(self.config["partner_kwargs"]))

    def turn_references(self, turn: int) -> tuple[str, ...]:
        """The references of the agent's turn ``turn`` (default: the sample's references for the
        first turn, then the recorded answers of a dialogue sample).

        :param turn: 0 for the first turn.
        """
        assert self._sample is not None
        lines = self._sample.meta.get("conversation") if self._sample.meta else None
        if lines:
            return (str(lines[2 * turn + 1]),) if 2 * turn + 1 < len(lines) else ()
        return tuple(self._sample.references) if turn == 0 else ()

    def score_turn(self, turn: Turn) -> tuple[float, dict[str, float]]:
        """The reward and metrics of a finished turn. Default: the reward scorer (and ``metrics``)
        on the turn's text, with the partner line it answered as prompt and
        :meth:`turn_references` as references.

        :param turn: the finished turn (with the partner's reply).
        :return: ``(reward, metrics)``.
        """
        if self.reward_scorer is None:
            return 0.0, {}
        sample = Sample(turn.user, self.turn_references(turn.index))
        metrics = self.compute_metrics(turn.text, sample, turn.user)
        return float(metrics[self.reward_name]), metrics

    def episode_reward(
        self, turns: Sequence[Turn], end_reason: str
    ) -> tuple[float, dict[str, float]]:
        """The reward added on the episode's last step, and its metrics. Default: nothing.

        :param turns: every turn of the episode.
        :param end_reason: one of :data:`END_REASONS`.
        """
        return 0.0, {}

    def partner_messages(self) -> Messages:
        """The conversation as the partner sees it (default: :attr:`messages`; a task may hide
        what only the agent should read, such as its goal in the first line)."""
        return self.messages

    def judge_reply(self, reply: PartnerReply) -> PartnerReply:
        """The task's view of a partner's reply (default: as it is); a task may end the
        conversation on it, e.g. when the reply reaches the goal.

        :param reply: what the partner said.
        """
        return reply

    def _make_reward(self, reward: Any, kwargs: Mapping[str, Any]) -> tuple[str, Any]:
        if reward is None:  # the task scores its turns itself
            return "reward", None
        return super()._make_reward(reward, kwargs)

    # -- Gymnasium API ----------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsType, dict[str, Any]]:
        """Start a conversation: the partner's first line (the sample's prompt) is the prompt.

        :param seed: seeds ``self.np_random``.
        :param options: as for :meth:`TextEnv.reset`.
        """
        obs, info = super().reset(seed=seed, options=options)
        self._reset_conversation()
        assert self._sample is not None
        self.messages = [{"role": PARTNER_ROLE, "content": self._sample.prompt}]
        self.partner.reset(self._sample, self.np_random)
        info["turn"] = 0
        return obs, info

    def step(self, action: Any) -> tuple[ObsType, float, bool, bool, dict[str, Any]]:
        """Append the agent's token; at a turn end, score the turn and append the partner's reply.

        :raises EpisodeError: before ``reset()`` or after the episode ended.
        :raises TypeError: the action is not an integer.
        :raises ValueError: the action is outside the vocabulary.
        """
        token = self._check_action(action)
        self._append([token], agent=True)
        self._generated.append(token)
        self._turn_ids.append(token)
        stopped = token in self._stop_ids
        full = self._used >= self.max_new_tokens
        if not (stopped or full or len(self._turn_ids) >= self.max_turn_tokens):
            return self._obs(), 0.0, False, False, {}
        return self._end_turn(stopped)

    def _end_turn(self, stopped: bool) -> tuple[ObsType, float, bool, bool, dict[str, Any]]:
        assert self._sample is not None
        ids = self._turn_ids[:-1] if stopped else self._turn_ids
        text = cast(str, self.tokenizer.decode(ids, skip_special_tokens=True))
        user = next(m["content"] for m in reversed(self.messages) if m["role"] == PARTNER_ROLE)
        self.messages.append({"role": AGENT_ROLE, "content": text})
        reply = self.judge_reply(self.partner.reply(self.partner_messages(), self._sample))
        turn = Turn(len(self._turns), tuple(self._turn_ids), text, user, reply)
        self._turns.append(turn)
        reward, metrics = self.score_turn(turn)
        self._turn_rewards.append(float(reward))
        self._turn_metrics.append(metrics)
        self._turn_ids = []
        if reply.text:
            self.messages.append({"role": PARTNER_ROLE, "content": reply.text})
        info: dict[str, Any] = {
            "turn": turn.index,
            "turn_text": text,
            "reply": reply.text or None,
            "turn_reward": float(reward),
            "turn_metrics": metrics,
        }
        end_reason = None
        if reply.done:
            end_reason = "goal" if reply.goal else "partner_end"
        elif len(self._turns) >= self.max_turns:
            end_reason = "turn_limit"
        else:
            reply_ids = self.reply_ids(reply.text, stopped)
            if self._used + len(reply_ids) + 1 > self.max_new_tokens:
                end_reason = "window_full"
            else:
                self._append(reply_ids, agent=False)
                info["reply_tokens"] = len(reply_ids)
        if end_reason is None:
            return self._obs(), float(reward), False, False, info
        self._done = True
        extra, episode_metrics = self.episode_reward(self._turns, end_reason)
        reward = float(reward) + float(extra)
        info.update(self._episode_info(end_reason, float(extra), episode_metrics))
        truncated = end_reason == "window_full"
        return self._obs(), reward, not truncated, truncated, info

    def _episode_info(
        self, end_reason: str, extra: float, episode_metrics: Mapping[str, float]
    ) -> dict[str, Any]:
        assert self._sample is not None
        metrics: dict[str, float] = {
            "return": float(sum(self._turn_rewards) + extra),
            "turns": float(len(self._turns)),
        }
        names = dict.fromkeys(k for m in self._turn_metrics for k in m)
        for name in names:
            values = [m[name] for m in self._turn_metrics if name in m]
            metrics[name] = float(np.mean(values))
        metrics.update({k: float(v) for k, v in episode_metrics.items()})
        return {
            "text": "\n".join(t.text for t in self._turns),
            "prompt": self._prompt_text,
            "references": list(self._sample.references),
            "metrics": metrics,
            "turns": [
                {
                    "text": t.text,
                    "user": t.user,
                    "reply": t.reply.text,
                    "reward": r,
                    "metrics": m,
                }
                for t, r, m in zip(self._turns, self._turn_rewards, self._turn_metrics)
            ],
            "conversation": [dict(m) for m in self.messages],
            "end_reason": end_reason,
            "num_new_tokens": len(self._generated),
            TOKEN_BUDGET_KEY: end_reason == "window_full",
        }

    def render(self) -> str | None:
        """With ``render_mode="ansi"``: the prompt, then the conversation after it as the window
        holds it, separated by ``" | "``."""
        if self.render_mode != "ansi":
            return None
        n = self._used
        tail = self._ids[len(self._ids) - n :] if n else self._ids[:0]
        return f"{self._prompt_text} | {self.tokenizer.decode(tail, skip_special_tokens=True)}"

    # -- helpers ----------------------------------------------------------------------------------

    def reply_ids(self, text: str, agent_stopped: bool) -> np.ndarray:
        """The ids appended for a partner reply: its text cut to ``max_reply_tokens``, in the
        template (tokenised once, cached per text).

        :param text: the reply.
        :param agent_stopped: whether the agent's turn ended on a stop token (with the chat
            template, an agent that wrote the end-of-turn token gets no second one; with the plain
            template, an agent turn not ending in a newline gets one before ``"User:"``).
        """
        last = self._turns[-1].ids[-1] if self._turns and self._turns[-1].ids else None
        ended_newline = last is not None and cast(str, self.tokenizer.decode([last])).endswith("\n")
        key_flag = (agent_stopped and last == self.eos_token_id) or ended_newline
        key = (text, key_flag)
        cached = self._reply_cache.get(key)
        if cached is not None:
            return cached
        cut = self.tokenizer.encode(text, add_special_tokens=False)[: self.max_reply_tokens]
        text = cast(str, self.tokenizer.decode(cut)).strip()
        if self.prompt_style == "chat":
            head, tail = self._chat_reply_frame()
            eos_text = self.tokenizer.eos_token or ""
            if key_flag and eos_text and head.startswith(eos_text):
                head = head[len(eos_text) :]
            string = head + text + tail
        else:
            sep = "" if ended_newline else self.plain_separator
            string = sep + self.plain_user_turn.format(text=text)
        ids = np.asarray(self.tokenizer.encode(string, add_special_tokens=False), dtype=np.int64)
        if len(self._reply_cache) < 10_000:
            self._reply_cache[key] = ids
        return ids

    @functools.cached_property
    def _chat_reply_frame_strings(self) -> tuple[str, str]:
        agent, reply = "\x1fAGENT\x1f", "\x1fREPLY\x1f"
        messages = [
            {"role": PARTNER_ROLE, "content": "x"},
            {"role": AGENT_ROLE, "content": agent},
            {"role": PARTNER_ROLE, "content": reply},
        ]
        text = cast(
            str,
            self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            ),
        )
        after = text[text.index(agent) + len(agent) :]
        head, _, tail = after.partition(reply)
        return head, tail

    def _chat_reply_frame(self) -> tuple[str, str]:
        """The chat template's text before and after a reply that follows an agent turn."""
        return self._chat_reply_frame_strings

    def agent_token_mask(self) -> np.ndarray:
        """``(window,)`` bool: the columns of the current window that hold the agent's own tokens
        (the actions, in order)."""
        return self._agent_mask.astype(bool)

    @property
    def turns(self) -> list[Turn]:
        """The finished turns of the current episode."""
        return list(self._turns)

    def _append(self, ids: Sequence[int] | np.ndarray, *, agent: bool) -> None:
        n = len(ids)
        if n == 0:
            return
        self._ids[:-n] = self._ids[n:]
        self._ids[-n:] = ids
        self._mask[:-n] = self._mask[n:]
        self._mask[-n:] = 1
        self._agent_mask[:-n] = self._agent_mask[n:]
        self._agent_mask[-n:] = 1 if agent else 0
        self._used += n

    def _reset_conversation(self) -> None:
        self._turn_ids = []
        self._turns: list[Turn] = []
        self._turn_rewards: list[float] = []
        self._turn_metrics: list[dict[str, float]] = []
        self._used = 0
        self._agent_mask = np.zeros(len(self._ids), dtype=np.int8)
        self.messages = []

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_chat_reply_frame_strings", None)
        return state


__all__ = [
    "AGENT_ROLE",
    "END_REASONS",
    "PARTNER_ROLE",
    "DataPartner",
    "ModelPartner",
    "MultiTurnEnv",
    "Partner",
    "PartnerReply",
    "ScriptedPartner",
    "Turn",
    "conversation_lines",
    "list_partners",
    "make_partner",
    "register_partner",
    "shared_partner_model",
]
