"""URLB's extra DMC tasks (anchors.md section 2), built on dm_control's own domains.

Each task subclasses dm_control's Task for its domain (same model, initial state and
observations) and only replaces the reward; each reward is a plain function of the physics so it
can be tested on constructed states. The Physics subclasses add one quantity each: the quadruped's
centre-of-mass height, and the walker's and cheetah's torso angular momentum about y.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from tasks.base import prepare_simulators

prepare_simulators()  # before dm_control is imported: MUJOCO_GL and the LLVM load order (see tasks/base.py)
from dm_control.rl import control  # noqa: E402
from dm_control.suite import cheetah, common, quadruped, walker  # noqa: E402
from dm_control.utils import rewards  # noqa: E402

from harness.errors import HarnessError  # noqa: E402

INF = float("inf")

# Time limits and control steps: 1000 control steps per episode for every task here.
QUADRUPED_TIME_LIMIT_S, QUADRUPED_CONTROL_TIMESTEP_S = 20.0, 0.02
WALKER_TIME_LIMIT_S, WALKER_CONTROL_TIMESTEP_S = 25.0, 0.025
CHEETAH_TIME_LIMIT_S = 10.0  # control step = physics step 0.01

QUADRUPED_WALK_SPEED, QUADRUPED_RUN_SPEED = 0.5, 5.0  # dm_control's walk/run speeds
# Floor half-size (m). URLB (custom_dmc_tasks/quadruped.py) and ncrl build every task they add --
# stand, jump, roll and roll_fast alike -- on time limit x walk speed = 10 m, the floor of dm_control's
# walk (dm_control's run uses 100 m). The floor's size scales its grid texture, so it shows in pixels.
QUADRUPED_FLOOR_SIZE = QUADRUPED_TIME_LIMIT_S * QUADRUPED_WALK_SPEED
JUMP_HEIGHT = 1.0
WALKER_STAND_HEIGHT = 1.2
SPIN_SPEED = 5.0
CHEETAH_RUN_SPEED = 10.0


class QuadrupedPhysics(quadruped.Physics):
    """dm_control's quadruped physics plus the centre-of-mass height."""

    def com_height(self) -> float:
        """Height of the quadruped's centre of mass (the torso's subtree: the whole body)."""
        return float(self.named.data.subtree_com["torso"][2])


class WalkerPhysics(walker.Physics):
    def torso_angmom_y(self) -> float:
        """Angular momentum of the torso's subtree about the y axis (the flip axis)."""
        return float(self.named.data.subtree_angmom["torso"][1])


class CheetahPhysics(cheetah.Physics):
    def torso_angmom_y(self) -> float:
        return float(self.named.data.subtree_angmom["torso"][1])


# ---- rewards: plain functions of the physics ----

def _at_least(x: float, lo: float, margin: float, value_at_margin: float) -> float:
    """tol(x, (lo, inf), margin, value_at_margin, linear): 1 above lo, linear ramp below."""
    return float(rewards.tolerance(x, bounds=(lo, INF), margin=margin,
                                   value_at_margin=value_at_margin, sigmoid="linear"))


def quadruped_upright(physics: quadruped.Physics) -> float:
    """u' = (1 + torso_zz) / 2: 1 upright, 0 upside down."""
    return float((1.0 + physics.torso_upright()) / 2.0)


def quadruped_stand_reward(physics: quadruped.Physics) -> float:
    return quadruped_upright(physics)


def quadruped_jump_reward(physics: QuadrupedPhysics) -> float:
    return quadruped_upright(physics) * _at_least(physics.com_height(), JUMP_HEIGHT, JUMP_HEIGHT, 0.5)


def quadruped_roll_reward(physics: quadruped.Physics, speed: float) -> float:
    """u' * tol(|torso velocity|, (speed, inf), margin speed, 0.5): roll uses 0.5, roll_fast 5."""
    velocity_norm = float(np.linalg.norm(physics.torso_velocity()))
    return quadruped_upright(physics) * _at_least(velocity_norm, speed, speed, 0.5)


def walker_flip_reward(physics: WalkerPhysics) -> float:
    standing = rewards.tolerance(physics.torso_height(), bounds=(WALKER_STAND_HEIGHT, INF),
                                 margin=WALKER_STAND_HEIGHT / 2)
    upright = (1.0 + physics.torso_upright()) / 2.0
    stand = (3.0 * standing + upright) / 4.0
    move = _at_least(physics.torso_angmom_y(), SPIN_SPEED, SPIN_SPEED, 0.0)
    return float(stand * (5.0 * move + 1.0) / 6.0)


