"""The continual Ant stream (paper Section 4.2, Fig. 5) on this CPU: gsa vs packnet vs dreamer vs drqv2.

    .venv/bin/python benchmarks/bench_ant.py                                   # defaults below
    .venv/bin/python benchmarks/bench_ant.py --frames-per-task 4000 --seeds 0,1 --methods gsa,dreamer

1. ``collect`` reward-free proprio data (DMC random and OU exploration, harness/collect.py defaults; or with
   ``--data-policies icm`` every episode of URLB's ICM explorer, the paper's kind of data) on the stream's
   quadruped tasks (``--data-tasks``; the paper pre-trains "a small world model only on the Ant domain" for
   this experiment), then ``pretrain`` a world model and build the retrieval index. Both are skipped when
   already there (the data must then be of the same tasks; a stopped ICM collection is completed first).
2. Every (method, seed) runs the whole stream through the real runner (``cli.py run-stream``) with every
   task's budget cut to ``--frames-per-task`` (the paper: 300k), proprio observations, one torch thread,
   ``--parallel`` runs at once. All go to experiment ``stream/<stream>`` in MLflow.
3. ``cli.py compare`` over those methods and seeds: average performance, forgetting, forward transfer,
   just-trained performance and AUC (each task during its own training: what Fig. 5 plots), final scores,
   IQM and optimality gap with bootstrap CIs, curves and R matrices; saved under ``--out`` and as a
   "comparison" run in MLflow.

``--warmup-frames`` sets every learner's own warm-up field to one value (dreamer/gsa ``warmup_env_frames``,
drqv2/packnet ``seed_frames``), so that short budgets are not all warm-up; the compare table names the
budget, and the command line is written beside it.

gsa's guidance schedule is scaled to the shortened task as the paper proportions it (``jobs.guidance_sets``):
Table 5's DMC schedule decays over 50k agent steps of a 300k-frame Ant task (150k agent steps at action
repeat 2), a third of the task; ``--guidance-share`` sets another share, 0 keeps the preset's fixed 6k agent
steps (three 4k-frame tasks).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.jobs import check_grid, guidance_sets, prepare_pretrained, run_jobs, run_main, run_stream_options, sync_archive  # noqa: E402

# Each learner's own name for "frames of the warm-up policy per task" (the config fields, with their prefix).
WARMUP_FIELDS = {"dreamer": ["warmup_env_frames", "warmup_min_episodes=1"],
                 "gsa": ["agent.warmup_env_frames", "agent.warmup_min_episodes=1"],
                 "drqv2": ["seed_frames"], "packnet": ["base_config.seed_frames"],
                 **{m: ["base_config.seed_frames"] for m in ("finetune", "l2", "ewc", "mas", "agem", "replay",
                                                             "multitask")}}


def method_sets(method: str, warmup_frames: int | None, extra: list[str], guidance: Sequence[str] = ()) -> list[str]:
    """The ``--set`` values of one method: the warm-up in its own field names, gsa's guidance schedule length,
    then the ``METHOD:KEY=VALUE`` ones (last, so they win)."""
    out = []
    if warmup_frames is not None:
        for f in WARMUP_FIELDS.get(method.split("-")[0], []):
            out.append(f if "=" in f else f"{f}={warmup_frames}")
    if method.startswith("gsa"):
        out += guidance
    out += [o.split(":", 1)[1] for o in extra if o.split(":", 1)[0] == method]
    return out


def packnet_gsa_ratio(csv_path: Path) -> str | None:
    """PackNet as a share of GSA, next to the paper's 20-60% (Sec. 4.2, Fig. 5: "PackNet achieves only 20-60% of
    GSA's episodic returns"); None unless both were compared. Fig. 5 plots each task's returns during its own
    training, so the like-for-like measures are ``just_trained`` (each task at the end of its training) and
    ``auc`` (each task's curve during its training); the average performance after the whole stream also counts
    what GSA forgets later and PackNet's frozen masks keep."""
    import csv
    rows = {r["method"]: r for r in csv.DictReader(csv_path.open())} if csv_path.is_file() else {}
    if "gsa" not in rows or "packnet" not in rows:
        return None
    g, p = rows["gsa"], rows["packnet"]

    def share(key: str) -> str:
        if key not in g or key not in p:
            return f"{key} n/a"
        gv, pv = float(g[key]), float(p[key])
        return f"{key} {pv / gv:.0%} ({pv:.3f} / {gv:.3f})" if gv > 0 else f"{key} n/a (gsa {gv:.3f})"

    finals = [k for k in g if k.startswith("final ")]
    per_task = ", ".join(f"{k.split('-', 1)[1]} {float(p[k]) / float(g[k]):.0%}" if float(g[k]) > 0 else
                         f"{k.split('-', 1)[1]} n/a (gsa 0)" for k in finals)
    return (f"PackNet / GSA (the paper: 20-60% of GSA's returns while each task trains, Fig. 5), during each task's "
            f"own training: {share('just_trained')}, {share('auc')}; after the whole stream: "
            f"{share('avg_performance')}; final score per task: {per_task} (seeds: gsa {g['seeds']}, "
            f"packnet {p['seeds']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", default="ant")
    ap.add_argument("--methods", default="gsa,packnet,drqv2,dreamer",
                    help="in the order they run within a seed: the model-free runs take about a tenth of a "
                         "world-model run's time, so PackNet (and with it the PackNet/GSA ratio) and DrQ-v2 come "
                         "before Dreamer")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--frames-per-task", type=int, default=4_000, help="env frames per task (paper: 300k)")
    ap.add_argument("--eval-every", type=int, default=2_000)
    ap.add_argument("--eval-episodes", type=int, default=3)
    ap.add_argument("--warmup-frames", type=int, default=1_000,
                    help="every learner's warm-up per task (the presets' 4k-15k would fill a 4k-frame task)")
    ap.add_argument("--guidance-share", type=float, default=None,
                    help="gsa's guidance schedule as a share of a task's agent steps (default: the paper's, 1/3 "
                         "for DMC); 0 keeps the preset's fixed length")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--data-tasks", default=None,
                    help="default: the stream's tasks (paper Sec. 4.2: pre-training on the Ant domain only)")
    ap.add_argument("--episodes", type=int, default=2,
                    help="collected episodes per (task, policy, noise); with --data-policies icm, per task")
    ap.add_argument("--data-policies", default=None,
                    help="collect --policies of the pre-training data (default: random and OU exploration; "
                         "icm: every episode of URLB's ICM explorer, the paper's kind of data)")
    ap.add_argument("--episode-frames", type=int, default=None, help="env frames per collected episode")
    ap.add_argument("--pretrain-steps", type=int, default=2_000)
    ap.add_argument("--pretrain-threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--sweep", default=None, help="sweep id of the runs (default bench-ant-<stream>); the same "
                                                  "command again continues it, skipping finished runs")
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work" / "ant"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ant_compare"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="a config override for one method, e.g. gsa:retrieve_k=20")
    ap.add_argument("--prepare-only", action="store_true", help="only collect and pre-train (for gsa)")
    ap.add_argument("--compare-only", action="store_true", help="only run compare on the runs already in MLflow")
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    from harness.streams import get_stream
    stream = get_stream(a.stream)
    work, cli = Path(a.workdir), [sys.executable, str(ROOT / "cli.py")]
    work.mkdir(parents=True, exist_ok=True)
    _, methods, seeds = check_grid(ap, methods=a.methods, seeds=a.seeds, positive={"--frames-per-task": a.frames_per_task})
    sweep = a.sweep or f"bench-ant-{stream.name}"
    archive = ROOT / "benchmarks" / "results" / "runs" / sweep   # the finished runs as committed records
    t0 = time.time()
    if not a.compare_only:
        data_tasks = a.data_tasks or ",".join(dict.fromkeys(t.name for t in stream.tasks))
        pre = work / "pretrained"
        if any(m.startswith(("gsa", "jsrl")) for m in methods):
            _, pre = prepare_pretrained(cli, work, data_tasks, a.episodes, a.preset, a.pretrain_steps,
                                        a.pretrain_threads, a.episode_frames, a.data_policies)
        print(f"data + pre-training: {(time.time() - t0) / 60:.1f} min", flush=True)
        if a.prepare_only:
            return
        guidance = guidance_sets(a.frames_per_task, a.guidance_share)
        jobs = []
        for s in seeds:
            for m in methods:
                jobs.append((f"{m}-seed{s}", run_stream_options(
                    stream.name, m, s, preset=a.preset, sets=method_sets(m, a.warmup_frames, a.overrides, guidance),
                    pretrained=pre, runs_dir=work / "runs", frames_per_task=a.frames_per_task,
                    eval_every=a.eval_every, eval_episodes=a.eval_episodes)))
        print(f"{len(jobs)} runs of {stream.name} ({len(stream.tasks)} tasks x {a.frames_per_task} env frames), "
              f"{a.parallel} at once", flush=True)
        done = run_jobs(jobs, sweep, a.parallel, work / "logs", echo=lambda line: print(line, flush=True),
                        archive=archive)
        failed = [k for k, r in done.items() if r.status not in ("FINISHED", "SKIPPED")]
        if failed:
            print(f"failed: {', '.join(failed)} (logs in {work / 'logs'}); comparing the others", flush=True)
    sync_archive(sweep, archive, lambda line: print(line, flush=True))
    rc = subprocess.run(cli + ["compare", stream.name, "--methods", a.methods, "--seeds", a.seeds,
                               "--sweep", sweep, "--out", a.out]).returncode
    if rc != 0:      # compare has said what is missing; the runs stay in MLflow for --compare-only
        raise SystemExit(rc)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    ratio = packnet_gsa_ratio(Path(a.out) / "comparison.csv")
    if ratio:
        print(ratio, flush=True)
        (Path(a.out) / "packnet_gsa_ratio.md").write_text(ratio + "\n")
    (Path(a.out) / "command.txt").write_text(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) +
                                             f"\n# total {(time.time() - t0) / 60:.1f} min\n")


if __name__ == "__main__":
    run_main(main)
