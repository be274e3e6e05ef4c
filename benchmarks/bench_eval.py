"""Evaluation wall time: every env stepped in this process (as before) against episodes spread over this
process and env worker processes (``GSA_EVAL_WORKERS``, ``harness/evaluation.py``), same method, seeds and
episodes; the scores must be identical (exits 1 if not).

The method is ``dreamer`` at the ``tiny`` preset (untrained: its act() costs what a trained one's does), with
torch at one thread, as a run with ``--threads 1`` on this 2-core machine evaluates. Each case alternates
the settings for ``--repeats`` rounds and keeps the best time of each, so load from other processes hurts
all alike. Writes ``benchmarks/results/bench_eval.json``.

    python benchmarks/bench_eval.py [--quick] [--workers 0,1] [--episodes 5] [--episode-frames 250]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = (("quadruped-walk", "pixels", "paper"), ("walker-walk", "pixels", "paper"), ("assembly-v3", "pixels", "paper"),
         ("walker-walk", "pixels", "fast"), ("walker-walk", "proprio", "fast"))


def build_method(info, env_cfg, workdir: str):
    from methods import METHODS
    from methods.base import MethodContext, resolve_config
    spec = METHODS.load("dreamer")
    cfg = resolve_config(spec, "dreamer", "tiny", {})
    obs_spec = {}
    if env_cfg.obs_type in ("pixels", "both"):
        obs_spec["pixels"] = ((3, env_cfg.image_size, env_cfg.image_size), "uint8")
    if env_cfg.obs_type in ("proprio", "both"):
        obs_spec["proprio"] = ((info.proprio_dim,), "float32")
    ctx = MethodContext(task_names=(info.name,), obs_spec=obs_spec, action_dim=info.action_dim, seed=0, device="cpu",
                        workdir=Path(workdir))
    return spec.build(cfg, ctx)


def run_case(task: str, obs_type: str, quality: str, workers: list[int], episodes: int, frames: int,
             repeats: int) -> dict:
    import torch

    from harness.evaluation import evaluate
    from methods.base import TaskContext
    from tasks.base import EnvConfig
    from tasks.catalog import TASKS
    info = TASKS.get(task)
    env_cfg = EnvConfig(obs_type=obs_type, render_quality=quality, episode_frames=frames,
                        action_pad_dim=info.action_dim, proprio_pad_dim=info.proprio_dim)
    ctx = TaskContext(0, task, info.embodiment, info.suite, 10_000, np.ones(info.action_dim, np.float32), 2)
    with tempfile.TemporaryDirectory() as tmp:
        method = build_method(info, env_cfg, tmp)
        method.on_task_start(ctx)
        evaluate(method, ctx, info, env_cfg, episodes, 0, workers=max(workers))   # warm-up: imports, pool start
        best = {w: float("inf") for w in workers}
        scores = {}
        for _ in range(repeats):
            for w in workers:
                torch.manual_seed(0)   # dreamer samples its latent states: same draws for every setting
                t0 = time.perf_counter()
                res = evaluate(method, ctx, info, env_cfg, episodes, 0, workers=w)
                best[w] = min(best[w], time.perf_counter() - t0)
                scores[w] = (res.returns, res.successes)
    same = all(scores[w] == scores[workers[0]] for w in workers)
    base = best[workers[0]]
    row = {"task": task, "obs": obs_type, "render_quality": quality, "episodes": episodes, "episode_frames": frames,
           "seconds": {str(w): round(best[w], 3) for w in workers},
           "speedup": {str(w): round(base / best[w], 2) for w in workers}, "identical_scores": same}
    print(f"{task:16s} {obs_type:8s} {quality:6s} " + "  ".join(
        f"workers={w}: {best[w]:6.2f} s (x{base / best[w]:.2f})" for w in workers) + f"  identical={same}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="0,1", help="worker counts to compare; the first is the baseline")
    ap.add_argument("--episodes", type=int, default=5, help="evaluation episodes (the Ant stream's 5)")
    ap.add_argument("--episode-frames", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="two cases, shorter episodes, one repeat")
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch
    torch.set_num_threads(1)
    workers = [int(w) for w in a.workers.split(",")]
    cases = CASES[1:2] + CASES[-1:] if a.quick else CASES
    frames, repeats = (100, 1) if a.quick else (a.episode_frames, a.repeats)
    from harness.evaluation import available_cores
    print(f"{available_cores()} cores, torch threads {torch.get_num_threads()}, {a.episodes} episodes of {frames} "
          f"frames, best of {repeats}")
    rows = [run_case(t, o, q, workers, a.episodes, frames, repeats) for t, o, q in cases]
    out = Path(__file__).parent / "results" / "bench_eval.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cores": available_cores(), "rows": rows}, indent=1))
    print(f"written: {out}")
    sys.exit(0 if all(r["identical_scores"] for r in rows) else 1)


if __name__ == "__main__":
    main()
