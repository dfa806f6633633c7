"""Baselines that learn nothing: random tokens, and the untrained LM's greedy, sampled and beam decoding.

These are the zero-shot rows of the GRUE tables (RL4LMs): what the language model does before any
RL. They act step by step from the observation, like every agent of the zoo, so they run in the same
env loops, evaluations and benchmarks:

* :class:`RandomAgent`: a uniformly random token.
* :class:`LMDecodingAgent`: the LM's next-token distribution at the observation, decoded greedily or
  sampled with temperature, top-k and top-p. A per-env KV cache
  (:class:`agents.networks.actor_critic.RolloutKVCache`) computes only the new token at each step.
* :class:`BeamSearchAgent`: beam search at the token level. At the start of an episode it runs
  ``model.generate(num_beams=k)`` from the prompt and then replays the chosen tokens one per step;
  when an observation is not on the planned path (another agent took over, or the env was reset
  to another prompt) it plans again from that observation.

``learn`` returns at once (``num_timesteps`` stays 0). ``deterministic`` is ignored by the decoding
agents: their decoding rule *is* the agent (``"sample"`` keeps sampling in a deterministic
evaluation; use ``"greedy"`` for the greedy policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from agents.common.base import BaseAgent, LMAgent, ObsDict, batch_obs, real_tokens, stop_ids

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

__all__ = ["BeamSearchAgent", "LMDecodingAgent", "RandomAgent", "warp_logits"]


class RandomAgent(BaseAgent):
    """Uniformly random tokens (the floor of every table).

    :param env: the env.
    :param seed: seeds the draws.
    :param verbose: unused.
    """

    def _predict_batch(self, obs: ObsDict, deterministic: bool) -> np.ndarray:
        """Uniformly random tokens (``deterministic`` is ignored)."""
        return self.rng.integers(0, self.n_actions, size=len(obs["input_ids"]))

    def action_log_probs(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """``log(1 / V)`` for every action, ``(batch, V)``."""
        obs, _ = batch_obs(observations)
        n = len(obs["input_ids"])
        return np.full((n, self.n_actions), -np.log(self.n_actions), dtype=np.float32)


def warp_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Log-probabilities after temperature, top-k and top-p (nucleus) filtering, as HF's warpers.

    :param logits: ``(batch, V)`` logits.
    :param temperature: divides the logits (> 0).
    :param top_k: keep the k most likely tokens (0: all).
    :param top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p``
        (1.0: all); the most likely token is always kept.
    :return: ``(batch, V)`` log-probabilities, ``-inf`` for filtered tokens.
    """
    import torch

    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        remove = cum - torch.softmax(sorted_logits, -1) >= top_p  # mass before this token
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return torch.log_softmax(logits, -1)


