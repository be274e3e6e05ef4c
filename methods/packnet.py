"""PackNet (Mallya & Lazebnik 2018) as a continual-learning wrapper around a base learner's actor.

The recipe is Continual World's (anchors.md section 3) and the paper's (Section 4.2):
- every packed weight has an owner task; gradients are masked so that only the current task's weights
  train; biases and norms are trained on task 0 and frozen afterwards;
- at a task's end: prune the fraction left / (left + 1) of its free weights (smallest |w|; left = tasks
  still to come), reset the optimizers, retrain the kept weights for a while, reset the optimizers again,
  and freeze them; the pruned weights are handed to the next task;
- evaluating task k shows only the weights of tasks <= k;
- the critic is re-initialised at each new task (rewards differ between tasks);
- the actor has one output layer (head) per task, outside the packed weights (Continual World's
  ``multihead_archs``; its PackNet leaves the heads alone), and a pruned weight starts the next task at zero
  (Continual World and Mallya & Lazebnik zero what they prune; avalanche keeps the old value).

Why the heads matter: DrQ-v2's deterministic actor drives its pre-tanh outputs far into saturation (a bang-bang
policy). With one shared, packed output layer each task inherits the frozen, saturated outputs of the tasks
before it; from the third task of the Ant stream on, every action was a constant +-1 on every state, tanh gave
no gradient, and the task never learned (its evaluation scores stayed bit-identical through its own training).
A fresh head per task starts each task unsaturated.

The masking and pruning machinery is avalanche-lib's (``avalanche.models.packnet``): each Linear and Conv
layer of the packed network is wrapped in its PackNet module. LayerNorm (the actor trunk's, and the conv
encoder's channel norms) is not supported by those modules; as in Continual World these norms stay outside
the packed layers and are frozen after task 0.

Base learner: DrQ-v2 (the default and, for now, the only one). The paper prunes "actor parameters" and
re-initialises "the critic", so its PackNet wraps an actor-critic learner; DrQ-v2 is the paper's model-free
pixel actor-critic baseline, so it is the most plausible base. Its conv encoder feeds the actor, so it is
packed too (otherwise updating it for a new task would change earlier tasks' actions).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError
from methods.base import MethodContext, MethodSpec, Step, TaskContext, ranged
from methods.cl.heads import HeadMap, TaskHeads, head_modules, head_parameter_names
from methods.drqv2 import PRESETS as DRQ_PRESETS
from methods.drqv2 import Critic, DrQV2, DrQV2Config, adam

BASES = ("drqv2",)
PACKNET_HEADS = ("position", "shared")  # not "name": a head shared by two stream positions would break the isolation


@dataclass(frozen=True)
class PackNetConfig:
    base: str = ranged("drqv2", one_of=BASES)  # the wrapped learner (see the module docstring for why DrQ-v2)
    base_config: DrQV2Config = field(default_factory=DrQV2Config)  # DrQ-v2's own defaults
    # CW: 100k retrain steps after 1M-step tasks = 10% of the task's updates
    retrain_fraction: float = ranged(0.1, ge=0, le=1)
    reinit_critic: bool = True             # paper Sec. 4.2 / CW: a fresh critic for each task
    # CW: `multihead_archs` True, one actor output layer per stream position, not packed; "shared": one packed
    # output layer (each task then inherits the earlier tasks' frozen, often saturated outputs)
    heads: str = ranged("position", one_of=PACKNET_HEADS)


PRESETS: dict[str, dict[str, Any]] = {name: {"base_config": DrQV2Config(**over)} for name, over in DRQ_PRESETS.items()}


def _packnet_modules(root: nn.Module) -> list[Any]:
    from avalanche.models.packnet import PackNetModule
    return [m for m in root.modules() if isinstance(m, PackNetModule)]


def _wrap_layers(seq: nn.Sequential) -> None:
    """Replace each Linear/Conv2d of ``seq`` by avalanche's PackNet module around it (in place)."""
    from avalanche.models.packnet import PackNetModel
    for i, m in enumerate(seq):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if m.bias is None:
                # avalanche 0.6.0 freezes `wrappee.bias` unconditionally at freeze_pruned() and fails on a
                # bias-less layer (the shared ConvEncoder's convs); a zero, frozen bias is numerically the same.
                m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], device=m.weight.device), requires_grad=False)
            seq[i] = PackNetModel.wrap(m)


