"""What a sweep costs and gains on this machine: one 2 x 2 x 2 grid (streams x methods x seeds) of short `tiny`
proprio runs, run four ways, each from scratch in its own MLflow store:

- ``sequential``: plain `run-stream` commands one after another (what a shell loop does; torch picks threads);
- ``local-1``: `sweep --backend local --concurrency 1` (one thread per job, no server);
- ``local-2``: `sweep --backend local --concurrency 2` (one thread per job, through an MLflow server);
- ``ray``: `sweep --backend ray` (a local Ray, 1 CPU per job, through an MLflow server).

For each: wall time of the grid, mean wall time of a job, and the overheads: a job's wall time minus its run's
own time in MLflow (process start-up, imports, looking the job up, uploading its log), Ray's start-up, and the
server's start-up. Results: printed and written to benchmarks/results/bench_sweep.{md,json}. Run it on an
otherwise idle machine (a busy core distorts everything, anchors.md section 6).

    .venv/bin/python benchmarks/bench_sweep.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results"
STREAMS = {"sweep-a": ("cartpole-balance", "reacher-easy"), "sweep-b": ("walker-stand", "cartpole-swingup")}


def _write_streams(folder: Path, frames: int) -> list[str]:
    paths = []
    for name, tasks in STREAMS.items():
        p = folder / f"{name}.toml"
        p.write_text(f'name = "{name}"\n[eval]\nevery_frames = {frames}\nepisodes = 2\n'
                     + "".join(f'[[tasks]]\nname = "{t}"\nframes = {frames}\n' for t in tasks))
        paths.append(str(p))
    return paths


def _run_seconds(uri: str) -> list[float]:
    from mlflow.tracking import MlflowClient
    c = MlflowClient(uri)
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=1000)
    return [(r.info.end_time - r.info.start_time) / 1000 for r in runs
            if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("method") and r.info.end_time]


def mode(name: str, streams: list[str], methods: list[str], seeds: list[int], frames: int) -> dict:
    from harness.launch import RunOptions
    from harness.sweep import SweepSpec, expand, make_backend, run_sweep
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        run = {"preset": "tiny", "obs": "proprio", "render_quality": "fast", "video_frames": 0,
               "runs_dir": f"{tmp}/runs", "checkpoint_every": 10**9}
        t0 = time.monotonic()
        if name == "sequential":
            walls = []
            for s in streams:
                for m in methods:
                    for seed in seeds:
                        opts = RunOptions(stream_file=s, method=m, seed=seed, **run)
                        j0 = time.monotonic()
                        subprocess.run(opts.argv(), check=True, stdout=subprocess.DEVNULL, cwd=tmp)
                        walls.append(time.monotonic() - j0)
            extra = {}
        else:
            spec = SweepSpec(tuple(streams), tuple(methods), tuple(seeds), run, name=f"bench-{name}")
            jobs = expand(spec)
            backend = {"local-1": lambda: make_backend("local", concurrency=1, cpus_per_job=1),
                       "local-2": lambda: make_backend("local", concurrency=2, cpus_per_job=1),
                       "ray": lambda: make_backend("ray", cpus_per_job=1)}[name]()
            lines: list[str] = []
            report = run_sweep(jobs, spec.sweep_id(), backend, uri=uri, log_dir=f"{tmp}/logs", echo=lines.append)
            assert report.ok, report.results
            walls = [r.wall_s for r in report.results]
            extra = {"log": lines}
        total = time.monotonic() - t0
        inside = _run_seconds(uri)
    overhead = (sum(walls) - sum(inside)) / len(walls)
    return {"mode": name, "jobs": len(walls), "grid_wall_s": round(total, 1),
            "mean_job_wall_s": round(sum(walls) / len(walls), 1),
            "mean_run_s": round(sum(inside) / len(inside), 1), "per_job_overhead_s": round(overhead, 1), **extra}


def startup_times() -> dict:
    """Seconds to start a local Ray and an MLflow server over an SQLite store, alone."""
    import ray

    from harness.sweep import tracking_server
    t0 = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_s = time.monotonic() - t0
    ray.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        with tracking_server(f"sqlite:///{tmp}/mlflow.db", needed=True, echo=lambda *_: None):
            server_s = time.monotonic() - t0
    return {"ray_start_s": round(ray_s, 1), "server_start_s": round(server_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames-per-task", type=int, default=2_000)
    ap.add_argument("--methods", default="random,drqv2")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--modes", default="sequential,local-1,local-2,ray")
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    methods, seeds = a.methods.split(","), [int(s) for s in a.seeds.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        streams = _write_streams(Path(folder), a.frames_per_task)
        results = []
        for m in a.modes.split(","):
            results.append(mode(m, streams, methods, seeds, a.frames_per_task))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "log"}), flush=True)
    starts = startup_times()
    OUT.mkdir(parents=True, exist_ok=True)
    payload = {"grid": {"streams": STREAMS, "methods": methods, "seeds": seeds, "frames_per_task": a.frames_per_task,
                        "preset": "tiny", "obs": "proprio"}, "cores": len(os.sched_getaffinity(0)),
               "results": [{k: v for k, v in r.items() if k != "log"} for r in results], **starts}
    (OUT / "bench_sweep.json").write_text(json.dumps(payload, indent=1))
    lines = [f"2 streams x {len(methods)} methods ({', '.join(methods)}) x {len(seeds)} seeds, `tiny` proprio, "
             f"{a.frames_per_task:,} env frames per task (2 tasks), {payload['cores']} cores. Ray starts in "
             f"{starts['ray_start_s']} s, the MLflow server in {starts['server_start_s']} s.", "",
             "| mode | grid wall (s) | mean job wall (s) | mean run time in MLflow (s) | per-job overhead (s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['grid_wall_s']} | {r['mean_job_wall_s']} | {r['mean_run_s']} | "
              f"{r['per_job_overhead_s']} |" for r in results]
    (OUT / "bench_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
