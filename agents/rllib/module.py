"""The causal-LM actor-critic as an RLlib ``RLModule`` (one network, two front ends: SB3 and
RLlib). ``GPT2RLModule`` is :class:`LMRLModule`'s former name (an alias)."""

from __future__ import annotations

import pickle
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.torch_utils import convert_to_torch_tensor

from agents.networks.actor_critic import (
    CausalLMActorCritic,
    RolloutKVCache,
    check_lm_spaces,
    check_model_fits,
    left_padded_rows,
    packed_hidden,
)
from agents.rllib.checkpoint import DEFAULT_MODEL, state_nbytes, tied_state_keys

__all__ = ["GPT2RLModule", "LMRLModule", "episode_last_hidden", "weight_sync_bytes"]


def episode_last_hidden(
    net: CausalLMActorCritic, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, int]]:
    """The trunk's hidden state at the last position of each window, one forward per episode.

    The same result as ``net.last_hidden(input_ids, attention_mask)`` (up to float rounding) at a
    fraction of the cost, the idea of :class:`agents.algorithms.ppo.EpisodePPO` applied to a batch
    of unordered rows (RLlib's shuffled minibatches carry no episode index): lm-gym windows are
    left-padded and each step appends one token, so the real tokens of an episode's earlier
    observation are a prefix of a later one's, and the causal LM's hidden state at a row's last
    token is the hidden state of that position in any longer sequence with the same prefix. Rows are
    grouped by content: each row whose real tokens are a prefix of a longer row's joins that row's
    *context* (any row with those tokens serves, of any episode); the contexts' real tokens are
    packed left-aligned, right-padded to the longest, and the trunk runs once over them (positions
    ``0..n-1``, as the left-padded windows give their real tokens); each row reads its hidden state
    at position ``n_real - 1``. A row whose window is not left-padded (no lm-gym observation) is
    computed the stock way. No episode boundary or batch cut matters: rows of an episode cut by a
    batch boundary simply form a shorter context.

    :param net: the actor-critic network.
    :param input_ids: ``(B, W)`` ids (any integer dtype).
    :param attention_mask: ``(B, W)``.
    :return: hidden states ``(B, hidden)``, and ``{"rows", "sequences", "positions",
        "stock_positions"}``: rows, trunk sequences and token positions run, and the positions the
        stock per-row forward runs (``rows * W``).
    """
    ids = input_ids.long()
    mask = attention_mask.long()
    rows, width = ids.shape
    ids_np = ids.detach().cpu().numpy()
    n_real, left_padded = left_padded_rows(mask.detach().cpu().numpy())

    # Longest rows first: each row either continues a context seen already or starts one.
    context_of = np.full(rows, -1, dtype=np.int64)
    contexts: list[int] = []
    prefixes: dict[bytes, int] = {}
    for i in np.argsort(-n_real, kind="stable"):
        if not left_padded[i]:
            continue
        real = ids_np[i, width - n_real[i] :]
        c = prefixes.get(real.tobytes())
        if c is None:
            c = len(contexts)
            contexts.append(int(i))
            for k in range(1, len(real) + 1):
                prefixes.setdefault(real[:k].tobytes(), c)
        context_of[i] = c

    device = ids.device
    matched = np.flatnonzero(context_of >= 0)
    other = np.flatnonzero(context_of < 0)
    parts, order = [], []
    positions = 0
    if len(matched):
        ctx = np.asarray(contexts, dtype=np.int64)
        lengths = torch.as_tensor(n_real[ctx], device=device)
        span = int(lengths.max())
        at_row = torch.as_tensor(context_of[matched], device=device)
        at_col = torch.as_tensor(n_real[matched] - 1, device=device)
        parts.append(
            packed_hidden(
                net, ids, torch.as_tensor(ctx, device=device), lengths, lengths, at_row, at_col
            )
        )
        order.append(matched)
        positions += len(ctx) * span
    if len(other):
        sel = torch.as_tensor(other, device=device)
        parts.append(net.last_hidden(ids[sel], mask[sel]))
        order.append(other)
        positions += len(other) * width
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    flat = np.concatenate(order)
    if not (flat == np.arange(rows)).all():
        out = out[torch.as_tensor(np.argsort(flat), device=device)]
    stats = {
        "rows": rows,
        "sequences": len(contexts) + len(other),
        "positions": positions,
        "stock_positions": rows * width,
    }
    return out, stats


