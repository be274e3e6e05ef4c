"""Does a method learn on this CPU? Single-task runs through the real runner, several seeds, vs `random`.

    .venv/bin/python benchmarks/bench_learning.py                              # dreamer, cartpole-swingup
    .venv/bin/python benchmarks/bench_learning.py --method drqv2 --task cartpole-balance --frames 30000

Each seed is a sweep job (``harness/sweep.py``: a separate process with one torch thread, anchors.md section 6:
never oversubscribe the 2 cores), all seeds at once by default; run the same command again and finished runs
are skipped, killed ones resumed. Every run is recorded in MLflow (experiment
``stream/learn-<task>``; the store is $MLFLOW_TRACKING_URI or ./mlflow.db), together with a summary run
holding the curve and the numbers. The `random` baseline runs on the same task with the same seeds and
therefore the same evaluation episodes; a constant zero-action policy is evaluated on them too, because
on cartpole-balance doing nothing already scores far above random (the pole starts upright).

Outputs: benchmarks/results/learning_<method>_<task>_<obs>.{png,json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results"


def _stream_file(task: str, frames: int, every: int, episodes: int, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"learn-{task}.toml"
    path.write_text(f'name = "learn-{task}"\ndescription = "{task} alone, {frames} env frames (learning benchmark)"\n'
                    f"[eval]\nevery_frames = {every}\nepisodes = {episodes}\n"
                    f'[[tasks]]\nname = "{task}"\nframes = {frames}\n')
    return path


def curve(rep, run_id: str, task: str) -> list[tuple[int, float]]:
    hist = rep.client.get_metric_history(run_id, f"eval/0-{task}/return")
    return sorted({int(m.step): float(m.value) for m in hist}.items())


def zero_action_return(a: argparse.Namespace, seed: int) -> float:
    """Mean return of the all-zero action on the runner's evaluation episodes of ``seed``."""
    import numpy as np

    from harness.evaluation import evaluate
    from methods.base import TaskContext
    from tasks.base import EnvConfig
    from tasks.catalog import TASKS

    class Zero:
        def act(self, obs, state, task, explore):
            return np.zeros((obs["is_first"].shape[0], info.action_dim), np.float32), state

    info = TASKS.get(a.task)
    task = TaskContext(0, info.name, info.embodiment, info.suite, a.frames, np.ones(info.action_dim, np.float32), 2)
    res = evaluate(Zero(), task, info, EnvConfig(obs_type="proprio", action_pad_dim=info.action_dim,  # type: ignore[arg-type]
                                                 proprio_pad_dim=info.proprio_dim), a.eval_episodes, seed)
    return res.mean_return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="dreamer", help="any registered method (see `cli.py methods list`)")
    ap.add_argument("--task", default="cartpole-swingup")
    ap.add_argument("--frames", type=int, default=14_000, help="env frames per run")
    ap.add_argument("--eval-every", type=int, default=2_000)
    ap.add_argument("--eval-episodes", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--obs", default="proprio")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--parallel", type=int, default=0, help="processes at once (default: one per seed)")
    ap.add_argument("--checkpoint-every", type=int, default=10**9)
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    from benchmarks.jobs import run_jobs, run_stream_options
    from harness.reporting import MlflowReporter, tracking_uri
    seeds = [int(s) for s in a.seeds.split(",")]
    work = ROOT / "benchmarks" / "work" / "learning"
    path = _stream_file(a.task, a.frames, a.eval_every, a.eval_episodes, work)
    items = [(f"{m}-seed{s}", run_stream_options(path, m, s, preset=a.preset, sets=a.overrides, pretrained=None,
                                                 runs_dir=ROOT / "runs", obs=a.obs, checkpoint_every=a.checkpoint_every))
             for m in dict.fromkeys((a.method, "random")) for s in seeds]
    t0 = time.time()
    print(f"{a.method} ({a.preset}, {a.obs}) on {a.task}: {len(seeds)} seeds x {a.frames} env frames, and random; "
          f"MLflow store {tracking_uri()}", flush=True)
    done = run_jobs(items, f"bench-learning-{a.method}-{a.task}-{a.obs}-{a.frames // 1000}k", a.parallel or len(seeds),
                    work / "logs", echo=lambda line: print(line, flush=True))
    rep = MlflowReporter()
    results = []
    for label, r in done.items():
        if r.status not in ("FINISHED", "SKIPPED"):
            raise SystemExit(f"{label} did not finish ({r.status}: {r.error}); run the same command to continue it")
        method, seed = label.rsplit("-seed", 1)
        results.append({"method": method, "seed": int(seed), "run_id": r.run_id, "wall_s": r.wall_s,
                        "curve": curve(rep, r.run_id, a.task)})
    method_wall = time.time() - t0
    zero = {s: zero_action_return(a, s) for s in seeds}
    summarize(a, seeds, results, zero, method_wall, rep)


