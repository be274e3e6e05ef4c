"""Every task as a Gymnasium env (tasks/gym.py), found through the plugin entry point, and streams as envs.

The full sweep runs gymnasium's own ``check_env`` on every registered task with state observations and
no rendering (Meta-World's construction, 0.6 s, is most of it); one pixel case per suite checks rendering.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from harness.errors import HarnessError
from tasks.base import EnvConfig, make_env
from tasks.catalog import TASKS
from tasks.gym import TaskGymEnv, env_id, register_envs

pytestmark = [pytest.mark.filterwarnings("ignore:`in1d` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*Box observation space .*infinity:UserWarning")]

register_envs()


def test_plain_import_gymnasium_finds_every_task_without_a_simulator():
    """What ./setup.sh promises: a fresh interpreter, `import gymnasium`, and our ids are there (Gymnasium's
    plugin group, loaded by tasks/gym_plugins.py), with no simulator imported by listing them."""
    code = ("import sys, gymnasium\n"
            "ids = sorted(k for k in gymnasium.registry if k.startswith('gsa/'))\n"
            "print(len(ids))\n"
            "print(','.join(m for m in ('mujoco', 'dm_control', 'metaworld', 'torch') if m in sys.modules))\n"
            "env = gymnasium.make('gsa/quadruped-stand-v0', obs_type='proprio')\n"
            "obs, info = env.reset(seed=3)\n"
            "print(obs.shape, env.action_space.shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n, heavy, shapes = out.stdout.strip().splitlines()
    assert int(n) == len(TASKS.names()), "run ./setup.sh: it installs the gymnasium plugin hook (.pth)"
    assert heavy == ""
    assert shapes == "(78,) (12,)"


def test_every_task_has_an_id():
    ids = {k for k in gymnasium.registry if k.startswith("gsa/")}
    assert ids == {env_id(n) for n in TASKS.names()}
    assert gymnasium.spec("gsa/assembly-v3-v0").kwargs == {"task": "assembly-v3"}


@pytest.mark.parametrize("task", TASKS.names())
def test_check_env_every_task(task):
    env = gymnasium.make(env_id(task), obs_type="proprio")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # inf bounds of state vectors: true, and warned
            check_env(env.unwrapped, skip_render_check=True)
        info = TASKS.get(task)
        assert env.observation_space.shape == (info.proprio_dim,)
        assert env.action_space.shape == (info.action_dim,)
    finally:
        env.close()


@pytest.mark.parametrize("task, obs_type", [("walker-walk", "pixels"), ("reach-v3", "both")])
def test_check_env_with_pixels_and_rendering(task, obs_type):
    env = gymnasium.make(env_id(task), obs_type=obs_type, render_mode="rgb_array", render_quality="fast",
                         image_size=32, action_pad_dim=8, proprio_pad_dim=50)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            check_env(env.unwrapped)
        obs, info = env.reset(seed=0)
        pixels = obs["pixels"] if obs_type == "both" else obs
        assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8
        frame = env.render()
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
        assert np.array_equal(frame.transpose(2, 0, 1), pixels)   # the observation is the task camera
        assert env.action_space.shape == (8,)
        np.testing.assert_array_equal(info["action_mask"], [1] * TASKS.get(task).action_dim
                                      + [0] * (8 - TASKS.get(task).action_dim))
    finally:
        env.close()


@pytest.mark.parametrize("task", ["cheetah-run", "quadruped-roll", "push-v3"])
def test_a_seed_gives_the_harness_env_episodes(task):
    """reset(seed=s) is the episode the harness's env built with seed s starts, also after other episodes
    (the simulator is reseeded in place, not rebuilt), and the episodes after it."""
    gym_env = gymnasium.make(env_id(task), obs_type="proprio")
    ref = make_env(task, EnvConfig(obs_type="proprio"), seed=11)
    rng = np.random.default_rng(0)
    try:
        gym_env.reset(seed=5)
        for _ in range(3):
            gym_env.step(gym_env.action_space.sample())
        obs, _ = gym_env.reset(seed=11)
        for episode in range(2):
            if episode:
                obs, _ = gym_env.reset()
            ref_obs = ref.reset()["proprio"]
            np.testing.assert_array_equal(obs, ref_obs)
            for _ in range(4):
                action = rng.uniform(-1, 1, ref.action_dim).astype(np.float32)
                obs, reward, term, trunc, info = gym_env.step(action)
                res = ref.step(action)
                np.testing.assert_array_equal(obs, res.obs["proprio"])
                assert reward == res.reward and info.get("success") == res.info.get("success")
                assert info["env_frames"] == res.env_frames
    finally:
        gym_env.close()
        ref.close()


def test_episodes_end_at_the_frame_limit_and_report_success():
    env = gymnasium.make("gsa/reach-v3-v0", obs_type="proprio", episode_frames=5)
    env.reset(seed=0)
    steps, frames, done = 0, 0, False
    while not done:
        _, _, term, trunc, info = env.step(env.action_space.sample())
        steps, frames, done = steps + 1, frames + info["env_frames"], term or trunc
        assert info["success"] in (0.0, 1.0)
    assert (steps, frames, trunc) == (3, 5, True)   # action repeat 2: 2 + 2 + 1 frames
    env.close()


def test_async_vector_envs():
    venv = gymnasium.make_vec("gsa/cartpole-balance-v0", num_envs=2, vectorization_mode="async", obs_type="proprio")
    try:
        obs, _ = venv.reset(seed=[1, 2])
        assert obs.shape == (2, 5)
        obs, reward, term, trunc, info = venv.step(venv.action_space.sample())
        assert reward.shape == (2,) and info["env_frames"].tolist() == [2, 2]
    finally:
        venv.close()
    single = gymnasium.make("gsa/cartpole-balance-v0", obs_type="proprio")
    np.testing.assert_array_equal(single.reset(seed=2)[0], obs_after_reset(2))
    single.close()


def obs_after_reset(seed: int) -> np.ndarray:
    env = make_env("cartpole-balance", EnvConfig(obs_type="proprio"), seed=seed)
    try:
        return env.reset()["proprio"]
    finally:
        env.close()


def test_bad_arguments_are_clear_errors():
    with pytest.raises(HarnessError, match="unknown keyword arguments"):
        TaskGymEnv("walker-walk", colour="red")
    with pytest.raises(HarnessError, match="unknown obs type"):
        TaskGymEnv("walker-walk", obs_type="depth")
    with pytest.raises(HarnessError, match="unknown task"):
        TaskGymEnv("walker-moonwalk")
    with pytest.raises(HarnessError, match="reset"):
        TaskGymEnv("walker-walk", obs_type="proprio").step(np.zeros(6, np.float32))


def test_a_stream_as_gymnasium_envs_in_order():
    from harness.streams import get_stream, make_envs
    stream = make_envs("quick", obs_type="proprio", render_quality="fast")
    try:
        spec = get_stream("quick")
        assert [t.name for t in stream] == spec.task_names() and [t.frames for t in stream] == [4_000] * 3
        assert stream.eval == spec.eval and len(stream) == 3
        pad_a = max(TASKS.get(n).action_dim for n in spec.task_names())
        pad_p = max(TASKS.get(n).proprio_dim for n in spec.task_names())
        for task in stream:
            assert task.env.action_space.shape == (pad_a,) and task.env.observation_space.shape == (pad_p,)
            _, info = task.env.reset(seed=0)
            assert info["action_mask"].sum() == TASKS.get(task.name).action_dim
        extra = stream[2].make()
        assert extra.spec.id == "gsa/walker-stand-v0" and extra.action_space == stream[2].env.action_space
        extra.close()
    finally:
        stream.close()