class LMDecodingAgent(LMAgent):
    """The untrained language model, decoded greedily or by sampling, one token per step.

    :param env: an lm-gym env.
    :param model: causal LM name or folder (see :func:`agents.common.base.model_for_env`) or a
        model.
    :param greedy: take the most likely token (otherwise sample).
    :param temperature: sampling temperature (> 0).
    :param top_k: sample among the k most likely tokens (0: all).
    :param top_p: nucleus sampling threshold (1.0: off).
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param seed: seeds the sampling.
    :param verbose: unused.
    :raises ValueError: bad decoding options, or a model whose vocabulary does not fit the env.
    """

    def __init__(
        self,
        env: gym.Env,
        model: str | PreTrainedModel = "gpt2",
        *,
        greedy: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        device: str = "auto",
        seed: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(env, seed=seed, verbose=verbose)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        self.greedy = bool(greedy)
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self._init_lm(model, device)
        #: whether the weights changed since construction (then :meth:`save` writes them)
        self.weights_changed = False

    def _log_probs(self, observation: Mapping[str, Any]) -> torch.Tensor:
        import torch

        logits = self._logits(observation)
        if self.greedy:
            out = torch.full_like(logits, float("-inf"))
            out.scatter_(1, logits.argmax(1, keepdim=True), 0.0)
            return out
        return warp_logits(logits, self.temperature, self.top_k, self.top_p)

    def _predict_batch(self, obs: ObsDict, deterministic: bool) -> np.ndarray:
        """The argmax (greedy) or a draw from the warped distribution (``deterministic`` is
        ignored: see the module docstring)."""
        return self._choose(self._log_probs(obs), self.greedy, log_probs=True)

    def action_log_probs(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """The decoding distribution's log-probabilities, ``(batch, V)`` (greedy: one-hot)."""
        return self._log_probs(observations).cpu().numpy()

    def _save_state(self, folder: Path) -> None:
        if self.weights_changed:
            self.lm.save_pretrained(folder / "model")

    def _load_state(self, folder: Path) -> None:
        if (folder / "model").is_dir():
            from transformers import AutoModelForCausalLM

            loaded = AutoModelForCausalLM.from_pretrained(folder / "model")
            self.lm.load_state_dict(loaded.state_dict())
            self.weights_changed = True
            self.cache.reset()


class BeamSearchAgent(LMDecodingAgent):
    """Token-level beam search: plan with ``generate(num_beams=k)`` at the prompt, replay per step.

    :param env: an lm-gym env.
    :param model: causal LM name, folder or model.
    :param num_beams: beam width.
    :param length_penalty: HF's exponential length penalty of finished beams.
    :param no_repeat_ngram_size: forbid repeating n-grams of this size (0: off).
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param seed: unused (beam search is deterministic); recorded.
    :param verbose: unused.
    """

    def __init__(
        self,
        env: gym.Env,
        model: str | PreTrainedModel = "gpt2",
        *,
        num_beams: int = 4,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        device: str = "auto",
        seed: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(env, model, greedy=True, device=device, seed=seed, verbose=verbose)
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}.")
        self.num_beams = int(num_beams)
        self.length_penalty = float(length_penalty)
        self.no_repeat_ngram_size = int(no_repeat_ngram_size)
        self._stop_ids = stop_ids(env)
        self._max_new_tokens = int(getattr(env.unwrapped, "max_new_tokens", 32))
        self._pad_id = int(getattr(env.unwrapped, "pad_token_id", self._stop_ids[0]))
        #: context (real token ids) -> the planned next token
        self._plan: dict[tuple[int, ...], int] = {}
        #: number of times a plan was made (one per episode when the plan is followed)
        self.plans_made = 0

    def _replan(self, context: tuple[int, ...]) -> None:
        import torch

        if len(self._plan) > 50_000:
            self._plan.clear()
        ids = torch.tensor([context], device=self._device)
        with torch.no_grad():
            # transformers types PreTrainedModel without GenerationMixin (causal LMs have it)
            out = self.lm.generate(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                num_beams=self.num_beams,
                num_return_sequences=1,
                max_new_tokens=self._max_new_tokens,
                do_sample=False,
                early_stopping=True,
                length_penalty=self.length_penalty,
                no_repeat_ngram_size=self.no_repeat_ngram_size,
                eos_token_id=self._stop_ids,
                pad_token_id=self._pad_id,
            )
        new = [int(t) for t in out[0, len(context) :]]
        stops = set(self._stop_ids)
        for j, token in enumerate(new):
            self._plan[context + tuple(new[:j])] = token
            if token in stops:
                break
        if not new:  # generate produced nothing: end the episode
            self._plan[context] = self._stop_ids[0]
        self.plans_made += 1

    def _act(self, row: Mapping[str, np.ndarray]) -> int:
        context = tuple(real_tokens(row))
        if context not in self._plan:
            self._replan(context)
        return self._plan[context]

    def _predict_batch(self, obs: ObsDict, deterministic: bool) -> np.ndarray:
        """The next token of the beam-search plan through each observation (beam search is
        deterministic)."""
        return np.array(
            [
                self._act({"input_ids": i, "attention_mask": m})
                for i, m in zip(obs["input_ids"], obs["attention_mask"])
            ],
            dtype=np.int64,
        )

    def action_log_probs(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """One-hot (in log space) of the planned token, ``(batch, V)``."""
        actions, _ = self.predict(observations)
        actions = np.atleast_1d(actions)
        out = np.full((len(actions), self.n_actions), -np.inf, dtype=np.float32)
        out[np.arange(len(actions)), actions] = 0.0
        return out
