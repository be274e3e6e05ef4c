"""PackNet around DrQ-v2 on real envs (debug sizes): earlier tasks' outputs never change."""
import numpy as np
import pytest
import torch
from episodes import run_episode

from harness import checkpoint
from harness.config import RunConfig
from harness.errors import HarnessError
from harness.runner import run_stream
from harness.streams import EvalSpec, StreamSpec, TaskSpec
from methods.base import MethodContext, TaskContext, resolve_config
from methods.packnet import SPEC, PackNet, PackNetConfig
from tasks.base import EnvConfig, make_env

TASKS = ("cartpole-balance", "cartpole-swingup")


def _train(method, env, task, agent_steps):
    method.on_task_start(task)
    run_episode(method, env, task, agent_steps)
    return method.on_task_end(task)


def test_task_outputs_are_bit_identical_after_training_the_next_task(tmp_path):
    cfg = resolve_config(SPEC, "packnet", "debug", {"base_config.seed_frames": "40", "retrain_fraction": "0.5"})
    env_cfg = EnvConfig(obs_type="pixels", render_quality="fast", action_pad_dim=1)
    envs = [make_env(t, env_cfg, seed=i) for i, t in enumerate(TASKS)]
    ctx = MethodContext(TASKS, {"pixels": ((3, 64, 64), "uint8")}, 1, 0, "cpu", tmp_path)
    tasks = [TaskContext(i, t, "cartpole", "dmc", 1000, envs[i].action_mask, 2) for i, t in enumerate(TASKS)]
    m = PackNet(cfg, ctx)
    probe = {"pixels": np.stack([envs[0].reset()["pixels"], envs[1].reset()["pixels"]]), "is_first": np.ones(2, bool)}

    end0 = _train(m, envs[0], tasks[0], 120)
    assert end0["packnet/pruned_fraction"] == pytest.approx(0.5) and end0["packnet/retrain_updates"] > 0
    out0, _ = m.act(probe, None, tasks[0], explore=False)
    owned_by_1 = [(mod, mod.wrappee.weight.detach().clone()) for mod in m.packed]

    end1 = _train(m, envs[1], tasks[1], 120)
    assert end1["packnet/pruned_fraction"] == 0.0
    after0, _ = m.act(probe, None, tasks[0], explore=False)
    assert np.array_equal(out0, after0), "task 0's actions changed after training task 1"
    # ...and task 1 really trained its own weights (the test would be empty otherwise)
    changed = sum(int(((mod.wrappee.weight != w0) & (mod.task_index == 1)).sum()) for mod, w0 in owned_by_1)
    assert changed > 0
    frozen_changed = sum(int(((mod.wrappee.weight != w0) & (mod.task_index == 0)).sum()) for mod, w0 in owned_by_1)
    assert frozen_changed == 0
    for e in envs:
        e.close()


def test_unknown_base_is_a_clear_error(tmp_path):
    ctx = MethodContext(TASKS, {"proprio": ((5,), "float32")}, 1, 0, "cpu", tmp_path)
    with pytest.raises(HarnessError, match="unknown base learner 'sac'; valid: drqv2"):
        PackNet(PackNetConfig(base="sac"), ctx)


def test_packnet_through_the_runner_with_checkpoint(mlflow_uri, tmp_path):
    stream = StreamSpec("pn", tuple(TaskSpec(t, 300) for t in TASKS), EvalSpec(300, 1))
    cfg = RunConfig(stream=stream, method="packnet", preset="debug", seed=0, video_frames=0,
                    overrides=(("base_config.seed_frames", "100"),),
                    env=EnvConfig(obs_type="proprio"), runs_dir=str(tmp_path / "runs"))
    res = run_stream(cfg, echo=lambda *_: None)
    assert res.R.shape == (2, 2)
    state = checkpoint.load(res.run_dir / "checkpoint.pt")["method"]
    owners = state["base"]["actor"]["policy.0.task_index"]
    assert set(torch.unique(owners).tolist()) <= {0, 1, 255}
