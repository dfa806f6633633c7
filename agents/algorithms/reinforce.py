"""REINFORCE with a causal-LM policy, with or without a learned baseline, in one readable file.

Williams' (1992) Monte Carlo policy gradient at the token level. The policy is the causal LM's
next-token distribution (:class:`agents.networks.actor_critic.CausalLMActorCritic`, the network
every LM agent of the zoo shares); with ``baseline=True`` a value head on the same trunk estimates
the return from each state and the gradient uses the advantage ``G_t - V(s_t)`` (REINFORCE with
baseline, Sutton and Barto, section 13.4); with ``baseline=False`` it uses the return ``G_t``
itself.

One iteration:

1. Roll out ``batch_episodes`` whole episodes on the env, sampling each token from the policy (a
   per-env KV cache computes one new position per step).
2. Run each episode's final observation, which holds the prompt and every generated token, through
   the trunk *once*: the hidden state before token ``t`` gives ``log pi(a_t | s_t)`` and ``V(s_t)``.
3. Loss, averaged over episodes: ``-sum_t (G_t - b_t) log pi(a_t | s_t)`` (``b_t = V(s_t)``, detached,
   or 0) ``+ vf_coef * mean_t (V(s_t) - G_t)^2 - ent_coef * mean entropy``; one Adam step with
   gradient clipping.

For the tabular REINFORCE of small word-level envs see :class:`agents.tabular.learning.Reinforce`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from agents.common.base import Callback, LMAgent, ObsDict, call_callback

#: a finished episode: its final observation, actions, rewards, and the real tokens of the
#: observation before each action
Episode = tuple[dict[str, np.ndarray], list[int], list[float], list[int]]

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["LMReinforce"]


class LMReinforce(LMAgent):
    """REINFORCE over the vocabulary with a causal-LM policy (and optionally a value baseline).

    :param env: an lm-gym env (one env; episodes are collected one after the other).
    :param model: causal LM name or folder (see :func:`agents.common.base.model_for_env`) or a
        model.
    :param baseline: subtract a learned state value (a value head on the shared trunk).
    :param learning_rate: Adam step size (pretrained GPT-2: about 1e-5; random tiny GPT-2: 1e-3).
    :param batch_episodes: episodes per gradient step.
    :param gamma: discount of the return.
    :param ent_coef: entropy bonus.
    :param vf_coef: weight of the value loss (with a baseline).
    :param max_grad_norm: gradient clipping.
    :param normalize_advantage: standardise the advantages of a batch.
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param seed: seeds the sampling and the first reset.
    :param verbose: 1 prints a line per update.
    """

    def __init__(
        self,
        env: gym.Env,
        model: str | PreTrainedModel = "gpt2",
        *,
        baseline: bool = True,
        learning_rate: float = 1e-5,
        batch_episodes: int = 8,
        gamma: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 1.0,
        normalize_advantage: bool = False,
        device: str = "auto",
        seed: int | None = None,
        verbose: int = 0,
    ) -> None:
        import torch

        super().__init__(env, seed=seed, verbose=verbose)
        if batch_episodes < 1:
            raise ValueError(f"batch_episodes must be >= 1, got {batch_episodes}.")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}.")
        self.baseline = bool(baseline)
        self.learning_rate = float(learning_rate)
        self.batch_episodes = int(batch_episodes)
        self.gamma = float(gamma)
        self.ent_coef = float(ent_coef)
        self.vf_coef = float(vf_coef)
        self.max_grad_norm = float(max_grad_norm)
        self.normalize_advantage = bool(normalize_advantage)
        self._init_lm(model, device, value_head=self.baseline, seeded_init=True)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.learning_rate)
        self._obs: dict[str, np.ndarray] | None = None
        self._reset_seed = seed
        self.n_updates = 0
        #: return of every finished training episode, in order
        self.episode_returns: list[float] = []

    # -- acting -----------------------------------------------------------------------------------

    def _predict_batch(self, obs: ObsDict, deterministic: bool) -> np.ndarray:
        """Tokens drawn from the policy (``deterministic``: the most likely ones)."""
        return self._choose(self._logits(obs), deterministic)

    def action_log_probs(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """The policy's log-probabilities of every token, ``(batch, V)``."""
        import torch

        return torch.log_softmax(self._logits(observations), -1).cpu().numpy()

    # -- learning ---------------------------------------------------------------------------------

    def learn(self, total_timesteps: int, callback: Callback | None = None) -> LMReinforce:
        """Collect episodes and take a gradient step every ``batch_episodes`` episodes.

        Steps of an episode left unfinished at the end are kept for the next call.

        :param total_timesteps: env steps to run.
        :param callback: ``callback(locals_, globals_)`` after every step; ``False`` stops.
        :return: the agent.
        """
        if self._obs is None:
            self._obs, _ = self.env.reset(seed=self._reset_seed)
            self._reset_seed = None
            self._actions: list[int] = []
            self._rewards: list[float] = []
            self._real: list[int] = []
        batch: list[Episode] = []
        for _ in range(int(total_timesteps)):
            action, _ = self.predict(self._obs)
            real = int(np.asarray(self._obs["attention_mask"]).sum())  # tokens before the action
            obs, reward, terminated, truncated, _info = self.env.step(action)
            self.num_timesteps += 1
            self._actions.append(int(action))
            self._rewards.append(float(reward))
            self._real.append(real)
            if terminated or truncated:
                batch.append((obs, self._actions, self._rewards, self._real))
                self.episode_returns.append(float(sum(self._rewards)))
                self._actions, self._rewards, self._real = [], [], []
                obs, _ = self.env.reset()
                if len(batch) >= self.batch_episodes:
                    self._update(batch)
                    batch = []
            self._obs = obs
            if not call_callback(callback, locals()):
                break
        if batch:
            self._update(batch)
        return self

    def _returns(self, rewards: list[float]) -> list[float]:
        out, g = [], 0.0
        for r in reversed(rewards):
            g = r + self.gamma * g
            out.append(g)
        return out[::-1]

    def _update(self, episodes: list[Episode]) -> None:
        import torch

        ids = torch.as_tensor(np.stack([e[0]["input_ids"] for e in episodes]), device=self._device)
        mask = torch.as_tensor(
            np.stack([e[0]["attention_mask"] for e in episodes]), device=self._device
        )
        length = ids.shape[1]
        rows, cols, actions, returns = [], [], [], []
        for b, (final, acts, rews, reals) in enumerate(episodes):
            # the final window's real tokens end at its last column; the state before action j
            # (which held reals[j] real tokens) ends reals[j] real tokens in, and action j is the
            # next token (a multi-turn env appends partner turns in between)
            start = length - int(np.asarray(final["attention_mask"]).sum())
            rows += [b] * len(acts)
            cols += [start + r - 1 for r in reals]
            actions += acts
            returns += self._returns(rews)
        rows_t = torch.tensor(rows, device=self._device)
        cols_t = torch.tensor(cols, device=self._device)
        actions_t = torch.tensor(actions, device=self._device)
        returns_t = torch.tensor(returns, dtype=torch.float32, device=self._device)
        if not torch.equal(ids[rows_t, cols_t + 1], actions_t):
            raise RuntimeError(
                "The final observation does not hold the episode's actions where they were taken: "
                "the observation window must hold the whole episode (max_prompt_tokens + "
                "max_new_tokens)."
            )

        hidden, _ = self.net.run_trunk(ids.long(), mask.long())
        h = hidden[rows_t, cols_t]
        logp_all = torch.log_softmax(self.net.logits_from_hidden(h), -1)
        logp = logp_all.gather(1, actions_t[:, None]).squeeze(1)
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        if self.baseline:
            values = self.net.value_from_hidden(h)
            advantages = returns_t - values.detach()
            value_loss = torch.mean((values - returns_t) ** 2)
        else:
            advantages = returns_t
            value_loss = torch.zeros((), device=self._device)
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        pg_loss = -(advantages * logp).sum() / len(episodes)
        loss = pg_loss + self.vf_coef * value_loss - self.ent_coef * entropy
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.n_updates += 1

        ep_returns = [float(sum(e[2])) for e in episodes]
        self.record("rollout/ep_rew_mean", float(np.mean(ep_returns)))
        self.record("rollout/ep_len_mean", float(np.mean([len(e[1]) for e in episodes])))
        self.record("train/policy_loss", float(pg_loss.detach()))
        self.record("train/value_loss", float(value_loss.detach()))
        self.record("train/entropy", float(entropy.detach()))
        self.record("train/n_updates", self.n_updates)
        self.dump()
        if self.verbose:
            print(
                f"reinforce update {self.n_updates}: steps {self.num_timesteps}, "
                f"mean return {np.mean(ep_returns):.3f}, entropy {float(entropy):.2f}"
            )

    # -- persistence ------------------------------------------------------------------------------

    def _save_state(self, folder: Path) -> None:
        import torch

        torch.save(
            {
                "net": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "n_updates": self.n_updates,
            },
            folder / "reinforce.pt",
        )

    def _load_state(self, folder: Path) -> None:
        import torch

        state = torch.load(folder / "reinforce.pt", map_location=self._device, weights_only=True)
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.n_updates = int(state["n_updates"])
        self.cache.reset()
        self._obs = None
