"""The multi-task reference ("upper bound" in Continual World): every task of a stream learnt at once, with a
task id, on the same total budget.

Continual World trains its multi-task SAC on an environment that switches task at every episode, with one
replay for all tasks and the task id choosing the head. The runner here trains the tasks of a stream in
order and gives a method no other task's env (boundaries belong to the runner), so the reference is a
method plus a stream:
- the stream: ``harness.streams.multitask_stream(spec, rounds)`` (built in for every built-in stream as
  ``<name>-mt``) visits the distinct tasks round-robin, each task's total budget cut into ``rounds``
  chunks: the same tasks, the same total budget, with data of every task gathered throughout the run;
- the method (``multitask``): DrQ-v2 with one actor and critic head per distinct task (``heads="name"``:
  a task's chunks share its head) that keeps every chunk's replay and draws each update batch uniformly
  over all the steps of all tasks seen so far, each row with its task's head, reward and action mask: the
  multi-task learner's batches. A task's exploration schedule and seed frames continue over its chunks
  (they do not restart at each chunk). CW's MT replay is a 1M-step FIFO, which holds every task because its
  episodes alternate tasks; with data gathered in chunks a FIFO would hold only the latest chunks' tasks,
  so every chunk is kept instead.
Its final scores per task (the last R row, one column per chunk of a task, all equal up to evaluation
noise) are the reference a continual run's table can show next to it.

On a stream without repeated tasks it is a perfect-memory replay learner trained in the stream's order.
The kept replays are held in memory (as Dreamer's earlier-task replays are): fine for state observations,
about 12 KB per 64x64 pixel step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.replay import EpisodeReplay
from methods.base import MethodContext, MethodSpec, TaskContext, ranged
from methods.cl.heads import HEADS, HeadMap
from methods.cl.learners import TaskDrQV2, Wrapper
from methods.drqv2 import PRESETS as DRQ_PRESETS
from methods.drqv2 import DrQV2Config


@dataclass(frozen=True)
class MultiTaskConfig:
    base: str = ranged("drqv2", one_of=("drqv2",))  # the learner: DrQ-v2, as the continual wrappers use it
    base_config: DrQV2Config = field(default_factory=DrQV2Config)  # DrQ-v2's own defaults (CW's MT keeps its CL batch size)
    heads: str = ranged("name", one_of=HEADS)  # CW's MT SAC: one head per task, chosen by the task id


PRESETS: dict[str, dict[str, Any]] = {name: {"base_config": DrQV2Config(**over)} for name, over in DRQ_PRESETS.items()}


class MultiTask(Wrapper):
    def __init__(self, cfg: MultiTaskConfig, ctx: MethodContext):
        self.cfg, self.ctx = cfg, ctx
        self.base = TaskDrQV2(cfg.base_config, ctx, HeadMap(cfg.heads, ctx.task_names))
        self.base.batch_source = self._batch
        self.past: list[tuple[EpisodeReplay, int, torch.Tensor]] = []   # (replay, head, action mask)
        self.steps_by_task: dict[str, int] = {}     # agent steps per task name, over all its chunks
        self.task_name = ""
        self.rng = np.random.default_rng([ctx.seed, 0x3717])

    def _sources(self) -> list[tuple[EpisodeReplay, int, torch.Tensor]]:
        b = self.base
        least = (b.cfg.frame_stack + b.cfg.nstep) * 4
        cur = [(b.replay, b.head, b.mask)]
        return [s for s in cur + self.past if len(s[0]) >= least]

    def _batch(self) -> dict[str, torch.Tensor]:
        b = self.base
        sources = self._sources()
        sizes = np.array([len(r) for r, _, _ in sources], float)
        counts = self.rng.multinomial(b.cfg.batch_size, sizes / sizes.sum())
        parts = [b.labelled(b._sample(int(n), replay), head, mask)
                 for (replay, head, mask), n in zip(sources, counts) if n]
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    # ------------------------------------------------------------------ the Method interface
    def on_task_start(self, task: TaskContext) -> None:
        b = self.base
        if self.task_name:
            self.steps_by_task[self.task_name] = b.task_agent_steps
            if len(b.replay):
                self.past.append((b.replay, b.head, b.mask.clone()))
        b.on_task_start(task)             # a new replay for this chunk, the task's head and mask
        b.task_agent_steps = self.steps_by_task.get(task.name, 0)
        self.task_name = task.name

    def on_task_end(self, task: TaskContext) -> dict[str, float]:
        steps = sum(len(r) for r, _, _ in self.past) + len(self.base.replay)
        return dict(self.base.on_task_end(task)) | {"multitask/replay_steps": float(steps)}

    def state_dict(self) -> dict[str, Any]:
        wd = self.ctx.workdir
        return {"base": self.base.state_dict(), "task_name": self.task_name, "steps_by_task": dict(self.steps_by_task),
                "past": [{"dir": str(r.directory.relative_to(wd)) if r.directory else "", "state": r.state_dict(),
                          "head": head, "mask": mask} for r, head, mask in self.past],
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.task_name = str(state["task_name"])
        self.steps_by_task = {str(k): int(v) for k, v in state["steps_by_task"].items()}
        self.past = []
        for p in state["past"]:
            replay = EpisodeReplay(self.ctx.workdir / p["dir"])
            replay.load_state_dict(p["state"])
            self.past.append((replay, int(p["head"]), p["mask"].to(self.base.device)))
        self.rng.bit_generator.state = state["rng"]


SPEC = MethodSpec(MultiTaskConfig, MultiTask, presets=PRESETS)
