"""Shared test set-up: offline, a private cache, tiny models."""

from __future__ import annotations

import os

# Tests never reach the hub: skip the look-up before anything imports lm_gym.
os.environ.setdefault("LM_GYM_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
