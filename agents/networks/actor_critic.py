"""The one causal-LM actor-critic network of lm-gym, and its KV cache for token-by-token rollouts.

:class:`CausalLMActorCritic` holds any ``transformers`` causal LM (GPT-2, Llama, ...): its trunk
(``model.base_model``) and its LM head (``model.get_output_embeddings()``, the actor: logits over
the vocabulary at the last position) plus a small value head on the trunk's last hidden state (the
critic). Every front end (the SB3 policies in :mod:`agents.networks.policies`, the KL reference in
:mod:`agents.algorithms.kl`, the NLPO mask model, the RLlib module) is a thin adapter over this
class. ``GPT2ActorCritic`` is the same class under its former name.

Observations are lm-gym windows: token ids right-aligned with padding on the LEFT, so the last
position is always the newest real token. Left padding needs explicit ``position_ids`` (learned
positions as in GPT-2, rotary ones as in Llama): ``cumsum(attention_mask) - 1`` clamped at 0.

:class:`RolloutKVCache` keeps one batched ``past_key_values`` (one row per env) across calls. When a
row's new window is its previous window shifted left by one token (the next step of the same
episode), only the new token is computed; a row whose window is unchanged reuses its last result;
any other row (a new episode, a different env order, anything unexpected) is recomputed from
scratch. The decision is made by comparing the observations themselves, never by counting steps.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from lm_gym.models import cache_keyword, output_cache

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "CausalLMActorCritic",
    "GPT2ActorCritic",
    "RolloutKVCache",
    "check_lm_spaces",
    "check_model_fits",
    "disable_dropout",
    "left_padded_rows",
    "pack_real_tokens",
    "packed_hidden",
    "position_ids_from_mask",
]


def check_lm_spaces(
    observation_space: spaces.Space, action_space: spaces.Space, owner: str = "lm-gym policies"
) -> int:
    """Check that the spaces are an lm-gym env's: ``Dict(input_ids, attention_mask)`` and ``Discrete``.

    :param observation_space: the env's observation space.
    :param action_space: the env's action space.
    :param owner: what needs the spaces, named in the error message.
    :return: the window length.
    :raises ValueError: with what was expected and what was found.
    """
    expected = (
        "an lm_gym observation space Dict(input_ids=Box(0, V-1, (L,)), attention_mask=Box(0, 1, "
        "(L,))), as lm_gym.envs.TextEnv produces"
    )
    if not isinstance(observation_space, spaces.Dict) or set(observation_space.spaces) != {
        "input_ids",
        "attention_mask",
    }:
        raise ValueError(f"{owner}: expected {expected}; got {observation_space}.")
    ids, mask = observation_space["input_ids"], observation_space["attention_mask"]
    if not (isinstance(ids, spaces.Box) and isinstance(mask, spaces.Box)):
        raise ValueError(f"{owner}: expected {expected}; got {observation_space}.")
    if len(ids.shape) != 1 or ids.shape != mask.shape:
        raise ValueError(
            f"{owner}: expected 1-D input_ids and attention_mask of the same length; got "
            f"{ids.shape} and {mask.shape}."
        )
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"{owner}: expected a Discrete(vocab) action space; got {action_space}.")
    return int(ids.shape[0])


def _tokenizer_hint(model: Any, vocab: int) -> str | None:
    """The env ``tokenizer=`` name that matches ``model`` (a name, folder or model object with a
    ``name_or_path``), or ``None`` when it cannot be told.

    :param model: what the network was built from.
    :param vocab: the model's vocabulary (a ``"gpt2"`` answer is kept only for GPT-2's).
    """
    from lm_gym.models import GPT2_VOCAB_SIZE, tokenizer_name_for_model

    name = model if isinstance(model, str) else getattr(model, "name_or_path", "")
    if not name:
        return None
    hint = tokenizer_name_for_model(str(name))
    return None if hint == "gpt2" and vocab != GPT2_VOCAB_SIZE else hint


def check_model_fits(
    net: CausalLMActorCritic,
    action_space: spaces.Discrete,
    window: int,
    model: Any = None,
) -> None:
    """Check that ``net`` can act on an env: same vocabulary as the action space, and a context at
    least as long as the observation window.

    :param net: the network.
    :param action_space: the env's ``Discrete(V)`` action space.
    :param window: the env's observation window (``max_prompt_tokens + max_new_tokens``).
    :param model: what the network was built from (a name, folder or model object), for the
        error message: it names the env ``tokenizer=`` that matches the model.
    :raises ValueError: with what to pass instead.
    """
    n = int(action_space.n)
    if net.vocab_size != n:
        hint = _tokenizer_hint(model, net.vocab_size) or _tokenizer_hint(net.lm, net.vocab_size)
        tokenizer = repr(hint) if hint is not None else "<the model's name or folder>"
        small = n < 1000  # a word-level env: its own small vocabulary, no LM tokenizer
        fix = (
            f"a word-level env has its own vocabulary: build the model with it, "
            f"policy_kwargs={{'model': agents.common.base.model_for_env(<model name>, env)}} "
            f"(a built-in model such as 'tiny-gpt2' with {n} tokens, random init)"
            if small
            else f"build the env with the model's tokenizer, gym.make(<env id>, "
            f"tokenizer={tokenizer}), or use a model whose vocabulary has {n} tokens"
        )
        raise ValueError(
            f"The model's vocabulary ({net.vocab_size} tokens) does not match the env's action "
            f"space Discrete({n}): {fix}."
        )
    max_pos = getattr(net.lm.config.get_text_config(), "max_position_embeddings", None)
    if max_pos is not None and window > max_pos:
        raise ValueError(
            f"The observation window ({window} tokens) is longer than the model's context "
            f"({max_pos}): lower max_prompt_tokens + max_new_tokens."
        )


def left_padded_rows(attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real tokens per row, and which rows are left-padded lm-gym windows (``[0, ..., 0, 1, ...,
    1]`` with at least one real token).

    :param attention_mask: ``(n, W)`` masks.
    :return: ``(n_real, left_padded)``, both ``(n,)``.
    """
    mask = np.asarray(attention_mask) != 0
    width = mask.shape[1]
    n_real = mask.sum(1)
    left_padded = (mask == (np.arange(width)[None, :] >= width - n_real[:, None])).all(1)
    return n_real, left_padded & (n_real > 0)


