"""Open-ended text generation: continue a prompt, rewarded for positive sentiment.

Description
    The IMDB positive-continuation task of RL4LMs and TRL. The prompt is the opening words of a
    movie review; the agent writes the continuation one token at a time and is rewarded for how
    positive it is. Offline, the reviews are the 200 labelled sentences shipped with gensim and the
    reward is VADER's compound score mapped to [0, 1]; online (``LMTextIMDB-v0``) the prompts are
    IMDB reviews and the reward is a sentiment classifier's probability of the positive label.

Observation
    ``Dict(input_ids=Box(0, V-1, (P+T,), int64), attention_mask=Box(0, 1, (P+T,), int64))``: the
    prompt and the tokens so far, right-aligned, padded on the left. V = 50257 (GPT-2).

Action
    ``Discrete(V)``: the next token id.

Reward
    0.0 at every step but the last; at episode end the ``sentiment`` score of the continuation, in
    [0, 1]. ``info["metrics"]`` adds distinct-1 and distinct-2 of the continuation.

Episode end
    Terminated on EOS; truncated after ``max_new_tokens`` (48) tokens.

Arguments
    Every :class:`lm_gym.envs.core.TextEnv` option; defaults: ``dataset="movie-reviews"``,
    ``reward="sentiment"``, ``prompt_template="plain"``, ``max_prompt_tokens=32``,
    ``max_new_tokens=48``.

    ``prompt_template="plain"`` (base models such as GPT-2): the opening alone, which the model
    continues. ``prompt_template="chat"`` (instruct models such as ``smollm2-135m``): the
    tokenizer's chat template with the system message ``"You write short movie reviews."`` and the
    user message ``"Continue this movie review positively:\\n\\n{opening}"``, so the reply is a
    continuation written on request (it need not pick up mid-sentence); ``max_prompt_tokens`` then
    defaults to 32 plus the template's own tokens.

Registered ids
    ``LMText-v0`` (offline), ``LMTextIMDB-v0`` (online: ``imdb`` through ``datasets``, reward
    ``sentiment-classifier`` with ``lvwerra/distilbert-imdb``).

Version history
    v0: first release; ``prompt_template="chat"`` added later (the default, ``"plain"``, is the
    first release's prompt).
"""

from __future__ import annotations

from typing import Any

from lm_gym.envs.core import TextEnv


class TextGenerationEnv(TextEnv):
    """Continue a review opening; the reward is the sentiment of the continuation."""

    chat_system = "You write short movie reviews."
    chat_user = "Continue this movie review positively:\n\n{prompt}"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            dataset="movie-reviews",
            reward="sentiment",
            metrics=["distinct-1", "distinct-2"],
            max_prompt_tokens=32,
            max_new_tokens=48,
        )
        return cfg
