"""Every task as a Gymnasium environment: ``gymnasium.make("gsa/quadruped-stand-v0", obs_type="proprio")``.

Ids are ``gsa/<task name>-v0`` for every task of the catalog (``cli.py tasks list``), Meta-World's included
(``gsa/assembly-v3-v0``; Meta-World's own ids live in its ``Meta-World/`` namespace). :func:`register_envs`
registers them from the catalog's static facts, importing no simulator; it is the package's entry point in
Gymnasium's plugin group ``gymnasium.envs`` (``tasks/gym_plugins.py`` loads that group when gymnasium is
imported), and importing this module calls it too, so ``gymnasium.make("tasks.gym:gsa/walker-walk-v0")``
works anywhere.

:class:`TaskGymEnv` wraps the harness's own env (``tasks.base.make_env``), so a Gymnasium agent sees the
same observations, actions, rewards and episodes as the harness's methods:

- keyword arguments: those of :class:`tasks.base.EnvConfig` (``obs_type``, ``image_size``,
  ``action_repeat``, ``render_quality``, ``episode_frames``, ``action_pad_dim``, ``proprio_pad_dim``,
  ``camera``) and ``render_mode`` (``"rgb_array"``: the task camera at ``image_size``);
- observation space: ``pixels`` Box uint8 (3, H, W), ``proprio`` Box float32 (D,), ``both`` a Dict of the two;
- action space: Box [-1, 1] of the native action dim, or of ``action_pad_dim`` (the shared, zero-padded
  space of a stream); ``info["action_mask"]`` then marks the dims this embodiment uses;
- ``reset(seed=s)`` starts the episode the harness's env built with seed ``s`` starts (and the ones after it);
  the first ``reset()`` without a seed draws one from Gymnasium's seeded ``np_random``;
- ``info``: ``env_frames`` (simulator frames the step took), ``success`` (Meta-World: 1.0 if a frame of the
  step succeeded) and ``action_mask`` when padded. Episodes end by truncation at ``episode_frames``.

The simulator is made at the first ``reset``, so constructing (``make``, ``make_vec``'s probe env) is free.
"""
from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from tasks.base import EnvConfig, TaskEnv, TaskInfo, make_env

NAMESPACE = "gsa"
VERSION = 0
_SEED_LIMIT = 2**32   # dm_control's RandomState takes seeds below this


def env_id(task: str) -> str:
    """``quadruped-stand`` -> ``gsa/quadruped-stand-v0``."""
    return f"{NAMESPACE}/{task}-v{VERSION}"


def register_envs() -> None:
    """Register ``gsa/<task>-v0`` for every task of the catalog (idempotent; imports no simulator)."""
    from tasks.catalog import TASKS
    for entry in TASKS:
        info: TaskInfo = entry.value
        if env_id(info.name) in gymnasium.registry:
            continue
        gymnasium.register(id=env_id(info.name), entry_point="tasks.gym:TaskGymEnv", kwargs={"task": info.name},
                           nondeterministic=False)


def _box(shape: tuple[int, ...], dtype: Any) -> spaces.Box:
    if np.dtype(dtype) == np.uint8:
        return spaces.Box(0, 255, shape, np.uint8)
    return spaces.Box(-np.inf, np.inf, shape, np.float32)


class TaskGymEnv(gymnasium.Env):
    """One task of the harness as a :class:`gymnasium.Env` (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, task: str, obs_type: str = "pixels", render_mode: str | None = None, **env_kwargs: Any):
        from harness.errors import HarnessError
        from tasks.catalog import TASKS
        from tasks.spaces import PaddedSpaces, make_obs_spec
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise HarnessError(f"unknown render_mode {render_mode!r}; valid: None, rgb_array")
        unknown = set(env_kwargs) - set(EnvConfig.__dataclass_fields__)
        if unknown:
            raise HarnessError(f"unknown keyword arguments {sorted(unknown)} for {env_id(task)}; valid: obs_type, "
                               f"render_mode, {', '.join(f for f in EnvConfig.__dataclass_fields__ if f != 'obs_type')}")
        self.task_info: TaskInfo = TASKS.get(task)
        self.config = EnvConfig(obs_type=obs_type, **env_kwargs).validate()
        self.render_mode = render_mode
        padded = PaddedSpaces(self.task_info.action_dim, self.task_info.proprio_dim,
                              self.config.action_pad_dim, self.config.proprio_pad_dim)
        self.action_mask = padded.action_mask
        self._padded = self.config.action_pad_dim is not None
        obs_spec = make_obs_spec(self.config.obs_type, self.config.image_size, padded.proprio_dim)
        boxes = {k: _box(shape, dtype) for k, (shape, dtype) in obs_spec.items()}
        self.observation_space = spaces.Dict(boxes) if len(boxes) > 1 else next(iter(boxes.values()))
        self.action_space = spaces.Box(-1.0, 1.0, (padded.action_dim,), np.float32)
        self._env: TaskEnv | None = None

    @property
    def task_env(self) -> TaskEnv | None:
        """The harness env underneath (None before the first reset)."""
        return self._env

    def _seed_task(self, seed: int) -> None:
        if not 0 <= seed < _SEED_LIMIT:
            seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        reseed = getattr(self._env, "reseed", None)
        if reseed is not None:
            reseed(seed)
            return
        if self._env is not None:
            self._env.close()
        self._env = make_env(self.task_info.name, self.config, seed)

    def _obs(self, obs: dict[str, np.ndarray]) -> Any:
        if isinstance(self.observation_space, spaces.Dict):
            return {k: np.array(v) for k, v in obs.items()}
        return np.array(next(iter(obs.values())))   # a copy: agents keep what they are given

    def _info(self, info: dict[str, Any], env_frames: int = 0) -> dict[str, Any]:
        out = {"env_frames": int(env_frames), **info}
        if self._padded:
            out["action_mask"] = self.action_mask.copy()
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._seed_task(int(seed))
        elif self._env is None:
            self._seed_task(int(self.np_random.integers(2**31 - 1)))
        assert self._env is not None
        return self._obs(self._env.reset()), self._info({})

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._env is None:
            from harness.errors import HarnessError
            raise HarnessError(f"{env_id(self.task_info.name)}: call reset() before step()")
        res = self._env.step(np.asarray(action, np.float32))
        return self._obs(res.obs), float(res.reward), bool(res.terminated), bool(res.truncated), \
            self._info(res.info, res.env_frames)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gymnasium.logger.warn(f"{env_id(self.task_info.name)}: render() without a render_mode; "
                                  "make the env with render_mode='rgb_array'")
            return None
        if self._env is None:
            from harness.errors import HarnessError
            raise HarnessError(f"{env_id(self.task_info.name)}: call reset() before render()")
        return np.array(self._env.render())

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


register_envs()
