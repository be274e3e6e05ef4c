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


def test_a_later_task_starts_unsaturated_and_learns_after_a_saturated_one(tmp_path):
    """DrQ-v2's actor drifts into tanh saturation (bang-bang); a large lr makes task 0 do so within 300 steps.
    With one shared output layer the next task inherited those saturated outputs and never learned (constant
    +-1 actions on every state, no gradient through tanh); each task's own head (Continual World) starts it
    unsaturated, its actions depending on the state."""
    torch.manual_seed(0)
    tasks_ = ("walker-stand", "walker-walk")
    cfg = resolve_config(SPEC, "packnet", "debug", {"base_config.seed_frames": "40", "base_config.lr": "1e-2"})
    envs = [make_env(t, EnvConfig(obs_type="proprio", action_pad_dim=6), seed=i) for i, t in enumerate(tasks_)]
    ctx = MethodContext(tasks_, {"proprio": ((24,), "float32")}, 6, 0, "cpu", tmp_path)
    tasks = [TaskContext(i, t, "walker", "dmc", 1000, envs[i].action_mask, 2) for i, t in enumerate(tasks_)]
    rng = np.random.default_rng(0)
    envs[0].reset()
    probe = {"proprio": np.stack([envs[0].step(rng.uniform(-1, 1, 6).astype(np.float32)).obs["proprio"]
                                  for _ in range(64)]), "is_first": np.zeros(64, bool)}
    m = PackNet(cfg, ctx)

    def actions(k):
        return m.act(probe, None, tasks[k], explore=False)[0]

    _train(m, envs[0], tasks[0], 300)
    assert np.mean(np.abs(actions(0)) > 0.999) > 0.5, "task 0 did not saturate: the test would show nothing"
    assert all(float(mod.wrappee.weight.detach()[mod.task_index == 1].abs().sum()) == 0 for mod in m.packed), \
        "the weights handed to task 1 must start at zero"

    m.on_task_start(tasks[1])
    start = actions(1)
    assert np.mean(np.abs(start) > 0.999) < 0.3, "task 1 starts with saturated actions (one shared layer: 0.65)"
    assert start.std(0).mean() > 0.02, "task 1's actions do not depend on the state"
    run_episode(m, envs[1], tasks[1], 300)
    assert np.abs(actions(1) - start).mean() > 0.05, "task 1's actions did not move during its training"
    for e in envs:
        e.close()


def test_a_checkpoint_with_other_heads_is_a_clear_error(tmp_path):
    ctx = MethodContext(TASKS, {"proprio": ((5,), "float32")}, 1, 0, "cpu", tmp_path)
    state = PackNet(resolve_config(SPEC, "packnet", "debug", {}), ctx).state_dict()
    single = PackNet(resolve_config(SPEC, "packnet", "debug", {"heads": "shared"}), ctx)
    assert single.headmap.count == 1 and not any("linear" in n for n, _ in single._trainable())
    with pytest.raises(HarnessError, match="start the run again"):
        single.load_state_dict(state)
