"""DrQ-v2 (Yarats et al. 2021): the paper's model-free learning-from-scratch baseline.

n-step clipped double-Q DDPG on random-shift-augmented, frame-stacked pixels (or the state vector),
with a scheduled exploration std. The conv encoder is the shared backbone's ``ConvEncoder`` module
(trained by the critic only, as in DrQ-v2). Defaults are DrQ-v2's (anchors.md section 4).

Across the tasks of a stream the networks are kept (naive fine-tuning); the replay is emptied at each
task start, because its rewards belong to the previous task, and the seed frames and the exploration
schedule start again.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError, NonFiniteLossError
from harness.replay import EpisodeReplay
from methods.backbone.nets import ConvEncoder
from methods.base import (
    MAX_BATCH,
    MAX_CHANNELS,
    MAX_COUNT,
    MAX_LENGTH,
    MAX_PARAMS,
    MAX_WIDTH,
    MethodContext,
    MethodSpec,
    Step,
    TaskContext,
    ranged,
)


@dataclass(frozen=True)
class DrQV2Config:
    batch_size: int = ranged(256, ge=1, le=MAX_BATCH)  # DrQ-v2: batch 256
    nstep: int = ranged(3, ge=1, le=MAX_LENGTH)  # DrQ-v2: n-step 3
    discount: float = ranged(0.99, ge=0, le=1)  # DrQ-v2: 0.99
    lr: float = ranged(1e-4, gt=0)  # DrQ-v2: 1e-4 (actor, critic and encoder)
    feature_dim: int = ranged(50, ge=1, le=MAX_WIDTH)  # DrQ-v2: trunk feature dim 50
    hidden_dim: int = ranged(1024, ge=1, le=MAX_WIDTH)  # DrQ-v2: hidden 1024
    critic_tau: float = ranged(0.01, ge=0, le=1)  # DrQ-v2: target critic EMA 0.01
    update_every_steps: int = ranged(2, ge=1, le=MAX_COUNT)  # DrQ-v2: one update every 2 agent steps
    seed_frames: int = ranged(4000, ge=0, le=MAX_COUNT)  # DrQ-v2: 4000 frames of uniform random actions (per task here)
    std_init: float = ranged(1.0, ge=0)  # DrQ-v2 medium tasks: linear(1.0, 0.1, 500k frames)
    std_final: float = ranged(0.1, ge=0)
    std_duration_frames: int = ranged(500_000, ge=0, le=MAX_COUNT)
    std_clip: float = ranged(0.3, ge=0)  # DrQ-v2: stddev clip 0.3 for target and actor actions
    frame_stack: int = ranged(3, ge=1, le=64)  # DrQ-v2: 3 stacked frames (pixels only; a state vector is Markov)
    aug_pad: int = ranged(4, ge=0, le=32)  # DrQ-v2: random shift by up to 4 pixels (replicate padding)
    # DrQ-v2 uses 32 channels; the shared ConvEncoder doubles per stage
    encoder_depth: int = ranged(32, ge=1, le=MAX_CHANNELS)
    encoder_stages: int = ranged(4, ge=1, le=6)  # shared ConvEncoder: 64x64 -> 4x4 (DrQ-v2's own: 84x84 -> 35x35)
    encoder_kernel: int = ranged(4, ge=2, le=16)  # shared ConvEncoder kernel, even (DrQ-v2's own: 3x3)

    def approx_params(self) -> float:
        """A rough parameter count at 64-px pixels: conv encoder, actor and twin-critic trunks and MLPs."""
        conv_out = self.encoder_depth * 2 ** (self.encoder_stages - 1) * (64 // 2 ** self.encoder_stages) ** 2
        f, h = self.feature_dim, self.hidden_dim
        return 2 * conv_out * f + 3 * (f * h + h * h)

    def validate(self) -> None:
        if self.encoder_kernel % 2:
            raise HarnessError(f"encoder_kernel={self.encoder_kernel} must be even (stride-2 convs halve the image)")
        if self.approx_params() > MAX_PARAMS:
            raise HarnessError(f"the networks would have ~{self.approx_params():.3g} parameters, more than "
                               f"{MAX_PARAMS:.0e} fit in memory; lower hidden_dim, feature_dim or encoder_depth")


PRESETS: dict[str, dict[str, Any]] = {
    # debug: tests only. Small nets and batches, 100 seed frames.
    "debug": dict(batch_size=8, feature_dim=16, hidden_dim=32, seed_frames=100, encoder_depth=4,
                  std_duration_frames=1_000),
    # tiny: this CPU. 256-unit MLPs and the "easy" exploration schedule (100k frames, DrQ-v2's easy tasks).
    "tiny": dict(hidden_dim=256, encoder_depth=16, std_duration_frames=100_000),
    # small: DrQ-v2's sizes with the easy schedule.
    "small": dict(std_duration_frames=100_000),
    "paper": {},
}


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ augmentation: replicate-pad by ``pad`` and crop back at a random integer offset per image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    sy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    sx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    iy = (sy[:, None] + torch.arange(h, device=x.device)[None])[:, :, None]   # (n, h, 1)
    ix = (sx[:, None] + torch.arange(w, device=x.device)[None])[:, None, :]   # (n, 1, w)
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, iy, ix]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2)


class Encoder(nn.Module):
    """Stacked pixels through the shared conv encoder, and/or the state vector as it is."""

    def __init__(self, cfg: DrQV2Config, obs_spec: dict[str, tuple[tuple[int, ...], str]]):
        super().__init__()
        self.conv = None
        self.out_dim = 0
        if "pixels" in obs_spec:
            c, h, w = obs_spec["pixels"][0]
            self.conv = ConvEncoder((c * cfg.frame_stack, h, w), cfg.encoder_depth, cfg.encoder_stages,
                                    cfg.encoder_kernel, channels_last=False)
            self.out_dim += self.conv.out_dim
        if "proprio" in obs_spec:
            self.out_dim += obs_spec["proprio"][0][0]

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.conv is not None:
            parts.append(self.conv(obs["pixels"]))
        if "proprio" in obs:
            parts.append(obs["proprio"].float())
        return torch.cat(parts, -1)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class Actor(nn.Module):
    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())
        self.policy = _mlp(feature_dim, hidden_dim, action_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The mean action in [-1, 1]."""
        return torch.tanh(self.policy(self.trunk(h)))