def cheetah_run_backward_reward(physics: cheetah.Physics) -> float:
    return _at_least(-physics.speed(), CHEETAH_RUN_SPEED, CHEETAH_RUN_SPEED, 0.0)


def cheetah_flip_reward(physics: CheetahPhysics, direction: float) -> float:
    """direction +1: flip (forward), -1: flip_backward."""
    return _at_least(direction * physics.torso_angmom_y(), SPIN_SPEED, SPIN_SPEED, 0.0)


# ---- tasks: dm_control's tasks with the reward replaced ----

RewardFn = Callable[[object], float]


class QuadrupedTask(quadruped.Move):
    """dm_control's quadruped Move task (random initial orientation, same observations)."""

    def __init__(self, reward_fn: RewardFn, random=None):
        super().__init__(desired_speed=0.0, random=random)
        self._reward_fn = reward_fn

    def get_reward(self, physics):
        return self._reward_fn(physics)


class WalkerTask(walker.PlanarWalker):
    def __init__(self, reward_fn: RewardFn, random=None):
        super().__init__(move_speed=0.0, random=random)
        self._reward_fn = reward_fn

    def get_reward(self, physics):
        return self._reward_fn(physics)


class CheetahTask(cheetah.Cheetah):
    def __init__(self, reward_fn: RewardFn, random=None):
        super().__init__(random=random)
        self._reward_fn = reward_fn

    def get_reward(self, physics):
        return self._reward_fn(physics)


def _quadruped(reward_fn: RewardFn, random, time_limit, env_kwargs):
    xml = quadruped.make_model(floor_size=QUADRUPED_FLOOR_SIZE)
    physics = QuadrupedPhysics.from_xml_string(xml, common.ASSETS)
    return control.Environment(
        physics, QuadrupedTask(reward_fn, random=random),
        time_limit=QUADRUPED_TIME_LIMIT_S if time_limit is None else time_limit,
        control_timestep=QUADRUPED_CONTROL_TIMESTEP_S, **env_kwargs)


def _walker(reward_fn: RewardFn, random, time_limit, env_kwargs):
    physics = WalkerPhysics.from_xml_string(*walker.get_model_and_assets())
    return control.Environment(
        physics, WalkerTask(reward_fn, random=random),
        time_limit=WALKER_TIME_LIMIT_S if time_limit is None else time_limit,
        control_timestep=WALKER_CONTROL_TIMESTEP_S, **env_kwargs)


def _cheetah(reward_fn: RewardFn, random, time_limit, env_kwargs):
    physics = CheetahPhysics.from_xml_string(*cheetah.get_model_and_assets())
    return control.Environment(
        physics, CheetahTask(reward_fn, random=random),
        time_limit=CHEETAH_TIME_LIMIT_S if time_limit is None else time_limit, **env_kwargs)


# (domain, task) -> builder(random, time_limit, environment_kwargs) -> control.Environment
_BUILDERS: dict[tuple[str, str], Callable] = {
    ("quadruped", "stand"): lambda *a: _quadruped(quadruped_stand_reward, *a),
    ("quadruped", "jump"): lambda *a: _quadruped(quadruped_jump_reward, *a),
    ("quadruped", "roll"): lambda *a: _quadruped(
        lambda p: quadruped_roll_reward(p, QUADRUPED_WALK_SPEED), *a),
    ("quadruped", "roll_fast"): lambda *a: _quadruped(
        lambda p: quadruped_roll_reward(p, QUADRUPED_RUN_SPEED), *a),
    ("walker", "flip"): lambda *a: _walker(walker_flip_reward, *a),
    ("cheetah", "run_backward"): lambda *a: _cheetah(cheetah_run_backward_reward, *a),
    ("cheetah", "flip"): lambda *a: _cheetah(lambda p: cheetah_flip_reward(p, 1.0), *a),
    ("cheetah", "flip_backward"): lambda *a: _cheetah(lambda p: cheetah_flip_reward(p, -1.0), *a),
}
TASK_NAMES: tuple[tuple[str, str], ...] = tuple(_BUILDERS)


def load(domain: str, task: str, random=None, time_limit: float | None = None,
         environment_kwargs: dict | None = None) -> control.Environment:
    """Build a URLB task as a dm_control Environment (like ``dm_control.suite.load``)."""
    builder = _BUILDERS.get((domain, task))
    if builder is None:
        valid = ", ".join(f"{d}-{t}" for d, t in _BUILDERS)
        raise HarnessError(f"unknown URLB task {domain}-{task}; valid: {valid}")
    return builder(random, time_limit, environment_kwargs or {})
