"""Actor-critic trained in imagination (GSA Section 3.3, Eqs. 2-3; DreamerV3's recipe).

- Policy: a bounded normal over the padded action vector, mean tanh(.), std in [min_std, max_std];
  actions are clipped to [-1, 1] and multiplied by the task's action mask, and the entropy (and the
  log-probability, for REINFORCE) counts only the masked dims.
- Critic: two-hot symlog distribution over lambda-returns (Eq. 2), bootstrapped with its own (detached)
  values; a slow copy (EMA, fraction 0.02 per update) is the target of a regulariser that keeps the critic
  close to it, as in DreamerV3 (``slow_reg``; DreamerV2 bootstrapped from the slow copy instead).
- Actor loss (Eq. 3): -(normalised lambda-return) - entropy_coef * entropy, with returns divided by
  max(1, P95 - P5) (EMA percentiles). With ``actor_grad="dynamics"`` the returns are backpropagated
  through the frozen world model into the actions; with ``"reinforce"`` a score-function gradient with the
  critic as baseline is used instead.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator

import torch
from torch import nn

from methods.backbone.config import ActorCriticConfig
from methods.backbone.nets import MLP, Optimizer, TwoHot
from methods.backbone.rssm import State

_HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` need no gradients inside the block (gradients still flow through it)."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def lambda_returns(reward: torch.Tensor, disc: torch.Tensor, value: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 2. ``reward``/``disc`` (N, H): received / discount (gamma * continue) on the way into state t+1;
    ``value`` (N, H+1). Returns V^lambda (N, H) for states 0..H-1, bootstrapped with value[:, H]."""
    n, h = reward.shape
    assert disc.shape == (n, h) and value.shape == (n, h + 1), \
        f"reward {tuple(reward.shape)}, disc {tuple(disc.shape)}, value {tuple(value.shape)}"
    out = []
    last = value[:, -1]
    for t in reversed(range(h)):
        last = reward[:, t] + disc[:, t] * ((1 - lam) * value[:, t + 1] + lam * last)
        out.append(last)
    return torch.stack(out[::-1], 1)


