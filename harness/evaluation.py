"""Evaluate a method on one task: N episodes run in lockstep so the method acts on a batch."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from methods.base import Method, TaskContext
from tasks.base import EnvConfig, TaskInfo, make_env, normalized_score


@dataclass
class EvalResult:
    returns: list[float]
    successes: list[float]
    score: float                       # mean normalised score, 0..100 (DMC return/10, MW success x 100)
    frames: list[np.ndarray] = field(default_factory=list)   # video of episode 0, (H, W, 3) uint8
    env_frames: int = 0

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes))


def eval_seed(run_seed: int, position: int, episode: int) -> int:
    """Evaluation episodes start from the same states at every evaluation of a run (comparable curves)."""
    return int(np.random.SeedSequence([run_seed, position, episode, 0xE7A1]).generate_state(1)[0] % (2**31))


def _batch(obs_list: list[dict[str, np.ndarray]], is_first: np.ndarray) -> dict[str, np.ndarray]:
    out = {k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]}
    out["is_first"] = is_first
    return out


def evaluate(method: Method, task: TaskContext, info: TaskInfo, env_config: EnvConfig, episodes: int,
             run_seed: int, video_frames: int = 0) -> EvalResult:
    envs = [make_env(info.name, env_config, eval_seed(run_seed, task.index, e)) for e in range(episodes)]
    try:
        obs = [env.reset() for env in envs]
        returns = np.zeros(episodes)
        successes = np.zeros(episodes)
        active = np.ones(episodes, dtype=bool)
        is_first = np.ones(episodes, dtype=bool)
        frames: list[np.ndarray] = []
        env_frames = 0
        state = None
        while active.any():
            if video_frames and len(frames) < video_frames and active[0]:
                frames.append(obs[0]["pixels"].transpose(1, 2, 0) if "pixels" in obs[0] else envs[0].render())
            actions, state = method.act(_batch(obs, is_first), state, task, explore=False)
            assert actions.shape == (episodes, envs[0].action_dim), (
                f"act() returned actions of shape {actions.shape}, expected ({episodes}, {envs[0].action_dim})")
            is_first[:] = False
            for i in np.flatnonzero(active):
                res = envs[i].step(actions[i])
                obs[i] = res.obs
                returns[i] += res.reward
                successes[i] = max(successes[i], float(res.info.get("success", 0.0)))
                env_frames += res.env_frames
                if res.terminated or res.truncated:
                    active[i] = False
        score = float(np.mean([normalized_score(info, r, s) for r, s in zip(returns, successes)]))
        return EvalResult(returns.tolist(), successes.tolist(), score, frames, env_frames)
    finally:
        for env in envs:
            env.close()
