"""Evaluation with env worker processes (harness/evaluation.py, tasks/parallel.py) gives the scores of
stepping every env in this process: same seeds, same episodes, same order."""
from __future__ import annotations

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.evaluation import available_cores, eval_workers, evaluate
from methods.base import TaskContext
from tasks.base import EnvConfig
from tasks.catalog import TASKS

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`in1d` is deprecated:DeprecationWarning")]


class Linear:
    """A fixed policy of the observation, so any mix-up of episodes, order or seeds changes the returns."""

    def __init__(self, action_dim: int):
        self.w = np.random.default_rng(0).normal(size=(256, action_dim)).astype(np.float32)

    def act(self, obs, state, task, explore):
        n = len(obs["is_first"])
        x = obs["proprio"] if "proprio" in obs else obs["pixels"].reshape(n, -1)[:, :256].astype(np.float32) / 255
        return np.tanh(x @ self.w[:x.shape[1]]).astype(np.float32), state


def context(name: str) -> TaskContext:
    info = TASKS.get(name)
    return TaskContext(1, name, info.embodiment, info.suite, 1000, np.ones(info.action_dim, np.float32), 2)


@pytest.mark.parametrize("task, obs_type, episodes", [("cartpole-balance", "pixels", 3), ("reach-v3", "proprio", 4)])
def test_workers_give_identical_scores(task, obs_type, episodes):
    info = TASKS.get(task)
    cfg = EnvConfig(obs_type=obs_type, render_quality="fast", image_size=16, episode_frames=30)
    results = {w: evaluate(Linear(info.action_dim), context(task), info, cfg, episodes, run_seed=3, video_frames=4,
                           workers=w) for w in (0, 1, 2)}
    base = results[0]
    assert base.env_frames == episodes * 30
    for w, res in results.items():
        assert res.returns == base.returns and res.successes == base.successes and res.score == base.score, w
        assert res.env_frames == base.env_frames
        assert len(res.frames) == 4 and all(np.array_equal(a, b) for a, b in zip(res.frames, base.frames))
    assert len(set(base.returns)) == episodes   # the episodes differ (their seeds do)


def test_the_worker_count(monkeypatch):
    import torch
    monkeypatch.delenv("GSA_EVAL_WORKERS", raising=False)
    assert eval_workers(5, "proprio") == 0                       # auto: state-only envs stay here
    monkeypatch.setattr("harness.evaluation.os.getloadavg", lambda: (0.5, 0.5, 0.5))   # an idle machine
    assert eval_workers(5, "pixels") == max(0, min(available_cores() - torch.get_num_threads(), 4))
    monkeypatch.setattr("harness.evaluation.os.getloadavg", lambda: (float(available_cores()), 0.0, 0.0))
    assert eval_workers(5, "pixels") == 0                        # a busy one: no core to spare
    monkeypatch.setenv("GSA_EVAL_WORKERS", "3")
    assert eval_workers(5, "proprio") == 3 and eval_workers(2, "pixels") == 1   # never more than episodes - 1
    monkeypatch.setenv("GSA_EVAL_WORKERS", "0")
    assert eval_workers(5, "pixels") == 0
    for bad in ("-1", "many"):
        monkeypatch.setenv("GSA_EVAL_WORKERS", bad)
        with pytest.raises(HarnessError, match="GSA_EVAL_WORKERS"):
            eval_workers(5, "pixels")


def test_bad_input_in_a_worker_is_a_clear_error_and_the_pool_keeps_working():
    from tasks.parallel import ShardedEnvs, worker_pool
    pool = worker_pool(1)
    with pytest.raises(HarnessError, match="no camera"):
        ShardedEnvs("walker-walk", EnvConfig(obs_type="proprio", camera=99), [1, 2], pool)
    info = TASKS.get("walker-walk")
    res = evaluate(Linear(info.action_dim), context("walker-walk"), info,
                   EnvConfig(obs_type="proprio", episode_frames=10), 2, run_seed=0, workers=1)
    assert res.env_frames == 20