class ActorCritic(nn.Module):
    def __init__(self, cfg: ActorCriticConfig, feat_dim: int, action_dim: int):
        super().__init__()
        self.cfg, self.feat_dim, self.action_dim = cfg, feat_dim, action_dim
        self.actor = MLP(feat_dim, cfg.mlp_layers, cfg.mlp_units, 2 * action_dim)
        self.critic = MLP(feat_dim, cfg.mlp_layers, cfg.mlp_units, cfg.bins, zero_out=True)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("ret_low", torch.zeros(()))
        self.register_buffer("ret_high", torch.zeros(()))
        self.register_buffer("ret_seen", torch.zeros((), dtype=torch.bool))
        self.actor_opt = Optimizer(self.actor.parameters(), cfg.actor_lr, cfg.eps, cfg.weight_decay, cfg.grad_clip,
                                   name="actor/loss")
        self.critic_opt = Optimizer(self.critic.parameters(), cfg.critic_lr, cfg.eps, cfg.weight_decay, cfg.grad_clip,
                                    name="critic/loss")

    # ------------------------------------------------------------------ the policy
    def policy_dist(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.actor(feat).float().chunk(2, -1)
        c = self.cfg
        return torch.tanh(mean), (c.max_std - c.min_std) * torch.sigmoid(std + 2.0) + c.min_std

    def act(self, feat: torch.Tensor, mask: torch.Tensor, explore: bool) -> torch.Tensor:
        """Actions (N, A) in [-1, 1], zero outside ``mask`` (A,); sampled when exploring, else the mean."""
        assert mask.shape == (self.action_dim,), f"mask {tuple(mask.shape)}: expected ({self.action_dim},)"
        mean, std = self.policy_dist(feat)
        action = mean + std * torch.randn_like(std) if explore else mean
        return action.clamp(-1.0, 1.0) * mask

    def entropy(self, std: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Gaussian entropy summed over the masked dims only."""
        return ((torch.log(std) + _HALF_LOG_2PI_E) * mask).sum(-1)

    def value(self, feat: torch.Tensor, slow: bool = False) -> torch.Tensor:
        net = self.slow_critic if slow else self.critic
        return TwoHot(net(feat), self.cfg.bin_range).mean()

    # ------------------------------------------------------------------ training
    def _normalise(self, ret: torch.Tensor) -> torch.Tensor:
        """Update the EMA of the return percentiles; returns the scale max(1, P95 - P5)."""
        c = self.cfg
        flat = ret.detach().float().flatten()
        if flat.numel() > 100_000:  # quantile's cost grows with n; a strided subset estimates it as well
            flat = flat[:: flat.numel() // 100_000 + 1]
        q = torch.quantile(flat, torch.tensor([c.return_low / 100, c.return_high / 100], device=flat.device))
        if not bool(self.ret_seen):
            self.ret_low.copy_(q[0])
            self.ret_high.copy_(q[1])
            self.ret_seen.fill_(True)
        else:
            self.ret_low.mul_(c.return_decay).add_((1 - c.return_decay) * q[0])
            self.ret_high.mul_(c.return_decay).add_((1 - c.return_decay) * q[1])
        return torch.clamp(self.ret_high - self.ret_low, min=1.0)

    def loss(self, world_model: nn.Module, start: State, start_cont: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Imagine from ``start`` (N, ...) and return (actor loss, critic loss, metrics).

        ``start_cont`` (N,): 1 where the start state is not terminal. The world model's weights are frozen
        here; with the dynamics gradient, returns still backpropagate through it into the actions."""
        c = self.cfg
        n = start["deter"].shape[0]
        assert start_cont.shape == (n,), f"start_cont {tuple(start_cont.shape)}: expected ({n},)"
        assert mask.shape == (self.action_dim,), f"mask {tuple(mask.shape)}: expected ({self.action_dim},)"
        start = {k: v.detach() for k, v in start.items()}
        dists: list[tuple[torch.Tensor, torch.Tensor]] = []
        dynamics = c.actor_grad == "dynamics"

        def policy(feat: torch.Tensor) -> torch.Tensor:
            mean, std = self.policy_dist(feat.detach())
            dists.append((mean, std))
            raw = mean + std * torch.randn_like(std)
            if not dynamics:
                raw = raw.detach()
            # clip to the action bounds, passing the gradient straight through
            return (raw + (raw.clamp(-1.0, 1.0) - raw).detach()) * mask

        with frozen(world_model), world_model.autocast():  # type: ignore[attr-defined]
            with contextlib.nullcontext() if dynamics else torch.no_grad():
                states, actions = world_model.imagine(policy, start, c.horizon)  # type: ignore[attr-defined]
            feats = world_model.features(states)  # type: ignore[attr-defined]  (N, H+1, F)
            reward = world_model.reward(feats[:, 1:]).float()  # type: ignore[attr-defined]
            cont = world_model.cont(feats[:, 1:]).float()  # type: ignore[attr-defined]
        # One critic pass serves the bootstrap values (the actor's gradient flows through feats; each optimizer
        # differentiates only its own parameters), the baseline and the critic's loss (its gradient reaches the
        # critic's weights only, as if feats were detached).
        critic_all = TwoHot(self.critic(feats), c.bin_range)
        value = critic_all.mean().float()   # (N, H+1)
        disc = c.gamma * cont
        ret = lambda_returns(reward, disc, value, c.lam)  # (N, H)
        weight = torch.cumprod(torch.cat([start_cont[:, None].float(), disc[:, :-1]], 1), 1).detach()
        scale = self._normalise(ret)
        if dynamics:
            mean, std = torch.stack([d[0] for d in dists], 1), torch.stack([d[1] for d in dists], 1)
        else:  # imagination ran without a graph: the policy is evaluated again, with one
            mean, std = self.policy_dist(feats[:, :-1].detach())
        entropy = self.entropy(std, mask)
        critic = TwoHot(critic_all.logits[:, :-1], c.bin_range)
        base = value[:, :-1].detach()
        adv = (ret - base) / scale
        if dynamics:
            objective = adv
        else:
            logp = (-0.5 * ((actions.detach() - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi))
            objective = (logp * mask).sum(-1) * adv.detach()
        actor_loss = -(weight * (objective + c.entropy * entropy)).mean()
        critic_nll = -critic.log_prob(ret.detach())
        if c.slow_reg > 0:  # DreamerV3: keep the critic close to its slow (EMA) copy
            with torch.no_grad():
                slow_target = self.value(feats[:, :-1].detach(), slow=True).float()
            critic_nll = critic_nll - c.slow_reg * critic.log_prob(slow_target)
        critic_loss = (weight * critic_nll).mean()
        metrics = {"actor/loss": actor_loss.detach(), "critic/loss": critic_loss.detach(),
                   "actor/entropy": entropy.mean().detach(), "actor/std": std.mean().detach(),
                   "actor/return_scale": scale.detach(), "actor/imagined_reward": reward.mean().detach(),
                   "critic/return": ret.mean().detach(), "critic/value": base.mean(),
                   "actor/action_abs": (actions.detach().abs() * mask).sum(-1).mean() / mask.sum().clamp(min=1)}
        return actor_loss, critic_loss, metrics

    def train_step(self, world_model: nn.Module, start: State, start_cont: torch.Tensor,
                   mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """One actor and one critic update from imagined rollouts, then the slow critic moves. A non-finite
        loss raises NonFiniteLossError naming it and the non-finite metrics (``Optimizer.step``)."""
        actor_loss, critic_loss, metrics = self.loss(world_model, start, start_cont, mask)
        # the critic's loss shares the critic pass with the actor's: keep the graph for it
        metrics["actor/grad_norm"] = torch.tensor(self.actor_opt.step(actor_loss, metrics, retain_graph=True)["grad_norm"])
        metrics["critic/grad_norm"] = torch.tensor(self.critic_opt.step(critic_loss, metrics)["grad_norm"])
        self.update_slow_critic()
        return metrics

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        f = self.cfg.slow_critic_fraction
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.mul_(1 - f).add_(fast.detach(), alpha=f)

    # ------------------------------------------------------------------ state
    def optim_state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor_opt.state_dict(), "critic": self.critic_opt.state_dict()}

    def load_optim_state_dict(self, state: dict[str, Any]) -> None:
        self.actor_opt.load_state_dict(state["actor"])
        self.critic_opt.load_state_dict(state["critic"])
