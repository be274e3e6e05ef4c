"""The recurrent state-space model (GSA Section 3.2): sequence model, posterior and prior.

  h_t = f(h_{t-1}, z_{t-1}, a_{t-1})      block GRU over embeddings of h, z and a
  z_t ~ q(z_t | h_t, e_t)                 posterior from h_t and the observation embedding e_t
  z_t ~ p(z_t | h_t)                      prior (dynamics predictor)

A state is a dict: ``deter`` (N, deter), ``stoch`` (N, S, C) one-hot samples, ``logits`` (N, S, C)
log-probabilities of the distribution ``stoch`` was drawn from. Sequences carry a time axis after N.
The action fed at step t is the one taken at t-1 (zero at episode starts).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from methods.backbone.config import WorldModelConfig
from methods.backbone.nets import BlockGRU, dense, latent_logits, mode_onehot, sample_onehot

State = dict[str, torch.Tensor]


class RSSM(nn.Module):
    def __init__(self, cfg: WorldModelConfig, embed_dim: int, action_dim: int):
        super().__init__()
        self.cfg, self.embed_dim, self.action_dim = cfg, embed_dim, action_dim
        h, d, sc = cfg.hidden, cfg.deter, cfg.stoch_flat
        self.emb_deter = dense(d, h)
        self.emb_stoch = dense(sc, h)
        self.emb_action = dense(action_dim, h)
        self.core = BlockGRU(3 * h, d, cfg.blocks)
        self.prior_net = nn.Sequential(dense(d, h), nn.Linear(h, sc))
        # The posterior's first layer on [h_t, e_t], split in two so the embedding half runs once for a
        # whole sequence outside the time loop.
        self.post_deter = nn.Linear(d, h, bias=False)
        self.post_embed = nn.Linear(embed_dim, h, bias=False)
        self.post_out = nn.Sequential(nn.LayerNorm(h), nn.SiLU(), nn.Linear(h, sc))

    # -- states
    def initial(self, batch: int, device: torch.device | str | None = None) -> State:
        device = device or next(self.parameters()).device
        c = self.cfg
        return {"deter": torch.zeros(batch, c.deter, device=device),
                "stoch": torch.zeros(batch, c.stoch, c.classes, device=device),
                "logits": torch.full((batch, c.stoch, c.classes), -torch.log(torch.tensor(float(c.classes))).item(),
                                     device=device)}

    def features(self, state: State) -> torch.Tensor:
        stoch = state["stoch"]
        return torch.cat([state["deter"], stoch.reshape(*stoch.shape[:-2], -1)], -1)

    def _logits(self, raw: torch.Tensor) -> torch.Tensor:
        return latent_logits(raw, self.cfg.stoch, self.cfg.classes, self.cfg.unimix)

    def _draw(self, logp: torch.Tensor, sample: bool) -> torch.Tensor:
        return sample_onehot(logp) if sample else mode_onehot(logp)

    def prior(self, deter: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (..., S, C) of p(z_t | h_t); runs batched over any leading dims."""
        return self._logits(self.prior_net(deter))

    def _recur(self, state: State, action_emb: torch.Tensor) -> torch.Tensor:
        stoch = state["stoch"]
        x = torch.cat([self.emb_deter(state["deter"]), self.emb_stoch(stoch.reshape(stoch.shape[0], -1)),
                       action_emb], -1)
        return self.core(x, state["deter"])

    def _img_core(self, state: State, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h_t and the prior's log-probs from the previous state and action: the deterministic part of a prior
        step (sampling stays outside, so a compiled core draws the same samples as eager code)."""
        deter = self._recur(state, self.emb_action(action))
        return deter, self.prior(deter)

    def _post_core(self, state: State, action_emb: torch.Tensor,
                   post_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h_t and the posterior's log-probs: the deterministic part of a posterior step in ``observe``."""
        deter = self._recur(state, action_emb)
        return deter, self._logits(self.post_out(self.post_deter(deter) + post_emb))

    def compile_steps(self) -> None:
        """``torch.compile`` the prior and posterior step cores used in training (``imagine``, ``observe``).
        Off by default: on this 2-core CPU a tiny proprio update took 0.526/0.590 s eager and 0.539/0.585 s
        compiled (alternating, beside one busy process), for seconds to minutes of compilation. Acting
        (``obs_step``, batch sizes that change) stays eager."""
        self._img_core = torch.compile(self._img_core, dynamic=False)  # type: ignore[method-assign]
        self._post_core = torch.compile(self._post_core, dynamic=False)  # type: ignore[method-assign]

    @staticmethod
    def _reset(state: State, is_first: torch.Tensor, initial: State) -> State:
        keep = (~is_first.bool()).to(state["deter"].dtype)
        return {k: v * keep.view(-1, *[1] * (v.dim() - 1)) + initial[k] * (1 - keep).view(-1, *[1] * (v.dim() - 1))
                for k, v in state.items()}

    # -- one step
    def img_step(self, state: State, action: torch.Tensor, sample: bool = True) -> State:
        """The prior step: imagine z_t from h_t without an observation."""
        assert action.shape == (state["deter"].shape[0], self.action_dim), \
            f"action {tuple(action.shape)}: expected ({state['deter'].shape[0]}, {self.action_dim})"
        deter, logp = self._img_core(state, action)
        return {"deter": deter, "stoch": self._draw(logp, sample), "logits": logp}

    def obs_step(self, state: State, prev_action: torch.Tensor, embed: torch.Tensor, is_first: torch.Tensor,
                 sample: bool = True) -> State:
        """The posterior step for acting: one observation embedding per row; rows with is_first restart."""
        n = embed.shape[0]
        assert prev_action.shape == (n, self.action_dim) and is_first.shape == (n,), \
            f"prev_action {tuple(prev_action.shape)}, is_first {tuple(is_first.shape)}: expected ({n}, {self.action_dim}), ({n},)"
        state = self._reset(state, is_first, self.initial(n, embed.device))
        prev_action = prev_action * (~is_first.bool()).to(prev_action.dtype)[:, None]
        deter = self._recur(state, self.emb_action(prev_action))
        logp = self._logits(self.post_out(self.post_deter(deter) + self.post_embed(embed)))
        return {"deter": deter, "stoch": self._draw(logp, sample), "logits": logp}

    # -- sequences
    def observe(self, embed: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor,
                state: State | None = None) -> tuple[State, torch.Tensor]:
        """Posterior states (B, T, ...) for a batch of sequences, and the prior log-probs (B, T, S, C)."""
        b, t = embed.shape[:2]
        assert prev_action.shape == (b, t, self.action_dim), \
            f"prev_action {tuple(prev_action.shape)}: expected ({b}, {t}, {self.action_dim})"
        assert is_first.shape == (b, t), f"is_first {tuple(is_first.shape)}: expected ({b}, {t})"
        initial = self.initial(b, embed.device)
        state = state if state is not None else initial
        keep = (~is_first.bool()).to(embed.dtype)
        # Everything that does not depend on the recurrence runs once for the whole sequence.
        act_emb = self.emb_action(prev_action * keep[..., None])
        post_emb = self.post_embed(embed)
        deters, stochs, logits = [], [], []
        for i in range(t):
            state = self._reset(state, is_first[:, i], initial)
            deter, logp = self._post_core(state, act_emb[:, i], post_emb[:, i])
            state = {"deter": deter, "stoch": sample_onehot(logp), "logits": logp}
            deters.append(deter)
            stochs.append(state["stoch"])
            logits.append(logp)
        post = {"deter": torch.stack(deters, 1), "stoch": torch.stack(stochs, 1), "logits": torch.stack(logits, 1)}
        return post, self.prior(post["deter"])

    def imagine(self, policy: Callable[[torch.Tensor], torch.Tensor], start: State,
                horizon: int) -> tuple[State, torch.Tensor]:
        """Roll the prior forward ``horizon`` steps from ``start`` (N, ...), acting with ``policy(feat)``.

        Returns the states (N, horizon + 1, ...) including the start, and the actions (N, horizon, A)
        (action i is taken in state i). Gradients flow through the actions into the dynamics, so an actor
        can learn by backpropagating imagined returns (DreamerV3's continuous-action gradient)."""
        states, actions = [start], []
        state = start
        for _ in range(horizon):
            action = policy(self.features(state))
            state = self.img_step(state, action)
            states.append(state)
            actions.append(action)
        return {k: torch.stack([s[k] for s in states], 1) for k in start}, torch.stack(actions, 1)
