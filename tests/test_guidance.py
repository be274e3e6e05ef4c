"""Execution guidance schedule and the BC prior (pieces of GSA, issue 5)."""
import numpy as np
import pytest
import torch

from methods.gsa.bc import BCConfig, BCPolicy, PriorActor, bc_step, masked_mse
from methods.gsa.guidance import GuidanceSchedule, schedule_for


def test_schedule_follows_table5():
    s = schedule_for("dmc")
    assert s.prob(0) == 1.0 and s.prob(25_000) == pytest.approx(0.5) and s.prob(50_000) == 0.0 and s.prob(10**6) == 0.0
    assert schedule_for("metaworld").prob(75_000) == pytest.approx(0.5)


@pytest.mark.parametrize("agent_steps", [0, 10_000, 25_000, 40_000, 60_000])
def test_expected_bc_share_of_steps(agent_steps):
    s = GuidanceSchedule()
    rng = np.random.default_rng(0)
    episode_steps, n = 500, 4000
    share = np.mean([np.diff(s.window(agent_steps, episode_steps, rng))[0] / episode_steps for _ in range(n)])
    expected = s.prob(agent_steps) * np.mean(s.window_fractions)  # p(t) x mean window fraction (0.55)
    assert share == pytest.approx(expected, abs=0.02)


def test_windows_are_inside_the_episode_and_warmup_is_whole_episodes():
    s = GuidanceSchedule()
    rng = np.random.default_rng(1)
    for _ in range(500):
        a, b = s.window(0, 100, rng)
        assert 0 <= a <= b <= 100 and (b - a) in {10, 20, 30, 40, 50, 60, 70, 80, 90, 100}
    assert s.window(10**6, 100, rng, warmup=True) == (0, 100)


def test_masked_mse_ignores_padded_dims():
    pred, target = torch.zeros(4, 3), torch.zeros(4, 3)
    target[:, 2] = 100.0  # a padded dim
    assert masked_mse(pred, target, torch.tensor([1.0, 1.0, 0.0])) == 0.0


def test_bc_policy_imitates_a_state_feedback_expert():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = BCConfig(hidden=64)
    spec = {"proprio": ((6,), "float32")}
    pol = BCPolicy(cfg, spec, action_dim=4)
    opt = torch.optim.Adam(pol.parameters(), lr=1e-3)
    W = rng.normal(size=(6, 2)).astype(np.float32)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    losses = []
    for _ in range(300):
        s = rng.normal(size=(64, 6)).astype(np.float32)
        a = np.zeros((64, 4), np.float32)
        a[:, :2] = np.tanh(s @ W)
        out = bc_step(pol, opt, {"proprio": torch.from_numpy(s), "action": torch.from_numpy(a), "action_mask": mask})
        losses.append(out["bc/loss"])
    assert np.mean(losses[-20:]) < 0.1 * np.mean(losses[:20])


def test_bc_pixel_architecture_matches_appendix_g1():
    pol = BCPolicy(BCConfig(), {"pixels": ((3, 64, 64), "uint8")}, action_dim=21)
    assert pol.mlp[0].in_features == 256 * 2 * 2  # G.1: repr_dim = (32 * 8) * 2 * 2
    out = pol({"pixels": torch.zeros(2, 9, 64, 64, dtype=torch.uint8)})
    assert out.shape == (2, 21) and out.abs().max() <= 1


def test_prior_actor_stacks_each_episodes_last_frames_and_restarts_them_at_is_first():
    """π_bc's input is its episode's last 3 frames (the first one repeated at an episode start), batched."""
    torch.manual_seed(0)
    pol = BCPolicy(BCConfig(channels=(8, 8, 8, 8), hidden=16), {"pixels": ((3, 64, 64), "uint8")}, action_dim=4)
    actor = PriorActor(pol)
    frames = [np.full((2, 3, 64, 64), 10 * t, np.uint8) for t in range(4)]
    frames[3][1] = 200                                   # episode 1 restarts at t=3
    firsts = [np.array([True, True]), np.array([False, False]), np.array([False, False]), np.array([False, True])]
    mask = np.array([1, 1, 0, 0], np.float32)
    for px, first in zip(frames, firsts):
        a, _ = actor.act({"pixels": px, "is_first": first}, None, type("T", (), {"action_mask": mask})(), True)
    assert [int(f[0, 0, 0]) for f in actor.stacks[0]] == [10, 20, 30]      # rolling: the last 3 frames
    assert [int(f[0, 0, 0]) for f in actor.stacks[1]] == [200, 200, 200]   # restarted at its is_first
    want = pol({"pixels": torch.as_tensor(np.stack([np.concatenate(s, 0) for s in actor.stacks]))}).detach().numpy()
    assert a.shape == (2, 4) and np.allclose(a, want * mask) and not a[:, 2:].any()
