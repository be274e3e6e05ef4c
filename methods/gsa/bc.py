"""The behaviour-cloning prior π_bc of execution guidance (paper Appendix G.1, anchors.md section 1).

Pixels: a 3-frame stack (9 x 64 x 64) through four convs (32, 64, 128, 256 channels; kernel 4, stride 2; ELU),
then an MLP 512-LN-ELU-512-LN-ELU and a linear action head (tanh: actions live in [-1, 1]). A state vector
(proprio) goes through the same MLP. Loss: MSE on the action over the embodiment's action dims only (the
action mask); random-shift augmentation with pad 3 for pixels; Adam 1e-4; batch 256; 150k updates (ncrl).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError
from methods.base import MAX_BATCH, MAX_CHANNELS, MAX_COUNT, MAX_WIDTH, ranged
from methods.drqv2 import random_shift


@dataclass(frozen=True)
class BCConfig:
    frame_stack: int = ranged(3, ge=1, le=64)  # G.1: 9 x 64 x 64 input = 3 stacked RGB frames
    # at most 4 at 64 px; G.1: kernel depths, k4 s2, ELU
    channels: tuple[int, ...] = ranged((32, 64, 128, 256), ge=1, le=MAX_CHANNELS)
    hidden: int = ranged(512, ge=1, le=MAX_WIDTH)  # ncrl: MLP 512-LN-ELU-512-LN-ELU
    lr: float = ranged(1e-4, gt=0)  # ncrl: Adam 1e-4
    batch_size: int = ranged(256, ge=1, le=MAX_BATCH)  # ncrl: batch 256
    # ncrl: 150k updates on the retrieved data, before online training
    grad_updates: int = ranged(150_000, ge=1, le=MAX_COUNT)
    aug_pad: int = ranged(3, ge=0, le=32)  # ncrl: random shift, pad 3

    def validate(self) -> None:
        if len(self.channels) > 4:
            raise HarnessError(f"channels={self.channels}: at most 4 stride-2 convs fit a 64x64 image")


class BCPolicy(nn.Module):
    def __init__(self, cfg: BCConfig, obs_spec: dict[str, tuple[tuple[int, ...], str]], action_dim: int):
        super().__init__()
        self.cfg = cfg
        self.conv = None
        in_dim = 0
        if "pixels" in obs_spec:
            c, h, w = obs_spec["pixels"][0]
            layers: list[nn.Module] = []
            ch = c * cfg.frame_stack
            for out in cfg.channels:
                layers += [nn.Conv2d(ch, out, 4, stride=2), nn.ELU()]
                ch = out
            self.conv = nn.Sequential(*layers)
            with torch.no_grad():
                in_dim += int(np.prod(self.conv(torch.zeros(1, c * cfg.frame_stack, h, w)).shape[1:]))
        if "proprio" in obs_spec:
            in_dim += obs_spec["proprio"][0][0]
        self.mlp = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.LayerNorm(cfg.hidden), nn.ELU(),
                                 nn.Linear(cfg.hidden, cfg.hidden), nn.LayerNorm(cfg.hidden), nn.ELU(),
                                 nn.Linear(cfg.hidden, action_dim))

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """obs: stacked pixels uint8/float (N, 3k, H, W) and/or proprio (N, D) -> actions (N, A) in [-1, 1]."""
        parts = []
        if self.conv is not None:
            parts.append(self.conv(obs["pixels"].float() / 255.0 - 0.5).flatten(1))
        if "proprio" in obs:
            parts.append(obs["proprio"].float())
        return torch.tanh(self.mlp(torch.cat(parts, -1)))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over the action dims each row's embodiment uses (mask (N, A) or (A,) of 0/1)."""
    assert pred.shape == target.shape, f"BC prediction {tuple(pred.shape)} vs target {tuple(target.shape)}"
    mask = mask.expand_as(pred)
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)


def bc_step(policy: BCPolicy, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
            generator: torch.Generator | None = None) -> dict[str, Any]:
    """One update on a batch with keys pixels (N, 3k, H, W) and/or proprio, action (N, A), action_mask."""
    obs = {k: batch[k] for k in ("pixels", "proprio") if k in batch}
    if "pixels" in obs:
        obs["pixels"] = random_shift(obs["pixels"].float(), policy.cfg.aug_pad, generator)
    loss = masked_mse(policy(obs), batch["action"], batch["action_mask"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"bc/loss": loss.item()}


class PriorActor:
    """π_bc acting on live observations, batched over episodes, with its own stack of the last
    ``frame_stack`` pixel frames per episode (restarted where ``is_first``).

    GSA pushes every training observation (the stack must hold the frames the RL policy saw too) and asks
    for an action only inside guidance windows; ``act`` does both, with the signature of a method's ``act``,
    so ``harness.evaluation.evaluate`` can run π_bc alone (``benchmarks/diag_bc_prior.py``)."""

    def __init__(self, bc: BCPolicy, device: torch.device | str = "cpu"):
        self.bc, self.device = bc, torch.device(device)
        self.stacks: list[list[np.ndarray]] = []

    def push(self, obs: dict[str, np.ndarray]) -> None:
        if "pixels" not in obs:
            return
        px, first = np.asarray(obs["pixels"]), np.asarray(obs["is_first"], bool)
        assert px.ndim == 4 and first.shape == (len(px),), f"pixels (B, C, H, W) with is_first (B,), got " \
                                                           f"{px.shape} and {first.shape}"
        if len(self.stacks) != len(px):
            first = np.ones(len(px), bool)
            self.stacks = [[] for _ in px]
        k = self.bc.cfg.frame_stack
        self.stacks = [[f] * k if new else (s + [f])[-k:] for s, f, new in zip(self.stacks, px, first)]

    def action(self, obs: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        """π_bc's actions (B, A) for the pushed frames and/or ``obs["proprio"]``, zero outside ``mask``."""
        o: dict[str, torch.Tensor] = {}
        if "pixels" in obs:
            o["pixels"] = torch.as_tensor(np.stack([np.concatenate(s, 0) for s in self.stacks]), device=self.device)
        if "proprio" in obs:
            o["proprio"] = torch.as_tensor(np.asarray(obs["proprio"]), device=self.device)
        with torch.inference_mode():
            a = self.bc(o).float().cpu().numpy()
        return (a * np.asarray(mask, np.float32)[None]).astype(np.float32)

    def act(self, obs: dict[str, np.ndarray], state: Any, task: Any, explore: bool) -> tuple[np.ndarray, Any]:
        self.push(obs)
        return self.action(obs, task.action_mask), state