def pack_real_tokens(
    input_ids: torch.Tensor, context_rows: torch.Tensor, n_real: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Real tokens of left-padded windows, left-aligned in a ``(B, max(lengths))`` batch: one causal
    forward over them gives the hidden state of every shorter window whose real tokens are a
    prefix (:class:`agents.algorithms.ppo.EpisodePPO`'s update, the RLlib module's train forward).

    :param input_ids: ``(n, W)`` all observation ids of the buffer (long).
    :param context_rows: ``(B,)`` rows of the context windows.
    :param n_real: ``(B,)`` real tokens of each context window.
    :param lengths: ``(B,)`` tokens to keep from each (a prefix of the real tokens).
    :return: ``(B, L)`` ids; positions past a segment's length repeat its last kept token (their
        outputs are never read, and causal attention keeps them from earlier positions).
    """
    width = input_ids.shape[1]
    span = int(lengths.max())
    cols = torch.arange(span, device=input_ids.device)[None, :]
    cols = torch.minimum(cols, (lengths - 1)[:, None]) + (width - n_real)[:, None]
    return input_ids[context_rows].gather(1, cols)


def packed_hidden(
    network: CausalLMActorCritic,
    input_ids: torch.Tensor,
    context_rows: torch.Tensor,
    n_real: torch.Tensor,
    lengths: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    *,
    share_prefixes: bool = True,
) -> torch.Tensor:
    """The episode forward: the trunk's hidden states of many windows from one forward over the
    longer windows whose real tokens they are prefixes of (EpisodePPO's update, the KL reference,
    the RLlib module's train forward). Sequences that begin with the same tokens (a GRPO group's
    prompt) run that prefix once (:func:`shared_prefixes`).

    :param network: the network whose trunk runs.
    :param input_ids: ``(n, W)`` left-padded window ids (long).
    :param context_rows: ``(B,)`` rows of the context windows; ``n_real``, ``lengths`` as for
        :func:`pack_real_tokens`.
    :param n_real: ``(B,)`` real tokens of each context window.
    :param lengths: ``(B,)`` tokens to run of each (a prefix of its real tokens).
    :param rows: ``(k,)`` context (index into ``context_rows``) of each wanted hidden state.
    :param positions: ``(k,)`` its position in that context (``0`` = the first real token).
    :param share_prefixes: run a prefix shared by several sequences once (``False``: one plain
        causal forward over all of them).
    :return: ``(k, hidden)``, the hidden states ``network.last_hidden`` gives on the windows that
        end there, up to float rounding.
    """
    packed = pack_real_tokens(input_ids, context_rows, n_real, lengths)
    plan = shared_prefixes(packed, lengths) if share_prefixes else None
    if plan is not None:
        return _prefix_shared_hidden(network, packed, lengths, plan, rows, positions)
    # Right padding under causal attention needs no mask: all ones keeps the fast causal path and
    # gives positions 0..L-1, the positions the left-padded windows give their real tokens.
    hidden, _ = network.run_trunk(packed, torch.ones_like(packed))
    return hidden[rows, positions]


#: The shortest prefix worth sharing, in tokens (:func:`shared_prefixes`).
MIN_SHARED_PREFIX = 8


def shared_prefixes(
    packed: torch.Tensor, lengths: torch.Tensor, min_prefix: int = MIN_SHARED_PREFIX
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Clusters of packed sequences that begin with the same tokens (a GRPO group's episodes:
    one prompt, ``G`` completions), for :func:`packed_hidden` to run each shared prefix once.

    :param packed: ``(B, L)`` sequences (see :func:`pack_real_tokens`).
    :param lengths: ``(B,)`` real tokens of each.
    :param min_prefix: the shortest prefix worth sharing.
    :return: ``(cluster of each sequence (B,), prefix length (C,), first member (C,))`` of the
        ``C`` clusters; a prefix is shorter than every sequence of its cluster (a sequence alone
        in its cluster has a prefix of one token). ``None`` when no two sequences share
        ``min_prefix`` tokens, or a sequence has fewer than two.
    """
    batch, span = packed.shape
    n = lengths.cpu().numpy()
    if batch < 2 or span <= min_prefix or n.min() < 2:
        return None
    ids = packed.cpu().numpy()
    real = np.where(np.arange(span)[None, :] < n[:, None], ids, -1)  # nothing matches past a length
    order = np.lexsort(real.T[::-1])  # rows sorted by their tokens: shared prefixes are neighbours
    same = real[order[1:]] == real[order[:-1]]
    lcp = np.where(same.all(1), span, np.argmin(same, axis=1))  # common prefix of neighbours
    place_cluster = np.r_[0, np.cumsum(lcp < min_prefix)]  # a new cluster where it is too short
    n_clusters = int(place_cluster[-1]) + 1
    if n_clusters == batch:
        return None
    prefix = np.ones(n_clusters, dtype=np.int64)
    first = np.zeros(n_clusters, dtype=np.int64)
    for c in range(n_clusters):
        places = np.flatnonzero(place_cluster == c)  # consecutive places in sorted order
        members = order[places]
        first[c] = members.min()
        if len(places) > 1:
            shared = int(lcp[places[0] : places[-1]].min())
            prefix[c] = min(shared, int(n[members].min()) - 1)  # each sequence keeps a token
    cluster = np.empty(batch, dtype=np.int64)
    cluster[order] = place_cluster
    device = packed.device
    return (
        torch.as_tensor(cluster, device=device),
        torch.as_tensor(prefix, device=device),
        torch.as_tensor(first, device=device),
    )


