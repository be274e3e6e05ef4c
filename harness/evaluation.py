"""Evaluate a method on one task: N episodes run in lockstep so the method acts on a batch.

The envs may be stepped in parallel (``GSA_EVAL_WORKERS``, :func:`eval_workers`): episodes are spread over
this process and worker processes (``tasks.parallel``), the method still acts here on the whole batch, and
the scores are the same as stepping them all here (same envs, seeds and actions).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from harness.errors import HarnessError
from methods.base import Method, TaskContext
from tasks.base import EnvConfig, TaskInfo, normalized_score


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


WORKERS_ENV = "GSA_EVAL_WORKERS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a scheduler's allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def eval_workers(episodes: int, obs_type: str, setting: str | None = None) -> int:
    """Worker processes for one evaluation (0: every env stepped in this process, as before).

    ``setting`` (default ``$GSA_EVAL_WORKERS``): an integer N (at most ``episodes - 1`` are used), or ``auto``
    (the default): the cores left over by torch's threads and by the machine's load (``available_cores() -
    max(torch threads, load average)``), and only when observations include pixels (rendering is what costs;
    stepping state-only envs is cheaper than sending them to another process). So a run with ``--threads 1``
    on an otherwise idle two-core machine renders its evaluation episodes on both, and one whose torch threads
    or neighbours already use every core stays as it is (``benchmarks/bench_eval.py``: on a saturated machine
    a worker only adds its messages)."""
    value = (os.environ.get(WORKERS_ENV, "auto") if setting is None else setting).strip().lower() or "auto"
    if value == "auto":
        if obs_type == "proprio":
            return 0
        import math

        import torch
        wanted = available_cores() - max(torch.get_num_threads(), math.ceil(os.getloadavg()[0]))
    else:
        try:
            wanted = int(value)
        except ValueError:
            raise HarnessError(f"{WORKERS_ENV}={value!r}: expected an integer >= 0 or 'auto'") from None
        if wanted < 0:
            raise HarnessError(f"{WORKERS_ENV}={value!r}: expected an integer >= 0 or 'auto'")
    return max(0, min(wanted, episodes - 1))


def evaluate(method: Method, task: TaskContext, info: TaskInfo, env_config: EnvConfig, episodes: int,
             run_seed: int, video_frames: int = 0, workers: int | None = None) -> EvalResult:
    """``episodes`` evaluation episodes of ``info``'s task, seeded by :func:`eval_seed`. ``workers``: env worker
    processes (None: :func:`eval_workers` decides)."""
    from tasks.parallel import ShardedEnvs, worker_pool
    n_workers = eval_workers(episodes, env_config.obs_type) if workers is None else max(0, min(workers, episodes - 1))
    seeds = [eval_seed(run_seed, task.index, e) for e in range(episodes)]
    envs = ShardedEnvs(info.name, env_config, seeds, worker_pool(n_workers) if n_workers else None)
    try:
        obs = envs.reset()
        returns = np.zeros(episodes)
        successes = np.zeros(episodes)
        active = np.ones(episodes, dtype=bool)
        is_first = np.ones(episodes, dtype=bool)
        frames: list[np.ndarray] = []
        env_frames = 0
        state = None
        while active.any():
            if video_frames and len(frames) < video_frames and active[0]:
                frames.append(obs[0]["pixels"].transpose(1, 2, 0) if "pixels" in obs[0] else envs.render(0))
            actions, state = method.act(_batch(obs, is_first), state, task, explore=False)
            assert actions.shape == (episodes, envs.action_dim), (
                f"act() returned actions of shape {actions.shape}, expected ({episodes}, {envs.action_dim})")
            is_first[:] = False
            results = envs.step(actions, np.flatnonzero(active).tolist())
            for i in np.flatnonzero(active):
                res = results[int(i)]
                obs[i] = res.obs
                returns[i] += res.reward
                successes[i] = max(successes[i], float(res.info.get("success", 0.0)))
                env_frames += res.env_frames
                if res.terminated or res.truncated:
                    active[i] = False
        score = float(np.mean([normalized_score(info, r, s) for r, s in zip(returns, successes)]))
        return EvalResult(returns.tolist(), successes.tolist(), score, frames, env_frames)
    finally:
        envs.close()
