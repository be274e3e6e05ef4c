"""Task conformance: the catalog against the real libraries, and every registered task's env.

Fast by design: a proprio-only pass over every task (no rendering), then a pixels pass over one
task per embodiment with 'fast' rendering at 64x64.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from harness.errors import HarnessError
from tasks import spaces
from tasks.base import EnvConfig, make_env
from tasks.catalog import DMC_EXTRA, TASKS

pytestmark = pytest.mark.filterwarnings("ignore:`in1d` is deprecated:DeprecationWarning")

ALL_TASKS = TASKS.names()
PAD_ACTION = max(e.value.action_dim for e in TASKS) + 3    # every task gets some padding
PAD_PROPRIO = max(e.value.proprio_dim for e in TASKS) + 5
EPISODE_FRAMES = 7                                          # with action repeat 2: steps of 2,2,2,1
GARBAGE = np.array([np.nan, 1e9, -1e9, 0.5, -7.0] * 10, np.float32)


def one_per_embodiment() -> list[str]:
    first: dict[str, str] = {}
    for entry in TASKS:
        first.setdefault(entry.value.embodiment, entry.name)
    return list(first.values())


def native_actions(action_dim: int, n: int, seed: int = 123) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, action_dim).astype(np.float32) for _ in range(n)]


def renderer_started(env) -> bool:
    """Whether the env's simulator made a GL context (read-only peek at library state)."""
    if env.info.suite == "dmc":
        return env._physics._contexts is not None
    renderer = env._env.unwrapped.mujoco_renderer
    return renderer.viewer is not None or bool(renderer._viewers)


def check_obs(env, obs: dict[str, np.ndarray]) -> None:
    assert set(obs) == set(env.obs_spec), f"obs keys {set(obs)} != spec {set(env.obs_spec)}"
    for key, (shape, dtype) in env.obs_spec.items():
        assert obs[key].shape == shape, f"{key}: shape {obs[key].shape} != spec {shape}"
        assert obs[key].dtype == dtype, f"{key}: dtype {obs[key].dtype} != spec {dtype}"


def run_episode(env, actions: list[np.ndarray]):
    """Reset, then step through ``actions``; return (first obs, step results)."""
    first = env.reset()
    check_obs(env, first)
    return first, [env.step(a) for a in actions]


# ---- the catalog against the libraries ----

