"""URLB rewards (anchors.md section 2) on constructed physics states."""
from __future__ import annotations

import numpy as np
import pytest

from tasks import urlb
from tasks.base import EnvConfig, make_env

pytestmark = pytest.mark.filterwarnings("ignore:`in1d` is deprecated:DeprecationWarning")

UPRIGHT = (1.0, 0.0, 0.0, 0.0)
UPSIDE_DOWN = (0.0, 1.0, 0.0, 0.0)                        # 180 degrees about x
SIDEWAYS = (np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0)  # 90 degrees about x: u' = 0.5


@pytest.fixture(scope="module")
def quadruped():
    return urlb.load("quadruped", "jump", random=0).physics


def set_quadruped(physics, quat=UPRIGHT, height=0.6, velocity=(0.0, 0.0, 0.0)):
    with physics.reset_context():
        physics.data.qpos[:] = 0.0
        physics.data.qvel[:] = 0.0
        physics.named.data.qpos["root"][:3] = (0.0, 0.0, height)
        physics.named.data.qpos["root"][3:] = quat
        physics.named.data.qvel["root"][:3] = velocity   # world frame; equals the torso frame upright
    return physics


@pytest.mark.parametrize("quat, expected", [(UPRIGHT, 1.0), (UPSIDE_DOWN, 0.0), (SIDEWAYS, 0.5)])
def test_stand_is_uprightness(quadruped, quat, expected):
    assert urlb.quadruped_stand_reward(set_quadruped(quadruped, quat)) == pytest.approx(expected, abs=1e-6)


def test_com_height_is_the_mass_weighted_body_height(quadruped):
    physics = set_quadruped(quadruped, height=0.8)
    mass, xipos = physics.model.body_mass[1:], physics.data.xipos[1:]
    assert physics.com_height() == pytest.approx(float(mass @ xipos[:, 2] / mass.sum()))


def test_jump(quadruped):
    high = set_quadruped(quadruped, height=2.0)
    assert high.com_height() >= 1.0
    assert urlb.quadruped_jump_reward(high) == pytest.approx(1.0)
    low = set_quadruped(quadruped, height=0.6)
    h = low.com_height()
    assert 0.0 < h < 1.0
    assert urlb.quadruped_jump_reward(low) == pytest.approx(1.0 - (1.0 - h) * 0.5)   # linear, 0.5 at margin
    upside_down_high = set_quadruped(quadruped, UPSIDE_DOWN, height=2.0)
    assert urlb.quadruped_jump_reward(upside_down_high) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("velocity, roll, roll_fast", [
    ((0.0, 0.0, 0.0), 0.5, 0.5),          # at zero speed tol(.) = value at margin = 0.5
    ((0.3, 0.4, 0.0), 1.0, 0.55),         # |v| = 0.5: roll saturates; roll_fast 1 - 4.5/5 * 0.5
    ((0.0, 0.0, -0.25), 0.75, 0.525),     # any direction counts (norm of the velocity)
    ((3.0, 0.0, 4.0), 1.0, 1.0),          # |v| = 5
])
def test_roll_and_roll_fast(quadruped, velocity, roll, roll_fast):
    physics = set_quadruped(quadruped, velocity=velocity, height=1.0)
    assert np.linalg.norm(physics.torso_velocity()) == pytest.approx(np.linalg.norm(velocity), abs=1e-9)
    assert urlb.quadruped_roll_reward(physics, 0.5) == pytest.approx(roll)
    assert urlb.quadruped_roll_reward(physics, 5.0) == pytest.approx(roll_fast)
    sideways = set_quadruped(quadruped, SIDEWAYS, velocity=velocity, height=1.0)
    assert urlb.quadruped_roll_reward(sideways, 0.5) == pytest.approx(0.5 * roll, abs=1e-6)


def test_walk_reward_is_dm_controls_formula():
    """dm_control's walk: u' * tol(v_x, (0.5, inf), margin 0.5, value 0.5, linear)."""
    from dm_control import suite
    env = suite.load("quadruped", "walk", task_kwargs={"random": 0})
    for v_x, expected in [(0.0, 0.5), (0.25, 0.75), (0.5, 1.0), (2.0, 1.0)]:
        set_quadruped(env.physics, velocity=(v_x, 0.0, 0.0), height=1.0)
        assert env.task.get_reward(env.physics) == pytest.approx(expected)


@pytest.mark.parametrize("name, domain_task", [("quadruped-walk", ("quadruped", "walk")),
                                                ("quadruped-run", ("quadruped", "run"))])
def test_walk_and_run_are_dm_controls(name, domain_task):
    """Our quadruped-walk/run are dm_control's tasks: same first obs and rewards as suite.load."""
    from dm_control import suite
    env = make_env(name, EnvConfig(obs_type="proprio", action_repeat=1), seed=3)
    raw = suite.load(*domain_task, task_kwargs={"random": 3})
    try:
        ours, theirs = env.reset()["proprio"], raw.reset().observation
        flat = np.concatenate([np.asarray(v, np.float32).ravel() for v in theirs.values()])
        np.testing.assert_array_equal(ours, flat)
        rng = np.random.default_rng(0)
        for _ in range(5):
            action = rng.uniform(-1, 1, 12).astype(np.float32)
            assert env.step(action).reward == raw.step(action).reward
    finally:
        env.close()


