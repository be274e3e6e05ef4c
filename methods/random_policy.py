"""The `random` baseline: uniform actions in [-1, 1] on the task's action dims, zeros on padded dims.

It is the score floor and the smallest complete example of the method interface."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import HarnessError
from methods.base import MethodContext, MethodSpec, Step, TaskContext, ranged


@dataclass(frozen=True)
class RandomConfig:
    low: float = ranged(-1.0, ge=-1, le=1)   # all tasks' actions are normalised to [-1, 1]
    high: float = ranged(1.0, ge=-1, le=1)

    def validate(self) -> None:
        if not self.low < self.high:
            raise HarnessError(f"low={self.low} must be < high={self.high}")


class RandomMethod:
    def __init__(self, cfg: RandomConfig, ctx: MethodContext):
        self.cfg, self.ctx = cfg, ctx
        self.rng = np.random.default_rng(ctx.seed)
        self.agent_steps = 0

    def on_task_start(self, task: TaskContext) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray], state: Any, task: TaskContext,
            explore: bool) -> tuple[np.ndarray, Any]:
        batch = obs["is_first"].shape[0]
        actions = self.rng.uniform(self.cfg.low, self.cfg.high, size=(batch, self.ctx.action_dim))
        return (actions * task.action_mask[None]).astype(np.float32), state

    def observe(self, step: Step) -> None:
        self.agent_steps += 1

    def update(self, env_frames: int) -> dict[str, float]:
        return {}

    def on_task_end(self, task: TaskContext) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "agent_steps": self.agent_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.agent_steps = int(state["agent_steps"])


SPEC = MethodSpec(RandomConfig, RandomMethod, presets={"debug": {}, "tiny": {}, "small": {}})
