"""The GPT-2 actor-critic as an RLlib ``RLModule`` (one network, two front ends: SB3 and RLlib)."""

from __future__ import annotations

import pickle
from collections.abc import Collection, Mapping
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.torch_utils import convert_to_torch_tensor

from agents.network import GPT2ActorCritic, RolloutKVCache, check_lm_spaces
from agents.rllib.policy import DEFAULT_MODEL, state_nbytes, tied_state_keys

__all__ = ["GPT2RLModule", "weight_sync_bytes"]


class GPT2RLModule(TorchRLModule, ValueFunctionAPI):
    """RLlib ``RLModule`` over :class:`agents.network.GPT2ActorCritic`, for PPO (and APPO, IMPALA).

    The observation is an lm-gym window ``{"input_ids", "attention_mask"}`` (int64, left-padded, so
    the last position is the newest real token); the action space ``Discrete(V)`` must match the
    model's vocabulary. The action distribution's inputs are the LM head's logits at the last
    position, the value is the value head on the same trunk's hidden state; the train forward
    returns that hidden state as ``embeddings`` so that PPO's value loss does not run the trunk
    again. Sampling calls (no grad) keep a :class:`~agents.network.RolloutKVCache`, so each step
    computes one new position per env.

    The module's state (what RLlib sends to every env runner after each update, and what
    checkpoints hold) leaves out tied copies: GPT-2's LM head is its token embedding, sent once.

    ``model_config`` keys (JSON-serialisable, so every node can rebuild the module):

    * ``model``: causal LM name or folder for :func:`lm_gym.models.load_causal_lm` (default
      ``"tiny-gpt2"``). A folder must exist at the same path on every node.
    * ``value_hidden``: width of the value head's hidden layer (0, default: one linear layer).
    * ``bf16``: trunk under bfloat16 autocast on CUDA.
    * ``kv_cache``: keep the KV cache in sampling calls (default True).
    * ``load_kwargs``: keyword arguments for :func:`lm_gym.models.load_causal_lm`.

    :raises ValueError: the spaces are not an lm-gym env's, or the vocabulary does not match.
    """

    def setup(self) -> None:
        """Build the network from ``model_config`` and check it against the spaces."""
        cfg = dict(self.model_config or {})
        window = check_lm_spaces(self.observation_space, self.action_space, owner="GPT2RLModule")
        self.net = GPT2ActorCritic(
            cfg.get("model", DEFAULT_MODEL),
            value_hidden=int(cfg.get("value_hidden", 0)),
            bf16=bool(cfg.get("bf16", False)),
            load_kwargs=cfg.get("load_kwargs"),
        )
        vocab = int(self.action_space.n)  # a NumPy integer on env runners: transformers wants int
        if self.net.vocab_size != vocab:
            raise ValueError(
                f"The model's vocabulary ({self.net.vocab_size} tokens) does not match the env's "
                f"action space Discrete({vocab}): use the model of the env's tokenizer."
            )
        max_pos = getattr(self.net.lm.config.get_text_config(), "max_position_embeddings", None)
        if max_pos is not None and window > max_pos:
            raise ValueError(
                f"The observation window ({window} tokens) is longer than the model's context "
                f"({max_pos}): lower max_prompt_tokens + max_new_tokens."
            )
        self._kv_cache = RolloutKVCache() if cfg.get("kv_cache", True) else None
        self._tied_keys = tuple(tied_state_keys(self))

    # -- forward passes -------------------------------------------------------------------------

    @staticmethod
    def _ids_and_mask(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        obs = batch[Columns.OBS]
        if not isinstance(obs, Mapping) or "input_ids" not in obs or "attention_mask" not in obs:
            raise TypeError(
                "GPT2RLModule takes lm-gym observations {'input_ids', 'attention_mask'}; got "
                f"{type(obs).__name__}. Do not flatten the observation in a connector."
            )
        return obs["input_ids"].long(), obs["attention_mask"].long()

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Sampling and inference: logits at the last position (KV-cached without grad)."""
        ids, mask = self._ids_and_mask(batch)
        cache = self._kv_cache if not torch.is_grad_enabled() else None
        hidden = self.net.last_hidden(ids, mask, cache)
        return {Columns.ACTION_DIST_INPUTS: self.net.logits_from_hidden(hidden)}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Training: logits and the hidden state (reused by :meth:`compute_values`)."""
        ids, mask = self._ids_and_mask(batch)
        hidden = self.net.last_hidden(ids, mask)
        return {
            Columns.ACTION_DIST_INPUTS: self.net.logits_from_hidden(hidden),
            Columns.EMBEDDINGS: hidden,
        }

    def compute_values(self, batch: dict[str, Any], embeddings: Any | None = None) -> torch.Tensor:
        """Values ``(B,)`` from the value head on the trunk's last hidden state.

        :param batch: a batch with ``Columns.OBS``.
        :param embeddings: the hidden states of :meth:`_forward_train` (then the trunk is skipped).
        """
        if embeddings is None:
            ids, mask = self._ids_and_mask(batch)
            embeddings = self.net.last_hidden(ids, mask)
        return self.net.value_from_hidden(embeddings)

    # -- state: tied weights are sent once --------------------------------------------------------

    def get_state(
        self,
        components: str | Collection[str] | None = None,
        *,
        not_components: str | Collection[str] | None = None,
        inference_only: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The module's weights as NumPy arrays, without tied copies (see
        :func:`~agents.rllib.policy.tied_state_keys`).

        :param components: unused (the module has no sub-components).
        :param not_components: unused.
        :param inference_only: RLlib's flag for env-runner syncs; the whole network is sent (the
            value head is a few hundred numbers).
        """
        state = self.state_dict()
        for key in self._tied_keys:
            state.pop(key, None)
        return convert_to_numpy(state)

    def set_state(self, state: dict[str, Any]) -> None:
        """Load weights from :meth:`get_state`'s output (tied keys may be absent).

        :param state: key to array.
        :raises ValueError: a key other than a tied one is missing.
        """
        missing, _ = self.load_state_dict(convert_to_torch_tensor(state), strict=False)
        missing = [k for k in missing if k not in self._tied_keys]
        if missing:
            raise ValueError(
                f"GPT2RLModule state is missing {missing[:5]}{'...' if len(missing) > 5 else ''}: "
                "it was saved from a different model."
            )


def weight_sync_bytes(module: GPT2RLModule) -> dict[str, int]:
    """What one weight sync of ``module`` costs, measured on its state.

    :param module: a built module.
    :return: ``{"state": bytes of the state as sent (tied copy dropped), "state_with_tied":
        bytes with every ``state_dict`` key (what a stock ``TorchRLModule`` sends), "pickled" and
        "pickled_with_tied": the same pickled (what goes through Ray's object store)}``.
    """
    state = module.get_state(inference_only=True)
    full = convert_to_numpy(module.state_dict())
    return {
        "state": state_nbytes(state),
        "state_with_tied": state_nbytes(full),
        "pickled": len(pickle.dumps(state, protocol=5)),
        "pickled_with_tied": len(pickle.dumps(full, protocol=5)),
    }
