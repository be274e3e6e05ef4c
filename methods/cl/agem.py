"""A-GEM (Chaudhry et al. 2019) around DrQ-v2: gradients projected so the loss on an episodic memory of the
earlier tasks does not rise (to first order).

As Continual World's ``methods/agem.py`` (anchors.md section 3):
- at each task's end ``memory_per_task`` transitions of its replay (CW ``episodic_mem_per_task`` 10,000),
  drawn uniformly, join the episodic memory; they keep their own reward, head and action mask;
- at every update after the first task, a memory batch of ``memory_batch`` rows (CW
  ``episodic_batch_size`` 128) gives reference gradients g_ref of the same losses; when g . g_ref < 0 the
  update's gradient becomes g - (g . g_ref / g_ref . g_ref) g_ref, so g_new . g_ref = 0 (it is left alone
  otherwise);
- the critic is included (CW runs A-GEM with ``regularize_critic=True``; its critic has a head per task,
  so the memory's TD losses use their own tasks' heads and rewards).
CW computes the actor's and the critic's gradients at once and projects their concatenation. DrQ-v2 steps
its critic (and encoder) before it computes its actor loss (which uses the updated critic), so the
projection is done per step: the critic-and-encoder gradient against the memory's TD-loss gradient, then
the actor gradient against the memory's actor-loss gradient (on the memory's encoder features of that
update, as DrQ-v2's own actor loss uses its batch's). Each step then keeps its own memory loss from rising.

avalanche-lib's ``AGEMPlugin`` is not used: it is a supervised-strategy plugin whose memory is an
AvalancheDataset of labelled patterns and whose reference gradient is ``criterion(model(x), y)``
computed once before each training iteration over all model parameters; here the memory holds
transitions with rewards, the losses are a TD loss with a target network and an actor loss through the
critic, and there are two parameter groups stepped one after the other. The projection itself is the
three lines in ``project``.

Dreamer is not a base here: its actor and critic losses live in imagination under the world model's
single reward head, trained on the current task only, so an earlier task's loss is not defined.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from methods.base import MAX_BATCH, MAX_COUNT, MethodContext, MethodSpec, TaskContext, ranged
from methods.cl.heads import HEADS, HeadMap
from methods.cl.learners import TaskDrQV2, Wrapper
from methods.cl.memory import TransitionMemory, task_transitions, valid_starts
from methods.drqv2 import PRESETS as DRQ_PRESETS
from methods.drqv2 import DrQV2Config


@dataclass(frozen=True)
class AGEMConfig:
    base: str = ranged("drqv2", one_of=("drqv2",))  # the wrapped learner (see the module docstring on Dreamer)
    base_config: DrQV2Config = field(default_factory=DrQV2Config)  # DrQ-v2's own defaults
    heads: str = ranged("position", one_of=HEADS)  # CW multihead_archs=True: one actor and critic head per stream position
    memory_per_task: int = ranged(10_000, ge=1, le=MAX_COUNT)  # CW paper_cl_experiments.sh: --episodic_mem_per_task=10000
    memory_batch: int = ranged(128, ge=1, le=MAX_BATCH)  # CW paper_cl_experiments.sh: --episodic_batch_size=128


PRESETS: dict[str, dict[str, Any]] = {name: {"base_config": DrQV2Config(**over)} for name, over in DRQ_PRESETS.items()}
PRESETS["debug"] |= {"memory_per_task": 200, "memory_batch": 16}


def project(grads: list[torch.Tensor], refs: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    """A-GEM: ``grads`` with the component that opposes ``refs`` removed when g . g_ref < 0; returns them and
    g . g_ref before the projection."""
    dot = sum((g * r).sum() for g, r in zip(grads, refs))
    dot_f = float(dot)
    if dot_f >= 0:
        return grads, dot_f
    scale = dot / sum((r * r).sum() for r in refs)
    return [g - scale * r for g, r in zip(grads, refs)], dot_f


class AGEM(Wrapper):
    def __init__(self, cfg: AGEMConfig, ctx: MethodContext):
        self.cfg, self.ctx = cfg, ctx
        self.base = TaskDrQV2(cfg.base_config, ctx, HeadMap(cfg.heads, ctx.task_names))
        self.base.before_step_hooks.append(self._project)
        self.memory = TransitionMemory(cfg.memory_per_task * len(ctx.task_names))
        self.memory_state: dict[str, Any] = {}
        self.rng = np.random.default_rng([ctx.seed, 0xA6E])
        self.dir = ctx.workdir / "cl-memory"
        self._mem_batch: dict[str, torch.Tensor] | None = None
        self._mem_h: torch.Tensor | None = None

    def _params(self, which: str) -> list[torch.nn.Parameter]:
        b = self.base
        mods = (b.critic, b.encoder) if which == "critic" else (b.actor,)
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def _memory_loss(self, which: str) -> torch.Tensor:
        b = self.base
        if which == "critic":   # a new memory batch for this update; the actor step reuses it
            self._mem_batch = self.memory.tensors(self.memory.sample(self.cfg.memory_batch, self.rng, replace=False),
                                                  b.device)
            with b.selected(self._mem_batch["task"]):
                loss, h, _ = b.critic_loss(self._mem_batch)
            self._mem_h = h.detach()
            return loss
        assert self._mem_batch is not None and self._mem_h is not None, "the critic step comes first"
        with b.selected(self._mem_batch["task"]):
            return b.actor_loss(self._mem_h, self._mem_batch["mask"])

    def _project(self, which: str) -> dict[str, float]:
        if not len(self.memory):
            return {}
        params = self._params(which)
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        for p in params:
            p.grad = None
        self._memory_loss(which).backward()
        refs = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        new, dot = project(grads, refs)
        for p, g in zip(params, new):
            p.grad = g
        return {f"agem/{which}_violation": float(dot < 0)}

    # ------------------------------------------------------------------ the Method interface
    def on_task_end(self, task: TaskContext) -> dict[str, float]:
        out = dict(self.base.on_task_end(task))
        starts = valid_starts(self.base)
        if len(starts) > self.cfg.memory_per_task:
            starts = np.sort(self.rng.choice(starts, size=self.cfg.memory_per_task, replace=False))
        if len(starts):
            self.memory.append(task_transitions(self.base, starts, self.base.head, task.action_mask))
        self.memory_state = self.memory.state(self.dir, task.index)
        return out | {"agem/memory_rows": float(len(self.memory))}

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "memory": dict(self.memory_state), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.memory_state = dict(state["memory"])
        self.memory.restore(self.dir, self.memory_state)
        self.rng.bit_generator.state = state["rng"]


SPEC = MethodSpec(AGEMConfig, AGEM, presets=PRESETS)
