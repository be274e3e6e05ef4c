"""Saving and loading backbone weights safely, with clear errors when sizes do not match.

Files are written with ``torch.save`` and read with ``torch.load(weights_only=True)``: plain containers
and tensors only. Every checkpoint carries a ``meta`` description (config sizes, observation shapes,
padded action dim) that is compared before any weight is touched.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError


class CheckpointMismatchError(HarnessError):
    """A checkpoint built for other sizes (another preset, or another embodiment set)."""


def describe(model_sizes: dict[str, int], obs_shapes: dict[str, tuple[int, ...]], action_dim: int,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The facts that fix parameter shapes, as plain data (``obs_shapes``: key -> shape, no batch)."""
    return {"sizes": dict(model_sizes), "obs": {k: [int(x) for x in v] for k, v in sorted(obs_shapes.items())},
            "action_dim": int(action_dim), **(extra or {})}


def check_compatible(saved: dict[str, Any], current: dict[str, Any], what: str) -> None:
    """Raise naming every size that differs between a checkpoint and the model being loaded into."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    diffs.append(f"{key}.{sub}={a.get(sub)} in the checkpoint but {b.get(sub)} here")
        elif a != b:
            diffs.append(f"{key}={a} in the checkpoint but {b} here")
    if diffs:
        hint = ""
        if any(d.startswith(("action_dim", "obs")) for d in diffs):
            hint = " (a different embodiment set or observation type pads actions/states differently)"
        elif any(d.startswith("sizes") for d in diffs):
            hint = " (a checkpoint from another preset?)"
        raise CheckpointMismatchError(f"{what} does not match this model{hint}: " + "; ".join(diffs))


def load_module(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict`` with a message listing missing, unexpected and mis-shaped tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} in the checkpoint vs {tuple(v.shape)} here"
              for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("mismatched sizes: " + "; ".join(shapes[:8]) + (" ..." if len(shapes) > 8 else ""))
        if missing:
            parts.append(f"missing: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
        raise CheckpointMismatchError(f"{what} cannot be loaded: " + " | ".join(parts))
    module.load_state_dict(state)


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomic ``torch.save`` of plain data and tensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` on the CPU, with a clear error for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"missing checkpoint {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HarnessError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from None


def save_world_model(path: str | Path, world_model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    """A world model alone (e.g. after GSA pre-training), with the meta needed to check a later load."""
    wm: Any = world_model
    meta = describe(wm.cfg.sizes(), wm.obs_shapes, wm.action_dim)
    save(path, {"meta": meta, "world_model": wm.state_dict(), **(extra or {})})


def load_world_model(path: str | Path, world_model: nn.Module) -> dict[str, Any]:
    """Load weights saved by :func:`save_world_model` into ``world_model``; returns the whole payload."""
    wm: Any = world_model
    payload = load(path)
    meta = describe(wm.cfg.sizes(), wm.obs_shapes, wm.action_dim)
    check_compatible(payload.get("meta", {}), meta, f"world-model checkpoint {path}")
    load_module(world_model, payload["world_model"], f"world-model checkpoint {path}")
    return payload
