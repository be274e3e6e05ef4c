"""GSA vs Dreamer from scratch vs random on a few tasks, on this CPU: a small version of the paper's comparison.

    .venv/bin/python benchmarks/bench_gsa.py                                  # defaults below
    .venv/bin/python benchmarks/bench_gsa.py --tasks reach-v3,walker-stand --seeds 0 --frames 10000

1. ``collect`` a small reward-free, mixed-quality, multi-embodiment dataset (proprio): Meta-World scripted
   experts with Gaussian noise, DMC random and OU exploration (harness/collect.py defaults), on the
   benchmark tasks and on neighbours (``--data-tasks``).
2. ``pretrain`` a ``tiny`` world model on it and build the retrieval index.
3. Every (method, task, seed) is a single-task run of the real runner (``cli.py run-stream``), one torch
   thread each, ``--parallel`` at once; experiment ``stream/bench-<task>-<frames>`` in MLflow.
4. The table: final normalised score (DMC return / 10, Meta-World success x 100) per method and task, mean
   and a 95% bootstrap CI over seeds, and the aggregate over tasks; learning curves per task.

gsa's guidance schedule gets the paper's share of the shortened task (``jobs.guidance_sets``: Table 5's
50k agent steps are a third of the paper's 150k-sample DMC budget, and its Meta-World 150k all of it);
``--guidance-share 0`` keeps the preset's fixed 6k agent steps, which the runs before this option had.

Outputs: benchmarks/results/<--name>.{md,json,png} (default gsa_vs_dreamer), and a summary run in MLflow.
Ablations (the paper's Fig. 6) go to their own name, e.g.
``--methods gsa,gsa-p-er,dreamer --name gsa_ablation``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results"

from benchmarks.jobs import check_grid, guidance_sets, prepare_pretrained, run_jobs, run_main, run_stream_options  # noqa: E402


def stream_file(task: str, frames: int, every: int, episodes: int, folder: Path) -> tuple[str, Path]:
    name = f"bench-{task}-{frames // 1000}k"
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\ndescription = "{task} alone, {frames} env frames (bench_gsa.py)"\n'
                    f"[eval]\nevery_frames = {every}\nepisodes = {episodes}\n"
                    f'[[tasks]]\nname = "{task}"\nframes = {frames}\n')
    return name, path


def method_overrides(method: str, overrides: list[str], guidance: Sequence[str] = ()) -> list[str]:
    """``--set`` values for one method: gsa takes the guidance schedule's and then the given ones (which win);
    dreamer takes the ``agent.*`` ones unprefixed."""
    if method.startswith(("gsa", "jsrl")):
        return [*guidance, *overrides]
    return [o.removeprefix("agent.") for o in overrides if o.startswith("agent.")] if method == "dreamer" else []


def bootstrap_ci(x, reps: int = 5000, seed: int = 0) -> tuple[float, float]:
    import numpy as np
    x = np.asarray(x, float)
    if len(x) < 2:
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(seed)
    means = rng.choice(x, (reps, len(x))).mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def plot_task_curves(curves_of: Callable[[str, str], list], tasks: Sequence[str], methods: Sequence[str],
                     path: Path, title: str = "") -> Path:
    """One panel per task: each method's mean evaluation curve over its seeds, shaded min-max;
    ``curves_of(method, task)`` gives the seeds' curves as lists of (env frames, score)."""
    import matplotlib
    import numpy as np
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.6), dpi=110, squeeze=False)
    for ax, t in zip(axes[0], tasks):
        for i, m in enumerate(methods):
            cs = curves_of(m, t)
            if not cs:
                continue
            steps = sorted({s for c in cs for s, _ in c})
            vals = np.array([[dict(c).get(s, np.nan) for s in steps] for c in cs])
            ax.plot(steps, np.nanmean(vals, 0), color=f"C{i}", lw=2, marker="o", ms=3, label=f"{m} (n={len(cs)})")
            if len(cs) > 1:
                ax.fill_between(steps, np.nanmin(vals, 0), np.nanmax(vals, 0), color=f"C{i}", alpha=0.15)
        ax.set_title(t)
        ax.set_xlabel("env frames")
        ax.set_ylabel("normalised score (0-100)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def earlier_walls(name: str) -> dict[tuple[str, str, int], float]:
    """Wall times of runs made by earlier invocations (the summary covers their runs too)."""
    path = OUT / f"{name}.json"
    if not path.is_file():
        return {}
    walls = json.loads(path.read_text()).get("walls", {})
    return {(k.split("|")[0], k.split("|")[1], int(k.split("|")[2])): float(v) for k, v in walls.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="reach-v3,walker-stand,cartpole-swingup")
    ap.add_argument("--data-tasks", default="reach-v3,push-v3,window-close-v3,walker-walk,walker-stand,cheetah-run,"
                                            "cartpole-balance,cartpole-swingup")
    ap.add_argument("--episodes", type=int, default=4, help="collected episodes per (task, policy, noise)")
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    ap.add_argument("--pretrain-threads", type=int, default=2)
    ap.add_argument("--methods", default="gsa,dreamer,random")
    ap.add_argument("--frames", type=int, default=10_000, help="env frames per run")
    ap.add_argument("--eval-every", type=int, default=2_500)
    ap.add_argument("--eval-episodes", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work" / "gsa"))
    ap.add_argument("--name", default="gsa_vs_dreamer", help="output files benchmarks/results/NAME.{md,json,png}")
    ap.add_argument("--summary-only", action="store_true", help="only summarise the runs already in MLflow")
    ap.add_argument("--note", default="", help="a line appended to the summary (e.g. how the runs were made)")
    ap.add_argument("--guidance-share", type=float, default=None,
                    help="gsa's guidance schedule as a share of a run's agent steps (default: the paper's, 1/3 for "
                         "DMC and 1 for Meta-World); 0 keeps the preset's fixed length")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="method config overrides for gsa and dreamer (gsa's agent fields: agent.NAME)")
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tasks, methods, seeds = check_grid(ap, tasks=a.tasks, methods=a.methods, seeds=a.seeds,
                                       positive={"--frames": a.frames})
    cli = [sys.executable, str(ROOT / "cli.py")]
    t0 = time.time()
    if a.summary_only:
        from harness.reporting import MlflowReporter
        summarize(a, tasks, methods, seeds, MlflowReporter(), earlier_walls(a.name),
                  {"prepare_s": 0.0, "total_s": 0.0})
        return

    data, pre = prepare_pretrained(cli, work, a.data_tasks, a.episodes, a.preset, a.pretrain_steps, a.pretrain_threads)
    t_prepare = time.time() - t0

    from harness.reporting import MlflowReporter, tracking_uri
    rep = MlflowReporter()
    streams = {task: stream_file(task, a.frames, a.eval_every, a.eval_episodes, work) for task in tasks}
    jobs = []
    for s in seeds:             # seed-major: stopped early, the finished seeds are complete across tasks and methods
        for task in tasks:
            name, path = streams[task]
            for m in methods:
                jobs.append((task, name, m, s, run_stream_options(
                    path, m, s, preset=a.preset,
                    sets=method_overrides(m, a.overrides, guidance_sets(a.frames, a.guidance_share)),
                    pretrained=pre, runs_dir=work / "runs", checkpoint_every=10**9)))
    print(f"{len(jobs)} runs, {a.parallel} at once; MLflow store {tracking_uri()}", flush=True)
    done = run_jobs([(f"{m}-{task}-seed{s}", o) for task, _, m, s, o in jobs], f"bench-gsa-{a.name}", a.parallel,
                    work / "logs", echo=lambda line: print(line, flush=True))
    walls = {**earlier_walls(a.name), **{(m, task, s): done[f"{m}-{task}-seed{s}"].wall_s for task, _, m, s, _ in jobs}}
    summarize(a, tasks, methods, seeds, rep, walls, {"prepare_s": t_prepare, "total_s": time.time() - t0})


def summarize(a, tasks, methods, seeds, rep, walls, timing) -> None:
    import numpy as np
    OUT.mkdir(parents=True, exist_ok=True)
    curves: dict[tuple[str, str], list[list[tuple[int, float]]]] = {}
    finals: dict[tuple[str, str], list[float]] = {}
    for task in tasks:
        exp = rep.client.get_experiment_by_name(f"stream/bench-{task}-{a.frames // 1000}k")
        runs = rep.client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time DESC"], max_results=1000)
        for m in methods:
            for s in seeds:
                run = next((r for r in runs if r.data.tags.get("method") == m and r.data.tags.get("seed") == str(s)
                            and "mlflow.parentRunId" not in r.data.tags), None)
                if run is None:
                    continue
                hist = rep.client.get_metric_history(run.info.run_id, f"eval/0-{task}/score")
                curve = sorted({int(h.step): float(h.value) for h in hist}.items())
                curves.setdefault((m, task), []).append(curve)
                finals.setdefault((m, task), []).append(float(run.data.metrics[f"final/0-{task}"]))
    schedule = " ".join(guidance_sets(a.frames, a.guidance_share)) or "the preset's"
    lines = [f"GSA vs Dreamer (from scratch) vs random: final normalised score (0-100; DMC return/10, Meta-World "
             f"success x 100), mean [95% bootstrap CI] over seeds {','.join(map(str, seeds))}. Budget {a.frames:,} env "
             f"frames per task, proprio, preset {a.preset}, one torch thread per run, {a.parallel} runs at once on "
             f"{os.cpu_count()} cores. Offline data: {a.data_tasks}, {a.episodes} episodes per setting; pre-training "
             f"{a.pretrain_steps:,} updates. Overrides: {' '.join(a.overrides) or '(none)'}; gsa's guidance schedule: "
             f"{schedule}.", "",
             "| method | " + " | ".join(tasks) + " | mean over tasks |", "|---|" + "---|" * (len(tasks) + 1)]
    agg = {}
    for m in methods:
        cells, per_seed = [], []
        for t in tasks:
            x = finals.get((m, t), [])
            if x:
                lo, hi = bootstrap_ci(x)
                cells.append(f"{np.mean(x):.1f} [{lo:.1f}, {hi:.1f}] (n={len(x)})")
                per_seed.append(x)
            else:
                cells.append("n/a")
        if per_seed and len({len(x) for x in per_seed}) == 1 and len(per_seed) == len(tasks):
            seed_means = np.mean(np.array(per_seed), 0)
            lo, hi = bootstrap_ci(seed_means)
            agg[m] = float(seed_means.mean())
            cells.append(f"**{seed_means.mean():.1f}** [{lo:.1f}, {hi:.1f}]")
        else:
            cells.append("n/a")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if "gsa" in agg and "dreamer" in agg and agg["dreamer"] > 0:
        lines += ["", f"Aggregate: gsa {agg['gsa']:.1f} vs dreamer {agg['dreamer']:.1f} "
                      f"({100 * (agg['gsa'] - agg['dreamer']) / agg['dreamer']:+.1f}%; "
                      "the paper reports +102.8% at 150k samples)."]
    if walls:
        per_run = ", ".join(f"{m} {t} s{s}: {w / 60:.1f}" for (m, t, s), w in sorted(walls.items()))
        lines += ["", "Wall time per run (min): " + per_run,
                  f"This invocation: collect + pre-training + index {timing['prepare_s'] / 60:.1f} min (0 when "
                  f"reused), total {timing['total_s'] / 60:.1f} min."]
    if a.note:
        lines += ["", a.note]
    text = "\n".join(lines)
    print("\n" + text)

    plot_task_curves(lambda m, t: curves.get((m, t), []), tasks, methods, OUT / f"{a.name}.png",
                     f"GSA vs Dreamer vs random, {a.preset}, proprio, mean and min-max over seeds")
    png = OUT / f"{a.name}.png"
    (OUT / f"{a.name}.md").write_text(text + "\n")
    payload = {"args": vars(a), "finals": {f"{m}|{t}": v for (m, t), v in finals.items()},
               "curves": {f"{m}|{t}": v for (m, t), v in curves.items()}, "timing": timing,
               "walls": {f"{m}|{t}|{s}": w for (m, t, s), w in walls.items()}}
    (OUT / f"{a.name}.json").write_text(json.dumps(payload, indent=1))
    rep.start("bench/gsa", f"{a.name.replace('_', '-')}-{a.preset}", {"benchmark": "bench_gsa"},
              {"tasks": a.tasks, "frames": str(a.frames), "seeds": a.seeds, "overrides": " ".join(a.overrides)})
    rep.log_metrics({f"final/{m}": v for m, v in agg.items()}, a.frames)
    for p in (png, OUT / f"{a.name}.md", OUT / f"{a.name}.json"):
        rep.log_artifact(p)
    rep.close("FINISHED")
    print(f"\nwrote {png} (+ .md, .json)")


if __name__ == "__main__":
    run_main(main)
