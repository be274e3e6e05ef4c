"""Does a method learn? Single-task runs through the real runner, several seeds, against `random`.

    .venv/bin/python benchmarks/bench_learning.py --method drqv2 --task cartpole-balance \
        --frames 40000 --seeds 0,1,2 --preset tiny --obs proprio

Every run is recorded in MLflow (experiment ``stream/learn-<task>``); the table of evaluation returns per
seed and a PNG of the curves go to benchmarks/results/. Seeds run one after another with one torch thread
each unless --parallel is given (then one process per seed, still one thread each).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_one(method: str, task: str, frames: int, seed: int, preset: str, obs: str, eval_every: int,
            episodes: int, overrides: list[str]) -> dict:
    from harness.config import RunConfig
    from harness.runner import run_stream
    from harness.streams import EvalSpec, StreamSpec, TaskSpec
    from methods.base import resolve_config  # noqa: F401  (validates overrides through run_stream)
    from tasks.base import EnvConfig
    stream = StreamSpec(f"learn-{task}", (TaskSpec(task, frames),), EvalSpec(eval_every, episodes))
    cfg = RunConfig(stream=stream, method=method, seed=seed, preset=preset, torch_threads=1, video_frames=0,
                    overrides=tuple(tuple(o.split("=", 1)) for o in overrides),
                    env=EnvConfig(obs_type=obs), checkpoint_every_frames=10**9)
    t0 = time.time()
    res = run_stream(cfg, echo=lambda *_: None)
    from harness.reporting import MlflowReporter
    client = MlflowReporter().client
    hist = client.get_metric_history(res.run_id, f"eval/0-{task}/return")
    return {"method": method, "seed": seed, "run_id": res.run_id, "wall_s": time.time() - t0,
            "curve": sorted((m.step, m.value) for m in hist)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default=None)
    ap.add_argument("--task", default="cartpole-balance")
    ap.add_argument("--frames", type=int, default=40_000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--obs", default="proprio")
    ap.add_argument("--eval-every", type=int, default=5_000)
    ap.add_argument("--eval-episodes", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--parallel", action="store_true")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process: one seed
    ap.add_argument("--one-method", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    if a.one is not None:
        print(json.dumps(run_one(a.one_method, a.task, a.frames, a.one, a.preset, a.obs, a.eval_every,
                                 a.eval_episodes, a.overrides)))
        return
    if not a.method:
        ap.error("--method is required")
    seeds = [int(s) for s in a.seeds.split(",")]
    jobs = [(a.method, s) for s in seeds] + [("random", s) for s in seeds]
    results = []
    base = [sys.executable, __file__, "--task", a.task, "--frames", str(a.frames), "--preset", a.preset,
            "--obs", a.obs, "--eval-every", str(a.eval_every), "--eval-episodes", str(a.eval_episodes)]
    for o in a.overrides:
        base += ["--set", o]
    procs = []
    for method, seed in jobs:
        cmd = base + ["--one", str(seed), "--one-method", method] + (["--preset", "paper"] if method == "random" else [])
        if a.parallel:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
        else:
            out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{r['method']:>8} seed {r['seed']}: final return {r['curve'][-1][1]:7.1f} "
                  f"({r['wall_s']:.0f} s)", flush=True)
    for p in procs:
        out, _ = p.communicate()
        results.append(json.loads(out.strip().splitlines()[-1]))

    import numpy as np
    steps = [s for s, _ in results[0]["curve"]]
    print(f"\n{a.method} vs random on {a.task} ({a.obs}, preset {a.preset}), eval return "
          f"({a.eval_episodes} episodes) at env frames:")
    print("method   seed " + " ".join(f"{s:>8}" for s in steps))
    for r in results:
        print(f"{r['method']:<8} {r['seed']:>4} " + " ".join(f"{v:8.1f}" for _, v in r["curve"]))
    for m in (a.method, "random"):
        finals = [r["curve"][-1][1] for r in results if r["method"] == m]
        print(f"{m}: final return mean {np.mean(finals):.1f} (min {np.min(finals):.1f}, max {np.max(finals):.1f}); "
              f"wall {np.mean([r['wall_s'] for r in results if r['method'] == m]):.0f} s per run")
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"learning-{a.method}-{a.task}-{a.obs}"
    (out_dir / f"{stem}.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for m, color in ((a.method, "C0"), ("random", "C3")):
        for r in (r for r in results if r["method"] == m):
            xs, ys = zip(*r["curve"])
            ax.plot(xs, ys, color=color, alpha=0.8, label=f"{m}" if r["seed"] == seeds[0] else None)
    ax.set_xlabel("env frames")
    ax.set_ylabel(f"eval return ({a.eval_episodes} episodes)")
    ax.set_title(f"{a.task} ({a.obs}), {len(seeds)} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{stem}.png")
    print(f"wrote {out_dir / stem}.json and .png")


if __name__ == "__main__":
    main()
