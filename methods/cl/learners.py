"""The base learners the continual-learning wrappers compose with: DrQ-v2 and Dreamer with per-task heads.

``TaskDrQV2`` is DrQ-v2 (methods/drqv2.py, unchanged in what it learns) with
- Continual World's per-task output heads (methods/cl/heads.py), selected by the task being acted on,
  trained or, per row, by a batch's ``task`` column;
- two places for a wrapper to act: ``before_step_hooks`` (called between each loss's backward pass and its
  optimizer step, ``"critic"`` then ``"actor"``: regularisers add their penalty's gradient there, A-GEM
  projects) and ``batch_source`` (builds the update batch instead of the current task's replay: reservoir
  replay and the multi-task reference mix other tasks' transitions in, each row with its own head
  (``task``) and action mask (``mask``)).

``TaskDreamer`` is Dreamer with per-task actor and critic heads.

``Wrapper`` passes the Method interface through to ``self.base``: a continual-learning method composes a base
learner and overrides only the calls it changes.

With ``heads="shared"`` and no hooks both are exactly their base learner (same initialisation, same
random numbers, same updates).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import torch

from methods.base import MethodContext, Step, TaskContext
from methods.cl.heads import HeadMap, install_dreamer, install_drqv2, selected
from methods.dreamer import Dreamer, DreamerConfig
from methods.drqv2 import DrQV2, DrQV2Config


class Wrapper:
    """The Method calls a continual-learning method does not change, passed through to its base learner."""
    base: Any

    def on_task_start(self, task: TaskContext) -> None:
        self.base.on_task_start(task)

    def act(self, obs: dict[str, np.ndarray], state: Any, task: TaskContext,
            explore: bool) -> tuple[np.ndarray, Any]:
        return self.base.act(obs, state, task, explore)

    def observe(self, step: Step) -> None:
        self.base.observe(step)

    def update(self, env_frames: int) -> dict[str, float]:
        return self.base.update(env_frames)


class TaskDrQV2(DrQV2):
    def __init__(self, cfg: DrQV2Config, ctx: MethodContext, heads: HeadMap):
        super().__init__(cfg, ctx)
        self.heads = heads
        if heads.count > 1:
            install_drqv2(self, heads.count)
        self.head = 0                  # the head of the task being trained
        self.before_step_hooks: list[Callable[[str], dict[str, float]]] = []
        self.batch_source: Callable[[], dict[str, torch.Tensor]] | None = None
        self._hook_metrics: dict[str, float] = {}

    def selected(self, task: int | torch.Tensor) -> contextlib.AbstractContextManager:
        return selected((self.actor, self.critic, self.critic_target), task)

    def on_task_start(self, task: TaskContext) -> None:
        self.head = self.heads(task)
        super().on_task_start(task)

    def act(self, obs: dict[str, np.ndarray], state: Any, task: TaskContext,
            explore: bool) -> tuple[np.ndarray, Any]:
        with self.selected(self.heads(task)):
            return super().act(obs, state, task, explore)

    def labelled(self, batch: dict[str, torch.Tensor], head: int, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``batch`` with a head (``task``) and an action mask (``mask``) on every row."""
        b = batch["action"].shape[0]
        return batch | {"task": torch.full((b,), head, dtype=torch.long, device=self.device),
                        "mask": mask.to(self.device).expand(b, -1)}

    def _update(self) -> dict[str, float]:
        return self.update_on(self.batch_source() if self.batch_source is not None else self._sample())

    def update_on(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self._hook_metrics = {}
        with self.selected(batch["task"] if "task" in batch else self.head):
            out = super().update_on(batch)
        return out | self._hook_metrics

    def _before_step(self, which: str) -> None:
        for hook in self.before_step_hooks:
            self._hook_metrics.update(hook(which))

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"head": self.head}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.head = int(state["head"])


class TaskDreamer(Dreamer):
    def __init__(self, cfg: DreamerConfig, ctx: MethodContext, heads: HeadMap):
        super().__init__(cfg, ctx)
        self.heads = heads
        if heads.count > 1:
            install_dreamer(self, heads.count)
        self.head = 0

    def selected(self, task: int) -> contextlib.AbstractContextManager:
        return selected((self.ac,), task)

    def on_task_start(self, task: TaskContext) -> None:
        self.head = self.heads(task)
        super().on_task_start(task)

    def act(self, obs: dict[str, np.ndarray], state: Any, task: TaskContext,
            explore: bool) -> tuple[np.ndarray, Any]:
        with self.selected(self.heads(task)):
            return super().act(obs, state, task, explore)

    def train_step(self) -> dict[str, float]:
        with self.selected(self.head):
            return super().train_step()

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"head": self.head}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.head = int(state["head"])


@contextlib.contextmanager
def own_random_numbers(device: torch.device) -> Iterator[None]:
    """Torch's global random numbers are as they were after the block (work at a task boundary, such as
    an importance estimate, must not shift the learner's random stream: strength 0 = the base learner)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
