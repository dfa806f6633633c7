"""Shared test set-up: offline, a private cache, tiny models."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Tests never reach the hub: skip the look-up before anything imports lm_gym.
os.environ.setdefault("LM_GYM_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run the test on one torch thread (tiny models: faster and deterministic), then restore.

    Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: The built-in random-init test models: GPT-2 (learned positions, one key/value head per query
#: head) and Llama (rotary positions, grouped key/value heads, SmolLM2's 49152-token vocabulary).
TINY_LMS = ("tiny-gpt2", "tiny-llama")


@pytest.fixture(scope="module", params=TINY_LMS)
def tiny_lm(request: pytest.FixtureRequest) -> str:
    """Each built-in tiny test model in turn: a model name for ``policy_kwargs["model"]``; build
    its env with ``tokenizer=lm_gym.models.tokenizer_name_for_model(name)``."""
    return request.param


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random GPT-2 sequence classifier with the real GPT-2 tokenizer, saved to a folder."""
    from lm_gym.models import load_tokenizer, save_tiny_classifier

    assert load_tokenizer("gpt2")("Hello world")["input_ids"] == [15496, 995]
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier"))
