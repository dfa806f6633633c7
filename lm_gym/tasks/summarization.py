"""Summarisation: write a one-line summary of a document, rewarded by ROUGE-L.

Description
    The prompt is a document followed by ``TL;DR:``; the agent writes a summary one token at a
    time. Offline, the documents are Python standard-library docstring bodies and the reference is
    the docstring's one-line summary (``stdlib-docstrings``). Online, CNN/DailyMail and XSum through
    ``datasets``.

Observation
    ``Dict(input_ids=Box(0, V-1, (P+T,), int64), attention_mask=Box(0, 1, (P+T,), int64))``, as
    for every lm-gym env.

Action
    ``Discrete(V)``: the next token id.

Reward
    At episode end the ROUGE-L F-measure (0-1, rouge-score with stemming) against the reference;
    ``info["metrics"]`` adds ROUGE-1, ROUGE-2 and ROUGE-Lsum. 0.0 at every other step.

Episode end
    Terminated on EOS or on a token containing a newline; truncated after ``max_new_tokens`` (32).

Arguments
    Every :class:`lm_gym.envs.core.TextEnv` option; defaults: ``dataset="stdlib-docstrings"``,
    ``reward="rougeL"``, ``prompt_template="plain"``, ``max_prompt_tokens=256``,
    ``max_new_tokens=32``, ``stop_strings=["\\n"]``. Longer documents are cut from the left.

    ``prompt_template="plain"`` (base models such as GPT-2): the document then ``TL;DR:``,
    ``"{document}\\nTL;DR:"``. ``prompt_template="chat"`` (instruct models such as
    ``smollm2-135m``): the tokenizer's chat template with the system message ``"You are a helpful
    assistant that writes short summaries."`` and the user message ``"Summarise the following text
    in one sentence.\\n\\n{document}"``; ``max_prompt_tokens`` then defaults to 256 plus the
    template's own tokens, and a long document is cut from the left inside the user message.
    SmolLM2-135M-Instruct answers the plain prompt with a newline at once: use ``"chat"``.

Registered ids
    ``LMSummarize-v0`` (offline), ``LMSummarizeCNN-v0`` (online, ``cnn_dailymail`` 3.0.0, 512
    prompt tokens, 64 new), ``LMSummarizeXSum-v0`` (online, ``xsum``, 512 prompt tokens).

Version history
    v0: first release; ``prompt_template="chat"`` added later (the default, ``"plain"``, is the
    first release's prompt).
"""

from __future__ import annotations

from typing import Any

from lm_gym.envs.core import TextEnv


class SummarizationEnv(TextEnv):
    """Summarise the prompt's document; the reward is ROUGE-L against the reference summary."""

    plain_prompt = "{prompt}\nTL;DR:"
    chat_system = "You are a helpful assistant that writes short summaries."
    chat_user = "Summarise the following text in one sentence.\n\n{prompt}"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            dataset="stdlib-docstrings",
            reward="rougeL",
            metrics=["rouge1", "rouge2", "rougeLsum"],
            max_prompt_tokens=256,
            max_new_tokens=32,
            stop_strings=["\n"],
        )
        return cfg
