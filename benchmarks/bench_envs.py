"""Env frames/s: the raw simulator API against our TaskEnv wrapper, same task and render settings.

Both sides produce the same observation each agent step (action repeat 2): a 64x64 image from the
task camera ("pixels"), or the flattened float32 state ("proprio", no rendering). Raw and wrapper
blocks alternate and the best block of each counts, so load from other processes hurts both alike;
a case that looks over the limit gets up to twice as many blocks again. Exits 1 if the wrapper
still costs more than 10% anywhere.

    python benchmarks/bench_envs.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.base import EnvConfig, make_env  # noqa: E402
from tasks.catalog import TASKS  # noqa: E402
from tasks.render import apply_render_quality  # noqa: E402

IMAGE_SIZE, ACTION_REPEAT, MAX_OVERHEAD_PCT = 64, 2, 10.0
CASES = ("quadruped-walk", "walker-walk", "cheetah-run", "assembly-v3")
MODES = (("pixels", "paper"), ("pixels", "fast"), ("proprio", "fast"))
AGENT_STEPS = {("pixels", "paper"): 30, ("pixels", "fast"): 120, ("proprio", "fast"): 600}


class RawDMC:
    """dm_control used directly: env.step x repeat, then physics.render or flatten the state."""

    def __init__(self, name: str, obs_type: str, quality: str):
        from dm_control import suite
        info = TASKS.get(name)
        domain, task = info.embodiment, name[len(info.embodiment) + 1:]
        self.env = suite.load(domain, task, task_kwargs={"random": 0},
                              environment_kwargs={"flat_observation": False})
        apply_render_quality(self.env.physics.model, quality)
        self.camera, self.pixels = info.default_camera, obs_type == "pixels"

    def observe(self, timestep):
        if self.pixels:
            return self.env.physics.render(IMAGE_SIZE, IMAGE_SIZE, camera_id=self.camera)
        return np.concatenate([np.ravel(v) for v in timestep.observation.values()]).astype(np.float32)

    def reset(self):
        return self.observe(self.env.reset())

    def step(self, action) -> int:
        for frames in range(1, ACTION_REPEAT + 1):  # noqa: B007 (returned after the loop)
            timestep = self.env.step(action)
            if timestep.last():
                break
        self.observe(timestep)
        if timestep.last():
            self.reset()
        return frames

    def close(self):
        self.env.physics.free()


class RawMetaWorld:
    """gymnasium's Meta-World MT1 env used directly, same camera position and render settings."""

    def __init__(self, name: str, obs_type: str, quality: str):
        import gymnasium
        import metaworld  # noqa: F401

        from tasks.metaworld import NCRL_CAMERA, NCRL_CAMERA_POS
        self.env = gymnasium.make("Meta-World/MT1", env_name=name, seed=0, render_mode="rgb_array",
                                  width=IMAGE_SIZE, height=IMAGE_SIZE, camera_name=NCRL_CAMERA,
                                  disable_env_checker=True)
        model = self.env.unwrapped.model
        model.camera(NCRL_CAMERA).pos[:] = NCRL_CAMERA_POS
        apply_render_quality(model, quality)
        self.pixels, self.frames = obs_type == "pixels", 0
        self.episode_frames = TASKS.get(name).episode_frames

    def observe(self, state):
        return self.env.render()[::-1] if self.pixels else state.astype(np.float32)

    def reset(self):
        self.frames = 0
        return self.observe(self.env.reset()[0])

    def step(self, action) -> int:
        for frames in range(1, ACTION_REPEAT + 1):  # noqa: B007 (returned after the loop)
            state = self.env.step(action)[0]
            self.frames += 1
            if self.frames >= self.episode_frames:
                break
        self.observe(state)
        if self.frames >= self.episode_frames:
            self.reset()
        return frames

    def close(self):
        self.env.close()


class Ours:
    def __init__(self, name: str, obs_type: str, quality: str):
        self.env = make_env(name, EnvConfig(obs_type=obs_type, image_size=IMAGE_SIZE,
                                            action_repeat=ACTION_REPEAT, render_quality=quality), seed=0)

    def reset(self):
        return self.env.reset()

    def step(self, action) -> int:
        result = self.env.step(action)
        if result.truncated or result.terminated:
            self.env.reset()
        return result.env_frames

    def close(self):
        self.env.close()


def frames_per_s(env, actions: list[np.ndarray], agent_steps: int) -> float:
    start, frames = time.perf_counter(), 0
    for i in range(agent_steps):
        frames += env.step(actions[i % len(actions)])
    return frames / (time.perf_counter() - start)


def overhead_pct(raw: float, ours: float) -> float:
    """Extra wall time per env frame of the wrapper, in % of the raw time."""
    return 100.0 * (raw / ours - 1.0)


def bench(name: str, obs_type: str, quality: str, scale: float, rounds: int) -> tuple[float, float]:
    info = TASKS.get(name)
    raw_cls = RawMetaWorld if info.suite == "metaworld" else RawDMC
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, info.action_dim).astype(np.float32) for _ in range(64)]
    steps = max(5, int(AGENT_STEPS[obs_type, quality] * scale))
    envs = {"raw": raw_cls(name, obs_type, quality), "ours": Ours(name, obs_type, quality)}
    best = {"raw": 0.0, "ours": 0.0}
    try:
        for env in envs.values():        # warm up: first render makes the GL context
            env.reset()
            frames_per_s(env, actions, 3)
        done = 0
        # Other processes only ever slow a block down; if the gap looks too big, measure more.
        while done < rounds or (overhead_pct(best["raw"], best["ours"]) > MAX_OVERHEAD_PCT
                                and done < 3 * rounds):
            for side, env in envs.items():
                best[side] = max(best[side], frames_per_s(env, actions, steps))
            done += 1
    finally:
        for env in envs.values():
            env.close()
    return best["raw"], best["ours"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (about 2x faster, noisier)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    scale, rounds = (0.35, 3) if args.quick else (1.0, 4)

    header = f"{'task':16} {'obs':8} {'render':7} {'raw frames/s':>13} {'ours frames/s':>14} {'overhead':>9}"
    print(f"env frames/s, {IMAGE_SIZE}x{IMAGE_SIZE}, action repeat {ACTION_REPEAT}, "
          f"MUJOCO_GL={os.environ['MUJOCO_GL']}, {os.cpu_count()} CPUs, best of >= {rounds} blocks")
    print(header)
    print("-" * len(header))
    worst, paper_fast = 0.0, {}
    start = time.perf_counter()
    for name in CASES:
        for obs_type, quality in MODES:
            raw, ours = bench(name, obs_type, quality, scale, rounds)
            overhead = overhead_pct(raw, ours)
            worst = max(worst, overhead)
            shown_quality = quality if obs_type == "pixels" else "-"
            print(f"{name:16} {obs_type:8} {shown_quality:7} {raw:13.0f} {ours:14.0f} {overhead:8.1f}%",
                  flush=True)
            if obs_type == "pixels":
                paper_fast.setdefault(name, {})[quality] = ours
    print()
    for name, speeds in paper_fast.items():
        print(f"{name:16} fast render is {speeds['fast'] / speeds['paper']:.1f}x paper render (ours, pixels)")
    print(f"\nworst wrapper overhead {worst:.1f}% (limit {MAX_OVERHEAD_PCT:.0f}%), "
          f"{time.perf_counter() - start:.0f} s")
    if worst > MAX_OVERHEAD_PCT:
        print(f"FAIL: wrapper overhead above {MAX_OVERHEAD_PCT:.0f}%")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