def test_catalog_import_is_light():
    code = ("import sys, time; t = time.perf_counter(); import tasks.catalog; "
            "dt = time.perf_counter() - t; "
            "heavy = [m for m in ('dm_control', 'mujoco', 'metaworld', 'gymnasium', 'torch') "
            "if m in sys.modules]; print(dt, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, heavy = out.stdout.split(" ", 1)
    assert heavy.strip() == "[]", f"importing tasks.catalog pulled in {heavy}"
    assert float(seconds) < 1.0, f"importing tasks.catalog took {seconds} s"


def test_dmc_names_match_dm_control():
    from dm_control import suite

    from tasks import urlb
    expected = set(suite.BENCHMARKING) | set(DMC_EXTRA) | set(urlb.TASK_NAMES)
    expected_names = {f"{d}-{t}" for d, t in expected}
    ours = {e.name for e in TASKS if e.value.suite == "dmc"}
    assert ours == expected_names, f"missing {expected_names - ours}, extra {ours - expected_names}"
    for domain, task in expected:
        info = TASKS.get(f"{domain}-{task}")
        assert info.embodiment == domain and info.factory == "tasks.dmc:make"
        assert ("urlb" in info.tags) == ((domain, task) in urlb.TASK_NAMES)
    assert TASKS.get("quadruped-walk").default_camera == 2
    assert TASKS.get("walker-walk").embodiment != TASKS.get("cheetah-run").embodiment


def test_metaworld_names_match_metaworld():
    import metaworld.env_dict
    ours = [e.name for e in TASKS if e.value.suite == "metaworld"]
    assert ours == list(metaworld.env_dict.ALL_V3_ENVIRONMENTS), "Meta-World v3 task list differs"
    assert len(ours) == 50
    assert len(TASKS.with_tag("cw10")) == 10
    for name in ours:
        info = TASKS.get(name)
        assert (info.embodiment, info.action_dim, info.proprio_dim) == ("sawyer", 4, 39)
        assert (info.episode_frames, info.score_kind, info.default_camera) == (200, "success", "corner2")


def test_unknown_task_names_valid_ones():
    with pytest.raises(HarnessError, match="Did you mean .quadruped-walk."):
        make_env("quadruped-wlak")


# ---- proprio pass: every task, no rendering ----

@pytest.mark.parametrize("name", ALL_TASKS)
def test_task_proprio(name):
    info = TASKS.get(name)
    base = EnvConfig(obs_type="proprio", episode_frames=EPISODE_FRAMES, render_quality="fast")
    actions = native_actions(info.action_dim, 4)

    # Native dims: the catalog's dims are the simulator's.
    env = make_env(name, base, seed=0)
    try:
        assert env.action_dim == info.action_dim and env.action_mask.tolist() == [1.0] * info.action_dim
        assert env.obs_spec == {"proprio": ((info.proprio_dim,), np.dtype(np.float32))}
        first, results = run_episode(env, actions)
        assert not renderer_started(env), "obs_type 'proprio' must not render"
    finally:
        env.close()

    # Padded env, same seed, garbage in the padding: identical up to the padding.
    config = base.with_(action_pad_dim=PAD_ACTION, proprio_pad_dim=PAD_PROPRIO)
    env = make_env(name, config, seed=0)
    try:
        mask = np.zeros(PAD_ACTION, np.float32)
        mask[:info.action_dim] = 1
        np.testing.assert_array_equal(env.action_mask, mask)
        assert env.action_dim == PAD_ACTION
        padded = [np.concatenate([a, GARBAGE[:PAD_ACTION - info.action_dim]]) for a in actions]
        first_p, results_p = run_episode(env, padded)
        with pytest.raises(HarnessError, match="shape"):
            env.step(np.zeros(info.action_dim, np.float32))
        with pytest.raises(HarnessError, match="reset"):
            env.step(padded[0])                      # the episode has ended
    finally:
        env.close()

    np.testing.assert_array_equal(first_p["proprio"][:info.proprio_dim], first["proprio"])
    assert not first_p["proprio"][info.proprio_dim:].any(), "proprio padding must be zeros"
    assert [r.reward for r in results_p] == [r.reward for r in results], "same seed, same rewards"
    for r, r_p in zip(results, results_p):
        check_obs(env, r_p.obs)
        np.testing.assert_array_equal(r_p.obs["proprio"][:info.proprio_dim], r.obs["proprio"])

    # Frame accounting, truncation and reward range.
    assert [r.env_frames for r in results] == [2, 2, 2, 1]
    assert [r.truncated for r in results] == [False, False, False, True]
    assert not any(r.terminated for r in results)
    lo, hi = info.reward_range
    for r in results:
        assert lo * r.env_frames - 1e-6 <= r.reward <= hi * r.env_frames + 1e-6, (
            f"reward {r.reward} outside {info.reward_range} x {r.env_frames} frames")
        if info.suite == "metaworld":
            assert r.info["success"] in (0.0, 1.0)

    # A different seed starts elsewhere (all these tasks randomise their initial state or goal).
    if info.suite == "dmc":
        env = make_env(name, base, seed=1)
        try:
            other = env.reset()["proprio"]
        finally:
            env.close()
        assert not np.array_equal(other, first["proprio"]), "seeds 0 and 1 gave the same first obs"


@pytest.mark.parametrize("name", ["assembly-v3", "hammer-v3", "reach-v3"])
def test_metaworld_seeds_differ(name):
    firsts = []
    for seed in (0, 1):
        env = make_env(name, EnvConfig(obs_type="proprio"), seed=seed)
        try:
            firsts.append(env.reset()["proprio"])
        finally:
            env.close()
    assert not np.array_equal(*firsts)


def test_metaworld_goal_not_frozen_but_reproducible():
    def goals(seed):
        env = make_env("reach-v3", EnvConfig(obs_type="proprio"), seed=seed)
        try:
            return [env.reset()["proprio"][36:39].copy() for _ in range(3)]  # obs[36:39]: goal pos
        finally:
            env.close()
    a, b = goals(0), goals(0)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2]), "goal is frozen"


def test_metaworld_full_episode_is_200_frames():
    env = make_env("reach-v3", EnvConfig(obs_type="proprio"), seed=0)
    try:
        env.reset()
        results = []
        while not results or not results[-1].truncated:
            results.append(env.step(np.zeros(4, np.float32)))
        assert sum(r.env_frames for r in results) == 200 and len(results) == 100
        assert all("success" in r.info for r in results)
    finally:
        env.close()
    with pytest.raises(HarnessError, match="episode_frames"):
        make_env("reach-v3", EnvConfig(obs_type="proprio", episode_frames=501))