class LMRLModule(TorchRLModule, ValueFunctionAPI):
    """RLlib ``RLModule`` over :class:`agents.networks.actor_critic.CausalLMActorCritic` (any causal
    LM: GPT-2, Llama, ...), for PPO (and APPO, IMPALA).

    The observation is an lm-gym window ``{"input_ids", "attention_mask"}`` (int64, left-padded, so
    the last position is the newest real token); the action space ``Discrete(V)`` must match the
    model's vocabulary. The action distribution's inputs are the LM head's logits at the last
    position, the value is the value head on the same trunk's hidden state; the train forward
    returns that hidden state as ``embeddings`` so that PPO's value loss does not run the trunk
    again. Training batches run one trunk forward per episode, not one per transition
    (:func:`episode_last_hidden`). Sampling calls (no grad) keep a
    :class:`~agents.networks.actor_critic.RolloutKVCache`, so each step computes one new position
    per env.

    The module's state (what RLlib sends to every env runner after each update, and what
    checkpoints hold) leaves out tied copies: a tied LM head (GPT-2's, SmolLM2's) is the token
    embedding, sent once.

    ``model_config`` keys (JSON-serialisable, so every node can rebuild the module):

    * ``model``: causal LM name or folder for :func:`lm_gym.models.load_causal_lm` (default
      ``"tiny-gpt2"``). A folder must exist at the same path on every node.
    * ``value_hidden``: width of the value head's hidden layer (0, default: one linear layer).
    * ``bf16``: trunk under bfloat16 autocast on CUDA.
    * ``kv_cache``: keep the KV cache in sampling calls (default True).
    * ``episode_forward``: evaluate training batches (the train forward, and the value pass of
      PPO's advantage estimation) with one trunk forward per episode instead of one full-window
      forward per transition (default True; see :func:`episode_last_hidden`). Same numbers up
      to float rounding.
    * ``load_kwargs``: keyword arguments for :func:`lm_gym.models.load_causal_lm`.

    :raises ValueError: the spaces are not an lm-gym env's, or the vocabulary does not match.
    """

    def setup(self) -> None:
        """Build the network from ``model_config`` and check it against the spaces."""
        cfg = dict(self.model_config or {})
        window = check_lm_spaces(self.observation_space, self.action_space, owner="LMRLModule")
        model = cfg.get("model", DEFAULT_MODEL)
        self.net = CausalLMActorCritic(
            model,
            value_hidden=int(cfg.get("value_hidden", 0)),
            bf16=bool(cfg.get("bf16", False)),
            load_kwargs=cfg.get("load_kwargs"),
        )
        check_model_fits(self.net, self.action_space, window, model)
        self._kv_cache = RolloutKVCache() if cfg.get("kv_cache", True) else None
        self._episode_forward = bool(cfg.get("episode_forward", True))
        #: Totals of :func:`episode_last_hidden`'s counts over the training forwards (benchmarks).
        self.train_forward_stats = {"rows": 0, "sequences": 0, "positions": 0, "stock_positions": 0}
        self._tied_keys = tuple(tied_state_keys(self))

    # -- forward passes -------------------------------------------------------------------------

    @staticmethod
    def _ids_and_mask(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        obs = batch[Columns.OBS]
        if not isinstance(obs, Mapping) or "input_ids" not in obs or "attention_mask" not in obs:
            raise TypeError(
                "LMRLModule takes lm-gym observations {'input_ids', 'attention_mask'}; got "
                f"{type(obs).__name__}. Do not flatten the observation in a connector."
            )
        return obs["input_ids"].long(), obs["attention_mask"].long()

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Sampling and inference: logits at the last position (KV-cached without grad)."""
        ids, mask = self._ids_and_mask(batch)
        cache = self._kv_cache if not torch.is_grad_enabled() else None
        hidden = self.net.last_hidden(ids, mask, cache)
        return {Columns.ACTION_DIST_INPUTS: self.net.logits_from_hidden(hidden)}

    def _train_hidden(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Last-position hidden states of a training batch: one forward per episode (default) or
        one full-window forward per row (``episode_forward=False``)."""
        ids, mask = self._ids_and_mask(batch)
        if not self._episode_forward:
            hidden = self.net.last_hidden(ids, mask)
            stats = {"rows": len(ids), "sequences": len(ids), "positions": ids.numel()}
            stats["stock_positions"] = ids.numel()
        else:
            hidden, stats = episode_last_hidden(self.net, ids, mask)
        for key, value in stats.items():
            self.train_forward_stats[key] += value
        return hidden

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Training: logits and the hidden state (reused by :meth:`compute_values`)."""
        hidden = self._train_hidden(batch)
        return {
            Columns.ACTION_DIST_INPUTS: self.net.logits_from_hidden(hidden),
            Columns.EMBEDDINGS: hidden,
        }

    def compute_values(self, batch: dict[str, Any], embeddings: Any | None = None) -> torch.Tensor:
        """Values ``(B,)`` from the value head on the trunk's last hidden state.

        :param batch: a batch with ``Columns.OBS``.
        :param embeddings: the hidden states of :meth:`_forward_train` (then the trunk is skipped).
        """
        if embeddings is None:  # PPO's advantage estimation: the whole train batch at once
            embeddings = self._train_hidden(batch)
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
        :func:`~agents.rllib.checkpoint.tied_state_keys`).

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
                f"LMRLModule state is missing {missing[:5]}{'...' if len(missing) > 5 else ''}: "
                "it was saved from a different model."
            )


def weight_sync_bytes(module: LMRLModule) -> dict[str, int]:
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


#: The former name of :class:`LMRLModule` (kept for existing imports and checkpoints).
GPT2RLModule = LMRLModule
