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
    ``reward="chrf"``, ``prompt_template="Translate English to German: {prompt}\\nGerman:"``,
    ``max_prompt_tokens=64``, ``max_new_tokens=32``, ``stop_strings=["\\n"]``.

Registered ids
    ``LMTranslate-v0`` (offline, English to German), ``LMTranslateWMT16-v0`` (online, ``wmt16``
    de-en, English to German), ``LMTranslateIWSLT-v0`` (online, ``iwslt2017`` en-de).

Version history
    v0: first release.
"""

from __future__ import annotations

from typing import Any

from lm_gym.envs.core import TextEnv


class TranslationEnv(TextEnv):
    """Translate the prompt's text; the reward is chrF against the reference translation."""

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(
            dataset="django-en-de",
            reward="chrf",
            metrics=["bleu", "ter"],
            prompt_template="Translate English to German: {prompt}\nGerman:",
            max_prompt_tokens=64,
            max_new_tokens=32,
            stop_strings=["\n"],
        )
        return cfg