def test_dmc_full_episode_is_1000_frames():
    env = make_env("cartpole-balance", EnvConfig(obs_type="proprio"), seed=0)
    try:
        env.reset()
        results = []
        while not results or not results[-1].truncated:
            results.append(env.step(np.zeros(1, np.float32)))
        assert sum(r.env_frames for r in results) == 1000 and len(results) == 500
        env.reset()     # a second episode starts cleanly
        assert not env.step(np.zeros(1, np.float32)).truncated
    finally:
        env.close()


def test_bad_configs_raise():
    with pytest.raises(HarnessError, match="pad dim"):
        make_env("cheetah-run", EnvConfig(obs_type="proprio", action_pad_dim=3))
    with pytest.raises(HarnessError, match="pad dim"):
        make_env("cheetah-run", EnvConfig(obs_type="proprio", proprio_pad_dim=10))
    with pytest.raises(HarnessError, match="camera"):
        make_env("cheetah-run", EnvConfig(obs_type="pixels", camera=9))
    with pytest.raises(HarnessError, match="camera"):
        make_env("reach-v3", EnvConfig(obs_type="pixels", camera="nope"))
    with pytest.raises(HarnessError, match="obs type"):
        make_env("cheetah-run", EnvConfig(obs_type="rgb"))


def test_spaces_helpers():
    mask = spaces.action_mask(2, 5)
    assert mask.dtype == np.float32 and mask.tolist() == [1, 1, 0, 0, 0]
    padded = spaces.pad_action(np.array([0.5, -0.5]), 5)
    assert padded.tolist() == [0.5, -0.5, 0, 0, 0]
    assert spaces.unpad_action(padded, 2, 5).tolist() == [0.5, -0.5]
    with pytest.raises(HarnessError, match=r"shape \(5,\)"):
        spaces.unpad_action(np.zeros((1, 5)), 2, 5)
    assert spaces.pad_vector(np.ones(3), 4).tolist() == [1, 1, 1, 0]
    with pytest.raises(HarnessError, match="smaller"):
        spaces.pad_vector(np.ones(3), 2)
    assert spaces.resolve_pad_dim(4, None, "action") == 4


# ---- pixels pass: one task per embodiment, fast render ----

@pytest.mark.parametrize("name", one_per_embodiment())
def test_task_pixels(name):
    config = EnvConfig(obs_type="both", render_quality="fast", episode_frames=6,
                       action_pad_dim=PAD_ACTION)
    env = make_env(name, config, seed=0)
    try:
        first = env.reset()
        check_obs(env, first)
        pixels = first["pixels"]
        assert pixels.shape == (3, 64, 64) and pixels.dtype == np.uint8
        assert pixels.std() > 1.0, "pixels are (nearly) constant"
        frame = env.render()
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame.transpose(2, 0, 1), pixels)
        step = env.step(np.zeros(PAD_ACTION, np.float32))
        check_obs(env, step.obs)
    finally:
        env.close()
    env = make_env(name, config.with_(obs_type="pixels"), seed=0)
    try:
        again = env.reset()
        assert set(again) == {"pixels"}
        np.testing.assert_array_equal(again["pixels"], pixels)   # same seed, same image
    finally:
        env.close()


def test_render_in_proprio_mode_and_paper_quality():
    env = make_env("quadruped-walk", EnvConfig(obs_type="proprio", image_size=32), seed=0)
    try:
        env.reset()
        assert not renderer_started(env)
        frame = env.render()     # for videos
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and frame.std() > 1.0
    finally:
        env.close()


def test_metaworld_image_is_upright():
    """Ours is gymnasium's render of the same state flipped vertically. Upright, the light back wall
    is at the top and the dark floor and robot base at the bottom (checked by eye on all four corner
    cameras; gymnasium's own image of them is upside down)."""
    env = make_env("assembly-v3", EnvConfig(obs_type="pixels", render_quality="fast"), seed=0)
    try:
        ours = env.reset()["pixels"].transpose(1, 2, 0)
        theirs = env._env.render()         # the wrapped gymnasium env, same state and camera
    finally:
        env.close()
    np.testing.assert_array_equal(ours, theirs[::-1])
    top, bottom = ours[:16].mean(), ours[-16:].mean()
    assert top > bottom + 10, f"image looks upside down: top rows {top:.0f}, bottom rows {bottom:.0f}"
    top, bottom = theirs[:16].mean(), theirs[-16:].mean()
    assert top < bottom, "gymnasium's corner2 image is no longer upside down: drop the flip"


def test_close_is_idempotent():
    env = make_env("cartpole-swingup", EnvConfig(obs_type="pixels", render_quality="fast"), seed=0)
    env.reset()
    env.close()
    env.close()
