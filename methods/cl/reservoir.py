"""Reservoir replay ("perfect memory", Continual World's replay baseline) around DrQ-v2.

Continual World's run (anchors.md section 3): ``buffer_type=reservoir``, ``reset_buffer_on_task_change=False``,
``replay_size`` 20M (at least everything of CW20's 20 x 1M steps: a perfect memory) and ``batch_size``
512 (4 x its default 128), with every transition sampled uniformly from the reservoir.

Here:
- DrQ-v2 keeps its per-task episode replay for the task being trained (it builds the frame stacks and
  n-step returns). At a task's end all its n-step transitions are offered to a reservoir of ``capacity``
  rows (methods/cl/memory.py: a uniform random subset of everything offered), each row with its task's
  head and action mask;
- each update batch has ``batch_multiplier`` times DrQ-v2's batch size; each row comes from the earlier
  tasks' reservoir with probability seen_past / (seen_past + steps of the current task), else from the
  current task's replay. Every transition seen so far is then equally likely to be drawn, as from CW's
  single reservoir (which, until it is full, holds them all);
- rewards stay with their task: a replayed row keeps the reward, discount and action mask it was stored
  with, and the critic's TD loss uses that row's own critic head (and the actor's, for the next action),
  the head of its task; its actor loss trains that task's actor head. This is how CW's perfect-memory
  baseline trains its multi-head SAC on a buffer of all tasks (the task's one-hot, stored with the
  observation, selects the head). The critic is neither reset nor regularised (CW's defaults).

The reservoir changes only at task boundaries and is saved then (``cl-memory/``), so a run resumes exactly
with it. It stores n-step transitions with their frame stacks: 64x64 pixels with 3 frames cost ~74 KB per
transition (two stacks), a 39-d state ~0.4 KB, so CW's 20M suits state observations; give pixel runs a
smaller ``capacity``. Memory grows with the data, up to ``capacity``.

Dreamer is not a base: its own continual switch (``dreamer --set reset_replay_each_task=false``) keeps
every task's replay and mixes it into world-model batches (``past_fraction``), without a bound.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from methods.base import MAX_COUNT, MethodContext, MethodSpec, TaskContext, ranged
from methods.cl.heads import HEADS, HeadMap
from methods.cl.learners import TaskDrQV2, Wrapper
from methods.cl.memory import CHUNK, TransitionMemory, task_transitions, valid_starts
from methods.drqv2 import PRESETS as DRQ_PRESETS
from methods.drqv2 import DrQV2Config


@dataclass(frozen=True)
class ReplayConfig:
    base: str = ranged("drqv2", one_of=("drqv2",))  # the wrapped learner (see the module docstring on Dreamer)
    base_config: DrQV2Config = field(default_factory=DrQV2Config)  # DrQ-v2's own defaults
    heads: str = ranged("position", one_of=HEADS)  # CW multihead_archs=True: one actor and critic head per stream position
    capacity: int = ranged(20_000_000, ge=1, le=MAX_COUNT)  # CW paper_cl_experiments.sh: --replay_size=20000000 (CW20: all)
    batch_multiplier: int = ranged(4, ge=1, le=64)  # CW: --batch_size=512 for replay = 4 x CW's default 128


PRESETS: dict[str, dict[str, Any]] = {name: {"base_config": DrQV2Config(**over)} for name, over in DRQ_PRESETS.items()}
PRESETS["debug"] |= {"capacity": 300}     # smaller than one debug task: the bound is exercised


class Replay(Wrapper):
    def __init__(self, cfg: ReplayConfig, ctx: MethodContext):
        self.cfg, self.ctx = cfg, ctx
        base_cfg = dataclasses.replace(cfg.base_config, batch_size=cfg.base_config.batch_size * cfg.batch_multiplier)
        self.base = TaskDrQV2(base_cfg, ctx, HeadMap(cfg.heads, ctx.task_names))
        self.base.batch_source = self._batch
        self.memory = TransitionMemory(cfg.capacity)
        self.memory_state: dict[str, Any] = {}
        self.rng = np.random.default_rng([ctx.seed, 0x5E5])
        self.dir = ctx.workdir / "cl-memory"

    def past_probability(self) -> float:
        """The chance that a batch row comes from the earlier tasks: uniform over every transition seen."""
        past, now = self.memory.seen, len(self.base.replay)
        return past / (past + now) if self.memory.size and past + now else 0.0

    def _batch(self) -> dict[str, torch.Tensor]:
        b = self.base
        size = b.cfg.batch_size
        n_past = int(self.rng.binomial(size, self.past_probability()))
        parts = []
        if size - n_past:
            parts.append(b.labelled(b._sample(size - n_past), b.head, b.mask))
        if n_past:
            parts.append(self.memory.tensors(self.memory.sample(n_past, self.rng), b.device))
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    # ------------------------------------------------------------------ the Method interface
    def update(self, env_frames: int) -> dict[str, float]:
        out = self.base.update(env_frames)
        if out:
            out["replay/past_probability"] = self.past_probability()
        return out

    def on_task_end(self, task: TaskContext) -> dict[str, float]:
        out = dict(self.base.on_task_end(task))
        starts = valid_starts(self.base)
        for i in range(0, len(starts), CHUNK):   # in order: the reservoir sees the task's stream
            self.memory.reservoir_add(task_transitions(self.base, starts[i: i + CHUNK], self.base.head,
                                                       task.action_mask), self.rng)
        self.memory_state = self.memory.state(self.dir, task.index)
        return out | {"replay/reservoir_rows": float(len(self.memory)), "replay/seen": float(self.memory.seen)}

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "memory": dict(self.memory_state), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.memory_state = dict(state["memory"])
        self.memory.restore(self.dir, self.memory_state)
        self.rng.bit_generator.state = state["rng"]


SPEC = MethodSpec(ReplayConfig, Replay, presets=PRESETS)