def _prefix_shared_hidden(
    network: CausalLMActorCritic,
    packed: torch.Tensor,
    lengths: torch.Tensor,
    plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """:func:`packed_hidden` with each cluster's shared prefix run once: a forward over the
    prefixes (right-padded, their keys and values kept), then one over every sequence's rest
    attending to its cluster's prefix (gradients flow into the prefix through its keys and
    values). Same hidden states up to float rounding.
    """
    cluster, prefix, first = plan
    device = packed.device
    span_p = int(prefix.max())
    cols_p = torch.arange(span_p, device=device)
    prefix_ids = packed[first, :span_p]
    prefix_mask = (cols_p[None, :] < prefix[:, None]).long()
    hidden_p, cache = network.run_trunk(prefix_ids, prefix_mask, use_cache=True)
    start = prefix[cluster]  # (B,) where each sequence's rest begins
    rest = lengths - start
    span_r = int(rest.max())
    cols_r = torch.arange(span_r, device=device)
    gather = torch.minimum(cols_r[None, :], (rest - 1)[:, None]) + start[:, None]
    rest_ids = packed.gather(1, gather)
    past = [(k[cluster], v[cluster]) for k, v in RolloutKVCache._layers_of(cache)]
    mask = torch.cat([prefix_mask[cluster], torch.ones_like(rest_ids)], 1)
    hidden_r, _ = network.run_trunk(
        rest_ids,
        mask,
        position_ids=start[:, None] + cols_r[None, :],
        past_key_values=RolloutKVCache._cache_from(past),
    )
    in_prefix = positions < start[rows]
    from_prefix = hidden_p[cluster[rows], positions.clamp(max=span_p - 1)]
    from_rest = hidden_r[rows, (positions - start[rows]).clamp(min=0, max=span_r - 1)]
    return torch.where(in_prefix[:, None], from_prefix, from_rest)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: ``cumsum(mask) - 1`` clamped at 0.

    :param attention_mask: ``(batch, length)``, 1 for real tokens.
    :return: ``(batch, length)`` long tensor; the first real token is at position 0.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def disable_dropout(module: nn.Module) -> None:
    """Set every dropout probability of ``module`` to 0 (PPO's ratio needs a deterministic policy).

    The model's config is left as it is, so an exported model keeps its dropout for fine-tuning.

    :param module: any module; its ``nn.Dropout`` layers are set to ``p = 0``.
    """
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


class CausalLMActorCritic(nn.Module):
    """A causal LM as actor (its LM head) and critic (a value head on the same trunk).

    One trunk is shared by actor and critic. Logits are computed for the last position only, so a
    step costs one ``hidden x vocabulary`` product per row, however long the window.

    :param model: a name or folder for :func:`lm_gym.models.load_causal_lm` (``"gpt2"``: offline,
        the built-in tiny GPT-2 with a warning; ``"tiny-llama"``, ``"smollm2-135m"``, any hub causal
        LM), or a ``PreTrainedModel`` object (used as is, not copied).
    :param value_head: whether to build the value head (the DQN Q-network and the KL reference
        have none).
    :param value_hidden: width of the value head's hidden layer; 0 for a single linear layer.
    :param detach_value: the value head reads the trunk's hidden states through ``detach()``, so
        the critic's loss trains the value head only and never moves the LM (the actor). A new
        value head on a pretrained LM starts far off, and its large early gradients through a
        shared trunk can damage the LM's text.
    :param bf16: run the trunk under ``torch.autocast(bfloat16)`` when on CUDA (logits and values
        are returned in float32). Ignored on CPU.
    :param dropout: keep the model's dropout; by default it is switched off, because PPO compares
        log-probabilities of the same policy in rollout (eval mode) and update (train mode).
    :param attn_implementation: switch the model's attention (``"eager"``, ``"sdpa"``, ...);
        ``None`` keeps it. sb3-contrib's TRPO needs ``"eager"`` (second derivatives).
    :param lora: train LoRA adapters only (``peft``): ``{"r": 8, "alpha": 16, "dropout": 0.0,
        "target_modules": "all-linear"}`` (any subset; these are the defaults). The LM's own
        weights are frozen; the value head still trains. :meth:`reference_lm` is then the same
        model with its adapters switched off (no second copy of the weights) and
        :meth:`merged_lm` the model with the adapters merged in, for export. ``None``: full
        fine-tuning.
    :param load_kwargs: passed to :func:`lm_gym.models.load_causal_lm` when ``model`` is a name.
    :raises ValueError: the name cannot be resolved, or the model has no output embeddings.
    :raises ImportError: ``lora`` without ``peft`` installed.
    """

    def __init__(
        self,
        model: str | PreTrainedModel = "gpt2",
        *,
        value_head: bool = True,
        value_hidden: int = 0,
        detach_value: bool = False,
        bf16: bool = False,
        dropout: bool = False,
        attn_implementation: str | None = None,
        lora: Mapping[str, Any] | None = None,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, str):
            from lm_gym.models import load_causal_lm

            model = load_causal_lm(model, **(load_kwargs or {}))
        if not isinstance(model, nn.Module) or not hasattr(model, "get_output_embeddings"):
            raise ValueError(
                f"model must be a causal LM name, folder or PreTrainedModel, got {type(model)!r}."
            )
        if model.get_output_embeddings() is None:
            raise ValueError(f"{type(model).__name__} has no LM head (output embeddings).")
        if not dropout:
            disable_dropout(model)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        #: the ``peft`` model holding the LoRA adapters (not a submodule: its parameters are
        #: ``lm``'s), or ``None``
        self._peft: Any = None
        if lora is not None:
            object.__setattr__(self, "_peft", _add_lora(model, lora))
        self.lm = model
        self.bf16 = bool(bf16)
        self.detach_value = bool(detach_value)
        #: the trunk's keyword for a KV cache (:func:`lm_gym.models.cache_keyword`)
        self._cache_kwarg = cache_keyword(model.base_model)
        hidden = int(model.config.get_text_config().hidden_size)
        self.hidden_size = hidden
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.value_head: nn.Module | None = None
        if value_head:
            if value_hidden > 0:
                self.value_head = nn.Sequential(
                    nn.Linear(hidden, value_hidden), nn.Tanh(), nn.Linear(value_hidden, 1)
                )
            else:
                self.value_head = nn.Linear(hidden, 1)
            for m in self.value_head.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=1.0 / hidden**0.5 if m.out_features > 1 else 0.01)
                    nn.init.zeros_(m.bias)

    # -- parts ------------------------------------------------------------------------------------

    @property
    def trunk(self) -> nn.Module:
        """The transformer without its LM head (``model.base_model``)."""
        return self.lm.base_model

    @property
    def lm_head(self) -> nn.Module:
        """The LM head: hidden state to vocabulary logits (the actor)."""
        return self.lm.get_output_embeddings()

    def param_version(self) -> int:
        """A counter that changes whenever a parameter is modified in place (optimizer steps,
        ``load_state_dict``) or replaced: caches compare it to know their keys and values are
        stale.

        Writes through ``.data`` and fused optimizers (``Adam(fused=True)``) do not move it: the
        policies also drop their caches when SB3 switches them to training mode. The parameters
        are listed once and listed again only after a parameter or a submodule was set on one of
        the network's modules (torch's global registration hooks): walking the modules of a
        LoRA-wrapped LM took 27 ms a call, 10% of a ``smollm2-135m`` rollout step on one CPU
        thread."""
        first = next(self.parameters())
        listed = self.__dict__.get("_param_list")
        # relisted: after a registration, in a copy of this network (another id, modules not
        # watched) or with a new first parameter (``.to()`` replacing them without registering)
        if listed is None or listed[:2] != (_STRUCTURE[0], id(self)) or listed[2][0] is not first:
            _WATCHED.update(self.modules())
            listed = (_STRUCTURE[0], id(self), tuple(self.parameters()))
            self.__dict__["_param_list"] = listed
        return sum(p._version for p in listed[2]) + id(first)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.bf16 and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- forward passes ---------------------------------------------------------------------------

    def run_trunk(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """The trunk's last hidden states (after the final layer norm).

        :param input_ids: ``(batch, new)`` ids (the window, or only new tokens with a cache).
        :param attention_mask: ``(batch, past + new)``.
        :param position_ids: ``(batch, new)``; default from ``attention_mask`` (no cache only).
        :param past_key_values: a ``transformers`` cache, or ``None``.
        :param use_cache: return the updated cache.
        :return: hidden states ``(batch, new, hidden)`` and the cache (``None`` unless asked).
        """
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)[:, -input_ids.shape[1] :]
        extra = {} if past_key_values is None else {self._cache_kwarg: past_key_values}
        with self._autocast(input_ids.device):
            out = self.trunk(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                **extra,
            )
        if not use_cache:
            return out.last_hidden_state, None
        return out.last_hidden_state, output_cache(out)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (float32) from hidden states of any leading shape."""
        with self._autocast(hidden.device):
            logits = self.lm_head(hidden)
        return logits.float()

    def value_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Values (float32, trailing dimension dropped) from hidden states of any leading shape.

        :raises RuntimeError: the network was built without a value head.
        """
        if self.value_head is None:
            raise RuntimeError("This network has no value head (value_head=False).")
        if self.detach_value:
            hidden = hidden.detach()
        return self.value_head(hidden.float()).squeeze(-1)

    def last_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: RolloutKVCache | None = None,
    ) -> torch.Tensor:
        """The hidden state at the last position of each window (the newest real token).

        :param input_ids: ``(batch, length)`` ids, any integer or float dtype (cast to long).
        :param attention_mask: ``(batch, length)``.
        :param cache: a :class:`RolloutKVCache` to reuse (no-grad calls only); ``None`` recomputes.
        :return: ``(batch, hidden)``.
        """
        input_ids = input_ids.long()
        attention_mask = attention_mask.long()
        if cache is not None and not torch.is_grad_enabled():
            return cache.last_hidden(self, input_ids, attention_mask)
        hidden, _ = self.run_trunk(input_ids, attention_mask)
        return hidden[:, -1]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: RolloutKVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits at the last position and values.

        :param input_ids: ``(batch, length)``.
        :param attention_mask: ``(batch, length)``.
        :param cache: see :meth:`last_hidden`.
        :return: logits ``(batch, vocab)`` and values ``(batch,)`` (``None`` without value head).
        """
        h = self.last_hidden(input_ids, attention_mask, cache)
        values = self.value_from_hidden(h) if self.value_head is not None else None
        return self.logits_from_hidden(h), values

    @property
    def lora(self) -> bool:
        """Whether the LM trains LoRA adapters only."""
        return self._peft is not None

    def scoring(self) -> contextlib.AbstractContextManager[Any]:
        """A context for a run of forwards of this network. Nothing for a network of its own;
        :meth:`reference_lm`'s adapters-off view switches the adapters off once for all of them
        (``peft`` walks every layer each time they are switched)."""
        return contextlib.nullcontext()

    def reference_lm(self) -> CausalLMActorCritic:
        """The frozen starting LM, for a KL penalty: with LoRA, this model with its adapters
        switched off (sharing its weights); otherwise a frozen copy (:meth:`frozen_lm_copy`).

        Made at the start of training, it is the model the policy started from.
        """
        if self._peft is None:
            return self.frozen_lm_copy()
        return _AdaptersOff(self)

    def merged_lm(self) -> PreTrainedModel:
        """The LM as a plain ``transformers`` model: a copy with the LoRA adapters merged into
        its weights (loadable without ``peft``), or the LM itself without LoRA."""
        if self._peft is None:
            return self.lm
        return copy.deepcopy(self._peft).merge_and_unload()

    def frozen_lm_copy(self) -> CausalLMActorCritic:
        """A frozen copy of the LM (trunk and head, no value head): a KL reference or mask model."""
        lm = copy.deepcopy(self.lm)
        for p in lm.parameters():
            p.requires_grad_(False)
        net = CausalLMActorCritic(lm.eval(), value_head=False, bf16=self.bf16, dropout=True)
        return net.eval()


#: the modules of every network whose parameter list :meth:`CausalLMActorCritic.param_version`
#: keeps, and a generation that moves whenever a parameter or a submodule is registered on one
_WATCHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_STRUCTURE = [0]


def _on_registration(module: nn.Module, _name: str, _value: Any) -> None:
    if module in _WATCHED:  # not the containers transformers builds in every forward
        _STRUCTURE[0] += 1


# torch's global registration hooks: setting or replacing a submodule or a parameter
# (``load_state_dict(assign=True)`` included) on a watched module moves the generation
torch.nn.modules.module.register_module_parameter_registration_hook(_on_registration)
torch.nn.modules.module.register_module_module_registration_hook(_on_registration)


#: LoRA defaults of :class:`CausalLMActorCritic`.
LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_modules": "all-linear",
}


def _add_lora(model: PreTrainedModel, options: Mapping[str, Any]) -> Any:
    """Inject LoRA adapters into ``model`` in place (``peft``); return the ``peft`` model."""
    unknown = set(options) - set(LORA_DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown LoRA option(s) {sorted(unknown)}: use {sorted(LORA_DEFAULTS)}.")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError(
            'LoRA needs the peft package: pip install peft (or pip install -e ".[lora]").'
        ) from err
    from transformers.pytorch_utils import Conv1D

    opts = {**LORA_DEFAULTS, **options}
    config = LoraConfig(
        r=int(opts["r"]),
        lora_alpha=int(opts["alpha"]),
        lora_dropout=float(opts["dropout"]),
        target_modules=opts["target_modules"],
        # GPT-2's projections are transformers' Conv1D, whose weights are stored transposed
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft calls a transformers method that transformers >= 5 renamed (not ours to fix)
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        return get_peft_model(model, config)


class _AdaptersOff(CausalLMActorCritic):
    """A LoRA network's LM with its adapters switched off: the frozen reference that shares
    the policy's weights. It has no parameters of its own (so freezing it, or moving it, never
    touches the policy's); every forward runs under ``peft``'s ``disable_adapter()``."""

    _policy_net: CausalLMActorCritic  # set with object.__setattr__: not a submodule

    def __init__(self, net: CausalLMActorCritic) -> None:
        nn.Module.__init__(self)
        object.__setattr__(self, "_policy_net", net)
        self._peft = None
        self.bf16 = net.bf16
        self.detach_value = False
        self._cache_kwarg = net._cache_kwarg
        self.hidden_size = net.hidden_size
        self.vocab_size = net.vocab_size
        self.value_head = None
        self._scoring = False

    @property
    def lm(self) -> PreTrainedModel:  # type: ignore[override]
        """The policy's LM (shared)."""
        return self._policy_net.lm

    def param_version(self) -> int:
        """Constant: with the adapters off, the outputs never change."""
        return 0

    @contextlib.contextmanager
    def scoring(self) -> Iterator[None]:
        """``peft``'s ``disable_adapter()``, entered once however deeply nested."""
        if self._scoring:
            yield
            return
        with self._policy_net._peft.disable_adapter():
            self._scoring = True
            try:
                yield
            finally:
                self._scoring = False

    def run_trunk(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        with self.scoring():
            return super().run_trunk(*args, **kwargs)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        with self.scoring():
            return super().logits_from_hidden(hidden)


class RolloutKVCache:
    """Per-env ``past_key_values`` kept across rollout steps (one batched cache, one row per env).

    The cache covers only the last :attr:`width` columns of the observation window: the leading
    columns that are padding in every row of the batch are neither computed nor attended to (an
    lm-gym window is ``max_prompt_tokens + max_new_tokens`` wide, mostly padding early in an
    episode). Invariant: in every row, the window's columns before the cached ones are padding; a
    row whose real tokens start later than the cache holds zero keys and values there, masked
    out by its attention mask like any other padding.

    For a row whose window ``w'`` equals its previous window ``w`` shifted left by ``k >= 1``
    (``w'[:-k] == w[k:]``, with ``w[:k]`` padding and ``w'[-k:]`` real tokens: one sampled token,
    or a multi-turn env's token plus a partner's reply), the cached keys and values are kept and
    only the ``k`` new tokens are computed (rows with the same ``k`` in one forward; the cache
    grows by ``k`` columns until it spans the whole window). A row whose window is unchanged
    reuses its last hidden state. Any other row (a new episode, a different env order, anything
    unexpected) is recomputed from scratch, from the first column where one of those rows has a
    real token; identical such rows (the envs of a GRPO group starting their shared prompt) are
    computed once and copied. After each call the cache is cut to the first column where any row
    has a real token. A batch of another size
    whose every row equals a cached row or extends one by one token (stock SB3's batch-of-one
    value bootstrap of a truncated episode, on its terminal observation) is answered from those
    rows and leaves the cache as it is; when several come in one step, the rows' windows plus the
    tokens the policy sampled (:meth:`expect_next`) are computed in one batched forward. The
    whole cache is dropped when the batch shape changes otherwise or the network's parameters
    change (see :meth:`CausalLMActorCritic.param_version`).
    Use it under ``torch.no_grad()`` only.
    """

    def __init__(self) -> None:
        self.input_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None
        #: per layer, keys and values ``(batch, heads, width, head_dim)`` of the last ``width``
        #: window columns
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.hidden: torch.Tensor | None = None
        self.version: int | None = None
        #: the tokens the policy sampled from the cached rows (:meth:`expect_next`), if known
        self.next_tokens: torch.Tensor | None = None
        #: batch-of-one queries answered since the last step, and the look-ahead batch: the last
        #: hidden states of every row's window plus its next token (the rows computed, the states)
        self._side_calls = 0
        self._ahead: tuple[torch.Tensor, torch.Tensor] | None = None
        #: counts of rows served from the cache, one token, and full recomputes (of which
        #: ``shared`` copied from an identical row's), and of the forwards run for side queries
        #: (for tests/stats)
        self.stats = {"reused": 0, "incremental": 0, "full": 0, "shared": 0, "side_forwards": 0}

    @property
    def width(self) -> int:
        """Window columns held (the last ``width`` ones); 0 when empty."""
        return int(self.layers[0][0].shape[2]) if self.layers else 0

    def reset(self) -> None:
        """Forget everything (the next call recomputes every row)."""
        self.input_ids = self.attention_mask = self.hidden = None
        self.layers = []
        self.version = None
        self._forget_next()

    def _forget_next(self) -> None:
        self.next_tokens, self._ahead, self._side_calls = None, None, 0

    def expect_next(self, tokens: torch.Tensor) -> None:
        """Note the tokens just sampled from the cached rows (one per row, the policy's actions).

        When several truncated episodes end in one step, stock SB3 asks for their terminal values
        one batch-of-one at a time; from the second such query on, the cache computes every row's
        window plus its noted token in one batched forward and answers the rest from it.

        :param tokens: ``(batch,)`` token ids, in the cached rows' order.
        """
        tokens = tokens.reshape(-1)
        ok = self.input_ids is not None and tokens.shape[0] == self.input_ids.shape[0]
        self._forget_next()
        if ok:
            assert self.input_ids is not None
            self.next_tokens = tokens.to(self.input_ids.device, torch.long)

    def _valid_for(self, version: int, ids: torch.Tensor) -> bool:
        return (
            self.input_ids is not None
            and self.input_ids.shape == ids.shape
            and self.input_ids.device == ids.device
            and bool(self.layers)
            and self.version == version
        )

    @staticmethod
    def _cache_from(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
        """A ``DynamicCache`` holding ``layers`` without copying them (``DynamicCache(
        ddp_cache_data=...)`` concatenates each layer onto an empty tensor: one more copy of the
        whole cache per step)."""
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(k[:, :, :0], v[:, :, :0]) for k, v in layers])
        cache_layers = getattr(cache, "layers", None)
        if cache_layers is None or len(cache_layers) != len(layers):  # other cache layouts
            return DynamicCache(ddp_cache_data=layers)
        for layer, (k, v) in zip(cache_layers, layers):
            layer.keys, layer.values = k, v
        return cache

    @staticmethod
    def _layers_of(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if hasattr(cache, "layers"):
            return [(layer.keys, layer.values) for layer in cache.layers]
        return [(k, v) for k, v in cache]  # legacy tuple-of-tuples caches

    @staticmethod
    def _first_real(mask: torch.Tensor) -> int:
        """The first column where any row has a real token (``length - 1`` if none has)."""
        leading = (mask.cumsum(1) == 0).sum(1)  # leading padding columns of each row
        return min(int(leading.min()), mask.shape[1] - 1)

    def last_hidden(
        self, net: CausalLMActorCritic, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The last-position hidden states of ``ids``, computed with the cache where possible.

        :param net: the network that owns this cache's keys and values.
        :param ids: ``(batch, length)`` long ids.
        :param mask: ``(batch, length)`` long attention mask.
        :return: ``(batch, hidden)``.
        """
        batch, length = ids.shape
        version = net.param_version()
        side = self._side_query(net, version, ids, mask)
        if side is not None:
            return side
        full = torch.ones(batch, dtype=torch.bool, device=ids.device)
        same = torch.zeros_like(full)
        shift = torch.zeros(batch, dtype=torch.long, device=ids.device)  # k of each shifted row
        if self._valid_for(version, ids):
            assert self.input_ids is not None and self.attention_mask is not None
            pid, pmask = self.input_ids, self.attention_mask
            same = self._moved_by(ids, mask, pid, pmask, 0)
            k = (mask.sum(1) - pmask.sum(1)).clamp(min=0)  # real tokens added
            for kk in torch.unique(k[~same & (k > 0)]).tolist():
                rows = (k == kk) & ~same
                fits = self._moved_by(ids, mask, pid, pmask, kk)
                shift = torch.where(rows & fits, kk, shift)
            full = ~(same | (shift > 0))
        n_same, n_shift, n_full = int(same.sum()), int((shift > 0).sum()), int(full.sum())
        self.stats["reused"] += n_same
        self.stats["incremental"] += n_shift
        self.stats["full"] += n_full

        # (rows, last hidden states, layers of the rows' last columns; widths may differ)
        parts: list[tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        if n_same:
            idx = same.nonzero().squeeze(1)
            assert self.hidden is not None
            layers = self.layers
            if n_same < batch:
                layers = [(k[idx], v[idx]) for k, v in layers]
            parts.append((idx, self.hidden[idx] if n_same < batch else self.hidden, layers))
        for kk in torch.unique(shift[shift > 0]).tolist():
            idx = (shift == kk).nonzero().squeeze(1)
            whole = len(idx) == batch
            old = self.layers if whole else [(k[idx], v[idx]) for k, v in self.layers]
            hidden, layers = self._extend(
                net, ids if whole else ids[idx], mask if whole else mask[idx], old, kk
            )
            parts.append((idx, hidden, layers))
        if n_full:
            idx = full.nonzero().squeeze(1)
            sub_ids = ids[idx] if n_full < batch else ids
            sub_mask = mask[idx] if n_full < batch else mask
            first = self._first_real(sub_mask)  # all-padding leading columns are skipped
            hidden, layers = self._compute(net, sub_ids[:, first:], sub_mask[:, first:])
            parts.append((idx, hidden, layers))

        if len(parts) == 1:
            _, out, layers = parts[0]
        else:
            out, layers = self._merge(parts, batch)
        first = self._first_real(mask)
        drop = layers[0][0].shape[2] - (length - first) if layers else 0
        if drop > 0:
            layers = [(k[:, :, drop:], v[:, :, drop:]) for k, v in layers]
        self.input_ids, self.attention_mask = ids.clone(), mask.clone()
        self.hidden, self.layers = out, layers
        self.version = version
        self._forget_next()
        return out

    def _compute(
        self, net: CausalLMActorCritic, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Rows computed from scratch: their last hidden states and layers. Identical rows (the
        envs of a GRPO group starting the same prompt) of at least :data:`MIN_SHARED_PREFIX` real
        tokens are computed once and copied (shorter ones save nothing worth the copy, and a
        batch of another size rounds differently: tiny tasks keep their exact trajectories).

        :return: ``(rows, hidden)`` and the rows' layers.
        """
        if int(mask.sum(1).min()) >= MIN_SHARED_PREFIX:
            unique, inverse = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)
        else:
            unique, inverse = ids, None
        if unique.shape[0] == ids.shape[0] or inverse is None:
            hidden, cache = net.run_trunk(ids, mask, use_cache=True)
            return hidden[:, -1], self._layers_of(cache)
        self.stats["shared"] += ids.shape[0] - unique.shape[0]
        width = ids.shape[1]
        hidden, cache = net.run_trunk(unique[:, :width], unique[:, width:], use_cache=True)
        layers = [(k[inverse], v[inverse]) for k, v in self._layers_of(cache)]
        return hidden[inverse, -1], layers

    def _extend(
        self,
        net: CausalLMActorCritic,
        ids: torch.Tensor,
        mask: torch.Tensor,
        old: list[tuple[torch.Tensor, torch.Tensor]],
        kk: int,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Rows whose window moved left by ``kk`` (``kk`` new real tokens at the end) from the
        cached keys and values ``old`` of their previous window: only the new tokens are computed.

        :return: the rows' last hidden states and their new layers (``old`` is not modified).
        """
        length = ids.shape[1]
        # the window moved left by kk: its first kk columns (padding) leave the cache if held
        keep = min(self.width, length - kk)
        if keep < self.width:
            drop = self.width - keep
            old = [(k[:, :, drop:], v[:, :, drop:]) for k, v in old]
        first_new = mask.sum(1, keepdim=True) - kk  # position of the first new token
        pos = first_new + torch.arange(kk, device=ids.device)
        hidden, cache = net.run_trunk(
            ids[:, -kk:],
            mask[:, -(keep + kk) :],
            position_ids=pos,
            past_key_values=self._cache_from(old),
            use_cache=True,
        )
        return hidden[:, -1], self._layers_of(cache)

    @staticmethod
    def _moved_by(
        ids: torch.Tensor, mask: torch.Tensor, pid: torch.Tensor, pmask: torch.Tensor, kk: int
    ) -> torch.Tensor:
        """Whether each window ``(ids, mask)`` is its previous one ``(pid, pmask)`` moved left by
        ``kk`` columns: the ``kk`` columns that leave are padding and the ``kk`` that arrive are
        real tokens (``kk=0``: the same window). The last dimension is the window's; the leading
        ones broadcast (row by row, or every query row against every cached row).

        :return: a bool tensor over the leading dimensions.
        """
        if kk == 0:
            return (ids == pid).all(-1) & (mask == pmask).all(-1)
        return (
            (ids[..., :-kk] == pid[..., kk:]).all(-1)
            & (mask[..., :-kk] == pmask[..., kk:]).all(-1)
            & (pmask[..., :kk] == 0).all(-1)
            & (mask[..., -kk:] == 1).all(-1)
        )

    def _side_query(
        self, net: CausalLMActorCritic, version: int, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        """A batch of another size over the same window whose every row equals a cached row or
        extends one by one token: SB3's batch-of-one value bootstrap of a truncated episode
        (``predict_values`` on its terminal observation) between two rollout steps. Its last hidden
        states come from those rows' keys and values, and the cache is left as it is, so the
        rollout's next step still finds its rows.

        :return: ``(batch, hidden)``, or ``None`` when it is not such a query (the caller then
            recomputes and caches the new batch, as for any change of batch).
        """
        pid, pmask = self.input_ids, self.attention_mask
        if (
            pid is None
            or pmask is None
            or self.hidden is None
            or not self.layers
            or self.version != version
            or pid.device != ids.device
            or pid.shape[1] != ids.shape[1]
            or pid.shape[0] == ids.shape[0]
        ):
            return None
        # (query rows, cached rows): the query row is the cached one, or it plus one token
        pair = (ids[:, None], mask[:, None], pid[None], pmask[None])
        same, one = self._moved_by(*pair, 0), self._moved_by(*pair, 1)
        if not bool((same | one).any(1).all()):
            return None
        out = []
        for row in range(ids.shape[0]):
            if bool(same[row].any()):
                out.append(self.hidden[int(same[row].nonzero()[0])])
                self.stats["reused"] += 1
                continue
            j = int(one[row].nonzero()[0])
            out.append(self._one_more(net, ids[row], mask[row], j))
            self.stats["incremental"] += 1
        return torch.stack(out)

    def _one_more(
        self, net: CausalLMActorCritic, ids: torch.Tensor, mask: torch.Tensor, j: int
    ) -> torch.Tensor:
        """The last hidden state of the window ``(ids, mask)``: cached row ``j`` plus one token.

        The first such query after a step runs that row alone; from the second on (several
        episodes truncated in the same step), every row's window plus its noted next token
        (:meth:`expect_next`) is computed in one batched forward, kept until the next step."""
        self._side_calls += 1
        if self._ahead is None and self._side_calls >= 2 and self.next_tokens is not None:
            assert self.input_ids is not None and self.attention_mask is not None
            pid, pmask = self.input_ids, self.attention_mask
            ahead_ids = torch.cat([pid[:, 1:], self.next_tokens[:, None]], 1)
            ahead_mask = torch.cat([pmask[:, 1:], torch.ones_like(pmask[:, :1])], 1)
            rows = pmask[:, 0] == 0  # the window can move left by one
            assert self.hidden is not None  # _side_query answers only with a cached batch
            hidden = torch.zeros_like(self.hidden)
            if bool(rows.any()):
                idx = rows.nonzero().squeeze(1)
                old = [(k[idx], v[idx]) for k, v in self.layers]
                h, _ = self._extend(net, ahead_ids[idx], ahead_mask[idx], old, 1)
                hidden[idx] = h
                self.stats["side_forwards"] += 1
                self._ahead = (rows, hidden)
        if self._ahead is not None and self.next_tokens is not None:
            # the query is row j moved left by one (_side_query checked): only its token can differ
            rows, hidden = self._ahead
            if bool(rows[j]) and int(ids[-1]) == int(self.next_tokens[j]):
                return hidden[j]
        old = [(k[j : j + 1], v[j : j + 1]) for k, v in self.layers]
        h, _ = self._extend(net, ids[None], mask[None], old, 1)
        self.stats["side_forwards"] += 1
        return h[0]

    @staticmethod
    def _merge(
        parts: list[tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]],
        batch: int,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """One batch from row groups of different cache widths: narrower groups are left-padded
        with zero keys and values (padding columns of their windows, masked out)."""
        h0, layers0 = parts[0][1], parts[0][2]
        out = torch.empty(batch, h0.shape[-1], dtype=h0.dtype, device=h0.device)
        widths = [p[2][0][0].shape[2] for p in parts]
        width = max(widths)
        new = torch.zeros if min(widths) < width else torch.empty
        layers = [
            (
                new((batch, k.shape[1], width, k.shape[3]), dtype=k.dtype, device=k.device),
                new((batch, v.shape[1], width, v.shape[3]), dtype=v.dtype, device=v.device),
            )
            for k, v in layers0
        ]
        for idx, h, part_layers in parts:
            out[idx] = h
            for (k_all, v_all), (k, v) in zip(layers, part_layers):
                w = k.shape[2]
                k_all[idx, :, width - w :] = k
                v_all[idx, :, width - w :] = v
        return out, layers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.layers)

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self)


#: The former name of :class:`CausalLMActorCritic` (kept for existing imports and pickles).
GPT2ActorCritic = CausalLMActorCritic
