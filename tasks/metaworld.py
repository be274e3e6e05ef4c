"""Meta-World v3 tasks (metaworld 3.1.1, gymnasium API) as a :class:`TaskEnv`, set up as in ncrl.

- Camera ``corner2`` moved to [0.75, 0.075, 0.7]; the corner cameras render upside down, so their
  images are flipped vertically.
- The goal is not frozen: every reset draws a new object/goal vector from the env's own seeded
  generator (ncrl), instead of MT1's choice among 50 pre-drawn goals. Same seed, same sequence.
- Episodes are ``episode_frames`` env frames (default 200); Meta-World's own limit
  (``max_path_length``, 500) must not be shorter.
- ``info["success"]``: 1.0 if any env frame of the agent step succeeded, else 0.0.
"""
from __future__ import annotations

import numpy as np

from harness.errors import HarnessError
from tasks.base import EnvConfig, StepResult, TaskInfo, prepare_simulators
from tasks.render import apply_render_quality, close_at_exit, forget_at_exit
from tasks.spaces import PaddedSpaces, make_obs_spec

NCRL_CAMERA = "corner2"
NCRL_CAMERA_POS = (0.75, 0.075, 0.7)
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
UPSIDE_DOWN_CAMERAS = ("corner", "corner2", "corner3", "corner4")


def make_gym_env(name: str, seed: int, image_size: int, camera: str):
    """The plain gymnasium MT1 env (no checker), as the benchmark's raw baseline also builds it."""
    prepare_simulators()
    import gymnasium
    import metaworld  # noqa: F401  (registers the Meta-World/* ids)
    return gymnasium.make("Meta-World/MT1", env_name=name, seed=seed, render_mode="rgb_array",
                          width=image_size, height=image_size, camera_name=camera,
                          disable_env_checker=True)


def unfreeze_goal(env) -> None:
    """Set MT1's first task once, then draw a fresh goal each reset from the env's seeded rng."""
    env.unwrapped.set_task(env.get_wrapper_attr("tasks")[0])
    env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)
    env.unwrapped._freeze_rand_vec = False   # the switch ncrl flips; metaworld has no public one
    env.unwrapped.seeded_rand_vec = True     # draw from env.np_random (seeded), not global numpy


class MetaWorldEnv:
    """One Meta-World v3 task: padded actions, action repeat, our frame limit, pixels/proprio."""

    def __init__(self, info: TaskInfo, config: EnvConfig, seed: int):
        self.info, self.config, self.seed = info, config, seed
        self.episode_frames = int(config.episode_frames or info.episode_frames)
        self._spaces = PaddedSpaces(info.action_dim, info.proprio_dim,
                                    config.action_pad_dim, config.proprio_pad_dim)
        self.action_mask = self._spaces.action_mask
        self.obs_spec = make_obs_spec(config.obs_type, config.image_size, self._spaces.proprio_dim)
        self._want_pixels = "pixels" in self.obs_spec
        self._want_proprio = "proprio" in self.obs_spec
        self.camera = info.default_camera if config.camera is None else config.camera
        if self.camera not in CAMERAS:
            raise HarnessError(f"unknown Meta-World camera {self.camera!r}; valid: {', '.join(CAMERAS)}")
        self._flip = self.camera in UPSIDE_DOWN_CAMERAS

        self._env = make_gym_env(info.name, seed, config.image_size, self.camera)
        sim = self._env.unwrapped
        max_frames = int(sim.max_path_length)
        if not 1 <= self.episode_frames <= max_frames:
            self.close()
            raise HarnessError(f"{info.name}: episode_frames must be in 1..{max_frames} "
                               f"(Meta-World's max_path_length), got {self.episode_frames}")
        sim.model.camera(NCRL_CAMERA).pos[:] = NCRL_CAMERA_POS
        apply_render_quality(sim.model, config.render_quality)
        unfreeze_goal(self._env)
        self._frames = 0
        self._done = True
        self._rendered = False  # whether a GL context exists (made at the first render)
        self._frame: np.ndarray | None = None

    @property
    def action_dim(self) -> int:
        return self._spaces.action_dim

    def reseed(self, seed: int) -> None:
        """Restart the env's random stream as if it had been built with ``seed`` (the next ``reset()`` is
        that env's first episode), without rebuilding the simulator (0.6 s)."""
        self.seed = seed
        self._env.unwrapped.seed(seed)   # what MT1's construction does with its seed (the goals are drawn from it)
        self._done = True

    def reset(self) -> dict[str, np.ndarray]:
        state, _ = self._env.reset()
        self._frames, self._done = 0, False
        return self._observe(state)

    def step(self, action: np.ndarray) -> StepResult:
        native = self._spaces.unpad_action(action)
        if self._done:
            raise HarnessError(f"{self.info.name}: call reset() before step() "
                               "(at the start and after each episode ends)")
        reward, frames, success, terminated = 0.0, 0, 0.0, False
        for _ in range(self.config.action_repeat):
            state, frame_reward, terminated, _, frame_info = self._env.step(native)
            reward += float(frame_reward)
            success = max(success, float(frame_info["success"]))
            frames += 1
            if terminated or self._frames + frames >= self.episode_frames:
                break
        self._frames += frames
        truncated = not terminated and self._frames >= self.episode_frames
        self._done = terminated or truncated
        return StepResult(self._observe(state), reward, bool(terminated), truncated, frames,
                          {"success": success})

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        self._frame = None
        obs = {}
        if self._want_pixels:
            obs["pixels"] = np.ascontiguousarray(self.render().transpose(2, 0, 1))
        if self._want_proprio:
            obs["proprio"] = self._spaces.pad_proprio(state)
        return obs

    def render(self) -> np.ndarray:
        """uint8 (H, W, 3), upright, from the task camera; cached until the state changes."""
        if self._frame is None:
            image = self._env.render()
            self._frame = image[::-1] if self._flip else image
            if not self._rendered:
                self._rendered = True
                close_at_exit(self)
        return self._frame

    def close(self) -> None:
        """Release the renderer (EGL context); the env is unusable after."""
        forget_at_exit(self)
        if self._env is not None:
            self._env.close()
            self._env = None


def make(info: TaskInfo, config: EnvConfig, seed: int) -> MetaWorldEnv:
    return MetaWorldEnv(info, config.validate(), seed)
