"""Per-task output heads: Continual World's multi-head actor and critic, for DrQ-v2 and Dreamer.

Continual World runs every continual method with ``multihead_archs=True`` and ``hide_task_id=True``: the
actor's and the critics' last layers have one output block per task of the sequence (CW20: 20 heads, one
per stream position, although every task appears twice), the task id selects the block and is not an
input. The layers below are shared by all tasks; they are what the regularisers protect (CW's
``common_variables``: the heads are left out of the penalty, each is trained only on its own task).

``TaskHeads`` is such a last layer. Which block a forward pass uses is set on the module, an int (one
task: one slice of the weight, as cheap as a plain Linear) or a LongTensor (B,) of per-row heads (batches
that mix tasks: replay, A-GEM's memory, the multi-task reference); :func:`selected` sets it for every
``TaskHeads`` under some modules and restores what was there before.

``HeadMap`` maps a task to its head: ``position`` (CW: one head per stream position), ``name`` (one per
distinct task, the multi-task reference: a task trained in several chunks keeps one head) or ``shared``
(one head: the base learner's own architecture, unchanged).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from methods.backbone.nets import Optimizer
from methods.base import TaskContext
from methods.drqv2 import adam

HEADS = ("position", "name", "shared")


class HeadMap:
    """Which output head a task uses (see the module docstring)."""

    def __init__(self, mode: str, task_names: tuple[str, ...] | list[str]):
        assert mode in HEADS, f"heads={mode!r}: valid: {', '.join(HEADS)}"
        self.mode = mode
        self.names = list(dict.fromkeys(task_names))
        self.count = {"position": len(task_names), "name": len(self.names), "shared": 1}[mode]

    def __call__(self, task: TaskContext) -> int:
        if self.mode == "position":
            return int(task.index)
        if self.mode == "name":
            return self.names.index(task.name)
        return 0


class TaskHeads(nn.Module):
    """A Linear layer with ``heads`` output blocks of ``out_dim``; ``task`` selects the block (an int for
    the whole batch, or a LongTensor (B,) with one head per row of a (B, in_dim) input)."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, zero: bool = False):
        super().__init__()
        # One Linear for all blocks: each block gets nn.Linear's default initialisation for in_dim inputs.
        self.linear = nn.Linear(in_dim, out_dim * heads)
        if zero:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        self.in_dim, self.out_dim, self.heads = in_dim, out_dim, heads
        self.task: int | torch.Tensor = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.task
        if isinstance(t, int):
            assert 0 <= t < self.heads, f"head {t} of {self.heads}"
            s = slice(t * self.out_dim, (t + 1) * self.out_dim)
            return F.linear(x, self.linear.weight[s], self.linear.bias[s])
        assert x.dim() == 2 and t.shape == (x.shape[0],), \
            f"per-row heads {tuple(t.shape)} need a (B, in) input, got {tuple(x.shape)}"
        y = self.linear(x).view(x.shape[0], self.heads, self.out_dim)
        return y.gather(1, t.view(-1, 1, 1).expand(-1, 1, self.out_dim)).squeeze(1)


def head_modules(roots: tuple[nn.Module, ...] | list[nn.Module]) -> list[TaskHeads]:
    return [m for r in roots for m in r.modules() if isinstance(m, TaskHeads)]


@contextlib.contextmanager
def selected(roots: tuple[nn.Module, ...] | list[nn.Module], task: int | torch.Tensor) -> Iterator[None]:
    """Every ``TaskHeads`` under ``roots`` uses head(s) ``task`` inside the block."""
    mods = head_modules(roots)
    if isinstance(task, torch.Tensor) and task.dim() == 0:
        task = int(task)
    before = [m.task for m in mods]
    for m in mods:
        m.task = task
    try:
        yield
    finally:
        for m, t in zip(mods, before):
            m.task = t


def head_parameter_names(root: nn.Module, prefix: str = "") -> set[str]:
    """Qualified names (under ``prefix``) of the parameters that belong to ``TaskHeads`` modules."""
    out = set()
    for name, mod in root.named_modules():
        if isinstance(mod, TaskHeads):
            for pname, _ in mod.named_parameters():
                out.add(f"{prefix}{name}.{pname}" if name else f"{prefix}{pname}")
    return out


# ---------------------------------------------------------------------- installing heads in a learner

def install_drqv2(learner: Any, heads: int) -> None:
    """DrQ-v2 with per-task heads: the actor's last layer and each Q network's last layer become
    ``TaskHeads``; the target critic and the actor and critic optimizers are rebuilt around them."""
    last = learner.actor.policy[-1]
    learner.actor.policy[-1] = TaskHeads(last.in_features, last.out_features, heads).to(learner.device)
    for q in (learner.critic.q1, learner.critic.q2):
        q[-1] = TaskHeads(q[-1].in_features, 1, heads).to(learner.device)
    learner.critic_target = copy.deepcopy(learner.critic).requires_grad_(False)
    lr = learner.cfg.lr
    learner.actor_opt = adam(learner.actor.parameters(), lr)
    learner.critic_opt = adam(learner.critic.parameters(), lr)


def install_dreamer(agent: Any, heads: int) -> None:
    """Dreamer with per-task heads: the actor's and the critic's output layers become ``TaskHeads`` (the
    critic's start at zero, as DreamerV3's); the slow critic and both optimizers are rebuilt."""
    ac, c = agent.ac, agent.cfg.ac
    out = ac.actor.out
    ac.actor.out = TaskHeads(out.in_features, out.out_features, heads).to(agent.device)
    out = ac.critic.out
    ac.critic.out = TaskHeads(out.in_features, out.out_features, heads, zero=True).to(agent.device)
    ac.slow_critic = copy.deepcopy(ac.critic).requires_grad_(False)
    ac.actor_opt = Optimizer(ac.actor.parameters(), c.actor_lr, c.eps, c.weight_decay, c.grad_clip, name="actor/loss")
    ac.critic_opt = Optimizer(ac.critic.parameters(), c.critic_lr, c.eps, c.weight_decay, c.grad_clip,
                              name="critic/loss")
