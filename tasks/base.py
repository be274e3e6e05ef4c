"""The task contract every environment in the harness follows.

A *task* is a registered name (``quadruped-walk``, ``assembly-v3``) with static metadata
(:class:`TaskInfo`) so that listing needs no simulator import. ``make_env`` builds a
:class:`TaskEnv` for it; the simulator is imported only then.

Observations are dicts: ``{"pixels": uint8 (3, H, W)}``, ``{"proprio": float32 (D,)}`` or both.
Actions live in one shared, zero-padded space: ``action_pad_dim`` entries in [-1, 1]; the env uses
the first ``info.action_dim`` of them and ``action_mask`` marks which ones those are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

OBS_TYPES = ("pixels", "proprio", "both")
RENDER_QUALITIES = ("paper", "fast")


@dataclass(frozen=True)
class TaskInfo:
    """Static facts about a task, known without importing its simulator."""
    name: str                 # as `cli.py tasks list` prints it: DMC "domain-task", Meta-World "assembly-v3"
    suite: str                # "dmc" | "metaworld"
    embodiment: str           # "quadruped", "walker", "cheetah", "sawyer", ...: retrieval filters on this
    action_dim: int           # native action dim before padding
    proprio_dim: int          # native state-vector length before padding
    episode_frames: int       # default env frames per episode (DMC 1000; Meta-World 200 as in ncrl)
    score_kind: str           # "return" (DMC) or "success" (Meta-World)
    reward_range: tuple[float, float]  # per env frame; an agent step sums action_repeat of these
    factory: str              # "tasks.dmc:make": called as factory(info, config, seed) -> TaskEnv
    default_camera: int | str = 0
    tags: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class EnvConfig:
    """How a task is turned into an env. Defaults are the paper's (Table 5, anchors.md section 1)."""
    obs_type: str = "pixels"              # pixels | proprio | both; the paper uses pixels only
    image_size: int = 64                  # paper: 64x64 RGB
    action_repeat: int = 2                # Table 5: action repeat 2
    render_quality: str = "paper"         # paper: simulator defaults; fast: no MSAA/shadows/reflections
    episode_frames: int | None = None     # None: the task's default (TaskInfo.episode_frames)
    action_pad_dim: int | None = None     # None: no padding; the runner sets the stream's max action dim
    proprio_pad_dim: int | None = None    # None: no padding; the runner sets the stream's max state dim
    camera: int | str | None = None       # None: the task's default (quadruped 2, other DMC 0, MW corner2)

    def validate(self) -> "EnvConfig":
        from harness.errors import HarnessError
        if self.obs_type not in OBS_TYPES:
            raise HarnessError(f"unknown obs type {self.obs_type!r}; valid: {', '.join(OBS_TYPES)}")
        if self.render_quality not in RENDER_QUALITIES:
            raise HarnessError(
                f"unknown render quality {self.render_quality!r}; valid: {', '.join(RENDER_QUALITIES)}")
        if self.action_repeat < 1 or self.image_size < 8:
            raise HarnessError(f"action_repeat must be >= 1 and image_size >= 8, got {self}")
        return self

    def with_(self, **changes: Any) -> "EnvConfig":
        return replace(self, **changes)


@dataclass
class StepResult:
    obs: dict[str, np.ndarray]
    reward: float             # summed over the action repeat
    terminated: bool          # a true terminal state (discount 0); DMC never sets it
    truncated: bool           # the episode's frame limit was reached
    env_frames: int           # simulator frames this step consumed (action_repeat, or fewer at the end)
    info: dict[str, Any] = field(default_factory=dict)  # "success": 0.0/1.0 for Meta-World


class TaskEnv(Protocol):
    info: TaskInfo
    config: EnvConfig
    obs_spec: dict[str, tuple[tuple[int, ...], np.dtype]]
    action_mask: np.ndarray   # float32 (action_pad_dim,): 1 for dims this embodiment uses

    @property
    def action_dim(self) -> int:  # padded
        ...

    def reset(self) -> dict[str, np.ndarray]: ...
    def step(self, action: np.ndarray) -> StepResult: ...
    def render(self) -> np.ndarray: ...   # uint8 (H, W, 3) for videos, from the task camera
    def close(self) -> None: ...


def normalized_score(info: TaskInfo, episode_return: float, success: float) -> float:
    """The paper code's normalised score: DMC return / 10, Meta-World success x 100 (0..100)."""
    return float(success) * 100.0 if info.score_kind == "success" else float(episode_return) / 10.0


def prepare_simulators() -> None:
    """Call before importing dm_control or metaworld (make_env and the task modules do).

    - Headless rendering on the CPU (EGL) unless the user chose otherwise; set here, not at import.
    - Load order of two LLVMs: CUDA builds of torch ship triton, which bundles its own LLVM. dm_control
      initialises an EGL display when it is imported, which loads Mesa's llvmpipe (another LLVM); importing
      triton after that (torch does it lazily, e.g. when the first optimizer is built) segfaults the
      process. Loaded in the other order both work, so triton, when installed, is loaded first.
    """
    import importlib.util
    os.environ.setdefault("MUJOCO_GL", "egl")
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def make_env(name: str, config: EnvConfig | None = None, seed: int = 0) -> TaskEnv:
    """Build the env for a registered task. Imports the simulator only now."""
    prepare_simulators()
    from harness.registry import import_target
    from tasks.catalog import TASKS
    info = TASKS.get(name)
    config = (config or EnvConfig()).validate()
    return import_target(info.factory)(info, config, seed)
