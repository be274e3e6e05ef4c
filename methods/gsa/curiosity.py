"""A model-free curiosity explorer for collecting reward-free DMC data: URLB's ICM agent on DrQ-v2's learner.

The paper's DMC data came from "unsupervised RL agents [28, 62], trained via curiosity without task-related
information" (Sec. 4, "Dataset"); [28] is URLB (Laskin et al. 2021), whose agents are all DDPG plus an
intrinsic reward (anchors.md section 7). This is URLB's ICM agent (Pathak et al. 2017, as URLB's
``agent/icm.py`` runs it on states):

- a forward model f(s, a) -> s' and an inverse model g(s, s') -> a, each one hidden layer, trained on the
  sum of their L2 errors on the agent's replay batches;
- the intrinsic reward of a transition is ``log(1 + icm_scale * ||s' - f(s, a)||)``; as in URLB it replaces
  the (n-step) task reward of the sampled transitions, with s' the state n steps later;
- the learner is :class:`methods.drqv2.DrQV2` on the state vector (URLB's DDPG: n-step 3, target EMA 0.01,
  one update every 2 agent steps, 4000 seed frames of uniform actions, a fixed exploration std of 0.2).

It acts on the (padded) state vector whatever the dataset stores, and keeps learning over every episode it
collects, so the data moves from uniform random towards states it has not seen: mixed quality by
construction. Each episode's provenance (algorithm, training frame, gradient updates, mean intrinsic
reward) goes into the dataset's episode metadata.

CPU deviation: URLB's DDPG uses hidden 1024 and batch 1024 on states; the ``tiny`` preset uses 256 and 256
(DrQ-v2's ``tiny`` sizes here), about 30x fewer FLOPs per update.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.replay import EpisodeReplay
from methods.backbone.nets import Optimizer
from methods.base import MAX_WIDTH, MethodContext, TaskContext, ranged
from methods.drqv2 import PRESETS as DRQ_PRESETS
from methods.drqv2 import DrQV2, DrQV2Config
from methods.gsa.explorer import reward_free_steps

# URLB agent/ddpg.yaml on states: lr 1e-4, tau 0.01, update every 2, n-step 3, feature 50, std 0.2 fixed
# (std_clip 0.3), 4000 seed frames; hidden 1024 and batch 1024 (the tiny preset: 256 and 256, see above).
URLB_DDPG = DrQV2Config(batch_size=1024, hidden_dim=1024, std_init=0.2, std_final=0.2, std_duration_frames=1)


@dataclass(frozen=True)
class ICMConfig:
    agent: DrQV2Config = field(default_factory=lambda: URLB_DDPG)
    icm_scale: float = ranged(1.0, gt=0)  # URLB icm.yaml: icm_scale 1.0
    icm_hidden: int = ranged(1024, ge=1, le=MAX_WIDTH)  # URLB: the agent's hidden_dim
    icm_lr: float = ranged(1e-4, gt=0)  # URLB: the agent's lr


TINY = ICMConfig(agent=replace(URLB_DDPG, batch_size=256, hidden_dim=256), icm_hidden=256)
DEBUG = ICMConfig(agent=replace(URLB_DDPG, **{k: v for k, v in DRQ_PRESETS["debug"].items()
                                             if k not in ("std_duration_frames",)}), icm_hidden=16)


class ICM(nn.Module):
    """Forward and inverse models on the state vector (URLB ``agent/icm.py``)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int):
        super().__init__()
        self.forward_net = nn.Sequential(nn.Linear(obs_dim + action_dim, hidden), nn.ReLU(), nn.Linear(hidden, obs_dim))
        self.backward_net = nn.Sequential(nn.Linear(2 * obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, action_dim),
                                          nn.Tanh())

    def forward(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        assert obs.shape == next_obs.shape and obs.shape[0] == action.shape[0], \
            f"ICM inputs disagree: obs {tuple(obs.shape)}, action {tuple(action.shape)}, next {tuple(next_obs.shape)}"
        next_hat = self.forward_net(torch.cat([obs, action], -1))
        action_hat = self.backward_net(torch.cat([obs, next_obs], -1))
        return (next_obs - next_hat).norm(dim=-1), (action - action_hat).norm(dim=-1)


class ICMExplorer:
    """A collection policy (``reset()``, ``act(obs) -> native action``, ``observe(...)`` after each step) that
    learns from the intrinsic reward alone."""

    name = "icm"

    STATE_FILE = "explorer.pt"

    def __init__(self, cfg: ICMConfig, proprio_dim: int, action_dim: int, native_dim: int,
                 rng: np.random.Generator, action_repeat: int = 1, device: str = "cpu",
                 workdir: Path | None = None):
        """``workdir``: where the explorer keeps its replay (one file per episode) and, on :meth:`save`, its
        state, so that :meth:`load` continues its training in a later process; None: all in memory."""
        self.cfg, self.native_dim, self.action_dim = cfg, native_dim, action_dim
        self.dims = (proprio_dim, action_dim, native_dim, action_repeat)
        seed = int(rng.integers(2**31))
        torch.manual_seed(seed)
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="icm-explorer-")   # DrQ-v2's workdir (nothing written)
            workdir = Path(self._tmp.name)
        self.workdir = Path(workdir)
        ctx = MethodContext(("explore",), {"proprio": ((proprio_dim,), "float32")}, action_dim, seed, device,
                            self.workdir)
        self.agent = DrQV2(cfg.agent, ctx)
        self.agent.replay = EpisodeReplay(None if hasattr(self, "_tmp") else self.workdir / "replay")
        mask = np.zeros(action_dim, np.float32)
        mask[:native_dim] = 1.0
        # seed frames and the std schedule count env frames: agent steps x the collection's action repeat
        self.task = TaskContext(0, "explore", "any", "any", 0, mask, action_repeat)
        self.agent.on_task_start(self.task)
        self.icm = ICM(proprio_dim, action_dim, cfg.icm_hidden).to(self.agent.device)
        self.icm_opt = Optimizer(self.icm.parameters(), cfg.icm_lr, 1e-8, 0.0, float("inf"), name="icm/loss")  # Adam
        self.steps = 0
        self.updates = 0
        self.episodes = 0                # episodes collected to their end (the collection counts them)
        self.env_seed: int | None = None  # the seed of the env its first collection made: a later one continues it
        self.metrics: dict[str, float] = {}
        self._episode_rewards: list[float] = []
        self._episode_start = (0, 0)
        self._state: Any = None
        self._first = True
        self._last_obs: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ acting
    def reset(self) -> None:
        self._state, self._first = None, True
        self._episode_rewards = []
        self._episode_start = (self.steps, self.updates)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self._last_obs = obs
        batch = {"proprio": obs["proprio"][None], "is_first": np.array([self._first])}
        action, self._state = self.agent.act(batch, self._state, self.task, explore=True)
        return action[0, : self.native_dim].astype(np.float32)

    def observe(self, action: np.ndarray, next_obs: dict[str, np.ndarray], last: bool, terminal: bool) -> None:
        """After ``env.step(action)`` (padded action) returned ``next_obs``; no task reward is ever stored."""
        assert self._last_obs is not None, "observe() before act()"
        for step in reward_free_steps(self._last_obs, action, next_obs, self._first, last, terminal):
            self.agent.observe(step)
        self._first = False
        self.steps += 1
        self._maybe_update()

    # ------------------------------------------------------------------ learning
    def intrinsic_reward(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """URLB ICM: log(1 + icm_scale * ||s' - f(s, a)||), (B,)."""
        with torch.no_grad():
            forward_error, _ = self.icm(obs, action, next_obs)
        return torch.log1p(self.cfg.icm_scale * forward_error)

    def _maybe_update(self) -> None:
        a, c = self.agent, self.cfg.agent
        if a.task_agent_steps * a.action_repeat < c.seed_frames or a.task_agent_steps % c.update_every_steps:
            return
        if len(a.replay) < (1 + c.nstep) * 4:
            return
        batch = a._sample()
        forward_error, backward_error = self.icm(batch["proprio"], batch["action"], batch["next_proprio"])
        icm_loss = forward_error.mean() + backward_error.mean()
        self.icm_opt.step(icm_loss)
        reward = self.intrinsic_reward(batch["proprio"], batch["action"], batch["next_proprio"])
        out = a.update_on(batch | {"reward": reward})
        self.updates += 1
        self._episode_rewards.append(float(reward.mean()))
        self.metrics = {"icm_loss": float(icm_loss.detach()), "intrinsic_reward": float(reward.mean()),
                        "critic_q": out["critic/q"]}

    # ------------------------------------------------------------------ continuing in a later process
    def snapshot(self) -> dict[str, Any]:
        """The explorer's whole learning state now (weights, optimizers, the replay by episode count, counters,
        random generators), copied: taken at an episode's end, it is what :meth:`save` writes when the collection
        is stopped later, so that a continued collection goes on from that episode's end, as one never stopped."""
        import copy

        from harness import checkpoint
        return copy.deepcopy({
            "kind": "icm-explorer", "config": checkpoint.to_plain(asdict(self.cfg)), "dims": list(self.dims),
            "agent": self.agent.state_dict(), "icm": self.icm.state_dict(), "icm_opt": self.icm_opt.state_dict(),
            "steps": self.steps, "updates": self.updates, "episodes": self.episodes, "env_seed": self.env_seed,
            "torch_rng": torch.get_rng_state()})

    def save(self, snapshot: dict[str, Any] | None = None) -> None:
        """Write ``snapshot`` (default: the state now) to ``workdir/explorer.pt``, atomically."""
        from harness import checkpoint
        checkpoint.save(self.workdir / self.STATE_FILE, snapshot if snapshot is not None else self.snapshot())

    def load(self) -> bool:
        """Continue from ``workdir/explorer.pt`` if it is there (False if not). A state made with another
        configuration or other dimensions is a clear error, never silently mixed."""
        from harness import checkpoint
        from harness.errors import HarnessError
        path = self.workdir / self.STATE_FILE
        if not path.is_file():
            return False
        state = checkpoint.load(path)
        mine = checkpoint.to_plain(asdict(self.cfg))
        if state.get("kind") != "icm-explorer" or state.get("config") != mine or list(state.get("dims", [])) != list(self.dims):
            raise HarnessError(f"{path} holds another explorer (config or dimensions differ from this collection's); "
                               "remove it to start a new explorer, or collect with the settings that made it")
        self.agent.load_state_dict(state["agent"])
        self.icm.load_state_dict(state["icm"])
        self.icm_opt.load_state_dict(state["icm_opt"])
        self.steps, self.updates = int(state["steps"]), int(state["updates"])
        self.episodes = int(state.get("episodes", 0))        # absent in states saved before 2026-12-03
        self.env_seed = None if state.get("env_seed") is None else int(state["env_seed"])
        torch.set_rng_state(state["torch_rng"])
        return True

    def provenance(self) -> dict[str, Any]:
        """What made the episode just collected (its metadata in the dataset): the learner's training progress
        when it began and ended, and the mean intrinsic reward of the updates made meanwhile."""
        (steps0, updates0), a = self._episode_start, self.agent
        seeding = steps0 * a.action_repeat < self.cfg.agent.seed_frames
        return {"algorithm": "ddpg+icm (URLB)", "intrinsic_reward": "icm", "icm_scale": self.cfg.icm_scale,
                "train_agent_steps": [steps0, self.steps], "grad_updates": [updates0, self.updates],
                "mean_intrinsic_reward": float(np.mean(self._episode_rewards)) if self._episode_rewards else None,
                "acting": "uniform (seed frames)" if seeding else f"actor + N(0, {a._std():.2f}) noise"}
