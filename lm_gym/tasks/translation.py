"""Translation: write the translation of an English text, rewarded by chrF against the reference.

Description
    The prompt asks for the translation of a short English text; the agent writes it one token at a
    time. Offline, the pairs are the English to German user-interface strings of Django's message
    catalogues (``django-en-de``; other languages: ``django-en-fr``, ``django-en-es``, ...). Online,
    WMT16 and IWSLT 2017 through ``datasets``.

Observation
    ``Dict(input_ids=Box(0, V-1, (P+T,), int64), attention_mask=Box(0, 1, (P+T,), int64))``, as
    for every lm-gym env.

Action
    ``Discrete(V)``: the next token id.

Reward
    At episode end the sentence-level chrF (0-100, sacrebleu) of the output against the reference;
    ``info["metrics"]`` adds BLEU and TER. 0.0 at every other step.

Episode end
    Terminated on EOS or on a token containing a newline; truncated after ``max_new_tokens`` (32).

Arguments
    Every :class:`lm_gym.envs.core.TextEnv` option; defaults: ``dataset="django-en-de"``,
    ``reward="chrf"``, ``prompt_template="plain"``, ``max_prompt_tokens=64``,
    ``max_new_tokens=32``, ``stop_strings=["\\n"]``.

    ``prompt_template="plain"`` (base models such as GPT-2):
    ``"Translate English to German: {source}\\nGerman:"``. ``prompt_template="chat"`` (instruct
    models such as ``smollm2-135m``): the tokenizer's chat template with the system message
    ``"You are a translator. Reply with the German translation only."`` and the user message
    ``"Translate to German:\\n\\n{source}"``; ``max_prompt_tokens`` then defaults to 64 plus the
    template's own tokens. Both prompts name German: another language pair
    (``dataset="django-en-fr"``) needs a format string of one's own (plain) or a subclass that sets
    :attr:`chat_system` and :attr:`chat_user`.

Registered ids
    ``LMTranslate-v0`` (offline, English to German), ``LMTranslateWMT16-v0`` (online, ``wmt16``
    de-en, English to German), ``LMTranslateIWSLT-v0`` (online, ``iwslt2017`` en-de).

Version history
    v0: first release; ``prompt_template="chat"`` added later (the default, ``"plain"``, is the
    first release's prompt).
"""

from __future__ import annotations

from typing import Any

from lm_gym.envs.core import TextEnv


class TranslationEnv(TextEnv):
    """Translate the prompt's text; the reward is chrF against the reference translation."""

    plain_prompt = "Translate English to German: {prompt}\nGerman:"
    chat_system = "You are a translator. Reply with the German translation only."
    chat_user = "Translate to German:\n\n{prompt}"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            dataset="django-en-de",
            reward="chrf",
            metrics=["bleu", "ter"],
            max_prompt_tokens=64,
            max_new_tokens=32,
            stop_strings=["\n"],
        )
        return cfg
