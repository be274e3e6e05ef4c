"""DrQ-v2 on real envs with the debug preset: acting, n-step sampling, updates, checkpoints."""
import numpy as np
import torch
from episodes import run_episode

from harness import checkpoint
from harness.config import RunConfig
from harness.runner import run_stream
from harness.streams import EvalSpec, StreamSpec, TaskSpec
from methods.base import MethodContext, TaskContext
from methods.drqv2 import DrQV2, DrQV2Config, random_shift, sample_action
from tasks.base import EnvConfig, make_env


def test_random_shift_moves_by_at_most_pad_and_keeps_shape():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    # every output pixel is an input pixel of the same image (replicate padding, integer shift)
    for i in range(2):
        assert set(y[i].flatten().tolist()) <= set(x[i].flatten().tolist())


def test_sampled_actions_stay_in_bounds_and_pass_gradients_through_the_clamp():
    # DrQ-v2's TruncatedNormal clamps straight-through: a sample past +-1 still gives mu the critic's gradient.
    torch.manual_seed(0)
    mu = torch.tensor([0.99, -0.99, 0.0], requires_grad=True)
    mask = torch.tensor([1.0, 1.0, 0.0])
    a = sample_action(mu.expand(256, 3), 1.0, 0.3, mask)
    assert a.shape == (256, 3), f"sampled actions {tuple(a.shape)} != (256, 3)"
    assert float(a.abs().max()) < 1.0 and bool((a[:, 2] == 0).all()), "actions leave [-1, 1] or the mask"
    assert bool((a[:, 0].detach() > 0.99).any()), "no sample reached the bound: the clamp is not exercised"
    a.sum().backward()
    assert mu.grad.tolist() == [256.0, 256.0, 0.0], f"clamped samples blocked the gradient: {mu.grad.tolist()}"


def _ctx(tmp_path, obs_type):
    cfg = EnvConfig(obs_type=obs_type, render_quality="fast", action_pad_dim=6)
    env = make_env("cheetah-run", cfg, seed=0)
    spec = {k: (shape, np.dtype(dt).name) for k, (shape, dt) in env.obs_spec.items()}
    ctx = MethodContext(("cheetah-run",), spec, 6, 0, "cpu", tmp_path)
    task = TaskContext(0, "cheetah-run", "cheetah", "dmc", 1000, env.action_mask, 2)
    return env, ctx, task


_fill = run_episode


def test_nstep_batches_have_stacked_frames_and_discounts(tmp_path):
    env, ctx, task = _ctx(tmp_path, "both")
    m = DrQV2(DrQV2Config(batch_size=16, seed_frames=10**9, encoder_depth=4, hidden_dim=32), ctx)
    m.on_task_start(task)
    _fill(m, env, task, 60)
    b = m._sample()
    assert b["pixels"].shape == (16, 9, 64, 64) and b["next_pixels"].shape == (16, 9, 64, 64)
    assert b["proprio"].shape == b["next_proprio"].shape == (16, 17)
    assert torch.allclose(b["discount"], torch.full((16,), 0.99 ** 3))  # DMC never terminates
    assert (b["reward"] >= 0).all() and (b["reward"] <= 2 * (1 + 0.99 + 0.99 ** 2)).all()
    env.close()


def test_update_changes_weights_and_losses_are_finite(tmp_path):
    env, ctx, task = _ctx(tmp_path, "pixels")
    m = DrQV2(DrQV2Config(batch_size=8, seed_frames=20, encoder_depth=4, hidden_dim=32, feature_dim=8), ctx)
    m.on_task_start(task)
    before = [p.clone() for p in m.actor.parameters()]
    _fill(m, env, task, 40)
    out = m._update()
    assert np.isfinite(out["critic/loss"]) and np.isfinite(out["actor/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, m.actor.parameters()))
    env.close()


def test_a_state_saved_on_another_kind_of_device_loads(tmp_path):
    """A run killed on a GPU node continues on a CPU one: the augmentation generator's state is device-specific
    (CUDA's is 16 bytes, the CPU's 5056), so it is seeded again from the restored numpy stream, the same way each
    time; everything else is restored as saved."""
    env, ctx, task = _ctx(tmp_path, "pixels")
    cfg = DrQV2Config(batch_size=8, seed_frames=20, encoder_depth=4, hidden_dim=32, feature_dim=8)
    m = DrQV2(cfg, ctx)
    m.on_task_start(task)
    _fill(m, env, task, 40)
    m._update()
    state = m.state_dict()
    state["torch_gen"] = torch.zeros(16, dtype=torch.uint8)   # the shape of a CUDA generator's state
    gens = []
    for _ in range(2):
        other = DrQV2(cfg, ctx)
        other.on_task_start(task)
        other.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(m.actor.parameters(), other.actor.parameters()))
        assert other.grad_updates == m.grad_updates and other.task_agent_steps == m.task_agent_steps
        gens.append(other.torch_gen.get_state())
    assert torch.equal(gens[0], gens[1])
    env.close()


def test_drqv2_runs_a_two_task_stream_and_resumes_state(mlflow_uri, tmp_path):
    stream = StreamSpec("drq", (TaskSpec("cartpole-balance", 400), TaskSpec("reach-v3", 400)), EvalSpec(400, 1))
    cfg = RunConfig(stream=stream, method="drqv2", preset="debug", seed=0, video_frames=0,
                    env=EnvConfig(obs_type="pixels", render_quality="fast"), runs_dir=str(tmp_path / "runs"))
    res = run_stream(cfg, echo=lambda *_: None)
    assert res.R.shape == (2, 2)
    payload = checkpoint.load(res.run_dir / "checkpoint.pt")  # weights_only load of the whole method state
    assert payload["method"]["grad_updates"] > 0 and payload["method"]["replay"]["episodes"] >= 1
