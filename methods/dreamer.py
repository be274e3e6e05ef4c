"""Dreamer (v3-style) from scratch, without pre-training: the paper's learning-from-scratch baseline.

It composes the shared backbone (``methods.backbone``): a world model trained on online replay and an
actor-critic trained in its imagination. Defaults are the paper's fine-tuning settings (Table 5 and
ncrl's config, anchors.md section 1); presets shrink the networks for CPUs and tests.

Per task: a fresh replay (the agent's memory of earlier tasks lives only in its weights: a naive
continual learner), a warm-up of uniform random actions, then ``train_ratio / (batch * seq_len)``
gradient updates per agent step (a fractional credit carries over between steps).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.replay import EpisodeReplay, MixedSampler, ReplayUnion, SequenceSource
from methods.backbone.actor_critic import ActorCritic
from methods.backbone.checkpoint import check_compatible, describe, load_module
from methods.backbone.config import (
    DEBUG_AC,
    DEBUG_MODEL,
    SMALL_AC,
    SMALL_MODEL,
    TINY_AC,
    TINY_MODEL,
    ActorCriticConfig,
    WorldModelConfig,
)
from methods.backbone.nets import Optimizer
from methods.backbone.world_model import WorldModel, metrics_to_floats
from methods.base import MAX_BATCH, MAX_COUNT, MAX_LENGTH, MethodContext, MethodSpec, Step, TaskContext, ranged

MAX_ROWS = 2**20   # batch_size * seq_len: steps in one world-model batch (the paper's: 1024)


@dataclass(frozen=True)
class DreamerConfig:
    model: WorldModelConfig = field(default_factory=WorldModelConfig)  # Table 5 / ncrl (see backbone/config.py)
    ac: ActorCriticConfig = field(default_factory=ActorCriticConfig)   # Table 5 "Fine-tuning"
    batch_size: int = ranged(16, ge=1, le=MAX_BATCH)  # ncrl fine-tune: batch 16 (Table 5: batch size 16)
    seq_len: int = ranged(64, ge=1, le=MAX_LENGTH)  # ncrl / Table 5: sequence length 64
    # ncrl: replayed steps per agent step (0.25 updates/agent step at 16x64)
    train_ratio: float = ranged(256.0, gt=0, le=1e6)
    warmup_env_frames: int = ranged(15_000, ge=0, le=MAX_COUNT)  # Table 5 / ncrl: 15k warm-up frames of random actions
    warmup_min_episodes: int = ranged(5, ge=0, le=MAX_COUNT)  # ncrl: at least 5 warm-up episodes
    # imagination starts per update: 0 = every posterior state of the batch (DreamerV3, ncrl); fewer = a random subset
    # (cheaper)
    imag_starts: int = ranged(0, ge=0, le=MAX_COUNT)
    reset_replay_each_task: bool = True  # True: each task starts with an empty replay. False (continual):
                                         # earlier tasks' replays are kept (see past_fraction)
    # continual: share of every world-model batch drawn from earlier tasks' replays. Their rows train the world model
    # and start imagination but never the reward head: their rewards belong to other tasks. Ours: the paper keeps all
    # previous experience (Sec. 4.2) without saying how it is mixed; 0.25 is Table 5's offline mix ratio
    past_fraction: float = ranged(0.25, ge=0, lt=1)
    compile: bool = False               # torch.compile the RSSM prior and posterior steps (bench_backbone_speed.py --options)

    def __post_init__(self) -> None:  # checked on construction too: the mix must leave current-task rows
        if not 0.0 <= self.past_fraction < 1.0:
            raise HarnessError(f"past_fraction={self.past_fraction} is out of range; valid: [0, 1)")

    def validate(self) -> None:
        if self.batch_size * self.seq_len > MAX_ROWS:
            raise HarnessError(f"batch_size * seq_len = {self.batch_size * self.seq_len} is more than {MAX_ROWS} "
                               "steps per batch fit in memory")

    @property
    def updates_per_agent_step(self) -> float:
        return self.train_ratio / (self.batch_size * self.seq_len)


PRESETS: dict[str, dict[str, Any]] = {
    # debug: tests only. Tiny nets, 4x8 batches, a 200-frame warm-up of 1 episode, 1 update per 4 steps.
    "debug": dict(model=DEBUG_MODEL, ac=DEBUG_AC, batch_size=4, seq_len=8, train_ratio=8.0,
                  warmup_env_frames=200, warmup_min_episodes=1),
    # tiny: this 2-core CPU. Nets of backbone TINY_*; 16 x 32 batches (half the paper's length); train ratio
    # 256 as in ncrl (0.5 updates per agent step at this batch); imagination from 128 of the 512 posterior
    # states (the actor-critic is ~75% of an update's cost); warm-up 5k frames (5 DMC episodes), not 15k.
    "tiny": dict(model=TINY_MODEL, ac=TINY_AC, batch_size=16, seq_len=32, train_ratio=256.0, imag_starts=128,
                 warmup_env_frames=5_000, warmup_min_episodes=5),
    # small: DreamerV3 "S" nets, the paper's batch, ratio and warm-up.
    "small": dict(model=SMALL_MODEL, ac=SMALL_AC),
    "paper": {},
}


def _as_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.to(device, non_blocking=True)
    return out


class Dreamer:
    def __init__(self, cfg: DreamerConfig, ctx: MethodContext):
        self.cfg, self.ctx = cfg, ctx
        self.device = torch.device(ctx.device)
        self.wm = WorldModel(cfg.model, ctx.obs_spec, ctx.action_dim).to(self.device)
        self.ac = ActorCritic(cfg.ac, cfg.model.feat_dim, ctx.action_dim).to(self.device)
        m = cfg.model
        self.wm_opt = Optimizer(self.wm.parameters(), m.lr, m.eps, m.weight_decay, m.grad_clip, name="wm/loss")
        if cfg.compile:
            self.wm.rssm.compile_steps()
        self.rng = np.random.default_rng(ctx.seed)
        self.obs_keys = tuple(self.wm.obs_shapes)
        self.replay: EpisodeReplay | None = None      # the current task's online experience
        self.past: list[EpisodeReplay] = []           # earlier tasks' (reset_replay_each_task=False)
        self.task_index = -1
        self.mask = torch.ones(ctx.action_dim, device=self.device)
        self.mask_np = np.ones(ctx.action_dim, np.float32)
        self.action_repeat = 1
        self.agent_steps = 0          # all tasks
        self.grad_updates = 0         # all tasks
        self.task_agent_steps = 0
        self.task_episodes = 0
        self._counted_steps = 0       # task agent steps already turned into update credit
        self._credit = 0.0            # fractional updates owed
        # Experience rehearsal (GSA): another sequence source mixed into every world-model batch at
        # ``rehearsal_fraction`` of the rows; its rows never train the reward head (they carry no reward).
        self.rehearsal: SequenceSource | None = None
        self.rehearsal_fraction = 0.0

    # ------------------------------------------------------------------ tasks
    def _replay_dir(self, index: int):
        return self.ctx.workdir / "replay" / f"task{index:03d}"

    def on_task_start(self, task: TaskContext) -> None:
        self.mask_np = np.asarray(task.action_mask, np.float32)
        self.mask = torch.as_tensor(self.mask_np, device=self.device)
        self.action_repeat = int(task.action_repeat)
        if task.index == self.task_index and self.replay is not None:
            return  # this task's state was reloaded from a checkpoint: keep its replay and counters
        self.task_index = task.index
        self.task_agent_steps = self.task_episodes = self._counted_steps = 0
        self._credit = 0.0
        if self.replay is not None and not self.cfg.reset_replay_each_task:
            self.past.append(self.replay)
        directory = self._replay_dir(task.index)
        if directory.exists():
            shutil.rmtree(directory)  # left over from a run that crashed after its last checkpoint
        self.replay = EpisodeReplay(directory)

    def on_task_end(self, task: TaskContext) -> dict[str, float]:
        return {"grad_updates": float(self.grad_updates), "agent_steps": float(self.agent_steps),
                "replay_steps": float(len(self.replay) if self.replay else 0),
                "past_replay_steps": float(sum(len(r) for r in self.past))}

    @property
    def warming_up(self) -> bool:
        return (self.task_agent_steps * self.action_repeat < self.cfg.warmup_env_frames
                or self.task_episodes < self.cfg.warmup_min_episodes)

    # ------------------------------------------------------------------ acting
    def act(self, obs: dict[str, np.ndarray], state: Any, task: TaskContext,
            explore: bool) -> tuple[np.ndarray, Any]:
        is_first = np.asarray(obs["is_first"], bool)
        b = is_first.shape[0]
        mask_np = np.asarray(task.action_mask, np.float32)
        if explore and self.warming_up:
            return (self.rng.uniform(-1, 1, (b, self.ctx.action_dim)) * mask_np).astype(np.float32), None
        with torch.inference_mode():
            if state is None:
                state = {"latent": self.wm.initial(b), "action": torch.zeros(b, self.ctx.action_dim, device=self.device)}
                is_first = np.ones(b, bool)
            o = {k: torch.as_tensor(obs[k], device=self.device) for k in self.obs_keys}
            first = torch.as_tensor(is_first, device=self.device)
            mask = torch.as_tensor(mask_np, device=self.device)
            with self.wm.autocast():
                latent = self.wm.obs_step(state["latent"], state["action"], o, first, sample=True)
                action = self.ac.act(self.wm.features(latent), mask, explore).float()
        return action.cpu().numpy(), {"latent": latent, "action": action}

    def observe(self, step: Step) -> None:
        assert self.replay is not None, "observe() before on_task_start()"
        self.replay.add(step)
        if step.is_last:
            self.task_episodes += 1
        else:
            self.task_agent_steps += 1
            self.agent_steps += 1

    # ------------------------------------------------------------------ learning
    def update(self, env_frames: int) -> dict[str, float]:
        new = self.task_agent_steps - self._counted_steps
        self._counted_steps = self.task_agent_steps
        if self.warming_up or self.replay is None or len(self.replay) < self.cfg.seq_len:
            return {}
        self._credit += new * self.cfg.updates_per_agent_step
        n = int(self._credit)
        self._credit -= n
        if n == 0:
            return {}
        totals: dict[str, float] = {}
        for _ in range(n):
            for k, v in self.train_step().items():
                totals[k] = totals.get(k, 0.0) + v
        out = {k: v / n for k, v in totals.items()}
        out["train/grad_updates"] = float(self.grad_updates)
        return out

    def sources(self) -> list[tuple[str, Any, float]]:
        """What world-model batches are drawn from, as ``(name, source, fraction)`` in ``source``-label order:
        the current task's replay ("online", label 0: the only rows the reward head learns from), earlier
        tasks' replays ("past", ``past_fraction``, continual streams) and GSA's rehearsal data ("rehearsal",
        ``rehearsal_fraction``)."""
        assert self.replay is not None
        past = [r for r in self.past if len(r) >= self.cfg.seq_len]
        p = self.cfg.past_fraction if past else 0.0
        f = self.rehearsal_fraction if self.rehearsal is not None else 0.0
        out: list[tuple[str, Any, float]] = [("online", self.replay, 1.0 - p - f)]
        if p > 0:
            out.append(("past", ReplayUnion(past), p))
        if f > 0:
            out.append(("rehearsal", self.rehearsal, f))
        return out

    def sample_batch(self, sources: list[tuple[str, Any, float]] | None = None) -> dict[str, np.ndarray]:
        """A (batch, seq_len) batch: of the current task's replay alone, or of ``sources`` (default:
        ``sources()``) mixed, with a ``source`` column (0: the current task's rows)."""
        assert self.replay is not None
        c = self.cfg
        sources = self.sources() if sources is None else sources
        if len(sources) == 1:
            return self.replay.sample(c.batch_size, c.seq_len, self.rng)
        return MixedSampler([(src, frac) for _, src, frac in sources]).sample(c.batch_size, c.seq_len, self.rng)

    def train_step(self) -> dict[str, float]:
        """One world-model update and one actor-critic update on a replay (or mixed) batch. The actor-critic
        imagines from the posterior states of every row, rehearsal rows included (GSA Section 3.3)."""
        c = self.cfg
        sources = self.sources()
        raw = self.sample_batch(sources)
        source = raw.pop("source", None)
        batch = _as_tensors(raw, self.device)
        reward_mask = None if source is None else torch.as_tensor(source == 0, device=self.device)
        wm_loss, metrics, post = self.wm.loss(batch, reward_mask=reward_mask)
        if source is not None:
            for i, (name, _, _) in enumerate(sources[1:], start=1):   # wm/past_rows, wm/rehearsal_rows
                metrics[f"wm/{name}_rows"] = torch.tensor(float((source == i).sum()))
        metrics["wm/grad_norm"] = torch.tensor(self.wm_opt.step(wm_loss, metrics)["grad_norm"])  # raises if non-finite
        n = c.batch_size * c.seq_len
        start = {k: v.detach().reshape(n, *v.shape[2:]) for k, v in post.items()}
        start_cont = 1.0 - batch["is_terminal"].reshape(n).float()
        if 0 < c.imag_starts < n:
            keep = torch.randperm(n, device=self.device)[: c.imag_starts]
            start, start_cont = {k: v[keep] for k, v in start.items()}, start_cont[keep]
        metrics |= self.ac.train_step(self.wm, start, start_cont, self.mask)
        self.grad_updates += 1
        return metrics_to_floats(metrics)

    # ------------------------------------------------------------------ state
    def _meta(self) -> dict[str, Any]:
        sizes = {f"model.{k}": v for k, v in self.cfg.model.sizes().items()}
        sizes |= {f"ac.{k}": v for k, v in self.cfg.ac.sizes().items()}
        return describe(sizes, {k: v[0] for k, v in self.ctx.obs_spec.items()}, self.ctx.action_dim)

    def state_dict(self) -> dict[str, Any]:
        return {"meta": self._meta(), "world_model": self.wm.state_dict(), "actor_critic": self.ac.state_dict(),
                "wm_opt": self.wm_opt.state_dict(), "ac_opt": self.ac.optim_state_dict(),
                "replay": self.replay.state_dict() if self.replay is not None else None,
                "replay_dir": self._rel(self.replay),
                "past_replays": [{"dir": self._rel(r), "state": r.state_dict()} for r in self.past],
                "task_index": self.task_index, "action_mask": [float(x) for x in self.mask_np],
                "action_repeat": self.action_repeat, "agent_steps": self.agent_steps, "grad_updates": self.grad_updates,
                "task_agent_steps": self.task_agent_steps, "task_episodes": self.task_episodes,
                "counted_steps": self._counted_steps, "credit": self._credit,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_compatible(state.get("meta", {}), self._meta(), "dreamer checkpoint")
        load_module(self.wm, state["world_model"], "dreamer checkpoint (world model)")
        load_module(self.ac, state["actor_critic"], "dreamer checkpoint (actor-critic)")
        self.wm_opt.load_state_dict(state["wm_opt"])
        self.ac.load_optim_state_dict(state["ac_opt"])
        self.task_index = int(state["task_index"])
        # the runner does not call on_task_start again when it resumes mid-task: restore what it set
        self.mask_np = np.asarray(state["action_mask"], np.float32)
        self.mask = torch.as_tensor(self.mask_np, device=self.device)
        self.action_repeat = int(state["action_repeat"])
        self.agent_steps, self.grad_updates = int(state["agent_steps"]), int(state["grad_updates"])
        self.task_agent_steps, self.task_episodes = int(state["task_agent_steps"]), int(state["task_episodes"])
        self._counted_steps, self._credit = int(state["counted_steps"]), float(state["credit"])
        self.rng.bit_generator.state = state["rng"]
        self.replay = None
        if state["replay"] is not None and state.get("replay_dir"):
            self.replay = EpisodeReplay(self.ctx.workdir / state["replay_dir"])
            self.replay.load_state_dict(state["replay"])  # the unfinished episode was not saved
        self.past = []
        for r in state.get("past_replays", []):
            self.past.append(EpisodeReplay(self.ctx.workdir / r["dir"]))
            self.past[-1].load_state_dict(r["state"])

    def _rel(self, replay: EpisodeReplay | None) -> str | None:
        if replay is None or replay.directory is None:
            return None
        return str(replay.directory.relative_to(self.ctx.workdir))


SPEC = MethodSpec(DreamerConfig, Dreamer, presets=PRESETS, default_preset="paper")
