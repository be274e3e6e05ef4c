"""The continual-learning baselines on a CPU stream, Continual World style: every method, 3 seeds, one sweep.

    .venv/bin/python benchmarks/bench_cl.py                       # defaults below; run again to continue
    .venv/bin/python benchmarks/bench_cl.py --compare-only        # only the table, from the runs in MLflow

One sweep (``cli.py sweep``'s API: killed runs are resumed, finished ones skipped) holds:
1. forward transfer's references: ``drqv2`` alone on each task of the stream (``benchmarks/streams/<task>.toml``,
   the same budget per task), as Continual World measures every method's FT against one single-task learner;
2. every method on the stream, seed-major (seed 0 of every method first), each with ``--ft-reference drqv2``:
   ``drqv2`` (single-head fine-tuning), ``finetune`` (CW's fine-tuning: per-task heads, nothing else), ``l2``,
   ``ewc``, ``mas``, ``agem``, ``replay``, ``packnet``;
3. the multi-task reference: ``multitask`` on ``<stream>-mt`` (the same tasks and budget per task, all learnt
   at once), which ``compare`` puts last in the table.
Then ``cli.py compare`` (average performance, forgetting, forward transfer with 90% CIs, IQM and optimality
gap with 95% CIs, curves, R matrices), ``cl_baselines.json`` / ``.md`` with every run's R matrix, the
commit and the sweep id under ``--out``, and the runs as reference results users can hold theirs against
(``benchmarks/results/reference/<stream>.json``: ``cli.py compare <stream> --reference <stream>``).

Budgets: ``cl3-short`` is 3 x 15k env frames, proprio, ``tiny`` presets, 1 thread per run, 2 runs at once:
about 5 min per run here, 36 runs.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.jobs import check_grid, run_jobs, run_main, run_stream_options  # noqa: E402

METHODS = "drqv2,finetune,l2,ewc,mas,agem,replay,packnet"
REFERENCE = "drqv2"


def jobs_of(stream: str, methods: list[str], seeds: list[int], preset: str, runs_dir: Path, mt: bool) -> list:
    from harness.streams import get_stream
    spec = get_stream(stream)
    jobs = []
    for task in dict.fromkeys(t.name for t in spec.tasks):          # 1. the FT references
        f = ROOT / "benchmarks" / "streams" / f"{task}.toml"
        if not f.is_file():
            raise SystemExit(f"{f} is missing: forward transfer needs {task} alone, with the stream's budget")
        for s in seeds:
            jobs.append((f"ref-{task}-seed{s}", run_stream_options(f, REFERENCE, s, preset=preset, sets=[],
                                                                   pretrained=None, runs_dir=runs_dir)))
    for s in seeds:                                                   # 2. the methods, seed-major
        for m in methods:
            jobs.append((f"{m}-seed{s}", run_stream_options(stream, m, s, preset=preset, sets=[], pretrained=None,
                                                            runs_dir=runs_dir, ft_reference=REFERENCE)))
    if mt:                                                            # 3. the multi-task reference
        for s in seeds:
            jobs.append((f"multitask-seed{s}", run_stream_options(f"{stream}-mt", "multitask", s, preset=preset,
                                                                  sets=[], pretrained=None, runs_dir=runs_dir)))
    return jobs


def write_results(stream: str, sweep: str, out: Path, methods: list[str], seeds: list[int]) -> None:
    """cl_baselines.json / .md: the compare table, each run's R matrix, the commit and the sweep."""
    from harness.compare import collect_runs
    from harness.provenance import git_commit
    from harness.reporting import MlflowReporter
    rep = MlflowReporter()
    groups, excluded, names = collect_runs(rep, stream, methods, [int(s) for s in seeds], sweep)
    with open(out / "comparison.csv") as f:
        rows = [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]
    runs = {m: [{"run_id": d.run_id, "seed": d.seed, "R": (d.R * 100).round(1).tolist(),
                 "forward_transfer": d.run_metrics.get("cl/forward_transfer")} for d in sorted(rs, key=lambda d: d.seed)]
            for m, rs in sorted(groups.items())}
    made_at = sorted({rep.client.get_run(r["run_id"]).data.tags.get("git_commit", "?") for rs in runs.values() for r in rs})
    result = {"stream": stream, "tasks": names, "sweep": sweep, "commit": git_commit(), "runs_made_at": made_at,
              "rows": rows, "runs": runs,
              "excluded": excluded, "note": "R in 0-100 (DMC return / 10); metrics as fractions"}
    (out / "cl_baselines.json").write_text(json.dumps(result, indent=1))
    md = [f"# Continual-learning baselines on `{stream}` (sweep `{sweep}`; runs made at commit(s) "
          f"{', '.join(c[:12] for c in made_at)})", "",
          "| method | n | average performance | forgetting | forward transfer | " + " | ".join(names) + " |",
          "|---|---|---|---|---|" + "---|" * len(names)]
    for r in rows:
        md.append(f"| {r['method']} | {r['runs']:.0f} | {_cell(r, 'avg_performance')} | {_cell(r, 'forgetting')} | "
                  f"{_cell(r, 'forward_transfer')} | "
                  + " | ".join(f"{r[f'final {j}-{n}']:.1f}" for j, n in enumerate(names)) + " |")
    md += ["", "Means over seeds [90% bootstrap CI]; per-task columns: final score (0-100). The full table, with IQM "
           "and optimality gap: `comparison.md`.", "", "## Mean R matrices (0-100)", ""]
    for m, rs in runs.items():
        R = np.mean([r["R"] for r in rs], axis=0)
        md += [f"**{m}** (seeds {', '.join(r['seed'] for r in rs)}): rows = after training task i, columns = task j", "",
               "| after \\ on | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        md += [f"| {names[i]} | " + " | ".join(f"{v:.0f}" for v in R[i]) + " |" for i in range(len(names))] + [""]
    (out / "cl_baselines.md").write_text("\n".join(md) + "\n")


def _cell(row: dict, key: str) -> str:
    """``mean [ci_low, ci_high]`` of a compare row's metric, or n/a."""
    v = row.get(key)
    if v is None or v != v:
        return "n/a"
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and lo == lo else f"{v:.3f}"


def _num(v: str) -> object:
    try:
        return float(v) if v not in ("", None) else None
    except ValueError:
        return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", default="cl3-short")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--no-multitask", action="store_true", help="skip the multi-task reference runs")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--sweep", default=None, help="sweep id (default bench-cl-<stream>); the same command again "
                                                  "continues it")
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work" / "cl"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cl_baselines"))
    ap.add_argument("--compare-only", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    _, methods, seeds = check_grid(ap, methods=a.methods, seeds=a.seeds)
    sweep = a.sweep or f"bench-cl-{a.stream}"
    work, out = Path(a.workdir), Path(a.out)
    t0 = time.time()
    if not a.compare_only:
        jobs = jobs_of(a.stream, methods, seeds, a.preset, work / "runs", not a.no_multitask)
        print(f"{len(jobs)} runs in sweep {sweep}, {a.parallel} at once", flush=True)
        done = run_jobs(jobs, sweep, a.parallel, work / "logs", echo=lambda line: print(line, flush=True))
        failed = [k for k, r in done.items() if r.status not in ("FINISHED", "SKIPPED")]
        if failed:
            print(f"not finished: {', '.join(failed)} (logs in {work / 'logs'}); comparing the others", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    reference = ROOT / "benchmarks" / "results" / "reference" / f"{a.stream}.json"   # shipped: compare --reference
    rc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "compare", a.stream, "--methods", ",".join(methods),
                         "--seeds", a.seeds, "--sweep", sweep, "--out", str(out), "--save-reference",
                         str(reference)]).returncode
    if rc != 0:
        raise SystemExit(rc)
    write_results(a.stream, sweep, out, methods, seeds)
    (out / "command.txt").write_text(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) +
                                     f"\n# total {(time.time() - t0) / 60:.1f} min\n")
    print(f"written: {out / 'cl_baselines.md'}, {out / 'cl_baselines.json'}")


if __name__ == "__main__":
    run_main(main)
