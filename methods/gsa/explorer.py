"""An intrinsic-motivation explorer for collecting reward-free data: ensemble disagreement on the backbone.

The paper's DMC data came from unsupervised RL agents trained by curiosity (Section 4 "Dataset"). This
explorer is in the spirit of Plan2Explore (Sekar et al. 2020): a world model (``methods.backbone``) learns
online without rewards (Eq. 1); an ensemble of heads predicts the observation embedding e_t from the
deterministic state h_t (which already depends on the action a_{t-1}); the variance of their predictions is
the intrinsic reward, and the backbone's actor-critic maximises it in imagination. Early steps are uniform
random (warm-up). The explorer keeps learning across the episodes it collects, so its data moves from random
towards novel states.

It acts on the state vector (proprio), which is cheap on a CPU, whatever observations the dataset stores.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.replay import EpisodeReplay
from methods.backbone.actor_critic import ActorCritic
from methods.backbone.config import DEBUG_AC, DEBUG_MODEL, TINY_AC, TINY_MODEL, ActorCriticConfig, WorldModelConfig
from methods.backbone.nets import MLP, Optimizer
from methods.backbone.world_model import WorldModel
from methods.base import MAX_BATCH, MAX_COUNT, MAX_LENGTH, MAX_WIDTH, Step, ranged


@dataclass(frozen=True)
class ExplorerConfig:
    model: WorldModelConfig = field(default_factory=lambda: TINY_MODEL)   # CPU-sized backbone (config.py)
    ac: ActorCriticConfig = field(default_factory=lambda: TINY_AC)
    ensemble: int = ranged(5, ge=2, le=64)  # Plan2Explore: 5 one-step predictors
    head_layers: int = ranged(2, ge=0, le=32)  # ours: MLP heads of the ensemble
    head_units: int = ranged(256, ge=1, le=MAX_WIDTH)
    head_lr: float = ranged(3e-4, gt=0)  # ours
    batch_size: int = ranged(16, ge=1, le=MAX_BATCH)  # ours: CPU-sized (DreamerV3: 16 x 64)
    seq_len: int = ranged(32, ge=1, le=MAX_LENGTH)
    train_every: int = ranged(8, ge=1, le=MAX_COUNT)  # agent steps per update (train ratio batch*seq/train_every = 64)
    warmup_steps: int = ranged(500, ge=0, le=MAX_COUNT)  # uniform random actions before the first update


DEBUG = ExplorerConfig(model=DEBUG_MODEL, ac=DEBUG_AC, ensemble=3, head_layers=1, head_units=16, batch_size=4,
                       seq_len=8, train_every=4, warmup_steps=20)


def reward_free_steps(obs: dict[str, np.ndarray], action: np.ndarray, next_obs: dict[str, np.ndarray], first: bool,
                      last: bool, terminal: bool) -> list[Step]:
    """A collecting explorer's replay steps for one env step, in the replay's convention and without reward:
    the state acted on with its (padded) action, and at an episode's end the final state with a zero action."""
    out = [Step({"proprio": obs["proprio"]}, np.asarray(action, np.float32), 0.0, first, False, False)]
    if last:
        out.append(Step({"proprio": next_obs["proprio"]}, np.zeros(len(action), np.float32), 0.0, False, True,
                        terminal))
    return out


class _Disagreement(nn.Module):
    """The world model as the actor-critic sees it, with the ensemble's disagreement as the reward."""

    def __init__(self, wm: WorldModel, heads: nn.ModuleList):
        super().__init__()
        self.wm, self.heads = wm, heads

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.wm.autocast()

    def imagine(self, policy: Any, start: Any, horizon: int) -> Any:
        return self.wm.imagine(policy, start, horizon)

    def features(self, state: Any) -> torch.Tensor:
        return self.wm.features(state)

    def predictions(self, deter: torch.Tensor) -> torch.Tensor:
        return torch.stack([h(deter) for h in self.heads])

    def reward(self, feat: torch.Tensor) -> torch.Tensor:
        deter = feat[..., : self.wm.cfg.deter]
        return self.predictions(deter).float().var(0).mean(-1)

    def cont(self, feat: torch.Tensor) -> torch.Tensor:
        return torch.ones(feat.shape[:-1], device=feat.device)