class Critic(nn.Module):
    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())
        self.q1 = _mlp(feature_dim + action_dim, hidden_dim, 1)
        self.q2 = _mlp(feature_dim + action_dim, hidden_dim, 1)

    def forward(self, h: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.trunk(h), action], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def sample_action(mu: torch.Tensor, std: float, clip: float | None, mask: torch.Tensor) -> torch.Tensor:
    """A truncated-normal style sample: mu + clipped noise, kept inside [-1, 1]; zero on padded dims."""
    noise = torch.randn_like(mu) * std
    if clip is not None:
        noise = noise.clamp(-clip, clip)
    eps = 1e-6
    x = mu + noise
    # DrQ-v2's TruncatedNormal: the clamp is straight-through, so a sample past the bound still passes the
    # critic's gradient to mu (a plain clamp would give it none there).
    return (x - x.detach() + x.clamp(-1 + eps, 1 - eps).detach()) * mask


def _check_finite(name: str, loss: torch.Tensor) -> None:
    """Stop before a non-finite loss reaches the weights (one device sync)."""
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLossError(f"non-finite {name}={float(loss.detach())}")


def adam(params: Any, lr: float) -> torch.optim.Adam | None:
    params = [p for p in params if p.requires_grad]
    return torch.optim.Adam(params, lr=lr) if params else None


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    return end + (start - end) * max(0.0, 1.0 - t / max(duration, 1))