def summarize(a, seeds, results, zero, method_wall, rep) -> None:
    import numpy as np
    OUT.mkdir(parents=True, exist_ok=True)
    stem = f"learning_{a.method}_{a.task}_{a.obs}"
    me = a.method
    steps = [s for s, _ in results[0]["curve"]]
    table = {m: np.array([[v for _, v in r["curve"]] for r in results if r["method"] == m]) for m in (me, "random")}
    lines = [f"{me} (preset {a.preset}, {a.obs}) vs random on {a.task}: mean evaluation return over "
             f"{a.eval_episodes} episodes at each evaluation (env frames). {len(seeds)} seeds, "
             f"{a.frames} env frames per run, 1 torch thread per process, {min(len(seeds), a.parallel or len(seeds))} "
             f"processes at once on {os.cpu_count()} cores; {me} wall time {method_wall / 60:.1f} min in all.",
             f"Overrides: {' '.join(a.overrides) or '(none)'}.", "",
             "| run | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for r in results:
        lines.append(f"| {r['method']} seed {r['seed']} | " + " | ".join(f"{v:.0f}" for _, v in r["curve"]) + " |")
    for m, arr in table.items():
        lines.append(f"| **{m} mean** | " + " | ".join(f"**{v:.0f}**" for v in arr.mean(0)) + " |")
    lines.append(f"| zero action (same episodes) | {np.mean(list(zero.values())):.0f} (constant) |" + " |" * (len(steps) - 1))
    final_d, final_r = table[me][:, -1], table["random"][:, -1]
    lines += ["", f"Final: {me} {final_d.mean():.0f} (seeds {', '.join(f'{v:.0f}' for v in final_d)}), "
              f"random {final_r.mean():.0f}, zero action {np.mean(list(zero.values())):.0f}. "
              f"Per-run wall time: " + ", ".join(f"{r['wall_s'] / 60:.1f} min" for r in results if r["method"] == me)]
    text = "\n".join(lines)
    print("\n" + text)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    x = np.array(steps)
    for row in table[me]:
        ax.plot(x, row, color="C0", alpha=0.35, lw=1)
    ax.plot(x, table[me].mean(0), color="C0", lw=2.2, marker="o", ms=4, label=f"{me} ({a.preset}), mean of {len(seeds)} seeds")
    rnd = table["random"]
    ax.fill_between(x, rnd.min(0), rnd.max(0), color="C3", alpha=0.15)
    ax.plot(x, rnd.mean(0), color="C3", lw=1.8, label="random (mean, min-max)")
    ax.axhline(np.mean(list(zero.values())), color="grey", ls="--", lw=1.2, label="zero action")
    ax.set_xlabel("env frames")
    ax.set_ylabel(f"evaluation return ({a.eval_episodes} episodes)")
    ax.set_title(f"{me} on {a.task} ({a.obs}), CPU, {a.frames // 1000}k frames")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png = OUT / f"{stem}.png"
    fig.savefig(png)
    plt.close(fig)
    payload = {"args": vars(a), "results": results, "zero_action": zero, "method_wall_s": method_wall}
    (OUT / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (OUT / f"{stem}.md").write_text(text + "\n")
    # The numbers and the figure also go to MLflow, as a summary run beside the per-seed runs.
    run_id = rep.start(f"stream/learn-{a.task}", f"bench-summary-{me}-{a.preset}-{a.obs}",
                       {"benchmark": "bench_learning", "method": me, "preset": a.preset},
                       {"frames": str(a.frames), "seeds": a.seeds, "overrides": " ".join(a.overrides)})
    for i, s in enumerate(steps):
        rep.log_metrics({f"bench/{me}_mean_return": float(table[me][:, i].mean()),
                         "bench/random_mean_return": float(table["random"][:, i].mean())}, int(s))
    rep.log_metrics({"bench/zero_action_return": float(np.mean(list(zero.values()))),
                     f"bench/{me}_wall_s": method_wall}, int(steps[-1]))
    rep.log_artifact(png)
    rep.log_artifact(OUT / f"{stem}.md")
    rep.log_artifact(OUT / f"{stem}.json")
    rep.close("FINISHED")
    print(f"\nwrote {png} (+ .json, .md); MLflow summary run {run_id}")


if __name__ == "__main__":
    from benchmarks.jobs import run_main
    run_main(main)
