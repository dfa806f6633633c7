"""Export a trained causal-LM policy as a Hugging Face model folder (the value head is dropped;
LoRA adapters are merged into the weights).

The folder loads with ``AutoModelForCausalLM.from_pretrained(folder)`` and generates with
``generate()``; with a tokenizer, ``AutoTokenizer.from_pretrained(folder)`` works too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.networks.policies import lm_network

__all__ = ["export_pretrained"]


def export_pretrained(
    model_or_policy: Any,
    folder: str | Path,
    tokenizer: Any = None,
    *,
    safe_serialization: bool = True,
) -> Path:
    """Write the policy's causal LM (trunk and LM head, no value head) as a HF folder.

    :param model_or_policy: an SB3 algorithm (``model.policy`` is used), a policy of
        :mod:`agents.networks.policies` (DQN: the online Q-network), or a
        :class:`CausalLMActorCritic`.
    :param folder: output folder (created).
    :param tokenizer: ``None`` (no tokenizer files), a tokenizer name for
        :func:`lm_gym.models.load_tokenizer` (e.g. ``"gpt2"``), or a tokenizer object.
    :param safe_serialization: write ``model.safetensors`` (else ``pytorch_model.bin``).
    :return: the folder.
    :raises TypeError: no causal-LM network inside ``model_or_policy``.
    """
    policy = getattr(model_or_policy, "policy", model_or_policy)
    net = lm_network(policy)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lm = net.merged_lm()  # with LoRA: a copy with the adapters merged (loads without peft)
    if tokenizer is not None:
        if isinstance(tokenizer, str):
            from lm_gym.models import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        tokenizer.save_pretrained(folder)
        gen = getattr(lm, "generation_config", None)
        if gen is not None and gen.pad_token_id is None and tokenizer.pad_token_id is not None:
            gen.pad_token_id = tokenizer.pad_token_id
    lm.save_pretrained(folder, safe_serialization=safe_serialization)
    return folder
