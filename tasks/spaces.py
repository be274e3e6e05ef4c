"""The shared zero-padded action space and zero-padded state vectors.

Every embodiment acts in one space of ``pad_dim`` entries; it uses the first ``native_dim`` of them
and ignores the rest. ``action_mask`` marks the used entries (1) and the padding (0).
"""
from __future__ import annotations

import numpy as np

from harness.errors import HarnessError


def resolve_pad_dim(native_dim: int, pad_dim: int | None, what: str) -> int:
    """``pad_dim`` or, when None, ``native_dim``; raise if the pad is smaller than the native dim."""
    if pad_dim is None:
        return native_dim
    if pad_dim < native_dim:
        raise HarnessError(
            f"{what} pad dim {pad_dim} is smaller than the native {what} dim {native_dim}; "
            f"use a pad dim >= {native_dim} (or None for no padding)")
    return int(pad_dim)


def action_mask(native_dim: int, pad_dim: int) -> np.ndarray:
    """float32 (pad_dim,): 1 for the native dims, 0 for the padding."""
    mask = np.zeros(resolve_pad_dim(native_dim, pad_dim, "action"), np.float32)
    mask[:native_dim] = 1.0
    return mask


def pad_action(action: np.ndarray, pad_dim: int) -> np.ndarray:
    """Native action -> float32 (pad_dim,) with zeros in the padding."""
    action = np.asarray(action, np.float32)
    if action.ndim != 1:
        raise HarnessError(f"action must be a 1-d vector, got shape {action.shape}")
    out = np.zeros(resolve_pad_dim(action.shape[0], pad_dim, "action"), np.float32)
    out[:action.shape[0]] = action
    return out


def unpad_action(action: np.ndarray, native_dim: int, pad_dim: int) -> np.ndarray:
    """Padded action (pad_dim,) -> its first native_dim entries; the padding is ignored."""
    if not isinstance(action, np.ndarray):
        action = np.asarray(action)
    if action.shape != (pad_dim,):
        raise HarnessError(
            f"action has shape {action.shape}; this env takes shape ({pad_dim},) "
            f"(native action dim {native_dim}, zero-padded to {pad_dim})")
    return action[:native_dim]


def pad_vector(vector: np.ndarray, pad_dim: int) -> np.ndarray:
    """1-d state vector -> float32 (pad_dim,) with zeros after it."""
    vector = np.asarray(vector, np.float32)
    if vector.ndim != 1:
        raise HarnessError(f"state vector must be 1-d, got shape {vector.shape}")
    if vector.shape[0] == pad_dim:
        return vector
    out = np.zeros(resolve_pad_dim(vector.shape[0], pad_dim, "proprio"), np.float32)
    out[:vector.shape[0]] = vector
    return out


class PaddedSpaces:
    """The action and state padding of one env, checked once at construction."""

    def __init__(self, action_dim: int, proprio_dim: int,
                 action_pad_dim: int | None, proprio_pad_dim: int | None):
        self.native_action_dim = action_dim
        self.action_dim = resolve_pad_dim(action_dim, action_pad_dim, "action")
        self.proprio_dim = resolve_pad_dim(proprio_dim, proprio_pad_dim, "proprio")
        self.action_mask = action_mask(action_dim, self.action_dim)
        self._action_shape = (self.action_dim,)
        self._padded = self.action_dim > action_dim

    def unpad_action(self, action: np.ndarray) -> np.ndarray:
        if type(action) is np.ndarray and action.shape == self._action_shape:  # the fast path
            return action[:self.native_action_dim] if self._padded else action
        return unpad_action(action, self.native_action_dim, self.action_dim)

    def pad_proprio(self, vector: np.ndarray) -> np.ndarray:
        return pad_vector(vector, self.proprio_dim)


def make_obs_spec(obs_type: str, image_size: int, proprio_dim: int
                  ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The observation spec for an obs type: pixels uint8 (3, H, W), proprio float32 (D,)."""
    spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    if obs_type in ("pixels", "both"):
        spec["pixels"] = ((3, image_size, image_size), np.dtype(np.uint8))
    if obs_type in ("proprio", "both"):
        spec["proprio"] = ((proprio_dim,), np.dtype(np.float32))
    if not spec:
        raise HarnessError(f"unknown obs type {obs_type!r}; valid: pixels, proprio, both")
    return spec