class DisagreementExplorer:
    """A collection policy: ``reset()``, ``act(obs) -> native action``, ``observe(...)`` after each step."""

    def __init__(self, cfg: ExplorerConfig, proprio_dim: int, action_dim: int, native_dim: int,
                 rng: np.random.Generator, device: str = "cpu"):
        self.cfg, self.rng, self.device = cfg, rng, torch.device(device)
        self.native_dim, self.action_dim = native_dim, action_dim
        torch.manual_seed(int(rng.integers(2**31)))
        self.wm = WorldModel(cfg.model, {"proprio": ((proprio_dim,), "float32")}, action_dim).to(self.device)
        heads = nn.ModuleList(MLP(cfg.model.deter, cfg.head_layers, cfg.head_units, self.wm.embed_dim)
                              for _ in range(cfg.ensemble)).to(self.device)
        self.model = _Disagreement(self.wm, heads)
        self.ac = ActorCritic(cfg.ac, cfg.model.feat_dim, action_dim).to(self.device)
        m = cfg.model
        self.wm_opt = Optimizer(self.wm.parameters(), m.lr, m.eps, m.weight_decay, m.grad_clip)
        self.head_opt = Optimizer(heads.parameters(), cfg.head_lr, m.eps, 0.0, m.grad_clip)
        self.mask = torch.zeros(action_dim, device=self.device)
        self.mask[:native_dim] = 1.0
        self.replay = EpisodeReplay()
        self.steps = 0
        self.updates = 0
        self.metrics: dict[str, float] = {}
        self._state: Any = None
        self._first = True
        self._last_obs: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ acting
    def reset(self) -> None:
        self._state, self._first = None, True

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self._last_obs = obs
        if self.steps < self.cfg.warmup_steps:
            action = np.zeros(self.action_dim, np.float32)
            action[: self.native_dim] = self.rng.uniform(-1, 1, self.native_dim)
        else:
            with torch.inference_mode():
                o = {"proprio": torch.as_tensor(obs["proprio"], device=self.device)[None]}
                if self._state is None:
                    self._state = {"latent": self.wm.initial(1),
                                   "action": torch.zeros(1, self.action_dim, device=self.device)}
                first = torch.tensor([self._first], device=self.device)
                latent = self.wm.obs_step(self._state["latent"], self._state["action"], o, first)
                act = self.ac.act(self.wm.features(latent), self.mask, explore=True)
                self._state = {"latent": latent, "action": act}
                action = act[0].float().cpu().numpy()
        return action[: self.native_dim].astype(np.float32)

    def observe(self, action: np.ndarray, next_obs: dict[str, np.ndarray], last: bool, terminal: bool) -> None:
        """After ``env.step(action)`` (padded action) returned ``next_obs``."""
        assert self._last_obs is not None, "observe() before act()"
        for step in reward_free_steps(self._last_obs, action, next_obs, self._first, last, terminal):
            self.replay.add(step)
        self._first = False
        self.steps += 1
        if self.steps >= self.cfg.warmup_steps and self.steps % self.cfg.train_every == 0 \
                and len(self.replay) >= self.cfg.seq_len:
            self.train_step()

    # ------------------------------------------------------------------ learning
    def train_step(self) -> dict[str, float]:
        c = self.cfg
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
                 for k, v in self.replay.sample(c.batch_size, c.seq_len, self.rng).items() if k != "reward"}
        loss, metrics, post = self.wm.loss(batch, use_reward=False, use_cont=False)
        self.wm_opt.step(loss)
        with torch.no_grad():
            target = self.wm.encode({"proprio": batch["proprio"]})
        pred = self.model.predictions(post["deter"].detach())
        head_loss = (pred - target[None]).pow(2).mean()
        self.head_opt.step(head_loss)
        n = c.batch_size * c.seq_len
        start = {k: v.detach().reshape(n, *v.shape[2:]) for k, v in post.items()}
        ac_metrics = self.ac.train_step(self.model, start, torch.ones(n, device=self.device), self.mask)
        self.updates += 1
        self.metrics = {"wm_loss": float(metrics["wm/loss"]), "ensemble_loss": float(head_loss.detach()),
                        "intrinsic_reward": float(ac_metrics["actor/imagined_reward"])}
        return self.metrics
