"""L2, EWC and MAS: a quadratic penalty that pulls the policy's shared weights towards the earlier tasks'.

As Continual World defines them (its ``methods/regularization.py``, ``l2.py``, ``ewc.py``, ``mas.py``;
anchors.md section 3):
- at the end of each task the weights are stored as the anchor theta* and an importance Omega_k is estimated
  for every weight; importances are summed over tasks (CW's ``_merge_weights``; ``importance_decay`` < 1
  gives online EWC's decayed sum instead);
- while training every later task the loss gets ``strength * sum_i Omega_i (theta_i - theta*_i)^2``
  (CW's ``cl_reg_coef``), with the tuned strengths of CW's CW20 runs: L2 1e5, EWC 1e4, MAS 1e4;
- the importances, from ``importance_samples`` states of the task's replay (CW: 10 batches of 256):
  - L2: Omega = 1;
  - EWC: the diagonal Fisher information of the Gaussian policy N(mu(s), sigma(s)^2), per state
    sum_a [(d mu_a / d theta)^2 + 2 (d sigma_a / d theta)^2] / (sigma_a^2 + 1e-6), clipped below at 1e-5, averaged
    over states (per-state gradients, not the gradient of a batch mean);
  - MAS: the sensitivity of the policy's outputs, the state-average of |d (||mu(s)||^2 + ||log sigma(s)||^2) / d theta|.
  Only the dimensions of the task's action mask count (the others are padding).

What is regularised: the policy's shared weights, not the per-task heads (CW's ``common_variables``) and
not the critic (CW's ``regularize_critic=False`` in all its regularisation runs: the critic learns the
current task's reward, and each task has its own critic head, see methods/cl/heads.py; the critic is not
reset, CW's ``reset_critic_on_task_change=False``). With DrQ-v2 the policy is actor(encoder(obs)): the
conv encoder (pixels) is part of it and is regularised too, at the critic step that trains it; its
gradient to the penalty is added between the backward pass and the optimizer step, which is the same as
adding the penalty to the loss (DrQ-v2 clips no gradients). DrQ-v2's policy has a fixed, scheduled
exploration std: sigma is its value at the task's end and d sigma / d theta = 0. With Dreamer the policy is the
imagination actor on world-model features (its learned mean and std); the penalty is added to the actor's
loss (before its gradient clipping, as CW adds it before ``clipnorm``). Dreamer's world model is not
regularised: CW's recipe has no world model, and its changes on a new task are not covered.

avalanche-lib's ``EWCPlugin`` and ``MASPlugin`` are not used: their importances come from a supervised
``criterion(model(x), y)`` over a DataLoader of labelled patterns (EWC: squared gradients of mini-batch
mean losses; MAS: of the mean output norm), which RL does not have; CW's recipe needs per-state gradients of
the policy's Gaussian parameters on replay states. Their penalty is added by mutating ``strategy.loss`` in
a strategy's ``before_backward`` callback, keyed by its experience clock; our learners step several
optimizers per update (DrQ-v2's encoder learns from the critic loss). MAS's plugin also merges importances
as a running average (alpha old + (1 - alpha) new), where CW sums them. What remains in common is the
penalty sum Omega (theta - theta*)^2 itself (``Anchors`` below).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from methods.base import MAX_COUNT, MethodContext, MethodSpec, TaskContext, ranged
from methods.cl.heads import HEADS, HeadMap, head_parameter_names
from methods.cl.learners import TaskDreamer, TaskDrQV2, Wrapper, own_random_numbers
from methods.cl.memory import valid_starts
from methods.dreamer import PRESETS as DREAMER_PRESETS
from methods.dreamer import DreamerConfig
from methods.drqv2 import PRESETS as DRQ_PRESETS
from methods.drqv2 import DrQV2Config

BASES = ("drqv2", "dreamer")
KINDS = ("l2", "ewc", "mas")
JACOBIAN_FLOATS = 2**25     # per-state gradients held at once (128 MB of float32): sets the chunk size


# ---------------------------------------------------------------------- configs

@dataclass(frozen=True)
class RegularizerConfig:
    base: str = ranged("drqv2", one_of=BASES)  # the wrapped learner: DrQ-v2 (actor + encoder) or Dreamer's actor
    base_config: DrQV2Config = field(default_factory=DrQV2Config)  # DrQ-v2's own defaults (base=drqv2)
    dreamer_config: DreamerConfig = field(default_factory=DreamerConfig)  # Dreamer's own defaults (base=dreamer)
    strength: float = ranged(1e4, ge=0)  # CW cl_reg_coef (each method's tuned value below)
    heads: str = ranged("position", one_of=HEADS)  # CW multihead_archs=True: one actor and critic head per stream position
    importance_samples: int = ranged(2560, ge=1, le=MAX_COUNT)  # CW _update_reg_weights: 10 batches x 256 states
    importance_decay: float = ranged(1.0, ge=0, le=1)  # CW: importances summed over tasks (1); online EWC: < 1


@dataclass(frozen=True)
class L2Config(RegularizerConfig):
    strength: float = ranged(1e5, ge=0)  # CW paper_cl_experiments.sh (CW20): --cl_method=l2 --cl_reg_coef=1e5


@dataclass(frozen=True)
class EWCConfig(RegularizerConfig):
    strength: float = ranged(1e4, ge=0)  # CW paper_cl_experiments.sh (CW20): --cl_method=ewc --cl_reg_coef=1e4


@dataclass(frozen=True)
class MASConfig(RegularizerConfig):
    strength: float = ranged(1e4, ge=0)  # CW paper_cl_experiments.sh (CW20): --cl_method=mas --cl_reg_coef=1e4


@dataclass(frozen=True)
class FineTuneConfig(RegularizerConfig):
    strength: float = ranged(0.0, ge=0, le=0)  # CW "Fine-tuning": the multi-head learner with no penalty


def base_presets() -> dict[str, dict[str, Any]]:
    """Each preset of DrQ-v2 and Dreamer under the same name (debug, tiny, small, paper)."""
    return {name: {"base_config": DrQV2Config(**DRQ_PRESETS[name]),
                   "dreamer_config": DreamerConfig(**DREAMER_PRESETS[name])} for name in DRQ_PRESETS}


PRESETS: dict[str, dict[str, Any]] = base_presets()
PRESETS["debug"] |= {"importance_samples": 64}


# ---------------------------------------------------------------------- anchors and importances

class Anchors:
    """theta* and Omega for each regularised parameter (CW's ``old_params`` and ``reg_weights``)."""

    def __init__(self, params: dict[str, nn.Parameter]):
        self.params = params
        self.anchor = {n: p.detach().clone() for n, p in params.items()}
        self.importance = {n: torch.zeros_like(p) for n, p in params.items()}
        self.tasks = 0                  # task boundaries consolidated so far

    def consolidate(self, importance: dict[str, torch.Tensor], decay: float) -> None:
        """A task ended: Omega <- decay * Omega + Omega_task, theta* <- theta."""
        with torch.no_grad():
            for n, p in self.params.items():
                self.importance[n] = decay * self.importance[n] + importance[n].to(p.dtype)
                self.anchor[n] = p.detach().clone()
        self.tasks += 1

    def penalty(self, names: list[str] | None = None) -> torch.Tensor:
        """sum Omega (theta - theta*)^2 over ``names`` (default: all), differentiable in theta."""
        names = list(self.params) if names is None else names
        terms = [(self.importance[n] * (self.params[n] - self.anchor[n]) ** 2).sum() for n in names]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def add_gradient(self, names: list[str], strength: float) -> None:
        """p.grad += strength * d/dp [Omega (p - theta*)^2] for the parameters ``names``."""
        with torch.no_grad():
            for n in names:
                p = self.params[n]
                g = (2.0 * strength) * self.importance[n] * (p - self.anchor[n])
                p.grad = g if p.grad is None else p.grad.add_(g)

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": dict(self.anchor), "importance": dict(self.importance), "tasks": self.tasks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["anchor"]) != set(self.params):
            raise ValueError(f"regulariser checkpoint: parameters {sorted(state['anchor'])} != {sorted(self.params)}")
        dev = {n: p.device for n, p in self.params.items()}
        self.anchor = {n: t.to(dev[n]) for n, t in state["anchor"].items()}
        self.importance = {n: t.to(dev[n]) for n, t in state["importance"].items()}
        self.tasks = int(state["tasks"])


class DrQPolicy(nn.Module):
    """DrQ-v2's policy as a function of its weights: obs -> (mu, sigma) with sigma the exploration std."""

    def __init__(self, learner: TaskDrQV2):
        super().__init__()
        self.encoder, self.actor = learner.encoder, learner.actor
        self.std = 1.0
        self.learned_std = False

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.actor(self.encoder(obs))
        return mu, torch.full_like(mu, self.std)


class DreamerPolicy(nn.Module):
    """Dreamer's actor as a function of its weights: world-model features -> (tanh mean, std)."""

    def __init__(self, agent: TaskDreamer):
        super().__init__()
        self.actor = agent.ac.actor
        object.__setattr__(self, "_ac", agent.ac)   # not a submodule: only the actor's weights are named here
        self.learned_std = True

    def forward(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._ac.policy_dist(x["feat"])


def per_state_importance(kind: str, policy: nn.Module, names: list[str], inputs: dict[str, torch.Tensor],
                         dims: torch.Tensor) -> dict[str, torch.Tensor]:
    """EWC's Fisher or MAS's sensitivity (see the module docstring), averaged over the states ``inputs``
    (N, ...); ``dims`` are the action dimensions that count."""
    from torch.func import functional_call, grad, jacrev, vmap
    params = {n: p.detach() for n, p in policy.named_parameters() if n in names}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    n_states = len(next(iter(inputs.values())))
    if not params or not n_states:
        return total
    n_params = sum(p.numel() for p in params.values())

    def outputs(p: dict[str, torch.Tensor], x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mu, std = functional_call(policy, p, ({k: v[None] for k, v in x.items()},))
        return mu[0, dims].float(), std[0, dims].float()

    if kind == "ewc":
        def scaled(p: dict[str, torch.Tensor], x: dict[str, torch.Tensor]) -> torch.Tensor:
            mu, std = outputs(p, x)
            inv = torch.rsqrt(std.detach() ** 2 + 1e-6)
            parts = [mu * inv] + ([math.sqrt(2.0) * std * inv] if policy.learned_std else [])
            return torch.cat(parts)
        per_state = vmap(jacrev(scaled), in_dims=(None, 0))
        width = len(dims) * (2 if policy.learned_std else 1)
    else:
        def norm(p: dict[str, torch.Tensor], x: dict[str, torch.Tensor]) -> torch.Tensor:
            mu, std = outputs(p, x)
            return (mu ** 2).sum() + (torch.log(std) ** 2).sum()
        per_state = vmap(grad(norm), in_dims=(None, 0))
        width = 1
    chunk = max(1, JACOBIAN_FLOATS // max(1, width * n_params))
    with torch.no_grad():
        for i in range(0, n_states, chunk):
            x = {k: v[i: i + chunk] for k, v in inputs.items()}
            g = per_state(params, x)
            for n in total:
                if kind == "ewc":   # sum over the outputs, clip per state (CW), then accumulate
                    total[n] += g[n].pow(2).sum(1).clamp(min=1e-5).sum(0)
                else:
                    total[n] += g[n].abs().sum(0)
    return {n: t / n_states for n, t in total.items()}


# ---------------------------------------------------------------------- the method

class PenalizedOptimizer:
    """Dreamer's actor optimizer with the penalty added to the loss it minimises."""

    def __init__(self, inner: Any, owner: "Regularized"):
        self.inner, self.owner = inner, owner

    def step(self, loss: torch.Tensor, parts: dict[str, torch.Tensor] | None = None,
             retain_graph: bool = False) -> dict[str, float]:
        o = self.owner
        if o.anchors.tasks and o.cfg.strength > 0:
            loss = loss + o.cfg.strength * o.anchors.penalty()
        return self.inner.step(loss, parts, retain_graph=retain_graph)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Regularized(Wrapper):
    """L2 / EWC / MAS (``kind``) around DrQ-v2 or Dreamer."""

    def __init__(self, cfg: RegularizerConfig, ctx: MethodContext, kind: str):
        assert kind in KINDS, kind
        self.cfg, self.ctx, self.kind = cfg, ctx, kind
        heads = HeadMap(cfg.heads, ctx.task_names)
        self.base: TaskDrQV2 | TaskDreamer
        if cfg.base == "drqv2":
            self.base = TaskDrQV2(cfg.base_config, ctx, heads)
            self.policy: nn.Module = DrQPolicy(self.base)
            self.base.before_step_hooks.append(self._add_penalty_gradient)
        else:
            self.base = TaskDreamer(cfg.dreamer_config, ctx, heads)
            self.policy = DreamerPolicy(self.base)
            self.base.ac.actor_opt = PenalizedOptimizer(self.base.ac.actor_opt, self)
        skip = head_parameter_names(self.policy)
        self.anchors = Anchors({n: p for n, p in self.policy.named_parameters() if n not in skip})
        # DrQ-v2 steps its encoder with the critic loss and its actor with the actor loss
        self.groups = {"critic": [n for n in self.anchors.params if n.startswith("encoder.")],
                       "actor": [n for n in self.anchors.params if n.startswith("actor.")]}
        self.rng = np.random.default_rng([ctx.seed, 0x5E6])   # the states importances are estimated on

    # ------------------------------------------------------------------ the penalty
    def _add_penalty_gradient(self, which: str) -> dict[str, float]:
        if self.anchors.tasks and self.cfg.strength > 0:
            self.anchors.add_gradient(self.groups[which], self.cfg.strength)
        return {}

    def penalty(self) -> float:
        """The current penalty term of the loss: strength * sum Omega (theta - theta*)^2 (0 on the first task)."""
        with torch.no_grad():
            return float(self.cfg.strength * self.anchors.penalty()) if self.anchors.tasks else 0.0

    # ------------------------------------------------------------------ importances
    def _states(self, n: int) -> dict[str, torch.Tensor]:
        """Up to ``n`` states of the task just trained, from its replay, as the policy's inputs."""
        b = self.base
        if isinstance(b, TaskDrQV2):
            starts = valid_starts(b)
            if len(starts) > n:
                starts = np.sort(self.rng.choice(starts, size=n, replace=False))
            if not len(starts):
                return {}
            length, _ = b.window
            rows = b.transitions(b.replay.windows(starts, length))
            return {k: torch.as_tensor(rows[k], device=b.device) for k in ("proprio", "pixels") if k in rows}
        if b.replay is None or len(b.replay) < b.cfg.seq_len:
            return {}
        seqs = -(-n // b.cfg.seq_len)
        batch = {k: torch.as_tensor(np.ascontiguousarray(v), device=b.device)
                 for k, v in b.replay.sample(seqs, b.cfg.seq_len, self.rng).items()}
        with torch.no_grad(), b.wm.autocast():
            post, _ = b.wm.observe({k: batch[k] for k in b.obs_keys}, batch["prev_action"], batch["is_first"])
            feat = b.wm.features(post).float()
        return {"feat": feat.reshape(-1, feat.shape[-1])[:n]}

    def _importance(self, task: TaskContext) -> dict[str, torch.Tensor]:
        params = self.anchors.params
        if self.kind == "l2":
            return {n: torch.ones_like(p) for n, p in params.items()}
        b = self.base
        states = self._states(self.cfg.importance_samples)
        if not states:
            return {n: torch.zeros_like(p) for n, p in params.items()}
        if isinstance(self.policy, DrQPolicy):
            self.policy.std = float(b._std())   # the exploration std the task ended with
        dims = torch.as_tensor(np.flatnonzero(task.action_mask > 0), device=b.device)
        with b.selected(b.head):
            return per_state_importance(self.kind, self.policy, list(params), states, dims)

    # ------------------------------------------------------------------ the Method interface
    def update(self, env_frames: int) -> dict[str, float]:
        out = self.base.update(env_frames)
        if out:
            out["cl/penalty"] = self.penalty()
        return out

    def on_task_end(self, task: TaskContext) -> dict[str, float]:
        out = dict(self.base.on_task_end(task))
        with own_random_numbers(self.base.device):
            importance = self._importance(task)
        self.anchors.consolidate(importance, self.cfg.importance_decay)
        flat = torch.cat([t.flatten() for t in self.anchors.importance.values()]) if importance else torch.zeros(1)
        return out | {"cl/importance_mean": float(flat.mean()), "cl/importance_max": float(flat.max()),
                      "cl/anchored_tasks": float(self.anchors.tasks)}

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "anchors": self.anchors.state_dict(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.anchors.load_state_dict(state["anchors"])
        self.rng.bit_generator.state = state["rng"]


def _builder(kind: str) -> Any:
    def build(cfg: RegularizerConfig, ctx: MethodContext) -> Regularized:
        return Regularized(cfg, ctx, kind)
    return build


SPEC_L2 = MethodSpec(L2Config, _builder("l2"), presets=PRESETS)
SPEC_EWC = MethodSpec(EWCConfig, _builder("ewc"), presets=PRESETS)
SPEC_MAS = MethodSpec(MASConfig, _builder("mas"), presets=PRESETS)
# CW's fine-tuning baseline: the same learner and heads, nothing against forgetting (L2's code at strength 0,
# so it is the l2/ewc/mas runs' exact control).
SPEC_FINETUNE = MethodSpec(FineTuneConfig, _builder("l2"), presets=PRESETS)
