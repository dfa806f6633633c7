"""Supervised warm start: fine-tune the LM on a task's references (prompt -> reference), before RL.

RL4LMs' "supervised + PPO" recipe: first teach the LM the task by maximum likelihood on the
reference outputs, then improve the reward with RL from there. Here:

* :func:`demonstrations`: the (prompt, target) token sequences of an env's split. Data-set tasks use
  their references; procedural tasks use a demonstration writer registered for their reward
  (:func:`register_demonstrator`: count-up and alliteration are built in); enumerable envs
  (``LMToy-v0``, ``LMWordSort-v0``) use the exact optimal policy of :mod:`agents.tabular.mdp`.
* :func:`supervised_finetune`: teacher-forced cross-entropy on the target tokens only, in the env's
  own token layout (left-padded windows, the episode's stop token appended when it fits).
* :func:`warm_start`: fine-tune a named model and save it as a Hugging Face folder; every LM agent
  of the zoo takes that folder as its ``model`` (and its factory takes ``warm_start={...}``).
* :class:`SupervisedAgent`: the same fine-tuning as an agent of the zoo (``"supervised"``): its
  ``learn`` trains on the references (a timestep is one target token), its ``predict`` decodes
  greedily (or samples) like :class:`agents.decoding.LMDecodingAgent`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from agents.common.base import (
    Callback,
    call_callback,
    env_id_of,
    fresh_env,
    text_env,
)
from agents.decoding import LMDecodingAgent
from lm_gym.models import resolve_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from agents.networks.actor_critic import CausalLMActorCritic

__all__ = [
    "Demonstration",
    "SupervisedAgent",
    "demonstrations",
    "register_demonstrator",
    "supervised_finetune",
    "warm_start",
]

#: File written into a warm-started model folder: where it came from.
ORIGIN_FILE = "lm_gym_origin.json"


@dataclass(frozen=True)
class Demonstration:
    """One supervised example in token ids.

    :param prompt_ids: the prompt as the env encodes it (template applied, cut to the window).
    :param target_ids: the tokens the agent should write (the stop token last when it fits).
    """

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]


#: reward name -> ``writer(prompt_text, rng) -> target text`` for procedural tasks
_DEMONSTRATORS: dict[str, Callable[[str, np.random.Generator], str]] = {}


def register_demonstrator(
    reward: str, writer: Callable[[str, np.random.Generator], str], *, overwrite: bool = False
) -> None:
    """Teach :func:`demonstrations` how to answer the prompts of a procedural task (a task whose
    reward scorer has a ``demonstrate(prompt)`` method, as the verifiable tasks of
    :mod:`lm_gym.tasks.verifiable`, needs none; a registered writer comes first).

    :param reward: the task's reward name (``env.unwrapped.reward_name``).
    :param writer: ``writer(prompt, rng)`` returns a correct answer text for the prompt.
    :param overwrite: replace an existing writer.
    :raises ValueError: a writer exists and ``overwrite`` is false.
    """
    if reward in _DEMONSTRATORS and not overwrite:
        raise ValueError(f"A demonstrator for {reward!r} is already registered.")
    _DEMONSTRATORS[reward] = writer


def _encode_prompt(env: gym.Env, prompt: str) -> tuple[int, ...]:
    """The env's real prompt ids for a sample's prompt: its template (plain or chat) and its
    truncation, without the truncation warning."""
    return tuple(int(i) for i in text_env(env).encode_prompt(prompt, warn=False))


def _target(env: gym.Env, prompt_ids: tuple[int, ...], answer: str) -> tuple[int, ...]:
    inner = text_env(env)
    lead = inner.tokenizer.decode(list(prompt_ids[-1:]), skip_special_tokens=True)
    if answer and not answer[0].isspace() and lead and not lead[-1].isspace():
        answer = " " + answer
    ids = [int(i) for i in inner.tokenizer.encode(answer, add_special_tokens=False)]
    ids = ids[: inner.max_new_tokens]
    if len(ids) < inner.max_new_tokens and inner.config["stop_on_eos"]:
        ids.append(int(inner.eos_token_id))
    return tuple(ids)


def _optimal_rollouts(env: gym.Env) -> list[Demonstration]:
    from agents.tabular.mdp import solve, state_key

    inner = text_env(env)
    mdp, solution = solve(inner)
    out = []
    for prompt, prob in inner.start_distribution():  # type: ignore[attr-defined]
        if prob <= 0:
            continue
        obs, _ = inner.reset(options={"prompt": prompt})
        prompt_ids = tuple(state_key(obs))
        actions: list[int] = []
        while True:
            a = int(np.argmax(solution.q_values[mdp.index[state_key(obs)]]))
            actions.append(a)
            obs, _, terminated, truncated, _ = inner.step(a)
            if terminated or truncated:
                break
        out.append(Demonstration(prompt_ids, tuple(actions)))
    return out


def demonstrations(
    env: gym.Env, *, max_samples: int | None = None, seed: int = 0
) -> list[Demonstration]:
    """The supervised examples of an env's configured split.

    :param env: an lm-gym env (its split, template and window are used). An env made by id is
        copied (:func:`agents.common.base.fresh_env`) before procedural prompts are drawn; any other
        env is reset here.
    :param max_samples: at most this many examples (data sets: the first ones; procedural
        tasks: this many drawn prompts, default 256).
    :param seed: seeds the prompts drawn for procedural tasks.
    :return: the examples.
    :raises ValueError: the task has neither references, a demonstrator, nor an exact model.
    """
    # a fresh copy when the env was made by id: the caller's env is not reset under its feet
    inner = text_env(fresh_env(env) or env)
    if inner.samples:
        out = []
        for sample in inner.samples:
            if not sample.references:
                continue
            answer = sample.references[0]
            if answer.startswith(sample.prompt) and len(answer) > len(sample.prompt):
                answer = answer[len(sample.prompt) :]  # a continuation task: the rest of the text
            prompt_ids = _encode_prompt(inner, sample.prompt)
            out.append(Demonstration(prompt_ids, _target(inner, prompt_ids, answer)))
            if max_samples is not None and len(out) >= max_samples:
                break
        if out:
            return out
    writer = _DEMONSTRATORS.get(inner.reward_name)
    demonstrate = getattr(inner.reward_scorer, "demonstrate", None)
    if writer is None and demonstrate is not None:  # the task's scorer knows the answers
        writer = lambda prompt, rng: demonstrate(prompt)  # noqa: E731
    if writer is not None:
        rng = np.random.default_rng(seed)
        out = []
        for i in range(max_samples or 256):
            _, info = inner.reset(seed=seed + i)
            assert inner.sample is not None
            prompt_ids = _encode_prompt(inner, inner.sample.prompt)
            answer = writer(info["prompt"], rng)
            out.append(Demonstration(prompt_ids, _target(inner, prompt_ids, answer)))
        return out
    if hasattr(inner, "start_distribution"):
        demos = _optimal_rollouts(inner)
        return demos[:max_samples] if max_samples else demos
    raise ValueError(
        f"{env_id_of(env) or type(inner).__name__} has no references to learn from: its samples "
        "carry none, its reward scorer has no demonstrate(prompt) and no demonstrator is "
        f"registered for its reward {inner.reward_name!r} (see "
        "agents.algorithms.supervised.register_demonstrator)."
    )


def _batch(
    demos: list[Demonstration], pad_id: int
) -> tuple[np.ndarray, np.ndarray, list[int], list[int], list[int]]:
    """Left-padded (prompt + target) windows and the (row, position, token) of each target token."""
    seqs = [d.prompt_ids + d.target_ids for d in demos]
    length = max(len(s) for s in seqs)
    ids = np.full((len(seqs), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=np.int64)
    rows, cols, tokens = [], [], []
    for b, (seq, demo) in enumerate(zip(seqs, demos)):
        ids[b, length - len(seq) :] = seq
        mask[b, length - len(seq) :] = 1
        n = len(demo.target_ids)
        rows += [b] * n
        cols += list(range(length - n - 1, length - 1))  # the position that predicts each token
        tokens += list(demo.target_ids)
    return ids, mask, rows, cols, tokens


def supervised_step(
    net: CausalLMActorCritic, optimizer: Any, demos: list[Demonstration], pad_id: int
) -> tuple[float, int]:
    """One teacher-forced cross-entropy step on a batch of demonstrations.

    :param net: the network (its LM is trained).
    :param optimizer: a torch optimizer over the network's parameters.
    :param demos: the batch.
    :param pad_id: the padding token id.
    :return: ``(mean loss per target token, number of target tokens)``.
    """
    import torch

    device = next(net.parameters()).device
    ids, mask, rows, cols, tokens = _batch(demos, pad_id)
    ids_t = torch.as_tensor(ids, device=device)
    mask_t = torch.as_tensor(mask, device=device)
    hidden, _ = net.run_trunk(ids_t, mask_t)
    h = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    logits = net.logits_from_hidden(h)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(tokens, device=device))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach()), len(tokens)


def supervised_finetune(
    model: PreTrainedModel,
    env: gym.Env,
    *,
    epochs: float = 1.0,
    learning_rate: float = 5e-4,
    batch_size: int = 8,
    max_samples: int | None = None,
    seed: int = 0,
    device: str = "auto",
) -> list[float]:
    """Fine-tune ``model`` in place on the env's demonstrations (see :func:`demonstrations`).

    :param model: a causal LM whose vocabulary is the env's.
    :param env: the env (its train split, template and window).
    :param epochs: passes over the examples (fractions allowed).
    :param learning_rate: Adam step size.
    :param batch_size: examples per step.
    :param max_samples: cap on the examples.
    :param seed: seeds the example order.
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :return: the loss of every step.
    """
    import torch

    from agents.networks.actor_critic import CausalLMActorCritic

    demos = demonstrations(env, max_samples=max_samples, seed=seed)
    dev = resolve_device(device)
    net = CausalLMActorCritic(model, value_head=False).to(dev)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    n_steps = max(1, int(np.ceil(epochs * len(demos) / batch_size)))
    pad = int(text_env(env).pad_token_id)
    losses = []
    order: list[int] = []
    for _ in range(n_steps):
        if len(order) < batch_size:
            order += list(rng.permutation(len(demos)))
        batch, order = order[:batch_size], order[batch_size:]
        loss, _ = supervised_step(net, optimizer, [demos[i] for i in batch], pad)
        losses.append(loss)
    model.eval()
    return losses


def warm_start(model: str, env: gym.Env, out_dir: str | Path | None = None, **finetune: Any) -> str:
    """Fine-tune a named model on the env's references and save it as a Hugging Face folder.

    The folder is what every LM agent of the zoo takes as ``model``. Without ``out_dir`` it lies in
    the lm-gym cache under a hash of the arguments, so the same warm start is computed once. A
    model with its own tokenizer (``smollm2-135m``, a Llama) has it saved in the folder too, so
    that ``--model <folder>`` builds the env with the right vocabulary; GPT-2 models do not need it.

    :param model: causal LM name or folder.
    :param env: the env (its id and config key the cache).
    :param out_dir: where to save (default: the cache).
    :param finetune: options of :func:`supervised_finetune` (``epochs``, ``learning_rate``,
        ``batch_size``, ``max_samples``, ``seed``, ``device``), their defaults its own.
    :return: the folder's path.
    :raises TypeError: an option :func:`supervised_finetune` does not take.
    """
    from agents.common.base import load_lm_for_env
    from agents.common.options import keyword_parameters

    params = keyword_parameters(supervised_finetune, skip=("model", "env"))
    unknown = sorted(set(finetune) - set(params))
    if unknown:
        raise TypeError(f"warm_start got unknown option(s) {unknown}; known: {sorted(params)}.")
    settings = {name: finetune.get(name, p.default) for name, p in params.items()}
    options = {
        "model": model,
        "env": env_id_of(env),
        "config": text_env(env).config,
        **{k: v for k, v in settings.items() if k != "device"},  # the device changes no result
    }
    if out_dir is None:
        from lm_gym.data.cache import cache_root

        key = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()
        out_dir = cache_root() / "warm_start" / key[:16]
    folder = Path(out_dir)
    if (folder / ORIGIN_FILE).exists():
        return str(folder)
    lm = load_lm_for_env(model, env)
    losses = supervised_finetune(lm, env, **settings)
    from lm_gym.models import load_tokenizer, tokenizer_name_for_model, write_folder_atomically

    tokenizer = tokenizer_name_for_model(model)
    origin = dict(options, base=base_model_name(model), losses=[losses[0], losses[-1]])

    def write(tmp: Path) -> None:
        lm.to("cpu").save_pretrained(tmp)  # type: ignore[arg-type]  # as in agents.common.evaluation
        if tokenizer != "gpt2":  # a model with its own vocabulary: the folder names it for the env
            load_tokenizer(tokenizer).save_pretrained(tmp)
        (tmp / ORIGIN_FILE).write_text(json.dumps(origin, indent=2, default=str), encoding="utf-8")

    write_folder_atomically(folder, write, replace=True)  # an incomplete older one is replaced
    return str(folder)


def base_model_name(model: str) -> str:
    """The model a name or warm-started folder derives from (``"tiny-gpt2"`` for its warm starts)."""
    origin = Path(model) / ORIGIN_FILE
    if origin.exists():
        return str(json.loads(origin.read_text(encoding="utf-8")).get("base", model))
    return model


class SupervisedAgent(LMDecodingAgent):
    """Supervised fine-tuning on the task's references, as an agent: learn by imitation, decode.

    A timestep of :meth:`learn` is one target token trained on (the analogue of one env step).

    :param env: an lm-gym env (its train split gives the examples).
    :param model: causal LM name, folder or model.
    :param learning_rate: Adam step size.
    :param batch_size: examples per step.
    :param max_samples: cap on the examples.
    :param greedy: decode greedily (otherwise sample with ``temperature``, ``top_k``, ``top_p``).
    :param temperature: sampling temperature.
    :param top_k: top-k sampling (0: off).
    :param top_p: nucleus sampling (1.0: off).
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param seed: seeds the example order and the sampling.
    :param verbose: 1 prints the loss every 20 steps.
    """

    def __init__(
        self,
        env: gym.Env,
        model: str | PreTrainedModel = "gpt2",
        *,
        learning_rate: float = 5e-4,
        batch_size: int = 8,
        max_samples: int | None = None,
        greedy: bool = True,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        device: str = "auto",
        seed: int | None = None,
        verbose: int = 0,
    ) -> None:
        import torch

        super().__init__(
            env,
            model,
            greedy=greedy,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            device=device,
            seed=seed,
            verbose=verbose,
        )
        self.learning_rate = float(learning_rate)
        self.batch_size = int(batch_size)
        self.max_samples = max_samples
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.learning_rate)
        self._demos: list[Demonstration] | None = None
        self._order: list[int] = []
        self.losses: list[float] = []

    def _examples(self) -> list[Demonstration]:
        if self._demos is None:
            self._demos = demonstrations(
                self.env, max_samples=self.max_samples, seed=self.seed or 0
            )
        return self._demos

    def learn(self, total_timesteps: int, callback: Callback | None = None) -> SupervisedAgent:
        """Teacher-forced steps until ``total_timesteps`` target tokens have been trained on.

        :param total_timesteps: target tokens to train on (at least one step is taken).
        :param callback: ``callback(locals_, globals_)`` after every step; ``False`` stops.
        """
        demos = self._examples()
        pad = int(text_env(self.env).pad_token_id)
        self.net.train()
        done = 0
        try:
            while done < total_timesteps:
                if len(self._order) < self.batch_size:
                    self._order += list(self.rng.permutation(len(demos)))
                batch = self._order[: self.batch_size]
                self._order = self._order[self.batch_size :]
                loss, n_tokens = supervised_step(
                    self.net, self.optimizer, [demos[i] for i in batch], pad
                )
                self.weights_changed = True
                self.losses.append(loss)
                done += n_tokens
                self.num_timesteps += n_tokens
                self.record("train/loss", loss)
                if len(self.losses) % 20 == 0:
                    self.dump()
                    if self.verbose:
                        print(f"supervised step {len(self.losses)}: loss {loss:.3f}")
                if not call_callback(callback, locals()):
                    break
        finally:
            self.net.eval()
            self.cache.reset()
        return self

    def _save_state(self, folder: Path) -> None:
        import torch

        super()._save_state(folder)
        torch.save({"optimizer": self.optimizer.state_dict()}, folder / "optimizer.pt")

    def _load_state(self, folder: Path) -> None:
        import torch

        super()._load_state(folder)
        if (folder / "optimizer.pt").exists():
            state = torch.load(
                folder / "optimizer.pt", map_location=self._device, weights_only=True
            )
            self.optimizer.load_state_dict(state["optimizer"])


def warm_start_options(value: bool | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Normalise a factory's ``warm_start`` argument: ``None``/``False`` off, ``True`` defaults.

    :param value: ``None``, a bool, or keyword arguments of :func:`warm_start`.
    :raises TypeError: any other type.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"warm_start must be a bool or a dict of options, got {value!r}.")