class DrQV2:
    def __init__(self, cfg: DrQV2Config, ctx: MethodContext):
        self.cfg, self.ctx = cfg, ctx
        self.device = torch.device(ctx.device)
        self.pixels = "pixels" in ctx.obs_spec
        self.encoder = Encoder(cfg, ctx.obs_spec).to(self.device)
        a = ctx.action_dim
        self.actor = Actor(self.encoder.out_dim, a, cfg.feature_dim, cfg.hidden_dim).to(self.device)
        self.critic = Critic(self.encoder.out_dim, a, cfg.feature_dim, cfg.hidden_dim).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.encoder_opt = adam(self.encoder.parameters(), cfg.lr)  # None for the state vector: nothing to learn
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.replay = EpisodeReplay(ctx.workdir / "replay")
        self.rng = np.random.default_rng(ctx.seed)
        self.torch_gen = torch.Generator(device=self.device).manual_seed(ctx.seed)
        self.task_agent_steps = 0      # agent steps on the current task (schedules restart per task)
        self.grad_updates = 0
        self.mask = torch.ones(a, device=self.device)
        self.action_repeat = 1

    # ------------------------------------------------------------------ acting
    def _std(self) -> float:
        c = self.cfg
        return linear_schedule(c.std_init, c.std_final, c.std_duration_frames, self.task_agent_steps * self.action_repeat)

    def _stack(self, obs: dict[str, np.ndarray], state: Any) -> tuple[dict[str, np.ndarray], Any]:
        """Frame-stack the pixels per batch row; a row with ``is_first`` refills its stack."""
        if not self.pixels:
            return obs, state
        px = obs["pixels"]
        k = self.cfg.frame_stack
        if state is None:
            state = np.repeat(px[:, None], k, axis=1)
        else:
            state = np.concatenate([state[:, 1:], px[:, None]], axis=1)
            first = obs["is_first"]
            state[first] = np.repeat(px[first][:, None], k, axis=1)
        b, _, c, h, w = state.shape
        return {**obs, "pixels": state.reshape(b, k * c, h, w)}, state

    def on_task_start(self, task: TaskContext) -> None:
        self.mask = torch.as_tensor(task.action_mask, device=self.device)
        self.action_repeat = task.action_repeat
        self.task_agent_steps = 0
        # Each task starts with an empty replay: the critic learns this task's reward, and earlier tasks'
        # transitions carry other rewards (there is no reward-free use of them in DrQ-v2).
        if len(self.replay):
            self.replay = EpisodeReplay(self.ctx.workdir / f"replay-task{task.index}")

    def _tensors(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, device=self.device) for k, v in obs.items() if k in ("pixels", "proprio")}

    def act(self, obs: dict[str, np.ndarray], state: Any, task: TaskContext,
            explore: bool) -> tuple[np.ndarray, Any]:
        stacked, state = self._stack(obs, state)
        mask = torch.as_tensor(task.action_mask, device=self.device)
        batch = obs["is_first"].shape[0]
        if explore and self.task_agent_steps * task.action_repeat < self.cfg.seed_frames:
            actions = self.rng.uniform(-1, 1, (batch, self.ctx.action_dim)).astype(np.float32) * task.action_mask
            return actions, state
        with torch.inference_mode():
            mu = self.actor(self.encoder(self._tensors(stacked)))
            act = sample_action(mu, self._std(), None, mask) if explore else mu * mask
        return act.cpu().numpy().astype(np.float32), state

    def observe(self, step: Step) -> None:
        self.replay.add(step)
        if not step.is_last:
            self.task_agent_steps += 1

    # ------------------------------------------------------------------ learning
    @property
    def window(self) -> tuple[int, int]:
        """(length, cur): a transition is read from ``length`` consecutive replay steps, its action at ``cur``
        (frame_stack - 1 earlier steps fill the frame stack, nstep later ones the n-step return)."""
        k = self.cfg.frame_stack if self.pixels else 1
        return k + self.cfg.nstep, k - 1

    def valid_windows(self, w: dict[str, np.ndarray]) -> np.ndarray:
        """(B,) bool: the action at ``cur`` is real, and no new episode starts within the n steps after it."""
        _, cur = self.window
        return ~w["is_last"][:, cur] & ~w["is_first"][:, cur + 1:].any(1)

    def _sample(self, batch_size: int | None = None, replay: EpisodeReplay | None = None) -> dict[str, torch.Tensor]:
        """``batch_size`` (default: the config's) n-step transitions with frame stacks, from windows of
        ``replay`` (default: the current task's)."""
        b = self.cfg.batch_size if batch_size is None else batch_size
        replay = self.replay if replay is None else replay
        length, _ = self.window
        rows: list[dict[str, np.ndarray]] = []
        got = 0
        while got < b:
            w = replay.sample(2 * b, length, self.rng)
            ok = self.valid_windows(w)
            w = {key: v[ok] for key, v in w.items()}
            rows.append(w)
            got += int(ok.sum())
        w = {key: np.concatenate([r[key] for r in rows])[:b] for key in rows[0]}
        return {key: torch.as_tensor(v, device=self.device) for key, v in self.transitions(w).items()}

    def transitions(self, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The n-step transitions of valid replay windows (B, length, ...): action, n-step reward, discount,
        and the observation (frame-stacked pixels) at ``cur`` and n steps later."""
        c, n, k = self.cfg, self.cfg.nstep, self.cfg.frame_stack if self.pixels else 1
        length, cur = self.window
        b = len(w["action"])
        disc = c.discount ** np.arange(n, dtype=np.float32)
        reward = (w["reward"][:, cur + 1:] * disc).sum(1).astype(np.float32)
        discount = (c.discount ** n) * (1.0 - w["is_terminal"][:, cur + n].astype(np.float32))
        out = {"action": w["action"][:, cur], "reward": reward, "discount": discount.astype(np.float32)}
        if "proprio" in w:
            out["proprio"], out["next_proprio"] = w["proprio"][:, cur], w["proprio"][:, cur + n]
        if self.pixels:
            # frames before this episode's first step repeat that first step (as when acting)
            pos = np.arange(length)[None].repeat(b, 0)
            start = np.where(w["is_first"][:, : cur + 1], pos[:, : cur + 1], 0).max(1)
            idx_now = np.maximum(np.arange(cur - k + 1, cur + 1)[None], start[:, None])
            idx_next = np.maximum(np.arange(cur + n - k + 1, cur + n + 1)[None], start[:, None])
            px = w["pixels"]
            rows_i = np.arange(b)[:, None]
            _, _, ch, h, wd = px.shape
            out["pixels"] = px[rows_i, idx_now].reshape(b, k * ch, h, wd)
            out["next_pixels"] = px[rows_i, idx_next].reshape(b, k * ch, h, wd)
        return out

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        return random_shift(x.float(), self.cfg.aug_pad, self.torch_gen)

    def critic_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The clipped double-Q n-step TD loss on ``batch``; returns it, the encoder features (with their
        graph: the encoder learns from this loss) and the mean Q and target. Rows use ``batch["mask"]``
        (B, A) as their action masks when the batch has one (rows of several tasks), else the task's."""
        c = self.cfg
        mask = batch.get("mask", self.mask)
        obs = {"proprio": batch["proprio"]} if "proprio" in batch else {}
        nxt = {"proprio": batch["next_proprio"]} if "next_proprio" in batch else {}
        if self.pixels:
            obs["pixels"], nxt["pixels"] = self._aug(batch["pixels"]), self._aug(batch["next_pixels"])
        h = self.encoder(obs)
        with torch.no_grad():
            h_next = self.encoder(nxt)
            next_action = sample_action(self.actor(h_next), self._std(), c.std_clip, mask)
            tq1, tq2 = self.critic_target(h_next, next_action)
            target = batch["reward"] + batch["discount"] * torch.min(tq1, tq2)
        q1, q2 = self.critic(h, batch["action"])
        loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        return loss, h, {"critic/q": q1.mean().detach(), "critic/target": target.mean()}

    def actor_loss(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """DDPG's actor loss on (detached) encoder features: -min(Q1, Q2) of a sampled action."""
        action = sample_action(self.actor(h), self._std(), self.cfg.std_clip, mask)
        aq1, aq2 = self.critic(h, action)
        return -torch.min(aq1, aq2).mean()

    def _before_step(self, which: str) -> None:
        """Called after the backward pass of the ``"critic"`` loss (critic and encoder gradients) and of the
        ``"actor"`` loss, before the optimizers step: where continual-learning wrappers (methods/cl) change
        the gradients. Nothing here."""

    def _update(self) -> dict[str, float]:
        return self.update_on(self._sample())

    def update_on(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One critic (and encoder) update, one actor update and the target EMA on ``batch``."""
        c = self.cfg
        critic_loss, h, stats = self.critic_loss(batch)
        _check_finite("critic/loss", critic_loss)
        for opt in (self.encoder_opt, self.critic_opt):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self._before_step("critic")
        self.critic_opt.step()
        if self.encoder_opt is not None:
            self.encoder_opt.step()

        # DrQ-v2: the encoder learns from the critic only
        actor_loss = self.actor_loss(h.detach(), batch.get("mask", self.mask))
        _check_finite("actor/loss", actor_loss)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self._before_step("actor")
        self.actor_opt.step()

        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters()):
                tp.lerp_(p, c.critic_tau)
        self.grad_updates += 1
        values = torch.stack([critic_loss.detach(), actor_loss.detach(), stats["critic/q"],
                              stats["critic/target"]]).tolist()   # one device sync for the metrics
        return dict(zip(("critic/loss", "actor/loss", "critic/q", "critic/target"), values)) | {"actor/std": self._std()}

    def update(self, env_frames: int) -> dict[str, float]:
        c = self.cfg
        if self.task_agent_steps * self.action_repeat < c.seed_frames or self.task_agent_steps % c.update_every_steps:
            return {}
        if len(self.replay) < (c.frame_stack + c.nstep) * 4:
            return {}
        return self._update()

    def on_task_end(self, task: TaskContext) -> dict[str, float]:
        return {"grad_updates": float(self.grad_updates)}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict(), "actor": self.actor.state_dict(),
                "critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
                "encoder_opt": self.encoder_opt.state_dict() if self.encoder_opt else {},
                "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "replay": self.replay.state_dict(),
                "replay_dir": str(self.replay.directory.name) if self.replay.directory else "",
                "rng": self.rng.bit_generator.state, "torch_gen": self.torch_gen.get_state(),
                "task_agent_steps": self.task_agent_steps, "grad_updates": self.grad_updates,
                "mask": self.mask, "action_repeat": self.action_repeat}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("encoder", "actor", "critic", "critic_target", "encoder_opt", "actor_opt", "critic_opt"):
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])
        self.replay = EpisodeReplay(self.ctx.workdir / state["replay_dir"])
        self.replay.load_state_dict(state["replay"])
        self.rng.bit_generator.state = state["rng"]
        if state["torch_gen"].numel() == self.torch_gen.get_state().numel():
            self.torch_gen.set_state(state["torch_gen"])
        else:   # saved on another kind of device (a run killed on a GPU node, continued on a CPU one): the
            # augmentation's generator cannot take that state; seed it from the restored numpy stream instead
            self.torch_gen.manual_seed(int(self.rng.integers(2**63 - 1)))
        self.task_agent_steps = int(state["task_agent_steps"])
        self.grad_updates = int(state["grad_updates"])
        self.mask = state["mask"].to(self.device)
        self.action_repeat = int(state["action_repeat"])


SPEC = MethodSpec(DrQV2Config, DrQV2, presets=PRESETS)
