"""DeepMind Control Suite tasks (and URLB's, from tasks/urlb.py) as a :class:`TaskEnv`.

Pixels are rendered from the task camera (quadruped 2, others 0) only when the obs type asks for
them; proprio is the task's observation dict flattened in the spec's key order. The frame limit is
ours (dm_control's own time limit is switched off), so ``episode_frames`` may be any length.
"""
from __future__ import annotations

import numpy as np

from harness.errors import HarnessError
from tasks.base import EnvConfig, StepResult, TaskInfo, prepare_simulators
from tasks.render import apply_render_quality, close_at_exit, forget_at_exit
from tasks.spaces import PaddedSpaces, make_obs_spec


def domain_and_task(info: TaskInfo) -> tuple[str, str]:
    """``"ball_in_cup-catch"`` -> ("ball_in_cup", "catch"); the embodiment is the domain."""
    prefix = info.embodiment + "-"
    if not info.name.startswith(prefix):
        raise HarnessError(f"DMC task name {info.name!r} must start with its domain {prefix!r}")
    return info.embodiment, info.name[len(prefix):]


def load_dm_env(info: TaskInfo, seed: int):
    """The bare dm_control Environment for a task, seeded, without a time limit."""
    prepare_simulators()
    domain, task = domain_and_task(info)
    env_kwargs = {"flat_observation": False}
    if "urlb" in info.tags:
        from tasks import urlb
        return urlb.load(domain, task, random=seed, time_limit=float("inf"),
                         environment_kwargs=env_kwargs)
    from dm_control import suite
    return suite.load(domain, task, task_kwargs={"random": seed, "time_limit": float("inf")},
                      environment_kwargs=env_kwargs)


class DMCEnv:
    """One DMC task: padded actions, action repeat, our frame limit, pixels and/or proprio."""

    def __init__(self, info: TaskInfo, config: EnvConfig, seed: int):
        self.info, self.config, self.seed = info, config, seed
        self.episode_frames = int(config.episode_frames or info.episode_frames)
        if self.episode_frames < 1:
            raise HarnessError(f"episode_frames must be >= 1, got {self.episode_frames}")
        self._spaces = PaddedSpaces(info.action_dim, info.proprio_dim,
                                    config.action_pad_dim, config.proprio_pad_dim)
        self.action_mask = self._spaces.action_mask
        self.obs_spec = make_obs_spec(config.obs_type, config.image_size, self._spaces.proprio_dim)
        self._want_pixels = "pixels" in self.obs_spec
        self._want_proprio = "proprio" in self.obs_spec

        self._env = load_dm_env(info, seed)
        self._physics = self._env.physics
        apply_render_quality(self._physics.model, config.render_quality)
        try:
            self.camera = self._check_camera(info.default_camera if config.camera is None else config.camera)
        except HarnessError:
            self.close()
            raise
        spec = self._env.observation_spec()
        self._obs_slices: list[tuple[str, slice, bool]] = []   # (key, where in the vector, ravel?)
        native_proprio = 0
        for key, array_spec in spec.items():    # the task's own (fixed) key order
            size = int(np.prod(array_spec.shape))
            self._obs_slices.append((key, slice(native_proprio, native_proprio + size),
                                     len(array_spec.shape) > 1))
            native_proprio += size
        assert native_proprio == info.proprio_dim, (
            f"{info.name}: dm_control gives a {native_proprio}-d state, the catalog says {info.proprio_dim}")
        action_shape = self._env.action_spec().shape
        assert action_shape == (info.action_dim,), (
            f"{info.name}: dm_control action shape {action_shape}, catalog {info.action_dim}")
        self._frames = 0
        self._done = True       # step() needs a reset() first
        self._rendered = False  # whether a GL context exists (made at the first render)
        self._frame: np.ndarray | None = None  # the last rendered (H, W, 3) image of this state

    @property
    def action_dim(self) -> int:
        return self._spaces.action_dim

    def _check_camera(self, camera: int | str) -> int | str:
        model = self._physics.model
        names = [model.id2name(i, "camera") for i in range(model.ncam)]
        if isinstance(camera, str) and camera in names:
            return camera
        if isinstance(camera, (int, np.integer)) and -1 <= camera < model.ncam:
            return int(camera)
        raise HarnessError(f"{self.info.name} has no camera {camera!r}; valid: -1 (free camera), "
                           f"0..{model.ncam - 1}, or one of {[n for n in names if n]}")

    def reseed(self, seed: int) -> None:
        """Restart the task's random stream as if the env had been built with ``seed`` (the next
        ``reset()`` is that env's first episode), without rebuilding the simulator."""
        self.seed = seed
        self._env.task._random = np.random.RandomState(seed)   # what suite.load(task_kwargs={"random": seed}) sets
        self._done = True

    def reset(self) -> dict[str, np.ndarray]:
        timestep = self._env.reset()
        self._frames, self._done = 0, False
        return self._observe(timestep.observation)

    def step(self, action: np.ndarray) -> StepResult:
        native = self._spaces.unpad_action(action)
        if self._done:
            raise HarnessError(f"{self.info.name}: call reset() before step() "
                               "(at the start and after each episode ends)")
        reward, frames = 0.0, 0
        frames_left = self.episode_frames - self._frames
        for _ in range(min(self.config.action_repeat, frames_left)):
            timestep = self._env.step(native)
            reward += timestep.reward or 0.0
            frames += 1
            if timestep.step_type.last():
                break
        self._frames += frames
        # dm_control's time limit is off, so LAST here is a real end; with discount 0, a terminal state.
        last = timestep.step_type.last()
        terminated = bool(last and timestep.discount == 0.0)
        truncated = not terminated and (last or self._frames >= self.episode_frames)
        self._done = terminated or truncated
        return StepResult(self._observe(timestep.observation), float(reward), terminated, truncated,
                          frames)

    def _observe(self, observation) -> dict[str, np.ndarray]:
        self._frame = None
        obs = {}
        if self._want_pixels:
            obs["pixels"] = np.ascontiguousarray(self.render().transpose(2, 0, 1))
        if self._want_proprio:
            state = np.zeros(self._spaces.proprio_dim, np.float32)   # zero padding after the state
            for key, where, ravel in self._obs_slices:
                state[where] = observation[key].ravel() if ravel else observation[key]
            obs["proprio"] = state
        return obs

    def render(self) -> np.ndarray:
        """uint8 (H, W, 3) from the task camera at image_size; cached until the state changes."""
        if self._frame is None:
            size = self.config.image_size
            self._frame = self._physics.render(height=size, width=size, camera_id=self.camera)
            if not self._rendered:
                self._rendered = True
                close_at_exit(self)
        return self._frame

    def close(self) -> None:
        """Release the renderer (EGL context) and the simulator; the env is unusable after."""
        forget_at_exit(self)
        if self._physics is not None:
            self._physics.free()
            self._physics = None
            self._env = None


def make(info: TaskInfo, config: EnvConfig, seed: int) -> DMCEnv:
    return DMCEnv(info, config.validate(), seed)