# Floor half-size (m) of every quadruped task in the reference code: URLB's custom_dmc_tasks/quadruped.py
# (and ncrl's copy) builds stand, jump, roll and roll_fast all on 20 s x walk speed 0.5 = 10 m; walk
# and run are dm_control's (20 s x 0.5 = 10 m, 20 s x 5 = 100 m).
REFERENCE_FLOOR_SIZE = {"quadruped-stand": 10.0, "quadruped-walk": 10.0, "quadruped-run": 100.0,
                        "quadruped-jump": 10.0, "quadruped-roll": 10.0, "quadruped-roll_fast": 10.0}


def test_every_quadruped_floor_is_the_references():
    from tasks.catalog import TASKS
    from tasks.dmc import load_dm_env
    names = {n for n in TASKS.names() if n.startswith("quadruped-")}
    assert names == set(REFERENCE_FLOOR_SIZE), "a quadruped task without a reference floor size"
    for name in sorted(names):
        floor = load_dm_env(TASKS.get(name), seed=0).physics.named.model.geom_size["floor"]
        np.testing.assert_array_equal(floor, (REFERENCE_FLOOR_SIZE[name],) * 2 + (0.5,), err_msg=name)


def test_roll_fast_pixels_are_the_10m_floors():
    """Camera 2 at one state: roll_fast renders like dm_control's walk (10 m floor), not like run (100 m)."""
    from dm_control import suite

    def render(env):
        physics = set_quadruped(env.physics, SIDEWAYS, height=1.0)
        return physics.render(64, 64, camera_id=2)

    roll_fast = render(urlb.load("quadruped", "roll_fast", random=0))
    np.testing.assert_array_equal(roll_fast, render(suite.load("quadruped", "walk", task_kwargs={"random": 0})))
    run = render(suite.load("quadruped", "run", task_kwargs={"random": 0}))
    assert (roll_fast != run).any(axis=-1).mean() > 0.05     # the floor's grid is 10x coarser at 100 m


@pytest.fixture(scope="module")
def walker():
    return urlb.load("walker", "flip", random=0).physics


def set_planar(physics, spin=0.0, forward=0.0):
    with physics.reset_context():
        physics.data.qpos[:] = 0.0      # walker: standing, torso height 1.3; cheetah: on its feet
        physics.data.qvel[:] = 0.0
        physics.named.data.qvel["rooty"] = spin
        physics.named.data.qvel["rootx"] = forward
    return physics


def test_walker_flip(walker):
    still = set_planar(walker)
    assert still.torso_height() >= 1.2 and still.torso_upright() == pytest.approx(1.0)
    assert urlb.walker_flip_reward(still) == pytest.approx(1 / 6)     # stand 1, move 0
    spinning = set_planar(walker, spin=2.0)
    assert spinning.torso_angmom_y() > 5.0
    assert urlb.walker_flip_reward(spinning) == pytest.approx(1.0)
    backwards = set_planar(walker, spin=-2.0)
    assert urlb.walker_flip_reward(backwards) == pytest.approx(1 / 6)
    slow = set_planar(walker, spin=0.5)
    move = slow.torso_angmom_y() / 5.0          # linear ramp, 0 at margin
    assert 0 < move < 1
    assert urlb.walker_flip_reward(slow) == pytest.approx((5 * move + 1) / 6)


@pytest.fixture(scope="module")
def cheetah():
    return urlb.load("cheetah", "flip", random=0).physics


@pytest.mark.parametrize("forward, expected",
                         [(-10.0, 1.0), (-20.0, 1.0), (-5.0, 0.5), (0.0, 0.0), (5.0, 0.0)])
def test_cheetah_run_backward(cheetah, forward, expected):
    physics = set_planar(cheetah, forward=forward)
    assert physics.speed() == pytest.approx(forward)
    assert urlb.cheetah_run_backward_reward(physics) == pytest.approx(expected)


def test_cheetah_flips(cheetah):
    forward = set_planar(cheetah, spin=2.0)
    assert forward.torso_angmom_y() > 5.0
    assert urlb.cheetah_flip_reward(forward, 1.0) == pytest.approx(1.0)
    assert urlb.cheetah_flip_reward(forward, -1.0) == pytest.approx(0.0)
    backward = set_planar(cheetah, spin=-2.0)
    assert urlb.cheetah_flip_reward(backward, -1.0) == pytest.approx(1.0)
    slow = set_planar(cheetah, spin=0.5)
    assert urlb.cheetah_flip_reward(slow, 1.0) == pytest.approx(slow.torso_angmom_y() / 5.0)


@pytest.mark.parametrize("task, reward_fn", [
    ("stand", urlb.quadruped_stand_reward), ("jump", urlb.quadruped_jump_reward),
    ("roll", lambda p: urlb.quadruped_roll_reward(p, 0.5)),
    ("roll_fast", lambda p: urlb.quadruped_roll_reward(p, 5.0)),
])
def test_tasks_use_the_reward_functions(task, reward_fn):
    """The env's reward is the tested function, and quadruped tasks start in a random orientation."""
    env = urlb.load("quadruped", task, random=0)
    uprights = []
    for _ in range(3):
        env.reset()
        uprights.append(float(env.physics.torso_upright()))
        timestep = env.step(np.zeros(12))
        assert timestep.reward == pytest.approx(reward_fn(env.physics))
    assert len(set(uprights)) == 3, "initial orientation should be random"
    assert env.control_timestep() == pytest.approx(0.02)


def test_unknown_urlb_task():
    from harness.errors import HarnessError
    with pytest.raises(HarnessError, match="quadruped-stand"):
        urlb.load("quadruped", "dance")
