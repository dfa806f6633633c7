"""Private helpers of the model-based scorers (classifier, embeddings). Imports torch lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_pretrained(loader: Any, model: str | Path, what: str, **kwargs: Any) -> Any:
    """Call ``loader.from_pretrained(model)`` and turn a failure into an error that says what
    was being loaded and how to load it offline.

    :param loader: a transformers ``Auto*`` class.
    :param model: a hub id or a local folder.
    :param what: what the model is for, for the error message.
    :param kwargs: passed to ``from_pretrained``.
    :return: the loaded object.
    """
    from lm_gym.models import try_from_pretrained

    obj, err = try_from_pretrained(loader, str(model), **kwargs)
    if obj is None:
        raise OSError(
            f"could not load the {what} {str(model)!r} with {loader.__name__}: "
            f"{err or 'the hub is unreachable or offline mode is on'}\n"
            "Pass model= a hub id (needs network access to the Hugging Face hub) or a local "
            "folder written by save_pretrained()."
        ) from err
    return obj


def max_positions(config: Any, max_length: int) -> int:
    """The usable input length: ``max_length`` capped by the model's position embeddings.

    :param config: a transformers model config.
    :param max_length: the requested maximum number of tokens.
    :return: the smaller of the two (``max_length`` when the config has no limit).
    """
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(max_length, int(limit)) if limit else max_length
