"""The world model every method shares: encoders, RSSM, decoders, reward and continue heads, and its loss.

Observations are dicts with ``pixels`` uint8 (3, H, W), ``proprio`` float32 (D,) or both; both are
encoded (CNN / MLP on symlog inputs) and the embeddings concatenated. Actions are zero-padded to the
stream's ``action_dim``; the padded entries are zero, so one model serves several embodiments.

The loss (GSA Eq. 1 plus DreamerV3's task heads):
  recon: pixels MSE summed over pixels (unit-variance Gaussian), proprio symlog MSE summed over dims
  dyn:   max(free_nats, KL(sg(q) || p))      rep: max(free_nats, KL(q || sg(p)))   (KL balancing)
  reward: two-hot symlog log-likelihood, on the rows a per-row ``reward_mask`` selects (all by default)
  cont:  Bernoulli log-likelihood of 1 - is_terminal
``use_reward=False, use_cont=False`` gives the paper's reward-free pre-training loss (Eq. 1).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from methods.backbone.config import WorldModelConfig
from methods.backbone.nets import MLP, ConvDecoder, ConvEncoder, TwoHot, categorical_kl, symlog
from methods.backbone.rssm import RSSM, State

OBS_KEYS = ("pixels", "proprio")


class WorldModel(nn.Module):
    def __init__(self, cfg: WorldModelConfig, obs_spec: dict[str, tuple[tuple[int, ...], str]], action_dim: int):
        super().__init__()
        unknown = set(obs_spec) - set(OBS_KEYS)
        if unknown or not obs_spec:
            raise ValueError(f"obs_spec keys {sorted(obs_spec)}: expected pixels and/or proprio")
        self.cfg, self.action_dim = cfg, action_dim
        self.obs_shapes = {k: tuple(int(x) for x in obs_spec[k][0]) for k in OBS_KEYS if k in obs_spec}
        self.encoders = nn.ModuleDict()
        embed_dim = 0
        if "pixels" in self.obs_shapes:
            enc = ConvEncoder(self.obs_shapes["pixels"], cfg.cnn_depth, cfg.cnn_stages, cfg.cnn_kernel,  # type: ignore[arg-type]
                              cfg.channels_last)
            self.encoders["pixels"] = enc
            embed_dim += enc.out_dim
        if "proprio" in self.obs_shapes:
            (dim,) = self.obs_shapes["proprio"]
            mlp = MLP(dim, cfg.mlp_layers, cfg.mlp_units)
            self.encoders["proprio"] = mlp
            embed_dim += mlp.out_dim
        self.embed_dim = embed_dim
        self.rssm = RSSM(cfg, embed_dim, action_dim)
        feat = cfg.feat_dim
        self.decoders = nn.ModuleDict()
        if "pixels" in self.obs_shapes:
            self.decoders["pixels"] = ConvDecoder(feat, cfg.hidden, self.obs_shapes["pixels"], cfg.cnn_depth,  # type: ignore[arg-type]
                                                  cfg.cnn_stages, cfg.cnn_kernel, cfg.channels_last)
        if "proprio" in self.obs_shapes:
            self.decoders["proprio"] = MLP(feat, cfg.mlp_layers, cfg.mlp_units, self.obs_shapes["proprio"][0])
        self.reward_head = MLP(feat, cfg.mlp_layers, cfg.mlp_units, cfg.bins, zero_out=True)
        self.cont_head = MLP(feat, cfg.mlp_layers, cfg.mlp_units, 1)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when ``amp`` is on and the model is on CUDA; a no-op on the CPU."""
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _check_obs(self, obs: dict[str, torch.Tensor], lead: tuple[int, ...]) -> None:
        for k, shape in self.obs_shapes.items():
            assert k in obs, f"observation {k!r} missing: the world model was built for {sorted(self.obs_shapes)}"
            assert tuple(obs[k].shape) == (*lead, *shape), \
                f"obs[{k!r}] has shape {tuple(obs[k].shape)}, expected {(*lead, *shape)}"

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings (..., E) for observations with any leading dims."""
        key = next(iter(self.obs_shapes))
        lead = tuple(obs[key].shape[: obs[key].dim() - len(self.obs_shapes[key])])
        self._check_obs(obs, lead)
        parts = []
        for k, enc in self.encoders.items():
            x = obs[k].reshape(-1, *self.obs_shapes[k])
            if k == "proprio":
                x = symlog(x.float())
            parts.append(enc(x))
        return torch.cat(parts, -1).view(*lead, self.embed_dim)

    def features(self, state: State) -> torch.Tensor:
        """s_t = [h_t, z_t] (Section 3.3), shape (..., deter + stoch * classes)."""
        return self.rssm.features(state)

    def initial(self, batch: int) -> State:
        return self.rssm.initial(batch, self.device)

    def reward(self, feat: torch.Tensor) -> torch.Tensor:
        """Predicted reward (mean of the two-hot head)."""
        return TwoHot(self.reward_head(feat), self.cfg.bin_range).mean()

    def cont(self, feat: torch.Tensor) -> torch.Tensor:
        """Predicted probability that the episode continues."""
        return torch.sigmoid(self.cont_head(feat).squeeze(-1).float())

    # ------------------------------------------------------------------ the RSSM, as methods use it
    def obs_step(self, state: State, prev_action: torch.Tensor, obs: dict[str, torch.Tensor],
                 is_first: torch.Tensor, sample: bool = True) -> State:
        """One posterior step for acting on a batch (N, ...) of single observations."""
        return self.rssm.obs_step(state, prev_action, self.encode(obs), is_first, sample)

    def observe(self, obs: dict[str, torch.Tensor], prev_action: torch.Tensor, is_first: torch.Tensor,
                state: State | None = None) -> tuple[State, torch.Tensor]:
        """Posterior states (B, T, ...) and prior log-probs (B, T, S, C) for sequences (B, T, ...)."""
        return self.rssm.observe(self.encode(obs), prev_action, is_first, state)

    def imagine(self, policy: Callable[[torch.Tensor], torch.Tensor], start: State,
                horizon: int) -> tuple[State, torch.Tensor]:
        return self.rssm.imagine(policy, start, horizon)

    # ------------------------------------------------------------------ the loss
    def loss(self, batch: dict[str, torch.Tensor], use_reward: bool = True, use_cont: bool = True,
             reward_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], State]:
        """World-model loss on a batch of sequences (B, T, ...).

        ``batch``: the observation keys, ``prev_action`` (B, T, A) (or ``action``, shifted here),
        ``is_first`` (B, T), and with ``use_reward`` ``reward`` (B, T), with ``use_cont`` ``is_terminal``.
        ``reward_mask`` (B,): rows whose reward trains the reward head (e.g. online rows only).
        Returns (scalar loss, metrics as 0-d tensors, posterior states (B, T, ...))."""
        key = next(iter(self.obs_shapes))
        b, t = batch[key].shape[:2]
        prev_action = batch.get("prev_action")
        if prev_action is None:
            action = batch["action"]
            prev_action = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
        is_first = batch["is_first"]
        assert is_first.shape == (b, t), f"is_first {tuple(is_first.shape)}: expected ({b}, {t})"
        with self.autocast():
            post, prior_logp = self.observe({k: batch[k] for k in self.obs_shapes}, prev_action, is_first)
            feat = self.features(post)
            flat = feat.reshape(b * t, -1)
            terms: dict[str, torch.Tensor] = {}
            for k, dec in self.decoders.items():
                pred = dec(flat).float()
                if k == "pixels":
                    target = batch[k].reshape(b * t, *self.obs_shapes[k]).float() / 255.0 - 0.5
                else:
                    target = symlog(batch[k].reshape(b * t, -1).float())
                terms[f"{k}_loss"] = (pred - target).pow(2).reshape(b, t, -1).sum(-1)
            recon = sum(terms.values())
            post_logp = post["logits"]
            dyn_kl = categorical_kl(post_logp.detach(), prior_logp)
            rep_kl = categorical_kl(post_logp, prior_logp.detach())
            dyn = dyn_kl.clamp(min=self.cfg.free_nats)
            rep = rep_kl.clamp(min=self.cfg.free_nats)
            total = self.cfg.recon_scale * recon + self.cfg.dyn_scale * dyn + self.cfg.rep_scale * rep
            metrics: dict[str, torch.Tensor] = {f"wm/{k}": v.mean() for k, v in terms.items()}
            if use_reward:
                reward = batch["reward"]
                assert reward.shape == (b, t), f"reward {tuple(reward.shape)}: expected ({b}, {t})"
                nll = -TwoHot(self.reward_head(flat), self.cfg.bin_range).log_prob(reward.reshape(-1)).view(b, t)
                if reward_mask is None:
                    reward_loss = nll.mean()
                else:
                    assert reward_mask.shape == (b,), f"reward_mask {tuple(reward_mask.shape)}: expected ({b},)"
                    m = reward_mask.to(nll.dtype)[:, None].expand(b, t)
                    reward_loss = (nll * m).sum() / m.sum().clamp(min=1.0)
                metrics["wm/reward_loss"] = reward_loss
            if use_cont:
                target = 1.0 - batch["is_terminal"].float()
                logits = self.cont_head(flat).float().view(b, t)
                cont_loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                metrics["wm/cont_loss"] = cont_loss.mean()
            loss = total.mean()
            if use_reward:
                loss = loss + self.cfg.reward_scale * metrics["wm/reward_loss"]
            if use_cont:
                loss = loss + self.cfg.cont_scale * metrics["wm/cont_loss"]
        metrics |= {"wm/loss": loss.detach(), "wm/dyn_loss": dyn.mean().detach(), "wm/rep_loss": rep.mean().detach(),
                    "wm/kl": dyn_kl.mean().detach(),
                    "wm/prior_entropy": -(prior_logp.exp() * prior_logp).sum((-2, -1)).mean().detach(),
                    "wm/post_entropy": -(post_logp.exp() * post_logp).sum((-2, -1)).mean().detach()}
        return loss, {k: v.detach() for k, v in metrics.items()}, post


def metrics_to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """One device sync for a whole metrics dict."""
    if not metrics:
        return {}
    # the optimizers' grad norms are CPU scalars beside the losses on the model's device: one device for all
    device = next((v.device for v in metrics.values() if v.device.type != "cpu"), torch.device("cpu"))
    values = torch.stack([v.detach().float().reshape(()).to(device) for v in metrics.values()]).tolist()
    return dict(zip(metrics, values))


def build_world_model(cfg: WorldModelConfig, obs_spec: dict[str, Any], action_dim: int,
                      device: str | torch.device = "cpu") -> WorldModel:
    return WorldModel(cfg, obs_spec, action_dim).to(device)
