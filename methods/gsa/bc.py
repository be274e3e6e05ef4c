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

from methods.drqv2 import random_shift


@dataclass(frozen=True)
class BCConfig:
    frame_stack: int = 3          # G.1: 9 x 64 x 64 input = 3 stacked RGB frames
    channels: tuple[int, ...] = (32, 64, 128, 256)  # G.1: kernel depths, k4 s2, ELU
    hidden: int = 512             # ncrl: MLP 512-LN-ELU-512-LN-ELU
    lr: float = 1e-4              # ncrl: Adam 1e-4
    batch_size: int = 256         # ncrl: batch 256
    grad_updates: int = 150_000   # ncrl: 150k updates on the retrieved data, before online training
    aug_pad: int = 3              # ncrl: random shift, pad 3


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