class PackNet:
    def __init__(self, cfg: PackNetConfig, ctx: MethodContext):
        if cfg.base not in BASES:
            raise HarnessError(f"packnet: unknown base learner {cfg.base!r}; valid: {', '.join(BASES)}")
        if len(ctx.task_names) > 254:
            raise HarnessError(f"packnet supports at most 254 tasks (avalanche's limit), the stream has "
                               f"{len(ctx.task_names)}")
        self.cfg, self.ctx = cfg, ctx
        self.base = DrQV2(cfg.base_config, ctx)
        b = self.base
        if b.encoder.conv is not None:
            _wrap_layers(b.encoder.conv.net)
        _wrap_layers(b.actor.trunk)
        self.headmap = HeadMap(cfg.heads, ctx.task_names)
        if self.headmap.count > 1:
            last = b.actor.policy[-1]
            b.actor.policy[-1] = TaskHeads(last.in_features, last.out_features, self.headmap.count).to(b.device)
        _wrap_layers(b.actor.policy)
        self.packed = _packnet_modules(b.encoder) + _packnet_modules(b.actor)
        # Biases and norms: trained on task 0 only. A head's block gets gradients only while its task trains, and
        # the optimizers restart at every task, so an earlier block is never moved.
        heads = head_parameter_names(b.actor)
        self.shared = [p for m in (b.encoder, b.actor) for name, p in m.named_parameters()
                       if not name.endswith("wrappee.weight") and not (m is b.actor and name in heads)]
        self.task_updates = 0
        self.current = 0
        self._reset_optimizers()

    # ------------------------------------------------------------------ PackNet state
    def _activate(self, task_index: int) -> None:
        for m in self.packed:
            m.activate_task(min(task_index, m.task_count))
        for h in head_modules([self.base.actor]):  # one head per stream position (none with heads="shared")
            h.task = task_index

    def _reset_optimizers(self) -> None:
        """Fresh Adam states: momentum from earlier steps must not move frozen weights (avalanche's caution)."""
        b, lr = self.base, self.cfg.base_config.lr
        b.encoder_opt = adam(b.encoder.parameters(), lr)
        b.actor_opt = adam(b.actor.parameters(), lr)
        b.critic_opt = torch.optim.Adam(b.critic.parameters(), lr=lr)

    def on_task_start(self, task: TaskContext) -> None:
        self.current = task.index
        self.task_updates = 0
        if task.index > 0:
            for p in self.shared:
                p.requires_grad_(False)  # CW: biases and norms are frozen after task 0
            if self.cfg.reinit_critic:
                b = self.base
                b.critic = Critic(b.encoder.out_dim, self.ctx.action_dim, self.cfg.base_config.feature_dim,
                                  self.cfg.base_config.hidden_dim).to(b.device)
                b.critic_target = copy.deepcopy(b.critic).requires_grad_(False)
        self._activate(task.index)
        self._reset_optimizers()
        self.base.on_task_start(task)

    def act(self, obs: dict[str, np.ndarray], state: Any, task: TaskContext,
            explore: bool) -> tuple[np.ndarray, Any]:
        self._activate(task.index)  # evaluation of task k sees only the weights of tasks <= k
        try:
            return self.base.act(obs, state, task, explore)
        finally:
            self._activate(self.current)

    def observe(self, step: Step) -> None:
        self.base.observe(step)

    def update(self, env_frames: int) -> dict[str, float]:
        out = self.base.update(env_frames)
        if out:
            self.task_updates += 1
        return out

    def on_task_end(self, task: TaskContext) -> dict[str, float]:
        left = len(self.ctx.task_names) - task.index - 1
        fraction = left / (left + 1)
        self._activate(task.index)
        for m in self.packed:
            m.prune(fraction)
        self._reset_optimizers()
        retrain = int(round(self.cfg.retrain_fraction * self.task_updates))
        if len(self.base.replay) >= (self.cfg.base_config.frame_stack + self.cfg.base_config.nstep) * 4:
            for _ in range(retrain):
                self.base._update()
        else:
            retrain = 0
        with torch.no_grad():
            for m in self.packed:
                m.freeze_pruned()
                w = m.wrappee.weight
                w.masked_fill_(m.task_index == m.task_count, 0.0)  # the next task's weights start at zero (CW)
        self._reset_optimizers()
        kept = sum(int((m.task_index == task.index).sum()) for m in self.packed)
        total = sum(m.task_index.numel() for m in self.packed)
        return {"packnet/pruned_fraction": fraction, "packnet/retrain_updates": float(retrain),
                "packnet/weights_owned_by_task": kept / total}

    # ------------------------------------------------------------------ checkpoints
    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        b = self.base
        return [(f"{m}.{n}", p) for m in ("encoder", "actor") for n, p in getattr(b, m).named_parameters()]

    def state_dict(self) -> dict[str, Any]:
        # which parameters are frozen: task 0's biases and norms after task 0, avalanche's freeze_pruned biases
        return {"base": self.base.state_dict(), "task_updates": self.task_updates, "current": self.current,
                "requires_grad": {name: p.requires_grad for name, p in self._trainable()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        frozen = state["requires_grad"]
        if set(frozen) != {name for name, _ in self._trainable()}:
            raise HarnessError(f"this PackNet checkpoint has other layers than a PackNet with heads={self.cfg.heads!r} "
                               f"(made by an earlier version, or with other heads); start the run again")
        for name, p in self._trainable():
            p.requires_grad_(bool(frozen[name]))
        self._reset_optimizers()  # the optimizers' parameter lists must match the saved states
        self.base.load_state_dict(state["base"])
        self.task_updates = int(state["task_updates"])
        self.current = int(state["current"])


def _build(cfg: PackNetConfig, ctx: MethodContext) -> PackNet:
    return PackNet(cfg, ctx)


SPEC = MethodSpec(PackNetConfig, _build, presets=PRESETS)
