"""The task catalog: every task's static facts, registered at import from hard-coded tables.

No simulator is imported here, so listing is instant. ``tests/test_tasks.py`` checks these tables
against the installed dm_control and metaworld (names, action and state dims).
"""
from __future__ import annotations

from harness.registry import Registry
from tasks.base import TaskInfo

TASKS: Registry[TaskInfo] = Registry("task")

DMC_EPISODE_FRAMES = 1000      # every task below: 1000 control steps (its time limit)
METAWORLD_EPISODE_FRAMES = 200  # ncrl's Meta-World episode length
METAWORLD_CAMERA = "corner2"
METAWORLD_REWARD_MAX = 10.0    # v3 rewards (reward_function_version "v2") lie in [0, 10]

# domain -> (action_dim, default camera)
DMC_DOMAINS: dict[str, tuple[int, int]] = {
    "acrobot": (1, 0), "ball_in_cup": (2, 0), "cartpole": (1, 0), "cheetah": (6, 0),
    "finger": (2, 0), "fish": (5, 0), "hopper": (4, 0), "humanoid": (21, 0),
    "manipulator": (5, 0), "pendulum": (1, 0), "point_mass": (2, 0), "reacher": (2, 0),
    "swimmer": (5, 0), "walker": (6, 0), "quadruped": (12, 2),
}

# dm_control.suite.BENCHMARKING, (domain, task) -> proprio_dim (flattened observation dict length)
DMC_BENCHMARKING: dict[tuple[str, str], int] = {
    ("acrobot", "swingup"): 6, ("acrobot", "swingup_sparse"): 6,
    ("ball_in_cup", "catch"): 8,
    ("cartpole", "balance"): 5, ("cartpole", "balance_sparse"): 5,
    ("cartpole", "swingup"): 5, ("cartpole", "swingup_sparse"): 5,
    ("cheetah", "run"): 17,
    ("finger", "spin"): 9, ("finger", "turn_easy"): 12, ("finger", "turn_hard"): 12,
    ("fish", "upright"): 21, ("fish", "swim"): 24,
    ("hopper", "stand"): 15, ("hopper", "hop"): 15,
    ("humanoid", "stand"): 67, ("humanoid", "walk"): 67, ("humanoid", "run"): 67,
    ("manipulator", "bring_ball"): 44,
    ("pendulum", "swingup"): 3,
    ("point_mass", "easy"): 4,
    ("reacher", "easy"): 6, ("reacher", "hard"): 6,
    ("swimmer", "swimmer6"): 25, ("swimmer", "swimmer15"): 61,
    ("walker", "stand"): 24, ("walker", "walk"): 24, ("walker", "run"): 24,
}
# dm_control's own quadruped walk/run (in suite.EXTRA, not BENCHMARKING); URLB uses them unchanged.
DMC_EXTRA: dict[tuple[str, str], int] = {("quadruped", "walk"): 78, ("quadruped", "run"): 78}
# URLB tasks built in tasks/urlb.py on top of dm_control's domains.
URLB_TASKS: dict[tuple[str, str], int] = {
    ("quadruped", "stand"): 78, ("quadruped", "jump"): 78,
    ("quadruped", "roll"): 78, ("quadruped", "roll_fast"): 78,
    ("walker", "flip"): 24,
    ("cheetah", "run_backward"): 17, ("cheetah", "flip"): 17, ("cheetah", "flip_backward"): 17,
}
# The action dim is per domain except for swimmer15 (14 actuators against swimmer6's 5).
_ACTION_DIM_OVERRIDES = {("swimmer", "swimmer15"): 14}

# Meta-World v3: all 50 tasks (metaworld.env_dict.ALL_V3_ENVIRONMENTS), in its order.
METAWORLD_TASKS: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3",
    "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3",
    "door-lock-v3", "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3",
    "drawer-open-v3", "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3",
    "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3",
    "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3", "plate-slide-v3",
    "plate-slide-side-v3", "plate-slide-back-v3", "plate-slide-back-side-v3", "peg-insert-side-v3",
    "peg-unplug-side-v3", "soccer-v3", "stick-push-v3", "stick-pull-v3", "push-v3", "push-wall-v3",
    "push-back-v3", "reach-v3", "reach-wall-v3", "shelf-place-v3", "sweep-into-v3", "sweep-v3",
    "window-open-v3", "window-close-v3",
)
# Continual World's CW10 sequence (anchors.md section 3), in order.
CW10: tuple[str, ...] = (
    "hammer-v3", "push-wall-v3", "faucet-close-v3", "push-back-v3", "stick-pull-v3",
    "handle-press-side-v3", "push-v3", "shelf-place-v3", "window-close-v3", "peg-unplug-side-v3",
)
METAWORLD_ACTION_DIM = 4
METAWORLD_PROPRIO_DIM = 39


def dmc_name(domain: str, task: str) -> str:
    return f"{domain}-{task}"


def _register_dmc(table: dict[tuple[str, str], int], tags: tuple[str, ...], what: str) -> None:
    for (domain, task), proprio_dim in table.items():
        action_dim, camera = DMC_DOMAINS[domain]
        TASKS.register(dmc_name(domain, task), TaskInfo(
            name=dmc_name(domain, task), suite="dmc", embodiment=domain,
            action_dim=_ACTION_DIM_OVERRIDES.get((domain, task), action_dim),
            proprio_dim=proprio_dim, episode_frames=DMC_EPISODE_FRAMES, score_kind="return",
            reward_range=(0.0, 1.0), factory="tasks.dmc:make", default_camera=camera,
            tags=tags, description=f"{what} {domain} {task}"), tags=tags)


def _register_metaworld() -> None:
    for name in METAWORLD_TASKS:
        tags = ("metaworld", "cw10") if name in CW10 else ("metaworld",)
        TASKS.register(name, TaskInfo(
            name=name, suite="metaworld", embodiment="sawyer", action_dim=METAWORLD_ACTION_DIM,
            proprio_dim=METAWORLD_PROPRIO_DIM, episode_frames=METAWORLD_EPISODE_FRAMES,
            score_kind="success", reward_range=(0.0, METAWORLD_REWARD_MAX),
            factory="tasks.metaworld:make", default_camera=METAWORLD_CAMERA, tags=tags,
            description=f"Meta-World v3 {name[:-3]} (Sawyer arm)"), tags=tags)


_register_dmc(DMC_BENCHMARKING, ("dmc",), "dm_control")
_register_dmc(DMC_EXTRA, ("dmc",), "dm_control")
_register_dmc(URLB_TASKS, ("dmc", "urlb"), "URLB")
_register_metaworld()
